//! [`WireError`]: everything that can go wrong encoding or decoding AMQP, with the reply code a
//! server answers it with.
//!
//! Reply codes follow what RabbitMQ does rather than a literal reading of the spec:
//! - framing problems (oversized frame, bad frame-end octet, unknown frame type, heartbeat with a
//!   payload) are 501 FRAME_ERROR (`rabbit_reader:handle_input` / `frame_error`);
//! - a heartbeat on a non-zero channel is 505 UNEXPECTED_FRAME (`rabbit_reader:handle_frame`), and
//!   so is a content header for another class than basic or with a non-zero weight
//!   (`rabbit_command_assembler:process`; both name the channel, because what a server answers
//!   depends on what the channel expected);
//! - method arguments that do not decode (truncated, a string running past the end, a bad
//!   field-table tag, trailing octets, invalid UTF-8 in a shortstr) are 501 FRAME_ERROR: RabbitMQ's
//!   generated `decode_method_fields` falls back to `rabbit_misc:frame_error/2`
//!   ("cannot decode ..."), and `assert_utf8` raises `frame_error` too. Content-header properties
//!   that do not decode are treated the same way. UTF-8 is checked only where RabbitMQ checks it
//!   (shortstr arguments of methods without content); elsewhere (publish/deliver arguments,
//!   property values, table keys) invalid sequences decode lossily, and content headers are
//!   re-sent from their raw octets;
//! - an unknown class or method id is 540 NOT_IMPLEMENTED (RabbitMQ's `lookup_method_name` exits
//!   and the connection drops without a close; 540 tells the client why);
//! - encode-side failures (a shortstr over 255 octets) and I/O errors never reach a peer as such;
//!   they map to 541 INTERNAL_ERROR.

use crate::reply_code;

/// An error encoding or decoding AMQP 0-9-1. Every decode error is fatal to the connection: the
/// stream has lost sync or the peer is broken.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// A frame's declared size exceeds the negotiated frame_max (checked before any buffering).
    #[error(
        "frame of {size} octets (header and end octet included) exceeds frame_max {frame_max}"
    )]
    FrameTooLarge {
        /// Total frame size: 7 header octets + payload + 1 end octet.
        size: u64,
        /// The negotiated maximum.
        frame_max: u32,
    },
    /// The octet after a frame's payload is not 0xCE.
    #[error("invalid frame end octet {found:#04x} (expected 0xce) on a type {frame_type} frame, channel {channel}")]
    BadFrameEnd {
        /// The octet found.
        found: u8,
        /// Frame type of the offending frame.
        frame_type: u8,
        /// Channel of the offending frame.
        channel: u16,
    },
    /// A frame type other than method (1), header (2), body (3) or heartbeat (8).
    #[error("unknown frame type {frame_type} on channel {channel}")]
    UnknownFrameType {
        /// The frame type octet.
        frame_type: u8,
        /// The frame's channel.
        channel: u16,
    },
    /// A heartbeat frame on a channel other than 0.
    #[error("heartbeat frame on channel {channel} (heartbeats use channel 0)")]
    HeartbeatOnChannel {
        /// The channel it arrived on.
        channel: u16,
    },
    /// A heartbeat frame with a non-empty payload.
    #[error("heartbeat frame with a {size}-octet payload (must be empty)")]
    HeartbeatPayload {
        /// The payload size.
        size: u32,
    },
    /// A content header frame shorter than its fixed 12-octet prefix.
    #[error("content header frame of {size} octets is shorter than the 12-octet minimum")]
    ShortHeaderFrame {
        /// The payload size.
        size: u32,
    },
    /// A method frame for a class the spec does not define.
    #[error("unknown class id {class_id} (method id {method_id})")]
    UnknownClass {
        /// The class id.
        class_id: u16,
        /// The method id.
        method_id: u16,
    },
    /// A method id the spec does not define within a known class.
    #[error("unknown method id {method_id} in class {class_id}")]
    UnknownMethod {
        /// The class id.
        class_id: u16,
        /// The method id.
        method_id: u16,
    },
    /// Input ended before a value was complete.
    #[error("truncated {what} at offset {offset}: need {need} octets, have {have}")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Offset of the value within the payload being decoded.
        offset: usize,
        /// Octets the value needs.
        need: usize,
        /// Octets left.
        have: usize,
    },
    /// Octets left over after the last argument or property.
    #[error("{extra} trailing octets at offset {offset}")]
    TrailingBytes {
        /// Offset of the first extra octet.
        offset: usize,
        /// Number of extra octets.
        extra: usize,
    },
    /// A shortstr (or field-table key) that is not valid UTF-8.
    #[error("invalid UTF-8 in shortstr at offset {offset}")]
    InvalidUtf8 {
        /// Offset of the string's length octet.
        offset: usize,
    },
    /// A field-table or array value with an unknown type tag.
    #[error("unknown field type tag {tag:#04x} ({}) at offset {offset}", char::from(*tag).escape_default())]
    BadFieldType {
        /// The tag octet.
        tag: u8,
        /// Offset of the tag.
        offset: usize,
    },
    /// Field tables or arrays nested deeper than [`crate::MAX_NESTING`].
    #[error("field tables nested deeper than {max} at offset {offset}")]
    NestingTooDeep {
        /// The limit.
        max: usize,
        /// Offset where the limit was hit.
        offset: usize,
    },
    /// Property flags naming a property the class does not have.
    #[error("invalid property flags {flags:#06x} (flag word {word})")]
    BadPropertyFlags {
        /// The offending flag word.
        flags: u16,
        /// Its index (0 for the first word).
        word: usize,
    },
    /// A content header for a class other than basic (the only class with content in 0-9-1).
    #[error("content header for class {class_id}, which has no content")]
    BadContentClass {
        /// The frame's channel.
        channel: u16,
        /// The class id found.
        class_id: u16,
    },
    /// A content header with a non-zero weight (unused in 0-9-1; RabbitMQ only accepts 0).
    #[error("content header with weight {weight} (must be 0)")]
    BadContentWeight {
        /// The frame's channel.
        channel: u16,
        /// The weight found.
        weight: u16,
    },
    /// A method's arguments did not decode; the cause says where.
    #[error("cannot decode {method}: {source}")]
    Method {
        /// The method's spec name (`basic.publish`).
        method: &'static str,
        /// The method's class id.
        class_id: u16,
        /// The method's id within its class.
        method_id: u16,
        /// What went wrong.
        #[source]
        source: Box<WireError>,
    },
    /// Encoding: a shortstr longer than 255 octets (never silently truncated).
    #[error("{what} is {len} octets, over the 255-octet shortstr limit")]
    ShortStrTooLong {
        /// What was being encoded.
        what: &'static str,
        /// Its length.
        len: usize,
    },
    /// Encoding: a longstr, table or array longer than a u32 length can say.
    #[error("{what} is {len} octets, over the 4 GiB longstr limit")]
    LongStrTooLong {
        /// What was being encoded.
        what: &'static str,
        /// Its length.
        len: usize,
    },
    /// Encoding: a frame that would exceed frame_max (use [`crate::encode_content`] for bodies).
    #[error("cannot encode a frame of {size} octets with frame_max {frame_max}")]
    EncodeTooLarge {
        /// Total frame size.
        size: usize,
        /// The negotiated maximum.
        frame_max: u32,
    },
    /// Encoding: a content header whose body size differs from the body given with it.
    #[error("content header declares {declared} body octets but the body has {actual}")]
    BodySizeMismatch {
        /// `body_size` in the header.
        declared: u64,
        /// The body's length.
        actual: usize,
    },
    /// An I/O error from the transport under a `Framed` stream.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl WireError {
    /// The reply code a server closes the connection with (see the module docs for the mapping).
    #[must_use]
    pub fn reply_code(&self) -> u16 {
        match self {
            WireError::FrameTooLarge { .. }
            | WireError::BadFrameEnd { .. }
            | WireError::UnknownFrameType { .. }
            | WireError::HeartbeatPayload { .. }
            | WireError::ShortHeaderFrame { .. }
            | WireError::Truncated { .. }
            | WireError::TrailingBytes { .. }
            | WireError::InvalidUtf8 { .. }
            | WireError::BadFieldType { .. }
            | WireError::NestingTooDeep { .. }
            | WireError::BadPropertyFlags { .. } => reply_code::FRAME_ERROR,
            WireError::HeartbeatOnChannel { .. }
            | WireError::BadContentClass { .. }
            | WireError::BadContentWeight { .. } => reply_code::UNEXPECTED_FRAME,
            WireError::UnknownClass { .. } | WireError::UnknownMethod { .. } => {
                reply_code::NOT_IMPLEMENTED
            }
            WireError::Method { source, .. } => source.reply_code(),
            WireError::ShortStrTooLong { .. }
            | WireError::LongStrTooLong { .. }
            | WireError::EncodeTooLarge { .. }
            | WireError::BodySizeMismatch { .. }
            | WireError::Io(_) => reply_code::INTERNAL_ERROR,
        }
    }

    /// The (class id, method id) of the method that failed to decode, when known, for the
    /// `class-id` / `method-id` of the `connection.close` a server sends (RabbitMQ names the
    /// method whose arguments it "cannot decode").
    #[must_use]
    pub fn method_ids(&self) -> Option<(u16, u16)> {
        match self {
            WireError::UnknownClass {
                class_id,
                method_id,
            }
            | WireError::UnknownMethod {
                class_id,
                method_id,
            }
            | WireError::Method {
                class_id,
                method_id,
                ..
            } => Some((*class_id, *method_id)),
            _ => None,
        }
    }

    /// Wraps a decode error with the method it happened in.
    pub(crate) fn in_method(
        self,
        method: &'static str,
        class_id: u16,
        method_id: u16,
    ) -> WireError {
        WireError::Method {
            method,
            class_id,
            method_id,
            source: Box::new(self),
        }
    }
}
