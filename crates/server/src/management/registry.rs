//! The open AMQP connections, as the management API lists and closes them.
//!
//! A connection registers once its handshake is done and is removed when its
//! [`Registration`] drops; nothing here is touched per frame. Closing from the API cancels the
//! connection's own token, which its read loop already watches (it is a child of the shutdown
//! token), with the reason it should give the client.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use lockgate_wire::FieldTable;
use tokio_util::sync::CancellationToken;

/// What the API shows of one connection.
#[derive(Debug)]
pub struct ConnectionEntry {
    /// The broker's connection id.
    pub id: u64,
    /// RabbitMQ's connection name: "PEER -> LOCAL".
    pub name: String,
    /// The client's address.
    pub peer: SocketAddr,
    /// Our address: the accepted socket's local address (AMQP or AMQPS listener).
    pub local: SocketAddr,
    /// The authenticated user.
    pub user: String,
    /// The vhost it opened.
    pub vhost: String,
    /// SASL mechanism used.
    pub auth_mechanism: String,
    /// What the client sent in connection.start-ok, encoded: only the API reads it, and the
    /// octets take a fraction of the decoded table's memory (a tree node per table, a string
    /// per key), kept for as long as the connection lives.
    client_properties: Box<[u8]>,
    /// Negotiated limits.
    pub channel_max: u16,
    /// Negotiated frame size.
    pub frame_max: u32,
    /// Negotiated heartbeat, seconds.
    pub heartbeat: u16,
    /// Milliseconds since the epoch.
    pub connected_at: u64,
    /// Accepted on the AMQPS listener (`"ssl"` in the API).
    pub tls: bool,
    close: CancellationToken,
    close_reason: Mutex<Option<String>>,
}

impl ConnectionEntry {
    /// An entry; `shutdown` is the server's shutdown token (the connection's own token is its
    /// child, so a shutdown still reaches it).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: u64,
        peer: SocketAddr,
        local: SocketAddr,
        user: &str,
        vhost: &str,
        auth_mechanism: &str,
        client_properties: &FieldTable,
        tuning: (u16, u32, u16),
        shutdown: &CancellationToken,
    ) -> Self {
        let connected_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Self {
            id,
            name: format!("{peer} -> {local}"),
            peer,
            local,
            user: user.to_owned(),
            vhost: vhost.to_owned(),
            auth_mechanism: auth_mechanism.to_owned(),
            client_properties: encode(client_properties),
            channel_max: tuning.0,
            frame_max: tuning.1,
            heartbeat: tuning.2,
            connected_at,
            tls: false,
            close: shutdown.child_token(),
            close_reason: Mutex::new(None),
        }
    }

    /// What the client sent in connection.start-ok.
    pub fn client_properties(&self) -> FieldTable {
        FieldTable::decode(&self.client_properties).unwrap_or_default()
    }

    /// Marks a connection accepted on the AMQPS listener.
    #[must_use]
    pub fn over_tls(mut self, tls: bool) -> Self {
        self.tls = tls;
        self
    }

    /// Asks the connection to close with connection.close 320 and `reason`.
    pub fn close(&self, reason: &str) {
        *self
            .close_reason
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(reason.to_owned());
        self.close.cancel();
    }
}

/// `table` encoded, in an allocation of its size; empty (decoding to an empty table) if it
/// does not encode, which a table decoded from the wire always does.
fn encode(table: &FieldTable) -> Box<[u8]> {
    let mut octets = BytesMut::new();
    if table.encode(&mut octets).is_err() {
        return Box::default();
    }
    Box::from(&octets[..])
}

/// The open connections by id.
#[derive(Debug, Default)]
pub struct Registry {
    connections: Mutex<BTreeMap<u64, Arc<ConnectionEntry>>>,
}

impl Registry {
    /// Adds a connection; it is removed when the returned registration drops.
    pub fn register(self: &Arc<Self>, entry: ConnectionEntry) -> Registration {
        let entry = Arc::new(entry);
        self.lock().insert(entry.id, Arc::clone(&entry));
        Registration {
            registry: Arc::clone(self),
            entry,
        }
    }

    /// Every open connection, by id.
    pub fn list(&self) -> Vec<Arc<ConnectionEntry>> {
        self.lock().values().cloned().collect()
    }

    /// A connection by its RabbitMQ-style name.
    pub fn by_name(&self, name: &str) -> Option<Arc<ConnectionEntry>> {
        self.lock().values().find(|c| c.name == name).cloned()
    }

    /// A connection by id.
    pub fn by_id(&self, id: u64) -> Option<Arc<ConnectionEntry>> {
        self.lock().get(&id).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<ConnectionEntry>>> {
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Held by a connection while it is open.
#[derive(Debug)]
pub struct Registration {
    registry: Arc<Registry>,
    entry: Arc<ConnectionEntry>,
}

impl Registration {
    /// Cancelled on shutdown or when the API closes this connection.
    pub fn close_token(&self) -> CancellationToken {
        self.entry.close.clone()
    }

    /// The reason given by the API, when it asked for the close.
    pub fn close_reason(&self) -> Option<String> {
        self.entry
            .close_reason
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.entry.id);
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use lockgate_wire::FieldValue;

    use super::*;

    fn entry(client_properties: &FieldTable) -> ConnectionEntry {
        let addr = SocketAddr::from(([127, 0, 0, 1], 5672));
        ConnectionEntry::new(
            1,
            addr,
            addr,
            "guest",
            "/",
            "PLAIN",
            client_properties,
            (2047, 131_072, 60),
            &CancellationToken::new(),
        )
    }

    #[test]
    fn client_properties_are_kept_as_the_client_sent_them() {
        let capabilities: FieldTable = [
            ("publisher_confirms".to_owned(), FieldValue::Bool(true)),
            ("connection.blocked".to_owned(), FieldValue::Bool(true)),
        ]
        .into_iter()
        .collect();
        let properties: FieldTable = [
            (
                "product".to_owned(),
                FieldValue::LongString(Bytes::from_static(b"pika")),
            ),
            ("capabilities".to_owned(), FieldValue::Table(capabilities)),
            ("channel_max".to_owned(), FieldValue::I64(-3)),
            (
                "list".to_owned(),
                FieldValue::Array(vec![FieldValue::U8(1), FieldValue::Void]),
            ),
        ]
        .into_iter()
        .collect();
        assert_eq!(entry(&properties).client_properties(), properties);
        assert_eq!(
            entry(&FieldTable::new()).client_properties(),
            FieldTable::new()
        );
    }
}
