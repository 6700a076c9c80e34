//! The Prometheus endpoint: parsed with a Prometheus text parser, checked for what calls moved.

mod common;

use common::*;
use phantom::config::Engine;
use phantom::pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

/// GETs `path` from the metrics listener; returns the status line and the body.
async fn get(t: &TestServer, path: &str) -> (String, String) {
    let addr = t
        .server
        .as_ref()
        .and_then(|s| s.metrics_addr)
        .expect("metrics are on");
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut raw = String::new();
    tcp.read_to_string(&mut raw).await.expect("read");
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP response");
    (
        head.lines().next().unwrap_or_default().to_string(),
        body.to_string(),
    )
}

fn scrape(body: &str) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("parses")
}

/// The value of `name` whose labels include all of `labels`.
fn value(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.samples
        .iter()
        .find(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(ref h) => {
                h.iter().map(|b| b.count).fold(0.0, f64::max)
            }
            prometheus_parse::Value::Summary(_) => f64::NAN,
        })
}

#[tokio::test]
async fn the_metrics_endpoint_counts_calls_codes_events_and_commits() {
    for engine in [Engine::Lsm, Engine::Sqlite] {
        metrics_count_calls_codes_events_and_commits(engine).await;
    }
}

async fn metrics_count_calls_codes_events_and_commits(engine: Engine) {
    let t = TestServer::start_with(|c| {
        c.storage.engine = engine;
        c.metrics.listen = "127.0.0.1:0".into();
    })
    .await;
    let (a, b) = (t.account("alice").await, t.account("bob").await);
    let mut bob = Events::live(&mut t.user(&b)).await;
    t.send(&a, &b, "one").await;
    t.send(&a, &b, "two").await;
    bob.durable().await;
    bob.durable().await;
    let bad = t
        .user(&a)
        .send_message(pb::SendMessageRequest {
            recipient_id: "not-a-uuid".into(),
            text: "x".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(bad.unwrap_err().code(), Code::InvalidArgument);

    let (status, body) = get(&t, "/metrics").await;
    assert!(status.contains("200"), "{status}");
    let s = scrape(&body);
    let send = |code| {
        value(
            &s,
            "phantom_grpc_requests_total",
            &[
                ("service", "phantom.v1.PhantomController"),
                ("method", "SendMessage"),
                ("code", code),
            ],
        )
    };
    assert_eq!(send("Ok"), Some(2.0), "{body}");
    assert_eq!(send("InvalidArgument"), Some(1.0));
    let created = value(
        &s,
        "phantom_grpc_requests_total",
        &[("method", "CreateAccount"), ("code", "Ok")],
    );
    assert_eq!(created, Some(2.0));
    assert_eq!(
        value(
            &s,
            "phantom_grpc_request_duration_seconds_count",
            &[("method", "SendMessage")]
        ),
        Some(3.0)
    );
    assert_eq!(value(&s, "phantom_event_streams_open", &[]), Some(1.0));
    assert!(value(&s, "phantom_events_delivered_total", &[]).unwrap_or(0.0) >= 2.0);
    for name in [
        "phantom_events_conflated_total",
        "phantom_slow_subscriber_disconnects_total",
        "phantom_events_repaired_total",
    ] {
        assert!(value(&s, name, &[]).is_some(), "{name} is exported");
    }
    // Two accounts, two sends, one receipt at least: several commits.
    assert!(value(&s, "phantom_store_commit_batch_size_count", &[]).unwrap_or(0.0) >= 4.0);
    assert!(value(&s, "phantom_store_commit_duration_seconds_sum", &[]).unwrap_or(0.0) > 0.0);
    // SQLite: every commit writes pages to the WAL; the WAL holds pages until a checkpoint.
    if engine == Engine::Sqlite {
        let written = value(&s, "phantom_store_wal_pages_written_total", &[]).unwrap_or(0.0);
        assert!(written >= 4.0, "{written} WAL pages written");
        assert!(value(&s, "phantom_store_wal_pages", &[]).unwrap_or(0.0) > 0.0);
    }
    assert!(
        value(
            &s,
            "phantom_actor_mailbox_depth",
            &[("actor", "MessagingActor")]
        )
        .is_some(),
        "{body}"
    );

    let (status, _) = get(&t, "/other").await;
    assert!(status.contains("404"), "{status}");
}

#[tokio::test]
async fn metrics_are_off_by_default() {
    let t = TestServer::start().await;
    assert!(t.server.as_ref().expect("running").metrics_addr.is_none());
}

#[tokio::test]
async fn profiles_are_collapsed_stacks_one_at_a_time_and_off_by_default() {
    let t = TestServer::start_with(|c| {
        c.metrics.listen = "127.0.0.1:0".into();
        c.metrics.profiling = true;
    })
    .await;
    let (a, b) = (t.account("alice").await, t.account("bob").await);
    // Two profiles asked for at once: one is taken while sends keep the server busy, the
    // other refused. Sends run until both have answered.
    let both = futures::future::join(
        get(&t, "/debug/pprof/profile?seconds=1.5"),
        get(&t, "/debug/pprof/profile?seconds=1.5"),
    );
    tokio::pin!(both);
    let mut sent = 0;
    let ((s1, b1), (s2, b2)) = loop {
        tokio::select! {
            answers = &mut both => break answers,
            _ = t.send(&a, &b, "busy") => sent += 1,
        }
    };
    assert!(sent > 0);
    let (taken, refused) = if s1.contains("200") {
        (b1, (s2, b2))
    } else {
        (b2, (s1, b1))
    };
    assert!(refused.0.contains("409"), "{refused:?}");
    assert!(refused.1.contains("one at a time"), "{refused:?}");
    let mut samples = 0;
    for line in taken.lines() {
        let (stack, count) = line.rsplit_once(' ').expect("stack and count");
        samples += count.parse::<u64>().expect("a count");
        assert!(!stack.is_empty() && !stack.contains(' '), "{line}");
        // The innermost frame is the program's, not the sampler's.
        let innermost = stack.rsplit(';').next().unwrap_or_default();
        assert!(
            !innermost.starts_with("backtrace::") && !innermost.contains("pprof::"),
            "{line}"
        );
    }
    assert!(samples > 0, "{taken}");
    // The server's own code is on the sampled stacks.
    assert!(taken.contains("phantom::"), "{taken}");

    let (status, body) = get(&t, "/debug/pprof/profile?seconds=0").await;
    assert!(status.contains("400"), "{status}");
    assert!(body.contains("seconds"), "{body}");
    let (status, body) = get(&t, "/debug/pprof/profile?secs=1").await;
    assert!(
        status.contains("400") && body.contains("secs"),
        "{status} {body}"
    );

    let off = TestServer::start_with(|c| c.metrics.listen = "127.0.0.1:0".into()).await;
    let (status, body) = get(&off, "/debug/pprof/profile?seconds=1").await;
    assert!(status.contains("404"), "{status}");
    assert!(body.contains("[metrics] profiling"), "{body}");
}
