//! Frames and the tokio-util codec: [`Frame`], [`FrameCodec`], [`encode_content`].
//!
//! Every frame is `type: u8, channel: u16, size: u32`, `size` payload octets, then the frame-end
//! octet 0xCE. frame_max bounds the whole frame, the 8 octets of overhead included (as RabbitMQ
//! and the spec count it); 0 means no limit. Like RabbitMQ, the decoder tolerates frames up to
//! [`FRAME_SIZE_FUDGE`] octets over frame_max (clients that count frame_max as the payload limit);
//! the encoder never exceeds frame_max.

use std::ops::Range;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::primitive::{put_shortstr, put_shortstr_octets};
use crate::{
    BasicProperties, ContentHeader, Method, WireError, BASIC_CLASS_ID, FRAME_BODY, FRAME_END,
    FRAME_HEADER, FRAME_HEARTBEAT, FRAME_METHOD,
};

/// Octets of a frame that are not payload: 7 header octets and the end octet.
pub const FRAME_OVERHEAD: usize = 8;

/// How far over frame_max a received frame may go. RabbitMQ tolerates 8 octets
/// (`?FRAME_SIZE_FUDGE` in `rabbit_reader`) because "quite a few" clients count frame_max as the
/// payload limit rather than the frame limit; we accept what RabbitMQ accepts so those clients keep
/// working. Encoding never uses the tolerance.
pub const FRAME_SIZE_FUDGE: usize = FRAME_OVERHEAD;

/// The most a decoder reserves ahead for one incomplete frame. Frames within frame_max are
/// reserved in full; with an unlimited frame_max (0) a peer's declared size alone never makes us
/// allocate more than this.
const MAX_RESERVE: usize = 1 << 20;

/// One AMQP frame.
///
/// A `Header` holds its properties encoded (they decode on first use), so it is no larger than
/// a method frame and moves without an allocation of its own.
#[derive(Clone, Debug, PartialEq)]
pub enum Frame {
    /// A method frame (type 1).
    Method {
        /// The channel (0 for connection methods).
        channel: u16,
        /// The method.
        method: Method,
    },
    /// A content header frame (type 2).
    Header {
        /// The channel.
        channel: u16,
        /// The header.
        header: ContentHeader,
    },
    /// A content body frame (type 3). On decode, a slice of the read buffer (never copied).
    Body {
        /// The channel.
        channel: u16,
        /// The body octets in this frame.
        payload: Bytes,
    },
    /// A heartbeat frame (type 8, channel 0, empty payload).
    Heartbeat,
}

impl Frame {
    /// The frame's channel (0 for heartbeats).
    #[must_use]
    pub fn channel(&self) -> u16 {
        match self {
            Frame::Method { channel, .. }
            | Frame::Header { channel, .. }
            | Frame::Body { channel, .. } => *channel,
            Frame::Heartbeat => 0,
        }
    }
}

/// Decodes and encodes [`Frame`]s, enforcing frame_max in both directions (decoding with
/// RabbitMQ's [`FRAME_SIZE_FUDGE`] tolerance).
///
/// Use it with `FramedRead` / `FramedWrite` after the 8-octet protocol header has been exchanged.
#[derive(Clone, Copy, Debug)]
pub struct FrameCodec {
    frame_max: u32,
}

impl Default for FrameCodec {
    /// A codec limited to the spec's minimum frame size (4096), what a server allows before tune.
    fn default() -> Self {
        FrameCodec::new(crate::FRAME_MIN_SIZE)
    }
}

/// The largest frame the decoder accepts (frame_max with RabbitMQ's tolerance).
pub(crate) fn decode_limit(codec: &FrameCodec) -> u64 {
    limit(codec.frame_max) + FRAME_SIZE_FUDGE as u64
}

fn limit(frame_max: u32) -> u64 {
    if frame_max == 0 {
        u64::from(u32::MAX) + FRAME_OVERHEAD as u64
    } else {
        u64::from(frame_max)
    }
}

impl FrameCodec {
    /// A codec that rejects frames over `frame_max` octets (overhead included, plus
    /// [`FRAME_SIZE_FUDGE`] on decode); 0 means no limit.
    #[must_use]
    pub fn new(frame_max: u32) -> Self {
        FrameCodec { frame_max }
    }

    /// Changes the limit, typically after `connection.tune-ok`.
    pub fn set_frame_max(&mut self, frame_max: u32) {
        self.frame_max = frame_max;
    }

    /// The current limit (0 = none).
    #[must_use]
    pub fn frame_max(&self) -> u32 {
        self.frame_max
    }

    /// Appends one frame to `dst`. On error `dst` is left as it was.
    ///
    /// # Errors
    /// [`WireError::EncodeTooLarge`] if the frame would exceed frame_max, or the method's or
    /// header's own encode errors (a shortstr over 255 octets).
    pub fn encode_frame(&self, frame: &Frame, dst: &mut BytesMut) -> Result<(), WireError> {
        let start = dst.len();
        let result = write_frame(frame, dst, self.frame_max);
        if result.is_err() {
            dst.truncate(start);
        }
        result
    }

    /// Appends a whole content message with this codec's frame_max; see [`encode_content`].
    ///
    /// # Errors
    /// As [`encode_content`].
    pub fn encode_content<'h>(
        &self,
        dst: &mut BytesMut,
        channel: u16,
        method: &Method,
        header: impl Into<HeaderRef<'h>>,
        body: &[u8],
    ) -> Result<(), WireError> {
        encode_content(dst, channel, method, header, body, self.frame_max)
    }

    /// Appends a `basic.deliver` content message, names as octets, with this codec's
    /// frame_max; see [`encode_delivery_octets`].
    ///
    /// # Errors
    /// As [`encode_content`].
    pub fn encode_delivery_octets<'h>(
        &self,
        dst: &mut BytesMut,
        channel: u16,
        deliver: &DeliverOctets<'_>,
        header: impl Into<HeaderRef<'h>>,
        body: &[u8],
    ) -> Result<(), WireError> {
        encode_delivery_octets(dst, channel, deliver, header, body, self.frame_max)
    }

    /// The `basic.deliver` method frame at the head of `src`, decoded without allocating: its
    /// channel, its arguments (strings borrowed from `src`) and the frame's total length, by
    /// which the caller then advances `src`. `None` when `src` starts with any other frame, an
    /// incomplete or invalid one, or non-UTF-8 strings: [`Decoder::decode`] handles (and
    /// reports) all of those as before.
    #[must_use]
    pub fn peek_deliver<'a>(&self, src: &'a [u8]) -> Option<(u16, DeliverRef<'a>, usize)> {
        let (channel, deliver, len) = deliver_at(src, decode_limit(self))?;
        DeliverRef::from_octets(&deliver).map(|d| (channel, d, len))
    }
}

/// The channel and payload of the complete frame of type `frame_type` at `at`, if the
/// decoder would accept its envelope (size within `max`, the frame-end octet).
pub(crate) fn frame_at(
    src: &[u8],
    at: usize,
    frame_type: u8,
    max: u64,
) -> Option<(u16, Range<usize>)> {
    let &[kind, c0, c1, s0, s1, s2, s3] = src.get(at..at.checked_add(7)?)? else {
        return None;
    };
    let size = u32::from_be_bytes([s0, s1, s2, s3]);
    if kind != frame_type || u64::from(size) + FRAME_OVERHEAD as u64 > max {
        return None;
    }
    let start = at + 7;
    let end = start.checked_add(usize::try_from(size).ok()?)?;
    (src.get(end) == Some(&FRAME_END)).then_some((u16::from_be_bytes([c0, c1]), start..end))
}

/// The `basic.deliver` method frame at the head of `src`, if the decoder would accept it
/// (envelope within `max`, arguments that decode): its channel, its arguments with the names
/// as octets (not checked for UTF-8) and the frame's length.
#[inline]
pub(crate) fn deliver_at(src: &[u8], max: u64) -> Option<(u16, DeliverOctets<'_>, usize)> {
    let (channel, method) = frame_at(src, 0, FRAME_METHOD, max)?;
    let (&[c0, c1, m0, m1], args) = src.get(method.clone())?.split_first_chunk::<4>()?;
    if (u16::from_be_bytes([c0, c1]), u16::from_be_bytes([m0, m1]))
        != (
            crate::basic::Deliver::CLASS_ID,
            crate::basic::Deliver::METHOD_ID,
        )
    {
        return None;
    }
    Some((channel, DeliverOctets::decode(args)?, method.end + 1))
}

/// Where a content message's header and body are in a read buffer: see [`content_at`].
pub(crate) struct ContentAt {
    /// Where the message's last frame ends (one past its frame-end octet).
    pub(crate) end: usize,
    /// The header's body size.
    pub(crate) body_size: u64,
    /// The header's encoded properties.
    pub(crate) properties: Range<usize>,
    /// The properties, when checking them took decoding them (a headers table).
    pub(crate) decoded: Option<Box<BasicProperties>>,
    /// The body (empty, at the header's end, without a body frame).
    pub(crate) body: Range<usize>,
}

/// The content that follows a method frame on `channel`: the basic content header frame at
/// `at` and, unless its body is empty, one body frame holding the whole body, when the
/// decoder would accept both (envelopes within `max`, class, weight, properties). `None` for
/// anything else, a body in several frames included.
#[inline]
pub(crate) fn content_at(src: &[u8], at: usize, channel: u16, max: u64) -> Option<ContentAt> {
    let (header_channel, header) = frame_at(src, at, FRAME_HEADER, max)?;
    let fixed = src.get(header.clone())?.get(..12)?;
    let &[c0, c1, w0, w1, ref size @ ..] = fixed else {
        return None;
    };
    let body_size = u64::from_be_bytes(size.try_into().ok()?);
    if header_channel != channel
        || u16::from_be_bytes([c0, c1]) != BASIC_CLASS_ID
        || u16::from_be_bytes([w0, w1]) != 0
    {
        return None;
    }
    let properties = header.start + 12..header.end;
    // The body frame's envelope before the properties: a body not all read yet or in
    // several frames (left to the frame decoder, which checks the properties again)
    // costs no properties check, which decodes a headers table.
    let (end, body) = if body_size == 0 {
        (header.end + 1, header.end..header.end)
    } else {
        let (body_channel, body) = frame_at(src, header.end + 1, FRAME_BODY, max)?;
        if body_channel != channel || body.len() as u64 != body_size {
            return None;
        }
        (body.end + 1, body)
    };
    let decoded = ContentHeader::check_raw(src.get(properties.clone())?).ok()?;
    Some(ContentAt {
        end,
        body_size,
        properties,
        decoded,
        body,
    })
}

fn begin(dst: &mut BytesMut, frame_type: u8, channel: u16) -> usize {
    dst.put_u8(frame_type);
    dst.put_u16(channel);
    let at = dst.len();
    dst.put_u32(0);
    at
}

/// Checks the payload written since `at + 4` against frame_max, patches the size, ends the frame.
fn finish(dst: &mut BytesMut, at: usize, frame_max: u32) -> Result<(), WireError> {
    let len = dst.len() - at - 4;
    let size = len + FRAME_OVERHEAD;
    let len32 = u32::try_from(len).map_err(|_| WireError::EncodeTooLarge { size, frame_max })?;
    if size as u64 > limit(frame_max) {
        return Err(WireError::EncodeTooLarge { size, frame_max });
    }
    dst[at..at + 4].copy_from_slice(&len32.to_be_bytes());
    dst.put_u8(FRAME_END);
    Ok(())
}

fn write_frame(frame: &Frame, dst: &mut BytesMut, frame_max: u32) -> Result<(), WireError> {
    match frame {
        Frame::Method { channel, method } => {
            let at = begin(dst, FRAME_METHOD, *channel);
            method.encode(dst)?;
            finish(dst, at, frame_max)
        }
        Frame::Header { channel, header } => {
            check_size(header.payload_len(), frame_max)?;
            dst.reserve(header.payload_len() + FRAME_OVERHEAD);
            let at = begin(dst, FRAME_HEADER, *channel);
            header.encode(dst);
            finish(dst, at, frame_max)
        }
        Frame::Body { channel, payload } => write_body(dst, *channel, payload, frame_max),
        Frame::Heartbeat => {
            dst.put_slice(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END]);
            Ok(())
        }
    }
}

fn check_size(payload_len: usize, frame_max: u32) -> Result<(), WireError> {
    let size = payload_len.saturating_add(FRAME_OVERHEAD);
    if size as u64 > limit(frame_max) {
        return Err(WireError::EncodeTooLarge { size, frame_max });
    }
    Ok(())
}

fn write_body(
    dst: &mut BytesMut,
    channel: u16,
    body: &[u8],
    frame_max: u32,
) -> Result<(), WireError> {
    check_size(body.len(), frame_max)?;
    dst.reserve(body.len() + FRAME_OVERHEAD);
    let at = begin(dst, FRAME_BODY, channel);
    dst.put_slice(body);
    finish(dst, at, frame_max)
}

/// Appends a whole content message to `dst`: the method frame, the header frame, and the body
/// split into as few body frames as frame_max allows (none for an empty body). This is how a
/// server writes `basic.deliver` / `basic.get-ok` / `basic.return` and a client `basic.publish`.
/// On error `dst` is left as it was.
///
/// # Errors
/// [`WireError::BodySizeMismatch`] if `header.body_size` is not `body.len()`,
/// [`WireError::EncodeTooLarge`] if the method frame alone exceeds frame_max (or frame_max
/// leaves no room for body octets), or the method's own encode errors. The header frame may
/// exceed frame_max, as RabbitMQ sends it.
pub fn encode_content<'h>(
    dst: &mut BytesMut,
    channel: u16,
    method: &Method,
    header: impl Into<HeaderRef<'h>>,
    body: &[u8],
    frame_max: u32,
) -> Result<(), WireError> {
    content(
        dst,
        channel,
        |dst| method.encode(dst),
        header.into(),
        body,
        frame_max,
    )
}

/// A content header borrowed: what encoding a header frame needs (class, body size and the
/// encoded properties), without the decoded [`BasicProperties`]. A broker that keeps only a
/// message's property octets encodes deliveries from this.
#[derive(Clone, Copy, Debug)]
pub struct HeaderRef<'a> {
    /// The class id (60, basic).
    pub class_id: u16,
    /// Total size of the body frames that follow.
    pub body_size: u64,
    /// The encoded property flags and property list.
    pub raw: &'a [u8],
}

impl HeaderRef<'_> {
    /// Size of the header frame's payload: 12 fixed octets plus `raw`.
    #[must_use]
    pub fn payload_len(&self) -> usize {
        12 + self.raw.len()
    }

    /// Appends the header frame's payload (class, weight 0, body size, `raw`) to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        dst.put_u16(self.class_id);
        dst.put_u16(0);
        dst.put_u64(self.body_size);
        dst.put_slice(self.raw);
    }
}

impl<'a> From<&'a ContentHeader> for HeaderRef<'a> {
    fn from(header: &'a ContentHeader) -> Self {
        HeaderRef {
            class_id: header.class_id,
            body_size: header.body_size,
            raw: &header.raw,
        }
    }
}

/// `basic.deliver`'s arguments, borrowed. A server writes one per delivery from strings it
/// already holds (the consumer tag, the message's exchange and routing key); encoding from
/// this allocates nothing, where building a [`crate::basic::Deliver`] would copy all three.
#[derive(Clone, Copy, Debug)]
pub struct DeliverRef<'a> {
    /// The consumer the message is delivered to.
    pub consumer_tag: &'a str,
    /// The channel-scoped delivery tag.
    pub delivery_tag: u64,
    /// Whether the message was delivered before.
    pub redelivered: bool,
    /// The exchange the message was published to.
    pub exchange: &'a str,
    /// The routing key it was published with.
    pub routing_key: &'a str,
}

/// [`DeliverRef`] with the names as octets, for a server that keeps them as octets: they came
/// in as strings, and encoding them needs no second UTF-8 check.
#[derive(Clone, Copy, Debug)]
pub struct DeliverOctets<'a> {
    /// The consumer the message is delivered to.
    pub consumer_tag: &'a [u8],
    /// The channel-scoped delivery tag.
    pub delivery_tag: u64,
    /// Whether the message was delivered before.
    pub redelivered: bool,
    /// The exchange the message was published to.
    pub exchange: &'a [u8],
    /// The routing key it was published with.
    pub routing_key: &'a [u8],
}

impl<'a> From<&DeliverRef<'a>> for DeliverOctets<'a> {
    fn from(deliver: &DeliverRef<'a>) -> Self {
        DeliverOctets {
            consumer_tag: deliver.consumer_tag.as_bytes(),
            delivery_tag: deliver.delivery_tag,
            redelivered: deliver.redelivered,
            exchange: deliver.exchange.as_bytes(),
            routing_key: deliver.routing_key.as_bytes(),
        }
    }
}

impl<'a> DeliverOctets<'a> {
    /// The same octets as `Method::BasicDeliver(..).encode` (a test keeps them equal).
    fn encode(&self, dst: &mut BytesMut) -> Result<(), WireError> {
        dst.put_u16(crate::basic::Deliver::CLASS_ID);
        dst.put_u16(crate::basic::Deliver::METHOD_ID);
        put_shortstr_octets(dst, self.consumer_tag, "basic.deliver.consumer-tag")?;
        dst.put_u64(self.delivery_tag);
        dst.put_u8(u8::from(self.redelivered));
        put_shortstr_octets(dst, self.exchange, "basic.deliver.exchange")?;
        put_shortstr_octets(dst, self.routing_key, "basic.deliver.routing-key")
    }

    /// Decodes `basic.deliver`'s arguments (after the class and method ids), borrowing the
    /// names as octets, not checked for UTF-8. `None` if they are malformed (the owned decoder
    /// reports that).
    #[inline]
    fn decode(args: &'a [u8]) -> Option<Self> {
        let mut r = crate::primitive::Reader::new(args);
        let s = |r: &mut crate::primitive::Reader<'a>, what| {
            let len = usize::from(r.u8(what).ok()?);
            r.take(len, what).ok()
        };
        let consumer_tag = s(&mut r, "basic.deliver.consumer-tag")?;
        let delivery_tag = r.u64("basic.deliver.delivery-tag").ok()?;
        let redelivered = r.u8("basic.deliver.redelivered").ok()? & 1 != 0;
        let exchange = s(&mut r, "basic.deliver.exchange")?;
        let routing_key = s(&mut r, "basic.deliver.routing-key")?;
        r.finish().ok()?;
        Some(DeliverOctets {
            consumer_tag,
            delivery_tag,
            redelivered,
            exchange,
            routing_key,
        })
    }
}

impl<'a> DeliverRef<'a> {
    /// The arguments with the names checked for UTF-8. `None` if one is not UTF-8 (the owned
    /// decoder replaces invalid sequences, as RabbitMQ does not check them).
    fn from_octets(d: &DeliverOctets<'a>) -> Option<Self> {
        Some(DeliverRef {
            consumer_tag: std::str::from_utf8(d.consumer_tag).ok()?,
            delivery_tag: d.delivery_tag,
            redelivered: d.redelivered,
            exchange: std::str::from_utf8(d.exchange).ok()?,
            routing_key: std::str::from_utf8(d.routing_key).ok()?,
        })
    }
}

/// [`encode_content`] for `basic.deliver`, from borrowed arguments.
///
/// # Errors
/// As [`encode_content`].
pub fn encode_delivery<'h>(
    dst: &mut BytesMut,
    channel: u16,
    deliver: &DeliverRef<'_>,
    header: impl Into<HeaderRef<'h>>,
    body: &[u8],
    frame_max: u32,
) -> Result<(), WireError> {
    let deliver = DeliverOctets::from(deliver);
    encode_delivery_octets(dst, channel, &deliver, header, body, frame_max)
}

/// [`encode_delivery`] with the names as octets (a server's, known to be UTF-8: they are
/// not checked again, and the output is the same).
///
/// # Errors
/// As [`encode_content`].
pub fn encode_delivery_octets<'h>(
    dst: &mut BytesMut,
    channel: u16,
    deliver: &DeliverOctets<'_>,
    header: impl Into<HeaderRef<'h>>,
    body: &[u8],
    frame_max: u32,
) -> Result<(), WireError> {
    let header = header.into();
    if write_small_delivery(dst, channel, deliver, header, body, frame_max) {
        return Ok(());
    }
    content(
        dst,
        channel,
        |dst| deliver.encode(dst),
        header,
        body,
        frame_max,
    )
}

/// The common delivery in few appends: names within 255 octets, the body as announced and in
/// at most one frame, every frame within frame_max. The frame sizes are known up front, so
/// nothing is patched or checked after the fact. Returns false, having written nothing, for
/// anything else (which the general path writes or reports).
fn write_small_delivery(
    dst: &mut BytesMut,
    channel: u16,
    deliver: &DeliverOctets<'_>,
    header: HeaderRef<'_>,
    body: &[u8],
    frame_max: u32,
) -> bool {
    let (tag, exchange, routing_key) =
        (deliver.consumer_tag, deliver.exchange, deliver.routing_key);
    let (Ok(tag_len), Ok(exchange_len), Ok(routing_key_len)) = (
        u8::try_from(tag.len()),
        u8::try_from(exchange.len()),
        u8::try_from(routing_key.len()),
    ) else {
        return false;
    };
    // class + method, 3 shortstrs, delivery tag, redelivered.
    let method_len = 4 + 3 + tag.len() + exchange.len() + routing_key.len() + 8 + 1;
    let header_len = header.payload_len();
    let fits = |len: usize| (len + FRAME_OVERHEAD) as u64 <= limit(frame_max);
    if header.body_size != body.len() as u64
        || !fits(method_len)
        || !fits(header_len)
        || !fits(body.len())
    {
        return false;
    }
    // Each fits a frame, so each fits a u32.
    let (Ok(method_size), Ok(header_size), Ok(body_frame_size)) = (
        u32::try_from(method_len),
        u32::try_from(header_len),
        u32::try_from(body.len()),
    ) else {
        return false;
    };
    let body_frame = if body.is_empty() {
        0
    } else {
        body.len() + FRAME_OVERHEAD
    };
    // Sized once and filled in place: a few stores per part instead of a put (a capacity
    // check and a length update, in a call) for each.
    let start = dst.len();
    dst.resize(
        start + method_len + header_len + 2 * FRAME_OVERHEAD + body_frame,
        0,
    );
    let mut out = Fill(&mut dst[start..]);
    let [c0, c1] = channel.to_be_bytes();
    let mut method = [0u8; 12];
    method[0] = FRAME_METHOD;
    method[1..3].copy_from_slice(&[c0, c1]);
    method[3..7].copy_from_slice(&method_size.to_be_bytes());
    method[7..9].copy_from_slice(&crate::basic::Deliver::CLASS_ID.to_be_bytes());
    method[9..11].copy_from_slice(&crate::basic::Deliver::METHOD_ID.to_be_bytes());
    method[11] = tag_len;
    out.put(&method);
    out.put(tag);
    let mut fixed = [0u8; 10];
    fixed[..8].copy_from_slice(&deliver.delivery_tag.to_be_bytes());
    fixed[8] = u8::from(deliver.redelivered);
    fixed[9] = exchange_len;
    out.put(&fixed);
    out.put(exchange);
    out.put(&[routing_key_len]);
    out.put(routing_key);
    let mut head = [0u8; 20];
    head[0] = FRAME_END;
    head[1] = FRAME_HEADER;
    head[2..4].copy_from_slice(&[c0, c1]);
    head[4..8].copy_from_slice(&header_size.to_be_bytes());
    head[8..10].copy_from_slice(&header.class_id.to_be_bytes());
    // head[10..12]: weight 0.
    head[12..20].copy_from_slice(&header.body_size.to_be_bytes());
    out.put(&head);
    out.put(header.raw);
    if body.is_empty() {
        out.put(&[FRAME_END]);
    } else {
        let [b0, b1, b2, b3] = body_frame_size.to_be_bytes();
        out.put(&[FRAME_END, FRAME_BODY, c0, c1, b0, b1, b2, b3]);
        out.put(body);
        out.put(&[FRAME_END]);
    }
    debug_assert!(out.0.is_empty(), "the sizes above miscount the delivery");
    true
}

/// Writes parts one after another into a slice sized for exactly them.
struct Fill<'a>(&'a mut [u8]);

impl Fill<'_> {
    fn put(&mut self, part: &[u8]) {
        let (head, tail) = std::mem::take(&mut self.0).split_at_mut(part.len());
        head.copy_from_slice(part);
        self.0 = tail;
    }
}

/// `basic.publish`'s arguments, borrowed: the client's counterpart of [`DeliverRef`]. A
/// client publishes from strings the application lends it; encoding from this allocates
/// nothing, where building a [`crate::basic::Publish`] would copy both.
#[derive(Clone, Copy, Debug)]
pub struct PublishRef<'a> {
    /// The exchange to publish to ("" = the default exchange).
    pub exchange: &'a str,
    /// The routing key.
    pub routing_key: &'a str,
    /// Return the message if it cannot be routed.
    pub mandatory: bool,
    /// Deprecated; RabbitMQ refuses it.
    pub immediate: bool,
}

impl PublishRef<'_> {
    /// The same octets as `Method::BasicPublish(..).encode` (a test keeps them equal).
    fn encode(&self, dst: &mut BytesMut) -> Result<(), WireError> {
        dst.put_u16(crate::basic::Publish::CLASS_ID);
        dst.put_u16(crate::basic::Publish::METHOD_ID);
        dst.put_u16(0);
        put_shortstr(dst, self.exchange, "basic.publish.exchange")?;
        put_shortstr(dst, self.routing_key, "basic.publish.routing-key")?;
        dst.put_u8(u8::from(self.mandatory) | (u8::from(self.immediate) << 1));
        Ok(())
    }
}

/// Appends a whole `basic.publish` content message, as [`encode_content`] would: the method
/// frame, the header frame with the properties encoded straight from `properties` (no
/// [`ContentHeader`] in between), and the body split into as few body frames as frame_max
/// allows (none for an empty body). What a client writes for each publish. On error `dst` is
/// left as it was.
///
/// # Errors
/// [`WireError::EncodeTooLarge`] if the method or header frame exceeds frame_max, a shortstr
/// over 255 octets (exchange, routing key or a property) or headers over 4 GiB. (A frame_max
/// too small for a body frame is too small for the method frame already.)
pub fn encode_publish(
    dst: &mut BytesMut,
    channel: u16,
    publish: &PublishRef<'_>,
    properties: &BasicProperties,
    body: &[u8],
    frame_max: u32,
) -> Result<(), WireError> {
    let start = dst.len();
    let result = match SmallPublish::new(publish, body, frame_max) {
        Some(small) => small.write(dst, channel, properties, body, frame_max),
        None => write_publish_head(
            dst,
            channel,
            publish,
            properties,
            body.len() as u64,
            frame_max,
        )
        .and_then(|()| write_bodies(dst, channel, body, frame_max)),
    };
    if result.is_err() {
        dst.truncate(start);
    }
    result
}

/// The method frame and header frame of a publish, one put at a time.
fn write_publish_head(
    dst: &mut BytesMut,
    channel: u16,
    publish: &PublishRef<'_>,
    properties: &BasicProperties,
    body_size: u64,
    frame_max: u32,
) -> Result<(), WireError> {
    let at = begin(dst, FRAME_METHOD, channel);
    publish.encode(dst)?;
    finish(dst, at, frame_max)?;
    let at = begin(dst, FRAME_HEADER, channel);
    dst.put_u16(BASIC_CLASS_ID);
    dst.put_u16(0);
    dst.put_u64(body_size);
    properties.encode(dst)?;
    finish(dst, at, frame_max)
}

/// The common publish: names within 255 octets, a method frame within frame_max and the body
/// in at most one frame. Only the properties' length is not known up front, so the message
/// takes one reservation, its fixed parts go in as a few arrays, and only the header frame's
/// size is patched afterwards. It writes what [`write_publish_head`] and [`write_bodies`]
/// write, and fails as they do: a property over 255 octets, or a header frame over frame_max.
struct SmallPublish<'a> {
    exchange: &'a [u8],
    routing_key: &'a [u8],
    /// The method frame's payload length.
    method_len: u32,
    bits: u8,
}

/// What [`SmallPublish`] reserves for the properties: the usual few short strings.
const PROPERTIES_ROOM: usize = 64;

impl<'a> SmallPublish<'a> {
    fn new(publish: &PublishRef<'a>, body: &[u8], frame_max: u32) -> Option<Self> {
        let (exchange, routing_key) = (publish.exchange.as_bytes(), publish.routing_key.as_bytes());
        if exchange.len() > 255 || routing_key.len() > 255 {
            return None;
        }
        // class + method, ticket, 2 shortstrs, the flag octet.
        let method_len = 4 + 2 + 1 + exchange.len() + 1 + routing_key.len() + 1;
        let fits = |len: usize| (len + FRAME_OVERHEAD) as u64 <= limit(frame_max);
        if !fits(method_len) || !fits(body.len()) {
            return None;
        }
        Some(SmallPublish {
            exchange,
            routing_key,
            method_len: u32::try_from(method_len).ok()?,
            bits: u8::from(publish.mandatory) | (u8::from(publish.immediate) << 1),
        })
    }

    fn write(
        &self,
        dst: &mut BytesMut,
        channel: u16,
        properties: &BasicProperties,
        body: &[u8],
        frame_max: u32,
    ) -> Result<(), WireError> {
        let header_len = 12 + PROPERTIES_ROOM;
        dst.reserve(self.method_len as usize + header_len + body.len() + 3 * FRAME_OVERHEAD);
        let ch = channel.to_be_bytes();
        // Frame header, class and method, ticket 0, the exchange's length.
        let mut method = [0u8; 14];
        method[0] = FRAME_METHOD;
        method[1..3].copy_from_slice(&ch);
        method[3..7].copy_from_slice(&self.method_len.to_be_bytes());
        method[7..9].copy_from_slice(&crate::basic::Publish::CLASS_ID.to_be_bytes());
        method[9..11].copy_from_slice(&crate::basic::Publish::METHOD_ID.to_be_bytes());
        // Both lengths are within 255 (`new`).
        method[13] = self.exchange.len() as u8;
        dst.put_slice(&method);
        // Most publishes go to the default exchange: no copy for its empty name.
        if !self.exchange.is_empty() {
            dst.put_slice(self.exchange);
        }
        dst.put_u8(self.routing_key.len() as u8);
        dst.put_slice(self.routing_key);
        dst.put_slice(&[self.bits, FRAME_END]);
        let at = begin(dst, FRAME_HEADER, channel);
        // Class, weight 0, body size.
        let mut fixed = [0u8; 12];
        fixed[..2].copy_from_slice(&BASIC_CLASS_ID.to_be_bytes());
        fixed[4..].copy_from_slice(&(body.len() as u64).to_be_bytes());
        dst.put_slice(&fixed);
        properties.encode(dst)?;
        finish(dst, at, frame_max)?;
        if !body.is_empty() {
            let mut frame = [0u8; 7];
            frame[0] = FRAME_BODY;
            frame[1..3].copy_from_slice(&ch);
            // Within frame_max (`new`), so within a u32.
            frame[3..].copy_from_slice(&(body.len() as u32).to_be_bytes());
            dst.put_slice(&frame);
            dst.put_slice(body);
            dst.put_u8(FRAME_END);
        }
        Ok(())
    }
}

/// The most body octets one frame carries under frame_max (0: no room at all).
fn body_chunk(frame_max: u32) -> usize {
    usize::try_from(limit(frame_max).saturating_sub(FRAME_OVERHEAD as u64))
        .unwrap_or(usize::MAX)
        .min(u32::MAX as usize)
}

/// Appends `body` as body frames of at most frame_max octets each (none for an empty body):
/// the frames that follow a content header. Fails, having written nothing, only if frame_max
/// leaves no room for body octets.
fn write_bodies(
    dst: &mut BytesMut,
    channel: u16,
    body: &[u8],
    frame_max: u32,
) -> Result<(), WireError> {
    if body.is_empty() {
        return Ok(());
    }
    let chunk = body_chunk(frame_max);
    if chunk == 0 {
        return Err(WireError::EncodeTooLarge {
            size: FRAME_OVERHEAD + 1,
            frame_max,
        });
    }
    dst.reserve(body.len() + body.len().div_ceil(chunk) * FRAME_OVERHEAD);
    for part in body.chunks(chunk) {
        write_body(dst, channel, part, frame_max)?;
    }
    Ok(())
}

/// Checks the body size, then writes the frames; on error `dst` is left as it was.
fn content(
    dst: &mut BytesMut,
    channel: u16,
    method: impl FnOnce(&mut BytesMut) -> Result<(), WireError>,
    header: HeaderRef<'_>,
    body: &[u8],
    frame_max: u32,
) -> Result<(), WireError> {
    if header.body_size != body.len() as u64 {
        return Err(WireError::BodySizeMismatch {
            declared: header.body_size,
            actual: body.len(),
        });
    }
    let start = dst.len();
    let result = write_content(dst, channel, method, header, body, frame_max);
    if result.is_err() {
        dst.truncate(start);
    }
    result
}

fn write_content(
    dst: &mut BytesMut,
    channel: u16,
    method: impl FnOnce(&mut BytesMut) -> Result<(), WireError>,
    header: HeaderRef<'_>,
    body: &[u8],
    frame_max: u32,
) -> Result<(), WireError> {
    let chunk = body_chunk(frame_max);
    if chunk == 0 && !body.is_empty() {
        return Err(WireError::EncodeTooLarge {
            size: FRAME_OVERHEAD + 1,
            frame_max,
        });
    }
    let frames = if chunk == 0 {
        0
    } else {
        body.len().div_ceil(chunk)
    };
    dst.reserve(
        64 + header.payload_len() + body.len() + frames * FRAME_OVERHEAD + 3 * FRAME_OVERHEAD,
    );
    let at = begin(dst, FRAME_METHOD, channel);
    method(dst)?;
    finish(dst, at, frame_max)?;
    // As RabbitMQ (rabbit_binary_generator:build_simple_content_frames), the header frame is
    // not held to frame_max: only bodies are split. A publisher may send properties up to its
    // own, larger frame_max; refusing them to a consumer with a smaller one would fail its
    // connection, and the requeued message the next consumer's.
    let at = begin(dst, FRAME_HEADER, channel);
    header.encode(dst);
    finish(dst, at, 0)?;
    write_bodies(dst, channel, body, frame_max)
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = WireError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, WireError> {
        let &[frame_type, c0, c1, s0, s1, s2, s3, ..] = &src[..] else {
            return Ok(None);
        };
        let channel = u16::from_be_bytes([c0, c1]);
        let size = u32::from_be_bytes([s0, s1, s2, s3]);
        let total = u64::from(size) + FRAME_OVERHEAD as u64;
        if total > decode_limit(self) {
            return Err(WireError::FrameTooLarge {
                size: total,
                frame_max: self.frame_max,
            });
        }
        // Reject what cannot become a valid frame before buffering its payload.
        match frame_type {
            FRAME_METHOD | FRAME_HEADER | FRAME_BODY => {}
            FRAME_HEARTBEAT if channel != 0 => {
                return Err(WireError::HeartbeatOnChannel { channel })
            }
            FRAME_HEARTBEAT if size != 0 => return Err(WireError::HeartbeatPayload { size }),
            FRAME_HEARTBEAT => {}
            _ => {
                return Err(WireError::UnknownFrameType {
                    frame_type,
                    channel,
                })
            }
        }
        let Ok(total) = usize::try_from(total) else {
            return Err(WireError::FrameTooLarge {
                size: total,
                frame_max: self.frame_max,
            });
        };
        if src.len() < total {
            src.reserve((total - src.len()).min(MAX_RESERVE));
            return Ok(None);
        }
        let payload_len = total - FRAME_OVERHEAD;
        let end = src.get(total - 1).copied().unwrap_or_default();
        if end != FRAME_END {
            return Err(WireError::BadFrameEnd {
                found: end,
                frame_type,
                channel,
            });
        }
        let frame = match frame_type {
            FRAME_METHOD => {
                let method = Method::decode(src.get(7..total - 1).unwrap_or_default())?;
                src.advance(total);
                Frame::Method { channel, method }
            }
            FRAME_HEADER => {
                if payload_len < 12 {
                    return Err(WireError::ShortHeaderFrame { size });
                }
                let fixed =
                    ContentHeader::decode_fixed(channel, src.get(7..19).unwrap_or_default());
                // Only the properties are split off (no slice of a slice to drop).
                src.advance(19);
                let raw = src.split_to(payload_len - 12).freeze();
                src.advance(1);
                let (class_id, body_size) = fixed?;
                Frame::Header {
                    channel,
                    header: ContentHeader::from_raw(class_id, body_size, raw)?,
                }
            }
            FRAME_BODY => {
                src.advance(7);
                let payload = src.split_to(payload_len).freeze();
                src.advance(1);
                Frame::Body { channel, payload }
            }
            _ => {
                src.advance(total);
                Frame::Heartbeat
            }
        };
        Ok(Some(frame))
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = WireError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), WireError> {
        self.encode_frame(&frame, dst)
    }
}

impl Encoder<&Frame> for FrameCodec {
    type Error = WireError;

    fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), WireError> {
        self.encode_frame(frame, dst)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{basic, FieldTable, FieldValue};

    /// Properties of several kinds, a headers table among them.
    pub(crate) fn rich_properties() -> BasicProperties {
        BasicProperties {
            content_type: Some("text/plain".into()),
            headers: Some([("k".to_owned(), FieldValue::I32(7))].into_iter().collect()),
            delivery_mode: Some(2),
            user_id: Some("guest".into()),
            ..BasicProperties::default()
        }
    }

    /// A method frame around `payload` (class and method ids first), written octet by octet:
    /// the arguments need not be what an encoder writes (names that are not UTF-8).
    pub(crate) fn method_frame(dst: &mut BytesMut, channel: u16, payload: &[u8]) {
        dst.extend_from_slice(&[FRAME_METHOD]);
        dst.extend_from_slice(&channel.to_be_bytes());
        dst.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
        dst.extend_from_slice(payload);
        dst.extend_from_slice(&[FRAME_END]);
    }

    /// A content message on channel 3: a method frame around `method` (its payload), a header
    /// with `properties`, `body` in as many body frames as `frame_max` takes; then a heartbeat.
    pub(crate) fn content_message(
        method: &[u8],
        properties: &BasicProperties,
        body: &[u8],
        frame_max: u32,
    ) -> BytesMut {
        let mut buf = BytesMut::new();
        method_frame(&mut buf, 3, method);
        let header = ContentHeader::new(BASIC_CLASS_ID, body.len() as u64, properties.clone());
        FrameCodec::new(frame_max)
            .encode_frame(
                &Frame::Header {
                    channel: 3,
                    header: header.unwrap(),
                },
                &mut buf,
            )
            .unwrap();
        write_bodies(&mut buf, 3, body, frame_max).unwrap();
        buf.extend_from_slice(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END]);
        buf
    }

    /// The header and body frames (channel 3) at the head of `src`, decoded one by one: the
    /// header, how many body frames there were and the body they hold.
    pub(crate) fn decode_content(
        codec: &mut FrameCodec,
        src: &mut BytesMut,
    ) -> (ContentHeader, usize, BytesMut) {
        let Some(Frame::Header { channel: 3, header }) = codec.decode(src).unwrap() else {
            panic!("not a header");
        };
        let mut frames = 0;
        let mut body = BytesMut::new();
        while let Some(Frame::Body {
            channel: 3,
            payload,
        }) = codec.decode(src).unwrap()
        {
            frames += 1;
            body.extend_from_slice(&payload);
        }
        (header, frames, body)
    }

    /// What a one-step decoder (`take`, as for [`check_content_left_to_the_decoder`]) must
    /// leave in the buffer when the method frame of `wire` is wrong: each of `corrupt` (what,
    /// offset, octet), and the method's `payload` with an octet after its arguments.
    pub(crate) fn check_method_left_to_the_decoder(
        wire: &BytesMut,
        header_at: usize,
        corrupt: &[(&str, usize, u8)],
        mut payload: Vec<u8>,
        take: impl Fn(u32, &mut BytesMut) -> bool,
    ) {
        left_when_corrupt(wire, corrupt, &take);
        payload.push(0);
        let mut long = BytesMut::new();
        method_frame(&mut long, 3, &payload);
        long.extend_from_slice(&wire[header_at..]);
        assert!(!take(4096, &mut long), "an octet after the arguments");
    }

    /// `take` declines `wire` with each of `corrupt` (what, offset, octet) and leaves it as
    /// it was.
    fn left_when_corrupt(
        wire: &BytesMut,
        corrupt: &[(&str, usize, u8)],
        take: &impl Fn(u32, &mut BytesMut) -> bool,
    ) {
        for &(what, at, value) in corrupt {
            let mut bad = wire.clone();
            bad[at] = value;
            let mut buf = bad.clone();
            assert!(!take(4096, &mut buf), "{what}");
            assert_eq!(buf, bad, "{what}");
        }
    }

    /// What a one-step decoder (`take`, with a codec of the frame_max given, saying whether
    /// it took a message) must leave in the buffer: every prefix of a message and content the
    /// frame decoder refuses. `message(body, frame_max)` is a message as [`content_message`]
    /// writes it, its header frame at `header_at`.
    pub(crate) fn check_content_left_to_the_decoder(
        header_at: usize,
        message: impl Fn(&[u8], u32) -> BytesMut,
        take: impl Fn(u32, &mut BytesMut) -> bool,
    ) {
        let wire = message(b"hi", 4096);
        let message_len = wire.len() - FRAME_OVERHEAD;
        for len in 0..message_len {
            let mut buf = BytesMut::from(&wire[..len]);
            assert!(!take(4096, &mut buf), "{len} octets");
            assert_eq!(&buf[..], &wire[..len]);
        }
        let body_at = header_at + 22;
        let corrupt: [(&str, usize, u8); 6] = [
            ("header frame type", header_at, 1),
            ("header channel", header_at + 2, 4),
            ("content class", header_at + 8, 50),
            ("content weight", header_at + 10, 1),
            ("body frame end", message_len - 1, 0),
            ("body channel", body_at + 2, 4),
        ];
        left_when_corrupt(&wire, &corrupt, &take);
        // Properties that do not decode: a flag bit no property has.
        let mut bad = wire.clone();
        bad[header_at + 20] |= 2;
        assert!(!take(4096, &mut bad.clone()));
        let mut codec = FrameCodec::new(4096);
        assert!(codec.decode(&mut bad).is_ok_and(|f| f.is_some()));
        assert!(matches!(
            codec.decode(&mut bad),
            Err(WireError::BadPropertyFlags { .. })
        ));
        // A 208-octet body frame: within 200 and its tolerance, over 199 and its.
        let big = message(&[7; 200], 0);
        assert!(!take(199, &mut big.clone()));
        let mut slow = big.clone();
        let mut codec = FrameCodec::new(199);
        assert!(codec.decode(&mut slow).is_ok_and(|f| f.is_some()));
        assert!(codec.decode(&mut slow).is_ok_and(|f| f.is_some()));
        assert!(matches!(
            codec.decode(&mut slow),
            Err(WireError::FrameTooLarge { .. })
        ));
        let mut buf = big.clone();
        assert!(take(200, &mut buf));
        assert_eq!(buf.len(), FRAME_OVERHEAD, "stops before the heartbeat");
    }

    #[test]
    fn a_small_delivery_encodes_as_the_general_path() {
        let rich = rich_properties();
        let long = "n".repeat(255);
        let names = ["", "q", long.as_str()];
        for properties in [BasicProperties::default(), rich] {
            for body_len in [0, 1, 62, 256, 4088, 4089, 10_000] {
                let body = vec![9u8; body_len];
                let header =
                    ContentHeader::new(BASIC_CLASS_ID, body_len as u64, properties.clone())
                        .unwrap();
                for (tag, exchange, routing_key) in [
                    (names[0], names[0], names[1]),
                    (names[1], names[2], names[2]),
                ] {
                    for frame_max in [0, 4096, 131_072] {
                        let deliver = DeliverRef {
                            consumer_tag: tag,
                            delivery_tag: u64::MAX - body_len as u64,
                            redelivered: body_len % 2 == 0,
                            exchange,
                            routing_key,
                        };
                        let mut general = BytesMut::from(&b"x"[..]);
                        let octets = DeliverOctets::from(&deliver);
                        let result = content(
                            &mut general,
                            7,
                            |dst| octets.encode(dst),
                            HeaderRef::from(&header),
                            &body,
                            frame_max,
                        );
                        let mut fast = BytesMut::from(&b"x"[..]);
                        assert_eq!(
                            encode_delivery(&mut fast, 7, &deliver, &header, &body, frame_max)
                                .is_ok(),
                            result.is_ok()
                        );
                        assert_eq!(fast, general, "body {body_len}, frame_max {frame_max}");
                    }
                }
            }
        }
    }

    #[test]
    fn peek_deliver_borrows_what_decode_owns() {
        let deliver = DeliverRef {
            consumer_tag: "ctag",
            delivery_tag: 7,
            redelivered: true,
            exchange: "x",
            routing_key: "rk",
        };
        let header = ContentHeader::new(BASIC_CLASS_ID, 2, BasicProperties::default()).unwrap();
        let mut buf = BytesMut::new();
        encode_delivery(&mut buf, 3, &deliver, &header, b"hi", 4096).unwrap();
        let codec = FrameCodec::new(4096);
        let (channel, d, len) = codec.peek_deliver(&buf).expect("a deliver frame");
        assert_eq!(
            (
                channel,
                d.consumer_tag,
                d.delivery_tag,
                d.redelivered,
                d.exchange,
                d.routing_key
            ),
            (3, "ctag", 7, true, "x", "rk")
        );
        let Some(Frame::Method {
            channel: 3,
            method: Method::BasicDeliver(owned),
        }) = FrameCodec::new(4096).decode(&mut buf.clone()).unwrap()
        else {
            panic!("not a deliver frame");
        };
        assert_eq!(
            (
                owned.consumer_tag.as_str(),
                owned.delivery_tag,
                owned.redelivered
            ),
            ("ctag", 7, true)
        );
        assert_eq!(
            (owned.exchange.as_str(), owned.routing_key.as_str()),
            ("x", "rk")
        );
        assert!(codec.peek_deliver(&buf[..len - 1]).is_none(), "incomplete");
        assert!(codec.peek_deliver(&buf[len..]).is_none(), "a header frame");
        let mut foreign = buf[..len].to_vec();
        let tag_at = 7 + 4 + 1;
        foreign[tag_at] = 0xff;
        assert!(codec.peek_deliver(&foreign).is_none(), "not UTF-8");
    }

    fn owned_encoding(
        publish: &PublishRef<'_>,
        properties: &BasicProperties,
        body: &[u8],
        frame_max: u32,
    ) -> Result<BytesMut, WireError> {
        let method = Method::BasicPublish(basic::Publish {
            exchange: publish.exchange.into(),
            routing_key: publish.routing_key.into(),
            mandatory: publish.mandatory,
            immediate: publish.immediate,
        });
        let header = ContentHeader::new(BASIC_CLASS_ID, body.len() as u64, properties.clone())?;
        let mut dst = BytesMut::new();
        encode_content(&mut dst, 3, &method, &header, body, frame_max)?;
        Ok(dst)
    }

    fn borrowed_encoding(
        publish: &PublishRef<'_>,
        properties: &BasicProperties,
        body: &[u8],
        frame_max: u32,
    ) -> Result<BytesMut, WireError> {
        let mut dst = BytesMut::new();
        encode_publish(&mut dst, 3, publish, properties, body, frame_max)?;
        Ok(dst)
    }

    #[test]
    fn borrowed_publish_encodes_as_the_generated_method() {
        let headers: FieldTable = [("k".to_owned(), FieldValue::I32(7))].into_iter().collect();
        let rich = BasicProperties {
            content_type: Some("text/plain".into()),
            headers: Some(headers),
            delivery_mode: Some(2),
            correlation_id: Some("c".into()),
            timestamp: Some(5),
            ..BasicProperties::default()
        };
        let big = vec![7u8; 10_000];
        for properties in [BasicProperties::default(), rich] {
            for (exchange, routing_key) in [("", "q"), ("amq.topic", "a.b.c")] {
                for (mandatory, immediate) in [(false, false), (true, false), (true, true)] {
                    let publish = PublishRef {
                        exchange,
                        routing_key,
                        mandatory,
                        immediate,
                    };
                    for body in [&b""[..], b"hello", &big] {
                        for frame_max in [0, 4096, 131_072] {
                            let owned = owned_encoding(&publish, &properties, body, frame_max);
                            let borrowed =
                                borrowed_encoding(&publish, &properties, body, frame_max);
                            assert_eq!(owned.unwrap(), borrowed.unwrap());
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn borrowed_header_parts_encode_as_the_content_header() {
        let properties = BasicProperties {
            content_type: Some("text/plain".into()),
            delivery_mode: Some(2),
            ..BasicProperties::default()
        };
        let header = ContentHeader::new(BASIC_CLASS_ID, 5, properties).unwrap();
        let raw = header.raw.clone();
        let parts = HeaderRef {
            class_id: BASIC_CLASS_ID,
            body_size: 5,
            raw: &raw,
        };
        let method = Method::BasicPublish(basic::Publish::default());
        let mut owned = BytesMut::new();
        encode_content(&mut owned, 1, &method, &header, b"hello", 4096).unwrap();
        let mut borrowed = BytesMut::new();
        encode_content(&mut borrowed, 1, &method, parts, b"hello", 4096).unwrap();
        assert_eq!(owned, borrowed);
        let mut frame = BytesMut::new();
        FrameCodec::new(4096)
            .encode_frame(&Frame::Header { channel: 1, header }, &mut frame)
            .unwrap();
        let mut parts_frame = BytesMut::new();
        parts.encode(&mut parts_frame);
        assert_eq!(&frame[7..frame.len() - 1], &parts_frame[..]);
        assert_eq!(parts.payload_len(), parts_frame.len());
    }

    #[test]
    fn a_small_publish_writes_and_fails_as_the_general_path() {
        let rich = rich_properties();
        let huge = BasicProperties {
            content_type: Some("t".repeat(200)),
            message_id: Some("m".repeat(200)),
            ..BasicProperties::default()
        };
        let too_long = BasicProperties {
            reply_to: Some("r".repeat(256)),
            ..BasicProperties::default()
        };
        let long = "n".repeat(255);
        for properties in [BasicProperties::default(), rich, huge, too_long] {
            for (exchange, routing_key) in [("", "q"), ("amq.topic", long.as_str())] {
                let publish = PublishRef {
                    exchange,
                    routing_key,
                    mandatory: true,
                    immediate: false,
                };
                for body_len in [0, 1, 16, 200, 4088, 4089, 10_000] {
                    let body = vec![5u8; body_len];
                    for frame_max in [0, 8, 9, 20, 40, 60, 100, 300, 4096, 131_072] {
                        let mut general = BytesMut::from(&b"x"[..]);
                        let general_result = write_publish_head(
                            &mut general,
                            3,
                            &publish,
                            &properties,
                            body_len as u64,
                            frame_max,
                        )
                        .and_then(|()| write_bodies(&mut general, 3, &body, frame_max));
                        let mut dst = BytesMut::from(&b"x"[..]);
                        let result =
                            encode_publish(&mut dst, 3, &publish, &properties, &body, frame_max);
                        let case = format!("body {body_len}, frame_max {frame_max}");
                        match (general_result, result) {
                            (Ok(()), Ok(())) => assert_eq!(dst, general, "{case}"),
                            (Err(expected), Err(e)) => {
                                assert_eq!(e.to_string(), expected.to_string(), "{case}");
                                assert_eq!(&dst[..], b"x", "{case}: left as it was");
                            }
                            (expected, result) => panic!("{case}: {result:?}, not {expected:?}"),
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn publish_errors_leave_the_buffer_as_it_was() {
        let mut dst = BytesMut::from(&b"kept"[..]);
        let long = "x".repeat(256);
        let publish = PublishRef {
            exchange: "",
            routing_key: &long,
            mandatory: false,
            immediate: false,
        };
        let props = BasicProperties::default();
        assert!(encode_publish(&mut dst, 1, &publish, &props, b"", 0).is_err());
        assert_eq!(&dst[..], b"kept");
        let publish = PublishRef {
            routing_key: "q",
            ..publish
        };
        let huge = BasicProperties {
            content_type: Some("t".repeat(200)),
            message_id: Some("m".repeat(200)),
            ..BasicProperties::default()
        };
        // Both frames fit 4096, but not 300 octets of frame_max.
        assert!(encode_publish(&mut dst, 1, &publish, &huge, b"", 4096).is_ok());
        dst.truncate(4);
        assert!(matches!(
            encode_publish(&mut dst, 1, &publish, &huge, b"", 300),
            Err(WireError::EncodeTooLarge { .. })
        ));
        assert_eq!(&dst[..], b"kept");
        // A method frame of 18 octets over frame_max: reported as such, with or without a
        // body, even where frame_max leaves no room for body octets either.
        for (body, frame_max) in [(&b""[..], 17), (b"x", 17), (b"x", 8)] {
            assert!(matches!(
                encode_publish(&mut dst, 1, &publish, &props, body, frame_max),
                Err(WireError::EncodeTooLarge { size: 18, frame_max: f }) if f == frame_max
            ));
            assert_eq!(&dst[..], b"kept");
        }
    }
}
