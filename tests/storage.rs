//! Storage engines: each refuses a data dir that holds the other's data (never starts empty
//! over it), and both keep what a restart with a lowered retention still promises. The LSM
//! engine leaves nothing in its journal for the next start to replay after a graceful stop.

mod common;

use common::*;
use phantom::config::Engine;
use phantom::server;

#[tokio::test]
async fn an_engine_refuses_a_data_dir_of_the_other_engine() {
    for (wrote, asked) in [(Engine::Sqlite, Engine::Lsm), (Engine::Lsm, Engine::Sqlite)] {
        let mut t = TestServer::start_with(|c| c.storage.engine = wrote).await;
        let (a, b) = (t.account("alice").await, t.account("bob").await);
        t.send(&a, &b, "kept").await;
        t.stop().await;
        let mut cfg = t.config.clone();
        cfg.storage.engine = asked;
        let err = match server::start(cfg).await {
            Ok(_) => panic!("{asked:?} started over {wrote:?} data"),
            Err(e) => e,
        };
        assert!(err.contains("storage.engine"), "{err}");
        // The data is untouched: the engine that wrote it serves it still.
        t.restart().await;
        let history = t.conversation(&a, &b).await;
        assert_eq!(history.len(), 1, "{wrote:?}");
        assert_eq!(history[0].text, "kept");
    }
}

#[tokio::test]
async fn a_lowered_retention_trims_the_log_at_restart() {
    for engine in [Engine::Lsm, Engine::Sqlite] {
        let mut t = TestServer::start_with(|c| c.storage.engine = engine).await;
        let (a, b) = (t.account("alice").await, t.account("bob").await);
        for i in 0..6 {
            t.send(&a, &b, &format!("m{i}")).await;
        }
        t.stop().await;
        t.config.events.retention_per_account = 2;
        t.restart().await;
        let mut bob = t.user(&b);
        let mut s = Events::open(&mut bob, Some(0)).await;
        let started = s.started().await;
        assert_eq!((started.head_seq, started.oldest_seq), (6, 5), "{engine:?}");
        assert_eq!(s.durable().await.seq, 5, "{engine:?}");
        assert_eq!(s.durable().await.seq, 6, "{engine:?}");
        // New events go on from the head, and the window stays two long.
        t.send(&a, &b, "after").await;
        assert_eq!(s.durable().await.seq, 7, "{engine:?}");
        let mut again = Events::open(&mut bob, Some(0)).await;
        assert_eq!(again.started().await.oldest_seq, 6, "{engine:?}");
    }
}

/// What a live stream and a replay recorded as delivered stays so across a restart: replaying
/// the whole log again tells the sender nothing new, and the next message's receipt is the
/// next one told.
#[tokio::test]
async fn delivered_messages_stay_delivered_across_a_restart() {
    async fn replay_until(t: &TestServer, who: &Account, text: &str) {
        let mut r = Events::open(&mut t.user(who), Some(0)).await;
        while r.received().await.text != text {}
    }
    for engine in [Engine::Lsm, Engine::Sqlite] {
        let mut t = TestServer::start_with(|c| c.storage.engine = engine).await;
        let (a, b) = (t.account("alice").await, t.account("bob").await);
        let m1 = t.send(&a, &b, "one").await;
        let mut alice = Events::live(&mut t.user(&a)).await;
        replay_until(&t, &b, "one").await;
        assert_eq!(
            alice.state_change().await.message_ids,
            vec![m1.message_id.clone()]
        );
        // Handed out live, by a stream that starts at bob's head.
        let _bob = Events::live(&mut t.user(&b)).await;
        let live = t.send(&a, &b, "live").await;
        assert_eq!(
            alice.state_change().await.message_ids,
            vec![live.message_id.clone()]
        );
        t.restart().await;
        let delivered = t.conversation(&a, &b).await;
        assert!(
            delivered
                .iter()
                .all(|m| m.state == phantom::pb::MessageState::Delivered as i32),
            "{engine:?}: {delivered:?}"
        );
        let mut alice = Events::live(&mut t.user(&a)).await;
        replay_until(&t, &b, "one").await;
        let m2 = t.send(&a, &b, "two").await;
        replay_until(&t, &b, "two").await;
        assert_eq!(
            alice.state_change().await.message_ids,
            vec![m2.message_id.clone()],
            "{engine:?}: only the new message"
        );
    }
}

/// Asserts the texts and states of the conversation between `a` and `b`, newest first.
async fn assert_states(
    t: &TestServer,
    (a, b): (&Account, &Account),
    want: &[(&str, phantom::pb::MessageState)],
    engine: Engine,
) {
    let got: Vec<(String, i32)> = t
        .conversation(a, b)
        .await
        .into_iter()
        .map(|m| (m.text, m.state))
        .collect();
    let want: Vec<(String, i32)> = want
        .iter()
        .map(|(t, s)| (t.to_string(), *s as i32))
        .collect();
    assert_eq!(got, want, "{engine:?}");
}

/// A message no stream handed out stays SENT while live streams that began above it deliver
/// the messages after it, before and after a restart; once it is read, the next live message
/// is delivered too, and every state reads as it should (the `lsm` engine then walks its
/// watermark over them: ARCHITECTURE.md, "Delivered watermark").
#[tokio::test]
async fn a_message_never_handed_out_stays_sent_while_later_ones_are_delivered() {
    use phantom::pb::MessageState::{Delivered, Read, Sent};
    for engine in [Engine::Lsm, Engine::Sqlite] {
        let mut t = TestServer::start_with(|c| c.storage.engine = engine).await;
        let (a, b) = (t.account("alice").await, t.account("bob").await);
        let old = t.send(&a, &b, "old").await;
        let mut alice = Events::live(&mut t.user(&a)).await;
        let bob = Events::live(&mut t.user(&b)).await;
        let m1 = t.send(&a, &b, "one").await;
        assert_eq!(alice.state_change().await.message_ids, vec![m1.message_id]);
        drop(bob);
        t.restart().await;
        let mut alice = Events::live(&mut t.user(&a)).await;
        let _bob = Events::live(&mut t.user(&b)).await;
        let m2 = t.send(&a, &b, "two").await;
        assert_eq!(alice.state_change().await.message_ids, vec![m2.message_id]);
        let both = (&a, &b);
        let want = [("two", Delivered), ("one", Delivered), ("old", Sent)];
        assert_states(&t, both, &want, engine).await;
        mark_read(&mut t.user(&b), &a.id, &old.message_id)
            .await
            .unwrap();
        let m3 = t.send(&a, &b, "three").await;
        loop {
            let ids = alice.state_change().await.message_ids;
            if ids.contains(&m3.message_id) {
                break;
            }
        }
        let want = [
            ("three", Delivered),
            ("two", Delivered),
            ("one", Delivered),
            ("old", Read),
        ];
        assert_states(&t, both, &want, engine).await;
    }
}

/// Receipts a busy stream still holds when the server shuts down are recorded before the store
/// closes: the message is DELIVERED after the restart, and the sender's log tells it once.
#[tokio::test]
async fn receipts_a_stream_holds_at_shutdown_are_recorded() {
    use phantom::pb::MessageState;
    for engine in [Engine::Lsm, Engine::Sqlite] {
        // An interval no test outlasts: after its first report the stream holds every receipt.
        let mut t = TestServer::start_with(|c| {
            c.storage.engine = engine;
            c.events.receipt_interval_ms = 60_000;
        })
        .await;
        let (a, b) = (t.account("alice").await, t.account("bob").await);
        let mut alice = Events::live(&mut t.user(&a)).await;
        let mut bob = Events::live(&mut t.user(&b)).await;
        let mut sent = Vec::new();
        for text in ["first", "held"] {
            let m = t.send(&a, &b, text).await;
            assert_eq!(bob.received().await.message_id, m.message_id);
            sent.push(m.message_id);
        }
        let first = alice.state_change().await.message_ids;
        let pair = (&a, &b);
        use MessageState::{Delivered, Sent};
        assert_states(&t, pair, &[("held", Sent), ("first", Delivered)], engine).await;

        t.restart().await;
        assert_states(
            &t,
            pair,
            &[("held", Delivered), ("first", Delivered)],
            engine,
        )
        .await;
        // The sender's log: one change per receipt, the held one after the first.
        let mut log = Events::open(&mut t.user(&a), Some(0)).await;
        log.started().await;
        assert_eq!(log.state_change().await.message_ids, first, "{engine:?}");
        assert_eq!(
            log.state_change().await.message_ids,
            vec![sent[1].clone()],
            "{engine:?}"
        );
    }
}

/// A graceful stop flushes the LSM engine's memtables to tables: opened again, fjall replays
/// nothing from the journal into any keyspace, and what was sent is still there.
#[tokio::test]
async fn a_graceful_stop_leaves_the_lsm_journal_nothing_to_replay() {
    let mut t = TestServer::start().await;
    let (a, b) = (t.account("alice").await, t.account("bob").await);
    for i in 0..20 {
        t.send(&a, &b, &format!("m{i}")).await;
    }
    t.stop().await;
    assert_lsm_replays_nothing(&t.data_dir());
    t.restart().await;
    assert_eq!(t.conversation(&a, &b).await.len(), 20);
}
