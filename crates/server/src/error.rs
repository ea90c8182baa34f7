//! Protocol errors as values: a reply code, RabbitMQ's text, and the failing method.
//!
//! Whether an error closes the channel (soft) or the connection (hard) follows from the code,
//! as the spec classes them and as RabbitMQ's `rabbit_binary_generator:map_exception` does.

use std::fmt;

use lockgate_wire::{reply_code, MAX_SHORTSTR};

/// The longest reply text: a shortstr.
const MAX_REPLY_TEXT: usize = MAX_SHORTSTR;

/// What marks a reply text that was cut to fit.
const ELLIPSIS: &str = "...";

/// A protocol error to be answered with channel.close or connection.close.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AmqpError {
    /// The reply code.
    pub code: u16,
    /// The reply text, `"NOT_FOUND - no queue 'x' in vhost '/'"`.
    pub text: String,
    /// Class id of the method that failed, 0 when none.
    pub class_id: u16,
    /// Method id of the method that failed, 0 when none.
    pub method_id: u16,
}

impl AmqpError {
    /// An error with a full reply text and no failing method yet.
    ///
    /// A text over the 255 octets of a shortstr (a long name quoted in it) is cut as RabbitMQ
    /// cuts it, to 252 octets and "...", but on a character boundary: clients decode it as UTF-8.
    pub fn new(code: u16, text: impl Into<String>) -> Self {
        let mut text = text.into();
        if text.len() > MAX_REPLY_TEXT {
            let mut end = MAX_REPLY_TEXT - ELLIPSIS.len();
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            text.push_str(ELLIPSIS);
        }
        Self {
            code,
            text,
            class_id: 0,
            method_id: 0,
        }
    }

    /// Records the method that failed, unless one is set already.
    #[must_use]
    pub fn on(mut self, class_id: u16, method_id: u16) -> Self {
        if self.class_id == 0 {
            self.class_id = class_id;
            self.method_id = method_id;
        }
        self
    }

    /// Whether the error closes the whole connection.
    pub fn is_hard(&self) -> bool {
        !matches!(
            self.code,
            reply_code::CONTENT_TOO_LARGE
                | reply_code::NO_ROUTE
                | reply_code::NO_CONSUMERS
                | reply_code::ACCESS_REFUSED
                | reply_code::NOT_FOUND
                | reply_code::RESOURCE_LOCKED
                | reply_code::PRECONDITION_FAILED
        )
    }

    /// 403 ACCESS_REFUSED.
    pub fn access_refused(text: impl fmt::Display) -> Self {
        Self::new(
            reply_code::ACCESS_REFUSED,
            format!("ACCESS_REFUSED - {text}"),
        )
    }

    /// 406 PRECONDITION_FAILED.
    pub fn precondition_failed(text: impl fmt::Display) -> Self {
        Self::new(
            reply_code::PRECONDITION_FAILED,
            format!("PRECONDITION_FAILED - {text}"),
        )
    }

    /// 501 FRAME_ERROR.
    pub fn frame_error(text: impl fmt::Display) -> Self {
        Self::new(reply_code::FRAME_ERROR, format!("FRAME_ERROR - {text}"))
    }

    /// 503 COMMAND_INVALID.
    pub fn command_invalid(text: impl fmt::Display) -> Self {
        Self::new(
            reply_code::COMMAND_INVALID,
            format!("COMMAND_INVALID - {text}"),
        )
    }

    /// 504 CHANNEL_ERROR.
    pub fn channel_error(text: impl fmt::Display) -> Self {
        Self::new(reply_code::CHANNEL_ERROR, format!("CHANNEL_ERROR - {text}"))
    }

    /// 505 UNEXPECTED_FRAME.
    pub fn unexpected_frame(text: impl fmt::Display) -> Self {
        Self::new(
            reply_code::UNEXPECTED_FRAME,
            format!("UNEXPECTED_FRAME - {text}"),
        )
    }

    /// 530 NOT_ALLOWED.
    pub fn not_allowed(text: impl fmt::Display) -> Self {
        Self::new(reply_code::NOT_ALLOWED, format!("NOT_ALLOWED - {text}"))
    }

    /// 540 NOT_IMPLEMENTED.
    pub fn not_implemented(text: impl fmt::Display) -> Self {
        Self::new(
            reply_code::NOT_IMPLEMENTED,
            format!("NOT_IMPLEMENTED - {text}"),
        )
    }

    /// 541 INTERNAL_ERROR.
    pub fn internal_error(text: impl fmt::Display) -> Self {
        Self::new(
            reply_code::INTERNAL_ERROR,
            format!("INTERNAL_ERROR - {text}"),
        )
    }
}

impl fmt::Display for AmqpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.text)
    }
}

impl std::error::Error for AmqpError {}

/// The spec's name for a reply code, as the prefix of RabbitMQ's reply texts.
pub fn code_name(code: u16) -> &'static str {
    match code {
        reply_code::CONTENT_TOO_LARGE => "CONTENT_TOO_LARGE",
        reply_code::NO_ROUTE => "NO_ROUTE",
        reply_code::NO_CONSUMERS => "NO_CONSUMERS",
        reply_code::CONNECTION_FORCED => "CONNECTION_FORCED",
        reply_code::INVALID_PATH => "INVALID_PATH",
        reply_code::ACCESS_REFUSED => "ACCESS_REFUSED",
        reply_code::NOT_FOUND => "NOT_FOUND",
        reply_code::RESOURCE_LOCKED => "RESOURCE_LOCKED",
        reply_code::PRECONDITION_FAILED => "PRECONDITION_FAILED",
        reply_code::FRAME_ERROR => "FRAME_ERROR",
        reply_code::SYNTAX_ERROR => "SYNTAX_ERROR",
        reply_code::COMMAND_INVALID => "COMMAND_INVALID",
        reply_code::CHANNEL_ERROR => "CHANNEL_ERROR",
        reply_code::UNEXPECTED_FRAME => "UNEXPECTED_FRAME",
        reply_code::RESOURCE_ERROR => "RESOURCE_ERROR",
        reply_code::NOT_ALLOWED => "NOT_ALLOWED",
        reply_code::NOT_IMPLEMENTED => "NOT_IMPLEMENTED",
        _ => "INTERNAL_ERROR",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_follows_the_code() {
        assert!(!AmqpError::precondition_failed("x").is_hard());
        assert!(!AmqpError::access_refused("x").is_hard());
        assert!(AmqpError::channel_error("x").is_hard());
        assert!(AmqpError::frame_error("x").is_hard());
        assert!(AmqpError::unexpected_frame("x").is_hard());
        assert!(AmqpError::not_allowed("x").is_hard());
        assert!(AmqpError::not_implemented("x").is_hard());
    }

    #[test]
    fn a_long_text_is_cut_to_a_shortstr_on_a_character_boundary() {
        let fits = "x".repeat(MAX_REPLY_TEXT);
        assert_eq!(AmqpError::new(404, fits.clone()).text, fits);

        let ascii = AmqpError::new(404, "y".repeat(MAX_REPLY_TEXT + 1)).text;
        assert_eq!(ascii, format!("{}...", "y".repeat(252)));

        // 'é' is two octets, the first at octet 1: octet 252 is in the middle of one.
        let text = format!("x{}", "é".repeat(200));
        let cut = AmqpError::new(404, text.clone()).text;
        assert!(cut.len() <= MAX_REPLY_TEXT, "{} octets", cut.len());
        assert!(cut.ends_with("é..."));
        assert!(text.starts_with(cut.trim_end_matches("...")));
    }

    #[test]
    fn first_failing_method_is_kept() {
        let e = AmqpError::access_refused("no").on(50, 10).on(60, 40);
        assert_eq!((e.class_id, e.method_id), (50, 10));
        assert_eq!(e.text, "ACCESS_REFUSED - no");
    }
}
