//! Message rates: every [`INTERVAL`] the sampler reads each queue's monotonic counters and
//! stores the per-second rate since the previous sample, as RabbitMQ's management agent does
//! with its 5-second sample interval.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use lockgate_broker::QueueSnapshot;

use crate::connection::ServerContext;

/// How often counters are sampled (RabbitMQ's `collect_statistics_interval` default).
pub const INTERVAL: Duration = Duration::from_secs(5);

/// Per-second rates of one queue (or of the whole broker).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct QueueRates {
    /// Messages published into the queue.
    pub publish: f64,
    /// Deliveries to consumers and `basic.get`.
    pub deliver_get: f64,
    /// Acknowledgements.
    pub ack: f64,
    /// Redeliveries.
    pub redeliver: f64,
    /// Change of the queue depth (ready + unacked), negative while it drains.
    pub messages: f64,
}

impl QueueRates {
    fn add(&mut self, other: &Self) {
        self.publish += other.publish;
        self.deliver_get += other.deliver_get;
        self.ack += other.ack;
        self.redeliver += other.redeliver;
        self.messages += other.messages;
    }
}

#[derive(Default)]
struct State {
    previous: HashMap<(String, String), (Instant, [u64; 5])>,
    rates: HashMap<(String, String), QueueRates>,
}

/// The latest rates, per (vhost, queue).
#[derive(Default)]
pub struct Rates {
    state: Mutex<State>,
}

/// The sampled values: four monotonic counters, then the depth (a gauge).
fn counters(s: &QueueSnapshot) -> [u64; 5] {
    [
        s.published,
        s.delivered,
        s.acked,
        s.redelivered,
        s.ready + s.unacked,
    ]
}

impl Rates {
    /// The rates of one queue (zero before the second sample).
    pub fn queue(&self, vhost: &str, queue: &str) -> QueueRates {
        self.lock()
            .rates
            .get(&(vhost.to_owned(), queue.to_owned()))
            .copied()
            .unwrap_or_default()
    }

    /// The sum over every queue (of one vhost when given).
    pub fn total(&self, vhost: Option<&str>) -> QueueRates {
        let mut sum = QueueRates::default();
        for ((v, _), r) in &self.lock().rates {
            if vhost.is_none_or(|want| want == v) {
                sum.add(r);
            }
        }
        sum
    }

    fn record(&self, now: Instant, samples: Vec<((String, String), [u64; 5])>) {
        let mut st = self.lock();
        let mut previous = HashMap::with_capacity(samples.len());
        let mut rates = HashMap::with_capacity(samples.len());
        for (key, current) in samples {
            if let Some((then, before)) = st.previous.get(&key) {
                let secs = now.duration_since(*then).as_secs_f64();
                if secs > 0.0 {
                    #[allow(clippy::cast_precision_loss)]
                    let rate = |i: usize| current[i].saturating_sub(before[i]) as f64 / secs;
                    #[allow(clippy::cast_precision_loss)]
                    let depth = (current[4] as f64 - before[4] as f64) / secs;
                    rates.insert(
                        key.clone(),
                        QueueRates {
                            publish: rate(0),
                            deliver_get: rate(1),
                            ack: rate(2),
                            redeliver: rate(3),
                            messages: depth,
                        },
                    );
                }
            }
            previous.insert(key, (now, current));
        }
        st.previous = previous;
        st.rates = rates;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Samples every queue's counters until shutdown.
pub async fn sample(ctx: Arc<ServerContext>, rates: Arc<Rates>) {
    let mut ticker = tokio::time::interval(INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = ctx.shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let mut samples = Vec::new();
        for vhost_name in ctx.broker.vhost_names() {
            let Some(vhost) = ctx.broker.vhost(&vhost_name) else {
                continue;
            };
            for name in vhost.queue_names() {
                if let Some(queue) = vhost.queue(&name) {
                    samples.push(((vhost_name.clone(), name), counters(&queue.snapshot())));
                }
            }
        }
        rates.record(Instant::now(), samples);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_is_the_counter_delta_per_second() {
        let rates = Rates::default();
        let key = ("/".to_owned(), "q".to_owned());
        let t0 = Instant::now();
        rates.record(t0, vec![(key.clone(), [0, 0, 0, 0, 8])]);
        assert_eq!(rates.queue("/", "q"), QueueRates::default());
        rates.record(t0 + Duration::from_secs(2), vec![(key, [10, 4, 2, 1, 4])]);
        let r = rates.queue("/", "q");
        assert!((r.publish - 5.0).abs() < 1e-9);
        assert!((r.deliver_get - 2.0).abs() < 1e-9);
        assert!((r.ack - 1.0).abs() < 1e-9);
        assert!((r.redeliver - 0.5).abs() < 1e-9);
        assert!((r.messages + 2.0).abs() < 1e-9);
        assert!((rates.total(None).publish - 5.0).abs() < 1e-9);
        assert_eq!(rates.total(Some("other")), QueueRates::default());
    }
}
