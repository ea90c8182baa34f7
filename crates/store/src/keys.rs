//! Key and value encodings. Integers are big-endian so that byte order is numeric order and
//! a range scan over `queue id + seq` returns a queue's messages in sequence order.

use bytes::Bytes;

use crate::ids::{MessageId, QueueId};

/// `D` + kind + broker key: a definition.
pub(crate) const DEFINITION: u8 = b'D';
/// `I`: the next queue id to hand out (u64).
pub(crate) const NEXT_QUEUE_ID: &[u8] = b"I";
/// `S`: number of the latest committed batch (u64), checked against the version file.
pub(crate) const COMMIT_SEQ: &[u8] = b"S";
/// `N`: one past the highest message id ever written (u64), so ids are never reused.
pub(crate) const NEXT_MESSAGE_ID: &[u8] = b"N";
/// `M` + message id: a persistent message record.
pub(crate) const MESSAGE: u8 = b'M';
/// `Q` + queue id + seq: a queue index entry. Its value is the u64 message id, followed by
/// the record's first part when the queue is the message's only holder (see [`decode_index`]).
pub(crate) const INDEX: u8 = b'Q';
/// `P` + message id + u32 part: part 1, 2, ... of a message record longer than
/// [`RECORD_PART`] (the `M` value holds its first part). Format 2; format 1 stores have none.
pub(crate) const PART: u8 = b'P';
/// `R` + message id: reference count of a message held by more than one queue.
pub(crate) const REFS: u8 = b'R';
/// `C` + queue id: number of index entries of the queue (u64), kept with every batch so
/// that startup need not count them.
pub(crate) const COUNT: u8 = b'C';
/// `W` + queue id: the highest sequence number delivered from the queue (watermark).
pub(crate) const DELIVERED: u8 = b'W';

/// Meta tree: the on-disk format version (u32).
pub(crate) const META_FORMAT: &[u8] = b"format";
/// Meta tree: 1 after a clean close, 0 while open.
pub(crate) const META_CLEAN: &[u8] = b"clean";
/// Meta tree: message ids below this value (u64) were written by format 1 or 2, which kept
/// every record under `M`, also that of a message held by one queue. Written when such a
/// store is upgraded; absent in a store created by format 3.
pub(crate) const META_LEGACY_BELOW: &[u8] = b"legacy-below";

pub(crate) fn definition(kind: u8, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + key.len());
    k.push(DEFINITION);
    k.push(kind);
    k.extend_from_slice(key);
    k
}

pub(crate) fn message(id: MessageId) -> [u8; 9] {
    prefixed(MESSAGE, id.0)
}

/// Key of continuation part `part` (≥ 1) of message `id`.
pub(crate) fn part(id: MessageId, part: u32) -> [u8; 13] {
    let mut k = [0u8; 13];
    k[..9].copy_from_slice(&prefixed(PART, id.0));
    k[9..].copy_from_slice(&part.to_be_bytes());
    k
}

pub(crate) fn refs(id: MessageId) -> [u8; 9] {
    prefixed(REFS, id.0)
}

pub(crate) fn count(queue: QueueId) -> [u8; 9] {
    prefixed(COUNT, queue.0)
}

pub(crate) fn delivered(queue: QueueId) -> [u8; 9] {
    prefixed(DELIVERED, queue.0)
}

pub(crate) fn index(queue: QueueId, seq: u64) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = INDEX;
    k[1..9].copy_from_slice(&queue.0.to_be_bytes());
    k[9..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// Spill tree key: queue id + seq.
pub(crate) fn spill(queue: QueueId, seq: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&queue.0.to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// Bytes of a spilled or persistent message record per sled value: a longer record is split into parts, the first
/// under [`spill`]'s (or [`message`]'s) key and part `n` under [`spill_part`]'s (or [`part`]'s). sled 0.34 writes a tree node
/// bigger than an eighth of a segment as a separate blob and then counts it in its cache
/// by the size of the pointer, so nodes of large values stayed in memory for good; parts
/// of this size keep every node (up to 17 entries) under that threshold.
pub(crate) const RECORD_PART: usize = 4096;

/// Key of part `part` (≥ 1) of a spilled record: sorts right after the record's first part
/// and before the next seq, so ranges over [`spill`] keys cover whole records.
pub(crate) fn spill_part(queue: QueueId, seq: u64, part: u32) -> [u8; 20] {
    let mut k = [0u8; 20];
    k[..16].copy_from_slice(&spill(queue, seq));
    k[16..].copy_from_slice(&part.to_be_bytes());
    k
}

/// Whether a spill key is a record's first part (one per spilled message).
pub(crate) fn is_spill_head(key: &[u8]) -> bool {
    key.len() == 16
}

fn prefixed(prefix: u8, n: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = prefix;
    k[1..].copy_from_slice(&n.to_be_bytes());
    k
}

/// Reads a big-endian u64 at `at`, `None` when the slice is too short.
pub(crate) fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    let raw: [u8; 8] = bytes.get(at..at + 8)?.try_into().ok()?;
    Some(u64::from_be_bytes(raw))
}

/// A message record: `header length (u32) + header + body`.
pub(crate) fn encode_record(header: &[u8], body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + header.len() + body.len());
    encode_record_into(&mut v, header, body);
    v
}

/// Appends a message record (see [`encode_record`]) to `dst`.
pub(crate) fn encode_record_into(dst: &mut Vec<u8>, header: &[u8], body: &[u8]) {
    dst.reserve(4 + header.len() + body.len());
    dst.extend_from_slice(&(header.len() as u32).to_be_bytes());
    dst.extend_from_slice(header);
    dst.extend_from_slice(body);
}

/// An index entry's value, decoded.
pub(crate) struct IndexValue<'a> {
    /// The message.
    pub(crate) message: MessageId,
    /// The record's first part (up to [`RECORD_PART`] - 8 bytes, the rest under [`part`]
    /// keys) when the entry holds the record itself: the queue is the message's only
    /// holder. `None`: the record is under [`message`] (held by several queues, or written
    /// by format 1 or 2).
    pub(crate) inline: Option<&'a [u8]>,
}

/// Decodes an index entry's value: 8 bytes of message id, then the record's first part if
/// the entry holds it (a record is at least 4 bytes, so the two layouts never collide).
pub(crate) fn decode_index(value: &[u8]) -> Option<IndexValue<'_>> {
    let message = MessageId(u64_at(value, 0)?);
    let inline = (value.len() > 8).then(|| &value[8..]);
    Some(IndexValue { message, inline })
}

/// Splits a record into header and body without copying; `None` when malformed.
pub(crate) fn decode_record(record: Bytes) -> Option<(Bytes, Bytes)> {
    let raw: [u8; 4] = record.get(..4)?.try_into().ok()?;
    let header_len = u32::from_be_bytes(raw) as usize;
    let end = 4usize.checked_add(header_len)?;
    if end > record.len() {
        return None;
    }
    Some((record.slice(4..end), record.slice(end..)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_keys_sort_by_queue_then_seq() {
        let a = index(QueueId(1), 255);
        let b = index(QueueId(1), 256);
        let c = index(QueueId(2), 0);
        assert!(a < b && b < c);
        assert_eq!(u64_at(&b, 9), Some(256));
    }

    #[test]
    fn index_values_tell_pointers_from_inline_records() {
        let raw = 7u64.to_be_bytes();
        let pointer = decode_index(&raw).expect("pointer");
        assert_eq!((pointer.message, pointer.inline), (MessageId(7), None));
        let mut value = 9u64.to_be_bytes().to_vec();
        encode_record_into(&mut value, b"h", b"body");
        let inline = decode_index(&value).expect("inline");
        assert_eq!(inline.message, MessageId(9));
        assert_eq!(inline.inline, Some(&value[8..]));
        assert!(decode_index(&[0, 1]).is_none());
    }

    #[test]
    fn record_round_trip_and_malformed() {
        let rec = Bytes::from(encode_record(b"hdr", b"body"));
        let (h, b) = decode_record(rec).expect("well formed");
        assert_eq!((&h[..], &b[..]), (&b"hdr"[..], &b"body"[..]));
        assert!(decode_record(Bytes::from_static(&[0, 0, 0, 9, 1])).is_none());
        assert!(decode_record(Bytes::from_static(&[0, 0])).is_none());
    }
}
