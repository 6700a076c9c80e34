//! What was acknowledged survives a restart, and a SIGKILL right after the replies.

mod common;

use common::*;
use phantom::config::Engine;
use phantom::pb;
use phantom::pb::{
    phantom_admin_client::PhantomAdminClient, phantom_controller_client::PhantomControllerClient,
};

#[tokio::test]
async fn everything_acknowledged_is_there_after_a_restart() {
    for engine in [Engine::Lsm, Engine::Sqlite] {
        acknowledged_is_there_after_a_restart(engine).await;
    }
}

async fn acknowledged_is_there_after_a_restart(engine: Engine) {
    let mut t = TestServer::start_with(|c| c.storage.engine = engine).await;
    let (a, b) = (t.account("alice").await, t.account("bob").await);
    t.befriend(&a, &b).await;
    t.user(&a)
        .update_contact(pb::UpdateContactRequest {
            contact_id: b.id.clone(),
            display_name: "Bobby".into(),
        })
        .await
        .unwrap();
    let m = t.send(&a, &b, "kept").await;
    t.user(&b)
        .mark_read(pb::MarkReadRequest {
            contact_id: a.id.clone(),
            up_to_message_id: m.message_id.clone(),
        })
        .await
        .unwrap();
    t.user(&a)
        .set_status(pb::SetStatusRequest {
            status: pb::PresenceStatus::Busy as i32,
            status_text: "away".into(),
        })
        .await
        .unwrap();
    t.restart().await;
    verify(&t.channel, &a, &b, &m.message_id, 3).await;
    let p = t
        .user(&a)
        .get_profile(pb::GetProfileRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p.status_text, "away");
}

/// Continuous writes from several senders: the WAL is checkpointed into the database as it
/// goes (off the commit path, and on the writer when writes never pause) so it stays a small
/// fraction of what was written, and every acknowledged message is there after a restart.
#[tokio::test]
async fn the_wal_stays_bounded_under_continuous_writes() {
    const PAIRS: usize = 8;
    const EACH: usize = 250;
    // 20 pages: background checkpoints from 20, the writer's own from 80.
    let mut t = TestServer::start_with(|c| {
        c.storage.engine = Engine::Sqlite;
        c.storage.checkpoint_pages = 20;
    })
    .await;
    let mut pairs = Vec::new();
    for i in 0..PAIRS {
        pairs.push((
            t.account(&format!("from{i}")).await,
            t.account(&format!("to{i}")).await,
        ));
    }
    let senders = pairs.iter().map(|(from, to)| {
        let mut user = t.user(from);
        let to = to.id.clone();
        async move {
            for n in 0..EACH {
                user.send_message(pb::SendMessageRequest {
                    recipient_id: to.clone(),
                    text: format!("m{n}"),
                    ..Default::default()
                })
                .await
                .expect("send");
            }
        }
    });
    futures::future::join_all(senders).await;

    let data = t.data_dir();
    let size = |f: &str| std::fs::metadata(data.join(f)).map_or(0, |m| m.len());
    // A WAL frame is a 4 KiB page and a 24-byte header. Without checkpoints these 2,000 sends
    // leave ~16,000 frames in it; bounded, it holds the last 80-odd pages plus the commits
    // that ran while a checkpoint was busy (120-200 seen; the bound leaves room for a slow
    // machine).
    let wal_frames = size("phantom.db-wal") / 4120;
    assert!(wal_frames <= 1000, "WAL holds {wal_frames} frames");
    // What left the WAL went into the database file (about 1 MiB of tables for these sends;
    // without checkpoints it stays at its first few pages).
    assert!(
        size("phantom.db") > 256 << 10,
        "database file is {} bytes",
        size("phantom.db")
    );

    t.restart().await;
    for (from, to) in &pairs {
        let got = t.conversation(to, from).await;
        let texts: Vec<String> = got.into_iter().rev().map(|m| m.text).collect();
        let want: Vec<String> = (0..EACH).map(|n| format!("m{n}")).collect();
        assert_eq!(texts, want);
    }
}

/// Message events are logged with a stub in place of the message (stored once, in
/// `messages`) and replayed whole; a data dir written before that (the log keyed by account id
/// text, whole bodies) is migrated at start and replays the same, old events and new ones alike.
#[tokio::test]
async fn replayed_message_events_are_whole_in_old_and_new_logs() {
    use prost::Message as _;
    let mut t = TestServer::start_with(|c| c.storage.engine = Engine::Sqlite).await;
    let (a, b) = (t.account("alice").await, t.account("bob").await);
    let old = t.send(&a, &b, "written before the change").await;
    t.stop().await;
    rewrite_as_old_format(&t.data_dir().join("phantom.db"));
    t.restart().await;
    let new = t
        .user(&a)
        .send_message(pb::SendMessageRequest {
            recipient_id: b.id.clone(),
            text: "written after".into(),
            payload: vec![1, 2, 3].into(),
            content_type: "application/x-test".into(),
            client_message_id: "c-1".into(),
        })
        .await
        .expect("send")
        .into_inner()
        .message
        .expect("message");
    // Bob reads both (MarkRead walks the conversation, `pair` filled in for the old one): the
    // stored messages become READ, the events still say SENT.
    let read = mark_read(&mut t.user(&b), &a.id, &new.message_id)
        .await
        .expect("mark read");
    assert_eq!(read.updated, 2);
    let listed: Vec<(String, i32)> = t
        .conversation(&a, &b)
        .await
        .into_iter()
        .map(|m| (m.message_id, m.state))
        .collect();
    let read_state = pb::MessageState::Read as i32;
    assert_eq!(
        listed,
        vec![
            (new.message_id.clone(), read_state),
            (old.message_id.clone(), read_state)
        ]
    );
    let replayed = |ev: pb::Event| match ev.kind {
        Some(pb::event::Kind::MessageReceived(r)) => r.message.expect("whole message"),
        Some(pb::event::Kind::MessageSent(s)) => s.message.expect("whole message"),
        other => panic!("not a message event: {other:?}"),
    };
    for (who, seqs) in [(&b, [1u64, 2]), (&a, [1, 2])] {
        let mut s = Events::open(&mut t.user(who), Some(0)).await;
        s.started().await;
        for (seq, want) in seqs.into_iter().zip([&old, &new]) {
            let ev = s.durable().await;
            assert_eq!(ev.seq, seq);
            let got = replayed(ev);
            assert_eq!(&got, want, "replayed event {seq} of {}", who.handle);
            assert_eq!(got.state, pb::MessageState::Sent as i32);
        }
    }
    // The new rows hold a stub: far smaller than the message they refer to.
    let db = rusqlite::Connection::open(t.data_dir().join("phantom.db")).expect("open");
    let (stub, msg): (Vec<u8>, Option<i64>) = db
        .query_row(
            "SELECT body, msg FROM events
             WHERE account = (SELECT row FROM accounts WHERE id = ?1) AND seq = 2",
            [&b.id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("bob's second event");
    assert!(msg.is_some());
    assert!(stub.len() < new.encoded_len(), "{} bytes", stub.len());
}

/// Makes a stopped server's database look as it did before the commit-ordered log and the
/// integer conversation key: the log keyed by account id text, every message event's body
/// holding the whole message, no `msg` column; messages indexed by their text `conv` only.
fn rewrite_as_old_format(path: &std::path::Path) {
    use prost::Message as _;
    let db = rusqlite::Connection::open(path).expect("open");
    let rows: Vec<(String, i64, Vec<u8>, Option<i64>)> = db
        .prepare(
            "SELECT a.id, e.seq, e.body, e.msg FROM events e JOIN accounts a ON a.row = e.account",
        )
        .and_then(|mut s| {
            s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                .collect()
        })
        .expect("read events");
    assert!(
        rows.iter().any(|r| r.3.is_some()),
        "message events refer to rows"
    );
    db.execute_batch(
        "DROP INDEX messages_by_pair;
         ALTER TABLE messages DROP COLUMN pair;
         CREATE INDEX messages_conv ON messages (conv, row);
         DROP TABLE events;
         CREATE TABLE events (
             account_id TEXT NOT NULL, seq INTEGER NOT NULL, body BLOB NOT NULL,
             PRIMARY KEY (account_id, seq)
         ) WITHOUT ROWID;",
    )
    .expect("old table");
    for (account, seq, body, msg) in rows {
        let mut event = pb::Event::decode(body.as_slice()).expect("decodes");
        if let Some(msg) = msg {
            let full = db
                .query_row(
                    "SELECT id, sender, recipient, text, payload, content_type, \
                     COALESCE(client_message_id, ''), sent_at, state FROM messages WHERE row = ?1",
                    [msg],
                    |r| {
                        Ok(pb::Message {
                            message_id: r.get(0)?,
                            sender_id: r.get(1)?,
                            recipient_id: r.get(2)?,
                            text: r.get(3)?,
                            payload: r.get::<_, Vec<u8>>(4)?.into(),
                            content_type: r.get(5)?,
                            client_message_id: r.get(6)?,
                            sent_at: Some(phantom::core::time::to_timestamp(r.get(7)?)),
                            state: r.get(8)?,
                        })
                    },
                )
                .expect("the message");
            match event.kind.as_mut() {
                Some(pb::event::Kind::MessageSent(pb::MessageSent { message }))
                | Some(pb::event::Kind::MessageReceived(pb::MessageReceived { message })) => {
                    let state = message.as_ref().map_or(full.state, |m| m.state);
                    *message = Some(pb::Message { state, ..full });
                }
                other => panic!("msg set on {other:?}"),
            }
        }
        db.execute(
            "INSERT INTO events (account_id, seq, body) VALUES (?1, ?2, ?3)",
            rusqlite::params![account, seq, event.encode_to_vec()],
        )
        .expect("old row");
    }
}

/// Checks the state written by both tests.
async fn verify(
    channel: &tonic::transport::Channel,
    a: &Account,
    b: &Account,
    msg: &str,
    alice_head: u64,
) {
    let user = |t: &Account| {
        PhantomControllerClient::with_interceptor(channel.clone(), Bearer::new(&t.token))
    };
    let contacts = user(a)
        .get_contacts(pb::GetContactsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(contacts.contacts.len(), 1);
    assert_eq!(contacts.contacts[0].contact_id, b.id);
    assert_eq!(contacts.contacts[0].display_name, "Bobby");
    let msgs = user(b)
        .list_messages(pb::ListMessagesRequest {
            contact_id: a.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(msgs.messages.len(), 1);
    assert_eq!(msgs.messages[0].message_id, msg);
    assert_eq!(msgs.messages[0].state, pb::MessageState::Read as i32);
    // ContactAdded, ContactUpdated, MessageSent, MessageStateChanged: all in alice's log.
    let mut s = Events::open(&mut user(a), Some(0)).await;
    let started = s.started().await;
    assert_eq!(started.head_seq, alice_head + 1);
    for seq in 1..=started.head_seq {
        assert_eq!(s.durable().await.seq, seq);
    }
}

#[tokio::test]
async fn everything_acknowledged_survives_sigkill() {
    for engine in ["lsm", "sqlite"] {
        acknowledged_survives_sigkill(engine).await;
    }
}

async fn acknowledged_survives_sigkill(engine: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (proc1, addr) = spawn_server(dir.path(), "", engine);
    let channel = phantom::client::connect(&addr).await.unwrap();
    let mut admin = PhantomAdminClient::with_interceptor(channel.clone(), Bearer::new(ADMIN));
    let mut make = async |h: &str| {
        let r = admin
            .create_account(pb::CreateAccountRequest {
                handle: h.into(),
                display_name: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        Account {
            id: r.account.unwrap().account_id,
            handle: h.into(),
            token: r.token,
            token_id: r.token_id,
        }
    };
    let a = make("alice").await;
    let b = make("bob").await;
    let mut ua = PhantomControllerClient::with_interceptor(channel.clone(), Bearer::new(&a.token));
    let mut ub = PhantomControllerClient::with_interceptor(channel.clone(), Bearer::new(&b.token));
    ua.add_contact(pb::AddContactRequest {
        handle: "bob".into(),
        display_name: "Bobby".into(),
    })
    .await
    .unwrap();
    let m = ua
        .send_message(pb::SendMessageRequest {
            recipient_id: b.id.clone(),
            text: "kept".into(),
            client_message_id: "k1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .message
        .unwrap();
    ub.mark_read(pb::MarkReadRequest {
        contact_id: a.id.clone(),
        up_to_message_id: m.message_id.clone(),
    })
    .await
    .unwrap();
    let revoked = admin
        .issue_token(pb::IssueTokenRequest {
            account_id: a.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    admin
        .revoke_token(pb::RevokeTokenRequest {
            token_id: revoked.token_id,
        })
        .await
        .unwrap();
    // SIGKILL right after the last reply: no graceful anything.
    drop(proc1);

    let (_proc2, addr) = spawn_server(dir.path(), "", engine);
    let channel = phantom::client::connect(&addr).await.unwrap();
    // alice's log: ContactAdded, MessageSent, MessageStateChanged.
    verify_after_kill(&channel, &a, &b, &m.message_id).await;
    let r = PhantomControllerClient::with_interceptor(channel.clone(), Bearer::new(&revoked.token))
        .get_profile(pb::GetProfileRequest {})
        .await;
    assert_eq!(
        r.unwrap_err().code(),
        tonic::Code::Unauthenticated,
        "revocation is durable"
    );
    // The idempotency key survived too.
    let again = PhantomControllerClient::with_interceptor(channel.clone(), Bearer::new(&a.token))
        .send_message(pb::SendMessageRequest {
            recipient_id: b.id.clone(),
            text: "kept".into(),
            client_message_id: "k1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(again.duplicate);
    assert_eq!(again.message.unwrap().message_id, m.message_id);
}

async fn verify_after_kill(
    channel: &tonic::transport::Channel,
    a: &Account,
    b: &Account,
    msg: &str,
) {
    verify(channel, a, b, msg, 2).await;
}

/// The server turns transparent huge pages off for itself (`main.rs`): with them, mimalloc's
/// arenas made each idle stream cost whole 2 MiB pages of RSS.
#[cfg(target_os = "linux")]
#[test]
fn the_server_runs_without_transparent_huge_pages() {
    let dir = tempfile::tempdir().unwrap();
    let (proc, _addr) = spawn_server(dir.path(), "", "lsm");
    let status = std::fs::read_to_string(format!("/proc/{}/status", proc.0.id())).unwrap();
    // The field exists since Linux 5.0; an older kernel has nothing to check.
    if let Some(line) = status.lines().find(|l| l.starts_with("THP_enabled:")) {
        assert_eq!(line.split_whitespace().nth(1), Some("0"), "{line}");
    }
}

/// With `storage.flush_when_idle_ms`, a lull writes the LSM engine's memtables out: SIGKILL'd
/// once the server says so, fjall has nothing to replay into any keyspace, and every message
/// is there after the restart.
#[tokio::test]
async fn a_crash_in_a_lull_leaves_the_lsm_journal_nothing_to_replay() {
    use std::io::BufRead;
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let (mut proc, addr) = spawn_server_with(&root, "", "flush_when_idle_ms = 100", "lsm", "info");
    // The log, line by line: the reads block, so on a thread of their own.
    let log = proc.0.stderr.take().expect("piped stderr");
    let (lines, logged) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(log).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    let mut t = TestServer::attach(dir, &addr).await;
    let (a, b) = (t.account("alice").await, t.account("bob").await);
    // 20 × 64 KiB: past the 1 MiB a lull's flush waits for.
    for i in 0..20u8 {
        t.user(&a)
            .send_message(pb::SendMessageRequest {
                recipient_id: b.id.clone(),
                payload: vec![i; 64 << 10].into(),
                content_type: "application/octet-stream".into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let line = logged
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the lull's flush was logged");
        if line.contains("memtables flushed in a lull") {
            break;
        }
    }
    // SIGKILL: no graceful close, which would flush the memtables itself.
    drop(proc);
    assert_lsm_replays_nothing(&root.join("data"));
    let (_proc, addr) = spawn_server(&root, "", "lsm");
    t.channel = phantom::client::connect(&addr).await.unwrap();
    let kept = t.conversation(&a, &b).await;
    assert_eq!(kept.len(), 20);
    assert!(kept.iter().all(|m| m.payload.len() == 64 << 10));
}
