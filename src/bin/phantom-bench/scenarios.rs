//! The scenarios: set-up through the public API, then measured load.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use hdrhistogram::Histogram;
use phantom::pb::{
    self, event::Kind, phantom_admin_client::PhantomAdminClient,
    phantom_controller_client::PhantomControllerClient,
};
use tokio::sync::Notify;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::{Interceptor, interceptor::InterceptedService};
use tonic::transport::Channel;

use crate::cpu::{Client, Meter, PerCall};
use crate::echo::pb::{EchoMessage, echo_client::EchoClient};
use crate::external::{Fixed, Fsyncs};
use crate::load::{self, Measured, Op};
use crate::procs;

/// Adds a bearer token to every call.
#[derive(Clone)]
pub struct Auth(MetadataValue<Ascii>);

impl Interceptor for Auth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

fn auth(token: &str) -> Result<Auth, String> {
    format!("Bearer {token}")
        .parse()
        .map(Auth)
        .map_err(|_| "token is not ASCII".to_string())
}

type User = PhantomControllerClient<InterceptedService<Channel, Auth>>;
type Admin = PhantomAdminClient<InterceptedService<Channel, Auth>>;

/// A codec whose replies the load client receives whole (framing, status, trailers) and then
/// drops unread, as h2load does. A load generator's own decoding is not the server's cost, and
/// it would grow with the reply (20 contacts cost the client about as much as the server);
/// even prost walking a reply to skip its fields cost our client ~2% per `GetContacts`
/// (BENCHMARKS.md, sixteenth session). The echo ceiling goes through the same client, so the
/// ratios compare like with like.
struct Unread<Req>(std::marker::PhantomData<Req>);

impl<Req: prost::Message + Send + 'static> tonic::codec::Codec for Unread<Req> {
    type Encode = Req;
    type Decode = ();
    type Encoder = tonic_prost::ProstEncoder<Req>;
    type Decoder = Discard;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        Discard
    }
}

/// Takes a whole reply message off the buffer without reading it.
struct Discard;

impl tonic::codec::Decoder for Discard {
    type Item = ();
    type Error = tonic::Status;

    fn decode(
        &mut self,
        buf: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<()>, tonic::Status> {
        use bytes::Buf;
        buf.advance(buf.remaining());
        Ok(Some(()))
    }
}

/// One unary method called with [`Unread`] replies, as the load's operation.
#[derive(Clone)]
struct LeanCall {
    grpc: tonic::client::Grpc<Channel>,
    path: http::uri::PathAndQuery,
    auth: Option<MetadataValue<Ascii>>,
}

impl LeanCall {
    fn new(channel: Channel, path: &'static str, auth: Option<&Auth>) -> Self {
        LeanCall {
            grpc: tonic::client::Grpc::new(channel),
            path: http::uri::PathAndQuery::from_static(path),
            auth: auth.map(|a| a.0.clone()),
        }
    }

    async fn call<Req>(mut self, req: Req) -> Result<(), tonic::Status>
    where
        Req: prost::Message + Send + Sync + 'static,
    {
        self.grpc
            .ready()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let mut request = tonic::Request::new(req);
        if let Some(a) = self.auth {
            request.metadata_mut().insert("authorization", a);
        }
        let codec = Unread(std::marker::PhantomData);
        self.grpc.unary(request, self.path, codec).await.map(|_| ())
    }
}

/// The load's operation for one request sent again and again to `path`, worker `w` on
/// channel `w % n`.
fn same_request<Req>(
    channels: Vec<Channel>,
    path: &'static str,
    auth: Option<&Auth>,
    req: Req,
) -> Op
where
    Req: prost::Message + Clone + Send + Sync + 'static,
{
    let calls: Vec<_> = channels
        .into_iter()
        .map(|c| LeanCall::new(c, path, auth))
        .collect();
    Arc::new(move |w| {
        let c = calls[w % calls.len()].clone();
        Box::pin(c.call(req.clone()))
    })
}

/// Settings shared by every scenario.
#[derive(Clone, Debug)]
pub struct Knobs {
    /// HTTP/2 connections for the load.
    pub connections: usize,
    /// Concurrent calls (workers) in all.
    pub concurrency: usize,
    /// Sender and recipient pairs of `unary-send`.
    pub send_pairs: usize,
    /// Warm-up before measuring.
    pub warmup: Duration,
    /// Measured window.
    pub window: Duration,
    /// Streams for `fanout` and `streams`.
    pub streams: usize,
    /// Log size for `replay`.
    pub replay_events: usize,
    /// Send rates for `e2e`, one run each (at least one); a 0 stands for half of the measured
    /// `unary-send` rate.
    pub e2e_rates: Vec<f64>,
    /// Body of each echo call (both ways).
    pub echo_bytes: usize,
    /// Where `e2e` appends each message's send and receive times (`--e2e-trace`).
    pub e2e_trace: Option<std::path::PathBuf>,
}

/// Most messages one `e2e` run keeps for its trace (16 bytes each): a run of 10 minutes at
/// 16,000/s fits.
const TRACE_MAX: usize = 10_000_000;

/// What `e2e`'s readers record of each message: its latency, and its times for a trace.
struct Received {
    latencies: Histogram<u64>,
    /// (sent, received) in µs since the run's clock started, when a trace is asked for.
    trace: Option<Vec<(u64, u64)>>,
}

impl Received {
    fn record(&mut self, sent: u64, now: u64) {
        let _ = self.latencies.record(now.saturating_sub(sent).max(1));
        if let Some(t) = self.trace.as_mut().filter(|t| t.len() < TRACE_MAX) {
            t.push((sent, now));
        }
    }
}

/// Appends one `e2e` run's trace to `path`: a header that places the run's clock in Unix time
/// (to line it up with samples taken on the server's side), then one line per message
/// received, its send and receive times in µs on that clock, in the order received.
fn append_trace(
    path: &std::path::Path,
    rate: f64,
    clock_unix_us: i64,
    measured_from_us: u64,
    trace: &[(u64, u64)],
) -> Result<(), String> {
    use std::io::Write;
    let file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .map_err(|e| format!("--e2e-trace {}: {e}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    writeln!(
        out,
        "# e2e at {rate:.0}/s: clock 0 = {clock_unix_us} µs Unix time; measured from \
         {measured_from_us} µs; columns: sent_us received_us"
    )
    .and_then(|()| {
        trace
            .iter()
            .try_for_each(|(sent, got)| writeln!(out, "{sent} {got}"))
    })
    .and_then(|()| out.flush())
    .map_err(|e| format!("--e2e-trace {}: {e}", path.display()))
}

/// A server to drive.
pub struct Target {
    /// Its address.
    pub addr: String,
    /// Its admin token.
    pub admin_token: String,
    /// Its process, for memory and CPU figures.
    pub pid: Option<u32>,
    /// Its `GET /metrics` address, to check the outcome of calls an external generator made.
    pub metrics: Option<String>,
    /// Load connections.
    pub conns: Vec<Channel>,
}

/// `n` (at least one) HTTP/2 connections to `addr`.
async fn channels(addr: &str, n: usize) -> Result<Vec<Channel>, String> {
    let mut conns = Vec::with_capacity(n.max(1));
    for _ in 0..n.max(1) {
        conns.push(phantom::client::connect(addr).await?);
    }
    Ok(conns)
}

impl Target {
    /// Opens `n` connections to `addr`.
    pub async fn connect(
        addr: &str,
        admin_token: &str,
        pid: Option<u32>,
        metrics: Option<String>,
        n: usize,
    ) -> Result<Target, String> {
        Ok(Target {
            addr: addr.to_string(),
            admin_token: admin_token.to_string(),
            pid,
            metrics,
            conns: channels(addr, n).await?,
        })
    }

    fn conn(&self, i: usize) -> Channel {
        self.conns[i % self.conns.len()].clone()
    }

    /// Reads the CPU this server spends, where its process is known.
    fn meter(&self) -> Meter {
        Meter {
            server: self.pid,
            client: Client::This,
            profiled: true,
        }
    }

    fn admin(&self) -> Result<Admin, String> {
        Ok(PhantomAdminClient::with_interceptor(
            self.conn(0),
            auth(&self.admin_token)?,
        ))
    }

    fn user(&self, token: &str, i: usize) -> Result<User, String> {
        Ok(PhantomControllerClient::with_interceptor(
            self.conn(i),
            auth(token)?,
        ))
    }
}

/// One line of the report.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Row {
    /// Scenario name.
    pub scenario: String,
    /// Operations (or events) per second, where that is the figure.
    pub per_sec: Option<f64>,
    /// Median latency, ms.
    pub p50_ms: Option<f64>,
    /// 99th percentile latency, ms.
    pub p99_ms: Option<f64>,
    /// Largest latency, ms.
    pub max_ms: Option<f64>,
    /// Anything else worth printing.
    pub note: String,
    /// The figure relative to the echo ceiling (throughput ratio, or p99 ratio for latency).
    pub ratio: Option<f64>,
    /// CPU per call (or message) over the measured window: the server's, this tool's, and
    /// the machine's idle share.
    pub cpu: Option<PerCall>,
    /// The store's fsyncs over the run, where the server's metrics were read (scenarios
    /// that write).
    pub fsyncs: Option<Fsyncs>,
    /// The h2load rows: the echo's own CPU per call (and h2load's) in its alternating
    /// windows, so that a call's cost compares with the ceiling's under the same client.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub echo_cpu: Option<PerCall>,
    /// `streams`: the server's resident memory per idle stream, KiB (where its pid is known).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kib_per_stream: Option<f64>,
    /// The benchmark target this row's figure answers, and whether it is met (`targets`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<crate::targets::Verdict>,
}

impl Row {
    /// A row with the latencies of `h` (µs) in ms.
    fn from_histogram(name: &str, per_sec: Option<f64>, h: &Histogram<u64>, note: String) -> Row {
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Row {
            scenario: name.into(),
            per_sec,
            p50_ms: Some(ms(0.5)),
            p99_ms: Some(ms(0.99)),
            max_ms: Some(h.max() as f64 / 1000.0),
            note: note.trim().to_string(),
            ..Row::default()
        }
    }

    /// A row of one throughput figure (and, optionally, one duration as `max`).
    pub(crate) fn figure(name: &str, per_sec: f64, max_ms: Option<f64>, note: String) -> Row {
        Row {
            scenario: name.into(),
            per_sec: Some(per_sec),
            max_ms,
            note,
            ..Row::default()
        }
    }

    /// Adds the store's fsyncs over the row's run, if they were read.
    pub fn with_fsyncs(mut self, fsyncs: Option<Fsyncs>) -> Row {
        if let Some(f) = fsyncs {
            self.note = format!("{}; {}", self.note, f.describe());
        }
        self.fsyncs = fsyncs;
        self
    }

    fn from_load(name: &str, m: &Measured, mut note: String) -> Row {
        if m.errors > 0 {
            note += &format!(
                " errors={} first: {}",
                m.errors,
                m.first_error.clone().unwrap_or_default()
            );
        }
        let mut row = Row::from_histogram(name, Some(m.rate()), &m.micros, note);
        row.cpu = m.cpu.and_then(|c| c.per_call(m.ops));
        row
    }
}

/// Subscribes as `u` and waits for the stream's `SubscriptionStarted`.
async fn subscribe(
    u: &mut User,
    after_seq: Option<u64>,
) -> Result<tonic::Streaming<pb::Event>, String> {
    let mut s = u
        .subscribe_to_events(pb::EventsRequest { after_seq })
        .await
        .map_err(|e| format!("subscribe: {e}"))?
        .into_inner();
    s.message().await.map_err(|e| format!("subscribe: {e}"))?;
    Ok(s)
}

/// A client per pair's sender (spread over the connections), with its recipient's id.
fn senders(t: &Target, pairs: &[(Acct, Acct)]) -> Result<Vec<(User, String)>, String> {
    pairs
        .iter()
        .enumerate()
        .map(|(i, (a, b))| Ok((t.user(&a.token, i)?, b.id.clone())))
        .collect()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Unique names per call, so scenarios (and several bench runs) can share one server: the
/// process id and a per-process counter. Short, because handles travel in every contact view
/// and the read scenario's reply size should be a realistic one.
fn run_tag() -> String {
    static CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    format!(
        "{:x}_{}",
        std::process::id(),
        CALLS.fetch_add(1, Ordering::Relaxed)
    )
}

/// An account made through the admin API.
#[derive(Clone)]
struct Acct {
    id: String,
    handle: String,
    token: String,
}

/// Creates `n` accounts, `concurrency` at a time.
async fn accounts(t: &Target, prefix: &str, n: usize) -> Result<Vec<Acct>, String> {
    let admin = t.admin()?;
    let tag = run_tag();
    let made = futures::stream::iter(0..n)
        .map(|i| {
            let mut admin = admin.clone();
            let handle = format!("{prefix}{tag}x{i}");
            async move {
                let r = admin
                    .create_account(pb::CreateAccountRequest {
                        handle: handle.clone(),
                        display_name: String::new(),
                    })
                    .await
                    .map_err(|e| format!("create account: {e}"))?
                    .into_inner();
                let a = r.account.ok_or("no account in reply")?;
                Ok::<_, String>(Acct {
                    id: a.account_id,
                    handle: a.handle,
                    token: r.token,
                })
            }
        })
        .buffered(64)
        .collect::<Vec<_>>()
        .await;
    made.into_iter().collect()
}

/// `who` adds each of `handles` as a contact.
async fn befriend(t: &Target, who: &Acct, handles: &[String]) -> Result<(), String> {
    let user = t.user(&who.token, 0)?;
    let done = futures::stream::iter(handles.iter().cloned())
        .map(|h| {
            let mut user = user.clone();
            async move {
                user.add_contact(pb::AddContactRequest {
                    handle: h,
                    display_name: String::new(),
                })
                .await
                .map(|_| ())
                .map_err(|e| format!("add contact: {e}"))
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    done.into_iter().collect()
}

/// A throughput scenario set up and ready to run: its operation and its line in the report.
pub struct Prepared {
    /// Scenario name.
    pub name: &'static str,
    /// One call.
    pub op: Op,
    /// What the report says of it.
    pub note: String,
    /// One of its requests, for an external generator (h2load) to send again and again.
    pub fixed: Fixed,
    /// The process serving it, whose CPU its rows report.
    pub meter: Meter,
}

impl Prepared {
    /// Runs the scenario alone.
    pub async fn run(self, k: &Knobs) -> Row {
        let m = load::run(k.concurrency, k.warmup, k.window, self.op, self.meter).await;
        Row::from_load(self.name, &m, self.note)
    }

    /// Runs the scenario in windows alternating with `ceiling`'s (see `load::paired`); the
    /// row's ratio is to the ceiling's throughput over the same rounds.
    pub async fn run_paired(self, ceiling: (&Op, Meter), k: &Knobs, rounds: u32) -> Row {
        let (e, m) = load::paired(
            k.concurrency,
            k.warmup,
            k.window,
            rounds,
            ceiling,
            (&self.op, self.meter),
        )
        .await;
        let note = format!(
            "{}; echo {:.0}/s in the same {rounds} rounds",
            self.note,
            e.rate()
        );
        let mut row = Row::from_load(self.name, &m, note);
        row.ratio = Some(m.rate() / e.rate());
        row
    }
}

/// The least a durable reply costs: the same client against the durable echo `served`
/// (`--echo-durable`), whose replies wait for their body's fdatasync.
pub async fn echo_durable(served: &procs::Served, k: &Knobs) -> Result<Prepared, String> {
    let mut p = echo(served, k).await?;
    p.name = "echo-durable";
    p.note = "echo, each body appended to a file and fdatasync'd before its reply \
              (group commit on a writer and a syncer thread, as the store; no actors, \
              no index)"
        .into();
    Ok(p)
}

/// The floor under `e2e`'s latency: the durable echo `served`, prepared once (its connections
/// and its checked call) for `e2e_floor_at` to drive at each rate.
pub async fn e2e_floor(served: &procs::Served, k: &Knobs) -> Result<Prepared, String> {
    let mut p = echo(served, k).await?;
    p.name = "e2e-floor";
    Ok(p)
}

/// Drives `floor` (from `e2e_floor`) as `e2e` drives its sends, one call every 1/rate s
/// whatever the replies do, each timed from its start to its durable reply. A message in
/// `e2e` waits for its fsync before it is delivered, so on this machine its latency cannot be
/// lower than this at the same rate.
pub async fn e2e_floor_at(floor: &Prepared, k: &Knobs, rate: f64) -> Row {
    let settle = Duration::from_secs(5);
    let op = floor.op.clone();
    let m = load::open_loop(rate, k.warmup, k.window, settle, op, floor.meter).await;
    Row::from_load(
        floor.name,
        &m,
        format!(
            "the durable echo, one call every 1/{rate:.0} s as e2e sends (open loop): call to \
             fdatasync'd reply, no actors, no index, no delivery"
        ),
    )
}

/// The ceiling: the same client against the bare echo service `served`.
pub async fn echo(served: &procs::Served, k: &Knobs) -> Result<Prepared, String> {
    let conns = channels(&served.addr, k.connections).await?;
    let request = EchoMessage {
        body: vec![7; k.echo_bytes],
    };
    // Checked once with the generated client, then driven like every other scenario.
    let reply = EchoClient::new(conns[0].clone())
        .unary(request.clone())
        .await
        .map_err(|e| format!("echo: {e}"))?;
    if reply.get_ref().body != request.body {
        return Err("echo answered another body".into());
    }
    let path = "/phantom.bench.v1.Echo/Unary";
    Ok(Prepared {
        name: "echo (ceiling)",
        fixed: Fixed::new(path, None, &request),
        op: same_request(conns, path, None, request),
        note: String::new(),
        meter: Meter {
            server: Some(served.pid()),
            client: Client::This,
            profiled: false,
        },
    })
}

/// GetContacts of an account with 20 contacts.
pub async fn unary_read(t: &Target) -> Result<Prepared, String> {
    let people = accounts(t, "rd", 21).await?;
    let (reader, others) = people.split_first().ok_or("no accounts")?;
    befriend(
        t,
        reader,
        &others.iter().map(|a| a.handle.clone()).collect::<Vec<_>>(),
    )
    .await?;
    let request = pb::GetContactsRequest {
        page_size: 50,
        page_token: String::new(),
    };
    // Checked once with the generated client, then driven through lean calls.
    let got = t
        .user(&reader.token, 0)?
        .get_contacts(request.clone())
        .await
        .map_err(|e| format!("get contacts: {e}"))?;
    if got.get_ref().contacts.len() != others.len() {
        return Err(format!("{} contacts, not 20", got.get_ref().contacts.len()));
    }
    let path = "/phantom.v1.PhantomController/GetContacts";
    let token = auth(&reader.token)?;
    Ok(Prepared {
        name: "unary-read",
        fixed: Fixed::new(path, Some(&reader.token), &request),
        op: same_request(t.conns.clone(), path, Some(&token), request),
        note: "GetContacts, 20 contacts".into(),
        meter: t.meter(),
    })
}

/// `n` (sender, recipient) account pairs.
async fn pairs(t: &Target, n: usize) -> Result<Vec<(Acct, Acct)>, String> {
    let people = accounts(t, "sd", n * 2).await?;
    Ok(people
        .chunks(2)
        .filter_map(|p| match p {
            [a, b] => Some((a.clone(), b.clone())),
            _ => None,
        })
        .collect())
}

/// SendMessage between many pairs; every reply is durable.
pub async fn unary_send(t: &Target, k: &Knobs) -> Result<Prepared, String> {
    let path = "/phantom.v1.PhantomController/SendMessage";
    let request = |to: String| pb::SendMessageRequest {
        recipient_id: to,
        text: "benchmark message, about the size of a chat line".into(),
        ..Default::default()
    };
    let pairs = pairs(t, k.send_pairs).await?;
    let (first_sender, first_recipient) = pairs.first().ok_or("no pairs")?;
    // An external generator sends one body: the first pair's.
    let fixed = Fixed::new(
        path,
        Some(&first_sender.token),
        &request(first_recipient.id.clone()),
    );
    let calls = pairs
        .iter()
        .enumerate()
        .map(|(i, (a, b))| {
            Ok((
                LeanCall::new(t.conn(i), path, Some(&auth(&a.token)?)),
                b.id.clone(),
            ))
        })
        .collect::<Result<Vec<_>, String>>()?;
    let op: Op = Arc::new(move |w| {
        let (c, to) = calls[w % calls.len()].clone();
        Box::pin(c.call(request(to)))
    });
    Ok(Prepared {
        name: "unary-send",
        fixed,
        op,
        note: match pairs.len() {
            1 => "1 pair, fsync'd group commit".into(),
            n => format!("{n} pairs, fsync'd group commit"),
        },
        meter: t.meter(),
    })
}

/// Send-to-receive latency at a fixed send rate.
pub async fn e2e(t: &Target, k: &Knobs, rate: f64) -> Result<Row, String> {
    let pairs = pairs(t, 32).await?;
    let clock = Instant::now();
    let clock_unix_us = phantom::core::time::now_micros();
    let readings = Arc::new(std::sync::Mutex::new(Received {
        latencies: load::histogram(),
        trace: k.e2e_trace.as_ref().map(|_| Vec::new()),
    }));
    let received = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for (i, (_, b)) in pairs.iter().enumerate() {
        let mut s = subscribe(&mut t.user(&b.token, i)?, None).await?;
        let (readings, got) = (readings.clone(), received.clone());
        readers.push(tokio::spawn(async move {
            while let Ok(Some(ev)) = s.message().await {
                if let Some(Kind::MessageReceived(m)) = ev.kind
                    && let Some(sent) = m.message.and_then(|m| m.text.parse::<u64>().ok())
                {
                    let now = clock.elapsed().as_micros() as u64;
                    if let Ok(mut r) = readings.lock() {
                        r.record(sent, now);
                    }
                    got.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let senders = senders(t, &pairs)?;
    // Open loop: one send every 1/rate s whatever the replies do.
    let mut pace = load::Pace::new(rate, k.warmup, k.window);
    let measure_from = pace.measured_from();
    let mut sent = 0u64;
    let mut n = 0usize;
    let mut warming = true;
    let mut cpu_from = None;
    let mut taking = None;
    while let Some(measuring) = pace.next().await {
        let (mut u, to) = senders[n % senders.len()].clone();
        n += 1;
        if measuring {
            if warming {
                // Forget what arrived during the warm-up (the trace keeps it).
                warming = false;
                if let Ok(mut r) = readings.lock() {
                    r.latencies.reset();
                }
                cpu_from = t.meter().read();
                taking = Some(crate::profile::start(&t.meter(), k.window));
            }
            sent += 1;
        }
        tokio::spawn(async move {
            let text = clock.elapsed().as_micros().to_string();
            let _ = u
                .send_message(pb::SendMessageRequest {
                    recipient_id: to,
                    text,
                    ..Default::default()
                })
                .await;
        });
    }
    let cpu = t.meter().since(cpu_from);
    if let Some(taking) = taking {
        taking.finish().await;
    }
    // Let the last ones arrive.
    let settle = Instant::now();
    while received.load(Ordering::Relaxed) < n as u64 && settle.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for r in readers {
        r.abort();
    }
    let measured_from_us = measure_from.duration_since(clock).as_micros() as u64;
    let (h, trace) = readings
        .lock()
        .map(|mut r| (r.latencies.clone(), r.trace.take()))
        .map_err(|_| "poisoned")?;
    if let (Some(path), Some(trace)) = (&k.e2e_trace, trace) {
        append_trace(path, rate, clock_unix_us, measured_from_us, &trace)?;
    }
    let mut row = Row::from_histogram(
        "e2e",
        Some(sent as f64 / k.window.as_secs_f64()),
        &h,
        format!(
            "SendMessage to MessageReceived at {rate:.0}/s, {} received",
            h.len()
        ),
    );
    row.cpu = cpu.and_then(|c| c.per_call(sent));
    Ok(row)
}

/// Opens `n` live streams of the given accounts (round-robin), over enough connections.
/// Returns the streams once each has delivered `SubscriptionStarted`.
async fn open_streams(
    t: &Target,
    accts: &[Acct],
    n: usize,
) -> Result<Vec<tonic::Streaming<pb::Event>>, String> {
    // 200 streams per connection, well inside the server's per-connection limit.
    let conns = channels(&t.addr, n.div_ceil(200)).await?;
    let opened = futures::stream::iter(0..n)
        .map(|i| {
            let channel = conns[i % conns.len()].clone();
            let token = accts[i % accts.len()].token.clone();
            async move {
                let mut u = PhantomControllerClient::with_interceptor(channel, auth(&token)?);
                subscribe(&mut u, None).await
            }
        })
        .buffer_unordered(256)
        .collect::<Vec<_>>()
        .await;
    opened.into_iter().collect()
}

/// Event streams open on the server now.
pub async fn open_stream_count(t: &Target) -> Result<u64, String> {
    Ok(t.admin()?
        .get_server_stats(pb::GetServerStatsRequest {})
        .await
        .map_err(|e| format!("GetServerStats: {e}"))?
        .into_inner()
        .open_streams)
}

/// Waits until the server has no more event streams open than `before` (the streams a
/// scenario opened are gone, so their accounts have gone offline), so that the next scenario
/// does not measure the end of this one. Gives up after `QUIESCE_LIMIT`, saying so.
pub async fn quiesce(t: &Target, before: u64) -> Result<(), String> {
    let started = Instant::now();
    loop {
        let open = open_stream_count(t).await?;
        if open <= before {
            return Ok(());
        }
        if started.elapsed() > QUIESCE_LIMIT {
            eprintln!(
                "phantom-bench: {} streams still open after {} s; going on",
                open - before,
                QUIESCE_LIMIT.as_secs()
            );
            return Ok(());
        }
        // The server counts streams, it does not announce their end: ask again shortly.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Longest `quiesce` waits for the streams of a scenario to close.
const QUIESCE_LIMIT: Duration = Duration::from_secs(30);

/// Resident memory per idle stream at `k.streams` streams.
pub async fn streams(t: &Target, k: &Knobs) -> Result<Row, String> {
    let owner = accounts(t, "st", 1).await?;
    let before = t.pid.and_then(procs::rss_bytes);
    let started = Instant::now();
    let open = open_streams(t, &owner, k.streams).await?;
    let took = started.elapsed();
    let after = t.pid.and_then(procs::rss_bytes);
    let kib_per_stream = match (before, after) {
        (Some(b), Some(a)) => Some(a.saturating_sub(b) as f64 / k.streams as f64 / 1024.0),
        _ => None,
    };
    drop(open);
    let mut row = Row::figure(
        "streams",
        k.streams as f64 / took.as_secs_f64(),
        None,
        match (kib_per_stream, after) {
            (Some(kib), Some(a)) => format!(
                "{} idle streams: {:.1} KiB RSS per stream (server RSS {:.0} MiB); per_sec = streams opened/s",
                k.streams,
                kib,
                a as f64 / 1048576.0
            ),
            _ => format!(
                "{} idle streams; memory needs the server's pid (--server-pid)",
                k.streams
            ),
        },
    );
    row.kib_per_stream = kib_per_stream;
    Ok(row)
}

/// One account's presence change reaching `k.streams` live streams of accounts that have it as
/// a contact: time until every stream has it.
pub async fn fanout(t: &Target, k: &Knobs) -> Result<Row, String> {
    let hub = accounts(t, "hub", 1).await?.pop().ok_or("no hub")?;
    // Followers: as many accounts as streams, up to 1,000 (several streams each beyond that).
    let followers = accounts(t, "fo", k.streams.min(1000)).await?;
    let hub_handle = [hub.handle.clone()];
    let done = futures::stream::iter(followers.iter())
        .map(|f| befriend(t, f, &hub_handle))
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    done.into_iter().collect::<Result<Vec<_>, _>>()?;
    let mut open = open_streams(t, &followers, k.streams).await?;

    let clock = Instant::now();
    let t0 = Arc::new(AtomicU64::new(u64::MAX));
    let arrived = Arc::new(AtomicUsize::new(0));
    let all = Arc::new(Notify::new());
    // The hub's coming online is a fan-out of its own; the timed change waits for it to end.
    let online = Arc::new(AtomicUsize::new(0));
    let all_online = Arc::new(Notify::new());
    let lat = Arc::new(std::sync::Mutex::new(load::histogram()));
    let n = open.len();
    let hub_id = hub.id.clone();
    let mut readers = Vec::with_capacity(n);
    for mut s in open.drain(..) {
        let (t0, arrived, all, lat, hub_id) = (
            t0.clone(),
            arrived.clone(),
            all.clone(),
            lat.clone(),
            hub_id.clone(),
        );
        let (online, all_online) = (online.clone(), all_online.clone());
        readers.push(tokio::spawn(async move {
            while let Ok(Some(ev)) = s.message().await {
                let Some(Kind::ContactStatusChanged(c)) = ev.kind else {
                    continue;
                };
                if c.contact_id != hub_id {
                    continue;
                }
                if c.status == pb::PresenceStatus::Online as i32 {
                    if online.fetch_add(1, Ordering::AcqRel) + 1 == n {
                        all_online.notify_one();
                    }
                } else if c.status == pb::PresenceStatus::Away as i32 {
                    let at = clock.elapsed().as_micros() as u64;
                    if let Ok(mut h) = lat.lock() {
                        let _ = h.record(at.saturating_sub(t0.load(Ordering::Relaxed)).max(1));
                    }
                    if arrived.fetch_add(1, Ordering::AcqRel) + 1 == n {
                        all.notify_one();
                    }
                }
            }
        }));
    }
    // The hub comes online (one stream), then goes AWAY: that change is what is timed.
    let mut hub_user = t.user(&hub.token, 0)?;
    let _hub_stream = subscribe(&mut hub_user, None).await?;
    tokio::time::timeout(Duration::from_secs(60), all_online.notified())
        .await
        .map_err(|_| {
            format!(
                "the hub's ONLINE reached only {} of {n} streams",
                online.load(Ordering::Relaxed)
            )
        })?;
    t0.store(clock.elapsed().as_micros() as u64, Ordering::Relaxed);
    hub_user
        .set_status(pb::SetStatusRequest {
            status: pb::PresenceStatus::Away as i32,
            status_text: "fan-out".into(),
        })
        .await
        .map_err(|e| e.to_string())?;
    let waited = tokio::time::timeout(Duration::from_secs(60), all.notified()).await;
    // The streams end here, not when the tool exits (`quiesce` then waits for the server to
    // let them go): the next scenario is measured without them.
    for r in readers {
        r.abort();
    }
    let h = lat.lock().map(|h| h.clone()).map_err(|_| "poisoned")?;
    Ok(Row::from_histogram(
        "fanout",
        None,
        &h,
        format!(
            "presence change to {n} streams ({} accounts), after the hub's ONLINE reached all: max = time until all had it{}",
            followers.len(),
            if waited.is_err() {
                format!("; only {} arrived", arrived.load(Ordering::Relaxed))
            } else {
                String::new()
            }
        ),
    ))
}

/// Resume from `after_seq = 0` over a log of `k.replay_events` events.
pub async fn replay(t: &Target, k: &Knobs) -> Result<Row, String> {
    let people = accounts(t, "rp", 17).await?;
    let (target, senders) = people.split_first().ok_or("no accounts")?;
    let users: Vec<User> = senders
        .iter()
        .enumerate()
        .map(|(i, s)| t.user(&s.token, i))
        .collect::<Result<_, _>>()?;
    let to = target.id.clone();
    let filled = futures::stream::iter(0..k.replay_events)
        .map(|i| {
            let mut u = users[i % users.len()].clone();
            let to = to.clone();
            async move {
                u.send_message(pb::SendMessageRequest {
                    recipient_id: to,
                    text: format!("log entry {i}"),
                    ..Default::default()
                })
                .await
                .map(|_| ())
                .map_err(|e| format!("fill log: {e}"))
            }
        })
        .buffer_unordered(k.concurrency.max(16))
        .collect::<Vec<_>>()
        .await;
    filled.into_iter().collect::<Result<Vec<_>, _>>()?;

    let mut best: Option<(Duration, u64)> = None;
    let mut first = None;
    for _ in 0..3 {
        let mut u = t.user(&target.token, 0)?;
        let started = Instant::now();
        let mut s = subscribe(&mut u, Some(0)).await?;
        let mut last = 0u64;
        while last < k.replay_events as u64 {
            match s.message().await {
                Ok(Some(ev)) if ev.seq > 0 => last = ev.seq,
                Ok(Some(_)) => {}
                Ok(None) => return Err("replay stream ended early".into()),
                Err(e) => return Err(format!("replay: {e}")),
            }
        }
        let took = started.elapsed();
        // The first replay also records every message DELIVERED; later ones find them so.
        first.get_or_insert(last as f64 / took.as_secs_f64());
        if best.is_none_or(|(b, _)| took < b) {
            best = Some((took, last));
        }
    }
    let (took, n) = best.ok_or("no replay")?;
    Ok(Row::figure(
        "replay",
        n as f64 / took.as_secs_f64(),
        Some(ms(took)),
        format!(
            "{n} events from after_seq = 0 (best of 3; the first, which records the receipts: \
             {:.0}/s); max = whole replay",
            first.unwrap_or(0.0)
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn received_messages_are_timed_and_traced_when_asked() {
        let mut untraced = Received {
            latencies: load::histogram(),
            trace: None,
        };
        untraced.record(100, 350);
        assert_eq!(untraced.latencies.len(), 1);
        assert_eq!(untraced.latencies.max(), 250);
        let mut traced = Received {
            latencies: load::histogram(),
            trace: Some(Vec::new()),
        };
        traced.record(100, 350);
        // A receive clocked before its send (never, on one clock) still counts, as 1 µs.
        traced.record(400, 390);
        assert_eq!(traced.latencies.min(), 1);
        assert_eq!(traced.trace, Some(vec![(100, 350), (400, 390)]));
    }

    #[test]
    fn a_trace_has_one_section_per_rate() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("trace.txt");
        append_trace(&path, 500.0, 1_000_000, 2_000, &[(1, 5), (2, 9)]).expect("first");
        append_trace(&path, 1000.0, 3_000_000, 2_000, &[(7, 8)]).expect("second");
        let text = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5);
        assert!(lines[0].starts_with("# e2e at 500/s: clock 0 = 1000000 µs Unix time"));
        assert!(lines[0].contains("measured from 2000 µs"));
        assert_eq!(&lines[1..3], ["1 5", "2 9"]);
        assert!(lines[3].starts_with("# e2e at 1000/s: clock 0 = 3000000"));
        assert_eq!(lines[4], "7 8");
        let unwritable = dir.path().join("no/such/dir/trace.txt");
        let err = append_trace(&unwritable, 1.0, 0, 0, &[]).expect_err("no such dir");
        assert!(err.starts_with("--e2e-trace "), "{err}");
    }
}
