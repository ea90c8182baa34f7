//! Assembly of published content: basic.publish, then a header, then body frames.

use bytes::{Bytes, BytesMut};
use lockgate_broker::{MemoryCharge, VHost};
use lockgate_wire::{basic, ContentHeader};

/// Where a published message is in its method / header / body sequence.
pub(super) enum Content {
    Idle,
    /// basic.publish seen, header expected.
    Header(basic::Publish),
    /// Header seen, `remaining` body bytes expected.
    Body {
        publish: basic::Publish,
        header: ContentHeader,
        body: Body,
        remaining: u64,
    },
}

/// A body arriving in one frame stays the `Bytes` split off the read buffer; bodies split over
/// several frames are copied into one buffer. A small body is not copied here: the broker's
/// `Message` copies it into its own storage (so that a backlog of small messages does not keep
/// whole read chunks alive) and drops the slice.
///
/// A body in several frames is charged to the memory watermark as its frames arrive: a client
/// may hold up to `max_message_size` per channel this way, on every channel. The charge goes
/// when the body is taken, before the message built from it is charged by the broker (never
/// counted twice), or with the channel. A body in one frame is never pushed here, so the usual
/// publish pays nothing for it.
pub(super) enum Body {
    Empty,
    One(Bytes, MemoryCharge),
    Many(BytesMut, MemoryCharge),
}

impl Body {
    /// Appends a fragment of a body of `total` octets, charged to `vhost`'s memory.
    pub(super) fn push(&mut self, fragment: Bytes, total: u64, vhost: &VHost) {
        *self = match std::mem::replace(self, Self::Empty) {
            Self::Empty => {
                let charge = vhost.charge_memory(fragment.len() as u64);
                Self::One(fragment, charge)
            }
            Self::One(first, mut charge) => {
                // The announced size is the peer's word: reserve at most 1 MiB up front.
                let reserve = usize::try_from(total.min(1 << 20)).unwrap_or(first.len());
                let mut buf = BytesMut::with_capacity(reserve);
                buf.extend_from_slice(&first);
                buf.extend_from_slice(&fragment);
                charge.set(buf.len() as u64);
                Self::Many(buf, charge)
            }
            Self::Many(mut buf, mut charge) => {
                buf.extend_from_slice(&fragment);
                charge.set(buf.len() as u64);
                Self::Many(buf, charge)
            }
        }
    }

    /// The body, its charge released.
    pub(super) fn into_bytes(self) -> Bytes {
        match self {
            Self::Empty => Bytes::new(),
            Self::One(b, _) => b,
            Self::Many(b, _) => b.freeze(),
        }
    }
}
