//! The body of every bench message: who sent it, its place in its stream, a
//! send timestamp and a checksum, so that the consumer can tell a lost,
//! duplicated, corrupt or misrouted message from a good one.
//!
//! Layout (little endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | sequence number within the stream, from 0 |
//! | 8 | 4 | stream id (the publisher's target: which queue(s) it must reach) |
//! | 12 | 4 | checksum of every other byte, seeded with the run's seed |
//! | 16 | 8 | send time in ns since the run's clock origin (bodies of 24 B or more) |
//! | 24.. | | a fixed filler pattern, covered by the checksum |
//!
//! The 16 B minimum is the smallest body the scenarios use. Seeding the
//! checksum with the run's seed makes a message left over from another run
//! count as corrupt rather than as one of ours.

use std::sync::Arc;

/// Smallest body that carries a sequence number, stream id and checksum.
pub const MIN_SIZE: usize = 16;
/// Smallest body that also carries a timestamp.
pub const MIN_TIMED_SIZE: usize = 24;

/// What a consumer learns from a body that passed its checksum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decoded {
    /// Position in its stream.
    pub seq: u64,
    /// The stream (publisher target) it belongs to.
    pub stream: u32,
    /// Send time in ns since the run's clock origin, when the body has one.
    pub sent_ns: Option<u64>,
}

/// Why a body was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Corrupt {
    /// Shorter than [`MIN_SIZE`].
    TooShort,
    /// The checksum does not match (damaged, or from another run).
    Checksum,
}

/// Builds and checks bodies of one size for one run.
#[derive(Clone, Debug)]
pub struct Codec {
    seed: u32,
    size: usize,
    /// The filler pattern for offsets `0..size`, computed once: bodies copy
    /// their tail from it instead of generating it byte by byte.
    filler: Arc<[u8]>,
}

impl Codec {
    /// A codec for bodies of `size` bytes (at least [`MIN_SIZE`]).
    ///
    /// # Panics
    ///
    /// If `size` is below [`MIN_SIZE`]; the CLI validates sizes first.
    pub fn new(seed: u32, size: usize) -> Self {
        assert!(size >= MIN_SIZE, "body size {size} below {MIN_SIZE}");
        Self {
            seed,
            size,
            filler: (0..size).map(filler).collect(),
        }
    }

    /// Whether bodies carry a send time (they are at least [`MIN_TIMED_SIZE`]).
    pub fn stamps(&self) -> bool {
        self.size >= MIN_TIMED_SIZE
    }

    /// A body buffer for [`Codec::encode`]: the filler pattern is written
    /// once, each message then rewrites only its header fields.
    pub fn body(&self) -> Vec<u8> {
        self.filler.to_vec()
    }

    /// Encodes message `seq` of `stream` into `body` (from [`Codec::body`]),
    /// stamped with `sent_ns` when the body is large enough to carry it.
    pub fn encode(&self, stream: u32, seq: u64, sent_ns: u64, body: &mut [u8]) {
        debug_assert_eq!(body.len(), self.size);
        body[0..8].copy_from_slice(&seq.to_le_bytes());
        body[8..12].copy_from_slice(&stream.to_le_bytes());
        body[12..16].fill(0);
        if self.stamps() {
            body[16..24].copy_from_slice(&sent_ns.to_le_bytes());
        }
        let sum = checksum(self.seed, body);
        body[12..16].copy_from_slice(&sum.to_le_bytes());
    }

    /// Checks and decodes a received body (of any size: the consumer does
    /// not assume the publisher's).
    ///
    /// # Errors
    ///
    /// [`Corrupt`] when the body is too short or its checksum is wrong.
    pub fn decode(&self, body: &[u8]) -> Result<Decoded, Corrupt> {
        let header = body.get(..MIN_SIZE).ok_or(Corrupt::TooShort)?;
        let word = |range: std::ops::Range<usize>| {
            header
                .get(range)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .map(u32::from_le_bytes)
                .ok_or(Corrupt::TooShort)
        };
        let stored = word(12..16)?;
        if checksum(self.seed, body) != stored {
            return Err(Corrupt::Checksum);
        }
        let seq = u64::from(word(0..4)?) | (u64::from(word(4..8)?) << 32);
        let sent_ns = body
            .get(16..24)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_le_bytes);
        Ok(Decoded {
            seq,
            stream: word(8..12)?,
            sent_ns,
        })
    }
}

fn filler(offset: usize) -> u8 {
    // Truncation intended: any fixed, position-dependent pattern will do.
    (offset.wrapping_mul(31).wrapping_add(7) & 0xff) as u8
}

/// A fast 32-bit checksum of `body` with its checksum field (bytes 12..16)
/// read as zero. Word-at-a-time multiply-xor: cheap enough for 1 KiB bodies
/// at hundreds of thousands of messages per second, and any change of a
/// single byte changes it.
fn checksum(seed: u32, body: &[u8]) -> u32 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut h = u64::from(seed) ^ (body.len() as u64).wrapping_mul(K);
    let mut chunks = body.chunks_exact(8);
    for (i, chunk) in chunks.by_ref().enumerate() {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        if i == 1 {
            // Bytes 12..16 hold the checksum itself.
            word[4..8].fill(0);
        }
        h = (h ^ u64::from_le_bytes(word))
            .wrapping_mul(K)
            .rotate_left(29);
    }
    for &b in chunks.remainder() {
        h = (h ^ u64::from(b)).wrapping_mul(K).rotate_left(29);
    }
    // Fold to 32 bits; truncation intended.
    ((h >> 32) ^ h) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(codec: &Codec, stream: u32, seq: u64, sent_ns: u64) -> Vec<u8> {
        let mut body = codec.body();
        codec.encode(stream, seq, sent_ns, &mut body);
        body
    }

    #[test]
    fn round_trip_small_and_timed_bodies() {
        for size in [16, 24, 64, 1024, 1031] {
            let codec = Codec::new(7, size);
            let body = encoded(&codec, 3, 0x1_0000_0002, 99);
            assert_eq!(body.len(), size);
            let decoded = codec.decode(&body).expect("valid body");
            assert_eq!(decoded.seq, 0x1_0000_0002);
            assert_eq!(decoded.stream, 3);
            assert_eq!(decoded.sent_ns, (size >= 24).then_some(99));
            assert_eq!(codec.stamps(), size >= 24);
        }
    }

    #[test]
    fn any_flipped_byte_is_corrupt() {
        let codec = Codec::new(1, 64);
        let body = encoded(&codec, 0, 5, 1);
        for i in 0..body.len() {
            let mut damaged = body.clone();
            damaged[i] ^= 0x10;
            assert_eq!(codec.decode(&damaged), Err(Corrupt::Checksum), "byte {i}");
        }
    }

    #[test]
    fn short_or_foreign_bodies_are_corrupt() {
        let codec = Codec::new(1, 16);
        assert_eq!(codec.decode(b"hello"), Err(Corrupt::TooShort));
        let other_run = encoded(&Codec::new(2, 16), 0, 0, 0);
        assert_eq!(codec.decode(&other_run), Err(Corrupt::Checksum));
    }
}
