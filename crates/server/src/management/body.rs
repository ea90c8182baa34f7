//! Request bodies: [`JsonBody`], the one extractor every endpoint that takes a body uses, so
//! that a body the API cannot read is refused the way RabbitMQ refuses it, with 400 and
//! `{"error": "bad_request", "reason": "..."}` ([`ApiError`]), never with axum's own 415, 422
//! or plain-text 400.

use std::error::Error as _;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::Json;
use bytes::Bytes;
use serde::de::DeserializeOwned;

use super::{ApiError, ApiResult};

/// A JSON object body read as `T`. An empty body reads as `{}`, as RabbitMQ reads it, so a
/// `PUT` without a body declares with the defaults.
///
/// A body that is not a JSON object, or does not fit `T`, is a 400. The content type is not
/// looked at, as in RabbitMQ (`curl -d` sends a form type): what keeps a web page from using
/// a browser's login to the API is the cross-site check in `auth::require`.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> ApiResult<Self> {
        let bytes = Bytes::from_request(request, state).await.map_err(|e| {
            // Over the body limit (axum's default 2 MiB; 20 MiB for a definitions import) or
            // cut short by the peer.
            let error = if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                "payload_too_large"
            } else {
                "bad_request"
            };
            ApiError::new(e.status(), error, e.body_text())
        })?;
        parse(&bytes).map(Self)
    }
}

/// `body` as `T`.
fn parse<T: DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    if body.is_empty() {
        return Json::<T>::from_bytes(b"{}")
            .map(|Json(value)| value)
            .map_err(|e| rejected(&e));
    }
    // Checked first because a struct would also read a JSON array, field by position.
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(ApiError::bad_request(
            "not_json: the body must be a JSON object",
        ));
    }
    Json::<T>::from_bytes(body)
        .map(|Json(value)| value)
        .map_err(|e| rejected(&e))
}

/// RabbitMQ's reason for a body that is not JSON is `not_json`; the parser's words (and, for
/// a value of the wrong type, the field's path) follow it.
fn rejected(rejection: &JsonRejection) -> ApiError {
    let cause = rejection
        .source()
        .map_or_else(|| rejection.body_text(), ToString::to_string);
    match rejection {
        JsonRejection::JsonSyntaxError(_) => ApiError::bad_request(format!("not_json: {cause}")),
        _ => ApiError::bad_request(cause),
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(default)]
    struct Body {
        durable: Option<bool>,
        name: String,
    }

    fn reason(result: ApiResult<Body>) -> String {
        let e = result.expect_err("refused");
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.error, "bad_request");
        e.reason
    }

    #[test]
    fn an_empty_body_reads_as_an_empty_object() {
        assert_eq!(parse::<Body>(b"").unwrap(), Body::default());
    }

    #[test]
    fn a_json_object_is_read() {
        let body = parse::<Body>(br#" {"durable": false, "name": "q"}"#).unwrap();
        assert_eq!(body.durable, Some(false));
        assert_eq!(body.name, "q");
    }

    #[test]
    fn what_is_not_a_json_object_is_not_json() {
        for text in [
            &b"nope"[..],
            b"{\"durable\": true,",
            b"[false, \"q\"]",
            b"5",
            b"{} x",
        ] {
            let reason = reason(parse::<Body>(text));
            assert!(reason.starts_with("not_json"), "{reason}");
        }
    }

    #[test]
    fn a_value_of_the_wrong_type_names_its_field() {
        let reason = reason(parse::<Body>(br#"{"durable": "yes"}"#));
        assert!(reason.starts_with("durable: invalid type"), "{reason}");
    }
}
