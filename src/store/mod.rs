//! Durability. The `Store` trait is what actors call; `lsm` (the default) and `sqlite` are
//! the embedded engines, chosen by `storage.engine`.
//!
//! Every method returns a future that resolves once the work is done on the store's own
//! threads, so actors never wait on disk. A write's future resolves after its transaction is
//! committed and fsync'd, and after its events have been handed to the event sink.

mod checkpointer;
mod jobs;
pub mod lsm;
pub mod schema;
pub mod sqlite;
mod syncer;
mod writer;

use futures::future::BoxFuture;
use uuid::Uuid;

use crate::core::{
    AccountId, AccountRecord, CommittedEvent, ContactRecord, CoreResult, Page, PageRequest,
    PresenceStatus, TokenRecord,
};
use crate::pb;

pub use jobs::{Backlog, Jobs, Reply, Written, sent_reply};
pub use lsm::LsmStore;
pub use sqlite::SqliteStore;

/// Receives durable events right after their transaction commits, in seq order per account.
pub type EventSink = Box<dyn Fn(Vec<CommittedEvent>) + Send + 'static>;

/// Bounds of an account's event log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogBounds {
    /// Oldest seq still held (0 when the log is empty).
    pub oldest: u64,
    /// Newest seq assigned (0 when nothing was ever logged).
    pub head: u64,
}

/// A stretch of an account's log: the seqs `after + 1 ..= through`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogRange {
    /// The seq just before the stretch.
    pub after: u64,
    /// Its last seq.
    pub through: u64,
}

/// How a receipt's messages reached their recipient's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handed {
    /// Live, as they were logged; nothing waits for the receipt. `covers`, when known, is the
    /// stretch of the log the stream handed out unbroken since its last receipt.
    Live(Option<LogRange>),
    /// A replay chunk read from this stretch of the log; the replay waits for the receipt to
    /// be durable before it reads on.
    Replay(LogRange),
}

impl Handed {
    /// The stretch of the recipient's log whose every MessageReceived is among the receipt's
    /// ids, if known.
    pub fn covers(self) -> Option<LogRange> {
        match self {
            Handed::Live(covers) => covers,
            Handed::Replay(covers) => Some(covers),
        }
    }
}

/// Outcome of `send_message`.
#[derive(Debug, Clone)]
pub struct SentMessage {
    /// The stored message (the first one, on a duplicate); shared with its events until they
    /// are published or dropped (`CommittedEvent::message`).
    pub message: std::sync::Arc<pb::Message>,
    /// The `client_message_id` had been used before; nothing new was stored.
    pub duplicate: bool,
}

/// What everything above the store needs from an engine.
pub trait Store: Send + Sync + 'static {
    /// The engine's writer queue: every write below is a job on it.
    fn jobs(&self) -> &Jobs;

    /// Every account, oldest first (start-up only: blocks).
    fn load_accounts(&self) -> CoreResult<Vec<AccountRecord>>;
    /// Every live token (start-up only: blocks).
    fn load_tokens(&self) -> CoreResult<Vec<TokenRecord>>;
    /// Every contact relation (start-up only: blocks).
    fn load_contacts(&self) -> CoreResult<Vec<ContactRecord>>;

    /// Creates an account and its first token. `AlreadyExists` on a taken handle.
    fn create_account(
        &self,
        account: AccountRecord,
        token: TokenRecord,
    ) -> BoxFuture<'static, CoreResult<AccountRecord>> {
        self.jobs().create_account(account, token)
    }
    /// Stores a further token. `NotFound` if the account does not exist.
    fn issue_token(&self, token: TokenRecord) -> BoxFuture<'static, CoreResult<()>> {
        self.jobs().issue_token(token)
    }
    /// Revokes a token and returns it. `NotFound` if unknown or already revoked.
    fn revoke_token(&self, token_id: Uuid) -> BoxFuture<'static, CoreResult<TokenRecord>> {
        self.jobs().revoke_token(token_id)
    }
    /// Accounts in creation order.
    fn list_accounts(
        &self,
        page: PageRequest,
    ) -> BoxFuture<'static, CoreResult<Page<AccountRecord>>>;
    /// Persists an account's chosen status and text.
    fn set_status(
        &self,
        account: AccountId,
        status: PresenceStatus,
        text: String,
    ) -> BoxFuture<'static, CoreResult<()>> {
        self.jobs().set_status(account, status, text)
    }
    /// Persists when an account last went offline.
    fn set_last_seen(&self, account: AccountId, at: i64) -> BoxFuture<'static, CoreResult<()>> {
        self.jobs().set_last_seen(account, at)
    }

    /// Adds a contact and logs `event` for its owner. `AlreadyExists` if present.
    fn add_contact(
        &self,
        contact: ContactRecord,
        event: pb::Event,
    ) -> BoxFuture<'static, CoreResult<ContactRecord>> {
        self.jobs().add_contact(contact, event)
    }
    /// Changes a contact's alias and logs `event`. `NotFound` if absent.
    fn update_contact(
        &self,
        owner: AccountId,
        peer: AccountId,
        alias: String,
        event: pb::Event,
    ) -> BoxFuture<'static, CoreResult<()>> {
        self.jobs().update_contact(owner, peer, alias, event)
    }
    /// Removes a contact and logs `event`. `NotFound` if absent.
    fn remove_contact(
        &self,
        owner: AccountId,
        peer: AccountId,
        event: pb::Event,
    ) -> BoxFuture<'static, CoreResult<()>> {
        self.jobs().remove_contact(owner, peer, event)
    }

    /// Stores a message with its two events (MessageSent, MessageReceived) in one transaction,
    /// or returns the earlier message with the same `client_message_id`, through `reply`.
    /// Returns the wait for room when the writer's queue is full (`Jobs::send_message`).
    fn send_message(&self, message: pb::Message, reply: Reply<SentMessage>) -> Option<Backlog> {
        self.jobs().send_message(message, reply)
    }
    /// The conversation between two accounts, newest first. `NotFound` if `peer` does not exist.
    fn list_messages(
        &self,
        me: AccountId,
        peer: AccountId,
        page: PageRequest,
    ) -> BoxFuture<'static, CoreResult<Page<pb::Message>>>;
    /// Makes every message from `sender` to `reader` up to `up_to` READ, logging one
    /// MessageStateChanged for the sender. Returns the ids that changed.
    fn mark_read(
        &self,
        reader: AccountId,
        sender: AccountId,
        up_to: Uuid,
    ) -> BoxFuture<'static, CoreResult<Vec<String>>> {
        self.jobs().mark_read(reader, sender, up_to)
    }

    /// Makes still-SENT messages among `ids` to `recipient` DELIVERED, logging one
    /// MessageStateChanged per sender. Returns the ids that changed. `handed` tells how they
    /// reached the stream and, where known, the stretch of the recipient's log they were
    /// handed out from whole: an engine may then skip ids it knows are delivered already.
    fn mark_delivered(
        &self,
        recipient: AccountId,
        ids: Vec<String>,
        handed: Handed,
    ) -> BoxFuture<'static, CoreResult<Vec<String>>> {
        self.jobs().mark_delivered(recipient, ids, handed)
    }

    /// Up to `limit` durable events of an account with seq > `after`, in order.
    fn read_events(
        &self,
        account: AccountId,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'static, CoreResult<Vec<pb::Event>>>;
    /// Oldest and newest seq of an account's log.
    fn log_bounds(&self, account: AccountId) -> BoxFuture<'static, CoreResult<LogBounds>>;

    /// Commits what is queued and stops the writer; later writes fail with `Unavailable`.
    fn close(&self);
}
