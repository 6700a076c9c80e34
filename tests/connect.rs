//! Connect: commands answered by request_id, errors in-band, events interleaved.

mod common;

use common::*;
use phantom::pb::{self, client_frame::Body as C, event::Kind, server_frame::Body as S};
use tokio::sync::mpsc;
use tonic::Code;

/// One Connect stream.
struct Conn {
    tx: mpsc::Sender<pb::ClientFrame>,
    rx: tonic::Streaming<pb::ServerFrame>,
    /// Events seen while waiting for answers.
    events: Vec<pb::Event>,
}

impl Conn {
    async fn open(user: &mut User) -> Conn {
        let (tx, rx) = open_connect(user, 64).await;
        Conn {
            tx,
            rx,
            events: Vec::new(),
        }
    }

    async fn send(&self, request_id: &str, body: C) {
        self.tx
            .send(pb::ClientFrame {
                request_id: request_id.into(),
                body: Some(body),
            })
            .await
            .expect("stream open");
    }

    async fn frame(&mut self) -> Result<Option<pb::ServerFrame>, tonic::Status> {
        tokio::time::timeout(WAIT, self.rx.message())
            .await
            .expect("timed out waiting for a frame")
    }

    /// The answer to `request_id` (events seen meanwhile are kept).
    async fn answer(&mut self, request_id: &str) -> S {
        loop {
            let f = self
                .frame()
                .await
                .expect("stream error")
                .expect("stream ended");
            match f.body.expect("body") {
                S::Event(ev) => self.events.push(ev),
                body => {
                    assert_eq!(f.request_id, request_id, "answers come in command order");
                    return body;
                }
            }
        }
    }

    /// The next event frame, with its request id.
    async fn event(&mut self) -> (String, pb::Event) {
        if !self.events.is_empty() {
            return (String::new(), self.events.remove(0));
        }
        loop {
            let f = self
                .frame()
                .await
                .expect("stream error")
                .expect("stream ended");
            if let Some(S::Event(ev)) = f.body {
                return (f.request_id, ev);
            }
        }
    }

    async fn durable(&mut self) -> pb::Event {
        loop {
            let (_, ev) = self.event().await;
            if ev.seq != 0 {
                return ev;
            }
        }
    }
}

#[tokio::test]
async fn commands_are_answered_by_request_id_with_events_interleaved() {
    let t = TestServer::start().await;
    let (a, b) = (t.account("alice").await, t.account("bob").await);
    let mut c = Conn::open(&mut t.user(&a)).await;
    c.send("sub-1", C::Subscribe(pb::EventsRequest { after_seq: None }))
        .await;
    let (rid, first) = c.event().await;
    assert_eq!(rid, "sub-1", "the feed carries its subscribe's request_id");
    assert!(matches!(first.kind, Some(Kind::SubscriptionStarted(_))));

    c.send(
        "send-1",
        C::SendMessage(pb::SendMessageRequest {
            recipient_id: b.id.clone(),
            text: "over connect".into(),
            ..Default::default()
        }),
    )
    .await;
    let S::SendMessage(sent) = c.answer("send-1").await else {
        panic!("expected a send_message answer")
    };
    let m = sent.message.unwrap();
    assert_eq!(m.text, "over connect");
    // Our own MessageSent arrives on the feed.
    let ev = c.durable().await;
    assert_eq!(ev.seq, 1);
    assert!(
        matches!(kind(&ev), Kind::MessageSent(x) if x.message.as_ref().unwrap().message_id == m.message_id)
    );

    // A message from bob arrives as an event; mark it read over the same stream.
    let reply = t.send(&b, &a, "reply").await;
    let ev = c.durable().await;
    assert!(matches!(kind(&ev), Kind::MessageReceived(_)));
    c.send(
        "read-1",
        C::MarkRead(pb::MarkReadRequest {
            contact_id: b.id.clone(),
            up_to_message_id: reply.message_id.clone(),
        }),
    )
    .await;
    let S::MarkRead(r) = c.answer("read-1").await else {
        panic!("expected a mark_read answer")
    };
    assert_eq!(r.updated, 1);

    c.send(
        "status-1",
        C::SetStatus(pb::SetStatusRequest {
            status: pb::PresenceStatus::Busy as i32,
            status_text: "coding".into(),
        }),
    )
    .await;
    assert!(matches!(c.answer("status-1").await, S::SetStatus(_)));
    let p = t
        .user(&a)
        .get_profile(pb::GetProfileRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        p.status,
        pb::PresenceStatus::Busy as i32,
        "a subscribed Connect is a live stream"
    );
}

#[tokio::test]
async fn failed_commands_answer_in_band_and_the_stream_goes_on() {
    use prost::Message as _;
    let t = TestServer::start().await;
    let (a, b) = (t.account("alice").await, t.account("bob").await);
    let mut c = Conn::open(&mut t.user(&a)).await;

    c.send(
        "e1",
        C::SendMessage(pb::SendMessageRequest {
            recipient_id: uuid::Uuid::new_v4().to_string(),
            text: "x".into(),
            ..Default::default()
        }),
    )
    .await;
    let S::Error(e) = c.answer("e1").await else {
        panic!("expected an error")
    };
    assert_eq!(e.code, Code::NotFound as i32);
    assert!(e.message.contains("recipient_id"), "{}", e.message);

    c.send(
        "e2",
        C::SendMessage(pb::SendMessageRequest {
            recipient_id: b.id.clone(),
            ..Default::default()
        }),
    )
    .await;
    let S::Error(e) = c.answer("e2").await else {
        panic!("expected an error")
    };
    assert_eq!(e.code, Code::InvalidArgument as i32);
    assert!(e.message.contains("text"));
    // The BadRequest detail travels in-band too.
    let bad = tonic_types::pb::BadRequest::decode(&e.details[0].value[..]).unwrap();
    assert_eq!(bad.field_violations[0].field, "text");

    c.tx.send(pb::ClientFrame {
        request_id: "e3".into(),
        body: None,
    })
    .await
    .unwrap();
    let S::Error(e) = c.answer("e3").await else {
        panic!("expected an error")
    };
    assert_eq!(e.code, Code::InvalidArgument as i32);
    assert!(e.message.contains("body"));

    c.send(
        "e4",
        C::Typing(pb::TypingRequest {
            contact_id: "nope".into(),
            typing: true,
        }),
    )
    .await;
    let S::Error(e) = c.answer("e4").await else {
        panic!("expected an error")
    };
    assert_eq!(e.code, Code::InvalidArgument as i32);
    assert!(e.message.contains("contact_id"));

    c.send("e5", C::SetStatus(pb::SetStatusRequest::default()))
        .await;
    let S::Error(e) = c.answer("e5").await else {
        panic!("expected an error")
    };
    assert_eq!(e.code, Code::InvalidArgument as i32);

    c.send("s1", C::Subscribe(pb::EventsRequest { after_seq: None }))
        .await;
    c.send("s2", C::Subscribe(pb::EventsRequest { after_seq: None }))
        .await;
    let S::Error(e) = c.answer("s2").await else {
        panic!("expected an error")
    };
    assert_eq!(e.code, Code::FailedPrecondition as i32);
    assert!(e.message.contains("subscribe"));

    // Still going: a good command works and nothing was stored by the bad ones.
    c.send(
        "ok",
        C::SendMessage(pb::SendMessageRequest {
            recipient_id: b.id.clone(),
            text: "fine".into(),
            ..Default::default()
        }),
    )
    .await;
    assert!(matches!(c.answer("ok").await, S::SendMessage(_)));
    let list = t
        .user(&a)
        .list_messages(pb::ListMessagesRequest {
            contact_id: b.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.messages.len(), 1);
}

#[tokio::test]
async fn typing_reaches_the_contact_as_an_ephemeral_event() {
    let t = TestServer::start().await;
    let (a, b) = (t.account("alice").await, t.account("bob").await);
    let mut bob = Events::live(&mut t.user(&b)).await;
    let c = Conn::open(&mut t.user(&a)).await;
    c.send(
        "t1",
        C::Typing(pb::TypingRequest {
            contact_id: b.id.clone(),
            typing: true,
        }),
    )
    .await;
    let ev = bob.event().await;
    assert_eq!(ev.seq, 0, "typing is ephemeral");
    match kind(&ev) {
        Kind::TypingChanged(x) => {
            assert_eq!(x.contact_id, a.id);
            assert!(x.typing);
        }
        other => panic!("expected TypingChanged, got {other:?}"),
    }
    // Never replayed.
    let mut again = Events::open(&mut t.user(&b), Some(0)).await;
    assert_eq!(again.started().await.head_seq, 0);
}

#[tokio::test]
async fn connect_is_authenticated_and_ends_on_revocation_and_shutdown() {
    let mut t = TestServer::start().await;
    let a = t.account("alice").await;
    let r = t
        .anonymous()
        .connect(futures::stream::pending::<pb::ClientFrame>())
        .await;
    assert_eq!(r.unwrap_err().code(), Code::Unauthenticated);

    // Revocation ends an unsubscribed Connect at its next command, and a subscribed one at once.
    let extra = t
        .admin()
        .issue_token(pb::IssueTokenRequest {
            account_id: a.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut idle = Conn::open(&mut t.user_token(&extra.token)).await;
    let mut fed = Conn::open(&mut t.user_token(&extra.token)).await;
    fed.send("s", C::Subscribe(pb::EventsRequest { after_seq: None }))
        .await;
    fed.event().await;
    t.admin()
        .revoke_token(pb::RevokeTokenRequest {
            token_id: extra.token_id,
        })
        .await
        .unwrap();
    let end = fed.frame().await.expect_err("revoked");
    assert_eq!(end.code(), Code::Unauthenticated);
    idle.send(
        "x",
        C::SetStatus(pb::SetStatusRequest {
            status: 2,
            status_text: String::new(),
        }),
    )
    .await;
    let end = idle.frame().await.expect_err("revoked");
    assert_eq!(end.code(), Code::Unauthenticated);

    // Shutdown ends Connect streams, subscribed or not, with UNAVAILABLE.
    let mut idle = Conn::open(&mut t.user(&a)).await;
    let mut fed = Conn::open(&mut t.user(&a)).await;
    fed.send("s", C::Subscribe(pb::EventsRequest { after_seq: None }))
        .await;
    fed.event().await;
    // Make sure the idle stream is being served before the shutdown.
    idle.send(
        "st",
        C::SetStatus(pb::SetStatusRequest {
            status: 2,
            status_text: String::new(),
        }),
    )
    .await;
    idle.answer("st").await;
    let stopping = tokio::spawn(t.server.take().unwrap().shutdown());
    assert_eq!(
        fed.frame().await.expect_err("drained").code(),
        Code::Unavailable
    );
    assert_eq!(
        idle.frame().await.expect_err("drained").code(),
        Code::Unavailable
    );
    stopping.await.unwrap();
}
