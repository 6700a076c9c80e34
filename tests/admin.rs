//! PhantomAdmin: accounts and tokens, and authentication of both services.

mod common;

use common::*;
use phantom::config::Engine;
use phantom::pb;
use tonic::Code;

#[tokio::test]
async fn create_account_returns_account_and_working_token() {
    let t = TestServer::start().await;
    let r = t
        .admin()
        .create_account(pb::CreateAccountRequest {
            handle: "Alice".into(),
            display_name: "Alice A.".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let a = r.account.unwrap();
    assert_eq!(a.handle, "alice", "handles are lower-cased");
    assert_eq!(a.display_name, "Alice A.");
    assert!(uuid::Uuid::parse_str(&a.account_id).is_ok());
    assert!(a.created_at.is_some());
    assert!(uuid::Uuid::parse_str(&r.token_id).is_ok());
    let p = t
        .user_token(&r.token)
        .get_profile(pb::GetProfileRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p.account.unwrap().account_id, a.account_id);
}

#[tokio::test]
async fn create_account_rejects_bad_and_duplicate_handles() {
    let t = TestServer::start().await;
    let mut admin = t.admin();
    for bad in [
        "",
        "ab",
        &"x".repeat(33),
        "has space",
        "émile",
        "semi;colon",
    ] {
        let r = admin
            .create_account(pb::CreateAccountRequest {
                handle: bad.into(),
                display_name: String::new(),
            })
            .await;
        assert_status(r, Code::InvalidArgument, "handle");
    }
    t.account("carol").await;
    let r = admin
        .create_account(pb::CreateAccountRequest {
            handle: "CAROL".into(),
            display_name: String::new(),
        })
        .await;
    assert_status(r, Code::AlreadyExists, "handle");
    let r = admin
        .create_account(pb::CreateAccountRequest {
            handle: "dave".into(),
            display_name: "d".repeat(65),
        })
        .await;
    assert_status(r, Code::InvalidArgument, "display_name");
    // The refused calls created nothing.
    let list = admin
        .list_accounts(pb::ListAccountsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.accounts.len(), 1);
}

#[tokio::test]
async fn issue_and_revoke_tokens() {
    let t = TestServer::start().await;
    let a = t.account("alice").await;
    let mut admin = t.admin();
    let issued = admin
        .issue_token(pb::IssueTokenRequest {
            account_id: a.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_ne!(issued.token, a.token);
    let profile = t
        .user_token(&issued.token)
        .get_profile(pb::GetProfileRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(profile.account.unwrap().account_id, a.id);

    admin
        .revoke_token(pb::RevokeTokenRequest {
            token_id: issued.token_id.clone(),
        })
        .await
        .unwrap();
    let r = t
        .user_token(&issued.token)
        .get_profile(pb::GetProfileRequest {})
        .await;
    assert_eq!(r.unwrap_err().code(), Code::Unauthenticated);
    // The other token of the account still works.
    t.user(&a)
        .get_profile(pb::GetProfileRequest {})
        .await
        .unwrap();

    let r = admin
        .revoke_token(pb::RevokeTokenRequest {
            token_id: issued.token_id,
        })
        .await;
    assert_status(r, Code::NotFound, "token_id");
    let r = admin
        .revoke_token(pb::RevokeTokenRequest {
            token_id: uuid::Uuid::new_v4().to_string(),
        })
        .await;
    assert_status(r, Code::NotFound, "token_id");
    let r = admin
        .revoke_token(pb::RevokeTokenRequest {
            token_id: "not-a-uuid".into(),
        })
        .await;
    assert_status(r, Code::InvalidArgument, "token_id");
    let r = admin
        .issue_token(pb::IssueTokenRequest {
            account_id: uuid::Uuid::new_v4().to_string(),
        })
        .await;
    assert_status(r, Code::NotFound, "account_id");
    let r = admin
        .issue_token(pb::IssueTokenRequest {
            account_id: String::new(),
        })
        .await;
    assert_status(r, Code::InvalidArgument, "account_id");
}

#[tokio::test]
async fn list_accounts_pages_in_creation_order() {
    let t = TestServer::start().await;
    let mut made = Vec::new();
    for i in 0..5 {
        made.push(t.account(&format!("user{i}")).await.id);
    }
    let mut admin = t.admin();
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let r = admin
            .list_accounts(pb::ListAccountsRequest {
                page_size: 2,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(r.accounts.len() <= 2);
        seen.extend(r.accounts.into_iter().map(|a| a.account_id));
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    assert_eq!(seen, made);
    let r = admin
        .list_accounts(pb::ListAccountsRequest {
            page_size: -1,
            page_token: String::new(),
        })
        .await;
    assert_status(r, Code::InvalidArgument, "page_size");
    let r = admin
        .list_accounts(pb::ListAccountsRequest {
            page_size: 0,
            page_token: "forged".into(),
        })
        .await;
    assert_status(r, Code::InvalidArgument, "page_token");
}

#[tokio::test]
async fn tokens_are_checked_on_both_services() {
    let t = TestServer::start().await;
    let a = t.account("alice").await;

    let r = t.anonymous().get_profile(pb::GetProfileRequest {}).await;
    assert_status(r, Code::Unauthenticated, "authorization");
    let r = t
        .user_token("phm_unknown")
        .get_profile(pb::GetProfileRequest {})
        .await;
    assert_eq!(r.unwrap_err().code(), Code::Unauthenticated);
    let r = t
        .user_token(ADMIN)
        .get_profile(pb::GetProfileRequest {})
        .await;
    assert_status(r, Code::PermissionDenied, "admin token");
    // Streams are authenticated too.
    let r = t
        .anonymous()
        .subscribe_to_events(pb::EventsRequest::default())
        .await;
    assert_eq!(r.unwrap_err().code(), Code::Unauthenticated);

    let r = t
        .admin_as(&a.token)
        .list_accounts(pb::ListAccountsRequest::default())
        .await;
    assert_status(r, Code::PermissionDenied, "account token");
    let r = t
        .admin_as("wrong-admin")
        .list_accounts(pb::ListAccountsRequest::default())
        .await;
    assert_eq!(r.unwrap_err().code(), Code::Unauthenticated);
}

/// Every byte of every file under `dir`.
fn all_bytes(dir: &std::path::Path) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(all_bytes(&path));
        } else {
            out.extend(std::fs::read(&path).unwrap_or_default());
        }
    }
    out
}

#[tokio::test]
async fn tokens_are_stored_hashed() {
    for engine in [Engine::Lsm, Engine::Sqlite] {
        let t = TestServer::start_with(|c| c.storage.engine = engine).await;
        let a = t.account("alice-stored").await;
        let bytes = all_bytes(&t.data_dir());
        let has = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
        // The files do hold the account: the search below looks where the data is.
        assert!(has(b"alice-stored"), "{engine:?}: the account is on disk");
        assert!(
            !has(a.token.as_bytes()),
            "{engine:?}: the plaintext token must never reach the disk"
        );
    }
}

#[tokio::test]
async fn mode_none_acts_as_the_local_account() {
    let t = TestServer::start_with(|c| {
        c.auth.mode = phantom::config::AuthMode::None;
        c.auth.local_account = "desktop".into();
    })
    .await;
    let p = t
        .anonymous()
        .get_profile(pb::GetProfileRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p.account.unwrap().handle, "desktop");
    // Admin calls still need the admin token.
    let r = t
        .admin_as("nothing")
        .list_accounts(pb::ListAccountsRequest::default())
        .await;
    assert_eq!(r.unwrap_err().code(), Code::Unauthenticated);
    let list = t
        .admin()
        .list_accounts(pb::ListAccountsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.accounts.len(), 1, "local account created once");
}
