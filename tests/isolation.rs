//! An account never sees or changes another account's contacts, messages or events, whatever
//! ids it sends.

mod common;

use common::*;
use phantom::pb::{self, event::Kind};
use tonic::Code;

#[tokio::test]
async fn a_second_account_learns_nothing_with_the_first_accounts_ids() {
    let t = TestServer::start().await;
    let (a, b, m) = (
        t.account("alice").await,
        t.account("bob").await,
        t.account("mallory").await,
    );
    t.befriend(&a, &b).await;
    let secret = t.send(&a, &b, "secret").await;
    let reply = t.send(&b, &a, "secret reply").await;
    let mut mal = t.user(&m);

    // Messages: only mallory's own conversations, whichever id she names.
    for peer in [&a.id, &b.id] {
        let list = mal
            .list_messages(pb::ListMessagesRequest {
                contact_id: peer.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(
            list.messages.is_empty(),
            "mallory sees none of alice and bob's messages"
        );
    }
    // Marking someone else's message read: not found, and it stays unread.
    for (contact, msg) in [
        (&a.id, &secret.message_id),
        (&b.id, &reply.message_id),
        (&b.id, &secret.message_id),
    ] {
        let r = mal
            .mark_read(pb::MarkReadRequest {
                contact_id: contact.clone(),
                up_to_message_id: msg.clone(),
            })
            .await;
        assert_status(r, Code::NotFound, "up_to_message_id");
    }
    // Contacts: alice's contact ids mean nothing in mallory's list.
    let r = mal
        .update_contact(pb::UpdateContactRequest {
            contact_id: b.id.clone(),
            display_name: "pwned".into(),
        })
        .await;
    assert_status(r, Code::NotFound, "contact_id");
    let r = mal
        .remove_contact(pb::RemoveContactRequest {
            contact_id: b.id.clone(),
        })
        .await;
    assert_status(r, Code::NotFound, "contact_id");
    let own = mal
        .get_contacts(pb::GetContactsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(own.contacts.is_empty());
    let p = mal
        .get_profile(pb::GetProfileRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p.account.unwrap().account_id, m.id);
    // A resume from 0 replays mallory's own (empty) log, not anyone else's.
    let mut s = Events::open(&mut mal, Some(0)).await;
    let started = s.started().await;
    assert_eq!(started.head_seq, 0);
    // A page token from alice's listing does not open alice's data to mallory.
    let alice_page = t
        .user(&a)
        .list_messages(pb::ListMessagesRequest {
            contact_id: b.id.clone(),
            page_size: 1,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let r = mal
        .list_messages(pb::ListMessagesRequest {
            contact_id: b.id.clone(),
            page_size: 1,
            page_token: alice_page.next_page_token,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.messages.is_empty());

    // Alice's data is untouched.
    let contacts = t
        .user(&a)
        .get_contacts(pb::GetContactsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(contacts.contacts.len(), 1);
    assert_eq!(contacts.contacts[0].display_name, "bob");
    let msgs = t
        .user(&b)
        .list_messages(pb::ListMessagesRequest {
            contact_id: a.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        msgs.messages
            .iter()
            .all(|m| m.state == pb::MessageState::Sent as i32)
    );
    // And mallory's feed got nothing from all this: her next event is her own.
    t.send(&b, &m, "for mallory").await;
    let ev = s.durable().await;
    assert_eq!(ev.seq, 1);
    match kind(&ev) {
        Kind::MessageReceived(x) => assert_eq!(x.message.as_ref().unwrap().recipient_id, m.id),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn presence_reaches_only_those_who_have_the_account_as_a_contact() {
    let t = TestServer::start().await;
    let (a, b, m) = (
        t.account("alice").await,
        t.account("bob").await,
        t.account("mallory").await,
    );
    t.befriend(&a, &b).await;
    let mut mal = Events::live(&mut t.user(&m)).await;
    let mut alice = Events::live(&mut t.user(&a)).await;
    let _bob = Events::live(&mut t.user(&b)).await;
    alice.status_of(&b.id, pb::PresenceStatus::Online).await;
    // Mallory (not bob's watcher) gets nothing; her next event is her own message.
    t.send(&a, &m, "ping").await;
    let ev = mal.event().await;
    assert!(matches!(kind(&ev), Kind::MessageReceived(_)), "got {ev:?}");
}
