//! Client-side helpers shared by `phantomctl`, the tests and the benchmark: connecting to a
//! server address (TCP or Unix socket) and attaching a bearer token.

use std::str::FromStr;

use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint, Uri};

/// Opens a channel to `host:port`, `http://host:port` or `unix:/path`.
pub async fn connect(server: &str) -> Result<Channel, String> {
    if let Some(path) = server.strip_prefix("unix:") {
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
    let uri = if server.contains("://") {
        server.to_string()
    } else {
        format!("http://{server}")
    };
    Endpoint::from_str(&uri)
        .map_err(|e| format!("bad server address {server:?}: {e}"))?
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
