//! TLS with rustls: the AMQPS listener (`[tls]`, default port 5671, off unless a certificate
//! is configured), client-certificate verification, and reloading the certificate and key on
//! SIGHUP. The management listener builds its acceptor with [`Acceptor::from_config`] too.
//!
//! A reload builds a fresh rustls config from the files; connections accepted afterwards use
//! it, open ones keep the session they negotiated. A reload that fails (missing file, bad
//! key) is logged and the previous certificate stays in use.

mod config;

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::rustls::crypto::{ring, CryptoProvider};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, info_span, warn, Instrument};

use crate::connection::{self, ServerContext};

pub use self::config::{TlsConfig, Verify};

/// How long a client has for the TLS handshake (within RabbitMQ's 10 s handshake timeout).
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// Builds the rustls server config from the files `config` names.
///
/// # Errors
/// A file cannot be read or parsed, the key does not match, or no certificate is set; the
/// error names the file and config key.
pub fn server_config(config: &TlsConfig) -> anyhow::Result<Arc<ServerConfig>> {
    let (Some(certfile), Some(keyfile)) = (&config.certfile, &config.keyfile) else {
        anyhow::bail!("tls.certfile and tls.keyfile are required for TLS");
    };
    let certs = read_certs(certfile).context("tls.certfile")?;
    let key = PrivateKeyDer::from_pem_file(keyfile).with_context(|| {
        format!(
            "tls.keyfile: reading a PEM private key from {}",
            keyfile.display()
        )
    })?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("setting up TLS protocol versions")?;
    let builder = match (&config.cacertfile, config.verify) {
        (Some(cacertfile), Verify::VerifyPeer) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(cacertfile).context("tls.cacertfile")? {
                roots.add(cert).with_context(|| {
                    format!(
                        "tls.cacertfile: bad CA certificate in {}",
                        cacertfile.display()
                    )
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
            let verifier = if config.fail_if_no_peer_cert {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .context("tls.cacertfile: building the client certificate verifier")?,
            )
        }
        _ => builder.with_no_client_auth(),
    };
    let server = builder
        .with_single_cert(certs, key)
        .context("tls.certfile / tls.keyfile: the key does not match the certificate")?;
    Ok(Arc::new(server))
}

fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading PEM certificates from {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing PEM certificates in {}", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("no certificate in {}", path.display());
    }
    Ok(certs)
}

/// A TLS acceptor whose certificate can be reloaded from its files.
pub struct Acceptor {
    config: TlsConfig,
    current: RwLock<TlsAcceptor>,
}

impl Acceptor {
    /// Loads the certificate and key named in `config`.
    ///
    /// # Errors
    /// See [`server_config`].
    pub fn from_config(config: &TlsConfig) -> anyhow::Result<Arc<Self>> {
        let acceptor = TlsAcceptor::from(server_config(config)?);
        Ok(Arc::new(Self {
            config: config.clone(),
            current: RwLock::new(acceptor),
        }))
    }

    /// The acceptor for the next connection.
    pub fn current(&self) -> TlsAcceptor {
        match self.current.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Re-reads the files; on failure the previous certificate stays.
    ///
    /// # Errors
    /// See [`server_config`].
    pub fn reload(&self) -> anyhow::Result<()> {
        let fresh = TlsAcceptor::from(server_config(&self.config)?);
        match self.current.write() {
            Ok(mut guard) => *guard = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
        Ok(())
    }

    /// The TLS handshake on an accepted socket, bounded by [`TLS_HANDSHAKE_TIMEOUT`].
    ///
    /// # Errors
    /// The handshake failed or timed out.
    pub async fn accept(&self, stream: TcpStream) -> io::Result<TlsStream<TcpStream>> {
        tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, self.current().accept(stream))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timeout"))?
    }
}

/// A listener's certificate that SIGHUP reloads, with the listener's name for the log.
pub type Reloadable = (&'static str, Arc<Acceptor>);

/// Reloads every certificate in `certificates` (AMQPS and management), logging one line per
/// certificate, or that there is none. Called by the one SIGHUP handler
/// (`apply::reload_on_sighup`), after the config file.
pub fn reload_certificates(certificates: &[Reloadable]) {
    if certificates.is_empty() {
        info!("SIGHUP: no TLS certificate to reload");
    }
    for (listener, acceptor) in certificates {
        match acceptor.reload() {
            Ok(()) => info!(listener, "SIGHUP: TLS certificate reloaded"),
            Err(e) => error!(
                listener,
                error = format!("{e:#}"),
                "SIGHUP: TLS certificate reload failed, keeping the previous one"
            ),
        }
    }
}

/// Binds the AMQPS listener.
///
/// # Errors
/// The address cannot be bound; the error names it.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the AMQPS listener on {addr} (config key `tls.listen`)"))
}

/// How long AMQPS connections get to finish their close handshake at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The running AMQPS listener.
pub struct Amqps {
    /// Ends once the connections it accepted are closed (bounded), so `main` can wait for it.
    pub task: JoinHandle<()>,
    /// Its certificate, for the SIGHUP handler.
    pub acceptor: Arc<Acceptor>,
}

/// Starts AMQPS when `[tls]` gives a certificate: loads it, binds the listener and serves
/// until shutdown.
///
/// # Errors
/// The certificate or key cannot be loaded, or the address cannot be bound.
pub async fn start(ctx: &Arc<ServerContext>) -> anyhow::Result<Option<Amqps>> {
    let config = &ctx.config.tls;
    if !config.enabled() {
        return Ok(None);
    }
    let acceptor = Acceptor::from_config(config)?;
    let listener = bind(config.listen).await?;
    let addr = listener
        .local_addr()
        .context("reading the AMQPS listener's local address")?;
    // Not the word the AMQP listener's line uses: harnesses match that one.
    info!(amqps_addr = %addr, "serving AMQPS");
    let task = tokio::spawn(accept_loop(
        Arc::clone(ctx),
        listener,
        Arc::clone(&acceptor),
    ));
    Ok(Some(Amqps { task, acceptor }))
}

async fn accept_loop(ctx: Arc<ServerContext>, listener: TcpListener, acceptor: Arc<Acceptor>) {
    let tracker = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = ctx.shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(error = %e, "AMQPS accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Our half of the connection name, read before the handshake.
        let local = match stream.local_addr() {
            Ok(local) => local,
            Err(e) => {
                debug!(%peer, error = %e, "AMQPS connection gone before it was served");
                continue;
            }
        };
        let id = ctx.next_id();
        let span = info_span!("connection", id, %peer, tls = true);
        let ctx = Arc::clone(&ctx);
        let acceptor = Arc::clone(&acceptor);
        tracker.spawn(
            async move {
                let _ = stream.set_nodelay(true);
                match acceptor.accept(stream).await {
                    Ok(tls) => connection::serve_tls(ctx, tls, peer, local, id).await,
                    // A client without the right certificate, or not speaking TLS.
                    Err(e) => info!(error = %e, "TLS handshake failed"),
                }
            }
            .instrument(span),
        );
    }
    drop(listener);
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        warn!(
            remaining = tracker.len(),
            "AMQPS connections still open after the shutdown grace period"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_files_are_named_with_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let config = TlsConfig {
            certfile: Some(dir.path().join("none.pem")),
            keyfile: Some(dir.path().join("none-key.pem")),
            ..TlsConfig::default()
        };
        let message = format!("{:#}", server_config(&config).unwrap_err());
        assert!(message.contains("tls.certfile"), "{message}");
        assert!(message.contains("none.pem"), "{message}");
    }

    #[test]
    fn a_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not pem at all\n").unwrap();
        let config = TlsConfig {
            certfile: Some(empty.clone()),
            keyfile: Some(empty),
            ..TlsConfig::default()
        };
        let message = format!("{:#}", server_config(&config).unwrap_err());
        assert!(message.contains("no certificate"), "{message}");
    }
}
