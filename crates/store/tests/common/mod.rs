//! Helpers shared by the store's integration tests.

#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use lockgate_store::{MessageId, QueueId, Recovery, Store, StoreConfig, StoredRef};

pub fn open(dir: &Path) -> (Store, Recovery) {
    Store::open(dir, &StoreConfig::default()).expect("open store")
}

pub fn header(n: u64) -> Bytes {
    Bytes::from(format!("header-{n}"))
}

pub fn body(n: u64, len: usize) -> Bytes {
    let mut b = format!("body-{n}-").into_bytes();
    b.resize(len.max(b.len()), b'x');
    Bytes::from(b)
}

/// Publishes messages `seqs` to one queue, waiting for each commit; returns their refs.
pub fn publish_all(store: &Store, queue: QueueId, seqs: std::ops::Range<u64>) -> Vec<StoredRef> {
    let mut commits = Vec::new();
    let mut refs = Vec::new();
    for seq in seqs {
        let (message, commit) = store.publish(header(seq), body(seq, 64), &[(queue, seq)]);
        commits.push(commit);
        refs.push(StoredRef {
            queue,
            seq,
            message,
        });
    }
    for c in commits {
        c.wait_blocking().expect("commit");
    }
    refs
}

/// The seqs of a queue's index, in order.
pub fn seqs(store: &Store, queue: QueueId) -> Vec<u64> {
    store
        .queue_index(queue)
        .map(|e| e.expect("index entry").seq)
        .collect()
}

/// Ids of the messages that still have a record under `M` or a part under `P`, read from the
/// database directly (the store must be closed and dropped).
pub fn stored_record_ids(dir: &Path) -> std::collections::BTreeSet<MessageId> {
    let db = raw_open(dir);
    let data = db.open_tree("data").expect("data");
    [b'M', b'P']
        .iter()
        .flat_map(|prefix| data.scan_prefix([*prefix]).keys())
        .map(|k| {
            let k = k.expect("key");
            MessageId(u64::from_be_bytes(k[1..9].try_into().expect("id")))
        })
        .collect()
}

/// Opens the database with sled directly, once the dropped store's engine has let go of it.
///
/// Dropping a store does not wait for sled's background threads, which keep the database's
/// file lock for a moment: a conflict is retried until a deadline, as `Store::open` does.
pub fn raw_open(dir: &Path) -> sled::Db {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match sled::open(dir) {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            opened => return opened.expect("raw open"),
        }
    }
}

/// Size of every file under `dir`.
pub fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let meta = entry.metadata().expect("metadata");
        total += if meta.is_dir() {
            dir_size(&entry.path())
        } else {
            meta.len()
        };
    }
    total
}
