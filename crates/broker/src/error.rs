//! Broker errors in domain terms.
//!
//! Every variant carries the complete reply text RabbitMQ would send, prefixed with the
//! reply-code name ("NOT_FOUND - no queue 'q' in vhost '/'"), so the server can copy it into
//! `channel.close` / `connection.close` unchanged. The server maps variants to reply codes
//! ([`BrokerError::reply_code`] is the mapping RabbitMQ uses) and to a scope
//! ([`BrokerError::is_connection_error`]).

use std::fmt;

/// A failed broker operation, with RabbitMQ's reply text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BrokerError {
    /// 404: the exchange or queue does not exist. Channel error.
    #[error("{0}")]
    NotFound(String),
    /// 403: forbidden operation (default exchange, reserved `amq.` names, internal exchange,
    /// queue in exclusive use by a consumer). Channel error.
    #[error("{0}")]
    AccessRefused(String),
    /// 405: the queue is exclusive to another connection. Channel error.
    #[error("{0}")]
    ResourceLocked(String),
    /// 406: inequivalent redeclaration, `if-unused`/`if-empty` failed, invalid argument,
    /// unknown delivery tag. Channel error.
    #[error("{0}")]
    PreconditionFailed(String),
    /// 503: a command RabbitMQ refuses outright (unknown exchange type). Connection error.
    #[error("{0}")]
    CommandInvalid(String),
    /// 530: the peer broke a rule RabbitMQ treats as fatal (reused consumer tag).
    /// Connection error.
    #[error("{0}")]
    NotAllowed(String),
    /// 540: a feature RabbitMQ refuses as well (`basic.recover` with requeue=false).
    /// Connection error.
    #[error("{0}")]
    NotImplemented(String),
}

impl BrokerError {
    /// The AMQP reply code RabbitMQ uses for this error.
    pub fn reply_code(&self) -> u16 {
        match self {
            Self::NotFound(_) => 404,
            Self::AccessRefused(_) => 403,
            Self::ResourceLocked(_) => 405,
            Self::PreconditionFailed(_) => 406,
            Self::CommandInvalid(_) => 503,
            Self::NotAllowed(_) => 530,
            Self::NotImplemented(_) => 540,
        }
    }

    /// True when the error closes the whole connection (hard error), false when it closes
    /// only the channel (soft error).
    pub fn is_connection_error(&self) -> bool {
        matches!(
            self,
            Self::CommandInvalid(_) | Self::NotAllowed(_) | Self::NotImplemented(_)
        )
    }

    /// The reply text, e.g. "NOT_FOUND - no queue 'q' in vhost '/'".
    pub fn text(&self) -> &str {
        match self {
            Self::NotFound(t)
            | Self::AccessRefused(t)
            | Self::ResourceLocked(t)
            | Self::PreconditionFailed(t)
            | Self::CommandInvalid(t)
            | Self::NotAllowed(t)
            | Self::NotImplemented(t) => t,
        }
    }

    pub(crate) fn not_found(what: impl fmt::Display) -> Self {
        Self::NotFound(format!("NOT_FOUND - no {what}"))
    }

    pub(crate) fn access_refused(text: impl fmt::Display) -> Self {
        Self::AccessRefused(format!("ACCESS_REFUSED - {text}"))
    }

    pub(crate) fn resource_locked(queue: &Resource<'_>) -> Self {
        Self::ResourceLocked(format!(
            "RESOURCE_LOCKED - cannot obtain exclusive access to locked {queue}. It could be \
             originally declared on another connection or the exclusive property value does not \
             match that of the original declaration."
        ))
    }

    pub(crate) fn precondition_failed(text: impl fmt::Display) -> Self {
        Self::PreconditionFailed(format!("PRECONDITION_FAILED - {text}"))
    }

    pub(crate) fn command_invalid(text: impl fmt::Display) -> Self {
        Self::CommandInvalid(format!("COMMAND_INVALID - {text}"))
    }

    pub(crate) fn not_allowed(text: impl fmt::Display) -> Self {
        Self::NotAllowed(format!("NOT_ALLOWED - {text}"))
    }

    pub(crate) fn not_implemented(text: impl fmt::Display) -> Self {
        Self::NotImplemented(format!("NOT_IMPLEMENTED - {text}"))
    }

    pub(crate) fn default_exchange() -> Self {
        Self::access_refused("operation not permitted on the default exchange")
    }

    pub(crate) fn unknown_delivery_tag(tag: u64) -> Self {
        Self::precondition_failed(format_args!("unknown delivery tag {tag}"))
    }

    /// RabbitMQ's "inequivalent arg" text; `received` and `current` are already formatted
    /// ("'true'", "the value '10' of type 'long'", "none").
    pub(crate) fn inequivalent(
        key: &str,
        resource: &Resource<'_>,
        received: &str,
        current: &str,
    ) -> Self {
        Self::precondition_failed(format_args!(
            "inequivalent arg '{key}' for {resource}: received {received} but current is {current}"
        ))
    }
}

/// A named resource, displayed as RabbitMQ's `rs/1` does: "queue 'q' in vhost '/'".
pub(crate) struct Resource<'a> {
    pub kind: &'static str,
    pub name: &'a str,
    pub vhost: &'a str,
}

impl<'a> Resource<'a> {
    pub fn queue(name: &'a str, vhost: &'a str) -> Self {
        Self {
            kind: "queue",
            name,
            vhost,
        }
    }

    pub fn exchange(name: &'a str, vhost: &'a str) -> Self {
        Self {
            kind: "exchange",
            name,
            vhost,
        }
    }
}

impl fmt::Display for Resource<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} '{}' in vhost '{}'", self.kind, self.name, self.vhost)
    }
}
