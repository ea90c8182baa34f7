//! Field tables and arrays: [`FieldTable`], [`FieldValue`], [`Decimal`].
//!
//! A table on the wire is a u32 octet count followed by entries, each a shortstr name, a one-octet
//! type tag and the value. An array is a u32 octet count followed by tagged values.
//!
//! The tags are RabbitMQ's, which differ from the AMQP 0-9-1 spec's table (the spec's `U`, `L`
//! and `s` for short string clash with what every RabbitMQ client sends; see RabbitMQ's
//! "AMQP 0-9-1 errata" and `rabbit_binary_parser`):
//!
//! | tag | type                              | [`FieldValue`]  |
//! |-----|-----------------------------------|-----------------|
//! | `t` | boolean, one octet (0 = false)    | `Bool`          |
//! | `b` | signed 8-bit                      | `I8`            |
//! | `B` | unsigned 8-bit                    | `U8`            |
//! | `s` | signed 16-bit                     | `I16`           |
//! | `u` | unsigned 16-bit                   | `U16`           |
//! | `I` | signed 32-bit                     | `I32`           |
//! | `i` | unsigned 32-bit                   | `U32`           |
//! | `l` | signed 64-bit (`L` also read)     | `I64`           |
//! | `f` | IEEE-754 single                   | `F32`           |
//! | `d` | IEEE-754 double                   | `F64`           |
//! | `D` | decimal: scale octet + u32 value  | `Decimal`       |
//! | `S` | long string (u32 length + octets) | `LongString`    |
//! | `A` | array (u32 length + tagged values)| `Array`         |
//! | `T` | timestamp, u64 seconds            | `Timestamp`     |
//! | `F` | nested table                      | `Table`         |
//! | `V` | void, no value                    | `Void`          |
//! | `x` | byte array (u32 length + octets)  | `ByteArray`     |
//!
//! `L` is accepted on read as a signed 64-bit value, as RabbitMQ does, and written back as `l`.
//! Nesting is limited to [`MAX_NESTING`] levels so hostile input cannot exhaust the stack.

use std::collections::btree_map::{self, BTreeMap};

use bytes::{BufMut, Bytes, BytesMut};

use crate::primitive::{begin_len, patch_len, put_longstr, put_shortstr, Reader};
use crate::WireError;

/// How deeply tables and arrays may nest (a table inside an array inside a table counts 3).
pub const MAX_NESTING: usize = 64;

/// An AMQP decimal: `value / 10^scale`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Decimal {
    /// Number of decimal digits after the point.
    pub scale: u8,
    /// The unscaled value.
    pub value: u32,
}

/// A value in a field table or array (see the module docs for the tags).
#[derive(Clone, Debug, PartialEq)]
pub enum FieldValue {
    /// `t`: boolean.
    Bool(bool),
    /// `b`: signed 8-bit integer.
    I8(i8),
    /// `B`: unsigned 8-bit integer.
    U8(u8),
    /// `s`: signed 16-bit integer.
    I16(i16),
    /// `u`: unsigned 16-bit integer.
    U16(u16),
    /// `I`: signed 32-bit integer.
    I32(i32),
    /// `i`: unsigned 32-bit integer.
    U32(u32),
    /// `l` (or `L` on read): signed 64-bit integer.
    I64(i64),
    /// `f`: single-precision float.
    F32(f32),
    /// `d`: double-precision float.
    F64(f64),
    /// `D`: decimal.
    Decimal(Decimal),
    /// `S`: long string (octets, usually UTF-8).
    LongString(Bytes),
    /// `A`: array of values.
    Array(Vec<FieldValue>),
    /// `T`: timestamp, seconds since the epoch.
    Timestamp(u64),
    /// `F`: nested table.
    Table(FieldTable),
    /// `V`: no value.
    Void,
    /// `x`: byte array.
    ByteArray(Bytes),
}

impl FieldValue {
    /// The tag octet this value is written with.
    #[must_use]
    pub fn tag(&self) -> u8 {
        match self {
            FieldValue::Bool(_) => b't',
            FieldValue::I8(_) => b'b',
            FieldValue::U8(_) => b'B',
            FieldValue::I16(_) => b's',
            FieldValue::U16(_) => b'u',
            FieldValue::I32(_) => b'I',
            FieldValue::U32(_) => b'i',
            FieldValue::I64(_) => b'l',
            FieldValue::F32(_) => b'f',
            FieldValue::F64(_) => b'd',
            FieldValue::Decimal(_) => b'D',
            FieldValue::LongString(_) => b'S',
            FieldValue::Array(_) => b'A',
            FieldValue::Timestamp(_) => b'T',
            FieldValue::Table(_) => b'F',
            FieldValue::Void => b'V',
            FieldValue::ByteArray(_) => b'x',
        }
    }

    /// The value as a string slice, for `S` values holding UTF-8.
    #[must_use]
    pub fn as_str(&self) -> Option<&str> {
        match self {
            FieldValue::LongString(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// The value as a boolean, for `t` values.
    #[must_use]
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            FieldValue::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The value as an `i64`, for any integer type (`x-message-ttl`, `x-max-length`, ... arrive
    /// as whatever width the client picked).
    #[must_use]
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            FieldValue::I8(v) => Some(i64::from(v)),
            FieldValue::U8(v) => Some(i64::from(v)),
            FieldValue::I16(v) => Some(i64::from(v)),
            FieldValue::U16(v) => Some(i64::from(v)),
            FieldValue::I32(v) => Some(i64::from(v)),
            FieldValue::U32(v) => Some(i64::from(v)),
            FieldValue::I64(v) => Some(v),
            FieldValue::Timestamp(v) => i64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The nested table, for `F` values.
    #[must_use]
    pub fn as_table(&self) -> Option<&FieldTable> {
        match self {
            FieldValue::Table(t) => Some(t),
            _ => None,
        }
    }

    /// The elements, for `A` values.
    #[must_use]
    pub fn as_array(&self) -> Option<&[FieldValue]> {
        match self {
            FieldValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

impl From<&str> for FieldValue {
    fn from(s: &str) -> Self {
        FieldValue::LongString(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl From<String> for FieldValue {
    fn from(s: String) -> Self {
        FieldValue::LongString(Bytes::from(s))
    }
}

impl From<bool> for FieldValue {
    fn from(b: bool) -> Self {
        FieldValue::Bool(b)
    }
}

impl From<i32> for FieldValue {
    fn from(v: i32) -> Self {
        FieldValue::I32(v)
    }
}

impl From<i64> for FieldValue {
    fn from(v: i64) -> Self {
        FieldValue::I64(v)
    }
}

impl From<FieldTable> for FieldValue {
    fn from(t: FieldTable) -> Self {
        FieldValue::Table(t)
    }
}

impl From<Vec<FieldValue>> for FieldValue {
    fn from(a: Vec<FieldValue>) -> Self {
        FieldValue::Array(a)
    }
}

/// A field table: names (shortstr) to [`FieldValue`]s, ordered by name.
///
/// Names are unique; when a peer sends a name twice the first value wins, as RabbitMQ's
/// `rabbit_misc:table_lookup` (a `lists:keysearch`) sees it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FieldTable(pub BTreeMap<String, FieldValue>);

impl FieldTable {
    /// An empty table.
    #[must_use]
    pub fn new() -> Self {
        FieldTable(BTreeMap::new())
    }

    /// The value under `key`.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&FieldValue> {
        self.0.get(key)
    }

    /// Sets `key` to `value`, returning the previous value.
    pub fn insert(
        &mut self,
        key: impl Into<String>,
        value: impl Into<FieldValue>,
    ) -> Option<FieldValue> {
        self.0.insert(key.into(), value.into())
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<FieldValue> {
        self.0.remove(key)
    }

    /// Whether `key` is present.
    #[must_use]
    pub fn contains_key(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }

    /// The entries in name order.
    pub fn iter(&self) -> btree_map::Iter<'_, String, FieldValue> {
        self.0.iter()
    }

    /// Number of entries.
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the table has no entries.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Encodes the table (u32 length + entries) into `dst`.
    ///
    /// # Errors
    /// A name over 255 octets, or a table, string or array over 4 GiB.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), WireError> {
        write_table(dst, self)
    }

    /// Decodes a table (u32 length + entries) that must fill `src` exactly.
    ///
    /// # Errors
    /// Truncated input, an unknown tag, nesting over [`MAX_NESTING`], trailing octets.
    pub fn decode(src: &[u8]) -> Result<FieldTable, WireError> {
        let mut r = Reader::new(src);
        let t = read_table(&mut r, 0, "field table")?;
        r.finish()?;
        Ok(t)
    }

    /// Decodes table entries without the u32 length prefix, filling `src` exactly: the shape of
    /// an AMQPLAIN SASL response (`LOGIN` and `PASSWORD` entries).
    ///
    /// # Errors
    /// As [`FieldTable::decode`].
    pub fn decode_entries(src: &[u8]) -> Result<FieldTable, WireError> {
        read_entries(src, 0, 1)
    }
}

impl FromIterator<(String, FieldValue)> for FieldTable {
    fn from_iter<I: IntoIterator<Item = (String, FieldValue)>>(iter: I) -> Self {
        FieldTable(iter.into_iter().collect())
    }
}

impl IntoIterator for FieldTable {
    type Item = (String, FieldValue);
    type IntoIter = btree_map::IntoIter<String, FieldValue>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a FieldTable {
    type Item = (&'a String, &'a FieldValue);
    type IntoIter = btree_map::Iter<'a, String, FieldValue>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl From<BTreeMap<String, FieldValue>> for FieldTable {
    fn from(m: BTreeMap<String, FieldValue>) -> Self {
        FieldTable(m)
    }
}

fn nesting(depth: usize, r: &Reader<'_>) -> Result<usize, WireError> {
    if depth >= MAX_NESTING {
        return Err(WireError::NestingTooDeep {
            max: MAX_NESTING,
            offset: r.offset(),
        });
    }
    Ok(depth + 1)
}

pub(crate) fn read_table(
    r: &mut Reader<'_>,
    depth: usize,
    what: &'static str,
) -> Result<FieldTable, WireError> {
    let depth = nesting(depth, r)?;
    let base = r.offset() + 4;
    let body = r.long_slice(what)?;
    read_entries(body, base, depth)
}

/// Decodes table entries filling `body`; `base` is `body`'s offset in the outer payload.
fn read_entries(body: &[u8], base: usize, depth: usize) -> Result<FieldTable, WireError> {
    let mut inner = Reader::new(body);
    let mut map = BTreeMap::new();
    while inner.remaining() > 0 {
        let key = inner
            .shortstr_lossy("field table key")
            .map_err(|e| shift(e, base))?;
        let value = read_value(&mut inner, depth).map_err(|e| shift(e, base))?;
        map.entry(key).or_insert(value);
    }
    Ok(FieldTable(map))
}

fn read_array(r: &mut Reader<'_>, depth: usize) -> Result<Vec<FieldValue>, WireError> {
    let depth = nesting(depth, r)?;
    let base = r.offset() + 4;
    let body = r.long_slice("field array")?;
    let mut inner = Reader::new(body);
    let mut out = Vec::new();
    while inner.remaining() > 0 {
        out.push(read_value(&mut inner, depth).map_err(|e| shift(e, base))?);
    }
    Ok(out)
}

/// Rebases an error's offset from a nested reader to the enclosing one, so offsets are always
/// relative to the outermost payload.
fn shift(e: WireError, base: usize) -> WireError {
    match e {
        WireError::Truncated {
            what,
            offset,
            need,
            have,
        } => WireError::Truncated {
            what,
            offset: offset + base,
            need,
            have,
        },
        WireError::InvalidUtf8 { offset } => WireError::InvalidUtf8 {
            offset: offset + base,
        },
        WireError::BadFieldType { tag, offset } => WireError::BadFieldType {
            tag,
            offset: offset + base,
        },
        WireError::NestingTooDeep { max, offset } => WireError::NestingTooDeep {
            max,
            offset: offset + base,
        },
        other => other,
    }
}

fn read_value(r: &mut Reader<'_>, depth: usize) -> Result<FieldValue, WireError> {
    let offset = r.offset();
    let tag = r.u8("field type tag")?;
    Ok(match tag {
        b't' => FieldValue::Bool(r.u8("boolean field")? != 0),
        b'b' => FieldValue::I8(r.i8("i8 field")?),
        b'B' => FieldValue::U8(r.u8("u8 field")?),
        b's' => FieldValue::I16(r.i16("i16 field")?),
        b'u' => FieldValue::U16(r.u16("u16 field")?),
        b'I' => FieldValue::I32(r.i32("i32 field")?),
        b'i' => FieldValue::U32(r.u32("u32 field")?),
        b'l' | b'L' => FieldValue::I64(r.i64("i64 field")?),
        b'f' => FieldValue::F32(r.f32("f32 field")?),
        b'd' => FieldValue::F64(r.f64("f64 field")?),
        b'D' => FieldValue::Decimal(Decimal {
            scale: r.u8("decimal scale")?,
            value: r.u32("decimal value")?,
        }),
        b'S' => FieldValue::LongString(Bytes::copy_from_slice(r.long_slice("long string field")?)),
        b'A' => FieldValue::Array(read_array(r, depth)?),
        b'T' => FieldValue::Timestamp(r.u64("timestamp field")?),
        b'F' => FieldValue::Table(read_table(r, depth, "nested table")?),
        b'V' => FieldValue::Void,
        b'x' => FieldValue::ByteArray(Bytes::copy_from_slice(r.long_slice("byte array field")?)),
        tag => return Err(WireError::BadFieldType { tag, offset }),
    })
}

pub(crate) fn write_table(dst: &mut BytesMut, table: &FieldTable) -> Result<(), WireError> {
    let at = begin_len(dst);
    for (key, value) in &table.0 {
        put_shortstr(dst, key, "field table key")?;
        write_value(dst, value)?;
    }
    patch_len(dst, at, "field table")
}

fn write_value(dst: &mut BytesMut, value: &FieldValue) -> Result<(), WireError> {
    dst.put_u8(value.tag());
    match value {
        FieldValue::Bool(v) => dst.put_u8(u8::from(*v)),
        FieldValue::I8(v) => dst.put_i8(*v),
        FieldValue::U8(v) => dst.put_u8(*v),
        FieldValue::I16(v) => dst.put_i16(*v),
        FieldValue::U16(v) => dst.put_u16(*v),
        FieldValue::I32(v) => dst.put_i32(*v),
        FieldValue::U32(v) => dst.put_u32(*v),
        FieldValue::I64(v) => dst.put_i64(*v),
        FieldValue::F32(v) => dst.put_f32(*v),
        FieldValue::F64(v) => dst.put_f64(*v),
        FieldValue::Decimal(d) => {
            dst.put_u8(d.scale);
            dst.put_u32(d.value);
        }
        FieldValue::LongString(b) => put_longstr(dst, b, "long string")?,
        FieldValue::Array(items) => {
            let at = begin_len(dst);
            for item in items {
                write_value(dst, item)?;
            }
            patch_len(dst, at, "field array")?;
        }
        FieldValue::Timestamp(v) => dst.put_u64(*v),
        FieldValue::Table(t) => write_table(dst, t)?,
        FieldValue::Void => {}
        FieldValue::ByteArray(b) => put_longstr(dst, b, "byte array")?,
    }
    Ok(())
}
