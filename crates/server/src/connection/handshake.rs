//! The protocol header and the handshake on channel 0: start / start-ok (authentication),
//! tune / tune-ok, open / open-ok. Everything here happens before the read loop starts, within
//! the handshake timeout.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use lockgate_wire::{
    connection as conn, reply_code, FieldTable, FieldValue, Frame, Method, PROTOCOL_HEADER,
};
use tokio::time::{self, Instant};
use tracing::{debug, info, trace, warn};

use super::{ClientCapabilities, Connection, End};
use crate::auth::{self, AuthError, MECHANISMS};
use crate::error::AmqpError;
use crate::management::ConnectionEntry;
use crate::tune::{self, Tuning};
use crate::writer::Outbound;

/// How long a refused login waits before connection.close (RabbitMQ's auth failure delay).
const FAILED_LOGIN_DELAY: std::time::Duration = std::time::Duration::from_secs(1);

impl Connection {
    /// Reads the next frame before `deadline`, skipping heartbeats.
    async fn next_handshake_frame(&mut self, deadline: Instant) -> Result<Method, End> {
        loop {
            let next = tokio::select! {
                () = self.ctx.shutdown.cancelled() => {
                    debug!("shutdown during the handshake");
                    return Err(End::Abort);
                }
                next = time::timeout_at(deadline, self.framed.next()) => next,
            };
            let frame = match next {
                Err(_) => {
                    info!("handshake timeout");
                    return Err(End::Abort);
                }
                Ok(None) => {
                    info!("client closed the connection during the handshake");
                    return Err(End::Done);
                }
                Ok(Some(Err(e))) => return Err(self.close_on_wire_error(&e)),
                Ok(Some(Ok(frame))) => frame,
            };
            trace!(?frame, "recv");
            match frame {
                Frame::Heartbeat => {}
                Frame::Method { channel: 0, method } => return Ok(method),
                _ => {
                    return Err(self.close_with(AmqpError::unexpected_frame(
                        "expected a method on channel 0 during the handshake",
                    )))
                }
            }
        }
    }

    /// start / start-ok / tune / tune-ok / open / open-ok.
    pub(super) async fn handshake(&mut self, deadline: Instant) -> Result<(), End> {
        self.send_method(
            0,
            conn::Start {
                version_major: 0,
                version_minor: 9,
                server_properties: server_properties(),
                mechanisms: Bytes::from_static(MECHANISMS.as_bytes()),
                locales: Bytes::from_static(b"en_US"),
            },
        );

        let start_ok = match self.next_handshake_frame(deadline).await? {
            Method::ConnectionStartOk(m) => m,
            other => return Err(self.handshake_unexpected(&other, "starting")),
        };
        self.capabilities = client_capabilities(&start_ok.client_properties);
        let client_name = client_description(&start_ok.client_properties);
        let credentials = match auth::parse_response(&start_ok.mechanism, &start_ok.response) {
            Ok(c) => c,
            Err(AuthError::UnknownMechanism(m)) => {
                return Err(self.close_with(
                    AmqpError::command_invalid(format!("unknown authentication mechanism '{m}'"))
                        .on(10, 11),
                ))
            }
            Err(e) => return Err(self.refuse_login(&start_ok.mechanism, &e).await),
        };
        let user = match self
            .ctx
            .permissions
            .authenticate(&credentials, self.peer.ip())
        {
            Ok(user) => user,
            Err(e) => return Err(self.refuse_login(&start_ok.mechanism, &e).await),
        };
        self.user = Arc::from(user.name.as_str());

        let proposal = tune::proposal(&self.ctx.config.limits);
        self.send_method(
            0,
            conn::Tune {
                channel_max: proposal.channel_max,
                frame_max: proposal.frame_max,
                heartbeat: proposal.heartbeat,
            },
        );
        let tune_ok = match self.next_handshake_frame(deadline).await? {
            Method::ConnectionTuneOk(m) => m,
            other => return Err(self.handshake_unexpected(&other, "tuning")),
        };
        let client = Tuning {
            channel_max: tune_ok.channel_max,
            frame_max: tune_ok.frame_max,
            heartbeat: tune_ok.heartbeat,
        };
        self.tuning = match tune::negotiate(proposal, client) {
            Ok(t) => t,
            Err(text) => {
                return Err(
                    self.close_with(AmqpError::new(reply_code::NOT_ALLOWED, text).on(10, 31))
                )
            }
        };
        self.framed
            .decoder_mut()
            .set_frame_max(self.tuning.frame_max);
        self.send(Outbound::FrameMax(self.tuning.frame_max));

        let open = match self.next_handshake_frame(deadline).await? {
            Method::ConnectionOpen(m) => m,
            other => return Err(self.handshake_unexpected(&other, "opening")),
        };
        let vhost_name = open.virtual_host;
        let Some(vhost) = self.ctx.broker.vhost(&vhost_name) else {
            return Err(self.close_with(
                AmqpError::not_allowed(format!("vhost {vhost_name} not found")).on(10, 40),
            ));
        };
        let max = self.ctx.config.limits.max_connections;
        let open_now = self.ctx.open_connections.load(Ordering::Relaxed);
        if max != 0 && open_now > usize::try_from(max).unwrap_or(usize::MAX) {
            return Err(self.close_with(
                AmqpError::not_allowed(format!(
                    "connection refused: node connection limit ({max}) is reached"
                ))
                .on(10, 40),
            ));
        }
        // RabbitMQ's order (rabbit_reader, connection.open): node, vhost and user connection
        // limits, then vhost access.
        let slot = match self.ctx.limits.open_connection(&user.name, &vhost_name) {
            Ok(slot) => slot,
            Err(e) => return Err(self.close_with(e.on(10, 40))),
        };
        let Some(permissions) = self.ctx.permissions.lookup(&user.name, &vhost_name) else {
            return Err(self.close_with(
                AmqpError::not_allowed(format!(
                    "access to vhost '{vhost_name}' refused for user '{}'",
                    user.name
                ))
                .on(10, 40),
            ));
        };
        self._limits_slot = Some(slot);
        self.permissions = Some(permissions);
        self.vhost = Some(vhost);
        let entry = ConnectionEntry::new(
            self.id.0,
            self.peer,
            self.local,
            &user.name,
            &vhost_name,
            &start_ok.mechanism,
            &start_ok.client_properties,
            (
                self.tuning.channel_max,
                self.tuning.frame_max,
                self.tuning.heartbeat,
            ),
            &self.ctx.shutdown,
        )
        .over_tls(self.tls);
        self.registration = Some(self.ctx.connections.register(entry));
        self.send_method(
            0,
            conn::OpenOk {
                known_hosts: String::new(),
            },
        );
        info!(
            user = %self.user,
            vhost = %vhost_name,
            client = %client_name,
            heartbeat = self.tuning.heartbeat,
            frame_max = self.tuning.frame_max,
            channel_max = self.tuning.channel_max,
            "connection opened"
        );
        Ok(())
    }

    fn handshake_unexpected(&mut self, method: &Method, state: &str) -> End {
        if let Method::ConnectionClose(_) = method {
            self.send_method(0, conn::CloseOk {});
            return End::PeerCloses;
        }
        self.close_with(
            AmqpError::channel_error(format!("unexpected method in connection state {state}"))
                .on(method.class_id(), method.method_id()),
        )
    }

    /// RabbitMQ's `auth_fail`: the client gets a generic text, the same whether the user
    /// exists or not, and only after [`FAILED_LOGIN_DELAY`] (which slows down password
    /// guessing); the log gets the reason.
    async fn refuse_login(&mut self, mechanism: &str, error: &AuthError) -> End {
        let peer = self.peer;
        match error {
            AuthError::LoopbackOnly(user) => {
                warn!(%user, %peer, "login refused: user can only connect via localhost");
            }
            AuthError::BadCredentials(user) => {
                warn!(%user, %peer, "login refused: invalid credentials");
            }
            AuthError::Malformed => warn!(mechanism, %peer, "login refused: malformed response"),
            AuthError::UnknownMechanism(m) => warn!(mechanism = %m, %peer, "login refused"),
        }
        tokio::select! {
            () = self.ctx.shutdown.cancelled() => {}
            () = time::sleep(FAILED_LOGIN_DELAY) => {}
        }
        self.close_with(AmqpError::access_refused(format!(
            "Login was refused using authentication mechanism {mechanism}. For details see the \
             broker logfile."
        )))
    }
}

/// AMQP 0-9-1, and the 0-9 header that RabbitMQ also accepts as 0-9-1
/// (`rabbit_reader:version_negotiation`).
pub(super) fn is_supported_header(header: &[u8; 8]) -> bool {
    *header == PROTOCOL_HEADER || header == b"AMQP\x01\x01\x00\x09"
}

/// What a wrong first 8 bytes most likely are, for the log (as rabbit_reader tells).
pub(super) fn bad_header_hint(header: &[u8; 8]) -> &'static str {
    match header {
        [b'G', b'E', b'T', b' ', ..] => "HTTP GET request on the AMQP port",
        [0x16, 0x03, _, _, _, 0x01, ..] => "TLS client on the non-TLS AMQP port",
        [b'A', b'M', b'Q', b'P', ..] => "unsupported AMQP protocol version",
        _ => "not AMQP",
    }
}

fn long_string(s: &str) -> FieldValue {
    FieldValue::LongString(Bytes::copy_from_slice(s.as_bytes()))
}

/// connection.start's server-properties, with the capabilities RabbitMQ advertises.
fn server_properties() -> FieldTable {
    let capabilities: FieldTable = [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "authentication_failure_close",
        "per_consumer_qos",
    ]
    .into_iter()
    .map(|c| (c.to_owned(), FieldValue::Bool(true)))
    .collect();
    [
        ("capabilities", FieldValue::Table(capabilities)),
        ("product", long_string("lockgate")),
        ("version", long_string(env!("CARGO_PKG_VERSION"))),
        ("platform", long_string("Rust")),
        ("cluster_name", long_string("lockgate")),
        ("copyright", long_string("The lockgate authors")),
        (
            "information",
            long_string("Licensed under MIT OR Apache-2.0"),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

fn client_capabilities(client_properties: &FieldTable) -> ClientCapabilities {
    let Some(FieldValue::Table(caps)) = client_properties.get("capabilities") else {
        return ClientCapabilities::default();
    };
    let flag = |name: &str| matches!(caps.get(name), Some(FieldValue::Bool(true)));
    ClientCapabilities {
        connection_blocked: flag("connection.blocked"),
        consumer_cancel_notify: flag("consumer_cancel_notify"),
    }
}

/// "pika 1.3.2" or "pika 1.3.2 (orders-worker)" from the client properties, for the log.
fn client_description(client_properties: &FieldTable) -> String {
    let text = |key: &str| match client_properties.get(key) {
        Some(FieldValue::LongString(bytes)) => Some(String::from_utf8_lossy(bytes).into_owned()),
        _ => None,
    };
    let mut description = [text("product"), text("version")]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ");
    if description.is_empty() {
        description.push_str("unknown client");
    }
    if let Some(name) = text("connection_name") {
        description = format!("{description} ({name})");
    }
    description
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_properties_advertise_capabilities() {
        let props = server_properties();
        let Some(FieldValue::Table(caps)) = props.get("capabilities") else {
            panic!("no capabilities table");
        };
        for name in [
            "publisher_confirms",
            "basic.nack",
            "connection.blocked",
            "per_consumer_qos",
        ] {
            assert_eq!(caps.get(name), Some(&FieldValue::Bool(true)), "{name}");
        }
        assert_eq!(props.get("product"), Some(&long_string("lockgate")));
    }

    #[test]
    fn protocol_headers() {
        assert!(is_supported_header(b"AMQP\x00\x00\x09\x01"));
        assert!(is_supported_header(b"AMQP\x01\x01\x00\x09"));
        assert!(!is_supported_header(b"AMQP\x00\x01\x00\x00"));
        assert!(!is_supported_header(b"AMQP\x03\x01\x00\x00"));
        assert_eq!(
            bad_header_hint(b"GET / HT"),
            "HTTP GET request on the AMQP port"
        );
        assert_eq!(
            bad_header_hint(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01]),
            "TLS client on the non-TLS AMQP port"
        );
        assert_eq!(
            bad_header_hint(b"AMQP\x00\x00\x08\x00"),
            "unsupported AMQP protocol version"
        );
    }

    #[test]
    fn client_is_described_for_the_log() {
        let props: FieldTable = [
            ("product".to_owned(), long_string("pika")),
            ("version".to_owned(), long_string("1.3.2")),
            ("connection_name".to_owned(), long_string("worker")),
        ]
        .into_iter()
        .collect();
        assert_eq!(client_description(&props), "pika 1.3.2 (worker)");
        assert_eq!(client_description(&FieldTable::default()), "unknown client");
    }

    #[test]
    fn client_capabilities_are_read() {
        let caps: FieldTable = [("connection.blocked".to_owned(), FieldValue::Bool(true))]
            .into_iter()
            .collect();
        let props: FieldTable = [("capabilities".to_owned(), FieldValue::Table(caps))]
            .into_iter()
            .collect();
        let parsed = client_capabilities(&props);
        assert!(parsed.connection_blocked);
        assert!(!parsed.consumer_cancel_notify);
        assert!(!client_capabilities(&FieldTable::default()).connection_blocked);
    }
}
