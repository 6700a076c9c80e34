//! Serving TLS with rustls: certificates from PEM files, mutual TLS with a client CA, and
//! reloading both without dropping connections (each new connection uses the newest config;
//! established ones keep theirs).

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::config::TlsConfig;

/// How long a client gets to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for the server to take them.
const ACCEPTED_QUEUE: usize = 64;

fn read_certs(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            format!(
                "{key}: {}: cannot read PEM certificates: {e}",
                path.display()
            )
        })?;
    if certs.is_empty() {
        return Err(format!(
            "{key}: {}: no PEM certificate found",
            path.display()
        ));
    }
    Ok(certs)
}

/// Builds a rustls server config from `[tls]`. Errors name the key and the file.
pub fn server_config(cfg: &TlsConfig) -> Result<Arc<ServerConfig>, String> {
    let (Some(cert), Some(key)) = (&cfg.cert, &cfg.key) else {
        return Err("tls.cert and tls.key must be set together".into());
    };
    let chain = read_certs("tls.cert", cert)?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        format!(
            "tls.key: {}: cannot read a PEM private key: {e}",
            key.display()
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?;
    let builder = match &cfg.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in read_certs("tls.client_ca", ca)? {
                roots
                    .add(c)
                    .map_err(|e| format!("tls.client_ca: {}: {e}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("tls.client_ca: {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key_der)
        .map_err(|e| format!("tls.key: does not match tls.cert: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The TLS config in force, swapped on reload.
pub struct TlsReloader {
    files: TlsConfig,
    current: RwLock<Arc<ServerConfig>>,
}

impl TlsReloader {
    /// Loads `[tls]`.
    pub fn new(files: TlsConfig) -> Result<Arc<Self>, String> {
        let current = RwLock::new(server_config(&files)?);
        Ok(Arc::new(TlsReloader { files, current }))
    }

    /// Re-reads the files. On error the old config stays in force.
    pub fn reload(&self) -> Result<(), String> {
        let fresh = server_config(&self.files)?;
        match self.current.write() {
            Ok(mut c) => *c = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
        Ok(())
    }

    fn acceptor(&self) -> TlsAcceptor {
        let config = match self.current.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        TlsAcceptor::from(config)
    }
}

/// Accepts TCP connections and runs each handshake in its own task (a slow or hostile client
/// never holds up the others); yields the connections that completed it. A failed handshake
/// (plaintext client, unknown CA, no or expired client certificate) is logged and dropped.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<TlsReloader>,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<TlsStream<TcpStream>>> {
    let (tx, rx) = mpsc::channel(ACCEPTED_QUEUE);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                // The server stopped taking connections.
                _ = tx.closed() => return,
                accepted = crate::net::accept(&listener, "tls") => accepted,
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = tls.acceptor();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => tracing::info!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
