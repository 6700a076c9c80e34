//! tonic services: authenticate, decode, validate, forward to an actor, map the domain error to
//! a gRPC status. Nothing else lives here.

pub mod admin;
pub mod auth;
pub mod codec;
pub mod connect;
pub mod controller;
pub mod events;
pub mod layer;
pub mod limits;
pub mod status;

use std::future::Future;
use std::time::Instant;

use actix::dev::ToEnvelope;
use actix::prelude::*;
use tonic::{Response, Status};
use tracing::Instrument;

use crate::actors::mailbox_error;
use crate::core::{CoreError, CoreResult};
use crate::store::Written;

/// What an actor answers: a result, or a store round-trip it started for the caller to await
/// (`messaging::Pending`), so that the writer answers the caller's task directly.
pub trait Answer: Send + 'static {
    /// The value the caller gets.
    type Output;
    /// The result, once there is one.
    fn settle(self) -> impl Future<Output = CoreResult<Self::Output>> + Send;
}

impl<T: Send + 'static> Answer for CoreResult<T> {
    type Output = T;
    fn settle(self) -> impl Future<Output = CoreResult<T>> + Send {
        std::future::ready(self)
    }
}

impl<T: Send + 'static> Answer for crate::actors::messaging::Pending<T> {
    type Output = T;
    fn settle(self) -> impl Future<Output = CoreResult<T>> + Send {
        self
    }
}

/// Counts a call in actor `A`'s in-flight gauge until the guard drops: however the call
/// ends, cancellation included.
fn in_flight<A: 'static>() -> impl Drop {
    let depth = crate::metrics::actor_in_flight::<A>();
    depth.inc();
    scopeguard::guard(depth, |d| d.dec())
}

/// Sends a message to an actor, waits for its answer, and flattens mailbox failures into the
/// domain error.
pub async fn ask<A, M>(addr: &Addr<A>, msg: M) -> CoreResult<<M::Result as Answer>::Output>
where
    A: Actor + Handler<M>,
    A::Context: ToEnvelope<A, M>,
    M: actix::Message + Send + 'static,
    M::Result: Answer,
{
    let _queued = in_flight::<A>();
    addr.send(msg).await.map_err(mailbox_error)?.settle().await
}

/// Sends an actor a message that carries its own reply (`store::Reply`), then waits for the
/// `answer`: the caller's task is woken once, by the store when the change is durable,
/// instead of once by the actor handing back a pending write and again by the store.
/// The mailbox bound holds as for `ask`: when it is full the call waits for room.
pub async fn tell<A, M, T>(addr: &Addr<A>, msg: M, answer: Written<T>) -> CoreResult<T>
where
    A: Actor + Handler<M>,
    A::Context: ToEnvelope<A, M>,
    M: actix::Message<Result = ()> + Send + 'static,
{
    let _queued = in_flight::<A>();
    match addr.try_send(msg) {
        Ok(()) => {}
        Err(SendError::Full(msg)) => addr.send(msg).await.map_err(mailbox_error)?,
        Err(SendError::Closed(_)) => return Err(mailbox_error(MailboxError::Closed)),
    }
    answer.await
}

/// Runs one call's (or one Connect command's) work inside a span and logs its outcome: debug
/// when it succeeds, warn when it fails, error when it is our fault.
///
/// Combinators, not an `async fn`: an `async fn` keeps `work` as its argument and again as
/// what it awaits, and each layer above doubles it again (SendMessage's whole future was
/// 3.9 KB, copied as it was built and boxed: counted with callgrind).
pub fn logged<T>(
    method: &'static str,
    account: Option<uuid::Uuid>,
    work: impl Future<Output = CoreResult<T>>,
) -> impl Future<Output = CoreResult<T>> {
    // A debug span: at the default level it is never built (building one formats its fields
    // on every call, a measurable share of a fast read); the outcome line names the call itself.
    let span = tracing::debug_span!("rpc");
    let started = Instant::now();
    futures::FutureExt::map(work.instrument(span), move |result| {
        let micros = started.elapsed().as_micros() as u64;
        let account = account.map(tracing::field::display);
        match &result {
            Ok(_) => tracing::debug!(method, account, code = "OK", micros, "call finished"),
            Err(e @ CoreError::Internal(_)) => {
                tracing::error!(method, account, error = %e, micros, "call failed")
            }
            Err(e) => tracing::warn!(method, account, error = %e, micros, "call failed"),
        }
        result
    })
}

/// `logged`, then the domain error mapped to a status.
pub fn observe<T>(
    method: &'static str,
    account: Option<uuid::Uuid>,
    work: impl Future<Output = CoreResult<T>>,
) -> impl Future<Output = Result<Response<T>, Status>> {
    futures::FutureExt::map(logged(method, account, work), |r| {
        r.map(Response::new).map_err(Status::from)
    })
}
