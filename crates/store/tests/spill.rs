//! Spill: transient bodies go to disk and come back in order, merged with the queue's
//! persistent messages; nothing spilled survives a restart.

mod common;

use common::{body, header, open};
use lockgate_store::{MessageRecord, SpillRecord, StoredRef};

fn records(seqs: impl Iterator<Item = u64>) -> Vec<SpillRecord> {
    seqs.map(|seq| SpillRecord {
        seq,
        header: header(seq),
        body: body(seq, 300),
    })
    .collect()
}

#[test]
fn spilled_messages_page_back_in_order_and_leave_the_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = open(dir.path());
    let queue = store.transient_queue_id();
    // Spilled out of order, in two calls: keys sort them.
    store.spill(queue, &records(500..1000)).expect("spill");
    store.spill(queue, &records(0..500)).expect("spill");
    let other = store.transient_queue_id();
    store.spill(other, &records(0..10)).expect("spill");

    let mut next = 0;
    let mut seen = Vec::new();
    loop {
        let page = store.page_in(queue, next, 128).expect("page in");
        let Some(last) = page.last() else { break };
        next = last.seq + 1;
        for m in page {
            assert_eq!(m.message, None);
            assert_eq!(
                m.record,
                MessageRecord {
                    header: header(m.seq),
                    body: body(m.seq, 300)
                }
            );
            seen.push(m.seq);
        }
    }
    assert_eq!(seen, (0..1000).collect::<Vec<_>>());
    assert!(store.page_in(queue, 0, 10).expect("page in").is_empty());
    assert_eq!(store.page_in(other, 0, 100).expect("page in").len(), 10);
}

#[test]
fn page_in_merges_spilled_and_persistent_messages_by_seq() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = open(dir.path());
    let (queue, c) = store.put_queue(b"mixed", b"");
    c.wait_blocking().expect("commit");
    for seq in (0..20).filter(|s| s % 2 == 0) {
        let (_, c) = store.publish(header(seq), body(seq, 300), &[(queue, seq)]);
        c.wait_blocking().expect("commit");
    }
    store
        .spill(queue, &records((0..20).filter(|s| s % 2 == 1)))
        .expect("spill");
    let page = store.page_in(queue, 3, 10).expect("page in");
    let got: Vec<_> = page.iter().map(|m| (m.seq, m.message.is_some())).collect();
    let expected: Vec<_> = (3..13).map(|s| (s, s % 2 == 0)).collect();
    assert_eq!(got, expected);
    for m in &page {
        assert_eq!(m.record.body, body(m.seq, 300));
    }
    // Persistent ones stay until removed; the spilled ones returned are gone.
    let again: Vec<_> = store
        .page_in(queue, 3, 100)
        .expect("page in")
        .iter()
        .map(|m| m.seq)
        .collect();
    let expected: Vec<u64> = (3..20).filter(|s| s % 2 == 0 || *s >= 13).collect();
    assert_eq!(again, expected);
}

#[test]
fn discard_spilled_drops_a_range() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = open(dir.path());
    let queue = store.transient_queue_id();
    store.spill(queue, &records(0..100)).expect("spill");
    assert_eq!(store.discard_spilled(queue, 0..40).expect("discard"), 40);
    let page = store.page_in(queue, 0, 1).expect("page in");
    assert_eq!(page[0].seq, 40);
    assert_eq!(
        store.discard_spilled(queue, 0..u64::MAX).expect("discard"),
        59
    );
    assert!(store.page_in(queue, 0, 1).expect("page in").is_empty());
}

#[test]
fn spilled_transient_messages_are_discarded_at_startup_but_persistent_ones_recover() {
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = {
        let (store, _) = open(dir.path());
        let (queue, c) = store.put_queue(b"q", b"");
        c.wait_blocking().expect("commit");
        let (_, c) = store.publish(header(0), body(0, 10), &[(queue, 0)]);
        c.wait_blocking().expect("commit");
        store.spill(queue, &records(1..50)).expect("spill");
        let transient = store.transient_queue_id();
        store.spill(transient, &records(0..50)).expect("spill");
        queue
    };
    let (store, recovery) = open(dir.path());
    assert_eq!(recovery.spilled_discarded, 99);
    let page = store.page_in(queue, 0, 100).expect("page in");
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].seq, 0);
    assert!(page[0].message.is_some());
}

#[test]
fn deleting_a_durable_queue_drops_its_spilled_messages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = open(dir.path());
    let (queue, _) = store.put_queue(b"q", b"");
    store.spill(queue, &records(0..10)).expect("spill");
    store.delete_queue(queue).wait_blocking().expect("commit");
    assert!(store.page_in(queue, 0, 100).expect("page in").is_empty());
}

#[tokio::test]
async fn async_spill_and_page_in() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = open(dir.path());
    let queue = store.transient_queue_id();
    store
        .spill_async(queue, records(0..5))
        .await
        .expect("spill");
    let page = store.page_in_async(queue, 0, 10).await.expect("page in");
    assert_eq!(page.len(), 5);
}

#[test]
fn remove_from_drops_the_disk_tail_of_a_queue() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = open(dir.path());
    let (queue, _) = store.put_queue(b"q", b"");
    let (other, _) = store.put_queue(b"other", b"");
    let mut ids = Vec::new();
    for seq in 0..10 {
        let (id, c) = store.publish(header(seq), body(seq, 10), &[(queue, seq), (other, seq)]);
        c.wait_blocking().expect("commit");
        ids.push(id);
    }
    store.spill(queue, &records(10..20)).expect("spill");
    store.remove_from(queue, 5).wait_blocking().expect("commit");
    let left: Vec<_> = store
        .page_in(queue, 0, 100)
        .expect("page in")
        .iter()
        .map(|m| m.seq)
        .collect();
    assert_eq!(left, vec![0, 1, 2, 3, 4]);
    // Shared with `other`: the records stay for it.
    assert_eq!(common::seqs(&store, other).len(), 10);
    let at = |queue, seq: u64| StoredRef {
        queue,
        seq,
        message: ids[seq as usize],
    };
    assert!(store.read_message(at(other, 7)).expect("read").is_some());
    store.remove_from(other, 0).wait_blocking().expect("commit");
    drop(store);
    let (store, recovery) = open(dir.path());
    let counts: Vec<_> = recovery.queues.iter().map(|q| q.messages).collect();
    assert_eq!(counts, vec![5, 0]);
    assert!(store.read_message(at(other, 7)).expect("read").is_none());
    assert!(store.read_message(at(queue, 2)).expect("read").is_some());
    drop(store);
    let left: Vec<_> = common::stored_record_ids(dir.path()).into_iter().collect();
    assert_eq!(left, ids[..5], "records of the purged messages are gone");
}

/// A record longer than one spill part (4 KiB) is split across several sled values: each
/// comes back whole, in order, around the part boundaries, and is counted and discarded as
/// one message.
#[test]
fn large_spilled_records_come_back_whole() {
    let sizes = [0usize, 1, 4000, 4096, 4097, 8192, 20_000, 100_000];
    let make = |seq: u64| {
        let len = sizes[seq as usize % sizes.len()];
        let body: Vec<u8> = (0..len).map(|i| (i * 7 + seq as usize) as u8).collect();
        SpillRecord {
            seq,
            header: header(seq),
            body: body.into(),
        }
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = open(dir.path());
    let queue = store.transient_queue_id();
    let all: Vec<SpillRecord> = (0..40).map(make).collect();
    store.spill(queue, &all).expect("spill");
    let page = store.page_in(queue, 0, 5).expect("page in");
    let page2 = store.page_in(queue, 5, 5).expect("page in");
    for (m, r) in page.iter().chain(&page2).zip(&all) {
        assert_eq!(m.seq, r.seq);
        assert_eq!(m.record.header, r.header);
        assert_eq!(m.record.body, r.body, "seq {}", r.seq);
    }
    assert_eq!(
        store.discard_spilled(queue, 10..20).expect("discard"),
        10,
        "parts are not counted as messages"
    );
    let rest = store.page_in(queue, 0, 100).expect("page in");
    let seqs: Vec<u64> = rest.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (20..40).collect::<Vec<_>>());
    for m in &rest {
        assert_eq!(m.record.body, make(m.seq).body);
    }
    store.spill(queue, &all[..7]).expect("spill");
    drop(store);
    let (_, recovery) = open(dir.path());
    assert_eq!(recovery.spilled_discarded, 7);
}
