//! Deduplication by `message-id` (`x-deduplication-window`).
//!
//! A queue with a window remembers the message ids it enqueued: the last `count` of them,
//! and/or those enqueued in the last `time_ms` milliseconds (with both, an id is forgotten as
//! soon as either limit passes it). A published message whose id is remembered is not
//! enqueued again; the publish still succeeds (a confirming publisher gets basic.ack), so a
//! publisher that retries after a lost confirm does not create a duplicate. Messages without
//! a message-id are never deduplicated. The window counts enqueues, not what is still in the
//! queue: an id stays remembered after its message was consumed.
//!
//! Memory is bounded by the window: at most `count` ids, or the ids of the last `time_ms`
//! (forgotten lazily, on the next enqueue). Each id is kept once, shared by the lookup set
//! and the arrival-ordered list that says which to forget first; both operations are O(1).

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::arguments::DedupWindow;
use super::QueueState;
use crate::message::Message;

/// The queue's hook, called under its lock just before a published message is enqueued:
/// true when the message is a duplicate within the queue's window, counted and not to be
/// enqueued (the publish still succeeds); otherwise its id is remembered.
pub(super) fn duplicate(st: &mut QueueState, message: &Message) -> bool {
    let window = st.args.dedup;
    let duplicate = st.dedup.is_duplicate(window, message, Instant::now());
    st.counters.dedup_dropped += u64::from(duplicate);
    duplicate
}

/// The message ids a queue remembers.
#[derive(Default)]
pub(super) struct Seen {
    ids: HashSet<Arc<str>>,
    /// In enqueue order, with when each was enqueued.
    order: VecDeque<(Instant, Arc<str>)>,
}

impl Seen {
    /// True when `message` is a duplicate within `window` and must not be enqueued; else
    /// records its id (when it has one) and returns false. `None` (no window) never
    /// deduplicates and forgets what was remembered (the window was removed by a policy).
    fn is_duplicate(
        &mut self,
        window: Option<DedupWindow>,
        message: &Message,
        now: Instant,
    ) -> bool {
        let Some(window) = window else {
            if !self.order.is_empty() {
                *self = Self::default();
            }
            return false;
        };
        let properties = message.properties();
        let Some(id) = properties.message_id.as_deref() else {
            return false;
        };
        self.forget(window, now);
        if self.ids.contains(id) {
            return true;
        }
        let id: Arc<str> = Arc::from(id);
        self.ids.insert(Arc::clone(&id));
        self.order.push_back((now, id));
        self.forget(window, now);
        false
    }

    /// Forgets ids beyond the count, and ids older than the time window.
    fn forget(&mut self, window: DedupWindow, now: Instant) {
        let max = window
            .count
            .filter(|c| *c > 0)
            .map_or(usize::MAX, |c| usize::try_from(c).unwrap_or(usize::MAX));
        let oldest = window
            .time_ms
            .filter(|t| *t > 0)
            .and_then(|t| now.checked_sub(Duration::from_millis(t)));
        while let Some((at, _)) = self.order.front() {
            let expired = oldest.is_some_and(|oldest| *at <= oldest);
            if self.order.len() <= max && !expired {
                break;
            }
            if let Some((_, id)) = self.order.pop_front() {
                self.ids.remove(&id);
            }
        }
    }

    /// Ids remembered now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.ids.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use lockgate_wire::{BasicProperties, ContentHeader};

    fn message(id: Option<&str>) -> Message {
        let properties = BasicProperties {
            message_id: id.map(str::to_owned),
            ..BasicProperties::default()
        };
        Message::new(
            String::new(),
            "q".into(),
            ContentHeader::new(60, 0, properties).unwrap(),
            Bytes::new(),
        )
    }

    fn count(n: u64) -> Option<DedupWindow> {
        Some(DedupWindow {
            count: Some(n),
            time_ms: None,
        })
    }

    #[test]
    fn a_repeated_id_within_the_count_is_a_duplicate() {
        let t0 = Instant::now();
        let mut seen = Seen::default();
        assert!(!seen.is_duplicate(count(2), &message(Some("a")), t0));
        assert!(seen.is_duplicate(count(2), &message(Some("a")), t0));
        assert!(!seen.is_duplicate(count(2), &message(Some("b")), t0));
        assert!(seen.is_duplicate(count(2), &message(Some("a")), t0));
    }

    #[test]
    fn an_id_pushed_out_of_the_count_is_enqueued_again() {
        let t0 = Instant::now();
        let mut seen = Seen::default();
        for id in ["a", "b", "c"] {
            assert!(!seen.is_duplicate(count(2), &message(Some(id)), t0));
        }
        assert_eq!(seen.len(), 2);
        assert!(!seen.is_duplicate(count(2), &message(Some("a")), t0));
        assert!(seen.is_duplicate(count(2), &message(Some("c")), t0));
    }

    #[test]
    fn messages_without_an_id_are_never_duplicates() {
        let t0 = Instant::now();
        let mut seen = Seen::default();
        assert!(!seen.is_duplicate(count(5), &message(None), t0));
        assert!(!seen.is_duplicate(count(5), &message(None), t0));
        assert_eq!(seen.len(), 0);
    }

    #[test]
    fn an_id_older_than_the_time_window_is_forgotten() {
        let window = Some(DedupWindow {
            count: None,
            time_ms: Some(30),
        });
        let t0 = Instant::now();
        let mut seen = Seen::default();
        assert!(!seen.is_duplicate(window, &message(Some("a")), t0));
        assert!(seen.is_duplicate(window, &message(Some("a")), t0));
        assert!(seen.is_duplicate(window, &message(Some("a")), t0 + Duration::from_millis(29)));
        let later = t0 + Duration::from_millis(30);
        assert!(!seen.is_duplicate(window, &message(Some("a")), later));
        assert!(seen.is_duplicate(window, &message(Some("a")), later));
    }

    #[test]
    fn without_a_window_nothing_is_remembered() {
        let t0 = Instant::now();
        let mut seen = Seen::default();
        assert!(!seen.is_duplicate(count(5), &message(Some("a")), t0));
        assert!(!seen.is_duplicate(None, &message(Some("a")), t0));
        assert_eq!(seen.len(), 0);
        assert!(!seen.is_duplicate(count(5), &message(Some("a")), t0));
    }

    #[test]
    fn memory_stays_within_the_count() {
        let t0 = Instant::now();
        let mut seen = Seen::default();
        for i in 0..10_000 {
            assert!(!seen.is_duplicate(count(100), &message(Some(&i.to_string())), t0));
        }
        assert_eq!(seen.len(), 100);
    }
}
