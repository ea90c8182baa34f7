//! Disk space: acked messages are deleted for real and sled reuses their space, so a long
//! run of publish + ack with an empty backlog keeps the store's directory bounded.

mod common;

use common::{body, dir_size, header, open};
use lockgate_store::StoredRef;

#[test]
fn space_is_reclaimed_by_acks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = open(dir.path());
    let (queue, c) = store.put_queue(b"q", b"");
    c.wait_blocking().expect("commit");
    let rounds = 60u64;
    let per_round = 500u64;
    let mut sizes = Vec::new();
    for round in 0..rounds {
        let base = round * per_round;
        let published: Vec<_> = (base..base + per_round)
            .map(|seq| {
                let (message, c) = store.publish(header(seq), body(seq, 1024), &[(queue, seq)]);
                (
                    StoredRef {
                        queue,
                        seq,
                        message,
                    },
                    c,
                )
            })
            .collect();
        let refs: Vec<_> = published
            .into_iter()
            .map(|(r, c)| {
                c.wait_blocking().expect("commit");
                r
            })
            .collect();
        store.remove_many(refs).wait_blocking().expect("commit");
        sizes.push(dir_size(dir.path()));
    }
    let written_mib = (rounds * per_round * 1024) as f64 / (1 << 20) as f64;
    let warm = sizes[rounds as usize / 4];
    let max = sizes.iter().copied().max().unwrap_or(0);
    let last = *sizes.last().unwrap_or(&0);
    println!(
        "wrote {written_mib:.1} MiB of bodies, all acked; directory after a quarter {} KiB, \
         max {} KiB, final {} KiB",
        warm / 1024,
        max / 1024,
        last / 1024
    );
    assert!(common::seqs(&store, queue).is_empty());
    assert!(
        last <= warm * 2 + (4 << 20),
        "directory keeps growing: {sizes:?}"
    );
    assert!(
        (max as f64) < written_mib * (1 << 20) as f64 / 2.0,
        "space not reused: {sizes:?}"
    );
}

/// Records longer than 4 KiB are split into parts (format 2): they read back whole, and the
/// last removal of a message (also one shared by two queues, also after a restart) deletes
/// every part, so nothing of it is left in the database.
#[test]
fn large_records_are_split_and_removed_whole_also_after_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sizes = [10usize, 4000, 4096, 5000, 50_000, 300_000];
    let (a, b, refs) = {
        let (store, _) = open(dir.path());
        let (a, c) = store.put_queue(b"a", b"");
        c.wait_blocking().expect("commit");
        let (b, c) = store.put_queue(b"b", b"");
        c.wait_blocking().expect("commit");
        let mut refs = Vec::new();
        for (seq, size) in (0u64..).zip(sizes) {
            let targets = if seq % 2 == 0 {
                vec![(a, seq)]
            } else {
                vec![(a, seq), (b, seq)]
            };
            let (message, c) = store.publish(header(seq), body(seq, size), &targets);
            c.wait_blocking().expect("commit");
            let first = StoredRef {
                queue: targets[0].0,
                seq,
                message,
            };
            let record = store.read_message(first).expect("read").expect("stored");
            assert_eq!(record.body, body(seq, size));
            refs.extend(targets.into_iter().map(|(queue, seq)| StoredRef {
                queue,
                seq,
                message,
            }));
        }
        // Half removed now (for shared messages: one of the two copies), the rest after a
        // restart, when the writer's knowledge of parts comes from the database.
        let (now, later): (Vec<_>, Vec<_>) = refs.into_iter().partition(|r| r.seq < 3);
        let (now_a, now_b): (Vec<_>, Vec<_>) = now.into_iter().partition(|r| r.queue == a);
        store.remove_many(now_a).wait_blocking().expect("commit");
        store.close().expect("close");
        (a, b, later.into_iter().chain(now_b).collect::<Vec<_>>())
    };
    {
        let (store, _) = open(dir.path());
        let page = store.page_in(a, 3, 10).expect("page in");
        let got: Vec<_> = page.iter().map(|m| m.record.body.len()).collect();
        assert_eq!(got, sizes[3..]);
        store.remove_many(refs).wait_blocking().expect("commit");
        assert!(store.page_in(a, 0, 10).expect("page in").is_empty());
        assert!(store.page_in(b, 0, 10).expect("page in").is_empty());
        store.close().expect("close");
    }
    let db = common::raw_open(dir.path());
    let data = db.open_tree("data").expect("data");
    assert_eq!(data.scan_prefix(b"M").count(), 0, "message records left");
    assert_eq!(data.scan_prefix(b"P").count(), 0, "record parts left");
}
