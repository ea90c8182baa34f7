//! Id newtypes and definition kinds.

/// A durable (or spilling) queue's id, handed out by the store. Keys use it instead of the
/// queue's name so that index keys stay 17 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueId(pub u64);

/// A persistent message's id, handed out by [`crate::Store::publish`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub u64);

/// Where one stored copy of a message sits: the broker keeps it beside the message in its
/// queue and hands it back to [`crate::Store::remove`] when the message is acked or dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StoredRef {
    /// The queue holding the copy.
    pub queue: QueueId,
    /// The copy's position in that queue.
    pub seq: u64,
    /// The shared message record.
    pub message: MessageId,
}

/// The kinds of definitions the store keeps. Keys and values are the broker's own encoding;
/// queues have their own calls ([`crate::Store::put_queue`]) because they get a [`QueueId`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum DefinitionKind {
    /// A virtual host.
    VHost,
    /// A user (name, password hash, tags).
    User,
    /// A user's permissions on a vhost.
    Permission,
    /// A durable exchange.
    Exchange,
    /// A binding between durable exchanges and queues.
    Binding,
    /// A policy.
    Policy,
    /// A runtime parameter.
    Parameter,
}

/// The kind byte of queue definitions.
pub(crate) const QUEUE_KIND: u8 = b'q';

impl DefinitionKind {
    /// Every kind, in the order recovery returns them (vhosts and users before what lives in
    /// a vhost, exchanges before bindings).
    pub const ALL: [DefinitionKind; 7] = [
        DefinitionKind::VHost,
        DefinitionKind::User,
        DefinitionKind::Permission,
        DefinitionKind::Policy,
        DefinitionKind::Parameter,
        DefinitionKind::Exchange,
        DefinitionKind::Binding,
    ];

    pub(crate) fn tag(self) -> u8 {
        match self {
            DefinitionKind::VHost => b'v',
            DefinitionKind::User => b'u',
            DefinitionKind::Permission => b'p',
            DefinitionKind::Exchange => b'e',
            DefinitionKind::Binding => b'b',
            DefinitionKind::Policy => b'y',
            DefinitionKind::Parameter => b'a',
        }
    }
}
