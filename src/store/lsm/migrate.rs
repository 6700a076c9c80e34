//! Moves a data dir of the layout before 2026-12-05 to the current one, once, when the store
//! opens and before anything is served.
//!
//! Before, a message's record was keyed by its row alone (`messages`), a `conversations`
//! keyspace indexed each conversation's rows, a `message_ids` entry held the row, the
//! recipient's row, the sender and the state (33 bytes; before 2026-12-02 the row alone, the
//! state then being the record's), and a `client_ids` entry the row. Now the record is keyed by
//! conversation and row (`pair_messages`), and the index entries and `client_ids` say which
//! conversation: a send writes four items instead of five (BENCHMARKS.md, twentieth session).
//!
//! Each old record is written under its new key with its new index entry (and its `client_ids`
//! entry, if it has one), `MIGRATE_BATCH` messages to a batch; the newest row goes to
//! `counters`; then, once all of it is synced, the old keyspaces are deleted whole. Stopped
//! midway, the next open starts over: every write is the same again, so a second pass is
//! harmless.

use std::collections::HashMap;

use fjall::PersistMode;
use uuid::Uuid;

use super::records::decode_message;
use super::writer::client_key;
use super::{MESSAGE_ROW, MessageIndex, NOT_LOGGED, Tables, be, int_at, keyspace_options};
use crate::core::{CoreError, CoreResult};
use crate::store::sqlite::pair_key;

/// The old layout's keyspaces: records keyed by row, and the conversation index.
const OLD_MESSAGES: &str = "messages";
const OLD_CONVERSATIONS: &str = "conversations";

/// Messages moved per batch: enough to make each commit's cost small, few enough that one
/// batch's memory stays a few MiB.
const MIGRATE_BATCH: usize = 4096;

/// Moves the old layout's messages, if there are any, and deletes its keyspaces.
pub(super) fn run(t: &Tables) -> CoreResult<()> {
    if !t.db.keyspace_exists(OLD_MESSAGES) && !t.db.keyspace_exists(OLD_CONVERSATIONS) {
        return Ok(());
    }
    tracing::info!("store: moving messages to records keyed by conversation (once)");
    let mut moved = 0usize;
    if t.db.keyspace_exists(OLD_MESSAGES) {
        let old = t.db.keyspace(OLD_MESSAGES, keyspace_options)?;
        moved = move_messages(t, &old)?;
        // Synced before the old records go: the new ones must outlive them.
        t.db.persist(PersistMode::SyncAll)?;
        t.db.delete_keyspace(old)?;
    }
    if t.db.keyspace_exists(OLD_CONVERSATIONS) {
        let old = t.db.keyspace(OLD_CONVERSATIONS, keyspace_options)?;
        t.db.delete_keyspace(old)?;
    }
    t.db.persist(PersistMode::SyncAll)?;
    tracing::info!(
        messages = moved,
        "store: messages moved to records keyed by conversation"
    );
    Ok(())
}

/// Writes every record of `old` in the current layout; how many there were.
fn move_messages(t: &Tables, old: &fjall::Keyspace) -> CoreResult<usize> {
    let mut rows: HashMap<Uuid, i64> = HashMap::new();
    let mut row_of = |id: Uuid| -> CoreResult<i64> {
        if let Some(row) = rows.get(&id) {
            return Ok(*row);
        }
        let row = t
            .account_row(id)?
            .ok_or_else(|| CoreError::Internal(format!("a message names no account {id}")))?;
        rows.insert(id, row);
        Ok(row)
    };
    let (mut moved, mut newest) = (0, t.newest_message_row()?);
    let mut batch = t.db.batch();
    for g in old.iter() {
        let (k, record) = g.into_inner()?;
        let row = int_at(&k, 0)?;
        let m = decode_message(&record)?;
        let [id, sender, recipient] = [&m.message_id, &m.sender_id, &m.recipient_id]
            .map(|text| Uuid::parse_str(text).map_err(CoreError::internal));
        let (id, sender) = (id?, sender?);
        let (sender_row, recipient) = (row_of(sender)?, row_of(recipient?)?);
        let state = match t.message_ids.get(id.as_bytes())? {
            Some(v) => old_state(&v, m.state)?,
            None => m.state,
        };
        let index = MessageIndex {
            pair: pair_key(sender_row, recipient),
            row,
            recipient,
            sender,
            state,
            // The old layout's events name no message, so its messages never read as
            // DELIVERED by the watermark: their states stay as written.
            received: NOT_LOGGED,
        };
        batch.insert(&t.messages, index.key(), record);
        batch.insert(&t.message_ids, id.as_bytes(), index.encode());
        if !m.client_message_id.is_empty() {
            let key = client_key(sender_row, &m.client_message_id);
            batch.insert(&t.client_ids, key, index.key());
        }
        newest = newest.max(row);
        moved += 1;
        if moved % MIGRATE_BATCH == 0 {
            batch.insert(&t.counters, MESSAGE_ROW, be(newest));
            std::mem::replace(&mut batch, t.db.batch()).commit()?;
        }
    }
    batch.insert(&t.counters, MESSAGE_ROW, be(newest));
    batch.commit()?;
    Ok(moved)
}

/// A message's state from its index entry as the old layout wrote it: the row alone (before
/// 2026-12-02: the state is the record's, `in_record`), or row, recipient row, sender and
/// state; or an entry this migration already rewrote (stopped midway before).
fn old_state(entry: &[u8], in_record: i32) -> CoreResult<i32> {
    match entry.len() {
        8 => Ok(in_record),
        33 => Ok(i32::from(entry[32])),
        MessageIndex::OLD_LEN | MessageIndex::LEN => Ok(MessageIndex::decode(entry)?.state),
        n => Err(CoreError::Internal(format!(
            "malformed message index entry ({n} bytes)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::MessageState;
    use crate::pb;
    use crate::store::jobs::{WriteOp, WriteOutput};
    use crate::store::lsm::key2;
    use crate::store::lsm::records::encode_message;
    use crate::store::lsm::writer::State;
    use crate::store::lsm::writer::tests::{create, run_job};
    use crate::store::syncer::Durable;

    /// An old layout's message: its record under its row, its conversation entry, its index
    /// entry of `entry_len` bytes (8: the row alone; 33: with recipient, sender and state)
    /// and its `client_ids` entry. `record_state` is the state its record holds.
    #[allow(clippy::too_many_arguments)]
    fn old_message(
        t: &Tables,
        row: i64,
        (from, from_row): (Uuid, i64),
        (to, to_row): (Uuid, i64),
        record_state: MessageState,
        entry: Option<MessageState>,
        client_message_id: &str,
    ) -> Uuid {
        let id = Uuid::now_v7();
        let mut m = pb::Message {
            message_id: id.to_string(),
            sender_id: from.to_string(),
            recipient_id: to.to_string(),
            text: format!("message {row}"),
            client_message_id: client_message_id.into(),
            state: record_state as i32,
            ..Default::default()
        };
        let messages = t.db.keyspace(OLD_MESSAGES, keyspace_options).unwrap();
        let conversations = t.db.keyspace(OLD_CONVERSATIONS, keyspace_options).unwrap();
        let record = encode_message(&mut m, None);
        messages.insert(be(row), record).unwrap();
        let pair = pair_key(from_row, to_row);
        conversations.insert(key2(pair, row as u64), []).unwrap();
        let value = match entry {
            None => be(row).to_vec(),
            Some(state) => {
                let mut v = be(row).to_vec();
                v.extend_from_slice(&be(to_row));
                v.extend_from_slice(from.as_bytes());
                v.push(state as u8);
                v
            }
        };
        t.message_ids.insert(id.as_bytes(), value).unwrap();
        if !client_message_id.is_empty() {
            let key = client_key(from_row, client_message_id);
            t.client_ids.insert(key, be(row)).unwrap();
        }
        id
    }

    /// A conversation of the old layout, after the move: each message under its
    /// conversation in row order with its state, the newest row counted, the old keyspaces
    /// gone; its idempotency keys, MarkRead and the next send work on it; a second run (as
    /// after a move stopped midway, old and new side by side) gives the same.
    #[test]
    fn the_old_layout_is_moved_whole() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tables::open(dir.path()).unwrap();
        let mut st = State::load(&t, 1000).unwrap();
        let d = Durable::new(0);
        let (a, b) = (create(&t, &mut st, &d, "a"), create(&t, &mut st, &d, "b"));
        let row = |id| t.account_row(id).unwrap().unwrap();
        let (ar, br) = (row(a), row(b));
        use MessageState::{Delivered, Read, Sent};
        let ids = [
            old_message(&t, 1, (a, ar), (b, br), Sent, Some(Delivered), "k1"),
            // Before 2026-12-02: the state in the record, the index entry the row alone.
            old_message(&t, 2, (b, br), (a, ar), Read, None, ""),
            old_message(&t, 7, (a, ar), (b, br), Sent, Some(Sent), ""),
        ];
        let pair = pair_key(ar, br);
        let check = |t: &Tables| {
            assert!(!t.db.keyspace_exists(OLD_MESSAGES));
            assert!(!t.db.keyspace_exists(OLD_CONVERSATIONS));
            let conversation: Vec<(i64, String, i32)> = t
                .messages
                .range(key2(pair, 0)..=key2(pair, u64::MAX))
                .map(|g| {
                    let (k, v) = g.into_inner().unwrap();
                    let m = t.message_record(&v, &mut Default::default()).unwrap();
                    (int_at(&k, 8).unwrap(), m.message_id, m.state)
                })
                .collect();
            let want = [(1, Delivered), (2, Read), (7, Sent)]
                .iter()
                .zip(&ids)
                .map(|((row, state), id)| (*row, id.to_string(), *state as i32))
                .collect::<Vec<_>>();
            assert_eq!(conversation, want);
            assert_eq!(t.newest_message_row().unwrap(), 7);
            let key = client_key(ar, "k1");
            let at = t.client_ids.get(key).unwrap().unwrap();
            assert_eq!(t.message_at(&at).unwrap().message_id, ids[0].to_string());
        };
        run(&t).unwrap();
        check(&t);
        // Stopped midway: the old records back beside the moved ones, and an idempotency key
        // as the old layout had it.
        let old = t.db.keyspace(OLD_MESSAGES, keyspace_options).unwrap();
        for (row, id) in [1i64, 2, 7].into_iter().zip(&ids) {
            let index = t.message_index(*id).unwrap().unwrap();
            let record = t.messages.get(index.key()).unwrap().unwrap();
            old.insert(be(row), record).unwrap();
        }
        t.client_ids.insert(client_key(ar, "k1"), be(1)).unwrap();
        drop(old);
        t.db.persist(PersistMode::SyncAll).unwrap();
        drop(t);
        let t = Tables::open(dir.path()).unwrap();
        run(&t).unwrap();
        check(&t);

        // The store goes on from there: the next row, the idempotency key, MarkRead.
        let mut st = State::load(&t, 1000).unwrap();
        assert_eq!(st.newest_message(), 7);
        let send = |st: &mut State, key: &str| {
            let m = pb::Message {
                message_id: Uuid::now_v7().to_string(),
                sender_id: a.to_string(),
                recipient_id: b.to_string(),
                text: "new".into(),
                client_message_id: key.into(),
                state: Sent as i32,
                ..Default::default()
            };
            match run_job(&t, st, WriteOp::SendMessage(m), &d).unwrap().0 {
                WriteOutput::Sent(s) => (s.message.message_id.clone(), s.duplicate),
                _ => panic!("SendMessage answers Sent"),
            }
        };
        assert_eq!(send(&mut st, "k1"), (ids[0].to_string(), true));
        let (new, duplicate) = send(&mut st, "k2");
        assert!(!duplicate);
        let index = t.message_index(Uuid::parse_str(&new).unwrap()).unwrap();
        assert_eq!(index.map(|i| (i.pair, i.row)), Some((pair, 8)));
        let op = WriteOp::MarkRead {
            reader: b,
            sender: a,
            up_to: ids[2],
        };
        match run_job(&t, &mut st, op, &d).unwrap().0 {
            WriteOutput::Ids(marked) => {
                assert_eq!(marked, vec![ids[0].to_string(), ids[2].to_string()])
            }
            _ => panic!("MarkRead answers ids"),
        }
    }
}
