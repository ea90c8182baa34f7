//! Per-message accounting: which sequence numbers of which stream reached
//! which queue, and the verdict at the end of a run.

use serde::Serialize;

use crate::payload::{Codec, Corrupt, Decoded};

/// The sequence numbers of one stream seen on one queue, as a bitset (1 MiB
/// of bits covers 8 million messages).
#[derive(Clone, Debug, Default)]
pub struct SeqTracker {
    seen: Vec<u64>,
    distinct: u64,
    duplicates: u64,
    redelivered_duplicates: u64,
}

impl SeqTracker {
    /// Records one delivery of `seq`. A second delivery is a duplicate,
    /// explained when the broker flagged it `redelivered` (at-least-once
    /// delivery allows that) and unexplained otherwise.
    pub fn record(&mut self, seq: u64, redelivered: bool) {
        let Ok(word) = usize::try_from(seq / 64) else {
            self.duplicates += 1;
            return;
        };
        if word >= self.seen.len() {
            self.seen.resize(word + 1, 0);
        }
        let bit = 1u64 << (seq % 64);
        if self.seen[word] & bit == 0 {
            self.seen[word] |= bit;
            self.distinct += 1;
        } else if redelivered {
            self.redelivered_duplicates += 1;
        } else {
            self.duplicates += 1;
        }
    }

    /// How many of sequence numbers `0..published` never arrived.
    pub fn lost(&self, published: u64) -> u64 {
        let within = self.count_below(published);
        published - within
    }

    /// Distinct sequence numbers at or above `published`: messages that the
    /// publisher never sent, so they cannot be ours.
    pub fn unknown(&self, published: u64) -> u64 {
        self.distinct - self.count_below(published)
    }

    fn count_below(&self, limit: u64) -> u64 {
        let full = usize::try_from(limit / 64).unwrap_or(usize::MAX);
        let mut count: u64 = self
            .seen
            .iter()
            .take(full)
            .map(|w| u64::from(w.count_ones()))
            .sum();
        let rest = limit % 64;
        if rest > 0 {
            if let Some(w) = self.seen.get(full) {
                count += u64::from((w & ((1u64 << rest) - 1)).count_ones());
            }
        }
        count
    }
}

/// A consumer's view of its queue: which streams may arrive there, and the
/// tracker of each.
#[derive(Debug)]
pub struct QueueCheck {
    codec: Codec,
    /// Tracker per expected stream, indexed by position in `streams`.
    streams: Vec<u32>,
    trackers: Vec<SeqTracker>,
    corrupt: u64,
    misrouted: u64,
    delivered: u64,
}

impl QueueCheck {
    /// A check for a queue that should receive exactly `streams`.
    pub fn new(codec: Codec, streams: Vec<u32>) -> Self {
        let trackers = vec![SeqTracker::default(); streams.len()];
        Self {
            codec,
            streams,
            trackers,
            corrupt: 0,
            misrouted: 0,
            delivered: 0,
        }
    }

    /// Checks one delivered body; returns what it decoded to when it is a
    /// good message of an expected stream.
    pub fn check(&mut self, body: &[u8], redelivered: bool) -> Option<Decoded> {
        self.delivered += 1;
        match self.codec.decode(body) {
            Err(Corrupt::TooShort | Corrupt::Checksum) => {
                self.corrupt += 1;
                None
            }
            Ok(decoded) => match self.streams.iter().position(|&s| s == decoded.stream) {
                Some(i) => {
                    self.trackers[i].record(decoded.seq, redelivered);
                    Some(decoded)
                }
                None => {
                    self.misrouted += 1;
                    None
                }
            },
        }
    }

    /// Folds this queue's findings into `summary`, given how many messages
    /// each stream published (indexed by stream id).
    pub fn finish(&self, published: &[u64], summary: &mut Verification) {
        summary.delivered += self.delivered;
        summary.corrupt += self.corrupt;
        summary.misrouted += self.misrouted;
        for (&stream, tracker) in self.streams.iter().zip(&self.trackers) {
            let sent = usize::try_from(stream)
                .ok()
                .and_then(|s| published.get(s))
                .copied()
                .unwrap_or(0);
            summary.expected += sent;
            summary.lost += tracker.lost(sent);
            summary.duplicated += tracker.duplicates;
            summary.redelivered_duplicates += tracker.redelivered_duplicates;
            // A sequence number past what was published is not ours.
            summary.misrouted += tracker.unknown(sent);
        }
    }
}

/// The verdict on every message of a run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Verification {
    /// Copies that should have been delivered (published × queues reached).
    pub expected: u64,
    /// Deliveries received.
    pub delivered: u64,
    /// Expected copies never delivered.
    pub lost: u64,
    /// Of the lost, those the broker nacked (explained: the publisher was told).
    pub nacked: u64,
    /// Second deliveries without the redelivered flag.
    pub duplicated: u64,
    /// Second deliveries flagged redelivered (explained: at-least-once).
    pub redelivered_duplicates: u64,
    /// Bodies that failed their checksum.
    pub corrupt: u64,
    /// Good bodies that reached a queue their stream does not route to.
    pub misrouted: u64,
}

impl Verification {
    /// Failures nothing explains: they make the run fail.
    pub fn unexplained(&self) -> u64 {
        self.lost.saturating_sub(self.nacked) + self.duplicated + self.corrupt + self.misrouted
    }

    /// Whether every message is accounted for.
    pub fn ok(&self) -> bool {
        self.unexplained() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_stream_is_complete() {
        let mut t = SeqTracker::default();
        (0..1000).for_each(|s| t.record(s, false));
        assert_eq!(t.lost(1000), 0);
        assert_eq!(t.duplicates, 0);
        assert_eq!(t.unknown(1000), 0);
    }

    #[test]
    fn gaps_are_lost_wherever_they_fall() {
        let mut t = SeqTracker::default();
        (0..200)
            .filter(|s| ![0, 63, 64, 199].contains(s))
            .for_each(|s| t.record(s, false));
        assert_eq!(t.lost(200), 4);
        // Messages published but never seen past the last one received.
        assert_eq!(t.lost(250), 54);
        assert_eq!(SeqTracker::default().lost(10), 10);
    }

    #[test]
    fn duplicates_are_split_by_redelivered_flag() {
        let mut t = SeqTracker::default();
        t.record(5, false);
        t.record(5, false);
        t.record(5, true);
        t.record(6, true);
        assert_eq!(t.duplicates, 1);
        assert_eq!(t.redelivered_duplicates, 1);
        assert_eq!(t.lost(7), 5);
    }

    #[test]
    fn sequence_numbers_never_published_are_unknown() {
        let mut t = SeqTracker::default();
        t.record(3, false);
        t.record(70, false);
        assert_eq!(t.unknown(10), 1);
        assert_eq!(t.lost(10), 9);
    }

    fn encoded(codec: &Codec, stream: u32, seq: u64) -> Vec<u8> {
        let mut body = codec.body();
        codec.encode(stream, seq, 0, &mut body);
        body
    }

    #[test]
    fn queue_check_counts_corrupt_misrouted_and_lost() {
        let codec = Codec::new(42, 32);
        let mut check = QueueCheck::new(codec.clone(), vec![1]);
        for seq in 0..10 {
            if seq != 4 {
                assert!(check.check(&encoded(&codec, 1, seq), false).is_some());
            }
        }
        assert!(check.check(&encoded(&codec, 2, 0), false).is_none());
        let mut damaged = encoded(&codec, 1, 4);
        damaged[30] ^= 1;
        assert!(check.check(&damaged, false).is_none());
        check.check(&encoded(&codec, 1, 3), false);

        let mut summary = Verification::default();
        check.finish(&[0, 10, 5], &mut summary);
        assert_eq!(
            summary,
            Verification {
                expected: 10,
                delivered: 12,
                lost: 1,
                nacked: 0,
                duplicated: 1,
                redelivered_duplicates: 0,
                corrupt: 1,
                misrouted: 1,
            }
        );
        assert_eq!(summary.unexplained(), 4);
        assert!(!summary.ok());
    }

    #[test]
    fn nacked_losses_and_redeliveries_are_explained() {
        let v = Verification {
            expected: 10,
            delivered: 10,
            lost: 2,
            nacked: 2,
            redelivered_duplicates: 2,
            ..Verification::default()
        };
        assert!(v.ok());
    }
}
