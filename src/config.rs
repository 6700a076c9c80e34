//! Configuration: `config.toml` (every key optional, unknown keys refused), overridden by
//! flags and by `PHANTOM_ADMIN_TOKEN`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Everything the server reads at start.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[server]`
    pub server: ServerConfig,
    /// `[storage]`
    pub storage: StorageConfig,
    /// `[auth]`
    pub auth: AuthConfig,
    /// `[limits]`
    pub limits: LimitsConfig,
    /// `[events]`
    pub events: EventsConfig,
    /// `[log]`
    pub log: LogConfig,
    /// `[tls]`
    pub tls: TlsConfig,
    /// `[metrics]`
    pub metrics: MetricsConfig,
}

/// `[tls]`: serve TLS (rustls) when `cert` and `key` are set; mutual TLS with `client_ca`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain of the server.
    pub cert: Option<PathBuf>,
    /// PEM private key of the server.
    pub key: Option<PathBuf>,
    /// PEM CA bundle; when set, clients must present a certificate it signed.
    pub client_ca: Option<PathBuf>,
}

impl TlsConfig {
    /// True when TLS is configured.
    pub fn enabled(&self) -> bool {
        self.cert.is_some()
    }
}

/// `[metrics]`: Prometheus text format over HTTP.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// `host:port` serving `GET /metrics`; empty: off.
    pub listen: String,
    /// Also serve CPU profiles of the process there (`GET /debug/pprof/profile?seconds=N`,
    /// `crate::profile`). Off by default: anyone who reaches the listener could take one.
    pub profiling: bool,
}

/// `[server]`: where and how to listen.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// `host:port`, or `unix:/path` for a Unix socket.
    pub listen: String,
    /// Serve gRPC server reflection (v1 and v1alpha).
    pub reflection: bool,
    /// Seconds in-flight calls get to finish on shutdown.
    pub shutdown_grace_secs: u64,
    /// Permit plaintext on a non-loopback TCP address.
    pub allow_insecure: bool,
    /// Permission bits of a Unix socket.
    pub socket_mode: u32,
    /// How the actors' thread and the store's writer are scheduled when a send wakes them.
    pub hand_offs: HandOffs,
    /// Which threads run the network, the handlers and the actors.
    pub runtime: RuntimeKind,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:50051".into(),
            reflection: true,
            shutdown_grace_secs: 10,
            allow_insecure: false,
            socket_mode: 0o600,
            hand_offs: HandOffs::Prompt,
            runtime: RuntimeKind::MultiThread,
        }
    }
}

/// How a woken hand-off thread (the actors', the LSM store's writer) gets a CPU
/// (`crate::sched`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum HandOffs {
    /// At once: it preempts the thread that woke it (a short slice). Messages are delivered
    /// soonest; the default.
    #[default]
    Prompt,
    /// When the CPU is free (`SCHED_BATCH`): fewer context switches per send and more sends
    /// per second; on some hosts later deliveries (BENCHMARKS.md, thirty-fourth to
    /// thirty-sixth sessions).
    Batched,
}

/// Which threads run the network, the gRPC handlers and the actors (`crate::runtime`). The
/// store's writer and syncer have threads of their own either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeKind {
    /// A tokio worker per core for the network and handlers; the actors on a thread of their
    /// own. The most calls per second; the default.
    #[default]
    MultiThread,
    /// One thread for the network, the handlers and the actors: no hand-off between them is a
    /// wake-up of another thread, so from a few thousand messages a second up a delivered
    /// message costs about a fifth less CPU (at a UI's pace little: there the store's fsyncs
    /// dominate), and a busy server answers fewer calls per second (BENCHMARKS.md,
    /// forty-second and forty-third sessions). For one core.
    SingleThread,
}

/// Which storage engine keeps the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// Log-structured (fjall) in `data_dir/lsm`: sequential writes, the fast default.
    #[default]
    Lsm,
    /// SQLite in WAL mode, `data_dir/phantom.db`: readable with `sqlite3`.
    Sqlite,
}

/// `[storage]`: where data lives.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// `lsm` or `sqlite`.
    pub engine: Engine,
    /// Directory of the data (created if missing).
    pub data_dir: PathBuf,
    /// WAL pages after which a background checkpoint copies them into the database; the
    /// writer finishes one itself at four times this (see `store::checkpointer`).
    pub checkpoint_pages: u32,
    /// `lsm` only: once nothing has been written for this many ms, the memtables are flushed
    /// (`store::lsm::memtables`); 0, the default, leaves them to fill. Off by default because
    /// the flush lands in the lull, where a load test may be measuring something else.
    pub flush_when_idle_ms: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            engine: Engine::Lsm,
            data_dir: PathBuf::from("data"),
            checkpoint_pages: 1000,
            flush_when_idle_ms: 0,
        }
    }
}

/// How controller calls are authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Bearer account tokens.
    #[default]
    Token,
    /// Every controller call acts as `local_account` (single-user daemon on a local socket).
    None,
}

/// `[auth]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// `token` or `none`.
    pub mode: AuthMode,
    /// Admin bearer token; `PHANTOM_ADMIN_TOKEN` wins. Empty: one is generated into the data dir.
    pub admin_token: String,
    /// Handle of the account used under `mode = "none"`; created on first start.
    pub local_account: String,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            mode: AuthMode::Token,
            admin_token: String::new(),
            local_account: "local".into(),
        }
    }
}

/// `[limits]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest `text` of a message, bytes.
    pub max_text_bytes: usize,
    /// Largest `payload` of a message, bytes.
    pub max_payload_bytes: usize,
    /// Events queued per stream before it counts as stalled.
    pub subscriber_buffer: usize,
    /// Largest request message the server decodes, bytes.
    pub max_request_bytes: usize,
    /// Concurrent HTTP/2 streams (calls) per connection.
    pub max_streams_per_connection: u32,
    /// Concurrent event streams (SubscribeToEvents and subscribed Connect) per account.
    pub max_event_streams_per_account: usize,
    /// SendMessage calls per second per account (token bucket refill rate).
    pub send_rate_per_sec: u32,
    /// SendMessage burst per account (token bucket size).
    pub send_burst: u32,
    /// Deadline of a unary call without a shorter client deadline, milliseconds.
    pub unary_deadline_ms: u64,
    /// Seconds between HTTP/2 keepalive pings to an idle peer.
    pub keepalive_interval_secs: u64,
    /// Seconds to wait for a ping's answer before dropping the connection.
    pub keepalive_timeout_secs: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_text_bytes: 16 * 1024,
            max_payload_bytes: 256 * 1024,
            subscriber_buffer: 1024,
            max_request_bytes: 512 * 1024,
            max_streams_per_connection: 256,
            max_event_streams_per_account: 16,
            send_rate_per_sec: 100,
            send_burst: 200,
            unary_deadline_ms: 30_000,
            keepalive_interval_secs: 30,
            keepalive_timeout_secs: 10,
        }
    }
}

/// `[events]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventsConfig {
    /// Durable events kept per account; older ones are pruned.
    pub retention_per_account: u64,
    /// A busy live stream holds the messages it handed out for at most this many milliseconds
    /// before it reports them DELIVERED; a quiet stream's first report goes at once. 0: after
    /// every batch.
    pub receipt_interval_ms: u64,
}

/// The largest `events.receipt_interval_ms`: a sender waits at most this long for DELIVERED.
pub const MAX_RECEIPT_INTERVAL_MS: u64 = 60_000;

/// The shortest lull `storage.flush_when_idle_ms` may name: under it, a pause between a
/// client's calls would flush a table of them.
pub const MIN_FLUSH_WHEN_IDLE_MS: u64 = 100;

/// The longest lull `storage.flush_when_idle_ms` may name (a day).
pub const MAX_FLUSH_WHEN_IDLE_MS: u64 = 86_400_000;

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            retention_per_account: 100_000,
            receipt_interval_ms: 10,
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[log]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter: `info`, `debug`, `phantom=debug,info`, ... (`RUST_LOG` wins).
    pub level: String,
    /// `text` or `json`.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

impl Config {
    /// Reads a config file. A missing file at the default path means the embedded defaults.
    pub fn load(path: &Path, required: bool) -> Result<Config, String> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(Config::default());
            }
            Err(e) => return Err(format!("{}: cannot read: {e}", path.display())),
        };
        Config::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses config text, refusing unknown keys and wrong types.
    pub fn parse(text: &str) -> Result<Config, String> {
        // One line naming the key and what it expects: "limits.send_burst: invalid type:
        // string \"lots\", expected u32 (line 2)".
        let at = |span: Option<std::ops::Range<usize>>| {
            span.map(|r| {
                let before = &text.as_bytes()[..r.start.min(text.len())];
                format!(
                    " (line {})",
                    before.iter().filter(|&&b| b == b'\n').count() + 1
                )
            })
            .unwrap_or_default()
        };
        let de = toml::Deserializer::parse(text)
            .map_err(|e| format!("{}{}", e.message(), at(e.span())))?;
        let cfg: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let what = inner.message().trim().replace('\n', " ");
            match path.as_str() {
                "" | "." => format!("{what}{}", at(inner.span())),
                _ => format!("{path}: {what}{}", at(inner.span())),
            }
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks values serde cannot.
    pub fn validate(&self) -> Result<(), String> {
        let l = &self.limits;
        for (key, v) in [
            ("limits.max_text_bytes", l.max_text_bytes as u64),
            ("limits.max_payload_bytes", l.max_payload_bytes as u64),
            ("limits.subscriber_buffer", l.subscriber_buffer as u64),
            ("limits.max_request_bytes", l.max_request_bytes as u64),
            (
                "limits.max_streams_per_connection",
                l.max_streams_per_connection as u64,
            ),
            (
                "limits.max_event_streams_per_account",
                l.max_event_streams_per_account as u64,
            ),
            ("limits.send_rate_per_sec", l.send_rate_per_sec as u64),
            ("limits.send_burst", l.send_burst as u64),
            ("limits.unary_deadline_ms", l.unary_deadline_ms),
            ("limits.keepalive_interval_secs", l.keepalive_interval_secs),
            ("limits.keepalive_timeout_secs", l.keepalive_timeout_secs),
            (
                "events.retention_per_account",
                self.events.retention_per_account,
            ),
            (
                "storage.checkpoint_pages",
                u64::from(self.storage.checkpoint_pages),
            ),
        ] {
            if v == 0 {
                return Err(format!("{key} must be greater than 0"));
            }
        }
        if l.max_request_bytes < l.max_text_bytes + l.max_payload_bytes {
            return Err(
                "limits.max_request_bytes must be at least max_text_bytes + max_payload_bytes"
                    .into(),
            );
        }
        let idle = self.storage.flush_when_idle_ms;
        if idle != 0 && !(MIN_FLUSH_WHEN_IDLE_MS..=MAX_FLUSH_WHEN_IDLE_MS).contains(&idle) {
            return Err(format!(
                "storage.flush_when_idle_ms must be 0 (off) or {MIN_FLUSH_WHEN_IDLE_MS} to \
                 {MAX_FLUSH_WHEN_IDLE_MS}, got {idle}"
            ));
        }
        if self.events.receipt_interval_ms > MAX_RECEIPT_INTERVAL_MS {
            return Err(format!(
                "events.receipt_interval_ms must be at most {MAX_RECEIPT_INTERVAL_MS}, got {}",
                self.events.receipt_interval_ms
            ));
        }
        if self.server.socket_mode > 0o777 {
            return Err(format!(
                "server.socket_mode must be permission bits (at most 0o777), got {:#o}",
                self.server.socket_mode
            ));
        }
        let t = &self.tls;
        if t.cert.is_some() != t.key.is_some() {
            return Err("tls.cert and tls.key must be set together".into());
        }
        if t.client_ca.is_some() && t.cert.is_none() {
            return Err("tls.client_ca needs tls.cert and tls.key".into());
        }
        if !self.metrics.listen.is_empty()
            && self.metrics.listen.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(format!(
                "metrics.listen must be host:port (e.g. 127.0.0.1:9090) or empty, got {:?}",
                self.metrics.listen
            ));
        }
        if self.metrics.profiling && self.metrics.listen.is_empty() {
            return Err("metrics.profiling needs metrics.listen, where profiles are served".into());
        }
        if self.auth.mode == AuthMode::None {
            crate::core::validate::handle("auth.local_account", &self.auth.local_account)
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// The admin token in force: `PHANTOM_ADMIN_TOKEN` wins over the file.
    pub fn admin_token_override(&self) -> Option<String> {
        std::env::var("PHANTOM_ADMIN_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
            .or_else(|| Some(self.auth.admin_token.clone()).filter(|t| !t.is_empty()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_config_parses_to_the_defaults() {
        let cfg = Config::parse(include_str!("../config.toml")).unwrap();
        assert_eq!(cfg.server.listen, "127.0.0.1:50051");
        assert_eq!(cfg.limits.max_text_bytes, 16 * 1024);
    }

    #[test]
    fn the_runtime_is_named_in_snake_case_and_checked() {
        let cfg = Config::parse("[server]\nruntime = \"single_thread\"\n").unwrap();
        assert_eq!(cfg.server.runtime, RuntimeKind::SingleThread);
        assert_eq!(Config::default().server.runtime, RuntimeKind::MultiThread);
        let e = Config::parse("[server]\nruntime = \"one\"\n").unwrap_err();
        assert!(e.contains("server.runtime"), "{e}");
    }

    #[test]
    fn the_default_local_account_is_a_valid_handle() {
        let mut cfg = Config::default();
        cfg.auth.mode = AuthMode::None;
        assert_eq!(cfg.validate(), Ok(()));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        assert!(Config::parse("[server]\nlisen = \"x\"").is_err());
        assert!(Config::parse("[limits]\nsubscriber_buffer = 0").is_err());
        assert!(Config::parse("[auth]\nmode = \"maybe\"").is_err());
        assert!(Config::parse("[tls]\ncert = \"c.pem\"").is_err());
        assert!(Config::parse("[tls]\nclient_ca = \"ca.pem\"").is_err());
        assert!(Config::parse("[server]\nsocket_mode = 0o1777").is_err());
        assert!(Config::parse("[metrics]\nlisten = \"nine\"").is_err());
        assert!(Config::parse("[metrics]\nprofiling = true").is_err());
        assert!(Config::parse("[metrics]\nlisten = \"127.0.0.1:0\"\nprofiling = true").is_ok());
        assert!(Config::parse("[limits]\nsend_rate_per_sec = 0").is_err());
        assert!(Config::parse("[events]\nreceipt_interval_ms = 60001").is_err());
        assert!(Config::parse("[events]\nreceipt_interval_ms = 0").is_ok());
    }

    #[test]
    fn flush_when_idle_is_off_or_a_lull_from_a_tenth_of_a_second_to_a_day() {
        let idle = |ms: u64| Config::parse(&format!("[storage]\nflush_when_idle_ms = {ms}"));
        assert_eq!(
            Config::default().storage.flush_when_idle_ms,
            0,
            "off by default"
        );
        for ms in [0, MIN_FLUSH_WHEN_IDLE_MS, 2000, MAX_FLUSH_WHEN_IDLE_MS] {
            assert_eq!(idle(ms).map(|c| c.storage.flush_when_idle_ms), Ok(ms));
        }
        for ms in [1, MIN_FLUSH_WHEN_IDLE_MS - 1, MAX_FLUSH_WHEN_IDLE_MS + 1] {
            let e = idle(ms).map(|_| ()).unwrap_err();
            assert!(e.contains("storage.flush_when_idle_ms"), "{e}");
        }
    }
}
