//! A stream's inbox for ephemeral events (presence, typing): newest per (kind, contact) wins,
//! so it never holds more than two events per account that can reach the stream, and the bus
//! never has to drop one or wait. The bus puts; the gRPC response stream takes, whenever its
//! client has room and no durable event is waiting, once the subscriber actor has opened the
//! inbox (after `SubscriptionStarted` and the replay). Ephemeral events so skip the actor's
//! thread: a presence change fanned out to 10,000 streams wakes 10,000 response tasks
//! directly, on every core, instead of 10,000 actors on one.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Context;

use futures::task::AtomicWaker;

use crate::core::events::SharedEvent;
use crate::pb::{self, event::Kind};

/// What an ephemeral event conflates under.
type Key = (u8, String);

#[derive(Default)]
struct Slots {
    order: VecDeque<Key>,
    latest: HashMap<Key, SharedEvent>,
}

/// Conflating inbox shared by the bus and one stream.
#[derive(Default)]
pub struct EphemeralInbox {
    slots: Mutex<Slots>,
    /// The response stream's task, woken when something was put or the inbox opened.
    waker: AtomicWaker,
    /// Set by the subscriber actor once the stream is live.
    open: AtomicBool,
}

fn key(ev: &pb::Event) -> Option<Key> {
    match &ev.kind {
        Some(Kind::ContactStatusChanged(s)) => Some((0, s.contact_id.clone())),
        Some(Kind::TypingChanged(t)) => Some((1, t.contact_id.clone())),
        _ => None,
    }
}

impl EphemeralInbox {
    /// Keeps `ev`, replacing an older event for the same contact and kind; returns true if it
    /// replaced one (the older one is conflated away). Events of other kinds are not taken.
    pub fn put(&self, ev: SharedEvent) -> bool {
        let Some(k) = key(&ev) else {
            return false;
        };
        let replaced = match self.slots.lock() {
            Ok(mut s) => {
                let replaced = s.latest.insert(k.clone(), ev).is_some();
                if !replaced {
                    s.order.push_back(k);
                }
                replaced
            }
            Err(_) => false,
        };
        self.waker.wake();
        replaced
    }

    /// Lets the response stream take events from now on (the stream is live).
    pub fn open(&self) {
        // Release: whatever the actor queued before this (the replay) is seen by a reader that
        // finds the inbox open.
        self.open.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// True once the stream is live.
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    /// Registers the response stream's task for wake-ups and tells whether it may take. Call it
    /// before looking at the durable queue: open then means the replay is all in that queue.
    pub fn poll_open(&self, cx: &Context<'_>) -> bool {
        self.waker.register(cx.waker());
        self.open.load(Ordering::Acquire)
    }

    /// The oldest waiting event.
    pub fn take(&self) -> Option<SharedEvent> {
        let mut s = self.slots.lock().ok()?;
        let k = s.order.pop_front()?;
        s.latest.remove(&k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typing(contact: &str, typing: bool) -> SharedEvent {
        SharedEvent::new(crate::core::events::new_event(Kind::TypingChanged(
            pb::TypingChanged {
                contact_id: contact.into(),
                typing,
            },
        )))
    }

    #[test]
    fn newest_per_contact_wins_in_first_seen_order() {
        let inbox = EphemeralInbox::default();
        assert!(!inbox.put(typing("a", true)));
        assert!(!inbox.put(typing("b", true)));
        assert!(inbox.put(typing("a", false)));
        let first = inbox.take().unwrap();
        assert!(
            matches!(&first.kind, Some(Kind::TypingChanged(t)) if t.contact_id == "a" && !t.typing)
        );
        assert!(inbox.take().is_some());
        assert!(inbox.take().is_none());
    }
}
