//! The response stream of `SubscribeToEvents`: durable events from the subscriber actor's
//! bounded channel, presence and typing from the stream's conflating inbox when no durable event
//! is waiting, and, when the server ends the stream, the status saying why and where to resume.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::{Future, Stream};
use tonic::Status;

use super::limits::StreamPermit;
use crate::actors::subscriber::{CloseReason, Subscription};
use crate::pb::{self, event::Kind};

/// A live event stream for one call.
pub struct EventStream {
    sub: Subscription,
    /// Set once the close signal resolved without a reason (the actor just stopped).
    close_gone: bool,
    after_seq: Option<u64>,
    /// The last durable seq the client has been handed (or that it already had).
    last_seq: u64,
    /// This stream's slot among its account's streams.
    _permit: StreamPermit,
    /// `SubscriptionStarted` went out.
    started: bool,
    done: bool,
}

impl EventStream {
    /// Wraps a subscription opened with `after_seq`.
    pub fn new(sub: Subscription, after_seq: Option<u64>, permit: StreamPermit) -> Self {
        EventStream {
            sub,
            _permit: permit,
            close_gone: false,
            after_seq,
            last_seq: after_seq.unwrap_or(0),
            started: false,
            done: false,
        }
    }

    fn status(&self, reason: CloseReason) -> Status {
        let last = self.last_seq;
        match reason {
            CloseReason::Overflow => Status::resource_exhausted(format!(
                "event stream fell behind and its queue is full; last delivered seq is {last}; \
                 resubscribe with after_seq = {last}"
            )),
            CloseReason::Shutdown => Status::unavailable(format!(
                "server is shutting down; last delivered seq is {last}; \
                 resubscribe with after_seq = {last}"
            )),
            CloseReason::Revoked => Status::unauthenticated("the stream's token was revoked"),
        }
    }

    fn track(&mut self, ev: &pb::Event) {
        if let Some(Kind::SubscriptionStarted(s)) = &ev.kind {
            // Where this stream starts: after `after_seq` when resumed, else where the replay
            // or the live feed begins.
            self.last_seq = match self.after_seq {
                Some(a) if s.resumed => a,
                Some(_) => s.oldest_seq.saturating_sub(1),
                None => s.head_seq,
            };
        } else if ev.seq != 0 {
            self.last_seq = ev.seq;
        }
    }
}

impl Stream for EventStream {
    type Item = Result<pb::Event, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        // A close from the server wins over queued events (the client resumes from last_seq),
        // except over `SubscriptionStarted`: every stream opens with it.
        if this.started && !this.close_gone {
            match Pin::new(&mut this.sub.closed).poll(cx) {
                Poll::Ready(Ok(reason)) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(this.status(reason))));
                }
                Poll::Ready(Err(_)) => this.close_gone = true,
                Poll::Pending => {}
            }
        }
        // Looked at before the durable queue: once open, the replay is all in that queue.
        let live = this.sub.inbox.poll_open(cx);
        match this.sub.events.poll_recv(cx) {
            Poll::Ready(Some(ev)) => {
                this.started = true;
                this.track(&ev);
                // The one copy a stream makes, on the call's own task; usually the only owner by now.
                Poll::Ready(Some(Ok(std::sync::Arc::unwrap_or_clone(ev))))
            }
            Poll::Ready(None) => {
                this.done = true;
                match this.sub.closed.try_recv() {
                    Ok(reason) => Poll::Ready(Some(Err(this.status(reason)))),
                    Err(_) => Poll::Ready(None),
                }
            }
            // No durable event waiting: presence and typing, newest first per contact.
            Poll::Pending => match live.then(|| this.sub.inbox.take()).flatten() {
                Some(ev) => {
                    this.sub.stats.delivered.inc();
                    Poll::Ready(Some(Ok(std::sync::Arc::unwrap_or_clone(ev))))
                }
                None => Poll::Pending,
            },
        }
    }
}
