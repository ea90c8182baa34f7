//! [`Confirmation`]: the broker's answer to one published message.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::oneshot;

use crate::error::{Error, Result};

/// Resolves when the broker confirms a published message.
///
/// Returned by [`Channel::basic_publish`](crate::Channel::basic_publish). On a
/// channel in confirm mode it resolves to `Ok(())` on `basic.ack` (one ack
/// with `multiple` resolves a whole range), to [`Error::Nacked`] on
/// `basic.nack`, and to the channel's or connection's error if that closes
/// first. Without confirm mode it resolves to `Ok(())` at once. Dropping it
/// does not affect the message.
#[derive(Debug)]
pub struct Confirmation {
    pending: Option<oneshot::Receiver<Result<()>>>,
}

impl Confirmation {
    pub(crate) fn pending(rx: oneshot::Receiver<Result<()>>) -> Self {
        Self { pending: Some(rx) }
    }

    pub(crate) fn not_requested() -> Self {
        Self { pending: None }
    }

    /// Whether the broker will confirm this message (the channel is in confirm mode).
    pub fn is_requested(&self) -> bool {
        self.pending.is_some()
    }
}

impl Future for Confirmation {
    type Output = Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.pending.as_mut() {
            None => Poll::Ready(Ok(())),
            Some(rx) => Pin::new(rx)
                .poll(cx)
                .map(|r| r.unwrap_or(Err(Error::Disconnected))),
        }
    }
}
