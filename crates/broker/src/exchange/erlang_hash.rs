//! The hashing of RabbitMQ's consistent-hash exchange plugin, reproduced so that a key
//! lands on the same bucket as on RabbitMQ: Erlang's `erlang:phash2/1` (the `make_hash2`
//! function of the Erlang runtime, Bob Jenkins' mix) over the few term shapes the plugin
//! hashes, and its jump consistent hash driven by `rand`'s `exs1024` generator seeded with
//! `{K, K, K}`.
//!
//! Written from the algorithms' descriptions and checked against values computed by an
//! Erlang/OTP node (the vectors in the tests).

/// The Erlang terms the plugin hashes: a routing key or property (binary), a header as
/// `{Type, Value}`, and `undefined` for a missing header or property.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Term<'a> {
    Atom(&'a str),
    Binary(&'a [u8]),
    Int(i64),
    Tuple(&'a [Term<'a>]),
}

const HCONST: u32 = 0x9e37_79b9;
const HCONST_3: u32 = 0xdaa6_6d2b;
const HCONST_9: u32 = 0x8ff3_4781;
const HCONST_10: u32 = 0x2e2a_c13a;
const HCONST_11: u32 = 0xcc62_3af3;
const HCONST_13: u32 = 0x08d1_2e65;

/// Bob Jenkins' 96-bit mix, as the Erlang runtime's `MIX` macro.
fn mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    *a = a.wrapping_sub(*b).wrapping_sub(*c) ^ (*c >> 13);
    *b = b.wrapping_sub(*c).wrapping_sub(*a) ^ (*a << 8);
    *c = c.wrapping_sub(*a).wrapping_sub(*b) ^ (*b >> 13);
    *a = a.wrapping_sub(*b).wrapping_sub(*c) ^ (*c >> 12);
    *b = b.wrapping_sub(*c).wrapping_sub(*a) ^ (*a << 16);
    *c = c.wrapping_sub(*a).wrapping_sub(*b) ^ (*b >> 5);
    *a = a.wrapping_sub(*b).wrapping_sub(*c) ^ (*c >> 3);
    *b = b.wrapping_sub(*c).wrapping_sub(*a) ^ (*a << 10);
    *c = c.wrapping_sub(*a).wrapping_sub(*b) ^ (*b >> 15);
}

fn block_hash(bytes: &[u8], initval: u32) -> u32 {
    let word = |k: &[u8]| {
        k.iter()
            .enumerate()
            .fold(0u32, |w, (i, b)| w.wrapping_add(u32::from(*b) << (8 * i)))
    };
    let (mut a, mut b, mut c) = (HCONST, HCONST, initval);
    let mut chunks = bytes.chunks_exact(12);
    for k in &mut chunks {
        a = a.wrapping_add(word(&k[0..4]));
        b = b.wrapping_add(word(&k[4..8]));
        c = c.wrapping_add(word(&k[8..12]));
        mix(&mut a, &mut b, &mut c);
    }
    let rest = chunks.remainder();
    // The length goes into c; the tail fills a, b, then c's upper three bytes.
    c = c.wrapping_add(bytes.len() as u32);
    a = a.wrapping_add(word(&rest[..rest.len().min(4)]));
    if rest.len() > 4 {
        b = b.wrapping_add(word(&rest[4..rest.len().min(8)]));
    }
    if rest.len() > 8 {
        c = c.wrapping_add(word(&rest[8..]) << 8);
    }
    mix(&mut a, &mut b, &mut c);
    c
}

fn uint32_hash_2(hash: &mut u32, x: u32, y: u32, constant: u32) {
    let (mut a, mut b) = (constant.wrapping_add(x), constant.wrapping_add(y));
    mix(&mut a, &mut b, hash);
}

/// The runtime's atom hash (hashpjw over the name, for the ASCII names used here).
fn atom_hash(name: &str) -> u32 {
    name.bytes().fold(0u32, |h, v| {
        let h = (h << 4).wrapping_add(u32::from(v));
        let g = h & 0xf000_0000;
        if g == 0 {
            h
        } else {
            h ^ (g >> 24) ^ g
        }
    })
}

/// True when `x` fits the runtime's 28-bit fast path for integers.
fn small28(x: i64) -> bool {
    (-(1 << 27)..(1 << 27)).contains(&x)
}

fn hash_int(hash: &mut u32, x: i64) {
    if small28(x) {
        // SINT32_HASH: a negative value is mixed twice, negated first.
        let y = x as i32;
        if y < 0 {
            uint32_hash_2(hash, y.wrapping_neg() as u32, 0, HCONST);
        }
        uint32_hash_2(hash, y as u32, 0, HCONST);
    } else {
        // A bignum of one 64-bit digit: its magnitude's low and high words.
        let magnitude = x.unsigned_abs();
        let constant = if x < 0 { HCONST_10 } else { HCONST_11 };
        uint32_hash_2(hash, magnitude as u32, (magnitude >> 32) as u32, constant);
    }
}

fn hash_into(hash: &mut u32, term: &Term<'_>) {
    match term {
        Term::Atom(name) => uint32_hash_2(hash, atom_hash(name), 0, HCONST_3),
        Term::Int(x) => hash_int(hash, *x),
        Term::Binary(bytes) => {
            let constant = HCONST_13.wrapping_add(*hash);
            *hash = if bytes.is_empty() {
                constant
            } else {
                block_hash(bytes, constant)
            };
        }
        Term::Tuple(elements) => {
            uint32_hash_2(hash, elements.len() as u32, 0, HCONST_9);
            for element in elements.iter() {
                hash_into(hash, element);
            }
        }
    }
}

/// `erlang:phash2(Term)`: in `0 .. 2^27`.
pub(crate) fn phash2(term: &Term<'_>) -> u32 {
    let hash = match term {
        // The runtime returns an atom's own hash unmixed.
        Term::Atom(name) => atom_hash(name),
        other => {
            let mut hash = 0;
            hash_into(&mut hash, other);
            hash
        }
    };
    hash & ((1 << 27) - 1)
}

/// `rand`'s exs1024 (xorshift1024*) seeded as `rand:seed_s(exs1024, {K, K, K})`.
struct Exs1024 {
    state: [u64; 16],
    p: usize,
}

impl Exs1024 {
    fn seeded(k: u64) -> Self {
        let mask21 = |x: u64| x & ((1 << 21) - 1);
        let b1 = mask21((mask21(k) + 1) * 2_097_131);
        let b2 = mask21((mask21(k) + 1) * 2_097_133);
        let b3 = mask21((mask21(k) + 1) * 2_097_143);
        let mut r = (b1 << 43) | (b2 << 22) | (b3 << 1) | 1;
        // 16 outputs of xorshift64*, the last one generated first in the list.
        let mut state = [0u64; 16];
        for slot in state.iter_mut().rev() {
            r ^= r >> 12;
            r ^= r << 25;
            r ^= r >> 27;
            *slot = r.wrapping_mul(2_685_821_657_736_338_717);
        }
        Self { state, p: 0 }
    }

    fn next(&mut self) -> u64 {
        let s0 = self.state[self.p];
        self.p = (self.p + 1) & 15;
        let mut s1 = self.state[self.p];
        s1 ^= s1 << 31;
        s1 ^= s1 >> 11;
        let s0 = s0 ^ (s0 >> 30);
        let ns1 = s0 ^ s1;
        self.state[self.p] = ns1;
        ns1.wrapping_mul(1_181_783_497_276_652_981)
    }

    /// `rand:uniform_s/1` for exs1024: the 64-bit output divided by 2^64 (rounded to the
    /// nearest double, as Erlang converts the integer).
    fn uniform(&mut self) -> f64 {
        self.next() as f64 / 18_446_744_073_709_551_616.0
    }
}

/// The plugin's jump consistent hash: the bucket in `0..buckets` for `term`.
pub(crate) fn jump_consistent_hash(term: &Term<'_>, buckets: u64) -> u64 {
    if buckets <= 1 {
        return 0;
    }
    let mut rng = Exs1024::seeded(u64::from(phash2(term)));
    let mut bucket = 0u64;
    let mut next = 0u64;
    while next < buckets {
        bucket = next;
        let r = rng.uniform();
        let jump = (bucket + 1) as f64 / r;
        // Truncation is the algorithm; a zero draw (2^-53) jumps past every bucket.
        next = if jump.is_finite() && jump < u64::MAX as f64 {
            jump as u64
        } else {
            u64::MAX
        };
    }
    bucket
}

#[cfg(test)]
mod tests {
    use super::*;

    // Computed with erlang:phash2/1 on Erlang/OTP 25.
    #[test]
    fn phash2_matches_erlang() {
        let vectors: Vec<(Term<'_>, u32)> = vec![
            (Term::Binary(b"abc"), 98_228_475),
            (Term::Binary(b""), 13_708_901),
            (Term::Binary(b"a"), 112_802_447),
            (Term::Binary(b"order-1"), 128_070_018),
            (Term::Binary(b"hello world, a longer key!"), 93_099_476),
            (Term::Atom("undefined"), 45_914_356),
            (Term::Atom("longstr"), 56_945_346),
            (
                Term::Tuple(&[Term::Atom("longstr"), Term::Binary(b"alice")]),
                39_407_205,
            ),
            (
                Term::Tuple(&[Term::Atom("signedint"), Term::Int(42)]),
                20_266_392,
            ),
            (
                Term::Tuple(&[Term::Atom("signedint"), Term::Int(-7)]),
                44_902_276,
            ),
            (
                Term::Tuple(&[Term::Atom("long"), Term::Int(1_099_511_627_776)]),
                93_748_608,
            ),
            (
                Term::Tuple(&[Term::Atom("long"), Term::Int(-1_099_511_627_776)]),
                32_506_873,
            ),
            (
                Term::Tuple(&[Term::Atom("bool"), Term::Atom("true")]),
                32_030_443,
            ),
            (
                Term::Tuple(&[Term::Atom("a"), Term::Atom("b")]),
                101_277_806,
            ),
            (Term::Tuple(&[Term::Int(1)]), 110_528_523),
            (
                Term::Tuple(&[Term::Atom("timestamp"), Term::Int(1_700_000_000)]),
                59_280_699,
            ),
            (
                Term::Tuple(&[Term::Atom("signedint"), Term::Int(200_000_000)]),
                14_774_475,
            ),
        ];
        for (term, expected) in vectors {
            assert_eq!(phash2(&term), expected, "{term:?}");
        }
    }

    // rand:uniform_s/1 after rand:seed_s(exs1024, {5, 5, 5}).
    #[test]
    fn exs1024_matches_erlang() {
        let mut rng = Exs1024::seeded(5);
        assert_eq!(rng.uniform().to_bits(), 0x3fd6_8e64_a09c_78da);
        assert_eq!(rng.uniform().to_bits(), 0x3fe5_7815_fb90_563a);
    }

    // The plugin's jump_consistent_hash(phash2(Key), N), run on Erlang/OTP 25.
    #[test]
    fn jump_hash_matches_the_plugin() {
        let vectors: &[(&[u8], [u64; 4])] = &[
            (b"abc", [1, 1, 5, 543]),
            (b"order-1", [0, 0, 9, 632]),
            (b"k7", [0, 0, 9, 152]),
            (b"x", [0, 0, 3, 124]),
        ];
        for (key, expected) in vectors {
            let got: Vec<u64> = [2, 3, 10, 1000]
                .iter()
                .map(|n| jump_consistent_hash(&Term::Binary(key), *n))
                .collect();
            assert_eq!(&got, expected, "{}", String::from_utf8_lossy(key));
        }
        assert_eq!(jump_consistent_hash(&Term::Binary(b"abc"), 1), 0);
    }
}
