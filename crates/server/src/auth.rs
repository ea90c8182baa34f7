//! SASL responses (PLAIN and AMQPLAIN) and the user check against the configured users.

use std::net::IpAddr;

use crate::config::UserConfig;

/// The mechanisms offered in connection.start, space separated as the spec wants.
pub const MECHANISMS: &str = "PLAIN AMQPLAIN";

/// A login name and password taken from a connection.start-ok response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    /// Login name.
    pub username: String,
    /// Password.
    pub password: String,
}

/// Why a start-ok response was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthError {
    /// The client picked a mechanism that was not offered.
    UnknownMechanism(String),
    /// The response does not parse for its mechanism.
    Malformed,
    /// No such user, or the password does not match.
    BadCredentials(String),
    /// The user may only log in from a loopback address.
    LoopbackOnly(String),
}

/// Extracts credentials from a SASL response.
///
/// # Errors
/// [`AuthError::UnknownMechanism`] or [`AuthError::Malformed`].
pub fn parse_response(mechanism: &str, response: &[u8]) -> Result<Credentials, AuthError> {
    match mechanism {
        "PLAIN" => parse_plain(response).ok_or(AuthError::Malformed),
        "AMQPLAIN" => parse_amqplain(response).ok_or(AuthError::Malformed),
        other => Err(AuthError::UnknownMechanism(other.to_owned())),
    }
}

/// PLAIN (RFC 4616): `[authzid] NUL authcid NUL passwd`; the authorisation id is ignored.
fn parse_plain(response: &[u8]) -> Option<Credentials> {
    let mut parts = response.split(|&b| b == 0);
    let _authzid = parts.next()?;
    let username = std::str::from_utf8(parts.next()?).ok()?;
    let password = std::str::from_utf8(parts.next()?).ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some(Credentials {
        username: username.to_owned(),
        password: password.to_owned(),
    })
}

/// AMQPLAIN: a field table without its length prefix holding `LOGIN` and `PASSWORD` long
/// strings (as rabbitmq-c and RabbitMQ's `rabbit_auth_mechanism_amqplain` encode it).
fn parse_amqplain(mut bytes: &[u8]) -> Option<Credentials> {
    let mut username = None;
    let mut password = None;
    while !bytes.is_empty() {
        let (&name_len, rest) = bytes.split_first()?;
        let (name, rest) = rest.split_at_checked(usize::from(name_len))?;
        let (&tag, rest) = rest.split_first()?;
        if tag != b'S' {
            return None;
        }
        let (len, rest) = rest.split_first_chunk::<4>()?;
        let len = usize::try_from(u32::from_be_bytes(*len)).ok()?;
        let (value, rest) = rest.split_at_checked(len)?;
        let value = std::str::from_utf8(value).ok()?.to_owned();
        match name {
            b"LOGIN" => username = Some(value),
            b"PASSWORD" => password = Some(value),
            _ => {}
        }
        bytes = rest;
    }
    Some(Credentials {
        username: username?,
        password: password?,
    })
}

/// Checks credentials against the configured users, and the loopback rule against `peer`.
///
/// # Errors
/// [`AuthError::BadCredentials`] or [`AuthError::LoopbackOnly`].
pub fn authenticate<'a>(
    users: &'a [UserConfig],
    credentials: &Credentials,
    peer: IpAddr,
) -> Result<&'a UserConfig, AuthError> {
    let user = users
        .iter()
        .find(|u| u.name == credentials.username && u.password == credentials.password)
        .ok_or_else(|| AuthError::BadCredentials(credentials.username.clone()))?;
    if user.loopback_only && !peer.to_canonical().is_loopback() {
        return Err(AuthError::LoopbackOnly(user.name.clone()));
    }
    Ok(user)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn amqplain(entries: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, v) in entries {
            out.push(u8::try_from(k.len()).unwrap());
            out.extend_from_slice(k.as_bytes());
            out.push(b'S');
            out.extend_from_slice(&u32::try_from(v.len()).unwrap().to_be_bytes());
            out.extend_from_slice(v.as_bytes());
        }
        out
    }

    fn creds(u: &str, p: &str) -> Credentials {
        Credentials {
            username: u.into(),
            password: p.into(),
        }
    }

    fn users() -> Vec<UserConfig> {
        crate::config::Config::parse(
            "[[users]]\nname = \"guest\"\npassword = \"guest\"\nloopback_only = true\n\
             [[users]]\nname = \"app\"\npassword = \"pw\"",
        )
        .unwrap()
        .users
    }

    #[test]
    fn plain_parses_with_and_without_authzid() {
        assert_eq!(
            parse_response("PLAIN", b"\0guest\0guest"),
            Ok(creds("guest", "guest"))
        );
        assert_eq!(
            parse_response("PLAIN", b"admin\0bob\0pw"),
            Ok(creds("bob", "pw"))
        );
        assert_eq!(parse_response("PLAIN", b"\0a\0"), Ok(creds("a", "")));
    }

    #[test]
    fn plain_rejects_malformed() {
        assert_eq!(parse_response("PLAIN", b"guest"), Err(AuthError::Malformed));
        assert_eq!(
            parse_response("PLAIN", b"\0guest"),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            parse_response("PLAIN", b"\0a\0b\0c"),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            parse_response("PLAIN", b"\0\xff\0b"),
            Err(AuthError::Malformed)
        );
    }

    #[test]
    fn amqplain_parses_login_and_password() {
        let response = amqplain(&[("LOGIN", "guest"), ("PASSWORD", "secret")]);
        assert_eq!(
            parse_response("AMQPLAIN", &response),
            Ok(creds("guest", "secret"))
        );
        let reordered = amqplain(&[("PASSWORD", "p"), ("X", "y"), ("LOGIN", "u")]);
        assert_eq!(parse_response("AMQPLAIN", &reordered), Ok(creds("u", "p")));
    }

    #[test]
    fn amqplain_rejects_malformed() {
        let missing = amqplain(&[("LOGIN", "guest")]);
        assert_eq!(
            parse_response("AMQPLAIN", &missing),
            Err(AuthError::Malformed)
        );
        let mut truncated = amqplain(&[("LOGIN", "guest"), ("PASSWORD", "secret")]);
        truncated.truncate(truncated.len() - 2);
        assert_eq!(
            parse_response("AMQPLAIN", &truncated),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            parse_response("AMQPLAIN", b"\x05LOGINt\x01"),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            parse_response("AMQPLAIN", b"\x09LOGIN"),
            Err(AuthError::Malformed)
        );
    }

    #[test]
    fn unknown_mechanism_is_refused() {
        assert_eq!(
            parse_response("EXTERNAL", b""),
            Err(AuthError::UnknownMechanism("EXTERNAL".into()))
        );
    }

    #[test]
    fn guest_only_from_loopback() {
        let users = users();
        let guest = creds("guest", "guest");
        assert!(authenticate(&users, &guest, "127.0.0.1".parse().unwrap()).is_ok());
        assert!(authenticate(&users, &guest, "::1".parse().unwrap()).is_ok());
        assert!(authenticate(&users, &guest, "::ffff:127.0.0.1".parse().unwrap()).is_ok());
        assert_eq!(
            authenticate(&users, &guest, "10.1.2.3".parse().unwrap()),
            Err(AuthError::LoopbackOnly("guest".into()))
        );
        assert!(authenticate(&users, &creds("app", "pw"), "10.1.2.3".parse().unwrap()).is_ok());
    }

    #[test]
    fn wrong_password_or_user_is_refused() {
        let users = users();
        let peer = "127.0.0.1".parse().unwrap();
        assert_eq!(
            authenticate(&users, &creds("guest", "nope"), peer),
            Err(AuthError::BadCredentials("guest".into()))
        );
        assert_eq!(
            authenticate(&users, &creds("nobody", "guest"), peer),
            Err(AuthError::BadCredentials("nobody".into()))
        );
    }
}
