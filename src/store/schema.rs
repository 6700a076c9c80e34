//! The SQLite schema. Ids are UUID text so that `sqlite3 phantom.db` is readable by people.

/// Statements run at every open; each is idempotent.
pub const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS accounts (
    row          INTEGER PRIMARY KEY,
    id           TEXT    NOT NULL UNIQUE,
    handle       TEXT    NOT NULL UNIQUE,
    display_name TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    status       INTEGER NOT NULL,
    status_text  TEXT    NOT NULL DEFAULT '',
    last_seen    INTEGER,
    head_seq     INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS tokens (
    id         TEXT    PRIMARY KEY,
    account_id TEXT    NOT NULL REFERENCES accounts(id),
    hash       TEXT    NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);
CREATE TABLE IF NOT EXISTS contacts (
    row      INTEGER PRIMARY KEY,
    owner    TEXT    NOT NULL REFERENCES accounts(id),
    peer     TEXT    NOT NULL REFERENCES accounts(id),
    alias    TEXT    NOT NULL,
    added_at INTEGER NOT NULL,
    UNIQUE (owner, peer)
);
CREATE TABLE IF NOT EXISTS messages (
    row               INTEGER PRIMARY KEY,
    id                TEXT    NOT NULL UNIQUE,
    conv              TEXT    NOT NULL,
    sender            TEXT    NOT NULL REFERENCES accounts(id),
    recipient         TEXT    NOT NULL REFERENCES accounts(id),
    text              TEXT    NOT NULL,
    payload           BLOB    NOT NULL,
    content_type      TEXT    NOT NULL,
    client_message_id TEXT,
    sent_at           INTEGER NOT NULL,
    state             INTEGER NOT NULL,
    -- The conversation as integers (`sqlite::pair_of`): its index entries are a sixth of the
    -- text key's, so SQLite rebalances its leaves far less often as sends append to them.
    pair              INTEGER
);
CREATE INDEX IF NOT EXISTS messages_by_pair ON messages (pair, row);
DROP INDEX IF EXISTS messages_conv;
-- MarkRead walks messages_by_pair; a second per-pair index cost every send a page write.
DROP INDEX IF EXISTS messages_pair;
CREATE UNIQUE INDEX IF NOT EXISTS messages_idempotency
    ON messages (sender, client_message_id) WHERE client_message_id IS NOT NULL;
-- The event log. Rows go in commit order (`pos`), so a commit's event rows share the last
-- pages of the table instead of each landing on its account's own page; the per-account
-- order is a small index of integers. `account` is `accounts.row`. A MessageSent or
-- MessageReceived row refers to its message (`msg`, a `messages.row`) and its body holds a
-- stub with only the message's state then: the message is stored once, and reads join it back.
CREATE TABLE IF NOT EXISTS events (
    pos     INTEGER PRIMARY KEY,
    account INTEGER NOT NULL,
    seq     INTEGER NOT NULL,
    body    BLOB    NOT NULL,
    msg     INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS events_log ON events (account, seq);
"#;

/// Whether `table` has `column`.
fn has_column(conn: &rusqlite::Connection, table: &str, column: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT COUNT(*) > 0 FROM pragma_table_info(?1) WHERE name = ?2",
        [table, column],
        |r| r.get(0),
    )
}

/// Brings an existing database up to `SCHEMA`, in one transaction (idempotent).
///
/// Earlier databases indexed conversations by their text key (`conv`): `pair` is added and
/// filled from it. They keyed the event log by `(account_id TEXT, seq)` with whole bodies (and,
/// for a while, a `msg` column): their rows are copied into the new table as they are; old
/// bodies keep their whole messages and read as before.
pub fn migrate(conn: &rusqlite::Connection) -> rusqlite::Result<()> {
    let tx = conn.unchecked_transaction()?;
    // Messages from before `pair`: the column is added and filled before SCHEMA indexes it.
    if has_column(&tx, "messages", "row")? && !has_column(&tx, "messages", "pair")? {
        let pair = super::sqlite::pair_of("messages.sender", "messages.recipient");
        tx.execute_batch(&format!(
            "ALTER TABLE messages ADD COLUMN pair INTEGER; UPDATE messages SET pair = {pair};"
        ))?;
    }
    let old_log = has_column(&tx, "events", "account_id")?;
    if old_log {
        tx.execute_batch("ALTER TABLE events RENAME TO events_by_text_id")?;
    }
    tx.execute_batch(SCHEMA)?;
    if old_log {
        let msg = if has_column(&tx, "events_by_text_id", "msg")? {
            "o.msg"
        } else {
            "NULL"
        };
        tx.execute_batch(&format!(
            "INSERT INTO events (account, seq, body, msg)
                 SELECT a.row, o.seq, o.body, {msg}
                 FROM events_by_text_id o JOIN accounts a ON a.id = o.account_id
                 ORDER BY o.account_id, o.seq;
             DROP TABLE events_by_text_id;"
        ))?;
        tracing::info!("event log moved to the commit-ordered layout");
    }
    tx.commit()
}
