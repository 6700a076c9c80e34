//! Domain records. Resources that cross the wire unchanged (Account, Message, Contact views,
//! events) are the generated prost structs: plain data, no tonic, and no copy on the hot path.

use uuid::Uuid;

use super::time::Micros;
pub use crate::pb::{MessageState, PresenceStatus};

/// An account id.
pub type AccountId = Uuid;

/// A UUID as the API writes it: lowercase, hyphenated. Straight into a buffer, half the
/// instructions of `to_string`'s formatting machinery (the ids of every send go through it).
pub fn uuid_text(id: Uuid) -> String {
    id.hyphenated()
        .encode_lower(&mut Uuid::encode_buffer())
        .to_owned()
}

/// The identity a controller call acts as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Caller {
    /// The account.
    pub account_id: AccountId,
    /// The token used, `None` under `auth.mode = "none"`.
    pub token_id: Option<Uuid>,
}

/// An account as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountRecord {
    /// Account id.
    pub id: AccountId,
    /// Lower-cased unique handle.
    pub handle: String,
    /// The account's own display name.
    pub display_name: String,
    /// Creation time.
    pub created_at: Micros,
    /// Chosen presence (ONLINE unless set).
    pub status: PresenceStatus,
    /// Status text.
    pub status_text: String,
    /// When it last went offline, if ever.
    pub last_seen: Option<Micros>,
    /// Insertion order, for paging.
    pub row: i64,
}

/// One side of a (one-sided) contact relation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactRecord {
    /// Whose contact list this is in.
    pub owner: AccountId,
    /// The peer.
    pub peer: AccountId,
    /// The owner's alias for the peer; empty means the peer's own display name.
    pub alias: String,
    /// When it was added.
    pub added_at: Micros,
    /// Insertion order, for paging.
    pub row: i64,
}

/// A bearer token as the store keeps it: only the hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// Token id (for revocation).
    pub id: Uuid,
    /// The account the token acts as.
    pub account_id: AccountId,
    /// SHA-256 of the token, hex.
    pub hash: String,
}

/// A durable event just committed, on its way to live subscribers.
#[derive(Debug, Clone)]
pub struct CommittedEvent {
    /// The account whose log holds it.
    pub account_id: AccountId,
    /// The event with its seq; one with `message` set has neither its message nor its id's
    /// text yet.
    pub event: crate::pb::Event,
    /// A MessageSent's or MessageReceived's message and event id, put into `event` only by
    /// `into_event`: most committed events reach no live stream and are dropped, and the
    /// message is shared by a send's two events and its reply, so that a send with no stream
    /// open copies nothing.
    pub message: Option<(std::sync::Arc<crate::pb::Message>, Uuid)>,
}

impl CommittedEvent {
    /// An event committed whole.
    pub fn whole(account_id: AccountId, event: crate::pb::Event) -> Self {
        CommittedEvent {
            account_id,
            event,
            message: None,
        }
    }

    /// The event as a stream shows it.
    pub fn into_event(self) -> crate::pb::Event {
        let mut event = self.event;
        if let Some((message, id)) = self.message {
            event.event_id = uuid_text(id);
            if let Some(slot) = super::events::message_slot(&mut event) {
                *slot = Some(std::sync::Arc::unwrap_or_clone(message));
            }
        }
        event
    }
}

/// Page request after validation: how many and after which row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    /// Rows to return, 1..=500.
    pub size: usize,
    /// Continue after this row (exclusive); `None` starts at the beginning.
    pub after: Option<i64>,
}

/// One page of results.
#[derive(Debug, Clone)]
pub struct Page<T> {
    /// The rows.
    pub items: Vec<T>,
    /// Where the next page starts, `None` on the last page.
    pub next: Option<i64>,
}

impl<T> Page<T> {
    /// The items and the wire `next_page_token` (empty on the last page).
    pub fn into_parts(self) -> (Vec<T>, String) {
        let token = self
            .next
            .map(super::validate::encode_page_token)
            .unwrap_or_default();
        (self.items, token)
    }
}
