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
/// several frames are copied into one buffer, from their first frame on (a slice kept until the
/// next frame would hold the whole read chunk it was split off). A small body is not copied
/// here: the broker's `Message` copies it into its own storage (so that a backlog of small
/// messages does not keep whole read chunks alive) and drops the slice.
///
/// A body in several frames is charged to the memory watermark as its frames arrive: a client
/// may hold up to `max_message_size` per channel this way, on every channel. The buffer is
/// reserved for twice what has arrived (up to 1 MiB, and the whole body when that is less),
/// not for what the peer announced, and doubles as it fills: it never holds more than twice
/// its charge. The charge goes when the body is taken, before the message built from it is
/// charged by the broker (never counted twice), or with the channel. A body in one frame is
/// never pushed here, so the usual publish pays nothing for it.
pub(super) enum Body {
    Empty,
    Many(BytesMut, MemoryCharge),
}

impl Body {
    /// Appends `fragment`, the first of the `remaining` octets the body still expects,
    /// charged to `vhost`'s memory.
    pub(super) fn push(&mut self, fragment: &[u8], remaining: u64, vhost: &VHost) {
        match self {
            Self::Empty => {
                // The announced size is the peer's word: tiny frames of a large body must not
                // hold a large buffer charged for a few octets.
                let reserve = usize::try_from(remaining.min(1 << 20))
                    .unwrap_or(fragment.len())
                    .min(2 * fragment.len());
                let mut buf = BytesMut::with_capacity(reserve);
                buf.extend_from_slice(fragment);
                let charge = vhost.charge_memory(buf.len() as u64);
                *self = Self::Many(buf, charge);
            }
            Self::Many(buf, charge) => {
                buf.extend_from_slice(fragment);
                charge.set(buf.len() as u64);
            }
        }
    }

    /// The body, its charge released.
    pub(super) fn into_bytes(self) -> Bytes {
        match self {
            Self::Empty => Bytes::new(),
            Self::Many(b, _) => b.freeze(),
        }
    }
}
