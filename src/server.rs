//! Starting and stopping a whole server: store, actors, services, listener.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, Addr};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tonic::transport::Server;
use tonic_health::ServingStatus;

use crate::actors::ActorRuntime;
use crate::actors::accounts::AccountsActor;
use crate::actors::bus::{CloseStreams, EventBusActor, LiveAccounts, Publish, SetPresenceListener};
use crate::actors::contact_pages::ContactPages;
use crate::actors::contacts::ContactsActor;
use crate::actors::messaging::MessagingActor;
use crate::actors::subscriber::{CloseReason, Subscriptions};
use crate::config::{AuthMode, Config, Engine, HandOffs, StorageConfig};
use crate::core::stats::{DeliveryStats, StoreStats};
use crate::core::time::now_micros;
use crate::core::tokens::{self, TokenIndex};
use crate::core::{AccountId, AccountRecord, PresenceStatus, TokenRecord};
use crate::grpc::admin::AdminService;
use crate::grpc::auth::Authenticator;
use crate::grpc::controller::ControllerService;
use crate::grpc::layer::CallLayer;
use crate::metrics::Metrics;
use crate::pb::phantom_admin_server::PhantomAdminServer;
use crate::pb::phantom_controller_server::PhantomControllerServer;
use crate::store::{EventSink, LsmStore, SqliteStore, Store, lsm, sqlite};
use crate::tls::TlsReloader;

/// The file a generated admin token is written to, inside the data dir.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// Where the server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A Unix socket path.
    Unix(PathBuf),
}

impl Listen {
    /// Parses `host:port` or `unix:/path`.
    pub fn parse(s: &str) -> Result<Listen, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(
                    "server.listen: `unix:` needs a path, as in unix:/run/phantom.sock".into(),
                );
            }
            return Ok(Listen::Unix(PathBuf::from(path)));
        }
        if let Ok(addr) = s.parse() {
            return Ok(Listen::Tcp(addr));
        }
        use std::net::ToSocketAddrs;
        s.to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .map(Listen::Tcp)
            .ok_or_else(|| format!("server.listen: {s:?} is neither host:port nor unix:/path"))
    }
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Tcp(a) => write!(f, "{a}"),
            Listen::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// A server that is up.
pub struct RunningServer {
    /// Where it actually listens (port 0 resolved).
    pub local_addr: Listen,
    /// Where `/metrics` is served, when `[metrics] listen` is set.
    pub metrics_addr: Option<SocketAddr>,
    tls: Option<Arc<TlsReloader>>,
    shutdown: Option<oneshot::Sender<()>>,
    done: JoinHandle<()>,
}

impl RunningServer {
    /// Drains and stops: health NOT_SERVING, streams end with UNAVAILABLE, in-flight unary calls
    /// finish, the store commits what is queued.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.done).await;
    }

    /// Re-reads the TLS certificate, key and client CA (SIGHUP). New connections use them;
    /// open ones keep theirs. On error the old ones stay in force.
    pub fn reload_tls(&self) -> Result<(), String> {
        match &self.tls {
            Some(tls) => tls.reload(),
            None => Err("TLS is not configured ([tls] cert and key)".into()),
        }
    }

    /// The TCP address, if listening on TCP.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        match &self.local_addr {
            Listen::Tcp(a) => Some(*a),
            Listen::Unix(_) => None,
        }
    }
}

/// Reads the admin token from the environment or the config, or from (or into) the data dir.
fn admin_token(cfg: &Config) -> Result<String, String> {
    if let Some(t) = cfg.admin_token_override() {
        return Ok(t);
    }
    let path = cfg.storage.data_dir.join(ADMIN_TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("{}: {e}", path.display())),
    }
    let token = tokens::generate().map_err(|e| format!("cannot generate admin token: {e}"))?;
    write_private(&path, &format!("{token}\n"))?;
    tracing::info!(path = %path.display(), "generated an admin token");
    Ok(token)
}

/// Writes a file only its owner can read.
fn write_private(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Finds or creates the `auth.local_account` account used under `mode = "none"`.
async fn local_account(
    store: &Arc<dyn Store>,
    accounts: &mut Vec<AccountRecord>,
    handle: &str,
) -> Result<AccountId, String> {
    let handle = handle.to_ascii_lowercase();
    if let Some(a) = accounts.iter().find(|a| a.handle == handle) {
        return Ok(a.id);
    }
    let id = uuid::Uuid::new_v4();
    // The account needs a first token; under mode none nobody uses it, so its secret is dropped.
    let secret = tokens::generate().map_err(|e| e.to_string())?;
    let token = TokenRecord {
        id: uuid::Uuid::new_v4(),
        account_id: id,
        hash: tokens::hash(&secret),
    };
    let record = AccountRecord {
        id,
        handle: handle.clone(),
        display_name: handle,
        created_at: now_micros(),
        status: PresenceStatus::Online,
        status_text: String::new(),
        last_seen: None,
        row: 0,
    };
    let created = store
        .create_account(record, token)
        .await
        .map_err(|e| format!("cannot create auth.local_account: {e}"))?;
    accounts.push(created);
    Ok(id)
}

/// Everything checked before anything starts: the config's values, the listen address, the
/// refusals of an unsafe exposure, and the TLS files. `--check-config` runs exactly this.
pub fn preflight(cfg: &Config) -> Result<(Listen, Option<Arc<TlsReloader>>), String> {
    cfg.validate()?;
    let listen = Listen::parse(&cfg.server.listen)?;
    let local = match &listen {
        Listen::Tcp(addr) => addr.ip().is_loopback(),
        Listen::Unix(_) => true,
    };
    if let Listen::Tcp(addr) = &listen
        && !local
        && !cfg.tls.enabled()
        && !cfg.server.allow_insecure
    {
        return Err(format!(
            "refusing to serve plaintext on non-loopback {addr}: set [tls] cert and key, \
             or [server] allow_insecure = true"
        ));
    }
    if cfg.auth.mode == AuthMode::None && !local {
        return Err(format!(
            "refusing [auth] mode = \"none\" on non-loopback {listen}: use mode = \"token\", \
             or a loopback address or unix:/path in [server] listen"
        ));
    }
    let tls = match (&listen, cfg.tls.enabled()) {
        (Listen::Tcp(_), true) => Some(TlsReloader::new(cfg.tls.clone())?),
        (Listen::Unix(_), true) => {
            return Err(
                "[tls] is set but [server] listen is a Unix socket: remove [tls], or listen on TCP"
                    .into(),
            );
        }
        (_, false) => None,
    };
    Ok((listen, tls))
}

/// Opens the configured engine. An engine is never started empty over the other's data: a
/// data dir that holds only the other engine's files is refused, naming the setting.
fn open_store(
    storage: &StorageConfig,
    sink: EventSink,
    retention: u64,
    stats: StoreStats,
    hand_offs: HandOffs,
) -> Result<Arc<dyn Store>, String> {
    let dir = &storage.data_dir;
    let has = |name: &str| dir.join(name).exists();
    let (mine, other, theirs) = match storage.engine {
        Engine::Lsm => (lsm::LSM_DIR, "sqlite", sqlite::DB_FILE),
        Engine::Sqlite => (sqlite::DB_FILE, "lsm", lsm::LSM_DIR),
    };
    if has(theirs) && !has(mine) {
        return Err(format!(
            "storage.engine: {} holds data of the {other:?} engine ({theirs}); set \
             storage.engine = {other:?} to serve it",
            dir.display()
        ));
    }
    let store: Arc<dyn Store> = match storage.engine {
        Engine::Lsm => Arc::new({
            let idle = storage.flush_when_idle_ms;
            let flush_when_idle = (idle > 0).then(|| Duration::from_millis(idle));
            LsmStore::open(dir, sink, retention, stats, hand_offs, flush_when_idle)
                .map_err(|e| e.to_string())?
        }),
        Engine::Sqlite => Arc::new(
            SqliteStore::open(dir, sink, retention, storage.checkpoint_pages, stats)
                .map_err(|e| e.to_string())?,
        ),
    };
    Ok(store)
}

/// Starts a server from a validated config. Returns once it is listening.
pub async fn start(cfg: Config) -> Result<RunningServer, String> {
    let (listen, tls) = preflight(&cfg)?;
    let admin_digest = tokens::digest(&admin_token(&cfg)?);

    let mut runtime =
        ActorRuntime::start(cfg.server.hand_offs, cfg.server.runtime).map_err(|e| e.to_string())?;
    let stats = Arc::new(DeliveryStats::default());
    let store_stats = StoreStats::default();
    let metrics = Metrics::new(&stats, &store_stats)?;
    let bus_stats = stats.clone();
    let live = LiveAccounts::default();
    let bus_live = live.clone();
    let bus: Addr<EventBusActor> = EventBusActor::start_in_arbiter(&runtime.arbiter, move |_| {
        EventBusActor::new(bus_stats, bus_live)
    });
    let sink_bus = bus.clone();
    // The bus only routes in memory, so it keeps up with the writer.
    let sink: EventSink = Box::new(move |mut events| {
        live.keep_live(&mut events);
        if !events.is_empty() {
            sink_bus.do_send(Publish(events));
        }
    });
    let store = open_store(
        &cfg.storage,
        sink,
        cfg.events.retention_per_account,
        store_stats,
        cfg.server.hand_offs,
    )?;
    let mut accounts = store.load_accounts().map_err(|e| e.to_string())?;
    let local = match cfg.auth.mode {
        AuthMode::None => {
            Some(local_account(&store, &mut accounts, &cfg.auth.local_account).await?)
        }
        AuthMode::Token => None,
    };
    let contact_rows = store.load_contacts().map_err(|e| e.to_string())?;
    let token_index = Arc::new(TokenIndex::new(
        store.load_tokens().map_err(|e| e.to_string())?,
    ));

    let contact_pages = Arc::new(ContactPages::default());
    let (s, b, p) = (store.clone(), bus.clone(), contact_pages.clone());
    let contacts = ContactsActor::start_in_arbiter(&runtime.arbiter, move |_| {
        ContactsActor::new(s, b, p, accounts, contact_rows)
    });
    bus.do_send(SetPresenceListener(contacts.clone().recipient()));
    let s = store.clone();
    let messaging =
        MessagingActor::start_in_arbiter(&runtime.arbiter, move |_| MessagingActor::new(s));
    let (s, t, c, b) = (
        store.clone(),
        token_index.clone(),
        contacts.clone(),
        bus.clone(),
    );
    let accounts_actor =
        AccountsActor::start_in_arbiter(&runtime.arbiter, move |_| AccountsActor::new(s, t, c, b));

    let auth = Arc::new(Authenticator::new(
        token_index,
        admin_digest,
        cfg.auth.mode,
        local,
    ));
    let subscriptions = Subscriptions {
        arbiter: runtime.arbiter.clone(),
        bus: bus.clone(),
        messaging: messaging.clone(),
        store: store.clone(),
        buffer: cfg.limits.subscriber_buffer,
        receipt_interval: std::time::Duration::from_millis(cfg.events.receipt_interval_ms),
        receipt_tick: Default::default(),
        stats: stats.clone(),
        tracker: tokio_util::task::TaskTracker::new(),
    };
    let streams = subscriptions.tracker.clone();
    let max_request = cfg.limits.max_request_bytes;
    let draining = tokio_util::sync::CancellationToken::new();
    let controller = PhantomControllerServer::new(ControllerService::new(
        auth.clone(),
        contacts,
        contact_pages,
        messaging,
        subscriptions,
        cfg.limits.clone(),
        draining.clone(),
    ))
    .max_decoding_message_size(max_request);
    let admin = PhantomAdminServer::new(AdminService::new(auth, accounts_actor, stats))
        .max_decoding_message_size(max_request);

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<PhantomControllerServer<ControllerService>>()
        .await;
    health.set_service_status("", ServingStatus::Serving).await;

    let (reflect_v1, reflect_v1alpha) = if cfg.server.reflection {
        let v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| e.to_string())?;
        let v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .map_err(|e| e.to_string())?;
        (Some(v1), Some(v1alpha))
    } else {
        (None, None)
    };

    let l = &cfg.limits;
    let router = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(l.keepalive_interval_secs)))
        .http2_keepalive_timeout(Some(Duration::from_secs(l.keepalive_timeout_secs)))
        .max_concurrent_streams(Some(l.max_streams_per_connection))
        .layer(CallLayer::new(
            Duration::from_millis(l.unary_deadline_ms),
            metrics.calls.clone(),
        ))
        .add_service(health_service)
        .add_service(controller)
        .add_service(admin)
        .add_optional_service(reflect_v1)
        .add_optional_service(reflect_v1alpha);

    let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
    let (drain_tx, drain_rx) = oneshot::channel::<()>();
    let grace = Duration::from_secs(cfg.server.shutdown_grace_secs);
    // On the shutdown signal: NOT_SERVING, end streams, then let tonic refuse new calls and
    // wait for in-flight ones.
    let signal = {
        let health = health.clone();
        let bus = bus.clone();
        async move {
            let _ = shutdown_rx.await;
            draining.cancel();
            health
                .set_service_status("", ServingStatus::NotServing)
                .await;
            health
                .set_not_serving::<PhantomControllerServer<ControllerService>>()
                .await;
            let _ = bus
                .send(CloseStreams {
                    token_id: None,
                    reason: CloseReason::Shutdown,
                })
                .await;
            let _ = drain_tx.send(());
        }
    };

    let (local_addr, serve): (Listen, ServeFuture) =
        match (bind(&listen, cfg.server.socket_mode).await?, &tls) {
            (Bound::Tcp(listener, local), Some(tls)) => (
                Listen::Tcp(local),
                Box::pin(router.serve_with_incoming_shutdown(
                    crate::tls::incoming(listener, tls.clone()).map(crate::net::coalesced),
                    signal,
                )),
            ),
            (Bound::Tcp(listener, local), None) => (
                Listen::Tcp(local),
                Box::pin(
                    router.serve_with_incoming_shutdown(
                        tonic::transport::server::TcpIncoming::from(listener)
                            .with_nodelay(Some(true))
                            .map(crate::net::coalesced),
                        signal,
                    ),
                ),
            ),
            (Bound::Unix(listener, path), _) => (
                Listen::Unix(path),
                Box::pin(
                    router.serve_with_incoming_shutdown(
                        tokio_stream::wrappers::UnixListenerStream::new(listener)
                            .map(crate::net::coalesced),
                        signal,
                    ),
                ),
            ),
        };
    let stop_metrics = tokio_util::sync::CancellationToken::new();
    let metrics_addr = match cfg.metrics.listen.as_str() {
        "" => None,
        addr => Some(
            crate::metrics::serve(addr, metrics, cfg.metrics.profiling, stop_metrics.clone())
                .await?,
        ),
    };
    tracing::info!(listen = %local_addr, data_dir = %cfg.storage.data_dir.display(), "phantom-grpc-api serving");

    let done = tokio::spawn(async move {
        let drained = async {
            let _ = drain_rx.await;
            tokio::time::sleep(grace).await;
        };
        tokio::select! {
            res = serve => if let Err(e) = res {
                tracing::error!(error = %e, "server stopped with an error");
            },
            _ = drained => tracing::warn!("shutdown grace period over; dropping remaining calls"),
        }
        // Streams are over; let their actors stop and record the receipts they owe.
        streams.close();
        if tokio::time::timeout(grace, streams.wait()).await.is_err() {
            tracing::warn!("event streams did not finish in the grace period");
        }
        let _ = tokio::task::spawn_blocking(move || {
            store.close();
            runtime.stop();
        })
        .await;
        stop_metrics.cancel();
        tracing::info!("phantom-grpc-api stopped");
    });

    Ok(RunningServer {
        local_addr,
        metrics_addr,
        tls,
        shutdown: Some(shutdown_tx),
        done,
    })
}

type ServeFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<(), tonic::transport::Error>> + Send>,
>;

/// A bound listener.
enum Bound {
    Tcp(tokio::net::TcpListener, SocketAddr),
    Unix(tokio::net::UnixListener, PathBuf),
}

/// Binds the listener (a Unix socket with `socket_mode`).
async fn bind(listen: &Listen, socket_mode: u32) -> Result<Bound, String> {
    match listen {
        Listen::Tcp(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("server.listen: cannot bind {addr}: {e}"))?;
            let local = listener.local_addr().map_err(|e| e.to_string())?;
            Ok(Bound::Tcp(listener, local))
        }
        Listen::Unix(path) => {
            prepare_socket_path(path)?;
            // Bound under a temporary name, given its mode, then renamed into place: a client
            // can never reach it through `path` with the umask's permissions.
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default();
            let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
            let _ = std::fs::remove_file(&tmp);
            let listener = tokio::net::UnixListener::bind(&tmp)
                .map_err(|e| format!("server.listen: cannot bind {}: {e}", path.display()))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(socket_mode))
                .and_then(|_| std::fs::rename(&tmp, path))
                .map_err(|e| format!("server.socket_mode: {}: {e}", path.display()))?;
            Ok(Bound::Unix(listener, path.clone()))
        }
    }
}

/// Removes a stale socket file left by a crashed run; refuses to take over a live one.
fn prepare_socket_path(path: &Path) -> Result<(), String> {
    if !path.exists() {
        return Ok(());
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(format!(
            "server.listen: {} is in use by a running server",
            path.display()
        ));
    }
    std::fs::remove_file(path)
        .map_err(|e| format!("{}: cannot remove stale socket: {e}", path.display()))
}
