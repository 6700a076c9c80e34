//! `AccountsActor`: accounts and tokens (the admin API). Token hashes are published to the
//! shared `TokenIndex` after they are durable, so authentication never reads the disk.

use std::sync::Arc;

use actix::prelude::*;
use uuid::Uuid;

use super::bus::{CloseStreams, EventBusActor};
use super::contacts::{AccountCreated, ContactsActor};
use super::subscriber::CloseReason;
use crate::core::events::account_view;
use crate::core::time::now_micros;
use crate::core::tokens::{self, TokenIndex};
use crate::core::{
    AccountId, AccountRecord, CoreError, CoreResult, Page, PageRequest, PresenceStatus, TokenRecord,
};
use crate::pb;
use crate::store::Store;

/// The accounts authority.
pub struct AccountsActor {
    store: Arc<dyn Store>,
    tokens: Arc<TokenIndex>,
    contacts: Addr<ContactsActor>,
    bus: Addr<EventBusActor>,
}

impl AccountsActor {
    /// An accounts actor.
    pub fn new(
        store: Arc<dyn Store>,
        tokens: Arc<TokenIndex>,
        contacts: Addr<ContactsActor>,
        bus: Addr<EventBusActor>,
    ) -> Self {
        AccountsActor {
            store,
            tokens,
            contacts,
            bus,
        }
    }
}

impl Actor for AccountsActor {
    type Context = Context<Self>;
}

type Reply<T> = ResponseActFuture<AccountsActor, CoreResult<T>>;

/// A fresh token for an account: the secret (shown once) and its record (hash only).
fn new_token(account_id: AccountId) -> CoreResult<(String, TokenRecord)> {
    let secret = tokens::generate().map_err(CoreError::internal)?;
    let record = TokenRecord {
        id: Uuid::new_v4(),
        account_id,
        hash: tokens::hash(&secret),
    };
    Ok((secret, record))
}

/// Creates an account with its first token.
#[derive(Message)]
#[rtype(result = "CoreResult<pb::CreateAccountResponse>")]
pub struct CreateAccount {
    /// Normalised handle.
    pub handle: String,
    /// Display name; empty means the handle.
    pub display_name: String,
}

impl Handler<CreateAccount> for AccountsActor {
    type Result = Reply<pb::CreateAccountResponse>;
    fn handle(&mut self, msg: CreateAccount, _: &mut Context<Self>) -> Self::Result {
        let id = Uuid::new_v4();
        let (secret, token) = match new_token(id) {
            Ok(t) => t,
            Err(e) => return Box::pin(actix::fut::ready(Err(e))),
        };
        let display_name = if msg.display_name.is_empty() {
            msg.handle.clone()
        } else {
            msg.display_name
        };
        let account = AccountRecord {
            id,
            handle: msg.handle,
            display_name,
            created_at: now_micros(),
            status: PresenceStatus::Online,
            status_text: String::new(),
            last_seen: None,
            row: 0,
        };
        Box::pin(
            self.store
                .create_account(account, token.clone())
                .into_actor(self)
                .map(move |res, act, _| {
                    let account = res?;
                    act.tokens.insert(&token);
                    act.contacts.do_send(AccountCreated(account.clone()));
                    Ok(pb::CreateAccountResponse {
                        account: Some(account_view(&account)),
                        token: secret,
                        token_id: token.id.to_string(),
                    })
                }),
        )
    }
}

/// Issues a further token.
#[derive(Message)]
#[rtype(result = "CoreResult<pb::IssueTokenResponse>")]
pub struct IssueToken(pub AccountId);

impl Handler<IssueToken> for AccountsActor {
    type Result = Reply<pb::IssueTokenResponse>;
    fn handle(&mut self, msg: IssueToken, _: &mut Context<Self>) -> Self::Result {
        let (secret, token) = match new_token(msg.0) {
            Ok(t) => t,
            Err(e) => return Box::pin(actix::fut::ready(Err(e))),
        };
        Box::pin(
            self.store
                .issue_token(token.clone())
                .into_actor(self)
                .map(move |res, act, _| {
                    res?;
                    act.tokens.insert(&token);
                    Ok(pb::IssueTokenResponse {
                        token: secret,
                        token_id: token.id.to_string(),
                    })
                }),
        )
    }
}

/// Revokes a token and ends its streams.
#[derive(Message)]
#[rtype(result = "CoreResult<()>")]
pub struct RevokeToken(pub Uuid);

impl Handler<RevokeToken> for AccountsActor {
    type Result = Reply<()>;
    fn handle(&mut self, msg: RevokeToken, _: &mut Context<Self>) -> Self::Result {
        Box::pin(
            self.store
                .revoke_token(msg.0)
                .into_actor(self)
                .map(move |res, act, _| {
                    let token = res?;
                    act.tokens.remove(&token.hash);
                    act.bus.do_send(CloseStreams {
                        token_id: Some(token.id),
                        reason: CloseReason::Revoked,
                    });
                    Ok(())
                }),
        )
    }
}

/// A page of accounts, oldest first.
#[derive(Message)]
#[rtype(result = "CoreResult<Page<pb::Account>>")]
pub struct ListAccounts(pub PageRequest);

impl Handler<ListAccounts> for AccountsActor {
    type Result = ResponseFuture<CoreResult<Page<pb::Account>>>;
    fn handle(&mut self, msg: ListAccounts, _: &mut Context<Self>) -> Self::Result {
        let page = self.store.list_accounts(msg.0);
        Box::pin(async move {
            let page = page.await?;
            Ok(Page {
                items: page.items.iter().map(account_view).collect(),
                next: page.next,
            })
        })
    }
}
