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
    state             INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_conv ON messages (conv, row);
-- MarkRead walks messages_conv; a second per-pair index cost every send a page write.
DROP INDEX IF EXISTS messages_pair;
CREATE UNIQUE INDEX IF NOT EXISTS messages_idempotency
    ON messages (sender, client_message_id) WHERE client_message_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS events (
    account_id TEXT    NOT NULL,
    seq        INTEGER NOT NULL,
    body       BLOB    NOT NULL,
    PRIMARY KEY (account_id, seq)
) WITHOUT ROWID;
"#;

/// Columns added after a table was first shipped: (table, column, its definition).
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    // The message row a MessageSent/MessageReceived event refers to. Such an event's body
    // then holds a stub instead of the message (stored once, in `messages`), and reads join
    // it back: a send writes a third of the bytes. Older rows (NULL) keep whole bodies.
    ("events", "msg", "INTEGER"),
];

/// Brings an existing database up to `SCHEMA` and `ADDED_COLUMNS` (idempotent).
pub fn migrate(conn: &rusqlite::Connection) -> rusqlite::Result<()> {
    conn.execute_batch(SCHEMA)?;
    for (table, column, definition) in ADDED_COLUMNS {
        let present: bool = conn.query_row(
            "SELECT COUNT(*) > 0 FROM pragma_table_info(?1) WHERE name = ?2",
            [table, column],
            |r| r.get(0),
        )?;
        if !present {
            conn.execute_batch(&format!(
                "ALTER TABLE {table} ADD COLUMN {column} {definition}"
            ))?;
        }
    }
    Ok(())
}
