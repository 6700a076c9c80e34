//! Receipts, conflation of presence and typing, and a stalled subscriber under load.

mod common;

use std::collections::HashSet;

use common::*;
use phantom::config::{Engine, HandOffs};
use phantom::pb::{self, MessageState, PresenceStatus, client_frame::Body as C, event::Kind};
use tonic::Code;

/// The state of message `id` in `who`'s conversation with `with`.
async fn state_of(t: &TestServer, who: &Account, with: &Account, id: &str) -> MessageState {
    let m = t
        .conversation(who, with)
        .await
        .into_iter()
        .find(|m| m.message_id == id)
        .expect("message in history");
    MessageState::try_from(m.state).expect("known state")
}

/// A server with alice and bob, and alice's feed open.
async fn sender_watching() -> (TestServer, Account, Account, Events) {
    let t = TestServer::start().await;
    let (a, b) = (t.account("alice").await, t.account("bob").await);
    let alice = Events::live(&mut t.user(&a)).await;
    (t, a, b, alice)
}

#[tokio::test]
async fn live_handoff_makes_a_message_delivered_and_tells_the_sender() {
    let (t, a, b, mut alice) = sender_watching().await;
    let mut bob = Events::live(&mut t.user(&b)).await;

    let m = t.send(&a, &b, "are you there?").await;
    assert_eq!(m.state, MessageState::Sent as i32, "the reply is SENT");
    assert_eq!(bob.received().await.message_id, m.message_id);

    let c = alice.state_change().await;
    assert_eq!(c.state, MessageState::Delivered as i32);
    assert_eq!(c.message_ids, vec![m.message_id.clone()]);
    assert_eq!(c.contact_id, b.id, "names the recipient");
    assert_eq!(
        state_of(&t, &a, &b, &m.message_id).await,
        MessageState::Delivered
    );
    assert_eq!(
        state_of(&t, &b, &a, &m.message_id).await,
        MessageState::Delivered,
        "both sides see one state"
    );
}

#[tokio::test]
async fn a_busy_stream_reports_its_receipts_together_and_at_once_when_it_ends() {
    // An interval no test outlasts: after its first report, the stream holds every receipt
    // until it ends.
    let t = TestServer::start_with(|c| c.events.receipt_interval_ms = 60_000).await;
    let (a, b) = (t.account("alice").await, t.account("bob").await);
    let mut alice = Events::live(&mut t.user(&a)).await;
    let mut bob = Events::live(&mut t.user(&b)).await;

    // A quiet stream's first receipt goes at once.
    let first = t.send(&a, &b, "first").await;
    assert_eq!(bob.received().await.message_id, first.message_id);
    let c = alice.state_change().await;
    assert_eq!(c.message_ids, vec![first.message_id.clone()]);

    // Within the interval the next ones are held: still SENT though handed out.
    let mut burst = Vec::new();
    for i in 0..4 {
        let m = t.send(&a, &b, &format!("burst {i}")).await;
        assert_eq!(bob.received().await.message_id, m.message_id);
        burst.push(m.message_id);
    }
    for id in &burst {
        assert_eq!(state_of(&t, &a, &b, id).await, MessageState::Sent, "{id}");
    }

    // The stream ends: what it held is reported then, as one change.
    drop(bob);
    let c = alice.state_change().await;
    assert_eq!(c.state, MessageState::Delivered as i32);
    assert_eq!(c.contact_id, b.id);
    assert_eq!(
        c.message_ids, burst,
        "one change for the whole burst, in order"
    );
    for id in &burst {
        assert_eq!(
            state_of(&t, &a, &b, id).await,
            MessageState::Delivered,
            "{id}"
        );
    }
}

#[tokio::test]
async fn busy_streams_report_their_held_receipts_at_the_shared_tick_while_open() {
    let t = TestServer::start_with(|c| c.events.receipt_interval_ms = 50).await;
    let a = t.account("alice").await;
    let (b, c) = (t.account("bob").await, t.account("carol").await);
    let mut alice = Events::live(&mut t.user(&a)).await;
    let mut bob = Events::live(&mut t.user(&b)).await;
    let mut carol = Events::live(&mut t.user(&c)).await;

    // Each stream's first receipt may go at once; the second, right behind it, waits for the
    // tick the two streams share (or goes at once, if the interval has passed meanwhile).
    let mut sent = HashSet::new();
    for (to, stream) in [(&b, &mut bob), (&c, &mut carol)] {
        for text in ["one", "two"] {
            let m = t.send(&a, to, text).await;
            assert_eq!(stream.received().await.message_id, m.message_id);
            sent.insert(m.message_id);
        }
    }
    // Both streams stay open: every receipt reaches alice all the same.
    let mut told = HashSet::new();
    while told.len() < sent.len() {
        let change = alice.state_change().await;
        assert_eq!(change.state, MessageState::Delivered as i32);
        told.extend(change.message_ids);
    }
    assert_eq!(told, sent);
    drop((bob, carol));
}

#[tokio::test]
async fn a_fresh_stream_does_not_deliver_history_but_a_replay_does() {
    let (t, a, b, mut alice) = sender_watching().await;
    let old = t.send(&a, &b, "while you were away").await;

    // A stream without after_seq starts at the head: the old message is not handed out.
    let mut bob = Events::live(&mut t.user(&b)).await;
    let new = t.send(&a, &b, "now").await;
    assert_eq!(bob.received().await.message_id, new.message_id);
    let c = alice.state_change().await;
    assert_eq!(
        c.message_ids,
        vec![new.message_id.clone()],
        "only what was handed out"
    );
    assert_eq!(
        state_of(&t, &a, &b, &old.message_id).await,
        MessageState::Sent
    );

    // Replaying the log hands the old one out: now it is delivered.
    let mut replay = Events::open(&mut t.user(&b), Some(0)).await;
    assert!(replay.started().await.resumed);
    assert_eq!(replay.received().await.message_id, old.message_id);
    let c = alice.state_change().await;
    assert_eq!(c.message_ids, vec![old.message_id.clone()]);
    assert_eq!(c.state, MessageState::Delivered as i32);
    assert_eq!(
        state_of(&t, &a, &b, &old.message_id).await,
        MessageState::Delivered
    );
    // Handing it out again changes nothing: no second receipt.
    assert_eq!(replay.received().await.message_id, new.message_id);
    let again = t.send(&a, &b, "third").await;
    let c = alice.state_change().await;
    assert_eq!(
        c.message_ids,
        vec![again.message_id],
        "no repeated receipts"
    );
}

#[tokio::test]
async fn read_before_delivery_skips_delivered_and_states_never_go_back() {
    let (t, a, b, mut alice) = sender_watching().await;
    let m = t.send(&a, &b, "read me").await;

    // Bob reads it (say, from a notification) before any stream of his took it.
    mark_read(&mut t.user(&b), &a.id, &m.message_id)
        .await
        .expect("mark read");
    let c = alice.state_change().await;
    assert_eq!(c.state, MessageState::Read as i32);
    assert_eq!(c.message_ids, vec![m.message_id.clone()]);

    // Now his stream replays it: READ already implies DELIVERED, so nothing moves.
    let mut bob = Events::open(&mut t.user(&b), Some(0)).await;
    bob.started().await;
    assert_eq!(bob.received().await.message_id, m.message_id);
    let next = t.send(&a, &b, "and this").await;
    assert_eq!(bob.received().await.message_id, next.message_id);
    let c = alice.state_change().await;
    assert_eq!(
        (c.state, c.message_ids),
        (MessageState::Delivered as i32, vec![next.message_id]),
        "no DELIVERED for a READ message"
    );
    assert_eq!(
        state_of(&t, &a, &b, &m.message_id).await,
        MessageState::Read
    );
}

/// A channel whose HTTP/2 windows are tiny, so a client that does not read stalls its
/// streams after a few events instead of after megabytes of transport buffers.
async fn tight_channel(t: &TestServer) -> tonic::transport::Channel {
    let addr = t.server.as_ref().expect("running").local_addr.to_string();
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .initial_stream_window_size(1024)
        .initial_connection_window_size(1024)
        .connect()
        .await
        .expect("connect")
}

fn stalled_user(channel: tonic::transport::Channel, a: &Account) -> User {
    pb::phantom_controller_client::PhantomControllerClient::with_interceptor(
        channel,
        Bearer::new(&a.token),
    )
}

#[tokio::test]
async fn a_stalled_stream_gets_only_the_newest_presence_and_typing_per_contact() {
    const STORM: usize = 3000;
    const FLIPS: usize = 40;
    let t = TestServer::start_with(|c| c.limits.subscriber_buffer = 16).await;
    let (a, b, c) = (
        t.account("alice").await,
        t.account("bob").await,
        t.account("carol").await,
    );
    t.befriend(&b, &a).await;
    t.befriend(&b, &c).await;
    let mut bob = Events::live(&mut stalled_user(tight_channel(&t).await, &b)).await;

    // Alice (online through her Connect feed) types on and off and flips her status while Bob
    // reads nothing. Commands run in order, so the last set_status answer means all are done.
    let (tx, mut frames) = open_connect(&mut t.user(&a), 64).await;
    let storm = {
        let bob_id = b.id.clone();
        tokio::spawn(async move {
            let subscribe = C::Subscribe(pb::EventsRequest { after_seq: None });
            let typing = (0..STORM).map(|i| {
                C::Typing(pb::TypingRequest {
                    contact_id: bob_id.clone(),
                    typing: i % 2 == 1, // ends on `true`
                })
            });
            let statuses = (0..FLIPS).map(|i| {
                C::SetStatus(pb::SetStatusRequest {
                    status: [PresenceStatus::Away, PresenceStatus::Busy][i % 2] as i32,
                    status_text: format!("flip {i}"),
                })
            });
            let commands = std::iter::once(subscribe).chain(typing).chain(statuses);
            for (i, body) in commands.enumerate() {
                let frame = pb::ClientFrame {
                    request_id: format!("c{i}"),
                    body: Some(body),
                };
                tx.send(frame).await.expect("connect open");
            }
            tx
        })
    };
    let mut answered = 0;
    while answered < FLIPS {
        let f = tokio::time::timeout(WAIT, frames.message())
            .await
            .expect("answer in time")
            .expect("stream ok")
            .expect("frame");
        match f.body.expect("body") {
            pb::server_frame::Body::SetStatus(_) => answered += 1,
            pb::server_frame::Body::Event(_) => {}
            other => panic!("unexpected answer {other:?}"),
        }
    }
    let _tx = storm.await.expect("storm task");
    // Carol comes online last: her status is the sentinel that follows everything above.
    let _carol = Events::live(&mut t.user(&c)).await;

    let (mut typing_seen, mut last_typing, mut last_alice) = (0, None, None);
    loop {
        let ev = bob.event().await;
        assert_eq!(ev.seq, 0, "only ephemeral events were sent");
        match ev.kind.expect("kind") {
            Kind::TypingChanged(x) => {
                assert_eq!(x.contact_id, a.id);
                typing_seen += 1;
                last_typing = Some(x.typing);
            }
            Kind::ContactStatusChanged(s) if s.contact_id == a.id => last_alice = Some(s),
            Kind::ContactStatusChanged(s) if s.contact_id == c.id => {
                assert_eq!(s.status, PresenceStatus::Online as i32);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        typing_seen < STORM,
        "a stalled stream is not sent every typing event ({typing_seen} of {STORM})"
    );
    assert_eq!(last_typing, Some(true), "the newest typing value wins");
    let last_alice = last_alice.expect("alice's status reached bob");
    assert_eq!(last_alice.status, PresenceStatus::Busy as i32);
    assert_eq!(
        last_alice.status_text,
        format!("flip {}", FLIPS - 1),
        "the newest status wins"
    );

    let stats = t.stats().await;
    assert!(stats.events_conflated > 0, "{stats:?}");
    assert_eq!(
        stats.slow_subscriber_disconnects, 0,
        "conflation ends nothing"
    );

    // The stream is still live for durable events.
    let m = t.send(&a, &b, "still there?").await;
    assert_eq!(bob.received().await.message_id, m.message_id);
}

/// Parses the N of "after_seq = N" from a status message.
fn resume_point(status: &tonic::Status) -> u64 {
    let msg = status.message();
    let at = msg.find("after_seq = ").expect("message names after_seq") + "after_seq = ".len();
    msg[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .expect("a number after after_seq")
}

#[tokio::test]
async fn a_stalled_subscriber_is_cut_off_while_others_get_everything_then_resumes() {
    const SENDERS: usize = 8;
    const PER_SENDER: usize = 1250; // 10,000 in all
    let t = TestServer::start_with(|c| c.limits.subscriber_buffer = 64).await;
    let (r, other) = (t.account("reader").await, t.account("other").await);
    let mut senders = Vec::new();
    for i in 0..SENDERS {
        senders.push(t.account(&format!("sender{i}")).await);
    }

    // The same account reads on one stream and stalls on another; a second account reads too.
    let mut reading = Events::live(&mut t.user(&r)).await;
    let mut stalled = Events::live(&mut stalled_user(tight_channel(&t).await, &r)).await;
    let mut bystander = Events::live(&mut t.user(&other)).await;

    let mut tasks = Vec::new();
    for (i, s) in senders.iter().enumerate() {
        let mut user = t.user(s);
        let (to_r, to_other) = (r.id.clone(), other.id.clone());
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for n in 0..PER_SENDER {
                let to = if n % 10 == 0 { &to_other } else { &to_r };
                let m = user
                    .send_message(pb::SendMessageRequest {
                        recipient_id: to.clone(),
                        text: format!("{i}/{n}"),
                        ..Default::default()
                    })
                    .await
                    .expect("send never blocks on a stalled reader")
                    .into_inner()
                    .message
                    .expect("message");
                if to == &to_r {
                    ids.push(m.message_id);
                }
            }
            ids
        }));
    }
    let to_r: usize = SENDERS * PER_SENDER * 9 / 10;
    let to_other = SENDERS * PER_SENDER - to_r;

    // The reading streams get every event, in seq order, while the stalled one sits.
    let mut live = Vec::with_capacity(to_r);
    while live.len() < to_r {
        let ev = reading.durable().await;
        assert_eq!(ev.seq, live.len() as u64 + 1, "no gap, no duplicate");
        live.push(ev);
    }
    for n in 1..=to_other as u64 {
        assert_eq!(bystander.durable().await.seq, n);
    }
    let mut acked = HashSet::new();
    for task in tasks {
        acked.extend(task.await.expect("sender"));
    }
    let got: HashSet<String> = live
        .iter()
        .filter_map(|e| match &e.kind {
            Some(Kind::MessageReceived(m)) => m.message.as_ref().map(|m| m.message_id.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(got, acked, "the reader got every acknowledged message");

    // The stalled stream was cut off, naming where to resume.
    let mut delivered_before_cut = 0;
    let cut = loop {
        match stalled.next().await {
            Ok(Some(ev)) => {
                assert_eq!(ev.seq, delivered_before_cut + 1);
                delivered_before_cut = ev.seq;
            }
            Ok(None) => panic!("the stalled stream ended without a status"),
            Err(s) => break s,
        }
    };
    assert_eq!(cut.code(), Code::ResourceExhausted, "{}", cut.message());
    let from = resume_point(&cut);
    assert_eq!(
        from, delivered_before_cut,
        "the status names the last seq the client got"
    );
    assert!(from < to_r as u64, "it really was cut off early ({from})");
    let stats = t.stats().await;
    assert!(stats.slow_subscriber_disconnects >= 1, "{stats:?}");

    // It resumes and gets exactly the rest.
    let mut resumed = Events::open(&mut t.user(&r), Some(from)).await;
    let started = resumed.started().await;
    assert!(started.resumed);
    assert_eq!(started.head_seq, to_r as u64);
    for expected in &live[from as usize..] {
        let ev = resumed.durable().await;
        assert_eq!(&ev, expected, "the replay equals what was live");
    }
}

/// Replays of overlapping stretches of the log deliver each message once, whatever was
/// delivered before: a replay from inside the log, one from its start, one that runs past
/// what earlier replays covered, and one over a log already delivered whole. The LSM engine
/// skips a stretch it knows is delivered; both engines must tell the sender the same.
#[tokio::test]
async fn overlapping_replays_deliver_each_message_once() {
    for engine in [Engine::Lsm, Engine::Sqlite] {
        let t = TestServer::start_with(|c| c.storage.engine = engine).await;
        let (a, b) = (t.account("alice").await, t.account("bob").await);
        let mut alice = Events::live(&mut t.user(&a)).await;
        let m1 = t.send(&a, &b, "one").await;
        let m2 = t.send(&a, &b, "two").await;
        let replay = async |after: u64, last: &pb::Message| {
            let mut r = Events::open(&mut t.user(&b), Some(after)).await;
            while r.received().await.message_id != last.message_id {}
        };
        // From inside the log: only m2 is handed out.
        replay(1, &m2).await;
        assert_eq!(
            alice.state_change().await.message_ids,
            vec![m2.message_id.clone()]
        );
        // From the start: m1 is new, m2 is not told again.
        replay(0, &m2).await;
        assert_eq!(
            alice.state_change().await.message_ids,
            vec![m1.message_id.clone()]
        );
        // Past what was covered: only the new one.
        let m3 = t.send(&a, &b, "three").await;
        replay(0, &m3).await;
        assert_eq!(
            alice.state_change().await.message_ids,
            vec![m3.message_id.clone()]
        );
        // Over a log delivered whole: nothing; the next receipt alice gets is m4's.
        replay(0, &m3).await;
        let mut bob = Events::live(&mut t.user(&b)).await;
        let m4 = t.send(&a, &b, "four").await;
        assert_eq!(bob.received().await.message_id, m4.message_id);
        assert_eq!(
            alice.state_change().await.message_ids,
            vec![m4.message_id.clone()],
            "{engine:?}"
        );
        for m in [&m1, &m2, &m3, &m4] {
            assert_eq!(
                state_of(&t, &a, &b, &m.message_id).await,
                MessageState::Delivered,
                "{engine:?}"
            );
        }
    }
}

/// The scheduling policy of every thread of this process named `name`.
fn policies_of(name: &str) -> Vec<i32> {
    threads_of("self")
        .into_iter()
        .filter(|(_, n)| n == name)
        // SAFETY: plain system call on a thread id of this process.
        .map(|(tid, _)| unsafe { libc::sched_getscheduler(tid) })
        .collect()
}

/// `server.hand_offs = "batched"` puts the actors' thread and the LSM writer under
/// SCHED_BATCH and leaves the syncer, whose wake-up answers the sends, as it was; messages
/// are delivered and answered as under the default. (Other tests of this binary run servers
/// with the default beside it, so each name is looked for among several threads.)
#[tokio::test]
async fn batched_hand_offs_deliver_and_schedule_the_actors_and_the_writer_as_batch() {
    let t = TestServer::start_with(|c| c.server.hand_offs = HandOffs::Batched).await;
    let (a, b) = (t.account("alice").await, t.account("bob").await);
    let mut bob = Events::live(&mut t.user(&b)).await;
    let m = t.send(&a, &b, "batched").await;
    assert_eq!(bob.received().await.message_id, m.message_id);
    for name in ["phantom-actors", "phantom-store-w"] {
        let policies = policies_of(name);
        assert!(
            policies.contains(&libc::SCHED_BATCH),
            "{name}: {policies:?}"
        );
    }
    let syncers = policies_of("phantom-store-s");
    assert!(
        !syncers.is_empty() && !syncers.contains(&libc::SCHED_BATCH),
        "{syncers:?}"
    );
}
