//! Damaged, foreign or newer stores are refused at startup with a typed error naming the
//! file, never opened with silent loss.

mod common;

use std::path::Path;

use common::{open, publish_all};
use lockgate_store::{
    MessageId, Store, StoreConfig, StoreError, StoredRef, FORMAT_VERSION, VERSION_FILE,
};

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
        let db = common::raw_open(dir.path());
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
        format!(
            "lockgate-store format {}\ncommitted 1\n",
            FORMAT_VERSION + 1
        ),
    )
    .expect("write");
    let err = open_err(dir.path());
    assert!(
        matches!(err, StoreError::UnsupportedVersion { found, .. } if found == FORMAT_VERSION + 1),
        "{err}"
    );
    let shown = format!("format version {}", FORMAT_VERSION + 1);
    assert!(err.to_string().contains(&shown), "{err}");
}

/// Writes, with sled directly, a closed store as format `format` (1 or 2) laid it out: every
/// message under `M` (format 2: records over 4 KiB in parts), index entries holding its id.
/// Queue `q` (id 1) holds seqs 0 (100 B), 1 (10,000 B) and 2 (shared with queue `r`, id 2,
/// at seq 0). Returns the bodies by seq of `q`.
fn legacy_store(dir: &Path, format: u32) -> Vec<bytes::Bytes> {
    let bodies = vec![
        common::body(0, 100),
        common::body(1, 10_000),
        common::body(2, 300),
    ];
    let db = sled::open(dir).expect("raw open");
    let meta = db.open_tree("meta").expect("meta");
    meta.insert("format", &format.to_be_bytes())
        .expect("insert");
    meta.insert("clean", &[1u8]).expect("insert");
    let data = db.open_tree("data").expect("data");
    let key = |prefix: u8, n: u64| [&[prefix][..], &n.to_be_bytes()].concat();
    let index = |queue: u64, seq: u64| [key(b'Q', queue), seq.to_be_bytes().to_vec()].concat();
    for (name, id) in [(&b"q"[..], 1u64), (b"r", 2)] {
        let def = [&b"Dq"[..], name].concat();
        data.insert(def, &id.to_be_bytes()).expect("insert");
    }
    data.insert("I", &3u64.to_be_bytes()).expect("insert");
    data.insert("S", &5u64.to_be_bytes()).expect("insert");
    data.insert("N", &4u64.to_be_bytes()).expect("insert");
    for (seq, body) in (0u64..).zip(&bodies) {
        let id = seq + 1;
        let head = common::header(seq);
        let record = [&(head.len() as u32).to_be_bytes()[..], &head, body].concat();
        if format == 1 {
            data.insert(key(b'M', id), record).expect("insert");
        } else {
            let mut parts = record.chunks(4096);
            data.insert(key(b'M', id), parts.next().expect("first"))
                .expect("insert");
            for (n, part) in (1u32..).zip(parts) {
                let part_key = [key(b'P', id), n.to_be_bytes().to_vec()].concat();
                data.insert(part_key, part).expect("insert");
            }
        }
        data.insert(index(1, seq), &id.to_be_bytes())
            .expect("insert");
    }
    data.insert(index(2, 0), &3u64.to_be_bytes())
        .expect("insert");
    data.insert(key(b'R', 3), &2u32.to_be_bytes())
        .expect("insert");
    data.insert(key(b'C', 1), &3u64.to_be_bytes())
        .expect("insert");
    data.insert(key(b'C', 2), &1u64.to_be_bytes())
        .expect("insert");
    db.flush().expect("flush");
    std::fs::write(
        dir.join(VERSION_FILE),
        format!("lockgate-store format {format}\ncommitted 5\n"),
    )
    .expect("write");
    bodies
}

/// Format 1 and 2 stores open, read and upgrade in place: their `M` records are read and
/// removed as they were written (also after a restart), new messages go to the new layout,
/// and an acked message leaves nothing behind.
#[test]
fn format_1_and_2_stores_are_upgraded_in_place() {
    for format in [1, 2] {
        let dir = tempfile::tempdir().expect("tempdir");
        let bodies = legacy_store(dir.path(), format);
        let version = dir.path().join(VERSION_FILE);
        let (store, recovery) = open(dir.path());
        let counts: Vec<_> = recovery.queues.iter().map(|q| q.messages).collect();
        assert_eq!(counts, vec![3, 1], "format {format}");
        let (q, r) = (recovery.queues[0].id, recovery.queues[1].id);
        let page = store.page_in(q, 0, 10).expect("page in");
        let got: Vec<_> = page.iter().map(|m| m.record.body.clone()).collect();
        assert_eq!(got, bodies, "format {format}");
        let mut refs: Vec<StoredRef> = page
            .iter()
            .map(|m| StoredRef {
                queue: q,
                seq: m.seq,
                message: m.message.expect("persistent"),
            })
            .collect();
        let big = common::body(9, 50_000);
        let (message, c) = store.publish(common::header(9), big.clone(), &[(q, 3)]);
        c.wait_blocking().expect("commit");
        assert!(message.0 >= 4, "ids of old messages are not reused");
        refs.push(StoredRef {
            queue: q,
            seq: 3,
            message,
        });
        // One old message acked before the restart, the others after it.
        store.remove(refs[1]).wait_blocking().expect("commit");
        store.close().expect("close");
        drop(store);
        assert!(std::fs::read_to_string(&version)
            .expect("read")
            .contains(&format!("format {FORMAT_VERSION}")));
        let left: Vec<_> = common::stored_record_ids(dir.path()).into_iter().collect();
        assert_eq!(
            left,
            vec![MessageId(1), MessageId(3), message],
            "format {format}"
        );

        let (store, recovery) = open(dir.path());
        assert_eq!(recovery.queues[0].messages, 3, "format {format}");
        let page = store.page_in(q, 0, 10).expect("page in");
        let got: Vec<_> = page.iter().map(|m| m.record.body.len()).collect();
        assert_eq!(got, vec![100, 300, 50_000], "format {format}");
        let shared = StoredRef {
            queue: r,
            seq: 0,
            message: MessageId(3),
        };
        let rest = [refs[0], refs[2], refs[3], shared];
        store.remove_many(rest).wait_blocking().expect("commit");
        store.close().expect("close");
        drop(store);
        assert!(common::stored_record_ids(dir.path()).is_empty());
        let (_store, recovery) = open(dir.path());
        let counts: Vec<_> = recovery.queues.iter().map(|q| q.messages).collect();
        assert_eq!(counts, vec![0, 0], "format {format}");
    }
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
        let db = common::raw_open(dir.path());
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
    drop(store);
    assert!(common::stored_record_ids(dir.path()).is_empty());
    let (_store, recovery) = open(dir.path());
    assert_eq!(recovery.orphans_removed, 0);
}
