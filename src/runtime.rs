//! The async runtime the server runs on, as `server.runtime` says: tokio's multi-thread
//! scheduler with the actors on a thread of their own (`actors::ActorRuntime`), or one actix
//! `System` thread for the network, the gRPC handlers and the actors alike.

use std::future::Future;

use crate::config::RuntimeKind;

/// Runs `f` to completion on the runtime `kind` names. With `SingleThread` the actors that
/// `server::start` makes live on this very thread.
pub fn block_on<F: Future>(kind: RuntimeKind, f: F) -> std::io::Result<F::Output> {
    match kind {
        RuntimeKind::MultiThread => Ok(tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(f)),
        RuntimeKind::SingleThread => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            Ok(actix::System::with_tokio_rt(move || rt).block_on(f))
        }
    }
}
