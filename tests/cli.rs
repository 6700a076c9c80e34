//! The binaries as people use them: phantomctl against a real server, and config checking.

mod common;

use std::process::Stdio;

use common::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

struct Ctl {
    server: String,
}

impl Ctl {
    async fn run(&self, token: &str, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_phantomctl"))
            .args(args)
            .env("PHANTOM_SERVER", &self.server)
            .env("PHANTOM_TOKEN", token)
            .output()
            .await
            .expect("run phantomctl");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    async fn ok(&self, token: &str, args: &[&str]) -> String {
        let (code, out, err) = self.run(token, args).await;
        assert_eq!(code, 0, "phantomctl {args:?} failed: {err}");
        out
    }
}

fn field<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(key))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {key} in {out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quickstart_works() {
    let t = TestServer::start().await;
    let ctl = Ctl {
        server: t.server.as_ref().unwrap().local_addr.to_string(),
    };
    let alice = ctl
        .ok(
            ADMIN,
            &["account", "create", "alice", "--display-name", "Alice"],
        )
        .await;
    let bob = ctl.ok(ADMIN, &["account", "create", "bob"]).await;
    let (ta, tb) = (
        field(&alice, "token:").to_string(),
        field(&bob, "token:").to_string(),
    );
    let alice_id = field(&alice, "account_id:").to_string();
    ctl.ok(&ta, &["contacts", "add", "bob"]).await;
    ctl.ok(&tb, &["contacts", "add", "alice", "--name", "Al"])
        .await;
    assert!(ctl.ok(&tb, &["contacts", "list"]).await.contains("Al"));

    // Follow bob's events, from the start of his log.
    let mut events = Command::new(env!("CARGO_BIN_EXE_phantomctl"))
        .args(["events", "--after-seq", "0"])
        .env("PHANTOM_SERVER", &ctl.server)
        .env("PHANTOM_TOKEN", &tb)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(events.stdout.take().unwrap()).lines();
    let first = lines.next_line().await.unwrap().unwrap();
    assert!(first.contains("subscription_started"), "{first}");
    assert!(
        lines
            .next_line()
            .await
            .unwrap()
            .unwrap()
            .starts_with("seq=1 contact_added")
    );

    let sent = ctl
        .ok(&ta, &["send", "bob", "hello Bob", "--client-id", "q1"])
        .await;
    assert!(sent.starts_with("sent "), "{sent}");
    let again = ctl
        .ok(&ta, &["send", "bob", "hello Bob", "--client-id", "q1"])
        .await;
    assert!(again.contains("(duplicate)"), "{again}");
    let line = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        line.starts_with("seq=2 message_received") && line.contains("hello Bob"),
        "{line}"
    );

    let msgs = ctl.ok(&tb, &["messages", "alice"]).await;
    assert_eq!(msgs.lines().count(), 1);
    assert!(msgs.contains("hello Bob"));
    let message_id = msgs.split_whitespace().next().unwrap().to_string();
    assert!(
        ctl.ok(&tb, &["read", &alice_id, &message_id])
            .await
            .contains("marked 1 read")
    );
    ctl.ok(&tb, &["status", "away", "--text", "lunch"]).await;
    let profile = ctl.ok(&tb, &["status"]).await;
    assert!(
        profile.contains("away") && profile.contains("lunch"),
        "{profile}"
    );
    let accounts = ctl.ok(ADMIN, &["account", "list"]).await;
    assert_eq!(accounts.lines().count(), 2);
    drop(lines);
    let _ = events.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_print_the_code_and_exit_non_zero() {
    let t = TestServer::start().await;
    let ctl = Ctl {
        server: t.server.as_ref().unwrap().local_addr.to_string(),
    };
    let alice = ctl.ok(ADMIN, &["account", "create", "alice"]).await;
    let ta = field(&alice, "token:").to_string();
    let (code, _, err) = ctl
        .run(&ta, &["send", &uuid::Uuid::new_v4().to_string(), "x"])
        .await;
    assert_eq!(code, 1);
    assert!(
        err.contains("NotFound") && err.contains("recipient_id"),
        "{err}"
    );
    let (code, _, err) = ctl.run("bogus", &["contacts", "list"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("Unauthenticated"), "{err}");
    let (code, _, err) = ctl.run(&ta, &["account", "create", "x1y"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("PermissionDenied"), "{err}");
    let (code, _, err) = ctl.run(&ta, &["send", "nobody", "x"]).await;
    assert_eq!(code, 2);
    assert!(err.contains("not one of your contacts"), "{err}");
}

/// `phantom-grpc-api --check-config --config FILE`.
async fn check_config(file: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_phantom-grpc-api"))
        .arg("--check-config")
        .arg("--config")
        .arg(file)
        .output()
        .await
        .unwrap()
}

#[tokio::test]
async fn config_errors_name_the_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[server]\nlisen = \"127.0.0.1:1\"\n").unwrap();
    let out = check_config(&bad).await;
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml") && err.contains("lisen"), "{err}");

    let out = check_config("config.toml".as_ref()).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn check_config_refuses_unsafe_exposures_and_wrong_types_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    for (text, words) in [
        (
            "[server]\nlisten = \"0.0.0.0:50051\"\n",
            &["allow_insecure", "[tls]"][..],
        ),
        (
            "[server]\nlisten = \"0.0.0.0:50051\"\nallow_insecure = true\n[auth]\nmode = \"none\"\n",
            &["mode", "none"][..],
        ),
        (
            "[limits]\nsend_burst = \"lots\"\n",
            &["limits.send_burst", "expected u32", "line 2"][..],
        ),
        (
            "[server]\nsocket_mode = 0o7777\n",
            &["server.socket_mode"][..],
        ),
    ] {
        let file = dir.path().join("c.toml");
        std::fs::write(&file, text).unwrap();
        let out = check_config(&file).await;
        assert_eq!(out.status.code(), Some(2), "{text}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("c.toml"), "names the file: {err}");
        for w in words {
            assert!(err.contains(w), "{err:?} should mention {w:?}");
        }
    }
}
