//! A `basic.publish`, its content header and its body, read off a buffer in one step:
//! [`FrameCodec::decode_publish`] and [`PublishFrames`].
//!
//! Most of what a publisher sends is that sequence, each message's three frames back to back
//! (two when the body is empty). A server's read loop takes them together: no [`crate::Frame`]
//! per frame and no owned copy of the method's exchange and routing key (a
//! [`crate::basic::Publish`] allocates the routing key), while every check the frame decoder
//! makes still applies. Anything else (another frame first, a body in several frames, a frame
//! that is incomplete or that the decoder would refuse) is left in the buffer for
//! [`tokio_util::codec::Decoder::decode`], which handles it, and reports its errors, as before.

use std::borrow::Cow;
use std::ops::Range;

use bytes::{Bytes, BytesMut};

use crate::frame::{content_at, decode_limit, frame_at};
use crate::primitive::lossy;
use crate::{basic, FrameCodec, HeaderRef, BASIC_CLASS_ID, FRAME_METHOD};

/// A `basic.publish` with its header and whole body, taken off the read buffer by
/// [`FrameCodec::decode_publish`]. The body is a slice of that buffer, as the frame decoder
/// returns it.
#[derive(Debug)]
pub struct PublishFrames {
    /// The channel of the three frames.
    pub channel: u16,
    /// The method and header frames, read in place.
    pub head: PublishHead,
    /// The body, [`PublishHead::header`]'s `body_size` octets (empty without a body frame).
    pub body: Bytes,
}

/// The method and header frames of [`PublishFrames`]: the method's arguments and the
/// header's properties, read in place.
#[derive(Debug)]
pub struct PublishHead {
    frames: Bytes,
    layout: HeadLayout,
}

/// Where the method's arguments and the header's properties are in a publish's frames (or,
/// before they are taken, in the read buffer, which starts with them), and the values read
/// on the way.
#[derive(Debug)]
struct HeadLayout {
    exchange: Range<usize>,
    routing_key: Range<usize>,
    mandatory: bool,
    immediate: bool,
    body_size: u64,
    properties: Range<usize>,
}

impl PublishHead {
    /// The content header, its properties checked as [`ContentHeader::from_raw`] checks them.
    #[must_use]
    pub fn header(&self) -> HeaderRef<'_> {
        HeaderRef {
            class_id: BASIC_CLASS_ID,
            body_size: self.layout.body_size,
            raw: self
                .frames
                .get(self.layout.properties.clone())
                .unwrap_or_default(),
        }
    }

    /// The exchange as decoding `basic.publish` gives it: invalid UTF-8 becomes U+FFFD
    /// (RabbitMQ does not check this shortstr); valid UTF-8 is borrowed.
    #[must_use]
    pub fn exchange(&self) -> Cow<'_, str> {
        lossy(self.exchange_octets())
    }

    /// The routing key, as [`PublishHead::exchange`].
    #[must_use]
    pub fn routing_key(&self) -> Cow<'_, str> {
        lossy(self.routing_key_octets())
    }

    /// The exchange's octets as sent: a caller that knows them (its last publish named the
    /// same) skips [`PublishHead::exchange`]'s UTF-8 check.
    #[must_use]
    pub fn exchange_octets(&self) -> &[u8] {
        self.frames
            .get(self.layout.exchange.clone())
            .unwrap_or_default()
    }

    /// The routing key's octets as sent (see [`PublishHead::exchange_octets`]).
    #[must_use]
    pub fn routing_key_octets(&self) -> &[u8] {
        self.frames
            .get(self.layout.routing_key.clone())
            .unwrap_or_default()
    }

    /// The `mandatory` flag.
    #[must_use]
    pub fn mandatory(&self) -> bool {
        self.layout.mandatory
    }

    /// The `immediate` flag.
    #[must_use]
    pub fn immediate(&self) -> bool {
        self.layout.immediate
    }
}

/// Where the frames of a publish are in the buffer, found before anything is taken off it.
struct Found {
    channel: u16,
    /// The three frames' length.
    len: usize,
    head: HeadLayout,
    body: Range<usize>,
}

impl FrameCodec {
    /// Takes a `basic.publish` method frame, its content header frame and (unless the body
    /// is empty) one body frame holding the whole body off the head of `src`, when all of
    /// them are there, would decode without error, share one channel, and `accept` returns
    /// `Some` for that channel: then the result is `accept`'s value and the frames.
    ///
    /// `None` leaves `src` untouched: it starts with something else, frames the decoder
    /// would refuse, an incomplete frame or a body in several frames (decode those one by
    /// one), or `accept` declined. The frames taken are exactly what three calls of
    /// [`tokio_util::codec::Decoder::decode`] would have returned.
    // Inline: a server calls it once per message in its read loop, and an outlined call there
    // cost ~50 instructions per message in profiles.
    #[inline]
    pub fn decode_publish<T>(
        &self,
        src: &mut BytesMut,
        accept: impl FnOnce(u16) -> Option<T>,
    ) -> Option<(T, PublishFrames)> {
        let found = self.find_publish(src)?;
        let accepted = accept(found.channel)?;
        let frames = src.split_to(found.len).freeze();
        let body = frames.slice(found.body);
        Some((
            accepted,
            PublishFrames {
                channel: found.channel,
                head: PublishHead {
                    frames,
                    layout: found.head,
                },
                body,
            },
        ))
    }

    fn find_publish(&self, src: &[u8]) -> Option<Found> {
        let max = decode_limit(self);
        let (channel, method) = frame_at(src, 0, FRAME_METHOD, max)?;
        let (exchange, routing_key, bits) = publish_args(src, method.clone())?;
        let content = content_at(src, method.end + 1, channel, max)?;
        Some(Found {
            channel,
            len: content.end,
            head: HeadLayout {
                exchange,
                routing_key,
                mandatory: bits & 1 != 0,
                immediate: bits & 2 != 0,
                body_size: content.body_size,
                properties: content.properties,
            },
            body: content.body,
        })
    }
}

/// `basic.publish`'s arguments in `payload` (class and method ids first), as positions in
/// `src`: exchange, routing key and the flag octet. `None` for another method or arguments
/// the method decoder would refuse.
fn publish_args(src: &[u8], payload: Range<usize>) -> Option<(Range<usize>, Range<usize>, u8)> {
    let [c0, c1] = basic::Publish::CLASS_ID.to_be_bytes();
    let [m0, m1] = basic::Publish::METHOD_ID.to_be_bytes();
    let bytes = src.get(payload.clone())?;
    // Class, method, ticket, then the exchange's length.
    let &[a, b, c, d, _, _, exchange_len, ..] = bytes else {
        return None;
    };
    if [a, b, c, d] != [c0, c1, m0, m1] {
        return None;
    }
    let exchange_at = 7;
    let routing_key_len_at = exchange_at + usize::from(exchange_len);
    let routing_key_at = routing_key_len_at + 1;
    let bits_at = routing_key_at + usize::from(*bytes.get(routing_key_len_at)?);
    // The flag octet must be the last: the decoder refuses trailing octets.
    if bits_at + 1 != bytes.len() {
        return None;
    }
    let &bits = bytes.last()?;
    let base = payload.start;
    Some((
        base + exchange_at..base + routing_key_len_at,
        base + routing_key_at..base + bits_at,
        bits,
    ))
}

#[cfg(test)]
mod tests {
    use tokio_util::codec::Decoder;

    use super::*;
    use crate::frame::tests::{
        check_content_left_to_the_decoder, check_method_left_to_the_decoder, content_message,
        decode_content, rich_properties,
    };
    use crate::frame::FRAME_OVERHEAD;
    use crate::{BasicProperties, Frame, Method};

    /// A basic.publish's payload, octet by octet (the names need not be UTF-8).
    fn publish_payload(exchange: &[u8], key: &[u8], bits: u8) -> Vec<u8> {
        let mut payload = vec![0, 60, 0, 40, 0, 0];
        for name in [exchange, key] {
            payload.push(u8::try_from(name.len()).unwrap());
            payload.extend_from_slice(name);
        }
        payload.push(bits);
        payload
    }

    /// The frames of one publish, then a heartbeat.
    fn publish_frames(
        exchange: &[u8],
        key: &[u8],
        bits: u8,
        properties: &BasicProperties,
        body: &[u8],
        frame_max: u32,
    ) -> BytesMut {
        content_message(
            &publish_payload(exchange, key, bits),
            properties,
            body,
            frame_max,
        )
    }

    #[test]
    fn a_publish_is_taken_as_decode_returns_its_frames() {
        let long = [b'n'; 255];
        let names: [(&[u8], &[u8]); 4] = [
            (b"", b"q"),
            (b"amq.topic", b"a.b.c"),
            (b"", &long),
            (b"ex\xff", b"\xc3(key"),
        ];
        for properties in [BasicProperties::default(), rich_properties()] {
            for (exchange, key) in names {
                for bits in 0..4 {
                    for body_len in [0, 1, 5, 4087, 4088, 10_000] {
                        let body: Vec<u8> = (0..body_len).map(|i| i as u8).collect();
                        for frame_max in [0, 4096, 131_072] {
                            let wire =
                                publish_frames(exchange, key, bits, &properties, &body, frame_max);
                            let mut slow = wire.clone();
                            let mut codec = FrameCodec::new(frame_max);
                            let Some(Frame::Method {
                                channel: 3,
                                method: Method::BasicPublish(publish),
                            }) = codec.decode(&mut slow).unwrap()
                            else {
                                panic!("not a publish");
                            };
                            let (header, bodies, slow_body) = decode_content(&mut codec, &mut slow);
                            let mut fast = wire.clone();
                            let taken = codec.decode_publish(&mut fast, Some);
                            if bodies > 1 {
                                assert!(taken.is_none(), "a body in {bodies} frames");
                                assert_eq!(fast, wire);
                                continue;
                            }
                            let (3, frames) = taken.expect("taken") else {
                                panic!("accepted another channel");
                            };
                            let head = &frames.head;
                            assert_eq!(frames.channel, 3);
                            assert_eq!(head.exchange(), publish.exchange);
                            assert_eq!(head.routing_key(), publish.routing_key);
                            assert_eq!(head.exchange_octets(), exchange);
                            assert_eq!(head.routing_key_octets(), key);
                            assert_eq!(head.mandatory(), publish.mandatory);
                            assert_eq!(head.immediate(), publish.immediate);
                            let taken = head.header();
                            assert_eq!(
                                (taken.class_id, taken.body_size, taken.raw),
                                (header.class_id, header.body_size, &header.raw[..])
                            );
                            assert_eq!(frames.body, slow_body);
                            // Both stop before the heartbeat.
                            assert_eq!(fast.len(), FRAME_OVERHEAD);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_declined_publish_is_left_in_the_buffer() {
        let wire = publish_frames(b"", b"q", 1, &BasicProperties::default(), b"hi", 4096);
        let codec = FrameCodec::new(4096);
        let mut buf = wire.clone();
        assert!(codec.decode_publish(&mut buf, |_| None::<()>).is_none());
        assert_eq!(buf, wire, "declined");
        assert!(codec.decode_publish(&mut buf, Some).is_some());
        assert_eq!(buf.len(), FRAME_OVERHEAD);
    }

    #[test]
    fn frames_the_decoder_refuses_are_left_to_it() {
        let message = |body: &[u8], frame_max| {
            publish_frames(b"", b"q", 0, &BasicProperties::default(), body, frame_max)
        };
        let take = |frame_max, buf: &mut BytesMut| {
            FrameCodec::new(frame_max)
                .decode_publish(buf, Some)
                .is_some()
        };
        // Method frame: 7 + 4 + 2 (ticket) + 1 + 2 (key) + 1 + 1.
        let header_at = 18;
        check_content_left_to_the_decoder(header_at, message, take);
        let corrupt = [
            ("method frame end", header_at - 1, 0),
            ("another method", 10, 50),
        ];
        check_method_left_to_the_decoder(
            &message(b"hi", 4096),
            header_at,
            &corrupt,
            publish_payload(b"", b"q", 0),
            take,
        );
    }
}
