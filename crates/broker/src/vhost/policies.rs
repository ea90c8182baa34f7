//! A vhost's policies ([`crate::policy`]): setting them re-applies them to every existing
//! queue and exchange, and [`VHost::declare_queue`] computes a new queue's effective
//! arguments from them (a new exchange its alternate exchange). Neither runs on the message
//! path: the list is read at declare and replaced as a whole.

use std::sync::Arc;

use lockgate_wire::FieldTable;
use parking_lot::RwLock;
use tracing::{info, warn};

use super::VHost;
use crate::error::BrokerError;
use crate::exchange::Exchange;
use crate::policy::{self, Policy};
use crate::queue::arguments::{QueueArguments, QueueType};
use crate::vhost::QueueFlags;

/// The policies of one vhost, replaced as a whole.
#[derive(Debug, Default)]
pub(crate) struct Policies(RwLock<Arc<Vec<Policy>>>);

impl VHost {
    /// Replaces this vhost's policies and re-applies them to every existing queue and
    /// exchange: a queue whose matching policy or effective arguments changed gets them now
    /// ([`crate::Queue::set_arguments`]), an exchange its alternate exchange. Returns how
    /// many queues changed.
    pub fn set_policies(&self, policies: Vec<Policy>) -> usize {
        // Under the topology lock, so that a concurrent declare sees either the old list
        // and is then re-applied here, or the new one.
        let _topology = self.topology.lock();
        *self.policies.0.write() = Arc::new(policies);
        let mut changed = 0;
        for queue in self.queue_handles() {
            let (parsed, name) = self.effective_arguments(queue.name(), queue.raw_arguments());
            if *queue.arguments() != parsed || queue.policy_name() != name {
                info!(vhost = %self.name, queue = queue.name(), policy = ?name, "policy applied");
                queue.set_arguments(parsed, name);
                changed += 1;
            }
        }
        for exchange in self.exchanges.iter() {
            self.apply_exchange_policy(&exchange);
        }
        changed
    }

    /// Gives `exchange` the alternate exchange of the policy that applies to it, if any.
    pub(crate) fn apply_exchange_policy(&self, exchange: &Exchange) {
        let policies = self.policies.0.read();
        let policy = policy::matching_exchange(&policies, exchange.name());
        exchange.set_policy_alternate(policy.and_then(Policy::alternate_exchange));
    }

    /// This vhost's policies.
    pub fn policies(&self) -> Arc<Vec<Policy>> {
        Arc::clone(&self.policies.0.read())
    }

    /// A policy by name.
    pub fn policy(&self, name: &str) -> Option<Policy> {
        self.policies
            .0
            .read()
            .iter()
            .find(|p| p.name == name)
            .cloned()
    }

    /// The effective arguments of a queue called `name` declared with `client` arguments
    /// (already validated on their own), and the policy that applies. A policy whose settings
    /// do not combine with the client's (a retry-delay-max below the client's retry-delay) is
    /// left out, with a warning: the client's declaration is never refused because of a policy.
    pub(crate) fn effective_arguments(
        &self,
        name: &str,
        client: &FieldTable,
    ) -> (QueueArguments, Option<String>) {
        let policies = self.policies();
        let resource = self.queue_resource(name);
        let client_only = || QueueArguments::parse(client, &resource).unwrap_or_default();
        let (table, policy) = policy::effective(client, policy::matching(&policies, name));
        if policy.is_none() {
            return (client_only(), None);
        }
        match QueueArguments::parse(&table, &resource) {
            Ok(parsed) => (parsed, policy),
            Err(e) => {
                warn!(vhost = %self.name, queue = name, policy = ?policy, error = e.text(),
                    "policy does not combine with the queue's own arguments: not applied");
                (client_only(), None)
            }
        }
    }

    /// [`VHost::declare_queue`]'s hook: validates the client's arguments, and the flags
    /// against the queue type they ask for, then applies the matching policy over them.
    ///
    /// # Errors
    /// `PreconditionFailed` for invalid client arguments, or flags a quorum queue cannot have.
    pub(crate) fn declare_arguments(
        &self,
        name: &str,
        flags: QueueFlags,
        client: &FieldTable,
    ) -> Result<(QueueArguments, Option<String>), BrokerError> {
        let resource = self.queue_resource(name);
        QueueArguments::parse_declared(client, &resource)?;
        QueueType::of(client).check_flags(
            flags.durable && !flags.exclusive,
            flags.exclusive,
            flags.auto_delete,
            &resource,
        )?;
        Ok(self.effective_arguments(name, client))
    }
}

#[cfg(test)]
mod tests {
    use lockgate_wire::FieldValue;

    use crate::policy::ApplyTo;
    use crate::{Broker, BrokerConfig, ConnectionId, Policy, QueueFlags};

    fn max_length(name: &str, pattern: &str, n: i64) -> Policy {
        let definition = [("max-length".to_owned(), FieldValue::I64(n))]
            .into_iter()
            .collect();
        Policy::new("/", name, pattern, ApplyTo::Queues, 0, definition).unwrap()
    }

    #[test]
    fn policies_apply_to_new_and_existing_queues_and_client_arguments_win() {
        let broker = Broker::new(BrokerConfig::default());
        let vhost = broker.vhost("/").unwrap();
        let declare = |name: &str, arguments: lockgate_wire::FieldTable| {
            vhost
                .declare_queue(ConnectionId(1), name, QueueFlags::default(), arguments)
                .unwrap();
            vhost.queue(name).unwrap()
        };
        let before = declare("orders.a", lockgate_wire::FieldTable::default());
        assert_eq!(
            vhost.set_policies(vec![max_length("cap", "^orders", 10)]),
            1
        );
        assert_eq!(before.arguments().max_length, Some(10));
        assert_eq!(before.policy_name().as_deref(), Some("cap"));

        let after = declare("orders.b", lockgate_wire::FieldTable::default());
        assert_eq!(after.arguments().max_length, Some(10));
        let own = declare(
            "orders.c",
            [("x-max-length".to_owned(), FieldValue::I64(3))]
                .into_iter()
                .collect(),
        );
        assert_eq!(own.arguments().max_length, Some(3));
        let other = declare("audit", lockgate_wire::FieldTable::default());
        assert_eq!(other.policy_name(), None);

        // Removing the policy takes its settings away again.
        vhost.set_policies(Vec::new());
        assert_eq!(before.arguments().max_length, None);
        assert_eq!(before.policy_name(), None);
        assert_eq!(own.arguments().max_length, Some(3));
        assert!(vhost.policy("cap").is_none());
    }
}
