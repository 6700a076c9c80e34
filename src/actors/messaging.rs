//! `MessagingActor`: send, list and mark-read. A message and its two events are persisted in
//! one transaction by the store; idempotency keys are enforced there, under the same lock.

use std::sync::Arc;

use actix::prelude::*;
use bytes::Bytes;
use futures::future::BoxFuture;
use uuid::Uuid;

use crate::core::time::{now_micros, to_timestamp};
use crate::core::{AccountId, CoreError, CoreResult, MessageState, Page, PageRequest, uuid_text};
use crate::pb;
use crate::store::{Handed, Reply, SentMessage, Store};

/// The messaging authority.
pub struct MessagingActor {
    store: Arc<dyn Store>,
}

impl MessagingActor {
    /// A messaging actor over `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        MessagingActor { store }
    }
}

impl Actor for MessagingActor {
    type Context = Context<Self>;
}

/// A store round-trip the actor started, for the caller to await on its own task: the writer
/// answers the caller directly, not through this actor's thread. Dropped unfinished (the
/// caller's deadline passed, it went away), the store skips the write if it had not started it.
pub type Pending<T> = BoxFuture<'static, CoreResult<T>>;

/// A validated SendMessage. Its result goes through `reply`, answered by the store's writer
/// itself: the caller's task is woken once, when the message is durable, not also when this
/// actor has queued it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SendMessage {
    /// The caller.
    pub sender: AccountId,
    /// The recipient (not the caller).
    pub recipient: AccountId,
    /// Text body.
    pub text: String,
    /// Binary body.
    pub payload: Bytes,
    /// MIME type of the payload.
    pub content_type: String,
    /// Idempotency key, may be empty.
    pub client_message_id: String,
    /// Where the stored message (or the error) goes.
    pub reply: Reply<SentMessage>,
}

impl Handler<SendMessage> for MessagingActor {
    type Result = ();
    fn handle(&mut self, msg: SendMessage, ctx: &mut Context<Self>) {
        if msg.sender == msg.recipient {
            return msg.reply.fail(CoreError::invalid(
                "recipient_id",
                "you cannot send a message to yourself",
            ));
        }
        let message = pb::Message {
            message_id: uuid_text(Uuid::now_v7()),
            sender_id: uuid_text(msg.sender),
            recipient_id: uuid_text(msg.recipient),
            text: msg.text,
            payload: msg.payload,
            content_type: msg.content_type,
            client_message_id: msg.client_message_id,
            sent_at: Some(to_timestamp(now_micros())),
            state: MessageState::Sent as i32,
        };
        if let Some(backlog) = self.store.send_message(message, msg.reply) {
            // The writer's queue is full: this actor waits with it, so that its own mailbox
            // fills and callers wait in turn (no queue grows without bound).
            ctx.wait(actix::fut::wrap_future(backlog));
        }
    }
}

/// A page of the conversation between two accounts, newest first.
#[derive(Message)]
#[rtype(result = "Pending<Page<pb::Message>>")]
pub struct ListMessages {
    /// The caller.
    pub me: AccountId,
    /// The other party.
    pub peer: AccountId,
    /// Which page.
    pub page: PageRequest,
}

impl Handler<ListMessages> for MessagingActor {
    type Result = MessageResult<ListMessages>;
    fn handle(&mut self, msg: ListMessages, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.store.list_messages(msg.me, msg.peer, msg.page))
    }
}

/// Marks messages from `sender` to `reader` READ up to one message.
#[derive(Message)]
#[rtype(result = "Pending<Vec<String>>")]
pub struct MarkRead {
    /// The caller (the recipient of the messages).
    pub reader: AccountId,
    /// Who sent them.
    pub sender: AccountId,
    /// The last message to mark.
    pub up_to: Uuid,
}

impl Handler<MarkRead> for MessagingActor {
    type Result = MessageResult<MarkRead>;
    fn handle(&mut self, msg: MarkRead, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.store.mark_read(msg.reader, msg.sender, msg.up_to))
    }
}

/// Messages just handed to a live stream of their recipient: they become DELIVERED.
#[derive(Message)]
#[rtype(result = "Pending<Vec<String>>")]
pub struct Delivered {
    /// Whose stream got them.
    pub recipient: AccountId,
    /// The message ids.
    pub ids: Vec<String>,
    /// How they were handed out, and from which stretch of the recipient's log.
    pub handed: Handed,
}

impl Handler<Delivered> for MessagingActor {
    type Result = MessageResult<Delivered>;
    fn handle(&mut self, msg: Delivered, _: &mut Context<Self>) -> Self::Result {
        MessageResult(
            self.store
                .mark_delivered(msg.recipient, msg.ids, msg.handed),
        )
    }
}
