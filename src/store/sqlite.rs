//! The embedded engine: SQLite in WAL mode, one writer thread (`writer`), the syncer that
//! makes its commits durable before anything is answered (`syncer`), WAL checkpoints on a
//! thread of their own (`checkpointer`), and a pool of read-only connections used from
//! tokio's blocking pool.

use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};
use std::thread::JoinHandle;

use bytes::Bytes;
use futures::future::BoxFuture;
use prost::Message as _;
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, params};
use uuid::Uuid;

use super::checkpointer;

use super::syncer::{self, Durable};
use super::writer;
use super::{EventSink, Jobs, LogBounds, Store, schema};
use crate::core::stats::StoreStats;
use crate::core::time::to_timestamp;
use crate::core::{
    AccountId, AccountRecord, ContactRecord, CoreError, CoreResult, Page, PageRequest,
    PresenceStatus, TokenRecord,
};
use crate::pb;

/// The database file inside the data dir.
pub const DB_FILE: &str = "phantom.db";

/// Columns selected for a message, in `message_from_row` order.
pub(crate) const MESSAGE_COLUMNS: &str = "row, id, sender, recipient, text, payload, content_type, \
     COALESCE(client_message_id, ''), sent_at, state";

/// `messages.pair` of two accounts' `row`s: both in one integer, smaller first (either side
/// finds the same rows). `pair_of` is the same in SQL.
pub(crate) fn pair_key(a: i64, b: i64) -> i64 {
    (a.min(b) << 32) | a.max(b)
}

/// `pair_key` in SQL, for the accounts whose ids are the expressions `a` and `b`.
pub(crate) fn pair_of(a: &str, b: &str) -> String {
    format!(
        "(SELECT (MIN(x.row, y.row) << 32) | MAX(x.row, y.row) \
         FROM accounts x, accounts y WHERE x.id = {a} AND y.id = {b})"
    )
}

/// The conversation key: both ids, smaller first, so either side finds the same rows.
pub(crate) fn conversation_key(a: AccountId, b: AccountId) -> String {
    let (x, y) = if a <= b { (a, b) } else { (b, a) };
    format!("{x}:{y}")
}

/// The `row` of the account whose id is ?1.
const ACCOUNT_ROW: &str = "(SELECT row FROM accounts WHERE id = ?1)";

/// A page of the conversation between ?1 and ?2, newest first, before row ?3, at most ?4.
static LIST_MESSAGES: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages WHERE pair = {} AND row < ?3
         ORDER BY row DESC LIMIT ?4",
        pair_of("?1", "?2")
    )
});

/// Up to ?3 events of account ?1 after seq ?2, each with its message joined (if it has one).
static READ_EVENTS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT e.body, {MESSAGE_COLUMNS} FROM events e LEFT JOIN messages m ON m.row = e.msg
         WHERE e.account = {ACCOUNT_ROW} AND e.seq > ?2 ORDER BY e.seq LIMIT ?3"
    )
});

/// The oldest seq still in account ?1's log.
static OLDEST_EVENT: LazyLock<String> =
    LazyLock::new(|| format!("SELECT MIN(seq) FROM events WHERE account = {ACCOUNT_ROW}"));

/// Reads a message row selected with `MESSAGE_COLUMNS`.
pub(crate) fn message_from_row(r: &Row) -> rusqlite::Result<pb::Message> {
    message_at(r, 0)
}

/// Reads a message selected with `MESSAGE_COLUMNS` starting at column `at`.
fn message_at(r: &Row, at: usize) -> rusqlite::Result<pb::Message> {
    Ok(pb::Message {
        message_id: r.get(at + 1)?,
        sender_id: r.get(at + 2)?,
        recipient_id: r.get(at + 3)?,
        text: r.get(at + 4)?,
        payload: Bytes::from(r.get::<_, Vec<u8>>(at + 5)?),
        content_type: r.get(at + 6)?,
        client_message_id: r.get(at + 7)?,
        sent_at: Some(to_timestamp(r.get(at + 8)?)),
        state: r.get(at + 9)?,
    })
}

/// Puts a joined message back into the event whose body holds its stub; the stub keeps the
/// state the message had when the event happened.
fn fill_message(event: &mut pb::Event, full: pb::Message) {
    use pb::event::Kind;
    if let Some(Kind::MessageSent(pb::MessageSent { message }))
    | Some(Kind::MessageReceived(pb::MessageReceived { message })) = event.kind.as_mut()
    {
        let state = message.as_ref().map_or(full.state, |m| m.state);
        *message = Some(pb::Message { state, ..full });
    }
}

fn parse_uuid(s: String) -> rusqlite::Result<Uuid> {
    Uuid::parse_str(&s).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}

const ACCOUNT_COLUMNS: &str =
    "row, id, handle, display_name, created_at, status, status_text, last_seen";

/// Reads an account row selected with `ACCOUNT_COLUMNS`.
pub(crate) fn account_from_row(r: &Row) -> rusqlite::Result<AccountRecord> {
    Ok(AccountRecord {
        row: r.get(0)?,
        id: parse_uuid(r.get(1)?)?,
        handle: r.get(2)?,
        display_name: r.get(3)?,
        created_at: r.get(4)?,
        status: PresenceStatus::try_from(r.get::<_, i32>(5)?).unwrap_or(PresenceStatus::Online),
        status_text: r.get(6)?,
        last_seen: r.get(7)?,
    })
}

/// Cuts one extra row off a `LIMIT size + 1` query into a page.
pub(crate) fn paginate<T>(mut items: Vec<T>, size: usize, row_of: impl Fn(&T) -> i64) -> Page<T> {
    let next = if items.len() > size {
        items.truncate(size);
        items.last().map(row_of)
    } else {
        None
    };
    Page { items, next }
}

/// `paginate` of items read with their rows, which the page then drops.
pub(crate) fn paginate_rows<T>(rows: Vec<(i64, T)>, size: usize) -> Page<T> {
    let page = paginate(rows, size, |(row, _)| *row);
    Page {
        items: page.items.into_iter().map(|(_, item)| item).collect(),
        next: page.next,
    }
}

/// Read-only connections, reused.
struct ReaderPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl ReaderPool {
    fn with<T>(&self, f: impl FnOnce(&Connection) -> CoreResult<T>) -> CoreResult<T> {
        let conn = match self.idle.lock().map_err(CoreError::internal)?.pop() {
            Some(c) => c,
            None => open_reader(&self.path)?,
        };
        let result = f(&conn);
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(conn);
        }
        result
    }
}

fn open_reader(path: &Path) -> CoreResult<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // Replays read long runs of the log: map the file instead of copying it page by page.
    conn.pragma_update(None, "mmap_size", 256i64 << 20)?;
    conn.pragma_update(None, "cache_size", -16384)?; // KiB
    Ok(conn)
}

/// The SQLite engine.
pub struct SqliteStore {
    readers: Arc<ReaderPool>,
    /// What readers may return: nothing the syncer has not made durable yet.
    durable: Arc<Durable>,
    syncer: Mutex<Option<JoinHandle<()>>>,
    jobs: Jobs,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl SqliteStore {
    /// Opens (creating if needed) `data_dir/phantom.db` and starts the writer thread;
    /// `retention` is how many durable events each account's log keeps, `checkpoint_pages`
    /// how many WAL pages start a background checkpoint.
    pub fn open(
        data_dir: &Path,
        sink: EventSink,
        retention: u64,
        checkpoint_pages: u32,
        stats: StoreStats,
    ) -> CoreResult<Self> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            CoreError::Internal(format!(
                "cannot create data dir {}: {e}",
                data_dir.display()
            ))
        })?;
        let path = data_dir.join(DB_FILE);
        let mut conn = Connection::open(&path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // NORMAL: SQLite does not fsync the WAL at commit; the syncer thread does, before any
        // reply or event goes out, so a reply still means the write is on disk (as with FULL),
        // while the next batch runs during the flush. Checkpoints still sync WAL and database.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // The writer's I/O is the cost of every write (profiled): keep each job's savepoint
        // journal in memory instead of a temp file, and hot pages cached rather than re-read.
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        conn.pragma_update(None, "cache_size", -65536)?; // KiB: 64 MiB
        conn.pragma_update(None, "mmap_size", 256i64 << 20)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        schema::migrate(&conn)?;
        // A log longer than `retention` (the setting was lowered) is trimmed now, not only
        // as each account next logs.
        conn.execute(
            "DELETE FROM events WHERE seq <= (SELECT head_seq FROM accounts a
                                              WHERE a.row = events.account) - ?1",
            [retention as i64],
        )?;
        checkpointer::start(&path, &mut conn, checkpoint_pages, &stats)?;
        let newest_message: Option<i64> =
            conn.query_row("SELECT MAX(row) FROM messages", [], |r| r.get(0))?;
        let durable = Arc::new(Durable::new(newest_message.unwrap_or(0)));
        let wal = data_dir.join(format!("{DB_FILE}-wal"));
        let mut file = None;
        let sync = move || syncer::sync_wal(&wal, &mut file);
        let (to_syncer, syncer) =
            syncer::start(sync, stats.sync_seconds.clone(), sink, durable.clone())?;
        let (jobs, rx) = Jobs::new();
        let writer_durable = durable.clone();
        let writer = crate::sched::spawn_woken("phantom-store-writer", move || {
            writer::run(conn, rx, to_syncer, writer_durable, retention, stats)
        })
        .map_err(CoreError::internal)?;
        Ok(SqliteStore {
            durable,
            syncer: Mutex::new(Some(syncer)),
            readers: Arc::new(ReaderPool {
                path,
                idle: Mutex::new(Vec::new()),
            }),
            jobs,
            writer: Mutex::new(Some(writer)),
        })
    }

    fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> CoreResult<T> + Send + 'static,
    ) -> BoxFuture<'static, CoreResult<T>> {
        let readers = self.readers.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || readers.with(f))
                .await
                .map_err(CoreError::internal)?
        })
    }

    fn read_now<T>(&self, f: impl FnOnce(&Connection) -> CoreResult<T>) -> CoreResult<T> {
        self.readers.with(f)
    }
}

/// Whether an account exists (on any connection, in or out of a transaction).
pub(crate) fn account_exists(conn: &Connection, id: AccountId) -> CoreResult<bool> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM accounts WHERE id = ?1")?
        .query_row([id.to_string()], |_| Ok(()))
        .optional()?
        .is_some())
}

impl Store for SqliteStore {
    fn jobs(&self) -> &Jobs {
        &self.jobs
    }

    fn load_accounts(&self) -> CoreResult<Vec<AccountRecord>> {
        self.read_now(|c| {
            let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM accounts ORDER BY row");
            Ok(c.prepare(&sql)?
                .query_map([], account_from_row)?
                .collect::<Result<_, _>>()?)
        })
    }

    fn load_tokens(&self) -> CoreResult<Vec<TokenRecord>> {
        self.read_now(|c| {
            Ok(
                c.prepare("SELECT id, account_id, hash FROM tokens WHERE revoked_at IS NULL")?
                    .query_map([], |r| {
                        Ok(TokenRecord {
                            id: parse_uuid(r.get(0)?)?,
                            account_id: parse_uuid(r.get(1)?)?,
                            hash: r.get(2)?,
                        })
                    })?
                    .collect::<Result<_, _>>()?,
            )
        })
    }

    fn load_contacts(&self) -> CoreResult<Vec<ContactRecord>> {
        self.read_now(|c| {
            Ok(
                c.prepare("SELECT owner, peer, alias, added_at, row FROM contacts ORDER BY row")?
                    .query_map([], |r| {
                        Ok(ContactRecord {
                            owner: parse_uuid(r.get(0)?)?,
                            peer: parse_uuid(r.get(1)?)?,
                            alias: r.get(2)?,
                            added_at: r.get(3)?,
                            row: r.get(4)?,
                        })
                    })?
                    .collect::<Result<_, _>>()?,
            )
        })
    }

    fn list_accounts(
        &self,
        page: PageRequest,
    ) -> BoxFuture<'static, CoreResult<Page<AccountRecord>>> {
        self.read(move |c| {
            let sql = format!(
                "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE row > ?1 ORDER BY row LIMIT ?2"
            );
            let items = c
                .prepare_cached(&sql)?
                .query_map(
                    params![page.after.unwrap_or(0), page.size as i64 + 1],
                    account_from_row,
                )?
                .collect::<Result<Vec<_>, _>>()?;
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
        self.read(move |c| {
            if !account_exists(c, peer)? {
                return Err(CoreError::not_found("contact_id", "no such account"));
            }
            let mut rows = Vec::new();
            let mut stmt = c.prepare_cached(&LIST_MESSAGES)?;
            let mut q = stmt.query(params![
                me.to_string(),
                peer.to_string(),
                before,
                page.size as i64 + 1
            ])?;
            while let Some(r) = q.next()? {
                rows.push((r.get::<_, i64>(0)?, message_from_row(r)?));
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
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&READ_EVENTS)?;
            let mut q = stmt.query(params![account.to_string(), after as i64, limit as i64])?;
            let mut out = Vec::new();
            while let Some(r) = q.next()? {
                let body = r.get_ref(0)?.as_blob().map_err(CoreError::internal)?;
                let mut event = pb::Event::decode(body).map_err(CoreError::internal)?;
                if r.get_ref(1)? != rusqlite::types::ValueRef::Null {
                    fill_message(&mut event, message_at(r, 1)?);
                }
                out.push(event);
            }
            durable.keep_durable(account, &mut out);
            Ok(out)
        })
    }

    fn log_bounds(&self, account: AccountId) -> BoxFuture<'static, CoreResult<LogBounds>> {
        let durable = self.durable.clone();
        self.read(move |c| {
            let id = account.to_string();
            let head: i64 = c
                .prepare_cached("SELECT head_seq FROM accounts WHERE id = ?1")?
                .query_row([&id], |r| r.get(0))
                .optional()?
                .unwrap_or(0);
            let oldest: Option<i64> = c
                .prepare_cached(&OLDEST_EVENT)?
                .query_row([&id], |r| r.get(0))?;
            // Read after the queries, as in `Durable::keep_durable`.
            let head = head as u64;
            Ok(LogBounds {
                oldest: oldest.unwrap_or(0) as u64,
                head: durable.head(account).map_or(head, |d| d.min(head)),
            })
        })
    }

    fn close(&self) {
        // Dropping the last sender lets the writer commit what is queued and return.
        self.jobs.close();
        syncer::join(&self.writer, &self.syncer);
    }
}
