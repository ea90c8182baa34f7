//! Model test: one queue and one consuming channel against a `VecDeque` model, under random
//! publish / get / ack / nack / reject / recover / close sequences.

mod common;

use std::collections::VecDeque;

use common::*;
use lockgate_broker::{Channel, DeliveryTag};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Publish,
    Get {
        no_ack: bool,
    },
    /// Settle the unacked delivery at `index % len` (tag 0 with `all`).
    Ack {
        index: usize,
        multiple: bool,
        all: bool,
    },
    Nack {
        index: usize,
        multiple: bool,
        requeue: bool,
    },
    Reject {
        index: usize,
        requeue: bool,
    },
    AckUnknown,
    Recover,
    Close,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Publish),
        1 => any::<bool>().prop_map(|no_ack| Op::Get { no_ack }),
        3 => (any::<usize>(), any::<bool>(), prop::bool::weighted(0.1))
            .prop_map(|(index, multiple, all)| Op::Ack { index, multiple, all }),
        2 => (any::<usize>(), any::<bool>(), any::<bool>())
            .prop_map(|(index, multiple, requeue)| Op::Nack { index, multiple, requeue }),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(index, requeue)| Op::Reject { index, requeue }),
        1 => Just(Op::AckUnknown),
        1 => Just(Op::Recover),
        1 => Just(Op::Close),
    ]
}

#[derive(Clone, Debug, PartialEq)]
struct Item {
    seq: u64,
    body: String,
    redelivered: bool,
}

#[derive(Clone, Debug)]
struct Unacked {
    tag: u64,
    item: Item,
    /// From basic.get: takes no prefetch credit.
    from_get: bool,
}

#[derive(Default)]
struct Model {
    ready: VecDeque<Item>,
    unacked: Vec<Unacked>,
    next_tag: u64,
    next_seq: u64,
    prefetch: usize,
    /// What the consumer should have received, in order: (tag, body, redelivered).
    expected: Vec<(u64, String, bool)>,
}

impl Model {
    fn credit(&self) -> bool {
        self.prefetch == 0 || self.unacked.iter().filter(|u| !u.from_get).count() < self.prefetch
    }

    fn drain(&mut self) {
        while self.credit() {
            let Some(item) = self.ready.pop_front() else {
                break;
            };
            self.next_tag += 1;
            self.expected
                .push((self.next_tag, item.body.clone(), item.redelivered));
            self.unacked.push(Unacked {
                tag: self.next_tag,
                item,
                from_get: false,
            });
        }
    }

    fn requeue(&mut self, items: Vec<Unacked>) {
        for u in items {
            let at = self.ready.partition_point(|r| r.seq < u.item.seq);
            self.ready.insert(
                at,
                Item {
                    redelivered: true,
                    ..u.item
                },
            );
        }
    }

    /// Removes the deliveries an ack of `tag` settles.
    fn take(&mut self, tag: u64, multiple: bool) -> Vec<Unacked> {
        if multiple {
            let (taken, kept) = self
                .unacked
                .drain(..)
                .partition(|u| tag == 0 || u.tag <= tag);
            self.unacked = kept;
            taken
        } else {
            let at = self.unacked.iter().position(|u| u.tag == tag).unwrap();
            vec![self.unacked.remove(at)]
        }
    }
}

fn open(
    vh: &std::sync::Arc<lockgate_broker::VHost>,
    id: u16,
    prefetch: usize,
) -> (Channel, std::sync::Arc<TestSink>) {
    let (mut ch, sink) = channel(vh, id);
    ch.qos(prefetch as u16, false);
    consume(&mut ch, "q", "c", false);
    (ch, sink)
}

fn run(prefetch: usize, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let vh = vhost();
    queue(&vh, "q");
    let mut channel_id = 1;
    let (mut ch, mut sink) = open(&vh, channel_id, prefetch);
    let mut model = Model {
        prefetch,
        ..Model::default()
    };
    let mut published = 0;
    for op in ops {
        match op {
            Op::Publish => {
                let body = published.to_string();
                published += 1;
                send(&vh, "q", &body);
                model.ready.push_back(Item {
                    seq: model.next_seq,
                    body,
                    redelivered: false,
                });
                model.next_seq += 1;
            }
            Op::Get { no_ack } => {
                let got = ch.get("q", no_ack).unwrap();
                match model.ready.pop_front() {
                    None => prop_assert!(got.is_none()),
                    Some(item) => {
                        let got = got.expect("model has a ready message");
                        model.next_tag += 1;
                        prop_assert_eq!(got.delivery_tag.0, model.next_tag);
                        prop_assert_eq!(body(&got.message), item.body.clone());
                        prop_assert_eq!(got.redelivered, item.redelivered);
                        prop_assert_eq!(got.message_count as usize, model.ready.len());
                        if !no_ack {
                            model.unacked.push(Unacked {
                                tag: model.next_tag,
                                item,
                                from_get: true,
                            });
                        }
                    }
                }
            }
            Op::Ack {
                index,
                multiple,
                all,
            } => {
                if all {
                    ch.ack(DeliveryTag(0), true).unwrap();
                    model.take(0, true);
                } else if !model.unacked.is_empty() {
                    let tag = model.unacked[index % model.unacked.len()].tag;
                    ch.ack(DeliveryTag(tag), multiple).unwrap();
                    model.take(tag, multiple);
                }
            }
            Op::Nack {
                index,
                multiple,
                requeue,
            } => {
                if !model.unacked.is_empty() {
                    let tag = model.unacked[index % model.unacked.len()].tag;
                    ch.nack(DeliveryTag(tag), multiple, requeue).unwrap();
                    let taken = model.take(tag, multiple);
                    if requeue {
                        model.requeue(taken);
                    }
                }
            }
            Op::Reject { index, requeue } => {
                if !model.unacked.is_empty() {
                    let tag = model.unacked[index % model.unacked.len()].tag;
                    ch.reject(DeliveryTag(tag), requeue).unwrap();
                    let taken = model.take(tag, false);
                    if requeue {
                        model.requeue(taken);
                    }
                }
            }
            Op::AckUnknown => {
                let tag = model.next_tag + 1000;
                prop_assert!(ch.ack(DeliveryTag(tag), false).is_err());
            }
            Op::Recover => {
                ch.recover(true).unwrap();
                let all = std::mem::take(&mut model.unacked);
                model.requeue(all);
            }
            Op::Close => {
                ch.close();
                let all = std::mem::take(&mut model.unacked);
                model.requeue(all);
                prop_assert_eq!(sink.take().len(), model.expected.len());
                model.expected.clear();
                model.next_tag = 0;
                channel_id += 1;
                (ch, sink) = open(&vh, channel_id, prefetch);
            }
        }
        model.drain();
        let seen: Vec<(u64, String, bool)> = sink
            .deliveries
            .lock()
            .unwrap()
            .iter()
            .map(|d| (d.delivery_tag.0, body(&d.message), d.redelivered))
            .collect();
        prop_assert_eq!(&seen, &model.expected);
        let q = vh.queue("q").unwrap();
        prop_assert_eq!(q.message_count() as usize, model.ready.len());
        prop_assert_eq!(q.unacked_count() as usize, model.unacked.len());
        prop_assert_eq!(ch.unacked_count(), model.unacked.len());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn queue_matches_the_model(prefetch in 0usize..4, ops in prop::collection::vec(op(), 1..80)) {
        run(prefetch, ops)?;
    }
}
