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
