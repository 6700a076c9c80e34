//! `SubscriberActor`: one per event stream (`SubscribeToEvents`, or `subscribe` on `Connect`).
//! It registers with the bus, replays the account's log after `after_seq`, then forwards live
//! events into a bounded channel whose receiver is the gRPC response stream. When the client
//! goes away the channel closes, the actor stops and unregisters, and presence follows.
//!
//! Backpressure by class: when the output is full, a durable event ends the stream (the client
//! resumes from the last seq it got), while presence and typing wait in the stream's
//! conflating inbox (newest per contact wins), which the response stream reads itself once the
//! actor opens it (`inbox.rs`): they never take room from durable events. A durable event the
//! actor was too busy to take live is re-read from the log, never skipped. Handing a
//! `MessageReceived` to the output makes the message DELIVERED.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::WeakAddr;
use actix::prelude::*;
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::{TaskTracker, task_tracker::TaskTrackerToken};
use uuid::Uuid;

use super::bus::{Close, EventBusActor, Register, Unregister};
use super::inbox::EphemeralInbox;
use super::messaging::{Delivered, MessagingActor};
use crate::core::events::{SharedEvent, new_event};
use crate::core::stats::DeliveryStats;
use crate::core::{AccountId, CoreResult};
use crate::pb::{self, event::Kind};
use crate::store::{Handed, LogRange, Store};

/// Durable events read from the log per store round-trip while replaying.
const REPLAY_CHUNK: usize = 512;
/// Live receipts a stream holds at most: a full batch is reported without waiting for the
/// receipt interval, so the batch stays bounded however fast events arrive.
const RECEIPT_BATCH: usize = REPLAY_CHUNK;
/// Replay chunks whose receipts may be on their way to the store at once.
const RECEIPTS_AHEAD: usize = 2;

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
    /// Durable events in order: `SubscriptionStarted`, replay, then live.
    pub events: mpsc::Receiver<SharedEvent>,
    /// Presence and typing, readable once the stream is live.
    pub inbox: Arc<EphemeralInbox>,
    /// Counts the events taken from the inbox as delivered.
    pub stats: Arc<DeliveryStats>,
    /// Resolves when the server ends the stream.
    pub closed: oneshot::Receiver<CloseReason>,
}

/// Streams holding receipts for the next shared tick. One timer serves every busy stream, so
/// that their deferred reports wake the actors' thread once per interval, not once per stream
/// (BENCHMARKS.md, forty-first session). The first stream to wait starts the tick, when its
/// own interval runs out; those that join meanwhile report with it, a little early.
#[derive(Clone, Default)]
pub struct ReceiptTick(Arc<Mutex<Vec<WeakAddr<SubscriberActor>>>>);

impl ReceiptTick {
    /// Has `stream` report at the tick, which starts `after` from now if none is running. Called
    /// on the subscribers' arbiter, where the tick then runs.
    fn wait(&self, stream: WeakAddr<SubscriberActor>, after: Duration) {
        let mut waiting = self.0.lock().unwrap_or_else(|e| e.into_inner());
        waiting.push(stream);
        if waiting.len() > 1 {
            return;
        }
        let tick = self.clone();
        actix::spawn(async move {
            tokio::time::sleep(after).await;
            let due = std::mem::take(&mut *tick.0.lock().unwrap_or_else(|e| e.into_inner()));
            // A stream gone since reported what it held when it stopped.
            for stream in due.iter().filter_map(WeakAddr::upgrade) {
                stream.do_send(ReportDue);
            }
        });
    }
}

/// From the receipt tick: report what the stream holds.
#[derive(Message)]
#[rtype(result = "()")]
struct ReportDue;

impl Handler<ReportDue> for SubscriberActor {
    type Result = ();
    fn handle(&mut self, _: ReportDue, _: &mut Context<Self>) {
        self.report();
    }
}

/// Everything needed to open subscriptions.
#[derive(Clone)]
pub struct Subscriptions {
    /// Where subscriber actors run.
    pub arbiter: actix::ArbiterHandle,
    /// The event bus.
    pub bus: Addr<EventBusActor>,
    /// Delivery receipts go here.
    pub messaging: Addr<MessagingActor>,
    /// The log, for replay.
    pub store: Arc<dyn Store>,
    /// Queue bound per stream.
    pub buffer: usize,
    /// How long a busy live stream holds its receipts at most (`events.receipt_interval_ms`).
    pub receipt_interval: Duration,
    /// The timer busy streams share for their deferred reports.
    pub receipt_tick: ReceiptTick,
    /// Counters.
    pub stats: Arc<DeliveryStats>,
    /// Counts live streams and receipts being recorded, so that shutdown can wait for them
    /// before it closes the store.
    pub tracker: TaskTracker,
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
        let this = self.clone();
        let alive = self.tracker.token();
        let inbox = Arc::new(EphemeralInbox::default());
        let stream_inbox = inbox.clone();
        SubscriberActor::start_in_arbiter(&self.arbiter, move |_| SubscriberActor {
            account,
            token_id,
            after_seq,
            env: this,
            output,
            close: Some(close),
            id: None,
            last_seq: 0,
            reported: 0,
            inbox,
            live_rx: None,
            behind: Arc::new(AtomicBool::new(false)),
            missed: 0,
            _alive: alive,
            receipts: Vec::new(),
            last_report: None,
            repair: None,
        });
        Subscription {
            events,
            inbox: stream_inbox,
            stats: self.stats.clone(),
            closed,
        }
    }
}

/// One open event stream.
pub struct SubscriberActor {
    account: AccountId,
    token_id: Option<Uuid>,
    after_seq: Option<u64>,
    env: Subscriptions,
    output: mpsc::Sender<SharedEvent>,
    close: Option<oneshot::Sender<CloseReason>>,
    id: Option<u64>,
    /// Highest durable seq handed to the output.
    last_seq: u64,
    /// Every MessageReceived this stream handed out up to this seq has been reported (or was
    /// handed out before the stream began), so a report's stretch of the log starts here.
    reported: u64,
    /// Presence and typing for this stream, conflated; shared with the bus and the response
    /// stream, which reads it once this actor opens it.
    inbox: Arc<EphemeralInbox>,
    /// Set by the bus when it could not hand this stream a live event.
    behind: Arc<AtomicBool>,
    /// The highest seq the bus could not hand over before the first replay was over.
    missed: u64,
    /// Held for as long as the actor lives (see `Subscriptions::tracker`).
    _alive: TaskTrackerToken,
    /// Live durable events, buffered here until the first replay is over.
    live_rx: Option<mpsc::Receiver<SharedEvent>>,
    /// MessageReceived ids handed out after `reported` and not yet reported as delivered.
    receipts: Vec<String>,
    /// When this stream last reported live receipts.
    last_report: Option<Instant>,
    /// While re-reading a gap from the log: the highest live seq seen (and skipped) meanwhile.
    repair: Option<u64>,
}

impl SubscriberActor {
    fn end(&mut self, reason: CloseReason, ctx: &mut Context<Self>) {
        if let Some(close) = self.close.take() {
            if reason == CloseReason::Overflow {
                self.env.stats.slow_disconnects.inc();
            }
            let _ = close.send(reason);
        }
        ctx.stop();
    }

    /// Hands one live durable event to the output (presence and typing come through the
    /// inbox instead).
    fn forward(&mut self, ev: SharedEvent, ctx: &mut Context<Self>) {
        if let Some(seen) = &mut self.repair {
            // The repair reads it from the log.
            *seen = (*seen).max(ev.seq);
            return;
        }
        if ev.seq <= self.last_seq {
            return; // already replayed
        }
        if ev.seq != self.last_seq + 1 {
            // The bus could not hand us some events live: never hand out a gap, fetch it.
            self.start_repair(ev.seq, ctx);
            return;
        }
        let seq = ev.seq;
        let received = received_id(&ev);
        match self.output.try_send(ev) {
            Ok(()) => {
                self.env.stats.delivered.inc();
                self.last_seq = seq;
                if let Some(id) = received {
                    self.receipt(id, ctx);
                }
            }
            Err(mpsc::error::TrySendError::Full(_)) => self.end(CloseReason::Overflow, ctx),
            Err(mpsc::error::TrySendError::Closed(_)) => ctx.stop(),
        }
    }

    /// Re-reads the log after `last_seq` up to at least `seen`, then goes live again. The read
    /// runs detached from this actor so that, if the client leaves meanwhile, the receipts for
    /// what it was handed are still recorded.
    fn start_repair(&mut self, seen: u64, ctx: &mut Context<Self>) {
        self.repair = Some(seen);
        // First what went out live, so that the repair's first chunk can cover the stretch
        // from `reported` on: it holds no MessageReceived that is not reported.
        self.report();
        let replay = self.replay();
        let (from, covered) = (self.last_seq, self.reported);
        let addr = ctx.address();
        actix::spawn(async move {
            let res = replay.catch_up(from, covered).await;
            // If the actor is gone there is nothing left to resume.
            let _ = addr.send(Repaired(res)).await;
        });
    }

    fn repaired(&mut self, res: CoreResult<Option<u64>>, ctx: &mut Context<Self>) {
        let seen = self.repair.take().unwrap_or(0);
        match res {
            Ok(Some(cursor)) => {
                // The repair's chunks reported what it handed out.
                self.last_seq = cursor;
                self.reported = cursor;
                // Events committed after the last read went by while we read.
                if seen > cursor {
                    self.start_repair(seen, ctx);
                }
            }
            Ok(None) => ctx.stop(),
            Err(e) => {
                tracing::warn!(account = %self.account, error = %e, "event repair failed");
                self.end(CloseReason::Shutdown, ctx);
            }
        }
    }

    /// The first replay is over: go live.
    fn replayed(
        &mut self,
        id: Option<u64>,
        last: CoreResult<Option<u64>>,
        ctx: &mut Context<Self>,
    ) {
        self.id = id;
        match (id, last, self.live_rx.take()) {
            (Some(_), Ok(Some(last)), Some(live_rx)) => {
                // The replay reported what it handed out; a fresh stream starts at the head.
                self.last_seq = last;
                self.reported = last;
                ctx.add_stream(tokio_stream::wrappers::ReceiverStream::new(live_rx));
                if self.missed > self.last_seq {
                    self.start_repair(self.missed, ctx);
                }
                self.inbox.open();
            }
            (_, Err(e), _) => {
                tracing::warn!(account = %self.account, error = %e, "event replay failed");
                self.end(CloseReason::Shutdown, ctx);
            }
            // The client left during replay, or the bus is gone.
            _ => ctx.stop(),
        }
    }

    fn replay(&self) -> Replay {
        Replay {
            store: self.env.store.clone(),
            messaging: self.env.messaging.clone(),
            stats: self.env.stats.clone(),
            output: self.output.clone(),
            account: self.account,
            _pending: self.env.tracker.token(),
        }
    }

    /// Notes a message handed to the recipient. A stream that has not reported within the
    /// receipt interval reports once this turn is over; a busier one waits for the receipt
    /// tick, so that a burst's receipts share one store write and one `MessageStateChanged` per
    /// sender instead of one each (BENCHMARKS.md, fortieth session). A full batch goes at once.
    fn receipt(&mut self, id: String, ctx: &mut Context<Self>) {
        self.receipts.push(id);
        if self.receipts.len() >= RECEIPT_BATCH {
            self.report();
            return;
        }
        if self.receipts.len() > 1 {
            return; // a report is due already
        }
        let wait = self.last_report.map_or(Duration::ZERO, |at| {
            (at + self.env.receipt_interval).saturating_duration_since(Instant::now())
        });
        if wait.is_zero() {
            ctx.spawn(actix::fut::ready(()).map(|_, act: &mut Self, _| act.report()));
        } else {
            self.env.receipt_tick.wait(ctx.address().downgrade(), wait);
        }
    }

    /// Reports the messages handed out live since the last report as DELIVERED, with the
    /// stretch of the log this stream handed out unbroken meanwhile (`forward` never skips a
    /// seq), so that the store can move the recipient's watermark instead of writing each
    /// message. Queued for the `MessagingActor` at once (while its mailbox has room), so that
    /// receipts reach the store in the order they were made: one that overtakes an earlier one
    /// moves nothing and writes its entries, which is right but dearer. Waited on in a task
    /// spawned on the arbiter rather than on the actor, so that the receipt is recorded even if
    /// this stream ends right now (and shutdown waits for it).
    fn report(&mut self) {
        if self.receipts.is_empty() {
            return;
        }
        let covers = LogRange {
            after: self.reported,
            through: self.last_seq,
        };
        self.reported = self.last_seq;
        self.last_report = Some(Instant::now());
        let ids = std::mem::take(&mut self.receipts);
        let handed = Handed::Live(Some(covers));
        let mut owed = Owed::record(&self.env.messaging, self.account, ids, handed);
        let pending = self.env.tracker.token();
        actix::spawn(async move {
            let _pending = pending;
            owed.settle().await;
        });
    }
}

/// The message id of a `MessageReceived`.
fn received_id(ev: &pb::Event) -> Option<String> {
    match &ev.kind {
        Some(Kind::MessageReceived(m)) => m.message.as_ref().map(|m| m.message_id.clone()),
        _ => None,
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
        let (live, live_rx) = mpsc::channel(self.env.buffer);
        let register = self.env.bus.send(Register {
            account: self.account,
            token_id: self.token_id,
            live,
            ephemeral: self.inbox.clone(),
            behind: self.behind.clone(),
            actor: ctx.address(),
        });
        self.live_rx = Some(live_rx);
        let replay = self.replay();
        let after_seq = self.after_seq;
        let (addr, bus, account) = (ctx.address(), self.env.bus.clone(), self.account);
        // Detached, like a repair: receipts for what the client was handed are recorded even
        // if it leaves mid-replay.
        actix::spawn(async move {
            let id = register.await.ok();
            let last = match id {
                Some(_) => replay.run(after_seq).await,
                None => Ok(None),
            };
            if addr.send(Replayed { id, last }).await.is_err()
                && let Some(id) = id
            {
                bus.do_send(Unregister { account, id });
            }
        });
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.report();
        if let Some(id) = self.id {
            self.env.bus.do_send(Unregister {
                account: self.account,
                id,
            });
        }
    }
}

/// The catch-up part of a stream, run before live forwarding starts.
struct Replay {
    store: Arc<dyn Store>,
    messaging: Addr<MessagingActor>,
    stats: Arc<DeliveryStats>,
    output: mpsc::Sender<SharedEvent>,
    account: AccountId,
    /// Shutdown waits for a replay's receipts too.
    _pending: TaskTrackerToken,
}

impl Replay {
    /// Sends `SubscriptionStarted` and replays the log; returns the last seq sent, or `None` if
    /// the client went away.
    async fn run(self, after_seq: Option<u64>) -> CoreResult<Option<u64>> {
        let bounds = self.store.log_bounds(self.account).await?;
        let (resumed, cursor) = match after_seq {
            None => (false, bounds.head),
            // Nothing lost: the log holds everything right after `after`.
            Some(after)
                if after <= bounds.head && (bounds.oldest == 0 || after + 1 >= bounds.oldest) =>
            {
                (true, after)
            }
            // Pruned past `after` (or `after` is from another life of the data): replay what is
            // kept.
            Some(_) => (false, bounds.oldest.saturating_sub(1)),
        };
        let started = new_event(Kind::SubscriptionStarted(pb::SubscriptionStarted {
            head_seq: bounds.head,
            resumed,
            oldest_seq: bounds.oldest,
        }));
        if self.output.send(SharedEvent::new(started)).await.is_err() {
            return Ok(None);
        }
        match after_seq {
            None => Ok(Some(cursor)),
            Some(_) => self.catch_up(cursor, cursor).await,
        }
    }

    /// Sends every logged event after `cursor`, reading past the head seen at the start so that
    /// a long replay leans on the log rather than on the bounded live buffer. Returns the last
    /// seq sent, or `None` if the client went away. The stream handed out the seqs after
    /// `covered` up to `cursor` already, every MessageReceived of them reported, so the first
    /// chunk's receipt covers them too.
    ///
    /// Pipelined: the next chunk is read while this one is sent, and the receipts of the last
    /// `RECEIPTS_AHEAD` chunks are recorded while the next one is sent. A replay never has
    /// more than that many chunks of receipts outstanding, so it never outruns what it owes
    /// by more than that.
    async fn catch_up(&self, mut cursor: u64, covered: u64) -> CoreResult<Option<u64>> {
        let read = |after| self.store.read_events(self.account, after, REPLAY_CHUNK);
        let mut next = read(cursor);
        let mut owed: VecDeque<Owed> = VecDeque::with_capacity(RECEIPTS_AHEAD);
        let mut after = covered;
        loop {
            let chunk = (&mut next).await?;
            let full = chunk.len() == REPLAY_CHUNK;
            if let Some(last) = chunk.last().filter(|_| full) {
                next = read(last.seq);
            }
            let mut receipts = Vec::new();
            let mut gone = false;
            for ev in chunk {
                let (seq, id) = (ev.seq, received_id(&ev));
                if self.output.send(SharedEvent::new(ev)).await.is_err() {
                    gone = true;
                    break;
                }
                cursor = seq;
                receipts.extend(id);
                self.stats.delivered.inc();
            }
            // Owed even when the client just left: it may have read them before it went.
            if owed.len() == RECEIPTS_AHEAD
                && let Some(mut oldest) = owed.pop_front()
            {
                oldest.settle().await;
            }
            let covers = LogRange {
                after,
                through: cursor,
            };
            after = cursor;
            owed.push_back(Owed::record(
                &self.messaging,
                self.account,
                receipts,
                Handed::Replay(covers),
            ));
            if gone || !full {
                for mut o in owed {
                    o.settle().await;
                }
                return Ok((!gone).then_some(cursor));
            }
        }
    }
}

/// One chunk's receipts on their way to the `MessagingActor` (queued when made).
struct Owed(Option<Request<MessagingActor, Delivered>>, AccountId);

impl Owed {
    fn record(
        messaging: &Addr<MessagingActor>,
        recipient: AccountId,
        ids: Vec<String>,
        handed: Handed,
    ) -> Self {
        // Sent even without ids: a replay chunk's receipt still tells the store how far the log
        // is delivered (a live report is never empty).
        let request = messaging.send(Delivered {
            recipient,
            ids,
            handed,
        });
        Owed(Some(request), recipient)
    }

    /// Waits until they are recorded.
    async fn settle(&mut self) {
        if let Some(request) = self.0.take() {
            let recipient = self.1;
            let recorded = match request.await.map_err(super::mailbox_error) {
                Ok(pending) => pending.await,
                Err(e) => Err(e),
            };
            if let Err(e) = recorded {
                tracing::warn!(%recipient, error = %e, "could not record delivery");
            }
        }
    }
}

impl StreamHandler<SharedEvent> for SubscriberActor {
    fn handle(&mut self, ev: SharedEvent, ctx: &mut Context<Self>) {
        self.forward(ev, ctx);
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        // The bus let go of this stream's live feed: it is stopping with the server.
        self.end(CloseReason::Shutdown, ctx);
    }
}

/// The first replay finished (or failed), with the bus registration id.
#[derive(Message)]
#[rtype(result = "()")]
struct Replayed {
    id: Option<u64>,
    last: CoreResult<Option<u64>>,
}

impl Handler<Replayed> for SubscriberActor {
    type Result = ();
    fn handle(&mut self, msg: Replayed, ctx: &mut Context<Self>) {
        self.replayed(msg.id, msg.last, ctx);
    }
}

/// From the bus: the live feed was full when durable event `seq` came, so it was not handed
/// over; the stream re-reads it from the log.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Behind(pub u64);

impl Handler<Behind> for SubscriberActor {
    type Result = ();
    fn handle(&mut self, Behind(seq): Behind, ctx: &mut Context<Self>) {
        // Cleared before the repair reads the log, so a miss after this read is told again.
        self.behind.store(false, Ordering::Release);
        // The inbox opens when the first replay is over.
        if !self.inbox.is_open() {
            self.missed = self.missed.max(seq);
        } else if let Some(seen) = &mut self.repair {
            *seen = (*seen).max(seq);
        } else if seq > self.last_seq {
            self.start_repair(seq, ctx);
        }
    }
}

/// A repair finished (or failed).
#[derive(Message)]
#[rtype(result = "()")]
struct Repaired(CoreResult<Option<u64>>);

impl Handler<Repaired> for SubscriberActor {
    type Result = ();
    fn handle(&mut self, msg: Repaired, ctx: &mut Context<Self>) {
        self.repaired(msg.0, ctx);
    }
}

impl Handler<Close> for SubscriberActor {
    type Result = ();
    fn handle(&mut self, msg: Close, ctx: &mut Context<Self>) {
        self.end(msg.0, ctx);
    }
}
