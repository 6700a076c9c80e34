//! `phantom.v1.PhantomAdmin`.

use std::sync::Arc;

use actix::Addr;
use tonic::{Request, Response, Status};

use super::auth::Authenticator;
use super::{ask, observe};
use crate::actors::accounts::{self, AccountsActor};
use crate::core::CoreResult;
use crate::core::stats::DeliveryStats;
use crate::core::validate::{self, MAX_DISPLAY_NAME_CHARS};
use crate::pb::{self, phantom_admin_server::PhantomAdmin};

/// The operator-facing service.
pub struct AdminService {
    auth: Arc<Authenticator>,
    accounts: Addr<AccountsActor>,
    stats: Arc<DeliveryStats>,
}

impl AdminService {
    /// An admin service forwarding to the accounts actor and reading the delivery counters.
    pub fn new(
        auth: Arc<Authenticator>,
        accounts: Addr<AccountsActor>,
        stats: Arc<DeliveryStats>,
    ) -> Self {
        AdminService {
            auth,
            accounts,
            stats,
        }
    }

    /// Checks the admin token, then runs `work` inside `observe`.
    async fn call<Req, Resp, F>(
        &self,
        method: &'static str,
        req: Request<Req>,
        work: impl FnOnce(Req) -> F,
    ) -> Result<Response<Resp>, Status>
    where
        F: Future<Output = CoreResult<Resp>>,
    {
        let allowed = self.auth.admin(req.metadata());
        observe(method, None, async move {
            allowed?;
            work(req.into_inner()).await
        })
        .await
    }
}

#[tonic::async_trait]
impl PhantomAdmin for AdminService {
    async fn create_account(
        &self,
        req: Request<pb::CreateAccountRequest>,
    ) -> Result<Response<pb::CreateAccountResponse>, Status> {
        self.call("CreateAccount", req, |r| async move {
            let handle = validate::handle("handle", &r.handle)?;
            validate::text("display_name", &r.display_name, MAX_DISPLAY_NAME_CHARS)?;
            ask(
                &self.accounts,
                accounts::CreateAccount {
                    handle,
                    display_name: r.display_name.trim().to_string(),
                },
            )
            .await
        })
        .await
    }

    async fn issue_token(
        &self,
        req: Request<pb::IssueTokenRequest>,
    ) -> Result<Response<pb::IssueTokenResponse>, Status> {
        self.call("IssueToken", req, |r| async move {
            let account = validate::uuid("account_id", &r.account_id)?;
            ask(&self.accounts, accounts::IssueToken(account)).await
        })
        .await
    }

    async fn revoke_token(
        &self,
        req: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        self.call("RevokeToken", req, |r| async move {
            let token = validate::uuid("token_id", &r.token_id)?;
            ask(&self.accounts, accounts::RevokeToken(token)).await?;
            Ok(pb::RevokeTokenResponse {})
        })
        .await
    }

    async fn list_accounts(
        &self,
        req: Request<pb::ListAccountsRequest>,
    ) -> Result<Response<pb::ListAccountsResponse>, Status> {
        self.call("ListAccounts", req, |r| async move {
            let page = validate::page(r.page_size, &r.page_token)?;
            let (accounts, next_page_token) = ask(&self.accounts, accounts::ListAccounts(page))
                .await?
                .into_parts();
            Ok(pb::ListAccountsResponse {
                accounts,
                next_page_token,
            })
        })
        .await
    }

    async fn get_server_stats(
        &self,
        req: Request<pb::GetServerStatsRequest>,
    ) -> Result<Response<pb::GetServerStatsResponse>, Status> {
        self.call("GetServerStats", req, |_| async move {
            let s = &self.stats;
            Ok(pb::GetServerStatsResponse {
                open_streams: s.open_streams.get().max(0) as u64,
                online_accounts: s.online_accounts.get().max(0) as u64,
                events_delivered: s.delivered.get(),
                events_conflated: s.conflated.get(),
                slow_subscriber_disconnects: s.slow_disconnects.get(),
                events_repaired: s.lagged.get(),
            })
        })
        .await
    }
}
