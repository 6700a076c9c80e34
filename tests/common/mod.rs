//! A real server on a real socket (port 0, temp data dir), driven by the generated clients.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use phantom::config::Config;
use phantom::pb::{
    self, phantom_admin_client::PhantomAdminClient,
    phantom_controller_client::PhantomControllerClient,
};
use phantom::server::{self, RunningServer};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::{Interceptor, interceptor::InterceptedService};
use tonic::transport::Channel;
use tonic::{Code, Status};

/// The admin token every test server uses.
pub const ADMIN: &str = "test-admin-token-0123456789";

/// Adds a bearer token to every call.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    pub fn new(token: &str) -> Self {
        Bearer(Some(
            format!("Bearer {token}").parse().expect("ascii token"),
        ))
    }
    pub fn none() -> Self {
        Bearer(None)
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

pub type User = PhantomControllerClient<InterceptedService<Channel, Bearer>>;
pub type Admin = PhantomAdminClient<InterceptedService<Channel, Bearer>>;

/// An account made for a test.
#[derive(Clone, Debug)]
pub struct Account {
    pub id: String,
    pub handle: String,
    pub token: String,
    pub token_id: String,
}

/// A server under test.
pub struct TestServer {
    pub server: Option<RunningServer>,
    pub dir: tempfile::TempDir,
    pub config: Config,
    pub channel: Channel,
}

/// A config for a test server in `dir`.
pub fn test_config(dir: &std::path::Path) -> Config {
    let mut cfg = Config::default();
    cfg.server.listen = "127.0.0.1:0".into();
    cfg.storage.data_dir = dir.join("data");
    cfg.auth.admin_token = ADMIN.into();
    cfg.server.shutdown_grace_secs = 5;
    // Load tests send thousands per account; the rate limit has its own test.
    cfg.limits.send_rate_per_sec = 1_000_000;
    cfg.limits.send_burst = 1_000_000;
    cfg
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tune: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cfg = test_config(dir.path());
        tune(&mut cfg);
        let server = server::start(cfg.clone()).await.expect("server starts");
        let channel = connect(&server).await;
        TestServer {
            server: Some(server),
            dir,
            config: cfg,
            channel,
        }
    }

    /// Drives a server running elsewhere (`spawn_server` on `dir`) at `addr`; `server` is
    /// `None`, so `stop` and `restart` do nothing to it.
    pub async fn attach(dir: tempfile::TempDir, addr: &str) -> Self {
        let channel = phantom::client::connect(addr).await.expect("connect");
        TestServer {
            server: None,
            config: test_config(dir.path()),
            dir,
            channel,
        }
    }

    /// Stops gracefully and starts again on the same data dir (on a new port).
    pub async fn restart(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
        let server = server::start(self.config.clone())
            .await
            .expect("server restarts");
        self.channel = connect(&server).await;
        self.server = Some(server);
    }

    pub async fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.config.storage.data_dir.clone()
    }

    pub fn admin(&self) -> Admin {
        PhantomAdminClient::with_interceptor(self.channel.clone(), Bearer::new(ADMIN))
    }

    /// Every message of `who`'s conversation with `with`, newest first, following pages.
    pub async fn conversation(&self, who: &Account, with: &Account) -> Vec<pb::Message> {
        let mut messages = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = self
                .user(who)
                .list_messages(pb::ListMessagesRequest {
                    contact_id: with.id.clone(),
                    page_size: 100,
                    page_token,
                })
                .await
                .expect("list messages")
                .into_inner();
            messages.extend(page.messages);
            if page.next_page_token.is_empty() {
                return messages;
            }
            page_token = page.next_page_token;
        }
    }

    /// The server's delivery counters.
    pub async fn stats(&self) -> pb::GetServerStatsResponse {
        self.admin()
            .get_server_stats(pb::GetServerStatsRequest {})
            .await
            .expect("stats")
            .into_inner()
    }

    pub fn admin_as(&self, token: &str) -> Admin {
        PhantomAdminClient::with_interceptor(self.channel.clone(), Bearer::new(token))
    }

    pub fn user(&self, a: &Account) -> User {
        self.user_token(&a.token)
    }

    pub fn user_token(&self, token: &str) -> User {
        PhantomControllerClient::with_interceptor(self.channel.clone(), Bearer::new(token))
    }

    pub fn anonymous(&self) -> User {
        PhantomControllerClient::with_interceptor(self.channel.clone(), Bearer::none())
    }

    pub async fn account(&self, handle: &str) -> Account {
        let r = self
            .admin()
            .create_account(pb::CreateAccountRequest {
                handle: handle.into(),
                display_name: String::new(),
            })
            .await
            .expect("create account")
            .into_inner();
        let a = r.account.expect("account");
        Account {
            id: a.account_id,
            handle: a.handle,
            token: r.token,
            token_id: r.token_id,
        }
    }

    /// `a` adds `b` as a contact.
    pub async fn befriend(&self, a: &Account, b: &Account) -> pb::Contact {
        self.user(a)
            .add_contact(pb::AddContactRequest {
                handle: b.handle.clone(),
                display_name: String::new(),
            })
            .await
            .expect("add contact")
            .into_inner()
            .contact
            .expect("contact")
    }

    pub async fn send(&self, from: &Account, to: &Account, text: &str) -> pb::Message {
        self.user(from)
            .send_message(pb::SendMessageRequest {
                recipient_id: to.id.clone(),
                text: text.into(),
                ..Default::default()
            })
            .await
            .expect("send")
            .into_inner()
            .message
            .expect("message")
    }
}

pub async fn connect(server: &RunningServer) -> Channel {
    phantom::client::connect(&server.local_addr.to_string())
        .await
        .expect("connect")
}

/// An open event stream with a safety timeout on every wait (a hang fails, never passes).
pub struct Events(pub tonic::Streaming<pb::Event>);

pub const WAIT: Duration = Duration::from_secs(10);

impl Events {
    pub async fn open(user: &mut User, after_seq: Option<u64>) -> Events {
        let s = user
            .subscribe_to_events(pb::EventsRequest { after_seq })
            .await
            .expect("subscribe")
            .into_inner();
        Events(s)
    }

    /// A stream from the head, past its `SubscriptionStarted`.
    pub async fn live(user: &mut User) -> Events {
        let mut e = Events::open(user, None).await;
        e.started().await;
        e
    }

    /// The next event, or the status the stream ended with.
    pub async fn next(&mut self) -> Result<Option<pb::Event>, Status> {
        tokio::time::timeout(WAIT, self.0.message())
            .await
            .expect("timed out waiting for an event")
    }

    pub async fn event(&mut self) -> pb::Event {
        self.next()
            .await
            .expect("stream error")
            .expect("stream ended")
    }

    /// Reads the `SubscriptionStarted` that opens every stream.
    pub async fn started(&mut self) -> pb::SubscriptionStarted {
        match self.event().await.kind {
            Some(pb::event::Kind::SubscriptionStarted(s)) => s,
            other => panic!("expected SubscriptionStarted, got {other:?}"),
        }
    }

    /// The next durable event (skipping presence and typing).
    pub async fn durable(&mut self) -> pb::Event {
        loop {
            let ev = self.event().await;
            if ev.seq != 0 {
                return ev;
            }
        }
    }

    /// The next `MessageStateChanged` (skipping every other event): a sender's receipt.
    pub async fn state_change(&mut self) -> pb::MessageStateChanged {
        loop {
            if let Some(pb::event::Kind::MessageStateChanged(c)) = self.durable().await.kind {
                return c;
            }
        }
    }

    /// The message of the next `MessageReceived` (skipping every other event).
    pub async fn received(&mut self) -> pb::Message {
        loop {
            if let Some(pb::event::Kind::MessageReceived(r)) = self.durable().await.kind {
                return r.message.expect("message");
            }
        }
    }

    /// Waits for an ephemeral status change of `contact` to `status`.
    pub async fn status_of(
        &mut self,
        contact: &str,
        status: pb::PresenceStatus,
    ) -> pb::ContactStatusChanged {
        loop {
            if let Some(pb::event::Kind::ContactStatusChanged(s)) = self.event().await.kind
                && s.contact_id == contact
                && s.status == status as i32
            {
                return s;
            }
        }
    }
}

/// MarkRead as `user`: `contact_id`'s messages up to `up_to`.
pub async fn mark_read(
    user: &mut User,
    contact_id: &str,
    up_to: &str,
) -> Result<pb::MarkReadResponse, Status> {
    user.mark_read(pb::MarkReadRequest {
        contact_id: contact_id.into(),
        up_to_message_id: up_to.into(),
    })
    .await
    .map(tonic::Response::into_inner)
}

/// Opens a Connect stream: the command sender and the frames coming back.
pub async fn open_connect(
    user: &mut User,
    capacity: usize,
) -> (
    tokio::sync::mpsc::Sender<pb::ClientFrame>,
    tonic::Streaming<pb::ServerFrame>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(capacity);
    let frames = user
        .connect(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("connect")
        .into_inner();
    (tx, frames)
}

/// Asserts a call failed with `code` and a message naming `field`.
#[track_caller]
pub fn assert_status<T: std::fmt::Debug>(r: Result<T, Status>, code: Code, field: &str) -> Status {
    let s = r.expect_err("call should fail");
    assert_eq!(s.code(), code, "wrong code; message: {}", s.message());
    assert!(
        s.message().contains(field),
        "message {:?} should name {field:?}",
        s.message()
    );
    s
}

pub fn kind(ev: &pb::Event) -> &pb::event::Kind {
    ev.kind.as_ref().expect("event kind")
}

/// The real binary, killed when dropped.
pub struct Proc(pub std::process::Child);

impl Proc {
    /// Sends `signal` ("TERM", "HUP", ...) to the process and checks it was sent.
    pub fn signal(&self, signal: &str) {
        let sent = std::process::Command::new("kill")
            .args([format!("-{signal}"), self.0.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "kill -{signal}");
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads the binary's first line from its stdout, the address it listens on.
pub fn listening_addr(stdout: impl std::io::Read) -> String {
    use std::io::{BufRead, BufReader};
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("first line");
    line.trim()
        .strip_prefix("phantom-grpc-api listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string()
}

/// The threads of process `pid` ("self" for this one): their ids and names, as the kernel has
/// them (cut to 15 characters).
#[cfg(target_os = "linux")]
pub fn threads_of(pid: &str) -> Vec<(libc::pid_t, String)> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("task dir")
        .flatten()
        .filter_map(|t| {
            let tid = t.file_name().to_str()?.parse().ok()?;
            let name = std::fs::read_to_string(t.path().join("comm")).ok()?;
            Some((tid, name.trim_end().to_string()))
        })
        .collect()
}

/// Starts the real binary on `dir` with the given storage engine and extra `[server]` keys
/// (TOML lines); returns it with the address it printed.
pub fn spawn_server(dir: &std::path::Path, server_keys: &str, engine: &str) -> (Proc, String) {
    spawn_server_with(dir, server_keys, "", engine, "warn")
}

/// `spawn_server` with extra `[storage]` keys too, logging at `log_level`; unless that is
/// `warn`, the log goes to the child's piped stderr, for the test to read.
pub fn spawn_server_with(
    dir: &std::path::Path,
    server_keys: &str,
    storage_keys: &str,
    engine: &str,
    log_level: &str,
) -> (Proc, String) {
    use std::process::{Command, Stdio};
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n{server_keys}\n[storage]\nengine = \"{engine}\"\ndata_dir = \"{}\"\n{storage_keys}\n[auth]\nadmin_token = \"{ADMIN}\"\n[log]\nlevel = \"{log_level}\"\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
    let stderr = if log_level == "warn" {
        Stdio::inherit()
    } else {
        Stdio::piped()
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_phantom-grpc-api"))
        .arg("--config")
        .arg(&config)
        .env_remove("PHANTOM_ADMIN_TOKEN")
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("spawn server");
    let addr = listening_addr(child.stdout.take().expect("stdout"));
    (Proc(child), addr)
}

/// Opens the LSM engine's data in `data_dir` (the server stopped) and checks that fjall
/// replayed nothing from its journal into any of the server's keyspaces.
pub fn assert_lsm_replays_nothing(data_dir: &std::path::Path) {
    use fjall::AbstractTree;
    let db = fjall::Database::builder(data_dir.join("lsm"))
        .open()
        .expect("the server's data dir opens");
    let names = db.list_keyspace_names();
    assert!(names.len() >= 5, "the server's keyspaces: {names:?}");
    for name in names {
        let ks = db
            .keyspace(&name, fjall::KeyspaceCreateOptions::default)
            .expect("keyspace");
        assert!(
            ks.tree.active_memtable().is_empty(),
            "{name:?} replayed from the journal"
        );
    }
}
