//! Counters of the event delivery machinery, shared by the bus and the subscribers.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Monotonic counters (and two gauges), read by `PhantomAdmin.GetServerStats`.
#[derive(Debug, Default)]
pub struct DeliveryStats {
    /// Open event streams (gauge).
    pub open_streams: AtomicU64,
    /// Accounts with at least one open stream (gauge).
    pub online_accounts: AtomicU64,
    /// Events handed to streams.
    pub delivered: AtomicU64,
    /// Ephemeral events replaced by a newer one for the same contact before a stream took them.
    pub conflated: AtomicU64,
    /// Streams ended because they fell behind.
    pub slow_disconnects: AtomicU64,
    /// Durable events a stream's actor was too busy to take live; it re-read them from the log.
    pub lagged: AtomicU64,
}

impl DeliveryStats {
    /// Adds one to a counter.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    /// Subtracts one from a gauge.
    pub fn drop_one(gauge: &AtomicU64) {
        gauge.fetch_sub(1, Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Relaxed)
    }
}
