//! Per-account limits the gRPC layer enforces before forwarding: the SendMessage rate (a token
//! bucket per account, `governor`) and the number of open event streams.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::LimitsConfig;
use crate::core::{AccountId, CoreError, CoreResult};

/// Account limits shared by every call.
pub struct AccountLimits {
    sends: DefaultKeyedRateLimiter<AccountId>,
    rate: u32,
    streams: Mutex<HashMap<AccountId, usize>>,
    max_streams: usize,
}

impl AccountLimits {
    /// From `[limits]` (validated: rates and counts are non-zero).
    pub fn new(cfg: &LimitsConfig) -> Arc<Self> {
        let per_sec = NonZeroU32::new(cfg.send_rate_per_sec).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(cfg.send_burst).unwrap_or(per_sec);
        Arc::new(AccountLimits {
            sends: RateLimiter::keyed(Quota::per_second(per_sec).allow_burst(burst)),
            rate: cfg.send_rate_per_sec,
            streams: Mutex::new(HashMap::new()),
            max_streams: cfg.max_event_streams_per_account,
        })
    }

    /// Takes one SendMessage token of `account`, or says when one will be there.
    pub fn send(&self, account: AccountId) -> CoreResult<()> {
        self.sends.check_key(&account).map_err(|not_until| {
            // Buckets of accounts that went quiet are full again: forget them now and then.
            if self.sends.len() > 100_000 {
                self.sends.retain_recent();
            }
            CoreError::RateLimited {
                what: format!(
                    "SendMessage rate limit of {} per second reached (limits.send_rate_per_sec)",
                    self.rate
                ),
                retry_after: not_until.wait_time_from(DefaultClock::default().now()),
            }
        })
    }

    /// Opens one event stream slot of `account`; the slot is freed when the permit drops.
    pub fn open_stream(self: &Arc<Self>, account: AccountId) -> CoreResult<StreamPermit> {
        let mut open = self
            .streams
            .lock()
            .map_err(|_| CoreError::internal("stream counter poisoned"))?;
        let n = open.entry(account).or_insert(0);
        if *n >= self.max_streams {
            return Err(CoreError::ResourceExhausted(format!(
                "this account has {} event streams open, the most allowed \
                 (limits.max_event_streams_per_account); close one first",
                *n
            )));
        }
        *n += 1;
        Ok(StreamPermit {
            limits: self.clone(),
            account,
        })
    }
}

/// One open event stream of an account.
pub struct StreamPermit {
    limits: Arc<AccountLimits>,
    account: AccountId,
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        if let Ok(mut open) = self.limits.streams.lock()
            && let Some(n) = open.get_mut(&self.account)
        {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.account);
            }
        }
    }
}
