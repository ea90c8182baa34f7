//! A blocking client of the management API, mapping HTTP outcomes to exit codes.

use std::time::Duration;

use base64::Engine;
use serde_json::Value;

/// A failed command: its message and exit code.
#[derive(Debug)]
pub struct Failure {
    /// One line for stderr.
    pub message: String,
    /// The process exit code (see the crate docs).
    pub exit_code: u8,
}

impl Failure {
    /// Bad input on our side (a file, a JSON argument): exit 1.
    pub fn input(message: String) -> Self {
        Self {
            message,
            exit_code: 1,
        }
    }

    /// Something named does not exist: exit 5.
    pub fn not_found(message: &str) -> Self {
        Self {
            message: message.to_owned(),
            exit_code: 5,
        }
    }
}

/// Percent-encodes one path segment ("/" becomes %2F, as RabbitMQ tools do).
pub fn encode_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The API at one base URL with one user's credentials.
pub struct Client {
    base: String,
    auth: String,
    agent: ureq::Agent,
}

impl Client {
    /// A client; nothing is sent yet.
    pub fn new(base: &str, user: &str, password: &str) -> Self {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        Self {
            base: base.trim_end_matches('/').to_owned(),
            auth: format!("Basic {token}"),
            agent: ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(30))
                .build(),
        }
    }

    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        reason: Option<&str>,
    ) -> Result<(u16, Value), Failure> {
        let mut request = self
            .agent
            .request(method, &format!("{}{path}", self.base))
            .set("authorization", &self.auth);
        if let Some(reason) = reason {
            request = request.set("x-reason", reason);
        }
        let result = match body {
            Some(body) => request.send_json(body),
            None => request.call(),
        };
        match result {
            Ok(response) => Ok((response.status(), read_json(response))),
            Err(ureq::Error::Status(code, response)) => Ok((code, read_json(response))),
            Err(ureq::Error::Transport(e)) => Err(Failure {
                message: format!("cannot reach the management API at {}: {e}", self.base),
                exit_code: 3,
            }),
        }
    }

    fn checked(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        reason: Option<&str>,
    ) -> Result<(u16, Value), Failure> {
        let (status, value) = self.call(method, path, body, reason)?;
        if (200..300).contains(&status) {
            return Ok((status, value));
        }
        let reason = value["reason"]
            .as_str()
            .map_or_else(|| value.to_string(), str::to_owned);
        let exit_code = match status {
            401 | 403 => 4,
            404 => 5,
            _ => 1,
        };
        Err(Failure {
            message: format!("{method} {path}: {status}: {reason}"),
            exit_code,
        })
    }

    /// GET, success required.
    pub fn get(&self, path: &str) -> Result<Value, Failure> {
        Ok(self.checked("GET", path, None, None)?.1)
    }

    /// GET, returning the status too (for health checks, where 503 is an answer).
    pub fn get_status(&self, path: &str) -> Result<(u16, Value), Failure> {
        self.call("GET", path, None, None)
    }

    /// PUT with a JSON body; the success status (201 created, 204 existed).
    pub fn put(&self, path: &str, body: &Value) -> Result<u16, Failure> {
        Ok(self.checked("PUT", path, Some(body), None)?.0)
    }

    /// POST with a JSON body; the response JSON.
    pub fn post(&self, path: &str, body: &Value) -> Result<Value, Failure> {
        Ok(self.checked("POST", path, Some(body), None)?.1)
    }

    /// DELETE.
    pub fn delete(&self, path: &str) -> Result<(), Failure> {
        self.checked("DELETE", path, None, None).map(drop)
    }

    /// DELETE with an `X-Reason` header.
    pub fn delete_with_reason(&self, path: &str, reason: &str) -> Result<(), Failure> {
        self.checked("DELETE", path, None, Some(reason)).map(drop)
    }
}

fn read_json(response: ureq::Response) -> Value {
    response.into_json().unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_percent_encoded() {
        assert_eq!(encode_segment("/"), "%2F");
        assert_eq!(encode_segment("a b->c"), "a%20b-%3Ec");
        assert_eq!(encode_segment("orders.created"), "orders.created");
    }
}
