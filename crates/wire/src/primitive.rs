//! The AMQP primitive types: a bounds-checked [`Reader`] over a payload and the `put_*` writers.
//!
//! Integers are big-endian. A shortstr is a length octet plus up to 255 octets; a longstr, a
//! field table and a field array are a u32 length plus that many octets.

use std::borrow::Cow;

use bytes::{BufMut, Bytes, BytesMut};

use crate::{FieldTable, WireError};

/// A cursor over a payload that never reads past its end: every read returns
/// [`WireError::Truncated`] instead of panicking, with the offset, need and have.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Offset of the next octet to read.
    pub(crate) fn offset(&self) -> usize {
        self.pos
    }

    /// Octets left.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Takes the next `n` octets.
    pub(crate) fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        let have = self.remaining();
        if n > have {
            return Err(WireError::Truncated {
                what,
                offset: self.pos,
                need: n,
                have,
            });
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], WireError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, WireError> {
        self.array(what).map(u8::from_be_bytes)
    }

    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, WireError> {
        self.array(what).map(u16::from_be_bytes)
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, WireError> {
        self.array(what).map(u32::from_be_bytes)
    }

    pub(crate) fn u64(&mut self, what: &'static str) -> Result<u64, WireError> {
        self.array(what).map(u64::from_be_bytes)
    }

    pub(crate) fn i8(&mut self, what: &'static str) -> Result<i8, WireError> {
        self.array(what).map(i8::from_be_bytes)
    }

    pub(crate) fn i16(&mut self, what: &'static str) -> Result<i16, WireError> {
        self.array(what).map(i16::from_be_bytes)
    }

    pub(crate) fn i32(&mut self, what: &'static str) -> Result<i32, WireError> {
        self.array(what).map(i32::from_be_bytes)
    }

    pub(crate) fn i64(&mut self, what: &'static str) -> Result<i64, WireError> {
        self.array(what).map(i64::from_be_bytes)
    }

    pub(crate) fn f32(&mut self, what: &'static str) -> Result<f32, WireError> {
        self.array(what).map(f32::from_be_bytes)
    }

    pub(crate) fn f64(&mut self, what: &'static str) -> Result<f64, WireError> {
        self.array(what).map(f64::from_be_bytes)
    }

    /// A shortstr that must be UTF-8 (RabbitMQ's `assert_utf8` on arguments of methods without
    /// content).
    pub(crate) fn shortstr(&mut self, what: &'static str) -> Result<String, WireError> {
        let offset = self.pos;
        let len = usize::from(self.u8(what)?);
        let raw = self.take(len, what)?;
        std::str::from_utf8(raw)
            .map(str::to_owned)
            .map_err(|_| WireError::InvalidUtf8 { offset })
    }

    /// A shortstr where RabbitMQ does not check UTF-8 (arguments of content-bearing methods,
    /// property values, field-table keys): invalid sequences become U+FFFD instead of failing the
    /// connection. Content headers are re-sent from their raw octets, so deliveries keep the
    /// publisher's exact bytes.
    pub(crate) fn shortstr_lossy(&mut self, what: &'static str) -> Result<String, WireError> {
        let len = usize::from(self.u8(what)?);
        let raw = self.take(len, what)?;
        Ok(lossy(raw).into_owned())
    }

    /// The octets of a longstr (or of a table or array body), borrowed.
    pub(crate) fn long_slice(&mut self, what: &'static str) -> Result<&'a [u8], WireError> {
        let len = self.u32(what)?;
        // A u32 always fits a usize on the 32- and 64-bit targets tokio supports; saturate otherwise
        // so the bounds check in `take` rejects it.
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        self.take(len, what)
    }

    /// A longstr, copied out of the payload (method longstrs are small: SASL responses, secrets).
    pub(crate) fn longstr(&mut self, what: &'static str) -> Result<Bytes, WireError> {
        self.long_slice(what).map(Bytes::copy_from_slice)
    }

    /// A field table.
    pub(crate) fn table(&mut self, what: &'static str) -> Result<FieldTable, WireError> {
        crate::table::read_table(self, 0, what)
    }

    /// Fails if octets are left over.
    pub(crate) fn finish(&self) -> Result<(), WireError> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(WireError::TrailingBytes {
                offset: self.pos,
                extra,
            }),
        }
    }
}

/// A shortstr where RabbitMQ does not check UTF-8 (see [`Reader::shortstr_lossy`]), borrowed
/// unless it has to be repaired.
pub(crate) fn lossy(raw: &[u8]) -> Cow<'_, str> {
    if raw.is_empty() {
        // The default exchange, an empty routing key: nothing to check.
        return Cow::Borrowed("");
    }
    // `from_utf8` is the fast path (vectorised for ASCII); the lossy scan runs only on bad input.
    match std::str::from_utf8(raw) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(raw),
    }
}

/// Appends a shortstr.
///
/// # Errors
/// [`WireError::ShortStrTooLong`] if `s` is over 255 octets (never truncated).
pub(crate) fn put_shortstr(
    dst: &mut BytesMut,
    s: &str,
    what: &'static str,
) -> Result<(), WireError> {
    put_shortstr_octets(dst, s.as_bytes(), what)
}

/// Appends a shortstr given as octets (a string kept as octets).
///
/// # Errors
/// [`WireError::ShortStrTooLong`] if `s` is over 255 octets (never truncated).
pub(crate) fn put_shortstr_octets(
    dst: &mut BytesMut,
    s: &[u8],
    what: &'static str,
) -> Result<(), WireError> {
    let len =
        u8::try_from(s.len()).map_err(|_| WireError::ShortStrTooLong { what, len: s.len() })?;
    dst.put_u8(len);
    dst.put_slice(s);
    Ok(())
}

/// Appends a longstr.
///
/// # Errors
/// [`WireError::LongStrTooLong`] if `s` is 4 GiB or more.
pub(crate) fn put_longstr(
    dst: &mut BytesMut,
    s: &[u8],
    what: &'static str,
) -> Result<(), WireError> {
    let len =
        u32::try_from(s.len()).map_err(|_| WireError::LongStrTooLong { what, len: s.len() })?;
    dst.put_u32(len);
    dst.put_slice(s);
    Ok(())
}

/// Appends a field table (u32 length + entries).
///
/// # Errors
/// A key over 255 octets or a table over 4 GiB.
pub(crate) fn put_table(dst: &mut BytesMut, table: &FieldTable) -> Result<(), WireError> {
    crate::table::write_table(dst, table)
}

/// Reserves a u32 length slot; returns its position for [`patch_len`].
pub(crate) fn begin_len(dst: &mut BytesMut) -> usize {
    let at = dst.len();
    dst.put_u32(0);
    at
}

/// Writes the number of octets appended since [`begin_len`] into its slot.
///
/// # Errors
/// [`WireError::LongStrTooLong`] if that is 4 GiB or more.
pub(crate) fn patch_len(
    dst: &mut BytesMut,
    at: usize,
    what: &'static str,
) -> Result<(), WireError> {
    let len = dst.len() - at - 4;
    let len32 = u32::try_from(len).map_err(|_| WireError::LongStrTooLong { what, len })?;
    dst[at..at + 4].copy_from_slice(&len32.to_be_bytes());
    Ok(())
}
