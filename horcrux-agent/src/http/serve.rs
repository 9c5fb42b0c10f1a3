//! The server loop: holds at most `max_connections` connections, so a flood cannot
//! take the descriptors the collectors need; at the cap, a new connection replaces
//! the oldest one that has not yet sent a whole request head (a slowloris client
//! cannot lock real clients out), or is closed if every connection is in use.
//! TLS (rustls; optional client certificates) must complete, and every request head
//! arrive, within [`HEADER_READ_TIMEOUT`]. Certificates are re-read on SIGHUP and
//! when their files change.

use std::{
    future::Future,
    path::Path,
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime},
};

use axum::{Router, body::Body, extract::Request};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tower::ServiceExt;

use super::security::ConnectionTls;
use crate::config::TlsFiles;

/// A client must send a whole request head (and a TLS client its handshake) within this.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often certificate files are checked for changes.
const CERTIFICATE_CHECK: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no {what} in it")]
    Missing {
        path: std::path::PathBuf,
        what: &'static str,
    },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client CA {path}: {message}")]
    ClientCa {
        path: std::path::PathBuf,
        message: String,
    },
    #[error(transparent)]
    Secret(#[from] super::security::SecretError),
}

/// The current TLS configuration, rebuilt from the files when they change.
pub struct TlsReloader {
    files: TlsFiles,
    config: RwLock<Arc<rustls::ServerConfig>>,
    loaded_at: RwLock<Option<SystemTime>>,
}

impl TlsReloader {
    pub fn new(files: TlsFiles) -> Result<Self, TlsError> {
        let config = build(&files)?;
        Ok(Self {
            loaded_at: RwLock::new(newest_change(&files)),
            files,
            config: RwLock::new(Arc::new(config)),
        })
    }

    fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(Arc::clone(
            &self
                .config
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        ))
    }

    /// Re-reads the files; a broken new set keeps the old configuration.
    pub fn reload(&self) {
        match build(&self.files) {
            Ok(config) => {
                *self
                    .config
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(config);
                *self
                    .loaded_at
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) =
                    newest_change(&self.files);
                tracing::info!("TLS certificate reloaded");
            }
            Err(error) => tracing::error!("TLS certificate not reloaded: {error}"),
        }
    }

    /// Reloads when a file changed since the last load.
    pub async fn watch(self: Arc<Self>) {
        loop {
            tokio::time::sleep(CERTIFICATE_CHECK).await;
            let changed = newest_change(&self.files)
                != *self
                    .loaded_at
                    .read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            if changed {
                self.reload();
            }
        }
    }
}

fn newest_change(files: &TlsFiles) -> Option<SystemTime> {
    [
        Some(&files.cert),
        Some(&files.key),
        files.client_ca.as_ref(),
    ]
    .into_iter()
    .flatten()
    .filter_map(|path| std::fs::metadata(path).and_then(|m| m.modified()).ok())
    .max()
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn build(files: &TlsFiles) -> Result<rustls::ServerConfig, TlsError> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    super::security::check_private(&files.key)?;
    let certificates: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&read(&files.cert)?)
            .filter_map(Result::ok)
            .collect();
    if certificates.is_empty() {
        return Err(TlsError::Missing {
            path: files.cert.clone(),
            what: "PEM certificate",
        });
    }
    let key = PrivateKeyDer::from_pem_slice(&read(&files.key)?).map_err(|_| TlsError::Missing {
        path: files.key.clone(),
        what: "PEM private key",
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for certificate in CertificateDer::pem_slice_iter(&read(path)?).filter_map(Result::ok) {
                roots.add(certificate).map_err(|error| TlsError::ClientCa {
                    path: path.clone(),
                    message: error.to_string(),
                })?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|error| TlsError::ClientCa {
                path: path.clone(),
                message: error.to_string(),
            })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certificates, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The open connections: whether each has sent a request head yet, and how to end it.
#[derive(Default)]
struct Connections {
    next_id: u64,
    /// id → (has sent a whole request head, the task serving it). Ids grow with
    /// time, so the first idle one is the oldest.
    open: std::collections::BTreeMap<u64, (Arc<AtomicBool>, tokio::task::AbortHandle)>,
}

impl Connections {
    /// Makes room for one more: ends the oldest connection still waiting for its
    /// first request head. False when every connection is in use.
    fn make_room(&mut self, max: usize) -> bool {
        self.open.retain(|_, (_, task)| !task.is_finished());
        if self.open.len() < max {
            return true;
        }
        let idle = self
            .open
            .iter()
            .find(|(_, (productive, _))| !productive.load(Ordering::Relaxed))
            .map(|(id, _)| *id);
        match idle.and_then(|id| self.open.remove(&id)) {
            Some((_, task)) => {
                task.abort();
                true
            }
            None => false,
        }
    }
}

/// Serves `app` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<TlsReloader>>,
    max_connections: usize,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let mut connections = Connections::default();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => return Ok(()),
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of descriptors or the like: let it pass rather than spin.
                tracing::warn!("accepting a connection: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Over the cap with every connection in use: closed at once.
        if !connections.make_room(max_connections) {
            continue;
        }
        let app = app.clone();
        let acceptor = tls.as_ref().map(|tls| tls.acceptor());
        let productive = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&productive);
        let task = tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            match acceptor {
                None => serve_connection(TokioIo::new(stream), app, false, flag).await,
                Some(acceptor) => {
                    if let Ok(Ok(stream)) =
                        tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    {
                        serve_connection(TokioIo::new(stream), app, true, flag).await;
                    }
                }
            }
        });
        connections.next_id += 1;
        connections
            .open
            .insert(connections.next_id, (productive, task.abort_handle()));
    }
}

async fn serve_connection<I>(io: I, app: Router, tls: bool, productive: Arc<AtomicBool>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        productive.store(true, Ordering::Relaxed);
        request.extensions_mut().insert(ConnectionTls(tls));
        app.clone().oneshot(request.map(Body::new))
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(64 * 1024)
        .serve_connection(io, service)
        .with_upgrades();
    let _ = connection.await;
}
