//! `SubscriberActor`: one per `SubscribeToEvents` call. It registers with the bus, replays the
//! account's log after `after_seq`, then forwards live events into a bounded channel whose
//! receiver is the gRPC response stream. When the client goes away the channel closes, the
//! actor stops and unregisters, and presence follows.

use std::sync::Arc;

use actix::prelude::*;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::bus::{Close, EventBusActor, Register, Unregister};
use crate::core::events::new_event;
use crate::core::{AccountId, CoreResult};
use crate::pb::{self, event::Kind};
use crate::store::Store;

/// Durable events read from the log per store round-trip while replaying.
const REPLAY_CHUNK: usize = 512;

/// Why a stream was ended by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Its queue was full when a durable event arrived; it must resume with `after_seq`.
    Overflow,
    /// The server is shutting down.
    Shutdown,
    /// The token that opened it was revoked.
    Revoked,
}

/// The receiving end of a subscription: events, and why it was ended if the server ended it.
pub struct Subscription {
    /// Events in order: `SubscriptionStarted`, replay, then live.
    pub events: mpsc::Receiver<pb::Event>,
    /// Resolves when the server ends the stream.
    pub closed: oneshot::Receiver<CloseReason>,
}

/// Everything needed to open subscriptions.
#[derive(Clone)]
pub struct Subscriptions {
    /// Where subscriber actors run.
    pub arbiter: actix::ArbiterHandle,
    /// The event bus.
    pub bus: Addr<EventBusActor>,
    /// The log, for replay.
    pub store: Arc<dyn Store>,
    /// Queue bound per stream.
    pub buffer: usize,
}

impl Subscriptions {
    /// Starts a subscriber actor for `account` and returns the stream's receiving end.
    pub fn open(
        &self,
        account: AccountId,
        token_id: Option<Uuid>,
        after_seq: Option<u64>,
    ) -> Subscription {
        let (output, events) = mpsc::channel(self.buffer);
        let (close, closed) = oneshot::channel();
        let (bus, store, buffer) = (self.bus.clone(), self.store.clone(), self.buffer);
        SubscriberActor::start_in_arbiter(&self.arbiter, move |_| SubscriberActor {
            account,
            token_id,
            after_seq,
            store,
            bus,
            buffer,
            output,
            close: Some(close),
            id: None,
            last_seq: 0,
        });
        Subscription { events, closed }
    }
}

/// One open event stream.
pub struct SubscriberActor {
    account: AccountId,
    token_id: Option<Uuid>,
    after_seq: Option<u64>,
    store: Arc<dyn Store>,
    bus: Addr<EventBusActor>,
    buffer: usize,
    output: mpsc::Sender<pb::Event>,
    close: Option<oneshot::Sender<CloseReason>>,
    id: Option<u64>,
    /// Highest durable seq handed to the output.
    last_seq: u64,
}

impl SubscriberActor {
    fn end(&mut self, reason: CloseReason, ctx: &mut Context<Self>) {
        if let Some(close) = self.close.take() {
            let _ = close.send(reason);
        }
        ctx.stop();
    }
}

impl Actor for SubscriberActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // The client went away: stop, which unregisters.
        let output = self.output.clone();
        ctx.spawn(
            async move { output.closed().await }
                .into_actor(self)
                .map(|_, _, ctx| ctx.stop()),
        );

        // Register first and buffer live events, then replay, then drain skipping seen seqs:
        // no gap and no duplicate.
        let (live, live_rx) = mpsc::channel(self.buffer);
        let register = self.bus.send(Register {
            account: self.account,
            token_id: self.token_id,
            live,
            actor: ctx.address(),
        });
        let (store, output, account, after_seq) = (
            self.store.clone(),
            self.output.clone(),
            self.account,
            self.after_seq,
        );
        ctx.spawn(
            async move {
                let id = register.await.ok();
                let last = catch_up(store, output, account, after_seq).await;
                (id, last)
            }
            .into_actor(self)
            .map(move |(id, last), act, ctx| {
                act.id = id;
                match (id, last) {
                    (Some(_), Ok(Some(last))) => {
                        act.last_seq = last;
                        ctx.add_stream(tokio_stream::wrappers::ReceiverStream::new(live_rx));
                    }
                    (_, Err(e)) => {
                        tracing::warn!(account = %act.account, error = %e, "event replay failed");
                        act.end(CloseReason::Shutdown, ctx);
                    }
                    // The client left during replay, or the bus is gone.
                    _ => ctx.stop(),
                }
            }),
        );
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        if let Some(id) = self.id {
            self.bus.do_send(Unregister {
                account: self.account,
                id,
            });
        }
    }
}

/// Sends `SubscriptionStarted` and replays the log; returns the last seq sent, or `None` if the
/// client went away.
async fn catch_up(
    store: Arc<dyn Store>,
    output: mpsc::Sender<pb::Event>,
    account: AccountId,
    after_seq: Option<u64>,
) -> CoreResult<Option<u64>> {
    let bounds = store.log_bounds(account).await?;
    let (resumed, mut cursor) = match after_seq {
        None => (false, bounds.head),
        // Nothing lost: the log holds everything right after `after`.
        Some(after)
            if after <= bounds.head && (bounds.oldest == 0 || after + 1 >= bounds.oldest) =>
        {
            (true, after)
        }
        // Pruned past `after` (or `after` is from another life of the data): replay what is kept.
        Some(_) => (false, bounds.oldest.saturating_sub(1)),
    };
    let started = new_event(Kind::SubscriptionStarted(pb::SubscriptionStarted {
        head_seq: bounds.head,
        resumed,
        oldest_seq: bounds.oldest,
    }));
    if output.send(started).await.is_err() {
        return Ok(None);
    }
    if after_seq.is_some() {
        // Read past the head seen at the start, so that a long replay leans on the log rather
        // than on the bounded live buffer.
        loop {
            let chunk = store.read_events(account, cursor, REPLAY_CHUNK).await?;
            let full = chunk.len() == REPLAY_CHUNK;
            for ev in chunk {
                cursor = ev.seq;
                if output.send(ev).await.is_err() {
                    return Ok(None);
                }
            }
            if !full {
                break;
            }
        }
    }
    Ok(Some(cursor))
}

impl StreamHandler<pb::Event> for SubscriberActor {
    fn handle(&mut self, ev: pb::Event, ctx: &mut Context<Self>) {
        let durable = ev.seq != 0;
        if durable {
            if ev.seq <= self.last_seq {
                return; // already replayed
            }
            if ev.seq != self.last_seq + 1 {
                // Never hand out a gap: make the client resume instead.
                self.end(CloseReason::Overflow, ctx);
                return;
            }
        }
        let seq = ev.seq;
        match self.output.try_send(ev) {
            Ok(()) if durable => self.last_seq = seq,
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) if durable => {
                self.end(CloseReason::Overflow, ctx)
            }
            // Ephemeral events are dropped for a full stream rather than block anyone.
            Err(mpsc::error::TrySendError::Full(_)) => {}
            Err(mpsc::error::TrySendError::Closed(_)) => ctx.stop(),
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        // The bus dropped this stream's live feed, which it does only when it could not keep it.
        self.end(CloseReason::Overflow, ctx);
    }
}

impl Handler<Close> for SubscriberActor {
    type Result = ();
    fn handle(&mut self, msg: Close, ctx: &mut Context<Self>) {
        self.end(msg.0, ctx);
    }
}
