//! SASL responses (PLAIN and AMQPLAIN), password hashes in RabbitMQ's format, and the user
//! check against the configured users.
//!
//! Passwords are kept as RabbitMQ keeps them, never as plain text: `password_hash` is
//! base64(4-byte random salt ++ H(salt ++ password)), with H named by `hashing_algorithm`
//! (`rabbit_password_hashing_sha256`, RabbitMQ's default, or `rabbit_password_hashing_sha512`),
//! so hashes from a RabbitMQ definitions export work here unchanged and the other way round.
//! An empty hash is a user that cannot log in with a password (as in RabbitMQ).

use std::fmt;

use base64::Engine;
use sha2::{Digest, Sha256, Sha512};

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

/// RabbitMQ's password hashing modules.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HashingAlgorithm {
    /// `rabbit_password_hashing_sha256` (RabbitMQ's default).
    #[default]
    Sha256,
    /// `rabbit_password_hashing_sha512`.
    Sha512,
}

impl HashingAlgorithm {
    /// Parses RabbitMQ's module name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "rabbit_password_hashing_sha256" => Some(Self::Sha256),
            "rabbit_password_hashing_sha512" => Some(Self::Sha512),
            _ => None,
        }
    }

    /// RabbitMQ's module name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sha256 => "rabbit_password_hashing_sha256",
            Self::Sha512 => "rabbit_password_hashing_sha512",
        }
    }

    fn digest(self, salt: &[u8], password: &str) -> Vec<u8> {
        match self {
            Self::Sha256 => {
                let mut h = Sha256::new();
                h.update(salt);
                h.update(password.as_bytes());
                h.finalize().to_vec()
            }
            Self::Sha512 => {
                let mut h = Sha512::new();
                h.update(salt);
                h.update(password.as_bytes());
                h.finalize().to_vec()
            }
        }
    }
}

/// A salted password hash in RabbitMQ's format. Its `Debug` never shows the hash.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash {
    algorithm: HashingAlgorithm,
    /// salt (4 bytes) ++ digest; empty for a user without a password.
    bytes: Vec<u8>,
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PasswordHash({})", self.algorithm.name())
    }
}

impl PasswordHash {
    /// Hashes `password` with a fresh random salt (SHA-256, RabbitMQ's default).
    ///
    /// # Errors
    /// The operating system's random source failed.
    pub fn new(password: &str) -> Result<Self, getrandom::Error> {
        let mut salt = [0u8; 4];
        getrandom::getrandom(&mut salt)?;
        Ok(Self::with_salt(HashingAlgorithm::Sha256, salt, password))
    }

    /// Hashes `password` with `salt`.
    pub fn with_salt(algorithm: HashingAlgorithm, salt: [u8; 4], password: &str) -> Self {
        let mut bytes = salt.to_vec();
        bytes.extend_from_slice(&algorithm.digest(&salt, password));
        Self { algorithm, bytes }
    }

    /// Reads a base64 hash as found in RabbitMQ's definitions (`password_hash` with
    /// `hashing_algorithm`); an empty string is a user without a password.
    ///
    /// # Errors
    /// Not base64, or the wrong length for the algorithm; the text says which.
    pub fn parse(algorithm: HashingAlgorithm, base64: &str) -> Result<Self, String> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(base64.trim())
            .map_err(|e| format!("password_hash is not base64: {e}"))?;
        let expected = 4 + algorithm.digest(&[], "").len();
        if !bytes.is_empty() && bytes.len() != expected {
            return Err(format!(
                "password_hash has {} bytes, {} expects {expected} (4 bytes of salt and the digest)",
                bytes.len(),
                algorithm.name()
            ));
        }
        Ok(Self { algorithm, bytes })
    }

    /// Whether `password` is the one hashed (constant time in the digest comparison).
    pub fn verify(&self, password: &str) -> bool {
        let Some((salt, digest)) = self.bytes.split_first_chunk::<4>() else {
            return false;
        };
        let computed = self.algorithm.digest(salt, password);
        computed.len() == digest.len()
            && computed
                .iter()
                .zip(digest)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }

    /// The hash in base64, as RabbitMQ writes `password_hash`.
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.bytes)
    }

    /// The algorithm, for `hashing_algorithm`.
    pub fn algorithm(&self) -> HashingAlgorithm {
        self.algorithm
    }
}

/// A user who logged in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthUser {
    /// Login name.
    pub name: String,
    /// RabbitMQ tags.
    pub tags: Vec<String>,
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
    fn password_hashes_verify_in_rabbitmq_format() {
        let hash = PasswordHash::with_salt(HashingAlgorithm::Sha256, [1, 2, 3, 4], "secret");
        let raw = base64::engine::general_purpose::STANDARD
            .decode(hash.to_base64())
            .unwrap();
        assert_eq!(&raw[..4], &[1, 2, 3, 4]);
        assert_eq!(
            &raw[4..],
            Sha256::digest(b"\x01\x02\x03\x04secret").as_slice()
        );
        assert!(hash.verify("secret") && !hash.verify("Secret"));
        let sha512 = PasswordHash::with_salt(HashingAlgorithm::Sha512, [9; 4], "p");
        let parsed = PasswordHash::parse(HashingAlgorithm::Sha512, &sha512.to_base64()).unwrap();
        assert!(parsed.verify("p"));
        assert!(PasswordHash::parse(HashingAlgorithm::Sha256, &sha512.to_base64()).is_err());
        let random = PasswordHash::new("p").unwrap();
        assert!(random.verify("p"));
        assert_ne!(
            random,
            PasswordHash::new("p").unwrap(),
            "a fresh salt each time"
        );
        let locked = PasswordHash::parse(HashingAlgorithm::Sha256, "").unwrap();
        assert!(!locked.verify("") && !locked.verify("p"));
        assert_eq!(
            format!("{hash:?}"),
            "PasswordHash(rabbit_password_hashing_sha256)"
        );
    }
}
