//! Fault injection (feature `failpoints`): a failed batch or flush fails its commits and every
//! later one, nothing is confirmed that is not durable, and the store reopens afterwards.

#![cfg(feature = "failpoints")]

mod common;

use common::{body, header, open, publish_all, seqs};
use lockgate_store::{failpoints, StoreError};

#[test]
fn failed_flush_fails_the_commit_and_stops_later_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = {
        let (store, _) = open(dir.path());
        let (queue, c) = store.put_queue(b"q", b"");
        c.wait_blocking().expect("commit");
        publish_all(&store, queue, 0..10);
        failpoints::arm(failpoints::FLUSH, dir.path());
        let (_, c) = store.publish(header(10), body(10, 10), &[(queue, 10)]);
        let err = c.wait_blocking().expect_err("flush failed");
        assert!(matches!(err, StoreError::Failed { .. }), "{err}");
        failpoints::disarm(failpoints::FLUSH, dir.path());
        // The writer stays stopped: nothing later may be confirmed out of order.
        let (_, c) = store.publish(header(11), body(11, 10), &[(queue, 11)]);
        assert!(c.wait_blocking().is_err());
        assert!(store.failure().is_some());
        assert!(store.close().is_err());
        queue
    };
    let (store, recovery) = open(dir.path());
    assert!(!recovery.clean_shutdown);
    let got = seqs(&store, queue);
    assert_eq!(
        got[..10],
        (0..10).collect::<Vec<_>>()[..],
        "confirmed ones are there"
    );
    assert!(!got.contains(&11), "never submitted to the engine");
}

#[test]
fn failed_apply_writes_nothing_of_the_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = {
        let (store, _) = open(dir.path());
        let (queue, c) = store.put_queue(b"q", b"");
        c.wait_blocking().expect("commit");
        publish_all(&store, queue, 0..3);
        failpoints::arm(failpoints::APPLY, dir.path());
        let (_, c) = store.publish(header(3), body(3, 10), &[(queue, 3)]);
        assert!(c.wait_blocking().is_err());
        failpoints::disarm(failpoints::APPLY, dir.path());
        queue
    };
    let (store, _) = open(dir.path());
    assert_eq!(seqs(&store, queue), vec![0, 1, 2]);
}
