//! The write half every engine shares: durable changes as jobs for the engine's single writer
//! thread, and the queue that carries them (bounded: a full queue makes callers wait).

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll, ready};

use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::{Handed, SentMessage};
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
/// only receipts of live events, which no caller waits on to go on. A replay's receipts do
/// not wait: the replay holds back until they are durable.
pub(crate) fn can_wait(group: &[Job]) -> bool {
    group.iter().all(|j| {
        matches!(
            &j.op,
            WriteOp::MarkDelivered {
                handed: Handed::Live(_),
                ..
            }
        )
    })
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
        handed: Handed,
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

/// Where a write's result goes, made by its caller (`sent_reply`), so that the writer (or its
/// syncer) answers the caller's task directly rather than through the actor that queued it.
pub struct Reply<T>(
    oneshot::Sender<CoreResult<WriteOutput>>,
    PhantomData<fn() -> T>,
);

impl<T> Reply<T> {
    /// Answers with an error without writing anything.
    pub fn fail(self, e: CoreError) {
        let _ = self.0.send(Err(e));
    }
}

/// The caller's end of a `Reply`: resolves once the write is durable (or failed). Dropped
/// before the writer takes the job, the writer skips it.
pub struct Written<T> {
    rx: oneshot::Receiver<CoreResult<WriteOutput>>,
    take: fn(WriteOutput) -> Option<T>,
}

impl<T> Future for Written<T> {
    type Output = CoreResult<T>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<CoreResult<T>> {
        let out = ready!(Pin::new(&mut self.rx).poll(cx)).map_err(|_| closed())??;
        Poll::Ready(
            (self.take)(out)
                .ok_or_else(|| CoreError::Internal("writer answered another kind".into())),
        )
    }
}

fn reply<T>(take: fn(WriteOutput) -> Option<T>) -> (Reply<T>, Written<T>) {
    let (tx, rx) = oneshot::channel();
    (Reply(tx, PhantomData), Written { rx, take })
}

/// A `Reply` for `Store::send_message` and the answer its caller awaits.
pub fn sent_reply() -> (Reply<SentMessage>, Written<SentMessage>) {
    reply(|o| match o {
        WriteOutput::Sent(s) => Some(s),
        _ => None,
    })
}

/// The wait for room in a full writer queue; the job is queued at its end.
pub type Backlog = BoxFuture<'static, ()>;

fn closed() -> CoreError {
    CoreError::Unavailable("the store is shutting down".into())
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
        let (reply, answer) = reply(take);
        // Queued now, in the caller's order (an actor's), when the queue has room; when it is
        // full the future waits its turn. A caller that drops the future before the writer
        // takes the job closes `answer`, and the writer skips it.
        let backlog = self.write_to(op, reply);
        Box::pin(async move {
            if let Some(backlog) = backlog {
                backlog.await;
            }
            answer.await
        })
    }

    /// Queues `op`, answered through `reply` by the writer (or its syncer) itself. `None` once
    /// queued, or when the writer is gone (the job is dropped with its reply, whose answer then
    /// says the store is shutting down); when the writer's queue is full, the wait for room,
    /// which queues the job at its end.
    fn write_to<T>(&self, op: WriteOp, reply: Reply<T>) -> Option<Backlog> {
        let jobs = self.0.lock().ok()?.clone()?;
        match jobs.try_send(Job { op, reply: reply.0 }) {
            Err(mpsc::error::TrySendError::Full(job)) => Some(Box::pin(async move {
                let _ = jobs.send(job).await;
            })),
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => None,
        }
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
    pub fn send_message(&self, message: pb::Message, reply: Reply<SentMessage>) -> Option<Backlog> {
        self.write_to(WriteOp::SendMessage(message), reply)
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
        handed: Handed,
    ) -> BoxFuture<'static, CoreResult<Vec<String>>> {
        let op = WriteOp::MarkDelivered {
            recipient,
            ids,
            handed,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn message(text: &str) -> pb::Message {
        pb::Message {
            text: text.into(),
            ..Default::default()
        }
    }

    /// Answers a SendMessage job taken off the queue as a writer would; returns its text.
    fn answer(job: Job) -> String {
        let WriteOp::SendMessage(message) = job.op else {
            panic!("not a SendMessage job");
        };
        let text = message.text.clone();
        let sent = SentMessage {
            message: message.into(),
            duplicate: false,
        };
        let _ = job.reply.send(Ok(WriteOutput::Sent(sent)));
        text
    }

    #[tokio::test]
    async fn a_reply_made_by_the_caller_is_answered_by_the_writer() {
        let (jobs, mut rx) = Jobs::new();
        let (reply, written) = sent_reply();
        assert!(
            jobs.send_message(message("hi"), reply).is_none(),
            "queued at once"
        );
        answer(rx.recv().await.expect("queued job"));
        let sent = written.await.expect("answered");
        assert_eq!(sent.message.text, "hi");
    }

    #[tokio::test]
    async fn a_full_queue_hands_back_the_wait_which_queues_the_job_at_its_end() {
        let (jobs, mut rx) = Jobs::new();
        let mut earlier = Vec::new();
        for _ in 0..WRITER_QUEUE {
            let (reply, written) = sent_reply();
            assert!(jobs.send_message(message("earlier"), reply).is_none());
            earlier.push(written);
        }
        let (reply, written) = sent_reply();
        let backlog = jobs
            .send_message(message("last"), reply)
            .expect("the queue is full: the caller must wait");
        let waiting = tokio::spawn(backlog);
        // Room for one: the waiting job goes in, last.
        assert_eq!(answer(rx.recv().await.expect("first job")), "earlier");
        waiting.await.expect("the wait ends once there is room");
        for _ in 1..WRITER_QUEUE {
            assert_eq!(answer(rx.recv().await.expect("job")), "earlier");
        }
        assert_eq!(answer(rx.recv().await.expect("job")), "last");
        for w in earlier {
            assert_eq!(w.await.expect("answered").message.text, "earlier");
        }
        let sent = written.await.expect("the job that waited is answered");
        assert_eq!(sent.message.text, "last");
    }

    #[tokio::test]
    async fn a_reply_to_a_closed_writer_says_unavailable() {
        let (jobs, _rx) = Jobs::new();
        jobs.close();
        let (reply, written) = sent_reply();
        assert!(jobs.send_message(message("hi"), reply).is_none());
        assert!(matches!(written.await, Err(CoreError::Unavailable(_))));
    }

    #[tokio::test]
    async fn a_failed_reply_reaches_its_caller() {
        let (reply, written) = sent_reply();
        reply.fail(CoreError::invalid("recipient_id", "no"));
        assert!(matches!(
            written.await,
            Err(CoreError::InvalidArgument { .. })
        ));
    }
}
