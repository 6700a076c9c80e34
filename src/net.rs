//! Accepting TCP connections for the listeners this crate runs itself (TLS, `/metrics`).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

/// The next connection. A failed accept (out of file descriptors and the like) is logged and
/// retried after a short pause instead of spinning. Cancel-safe, for use in `select!`.
pub async fn accept(listener: &TcpListener, what: &'static str) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(e) => {
                tracing::warn!(listener = what, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
