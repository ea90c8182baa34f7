//! Content headers: [`BasicProperties`] and [`ContentHeader`].
//!
//! A content header frame's payload is `class-id: u16`, `weight: u16` (always 0),
//! `body-size: u64`, then the property flags and the property list. Flags are 16-bit words: bits
//! 15 down to 2 of the first word say which of the 14 basic properties follow, in order; bit 0
//! says another flag word follows. Basic has only 14 properties, so continuation words must be
//! empty: a set bit naming a property that does not exist (bit 1 of the first word, or any
//! property bit of a continuation word) is [`WireError::BadPropertyFlags`].

use std::borrow::Cow;
use std::sync::OnceLock;

use bytes::{BufMut, Bytes, BytesMut};

use crate::primitive::{put_shortstr, put_table, Reader};
use crate::{FieldTable, HeaderRef, WireError};

/// The class id of `basic`, the only class with content in AMQP 0-9-1.
pub const BASIC_CLASS_ID: u16 = 60;

const CONTENT_TYPE: u16 = 1 << 15;
const CONTENT_ENCODING: u16 = 1 << 14;
const HEADERS: u16 = 1 << 13;
const DELIVERY_MODE: u16 = 1 << 12;
const PRIORITY: u16 = 1 << 11;
const CORRELATION_ID: u16 = 1 << 10;
const REPLY_TO: u16 = 1 << 9;
const EXPIRATION: u16 = 1 << 8;
const MESSAGE_ID: u16 = 1 << 7;
const TIMESTAMP: u16 = 1 << 6;
const KIND: u16 = 1 << 5;
const USER_ID: u16 = 1 << 4;
const APP_ID: u16 = 1 << 3;
const CLUSTER_ID: u16 = 1 << 2;
const RESERVED: u16 = 1 << 1;
const CONTINUATION: u16 = 1;

/// The 14 properties of class `basic`; `None` means absent (flag bit clear).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BasicProperties {
    /// `content-type` (shortstr), MIME type.
    pub content_type: Option<String>,
    /// `content-encoding` (shortstr), MIME encoding.
    pub content_encoding: Option<String>,
    /// `headers` (table), application headers; headers exchanges route on these.
    pub headers: Option<FieldTable>,
    /// `delivery-mode` (octet): 1 transient, 2 persistent.
    pub delivery_mode: Option<u8>,
    /// `priority` (octet), 0 to 9.
    pub priority: Option<u8>,
    /// `correlation-id` (shortstr).
    pub correlation_id: Option<String>,
    /// `reply-to` (shortstr).
    pub reply_to: Option<String>,
    /// `expiration` (shortstr): per-message TTL in milliseconds, as a decimal string.
    pub expiration: Option<String>,
    /// `message-id` (shortstr).
    pub message_id: Option<String>,
    /// `timestamp` (timestamp), seconds since the epoch.
    pub timestamp: Option<u64>,
    /// `type` (shortstr), the message type name.
    pub kind: Option<String>,
    /// `user-id` (shortstr); RabbitMQ checks it against the connection's user.
    pub user_id: Option<String>,
    /// `app-id` (shortstr).
    pub app_id: Option<String>,
    /// `cluster-id` (shortstr, deprecated).
    pub cluster_id: Option<String>,
}

impl BasicProperties {
    /// Whether `delivery_mode` is 2 (persistent).
    #[must_use]
    pub fn is_persistent(&self) -> bool {
        self.delivery_mode == Some(2)
    }

    /// The property flags word for the properties present.
    #[must_use]
    pub fn flags(&self) -> u16 {
        let mut f = 0;
        let mut set = |present: bool, bit: u16| {
            if present {
                f |= bit;
            }
        };
        set(self.content_type.is_some(), CONTENT_TYPE);
        set(self.content_encoding.is_some(), CONTENT_ENCODING);
        set(self.headers.is_some(), HEADERS);
        set(self.delivery_mode.is_some(), DELIVERY_MODE);
        set(self.priority.is_some(), PRIORITY);
        set(self.correlation_id.is_some(), CORRELATION_ID);
        set(self.reply_to.is_some(), REPLY_TO);
        set(self.expiration.is_some(), EXPIRATION);
        set(self.message_id.is_some(), MESSAGE_ID);
        set(self.timestamp.is_some(), TIMESTAMP);
        set(self.kind.is_some(), KIND);
        set(self.user_id.is_some(), USER_ID);
        set(self.app_id.is_some(), APP_ID);
        set(self.cluster_id.is_some(), CLUSTER_ID);
        f
    }

    /// Appends the property flags and property list to `dst`.
    ///
    /// # Errors
    /// A shortstr property over 255 octets, or headers over 4 GiB.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), WireError> {
        let flags = self.flags();
        dst.put_u16(flags);
        let s = |dst: &mut BytesMut, v: &Option<String>, what| match v {
            Some(v) => put_shortstr(dst, v, what),
            None => Ok(()),
        };
        // A message sets a few properties: the groups of string properties it leaves out
        // are skipped as a whole.
        if flags & (CONTENT_TYPE | CONTENT_ENCODING | HEADERS) != 0 {
            s(dst, &self.content_type, "content-type")?;
            s(dst, &self.content_encoding, "content-encoding")?;
            if let Some(h) = &self.headers {
                put_table(dst, h)?;
            }
        }
        if let Some(v) = self.delivery_mode {
            dst.put_u8(v);
        }
        if let Some(v) = self.priority {
            dst.put_u8(v);
        }
        if flags & (CORRELATION_ID | REPLY_TO | EXPIRATION | MESSAGE_ID) != 0 {
            s(dst, &self.correlation_id, "correlation-id")?;
            s(dst, &self.reply_to, "reply-to")?;
            s(dst, &self.expiration, "expiration")?;
            s(dst, &self.message_id, "message-id")?;
        }
        if let Some(v) = self.timestamp {
            dst.put_u64(v);
        }
        if flags & (KIND | USER_ID | APP_ID | CLUSTER_ID) != 0 {
            s(dst, &self.kind, "type")?;
            s(dst, &self.user_id, "user-id")?;
            s(dst, &self.app_id, "app-id")?;
            s(dst, &self.cluster_id, "cluster-id")?;
        }
        Ok(())
    }

    /// Decodes property flags and the property list, which must fill `src` exactly.
    ///
    /// # Errors
    /// Flags naming properties basic does not have, truncated values, invalid UTF-8 in a
    /// shortstr, a malformed headers table, trailing octets.
    pub fn decode(src: &[u8]) -> Result<BasicProperties, WireError> {
        let mut r = Reader::new(src);
        let flags = read_flags(&mut r)?;
        let has = |bit: u16| flags & bit != 0;
        let s = |r: &mut Reader<'_>, bit: u16, what| -> Result<Option<String>, WireError> {
            if has(bit) {
                r.shortstr_lossy(what).map(Some)
            } else {
                Ok(None)
            }
        };
        let p = BasicProperties {
            content_type: s(&mut r, CONTENT_TYPE, "content-type")?,
            content_encoding: s(&mut r, CONTENT_ENCODING, "content-encoding")?,
            headers: if has(HEADERS) {
                Some(r.table("headers")?)
            } else {
                None
            },
            delivery_mode: if has(DELIVERY_MODE) {
                Some(r.u8("delivery-mode")?)
            } else {
                None
            },
            priority: if has(PRIORITY) {
                Some(r.u8("priority")?)
            } else {
                None
            },
            correlation_id: s(&mut r, CORRELATION_ID, "correlation-id")?,
            reply_to: s(&mut r, REPLY_TO, "reply-to")?,
            expiration: s(&mut r, EXPIRATION, "expiration")?,
            message_id: s(&mut r, MESSAGE_ID, "message-id")?,
            timestamp: if has(TIMESTAMP) {
                Some(r.u64("timestamp")?)
            } else {
                None
            },
            kind: s(&mut r, KIND, "type")?,
            user_id: s(&mut r, USER_ID, "user-id")?,
            app_id: s(&mut r, APP_ID, "app-id")?,
            cluster_id: s(&mut r, CLUSTER_ID, "cluster-id")?,
        };
        r.finish()?;
        Ok(p)
    }
}

/// Reads the property flag words; returns the first (basic's properties all live in it).
fn read_flags(r: &mut Reader<'_>) -> Result<u16, WireError> {
    let flags = r.u16("property flags")?;
    if flags & RESERVED != 0 {
        return Err(WireError::BadPropertyFlags { flags, word: 0 });
    }
    let mut more = flags & CONTINUATION != 0;
    let mut word = 0;
    while more {
        word += 1;
        let next = r.u16("property flags")?;
        if next & !CONTINUATION != 0 {
            return Err(WireError::BadPropertyFlags { flags: next, word });
        }
        more = next & CONTINUATION != 0;
    }
    Ok(flags)
}

/// A content header: the class, the body size and `raw`, the encoded property flags + property
/// list exactly as received (or as encoded once by [`ContentHeader::new`]). Encoding a header
/// writes `raw`, so a delivery re-sends the publisher's bytes without re-encoding the
/// properties.
///
/// The properties are checked when the header is decoded (the same errors as
/// [`BasicProperties::decode`]) but decoded into a [`BasicProperties`] only when first asked
/// for ([`ContentHeader::properties`]): a broker reads a few of them for each message, which
/// [`ContentHeader::view`] finds in `raw` without building the 14 fields.
#[derive(Clone, Default)]
pub struct ContentHeader {
    /// The class id (60, basic).
    pub class_id: u16,
    /// Total size of the body frames that follow.
    pub body_size: u64,
    /// The encoded property flags and property list. Must stay the encoding the header was
    /// built or decoded with: change it with [`ContentHeader::set_properties`].
    pub raw: Bytes,
    /// `raw` decoded, on first use (boxed: most headers are never decoded, and the header
    /// moves by value).
    decoded: OnceLock<Box<BasicProperties>>,
}

impl ContentHeader {
    /// Builds a header, encoding `raw` from `properties` once.
    ///
    /// # Errors
    /// A shortstr property over 255 octets, or headers over 4 GiB.
    pub fn new(
        class_id: u16,
        body_size: u64,
        properties: BasicProperties,
    ) -> Result<Self, WireError> {
        let mut raw = BytesMut::new();
        properties.encode(&mut raw)?;
        Ok(ContentHeader {
            class_id,
            body_size,
            raw: raw.freeze(),
            decoded: OnceLock::from(Box::new(properties)),
        })
    }

    /// Rebuilds a header from stored parts (`raw` as kept by a store), checking the
    /// properties.
    ///
    /// # Errors
    /// Properties that do not decode (see [`BasicProperties::decode`]).
    pub fn from_raw(class_id: u16, body_size: u64, raw: Bytes) -> Result<Self, WireError> {
        let decoded = Self::check_raw(&raw)?;
        Ok(Self::checked(class_id, body_size, raw, decoded))
    }

    /// A header whose `raw` passed [`ContentHeader::check_raw`], with what that decoded.
    pub(crate) fn checked(
        class_id: u16,
        body_size: u64,
        raw: Bytes,
        decoded: Option<Box<BasicProperties>>,
    ) -> Self {
        ContentHeader {
            class_id,
            body_size,
            raw,
            decoded: decoded.map_or_else(OnceLock::new, OnceLock::from),
        }
    }

    /// Checks encoded properties as [`ContentHeader::from_raw`] does: `Ok(None)` when they
    /// are sound, `Ok(Some(..))` when they had to be decoded to tell (a headers table).
    ///
    /// # Errors
    /// As [`BasicProperties::decode`].
    pub(crate) fn check_raw(raw: &[u8]) -> Result<Option<Box<BasicProperties>>, WireError> {
        // A headers table is decoded right away (checking one costs about what decoding
        // it does); without one, the walk below checks exactly what decoding would.
        if PropertiesView::check(raw).is_some_and(|view| !view.has(HEADERS)) {
            Ok(None)
        } else {
            BasicProperties::decode(raw).map(|properties| Some(Box::new(properties)))
        }
    }

    /// The properties, decoded from `raw` on the first call.
    #[must_use]
    pub fn properties(&self) -> &BasicProperties {
        // `raw` was checked when the header was made; only a `raw` replaced by hand since
        // (or the empty one of `ContentHeader::default`) can fail, and reads as no properties.
        self.decoded
            .get_or_init(|| Box::new(BasicProperties::decode(&self.raw).unwrap_or_default()))
    }

    /// The properties by value (decoded unless they already were).
    #[must_use]
    pub fn into_properties(self) -> BasicProperties {
        match self.decoded.into_inner() {
            Some(decoded) => *decoded,
            None => BasicProperties::decode(&self.raw).unwrap_or_default(),
        }
    }

    /// The few properties a broker reads per message, found in `raw` without decoding it.
    #[inline]
    #[must_use]
    pub fn view(&self) -> PropertiesView<'_> {
        PropertiesView::new(&self.raw)
    }

    /// Replaces the properties and re-encodes `raw` (dead-lettering, delivery counts).
    ///
    /// # Errors
    /// As [`ContentHeader::new`]; the header is unchanged on error.
    pub fn set_properties(&mut self, properties: BasicProperties) -> Result<(), WireError> {
        let mut raw = BytesMut::new();
        properties.encode(&mut raw)?;
        self.raw = raw.freeze();
        self.decoded = OnceLock::from(Box::new(properties));
        Ok(())
    }

    /// Size of the header frame's payload: 12 fixed octets plus `raw`.
    #[must_use]
    pub fn payload_len(&self) -> usize {
        HeaderRef::from(self).payload_len()
    }

    /// Appends the header frame's payload (class, weight 0, body size, `raw`) to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        HeaderRef::from(self).encode(dst);
    }

    /// Decodes the payload of a header frame on `channel`. `raw` becomes a slice of `payload`
    /// (no copy).
    ///
    /// # Errors
    /// A payload shorter than 12 octets, a non-zero weight, a class other than basic (in that
    /// order, as RabbitMQ's `rabbit_command_assembler` tells them apart: a header frame with
    /// another weight is no content header to it), or properties that do not decode.
    pub fn decode(channel: u16, payload: Bytes) -> Result<Self, WireError> {
        let (class_id, body_size) = ContentHeader::decode_fixed(channel, &payload)?;
        ContentHeader::from_raw(class_id, body_size, payload.slice(12..))
    }

    /// Decodes the 12 fixed octets of a header frame's payload: (class id, body size).
    ///
    /// # Errors
    /// As [`ContentHeader::decode`], the properties aside.
    pub(crate) fn decode_fixed(channel: u16, payload: &[u8]) -> Result<(u16, u64), WireError> {
        let mut r = Reader::new(payload);
        let class_id = r.u16("class-id")?;
        let weight = r.u16("weight")?;
        let body_size = r.u64("body-size")?;
        if weight != 0 {
            return Err(WireError::BadContentWeight { channel, weight });
        }
        if class_id != BASIC_CLASS_ID {
            return Err(WireError::BadContentClass { channel, class_id });
        }
        Ok((class_id, body_size))
    }
}

impl<'a> HeaderRef<'a> {
    /// The few properties a broker reads per message, found in `raw` without decoding it (as
    /// [`ContentHeader::view`]).
    #[inline]
    #[must_use]
    pub fn view(&self) -> PropertiesView<'a> {
        PropertiesView::new(self.raw)
    }
}

/// Equal when class, body size and encoding are: the properties are what `raw` decodes to.
impl PartialEq for ContentHeader {
    fn eq(&self, other: &Self) -> bool {
        (self.class_id, self.body_size, &self.raw) == (other.class_id, other.body_size, &other.raw)
    }
}

impl std::fmt::Debug for ContentHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContentHeader")
            .field("class_id", &self.class_id)
            .field("body_size", &self.body_size)
            .field("properties", self.properties())
            .field("raw", &self.raw)
            .finish()
    }
}

/// Encoded properties read in place: what a broker needs of every message (delivery mode,
/// priority, expiration, user id) without decoding the rest. Strings read as the decoder
/// would give them (invalid UTF-8 replaced). On octets that are not a valid encoding (never
/// the case for a decoded or built [`ContentHeader`]) properties read as absent.
#[derive(Clone, Copy, Debug, Default)]
pub struct PropertiesView<'a> {
    flags: u16,
    /// The property list, after the flag words.
    list: &'a [u8],
}

/// The flag bits that name properties.
const PROPERTY_BITS: u16 = !(RESERVED | CONTINUATION);

impl<'a> PropertiesView<'a> {
    /// The view of `raw`, without checking the property list.
    #[inline]
    fn new(raw: &'a [u8]) -> Self {
        Self::one_flag_word(raw)
            .or_else(|| Self::more_flag_words(raw))
            .unwrap_or_default()
    }

    /// The view of `raw` if it starts with a single flag word, the usual case.
    #[inline]
    fn one_flag_word(raw: &'a [u8]) -> Option<Self> {
        let (&[hi, lo], list) = raw.split_first_chunk::<2>()?;
        let flags = u16::from_be_bytes([hi, lo]);
        (flags & (RESERVED | CONTINUATION) == 0).then_some(PropertiesView { flags, list })
    }

    /// The view of `raw` whatever its flag words, `None` if they do not decode.
    #[cold]
    fn more_flag_words(raw: &'a [u8]) -> Option<Self> {
        let mut r = Reader::new(raw);
        let flags = read_flags(&mut r).ok()?;
        Some(PropertiesView {
            flags,
            list: raw.get(r.offset()..)?,
        })
    }

    /// The view of `raw` if it decodes: the checks of [`BasicProperties::decode`] except
    /// inside a headers table, of which only the length is read. `None` where decoding
    /// would fail (and, for a malformed table, where it might).
    fn check(raw: &'a [u8]) -> Option<Self> {
        let view = Self::one_flag_word(raw).or_else(|| Self::more_flag_words(raw))?;
        (view.skip(view.flags & PROPERTY_BITS)? == view.list.len()).then_some(view)
    }

    #[inline]
    fn has(&self, bit: u16) -> bool {
        self.flags & bit != 0
    }

    /// The offset in the list after the values of the properties in `bits` (which must be
    /// among those present); `None` if the list ends first.
    #[inline]
    fn skip(&self, mut bits: u16) -> Option<usize> {
        let list = self.list;
        let mut at = 0usize;
        while bits != 0 {
            let index = bits.leading_zeros() as usize;
            bits &= !(0x8000 >> index);
            at = match KINDS[index] {
                Kind::ShortStr => at + 1 + usize::from(*list.get(at)?),
                Kind::Octet => at + 1,
                Kind::Timestamp => at + 8,
                Kind::Table => {
                    let len = list.get(at..at + 4)?;
                    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]);
                    at + 4 + usize::try_from(len).ok()?
                }
            };
        }
        (at <= list.len()).then_some(at)
    }

    /// The octets of property `bit` (a shortstr's without its length octet), if present.
    #[inline]
    fn field(&self, bit: u16) -> Option<&'a [u8]> {
        // Most properties are absent: that answer costs no call.
        if !self.has(bit) {
            return None;
        }
        self.present_field(bit)
    }

    /// [`PropertiesView::field`] for a property whose flag is set.
    fn present_field(&self, bit: u16) -> Option<&'a [u8]> {
        // The properties before `bit` are the higher bits.
        let before = self.flags & PROPERTY_BITS & !(bit | (bit - 1));
        let at = self.skip(before)?;
        let list = self.list;
        match KINDS[bit.leading_zeros() as usize] {
            Kind::ShortStr => {
                let len = usize::from(*list.get(at)?);
                list.get(at + 1..at + 1 + len)
            }
            Kind::Octet => list.get(at..at + 1),
            Kind::Timestamp => list.get(at..at + 8),
            Kind::Table => list.get(at + 4..self.skip(before | bit)?),
        }
    }

    #[inline]
    fn text(&self, bit: u16) -> Option<Cow<'a, str>> {
        self.field(bit).map(String::from_utf8_lossy)
    }

    /// `delivery-mode`.
    #[inline]
    #[must_use]
    pub fn delivery_mode(&self) -> Option<u8> {
        self.field(DELIVERY_MODE).and_then(|v| v.first().copied())
    }

    /// Whether `delivery-mode` is 2 (persistent).
    #[inline]
    #[must_use]
    pub fn is_persistent(&self) -> bool {
        self.delivery_mode() == Some(2)
    }

    /// `priority`.
    #[inline]
    #[must_use]
    pub fn priority(&self) -> Option<u8> {
        self.field(PRIORITY).and_then(|v| v.first().copied())
    }

    /// `expiration`.
    #[inline]
    #[must_use]
    pub fn expiration(&self) -> Option<Cow<'a, str>> {
        self.text(EXPIRATION)
    }

    /// `user-id`.
    #[inline]
    #[must_use]
    pub fn user_id(&self) -> Option<Cow<'a, str>> {
        self.text(USER_ID)
    }

    /// `reply-to`, its octets as sent.
    #[inline]
    #[must_use]
    pub fn reply_to(&self) -> Option<&'a [u8]> {
        self.field(REPLY_TO)
    }
}

/// How a property is encoded.
#[derive(Clone, Copy)]
enum Kind {
    ShortStr,
    Table,
    Octet,
    Timestamp,
}

/// The encoding of each property, by flag bit from the highest (content-type, bit 15) down
/// to cluster-id (bit 2).
const KINDS: [Kind; 14] = [
    Kind::ShortStr,  // content-type
    Kind::ShortStr,  // content-encoding
    Kind::Table,     // headers
    Kind::Octet,     // delivery-mode
    Kind::Octet,     // priority
    Kind::ShortStr,  // correlation-id
    Kind::ShortStr,  // reply-to
    Kind::ShortStr,  // expiration
    Kind::ShortStr,  // message-id
    Kind::Timestamp, // timestamp
    Kind::ShortStr,  // type
    Kind::ShortStr,  // user-id
    Kind::ShortStr,  // app-id
    Kind::ShortStr,  // cluster-id
];
