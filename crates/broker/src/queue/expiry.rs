//! A queue's timed work: message TTL, retry delays and `x-expires`, all woken through the
//! broker's one timer ([`crate::timer`]).
//!
//! The queue keeps its own ordered deadlines (`expiry` and `retry`, keyed by message seq) and
//! at most one wake on the global timer (`timer_at`, the earliest it asked for). A message
//! with a TTL costs one push into `expiry` when it enters the ready messages; nothing is
//! scanned. When the wake fires, every due seq is looked up by binary search in the ready
//! list (sorted by seq), wherever it stands, and removed if it is still there and expired:
//! an expired message never waits for the head to reach a consumer. Deadlines of messages
//! that left meanwhile (delivered, purged) are skipped when they come due.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::deadletter::{Dead, Reason};
use super::{drain, insert_ready, pass_over, Queue, QueueState, Ready};
use crate::timer::{self, Deadlines, Timed};

impl Timed for Queue {
    fn fire(&self, now: Instant) {
        let mut dead = Vec::new();
        let mut unused = false;
        {
            let mut st = self.state.lock();
            st.timer_at = None;
            if st.deleted {
                return;
            }
            let more = self.expire_due(&mut st, now, EXPIRE_BATCH, &mut dead);
            // With an expiry backlog there is no drain in this wake: the messages whose
            // retry delay ended wait for the wake that ends the backlog (at once), which
            // delivers them steered as below.
            let due: Vec<u64> = if more {
                Vec::new()
            } else {
                st.retry.pop_due(now).collect()
            };
            // A message back from the delay that a consumer timeout started goes to another
            // consumer first, as when it was requeued ([`Queue::rotate_past`]): every
            // consumer passed over then is passed over again for the drain that follows.
            let passed_before = st.passed_over.len();
            for seq in due {
                if let Some(item) = st.delayed.remove(&seq) {
                    insert_ready(&mut st, item);
                    if let Some(consumers) = st.retry_passed_over.remove(&seq) {
                        for consumer in consumers.iter().filter_map(Weak::upgrade) {
                            pass_over(&mut st.passed_over, &consumer);
                        }
                    }
                }
            }
            let expires = st.args.expires.map(Duration::from_millis);
            if let (Some(expires), Some(last)) = (expires, st.last_used) {
                if st.consumers.is_empty() && now >= last + expires {
                    unused = true;
                } else if !st.consumers.is_empty() {
                    // In use: look again one period from now (one wake per period).
                    st.last_used = Some(now);
                }
            }
            if !more {
                // (With a backlog, expired messages may still stand before live ones.)
                drain(&mut st, self.store.as_ref());
            }
            st.passed_over.truncate(passed_before);
            self.refresh_room(&st);
            if more {
                // A backlog: the next batch comes at once, after other timers' due work.
                self.arm(&mut st, now);
            } else if let Some(next) = next_wake(&st) {
                self.arm(&mut st, next);
            }
        }
        self.dead_letter(dead);
        if unused {
            if let (Some(vhost), Some(me)) = (self.vhost_ref.upgrade(), self.me.upgrade()) {
                vhost.expire_queue(&me);
            }
        }
    }
}

/// How many TTL deadlines one wake handles at most.
const EXPIRE_BATCH: usize = 4096;

/// The earliest of the queue's deadlines.
fn next_wake(st: &QueueState) -> Option<Instant> {
    let expires = st
        .args
        .expires
        .zip(st.last_used)
        .map(|(ms, last)| last + Duration::from_millis(ms));
    [st.expiry.next(), st.retry.next(), expires]
        .into_iter()
        .flatten()
        .min()
}

/// The messages that can have a live TTL deadline: in memory, behind the disk tail and held
/// aside by a retry delay.
pub(super) fn ready_count(st: &QueueState) -> usize {
    st.ready.len() + st.tails.pending_len() + st.delayed.len()
}

/// Removes the message `seq` from the ready messages (head, behind the disk tail or held
/// aside by a retry delay) if it is there and expired at `now`.
fn take_expired(st: &mut QueueState, seq: u64, now: Instant) -> Option<Ready> {
    let ttl = st.args.message_ttl;
    let expired = |r: &Ready| r.seq == seq && r.message.expires_at(ttl).is_some_and(|t| t <= now);
    if st.ready.find(seq).is_some_and(expired) {
        return st.ready.remove(seq);
    }
    if let Some(item) = st.tails.remove_pending(seq, expired) {
        return Some(item);
    }
    // Held aside by its retry delay: it expires there too (its retry deadline is then skipped).
    if st.delayed.get(&seq).is_some_and(expired) {
        st.retry_passed_over.remove(&seq);
        return st.delayed.remove(&seq);
    }
    None
}

impl Queue {
    /// Removes the messages whose TTL deadline is due at `now` (discarded into `dead`), at
    /// most `limit` deadlines; true when more are due. The timer's wake passes
    /// [`EXPIRE_BATCH`], so that neither the queue lock nor the timer thread is held for a
    /// whole backlog; a path about to deliver passes `usize::MAX` (nothing expired may
    /// reach a consumer).
    pub(super) fn expire_due(
        &self,
        st: &mut QueueState,
        now: Instant,
        limit: usize,
        dead: &mut Vec<Dead>,
    ) -> bool {
        let due: Vec<u64> = st.expiry.pop_due(now).take(limit).collect();
        let more = due.len() == limit && st.expiry.next().is_some_and(|t| t <= now);
        for seq in due {
            if let Some(item) = take_expired(st, seq, now) {
                st.counters.expired += 1;
                self.discard(st, item, Reason::Expired, dead);
            }
        }
        more
    }

    /// The TTL changed (policy): every ready message's deadline is computed again, once.
    pub(super) fn reschedule_expiry(&self, st: &mut QueueState) {
        let ttl = st.args.message_ttl;
        let mut expiry = Deadlines::new();
        let items = st
            .ready
            .iter()
            .chain(st.tails.pending())
            .chain(st.delayed.values());
        for item in items {
            if let Some(at) = item.message.expires_at(ttl) {
                expiry.push(at, item.seq);
            }
        }
        st.expiry = expiry;
        if let Some(next) = st.expiry.next() {
            self.arm(st, next);
        }
    }

    /// Makes sure the timer wakes the queue at `at` or earlier (one global entry per queue,
    /// replaced only by an earlier one).
    pub(super) fn arm(&self, st: &mut QueueState, at: Instant) {
        if st.timer_at.is_none_or(|t| at < t) {
            st.timer_at = Some(at);
            let me: Weak<dyn Timed> = self.me.clone();
            timer::schedule(at, me);
        }
    }

    /// Records a use of the queue (`x-expires`: consumers, `basic.get`, redeclaration).
    pub(crate) fn touch(&self) {
        let mut st = self.state.lock();
        self.touch_locked(&mut st);
    }

    pub(super) fn touch_locked(&self, st: &mut QueueState) {
        let Some(ms) = st.args.expires else {
            return;
        };
        let now = Instant::now();
        st.last_used = Some(now);
        self.arm(st, now + Duration::from_millis(ms));
    }

    /// Before spilling `items`: keeps the arrival time of those that can expire, since
    /// messages read back from disk are rebuilt with a fresh one.
    pub(super) fn remember_arrivals(st: &mut QueueState, lane: usize, items: &[Ready]) {
        let ttl = st.args.message_ttl;
        st.tails.arrivals_mut(lane).extend(
            items
                .iter()
                .filter(|r| r.message.expires_at(ttl).is_some())
                .map(|r| (r.seq, r.message.received_at())),
        );
    }

    /// After a page-in: restores the arrival times of the messages read back and schedules
    /// their TTL (an already expired one goes on the next wake, before any delivery).
    pub(super) fn restore_arrivals(&self, st: &mut QueueState, lane: usize, paged: &mut [Ready]) {
        let mut arrivals = std::mem::take(st.tails.arrivals_mut(lane));
        for item in paged.iter_mut() {
            while arrivals.front().is_some_and(|&(seq, _)| seq < item.seq) {
                arrivals.pop_front();
            }
            if let Some(&(seq, at)) = arrivals.front() {
                if seq == item.seq {
                    arrivals.pop_front();
                    if let Some(message) = Arc::get_mut(&mut item.message) {
                        message.set_received_at(at);
                    }
                }
            }
            if let Some(at) = item.message.expires_at(st.args.message_ttl) {
                st.expiry.push(at, item.seq);
                self.arm(st, at);
            }
        }
        *st.tails.arrivals_mut(lane) = arrivals;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        Broker, BrokerConfig, Channel, ChannelId, ConnectionId, ConsumerTag, Delivery,
        DeliverySink, DeliveryTag, Message, QueueFlags, SinkClosed, VHost,
    };
    use bytes::Bytes;
    use lockgate_wire::{BasicProperties, ContentHeader, FieldTable, FieldValue};
    use parking_lot::Mutex;

    /// Collects (consumer tag, body) of each delivery.
    #[derive(Default)]
    struct Collect(Mutex<Vec<(String, String)>>);

    impl Collect {
        /// The bodies delivered to consumer `tag`, in order.
        fn of(&self, tag: &str) -> Vec<String> {
            let got = self.0.lock();
            got.iter()
                .filter(|(t, _)| t == tag)
                .map(|(_, body)| body.clone())
                .collect()
        }
    }

    impl DeliverySink for Collect {
        fn deliver(&self, d: Delivery) -> Result<(), SinkClosed> {
            let body = String::from_utf8(d.message.body().to_vec()).unwrap();
            self.0
                .lock()
                .push((d.consumer_tag.as_str().to_owned(), body));
            Ok(())
        }

        fn consumer_cancelled(&self, _: &ConsumerTag) {}
    }

    const HOUR: Duration = Duration::from_secs(3600);

    fn publish(v: &VHost, body: &str, properties: BasicProperties) {
        let header = ContentHeader::new(60, body.len() as u64, properties).unwrap();
        let body = Bytes::from(body.to_owned());
        let m = Message::new(String::new(), "q".into(), header, body);
        v.publish(false, m).unwrap();
    }

    /// Queue "q" with an hour's consumer timeout (and an hour's retry delay if `retry`), the
    /// consumers `high` of priority 5 with prefetch 1 on one channel, each given one message
    /// ("0", "1", ...), and "low" of priority 0 without a limit on another channel. The
    /// channels go last in the tuple: they must stay open.
    fn hung(retry: bool, high: &[&str]) -> (Arc<VHost>, Arc<Queue>, Arc<Collect>, [Channel; 2]) {
        let v = Broker::new(BrokerConfig::default()).vhost("/").unwrap();
        let mut args: FieldTable = [("x-consumer-timeout".to_owned(), FieldValue::I64(3_600_000))]
            .into_iter()
            .collect();
        if retry {
            args.insert("x-retry-delay".to_owned(), FieldValue::I64(3_600_000));
        }
        v.declare_queue(ConnectionId(1), "q", QueueFlags::default(), args)
            .unwrap();
        let sink = Arc::new(Collect::default());
        let new_channel =
            |id| Channel::new(Arc::clone(&v), ConnectionId(1), ChannelId(id), sink.clone());
        let (mut hung, mut low) = (new_channel(1), new_channel(2));
        hung.qos(1, false);
        let priority: FieldTable = [("x-priority".to_owned(), FieldValue::I32(5))]
            .into_iter()
            .collect();
        for tag in high {
            hung.consume("q", tag, false, false, &priority, |_| {})
                .unwrap();
        }
        low.consume("q", "low", false, false, &FieldTable::default(), |_| {})
            .unwrap();
        for (n, tag) in high.iter().enumerate() {
            publish(&v, &n.to_string(), BasicProperties::default());
            assert_eq!(sink.of(tag), [n.to_string()]);
        }
        let q = v.queue("q").unwrap();
        (v, q, sink, [hung, low])
    }

    /// Runs the consumer timeouts of consumer `tag`'s channel at `now`.
    fn time_out(q: &Queue, tag: &str, now: Instant) {
        let consumers = q.consumer_handles();
        let consumer = consumers.iter().find(|c| c.tag.as_str() == tag).unwrap();
        consumer.channel.fire(now);
    }

    #[test]
    fn deliveries_of_consumers_timing_out_in_one_wake_go_to_another_consumer_first() {
        let (_v, q, sink, _channels) = hung(false, &["h1", "h2"]);
        time_out(&q, "h1", Instant::now() + 2 * HOUR);
        assert_eq!(sink.of("low"), ["0", "1"]);
        assert_eq!(
            (sink.of("h1"), sink.of("h2")),
            (vec!["0".into()], vec!["1".into()])
        );
    }

    #[test]
    fn deliveries_of_consumers_back_from_one_retry_delay_go_to_another_consumer_first() {
        let (_v, q, sink, _channels) = hung(true, &["h1", "h2"]);
        let later = Instant::now() + 2 * HOUR;
        time_out(&q, "h1", later);
        assert!(sink.of("low").is_empty());
        q.fire(later + 2 * HOUR);
        assert_eq!(sink.of("low"), ["0", "1"]);
        assert_eq!(
            (sink.of("h1"), sink.of("h2")),
            (vec!["0".into()], vec!["1".into()])
        );
    }

    #[test]
    fn a_delivery_back_from_its_retry_delay_behind_an_expiry_backlog_goes_to_another_consumer_first(
    ) {
        let (v, q, sink, [_hung, mut low]) = hung(true, &["h1"]);
        // More messages than one wake expires, held aside by their retry delay, all expiring
        // before the delay of "0" ends.
        let expiring = BasicProperties {
            expiration: Some("600000".into()),
            ..BasicProperties::default()
        };
        let backlog = 2 * EXPIRE_BATCH;
        for _ in 0..backlog {
            publish(&v, "x", expiring.clone());
        }
        assert_eq!(sink.of("low").len(), backlog);
        low.nack(DeliveryTag(backlog as u64), true, true).unwrap();
        let later = Instant::now() + 2 * HOUR;
        time_out(&q, "h1", later);
        for _ in 0..10 {
            if q.snapshot().expired == backlog as u64 {
                break;
            }
            q.fire(later + 2 * HOUR);
        }
        assert_eq!(q.snapshot().expired, backlog as u64);
        assert_eq!(sink.of("low").last().map(String::as_str), Some("0"));
        assert_eq!(sink.of("h1"), ["0"]);
    }

    #[test]
    fn a_backlog_expires_in_batches() {
        let v = Broker::new(BrokerConfig::default()).vhost("/").unwrap();
        let args: FieldTable = [("x-message-ttl".to_owned(), FieldValue::I64(60_000))]
            .into_iter()
            .collect();
        v.declare_queue(ConnectionId(1), "q", QueueFlags::default(), args)
            .unwrap();
        let header = ContentHeader::new(60, 1, BasicProperties::default()).unwrap();
        for _ in 0..10_000 {
            let m = Message::new(String::new(), "q".into(), header.clone(), Bytes::new());
            v.publish(false, m).unwrap();
        }
        let q = v.queue("q").unwrap();
        let later = Instant::now() + Duration::from_secs(120);
        q.fire(later);
        assert_eq!(q.snapshot().expired, EXPIRE_BATCH as u64);
        q.fire(later);
        q.fire(later);
        assert_eq!(q.snapshot().expired, 10_000);
        assert_eq!(q.message_count(), 0);
    }

    #[test]
    fn delivered_messages_do_not_keep_their_ttl_deadlines() {
        let v = Broker::new(BrokerConfig::default()).vhost("/").unwrap();
        let args: FieldTable = [("x-message-ttl".to_owned(), FieldValue::I64(86_400_000))]
            .into_iter()
            .collect();
        v.declare_queue(ConnectionId(1), "q", QueueFlags::default(), args)
            .unwrap();
        let mut ch = Channel::discarding(&v);
        ch.consume("q", "c", true, false, &FieldTable::default(), |_| {})
            .unwrap();
        let header = ContentHeader::new(60, 1, BasicProperties::default()).unwrap();
        for _ in 0..20_000 {
            let m = Message::new(String::new(), "q".into(), header.clone(), Bytes::new());
            v.publish(false, m).unwrap();
        }
        let q = v.queue("q").unwrap();
        let st = q.state.lock();
        assert_eq!(ready_count(&st), 0);
        assert!(st.expiry.len() <= 1025, "{} deadlines", st.expiry.len());
    }
}
