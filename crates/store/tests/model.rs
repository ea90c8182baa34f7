//! The store against an in-memory model under random publishes (to one or several queues),
//! acks, range removals, queue deletions and restarts, the way sled's own tests check a tree
//! against a `BTreeMap`. Most writes are not waited for, so groups mix publishes with the
//! acks of the same messages (which the writer drops in pairs).

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};

use common::{body, header, open};
use lockgate_store::{Commit, MessageId, QueueId, Store, StoredRef};

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct ModelQueue {
    id: QueueId,
    /// seq -> (message, body seed)
    messages: BTreeMap<u64, (MessageId, u64)>,
    next_seq: u64,
}

#[derive(Default)]
struct Model {
    queues: BTreeMap<String, ModelQueue>,
    /// Every message ever removed from its last queue.
    freed: HashSet<MessageId>,
}

impl Model {
    fn holders(&self, message: MessageId) -> usize {
        self.queues
            .values()
            .map(|q| q.messages.values().filter(|(m, _)| *m == message).count())
            .sum()
    }
}

fn check(store: &Store, model: &Model, recovered: &[lockgate_store::RecoveredQueue]) {
    let got: HashMap<&[u8], (QueueId, u64)> = recovered
        .iter()
        .map(|q| (&q.key[..], (q.id, q.messages)))
        .collect();
    assert_eq!(got.len(), model.queues.len());
    for (
        key,
        ModelQueue {
            id,
            messages: msgs,
            next_seq: next,
        },
    ) in &model.queues
    {
        assert_eq!(got[key.as_bytes()], (*id, msgs.len() as u64), "queue {key}");
        let q = recovered.iter().find(|q| q.id == *id).expect("queue");
        assert!(q.next_seq >= msgs.keys().next_back().map_or(0, |s| s + 1));
        assert!(q.next_seq <= *next);
        let entries: Vec<_> = store
            .queue_index(*id)
            .map(|e| {
                let e = e.expect("entry");
                (e.seq, e.message)
            })
            .collect();
        let expected: Vec<_> = msgs.iter().map(|(s, (m, _))| (*s, *m)).collect();
        assert_eq!(entries, expected, "queue {key}");
        for (seq, (message, seed)) in msgs {
            let stored = StoredRef {
                queue: *id,
                seq: *seq,
                message: *message,
            };
            let record = store.read_message(stored).expect("read").expect("record");
            assert_eq!(record.body, body(*seed, 50));
        }
    }
}

/// No record or part of a freed message is left in the closed store at `dir`.
fn check_freed(dir: &std::path::Path, model: &Model) {
    let left = common::stored_record_ids(dir);
    let leaked: Vec<_> = left.iter().filter(|id| model.freed.contains(id)).collect();
    assert!(
        leaked.is_empty(),
        "records of freed messages left: {leaked:?}"
    );
}

/// Waits for a commit one time in four: the rest pile up into larger groups.
fn settle(commit: Commit, rng: &mut Rng) {
    if rng.below(4) == 0 {
        commit.wait_blocking().expect("commit");
    }
}

#[test]
fn store_matches_the_model_across_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut model = Model::default();
    let (mut store, _) = open(dir.path());
    let names = ["a", "b", "c", "d"];
    let mut seed = 0u64;
    for step in 0..3000 {
        match rng.below(100) {
            0..=44 => {
                // Publish to 1..=3 existing queues (declaring missing ones).
                let n = 1 + rng.below(3) as usize;
                let mut targets = Vec::new();
                for name in names.iter().cycle().skip(rng.below(4) as usize).take(n) {
                    let entry = model.queues.entry((*name).to_owned()).or_insert_with(|| {
                        let (id, c) = store.put_queue(name.as_bytes(), b"");
                        c.wait_blocking().expect("commit");
                        ModelQueue {
                            id,
                            messages: BTreeMap::new(),
                            next_seq: 0,
                        }
                    });
                    targets.push((entry.id, entry.next_seq));
                    entry.next_seq += 1;
                }
                seed += 1;
                let (message, commit) = store.publish(header(seed), body(seed, 50), &targets);
                settle(commit, &mut rng);
                for (id, seq) in targets {
                    let q = model
                        .queues
                        .values_mut()
                        .find(|q| q.id == id)
                        .expect("queue");
                    q.messages.insert(seq, (message, seed));
                }
            }
            45..=84 => {
                // Ack a random stored message.
                let Some(name) = names.get(rng.below(4) as usize) else {
                    continue;
                };
                let Some(ModelQueue {
                    id, messages: msgs, ..
                }) = model.queues.get_mut(*name)
                else {
                    continue;
                };
                if msgs.is_empty() {
                    continue;
                }
                let k = rng.below(msgs.len() as u64) as usize;
                let seq = *msgs.keys().nth(k).expect("key");
                let (message, _) = msgs.remove(&seq).expect("entry");
                let queue = *id;
                let commit = store.remove(StoredRef {
                    queue,
                    seq,
                    message,
                });
                settle(commit, &mut rng);
                if model.holders(message) == 0 {
                    model.freed.insert(message);
                }
            }
            85..=89 => {
                // Purge a queue's tail.
                let name = names[rng.below(4) as usize];
                let Some(ModelQueue {
                    id,
                    messages: msgs,
                    next_seq: next,
                }) = model.queues.get_mut(name)
                else {
                    continue;
                };
                let from = rng.below(*next + 1);
                let gone: Vec<_> = msgs.split_off(&from).into_values().collect();
                let queue = *id;
                settle(store.remove_from(queue, from), &mut rng);
                for (message, _) in gone {
                    if model.holders(message) == 0 {
                        model.freed.insert(message);
                    }
                }
            }
            90..=92 => {
                let name = names[rng.below(4) as usize];
                let Some(ModelQueue {
                    id, messages: msgs, ..
                }) = model.queues.remove(name)
                else {
                    continue;
                };
                settle(store.delete_queue(id), &mut rng);
                for (message, _) in msgs.into_values() {
                    if model.holders(message) == 0 {
                        model.freed.insert(message);
                    }
                }
            }
            _ => {
                if rng.below(2) == 0 {
                    store.close().expect("close");
                }
                drop(store);
                check_freed(dir.path(), &model);
                let (reopened, recovery) = open(dir.path());
                assert_eq!(recovery.orphans_removed, 0, "step {step}");
                check(&reopened, &model, &recovery.queues);
                // Recovered queues continue after their stored seqs.
                for q in &recovery.queues {
                    let m = model
                        .queues
                        .values_mut()
                        .find(|m| m.id == q.id)
                        .expect("queue");
                    m.next_seq = m.next_seq.max(q.next_seq);
                }
                store = reopened;
            }
        }
    }
    drop(store);
    check_freed(dir.path(), &model);
    let (store, recovery) = open(dir.path());
    check(&store, &model, &recovery.queues);
}
