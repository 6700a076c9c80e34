//! Phantom: the messaging core and its gRPC API server.

pub mod actors;
pub mod client;
pub mod config;
pub mod core;
pub mod grpc;
pub mod metrics;
pub mod net;
pub mod profile;
pub mod runtime;
pub mod sched;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod wire;

/// Generated protobuf types and tonic services for `phantom.v1`.
#[allow(missing_docs, clippy::all)]
pub mod pb {
    tonic::include_proto!("phantom.v1");

    pub use crate::wire::GetContactsResponse;

    /// The encoded file descriptor set, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("phantom_descriptor");
}
