//! The bytes a connection has yet to write: channels append encoded frames,
//! the writer task takes everything appended so far in one swap.
//!
//! Callers encode their own frames straight into the shared buffer, under
//! its lock, so a message costs no allocation and no queue item of its own,
//! and frames reach the socket in the order they were appended. The writer
//! is woken only when the buffer goes from empty to non-empty: while it is
//! busy writing one batch, the next one accumulates without waking anyone.
//!
//! Publishes are bounded (the publishers' backpressure): once the buffer
//! holds [`OUTBOX_LIMIT`] bytes they wait until the writer takes it. Other
//! methods (acks, replies, synchronous calls) are never held back behind
//! publishes, so a consumer can always acknowledge.

use std::sync::{Mutex, MutexGuard};

use bytes::BytesMut;
use lockgate_wire::Method;
use tokio::sync::Notify;

use crate::error::Result;

/// Publishes wait while the buffer holds this much.
pub(crate) const OUTBOX_LIMIT: usize = 512 * 1024;

/// The outcome of [`Outbox::append`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Append {
    /// The frames are queued.
    Done,
    /// A bounded append found the buffer full: wait for [`Outbox::room`].
    Full,
    /// The writer has stopped; nothing more will be written.
    Closed,
}

#[derive(Debug, Default)]
struct State {
    buf: BytesMut,
    closed: bool,
    /// The connection's last frame, for the writer to send once it has stopped: the close-ok
    /// owed to the broker's `connection.close`, or our own `connection.close` when the broker
    /// broke the protocol.
    last: Option<Method>,
}

/// A session's pending output, shared by its channels and its writer task.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    state: Mutex<State>,
    /// Wakes the writer when the buffer stops being empty.
    ready: Notify,
    /// Wakes publishers waiting for room when the writer takes the buffer.
    room: Notify,
}

impl Outbox {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends what `encode` writes (all of it, or nothing when it fails).
    /// `bounded` appends (publishes) are refused while the buffer is full.
    ///
    /// # Errors
    ///
    /// What `encode` returns.
    pub(crate) fn append(
        &self,
        bounded: bool,
        encode: impl FnOnce(&mut BytesMut) -> Result<()>,
    ) -> Result<Append> {
        let mut st = self.lock();
        if st.closed {
            return Ok(Append::Closed);
        }
        if bounded && st.buf.len() >= OUTBOX_LIMIT {
            return Ok(Append::Full);
        }
        let start = st.buf.len();
        if let Err(e) = encode(&mut st.buf) {
            st.buf.truncate(start);
            return Err(e);
        }
        drop(st);
        if start == 0 {
            self.ready.notify_one();
        }
        Ok(Append::Done)
    }

    /// Waits until a bounded append may succeed: the writer took the buffer
    /// (or stopped).
    pub(crate) async fn room(&self) {
        let notified = self.room.notified();
        tokio::pin!(notified);
        // Registered before the check, so a take in between is not missed.
        notified.as_mut().enable();
        {
            let st = self.lock();
            if st.closed || st.buf.len() < OUTBOX_LIMIT {
                return;
            }
        }
        notified.await;
    }

    /// Waits until something was appended since the last [`Outbox::take`]
    /// (possibly already taken: a wake-up can be spurious).
    pub(crate) async fn ready(&self) {
        self.ready.notified().await;
    }

    /// Swaps everything appended so far into `into` (which must be empty),
    /// and lets waiting publishers try again.
    pub(crate) fn take(&self, into: &mut BytesMut) {
        debug_assert!(into.is_empty());
        let mut st = self.lock();
        if st.buf.is_empty() {
            return;
        }
        std::mem::swap(&mut st.buf, into);
        drop(st);
        self.room.notify_waiters();
    }

    /// The connection ends with `last`: from now on nothing is queued, and
    /// what was queued is dropped (a broker ignores everything after its close
    /// but the close-ok, and after ours but its close-ok), so that `last` is
    /// the writer's last frame ([`Outbox::close`] hands it over). Nothing
    /// changes once the outbox is closed: the writer has stopped.
    pub(crate) fn finish(&self, last: Method) {
        let mut st = self.lock();
        if st.closed {
            return;
        }
        st.closed = true;
        st.buf = BytesMut::new();
        st.last = Some(last);
        drop(st);
        self.room.notify_waiters();
        self.ready.notify_one();
    }

    /// The writer stopped: later appends fail and waiting publishers wake up.
    /// Returns, once, the last frame the writer owes ([`Outbox::finish`]).
    pub(crate) fn close(&self) -> Option<Method> {
        let mut st = self.lock();
        st.closed = true;
        st.buf = BytesMut::new();
        let last = st.last.take();
        drop(st);
        self.room.notify_waiters();
        last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(bytes: &'static [u8]) -> impl FnOnce(&mut BytesMut) -> Result<()> {
        move |buf| {
            buf.extend_from_slice(bytes);
            Ok(())
        }
    }

    #[test]
    fn take_returns_appends_in_order_and_empties_the_buffer() {
        let outbox = Outbox::default();
        assert_eq!(outbox.append(true, put(b"ab")).ok(), Some(Append::Done));
        assert_eq!(outbox.append(false, put(b"cd")).ok(), Some(Append::Done));
        let mut taken = BytesMut::new();
        outbox.take(&mut taken);
        assert_eq!(&taken[..], b"abcd");
        let mut again = BytesMut::new();
        outbox.take(&mut again);
        assert!(again.is_empty());
    }

    #[test]
    fn a_failed_encode_leaves_nothing_behind() {
        let outbox = Outbox::default();
        let failed = outbox.append(false, |buf| {
            buf.extend_from_slice(b"half");
            Err(crate::Error::InvalidArgument("no".into()))
        });
        assert!(failed.is_err());
        let mut taken = BytesMut::new();
        outbox.take(&mut taken);
        assert!(taken.is_empty());
    }

    #[tokio::test]
    async fn a_full_buffer_holds_publishes_but_not_other_methods() {
        let outbox = std::sync::Arc::new(Outbox::default());
        let big = vec![0u8; OUTBOX_LIMIT];
        outbox
            .append(true, |buf| {
                buf.extend_from_slice(&big);
                Ok(())
            })
            .ok();
        assert_eq!(outbox.append(true, put(b"p")).ok(), Some(Append::Full));
        assert_eq!(outbox.append(false, put(b"ack")).ok(), Some(Append::Done));
        let waiter = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.room().await }
        });
        let mut taken = BytesMut::new();
        outbox.take(&mut taken);
        waiter.await.expect("room");
        assert_eq!(outbox.append(true, put(b"p")).ok(), Some(Append::Done));
        assert!(outbox.close().is_none());
        assert_eq!(outbox.append(false, put(b"x")).ok(), Some(Append::Closed));
    }

    #[test]
    fn a_last_frame_drops_what_is_queued_and_refuses_more() {
        let close_ok = || Method::ConnectionCloseOk(lockgate_wire::connection::CloseOk {});
        let outbox = Outbox::default();
        assert_eq!(outbox.append(false, put(b"ack")).ok(), Some(Append::Done));
        outbox.finish(close_ok());
        assert_eq!(outbox.append(false, put(b"x")).ok(), Some(Append::Closed));
        let mut taken = BytesMut::new();
        outbox.take(&mut taken);
        assert!(taken.is_empty());
        assert!(matches!(outbox.close(), Some(Method::ConnectionCloseOk(_))));
        assert!(outbox.close().is_none());
        // Once the writer has stopped, there is no one to send it.
        outbox.finish(close_ok());
        assert!(outbox.close().is_none());
    }
}
