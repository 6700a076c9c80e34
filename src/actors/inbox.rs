//! A stream's inbox for ephemeral events (presence, typing): newest per (kind, contact) wins,
//! so it never holds more than two events per account that can reach the stream, and the bus
//! never has to drop one or wait. The bus puts; the stream's actor takes when its output has
//! room.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use tokio::sync::Notify;

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
    /// Wakes the stream's actor when something was put.
    pub ready: Notify,
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
        self.ready.notify_one();
        replaced
    }

    /// The oldest waiting event.
    pub fn take(&self) -> Option<SharedEvent> {
        let mut s = self.slots.lock().ok()?;
        let k = s.order.pop_front()?;
        s.latest.remove(&k)
    }

    /// True when nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.slots
            .lock()
            .map(|s| s.order.is_empty())
            .unwrap_or(true)
    }

    /// Puts back an event that could not be sent, ahead of the others, unless a newer one for
    /// the same key arrived meanwhile.
    pub fn put_back(&self, ev: SharedEvent) {
        let Some(k) = key(&ev) else {
            return;
        };
        if let Ok(mut s) = self.slots.lock()
            && !s.latest.contains_key(&k)
        {
            s.latest.insert(k.clone(), ev);
            s.order.push_front(k);
        }
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
