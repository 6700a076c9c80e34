//! The write half every engine shares: durable changes as jobs for the engine's single writer
//! thread, and the queue that carries them (bounded: a full queue makes callers wait).

use std::sync::Mutex;

use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::{LogRange, SentMessage};
use crate::core::stats::StoreStats;
use crate::core::{
    AccountId, AccountRecord, ContactRecord, CoreError, CoreResult, PresenceStatus, TokenRecord,
};
use crate::pb;

/// Jobs that may wait for the writer before senders wait in turn (backpressure, not memory).
pub(crate) const WRITER_QUEUE: usize = 4096;
/// Most jobs in one group commit.
const MAX_GROUP: usize = 512;

/// On a writer thread: waits for a job, then takes whatever else is already queued (up to
/// `MAX_GROUP`), so that they commit together. `None` once every sender is gone.
pub(crate) fn next_group(jobs: &mut mpsc::Receiver<Job>, stats: &StoreStats) -> Option<Vec<Job>> {
    let first = jobs.blocking_recv()?;
    let mut group = vec![first];
    while group.len() < MAX_GROUP {
        match jobs.try_recv() {
            Ok(job) => group.push(job),
            Err(_) => break,
        }
    }
    stats.batch_size.observe(group.len() as f64);
    Some(group)
}

/// Whether a group's fsync may wait a little for another's (`syncer::RECEIPT_WAIT`): it holds
/// only receipts of live events, which no caller waits on to go on. A replay's receipts
/// (`covers` a range of the log) do not wait: the replay holds back until they are durable.
pub(crate) fn can_wait(group: &[Job]) -> bool {
    group
        .iter()
        .all(|j| matches!(&j.op, WriteOp::MarkDelivered { covers: None, .. }))
}

/// One durable change.
#[derive(Clone)]
pub(crate) enum WriteOp {
    CreateAccount(AccountRecord, TokenRecord),
    IssueToken(TokenRecord),
    RevokeToken(Uuid),
    SetStatus(AccountId, PresenceStatus, String),
    SetLastSeen(AccountId, i64),
    AddContact(ContactRecord, pb::Event),
    UpdateContact {
        owner: AccountId,
        peer: AccountId,
        alias: String,
        event: pb::Event,
    },
    RemoveContact {
        owner: AccountId,
        peer: AccountId,
        event: pb::Event,
    },
    SendMessage(pb::Message),
    MarkRead {
        reader: AccountId,
        sender: AccountId,
        up_to: Uuid,
    },
    MarkDelivered {
        recipient: AccountId,
        ids: Vec<String>,
        covers: Option<LogRange>,
    },
}

/// What a change produced.
pub(crate) enum WriteOutput {
    Account(AccountRecord),
    Token(TokenRecord),
    Contact(ContactRecord),
    Sent(SentMessage),
    Ids(Vec<String>),
    Done,
}

/// A change and where its result goes.
pub(crate) struct Job {
    pub op: WriteOp,
    pub reply: oneshot::Sender<CoreResult<WriteOutput>>,
}

/// The receipts of one MarkDelivered: for each sender (by id) the ids that became DELIVERED
/// to `recipient`. Logs one MessageStateChanged per sender through `log` (an engine's append)
/// and returns every changed id.
pub(crate) fn log_delivered(
    recipient: &str,
    by_sender: std::collections::BTreeMap<AccountId, Vec<String>>,
    mut log: impl FnMut(AccountId, pb::Event) -> CoreResult<()>,
) -> CoreResult<Vec<String>> {
    let mut changed = Vec::new();
    for (sender, ids) in by_sender {
        changed.extend(ids.iter().cloned());
        let kind = pb::event::Kind::MessageStateChanged(pb::MessageStateChanged {
            contact_id: recipient.to_string(),
            message_ids: ids,
            state: crate::core::MessageState::Delivered as i32,
        });
        log(sender, crate::core::events::new_event(kind))?;
    }
    Ok(changed)
}

/// The sending side of the writer's queue; closing it lets the writer finish and return.
pub struct Jobs(Mutex<Option<mpsc::Sender<Job>>>);

impl Jobs {
    /// A queue for a writer that receives from the returned receiver.
    pub(crate) fn new() -> (Self, mpsc::Receiver<Job>) {
        let (tx, rx) = mpsc::channel(WRITER_QUEUE);
        (Jobs(Mutex::new(Some(tx))), rx)
    }

    /// Drops the sender: the writer commits what is queued and returns.
    pub fn close(&self) {
        if let Ok(mut jobs) = self.0.lock() {
            jobs.take();
        }
    }

    fn write<T: Send + 'static>(
        &self,
        op: WriteOp,
        take: fn(WriteOutput) -> Option<T>,
    ) -> BoxFuture<'static, CoreResult<T>> {
        let closed = || CoreError::Unavailable("the store is shutting down".into());
        let (reply, answer) = oneshot::channel();
        // Queued now, in the caller's order (an actor's), when the queue has room; when it is
        // full the future waits its turn. A caller that drops the future before the writer
        // takes the job closes `answer`, and the writer skips it.
        let waiting = match self.0.lock().ok().and_then(|j| j.clone()) {
            None => Err(closed()),
            Some(jobs) => match jobs.try_send(Job { op, reply }) {
                Ok(()) => Ok(None),
                Err(mpsc::error::TrySendError::Full(job)) => Ok(Some((jobs, job))),
                Err(mpsc::error::TrySendError::Closed(_)) => Err(closed()),
            },
        };
        Box::pin(async move {
            if let Some((jobs, job)) = waiting? {
                jobs.send(job).await.map_err(|_| closed())?;
            }
            let out = answer.await.map_err(|_| closed())??;
            take(out).ok_or_else(|| CoreError::Internal("writer answered another kind".into()))
        })
    }

    /// `Store::create_account`.
    pub fn create_account(
        &self,
        account: AccountRecord,
        token: TokenRecord,
    ) -> BoxFuture<'static, CoreResult<AccountRecord>> {
        self.write(WriteOp::CreateAccount(account, token), |o| match o {
            WriteOutput::Account(a) => Some(a),
            _ => None,
        })
    }

    /// `Store::issue_token`.
    pub fn issue_token(&self, token: TokenRecord) -> BoxFuture<'static, CoreResult<()>> {
        self.write(WriteOp::IssueToken(token), |o| match o {
            WriteOutput::Token(_) => Some(()),
            _ => None,
        })
    }

    /// `Store::revoke_token`.
    pub fn revoke_token(&self, token_id: Uuid) -> BoxFuture<'static, CoreResult<TokenRecord>> {
        self.write(WriteOp::RevokeToken(token_id), |o| match o {
            WriteOutput::Token(t) => Some(t),
            _ => None,
        })
    }

    /// `Store::set_status`.
    pub fn set_status(
        &self,
        account: AccountId,
        status: PresenceStatus,
        text: String,
    ) -> BoxFuture<'static, CoreResult<()>> {
        self.write(WriteOp::SetStatus(account, status, text), done)
    }

    /// `Store::set_last_seen`.
    pub fn set_last_seen(&self, account: AccountId, at: i64) -> BoxFuture<'static, CoreResult<()>> {
        self.write(WriteOp::SetLastSeen(account, at), done)
    }

    /// `Store::add_contact`.
    pub fn add_contact(
        &self,
        contact: ContactRecord,
        event: pb::Event,
    ) -> BoxFuture<'static, CoreResult<ContactRecord>> {
        self.write(WriteOp::AddContact(contact, event), |o| match o {
            WriteOutput::Contact(c) => Some(c),
            _ => None,
        })
    }

    /// `Store::update_contact`.
    pub fn update_contact(
        &self,
        owner: AccountId,
        peer: AccountId,
        alias: String,
        event: pb::Event,
    ) -> BoxFuture<'static, CoreResult<()>> {
        let op = WriteOp::UpdateContact {
            owner,
            peer,
            alias,
            event,
        };
        self.write(op, done)
    }

    /// `Store::remove_contact`.
    pub fn remove_contact(
        &self,
        owner: AccountId,
        peer: AccountId,
        event: pb::Event,
    ) -> BoxFuture<'static, CoreResult<()>> {
        self.write(WriteOp::RemoveContact { owner, peer, event }, done)
    }

    /// `Store::send_message`.
    pub fn send_message(
        &self,
        message: pb::Message,
    ) -> BoxFuture<'static, CoreResult<SentMessage>> {
        self.write(WriteOp::SendMessage(message), |o| match o {
            WriteOutput::Sent(s) => Some(s),
            _ => None,
        })
    }

    /// `Store::mark_read`.
    pub fn mark_read(
        &self,
        reader: AccountId,
        sender: AccountId,
        up_to: Uuid,
    ) -> BoxFuture<'static, CoreResult<Vec<String>>> {
        let op = WriteOp::MarkRead {
            reader,
            sender,
            up_to,
        };
        self.write(op, ids_of)
    }

    /// `Store::mark_delivered`.
    pub fn mark_delivered(
        &self,
        recipient: AccountId,
        ids: Vec<String>,
        covers: Option<LogRange>,
    ) -> BoxFuture<'static, CoreResult<Vec<String>>> {
        let op = WriteOp::MarkDelivered {
            recipient,
            ids,
            covers,
        };
        self.write(op, ids_of)
    }
}

fn ids_of(out: WriteOutput) -> Option<Vec<String>> {
    match out {
        WriteOutput::Ids(ids) => Some(ids),
        _ => None,
    }
}

fn done(out: WriteOutput) -> Option<()> {
    matches!(out, WriteOutput::Done).then_some(())
}
