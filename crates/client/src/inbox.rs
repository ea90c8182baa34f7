//! A consumer's deliveries on their way from the reader task to its
//! [`Consumer`](crate::Consumer) stream.
//!
//! The reader queues every delivery of a read under the inbox's lock and
//! wakes the consumer once per read, not once per delivery (it collects the
//! wakers [`DeliverySender::send`] hands back and wakes them when the read
//! is dispatched). The stream takes the whole queue in one swap and then
//! yields from its own copy without locking, so a batch of deliveries costs
//! one lock and one wake-up on each side.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use tracing::debug;

use crate::error::Result;
use crate::message::Delivery;

/// One item of a consumer's stream; an `Err` ends it with that error.
pub(crate) type Item = Result<Delivery>;

#[derive(Default)]
struct State {
    items: VecDeque<Item>,
    /// The stream's waker, while it waits for items.
    waker: Option<Waker>,
    /// Every sender is gone: the stream ends after `items`.
    closed: bool,
    /// The stream was dropped: new items are discarded.
    dropped: bool,
}

#[derive(Default)]
struct Inbox {
    state: Mutex<State>,
}

impl Inbox {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What became of an item handed to [`DeliverySender::send`].
pub(crate) enum Sent {
    /// Queued; the stream's waker when this item is the first it has not seen.
    Queued(Option<Waker>),
    /// The stream was dropped: the item back, for the caller to drop outside
    /// its own locks (a delivery may hold its channel's last handle).
    Refused(Item),
}

/// The reader's end of a consumer's inbox. Dropping it ends the stream
/// (after what was already queued).
pub(crate) struct DeliverySender {
    inbox: Arc<Inbox>,
    /// The consumer acknowledges its deliveries (it is not `no_ack`): one its
    /// dropped stream refuses must be given back to the broker.
    pub(crate) acks: bool,
    /// A `basic.cancel` for the consumer is on its way (its stream is gone).
    pub(crate) cancelling: bool,
}

/// The stream's end of a consumer's inbox.
pub(crate) struct DeliveryReceiver {
    inbox: Arc<Inbox>,
    /// Items taken from the inbox, yielded without locking.
    local: VecDeque<Item>,
}

/// A connected sender and receiver; `acks` as [`DeliverySender::acks`].
pub(crate) fn inbox(acks: bool) -> (DeliverySender, DeliveryReceiver) {
    let inbox = Arc::new(Inbox::default());
    (
        DeliverySender {
            inbox: inbox.clone(),
            acks,
            cancelling: false,
        },
        DeliveryReceiver {
            inbox,
            local: VecDeque::new(),
        },
    )
}

impl DeliverySender {
    /// Queues `item`. Hands back the stream's waker when this item is the
    /// first it has not seen: the caller wakes it (typically once its whole
    /// batch is queued).
    #[must_use = "the consumer waits until its waker is woken"]
    #[inline]
    pub(crate) fn send(&self, item: Item) -> Sent {
        let mut st = self.inbox.lock();
        if st.dropped {
            debug!("delivery for a dropped consumer");
            return Sent::Refused(item);
        }
        st.items.push_back(item);
        Sent::Queued(st.waker.take())
    }

    /// Queues `item` and wakes the stream at once.
    pub(crate) fn send_now(&self, item: Item) {
        if let Sent::Queued(Some(waker)) = self.send(item) {
            waker.wake();
        }
    }
}

impl Drop for DeliverySender {
    fn drop(&mut self) {
        let waker = {
            let mut st = self.inbox.lock();
            st.closed = true;
            st.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl DeliveryReceiver {
    /// The next item, `None` once the senders are gone and everything was
    /// yielded.
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        if let Some(item) = self.local.pop_front() {
            return Poll::Ready(Some(item));
        }
        let mut st = self.inbox.lock();
        if !st.items.is_empty() {
            std::mem::swap(&mut st.items, &mut self.local);
            drop(st);
            return Poll::Ready(self.local.pop_front());
        }
        if st.closed {
            return Poll::Ready(None);
        }
        match &mut st.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl DeliveryReceiver {
    /// Stops the stream, as dropping it does, and returns what it had not
    /// yielded.
    pub(crate) fn close(&mut self) -> VecDeque<Item> {
        let mut st = self.inbox.lock();
        st.dropped = true;
        let mut unseen = std::mem::take(&mut self.local);
        unseen.append(&mut st.items);
        unseen
    }
}

impl Drop for DeliveryReceiver {
    fn drop(&mut self) {
        let items = {
            let mut st = self.inbox.lock();
            st.dropped = true;
            std::mem::take(&mut st.items)
        };
        // Dropped outside the lock: a delivery may hold its channel's last
        // handle, whose drop closes the channel, and the reader queues
        // deliveries while it holds the channel's lock.
        drop(items);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::task::noop_waker;

    fn recv(rx: &mut DeliveryReceiver) -> Poll<Option<Item>> {
        rx.poll_recv(&mut Context::from_waker(&noop_waker()))
    }

    #[test]
    fn the_first_unseen_item_hands_back_the_waker_and_the_stream_ends_after_the_sender() {
        let (tx, mut rx) = inbox(true);
        assert!(recv(&mut rx).is_pending());
        assert!(matches!(
            tx.send(Err(crate::Error::Nacked)),
            Sent::Queued(Some(_))
        ));
        assert!(matches!(
            tx.send(Err(crate::Error::Disconnected)),
            Sent::Queued(None)
        ));
        assert!(matches!(
            recv(&mut rx),
            Poll::Ready(Some(Err(crate::Error::Nacked)))
        ));
        drop(tx);
        assert!(matches!(
            recv(&mut rx),
            Poll::Ready(Some(Err(crate::Error::Disconnected)))
        ));
        assert!(matches!(recv(&mut rx), Poll::Ready(None)));
    }

    #[test]
    fn items_for_a_dropped_stream_are_discarded() {
        let (tx, rx) = inbox(true);
        drop(rx);
        assert!(matches!(
            tx.send(Err(crate::Error::Nacked)),
            Sent::Refused(Err(crate::Error::Nacked))
        ));
        assert!(tx.inbox.lock().items.is_empty());
    }
}
