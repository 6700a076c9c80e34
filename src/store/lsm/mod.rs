//! The log-structured engine (the default): `fjall`, an LSM-tree store, in `data_dir/lsm`.
//!
//! A write appends to fjall's journal and inserts into its memtables; sorted tables are written
//! and compacted by fjall's own background threads, in long sequential runs. A SendMessage
//! costs the journal well under 1 KiB of appended bytes instead of the several 4 KiB B-tree
//! pages SQLite rewrites per send (BENCHMARKS.md): that is what this engine is for. One writer
//! thread (`writer`) applies every durable change, each as one atomic fjall batch (a run of
//! consecutive sends as one); each group of them then goes to the syncer thread, which
//! fdatasyncs the journal once for every group waiting before anything is answered or
//! published (group commit), while the writer goes on with the next group (`journal`).
//! Readers use fjall directly from tokio's blocking pool. Tables are lz4-compressed at every
//! level (`keyspace_options`).
//!
//! Keyspaces and their keys (integers big-endian, so that byte order is numeric order):
//!
//! | keyspace | key | value |
//! |---|---|---|
//! | `accounts` | account row | `StoredAccount` (JSON) |
//! | `account_ids` | account id (16 bytes) | account row |
//! | `handles` | handle | account row |
//! | `tokens` | token id (16 bytes) | `StoredToken` (JSON) |
//! | `contacts` | owner row, peer row | `ContactRecord` fields (JSON) |
//! | `messages` | pair of account rows (`pair_key`), message row | `pb::Message` (protobuf, ids raw: `records`; `state` as sent) |
//! | `message_ids` | message id (16 bytes) | `MessageIndex`: pair, row, recipient row, sender id, state, seq of its MessageReceived |
//! | `client_ids` | sender row, `client_message_id` | pair, message row |
//! | `events` | account row, seq | `pb::Event` (protobuf, ids raw: `records`; a message event refers to its message by its `messages` key) |
//! | `delivered` | account row | seq: every MessageReceived up to it is DELIVERED (or READ) |
//! | `counters` | `MESSAGE_ROW` | the newest message row |
//! | `counters` | `retention`, `retention_pin/` and an account row | the retention last opened with, and where it pinned a log's floor (`retention`) |
//!
//! A message's record is keyed by its conversation, so that one range of `messages` is a
//! conversation in order (ListMessages, MarkRead) and a send writes four items: its record, its
//! index entry and two events (the keyspace is named `pair_messages` on disk; `migrate` moves a
//! data dir of the earlier layout, where a `conversations` index pointed at records keyed by row
//! alone). A message's state lives in its `message_ids` entry, not in its record, so that a
//! receipt is one lookup and one 49-byte write rather than a read, decode and rewrite of the
//! whole message. A receipt that knows the stretch of the log it was handed out from (a
//! replay's, or a live stream's since its last one) writes not even that: it moves its
//! recipient's `delivered` watermark over that stretch, and a SENT entry whose MessageReceived
//! is at or below the watermark reads as DELIVERED (`MessageIndex::state_at`). The newest row
//! is kept in `counters`, written once per batch that sends. An event that retention pushes out
//! of its log is hidden from readers at once and dropped by a compaction later, with no
//! tombstone (`retention`).

mod journal;
mod memtables;
mod migrate;
mod prefill;
mod records;
mod retention;
mod writer;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use fjall::config::CompressionPolicy;
use fjall::{CompressionType, Database, Keyspace, KeyspaceCreateOptions};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::sqlite::{paginate, paginate_rows, pair_key};
use super::syncer::{self, Durable};
use super::{EventSink, Jobs, LogBounds, Store};
use crate::config::HandOffs;
use crate::core::stats::StoreStats;
use crate::core::{
    AccountId, AccountRecord, ContactRecord, CoreError, CoreResult, MessageState, Page,
    PageRequest, PresenceStatus, TokenRecord,
};
use crate::pb;

/// The engine's directory inside the data dir.
pub const LSM_DIR: &str = "lsm";

/// An 8-byte big-endian key part.
fn be(n: i64) -> [u8; 8] {
    (n as u64).to_be_bytes()
}

/// A key of two integers.
fn key2(a: i64, b: u64) -> [u8; 16] {
    let mut k = [0; 16];
    k[..8].copy_from_slice(&be(a));
    k[8..].copy_from_slice(&b.to_be_bytes());
    k
}

/// Reads an integer key part or value.
fn int_at(bytes: &[u8], at: usize) -> CoreResult<i64> {
    bytes
        .get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map(|b| u64::from_be_bytes(b) as i64)
        .ok_or_else(|| CoreError::Internal("malformed store key or value".into()))
}

/// A message's `message_ids` entry (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq)]
struct MessageIndex {
    /// Its conversation: `pair_key` of its sender's and recipient's rows.
    pair: i64,
    /// Its row; with `pair`, the key of its record in `messages`.
    row: i64,
    /// Its recipient's row.
    recipient: i64,
    sender: AccountId,
    /// Its state as last written; a SENT message may read as DELIVERED (`state_at`).
    state: i32,
    /// The seq of its MessageReceived in its recipient's log; `NOT_LOGGED` in entries written
    /// before 2026-12-06, which never read as DELIVERED by the watermark.
    received: u64,
}

/// `MessageIndex::received` of an entry that does not know its MessageReceived.
const NOT_LOGGED: u64 = u64::MAX;

impl MessageIndex {
    /// Length of an entry: pair, row, recipient row, sender id, state, received seq.
    const LEN: usize = 8 + 8 + 8 + 16 + 1 + 8;
    /// Length of an entry written before 2026-12-06: without the received seq.
    const OLD_LEN: usize = Self::LEN - 8;

    fn encode(&self) -> [u8; Self::LEN] {
        let mut v = [0; Self::LEN];
        v[..8].copy_from_slice(&be(self.pair));
        v[8..16].copy_from_slice(&be(self.row));
        v[16..24].copy_from_slice(&be(self.recipient));
        v[24..40].copy_from_slice(self.sender.as_bytes());
        // Message states are 0..=3 (api.md); one byte holds them.
        v[40] = self.state as u8;
        v[41..].copy_from_slice(&self.received.to_be_bytes());
        v
    }

    fn decode(v: &[u8]) -> CoreResult<Self> {
        let received = match v.len() {
            Self::LEN => int_at(v, 41)? as u64,
            Self::OLD_LEN => NOT_LOGGED,
            n => {
                return Err(CoreError::Internal(format!(
                    "malformed message index entry ({n} bytes)"
                )));
            }
        };
        Ok(MessageIndex {
            pair: int_at(v, 0)?,
            row: int_at(v, 8)?,
            recipient: int_at(v, 16)?,
            sender: Uuid::from_slice(&v[24..40]).map_err(CoreError::internal)?,
            state: i32::from(v[40]),
            received,
        })
    }

    /// Its state when its recipient's delivered watermark is `delivered`: a receipt moves the
    /// watermark instead of rewriting the entry of every message it delivers where it can (the
    /// first replay 7% faster for it, BENCHMARKS.md, thirty-seventh session).
    fn state_at(&self, delivered: u64) -> i32 {
        let sent = MessageState::Sent as i32;
        if self.state == sent && self.received != NOT_LOGGED && self.received <= delivered {
            MessageState::Delivered as i32
        } else {
            self.state
        }
    }

    /// The key of the message's record in `messages`.
    fn key(&self) -> [u8; 16] {
        key2(self.pair, self.row as u64)
    }
}

/// An account as this engine stores it (its row is the key).
#[derive(Serialize, Deserialize)]
struct StoredAccount {
    id: Uuid,
    handle: String,
    display_name: String,
    created_at: i64,
    status: i32,
    status_text: String,
    last_seen: Option<i64>,
}

impl StoredAccount {
    fn of(a: &AccountRecord) -> Self {
        StoredAccount {
            id: a.id,
            handle: a.handle.clone(),
            display_name: a.display_name.clone(),
            created_at: a.created_at,
            status: a.status as i32,
            status_text: a.status_text.clone(),
            last_seen: a.last_seen,
        }
    }

    fn into_record(self, row: i64) -> AccountRecord {
        AccountRecord {
            id: self.id,
            handle: self.handle,
            display_name: self.display_name,
            created_at: self.created_at,
            status: PresenceStatus::try_from(self.status).unwrap_or(PresenceStatus::Online),
            status_text: self.status_text,
            last_seen: self.last_seen,
            row,
        }
    }
}

/// A live token as this engine stores it (its id is the key; revoking deletes it).
#[derive(Serialize, Deserialize)]
struct StoredToken {
    account_id: Uuid,
    hash: String,
    created_at: i64,
}

/// A contact as this engine stores it.
#[derive(Serialize, Deserialize)]
struct StoredContact {
    owner: Uuid,
    peer: Uuid,
    alias: String,
    added_at: i64,
    row: i64,
}

impl StoredContact {
    fn into_record(self) -> ContactRecord {
        ContactRecord {
            owner: self.owner,
            peer: self.peer,
            alias: self.alias,
            added_at: self.added_at,
            row: self.row,
        }
    }
}

fn to_json<T: Serialize>(v: &T) -> CoreResult<Vec<u8>> {
    serde_json::to_vec(v).map_err(CoreError::internal)
}

fn from_json<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> CoreResult<T> {
    serde_json::from_slice(bytes).map_err(CoreError::internal)
}

/// The engine's keyspaces (cheap to clone: handles).
#[derive(Clone)]
pub(crate) struct Tables {
    db: Database,
    accounts: Keyspace,
    account_ids: Keyspace,
    handles: Keyspace,
    tokens: Keyspace,
    contacts: Keyspace,
    messages: Keyspace,
    message_ids: Keyspace,
    client_ids: Keyspace,
    events: Keyspace,
    delivered: Keyspace,
    counters: Keyspace,
    /// What each account's log shows, and what compactions of `events` may drop.
    retention: Arc<retention::Retention>,
}

/// The `counters` key of the newest message row.
const MESSAGE_ROW: &[u8] = b"message_row";

/// Options of a keyspace this engine creates (an existing keyspace keeps the ones it was made
/// with: fjall stores them). Every level's data blocks are lz4-compressed, not only from the
/// third level down (fjall's default): a flush writes a whole table and fsyncs it at the end,
/// and every journal fsync behind it waits until those bytes are on the disk; compressed, a
/// send's share of the tables is 195 bytes instead of 411 (BENCHMARKS.md, 2026-12-04).
fn keyspace_options() -> KeyspaceCreateOptions {
    KeyspaceCreateOptions::default()
        .data_block_compression_policy(CompressionPolicy::all(CompressionType::Lz4))
}

/// Delivered watermarks read during one read, by account row: a conversation has two.
#[derive(Default)]
struct Watermarks(Vec<(i64, u64)>);

impl Watermarks {
    /// The watermark of the account at `row`, read from `t` the first time.
    fn of(&mut self, t: &Tables, row: i64) -> CoreResult<u64> {
        if let Some(&(_, mark)) = self.0.iter().find(|(r, _)| *r == row) {
            return Ok(mark);
        }
        let mark = t.delivered_through(row)?;
        self.0.push((row, mark));
        Ok(mark)
    }
}

impl Tables {
    fn open(dir: &Path) -> CoreResult<Self> {
        // Hot blocks of the newest log and messages stay in memory; fjall's own threads flush
        // and compact in the background.
        // The journal goes to the OS once per group (`writer`) and is fsync'd by the syncer.
        // One worker: in a pool, fjall 3.1.13's worker 0 busy-loops while another compacts.
        // One worker alone is safe only because `memtables` rotates instead of fjall, whose
        // trigger can leave every worker blocked on its own full queue (ARCHITECTURE.md,
        // "fjall's workers and memtable rotation").
        let retention = retention::Retention::new();
        let factory = retention.factory();
        let db = Database::builder(dir)
            .cache_size(64 << 20)
            .manual_journal_persist(true)
            .worker_threads(1)
            .with_compaction_filter_factories(Arc::new(move |name| {
                (name == retention::EVENTS).then(|| factory.clone())
            }))
            .open()?;
        let ks = |name: &str| db.keyspace(name, keyspace_options);
        Ok(Tables {
            accounts: ks("accounts")?,
            account_ids: ks("account_ids")?,
            handles: ks("handles")?,
            tokens: ks("tokens")?,
            contacts: ks("contacts")?,
            messages: ks("pair_messages")?,
            message_ids: ks("message_ids")?,
            client_ids: ks("client_ids")?,
            events: ks(retention::EVENTS)?,
            delivered: ks("delivered")?,
            counters: ks("counters")?,
            retention,
            db,
        })
    }

    /// Every keyspace.
    fn keyspaces(&self) -> Vec<Keyspace> {
        vec![
            self.accounts.clone(),
            self.account_ids.clone(),
            self.handles.clone(),
            self.tokens.clone(),
            self.contacts.clone(),
            self.messages.clone(),
            self.message_ids.clone(),
            self.client_ids.clone(),
            self.events.clone(),
            self.delivered.clone(),
            self.counters.clone(),
        ]
    }

    /// The row of an account, `None` if there is no such account.
    fn account_row(&self, id: AccountId) -> CoreResult<Option<i64>> {
        match self.account_ids.get(id.as_bytes())? {
            Some(v) => Ok(Some(int_at(&v, 0)?)),
            None => Ok(None),
        }
    }

    fn account(&self, row: i64) -> CoreResult<Option<StoredAccount>> {
        match self.accounts.get(be(row))? {
            Some(v) => Ok(Some(from_json(&v)?)),
            None => Ok(None),
        }
    }

    /// A record read from `messages`, with its current state (from its index entry and its
    /// recipient's watermark, read once per recipient into `marks`).
    fn message_record(&self, record: &[u8], marks: &mut Watermarks) -> CoreResult<pb::Message> {
        let (mut m, _, index) = self.record_and_index(record)?;
        m.state = index.state_at(marks.of(self, index.recipient)?);
        Ok(m)
    }

    /// The delivered watermark of the account at `row` (0: none yet).
    fn delivered_through(&self, row: i64) -> CoreResult<u64> {
        match self.delivered.get(be(row))? {
            Some(v) => Ok(int_at(&v, 0)? as u64),
            None => Ok(0),
        }
    }

    /// A record read from `messages` (its state as sent), its id and its index entry.
    fn record_and_index(&self, record: &[u8]) -> CoreResult<(pb::Message, Uuid, MessageIndex)> {
        let m = records::decode_message(record)?;
        let id = Uuid::parse_str(&m.message_id).map_err(CoreError::internal)?;
        let index = self
            .message_index(id)?
            .ok_or_else(|| CoreError::Internal(format!("message {id} has no index entry")))?;
        Ok((m, id, index))
    }

    /// The message whose record is at `key` in `messages`, with its current state.
    fn message_at(&self, key: &[u8]) -> CoreResult<pb::Message> {
        let v = self
            .messages
            .get(key)?
            .ok_or_else(|| CoreError::Internal("a message record is missing".into()))?;
        self.message_record(&v, &mut Watermarks::default())
    }

    /// The index entry of the message with this id.
    fn message_index(&self, id: Uuid) -> CoreResult<Option<MessageIndex>> {
        match self.message_ids.get(id.as_bytes())? {
            Some(v) => Ok(Some(MessageIndex::decode(&v)?)),
            None => Ok(None),
        }
    }

    /// Up to `limit` events of the log of the account at `row`, from after seq `after`, each
    /// message event with its message.
    fn read_log(&self, row: i64, after: u64, limit: usize) -> CoreResult<Vec<pb::Event>> {
        let mut out = Vec::new();
        // Per conversation, the message rows to join and the events they go to; in key order,
        // so that the range reads go forward through `messages`.
        let mut wanted: BTreeMap<i64, Vec<(i64, usize)>> = BTreeMap::new();
        for g in self.shown_events(row, after, u64::MAX).take(limit) {
            let stored = records::decode_event(&g.value()?)?;
            if let Some(at) = stored.message_at {
                let rows = wanted.entry(int_at(&at, 0)?).or_default();
                rows.push((int_at(&at, 8)?, out.len()));
            }
            out.push(stored.event);
        }
        for (pair, rows) in wanted {
            self.join_messages(pair, rows, &mut out)?;
        }
        Ok(out)
    }

    /// Gives the events of `out` at the indices in `rows` their messages, from the records
    /// at those rows of conversation `pair`. An account's log has every message of each of
    /// its conversations in row order, so the rows of a stretch of it are all the rows of
    /// that conversation between the first and the last: one range read, not a point read
    /// per event (which cost the first replay over a third of its rate, BENCHMARKS.md).
    fn join_messages(
        &self,
        pair: i64,
        mut rows: Vec<(i64, usize)>,
        out: &mut [pb::Event],
    ) -> CoreResult<()> {
        rows.sort_unstable();
        let (Some(&(first, _)), Some(&(last, _))) = (rows.first(), rows.last()) else {
            return Ok(());
        };
        let mut want = rows.into_iter().peekable();
        let records = self
            .messages
            .range(key2(pair, first as u64)..=key2(pair, last as u64));
        for g in records {
            let Some(&(next, at)) = want.peek() else {
                break;
            };
            let (k, v) = g.into_inner()?;
            let row = int_at(&k, 8)?;
            if row < next {
                continue;
            }
            if row > next {
                break; // `next` has no record
            }
            want.next();
            let m = records::decode_message(&v)?;
            // A message to oneself is in the log twice, once sent and once received.
            while let Some((_, also)) = want.next_if(|&(r, _)| r == row) {
                if let Some(e) = out.get_mut(also) {
                    records::put_message(e, m.clone());
                }
            }
            if let Some(e) = out.get_mut(at) {
                records::put_message(e, m);
            }
        }
        match want.peek() {
            None => Ok(()),
            Some((row, _)) => Err(CoreError::Internal(format!(
                "message row {row} of conversation {pair}, which an event refers to, has no record"
            ))),
        }
    }

    /// The newest message row (0 if there is none).
    fn newest_message_row(&self) -> CoreResult<i64> {
        match self.counters.get(MESSAGE_ROW)? {
            Some(v) => int_at(&v, 0),
            None => Ok(0),
        }
    }

    /// Newest seq in an account's log (0 if it has none).
    fn head(&self, row: i64) -> CoreResult<u64> {
        Self::seq_of(self.events.prefix(be(row)).next_back())
    }

    /// The events of the account at `row` that its log shows, from after seq `after` up to
    /// `through`: what retention took may still be stored until a compaction drops it, and is
    /// passed over (`retention`).
    fn shown_events(&self, row: i64, after: u64, through: u64) -> fjall::Iter {
        let from = after.max(self.retention.floor(row)).saturating_add(1);
        self.events.range(key2(row, from)..=key2(row, through))
    }

    /// Oldest seq an account's log shows (0 if it has none).
    fn oldest(&self, row: i64) -> CoreResult<u64> {
        Self::seq_of(self.shown_events(row, 0, u64::MAX).next())
    }

    /// The seq of an `events` entry (0 for none).
    fn seq_of(entry: Option<fjall::Guard>) -> CoreResult<u64> {
        match entry {
            Some(g) => Ok(int_at(&g.key()?, 8)? as u64),
            None => Ok(0),
        }
    }

    /// The newest key of a keyspace keyed by one integer (0 if empty).
    fn last_row(ks: &Keyspace) -> CoreResult<i64> {
        match ks.last_key_value() {
            Some(g) => int_at(&g.key()?, 0),
            None => Ok(0),
        }
    }
}

/// The log-structured engine.
pub struct LsmStore {
    tables: Tables,
    durable: Arc<Durable>,
    jobs: Jobs,
    writer: Mutex<Option<JoinHandle<()>>>,
    syncer: Mutex<Option<JoinHandle<()>>>,
    /// Frees flushed memtables outside fjall's locks (`memtables`).
    keeper: Mutex<memtables::Keeper>,
    /// Drops whole tables of events that retention pushed out (`retention`).
    sweeper: Mutex<retention::Sweeper>,
}

impl LsmStore {
    /// Opens (creating if needed) `data_dir/lsm` and starts the writer thread, scheduled as
    /// `hand_offs` says; `retention` is how many durable events each account's log keeps, and
    /// `flush_when_idle` how long nothing must be written before the memtables are flushed
    /// (never, if `None`).
    pub fn open(
        data_dir: &Path,
        sink: EventSink,
        retention: u64,
        stats: StoreStats,
        hand_offs: HandOffs,
        flush_when_idle: Option<Duration>,
    ) -> CoreResult<Self> {
        let dir = data_dir.join(LSM_DIR);
        std::fs::create_dir_all(&dir).map_err(|e| {
            CoreError::Internal(format!("cannot create data dir {}: {e}", dir.display()))
        })?;
        let tables = Tables::open(&dir)?;
        let keeper =
            memtables::Keeper::start(tables.db.clone(), tables.keyspaces(), flush_when_idle)?;
        let sweeper = retention::Sweeper::start(tables.retention.clone(), tables.events.clone())?;
        migrate::run(&tables)?;
        let state = writer::State::load(&tables, retention)?;
        let durable = Arc::new(Durable::new(state.newest_message()));
        let mut journal = journal::JournalSync::new(tables.db.clone(), &dir);
        let sync = move || journal.sync();
        let (to_syncer, syncer) =
            syncer::start(sync, stats.sync_seconds.clone(), sink, durable.clone())?;
        let (jobs, rx) = Jobs::new();
        let (t, d) = (tables.clone(), durable.clone());
        let prefill = prefill::Prefill::new(&dir);
        let writer = crate::sched::spawn_hand_off("phantom-store-writer", hand_offs, move || {
            writer::run(t, state, rx, to_syncer, d, stats, prefill)
        })
        .map_err(CoreError::internal)?;
        Ok(LsmStore {
            tables,
            durable,
            jobs,
            writer: Mutex::new(Some(writer)),
            syncer: Mutex::new(Some(syncer)),
            keeper: Mutex::new(keeper),
            sweeper: Mutex::new(sweeper),
        })
    }

    fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Tables) -> CoreResult<T> + Send + 'static,
    ) -> BoxFuture<'static, CoreResult<T>> {
        // Started now, not when first polled: a caller may read ahead (replays do).
        let tables = self.tables.clone();
        let read = tokio::task::spawn_blocking(move || f(&tables));
        Box::pin(async move { read.await.map_err(CoreError::internal)? })
    }
}

impl Store for LsmStore {
    fn jobs(&self) -> &Jobs {
        &self.jobs
    }

    fn load_accounts(&self) -> CoreResult<Vec<AccountRecord>> {
        let mut out = Vec::new();
        for g in self.tables.accounts.iter() {
            let (k, v) = g.into_inner()?;
            out.push(from_json::<StoredAccount>(&v)?.into_record(int_at(&k, 0)?));
        }
        Ok(out)
    }

    fn load_tokens(&self) -> CoreResult<Vec<TokenRecord>> {
        let mut out = Vec::new();
        for g in self.tables.tokens.iter() {
            let (k, v) = g.into_inner()?;
            let t: StoredToken = from_json(&v)?;
            out.push(TokenRecord {
                id: Uuid::from_slice(&k).map_err(CoreError::internal)?,
                account_id: t.account_id,
                hash: t.hash,
            });
        }
        Ok(out)
    }

    fn load_contacts(&self) -> CoreResult<Vec<ContactRecord>> {
        let mut out = Vec::new();
        for g in self.tables.contacts.iter() {
            out.push(from_json::<StoredContact>(&g.value()?)?.into_record());
        }
        out.sort_by_key(|c| c.row);
        Ok(out)
    }

    fn list_accounts(
        &self,
        page: PageRequest,
    ) -> BoxFuture<'static, CoreResult<Page<AccountRecord>>> {
        self.read(move |t| {
            let from = page.after.unwrap_or(0).saturating_add(1);
            let mut items = Vec::new();
            for g in t.accounts.range(be(from)..).take(page.size + 1) {
                let (k, v) = g.into_inner()?;
                items.push(from_json::<StoredAccount>(&v)?.into_record(int_at(&k, 0)?));
            }
            Ok(paginate(items, page.size, |a| a.row))
        })
    }

    fn list_messages(
        &self,
        me: AccountId,
        peer: AccountId,
        page: PageRequest,
    ) -> BoxFuture<'static, CoreResult<Page<pb::Message>>> {
        let before = self.durable.rows_before(page.after);
        self.read(move |t| {
            let not_found = || CoreError::not_found("contact_id", "no such account");
            let peer_row = t.account_row(peer)?.ok_or_else(not_found)?;
            let me_row = t.account_row(me)?.ok_or_else(not_found)?;
            let pair = pair_key(me_row, peer_row);
            let (mut rows, mut marks) = (Vec::new(), Watermarks::default());
            let range = t.messages.range(key2(pair, 0)..key2(pair, before as u64));
            for g in range.rev().take(page.size + 1) {
                let (k, v) = g.into_inner()?;
                rows.push((int_at(&k, 8)?, t.message_record(&v, &mut marks)?));
            }
            Ok(paginate_rows(rows, page.size))
        })
    }

    fn read_events(
        &self,
        account: AccountId,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'static, CoreResult<Vec<pb::Event>>> {
        let durable = self.durable.clone();
        self.read(move |t| {
            let Some(row) = t.account_row(account)? else {
                return Ok(Vec::new());
            };
            let mut out = t.read_log(row, after, limit)?;
            durable.keep_durable(account, &mut out);
            Ok(out)
        })
    }

    fn log_bounds(&self, account: AccountId) -> BoxFuture<'static, CoreResult<LogBounds>> {
        let durable = self.durable.clone();
        self.read(move |t| {
            let Some(row) = t.account_row(account)? else {
                return Ok(LogBounds::default());
            };
            let (head, oldest) = (t.head(row)?, t.oldest(row)?);
            // Read after the queries, as in `Durable::keep_durable`.
            Ok(LogBounds {
                oldest,
                head: durable.head(account).map_or(head, |d| d.min(head)),
            })
        })
    }

    fn close(&self) {
        self.jobs.close();
        syncer::join(&self.writer, &self.syncer);
        // Nothing writes now and everything written is in the journal; in tables it need not
        // be replayed at the next start (`memtables::flush_all`). A store that gave up on its
        // journal leaves it as it is, for the next start to recover from.
        let started = std::time::Instant::now();
        let (bytes, done) = if self.durable.broken.load(Ordering::Acquire) {
            (0, false)
        } else {
            memtables::flush_all(
                &self.tables.db,
                &self.tables.keyspaces(),
                memtables::FLUSH_AT_CLOSE_WITHIN,
            )
        };
        let took = started.elapsed();
        if done {
            tracing::info!(bytes, ?took, "store: memtables flushed at close");
        } else {
            tracing::warn!(
                bytes,
                ?took,
                "store: memtables not all flushed at close; the next start replays their journal"
            );
        }
        if let Ok(mut keeper) = self.keeper.lock() {
            keeper.stop();
        }
        if let Ok(mut sweeper) = self.sweeper.lock() {
            sweeper.stop();
        }
    }
}
