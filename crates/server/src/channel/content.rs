//! Assembly of published content: basic.publish, then a header, then body frames.

use bytes::{Bytes, BytesMut};
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
pub(super) enum Body {
    Empty,
    One(Bytes),
    Many(BytesMut),
}

impl Body {
    pub(super) fn push(&mut self, fragment: Bytes, total: u64) {
        *self = match std::mem::replace(self, Self::Empty) {
            Self::Empty => Self::One(fragment),
            Self::One(first) => {
                // The announced size is the peer's word: reserve at most 1 MiB up front.
                let reserve = usize::try_from(total.min(1 << 20)).unwrap_or(first.len());
                let mut buf = BytesMut::with_capacity(reserve);
                buf.extend_from_slice(&first);
                buf.extend_from_slice(&fragment);
                Self::Many(buf)
            }
            Self::Many(mut buf) => {
                buf.extend_from_slice(&fragment);
                Self::Many(buf)
            }
        }
    }

    pub(super) fn into_bytes(self) -> Bytes {
        match self {
            Self::Empty => Bytes::new(),
            Self::One(b) => b,
            Self::Many(b) => b.freeze(),
        }
    }
}
