//! Headers exchange: bindings match on the message's header table.
//!
//! As RabbitMQ: `x-match` is `all` (the default), `any`, `all-with-x` or `any-with-x`.
//! `all`/`any` ignore binding arguments whose name starts with "x-"; the `-with-x` forms
//! compare them too (except `x-match` itself). A binding value of type void matches any value
//! of that header; otherwise values must be equal, integers of any width comparing by value.
//! An `all` binding with nothing to compare matches every message; an `any` binding with
//! nothing to compare matches none.

use lockgate_wire::{FieldTable, FieldValue};

use super::{BindingEntry, Destination};
use crate::error::BrokerError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    All,
    Any,
}

/// A binding's arguments, compiled at bind time.
#[derive(Debug)]
struct Matcher {
    mode: Mode,
    /// (header name, expected value; `None` = any value, from a void binding value).
    pairs: Vec<(String, Option<FieldValue>)>,
}

impl Matcher {
    fn compile(arguments: &FieldTable) -> Result<Self, BrokerError> {
        let (mode, with_x) = match arguments.get("x-match") {
            None => (Mode::All, false),
            Some(FieldValue::LongString(value)) => match &value[..] {
                b"all" => (Mode::All, false),
                b"any" => (Mode::Any, false),
                b"all-with-x" => (Mode::All, true),
                b"any-with-x" => (Mode::Any, true),
                other => {
                    return Err(BrokerError::precondition_failed(format_args!(
                        "Invalid x-match field value <<\"{}\">>; expected all, any, all-with-x, or any-with-x",
                        String::from_utf8_lossy(other)
                    )))
                }
            },
            Some(other) => {
                return Err(BrokerError::precondition_failed(format_args!(
                    "Invalid x-match field type {} (value {}); expected longstr",
                    crate::queue::arguments::type_name(other),
                    crate::queue::arguments::display_value(other)
                )))
            }
        };
        let pairs = arguments
            .iter()
            .filter(|(name, _)| {
                if with_x {
                    name.as_str() != "x-match"
                } else {
                    !name.starts_with("x-")
                }
            })
            .map(|(name, value)| {
                let expected = match value {
                    FieldValue::Void => None,
                    other => Some(other.clone()),
                };
                (name.clone(), expected)
            })
            .collect();
        Ok(Self { mode, pairs })
    }

    fn matches(&self, headers: Option<&FieldTable>) -> bool {
        let pair_matches = |(name, expected): &(String, Option<FieldValue>)| {
            let Some(actual) = headers.and_then(|h| h.get(name)) else {
                return false;
            };
            expected.as_ref().is_none_or(|e| values_equal(e, actual))
        };
        match self.mode {
            Mode::All => self.pairs.iter().all(pair_matches),
            Mode::Any => self.pairs.iter().any(pair_matches),
        }
    }
}

/// Erlang's `=:=` on the values RabbitMQ extracts: integers compare by value whatever their
/// width, strings and byte arrays by bytes, everything else exactly.
fn values_equal(a: &FieldValue, b: &FieldValue) -> bool {
    match (integer(a), integer(b)) {
        (Some(x), Some(y)) => x == y,
        (None, None) => match (a, b) {
            (
                FieldValue::LongString(x) | FieldValue::ByteArray(x),
                FieldValue::LongString(y) | FieldValue::ByteArray(y),
            ) => x == y,
            (FieldValue::F32(x), FieldValue::F64(y)) | (FieldValue::F64(y), FieldValue::F32(x)) => {
                f64::from(*x) == *y
            }
            _ => a == b,
        },
        _ => false,
    }
}

/// An integer-typed field's value; here a timestamp counts as an integer too.
fn integer(value: &FieldValue) -> Option<i128> {
    match value {
        FieldValue::Timestamp(v) => Some(i128::from(*v)),
        other => crate::queue::arguments::integer(other),
    }
}

#[derive(Debug)]
struct Entry {
    binding: BindingEntry,
    matcher: Matcher,
}

#[derive(Debug, Default)]
pub(crate) struct HeadersRouter {
    entries: Vec<Entry>,
}

impl HeadersRouter {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// # Errors
    /// `PreconditionFailed` for an invalid `x-match`, with RabbitMQ's text.
    pub fn validate(arguments: &FieldTable) -> Result<(), BrokerError> {
        Matcher::compile(arguments).map(drop)
    }

    /// # Errors
    /// `PreconditionFailed` for an invalid `x-match`, with RabbitMQ's text.
    pub fn add(&mut self, binding: BindingEntry) -> Result<bool, BrokerError> {
        let matcher = Matcher::compile(&binding.arguments)?;
        if self.entries.iter().any(|e| e.binding.same(&binding)) {
            return Ok(false);
        }
        self.entries.push(Entry { binding, matcher });
        Ok(true)
    }

    pub fn remove(&mut self, key: &str, arguments: &FieldTable, destination: &Destination) -> bool {
        let before = self.entries.len();
        self.entries.retain(|e| {
            !(e.binding.routing_key == key
                && &e.binding.arguments == arguments
                && &e.binding.destination == destination)
        });
        self.entries.len() != before
    }

    pub fn route(&self, headers: Option<&FieldTable>, f: &mut impl FnMut(&Destination)) {
        for entry in &self.entries {
            if entry.matcher.matches(headers) {
                f(&entry.binding.destination);
            }
        }
    }

    pub fn take_all(&mut self) -> Vec<BindingEntry> {
        self.entries.drain(..).map(|e| e.binding).collect()
    }
}
