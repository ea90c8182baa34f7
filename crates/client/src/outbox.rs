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
    /// The broker closed the connection: the writer owes it a close-ok.
    answer_close: bool,
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

    /// The broker closed the connection: from now on nothing is queued, and
    /// what was queued is dropped (the broker ignores everything after its
    /// close but the close-ok), so that the writer's last words are the
    /// close-ok it owes ([`Outbox::close`] tells it).
    pub(crate) fn answer_close(&self) {
        let mut st = self.lock();
        st.closed = true;
        st.buf = BytesMut::new();
        st.answer_close = true;
        drop(st);
        self.room.notify_waiters();
        self.ready.notify_one();
    }

    /// The writer stopped: later appends fail and waiting publishers wake up.
    /// True, once, when the writer owes the broker a close-ok.
    pub(crate) fn close(&self) -> bool {
        let mut st = self.lock();
        st.closed = true;
        st.buf = BytesMut::new();
        let answer_close = std::mem::take(&mut st.answer_close);
        drop(st);
        self.room.notify_waiters();
        answer_close
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
        assert!(!outbox.close());
        assert_eq!(outbox.append(false, put(b"x")).ok(), Some(Append::Closed));
    }

    #[test]
    fn answering_a_close_drops_what_is_queued_and_refuses_more() {
        let outbox = Outbox::default();
        assert_eq!(outbox.append(false, put(b"ack")).ok(), Some(Append::Done));
        outbox.answer_close();
        assert_eq!(outbox.append(false, put(b"x")).ok(), Some(Append::Closed));
        let mut taken = BytesMut::new();
        outbox.take(&mut taken);
        assert!(taken.is_empty());
        assert!(outbox.close());
        assert!(!outbox.close());
    }
}
