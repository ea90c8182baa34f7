//! Limits per vhost (`max_connections`, `max_queues` on `[[vhosts]]`) and per user
//! (`max_connections`, `max_queues` on `[[users]]`), refused with RabbitMQ's texts. An absent
//! key means unlimited; 0 allows none, as in RabbitMQ. RabbitMQ has no per-user queue limit:
//! lockgate's counts the queues a user created that still exist, and its refusal text follows
//! the vhost one.
//!
//! Connection counts are atomics touched only at connection.open and when a connection ends;
//! the queue limits count only when a limit is set and a declaration would create a queue.
//!
//! SIGHUP applies changed limits ([`LimitTable::reconfigure`]): a limit that existed keeps its
//! count and gets the new value; a new one counts from the reload on (connections already open
//! for that user or vhost do not take a slot under it).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};

use lockgate_broker::{Queue, VHost};

use crate::config::Config;
use crate::error::AmqpError;

/// A connection limit and how many connections hold a slot under it.
#[derive(Debug)]
struct Counter {
    limit: AtomicU32,
    open: AtomicU32,
}

impl Counter {
    /// Takes a slot unless the limit is reached.
    fn acquire(self: &Arc<Self>) -> Option<Arc<Self>> {
        let limit = self.limit();
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| Arc::clone(self))
    }

    fn limit(&self) -> u32 {
        self.limit.load(Ordering::Relaxed)
    }
}

/// Connection slots held while a connection is open; dropping it frees them.
#[derive(Debug, Default)]
pub struct ConnectionSlot(Vec<Arc<Counter>>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        for counter in &self.0 {
            counter.open.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Every configured vhost and user limit.
#[derive(Debug, Default)]
pub struct LimitTable {
    tables: RwLock<Tables>,
}

#[derive(Debug, Default)]
struct Tables {
    vhost_connections: HashMap<String, Arc<Counter>>,
    user_connections: HashMap<String, Arc<Counter>>,
    vhost_queues: HashMap<String, u32>,
    user_queues: HashMap<String, Arc<UserQueues>>,
}

/// The queues a user with a `max_queues` limit created. Weak handles: a deleted queue stops
/// counting without any bookkeeping on the delete path.
#[derive(Debug)]
pub struct UserQueues {
    limit: AtomicU32,
    queues: Mutex<Vec<Weak<Queue>>>,
}

impl UserQueues {
    fn with_live<T>(&self, f: impl FnOnce(&mut Vec<Weak<Queue>>) -> T) -> T {
        let mut queues = match self.queues.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        queues.retain(|q| q.upgrade().is_some_and(|q| !q.is_deleted()));
        f(&mut queues)
    }

    /// Refuses a declaration that would create one queue too many for `user`.
    ///
    /// # Errors
    /// 406 PRECONDITION_FAILED.
    pub fn check(&self, user: &str, queue: &str) -> Result<(), AmqpError> {
        let live = self.with_live(|queues| queues.len());
        let limit = self.limit.load(Ordering::Relaxed);
        if live >= usize::try_from(limit).unwrap_or(usize::MAX) {
            return Err(AmqpError::precondition_failed(format_args!(
                "cannot declare queue '{queue}': queue limit for user '{user}' ({limit}) is reached"
            )));
        }
        Ok(())
    }

    /// Counts a queue the user just created.
    pub fn record(&self, queue: &Arc<Queue>) {
        self.with_live(|queues| queues.push(Arc::downgrade(queue)));
    }
}

/// The counter for `name` in `old` with its limit set to `limit`, or a new one.
fn counter(old: &HashMap<String, Arc<Counter>>, name: &str, limit: u32) -> Arc<Counter> {
    match old.get(name) {
        Some(counter) => {
            counter.limit.store(limit, Ordering::Relaxed);
            Arc::clone(counter)
        }
        None => Arc::new(Counter {
            limit: AtomicU32::new(limit),
            open: AtomicU32::new(0),
        }),
    }
}

impl LimitTable {
    /// The limits set in the config.
    pub fn from_config(config: &Config) -> Self {
        let table = Self::default();
        table.reconfigure(config);
        table
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Tables> {
        match self.tables.read() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Applies the limits of `config` (at start and on SIGHUP), keeping the counts of limits
    /// that already existed.
    pub fn reconfigure(&self, config: &Config) {
        let mut tables = match self.tables.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut fresh = Tables::default();
        for vhost in &config.vhosts {
            if let Some(limit) = vhost.max_connections {
                fresh.vhost_connections.insert(
                    vhost.name.clone(),
                    counter(&tables.vhost_connections, &vhost.name, limit),
                );
            }
            if let Some(limit) = vhost.max_queues {
                fresh.vhost_queues.insert(vhost.name.clone(), limit);
            }
        }
        for user in &config.users {
            if let Some(limit) = user.max_connections {
                fresh.user_connections.insert(
                    user.name.clone(),
                    counter(&tables.user_connections, &user.name, limit),
                );
            }
            if let Some(limit) = user.max_queues {
                let queues = match tables.user_queues.get(&user.name) {
                    Some(queues) => {
                        queues.limit.store(limit, Ordering::Relaxed);
                        Arc::clone(queues)
                    }
                    None => Arc::new(UserQueues {
                        limit: AtomicU32::new(limit),
                        queues: Mutex::new(Vec::new()),
                    }),
                };
                fresh.user_queues.insert(user.name.clone(), queues);
            }
        }
        *tables = fresh;
    }

    /// At connection.open: takes a slot under the vhost's and the user's connection limits.
    ///
    /// # Errors
    /// 530 NOT_ALLOWED with RabbitMQ's text when either limit is reached.
    pub fn open_connection(&self, user: &str, vhost: &str) -> Result<ConnectionSlot, AmqpError> {
        let mut slot = ConnectionSlot::default();
        let tables = self.read();
        if let Some(counter) = tables.vhost_connections.get(vhost) {
            let Some(held) = counter.acquire() else {
                return Err(AmqpError::not_allowed(format_args!(
                    "access to vhost '{vhost}' refused for user '{user}': connection limit ({}) \
                     is reached",
                    counter.limit()
                )));
            };
            slot.0.push(held);
        }
        if let Some(counter) = tables.user_connections.get(user) {
            let Some(held) = counter.acquire() else {
                // `slot` drops here and gives back the vhost slot.
                return Err(AmqpError::not_allowed(format_args!(
                    "connection refused for user '{user}': user connection limit ({}) is reached",
                    counter.limit()
                )));
            };
            slot.0.push(held);
        }
        Ok(slot)
    }

    /// The queue limits for `user` in `vhost`, handed to each channel's access checks.
    pub fn queue_limits(&self, user: &str, vhost: &str) -> QueueLimits {
        let tables = self.read();
        QueueLimits {
            vhost: tables.vhost_queues.get(vhost).copied(),
            user: tables.user_queues.get(user).cloned(),
        }
    }
}

/// The queue limits that apply to one channel: the vhost's and the user's.
#[derive(Clone, Debug, Default)]
pub struct QueueLimits {
    vhost: Option<u32>,
    user: Option<Arc<UserQueues>>,
}

impl QueueLimits {
    /// Before a non-passive queue.declare by `user`: refuses one that would create a queue
    /// beyond the vhost's or the user's `max_queues`. Returns whether the declaration creates
    /// a queue that counts against the user (then call [`QueueLimits::created`] once it did).
    ///
    /// # Errors
    /// 406 PRECONDITION_FAILED with RabbitMQ's text.
    pub fn check(&self, user: &str, vhost: &VHost, queue: &str) -> Result<bool, AmqpError> {
        if self.vhost.is_none() && self.user.is_none() {
            return Ok(false);
        }
        let creates = queue.is_empty() || vhost.queue(queue).is_none();
        if !creates {
            return Ok(false);
        }
        if let Some(limit) = self.vhost {
            if vhost.queue_names().len() >= usize::try_from(limit).unwrap_or(usize::MAX) {
                return Err(AmqpError::precondition_failed(format_args!(
                    "cannot declare queue '{queue}': queue limit in vhost '{}' ({limit}) is \
                     reached",
                    vhost.name()
                )));
            }
        }
        if let Some(user_queues) = &self.user {
            user_queues.check(user, queue)?;
        }
        Ok(self.user.is_some())
    }

    /// Counts a queue the user created against the user's limit.
    pub fn created(&self, queue: &Arc<Queue>) {
        if let Some(user_queues) = &self.user {
            user_queues.record(queue);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> LimitTable {
        let config = Config::parse(
            "[[vhosts]]\nname = \"/\"\nmax_connections = 2\nmax_queues = 1\n\
             [[users]]\nname = \"u\"\npassword = \"p\"\nmax_connections = 1\n\
             [[users]]\nname = \"v\"\npassword = \"p\"\n\
             [[users]]\nname = \"w\"\npassword = \"p\"\nmax_queues = 1",
        )
        .unwrap();
        LimitTable::from_config(&config)
    }

    #[test]
    fn connection_limits_refuse_with_rabbitmq_text_and_free_on_drop() {
        let limits = table();
        let first = limits.open_connection("u", "/").unwrap();
        let err = limits.open_connection("u", "/").unwrap_err();
        assert_eq!(err.code, 530);
        assert_eq!(
            err.text,
            "NOT_ALLOWED - connection refused for user 'u': user connection limit (1) is reached"
        );
        let second = limits.open_connection("v", "/").unwrap();
        let err = limits.open_connection("v", "/").unwrap_err();
        assert_eq!(
            err.text,
            "NOT_ALLOWED - access to vhost '/' refused for user 'v': connection limit (2) is \
             reached"
        );
        drop(first);
        drop(second);
        assert!(limits.open_connection("u", "/").is_ok());
    }

    #[test]
    fn refused_user_gives_back_the_vhost_slot() {
        let limits = table();
        let _u = limits.open_connection("u", "/").unwrap();
        assert!(limits.open_connection("u", "/").is_err());
        // The refused attempt must not have kept a vhost slot: one is still free.
        assert!(limits.open_connection("v", "/").is_ok());
    }

    fn declare(vhost: &VHost, name: &str) -> Arc<Queue> {
        vhost
            .declare_queue(
                lockgate_broker::ConnectionId(1),
                name,
                lockgate_broker::QueueFlags::default(),
                lockgate_wire::FieldTable::default(),
            )
            .unwrap();
        vhost.queue(name).unwrap()
    }

    #[test]
    fn vhost_queue_limit() {
        let limits = table().queue_limits("v", "/");
        let broker = lockgate_broker::Broker::new(lockgate_broker::BrokerConfig::default());
        let vhost = broker.vhost("/").unwrap();
        assert!(limits.check("v", &vhost, "a").is_ok());
        declare(&vhost, "a");
        assert!(limits.check("v", &vhost, "a").is_ok());
        let err = limits.check("v", &vhost, "b").unwrap_err();
        assert_eq!(err.code, 406);
        assert_eq!(
            err.text,
            "PRECONDITION_FAILED - cannot declare queue 'b': queue limit in vhost '/' (1) is \
             reached"
        );
    }

    #[test]
    fn user_queue_limit_counts_live_queues_the_user_created() {
        let table = table();
        let limits = table.queue_limits("w", "other");
        let broker = lockgate_broker::Broker::new(lockgate_broker::BrokerConfig::default());
        let vhost = broker.vhost("/").unwrap();
        assert_eq!(limits.check("w", &vhost, "a"), Ok(true));
        limits.created(&declare(&vhost, "a"));
        // Redeclaring creates nothing; someone else's queue does not count.
        assert_eq!(limits.check("w", &vhost, "a"), Ok(false));
        declare(&vhost, "theirs");
        let err = limits.check("w", &vhost, "b").unwrap_err();
        assert_eq!(
            err.text,
            "PRECONDITION_FAILED - cannot declare queue 'b': queue limit for user 'w' (1) is \
             reached"
        );
        vhost
            .delete_queue(lockgate_broker::ConnectionId(1), "a", false, false)
            .unwrap();
        assert_eq!(limits.check("w", &vhost, "b"), Ok(true));
        assert_eq!(
            table.queue_limits("v", "other").check("v", &vhost, "c"),
            Ok(false)
        );
    }

    #[test]
    fn reconfigure_keeps_counts_and_applies_new_limits() {
        let limits = table();
        let _held = limits.open_connection("u", "/").unwrap();
        assert!(limits.open_connection("u", "/").is_err());
        let raised = Config::parse(
            "[[vhosts]]\nname = \"/\"\n\
             [[users]]\nname = \"u\"\npassword = \"p\"\nmax_connections = 2\n\
             [[users]]\nname = \"v\"\npassword = \"p\"\nmax_connections = 0",
        )
        .unwrap();
        limits.reconfigure(&raised);
        // One of two slots is held from before the reload.
        let _second = limits.open_connection("u", "/").unwrap();
        let err = limits.open_connection("u", "/").unwrap_err();
        assert!(
            err.text.contains("user connection limit (2)"),
            "{}",
            err.text
        );
        assert!(limits.open_connection("v", "/").is_err());
        // The vhost limit is gone from the file: unlimited.
        assert!(limits.open_connection("w", "/").is_ok());
    }
}
