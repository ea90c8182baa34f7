//! `[management.tls]`: the management API over HTTPS.
//!
//! The certificate is loaded, checked and reloaded on SIGHUP by the shared [`crate::tls`]
//! acceptor, as for AMQPS. Handshakes run in tasks of their own (bounded by the acceptor's
//! timeout), so a slow or silent client never holds up the others; finished ones are handed to
//! `axum::serve` through [`TlsListener`].

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::serve::{Listener, ListenerExt, TapIo};
use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tracing::{debug, warn};

use crate::tls::{Acceptor, TlsConfig, Verify};

/// `[management.tls]`: the keys of `[tls]` without `listen` (the address is
/// `management.listen`). HTTPS is on only when `certfile` is set; then plain HTTP is not served.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ManagementTlsConfig {
    /// The server's certificate chain (PEM), leaf first.
    pub certfile: Option<PathBuf>,
    /// The server's private key (PEM).
    pub keyfile: Option<PathBuf>,
    /// CA certificates (PEM) that client certificates must chain to.
    pub cacertfile: Option<PathBuf>,
    /// Client-certificate verification.
    pub verify: Verify,
    /// With `verify_peer`: refuse clients that send no certificate.
    pub fail_if_no_peer_cert: bool,
}

impl ManagementTlsConfig {
    /// Whether HTTPS is configured.
    pub fn enabled(&self) -> bool {
        self.certfile.is_some()
    }

    /// The same keys as a `[tls]` table, for the shared loader (its `listen` is not used).
    fn to_tls_config(&self) -> TlsConfig {
        TlsConfig {
            certfile: self.certfile.clone(),
            keyfile: self.keyfile.clone(),
            cacertfile: self.cacertfile.clone(),
            verify: self.verify,
            fail_if_no_peer_cert: self.fail_if_no_peer_cert,
            ..TlsConfig::default()
        }
    }

    /// Checks the keys that only make sense together, as `[tls]` does.
    ///
    /// # Errors
    /// The first inconsistent key.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.to_tls_config().validate().context("management.tls")
    }

    /// Loads the certificate (`main` hands the acceptor to the SIGHUP handler).
    ///
    /// # Errors
    /// A file cannot be loaded.
    pub fn acceptor(&self) -> anyhow::Result<Arc<Acceptor>> {
        Acceptor::from_config(&self.to_tls_config()).context("management.tls")
    }
}

/// Handshaken connections waiting for `axum::serve`.
const READY_BACKLOG: usize = 64;

/// The management listener over TLS, as `axum::serve` takes it.
pub struct TlsListener {
    local: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
}

/// What [`listener`] returns.
pub type TapTlsListener = TapIo<TlsListener, fn(&mut TlsStream<TcpStream>)>;

/// The TLS listener for `axum::serve`: accepts on `listener` and does the handshakes with
/// `acceptor` until it is dropped. The `tap_io` wrapper sets `TCP_NODELAY` and is also what
/// gives handlers the peer address (`ConnectInfo<SocketAddr>`) on a listener of our own.
///
/// # Errors
/// The listener's address cannot be read.
pub fn listener(listener: TcpListener, acceptor: Arc<Acceptor>) -> io::Result<TapTlsListener> {
    let local = listener.local_addr()?;
    let (sender, ready) = mpsc::channel(READY_BACKLOG);
    tokio::spawn(accept_loop(listener, acceptor, sender));
    let set_nodelay: fn(&mut TlsStream<TcpStream>) = |tls| {
        let _ = tls.get_ref().0.set_nodelay(true);
    };
    Ok(TlsListener { local, ready }.tap_io(set_nodelay))
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: Arc<Acceptor>,
    ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    loop {
        let accepted = tokio::select! {
            // `axum::serve` stopped (shutdown): stop accepting.
            () = ready.closed() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(error = %e, "management accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = Arc::clone(&acceptor);
        let ready = ready.clone();
        tokio::spawn(async move {
            match acceptor.accept(stream).await {
                Ok(tls) => {
                    let _ = ready.send((tls, peer)).await;
                }
                // Plain HTTP, a client that does not trust the certificate, a port scan.
                Err(e) => debug!(%peer, error = %e, "management TLS handshake failed"),
            }
        });
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            // The accept loop holds a sender until this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn off_by_default_and_keys_are_read() {
        assert!(!Config::default().management.tls.enabled());
        let config = Config::parse(
            "[management.tls]\ncertfile = \"c.pem\"\nkeyfile = \"k.pem\"\n\
             cacertfile = \"ca.pem\"\nverify = \"verify_peer\"\nfail_if_no_peer_cert = true",
        )
        .unwrap();
        assert!(config.management.tls.enabled());
        assert!(config.management.tls.fail_if_no_peer_cert);
    }

    #[test]
    fn inconsistent_or_unknown_keys_are_refused() {
        let err = |text: &str| format!("{:#}", Config::parse(text).unwrap_err());
        let message = err("[management.tls]\ncertfile = \"c.pem\"");
        assert!(message.contains("management.tls"), "{message}");
        assert!(message.contains("keyfile"), "{message}");
        assert!(err("[management.tls]\nlisten = \"127.0.0.1:15671\"").contains("listen"));
    }
}
