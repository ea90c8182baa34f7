//! Damaged, foreign or newer stores are refused at startup with a typed error naming the
//! file, never opened with silent loss.

mod common;

use std::path::Path;

use common::{open, publish_all};
use lockgate_store::{Store, StoreConfig, StoreError, FORMAT_VERSION, VERSION_FILE};

/// A closed store holding one queue with 2,000 messages of 1 KiB.
fn populated(dir: &Path) {
    let (store, _) = open(dir);
    let (queue, c) = store.put_queue(b"q", b"");
    c.wait_blocking().expect("commit");
    for chunk in 0..20 {
        let commits: Vec<_> = (chunk * 100..chunk * 100 + 100)
            .map(|seq| {
                store
                    .publish(
                        common::header(seq),
                        common::body(seq, 1024),
                        &[(queue, seq)],
                    )
                    .1
            })
            .collect();
        for c in commits {
            c.wait_blocking().expect("commit");
        }
    }
    store.close().expect("close");
}

fn open_err(dir: &Path) -> StoreError {
    Store::open(dir, &StoreConfig::default()).expect_err("must refuse the store")
}

fn db_file(dir: &Path) -> std::path::PathBuf {
    dir.join("db")
}

#[test]
fn newer_format_in_the_database_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    populated(dir.path());
    // Rewrite the format record as a future build would, and the version file to match
    // an old layout without it (so the database's own record is what gets checked).
    {
        let db = sled::open(dir.path()).expect("raw open");
        let meta = db.open_tree("meta").expect("meta");
        meta.insert("format", &99u32.to_be_bytes()).expect("insert");
        db.flush().expect("flush");
    }
    std::fs::remove_file(dir.path().join(VERSION_FILE)).expect("rm version file");
    match open_err(dir.path()) {
        StoreError::UnsupportedVersion {
            path,
            found,
            supported,
        } => {
            assert_eq!((found, supported), (99, FORMAT_VERSION));
            assert_eq!(path, dir.path());
        }
        other => panic!("wrong error: {other}"),
    }
}

#[test]
fn newer_format_in_the_version_file_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    populated(dir.path());
    std::fs::write(
        dir.path().join(VERSION_FILE),
        "lockgate-store format 3\ncommitted 1\n",
    )
    .expect("write");
    let err = open_err(dir.path());
    assert!(
        matches!(err, StoreError::UnsupportedVersion { found: 3, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("format version 3"), "{err}");
}

/// Format 1 (every record in one value) is format 2 without record parts: it opens, reads
/// and is upgraded in place; a large message written after the upgrade is split and whole.
#[test]
fn a_format_1_store_is_upgraded_in_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    populated(dir.path());
    {
        let db = sled::open(dir.path()).expect("raw open");
        let meta = db.open_tree("meta").expect("meta");
        meta.insert("format", &1u32.to_be_bytes()).expect("insert");
        db.flush().expect("flush");
    }
    let version = dir.path().join(VERSION_FILE);
    let text = std::fs::read_to_string(&version).expect("read");
    std::fs::write(&version, text.replace("format 2", "format 1")).expect("write");
    let (store, recovery) = open(dir.path());
    let queue = recovery.queues[0].id;
    let first = store.page_in(queue, 0, 1).expect("page in");
    assert_eq!(first[0].record.body, common::body(0, 1024));
    let big = common::body(7, 50_000);
    let (_, c) = store.publish(common::header(7), big.clone(), &[(queue, 5000)]);
    c.wait_blocking().expect("commit");
    store.close().expect("close");
    drop(store);
    assert!(std::fs::read_to_string(&version)
        .expect("read")
        .contains(&format!("format {FORMAT_VERSION}")));
    let (store, _) = open(dir.path());
    let last = store.page_in(queue, 5000, 1).expect("page in");
    assert_eq!(last[0].record.body, big);
}

#[test]
fn garbled_version_file_is_reported_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    populated(dir.path());
    std::fs::write(dir.path().join(VERSION_FILE), "hello").expect("write");
    match open_err(dir.path()) {
        StoreError::Corrupt { path, .. } => assert_eq!(path, dir.path().join(VERSION_FILE)),
        other => panic!("wrong error: {other}"),
    }
}

fn assert_corrupt_db(dir: &Path) {
    let err = open_err(dir);
    let text = err.to_string();
    match err {
        StoreError::Corrupt { path, .. } => assert_eq!(path, db_file(dir), "{text}"),
        other => panic!("wrong error: {other}"),
    }
    assert!(text.contains("restore it from a backup"), "{text}");
}

#[test]
fn truncated_database_file_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    populated(dir.path());
    let db = db_file(dir.path());
    let len = std::fs::metadata(&db).expect("metadata").len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&db)
        .expect("open db");
    file.set_len(len / 2).expect("truncate");
    drop(file);
    assert_corrupt_db(dir.path());
}

#[test]
fn emptied_database_file_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    populated(dir.path());
    std::fs::write(db_file(dir.path()), b"").expect("empty the file");
    assert_corrupt_db(dir.path());
}

#[test]
fn overwritten_bytes_in_the_database_file_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    populated(dir.path());
    let db = db_file(dir.path());
    let mut bytes = std::fs::read(&db).expect("read");
    // Stamp garbage over a third of the file, 4 KiB every 64 KiB: some of it lands on live
    // records (garbage over dead, already reclaimed space would be harmless).
    let start = bytes.len() / 3;
    for at in (start..bytes.len() - 4096).step_by(64 * 1024) {
        bytes[at..at + 4096].fill(0xAB);
    }
    std::fs::write(&db, bytes).expect("write");
    assert_corrupt_db(dir.path());
}

#[test]
fn a_store_in_use_is_locked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_store, _) = open(dir.path());
    let err = open_err(dir.path());
    assert!(matches!(err, StoreError::Locked { .. }), "{err}");
}

#[test]
fn a_healthy_store_passes_the_checks_on_every_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    populated(dir.path());
    for round in 0..3 {
        let (store, recovery) = open(dir.path());
        assert!(recovery.clean_shutdown);
        let queue = recovery.queues[0].id;
        assert_eq!(common::seqs(&store, queue).len(), 2000 + round);
        publish_all(
            &store,
            queue,
            recovery.queues[0].next_seq..recovery.queues[0].next_seq + 1,
        );
        store.close().expect("close");
    }
}

#[test]
fn index_entries_of_a_vanished_queue_are_swept_at_startup() {
    let dir = tempfile::tempdir().expect("tempdir");
    populated(dir.path());
    // What a crash in the middle of a queue deletion leaves: entries, a count and a message
    // record for a queue whose definition is gone.
    {
        let db = sled::open(dir.path()).expect("raw open");
        let data = db.open_tree("data").expect("data");
        let queue = 999u64.to_be_bytes();
        let message = 1_000_000u64.to_be_bytes();
        let index: Vec<u8> = [&b"Q"[..], &queue, &7u64.to_be_bytes()].concat();
        data.insert(index, &message).expect("insert");
        data.insert([&b"C"[..], &queue].concat(), &1u64.to_be_bytes())
            .expect("insert");
        let record: Vec<u8> = [&0u32.to_be_bytes()[..], b"orphan"].concat();
        data.insert([&b"M"[..], &message].concat(), record)
            .expect("insert");
        db.flush().expect("flush");
    }
    let (store, recovery) = open(dir.path());
    assert_eq!(recovery.orphans_removed, 1);
    assert_eq!(recovery.queues.len(), 1);
    assert_eq!(
        store
            .read_message(lockgate_store::MessageId(1_000_000))
            .expect("read"),
        None
    );
    drop(store);
    let (_store, recovery) = open(dir.path());
    assert_eq!(recovery.orphans_removed, 0);
}
