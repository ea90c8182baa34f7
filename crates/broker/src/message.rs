//! The message as the broker holds it.
//!
//! A queued message is one `Arc<Message>`: a few scalars and the exchange name, routing key,
//! encoded properties and, unless it is over [`SHARED_BODY_MIN`], the body, back to back (in the
//! `Arc` itself when they fit, else in one buffer beside it). The server decodes the properties once; the
//! message keeps only what the broker reads for every message (delivery mode, priority,
//! expiration, packed in one word) and decodes the rest (headers for dead-lettering, groups,
//! deduplication, headers and consistent-hash routing; the management API) on demand from the
//! encoded bytes, which a delivery re-sends as they are.
//!
//! Its size is what a backlog costs: a million queued messages are a million `Arc<Message>`
//! allocations. `Message` is 88 octets so that its `Arc` takes a 112-octet malloc chunk (see
//! [`INLINE_DATA`]); a test holds it there.

use std::borrow::Borrow;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use lockgate_wire::{
    BasicProperties, ContentHeader, FieldTable, FieldValue, HeaderRef, PropertiesView, WireError,
    BASIC_CLASS_ID,
};

use crate::memory::MemoryMonitor;

/// Bodies shorter than this are copied into the message's own buffer; longer ones stay the
/// `Bytes` they arrived as, shared, never copied.
///
/// A body read off a connection is a slice of the chunk the connection read it into (64 KiB
/// while it is busy), and any slice keeps its whole chunk allocated, while the memory monitor
/// is charged [`Message::size`]. When the other messages of a chunk leave at once (delivered,
/// dropped as unroutable) and one stays queued (a backlog, a fan-out to a slow service), that
/// one message holds the chunk: with 1 KiB bodies a backlog took 64 times the memory it was
/// charged, and the memory alarm never fired. Copying bodies up to a quarter of a chunk bounds
/// what a queued body keeps alive to four times its charge. The copy goes into the buffer the
/// message allocates anyway for its names and properties, so it costs a `memcpy` and saves the
/// boxed `Bytes` and reference count of a shared body; and the read chunk, no longer shared
/// once its frames are handled, is read into again rather than replaced by a new allocation.
const SHARED_BODY_MIN: usize = 16 * 1024;

/// The largest per-message TTL RabbitMQ 3.10 accepts (rabbit_misc:check_expiry), in
/// milliseconds: ten years, the bound of `x-message-ttl` and `x-expires` too.
const MAX_EXPIRATION: u64 = 315_360_000_000;

/// Reads an `expiration` property as RabbitMQ does (rabbit_basic:parse_expiration): an
/// integer with an optional sign and nothing after it, from 0 to ten years in milliseconds.
///
/// # Errors
/// What RabbitMQ's channel puts in its 406 reply text after "invalid expiration '...': ":
/// `no_integer`, `{leftover_string,"..."}`, `{value_negative,N}` or `{value_too_large,N}`.
pub fn parse_expiration(expiration: &str) -> Result<u64, String> {
    let unsigned = expiration.strip_prefix(['+', '-']).unwrap_or(expiration);
    let digits = unsigned.len()
        - unsigned
            .trim_start_matches(|c: char| c.is_ascii_digit())
            .len();
    if digits == 0 {
        return Err("no_integer".to_owned());
    }
    let (number, rest) = unsigned.split_at(digits);
    if !rest.is_empty() {
        return Err(format!("{{leftover_string,{rest:?}}}"));
    }
    let sign = &expiration[..expiration.len() - unsigned.len()];
    let zero = number.bytes().all(|b| b == b'0');
    let shown = number.trim_start_matches('0');
    let shown = if zero { "0" } else { shown };
    if sign == "-" && !zero {
        return Err(format!("{{value_negative,-{shown}}}"));
    }
    match number.parse::<u64>() {
        Ok(ms) if ms <= MAX_EXPIRATION => Ok(ms),
        _ => Err(format!("{{value_too_large,{shown}}}")),
    }
}

/// The origin of `Message::received`: arrival times are kept as nanoseconds after it, which
/// takes half the room of an `Instant`.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// A published message. Routed to N queues it is one `Arc<Message>`: queues, unacked lists
/// and deliveries share it, and a large body is never copied.
///
/// Queue code only asks for [`Message::size`], never for the body, so a store can keep the
/// body on disk.
pub struct Message {
    /// Exchange name, routing key, encoded properties and the body.
    data: Storage,
    /// The memory accounting [`Message::size`] is charged to once the broker accepts the
    /// message; released when the message drops.
    charge: Option<Arc<MemoryMonitor>>,
    /// When it was assembled (nanoseconds after [`epoch`]), for TTL and the management API's
    /// oldest-message age.
    received: u64,
    /// The `expiration`, `priority` and delivery-mode properties, in one word.
    traits: Traits,
    /// How many times this copy was returned to its queue (nack or reject with requeue,
    /// consumer timeout, channel closed): the `x-delivery-count` it carries. A returned
    /// message is its queue's own copy, so the count is per queue.
    returns: u32,
    /// Where the routing key, the properties and an inline body start in `data`. Offsets fit
    /// in 32 bits: names are shortstrs, and encoded properties arrive in one frame.
    routing_key_at: u32,
    properties_at: u32,
    body_at: u32,
}

/// Octets a message keeps in its own `Arc` allocation. Small messages (a queue name, the
/// delivery mode, a body of a few words) fit, which saves an allocation and a free per
/// message; the rest go to one buffer beside it. With it `Message` is 88 octets, so that its
/// `Arc` (104 octets) fills a 112-octet malloc chunk (glibc's chunk for a request of n octets
/// is n + 8 rounded up to 16); one octet more anywhere in `Message` and it takes a 128-octet
/// chunk. The trade: 16 more inline octets (62, a 128-octet chunk) would keep messages of
/// 47 to 62 octets in one allocation, but every message, and most are larger than that,
/// would pay 16 octets more.
const INLINE_DATA: usize = 46;

/// The bytes of a message: in place when they fit, else on the heap; a body of
/// [`SHARED_BODY_MIN`] octets or more stays the `Bytes` it arrived in (shared with the buffer
/// it was read into), after the rest on the heap (boxed: head and `Bytes` side by side, 48
/// octets, would not fit in the inline variant's 47 and would make every `Storage` 8 octets
/// larger).
#[derive(Clone)]
enum Storage {
    Inline { len: u8, bytes: [u8; INLINE_DATA] },
    Heap(Box<[u8]>),
    Shared { head: Box<[u8]>, body: Box<Bytes> },
}

impl Storage {
    /// The concatenation of `parts`.
    fn new<const N: usize>(parts: [&[u8]; N]) -> Self {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if total <= INLINE_DATA {
            let mut bytes = [0u8; INLINE_DATA];
            let mut at = 0;
            for part in parts {
                bytes[at..at + part.len()].copy_from_slice(part);
                at += part.len();
            }
            Self::Inline {
                len: total as u8,
                bytes,
            }
        } else {
            Self::Heap(parts.concat().into_boxed_slice())
        }
    }

    /// Everything before the body, and the body when it is stored with the rest.
    fn as_slice(&self) -> &[u8] {
        match self {
            Self::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Self::Heap(bytes) => bytes,
            Self::Shared { head, .. } => head,
        }
    }

    /// The shared body, if the body is one.
    fn shared_body(&self) -> Option<&Bytes> {
        match self {
            Self::Shared { body, .. } => Some(body),
            _ => None,
        }
    }
}

/// `Traits::expiration` when the message has none: above [`MAX_EXPIRATION`], within
/// [`Traits::EXPIRATION_BITS`].
const NO_EXPIRATION: u64 = (1 << Traits::EXPIRATION_BITS) - 1;

/// The `expiration` property in milliseconds (at most [`MAX_EXPIRATION`], 39 bits) in the low
/// 40 bits, the `priority` property in the next 8 and delivery mode 2 in the one after: the
/// room of one `u64` where three fields took two words.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Traits(u64);

impl Traits {
    const EXPIRATION_BITS: u32 = 40;
    const PRIORITY_AT: u32 = Self::EXPIRATION_BITS;
    const PERSISTENT_AT: u32 = Self::PRIORITY_AT + 8;

    /// `expiration` is [`NO_EXPIRATION`] or at most [`MAX_EXPIRATION`].
    fn new(expiration: u64, priority: u8, persistent: bool) -> Self {
        debug_assert!(expiration == NO_EXPIRATION || expiration <= MAX_EXPIRATION);
        Self(
            (expiration & NO_EXPIRATION)
                | (u64::from(priority) << Self::PRIORITY_AT)
                | (u64::from(persistent) << Self::PERSISTENT_AT),
        )
    }

    /// The per-message TTL in milliseconds, if it has one.
    fn expiration(self) -> Option<u64> {
        let ms = self.0 & NO_EXPIRATION;
        (ms != NO_EXPIRATION).then_some(ms)
    }

    fn priority(self) -> u8 {
        (self.0 >> Self::PRIORITY_AT) as u8
    }

    fn persistent(self) -> bool {
        (self.0 >> Self::PERSISTENT_AT) & 1 == 1
    }
}

impl Traits {
    /// The traits of properties still encoded.
    fn of_view(view: &PropertiesView<'_>) -> Self {
        Self::new(
            view.expiration()
                .and_then(|e| parse_expiration(&e).ok())
                .unwrap_or(NO_EXPIRATION),
            view.priority().unwrap_or(0),
            view.is_persistent(),
        )
    }

    fn of(properties: &BasicProperties) -> Self {
        Self::new(
            properties
                .expiration
                .as_deref()
                .and_then(|e| parse_expiration(e).ok())
                .unwrap_or(NO_EXPIRATION),
            properties.priority.unwrap_or(0),
            properties.is_persistent(),
        )
    }
}

impl Message {
    /// A message as the server assembled it from `basic.publish`, header and body frames.
    /// The header is only read (pass it as it is, owned or borrowed): its properties are
    /// kept encoded, and the few the broker needs read from them without decoding the rest.
    pub fn new(
        exchange: String,
        routing_key: String,
        header: impl Borrow<ContentHeader>,
        body: Bytes,
    ) -> Self {
        Self::from_parts(&exchange, &routing_key, header.borrow(), body)
    }

    /// [`Message::new`] from borrowed parts (copied into the message): what the server calls
    /// with the parts of the publish it assembled, where they are.
    pub fn from_parts(
        exchange: &str,
        routing_key: &str,
        header: &ContentHeader,
        body: Bytes,
    ) -> Self {
        Self::from_parts_at(exchange, routing_key, header, body, Instant::now())
    }

    /// [`Message::from_parts`] for a message that arrived at `received_at`, where its TTL
    /// starts: a connection that takes many publishes from one read can read the clock once
    /// for all of them, when the read returned. The header may be a [`ContentHeader`]
    /// (`&header`) or a [`HeaderRef`] to properties still in the read buffer.
    pub fn from_parts_at<'h>(
        exchange: &str,
        routing_key: &str,
        header: impl Into<HeaderRef<'h>>,
        body: Bytes,
        received_at: Instant,
    ) -> Self {
        let header = header.into();
        let traits = Traits::of_view(&header.view());
        Self::assemble(
            exchange,
            routing_key,
            header.raw,
            &body,
            Some(&body),
            traits,
            received_at,
        )
    }

    /// Lays the parts out in one buffer. `shared` is the body as `Bytes` when there is one
    /// to share (else a large body is copied once).
    fn assemble(
        exchange: &str,
        routing_key: &str,
        raw: &[u8],
        body: &[u8],
        shared: Option<&Bytes>,
        traits: Traits,
        received_at: Instant,
    ) -> Self {
        let (exchange, routing_key) = (exchange.as_bytes(), routing_key.as_bytes());
        let routing_key_at = exchange.len() as u32;
        let properties_at = routing_key_at + routing_key.len() as u32;
        let body_at = properties_at + raw.len() as u32;
        let data = if body.len() < SHARED_BODY_MIN {
            Storage::new([exchange, routing_key, raw, body])
        } else {
            Storage::Shared {
                head: [exchange, routing_key, raw].concat().into_boxed_slice(),
                body: Box::new(shared.map_or_else(|| Bytes::copy_from_slice(body), Bytes::clone)),
            }
        };
        Self {
            data,
            charge: None,
            received: nanos_since_epoch(received_at),
            traits,
            returns: 0,
            routing_key_at,
            properties_at,
            body_at,
        }
    }

    /// A copy published anew to `exchange` with `routing_key` and other properties (the
    /// properties are encoded; a large body is shared): it arrives now, was never
    /// returned, and is charged to `memory`. `None` when the properties do not encode (a
    /// header table over 4 GiB), which cannot happen for a header that arrived on the wire
    /// plus a few broker fields.
    pub(crate) fn republished(
        &self,
        exchange: &str,
        routing_key: &str,
        properties: &BasicProperties,
        memory: &Arc<MemoryMonitor>,
    ) -> Option<Self> {
        let mut copy = self
            .rebuilt(exchange, routing_key, properties, Instant::now())
            .ok()?;
        copy.charge_to(memory);
        Some(copy)
    }

    /// The copy a queue puts back after its `returns`-th return: `x-delivery-count` set in
    /// its headers (only redeliveries pay for re-encoding the header), keeping its arrival
    /// time, charged to `memory`.
    pub(crate) fn returned(&self, returns: u32, memory: &Arc<MemoryMonitor>) -> Option<Self> {
        let mut properties = self.properties();
        properties
            .headers
            .get_or_insert_with(FieldTable::default)
            .insert(
                "x-delivery-count".to_owned(),
                FieldValue::I64(i64::from(returns)),
            );
        let mut message = self
            .rebuilt(
                self.exchange(),
                self.routing_key(),
                &properties,
                self.received_at(),
            )
            .ok()?;
        message.returns = returns;
        message.charge_to(memory);
        Some(message)
    }

    /// Replaces the properties (re-encoded), keeping everything else; the memory charge
    /// follows the new size.
    ///
    /// # Errors
    /// The properties do not encode; the message is unchanged.
    pub(crate) fn set_properties(&mut self, properties: &BasicProperties) -> Result<(), WireError> {
        let mut copy = self.rebuilt(
            self.exchange(),
            self.routing_key(),
            properties,
            self.received_at(),
        )?;
        copy.returns = self.returns;
        if let Some(memory) = self.charge.take() {
            memory.release(self.size());
            copy.charge_to(&memory);
        }
        *self = copy;
        Ok(())
    }

    /// A new uncharged message with these names and properties and this message's body.
    fn rebuilt(
        &self,
        exchange: &str,
        routing_key: &str,
        properties: &BasicProperties,
        received_at: Instant,
    ) -> Result<Self, WireError> {
        let mut raw = BytesMut::new();
        properties.encode(&mut raw)?;
        Ok(Self::assemble(
            exchange,
            routing_key,
            &raw,
            self.body(),
            self.data.shared_body(),
            Traits::of(properties),
            received_at,
        ))
    }

    /// The exchange it was published to.
    pub fn exchange(&self) -> &str {
        self.text(0, self.routing_key_at)
    }

    /// The routing key it was published with.
    pub fn routing_key(&self) -> &str {
        self.text(self.routing_key_at, self.properties_at)
    }

    /// [`Message::exchange`] as bytes, without the UTF-8 check [`Message::exchange`] pays
    /// (what a writer copies into `basic.deliver`).
    pub fn exchange_bytes(&self) -> &[u8] {
        &self.data.as_slice()[..self.routing_key_at as usize]
    }

    /// [`Message::routing_key`] as bytes, without the UTF-8 check (a queue lookup by name,
    /// `basic.deliver`).
    pub fn routing_key_bytes(&self) -> &[u8] {
        &self.data.as_slice()[self.routing_key_at as usize..self.properties_at as usize]
    }

    /// The names were copied in from `&str`s, so they are UTF-8; the empty string answers
    /// should that ever not hold.
    fn text(&self, from: u32, to: u32) -> &str {
        if from == to {
            // The default exchange: no UTF-8 check to call.
            return "";
        }
        std::str::from_utf8(&self.data.as_slice()[from as usize..to as usize]).unwrap_or_default()
    }

    /// The encoded property flags and property list, as received (or as the broker last
    /// re-encoded them).
    pub fn header_raw(&self) -> &[u8] {
        &self.data.as_slice()[self.properties_at as usize..self.body_at as usize]
    }

    /// The content header to write in front of the body: class, body size and
    /// [`Message::header_raw`].
    pub fn header_ref(&self) -> HeaderRef<'_> {
        HeaderRef {
            class_id: BASIC_CLASS_ID,
            body_size: self.body().len() as u64,
            raw: self.header_raw(),
        }
    }

    /// The properties, decoded from [`Message::header_raw`] on each call (the broker's hot
    /// path reads only what [`Message::is_persistent`], [`Message::priority`] and the TTL
    /// need, which are kept apart). The bytes decoded once before they got here, so this
    /// cannot fail; should it, the answer is no properties.
    pub fn properties(&self) -> BasicProperties {
        BasicProperties::decode(self.header_raw()).unwrap_or_default()
    }

    /// The application headers (the `headers` property), decoded on demand.
    pub fn headers(&self) -> Option<FieldTable> {
        self.properties().headers
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        match self.data.shared_body() {
            Some(body) => body,
            None => &self.data.as_slice()[self.body_at as usize..],
        }
    }

    /// The body as `Bytes`: shared when it is large, a copy of a small one.
    pub fn body_bytes(&self) -> Bytes {
        match self.data.shared_body() {
            Some(body) => Bytes::clone(body),
            None => Bytes::copy_from_slice(self.body()),
        }
    }

    /// The `priority` property, 0 when absent.
    pub fn priority(&self) -> u8 {
        self.traits.priority()
    }

    /// When the message arrived (its TTL counts from then).
    pub fn received_at(&self) -> Instant {
        epoch() + Duration::from_nanos(self.received)
    }

    /// Moves the arrival time (a message read back from disk keeps the TTL clock it had).
    pub(crate) fn set_received_at(&mut self, at: Instant) {
        self.received = nanos_since_epoch(at);
    }

    /// How many times this copy was returned to its queue.
    pub(crate) fn returns(&self) -> u32 {
        self.returns
    }

    /// When this message expires in a queue whose `x-message-ttl` is `queue_ttl`: the
    /// earlier of the two TTLs, counted from its arrival (`None` when neither applies or
    /// the deadline is beyond what the clock represents).
    pub(crate) fn expires_at(&self, queue_ttl: Option<u64>) -> Option<Instant> {
        let own = self.traits.expiration();
        let ttl = match (queue_ttl, own) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        self.received_at().checked_add(Duration::from_millis(ttl))
    }

    /// Bytes counted against the memory watermark: body plus encoded properties.
    pub fn size(&self) -> u64 {
        self.body().len() as u64 + u64::from(self.body_at - self.properties_at)
    }

    /// True when the publisher asked for persistence (delivery-mode 2).
    pub fn is_persistent(&self) -> bool {
        self.traits.persistent()
    }

    /// Charges [`Message::size`] to `memory`, released when the message drops. A message is
    /// charged once, when the broker accepts it.
    pub(crate) fn charge_to(&mut self, memory: &Arc<MemoryMonitor>) {
        memory.add(self.size());
        if let Some(previous) = self.charge.replace(Arc::clone(memory)) {
            previous.release(self.size());
        }
    }
}

fn nanos_since_epoch(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(epoch()).as_nanos()).unwrap_or(u64::MAX)
}

impl Drop for Message {
    fn drop(&mut self) {
        if let Some(memory) = self.charge.take() {
            memory.release(self.size());
        }
    }
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("exchange", &self.exchange())
            .field("routing_key", &self.routing_key())
            .field("size", &self.size())
            .field("persistent", &self.is_persistent())
            .field("returns", &self.returns)
            .finish_non_exhaustive()
    }
}

/// A copy sharing a large body, arriving now; it is not charged to the memory accounting
/// until it is published.
impl Clone for Message {
    fn clone(&self) -> Self {
        Self {
            data: self.data.clone(),
            charge: None,
            received: nanos_since_epoch(Instant::now()),
            traits: self.traits,
            returns: 0,
            routing_key_at: self.routing_key_at,
            properties_at: self.properties_at,
            body_at: self.body_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(properties: BasicProperties, body: &[u8]) -> ContentHeader {
        ContentHeader::new(BASIC_CLASS_ID, body.len() as u64, properties).unwrap()
    }

    #[test]
    fn a_message_from_parts_at_an_instant_has_its_ttl_from_there() {
        let properties = BasicProperties {
            expiration: Some("1500".into()),
            ..BasicProperties::default()
        };
        let h = header(properties.clone(), b"body");
        // The first message fixes the clock's origin, which arrival times are counted from.
        drop(Message::from_parts("", "q", &h, Bytes::new()));
        let at = Instant::now();
        std::thread::sleep(Duration::from_millis(2));
        let raw = HeaderRef {
            class_id: BASIC_CLASS_ID,
            body_size: 4,
            raw: &h.raw,
        };
        let m = Message::from_parts_at("x", "q", raw, Bytes::from_static(b"body"), at);
        assert_eq!(m.received_at(), at);
        assert_eq!(m.expires_at(None), Some(at + Duration::from_millis(1500)));
        assert_eq!(
            (m.exchange(), m.routing_key(), m.body()),
            ("x", "q", &b"body"[..])
        );
        assert_eq!(m.properties(), properties);
    }

    #[test]
    fn expirations_are_read_as_rabbitmq_reads_them() {
        for (text, read) in [
            ("0", Ok(0)),
            ("1500", Ok(1500)),
            ("+5", Ok(5)),
            ("-0", Ok(0)),
            ("007", Ok(7)),
            ("4294967295", Ok(4_294_967_295)),
            ("", Err("no_integer")),
            ("abc", Err("no_integer")),
            (" 5", Err("no_integer")),
            ("-", Err("no_integer")),
            ("5x", Err("{leftover_string,\"x\"}")),
            ("5 ", Err("{leftover_string,\" \"}")),
            ("1.5", Err("{leftover_string,\".5\"}")),
            ("-1", Err("{value_negative,-1}")),
            ("-007", Err("{value_negative,-7}")),
            ("4294967296", Ok(4_294_967_296)),
            ("315360000000", Ok(315_360_000_000)),
            ("315360000001", Err("{value_too_large,315360000001}")),
            (
                "99999999999999999999999",
                Err("{value_too_large,99999999999999999999999}"),
            ),
        ] {
            assert_eq!(
                parse_expiration(text),
                read.map_err(str::to_owned),
                "{text:?}"
            );
        }
    }

    #[test]
    fn a_queued_message_is_small() {
        // 88 + the `Arc`'s two counts = 104: a 112-octet glibc chunk (n + 8 rounded up to
        // 16). At 89 the chunk is 128.
        assert_eq!(std::mem::size_of::<Message>(), 88);
    }

    #[test]
    fn the_packed_traits_read_back_at_their_limits() {
        for expiration in [0, 1, 4_294_967_296, MAX_EXPIRATION, NO_EXPIRATION] {
            for priority in [0, 1, 9, 128, 255] {
                for persistent in [false, true] {
                    let traits = Traits::new(expiration, priority, persistent);
                    let ttl = (expiration != NO_EXPIRATION).then_some(expiration);
                    assert_eq!(
                        (traits.expiration(), traits.priority(), traits.persistent()),
                        (ttl, priority, persistent),
                        "{expiration} {priority} {persistent}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_message_keeps_its_expiration_priority_and_delivery_mode() {
        for (expiration, ttl) in [
            (None, None),
            (Some("0"), Some(0)),
            (Some("315360000000"), Some(MAX_EXPIRATION)),
            // Refused by the channel; were it queued, it would have no TTL.
            (Some("315360000001"), None),
            (Some("-1"), None),
        ] {
            for (priority, mode) in [(None, None), (Some(255), Some(2)), (Some(7), Some(1))] {
                let properties = BasicProperties {
                    expiration: expiration.map(Into::into),
                    priority,
                    delivery_mode: mode,
                    ..BasicProperties::default()
                };
                let h = header(properties.clone(), b"b");
                let from_wire = Message::new(String::new(), "q".into(), h, Bytes::new());
                let memory = MemoryMonitor::new(0);
                let mut rebuilt = from_wire.returned(1, &memory).unwrap();
                rebuilt.set_properties(&properties).unwrap();
                for m in [&from_wire, &rebuilt, &from_wire.clone()] {
                    assert_eq!(m.priority(), priority.unwrap_or(0));
                    assert_eq!(m.is_persistent(), mode == Some(2));
                    let own = m.expires_at(None).map(|at| at - m.received_at());
                    assert_eq!(own, ttl.map(Duration::from_millis), "{expiration:?}");
                    let queue = m.expires_at(Some(5)).map(|at| at - m.received_at());
                    let shorter = ttl.map_or(5, |ttl| ttl.min(5));
                    assert_eq!(queue, Some(Duration::from_millis(shorter)));
                }
            }
        }
    }

    #[test]
    fn parts_read_back_for_small_and_large_bodies() {
        let properties = BasicProperties {
            delivery_mode: Some(2),
            priority: Some(3),
            expiration: Some("60000".into()),
            message_id: Some("m1".into()),
            ..BasicProperties::default()
        };
        for len in [
            0,
            16,
            INLINE_DATA,
            1024,
            SHARED_BODY_MIN - 1,
            SHARED_BODY_MIN,
            64 * 1024,
        ] {
            let body = Bytes::from(vec![7u8; len]);
            let h = header(properties.clone(), &body);
            let m = Message::new("amq.direct".into(), "rk".into(), h.clone(), body.clone());
            assert_eq!(m.exchange(), "amq.direct");
            assert_eq!(m.routing_key(), "rk");
            assert_eq!(m.exchange_bytes(), b"amq.direct");
            assert_eq!(m.routing_key_bytes(), b"rk");
            assert_eq!(m.header_raw(), &h.raw[..]);
            assert_eq!(m.properties(), properties);
            assert_eq!(m.body(), &body[..]);
            assert_eq!(m.body_bytes(), body);
            assert_eq!(m.size(), len as u64 + h.raw.len() as u64);
            assert!(m.is_persistent());
            assert_eq!(m.priority(), 3);
            let ttl = m.expires_at(None).unwrap() - m.received_at();
            assert_eq!(ttl, Duration::from_secs(60));
            let r = m.header_ref();
            assert_eq!((r.class_id, r.body_size), (BASIC_CLASS_ID, len as u64));
        }
    }

    #[test]
    fn a_large_body_is_shared_not_copied() {
        let body = Bytes::from(vec![1u8; SHARED_BODY_MIN]);
        let m = Message::new(
            String::new(),
            "q".into(),
            header(BasicProperties::default(), &body),
            body.clone(),
        );
        assert_eq!(m.body().as_ptr(), body.as_ptr());
        assert_eq!(m.body_bytes().as_ptr(), body.as_ptr());
    }

    #[test]
    fn a_body_under_the_shared_minimum_leaves_its_read_chunk_free() {
        // A connection's read chunk, and a body split off it as the codec does.
        const CHUNK: usize = 64 * 1024;
        for (len, shared) in [
            (257, false),
            (1024, false),
            (SHARED_BODY_MIN - 1, false),
            (SHARED_BODY_MIN, true),
        ] {
            let mut chunk = BytesMut::zeroed(CHUNK);
            chunk[..len].fill(9);
            let body = chunk.split_to(len).freeze();
            let h = header(BasicProperties::default(), &body);
            let m = Message::new(String::new(), "q".into(), h, body);
            // While the message is queued, the connection can read into the whole chunk
            // again, unless the message still holds a slice of it.
            chunk.clear();
            assert_eq!(chunk.try_reclaim(CHUNK), !shared, "body of {len} octets");
            assert_eq!(m.body(), &vec![9; len][..]);
        }
    }

    #[test]
    fn charge_follows_the_message_through_a_property_change() {
        let memory = MemoryMonitor::new(0);
        let mut m = Message::new(
            String::new(),
            "q".into(),
            header(BasicProperties::default(), b"abc"),
            Bytes::from_static(b"abc"),
        );
        m.charge_to(&memory);
        assert_eq!(memory.used(), m.size());
        let mut headers = FieldTable::default();
        headers.insert("x-delay", FieldValue::I64(-5));
        let properties = BasicProperties {
            headers: Some(headers.clone()),
            ..BasicProperties::default()
        };
        m.set_properties(&properties).unwrap();
        assert_eq!(m.headers(), Some(headers));
        assert_eq!(memory.used(), m.size());
        let returned = m.returned(2, &memory).unwrap();
        assert_eq!(returned.returns(), 2);
        assert_eq!(returned.received_at(), m.received_at());
        assert_eq!(memory.used(), m.size() + returned.size());
        drop(m);
        drop(returned);
        assert_eq!(memory.used(), 0);
    }

    #[test]
    fn every_length_around_the_copy_limits_reads_back() {
        let properties = BasicProperties {
            priority: Some(4),
            expiration: Some("10".into()),
            ..BasicProperties::default()
        };
        for exchange in [String::new(), "x".repeat(255)] {
            for routing_key in [String::new(), "r".into(), "r".repeat(255)] {
                let lengths =
                    (0..=INLINE_DATA + 44).chain(SHARED_BODY_MIN - 44..=SHARED_BODY_MIN + 44);
                for len in lengths {
                    let body: Bytes = (0..len).map(|i| (i * 31 + 7) as u8).collect();
                    let h = header(properties.clone(), &body);
                    let m = Message::new(
                        exchange.clone(),
                        routing_key.clone(),
                        h.clone(),
                        body.clone(),
                    );
                    assert_eq!(m.exchange(), exchange);
                    assert_eq!(m.routing_key(), routing_key);
                    assert_eq!(m.header_raw(), &h.raw[..]);
                    assert_eq!(m.body(), &body[..]);
                    assert_eq!(m.properties(), properties);
                    assert_eq!(m.clone().body(), &body[..]);
                    let memory = MemoryMonitor::new(0);
                    let returned = m.returned(3, &memory).unwrap();
                    assert_eq!(returned.body(), &body[..]);
                    assert_eq!(returned.exchange(), exchange);
                    assert_eq!(returned.routing_key(), routing_key);
                    assert_eq!(memory.used(), returned.size());
                    drop(returned);
                    assert_eq!(memory.used(), 0, "body {len}, key {}", routing_key.len());
                }
            }
        }
    }
}
