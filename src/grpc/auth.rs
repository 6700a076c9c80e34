//! Bearer-token authentication for both services.

use std::sync::{Arc, LazyLock};

use crate::config::AuthMode;
use crate::core::tokens::{TokenDigest, TokenIndex, digest};
use crate::core::{AccountId, Caller, CoreError, CoreResult};
use tonic::metadata::{AsciiMetadataKey, MetadataMap};

/// The key looked up on every call, made once: a lookup by `&str` parses the name first.
static AUTHORIZATION: LazyLock<AsciiMetadataKey> =
    LazyLock::new(|| AsciiMetadataKey::from_static("authorization"));

/// Decides who a call is.
pub struct Authenticator {
    tokens: Arc<TokenIndex>,
    admin: TokenDigest,
    mode: AuthMode,
    local_account: Option<AccountId>,
}

impl Authenticator {
    /// `admin` is the digest of the admin token; `local_account` is used under mode none.
    pub fn new(
        tokens: Arc<TokenIndex>,
        admin: TokenDigest,
        mode: AuthMode,
        local_account: Option<AccountId>,
    ) -> Self {
        Authenticator {
            tokens,
            admin,
            mode,
            local_account,
        }
    }

    /// The token digest from `authorization: Bearer <token>`.
    fn bearer_digest(md: &MetadataMap) -> CoreResult<TokenDigest> {
        let value = md.get(&*AUTHORIZATION).ok_or_else(|| {
            CoreError::Unauthenticated("missing `authorization: Bearer <token>` metadata".into())
        })?;
        let value = value.to_str().map_err(|_| {
            CoreError::Unauthenticated("authorization metadata is not ASCII".into())
        })?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                CoreError::Unauthenticated("authorization metadata must be `Bearer <token>`".into())
            })?;
        Ok(digest(token))
    }

    /// The account a `PhantomController` call acts as.
    pub fn controller(&self, md: &MetadataMap) -> CoreResult<Caller> {
        if let (AuthMode::None, Some(account_id)) = (self.mode, self.local_account) {
            return Ok(Caller {
                account_id,
                token_id: None,
            });
        }
        let h = Self::bearer_digest(md)?;
        if let Some((token_id, account_id)) = self.tokens.lookup(&h) {
            return Ok(Caller {
                account_id,
                token_id: Some(token_id),
            });
        }
        if h == self.admin {
            return Err(CoreError::PermissionDenied(
                "the admin token cannot call PhantomController; use an account token".into(),
            ));
        }
        Err(CoreError::Unauthenticated(
            "unknown or revoked token".into(),
        ))
    }

    /// Checks that a `PhantomAdmin` call carries the admin token.
    pub fn admin(&self, md: &MetadataMap) -> CoreResult<()> {
        let h = Self::bearer_digest(md)?;
        if h == self.admin {
            return Ok(());
        }
        if self.tokens.lookup(&h).is_some() {
            return Err(CoreError::PermissionDenied(
                "an account token cannot call PhantomAdmin; use the admin token".into(),
            ));
        }
        Err(CoreError::Unauthenticated("unknown admin token".into()))
    }
}
