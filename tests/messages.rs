//! SendMessage, ListMessages, MarkRead.

mod common;

use common::*;
use phantom::pb::{self, MessageState, event::Kind};
use tonic::Code;

fn text_to(to: &Account, text: &str) -> pb::SendMessageRequest {
    pb::SendMessageRequest {
        recipient_id: to.id.clone(),
        text: text.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn send_stores_and_returns_the_message() {
    let t = TestServer::start().await;
    let (a, b) = (t.account("alice").await, t.account("bob").await);
    let r = t
        .user(&a)
        .send_message(pb::SendMessageRequest {
            recipient_id: b.id.clone(),
            text: "hi".into(),
            payload: vec![1u8, 2, 3].into(),
            content_type: "application/octet-stream".into(),
            client_message_id: "c-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!r.duplicate);
    let m = r.message.unwrap();
    let id = uuid::Uuid::parse_str(&m.message_id).unwrap();
    assert_eq!(id.get_version_num(), 7, "message ids are UUIDv7");
    assert_eq!(
        (m.sender_id.as_str(), m.recipient_id.as_str()),
        (a.id.as_str(), b.id.as_str())
    );
    assert_eq!(m.text, "hi");
    assert_eq!(&m.payload[..], &[1, 2, 3]);
    assert_eq!(m.content_type, "application/octet-stream");
    assert_eq!(m.client_message_id, "c-1");
    assert_eq!(m.state, MessageState::Sent as i32);
    assert!(m.sent_at.is_some());
    // A payload alone is a message too.
    let r = t
        .user(&a)
        .send_message(pb::SendMessageRequest {
            recipient_id: b.id.clone(),
            payload: vec![9u8].into(),
            ..Default::default()
        })
        .await;
    assert!(r.is_ok());
}

#[tokio::test]
async fn send_errors_name_their_field_and_store_nothing() {
    let t = TestServer::start().await;
    let (a, b) = (t.account("alice").await, t.account("bob").await);
    let mut u = t.user(&a);
    let limits = t.config.limits.clone();
    let cases: Vec<(pb::SendMessageRequest, Code, &str)> = vec![
        (
            pb::SendMessageRequest {
                recipient_id: uuid::Uuid::new_v4().to_string(),
                text: "x".into(),
                ..Default::default()
            },
            Code::NotFound,
            "recipient_id",
        ),
        (
            text_to(&a, "to myself"),
            Code::InvalidArgument,
            "recipient_id",
        ),
        (
            pb::SendMessageRequest {
                recipient_id: "bob".into(),
                text: "x".into(),
                ..Default::default()
            },
            Code::InvalidArgument,
            "recipient_id",
        ),
        (
            pb::SendMessageRequest {
                text: "x".into(),
                ..Default::default()
            },
            Code::InvalidArgument,
            "recipient_id",
        ),
        (text_to(&b, ""), Code::InvalidArgument, "text"),
        (
            text_to(&b, &"a".repeat(limits.max_text_bytes + 1)),
            Code::InvalidArgument,
            "text",
        ),
        (
            pb::SendMessageRequest {
                recipient_id: b.id.clone(),
                payload: vec![0u8; limits.max_payload_bytes + 1].into(),
                ..Default::default()
            },
            Code::InvalidArgument,
            "payload",
        ),
        (
            pb::SendMessageRequest {
                recipient_id: b.id.clone(),
                text: "x".into(),
                client_message_id: "k".repeat(129),
                ..Default::default()
            },
            Code::InvalidArgument,
            "client_message_id",
        ),
    ];
    for (req, code, field) in cases {
        assert_status(u.send_message(req).await, code, field);
    }
    // Exactly at the limits is fine.
    u.send_message(text_to(&b, &"a".repeat(limits.max_text_bytes)))
        .await
        .unwrap();
    let list = u
        .list_messages(pb::ListMessagesRequest {
            contact_id: b.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.messages.len(), 1, "refused sends stored nothing");
}

#[tokio::test]
async fn bad_input_gets_invalid_argument_with_a_bad_request_detail() {
    use tonic_types::StatusExt;
    let t = TestServer::start().await;
    let a = t.account("alice").await;
    let s = t
        .user(&a)
        .send_message(pb::SendMessageRequest {
            recipient_id: "nope".into(),
            text: "x".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    let details = s.get_error_details();
    let bad = details.bad_request().expect("BadRequest detail");
    assert_eq!(bad.field_violations[0].field, "recipient_id");
}

#[tokio::test]
async fn client_message_id_makes_send_idempotent() {
    let t = TestServer::start().await;
    let (a, b) = (t.account("alice").await, t.account("bob").await);
    let mut u = t.user(&a);
    let req = pb::SendMessageRequest {
        recipient_id: b.id.clone(),
        text: "once".into(),
        client_message_id: "retry-me".into(),
        ..Default::default()
    };
    let first = u.send_message(req.clone()).await.unwrap().into_inner();
    let second = u.send_message(req).await.unwrap().into_inner();
    assert!(!first.duplicate);
    assert!(second.duplicate);
    assert_eq!(first.message, second.message);
    // The same key from another sender is another message.
    let other = t
        .user(&b)
        .send_message(pb::SendMessageRequest {
            recipient_id: a.id.clone(),
            text: "mine".into(),
            client_message_id: "retry-me".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!other.duplicate);

    let list = u
        .list_messages(pb::ListMessagesRequest {
            contact_id: b.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.messages.len(), 2);
    // One pair of events: the sender logged exactly one MessageSent for it, the recipient
    // exactly one MessageReceived.
    let count = |evs: &[pb::Event], pred: &dyn Fn(&Kind) -> bool| {
        evs.iter()
            .filter(|e| pred(e.kind.as_ref().unwrap()))
            .count()
    };
    let alice_log = replay_all(&t, &a).await;
    let bob_log = replay_all(&t, &b).await;
    assert_eq!(count(&alice_log, &|k| matches!(k, Kind::MessageSent(_))), 1);
    assert_eq!(
        count(&bob_log, &|k| matches!(k, Kind::MessageReceived(_))),
        1
    );
}

/// Every durable event in an account's log, by resuming from 0.
async fn replay_all(t: &TestServer, a: &Account) -> Vec<pb::Event> {
    let mut u = t.user(a);
    let mut s = Events::open(&mut u, Some(0)).await;
    let started = s.started().await;
    let mut out = Vec::new();
    while (out.len() as u64) < started.head_seq {
        out.push(s.durable().await);
    }
    out
}

#[tokio::test]
async fn list_messages_pages_newest_first_in_both_directions() {
    let t = TestServer::start().await;
    let (a, b, c) = (
        t.account("alice").await,
        t.account("bob").await,
        t.account("carol").await,
    );
    let mut sent = Vec::new();
    for i in 0..7 {
        let (from, to) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
        sent.push(t.send(from, to, &format!("m{i}")).await.message_id);
    }
    t.send(&a, &c, "elsewhere").await;
    let mut u = t.user(&b);
    let mut got = Vec::new();
    let mut token = String::new();
    loop {
        let r = u
            .list_messages(pb::ListMessagesRequest {
                contact_id: a.id.clone(),
                page_size: 3,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        got.extend(r.messages.into_iter().map(|m| m.message_id));
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    sent.reverse();
    assert_eq!(got, sent);

    let bad = |id: &str| pb::ListMessagesRequest {
        contact_id: id.into(),
        ..Default::default()
    };
    assert_status(
        u.list_messages(bad("")).await,
        Code::InvalidArgument,
        "contact_id",
    );
    assert_status(
        u.list_messages(bad(&uuid::Uuid::new_v4().to_string()))
            .await,
        Code::NotFound,
        "contact_id",
    );
    let r = u
        .list_messages(pb::ListMessagesRequest {
            contact_id: a.id.clone(),
            page_size: 1,
            page_token: "%%%".into(),
        })
        .await;
    assert_status(r, Code::InvalidArgument, "page_token");
}

#[tokio::test]
async fn mark_read_moves_state_forward_and_tells_the_sender_once() {
    let t = TestServer::start().await;
    let (a, b) = (t.account("alice").await, t.account("bob").await);
    let mut alice = t.user(&a);
    let mut feed = Events::live(&mut alice).await;
    let m1 = t.send(&a, &b, "one").await;
    let m2 = t.send(&a, &b, "two").await;
    let m3 = t.send(&a, &b, "three").await;
    let mut bob = t.user(&b);
    let r = mark_read(&mut bob, &a.id, &m2.message_id).await.unwrap();
    assert_eq!(r.updated, 2);
    // Alice's feed: three MessageSent, then one MessageStateChanged naming m1 and m2.
    for _ in 0..3 {
        assert!(matches!(kind(&feed.durable().await), Kind::MessageSent(_)));
    }
    match kind(&feed.durable().await) {
        Kind::MessageStateChanged(s) => {
            assert_eq!(s.contact_id, b.id);
            assert_eq!(s.state, MessageState::Read as i32);
            assert_eq!(
                s.message_ids,
                vec![m1.message_id.clone(), m2.message_id.clone()]
            );
        }
        other => panic!("expected MessageStateChanged, got {other:?}"),
    }
    // Again: nothing changes, no event.
    let r = mark_read(&mut bob, &a.id, &m1.message_id).await.unwrap();
    assert_eq!(r.updated, 0);
    let r = mark_read(&mut bob, &a.id, &m3.message_id).await.unwrap();
    assert_eq!(r.updated, 1);
    match kind(&feed.durable().await) {
        Kind::MessageStateChanged(s) => assert_eq!(s.message_ids, vec![m3.message_id.clone()]),
        other => panic!("expected MessageStateChanged, got {other:?}"),
    }
    let list = bob
        .list_messages(pb::ListMessagesRequest {
            contact_id: a.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        list.messages
            .iter()
            .all(|m| m.state == MessageState::Read as i32)
    );

    // The reader cannot mark its own messages, nor use a message of another conversation.
    let reply = t.send(&b, &a, "reply").await;
    let mk = |contact: &str, up_to: &str| pb::MarkReadRequest {
        contact_id: contact.into(),
        up_to_message_id: up_to.into(),
    };
    assert_status(
        bob.mark_read(mk(&a.id, &reply.message_id)).await,
        Code::NotFound,
        "up_to_message_id",
    );
    assert_status(
        bob.mark_read(mk(&a.id, &uuid::Uuid::new_v4().to_string()))
            .await,
        Code::NotFound,
        "up_to_message_id",
    );
    assert_status(
        bob.mark_read(mk(&a.id, "")).await,
        Code::InvalidArgument,
        "up_to_message_id",
    );
    assert_status(
        bob.mark_read(mk("x", &m1.message_id)).await,
        Code::InvalidArgument,
        "contact_id",
    );
}

#[tokio::test]
async fn requests_over_the_decoding_limit_are_refused() {
    let t = TestServer::start_with(|c| {
        c.limits.max_request_bytes = 64 * 1024;
        c.limits.max_payload_bytes = 32 * 1024;
        c.limits.max_text_bytes = 16 * 1024;
    })
    .await;
    let (a, b) = (t.account("alice").await, t.account("bob").await);
    let r = t
        .user(&a)
        .send_message(pb::SendMessageRequest {
            recipient_id: b.id.clone(),
            payload: vec![0u8; 70 * 1024].into(),
            ..Default::default()
        })
        .await;
    let s = r.unwrap_err();
    // The decoder refuses the frame before any handler runs; the status names the setting.
    assert_eq!(s.code(), Code::ResourceExhausted, "{}", s.message());
    assert!(s.message().contains("65536"), "{}", s.message());
    assert!(
        s.message().contains("limits.max_request_bytes"),
        "{}",
        s.message()
    );
    // The server is fine afterwards.
    t.send(&a, &b, "still working").await;
}

#[tokio::test]
async fn a_failing_write_in_a_busy_batch_refuses_only_itself() {
    let t = TestServer::start().await;
    let (a, b) = (t.account("alice").await, t.account("bob").await);
    let nobody = uuid::Uuid::new_v4().to_string();
    // Sent all at once so that the store commits them together: the good ones must not pay
    // for the bad ones.
    let calls = (0..60).map(|i| {
        let mut u = t.user(&a);
        let to = if i % 5 == 0 {
            nobody.clone()
        } else {
            b.id.clone()
        };
        async move {
            u.send_message(pb::SendMessageRequest {
                recipient_id: to,
                text: format!("m{i}"),
                ..Default::default()
            })
            .await
        }
    });
    let results = futures::future::join_all(calls).await;
    let mut sent = Vec::new();
    for (i, r) in results.into_iter().enumerate() {
        if i % 5 == 0 {
            assert_status(r, Code::NotFound, "recipient_id");
        } else {
            sent.push(
                r.expect("a good send")
                    .into_inner()
                    .message
                    .expect("message")
                    .text,
            );
        }
    }
    assert_eq!(sent.len(), 48);
    let history = t.conversation(&a, &b).await;
    let mut stored: Vec<_> = history.into_iter().map(|m| m.text).collect();
    stored.sort();
    sent.sort();
    assert_eq!(stored, sent, "every acknowledged send, and nothing else");
}
