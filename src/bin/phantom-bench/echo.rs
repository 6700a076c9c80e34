//! The ceiling: a bare tonic echo service (no actors, no storage), served by this same binary
//! in a child process so that it costs what the real server costs in processes and sockets.
//! With `--echo-coalesced` its connections go through the server's own wrapper instead.

use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

#[allow(missing_docs, clippy::all)]
pub mod pb {
    tonic::include_proto!("phantom.bench.v1");
}

use pb::echo_server::{Echo, EchoServer};

struct Service;

#[tonic::async_trait]
impl Echo for Service {
    async fn unary(
        &self,
        req: Request<pb::EchoMessage>,
    ) -> Result<Response<pb::EchoMessage>, Status> {
        Ok(Response::new(req.into_inner()))
    }
}

/// Serves echo on `listen` until killed; prints the bound address first. `coalesced` hands
/// each connection to tonic through the server's own wrapper (`phantom::net::Coalesced`).
pub async fn serve(listen: &str, coalesced: bool) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot bind {listen}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    println!("echo listening on {addr}");
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let server = tonic::transport::Server::builder().add_service(EchoServer::new(Service));
    let served = if coalesced {
        server
            .serve_with_incoming(incoming.map(phantom::net::coalesced))
            .await
    } else {
        server.serve_with_incoming(incoming).await
    };
    served.map_err(|e| e.to_string())
}
