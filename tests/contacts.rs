//! Contacts, profile, status and presence.

mod common;

use common::*;
use phantom::pb::{self, PresenceStatus};
use tonic::Code;

#[tokio::test]
async fn add_list_rename_remove() {
    let t = TestServer::start().await;
    let (a, b, c) = (
        t.account("alice").await,
        t.account("bob").await,
        t.account("carol").await,
    );
    let mut u = t.user(&a);

    let added = t.befriend(&a, &b).await;
    assert_eq!(added.contact_id, b.id);
    assert_eq!(added.handle, "bob");
    assert_eq!(added.display_name, "bob", "defaults to the peer's own name");
    assert_eq!(added.status, PresenceStatus::Offline as i32);
    assert!(added.added_at.is_some());
    let aliased = u
        .add_contact(pb::AddContactRequest {
            handle: "CAROL".into(),
            display_name: "Caz".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .contact
        .unwrap();
    assert_eq!(aliased.display_name, "Caz");

    let page = u
        .get_contacts(pb::GetContactsRequest {
            page_size: 1,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.contacts.len(), 1);
    assert_eq!(page.contacts[0].contact_id, b.id);
    let page2 = u
        .get_contacts(pb::GetContactsRequest {
            page_size: 1,
            page_token: page.next_page_token,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page2.contacts[0].contact_id, c.id);
    assert!(page2.next_page_token.is_empty());

    let renamed = u
        .update_contact(pb::UpdateContactRequest {
            contact_id: b.id.clone(),
            display_name: "Bobby".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .contact
        .unwrap();
    assert_eq!(renamed.display_name, "Bobby");
    let reset = u
        .update_contact(pb::UpdateContactRequest {
            contact_id: c.id.clone(),
            display_name: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .contact
        .unwrap();
    assert_eq!(reset.display_name, "carol");

    u.remove_contact(pb::RemoveContactRequest {
        contact_id: b.id.clone(),
    })
    .await
    .unwrap();
    let all = u
        .get_contacts(pb::GetContactsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.contacts.len(), 1);
    assert_eq!(all.contacts[0].contact_id, c.id);
    // Contacts are one-sided.
    let bobs = t
        .user(&b)
        .get_contacts(pb::GetContactsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(bobs.contacts.is_empty());
}

#[tokio::test]
async fn contact_errors_name_their_field() {
    let t = TestServer::start().await;
    let (a, b) = (t.account("alice").await, t.account("bob").await);
    let mut u = t.user(&a);
    let add = |handle: &str, name: &str| pb::AddContactRequest {
        handle: handle.into(),
        display_name: name.into(),
    };
    assert_status(
        u.add_contact(add("nobody", "")).await,
        Code::NotFound,
        "handle",
    );
    assert_status(
        u.add_contact(add("alice", "")).await,
        Code::InvalidArgument,
        "handle",
    );
    assert_status(
        u.add_contact(add("", "")).await,
        Code::InvalidArgument,
        "handle",
    );
    assert_status(
        u.add_contact(add("x!", "")).await,
        Code::InvalidArgument,
        "handle",
    );
    assert_status(
        u.add_contact(add("bob", &"n".repeat(65))).await,
        Code::InvalidArgument,
        "display_name",
    );
    t.befriend(&a, &b).await;
    assert_status(
        u.add_contact(add("bob", "")).await,
        Code::AlreadyExists,
        "handle",
    );

    let update = |id: &str| pb::UpdateContactRequest {
        contact_id: id.into(),
        display_name: "x".into(),
    };
    let stranger = uuid::Uuid::new_v4().to_string();
    assert_status(
        u.update_contact(update(&stranger)).await,
        Code::NotFound,
        "contact_id",
    );
    assert_status(
        u.update_contact(update("nope")).await,
        Code::InvalidArgument,
        "contact_id",
    );
    assert_status(
        u.update_contact(update("")).await,
        Code::InvalidArgument,
        "contact_id",
    );
    let r = u
        .remove_contact(pb::RemoveContactRequest {
            contact_id: stranger,
        })
        .await;
    assert_status(r, Code::NotFound, "contact_id");
    let r = u
        .get_contacts(pb::GetContactsRequest {
            page_size: -5,
            page_token: String::new(),
        })
        .await;
    assert_status(r, Code::InvalidArgument, "page_size");
    let r = u
        .get_contacts(pb::GetContactsRequest {
            page_size: 0,
            page_token: "bad token".into(),
        })
        .await;
    assert_status(r, Code::InvalidArgument, "page_token");
    // Nothing was lost on the way.
    let all = u
        .get_contacts(pb::GetContactsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.contacts.len(), 1);
}

/// Alice has Bob as a contact and watches her feed; Bob has one stream open and she saw him
/// come online.
struct Presence {
    t: TestServer,
    b: Account,
    alice: User,
    watch: Events,
    bob: User,
    bob_stream: Events,
}

async fn bob_online_for_alice() -> Presence {
    let t = TestServer::start().await;
    let (a, b) = (t.account("alice").await, t.account("bob").await);
    t.befriend(&a, &b).await;
    let mut alice = t.user(&a);
    let mut watch = Events::live(&mut alice).await;
    let mut bob = t.user(&b);
    let bob_stream = Events::live(&mut bob).await;
    watch.status_of(&b.id, PresenceStatus::Online).await;
    Presence {
        t,
        b,
        alice,
        watch,
        bob,
        bob_stream,
    }
}

#[tokio::test]
async fn presence_follows_open_streams() {
    let Presence {
        t: _server,
        b,
        mut alice,
        mut watch,
        mut bob,
        bob_stream: s1,
    } = bob_online_for_alice().await;
    let contacts = alice
        .get_contacts(pb::GetContactsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(contacts.contacts[0].status, PresenceStatus::Online as i32);
    assert!(
        contacts.contacts[0].last_seen.is_none(),
        "no last_seen while online"
    );

    // A second stream of the same account is the same presence: closing one keeps it online.
    let s2 = Events::live(&mut bob).await;
    drop(s1);
    // Bob goes away by hand: the change comes through, proving he is still seen as online.
    bob.set_status(pb::SetStatusRequest {
        status: PresenceStatus::Away as i32,
        status_text: "lunch".into(),
    })
    .await
    .unwrap();
    let away = watch.status_of(&b.id, PresenceStatus::Away).await;
    assert_eq!(away.status_text, "lunch");

    drop(s2);
    let off = watch.status_of(&b.id, PresenceStatus::Offline).await;
    assert!(off.last_seen.is_some(), "going offline sets last_seen");
    let contacts = alice
        .get_contacts(pb::GetContactsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(contacts.contacts[0].status, PresenceStatus::Offline as i32);
    assert!(contacts.contacts[0].last_seen.is_some());
    assert_eq!(contacts.contacts[0].status_text, "lunch");
}

#[tokio::test]
async fn profile_and_status() {
    let t = TestServer::start().await;
    let a = t.account("alice").await;
    let mut u = t.user(&a);
    let p = u
        .get_profile(pb::GetProfileRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p.account.unwrap().handle, "alice");
    assert_eq!(
        p.status,
        PresenceStatus::Offline as i32,
        "no stream: offline"
    );

    let _s = Events::live(&mut u).await;
    u.set_status(pb::SetStatusRequest {
        status: PresenceStatus::Busy as i32,
        status_text: "in a meeting".into(),
    })
    .await
    .unwrap();
    let p = u
        .get_profile(pb::GetProfileRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p.status, PresenceStatus::Busy as i32);
    assert_eq!(p.status_text, "in a meeting");

    let bad = |status: i32, text: &str| pb::SetStatusRequest {
        status,
        status_text: text.into(),
    };
    assert_status(
        u.set_status(bad(0, "")).await,
        Code::InvalidArgument,
        "status",
    );
    assert_status(
        u.set_status(bad(99, "")).await,
        Code::InvalidArgument,
        "status",
    );
    assert_status(
        u.set_status(bad(PresenceStatus::Online as i32, &"t".repeat(257)))
            .await,
        Code::InvalidArgument,
        "status_text",
    );
    let p = u
        .get_profile(pb::GetProfileRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        p.status_text, "in a meeting",
        "refused calls change nothing"
    );
}

#[tokio::test]
async fn invisible_shows_offline_to_contacts() {
    let Presence {
        t: _server,
        b,
        mut alice,
        mut watch,
        mut bob,
        bob_stream: _s,
    } = bob_online_for_alice().await;
    bob.set_status(pb::SetStatusRequest {
        status: PresenceStatus::Offline as i32,
        status_text: String::new(),
    })
    .await
    .unwrap();
    watch.status_of(&b.id, PresenceStatus::Offline).await;
    let c = alice
        .get_contacts(pb::GetContactsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(c.contacts[0].status, PresenceStatus::Offline as i32);
}

/// GetContacts serves pages the ContactsActor published; every change to what the owner sees
/// must drop them. Each step reads first (so a page is published), changes one thing, and
/// reads again.
#[tokio::test]
async fn published_pages_follow_every_change() {
    let t = TestServer::start().await;
    let (a, b, c) = (
        t.account("alice").await,
        t.account("bob").await,
        t.account("carol").await,
    );
    t.befriend(&a, &b).await;
    t.befriend(&a, &c).await;
    let mut alice = t.user(&a);
    let mut watch = Events::live(&mut alice).await;
    let read = async |size: i32, token: &str| {
        t.user(&a)
            .get_contacts(pb::GetContactsRequest {
                page_size: size,
                page_token: token.into(),
            })
            .await
            .unwrap()
            .into_inner()
    };
    let bob_of = |r: &pb::GetContactsResponse| {
        r.contacts
            .iter()
            .find(|x| x.contact_id == b.id)
            .cloned()
            .expect("bob listed")
    };

    // Pages of one, read twice: the second read (published) is the same.
    let first = read(1, "").await;
    assert_eq!(first.contacts.len(), 1);
    assert_eq!(read(1, "").await, first);
    let second = read(1, &first.next_page_token).await;
    assert_eq!(second.contacts[0].contact_id, c.id);
    assert!(second.next_page_token.is_empty());

    // Rename.
    assert_eq!(bob_of(&read(0, "").await).display_name, "bob");
    alice
        .update_contact(pb::UpdateContactRequest {
            contact_id: b.id.clone(),
            display_name: "Bobby".into(),
        })
        .await
        .unwrap();
    assert_eq!(bob_of(&read(0, "").await).display_name, "Bobby");
    assert_eq!(read(1, "").await.contacts[0].display_name, "Bobby");

    // Presence from a stream, then status and text, then going offline.
    let offline = PresenceStatus::Offline as i32;
    assert_eq!(bob_of(&read(0, "").await).status, offline);
    let mut bob = t.user(&b);
    let bob_stream = Events::live(&mut bob).await;
    watch.status_of(&b.id, PresenceStatus::Online).await;
    assert_eq!(
        bob_of(&read(0, "").await).status,
        PresenceStatus::Online as i32
    );
    bob.set_status(pb::SetStatusRequest {
        status: PresenceStatus::Busy as i32,
        status_text: "in a meeting".into(),
    })
    .await
    .unwrap();
    watch.status_of(&b.id, PresenceStatus::Busy).await;
    let busy = bob_of(&read(0, "").await);
    assert_eq!(busy.status, PresenceStatus::Busy as i32);
    assert_eq!(busy.status_text, "in a meeting");
    drop(bob_stream);
    watch.status_of(&b.id, PresenceStatus::Offline).await;
    let gone = bob_of(&read(0, "").await);
    assert_eq!(gone.status, offline);
    assert!(gone.last_seen.is_some());

    // Remove and add back.
    alice
        .remove_contact(pb::RemoveContactRequest {
            contact_id: c.id.clone(),
        })
        .await
        .unwrap();
    assert_eq!(read(0, "").await.contacts.len(), 1);
    assert!(read(1, "").await.next_page_token.is_empty());
    t.befriend(&a, &c).await;
    assert_eq!(read(0, "").await.contacts.len(), 2);
    assert!(!read(1, "").await.next_page_token.is_empty());

    // Another account's pages are its own.
    let carol_view = t
        .user(&c)
        .get_contacts(pb::GetContactsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(carol_view.contacts.is_empty());
}
