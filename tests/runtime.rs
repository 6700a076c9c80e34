//! `server.runtime = "single_thread"`: the network, the handlers and the actors on one thread.
mod common;

use common::*;
use phantom::pb;

/// The real binary with `runtime = "single_thread"` runs no tokio worker and no actors'
/// thread, yet a message reaches its recipient's stream, the receipt reaches the sender's, and
/// SIGTERM still stops it cleanly.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_single_thread_server_delivers_and_stops_cleanly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut proc, addr) = spawn_server(dir.path(), "runtime = \"single_thread\"", "lsm");
    let threads: Vec<String> = threads_of(&proc.0.id().to_string())
        .into_iter()
        .map(|(_, name)| name)
        .collect();
    assert!(
        threads.iter().any(|n| n == "phantom-store-w"),
        "the store's writer keeps its thread: {threads:?}"
    );
    assert!(
        !threads
            .iter()
            .any(|n| n == "tokio-rt-worker" || n == "phantom-actors"),
        "one thread for the network and the actors: {threads:?}"
    );

    let t = TestServer::attach(dir, &addr).await;
    let (a, b) = (t.account("alice").await, t.account("bob").await);
    t.befriend(&a, &b).await;
    let mut sender = Events::live(&mut t.user(&a)).await;
    let mut recipient = Events::live(&mut t.user(&b)).await;
    let sent = t.send(&a, &b, "over one thread").await;
    let got = recipient.received().await;
    assert_eq!(
        (got.message_id.as_str(), got.text.as_str()),
        (sent.message_id.as_str(), "over one thread")
    );
    let receipt = sender.state_change().await;
    assert_eq!(receipt.message_ids, vec![sent.message_id]);
    assert_eq!(receipt.state, pb::MessageState::Delivered as i32);

    proc.signal("TERM");
    // The streams end as the server drains, then it exits with success.
    assert!(matches!(recipient.next().await, Err(_) | Ok(None)));
    let status = tokio::task::spawn_blocking(move || proc.0.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(status.success(), "{status:?}");
}
