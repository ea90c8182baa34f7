//! `[tls]`: the AMQPS listener's certificate, key and client-certificate verification, named
//! after RabbitMQ's `ssl_options`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::bail;
use serde::Deserialize;

/// Whether client certificates are checked (RabbitMQ's `ssl_options.verify`).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Verify {
    /// No client certificate is asked for.
    #[default]
    VerifyNone,
    /// A client certificate is asked for and must chain to `cacertfile`.
    VerifyPeer,
}

/// `[tls]`. AMQPS is on only when `certfile` is set.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// Address of the AMQPS listener.
    pub listen: SocketAddr,
    /// The server's certificate chain (PEM), leaf first.
    pub certfile: Option<PathBuf>,
    /// The server's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub keyfile: Option<PathBuf>,
    /// CA certificates (PEM) that client certificates must chain to.
    pub cacertfile: Option<PathBuf>,
    /// Client-certificate verification.
    pub verify: Verify,
    /// With `verify_peer`: refuse clients that send no certificate (otherwise a client
    /// without one is accepted, and one with a bad one refused), as RabbitMQ's option.
    pub fail_if_no_peer_cert: bool,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 5671)),
            certfile: None,
            keyfile: None,
            cacertfile: None,
            verify: Verify::VerifyNone,
            fail_if_no_peer_cert: false,
        }
    }
}

impl TlsConfig {
    /// Whether AMQPS is configured.
    pub fn enabled(&self) -> bool {
        self.certfile.is_some()
    }

    /// Checks the keys that only make sense together.
    ///
    /// # Errors
    /// The first inconsistent key.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.certfile.is_some() != self.keyfile.is_some() {
            bail!("tls.certfile and tls.keyfile must be given together");
        }
        if self.verify == Verify::VerifyPeer && self.cacertfile.is_none() {
            bail!("tls.verify = \"verify_peer\" needs tls.cacertfile");
        }
        if self.fail_if_no_peer_cert && self.verify != Verify::VerifyPeer {
            bail!("tls.fail_if_no_peer_cert needs tls.verify = \"verify_peer\"");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn err(text: &str) -> String {
        format!("{:#}", Config::parse(text).unwrap_err())
    }

    #[test]
    fn off_by_default_and_keys_are_read() {
        assert!(!Config::default().tls.enabled());
        let config = Config::parse(
            "[tls]\nlisten = \"127.0.0.1:5671\"\ncertfile = \"c.pem\"\nkeyfile = \"k.pem\"\n\
             cacertfile = \"ca.pem\"\nverify = \"verify_peer\"\nfail_if_no_peer_cert = true",
        )
        .unwrap();
        assert!(config.tls.enabled());
        assert_eq!(config.tls.verify, super::Verify::VerifyPeer);
        assert!(config.tls.fail_if_no_peer_cert);
    }

    #[test]
    fn inconsistent_keys_are_refused() {
        assert!(err("[tls]\ncertfile = \"c.pem\"").contains("tls.keyfile"));
        assert!(
            err("[tls]\ncertfile = \"c\"\nkeyfile = \"k\"\nverify = \"verify_peer\"")
                .contains("tls.cacertfile")
        );
        assert!(err("[tls]\nfail_if_no_peer_cert = true").contains("verify_peer"));
        assert!(err("[tls]\nverify = \"sometimes\"").contains("verify"));
    }
}
