//! Client-side helpers shared by `phantomctl`, the tests and the benchmark: connecting to a
//! server address (TCP or Unix socket) and attaching a bearer token.

use std::str::FromStr;

use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Uri};

/// TLS settings of a client: PEM files.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    /// CA that signed the server's certificate; set means "speak TLS".
    pub ca: Option<std::path::PathBuf>,
    /// Client certificate, for mutual TLS.
    pub cert: Option<std::path::PathBuf>,
    /// Client key, for mutual TLS.
    pub key: Option<std::path::PathBuf>,
    /// Name to verify the server's certificate against (default: the address's host).
    pub domain: Option<String>,
}

impl TlsFiles {
    fn config(&self) -> Result<Option<ClientTlsConfig>, String> {
        let read = |what: &str, p: &std::path::Path| {
            std::fs::read(p).map_err(|e| format!("{what} {}: {e}", p.display()))
        };
        let Some(ca) = &self.ca else {
            if self.cert.is_some() || self.key.is_some() {
                return Err("--cert and --key need --ca (TLS)".into());
            }
            return Ok(None);
        };
        let mut tls =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read("--ca", ca)?));
        match (&self.cert, &self.key) {
            (Some(c), Some(k)) => {
                tls = tls.identity(Identity::from_pem(read("--cert", c)?, read("--key", k)?));
            }
            (None, None) => {}
            _ => return Err("--cert and --key go together".into()),
        }
        if let Some(d) = &self.domain {
            tls = tls.domain_name(d.clone());
        }
        Ok(Some(tls))
    }
}

/// Opens a channel to `host:port`, `http://host:port` or `unix:/path`.
pub async fn connect(server: &str) -> Result<Channel, String> {
    connect_tls(server, &TlsFiles::default()).await
}

/// Opens a channel, over TLS when `tls.ca` is set (`https://` is implied).
pub async fn connect_tls(server: &str, tls: &TlsFiles) -> Result<Channel, String> {
    let tls_config = tls.config()?;
    if let Some(path) = server.strip_prefix("unix:") {
        if tls_config.is_some() {
            return Err("a Unix socket is local: drop --ca/--cert/--key".into());
        }
        let path = path.to_string();
        // The URI is required by the API but unused: the connector always dials the socket.
        return Endpoint::try_from("http://localhost")
            .map_err(|e| e.to_string())?
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            }))
            .await
            .map_err(|e| format!("cannot connect to {server}: {e}"));
    }
    let scheme = if tls_config.is_some() {
        "https"
    } else {
        "http"
    };
    let uri = if server.contains("://") {
        server.to_string()
    } else {
        format!("{scheme}://{server}")
    };
    let mut endpoint =
        Endpoint::from_str(&uri).map_err(|e| format!("bad server address {server:?}: {e}"))?;
    if let Some(t) = tls_config {
        endpoint = endpoint.tls_config(t).map_err(|e| format!("TLS: {e}"))?;
    }
    endpoint
        .connect()
        .await
        .map_err(|e| format!("cannot connect to {server}: {e}"))
}

/// Adds `authorization: Bearer <token>` to a request.
pub fn with_token<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Ok(v) = MetadataValue::try_from(format!("Bearer {token}")) {
        req.metadata_mut().insert("authorization", v);
    }
    req
}
