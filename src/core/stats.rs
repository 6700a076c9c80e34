//! Counters of the event delivery machinery and the store, shared by the actors, the store
//! and the gRPC layer. They are Prometheus metrics (atomics inside), so `GetServerStats` and
//! `/metrics` read the same numbers.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

fn counter(name: &str, help: &str) -> IntCounter {
    // Names are constants: a failure here is a programming error caught by any test.
    IntCounter::new(name, help).expect("valid metric name")
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric name")
}

fn gauge(name: &str, help: &str) -> IntGauge {
    IntGauge::new(name, help).expect("valid metric name")
}

fn histogram(name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect("valid metric")
}

/// Delivery counters, read by `PhantomAdmin.GetServerStats` and `/metrics`.
#[derive(Debug, Clone)]
pub struct DeliveryStats {
    /// Open event streams.
    pub open_streams: IntGauge,
    /// Accounts with at least one open stream.
    pub online_accounts: IntGauge,
    /// Events handed to streams.
    pub delivered: IntCounter,
    /// Ephemeral events replaced by a newer one for the same contact before a stream took them.
    pub conflated: IntCounter,
    /// Streams ended because they fell behind.
    pub slow_disconnects: IntCounter,
    /// Durable events a stream's actor was too busy to take live; it re-read them from the log.
    pub lagged: IntCounter,
}

impl Default for DeliveryStats {
    fn default() -> Self {
        DeliveryStats {
            open_streams: gauge("phantom_event_streams_open", "Open event streams."),
            online_accounts: gauge(
                "phantom_accounts_online",
                "Accounts with at least one open event stream.",
            ),
            delivered: counter(
                "phantom_events_delivered_total",
                "Events handed to event streams.",
            ),
            conflated: counter(
                "phantom_events_conflated_total",
                "Presence and typing events replaced by a newer one before a slow stream took them.",
            ),
            slow_disconnects: counter(
                "phantom_slow_subscriber_disconnects_total",
                "Event streams ended with RESOURCE_EXHAUSTED because their client fell behind.",
            ),
            lagged: counter(
                "phantom_events_repaired_total",
                "Durable events a stream re-read from the log after a burst instead of live.",
            ),
        }
    }
}

/// Bounds of the fsync histogram's buckets, seconds: 0.1 ms doubling to 3.3 s. Shared with the
/// load tool's durable echo, so that its fsyncs and the store's are counted alike.
pub fn sync_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(0.0001, 2.0, 16).unwrap_or_default()
}

/// Store writer figures.
#[derive(Debug, Clone)]
pub struct StoreStats {
    /// Jobs per committed transaction.
    pub batch_size: Histogram,
    /// Time to run and commit one batch (its fsync runs on the syncer, overlapping the next).
    pub commit_seconds: Histogram,
    /// Time of one fsync on the syncer thread (the LSM journal, or SQLite's WAL), which every
    /// batch waiting behind it shares.
    pub sync_seconds: Histogram,
    /// WAL checkpoints, by where they ran: `background` or `inline` (on the writer).
    pub checkpoints: IntCounterVec,
    /// Pages in the WAL after the last commit.
    pub wal_pages: IntGauge,
    /// Pages written to the WAL (each a 4 KiB frame): the store's write volume.
    pub wal_pages_written: IntCounter,
}

impl Default for StoreStats {
    fn default() -> Self {
        StoreStats {
            batch_size: histogram(
                "phantom_store_commit_batch_size",
                "Writes committed together in one transaction (group commit).",
                vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0],
            ),
            commit_seconds: histogram(
                "phantom_store_commit_duration_seconds",
                "Time to run and commit one batch (its fsync overlaps the next batch).",
                prometheus::exponential_buckets(0.0001, 2.0, 16).unwrap_or_default(),
            ),
            sync_seconds: histogram(
                "phantom_store_sync_duration_seconds",
                "Time of one fsync of the journal (lsm) or WAL (sqlite), shared by every batch waiting.",
                sync_buckets(),
            ),
            checkpoints: counter_vec(
                "phantom_store_checkpoints_total",
                "WAL checkpoints, by where they ran (background thread, or inline on the writer).",
                &["where"],
            ),
            wal_pages: gauge(
                "phantom_store_wal_pages",
                "Pages in the WAL after the last commit.",
            ),
            wal_pages_written: counter(
                "phantom_store_wal_pages_written_total",
                "Pages written to the WAL by commits (4 KiB each).",
            ),
        }
    }
}

impl DeliveryStats {
    /// Adds these metrics to `registry`.
    pub fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.open_streams.clone()))?;
        registry.register(Box::new(self.online_accounts.clone()))?;
        registry.register(Box::new(self.delivered.clone()))?;
        registry.register(Box::new(self.conflated.clone()))?;
        registry.register(Box::new(self.slow_disconnects.clone()))?;
        registry.register(Box::new(self.lagged.clone()))
    }
}

impl StoreStats {
    /// Adds these metrics to `registry`.
    pub fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.batch_size.clone()))?;
        registry.register(Box::new(self.commit_seconds.clone()))?;
        registry.register(Box::new(self.sync_seconds.clone()))?;
        registry.register(Box::new(self.checkpoints.clone()))?;
        registry.register(Box::new(self.wal_pages.clone()))?;
        registry.register(Box::new(self.wal_pages_written.clone()))
    }
}
