//! The client's error type.

use std::fmt;
use std::sync::Arc;

use lockgate_wire::WireError;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why the broker closed a channel or a connection: the arguments of its
/// `channel.close` / `connection.close`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseReason {
    /// AMQP reply code, e.g. 404 (`NOT_FOUND`) or 406 (`PRECONDITION_FAILED`).
    pub code: u16,
    /// Reply text, e.g. `"NOT_FOUND - no queue 'x' in vhost '/'"`.
    pub text: String,
    /// Class id of the method that caused the close (0 if none).
    pub class_id: u16,
    /// Method id of the method that caused the close (0 if none).
    pub method_id: u16,
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.text)
    }
}

/// Everything that can go wrong talking to a broker.
///
/// The type is `Clone` because one failure (a lost socket, a channel closed by
/// the broker) is reported to every call and stream waiting on it.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The connection URI could not be parsed.
    #[error("invalid AMQP URI: {0}")]
    InvalidUri(String),
    /// An argument cannot be sent (e.g. a name longer than 255 bytes); nothing was sent.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A socket operation failed (connecting, reading or writing).
    #[error("I/O error: {0}")]
    Io(Arc<std::io::Error>),
    /// The broker sent bytes that are not valid AMQP 0-9-1.
    #[error("protocol error: {0}")]
    Protocol(Arc<WireError>),
    /// The broker sent a frame or method the client did not expect at that point.
    #[error("unexpected frame from the broker: {0}")]
    UnexpectedFrame(String),
    /// Connection negotiation failed (no common mechanism, socket closed during the handshake, ...).
    #[error("connection negotiation failed: {0}")]
    Negotiation(String),
    /// The broker closed the channel (a soft error such as 404 or 406).
    #[error("channel closed by the broker: {0}")]
    ChannelClosed(CloseReason),
    /// The broker closed the connection (e.g. 403 access refused, 320 forced shutdown).
    #[error("connection closed by the broker: {0}")]
    ConnectionClosed(CloseReason),
    /// No heartbeat or other frame arrived from the broker in two heartbeat intervals.
    #[error("missed heartbeats from the broker")]
    HeartbeatTimeout,
    /// The connection is down and automatic recovery is trying to restore it.
    #[error("connection lost; automatic recovery in progress")]
    Disconnected,
    /// The channel or connection was closed by this application.
    #[error("closed by the application")]
    ClientClosed,
    /// The broker negatively acknowledged a published message (`basic.nack`).
    #[error("message nacked by the broker")]
    Nacked,
    /// Every channel id up to the negotiated `channel_max` is in use.
    #[error("no free channel id (channel_max reached)")]
    ChannelsExhausted,
}

impl Error {
    /// The broker's reply code, when the broker closed the channel or connection.
    pub fn reply_code(&self) -> Option<u16> {
        self.close_reason().map(|r| r.code)
    }

    /// The broker's reply text, when the broker closed the channel or connection.
    pub fn reply_text(&self) -> Option<&str> {
        self.close_reason().map(|r| r.text.as_str())
    }

    /// The broker's close arguments, when the broker closed the channel or connection.
    pub fn close_reason(&self) -> Option<&CloseReason> {
        match self {
            Error::ChannelClosed(r) | Error::ConnectionClosed(r) => Some(r),
            _ => None,
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(Arc::new(e))
    }
}

impl From<WireError> for Error {
    fn from(e: WireError) -> Self {
        Error::Protocol(Arc::new(e))
    }
}
