//! TLS on both faces (`tls_cert`, `tls_key`), with rustls and its ring provider.
//!
//! The certificate chain and key are read at start-up (a file that cannot be read
//! or parsed, or a key that is not the certificate's, stops start-up naming the
//! setting) and again at each SIGHUP: new connections then use the new pair, and
//! connections already open keep theirs. A reload that fails is logged at `WARN`
//! and changes nothing: the daemon goes on serving the pair it had, so a bad file
//! written during a renewal never takes the daemon off the air.
//!
//! Each connection's handshake runs in the connection's own task, never in an
//! accept loop, and is bounded by `header_read_timeout` (a stalled handshake is
//! closed and counted as `oncelyd_connections_closed_total{reason="header_timeout"}`),
//! or by [`DRAIN_IDLE`] once the listener is closing. A failed handshake (a client
//! that does not trust the certificate, a plain-text request on the TLS port) is
//! logged at `DEBUG` and closes only its connection.

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::connection::{DRAIN_IDLE, Phase};
use super::metrics::{Closed, Metrics};
use crate::Error;
use crate::config::TlsFiles;

/// The configurations of the two faces, from one certificate chain and key.
struct Configs {
    /// HTTP: offers `http/1.1` by ALPN (the only HTTP the daemon speaks).
    http: Arc<ServerConfig>,
    /// RESP: no ALPN.
    resp: Arc<ServerConfig>,
}

/// The TLS files and the configurations last read from them, shared by both
/// listeners and the SIGHUP task. Cheap to clone.
#[derive(Clone)]
pub struct Tls {
    files: Arc<TlsFiles>,
    current: Arc<RwLock<Arc<Configs>>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("cert", &self.files.cert)
            .field("key", &self.files.key)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Reads and checks the files.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming `tls_cert` or `tls_key` and the file, with what is
    /// wrong with it.
    pub fn load(files: &TlsFiles) -> Result<Self, Error> {
        let configs = read(files)?;
        Ok(Self {
            files: Arc::new(files.clone()),
            current: Arc::new(RwLock::new(Arc::new(configs))),
        })
    }

    /// Reads the files again and, if they make a usable pair, serves new
    /// connections with it; else keeps the pair in use.
    ///
    /// # Errors
    ///
    /// As [`Self::load`]; nothing changed then.
    pub fn reload(&self) -> Result<(), Error> {
        let configs = Arc::new(read(&self.files)?);
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = configs;
        Ok(())
    }

    fn configs(&self) -> Arc<Configs> {
        Arc::clone(
            &self
                .current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// The acceptor for a new HTTP connection: the pair in use now.
    pub(crate) fn http(&self) -> TlsAcceptor {
        TlsAcceptor::from(Arc::clone(&self.configs().http))
    }

    /// The acceptor for a new RESP connection.
    pub(crate) fn resp(&self) -> TlsAcceptor {
        TlsAcceptor::from(Arc::clone(&self.configs().resp))
    }

    /// Reloads the files at every SIGHUP, from now on (the handler is installed
    /// before this returns, so a SIGHUP sent once the daemon is up never ends it).
    /// Each reload is logged: `INFO` when the new pair is in use, `WARN` with the
    /// reason when the old one is kept.
    pub fn reload_on_sighup(&self) {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let mut hangups = match signal(SignalKind::hangup()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGHUP: the TLS files will not be reloaded");
                    return;
                }
            };
            let tls = self.clone();
            tokio::spawn(async move {
                while hangups.recv().await.is_some() {
                    tracing::info!("SIGHUP received: reloading the TLS certificate and key");
                    let t = tls.clone();
                    let reloaded = tokio::task::spawn_blocking(move || t.reload()).await;
                    match reloaded {
                        Ok(Ok(())) => tracing::info!(
                            tls_cert = %tls.files.cert.display(),
                            tls_key = %tls.files.key.display(),
                            "TLS certificate reloaded: new connections use it"
                        ),
                        Ok(Err(e)) => tracing::warn!(
                            error = %e,
                            "cannot reload the TLS certificate and key; keeping the ones in use"
                        ),
                        Err(e) => tracing::warn!(
                            error = %e,
                            "reloading the TLS files failed; keeping the ones in use"
                        ),
                    }
                }
            });
        }
    }
}

/// Reads the chain and the key and builds both faces' configurations.
fn read(files: &TlsFiles) -> Result<Configs, Error> {
    let bad = |setting: &'static str, path: &Path, why: String| Error::Config {
        setting,
        reason: format!("{}: {why}", path.display()),
    };
    let chain = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| bad("tls_cert", &files.cert, pem_error(&e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("tls_cert", &files.cert, pem_error(&e)))?;
    if chain.is_empty() {
        return Err(bad(
            "tls_cert",
            &files.cert,
            "no PEM certificate (-----BEGIN CERTIFICATE-----) in the file".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| bad("tls_key", &files.key, pem_error(&e)))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let build = |alpn: Vec<Vec<u8>>| {
        let mut config = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| bad("tls_cert", &files.cert, e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| {
                bad(
                    "tls_key",
                    &files.key,
                    format!(
                        "cannot serve it with the certificate chain {}: {e}",
                        files.cert.display()
                    ),
                )
            })?;
        config.alpn_protocols = alpn;
        Ok::<_, Error>(Arc::new(config))
    };
    Ok(Configs {
        http: build(vec![b"http/1.1".to_vec()])?,
        resp: build(Vec::new())?,
    })
}

/// A PEM reading error in words (the file's own name is added by the caller).
fn pem_error(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error as Pem;
    match e {
        Pem::NoItemsFound => {
            "no PEM private key (PKCS#8 \"PRIVATE KEY\", RSA or EC) in the file".into()
        }
        Pem::Io(io) => format!("cannot read it: {io}"),
        other => format!("not a valid PEM file: {other}"),
    }
}

/// The TLS handshake of an accepted connection, in its own task: bounded by
/// `limit` (the header timeout) and, once the listener is closing, by
/// [`DRAIN_IDLE`] from then. `None` when it failed or ran out of time, which is
/// logged at `DEBUG` (and a timeout counted); the caller then drops the
/// connection.
pub(crate) async fn handshake(
    acceptor: TlsAcceptor,
    stream: TcpStream,
    limit: Duration,
    phase: &mut watch::Receiver<Phase>,
    metrics: &Metrics,
) -> Option<TlsStream<TcpStream>> {
    let peer = stream.peer_addr().ok();
    let mut deadline = Instant::now() + limit;
    let mut closing = phase.borrow().closing();
    if closing {
        deadline = deadline.min(Instant::now() + DRAIN_IDLE);
    }
    let accept = acceptor.accept(stream);
    let mut accept = std::pin::pin!(accept);
    loop {
        tokio::select! {
            done = accept.as_mut() => return match done {
                Ok(stream) => Some(stream),
                Err(e) => {
                    tracing::debug!(peer = ?peer, error = %e, "TLS handshake failed");
                    None
                }
            },
            () = tokio::time::sleep_until(deadline) => {
                metrics.connection_closed(Closed::HeaderTimeout);
                tracing::debug!(peer = ?peer, "TLS handshake not done in time: closing the connection");
                return None;
            }
            changed = phase.changed(), if !closing => {
                let now = if changed.is_ok() { *phase.borrow_and_update() } else { Phase::Abort };
                if now == Phase::Abort {
                    return None;
                }
                if now.closing() {
                    closing = true;
                    deadline = deadline.min(Instant::now() + DRAIN_IDLE);
                }
            }
        }
    }
}
