//! The single writer thread: every durable change runs here, batched into one transaction
//! (group commit) whose fsync the syncer thread does while the next batch runs. A batch first
//! runs whole; if a job fails, it runs again with each job in its own savepoint, so one failing
//! job never spoils the others in its batch.

use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock};

use prost::Message as _;
use rusqlite::{Connection, ErrorCode, OptionalExtension, params};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::SentMessage;
use super::jobs::{Job, WriteOp, WriteOutput, can_wait, log_delivered, next_group};
use super::sqlite::{
    MESSAGE_COLUMNS, account_exists, conversation_key, message_from_row, pair_key, pair_of,
};
use super::syncer::{self, Committed, Durable};
use crate::core::events::new_event;
use crate::core::stats::StoreStats;
use crate::core::time::now_micros;
use crate::core::{AccountId, CommittedEvent, CoreError, CoreResult, MessageState, TokenRecord};
use crate::pb::{self, event::Kind};

/// Makes messages from ?1 to ?2 up to row ?3 READ (?4), walking their conversation.
static MARK_READ: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE messages SET state = ?4
         WHERE pair = {} AND row <= ?3 AND sender = ?1 AND recipient = ?2 AND state < ?4
         RETURNING id",
        pair_of("?1", "?2")
    )
});

/// Runs until every sender is gone, then returns (the last batch is handed to the syncer first).
pub(crate) fn run(
    mut conn: Connection,
    mut jobs: mpsc::Receiver<Job>,
    synced: std::sync::mpsc::SyncSender<Committed>,
    durable: Arc<Durable>,
    retention: u64,
    stats: StoreStats,
) {
    while let Some(batch) = next_group(&mut jobs, &stats) {
        let timer = stats.commit_seconds.start_timer();
        let committed = commit_batch(&mut conn, batch, &durable, retention);
        timer.observe_duration();
        syncer::hand_over(&synced, committed);
    }
}

/// Runs a batch; what committed goes on to the syncer, a failure is answered here at once.
fn commit_batch(
    conn: &mut Connection,
    jobs: Vec<Job>,
    durable: &Durable,
    retention: u64,
) -> Option<Committed> {
    if durable.broken.load(Ordering::Acquire) {
        refuse(jobs, "storage sync failed earlier; writes are refused");
        return None;
    }
    let can_wait = can_wait(&jobs);
    // Nearly every batch succeeds whole, so it first runs without a savepoint per job (each
    // costs the writer journal work, profiled); only if a job fails is the batch run again with
    // each job isolated, so that the failure refuses that job alone.
    let outcome = match run_batch(conn, &jobs, durable, retention, false) {
        Ok(None) => run_batch(conn, &jobs, durable, retention, true),
        other => other,
    };
    match outcome {
        Ok(Some((results, events, message_row))) => Some(Committed {
            replies: jobs.into_iter().map(|j| j.reply).zip(results).collect(),
            events,
            message_row,
            can_wait,
            on_durable: None,
        }),
        Ok(None) | Err(_) => {
            if let Err(e) = outcome {
                tracing::error!(error = %e, "store commit failed; the whole batch is refused");
            }
            refuse(jobs, "storage commit failed; nothing was stored");
            None
        }
    }
}

fn refuse(jobs: Vec<Job>, why: &str) {
    for job in jobs {
        let _ = job.reply.send(Err(CoreError::Unavailable(why.into())));
    }
}

/// Results per job, the committed events and the newest message row.
type Ran = (
    Vec<CoreResult<WriteOutput>>,
    Vec<CommittedEvent>,
    Option<i64>,
);

/// Runs `jobs` in one transaction and commits it. With `isolate`, each job has its own
/// savepoint and a failing job is rolled back alone; without, the first failure rolls back
/// everything and returns `None`, so that the caller can run the batch again isolated.
fn run_batch(
    conn: &mut Connection,
    jobs: &[Job],
    durable: &Durable,
    retention: u64,
    isolate: bool,
) -> CoreResult<Option<Ran>> {
    let mut tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let mut results = Vec::with_capacity(jobs.len());
    let mut events = Vec::new();
    for job in jobs {
        // The caller is gone (its deadline passed, it was cancelled): it was told the call
        // failed, so the write is not made. Checked once the lock is held, since the caller
        // may have given up while this transaction waited for it.
        if job.reply.is_closed() {
            results.push(Err(CoreError::Unavailable("the caller left".into())));
            continue;
        }
        let mut job_events = Vec::new();
        let mut log = Log {
            events: &mut job_events,
            retention,
        };
        let result = if isolate {
            let sp = tx.savepoint()?;
            let result = apply(&sp, job.op.clone(), &mut log);
            if result.is_ok() {
                sp.commit()?;
            } // else dropping `sp` rolls back this job alone
            result
        } else {
            let result = apply(&tx, job.op.clone(), &mut log);
            if result.is_err() {
                return Ok(None); // dropping `tx` rolls everything back
            }
            result
        };
        if result.is_ok() {
            events.append(&mut job_events);
        }
        results.push(result);
    }
    // Readers must not see these rows before the syncer has made them durable.
    durable.fence(&events);
    let message_row = tx
        .prepare_cached("SELECT MAX(row) FROM messages")?
        .query_row([], |r| r.get::<_, Option<i64>>(0))?;
    tx.commit()?;
    Ok(Some((results, events, message_row)))
}

fn is_constraint(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == ErrorCode::ConstraintViolation)
}

/// Where a job's events go, and how many an account's log keeps.
struct Log<'a> {
    events: &'a mut Vec<CommittedEvent>,
    retention: u64,
}

/// Appends a durable event to an account's log, assigning the account's next seq and pruning
/// what falls out of retention.
fn append(tx: &Connection, account: AccountId, event: pb::Event, log: &mut Log) -> CoreResult<()> {
    let next = next_seq(tx, account)?
        .ok_or_else(|| CoreError::Internal(format!("no account {account} to log for")))?;
    log_event(tx, account, next, event, None, log)
}

/// An account's next seq, taken (the head moves now; a failed job's savepoint puts it back),
/// with the account's `row`. `None` if there is no such account.
fn next_seq(tx: &Connection, account: AccountId) -> CoreResult<Option<(i64, i64)>> {
    Ok(tx
        .prepare_cached(
            "UPDATE accounts SET head_seq = head_seq + 1 WHERE id = ?1 RETURNING head_seq, row",
        )?
        .query_row([account.to_string()], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?)
}

/// Logs `event` as `account`'s seq from `next_seq`, pruning what falls out of retention. With
/// `msg`, the event carries the message stored at that row: the log keeps a stub in its place
/// (the message is stored once; reads join it back).
fn log_event(
    tx: &Connection,
    account: AccountId,
    (seq, account_row): (i64, i64),
    mut event: pb::Event,
    msg: Option<i64>,
    log: &mut Log,
) -> CoreResult<()> {
    event.seq = seq as u64;
    let body = match msg {
        Some(_) => message_stub(&event).encode_to_vec(),
        None => event.encode_to_vec(),
    };
    tx.prepare_cached("INSERT INTO events (account, seq, body, msg) VALUES (?1, ?2, ?3, ?4)")?
        .execute(params![account_row, seq, body, msg])?;
    let keep = log.retention as i64;
    if seq > keep {
        tx.prepare_cached("DELETE FROM events WHERE account = ?1 AND seq <= ?2")?
            .execute(params![account_row, seq - keep])?;
    }
    log.events.push(CommittedEvent::whole(account, event));
    Ok(())
}

/// The event with its message reduced to what the stored row cannot tell: its state then.
fn message_stub(event: &pb::Event) -> pb::Event {
    let stub = |m: &Option<pb::Message>| {
        m.as_ref().map(|m| pb::Message {
            state: m.state,
            ..Default::default()
        })
    };
    let kind = match &event.kind {
        Some(Kind::MessageSent(s)) => Some(Kind::MessageSent(pb::MessageSent {
            message: stub(&s.message),
        })),
        Some(Kind::MessageReceived(r)) => Some(Kind::MessageReceived(pb::MessageReceived {
            message: stub(&r.message),
        })),
        other => other.clone(),
    };
    pb::Event {
        seq: event.seq,
        event_id: event.event_id.clone(),
        time: event.time,
        kind,
    }
}

/// Logs a contact change's event, or refuses it when no row matched.
fn contact_changed(
    tx: &Connection,
    rows: usize,
    owner: AccountId,
    event: pb::Event,
    events: &mut Log,
) -> CoreResult<WriteOutput> {
    if rows == 0 {
        return Err(CoreError::not_found(
            "contact_id",
            "not one of your contacts",
        ));
    }
    append(tx, owner, event, events)?;
    Ok(WriteOutput::Done)
}

fn apply(tx: &Connection, op: WriteOp, events: &mut Log) -> CoreResult<WriteOutput> {
    match op {
        WriteOp::CreateAccount(mut a, t) => {
            let inserted = tx
                .prepare_cached(
                    "INSERT INTO accounts (id, handle, display_name, created_at, status, status_text)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?
                .execute(params![
                    a.id.to_string(),
                    a.handle,
                    a.display_name,
                    a.created_at,
                    a.status as i32,
                    a.status_text
                ]);
            match inserted {
                Err(e) if is_constraint(&e) => {
                    return Err(CoreError::exists(
                        "handle",
                        format!("handle {:?} is taken", a.handle),
                    ));
                }
                r => r?,
            };
            a.row = tx.last_insert_rowid();
            insert_token(tx, &t)?;
            Ok(WriteOutput::Account(a))
        }
        WriteOp::IssueToken(t) => {
            if !account_exists(tx, t.account_id)? {
                return Err(CoreError::not_found("account_id", "no such account"));
            }
            insert_token(tx, &t)?;
            Ok(WriteOutput::Token(t))
        }
        WriteOp::RevokeToken(id) => {
            let row = tx
                .prepare_cached(
                    "UPDATE tokens SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL
                     RETURNING account_id, hash",
                )?
                .query_row(params![id.to_string(), now_micros()], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                })
                .optional()?;
            let (account, hash) =
                row.ok_or_else(|| CoreError::not_found("token_id", "no such live token"))?;
            Ok(WriteOutput::Token(TokenRecord {
                id,
                account_id: Uuid::parse_str(&account).map_err(CoreError::internal)?,
                hash,
            }))
        }
        WriteOp::SetStatus(id, status, text) => {
            tx.prepare_cached("UPDATE accounts SET status = ?2, status_text = ?3 WHERE id = ?1")?
                .execute(params![id.to_string(), status as i32, text])?;
            Ok(WriteOutput::Done)
        }
        WriteOp::SetLastSeen(id, at) => {
            tx.prepare_cached("UPDATE accounts SET last_seen = ?2 WHERE id = ?1")?
                .execute(params![id.to_string(), at])?;
            Ok(WriteOutput::Done)
        }
        WriteOp::AddContact(mut c, event) => {
            let inserted = tx
                .prepare_cached(
                    "INSERT INTO contacts (owner, peer, alias, added_at) VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![
                    c.owner.to_string(),
                    c.peer.to_string(),
                    c.alias,
                    c.added_at
                ]);
            match inserted {
                Err(e) if is_constraint(&e) => {
                    return Err(CoreError::exists("handle", "already a contact"));
                }
                r => r?,
            };
            c.row = tx.last_insert_rowid();
            append(tx, c.owner, event, events)?;
            Ok(WriteOutput::Contact(c))
        }
        WriteOp::UpdateContact {
            owner,
            peer,
            alias,
            event,
        } => {
            let n = tx
                .prepare_cached("UPDATE contacts SET alias = ?3 WHERE owner = ?1 AND peer = ?2")?
                .execute(params![owner.to_string(), peer.to_string(), alias])?;
            contact_changed(tx, n, owner, event, events)
        }
        WriteOp::RemoveContact { owner, peer, event } => {
            let n = tx
                .prepare_cached("DELETE FROM contacts WHERE owner = ?1 AND peer = ?2")?
                .execute(params![owner.to_string(), peer.to_string()])?;
            contact_changed(tx, n, owner, event, events)
        }
        WriteOp::SendMessage(m) => send_message(tx, m, events),
        WriteOp::MarkRead {
            reader,
            sender,
            up_to,
        } => mark_read(tx, reader, sender, up_to, events),
        // SQLite looks every id up: its index on `messages.id` makes that cheap enough.
        WriteOp::MarkDelivered { recipient, ids, .. } => mark_delivered(tx, recipient, ids, events),
    }
}

fn insert_token(tx: &Connection, t: &TokenRecord) -> CoreResult<()> {
    tx.prepare_cached(
        "INSERT INTO tokens (id, account_id, hash, created_at) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![
        t.id.to_string(),
        t.account_id.to_string(),
        t.hash,
        now_micros()
    ])?;
    Ok(())
}

fn send_message(tx: &Connection, m: pb::Message, events: &mut Log) -> CoreResult<WriteOutput> {
    let sender = Uuid::parse_str(&m.sender_id).map_err(CoreError::internal)?;
    let recipient = Uuid::parse_str(&m.recipient_id).map_err(CoreError::internal)?;
    if !m.client_message_id.is_empty() {
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE sender = ?1 AND client_message_id = ?2"
        );
        let earlier = tx
            .prepare_cached(&sql)?
            .query_row(params![m.sender_id, m.client_message_id], message_from_row)
            .optional()?;
        if let Some(message) = earlier {
            return Ok(WriteOutput::Sent(SentMessage {
                message: message.into(),
                duplicate: true,
            }));
        }
    }
    // Both logs' next seqs first (the sender's first, so a message to oneself logs MessageSent
    // before MessageReceived): they also give the accounts' rows for the conversation's key.
    let sender_next = next_seq(tx, sender)?
        .ok_or_else(|| CoreError::Internal(format!("no account {sender} to send from")))?;
    let recipient_next = next_seq(tx, recipient)?
        .ok_or_else(|| CoreError::not_found("recipient_id", "no such account"))?;
    let pair = pair_key(sender_next.1, recipient_next.1);
    let cmid = (!m.client_message_id.is_empty()).then_some(m.client_message_id.as_str());
    let sent_at = m
        .sent_at
        .as_ref()
        .map(|t| t.seconds * 1_000_000 + i64::from(t.nanos) / 1000)
        .unwrap_or_else(now_micros);
    tx.prepare_cached(
        "INSERT INTO messages (id, conv, sender, recipient, text, payload, content_type,
                               client_message_id, sent_at, state, pair)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?
    .execute(params![
        m.message_id,
        conversation_key(sender, recipient),
        m.sender_id,
        m.recipient_id,
        m.text,
        m.payload.as_ref(),
        m.content_type,
        cmid,
        sent_at,
        m.state,
        pair
    ])?;
    let sent = Kind::MessageSent(pb::MessageSent {
        message: Some(m.clone()),
    });
    let received = Kind::MessageReceived(pb::MessageReceived {
        message: Some(m.clone()),
    });
    let row = Some(tx.last_insert_rowid());
    log_event(tx, sender, sender_next, new_event(sent), row, events)?;
    log_event(
        tx,
        recipient,
        recipient_next,
        new_event(received),
        row,
        events,
    )?;
    Ok(WriteOutput::Sent(SentMessage {
        message: m.into(),
        duplicate: false,
    }))
}

fn mark_read(
    tx: &Connection,
    reader: AccountId,
    sender: AccountId,
    up_to: Uuid,
    events: &mut Log,
) -> CoreResult<WriteOutput> {
    let (r, s) = (reader.to_string(), sender.to_string());
    let up_row: i64 = tx
        .prepare_cached(
            "SELECT row FROM messages WHERE id = ?1 AND sender = ?2 AND recipient = ?3",
        )?
        .query_row(params![up_to.to_string(), s, r], |row| row.get(0))
        .optional()?
        .ok_or_else(|| {
            CoreError::not_found("up_to_message_id", "no such message from contact_id to you")
        })?;
    let read = MessageState::Read as i32;
    let mut ids: Vec<String> = tx
        .prepare_cached(&MARK_READ)?
        .query_map(params![s, r, up_row, read], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    ids.sort(); // UUIDv7: time order
    if !ids.is_empty() {
        append(
            tx,
            sender,
            new_event(Kind::MessageStateChanged(pb::MessageStateChanged {
                contact_id: r,
                message_ids: ids.clone(),
                state: read,
            })),
            events,
        )?;
    }
    Ok(WriteOutput::Ids(ids))
}

/// Makes messages to `recipient` DELIVERED where they are still SENT (a READ message stays
/// READ: READ implies DELIVERED), logging one MessageStateChanged per sender.
fn mark_delivered(
    tx: &Connection,
    recipient: AccountId,
    ids: Vec<String>,
    events: &mut Log,
) -> CoreResult<WriteOutput> {
    let r = recipient.to_string();
    let delivered = MessageState::Delivered as i32;
    let mut by_sender: std::collections::BTreeMap<AccountId, Vec<String>> = Default::default();
    {
        let mut stmt = tx.prepare_cached(
            "UPDATE messages SET state = ?3 WHERE id = ?1 AND recipient = ?2 AND state < ?3
             RETURNING sender",
        )?;
        for id in ids {
            let sender: Option<String> = stmt
                .query_row(params![id, r, delivered], |row| row.get(0))
                .optional()?;
            if let Some(sender) = sender {
                let sender = Uuid::parse_str(&sender).map_err(CoreError::internal)?;
                by_sender.entry(sender).or_default().push(id);
            }
        }
    }
    let changed = log_delivered(&r, by_sender, |sender, event| {
        append(tx, sender, event, events)
    })?;
    Ok(WriteOutput::Ids(changed))
}
