//! A `basic.deliver`, its content header and its body, read off a buffer in one step:
//! [`FrameCodec::decode_delivery`] and [`DeliveryFrames`].
//!
//! Most of what a consumer reads is that sequence, each message's three frames back to back
//! (two when the body is empty). A client's read loop takes them together: no [`crate::Frame`]
//! per frame and no [`crate::basic::Deliver`] with three owned names. The names reach the
//! caller as octets, so that one that knows them (its consumer tag, the exchange and routing
//! key of its previous delivery) compares them rather than checking their UTF-8 again. Every
//! check the frame decoder makes still applies. Anything else (another frame first, a body in
//! several frames, a frame that is incomplete or that the decoder would refuse) is left in the
//! buffer for [`tokio_util::codec::Decoder::decode`], which handles it, and reports its
//! errors, as before.

use bytes::{Buf, Bytes, BytesMut};

use crate::frame::{content_at, decode_limit, deliver_at};
use crate::{ContentHeader, DeliverOctets, FrameCodec, BASIC_CLASS_ID};

/// A `basic.deliver` with its header and whole body, taken off the read buffer by
/// [`FrameCodec::decode_delivery`] (the names went to its `accept`). The properties and the
/// body are slices of that buffer, as the frame decoder returns them.
#[derive(Debug)]
pub struct DeliveryFrames {
    /// The channel of the three frames.
    pub channel: u16,
    /// The channel-scoped delivery tag.
    pub delivery_tag: u64,
    /// Whether the message was delivered before.
    pub redelivered: bool,
    /// The content header, its properties checked as [`ContentHeader::from_raw`] checks them.
    pub header: ContentHeader,
    /// The body, the header's `body_size` octets (empty without a body frame).
    pub body: Bytes,
}

impl FrameCodec {
    /// Takes a `basic.deliver` method frame, its content header frame and (unless the body
    /// is empty) one body frame holding the whole body off the head of `src`, when all of
    /// them are there, would decode without error and share one channel, and `accept` returns
    /// `Some` for that channel and the method's arguments: then the result is `accept`'s value
    /// and the frames.
    ///
    /// `accept` sees the names as octets, not checked for UTF-8 (the frame decoder replaces
    /// invalid sequences, as RabbitMQ does not check them): it declines what it cannot take
    /// as it is.
    ///
    /// `None` leaves `src` untouched: it starts with something else, frames the decoder
    /// would refuse, an incomplete frame or a body in several frames (decode those one by
    /// one), or `accept` declined. The frames taken are exactly what three calls of
    /// [`tokio_util::codec::Decoder::decode`] would have returned.
    #[inline]
    pub fn decode_delivery<T>(
        &self,
        src: &mut BytesMut,
        accept: impl FnOnce(u16, &DeliverOctets<'_>) -> Option<T>,
    ) -> Option<(T, DeliveryFrames)> {
        let max = decode_limit(self);
        let (channel, deliver, method_len) = deliver_at(src, max)?;
        let found = content_at(src, method_len, channel, max)?;
        let (delivery_tag, redelivered) = (deliver.delivery_tag, deliver.redelivered);
        let accepted = accept(channel, &deliver)?;
        // Split off in order: each part is a slice of the read buffer, nothing is copied.
        src.advance(found.properties.start);
        let raw = src.split_to(found.properties.len()).freeze();
        src.advance(found.body.start - found.properties.end);
        let body = if found.body.is_empty() {
            Bytes::new()
        } else {
            src.split_to(found.body.len()).freeze()
        };
        src.advance(found.end - found.body.end);
        Some((
            accepted,
            DeliveryFrames {
                channel,
                delivery_tag,
                redelivered,
                header: ContentHeader::checked(BASIC_CLASS_ID, found.body_size, raw, found.decoded),
                body,
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use tokio_util::codec::Decoder;

    use super::*;
    use crate::frame::tests::{
        check_content_left_to_the_decoder, check_method_left_to_the_decoder, content_message,
        decode_content, rich_properties,
    };
    use crate::{BasicProperties, Frame, Method, FRAME_OVERHEAD};

    /// A basic.deliver's payload, octet by octet (the names need not be UTF-8).
    fn deliver_payload(names: [&[u8]; 3], tag: u64, bits: u8) -> Vec<u8> {
        let [consumer_tag, exchange, key] = names;
        let mut payload = vec![0, 60, 0, 60];
        payload.push(u8::try_from(consumer_tag.len()).unwrap());
        payload.extend_from_slice(consumer_tag);
        payload.extend_from_slice(&tag.to_be_bytes());
        payload.push(bits);
        for name in [exchange, key] {
            payload.push(u8::try_from(name.len()).unwrap());
            payload.extend_from_slice(name);
        }
        payload
    }

    /// The frames of one delivery, then a heartbeat.
    fn delivery_frames(
        names: [&[u8]; 3],
        bits: u8,
        properties: &BasicProperties,
        body: &[u8],
        frame_max: u32,
    ) -> BytesMut {
        content_message(
            &deliver_payload(names, 7, bits),
            properties,
            body,
            frame_max,
        )
    }

    /// What `accept` saw: the channel and the names.
    type Seen = (u16, Vec<u8>, Vec<u8>, Vec<u8>);

    fn seen(channel: u16, d: &DeliverOctets<'_>) -> Option<Seen> {
        Some((
            channel,
            d.consumer_tag.to_vec(),
            d.exchange.to_vec(),
            d.routing_key.to_vec(),
        ))
    }

    #[test]
    fn a_delivery_is_taken_as_decode_returns_its_frames() {
        let long = [b'n'; 255];
        let names: [[&[u8]; 3]; 4] = [
            [b"amq.ctag-1", b"", b"q"],
            [b"", b"amq.topic", b"a.b.c"],
            [&long, &long, &long],
            [b"t\xff", b"ex\xff", b"\xc3(key"],
        ];
        for properties in [BasicProperties::default(), rich_properties()] {
            for names in names {
                for bits in [0, 1, 0xfe] {
                    for body_len in [0, 1, 5, 4087, 4088, 10_000] {
                        let body: Vec<u8> = (0..body_len).map(|i| i as u8).collect();
                        for frame_max in [0, 4096, 131_072] {
                            let wire = delivery_frames(names, bits, &properties, &body, frame_max);
                            let mut slow = wire.clone();
                            let mut codec = FrameCodec::new(frame_max);
                            let method = codec.decode(&mut slow).unwrap();
                            let Some(Frame::Method {
                                channel: 3,
                                method: Method::BasicDeliver(deliver),
                            }) = method
                            else {
                                panic!("not a deliver: {method:?}");
                            };
                            let (header, bodies, slow_body) = decode_content(&mut codec, &mut slow);
                            let mut fast = wire.clone();
                            let taken = codec.decode_delivery(&mut fast, seen);
                            if bodies > 1 {
                                assert!(taken.is_none(), "a body in {bodies} frames");
                                assert_eq!(fast, wire);
                                continue;
                            }
                            let ((channel, tag, exchange, key), frames) = taken.expect("taken");
                            assert_eq!((channel, frames.channel), (3, 3));
                            assert_eq!([&tag[..], &exchange, &key], names);
                            assert_eq!(String::from_utf8_lossy(&tag), deliver.consumer_tag);
                            assert_eq!(String::from_utf8_lossy(&exchange), deliver.exchange);
                            assert_eq!(String::from_utf8_lossy(&key), deliver.routing_key);
                            assert_eq!(frames.delivery_tag, deliver.delivery_tag);
                            assert_eq!(frames.redelivered, deliver.redelivered);
                            assert_eq!(frames.header, header);
                            assert_eq!(frames.header.properties(), header.properties());
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
    fn a_declined_delivery_is_left_in_the_buffer() {
        let names: [&[u8]; 3] = [b"ctag", b"", b"q"];
        let wire = delivery_frames(names, 1, &BasicProperties::default(), b"hi", 4096);
        let codec = FrameCodec::new(4096);
        let mut buf = wire.clone();
        assert!(codec.decode_delivery(&mut buf, |_, _| None::<()>).is_none());
        assert_eq!(buf, wire, "declined");
        assert!(codec.decode_delivery(&mut buf, seen).is_some());
        assert_eq!(buf.len(), FRAME_OVERHEAD);
    }

    #[test]
    fn frames_the_decoder_refuses_are_left_to_it() {
        let names: [&[u8]; 3] = [b"ctag", b"", b"q"];
        let message = |body: &[u8], frame_max| {
            delivery_frames(names, 0, &BasicProperties::default(), body, frame_max)
        };
        let take = |frame_max, buf: &mut BytesMut| {
            FrameCodec::new(frame_max)
                .decode_delivery(buf, seen)
                .is_some()
        };
        // Method frame: 7 + 4 + 5 (tag) + 9 + 1 + 2 (key) + 1.
        let header_at = 29;
        check_content_left_to_the_decoder(header_at, message, take);
        let corrupt = [
            ("method frame end", header_at - 1, 0),
            ("another method", 10, 50),
            ("a tag running past the arguments", 11, 200),
        ];
        check_method_left_to_the_decoder(
            &message(b"hi", 4096),
            header_at,
            &corrupt,
            deliver_payload(names, 7, 0),
            take,
        );
    }
}
