//! Builders for events and the resource views they carry.

use uuid::Uuid;

use super::time::{Micros, now_micros, to_timestamp};
use super::{AccountRecord, ContactRecord, PresenceStatus, uuid_text};
use crate::pb::{self, event::Kind};

/// An event on its way to streams: shared, so fan-out copies a pointer, not the event, and
/// queues hold 8 bytes per slot.
pub type SharedEvent = std::sync::Arc<pb::Event>;

/// A new event with a fresh id and the current time; `seq` is 0 until the store assigns one.
pub fn new_event(kind: Kind) -> pb::Event {
    let (mut event, id) = new_event_id_apart(kind);
    event.event_id = uuid_text(id);
    event
}

/// `new_event` with the id apart and its text left empty: for an event that may never be
/// shown, whose text `CommittedEvent::into_event` writes if it is.
pub fn new_event_id_apart(kind: Kind) -> (pb::Event, Uuid) {
    let id = Uuid::new_v4();
    let event = pb::Event {
        seq: 0,
        event_id: String::new(),
        time: Some(to_timestamp(now_micros())),
        kind: Some(kind),
    };
    (event, id)
}

/// A MessageSent's or MessageReceived's message field; `None` for any other event.
pub fn message_slot(e: &mut pb::Event) -> Option<&mut Option<pb::Message>> {
    match e.kind.as_mut()? {
        Kind::MessageSent(s) => Some(&mut s.message),
        Kind::MessageReceived(r) => Some(&mut r.message),
        _ => None,
    }
}

/// Whether an event is kept in the account's log (and so gets a seq).
pub fn is_durable(kind: &Kind) -> bool {
    !matches!(
        kind,
        Kind::SubscriptionStarted(_) | Kind::ContactStatusChanged(_) | Kind::TypingChanged(_)
    )
}

/// An account's presence as others see it now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EffectivePresence {
    /// OFFLINE without a live stream, else the chosen status.
    pub status: PresenceStatus,
    /// When it last went offline, unset while online.
    pub last_seen: Option<Micros>,
}

impl EffectivePresence {
    /// Computes effective presence from the account's chosen status and whether it has a stream.
    pub fn of(account: &AccountRecord, online: bool) -> Self {
        if online {
            let status = match account.status {
                PresenceStatus::Unspecified => PresenceStatus::Online,
                s => s,
            };
            // Invisible (OFFLINE by hand) still shows when it was last seen going offline.
            let last_seen = (status == PresenceStatus::Offline)
                .then_some(account.last_seen)
                .flatten();
            EffectivePresence { status, last_seen }
        } else {
            EffectivePresence {
                status: PresenceStatus::Offline,
                last_seen: account.last_seen,
            }
        }
    }
}

/// The wire view of an account.
pub fn account_view(a: &AccountRecord) -> pb::Account {
    pb::Account {
        account_id: a.id.to_string(),
        handle: a.handle.clone(),
        display_name: a.display_name.clone(),
        created_at: Some(to_timestamp(a.created_at)),
    }
}

/// The wire view of a contact, as its owner sees it.
pub fn contact_view(c: &ContactRecord, peer: &AccountRecord, p: EffectivePresence) -> pb::Contact {
    pb::Contact {
        contact_id: c.peer.to_string(),
        handle: peer.handle.clone(),
        display_name: if c.alias.is_empty() {
            peer.display_name.clone()
        } else {
            c.alias.clone()
        },
        status: p.status as i32,
        status_text: peer.status_text.clone(),
        last_seen: p.last_seen.map(to_timestamp),
        added_at: Some(to_timestamp(c.added_at)),
    }
}

/// The ephemeral event telling owners that `peer`'s presence changed.
pub fn status_changed(peer: &AccountRecord, p: EffectivePresence) -> pb::Event {
    new_event(Kind::ContactStatusChanged(pb::ContactStatusChanged {
        contact_id: peer.id.to_string(),
        status: p.status as i32,
        status_text: peer.status_text.clone(),
        last_seen: p.last_seen.map(to_timestamp),
    }))
}
