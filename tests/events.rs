//! SubscribeToEvents, health, reflection, shutdown and revocation of streams.

mod common;

use common::*;
use phantom::pb::{self, event::Kind};
use tonic::Code;

/// Runs one of each durable event for alice (with mallory busy alongside), returning alice.
async fn busy_day(t: &TestServer) -> (Account, Account, Account) {
    let (a, b, m) = (
        t.account("alice").await,
        t.account("bob").await,
        t.account("mallory").await,
    );
    t.befriend(&m, &b).await; // mallory's, not alice's
    t.befriend(&a, &b).await; // 1 ContactAdded
    let sent = t.send(&a, &b, "hi bob").await; // 2 MessageSent
    t.send(&m, &b, "hi from mallory").await;
    t.send(&b, &a, "hi alice").await; // 3 MessageReceived
    t.user(&b)
        .mark_read(pb::MarkReadRequest {
            contact_id: a.id.clone(),
            up_to_message_id: sent.message_id,
        })
        .await
        .unwrap(); // 4 MessageStateChanged
    t.user(&a)
        .update_contact(pb::UpdateContactRequest {
            contact_id: b.id.clone(),
            display_name: "B".into(),
        })
        .await
        .unwrap(); // 5 ContactUpdated
    t.user(&a)
        .remove_contact(pb::RemoveContactRequest {
            contact_id: b.id.clone(),
        })
        .await
        .unwrap(); // 6 ContactRemoved
    (a, b, m)
}

fn kinds_of_day() -> [&'static str; 6] {
    [
        "ContactAdded",
        "MessageSent",
        "MessageReceived",
        "MessageStateChanged",
        "ContactUpdated",
        "ContactRemoved",
    ]
}

fn name(k: &Kind) -> &'static str {
    match k {
        Kind::SubscriptionStarted(_) => "SubscriptionStarted",
        Kind::MessageReceived(_) => "MessageReceived",
        Kind::MessageSent(_) => "MessageSent",
        Kind::MessageStateChanged(_) => "MessageStateChanged",
        Kind::ContactAdded(_) => "ContactAdded",
        Kind::ContactUpdated(_) => "ContactUpdated",
        Kind::ContactRemoved(_) => "ContactRemoved",
        Kind::ContactStatusChanged(_) => "ContactStatusChanged",
        Kind::TypingChanged(_) => "TypingChanged",
    }
}

#[tokio::test]
async fn a_live_stream_sees_exactly_its_accounts_events_in_seq_order_from_one() {
    let t = TestServer::start().await;
    // Open alice's stream before anything happens: create her first, subscribe, then act.
    let a = t.account("alice").await;
    let mut alice = t.user(&a);
    let mut s = Events::open(&mut alice, None).await;
    let started = s.started().await;
    assert_eq!((started.head_seq, started.resumed), (0, false));

    let b = t.account("bob").await;
    let m = t.account("mallory").await;
    t.befriend(&m, &b).await;
    t.befriend(&a, &b).await;
    let sent = t.send(&a, &b, "hi bob").await;
    t.send(&m, &b, "hi from mallory").await;
    let got = t.send(&b, &a, "hi alice").await;
    t.user(&b)
        .mark_read(pb::MarkReadRequest {
            contact_id: a.id.clone(),
            up_to_message_id: sent.message_id.clone(),
        })
        .await
        .unwrap();
    alice
        .update_contact(pb::UpdateContactRequest {
            contact_id: b.id.clone(),
            display_name: "B".into(),
        })
        .await
        .unwrap();
    alice
        .remove_contact(pb::RemoveContactRequest {
            contact_id: b.id.clone(),
        })
        .await
        .unwrap();

    for (i, expected) in kinds_of_day().iter().enumerate() {
        let ev = s.durable().await;
        assert_eq!(ev.seq, i as u64 + 1, "seqs run 1, 2, 3 ... without gaps");
        assert_eq!(name(kind(&ev)), *expected);
        assert!(!ev.event_id.is_empty() && ev.time.is_some());
        match kind(&ev) {
            Kind::MessageSent(x) => {
                assert_eq!(x.message.as_ref().unwrap().message_id, sent.message_id)
            }
            Kind::MessageReceived(x) => {
                assert_eq!(x.message.as_ref().unwrap().message_id, got.message_id)
            }
            Kind::ContactUpdated(x) => assert_eq!(x.contact.as_ref().unwrap().display_name, "B"),
            Kind::ContactRemoved(x) => assert_eq!(x.contact_id, b.id),
            _ => {}
        }
    }
    // Nothing of mallory's reached alice: the next durable event is alice's own, seq 7.
    t.send(&b, &a, "last").await;
    let ev = s.durable().await;
    assert_eq!(ev.seq, 7);
    assert!(matches!(kind(&ev), Kind::MessageReceived(_)));
}

/// A message's events get their message and id text only for a stream that shows them: the
/// live MessageSent and MessageReceived are what a replay of each log reads back (ids, times
/// and all), and both carry the message SendMessage answered with.
#[tokio::test]
async fn live_message_events_are_what_the_logs_replay() {
    let t = TestServer::start().await;
    let (a, b) = (t.account("alice").await, t.account("bob").await);
    t.befriend(&a, &b).await;
    let (mut alice, mut bob) = (t.user(&a), t.user(&b));
    let mut to_alice = Events::live(&mut alice).await;
    let mut to_bob = Events::live(&mut bob).await;
    let sent = t.send(&a, &b, "hello").await;
    let live = [to_alice.durable().await, to_bob.durable().await];
    let message = |e: &pb::Event| match &e.kind {
        Some(Kind::MessageSent(x)) => x.message.clone(),
        Some(Kind::MessageReceived(x)) => x.message.clone(),
        _ => None,
    };
    assert_eq!(name(kind(&live[0])), "MessageSent");
    assert_eq!(name(kind(&live[1])), "MessageReceived");
    for ev in &live {
        assert_eq!(message(ev).as_ref(), Some(&sent));
        assert_eq!(
            uuid::Uuid::parse_str(&ev.event_id).unwrap().to_string(),
            ev.event_id
        );
    }
    assert_ne!(live[0].event_id, live[1].event_id);
    for (user, ev) in [(&mut alice, &live[0]), (&mut bob, &live[1])] {
        let mut replay = Events::open(user, Some(ev.seq - 1)).await;
        replay.started().await;
        assert_eq!(
            &replay.durable().await,
            ev,
            "the same event, id and time included"
        );
    }
}

#[tokio::test]
async fn resume_replays_after_seq_then_goes_live() {
    let t = TestServer::start().await;
    let (a, b, _) = busy_day(&t).await;
    let mut alice = t.user(&a);
    let mut s = Events::open(&mut alice, Some(2)).await;
    let started = s.started().await;
    assert_eq!(
        (started.head_seq, started.oldest_seq, started.resumed),
        (6, 1, true)
    );
    for seq in 3..=6 {
        let ev = s.durable().await;
        assert_eq!(ev.seq, seq);
        assert_eq!(name(kind(&ev)), kinds_of_day()[seq as usize - 1]);
    }
    t.send(&b, &a, "live").await;
    assert_eq!(s.durable().await.seq, 7);

    // Without after_seq, only what comes after head_seq.
    let mut live = Events::open(&mut alice, None).await;
    assert_eq!(live.started().await.head_seq, 7);
    t.send(&b, &a, "next").await;
    assert_eq!(live.durable().await.seq, 8);
}

/// Events of an account with no stream open are dropped where they are committed, without a
/// hop to the bus; they are still in the log for its next stream, and that stream gets live
/// events again.
#[tokio::test]
async fn an_account_between_streams_gets_the_gap_replayed_and_live_events_again() {
    let t = TestServer::start().await;
    let (a, b) = (t.account("alice").await, t.account("bob").await);
    t.befriend(&b, &a).await; // bob sees alice's presence
    let mut bob = t.user(&b);
    let mut watch = Events::live(&mut bob).await;
    let mut alice = t.user(&a);
    let first = Events::live(&mut alice).await;
    watch.status_of(&a.id, pb::PresenceStatus::Online).await;
    drop(first);
    // Offline for bob: the bus has dropped alice's last stream.
    watch.status_of(&a.id, pb::PresenceStatus::Offline).await;
    let missed = t.send(&b, &a, "while away").await;

    let mut next = Events::open(&mut alice, Some(0)).await;
    next.started().await;
    assert_eq!(next.received().await.message_id, missed.message_id);
    let live = t.send(&b, &a, "back").await;
    assert_eq!(next.received().await.message_id, live.message_id);
    // And a stream opened live, with no replay to cover for it, gets the next one too.
    let mut fresh = Events::live(&mut alice).await;
    let after = t.send(&b, &a, "again").await;
    assert_eq!(fresh.received().await.message_id, after.message_id);
    assert_eq!(next.received().await.message_id, after.message_id);
}

#[tokio::test]
async fn retention_prunes_and_a_stale_resume_is_not_resumed() {
    let t = TestServer::start_with(|c| c.events.retention_per_account = 3).await;
    let (a, _, _) = busy_day(&t).await;
    let mut alice = t.user(&a);
    let mut s = Events::open(&mut alice, Some(1)).await;
    let started = s.started().await;
    assert_eq!(
        (started.head_seq, started.oldest_seq, started.resumed),
        (6, 4, false)
    );
    for seq in 4..=6 {
        assert_eq!(s.durable().await.seq, seq);
    }
    // From inside the kept window it is a true resume.
    let mut s = Events::open(&mut alice, Some(3)).await;
    assert!(s.started().await.resumed);
    assert_eq!(s.durable().await.seq, 4);
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let t = TestServer::start().await;
    let mut health = HealthClient::new(t.channel.clone());
    for service in ["", "phantom.v1.PhantomController"] {
        let r = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status, ServingStatus::Serving as i32, "{service:?}");
    }
    let mut refl = ServerReflectionClient::new(t.channel.clone());
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut resp = refl
        .server_reflection_info(futures::stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let msg = resp.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = msg.message_response else {
        panic!("expected a service list");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for expected in [
        "phantom.v1.PhantomController",
        "phantom.v1.PhantomAdmin",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }

    let off = TestServer::start_with(|c| c.server.reflection = false).await;
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let r = ServerReflectionClient::new(off.channel.clone())
        .server_reflection_info(futures::stream::iter(vec![req]))
        .await;
    assert_eq!(r.unwrap_err().code(), Code::Unimplemented);
}

#[tokio::test]
async fn shutdown_ends_streams_with_unavailable_and_refuses_new_calls() {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let mut t = TestServer::start().await;
    let (a, b) = (t.account("alice").await, t.account("bob").await);
    let mut alice = t.user(&a);
    let mut s = Events::live(&mut alice).await;
    t.send(&b, &a, "before").await;
    assert_eq!(s.durable().await.seq, 1);
    let mut watch = HealthClient::new(t.channel.clone())
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status,
        ServingStatus::Serving as i32
    );

    let server = t.server.take().unwrap();
    let stopping = tokio::spawn(server.shutdown());
    let end = s.next().await.expect_err("the stream ends with a status");
    assert_eq!(end.code(), Code::Unavailable);
    assert!(end.message().contains("after_seq = 1"), "{}", end.message());
    let status = watch.message().await.unwrap().unwrap().status;
    assert_eq!(status, ServingStatus::NotServing as i32);
    drop(watch);
    stopping.await.unwrap();
    let r = alice.get_profile(pb::GetProfileRequest {}).await;
    assert_eq!(r.unwrap_err().code(), Code::Unavailable);

    // After a restart the client resumes and loses nothing.
    t.restart().await;
    t.send(&b, &a, "after").await;
    let mut alice = t.user(&a);
    let mut s = Events::open(&mut alice, Some(1)).await;
    assert!(s.started().await.resumed);
    let ev = s.durable().await;
    assert_eq!(ev.seq, 2);
}

#[tokio::test]
async fn revoking_a_token_ends_its_streams_only() {
    let t = TestServer::start().await;
    let a = t.account("alice").await;
    let second = t
        .admin()
        .issue_token(pb::IssueTokenRequest {
            account_id: a.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut keep = Events::live(&mut t.user(&a)).await;
    let mut doomed = Events::live(&mut t.user_token(&second.token)).await;
    t.admin()
        .revoke_token(pb::RevokeTokenRequest {
            token_id: second.token_id,
        })
        .await
        .unwrap();
    let end = doomed.next().await.expect_err("revoked stream ends");
    assert_eq!(end.code(), Code::Unauthenticated);
    // The other stream lives on.
    let b = t.account("bob").await;
    t.send(&b, &a, "still here").await;
    assert_eq!(keep.durable().await.seq, 1);
}
