//! The LSM engine's single writer thread. Each job is checked against the writer's state,
//! then written as one atomic fjall batch (so a later job of the same group sees it, and a
//! failing job leaves nothing behind), except that consecutive sends share one, as do
//! consecutive receipts of live events (`Run`);
//! once the group is written, its journal bytes go to the OS and the group to the syncer
//! thread, whose one fdatasync makes it durable before its events are published and its
//! callers answered (`journal.rs`, `syncer`). The writer goes on with the next group
//! meanwhile.
//!
//! The writer owns what every write needs and readers do not: each account's row and head seq
//! (loaded at open from the log itself), and the next row of messages and contacts.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use fjall::{OwnedWriteBatch, PersistMode};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::prefill::Prefill;
use super::records::{decode_event, encode_event, encode_message, encode_message_event};
use super::{
    MESSAGE_ROW, MessageIndex, NOT_LOGGED, StoredAccount, StoredContact, StoredToken, Tables, be,
    from_json, int_at, key2, to_json,
};
use crate::core::events::{new_event, new_event_id_apart};
use crate::core::stats::StoreStats;
use crate::core::time::{now_micros, to_timestamp};
use crate::core::{AccountId, CommittedEvent, CoreError, CoreResult, MessageState, uuid_text};
use crate::pb::{self, event::Kind};
use crate::store::jobs::{Job, WriteOp, WriteOutput, can_wait, log_delivered, next_group};
use crate::store::sqlite::pair_key;
use crate::store::syncer::{Committed, Durable, Reply, hand_over};
use crate::store::{Handed, SentMessage};

/// An account as the writer tracks it.
struct Account {
    row: i64,
    /// Newest seq assigned in its log.
    head: u64,
    /// Every MessageReceived in its log up to this seq is DELIVERED or READ: a receipt below it
    /// has nothing left to record (`mark_delivered`). Ahead of the stored one while the events
    /// logged after it hold no MessageReceived (`Tx::append_encoded`): what it claims is still
    /// true, and a stream that starts at the head can then move it.
    delivered: u64,
    /// The watermark on disk, where `delivered` starts after a restart.
    stored: u64,
    /// A seq above `delivered` that `walk_gap` could not pass (0: none known), such as a
    /// MessageReceived still undelivered: while it lies between the watermark and where a
    /// receipt's stretch starts, the receipt does not walk.
    blocked: u64,
}

/// What the writer knows beyond the tables.
pub(crate) struct State {
    accounts: foldhash::HashMap<AccountId, Account>,
    next_account: i64,
    next_contact: i64,
    next_message: i64,
}

impl State {
    /// Reads the writer's state from the tables; each log shows its newest `retention` events,
    /// and compactions may drop the rest (every head on disk at open is durable).
    pub fn load(t: &Tables, retention: u64) -> CoreResult<Self> {
        let mut accounts = foldhash::HashMap::default();
        let mut heads = Vec::new();
        for g in t.account_ids.iter() {
            let (k, v) = g.into_inner()?;
            let id = Uuid::from_slice(&k).map_err(CoreError::internal)?;
            let row = int_at(&v, 0)?;
            let head = t.head(row)?;
            heads.push((row, head));
            let delivered = t.delivered_through(row)?;
            let account = Account {
                row,
                head,
                delivered,
                stored: delivered,
                blocked: 0,
            };
            accounts.insert(id, account);
        }
        t.retention.load(t, retention, &heads)?;
        let mut next_contact = 1;
        for g in t.contacts.iter() {
            let c: StoredContact = from_json(&g.value()?)?;
            next_contact = next_contact.max(c.row + 1);
        }
        Ok(State {
            next_account: Tables::last_row(&t.accounts)? + 1,
            next_message: t.newest_message_row()? + 1,
            accounts,
            next_contact,
        })
    }

    /// The newest message row on disk.
    pub fn newest_message(&self) -> i64 {
        self.next_message - 1
    }

    fn row(&self, id: AccountId) -> Option<i64> {
        self.accounts.get(&id).map(|a| a.row)
    }
}

/// Runs until every sender is gone; every job taken is answered first.
pub(crate) fn run(
    t: Tables,
    mut st: State,
    mut jobs: mpsc::Receiver<Job>,
    synced: std::sync::mpsc::SyncSender<Committed>,
    durable: Arc<Durable>,
    stats: StoreStats,
    mut prefill: Prefill,
) {
    while let Some(group) = next_group(&mut jobs, &stats) {
        let timer = stats.commit_seconds.start_timer();
        let committed = commit_group(&t, &mut st, group, &durable);
        timer.observe_duration();
        hand_over(&synced, committed);
        // Between commits, on the one thread that commits (`prefill`); after the hand-over,
        // so that the group's fsync does not wait for it.
        prefill.ahead();
    }
    if !durable.broken.load(Ordering::Acquire)
        && let Err(e) = save_watermarks(&t, &mut st)
    {
        tracing::warn!(error = %e, "store: could not keep the delivered watermarks");
    }
    if let Err(e) = t.db.persist(PersistMode::SyncAll) {
        tracing::error!(error = %e, "store: final journal sync failed");
    }
}

/// Writes each watermark that followed its account's head in memory further than the one on
/// disk, so that after a restart a stream starting at the head moves it on instead of writing
/// its receipts' entries one by one (an account's log commonly ends with its own sends). Run
/// as the writer closes, when every event is committed: the final journal sync makes these
/// durable after them. After a crash the stored ones stand until a receipt's `walk_gap` moves
/// them. How many were written.
fn save_watermarks(t: &Tables, st: &mut State) -> CoreResult<usize> {
    let mut batch = t.db.batch();
    for a in st.accounts.values().filter(|a| a.delivered > a.stored) {
        batch.insert(&t.delivered, be(a.row), be(a.delivered as i64));
    }
    let n = batch.len();
    if n > 0 {
        batch.commit()?;
        for a in st.accounts.values_mut() {
            a.stored = a.delivered;
        }
    }
    Ok(n)
}

/// Writes a group's jobs and hands their journal bytes to the OS; the group then goes to the
/// syncer. A failure to hand them over is answered here at once.
fn commit_group(t: &Tables, st: &mut State, group: Vec<Job>, d: &Durable) -> Option<Committed> {
    let can_wait = can_wait(&group);
    let mut done = Written {
        replies: Vec::with_capacity(group.len()),
        events: Vec::new(),
        message_row: None,
    };
    let mut run: Option<Run> = None;
    for job in group {
        let refused = if d.broken.load(Ordering::Acquire) {
            Some(CoreError::Unavailable(
                "storage failed earlier; writes are refused".into(),
            ))
        } else if job.reply.is_closed() {
            // The caller is gone (deadline, cancellation) and was told the call failed.
            Some(CoreError::Unavailable("the caller left".into()))
        } else {
            None
        };
        if let Some(e) = refused {
            done.replies.push((job.reply, Err(e)));
            continue;
        }
        let kind = RunKind::of(&job.op);
        // A run holds jobs of one kind; a job of no run's kind is a run of its own, since it
        // may read what the run before it wrote (an `Alone` run is committed as soon as its
        // job is added, so a run still open here is never `Alone`).
        if run.as_ref().is_some_and(|r| r.kind != kind)
            && let Some(r) = run.take()
        {
            r.commit(t, st, d, &mut done);
        }
        let r = run.get_or_insert_with(|| Run::start(t, kind, &done));
        let whole = r.add(t, st, d, job.reply, job.op, &mut done);
        // A job that failed after writing spoils its run's batch (a send or a receipt cannot:
        // see `Run`).
        if !whole {
            if let Some(r) = run.take() {
                r.from.fail(st, &mut done, || {
                    CoreError::Internal("a job of the same batch failed midway".into())
                });
            }
        } else if kind == RunKind::Alone
            && let Some(r) = run.take()
        {
            r.commit(t, st, d, &mut done);
        }
    }
    if let Some(r) = run.take() {
        r.commit(t, st, d, &mut done);
    }
    let Written {
        replies,
        events,
        message_row,
    } = done;
    if replies.iter().any(|(_, r)| r.is_ok())
        && let Err(e) = t.db.persist(PersistMode::Buffer)
    {
        d.broken.store(true, Ordering::Release);
        tracing::error!(error = %e, "store journal write failed; refusing writes from now on");
        for (reply, _) in replies {
            let _ = reply.send(Err(CoreError::Unavailable(
                "storage write failed; the write may not be durable".into(),
            )));
        }
        return None;
    }
    // Compactions may drop what this group's events pushed out of their logs once it is
    // durable, not before: a crash before the fsync takes the pushing events with it.
    let retention = t.retention.clone();
    let keep = retention.keep();
    let pushed: Vec<(i64, u64)> = events
        .iter()
        .filter(|e| e.event.seq > keep)
        .filter_map(|e| Some((st.row(e.account_id)?, e.event.seq - keep)))
        .collect();
    let on_durable = (!pushed.is_empty())
        .then(|| Box::new(move || retention.raise(&pushed)) as Box<dyn FnOnce() + Send>);
    Some(Committed {
        replies,
        events,
        message_row,
        can_wait,
        on_durable,
    })
}

/// What a group has written so far: its answers, its events, its newest message row.
struct Written {
    replies: Vec<Reply>,
    events: Vec<CommittedEvent>,
    message_row: Option<i64>,
}

/// Consecutive jobs of one kind in a group, written as one fjall batch (any other job is a
/// run of its own, `RunKind::Alone`): each batch's commit has fixed costs (journal lock,
/// seqno, each keyspace's memtable checks: 1-2 of fjall's ~10 µs per send, BENCHMARKS.md).
/// A job of a run reads the tables, not the batch, so a run
/// holds only jobs that read nothing an earlier one of it wrote, but what the run keeps for
/// them: a send, the idempotency keys of the run's sends; a live receipt, the messages the
/// run's receipts already made DELIVERED and the watermarks they moved. Every
/// fallible check of a job comes before its first write, so a refused job leaves nothing in
/// the batch.
struct Run {
    kind: RunKind,
    batch: OwnedWriteBatch,
    /// Idempotency keys the run's sends wrote, with their messages.
    client_keys: HashMap<Vec<u8>, Arc<pb::Message>>,
    /// Messages the run's receipts made DELIVERED.
    delivered: foldhash::HashSet<Uuid>,
    /// Where the run starts in the group.
    from: RunStart,
    /// Jobs written.
    jobs: usize,
}

/// The jobs a [`Run`] can hold.
#[derive(Clone, Copy, PartialEq)]
enum RunKind {
    Sends,
    LiveReceipts,
    /// Any other job: a run of one.
    Alone,
}

impl RunKind {
    /// The run `op` can join.
    fn of(op: &WriteOp) -> Self {
        match op {
            WriteOp::SendMessage(_) => RunKind::Sends,
            WriteOp::MarkDelivered {
                handed: Handed::Live(_),
                ..
            } => RunKind::LiveReceipts,
            _ => RunKind::Alone,
        }
    }
}

/// Where a [`Run`] starts in its group: what undoing it goes back to.
struct RunStart {
    reply: usize,
    event: usize,
    /// The group's newest message row before the run.
    message_row: Option<i64>,
    /// Accounts whose delivered watermark the run moved, with where it was before.
    marks: foldhash::HashMap<AccountId, u64>,
}

impl RunStart {
    /// Undoes the run in `done`: its jobs are answered `error`, its events are dropped and
    /// their seqs given back, and the watermarks it moved put back.
    fn fail(self, st: &mut State, done: &mut Written, error: impl Fn() -> CoreError) {
        for (account, before) in self.marks {
            if let Some(a) = st.accounts.get_mut(&account) {
                a.delivered = before;
            }
        }
        give_back(st, &done.events[self.event..]);
        done.events.truncate(self.event);
        done.message_row = self.message_row;
        for (_, result) in &mut done.replies[self.reply..] {
            if result.is_ok() {
                *result = Err(error());
            }
        }
    }
}

impl Run {
    fn start(t: &Tables, kind: RunKind, done: &Written) -> Self {
        Run {
            kind,
            batch: t.db.batch(),
            client_keys: HashMap::new(),
            delivered: foldhash::HashSet::default(),
            from: RunStart {
                reply: done.replies.len(),
                event: done.events.len(),
                message_row: done.message_row,
                marks: foldhash::HashMap::default(),
            },
            jobs: 0,
        }
    }

    /// Adds one job of the run's kind, answering it into `done`; false if it failed after
    /// writing to the batch (it cannot: each checks first), which spoils the whole run.
    fn add(
        &mut self,
        t: &Tables,
        st: &mut State,
        d: &Durable,
        reply: oneshot::Sender<CoreResult<WriteOutput>>,
        op: WriteOp,
        done: &mut Written,
    ) -> bool {
        let before = self.batch.len();
        let mut tx = Tx {
            t,
            st,
            batch: &mut self.batch,
            events: Vec::new(),
            message_row: None,
            client_keys: &mut self.client_keys,
            delivered: &mut self.delivered,
            marks: &mut self.from.marks,
        };
        match apply(&mut tx, op) {
            Ok(out) => {
                // Readers must not see these events before the journal sync.
                d.fence(&tx.events);
                done.events.append(&mut tx.events);
                done.message_row = tx.message_row.or(done.message_row);
                done.replies.push((reply, Ok(out)));
                self.jobs += 1;
                true
            }
            Err(e) => {
                let whole = tx.batch.len() == before;
                give_back(tx.st, &tx.events);
                done.replies.push((reply, Err(e)));
                whole
            }
        }
    }

    /// Commits the run; on failure its jobs are answered UNAVAILABLE and nothing is stored.
    fn commit(mut self, t: &Tables, st: &mut State, d: &Durable, done: &mut Written) {
        // The run wrote a message (rows only grow): the newest row goes with it, once per
        // batch, since fjall gives all of a batch's items one seqno and a key twice in it
        // would be ambiguous.
        if done.message_row != self.from.message_row {
            self.batch
                .insert(&t.counters, MESSAGE_ROW, be(st.next_message - 1));
        }
        // Likewise each watermark the run moved, once, at where it ended.
        for account in self.from.marks.keys() {
            if let Some(a) = st.accounts.get(account) {
                self.batch
                    .insert(&t.delivered, be(a.row), be(a.delivered as i64));
            }
        }
        if let Err(e) = self.batch.commit() {
            d.broken.store(true, Ordering::Release);
            tracing::error!(error = %e, "store write failed; refusing writes from now on");
            self.from.fail(st, done, || {
                CoreError::Unavailable("storage write failed; nothing was stored".into())
            });
            return;
        }
        for account in self.from.marks.keys() {
            if let Some(a) = st.accounts.get_mut(account) {
                a.stored = a.delivered;
            }
        }
    }
}

/// Gives back the seqs `events` took (their writes were not stored), and any watermark that
/// moved over them: a seq given back may next hold a MessageReceived.
fn give_back(st: &mut State, events: &[CommittedEvent]) {
    for ev in events {
        if let Some(a) = st.accounts.get_mut(&ev.account_id) {
            a.head = a.head.min(ev.event.seq - 1);
            a.delivered = a.delivered.min(a.head);
        }
    }
}

/// One job's writes, committed together.
struct Tx<'a> {
    t: &'a Tables,
    st: &'a mut State,
    batch: &'a mut OwnedWriteBatch,
    events: Vec<CommittedEvent>,
    message_row: Option<i64>,
    /// Idempotency keys written to `batch` and not yet committed, with their messages.
    client_keys: &'a mut HashMap<Vec<u8>, Arc<pb::Message>>,
    /// Messages made DELIVERED in `batch`, not yet committed.
    delivered: &'a mut foldhash::HashSet<Uuid>,
    /// Watermarks moved in `batch` (`RunStart::marks`).
    marks: &'a mut foldhash::HashMap<AccountId, u64>,
}

impl Tx<'_> {
    /// Appends an event to an account's log at its next seq; what that pushes out of the
    /// retention is hidden, not removed (`retention`). The account was checked by the caller.
    fn append(&mut self, account: AccountId, event: pb::Event) -> CoreResult<()> {
        self.append_encoded(CommittedEvent::whole(account, event), encode_event)
            .map(drop)
    }

    /// `append` of `c`, its event's record made by `encode`; the event's seq.
    fn append_encoded(
        &mut self,
        mut c: CommittedEvent,
        encode: impl FnOnce(&mut pb::Event) -> Vec<u8>,
    ) -> CoreResult<u64> {
        let account = c.account_id;
        let a = self
            .st
            .accounts
            .get_mut(&account)
            .ok_or_else(|| CoreError::Internal(format!("no account {account} to log for")))?;
        // Nothing undelivered below the head: an event that is no message to this account
        // keeps it so (in memory only, where a stream that starts at the head finds it).
        if a.delivered == a.head && !matches!(c.event.kind, Some(Kind::MessageReceived(_))) {
            a.delivered += 1;
        }
        a.head += 1;
        c.event.seq = a.head;
        // What this pushes out of the log is hidden at once and dropped later (`retention`).
        self.batch
            .insert(&self.t.events, key2(a.row, a.head), encode(&mut c.event));
        let seq = c.event.seq;
        self.events.push(c);
        Ok(seq)
    }

    fn put_account(&mut self, row: i64, a: &StoredAccount) -> CoreResult<()> {
        self.batch.insert(&self.t.accounts, be(row), to_json(a)?);
        Ok(())
    }

    /// Writes a message's index entry.
    fn put_index(&mut self, id: Uuid, index: &MessageIndex) {
        self.batch
            .insert(&self.t.message_ids, id.as_bytes(), index.encode());
    }

    /// Moves `account`'s delivered watermark up to `to` (never down), noting where the run found
    /// it so that the run writes it once and a failed run puts it back (`RunStart::marks`).
    fn move_watermark(&mut self, account: AccountId, to: u64) {
        if let Some(a) = self.st.accounts.get_mut(&account)
            && to > a.delivered
        {
            self.marks.entry(account).or_insert(a.delivered);
            a.delivered = to;
        }
    }

    /// The MessageReceived at `received` in `recipient`'s log is DELIVERED or READ now: if it
    /// was what held `walk_gap` back, the next gap may be walked again.
    fn unblock(&mut self, recipient: AccountId, received: u64) {
        if let Some(a) = self.st.accounts.get_mut(&recipient)
            && a.blocked == received
        {
            a.blocked = 0;
        }
    }
}

fn no_account() -> CoreError {
    CoreError::not_found("account_id", "no such account")
}

fn parse(id: &str) -> CoreResult<Uuid> {
    Uuid::parse_str(id).map_err(CoreError::internal)
}

fn apply(tx: &mut Tx, op: WriteOp) -> CoreResult<WriteOutput> {
    match op {
        WriteOp::CreateAccount(mut a, token) => {
            if tx.t.handles.contains_key(a.handle.as_bytes())? {
                return Err(CoreError::exists(
                    "handle",
                    format!("handle {:?} is taken", a.handle),
                ));
            }
            a.row = tx.st.next_account;
            tx.st.next_account += 1;
            tx.put_account(a.row, &StoredAccount::of(&a))?;
            tx.batch
                .insert(&tx.t.account_ids, a.id.as_bytes(), be(a.row));
            tx.batch
                .insert(&tx.t.handles, a.handle.as_bytes(), be(a.row));
            put_token(tx, &token)?;
            tx.st.accounts.insert(
                a.id,
                Account {
                    row: a.row,
                    head: 0,
                    delivered: 0,
                    stored: 0,
                    blocked: 0,
                },
            );
            Ok(WriteOutput::Account(a))
        }
        WriteOp::IssueToken(token) => {
            tx.st.row(token.account_id).ok_or_else(no_account)?;
            put_token(tx, &token)?;
            Ok(WriteOutput::Token(token))
        }
        WriteOp::RevokeToken(id) => {
            let stored: StoredToken = match tx.t.tokens.get(id.as_bytes())? {
                Some(v) => from_json(&v)?,
                None => return Err(CoreError::not_found("token_id", "no such live token")),
            };
            tx.batch.remove(&tx.t.tokens, id.as_bytes());
            Ok(WriteOutput::Token(crate::core::TokenRecord {
                id,
                account_id: stored.account_id,
                hash: stored.hash,
            }))
        }
        WriteOp::SetStatus(id, status, text) => update_account(tx, id, |a| {
            a.status = status as i32;
            a.status_text = text;
        }),
        WriteOp::SetLastSeen(id, at) => update_account(tx, id, |a| a.last_seen = Some(at)),
        WriteOp::AddContact(mut c, event) => {
            let unknown = || CoreError::not_found("handle", "no such account");
            let owner = tx.st.row(c.owner).ok_or_else(unknown)?;
            let peer = tx.st.row(c.peer).ok_or_else(unknown)?;
            let key = key2(owner, peer as u64);
            if tx.t.contacts.contains_key(key)? {
                return Err(CoreError::exists("handle", "already a contact"));
            }
            c.row = tx.st.next_contact;
            tx.st.next_contact += 1;
            let stored = StoredContact {
                owner: c.owner,
                peer: c.peer,
                alias: c.alias.clone(),
                added_at: c.added_at,
                row: c.row,
            };
            tx.batch.insert(&tx.t.contacts, key, to_json(&stored)?);
            tx.append(c.owner, event)?;
            Ok(WriteOutput::Contact(c))
        }
        WriteOp::UpdateContact {
            owner,
            peer,
            alias,
            event,
        } => {
            let (key, mut stored) = contact(tx, owner, peer)?;
            stored.alias = alias;
            tx.batch.insert(&tx.t.contacts, key, to_json(&stored)?);
            tx.append(owner, event)?;
            Ok(WriteOutput::Done)
        }
        WriteOp::RemoveContact { owner, peer, event } => {
            let (key, _) = contact(tx, owner, peer)?;
            tx.batch.remove(&tx.t.contacts, key);
            tx.append(owner, event)?;
            Ok(WriteOutput::Done)
        }
        WriteOp::SendMessage(m) => send_message(tx, m),
        WriteOp::MarkRead {
            reader,
            sender,
            up_to,
        } => mark_read(tx, reader, sender, up_to),
        WriteOp::MarkDelivered {
            recipient,
            ids,
            handed,
        } => mark_delivered(tx, recipient, ids, handed),
    }
}

fn put_token(tx: &mut Tx, token: &crate::core::TokenRecord) -> CoreResult<()> {
    let stored = StoredToken {
        account_id: token.account_id,
        hash: token.hash.clone(),
        created_at: now_micros(),
    };
    tx.batch
        .insert(&tx.t.tokens, token.id.as_bytes(), to_json(&stored)?);
    Ok(())
}

fn update_account(
    tx: &mut Tx,
    id: AccountId,
    change: impl FnOnce(&mut StoredAccount),
) -> CoreResult<WriteOutput> {
    let row = tx.st.row(id).ok_or_else(no_account)?;
    let mut a = tx.t.account(row)?.ok_or_else(no_account)?;
    change(&mut a);
    tx.put_account(row, &a)?;
    Ok(WriteOutput::Done)
}

/// The key and record of `owner`'s contact `peer`, or `NotFound`.
fn contact(tx: &Tx, owner: AccountId, peer: AccountId) -> CoreResult<([u8; 16], StoredContact)> {
    let not_found = || CoreError::not_found("contact_id", "not one of your contacts");
    let (Some(o), Some(p)) = (tx.st.row(owner), tx.st.row(peer)) else {
        return Err(not_found());
    };
    let key = key2(o, p as u64);
    match tx.t.contacts.get(key)? {
        Some(v) => Ok((key, from_json(&v)?)),
        None => Err(not_found()),
    }
}

/// The sender's row and `client_message_id` as one key.
pub(super) fn client_key(sender_row: i64, client_message_id: &str) -> Vec<u8> {
    let mut k = be(sender_row).to_vec();
    k.extend_from_slice(client_message_id.as_bytes());
    k
}

fn send_message(tx: &mut Tx, mut m: pb::Message) -> CoreResult<WriteOutput> {
    let sender = parse(&m.sender_id)?;
    let recipient = parse(&m.recipient_id)?;
    let id = parse(&m.message_id)?;
    let sender_row = tx
        .st
        .row(sender)
        .ok_or_else(|| CoreError::Internal(format!("no account {sender} to send from")))?;
    let client_key =
        (!m.client_message_id.is_empty()).then(|| client_key(sender_row, &m.client_message_id));
    if let Some(key) = &client_key {
        let earlier = match tx.client_keys.get(key) {
            Some(m) => Some(m.clone()),
            None => match tx.t.client_ids.get(key)? {
                Some(at) => Some(Arc::new(tx.t.message_at(&at)?)),
                None => None,
            },
        };
        if let Some(message) = earlier {
            return Ok(WriteOutput::Sent(SentMessage {
                message,
                duplicate: true,
            }));
        }
    }
    let recipient_row = tx
        .st
        .row(recipient)
        .ok_or_else(|| CoreError::not_found("recipient_id", "no such account"))?;
    if m.sent_at.is_none() {
        m.sent_at = Some(to_timestamp(now_micros()));
    }
    let row = tx.st.next_message;
    tx.st.next_message += 1;
    let record = encode_message(&mut m, Some([id, sender, recipient]));
    let mut index = MessageIndex {
        pair: pair_key(sender_row, recipient_row),
        row,
        recipient: recipient_row,
        sender,
        state: m.state,
        received: NOT_LOGGED,
    };
    // The record's key: the idempotency entry and both events refer to it.
    let at = index.key();
    tx.batch.insert(&tx.t.messages, at, record);
    // The reply, both events and a later send of the same key in this run share the message;
    // the events get it only if a live stream shows them (`CommittedEvent::into_event`).
    let m = Arc::new(m);
    if let Some(key) = client_key {
        tx.batch.insert(&tx.t.client_ids, key.as_slice(), at);
        tx.client_keys.insert(key, m.clone());
    }
    tx.message_row = Some(row);
    // The sender's event first, so that a message to oneself logs MessageSent before
    // MessageReceived.
    let log = |tx: &mut Tx, account: AccountId, kind: Kind| {
        let (event, event_id) = new_event_id_apart(kind);
        let c = CommittedEvent {
            account_id: account,
            event,
            message: Some((m.clone(), event_id)),
        };
        tx.append_encoded(c, |e| encode_message_event(e, Some(event_id), &at))
    };
    log(tx, sender, Kind::MessageSent(Default::default()))?;
    index.received = log(tx, recipient, Kind::MessageReceived(Default::default()))?;
    tx.put_index(id, &index);
    Ok(WriteOutput::Sent(SentMessage {
        message: m,
        duplicate: false,
    }))
}

/// Makes every message from `sender` to `reader` up to `up_to` READ. READ is always a prefix
/// of a direction (only this sets it, and it sets everything up to a point), so the walk goes
/// back from `up_to` and stops at the first message already READ.
fn mark_read(
    tx: &mut Tx,
    reader: AccountId,
    sender: AccountId,
    up_to: Uuid,
) -> CoreResult<WriteOutput> {
    let not_found =
        || CoreError::not_found("up_to_message_id", "no such message from contact_id to you");
    let (Some(reader_row), Some(sender_row)) = (tx.st.row(reader), tx.st.row(sender)) else {
        return Err(not_found());
    };
    let up = tx.t.message_index(up_to)?.ok_or_else(not_found)?;
    if up.sender != sender || up.recipient != reader_row {
        return Err(not_found());
    }
    let read = MessageState::Read as i32;
    let pair = pair_key(sender_row, reader_row);
    let mut ids = Vec::new();
    let t = tx.t;
    // The conversation's messages both ways, newest first.
    for g in t.messages.range(key2(pair, 0)..=up.key()).rev() {
        let (m, id, index) = t.record_and_index(&g.value()?)?;
        if index.sender != sender {
            continue;
        }
        if index.state >= read {
            break;
        }
        tx.put_index(
            id,
            &MessageIndex {
                state: read,
                ..index
            },
        );
        tx.unblock(reader, index.received);
        ids.push(m.message_id);
    }
    ids.sort(); // UUIDv7: time order
    if !ids.is_empty() {
        let kind = Kind::MessageStateChanged(pb::MessageStateChanged {
            contact_id: uuid_text(reader),
            message_ids: ids.clone(),
            state: read,
        });
        tx.append(sender, new_event(kind))?;
    }
    Ok(WriteOutput::Ids(ids))
}

/// Events of a log `walk_gap` reads for one receipt: a longer gap is walked over several.
/// Each receipt's walk holds up the writer, so it is kept short: 64 delivered
/// MessageReceived took 60–68 µs to walk, 64 other events 17 µs (release build, in memtables;
/// BENCHMARKS.md, thirty-ninth session).
const GAP_WALK: usize = 64;

/// How far the delivered watermark of the account at `row` may move up from `from` towards
/// `to` by what its log holds: over events that are no message to it and MessageReceived whose
/// messages are DELIVERED or READ already (by their entries, or by `made`: this run's). It
/// stops after `GAP_WALK` events, or at a seq it cannot pass, which it gives too: a message
/// still undelivered (or whose record is missing), or the first seq after a stretch the log
/// lacks (retention took it, so what it held is unknown). This is what
/// lets a stream that began above a message delivered since, or a restart after a crash (the
/// in-memory watermark lost), move the watermark again instead of writing every entry.
fn walk_gap(
    t: &Tables,
    row: i64,
    from: u64,
    to: u64,
    made: &foldhash::HashSet<Uuid>,
) -> CoreResult<(u64, Option<u64>)> {
    let delivered = MessageState::Delivered as i32;
    let mut walked = from;
    for g in t.shown_events(row, from, to).take(GAP_WALK) {
        let (key, value) = g.into_inner()?;
        let seq = int_at(&key, 8)? as u64;
        if seq != walked + 1 {
            return Ok((walked, Some(seq)));
        }
        let stored = decode_event(&value)?;
        if let Some(Kind::MessageReceived(r)) = &stored.event.kind {
            let (id, index) = match (&r.message, stored.message_at) {
                (Some(m), _) => {
                    let id = Uuid::parse_str(&m.message_id).map_err(CoreError::internal)?;
                    (id, t.message_index(id)?)
                }
                (None, Some(at)) => match t.messages.get(at)? {
                    Some(record) => {
                        let (_, id, index) = t.record_and_index(&record)?;
                        (id, Some(index))
                    }
                    None => return Ok((walked, Some(seq))),
                },
                (None, None) => return Ok((walked, Some(seq))),
            };
            if !made.contains(&id) && index.is_none_or(|i| i.state < delivered) {
                return Ok((walked, Some(seq)));
            }
        }
        walked = seq;
    }
    Ok((walked, None))
}

/// Makes messages to `recipient` DELIVERED where they are still SENT (a READ message stays
/// READ: READ implies DELIVERED), logging one MessageStateChanged per sender.
///
/// With a stretch of the log it covers (a replay chunk, or what a live stream handed out
/// since its last receipt: every MessageReceived of that stretch is among `ids`), a stretch at
/// or below the recipient's delivered watermark is skipped without a lookup, and one that
/// starts at or below it moves the watermark to its end. Its messages then read as DELIVERED
/// by the watermark (`MessageIndex::state_at`), so their index entries are not rewritten: the
/// receipt writes the watermark (once per run, `Run::commit`) and the senders' events alone.
fn mark_delivered(
    tx: &mut Tx,
    recipient: AccountId,
    ids: Vec<String>,
    handed: Handed,
) -> CoreResult<WriteOutput> {
    let covers = handed.covers();
    let (recipient_row, mut watermark, blocked) = match tx.st.accounts.get(&recipient) {
        Some(a) => (a.row, a.delivered, a.blocked),
        None => return Err(no_account()),
    };
    if covers.is_some_and(|c| c.through <= watermark) {
        return Ok(WriteOutput::Ids(Vec::new()));
    }
    // A stretch that starts past the watermark: what lies between may be delivered already
    // (by entries, or it is no message to this account), which the log tells.
    if let Some(c) = covers
        && c.after > watermark
        && !(watermark < blocked && blocked <= c.after)
    {
        let (walked, stopped) = walk_gap(tx.t, recipient_row, watermark, c.after, tx.delivered)?;
        if let Some(a) = tx.st.accounts.get_mut(&recipient) {
            a.blocked = stopped.unwrap_or(0);
        }
        tx.move_watermark(recipient, walked);
        watermark = watermark.max(walked);
    }
    // The watermark after this receipt: a chunk that starts past it leaves a gap, so it moves
    // nothing and its messages are written DELIVERED one by one.
    let moved_to = covers.filter(|c| c.after <= watermark).map(|c| c.through);
    let r = uuid_text(recipient);
    let delivered = MessageState::Delivered as i32;
    let mut by_sender: BTreeMap<AccountId, Vec<String>> = BTreeMap::new();
    let t = tx.t;
    // One set, sized once: a replay chunk's 512 ids made the writer's hashing and rehashing a
    // tenth of its CPU in the first replay (BENCHMARKS.md, thirty-fifth session).
    tx.delivered.reserve(ids.len());
    for id in ids {
        let Ok(uuid) = Uuid::parse_str(&id) else {
            continue;
        };
        // Made DELIVERED already, by this receipt or an earlier one of the run. An id this
        // receipt repeats but did not change is looked up again and skipped again.
        if tx.delivered.contains(&uuid) {
            continue;
        }
        let Some(index) = t.message_index(uuid)? else {
            continue;
        };
        if index.recipient != recipient_row || index.state_at(watermark) >= delivered {
            continue;
        }
        if moved_to.is_none_or(|mark| index.received > mark) {
            let state = MessageIndex {
                state: delivered,
                ..index
            };
            tx.put_index(uuid, &state);
            tx.unblock(recipient, index.received);
        }
        by_sender.entry(index.sender).or_default().push(id);
        tx.delivered.insert(uuid);
    }
    let changed = log_delivered(&r, by_sender, |sender, event| tx.append(sender, event))?;
    if let Some(mark) = moved_to {
        tx.move_watermark(recipient, mark);
    }
    Ok(WriteOutput::Ids(changed))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::core::{AccountRecord, PresenceStatus, TokenRecord};
    use crate::store::LogRange;
    use crate::store::lsm::records::decode_message;

    /// Creates an account with this handle; its id.
    pub(in crate::store::lsm) fn create(
        t: &Tables,
        st: &mut State,
        d: &Durable,
        handle: &str,
    ) -> AccountId {
        let id = Uuid::new_v4();
        let account = AccountRecord {
            id,
            handle: handle.into(),
            display_name: handle.into(),
            created_at: now_micros(),
            status: PresenceStatus::Online,
            status_text: String::new(),
            last_seen: None,
            row: 0,
        };
        let token = TokenRecord {
            id: Uuid::new_v4(),
            account_id: id,
            hash: handle.into(),
        };
        run_job(t, st, WriteOp::CreateAccount(account, token), d).unwrap();
        id
    }

    fn send(t: &Tables, st: &mut State, d: &Durable, from: AccountId, to: AccountId) -> Uuid {
        let id = Uuid::now_v7();
        let m = pb::Message {
            message_id: id.to_string(),
            sender_id: from.to_string(),
            recipient_id: to.to_string(),
            text: "hi".into(),
            state: MessageState::Sent as i32,
            ..Default::default()
        };
        run_job(t, st, WriteOp::SendMessage(m), d).unwrap();
        id
    }

    /// A receipt of `ids` to `to`, handed out as `handed`.
    fn receipt(to: AccountId, ids: &[Uuid], handed: Handed) -> WriteOp {
        WriteOp::MarkDelivered {
            recipient: to,
            ids: ids.iter().map(Uuid::to_string).collect(),
            handed,
        }
    }

    /// A receipt of `ids` to `to`, handed out live from the stretch after `after` through
    /// `through` of its log.
    fn live_stretch(to: AccountId, ids: &[Uuid], after: u64, through: u64) -> WriteOp {
        receipt(to, ids, Handed::Live(Some(LogRange { after, through })))
    }

    fn delivered(t: &Tables, st: &mut State, d: &Durable, to: AccountId, ids: &[Uuid]) -> usize {
        let op = receipt(to, ids, Handed::Live(None));
        match run_job(t, st, op, d).unwrap().0 {
            WriteOutput::Ids(changed) => changed.len(),
            _ => panic!("MarkDelivered answers ids"),
        }
    }

    /// The index entry of message `id`, which must exist.
    fn entry(t: &Tables, id: Uuid) -> MessageIndex {
        t.message_index(id).unwrap().unwrap()
    }

    /// A message's state, as its index entry and its recipient's watermark give it, and as a
    /// read of its record gives it.
    fn state_of(t: &Tables, id: Uuid) -> i32 {
        let index = entry(t, id);
        let state = index.state_at(t.delivered_through(index.recipient).unwrap());
        assert_eq!(t.message_at(&index.key()).unwrap().state, state);
        state
    }

    /// A fresh store with two accounts, "a" and "b", and logs of `retention` events.
    fn two_accounts(
        retention: u64,
    ) -> (
        tempfile::TempDir,
        Tables,
        State,
        Durable,
        AccountId,
        AccountId,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let t = Tables::open(dir.path()).unwrap();
        let mut st = State::load(&t, retention).unwrap();
        let d = Durable::new(0);
        let (a, b) = (create(&t, &mut st, &d, "a"), create(&t, &mut st, &d, "b"));
        (dir, t, st, d, a, b)
    }

    #[test]
    fn flushed_tables_are_compressed_and_read_back() {
        let (_dir, t, mut st, d, a, b) = two_accounts(1_000_000);
        let ids: Vec<Uuid> = (0..2_000).map(|_| send(&t, &mut st, &d, a, b)).collect();
        for ks in [&t.events, &t.messages] {
            ks.rotate_memtable_and_wait().unwrap();
            assert_eq!(ks.sealed_memtable_count(), 0);
            assert!(ks.table_count() > 0, "the writes went to a table");
        }
        // Read back from the tables: every event, with its message joined, in order.
        let b_row = st.row(b).unwrap();
        let received: Vec<String> = t
            .read_log(b_row, 0, usize::MAX)
            .unwrap()
            .into_iter()
            .filter_map(|e| match e.kind {
                Some(Kind::MessageReceived(r)) => r.message.map(|m| m.message_id),
                _ => None,
            })
            .collect();
        let sent: Vec<String> = ids.iter().map(Uuid::to_string).collect();
        assert_eq!(received, sent);
        // Uncompressed, a table holds about the raw bytes (98% of them: keys share prefixes).
        let mut raw = 0u64;
        for kv in t.messages.iter() {
            let (k, v) = kv.into_inner().unwrap();
            raw += (k.len() + v.len()) as u64;
        }
        let on_disk = t.messages.disk_space();
        assert!(
            on_disk * 10 < raw * 7,
            "{on_disk} bytes on disk for {raw} raw"
        );
    }

    /// A send's two events share its message with its reply, and carry neither the message
    /// nor their ids' text until a live stream shows them (most reach none): then they are
    /// what the log reads back.
    #[test]
    fn a_sends_events_share_its_message_until_they_are_shown() {
        let (_dir, t, mut st, d, a, b) = two_accounts(1000);
        let op = WriteOp::SendMessage(message(a, b, ""));
        let (out, events) = run_job(&t, &mut st, op, &d).unwrap();
        let WriteOutput::Sent(sent) = out else {
            panic!("SendMessage answers Sent")
        };
        assert_eq!(
            Arc::strong_count(&sent.message),
            3,
            "one message, three holders"
        );
        assert_eq!(events.len(), 2);
        for c in &events {
            assert!(c.event.event_id.is_empty(), "no id text yet");
            assert!(matches!(
                &c.event.kind,
                Some(Kind::MessageSent(pb::MessageSent { message: None }))
                    | Some(Kind::MessageReceived(pb::MessageReceived { message: None }))
            ));
        }
        let logged = [a, b].map(|x| t.read_log(st.row(x).unwrap(), 0, 10).unwrap());
        let shown: Vec<pb::Event> = events.into_iter().map(CommittedEvent::into_event).collect();
        assert_eq!(logged, [vec![shown[0].clone()], vec![shown[1].clone()]]);
        assert!(matches!(&shown[1].kind, Some(Kind::MessageReceived(r))
            if r.message.as_ref() == Some(&*sent.message)));
        assert_eq!(
            Arc::strong_count(&sent.message),
            1,
            "the events took copies"
        );
    }

    /// `n` sends from `a` to itself: both events of each go to the one log.
    fn to_self(a: AccountId, n: usize) -> Vec<WriteOp> {
        (0..n)
            .map(|_| WriteOp::SendMessage(message(a, a, "")))
            .collect()
    }

    fn message(from: AccountId, to: AccountId, client_message_id: &str) -> pb::Message {
        pb::Message {
            message_id: Uuid::now_v7().to_string(),
            sender_id: from.to_string(),
            recipient_id: to.to_string(),
            text: "hi".into(),
            client_message_id: client_message_id.into(),
            state: MessageState::Sent as i32,
            ..Default::default()
        }
    }

    /// Runs `op` alone as a group, as the writer thread would; its answer and its events.
    pub(in crate::store::lsm) fn run_job(
        t: &Tables,
        st: &mut State,
        op: WriteOp,
        d: &Durable,
    ) -> CoreResult<(WriteOutput, Vec<CommittedEvent>)> {
        let (mut results, events) = group(t, st, d, vec![op]);
        results.pop().expect("one answer").map(|out| (out, events))
    }

    /// Runs `ops` as one group, as the writer thread would, and then what the syncer runs once
    /// it is durable; the answers it would send.
    fn group(
        t: &Tables,
        st: &mut State,
        d: &Durable,
        ops: Vec<WriteOp>,
    ) -> (Vec<CoreResult<WriteOutput>>, Vec<CommittedEvent>) {
        let committed = commit(t, st, d, ops);
        if let Some(then) = committed.on_durable {
            then();
        }
        let results = committed.replies.into_iter().map(|(_, r)| r).collect();
        (results, committed.events)
    }

    /// Runs `ops` as one group, as the writer thread would: what it hands to the syncer.
    fn commit(t: &Tables, st: &mut State, d: &Durable, ops: Vec<WriteOp>) -> Committed {
        let mut waiting = Vec::new();
        let jobs = ops
            .into_iter()
            .map(|op| {
                let (reply, rx) = oneshot::channel();
                // Held open: the writer refuses the job of a caller that went away.
                waiting.push(rx);
                Job { op, reply }
            })
            .collect();
        commit_group(t, st, jobs, d).expect("the group is written")
    }

    fn sent(r: &CoreResult<WriteOutput>) -> (String, bool) {
        match r {
            Ok(WriteOutput::Sent(s)) => (s.message.message_id.clone(), s.duplicate),
            Ok(_) => panic!("SendMessage answers Sent"),
            Err(e) => panic!("send failed: {e:?}"),
        }
    }

    /// Sends of one group share a batch: an idempotency key is seen by a later send of the
    /// same run, a refused send leaves the others whole, and a job that reads what the run
    /// wrote (MarkRead of its message) sees it.
    #[test]
    fn sends_of_a_group_share_one_batch() {
        let (_dir, t, mut st, d, a, b) = two_accounts(1000);
        let first = message(a, b, "k");
        let up_to = parse(&first.message_id).unwrap();
        let ops = vec![
            WriteOp::SendMessage(first),
            WriteOp::SendMessage(message(a, Uuid::new_v4(), "")),
            WriteOp::SendMessage(message(a, b, "k")),
            WriteOp::SendMessage(message(a, b, "other")),
            WriteOp::MarkRead {
                reader: b,
                sender: a,
                up_to,
            },
            WriteOp::SendMessage(message(a, b, "k")),
        ];
        let (results, events) = group(&t, &mut st, &d, ops);
        let (id, duplicate) = sent(&results[0]);
        assert!(!duplicate);
        assert!(matches!(results[1], Err(CoreError::NotFound { .. })));
        // The same key in the same run, and again after the run was committed.
        assert_eq!(sent(&results[2]), (id.clone(), true));
        assert_eq!(sent(&results[5]), (id.clone(), true));
        let (other, _) = sent(&results[3]);
        assert_ne!(other, id);
        match &results[4] {
            Ok(WriteOutput::Ids(ids)) => assert_eq!(ids, &vec![id.clone()]),
            _ => panic!("MarkRead answers the ids it marked"),
        }
        // Two events per new message and the sender's receipt, seqs without a gap.
        let seqs = |who: AccountId| -> Vec<u64> {
            let evs = events.iter().filter(|e| e.account_id == who);
            evs.map(|e| e.event.seq).collect()
        };
        assert_eq!(seqs(a), vec![1, 2, 3]);
        assert_eq!(seqs(b), vec![1, 2]);
        assert_eq!(t.head(st.row(a).unwrap()).unwrap(), 3);
        assert_eq!(t.head(st.row(b).unwrap()).unwrap(), 2);
        assert_eq!(state_of(&t, parse(&id).unwrap()), MessageState::Read as i32);
    }

    /// Live receipts of one group share a batch: a message in two of them is made DELIVERED
    /// once and logged once, a receipt of the wrong recipient changes nothing, and a send
    /// between two receipts ends the first run and starts its own.
    #[test]
    fn live_receipts_of_a_group_share_one_batch() {
        let (_dir, t, mut st, d, a, b) = two_accounts(1000);
        let ids: Vec<Uuid> = (0..3).map(|_| send(&t, &mut st, &d, a, b)).collect();
        let live = |to: AccountId, ids: &[Uuid]| receipt(to, ids, Handed::Live(None));
        let ops = vec![
            live(b, &ids[..2]),
            live(a, &ids),
            live(b, &ids[1..]),
            WriteOp::SendMessage(message(a, b, "")),
            live(b, &ids),
        ];
        let (results, events) = group(&t, &mut st, &d, ops);
        let changed = |r: &CoreResult<WriteOutput>| match r {
            Ok(WriteOutput::Ids(ids)) => ids.clone(),
            _ => panic!("MarkDelivered answers ids"),
        };
        let text = |ids: &[Uuid]| ids.iter().map(Uuid::to_string).collect::<Vec<_>>();
        assert_eq!(changed(&results[0]), text(&ids[..2]));
        assert!(changed(&results[1]).is_empty());
        assert_eq!(changed(&results[2]), text(&ids[2..]));
        assert!(changed(&results[4]).is_empty());
        for id in &ids {
            assert_eq!(state_of(&t, *id), MessageState::Delivered as i32);
        }
        // The sender's log: two MessageStateChanged (one per receipt that changed something),
        // then the new message; the recipient's: the new message.
        let kinds = |who: AccountId| -> Vec<(u64, &'static str)> {
            let evs = events.iter().filter(|e| e.account_id == who);
            evs.map(|e| {
                let kind = match e.event.kind {
                    Some(Kind::MessageStateChanged(_)) => "state",
                    Some(Kind::MessageSent(_)) => "sent",
                    Some(Kind::MessageReceived(_)) => "received",
                    _ => "other",
                };
                (e.event.seq, kind)
            })
            .collect()
        };
        assert_eq!(kinds(a), vec![(4, "state"), (5, "state"), (6, "sent")]);
        assert_eq!(kinds(b), vec![(4, "received")]);
        assert_eq!(t.head(st.row(a).unwrap()).unwrap(), 6);
    }

    /// A replay's receipt moves the recipient's watermark instead of rewriting index entries:
    /// its messages read as DELIVERED (in a record read too, and after a reopen) while their
    /// entries still say SENT, each sender is told once, a later live receipt changes nothing,
    /// and a chunk that leaves a gap after the watermark writes its entries one by one.
    #[test]
    fn a_replay_receipt_moves_the_watermark_instead_of_the_entries() {
        let (dir, t, mut st, d, a, b) = two_accounts(1000);
        let ids: Vec<Uuid> = (0..6).map(|_| send(&t, &mut st, &d, a, b)).collect();
        let seq = |id: Uuid| entry(&t, id).received;
        let (sent, delivered_state) = (MessageState::Sent as i32, MessageState::Delivered as i32);
        let replay = |st: &mut State, ids: &[Uuid], after: u64, through: u64| {
            let op = receipt(b, ids, Handed::Replay(LogRange { after, through }));
            match run_job(&t, st, op, &d).unwrap().0 {
                WriteOutput::Ids(changed) => changed,
                _ => panic!("MarkDelivered answers ids"),
            }
        };
        let text = |ids: &[Uuid]| ids.iter().map(Uuid::to_string).collect::<Vec<_>>();
        // Each MessageReceived's seq is in the entry, one after another in b's log.
        let first = seq(ids[0]);
        assert!(first >= 1 && first != NOT_LOGGED);
        for (n, id) in ids.iter().enumerate() {
            assert_eq!(seq(*id), first + n as u64);
        }

        assert_eq!(delivered(&t, &mut st, &d, b, &ids[..1]), 1);
        assert_eq!(entry(&t, ids[0]).state, delivered_state);
        let head_a = t.head(st.row(a).unwrap()).unwrap();
        // The first three, from the start of b's log: the live one is not told again.
        let through = seq(ids[2]);
        assert_eq!(replay(&mut st, &ids[..3], 0, through), text(&ids[1..3]));
        let b_row = st.row(b).unwrap();
        assert_eq!(t.delivered_through(b_row).unwrap(), through);
        for id in &ids[1..3] {
            assert_eq!(entry(&t, *id).state, sent, "the entry is not rewritten");
            assert_eq!(state_of(&t, *id), delivered_state);
        }
        assert_eq!(state_of(&t, ids[3]), sent);
        // One MessageStateChanged for the sender.
        assert_eq!(t.head(st.row(a).unwrap()).unwrap(), head_a + 1);
        // Delivered by the watermark already: no change, no event.
        assert_eq!(delivered(&t, &mut st, &d, b, &ids[1..3]), 0);
        assert_eq!(replay(&mut st, &ids[..3], 0, through), Vec::<String>::new());
        assert_eq!(t.head(st.row(a).unwrap()).unwrap(), head_a + 1);

        // A chunk past a gap (ids[3] not replayed) moves nothing and writes its entry.
        assert_eq!(
            replay(&mut st, &ids[4..5], seq(ids[3]), seq(ids[4])),
            text(&ids[4..5])
        );
        assert_eq!(t.delivered_through(b_row).unwrap(), through);
        assert_eq!(entry(&t, ids[4]).state, delivered_state);
        assert_eq!(state_of(&t, ids[3]), sent);

        // READ is written over a message DELIVERED by the watermark, up to the one asked.
        let op = WriteOp::MarkRead {
            reader: b,
            sender: a,
            up_to: ids[2],
        };
        match run_job(&t, &mut st, op, &d).unwrap().0 {
            WriteOutput::Ids(marked) => assert_eq!(marked, text(&ids[..3])),
            _ => panic!("MarkRead answers ids"),
        }
        assert_eq!(state_of(&t, ids[2]), MessageState::Read as i32);

        // The watermark survives a reopen, and the writer's state starts from it.
        t.db.persist(PersistMode::SyncAll).unwrap();
        drop(t);
        let t = Tables::open(dir.path()).unwrap();
        assert_eq!(
            State::load(&t, 1000).unwrap().accounts[&b].delivered,
            through
        );
        assert_eq!(state_of(&t, ids[1]), MessageState::Read as i32);
        assert_eq!(state_of(&t, ids[3]), sent);
        assert_eq!(state_of(&t, ids[5]), sent);
    }

    /// A live stream's receipts carry the stretch of the log they were handed out from, and
    /// move the watermark as a replay's do: two in one run move it to where the second ends
    /// and each tells the sender once, while the entries still say SENT. An event that is no
    /// message to an account keeps its watermark at the head in memory (never on disk), so a
    /// stream that starts at the head moves it; a stretch that starts past it (a message left
    /// undelivered) writes each entry instead.
    #[test]
    fn a_live_receipt_with_its_stretch_moves_the_watermark() {
        let (dir, t, mut st, d, a, b) = two_accounts(1000);
        let b_row = st.row(b).unwrap();
        let seq = |id: Uuid| entry(&t, id).received;
        let (sent, delivered_state) = (MessageState::Sent as i32, MessageState::Delivered as i32);
        // b's log opens with its own send: nothing to deliver to b below the head.
        send(&t, &mut st, &d, b, a);
        assert_eq!(st.accounts[&b].delivered, 1);
        assert_eq!(t.delivered_through(b_row).unwrap(), 0);
        let ids: Vec<Uuid> = (0..6).map(|_| send(&t, &mut st, &d, a, b)).collect();
        assert_eq!(st.accounts[&b].delivered, 1, "a MessageReceived stops it");
        let head_a = t.head(st.row(a).unwrap()).unwrap();
        // A stream opened at b's head (1): two receipts in one run.
        let ops = vec![
            live_stretch(b, &ids[..2], 1, seq(ids[1])),
            live_stretch(b, &ids[2..3], seq(ids[1]), seq(ids[2])),
        ];
        let (results, _) = group(&t, &mut st, &d, ops);
        for (r, n) in results.iter().zip([2, 1]) {
            match r {
                Ok(WriteOutput::Ids(changed)) => assert_eq!(changed.len(), n),
                _ => panic!("MarkDelivered answers ids"),
            }
        }
        assert_eq!(t.delivered_through(b_row).unwrap(), seq(ids[2]));
        assert_eq!(st.accounts[&b].delivered, seq(ids[2]));
        for id in &ids[..3] {
            assert_eq!(entry(&t, *id).state, sent, "the entry is not rewritten");
            assert_eq!(state_of(&t, *id), delivered_state);
        }
        assert_eq!(t.head(st.row(a).unwrap()).unwrap(), head_a + 2);
        // ids[3] is left undelivered: a stretch after it moves nothing and writes its entries.
        let (results, _) = group(
            &t,
            &mut st,
            &d,
            vec![live_stretch(b, &ids[4..], seq(ids[3]), seq(ids[5]))],
        );
        assert!(matches!(&results[0], Ok(WriteOutput::Ids(changed)) if changed.len() == 2));
        assert_eq!(t.delivered_through(b_row).unwrap(), seq(ids[2]));
        for id in &ids[4..] {
            assert_eq!(entry(&t, *id).state, delivered_state);
        }
        assert_eq!(state_of(&t, ids[3]), sent);
        // A receipt whose stretch the watermark passed already changes nothing.
        let (results, _) = group(
            &t,
            &mut st,
            &d,
            vec![live_stretch(b, &ids[..1], 1, seq(ids[0]))],
        );
        assert!(matches!(&results[0], Ok(WriteOutput::Ids(changed)) if changed.is_empty()));

        let mark = seq(ids[2]);
        t.db.persist(PersistMode::SyncAll).unwrap();
        drop(t);
        let t = Tables::open(dir.path()).unwrap();
        assert_eq!(State::load(&t, 1000).unwrap().accounts[&b].delivered, mark);
        assert_eq!(state_of(&t, ids[2]), delivered_state);
        assert_eq!(state_of(&t, ids[3]), sent);
    }

    /// A closing writer keeps each watermark that followed its account's head in memory, so
    /// that after a restart a stream that started at the head moves it on; one the runs wrote
    /// already, or held below the head by a message, is not written again.
    #[test]
    fn a_closing_writer_keeps_the_watermarks_it_followed() {
        let (dir, t, mut st, d, a, b) = two_accounts(1000);
        let b_row = st.row(b).unwrap();
        // b's log: its own send, then a message to it. A stream opened at b's head (1).
        send(&t, &mut st, &d, b, a);
        let id = send(&t, &mut st, &d, a, b);
        assert_eq!(st.accounts[&b].delivered, 1);
        assert_eq!(t.delivered_through(b_row).unwrap(), 0);
        // a's log holds a MessageReceived, undelivered: its watermark stays at 0.
        assert_eq!(save_watermarks(&t, &mut st).unwrap(), 1);
        assert_eq!(
            save_watermarks(&t, &mut st).unwrap(),
            0,
            "nothing left to write"
        );
        t.db.persist(PersistMode::SyncAll).unwrap();
        drop(t);

        let t = Tables::open(dir.path()).unwrap();
        let mut st = State::load(&t, 1000).unwrap();
        assert_eq!(st.accounts[&b].delivered, 1);
        assert_eq!(st.accounts[&a].delivered, 0);
        let through = entry(&t, id).received;
        let op = live_stretch(b, &[id], 1, through);
        run_job(&t, &mut st, op, &d).unwrap();
        assert_eq!(t.delivered_through(b_row).unwrap(), through);
        assert_eq!(
            entry(&t, id).state,
            MessageState::Sent as i32,
            "not rewritten"
        );
        assert_eq!(state_of(&t, id), MessageState::Delivered as i32);
        // The receipt's run wrote that watermark: closing again writes nothing for b.
        assert_eq!(st.accounts[&b].stored, through);
    }

    /// A live stretch that starts past the watermark walks the log between: a message still
    /// undelivered there holds the watermark (and is not walked to again until it is
    /// delivered); once it is, the walk moves the watermark over it, over messages delivered
    /// entry by entry and over the account's own events, and the stretch moves it on.
    #[test]
    fn a_stretch_past_the_watermark_walks_the_gap() {
        let (_dir, t, mut st, d, a, b) = two_accounts(1000);
        let b_row = st.row(b).unwrap();
        let seq = |id: Uuid| entry(&t, id).received;
        let (sent, delivered_state) = (MessageState::Sent as i32, MessageState::Delivered as i32);
        let ids: Vec<Uuid> = (0..3).map(|_| send(&t, &mut st, &d, a, b)).collect();
        send(&t, &mut st, &d, b, a);
        // A stream that began above ids[0], undelivered.
        run_job(
            &t,
            &mut st,
            live_stretch(b, &ids[1..2], seq(ids[0]), seq(ids[1])),
            &d,
        )
        .unwrap();
        assert_eq!(st.accounts[&b].blocked, seq(ids[0]));
        assert_eq!(t.delivered_through(b_row).unwrap(), 0);
        assert_eq!(entry(&t, ids[1]).state, delivered_state);
        run_job(
            &t,
            &mut st,
            live_stretch(b, &ids[2..3], seq(ids[1]), seq(ids[2])),
            &d,
        )
        .unwrap();
        assert_eq!(st.accounts[&b].blocked, seq(ids[0]), "not walked again");
        assert_eq!(t.delivered_through(b_row).unwrap(), 0);
        // ids[0] delivered by its entry: the next stretch walks the whole gap.
        assert_eq!(delivered(&t, &mut st, &d, b, &ids[..1]), 1);
        assert_eq!(st.accounts[&b].blocked, 0);
        let head = st.accounts[&b].head;
        let next = send(&t, &mut st, &d, a, b);
        run_job(&t, &mut st, live_stretch(b, &[next], head, seq(next)), &d).unwrap();
        assert_eq!(t.delivered_through(b_row).unwrap(), seq(next));
        assert_eq!(st.accounts[&b].delivered, seq(next));
        assert_eq!(entry(&t, next).state, sent, "moved over, not rewritten");
        for id in ids.iter().chain([&next]) {
            assert_eq!(state_of(&t, *id), delivered_state);
        }
    }

    /// The walk reads at most `GAP_WALK` events per receipt, moving the watermark as far as it
    /// got, and never over a seq that retention took (what it held is unknown).
    #[test]
    fn the_gap_walk_is_bounded_and_stops_at_a_trimmed_log() {
        let (_dir, t, mut st, d, a, b) = two_accounts(1000);
        let b_row = st.row(b).unwrap();
        let first = send(&t, &mut st, &d, a, b);
        for _ in 0..GAP_WALK + 40 {
            send(&t, &mut st, &d, b, a);
        }
        assert_eq!(delivered(&t, &mut st, &d, b, &[first]), 1);
        let head = st.accounts[&b].head;
        let next = send(&t, &mut st, &d, a, b);
        let through = entry(&t, next).received;
        let op = |id| live_stretch(b, &[id], head, through);
        run_job(&t, &mut st, op(next), &d).unwrap();
        assert_eq!(t.delivered_through(b_row).unwrap(), GAP_WALK as u64);
        assert_eq!(entry(&t, next).state, MessageState::Delivered as i32);
        // The second receipt of the same stretch walks the rest (its message is done already).
        run_job(&t, &mut st, op(next), &d).unwrap();
        assert_eq!(t.delivered_through(b_row).unwrap(), through);

        let (_dir, t, mut st, d, a, b) = two_accounts(5);
        let first = send(&t, &mut st, &d, a, b);
        for _ in 0..10 {
            send(&t, &mut st, &d, b, a);
        }
        assert_eq!(delivered(&t, &mut st, &d, b, &[first]), 1);
        let head = st.accounts[&b].head;
        let next = send(&t, &mut st, &d, a, b);
        let through = entry(&t, next).received;
        let op = live_stretch(b, &[next], head, through);
        run_job(&t, &mut st, op, &d).unwrap();
        assert_eq!(t.delivered_through(st.row(b).unwrap()).unwrap(), 0);
        assert_eq!(entry(&t, next).state, MessageState::Delivered as i32);
        // The first seq retention kept is what the walk could not pass.
        let oldest = t.oldest(st.row(b).unwrap()).unwrap();
        assert_eq!(st.accounts[&b].blocked, oldest);
    }

    /// A run that fails puts back the watermarks it moved, and the seqs it took with the
    /// in-memory watermark that followed them; nothing of it is stored.
    #[test]
    fn a_failed_run_puts_its_watermarks_back() {
        let (_dir, t, mut st, d, a, b) = two_accounts(1000);
        let ids: Vec<Uuid> = (0..2).map(|_| send(&t, &mut st, &d, a, b)).collect();
        let through = entry(&t, ids[1]).received;
        // a's log holds only its own sends: its watermark follows its head in memory.
        let head_a = st.accounts[&a].head;
        assert_eq!(st.accounts[&a].delivered, head_a);
        let mut done = Written {
            replies: Vec::new(),
            events: Vec::new(),
            message_row: None,
        };
        let mut run = Run::start(&t, RunKind::LiveReceipts, &done);
        let (reply, _waiting) = oneshot::channel();
        let op = live_stretch(b, &ids, 0, through);
        assert!(run.add(&t, &mut st, &d, reply, op, &mut done));
        assert_eq!(st.accounts[&b].delivered, through);
        // The sender's MessageStateChanged, which its watermark followed.
        assert_eq!(st.accounts[&a].head, head_a + 1);
        assert_eq!(st.accounts[&a].delivered, head_a + 1);

        run.from
            .fail(&mut st, &mut done, || CoreError::Internal("failed".into()));
        assert_eq!(st.accounts[&b].delivered, 0);
        assert_eq!(st.accounts[&a].head, head_a);
        assert_eq!(st.accounts[&a].delivered, head_a);
        assert!(done.replies[0].1.is_err());
        assert!(done.events.is_empty());
        assert_eq!(t.delivered_through(st.row(b).unwrap()).unwrap(), 0);
        for id in &ids {
            assert_eq!(state_of(&t, *id), MessageState::Sent as i32);
        }
    }

    /// An index entry written before the received seq was kept still decodes, and never reads
    /// as DELIVERED by a watermark.
    #[test]
    fn an_entry_without_its_received_seq_keeps_its_state() {
        let index = MessageIndex {
            pair: 1,
            row: 2,
            recipient: 3,
            sender: Uuid::now_v7(),
            state: MessageState::Sent as i32,
            received: 7,
        };
        let new = index.encode();
        assert_eq!(MessageIndex::decode(&new).unwrap(), index);
        assert_eq!(index.state_at(6), MessageState::Sent as i32);
        assert_eq!(index.state_at(7), MessageState::Delivered as i32);
        let old = MessageIndex::decode(&new[..MessageIndex::OLD_LEN]).unwrap();
        assert_eq!(old.received, NOT_LOGGED);
        assert_eq!(old.state_at(u64::MAX), MessageState::Sent as i32);
        let read = MessageIndex {
            state: MessageState::Read as i32,
            ..index
        };
        assert_eq!(read.state_at(u64::MAX), MessageState::Read as i32);
        assert!(MessageIndex::decode(&new[..40]).is_err());
    }

    /// The seqs the log of the account at `row` shows to readers.
    fn shown(t: &Tables, row: i64) -> Vec<u64> {
        let log = t.read_log(row, 0, 100).unwrap();
        log.iter().map(|e| e.seq).collect()
    }

    /// The seqs stored for the account at `row`, shown or not.
    fn stored(t: &Tables, row: i64) -> Vec<u64> {
        let log = t.events.range(key2(row, 0)..=key2(row, u64::MAX));
        log.map(|g| int_at(&g.key().unwrap(), 8).unwrap() as u64)
            .collect()
    }

    /// Retention without tombstones: with a retention of 2, five sends in one group leave the
    /// newest 2 events shown, before and after the journal is replayed at open; what they
    /// pushed out stays stored, hidden, until a compaction of `events` drops it, and it drops
    /// only what a durable group pushed out.
    #[test]
    fn retention_hides_at_once_and_compactions_drop() {
        let (dir, t, mut st, d, a, b) = two_accounts(2);
        let ops = (0..5)
            .map(|_| WriteOp::SendMessage(message(a, b, "")))
            .collect();
        let (results, _) = group(&t, &mut st, &d, ops);
        assert!(results.iter().all(|r| r.is_ok()));
        let row = st.row(a).unwrap();
        assert_eq!(shown(&t, row), vec![4, 5]);
        assert_eq!(t.oldest(row).unwrap(), 4);
        assert_eq!(
            stored(&t, row),
            vec![1, 2, 3, 4, 5],
            "no tombstones are written"
        );
        t.db.persist(PersistMode::SyncAll).unwrap();
        drop(t);
        let t = Tables::open(dir.path()).unwrap();
        let mut st = State::load(&t, 2).unwrap();
        assert_eq!(shown(&t, row), vec![4, 5]);
        // Flushed, then compacted: the filter drops what the durable heads pushed out.
        t.events.rotate_memtable_and_wait().unwrap();
        t.events.major_compact().unwrap();
        assert_eq!(stored(&t, row), vec![4, 5]);
        assert_eq!(shown(&t, row), vec![4, 5]);

        // A group that is not durable yet raises no floor: readers go on showing the newest
        // durable events (theirs, `Durable`, hide the new ones), and nothing of it is dropped.
        let ops = (0..3)
            .map(|_| WriteOp::SendMessage(message(a, b, "")))
            .collect();
        let committed = commit(&t, &mut st, &d, ops);
        assert!(committed.replies.iter().all(|(_, r)| r.is_ok()));
        assert!(committed.on_durable.is_some());
        drop(committed);
        assert_eq!(shown(&t, row), vec![4, 5, 6, 7, 8]);
        t.events.rotate_memtable_and_wait().unwrap();
        t.events.major_compact().unwrap();
        assert_eq!(stored(&t, row), vec![4, 5, 6, 7, 8]);
    }

    /// Compactions drop pushed-out events in no order, so below its floor a log may have gaps:
    /// a retention raised at restart does not show them, but keeps the floor where the old one
    /// had it (and where it was pinned, at later restarts) until the log grows past it.
    #[test]
    fn a_raised_retention_never_shows_a_gap() {
        let (dir, t, mut st, d, a, _) = two_accounts(2);
        let row = st.row(a).unwrap();
        group(&t, &mut st, &d, to_self(a, 5));
        // What a compaction could leave: 1-3 in a table it did not rewrite, 4-6 dropped.
        for seq in 4..=6 {
            t.events.remove(key2(row, seq)).unwrap();
        }
        let reopen = |t: Tables, keep| {
            t.db.persist(PersistMode::SyncAll).unwrap();
            drop(t);
            let t = Tables::open(dir.path()).unwrap();
            let st = State::load(&t, keep).unwrap();
            (t, st)
        };
        let (t, mut st) = reopen(t, 10);
        assert_eq!(shown(&t, row), vec![9, 10]);
        assert_eq!(t.oldest(row).unwrap(), 9);
        group(&t, &mut st, &d, to_self(a, 3));
        assert_eq!(shown(&t, row), (9..=16).collect::<Vec<_>>());
        let (t, mut st) = reopen(t, 10);
        assert_eq!(shown(&t, row), (9..=16).collect::<Vec<_>>());
        // Past the pin, the log is as long as the new retention.
        group(&t, &mut st, &d, to_self(a, 2));
        assert_eq!(shown(&t, row), (11..=20).collect::<Vec<_>>());
        // A lowered retention needs no pin.
        let (t, _) = reopen(t, 3);
        assert_eq!(shown(&t, row), vec![18, 19, 20]);
    }

    /// A table holding only one account's events that retention pushed out is never
    /// compacted again (new events sort after it): a sweep drops it whole, once its floor
    /// is durable, and leaves a table with any event still shown.
    #[test]
    fn a_sweep_drops_tables_of_pushed_out_events_whole() {
        let (_dir, t, mut st, d, a, _) = two_accounts(2);
        let row = st.row(a).unwrap();
        group(&t, &mut st, &d, to_self(a, 3));
        t.events.rotate_memtable_and_wait().unwrap();
        // Floor 4: the table (seqs 1-6) still holds shown events.
        assert_eq!(t.retention.sweep(&t.events, 1), 1);
        assert_eq!(stored(&t, row), (1..=6).collect::<Vec<_>>());
        group(&t, &mut st, &d, to_self(a, 2));
        t.events.rotate_memtable_and_wait().unwrap();
        // Floor 8: the first table goes, the second (seqs 7-10) stays.
        assert_eq!(t.retention.sweep(&t.events, 1), 1);
        assert_eq!(stored(&t, row), (7..=10).collect::<Vec<_>>());
        assert_eq!(t.read_log(row, 0, 100).unwrap().len(), 2);
        // Nothing rose since: nothing to sweep.
        assert_eq!(t.retention.sweep(&t.events, 1), 0);
        // Pushed out by a group that is not durable yet: kept.
        let committed = commit(&t, &mut st, &d, to_self(a, 4));
        drop(committed);
        t.events.rotate_memtable_and_wait().unwrap();
        assert_eq!(t.retention.sweep(&t.events, 1), 0);
        assert_eq!(stored(&t, row), (7..=18).collect::<Vec<_>>());
    }

    /// A send writes four items (its record under its conversation, its index entry, two
    /// events) and the newest row once per batch; receipts write the state into the index
    /// entry, and the record keeps the state it was sent with.
    #[test]
    fn messages_are_keyed_by_conversation_and_states_live_in_the_index() {
        let (dir, t, mut st, d, a, b) = two_accounts(1000);
        let ops = (0..3)
            .map(|_| WriteOp::SendMessage(message(a, b, "")))
            .collect();
        let (results, _) = group(&t, &mut st, &d, ops);
        let ids: Vec<Uuid> = results.iter().map(|r| parse(&sent(r).0).unwrap()).collect();
        let back = send(&t, &mut st, &d, b, a);
        // One conversation, both ways, in row order.
        let pair = pair_key(st.row(a).unwrap(), st.row(b).unwrap());
        let conversation: Vec<i64> = t
            .messages
            .range(key2(pair, 0)..=key2(pair, u64::MAX))
            .map(|g| int_at(&g.key().unwrap(), 8).unwrap())
            .collect();
        assert_eq!(conversation, vec![1, 2, 3, 4]);
        assert_eq!(t.messages.len().unwrap(), 4);
        assert_eq!(t.newest_message_row().unwrap(), 4);

        assert_eq!(state_of(&t, ids[0]), MessageState::Sent as i32);
        // Only the recipient's receipt counts.
        assert_eq!(delivered(&t, &mut st, &d, a, &ids), 0);
        // An id repeated in one receipt is made DELIVERED and logged once.
        assert_eq!(delivered(&t, &mut st, &d, b, &[ids[0], ids[0]]), 1);
        assert_eq!(delivered(&t, &mut st, &d, b, &ids), 2);
        assert_eq!(delivered(&t, &mut st, &d, b, &ids), 0);
        for id in &ids {
            assert_eq!(state_of(&t, *id), MessageState::Delivered as i32);
            let index = entry(&t, *id);
            assert_eq!((index.recipient, index.sender), (st.row(b).unwrap(), a));
        }
        // READ by walking the conversation back from the second message: the first two, not
        // the third, nor the message the other way.
        let op = WriteOp::MarkRead {
            reader: b,
            sender: a,
            up_to: ids[1],
        };
        match run_job(&t, &mut st, op, &d).unwrap().0 {
            WriteOutput::Ids(marked) => assert_eq!(
                marked,
                ids[..2].iter().map(Uuid::to_string).collect::<Vec<_>>()
            ),
            _ => panic!("MarkRead answers ids"),
        }
        assert_eq!(state_of(&t, ids[1]), MessageState::Read as i32);
        assert_eq!(state_of(&t, ids[2]), MessageState::Delivered as i32);
        assert_eq!(state_of(&t, back), MessageState::Sent as i32);
        // The record itself still says how the message was sent.
        let index = entry(&t, ids[0]);
        let v = t.messages.get(index.key()).unwrap().unwrap();
        assert_eq!(decode_message(&v).unwrap().state, MessageState::Sent as i32);
        // The next row after a reopen follows the newest.
        t.db.persist(PersistMode::SyncAll).unwrap();
        drop(t);
        let t = Tables::open(dir.path()).unwrap();
        assert_eq!(State::load(&t, 1000).unwrap().newest_message(), 4);
    }

    /// A log's message events are read back with their messages, joined one range read per
    /// conversation whatever the stretch of the log, and next to events stored whole before
    /// they referred to their messages; an event whose message has no record is an error.
    #[test]
    fn logs_join_their_messages_by_conversation() {
        let (_dir, t, mut st, d, a, b) = two_accounts(1000);
        let c = create(&t, &mut st, &d, "c");
        // b's log: received from a, from c, from a; sent to c; to itself (sent, received).
        let sends = [(a, b), (c, b), (a, b), (b, c), (b, b), (c, a), (c, b)];
        let ids: Vec<Uuid> = sends
            .iter()
            .map(|&(from, to)| send(&t, &mut st, &d, from, to))
            .collect();
        let b_row = st.row(b).unwrap();
        let message_ids = |after, limit| -> Vec<(u64, &'static str, String)> {
            let log = t.read_log(b_row, after, limit).unwrap();
            log.into_iter()
                .map(|e| match e.kind {
                    Some(Kind::MessageSent(s)) => (e.seq, "sent", s.message.unwrap().message_id),
                    Some(Kind::MessageReceived(r)) => {
                        (e.seq, "received", r.message.unwrap().message_id)
                    }
                    other => panic!("not a message event: {other:?}"),
                })
                .collect()
        };
        let id = |i: usize| ids[i].to_string();
        let whole = vec![
            (1, "received", id(0)),
            (2, "received", id(1)),
            (3, "received", id(2)),
            (4, "sent", id(3)),
            (5, "sent", id(4)),
            (6, "received", id(4)),
            (7, "received", id(6)),
        ];
        assert_eq!(message_ids(0, usize::MAX), whole);
        for (after, limit) in [(0, 1), (1, 3), (4, 2), (5, 1), (6, 10), (7, 10)] {
            let end = (after as usize + limit).min(whole.len());
            assert_eq!(message_ids(after, limit), whole[after as usize..end]);
        }
        // Each joined message is the one sent, its state as sent.
        let log = t.read_log(b_row, 0, 1).unwrap();
        let Some(Kind::MessageReceived(r)) = &log[0].kind else {
            panic!("b's first event is a MessageReceived");
        };
        let m = r.message.as_ref().unwrap();
        assert_eq!(
            (m.sender_id.as_str(), m.text.as_str()),
            (a.to_string().as_str(), "hi")
        );
        assert_eq!(m.state, MessageState::Sent as i32);

        // An event stored whole, as before 2026-12-06, reads as it was, beside the others.
        let mut old = new_event(Kind::MessageReceived(pb::MessageReceived {
            message: Some(message(c, b, "")),
        }));
        old.seq = 8;
        let before = old.clone();
        t.events
            .insert(key2(b_row, 8), encode_event(&mut old))
            .unwrap();
        let log = t.read_log(b_row, 6, 10).unwrap();
        assert_eq!(log.len(), 2);
        assert_eq!(log[1], before);

        // A record gone is an error naming its row, not an event without its message.
        let index = entry(&t, ids[2]);
        t.messages.remove(index.key()).unwrap();
        let err = t.read_log(b_row, 0, 10).unwrap_err().to_string();
        assert!(err.contains(&format!("row {}", index.row)), "{err}");
        assert_eq!(
            message_ids(3, 10).len(),
            5,
            "a stretch without it still reads"
        );
    }
}
