//! The LSM engine's single writer thread. Each job is checked against the writer's state,
//! then written as one atomic fjall batch (so a later job of the same group sees it, and a
//! failing job leaves nothing behind); once the group is written, its journal bytes go to the
//! OS and the group to the syncer thread, whose one fdatasync makes it durable before its
//! events are published and its callers answered (`journal.rs`, `syncer`). The writer goes on
//! with the next group meanwhile.
//!
//! The writer owns what every write needs and readers do not: each account's row and head seq
//! (loaded at open from the log itself), and the next row of messages and contacts.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use fjall::{OwnedWriteBatch, PersistMode};
use prost::Message as _;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::{
    IndexedState, MessageIndex, StoredAccount, StoredContact, StoredToken, Tables, be, from_json,
    int_at, key2, to_json,
};
use crate::core::events::new_event;
use crate::core::stats::StoreStats;
use crate::core::time::{now_micros, to_timestamp};
use crate::core::{AccountId, CommittedEvent, CoreError, CoreResult, MessageState};
use crate::pb::{self, event::Kind};
use crate::store::jobs::{Job, WriteOp, WriteOutput, can_wait, log_delivered, next_group};
use crate::store::sqlite::pair_key;
use crate::store::syncer::{Committed, Durable, Reply, hand_over};
use crate::store::{LogRange, SentMessage};

/// An account as the writer tracks it.
struct Account {
    row: i64,
    /// Newest seq assigned in its log.
    head: u64,
    /// Every MessageReceived in its log up to this seq is DELIVERED or READ: a replay chunk
    /// below it has no receipts left to record (`mark_delivered`).
    delivered: u64,
}

/// What the writer knows beyond the tables.
pub(crate) struct State {
    accounts: HashMap<AccountId, Account>,
    next_account: i64,
    next_contact: i64,
    next_message: i64,
    retention: u64,
}

impl State {
    /// Reads the writer's state from the tables, and trims any log longer than `retention`
    /// (after the setting was lowered).
    pub fn load(t: &Tables, retention: u64) -> CoreResult<Self> {
        let mut accounts = HashMap::new();
        let mut trim = t.db.batch();
        for g in t.account_ids.iter() {
            let (k, v) = g.into_inner()?;
            let id = Uuid::from_slice(&k).map_err(CoreError::internal)?;
            let row = int_at(&v, 0)?;
            let head = t.head(row)?;
            if head > retention {
                for old in t.events.range(key2(row, 0)..=key2(row, head - retention)) {
                    trim.remove(&t.events, old.key()?);
                }
            }
            let delivered = match t.delivered.get(be(row))? {
                Some(v) => int_at(&v, 0)? as u64,
                None => 0,
            };
            let account = Account {
                row,
                head,
                delivered,
            };
            accounts.insert(id, account);
        }
        trim.commit()?;
        let mut next_contact = 1;
        for g in t.contacts.iter() {
            let c: StoredContact = from_json(&g.value()?)?;
            next_contact = next_contact.max(c.row + 1);
        }
        Ok(State {
            next_account: Tables::last_row(&t.accounts)? + 1,
            next_message: Tables::last_row(&t.messages)? + 1,
            accounts,
            next_contact,
            retention,
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
) {
    while let Some(group) = next_group(&mut jobs, &stats) {
        let timer = stats.commit_seconds.start_timer();
        let committed = commit_group(&t, &mut st, group, &durable);
        timer.observe_duration();
        hand_over(&synced, committed);
    }
    if let Err(e) = t.db.persist(PersistMode::SyncAll) {
        tracing::error!(error = %e, "store: final journal sync failed");
    }
}

/// Writes a group's jobs and hands their journal bytes to the OS; the group then goes to the
/// syncer. A failure to hand them over is answered here at once.
fn commit_group(t: &Tables, st: &mut State, group: Vec<Job>, d: &Durable) -> Option<Committed> {
    let can_wait = can_wait(&group);
    let mut replies: Vec<Reply> = Vec::with_capacity(group.len());
    let mut events = Vec::new();
    let mut message_row = None;
    for job in group {
        let result = if d.broken.load(Ordering::Acquire) {
            Err(CoreError::Unavailable(
                "storage failed earlier; writes are refused".into(),
            ))
        } else if job.reply.is_closed() {
            // The caller is gone (deadline, cancellation) and was told the call failed.
            Err(CoreError::Unavailable("the caller left".into()))
        } else {
            run_job(t, st, job.op, d).map(|(out, mut new, row)| {
                events.append(&mut new);
                message_row = row.or(message_row);
                out
            })
        };
        replies.push((job.reply, result));
    }
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
    Some(Committed {
        replies,
        events,
        message_row,
        can_wait,
    })
}

/// A job's output, its events and the message row it wrote.
type JobDone = (WriteOutput, Vec<CommittedEvent>, Option<i64>);

/// Checks and writes one job as one fjall batch. On failure nothing of it is written, and the
/// seqs it took are given back.
fn run_job(t: &Tables, st: &mut State, op: WriteOp, d: &Durable) -> CoreResult<JobDone> {
    let mut tx = Tx {
        t,
        st,
        batch: t.db.batch(),
        events: Vec::new(),
        message_row: None,
    };
    let out = match apply(&mut tx, op) {
        Ok(out) => out,
        Err(e) => {
            for ev in &tx.events {
                if let Some(a) = tx.st.accounts.get_mut(&ev.account_id) {
                    a.head = a.head.min(ev.event.seq - 1);
                }
            }
            return Err(e);
        }
    };
    // Readers must not see these events before the journal sync.
    d.fence(&tx.events);
    if let Err(e) = tx.batch.commit() {
        d.broken.store(true, Ordering::Release);
        tracing::error!(error = %e, "store write failed; refusing writes from now on");
        return Err(CoreError::Unavailable(
            "storage write failed; nothing was stored".into(),
        ));
    }
    Ok((out, tx.events, tx.message_row))
}

/// One job's writes, committed together.
struct Tx<'a> {
    t: &'a Tables,
    st: &'a mut State,
    batch: OwnedWriteBatch,
    events: Vec<CommittedEvent>,
    message_row: Option<i64>,
}

impl Tx<'_> {
    /// Appends an event to an account's log at its next seq, dropping the entry that falls
    /// out of retention. The account was checked by the caller.
    fn append(&mut self, account: AccountId, mut event: pb::Event) -> CoreResult<()> {
        let retention = self.st.retention;
        let a = self
            .st
            .accounts
            .get_mut(&account)
            .ok_or_else(|| CoreError::Internal(format!("no account {account} to log for")))?;
        a.head += 1;
        event.seq = a.head;
        self.batch
            .insert(&self.t.events, key2(a.row, a.head), event.encode_to_vec());
        if a.head > retention {
            self.batch
                .remove(&self.t.events, key2(a.row, a.head - retention));
        }
        self.events.push(CommittedEvent {
            account_id: account,
            event,
        });
        Ok(())
    }

    fn put_account(&mut self, row: i64, a: &StoredAccount) -> CoreResult<()> {
        self.batch.insert(&self.t.accounts, be(row), to_json(a)?);
        Ok(())
    }

    fn put_message(&mut self, row: i64, m: &pb::Message) {
        self.batch
            .insert(&self.t.messages, be(row), m.encode_to_vec());
    }

    /// Writes a message's index entry whole, with its state.
    fn put_state(&mut self, id: Uuid, row: i64, recipient: i64, sender: AccountId, state: i32) {
        let entry = IndexedState {
            recipient,
            sender,
            state,
        };
        let value = MessageIndex::encode(row, &entry);
        self.batch.insert(&self.t.message_ids, id.as_bytes(), value);
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
            covers,
        } => mark_delivered(tx, recipient, ids, covers),
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
fn client_key(sender_row: i64, client_message_id: &str) -> Vec<u8> {
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
    if let Some(key) = &client_key
        && let Some(v) = tx.t.client_ids.get(key)?
    {
        return Ok(WriteOutput::Sent(SentMessage {
            message: tx.t.message(int_at(&v, 0)?)?,
            duplicate: true,
        }));
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
    tx.put_message(row, &m);
    tx.put_state(id, row, recipient_row, sender, m.state);
    let pair = pair_key(sender_row, recipient_row);
    tx.batch
        .insert(&tx.t.conversations, key2(pair, row as u64), []);
    if let Some(key) = client_key {
        tx.batch.insert(&tx.t.client_ids, key, be(row));
    }
    tx.message_row = Some(row);
    // The sender's event first, so that a message to oneself logs MessageSent before
    // MessageReceived.
    let sent = Kind::MessageSent(pb::MessageSent {
        message: Some(m.clone()),
    });
    tx.append(sender, new_event(sent))?;
    let received = Kind::MessageReceived(pb::MessageReceived {
        message: Some(m.clone()),
    });
    tx.append(recipient, new_event(received))?;
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
    let (r, s) = (reader.to_string(), sender.to_string());
    let (Some(reader_row), Some(sender_row)) = (tx.st.row(reader), tx.st.row(sender)) else {
        return Err(not_found());
    };
    let up_row = tx.t.message_index(up_to)?.ok_or_else(not_found)?.row;
    let up = tx.t.message(up_row)?;
    if up.sender_id != s || up.recipient_id != r {
        return Err(not_found());
    }
    let read = MessageState::Read as i32;
    let pair = pair_key(sender_row, reader_row);
    let mut ids = Vec::new();
    let t = tx.t;
    for g in t
        .conversations
        .range(key2(pair, 0)..=key2(pair, up_row as u64))
        .rev()
    {
        let row = int_at(&g.key()?, 8)?;
        let m = t.message(row)?;
        if m.sender_id != s || m.recipient_id != r {
            continue;
        }
        if m.state >= read {
            break;
        }
        tx.put_state(parse(&m.message_id)?, row, reader_row, sender, read);
        ids.push(m.message_id);
    }
    ids.sort(); // UUIDv7: time order
    if !ids.is_empty() {
        let kind = Kind::MessageStateChanged(pb::MessageStateChanged {
            contact_id: r,
            message_ids: ids.clone(),
            state: read,
        });
        tx.append(sender, new_event(kind))?;
    }
    Ok(WriteOutput::Ids(ids))
}

/// Makes messages to `recipient` DELIVERED where they are still SENT (a READ message stays
/// READ: READ implies DELIVERED), logging one MessageStateChanged per sender.
///
/// With `covers` (a replay chunk: every MessageReceived of that stretch of the log is among
/// `ids`), a stretch at or below the recipient's delivered watermark is skipped without a
/// lookup, and one that starts at or below it moves the watermark to its end.
fn mark_delivered(
    tx: &mut Tx,
    recipient: AccountId,
    ids: Vec<String>,
    covers: Option<LogRange>,
) -> CoreResult<WriteOutput> {
    let (recipient_row, watermark) = match tx.st.accounts.get(&recipient) {
        Some(a) => (a.row, a.delivered),
        None => return Err(no_account()),
    };
    if covers.is_some_and(|c| c.through <= watermark) {
        return Ok(WriteOutput::Ids(Vec::new()));
    }
    let r = recipient.to_string();
    let delivered = MessageState::Delivered as i32;
    let mut by_sender: BTreeMap<AccountId, Vec<String>> = BTreeMap::new();
    let mut seen = HashSet::new();
    let t = tx.t;
    for id in ids {
        let Ok(uuid) = Uuid::parse_str(&id) else {
            continue;
        };
        if !seen.insert(uuid) {
            continue;
        }
        let Some(index) = t.message_index(uuid)? else {
            continue;
        };
        // The index entry answers for the message, unless it predates states living there.
        let (sender, state) = match index.state {
            Some(s) if s.recipient == recipient_row => (s.sender, s.state),
            Some(_) => continue,
            None => {
                let m = t.message(index.row)?;
                if m.recipient_id != r {
                    continue;
                }
                (parse(&m.sender_id)?, m.state)
            }
        };
        if state >= delivered {
            continue;
        }
        tx.put_state(uuid, index.row, recipient_row, sender, delivered);
        by_sender.entry(sender).or_default().push(id);
    }
    let changed = log_delivered(&r, by_sender, |sender, event| tx.append(sender, event))?;
    if let Some(c) = covers.filter(|c| c.after <= watermark)
        && let Some(a) = tx.st.accounts.get_mut(&recipient)
    {
        a.delivered = c.through;
        tx.batch
            .insert(&t.delivered, be(recipient_row), be(c.through as i64));
    }
    Ok(WriteOutput::Ids(changed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{AccountRecord, PresenceStatus, TokenRecord};

    fn create(t: &Tables, st: &mut State, d: &Durable, handle: &str) -> AccountId {
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

    fn delivered(t: &Tables, st: &mut State, d: &Durable, to: AccountId, ids: &[Uuid]) -> usize {
        let op = WriteOp::MarkDelivered {
            recipient: to,
            ids: ids.iter().map(Uuid::to_string).collect(),
            covers: None,
        };
        match run_job(t, st, op, d).unwrap().0 {
            WriteOutput::Ids(changed) => changed.len(),
            _ => panic!("MarkDelivered answers ids"),
        }
    }

    fn state_of(t: &Tables, id: Uuid) -> i32 {
        let row = t.message_index(id).unwrap().unwrap().row;
        t.message(row).unwrap().state
    }

    /// Receipts write the state into the index entry; an entry of the older shape (the row
    /// alone) keeps reading its state from the message record until a receipt rewrites it.
    #[test]
    fn states_live_in_the_index_and_old_entries_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tables::open(dir.path()).unwrap();
        let mut st = State::load(&t, 1000).unwrap();
        let d = Durable::new(0);
        let (a, b) = (create(&t, &mut st, &d, "a"), create(&t, &mut st, &d, "b"));
        let new = send(&t, &mut st, &d, a, b);
        let old = send(&t, &mut st, &d, a, b);
        // Make `old` an entry as written before states moved to the index.
        let row = t.message_index(old).unwrap().unwrap().row;
        t.message_ids.insert(old.as_bytes(), be(row)).unwrap();
        assert_eq!(t.message_index(old).unwrap().unwrap().state, None);

        assert_eq!(state_of(&t, new), MessageState::Sent as i32);
        assert_eq!(state_of(&t, old), MessageState::Sent as i32);
        // The sender is not the recipient: nothing changes.
        assert_eq!(delivered(&t, &mut st, &d, a, &[new, old]), 0);
        assert_eq!(delivered(&t, &mut st, &d, b, &[new, old]), 2);
        for id in [new, old] {
            assert_eq!(state_of(&t, id), MessageState::Delivered as i32);
            let index = t.message_index(id).unwrap().unwrap();
            assert_eq!(index.state.map(|s| (s.recipient, s.sender)), {
                Some((st.row(b).unwrap(), a))
            });
        }
        // Already DELIVERED: no second receipt.
        assert_eq!(delivered(&t, &mut st, &d, b, &[new, old]), 0);
        // READ through the conversation walk, from the index too.
        let op = WriteOp::MarkRead {
            reader: b,
            sender: a,
            up_to: old,
        };
        run_job(&t, &mut st, op, &d).unwrap();
        assert_eq!(state_of(&t, new), MessageState::Read as i32);
        assert_eq!(state_of(&t, old), MessageState::Read as i32);
        // The record itself still says how the message was sent.
        let v = t.messages.get(be(row)).unwrap().unwrap();
        assert_eq!(
            pb::Message::decode(&*v).unwrap().state,
            MessageState::Sent as i32
        );
    }
}
