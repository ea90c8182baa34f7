//! The read buffer's size: small while a connection is quiet, [`READ_CHUNK`] while it is busy.
//!
//! Most connections are quiet most of the time: a handshake, then a heartbeat every few
//! seconds, an ack now and then. A [`READ_CHUNK`] buffer for each of them costs more than the
//! rest of the connection: the pages it was read into stay resident, the connection's other
//! small allocations land one per page between such buffers, and a heartbeat-only connection's
//! read position walks through the whole buffer over the hours. So a connection reads into
//! [`READ_START`] octets until a read stops in the middle of a frame (the peer sends more than
//! that at once: a burst of publishes, a large message), takes [`READ_CHUNK`] from then on, and
//! goes back to [`READ_START`] when its buffer is empty at a tick: a heartbeat tick, or, with
//! heartbeats off, one [`QUIET_TICK`] after it was last seen larger than [`READ_START`].
//!
//! Without heartbeats the tick is the read loop's own timer, armed only while the buffer is
//! large: a connection that stays quiet has no timer in the runtime and is never woken for one,
//! and nothing is added per read (the loop looks at the buffer when it runs dry).
//!
//! A frame larger than the buffer needs neither: the decoder reserves the whole frame once it
//! has read the frame's header.

use std::time::Duration;

use bytes::BytesMut;

/// What a connection reads into while it is quiet: enough for the handshake's frames, a
/// heartbeat, an ack or a small publish.
pub(super) const READ_START: usize = 1024;
/// What a busy connection asks the socket for at once; every complete frame in it is then
/// handled without going back to the runtime.
///
/// A message body that stays a slice of the chunk it was read into keeps the whole chunk
/// allocated while the message is queued. The broker copies bodies shorter than a quarter of
/// this (`SHARED_BODY_MIN` in its `message.rs`), so that a queued message keeps at most four
/// times what it is charged alive: change the two together.
pub(super) const READ_CHUNK: usize = 64 * 1024;
/// With heartbeats off, how long a large read buffer is kept before it is shrunk if empty:
/// RabbitMQ's default heartbeat, so that such a connection costs what one with the default
/// heartbeat does.
pub(super) const QUIET_TICK: Duration = Duration::from_secs(60);

/// Which of the two sizes the read buffer has (see the module doc).
#[derive(Debug, Default)]
pub(super) struct ReadSize {
    busy: bool,
}

impl ReadSize {
    /// The frames complete in `buffer` were handled and what is left is not a whole frame:
    /// a quiet connection's buffer becomes a [`READ_CHUNK`] one, the partial frame (and any
    /// room the decoder reserved for it) kept.
    pub(super) fn on_incomplete_frame(&mut self, buffer: &mut BytesMut) {
        if self.busy || buffer.is_empty() {
            return;
        }
        let mut chunk = BytesMut::with_capacity(READ_CHUNK.max(buffer.capacity()));
        chunk.extend_from_slice(buffer);
        *buffer = chunk;
        self.busy = true;
    }

    /// Whether `buffer` is larger than [`READ_START`] (busy, or grown for a large handshake
    /// frame): what a tick would shrink.
    pub(super) fn is_large(&self, buffer: &BytesMut) -> bool {
        self.busy || buffer.capacity() > READ_START
    }

    /// A tick: an empty buffer that [`is_large`](Self::is_large) goes back to [`READ_START`];
    /// its allocation is freed once no message body refers to it.
    pub(super) fn on_tick(&mut self, buffer: &mut BytesMut) {
        if buffer.is_empty() && self.is_large(buffer) {
            *buffer = BytesMut::with_capacity(READ_START);
            self.busy = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_frame_makes_a_quiet_buffer_busy_and_keeps_its_octets() {
        let mut size = ReadSize::default();
        let mut buffer = BytesMut::with_capacity(READ_START);
        buffer.extend_from_slice(&[7; READ_START]);
        let _ = buffer.split_to(READ_START - 5);
        size.on_incomplete_frame(&mut buffer);
        assert_eq!(&buffer[..], &[7; 5]);
        assert!(buffer.capacity() >= READ_CHUNK, "{}", buffer.capacity());
        // Busy already: the buffer is left to the decoder and the reads.
        let before = buffer.as_ptr();
        size.on_incomplete_frame(&mut buffer);
        assert_eq!(buffer.as_ptr(), before);
    }

    #[test]
    fn room_the_decoder_reserved_for_a_large_frame_is_kept() {
        let mut size = ReadSize::default();
        let mut buffer = BytesMut::with_capacity(READ_START);
        buffer.extend_from_slice(&[1; 16]);
        buffer.reserve(4 * READ_CHUNK);
        size.on_incomplete_frame(&mut buffer);
        assert!(buffer.capacity() >= 4 * READ_CHUNK, "{}", buffer.capacity());
    }

    #[test]
    fn an_empty_buffer_stays_quiet() {
        let mut size = ReadSize::default();
        let mut buffer = BytesMut::with_capacity(READ_START);
        size.on_incomplete_frame(&mut buffer);
        assert_eq!(buffer.capacity(), READ_START);
    }

    #[test]
    fn a_busy_buffer_shrinks_back_at_a_tick_once_empty() {
        let mut size = ReadSize::default();
        let mut buffer = BytesMut::from(&[3u8; 10][..]);
        size.on_incomplete_frame(&mut buffer);
        size.on_tick(&mut buffer);
        assert!(buffer.capacity() >= READ_CHUNK, "not empty: kept");
        buffer.clear();
        size.on_tick(&mut buffer);
        assert_eq!(buffer.capacity(), READ_START);
        // Quiet again: the next partial frame makes it busy again.
        buffer.extend_from_slice(&[3; 10]);
        size.on_incomplete_frame(&mut buffer);
        assert!(buffer.capacity() >= READ_CHUNK);
    }

    #[test]
    fn a_quiet_buffer_grown_by_the_handshake_shrinks_back_at_a_tick() {
        let mut size = ReadSize::default();
        let mut buffer = BytesMut::with_capacity(8 * READ_START);
        size.on_tick(&mut buffer);
        assert_eq!(buffer.capacity(), READ_START);
    }

    #[test]
    fn a_quiet_buffer_is_left_alone_at_a_tick() {
        let mut size = ReadSize::default();
        let mut buffer = BytesMut::with_capacity(READ_START);
        let before = buffer.as_ptr();
        size.on_tick(&mut buffer);
        assert_eq!(buffer.as_ptr(), before);
    }
}
