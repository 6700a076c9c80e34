//! Limits and refusals: each limit reached gives its status code and names its setting; unsafe
//! exposures are refused at start; the Unix socket gets its mode.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::*;
use phantom::config::{AuthMode, Config, Engine};
use phantom::pb::{self, client_frame::Body as C, server_frame::Body as S};
use phantom::server;
use tonic::Code;
use tonic_types::StatusExt;

fn config(tune: impl FnOnce(&mut Config)) -> (tempfile::TempDir, Config) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cfg = test_config(dir.path());
    tune(&mut cfg);
    (dir, cfg)
}

/// Starting with `cfg` fails with a message containing each of `words`.
async fn refuses(cfg: Config, words: &[&str]) {
    let err = match server::start(cfg).await {
        Ok(_) => panic!("the server should refuse to start"),
        Err(e) => e,
    };
    assert!(!err.contains('\n'), "one line: {err}");
    for w in words {
        assert!(err.contains(w), "{err:?} should mention {w:?}");
    }
}

#[tokio::test]
async fn unsafe_exposures_are_refused_naming_the_setting() {
    let (_d, cfg) = config(|c| c.server.listen = "0.0.0.0:0".into());
    refuses(cfg, &["[tls]", "allow_insecure"]).await;

    let (_d, cfg) = config(|c| {
        c.server.listen = "0.0.0.0:0".into();
        c.server.allow_insecure = true;
        c.auth.mode = AuthMode::None;
    });
    refuses(cfg, &["mode", "none", "[server] listen"]).await;

    let (d, cfg) = config(|c| c.tls.cert = Some("x".into()));
    let _ = d;
    refuses(cfg, &["tls.key"]).await;

    let (d, mut cfg) = config(|_| {});
    cfg.tls.cert = Some(d.path().join("missing.pem"));
    cfg.tls.key = Some(d.path().join("missing.key"));
    refuses(cfg, &["tls.cert", "missing.pem"]).await;

    // Explicitly allowed: it starts.
    let (_d, cfg) = config(|c| {
        c.server.listen = "0.0.0.0:0".into();
        c.server.allow_insecure = true;
    });
    server::start(cfg)
        .await
        .expect("allow_insecure starts")
        .shutdown()
        .await;
}

#[tokio::test]
async fn a_unix_socket_gets_its_mode_replaces_a_stale_file_and_not_a_live_one() {
    let (dir, mut cfg) = config(|_| {});
    let path = dir.path().join("phantom.sock");
    // A stale socket, as a crashed run leaves it.
    drop(std::os::unix::net::UnixListener::bind(&path).expect("bind"));
    assert!(path.exists());
    cfg.server.listen = format!("unix:{}", path.display());
    cfg.auth.mode = AuthMode::None; // allowed on a Unix socket
    let running = server::start(cfg.clone())
        .await
        .expect("starts over a stale socket");
    let mode = std::fs::metadata(&path)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let mut me = pb::phantom_controller_client::PhantomControllerClient::new(
        phantom::client::connect(&format!("unix:{}", path.display()))
            .await
            .expect("connects"),
    );
    let p = me
        .get_profile(pb::GetProfileRequest {})
        .await
        .expect("mode none over the socket")
        .into_inner();
    assert_eq!(p.account.expect("account").handle, "local");

    // A second server on the same live socket is refused.
    let mut second = cfg.clone();
    second.storage.data_dir = dir.path().join("other");
    refuses(second, &["in use"]).await;
    running.shutdown().await;

    // The mode is configurable.
    let (dir, mut cfg) = config(|c| c.server.socket_mode = 0o660);
    let path = dir.path().join("group.sock");
    cfg.server.listen = format!("unix:{}", path.display());
    let running = server::start(cfg).await.expect("starts");
    let mode = std::fs::metadata(&path)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o660);
    running.shutdown().await;
}

#[tokio::test]
async fn the_send_rate_is_limited_per_account_with_a_retry_hint() {
    let t = TestServer::start_with(|c| {
        c.limits.send_rate_per_sec = 1;
        c.limits.send_burst = 3;
    })
    .await;
    let (a, b) = (t.account("alice").await, t.account("bob").await);
    for i in 0..3 {
        t.send(&a, &b, &format!("burst {i}")).await;
    }
    let s = assert_status(
        t.user(&a)
            .send_message(pb::SendMessageRequest {
                recipient_id: b.id.clone(),
                text: "one too many".into(),
                ..Default::default()
            })
            .await,
        Code::ResourceExhausted,
        "limits.send_rate_per_sec",
    );
    assert!(s.message().contains("retry after"), "{}", s.message());
    let retry = s
        .get_details_retry_info()
        .expect("a google.rpc.RetryInfo detail")
        .retry_delay
        .expect("a delay");
    assert!(
        retry > Duration::ZERO && retry <= Duration::from_secs(1),
        "{retry:?}"
    );
    // Another account has its own bucket.
    t.send(&b, &a, "bob is fine").await;

    // Connect's send_message shares the bucket, answered in-band.
    let (tx, mut frames) = open_connect(&mut t.user(&a), 4).await;
    tx.send(pb::ClientFrame {
        request_id: "s1".into(),
        body: Some(C::SendMessage(pb::SendMessageRequest {
            recipient_id: b.id.clone(),
            text: "still too many".into(),
            ..Default::default()
        })),
    })
    .await
    .expect("open");
    let f = tokio::time::timeout(WAIT, frames.message())
        .await
        .expect("answer")
        .expect("ok")
        .expect("frame");
    match f.body {
        Some(S::Error(e)) => assert_eq!(e.code, Code::ResourceExhausted as i32, "{e:?}"),
        other => panic!("expected an in-band error, got {other:?}"),
    }
}

/// Subscribes and waits for `SubscriptionStarted`.
async fn subscribed(user: &mut User) -> Result<Events, tonic::Status> {
    let s = user
        .subscribe_to_events(pb::EventsRequest { after_seq: None })
        .await?
        .into_inner();
    let mut e = Events(s);
    e.started().await;
    Ok(e)
}

#[tokio::test]
async fn event_streams_per_account_are_capped() {
    let t = TestServer::start_with(|c| c.limits.max_event_streams_per_account = 2).await;
    let (a, b) = (t.account("alice").await, t.account("bob").await);
    let one = subscribed(&mut t.user(&a)).await.expect("first");
    let _two = subscribed(&mut t.user(&a)).await.expect("second");
    assert_status(
        subscribed(&mut t.user(&a)).await.map(|_| ()),
        Code::ResourceExhausted,
        "limits.max_event_streams_per_account",
    );
    // Another account is not affected.
    let _bob = subscribed(&mut t.user(&b)).await.expect("bob's own");

    // Closing one frees its slot. The client cannot observe the moment the server lets go of
    // the stream, so this retries (bounded) until it does.
    drop(one);
    let started = Instant::now();
    loop {
        match subscribed(&mut t.user(&a)).await {
            Ok(_) => break,
            Err(s) if s.code() == Code::ResourceExhausted && started.elapsed() < WAIT => {
                tokio::task::yield_now().await;
            }
            Err(s) => panic!("the slot was never freed: {s:?}"),
        }
    }
}

#[tokio::test]
async fn streams_per_connection_are_capped_by_http2_settings() {
    let t = TestServer::start_with(|c| c.limits.max_streams_per_connection = 2).await;
    let a = t.account("alice").await;
    // One channel is one HTTP/2 connection.
    let one = subscribed(&mut t.user(&a)).await.expect("first");
    let _two = subscribed(&mut t.user(&a)).await.expect("second");
    // The client holds the third call until the server allows another stream.
    let mut user = t.user(&a);
    let third = tokio::spawn(async move { subscribed(&mut user).await.map(|_| ()) });
    let held = tokio::time::timeout(Duration::from_millis(300), async {
        while !third.is_finished() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(held.is_err(), "a third concurrent stream was admitted");
    drop(one);
    tokio::time::timeout(WAIT, third)
        .await
        .expect("admitted once a stream closed")
        .expect("task")
        .expect("third stream");
}

#[tokio::test]
async fn a_deadline_that_expires_mid_call_cancels_the_write() {
    // SQLite's write lock is what can hold the writer from outside the server.
    let t = TestServer::start_with(|c| c.storage.engine = Engine::Sqlite).await;
    let (a, b) = (t.account("alice").await, t.account("bob").await);

    // Hold the database's write lock, so the server's writer waits mid-call.
    let db = rusqlite::Connection::open(t.data_dir().join("phantom.db")).expect("open db");
    db.execute_batch("BEGIN IMMEDIATE").expect("lock");

    let mut req = tonic::Request::new(pb::SendMessageRequest {
        recipient_id: b.id.clone(),
        text: "too late".into(),
        ..Default::default()
    });
    req.set_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let r = t.user(&a).send_message(req).await;
    let s = r.expect_err("the deadline passes while the store is locked");
    // The server answers DEADLINE_EXCEEDED just before the deadline; tonic's client also runs
    // its own timer and reports CANCELLED "Timeout expired" when that one wins the race.
    assert!(
        s.code() == Code::DeadlineExceeded
            || (s.code() == Code::Cancelled && s.message() == "Timeout expired"),
        "{s:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "ended at the deadline, not when the lock went"
    );

    db.execute_batch("ROLLBACK").expect("unlock");
    // The server goes on, and the cancelled message was never written.
    t.send(&a, &b, "on time").await;
    let history = t.conversation(&a, &b).await;
    let texts: Vec<_> = history.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts, ["on time"]);
}

#[tokio::test]
async fn the_default_unary_deadline_applies_without_a_client_deadline() {
    let t = TestServer::start_with(|c| {
        c.storage.engine = Engine::Sqlite;
        c.limits.unary_deadline_ms = 200;
    })
    .await;
    let (a, b) = (t.account("alice").await, t.account("bob").await);
    let db = rusqlite::Connection::open(t.data_dir().join("phantom.db")).expect("open db");
    db.execute_batch("BEGIN IMMEDIATE").expect("lock");
    let s = t
        .user(&a)
        .send_message(pb::SendMessageRequest {
            recipient_id: b.id.clone(),
            text: "no deadline of my own".into(),
            ..Default::default()
        })
        .await
        .expect_err("the server's deadline applies");
    assert_eq!(s.code(), Code::DeadlineExceeded);
    assert!(s.message().contains("200 ms"), "{}", s.message());
    db.execute_batch("ROLLBACK").expect("unlock");
}

#[tokio::test]
async fn a_peer_that_stops_answering_keepalive_pings_is_dropped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let t = TestServer::start_with(|c| {
        c.limits.keepalive_interval_secs = 1;
        c.limits.keepalive_timeout_secs = 1;
    })
    .await;
    let addr = t.server.as_ref().expect("running").local_addr.to_string();
    // A bare HTTP/2 peer: preface and SETTINGS, acknowledges the server's SETTINGS, then
    // never answers anything again (as a peer whose network vanished).
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .expect("preface");
    let mut saw_ping = false;
    let mut acked = false;
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            let mut head = [0u8; 9];
            if tcp.read_exact(&mut head).await.is_err() {
                return; // the server closed the connection
            }
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; len];
            if tcp.read_exact(&mut payload).await.is_err() {
                return;
            }
            match head[3] {
                // SETTINGS from the server (not an ACK): acknowledge once.
                4 if head[4] & 1 == 0 && !acked => {
                    acked = true;
                    let _ = tcp.write_all(b"\0\0\0\x04\x01\0\0\0\0").await;
                }
                6 => saw_ping = true, // PING: deliberately unanswered
                _ => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the server kept a silent peer");
    assert!(saw_ping, "the server pinged before dropping the peer");
}
