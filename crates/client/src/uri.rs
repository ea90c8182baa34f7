//! Connection settings and their `amqp://` URI form.

use std::str::FromStr;
use std::time::Duration;

use crate::error::{Error, Result};

/// Default AMQP port.
pub const DEFAULT_PORT: u16 = 5672;

/// Everything needed to open (and re-open) a connection.
///
/// Build it from a URI with [`ConnectionOptions::from_uri`] (or `str::parse`),
/// then adjust fields; or start from [`ConnectionOptions::default`], which points
/// at `amqp://guest:guest@localhost:5672/`.
#[derive(Clone, Debug, PartialEq)]
pub struct ConnectionOptions {
    /// Host name or IP address of the broker.
    pub host: String,
    /// TCP port of the broker.
    pub port: u16,
    /// User name for PLAIN authentication.
    pub username: String,
    /// Password for PLAIN authentication.
    pub password: String,
    /// Virtual host to open.
    pub vhost: String,
    /// Requested heartbeat interval in seconds (0 disables heartbeats unless the
    /// broker asks for them). Negotiated as the Java client does: the smaller
    /// non-zero value of client and broker.
    pub heartbeat: u16,
    /// Requested maximum frame size in bytes (0 accepts the broker's value).
    pub frame_max: u32,
    /// Requested maximum channel number (0 accepts the broker's value).
    pub channel_max: u16,
    /// How long to wait for the TCP connection and the AMQP handshake.
    pub connect_timeout: Duration,
    /// Connection name shown by the broker (client property `connection_name`).
    pub connection_name: Option<String>,
    /// Automatic recovery after a lost connection; `None` (the default) disables it.
    pub recovery: Option<RecoveryConfig>,
}

impl Default for ConnectionOptions {
    fn default() -> Self {
        Self {
            host: "localhost".into(),
            port: DEFAULT_PORT,
            username: "guest".into(),
            password: "guest".into(),
            vhost: "/".into(),
            heartbeat: 60,
            frame_max: 131_072,
            channel_max: 2047,
            connect_timeout: Duration::from_secs(30),
            connection_name: None,
            recovery: None,
        }
    }
}

/// Settings of automatic connection recovery.
///
/// After the connection is lost (socket error, missed heartbeats, or a
/// `connection.close` the application did not ask for), the client reconnects
/// with exponential backoff, re-opens every open channel (with its qos and
/// confirm mode), re-declares the exchanges, queues and bindings it declared,
/// and restarts its consumers, as the RabbitMQ Java client does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoveryConfig {
    /// Delay before the first reconnection attempt.
    pub initial_delay: Duration,
    /// Upper bound of the doubling delay between attempts.
    pub max_delay: Duration,
    /// Give up after this many failed attempts (`None`: never give up).
    pub max_attempts: Option<u32>,
}

impl Default for RecoveryConfig {
    fn default() -> Self {
        Self {
            initial_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
            max_attempts: None,
        }
    }
}

impl ConnectionOptions {
    /// Parses `amqp://user:pass@host:port/vhost?heartbeat=10&frame_max=131072`.
    ///
    /// User, password and vhost are percent-decoded (`%2f` is `/`). Missing
    /// parts take the defaults of [`ConnectionOptions::default`]; an empty or
    /// missing path means vhost `/`. Query parameters: `heartbeat` (seconds),
    /// `frame_max` (bytes), `channel_max`, `connection_timeout` (milliseconds)
    /// and `connection_name`; unknown parameters are ignored.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidUri`] when the scheme is not `amqp`, the port or a query
    /// value is not a number, or a percent escape is malformed.
    pub fn from_uri(uri: &str) -> Result<Self> {
        let invalid = |what: &str| Error::InvalidUri(format!("{what} in {uri:?}"));
        let rest = uri
            .strip_prefix("amqp://")
            .ok_or_else(|| invalid("scheme must be amqp:// (amqps is not supported)"))?;
        let mut options = ConnectionOptions::default();

        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        if let Some(userinfo) = userinfo {
            let (user, pass) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            options.username = percent_decode(user).ok_or_else(|| invalid("bad user name"))?;
            if let Some(pass) = pass {
                options.password = percent_decode(pass).ok_or_else(|| invalid("bad password"))?;
            }
        }
        let (host, port) = split_host_port(hostport).ok_or_else(|| invalid("bad host or port"))?;
        if !host.is_empty() {
            options.host = percent_decode(host).ok_or_else(|| invalid("bad host"))?;
        }
        if let Some(port) = port {
            options.port = port;
        }
        if let Some(path) = path.filter(|p| !p.is_empty()) {
            if path.contains('/') {
                return Err(invalid("vhost must be one path segment (write / as %2f)"));
            }
            options.vhost = percent_decode(path).ok_or_else(|| invalid("bad vhost"))?;
        }
        for pair in query.into_iter().flat_map(|q| q.split('&')) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(value).ok_or_else(|| invalid("bad query value"))?;
            let number = |v: &str| {
                v.parse::<u64>()
                    .map_err(|_| invalid(&format!("{key} must be a number")))
            };
            match key {
                "heartbeat" => {
                    options.heartbeat = u16::try_from(number(&value)?)
                        .map_err(|_| invalid("heartbeat out of range"))?
                }
                "frame_max" => {
                    options.frame_max = u32::try_from(number(&value)?)
                        .map_err(|_| invalid("frame_max out of range"))?
                }
                "channel_max" => {
                    options.channel_max = u16::try_from(number(&value)?)
                        .map_err(|_| invalid("channel_max out of range"))?
                }
                "connection_timeout" => {
                    options.connect_timeout = Duration::from_millis(number(&value)?)
                }
                "connection_name" => options.connection_name = Some(value),
                _ => {}
            }
        }
        Ok(options)
    }

    /// Enables automatic recovery with the given settings.
    pub fn with_recovery(mut self, recovery: RecoveryConfig) -> Self {
        self.recovery = Some(recovery);
        self
    }
}

impl FromStr for ConnectionOptions {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::from_uri(s)
    }
}

/// Splits `host`, `host:port`, `[v6]` or `[v6]:port`; `None` on a bad port.
fn split_host_port(s: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let end = rest.find(']')?;
        let after = &rest[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return None,
        };
        (&rest[..end], port)
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    let port = match port {
        Some("") | None => None,
        Some(p) => Some(p.parse().ok()?),
    };
    Some((host, port))
}

/// Decodes `%XX` escapes; `None` on a malformed escape or invalid UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            // Two hex digits (from_str_radix alone would take a sign: "%+f").
            let hex = s.get(i + 1..i + 3)?;
            if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_uri_is_parsed_and_decoded() {
        let o = ConnectionOptions::from_uri(
            "amqp://us%40er:p%3Ass@broker.example:5673/my%2fvhost?heartbeat=10&frame_max=4096",
        )
        .unwrap();
        assert_eq!(o.username, "us@er");
        assert_eq!(o.password, "p:ss");
        assert_eq!(o.host, "broker.example");
        assert_eq!(o.port, 5673);
        assert_eq!(o.vhost, "my/vhost");
        assert_eq!(o.heartbeat, 10);
        assert_eq!(o.frame_max, 4096);
    }

    #[test]
    fn defaults_fill_missing_parts() {
        for uri in [
            "amqp://",
            "amqp://localhost",
            "amqp://localhost/",
            "amqp://localhost:5672",
        ] {
            let o = ConnectionOptions::from_uri(uri).unwrap();
            assert_eq!(o, ConnectionOptions::default(), "{uri}");
        }
        let o = ConnectionOptions::from_uri("amqp://127.0.0.1/%2F").unwrap();
        assert_eq!(o.vhost, "/");
    }

    #[test]
    fn ipv6_hosts_are_supported() {
        let o = ConnectionOptions::from_uri("amqp://[::1]:5999/v").unwrap();
        assert_eq!(
            (o.host.as_str(), o.port, o.vhost.as_str()),
            ("::1", 5999, "v")
        );
    }

    #[test]
    fn bad_uris_are_rejected() {
        for uri in [
            "http://localhost",
            "amqps://localhost",
            "amqp://localhost:notaport",
            "amqp://localhost/a/b",
            "amqp://localhost/%zz",
            "amqp://localhost/%+f",
            "amqp://us%-1er@localhost",
            "amqp://localhost?heartbeat=abc",
            "amqp://localhost?heartbeat=70000",
        ] {
            assert!(
                matches!(ConnectionOptions::from_uri(uri), Err(Error::InvalidUri(_))),
                "{uri}"
            );
        }
    }
}
