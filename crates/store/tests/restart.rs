//! Restart cases: what is written survives a close (or a drop) and a reopen, in order.

mod common;

use bytes::Bytes;
use common::{body, header, open, publish_all, seqs};
use lockgate_store::{DefinitionKind, MessageRecord, StoredRef};

#[test]
fn fresh_store_is_empty_and_clean_after_close() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, recovery) = open(dir.path());
    assert!(recovery.definitions.is_empty() && recovery.queues.is_empty());
    assert!(!recovery.clean_shutdown);
    store.close().expect("close");
    drop(store);
    let (_store, recovery) = open(dir.path());
    assert!(recovery.clean_shutdown);
}

#[test]
fn definitions_survive_restart_and_removed_ones_do_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (store, _) = open(dir.path());
        let commits = [
            store.put_definition(DefinitionKind::VHost, b"/", b"vhost /"),
            store.put_definition(DefinitionKind::User, b"guest", b"hash"),
            store.put_definition(DefinitionKind::Exchange, b"/\0orders", b"topic durable"),
            store.put_definition(DefinitionKind::Exchange, b"/\0gone", b"fanout"),
            store.put_definition(DefinitionKind::Binding, b"/\0orders\0q1\0#", b""),
            store.put_definition(DefinitionKind::Policy, b"/\0ttl", b"{}"),
            store.remove_definition(DefinitionKind::Exchange, b"/\0gone"),
        ];
        for c in commits {
            c.wait_blocking().expect("commit");
        }
        let (q1, c) = store.put_queue(b"/\0q1", b"args-1");
        c.wait_blocking().expect("commit");
        let (q2, c) = store.put_queue(b"/\0q2", b"args-2");
        c.wait_blocking().expect("commit");
        assert_ne!(q1, q2);
        let (again, c) = store.put_queue(b"/\0q1", b"args-1b");
        c.wait_blocking().expect("commit");
        assert_eq!(again, q1, "same key keeps its id");
        // Dropped without close: the writer drains on drop.
    }
    let (store, recovery) = open(dir.path());
    let kinds: Vec<_> = recovery
        .definitions
        .iter()
        .map(|d| (d.kind, &d.key[..], &d.value[..]))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (DefinitionKind::VHost, &b"/"[..], &b"vhost /"[..]),
            (DefinitionKind::User, b"guest", b"hash"),
            (DefinitionKind::Policy, b"/\0ttl", b"{}"),
            (DefinitionKind::Exchange, b"/\0orders", b"topic durable"),
            (DefinitionKind::Binding, b"/\0orders\0q1\0#", b""),
        ]
    );
    let queues: Vec<_> = recovery
        .queues
        .iter()
        .map(|q| (&q.key[..], &q.value[..], q.first_seq, q.next_seq))
        .collect();
    assert_eq!(
        queues,
        vec![
            (&b"/\0q1"[..], &b"args-1b"[..], None, 0),
            (b"/\0q2", b"args-2", None, 0)
        ]
    );
    // New queues never reuse a recovered id.
    let (q3, c) = store.put_queue(b"/\0q3", b"");
    c.wait_blocking().expect("commit");
    assert!(recovery.queues.iter().all(|q| q.id < q3));
    assert!(recovery
        .queues
        .iter()
        .all(|q| q.id < store.transient_queue_id()));
}

#[test]
fn messages_survive_restart_in_publish_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = {
        let (store, _) = open(dir.path());
        let (queue, c) = store.put_queue(b"q", b"");
        c.wait_blocking().expect("commit");
        publish_all(&store, queue, 0..300);
        store.close().expect("close");
        queue
    };
    let (store, recovery) = open(dir.path());
    let q = &recovery.queues[0];
    assert_eq!(
        (q.id, q.first_seq, q.next_seq, q.messages),
        (queue, Some(0), 300, 300)
    );
    assert_eq!(seqs(&store, queue), (0..300).collect::<Vec<_>>());
    let paged = store.page_in(queue, 0, 1000).expect("page in");
    assert_eq!(paged.len(), 300);
    for (i, m) in paged.iter().enumerate() {
        let i = i as u64;
        assert_eq!(m.seq, i);
        assert!(m.message.is_some() && !m.redelivered);
        assert_eq!(
            m.record,
            MessageRecord {
                header: header(i),
                body: body(i, 64)
            }
        );
    }
}

#[test]
fn acked_messages_are_not_resurrected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (queue, acked) = {
        let (store, _) = open(dir.path());
        let (queue, c) = store.put_queue(b"q", b"");
        c.wait_blocking().expect("commit");
        let refs = publish_all(&store, queue, 0..20);
        let acked: Vec<StoredRef> = refs.iter().copied().filter(|r| r.seq % 3 != 1).collect();
        store
            .remove_many(acked.iter().copied())
            .wait_blocking()
            .expect("commit");
        (queue, acked)
    };
    for round in 0..2 {
        let (store, recovery) = open(dir.path());
        assert!(recovery.clean_shutdown, "round {round}");
        let expected: Vec<u64> = (0..20).filter(|s| s % 3 == 1).collect();
        assert_eq!(seqs(&store, queue), expected);
        for r in &acked {
            assert_eq!(store.read_message(*r).expect("read"), None);
        }
        // Publishing after the restart continues after the recovered seqs and never reuses
        // an id that is still referenced.
        let q = &recovery.queues[0];
        assert_eq!(q.messages, expected.len() as u64);
        if round == 0 {
            assert_eq!(q.next_seq, 20);
        }
    }
}

#[test]
fn shared_body_is_stored_once_and_freed_with_its_last_queue() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = open(dir.path());
    let queues: Vec<_> = [&b"a"[..], b"b", b"c"]
        .iter()
        .map(|k| {
            let (q, c) = store.put_queue(k, b"");
            c.wait_blocking().expect("commit");
            q
        })
        .collect();
    let targets: Vec<_> = queues.iter().map(|q| (*q, 7)).collect();
    let (message, c) = store.publish(header(1), body(1, 4096), &targets);
    c.wait_blocking().expect("commit");
    let before = store.metrics().message_bytes;
    assert!(before < 2 * 4096, "one record, not three: {before}");
    let stored = |q| StoredRef {
        queue: q,
        seq: 7,
        message,
    };
    store
        .remove(stored(queues[0]))
        .wait_blocking()
        .expect("commit");
    assert_eq!(store.read_message(stored(queues[0])).expect("read"), None);
    let record = store.read_message(stored(queues[1])).expect("read");
    assert_eq!(record.expect("still held").body, body(1, 4096));
    store.close().expect("close");
    drop(store);
    assert!(common::stored_record_ids(dir.path()).contains(&message));

    // The count survives a restart.
    let (store, recovery) = open(dir.path());
    let counts: Vec<_> = recovery.queues.iter().map(|q| q.messages).collect();
    assert_eq!(counts, vec![0, 1, 1]);
    assert_eq!(seqs(&store, queues[0]), Vec::<u64>::new());
    assert_eq!(seqs(&store, queues[1]), vec![7]);
    store
        .remove(stored(queues[1]))
        .wait_blocking()
        .expect("commit");
    assert!(store
        .read_message(stored(queues[2]))
        .expect("read")
        .is_some());
    store
        .remove(stored(queues[2]))
        .wait_blocking()
        .expect("commit");
    assert_eq!(store.read_message(stored(queues[2])).expect("read"), None);
    store.close().expect("close");
    drop(store);
    assert!(common::stored_record_ids(dir.path()).is_empty());
}

/// A message held by one queue is stored with its index entry: no `M` record, and its
/// removal leaves nothing behind, also for a record split into parts.
#[test]
fn a_message_held_by_one_queue_lives_in_its_index_entry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = open(dir.path());
    let (queue, c) = store.put_queue(b"q", b"");
    c.wait_blocking().expect("commit");
    let mut refs = Vec::new();
    for (seq, size) in [(0u64, 10usize), (1, 4000), (2, 20_000)] {
        let (message, c) = store.publish(header(seq), body(seq, size), &[(queue, seq)]);
        c.wait_blocking().expect("commit");
        refs.push(StoredRef {
            queue,
            seq,
            message,
        });
    }
    store.close().expect("close");
    drop(store);
    let parted: Vec<_> = common::stored_record_ids(dir.path()).into_iter().collect();
    assert_eq!(
        parted,
        vec![refs[2].message],
        "only the parts of the long record"
    );
    let (store, _) = open(dir.path());
    for (r, size) in refs.iter().zip([10, 4000, 20_000]) {
        let record = store.read_message(*r).expect("read").expect("stored");
        assert_eq!(record.body, body(r.seq, size));
    }
    store
        .remove_many(refs.iter().copied())
        .wait_blocking()
        .expect("commit");
    store.close().expect("close");
    drop(store);
    assert!(common::stored_record_ids(dir.path()).is_empty());
}

#[test]
fn deleting_a_queue_keeps_messages_shared_with_others() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = open(dir.path());
    let (a, _) = store.put_queue(b"a", b"");
    let (b, _) = store.put_queue(b"b", b"");
    let (shared, _) = store.publish(header(0), body(0, 10), &[(a, 0), (b, 0)]);
    let (only_a, _) = store.publish(header(1), body(1, 10), &[(a, 1)]);
    store.delete_queue(a).wait_blocking().expect("commit");
    let at = |queue, seq, message| StoredRef {
        queue,
        seq,
        message,
    };
    // A late ack for the deleted queue must not release the shared message a second time.
    store
        .remove(at(a, 0, shared))
        .wait_blocking()
        .expect("commit");
    assert!(store
        .read_message(at(b, 0, shared))
        .expect("read")
        .is_some());
    assert_eq!(store.read_message(at(a, 1, only_a)).expect("read"), None);
    drop(store);
    let (store, recovery) = open(dir.path());
    assert_eq!(recovery.queues.len(), 1);
    assert_eq!(recovery.queues[0].id, b);
    assert_eq!(recovery.queues[0].messages, 1);
    assert_eq!(recovery.orphans_removed, 0);
    assert_eq!(seqs(&store, b), vec![0]);
    store
        .remove(at(b, 0, shared))
        .wait_blocking()
        .expect("commit");
    assert_eq!(store.read_message(at(b, 0, shared)).expect("read"), None);
    store.close().expect("close");
    drop(store);
    assert!(common::stored_record_ids(dir.path()).is_empty());
}

#[test]
fn delivered_messages_come_back_redelivered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = {
        let (store, _) = open(dir.path());
        let (queue, _) = store.put_queue(b"q", b"");
        let refs = publish_all(&store, queue, 0..10);
        for seq in 0..6 {
            store.mark_delivered(queue, seq);
        }
        // A requeued message delivered again does not lower the watermark.
        store.mark_delivered(queue, 2);
        store
            .remove_many(refs[..2].iter().copied())
            .wait_blocking()
            .expect("commit");
        queue
    };
    let (store, recovery) = open(dir.path());
    assert_eq!(recovery.queues[0].delivered_through, Some(5));
    let flags: Vec<_> = store
        .queue_index(queue)
        .map(|e| {
            let e = e.expect("entry");
            (e.seq, e.redelivered)
        })
        .collect();
    let expected: Vec<_> = (2..10).map(|s| (s, s <= 5)).collect();
    assert_eq!(flags, expected);
    let paged = store.page_in(queue, 4, 3).expect("page in");
    let flags: Vec<_> = paged.iter().map(|m| (m.seq, m.redelivered)).collect();
    assert_eq!(flags, vec![(4, true), (5, true), (6, false)]);
}

#[test]
fn queue_emptied_by_acks_keeps_its_next_seq() {
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = {
        let (store, _) = open(dir.path());
        let (queue, _) = store.put_queue(b"q", b"");
        let refs = publish_all(&store, queue, 0..5);
        for r in &refs {
            store.mark_delivered(queue, r.seq);
        }
        store.remove_many(refs).wait_blocking().expect("commit");
        queue
    };
    let (_store, recovery) = open(dir.path());
    let q = &recovery.queues[0];
    assert_eq!(
        (q.id, q.first_seq, q.next_seq, q.messages),
        (queue, None, 5, 0)
    );
}

#[test]
fn writes_after_close_fail_with_closed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = open(dir.path());
    store.close().expect("close");
    let (_, commit) = store.publish(Bytes::new(), Bytes::new(), &[]);
    let err = commit.wait_blocking().expect_err("closed");
    assert!(
        matches!(err, lockgate_store::StoreError::Closed { .. }),
        "{err}"
    );
}

#[test]
fn a_deleted_queue_id_is_not_reused_after_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let deleted = {
        let (store, _) = open(dir.path());
        let (_, c) = store.put_queue(b"keep", b"");
        c.wait_blocking().expect("commit");
        let (gone, c) = store.put_queue(b"gone", b"");
        c.wait_blocking().expect("commit");
        store.delete_queue(gone).wait_blocking().expect("commit");
        gone
    };
    let (store, recovery) = open(dir.path());
    assert_eq!(recovery.queues.len(), 1);
    let (fresh, _) = store.put_queue(b"new", b"");
    assert!(fresh > deleted);
    assert!(store.transient_queue_id() > deleted);
}

#[test]
fn handles_are_send_and_sync() {
    fn check<T: Send + Sync + 'static>() {}
    check::<lockgate_store::Store>();
    check::<lockgate_store::Commit>();
    check::<lockgate_store::StoreError>();
}
