//! An external load generator, h2load (nghttp2), driving the unary scenarios beside the tool's
//! own client: one fixed request each, in windows alternating with the echo ceiling driven by
//! h2load too, and every call's outcome checked against the server's own `/metrics`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use crate::cpu::{self, Client, Meter};
use crate::scenarios::{Knobs, Row};

/// One request an external generator sends again and again.
#[derive(Clone, Debug)]
pub struct Fixed {
    /// The method's path, `/package.Service/Method`.
    pub path: &'static str,
    /// Bearer token, if the method needs one.
    pub token: Option<String>,
    /// The request as one gRPC frame: flag, big-endian length, protobuf bytes.
    pub frame: Vec<u8>,
}

impl Fixed {
    /// `msg` sent to `path` with `token`.
    pub fn new(path: &'static str, token: Option<&str>, msg: &impl prost::Message) -> Fixed {
        let body = msg.encode_to_vec();
        let mut frame = Vec::with_capacity(5 + body.len());
        frame.push(0);
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frame.extend_from_slice(&body);
        Fixed {
            path,
            token: token.map(str::to_string),
            frame,
        }
    }
}

/// Fails unless `h2load` runs.
pub async fn check_installed() -> Result<(), String> {
    match Command::new("h2load").arg("--version").output().await {
        Ok(o) if o.status.success() => Ok(()),
        _ => Err("--h2load: h2load not found on PATH (Debian: apt install nghttp2-client)".into()),
    }
}

/// What h2load measured over one or more windows.
#[derive(Debug, Default)]
struct Windows {
    succeeded: u64,
    failed: u64,
    secs: f64,
    /// Sum of each window's mean latency times its calls, ms.
    weighted_mean_ms: f64,
    max_ms: f64,
}

impl Windows {
    fn rate(&self) -> f64 {
        self.succeeded as f64 / self.secs
    }

    fn mean_ms(&self) -> f64 {
        self.weighted_mean_ms / self.succeeded.max(1) as f64
    }

    fn add(&mut self, w: Windows) {
        self.succeeded += w.succeeded;
        self.failed += w.failed;
        self.secs += w.secs;
        self.weighted_mean_ms += w.weighted_mean_ms;
        self.max_ms = self.max_ms.max(w.max_ms);
    }
}

/// Flags of every h2load run: the tool's connections and calls in flight, one thread.
fn shape(k: &Knobs) -> (usize, usize) {
    let clients = k.connections.max(1);
    (clients, (k.concurrency / clients).max(1))
}

/// Writes `f`'s request into `dir`, for h2load's `-d`; returns the file.
fn body_file(dir: &Path, f: &Fixed) -> Result<PathBuf, String> {
    let body = dir.join(f.path.replace('/', "_"));
    std::fs::write(&body, &f.frame).map_err(|e| format!("{}: {e}", body.display()))?;
    Ok(body)
}

/// One h2load run of `f` (its request in the file `body`) against `addr`: `warmup` (not
/// counted), then `window`.
async fn window(
    addr: &str,
    f: &Fixed,
    body: &Path,
    k: &Knobs,
    warmup: Duration,
    window: Duration,
) -> Result<Windows, String> {
    let (clients, streams) = shape(k);
    let mut cmd = Command::new("h2load");
    cmd.arg("-D")
        .arg(format!("{}ms", window.as_millis().max(1)))
        .arg("-c")
        .arg(clients.to_string())
        .arg("-m")
        .arg(streams.to_string())
        .args(["-t", "1"])
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
        .arg("-d")
        .arg(body);
    if !warmup.is_zero() {
        cmd.arg("--warm-up-time")
            .arg(format!("{}ms", warmup.as_millis()));
    }
    if let Some(t) = &f.token {
        cmd.arg("-H").arg(format!("authorization: Bearer {t}"));
    }
    cmd.arg(format!("http://{addr}{}", f.path));
    let out = cmd.output().await.map_err(|e| format!("h2load: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!("h2load failed ({}): {text}", out.status));
    }
    parse(&text, window.as_secs_f64())
}

/// The figures of h2load's summary.
fn parse(text: &str, secs: f64) -> Result<Windows, String> {
    let line = |start: &str| {
        text.lines()
            .map(str::trim)
            .find(|l| l.starts_with(start))
            .ok_or_else(|| format!("h2load printed no {start:?} line: {text}"))
    };
    // "requests: 151057 total, 151057 started, 151057 done, 151057 succeeded, 0 failed, ..."
    let requests = line("requests:")?;
    let count = |what: &str| {
        requests
            .split(',')
            .find_map(|part| part.trim().strip_suffix(what)?.trim().parse::<u64>().ok())
            .ok_or_else(|| format!("h2load: no {what:?} in {requests:?}"))
    };
    let (succeeded, failed, errored) = (count("succeeded")?, count("failed")?, count("errored")?);
    // "time for request:       59us      9.68ms      1.13ms       483us    74.85%"
    let times: Vec<f64> = line("time for request:")?
        .trim_start_matches("time for request:")
        .split_whitespace()
        .filter_map(millis)
        .collect();
    let [_, max_ms, mean_ms, ..] = times[..] else {
        return Err(format!("h2load: unreadable request times in {text}"));
    };
    Ok(Windows {
        succeeded,
        failed: failed + errored,
        secs,
        weighted_mean_ms: mean_ms * succeeded as f64,
        max_ms,
    })
}

/// An h2load duration ("59us", "9.68ms", "1.20s") in ms.
fn millis(s: &str) -> Option<f64> {
    let (n, scale) = if let Some(n) = s.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1.0)
    } else {
        (s.strip_suffix('s')?, 1000.0)
    };
    n.parse::<f64>().ok().map(|v| v * scale)
}

/// The server's `/metrics`, parsed.
async fn scrape(metrics: &str) -> Result<prometheus_parse::Scrape, String> {
    let (_, body) = get(metrics, "/metrics").await?;
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
        .map_err(|e| format!("metrics {metrics}: {e}"))
}

/// GETs `path` from the server's metrics listener at `metrics`: the status line and the body.
pub async fn get(metrics: &str, path: &str) -> Result<(String, String), String> {
    let failed = |e: std::io::Error| format!("metrics {metrics}: {e}");
    let mut tcp = tokio::net::TcpStream::connect(metrics)
        .await
        .map_err(failed)?;
    // HTTP/1.0: the server closes the connection after the reply, which ends the read.
    tcp.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .await
        .map_err(failed)?;
    let mut reply = String::new();
    tcp.read_to_string(&mut reply).await.map_err(failed)?;
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
    let status = head.lines().next().unwrap_or_default().to_string();
    Ok((status, body.to_string()))
}

/// A sample's value, if it is one number (a histogram's `_sum` and `_count` lines are
/// samples of their own, untyped).
fn number(v: &prometheus_parse::Value) -> Option<f64> {
    use prometheus_parse::Value::{Counter, Gauge, Untyped};
    match v {
        Counter(v) | Gauge(v) | Untyped(v) => Some(*v),
        _ => None,
    }
}

/// Calls of `method` the server counted, by gRPC code.
fn calls_by_code(scrape: &prometheus_parse::Scrape, method: &str) -> HashMap<String, f64> {
    let mut counts = HashMap::new();
    for sample in &scrape.samples {
        if sample.metric != "phantom_grpc_requests_total"
            || sample.labels.get("method") != Some(method)
        {
            continue;
        }
        if let Some(v) = number(&sample.value) {
            let code = sample.labels.get("code").unwrap_or_default().to_string();
            *counts.entry(code).or_insert(0.0) += v;
        }
    }
    counts
}

/// An fsync this long leaves almost nothing of `e2e`'s 2 ms target to the rest of a
/// message's path (a bound of the server's fsync histogram: 0.1 ms doubling).
const SLOW_FSYNC_SECS: f64 = 0.0016;

/// What the server's store (or the durable echo) had done by one reading: its fsyncs (of the
/// journal, the WAL or the echo's log), their seconds in all, their histogram's buckets with
/// cumulative counts, and the SendMessage calls answered OK (the durable echo: the calls it
/// answered).
#[derive(Debug, Clone, Default)]
pub struct Syncs {
    fsyncs: f64,
    seconds: f64,
    sends: f64,
    /// (upper bound in seconds, fsyncs at most that long), ascending.
    buckets: Vec<(f64, f64)>,
    /// What `sends` counts, for a row's note.
    what: &'static str,
}

/// An echo's counts so far (`Syncs`): its calls answered, and the durable echo's fsyncs.
async fn echo_counts(addr: &str) -> Result<crate::echo::pb::SyncsReply, String> {
    let channel = phantom::client::connect(addr).await?;
    let reply = crate::echo::pb::echo_client::EchoClient::new(channel)
        .syncs(crate::echo::pb::SyncsRequest {})
        .await
        .map_err(|e| format!("the echo's counts: {e}"))?;
    Ok(reply.into_inner())
}

/// Where a server's counts (its calls, and its fsyncs) are read.
#[derive(Debug, Clone, Copy)]
pub enum CountsAt<'a> {
    /// The server's metrics address (none: not read).
    Metrics(Option<&'a str>),
    /// The durable echo at this address, through its `Syncs` call.
    Echo(&'a str),
}

/// What a server had counted by one reading: its metrics (every call's outcome, the store's
/// fsyncs), or an echo's counts (the calls it answered, the durable echo's fsyncs).
enum Counted {
    Scrape(prometheus_parse::Scrape),
    Echo(crate::echo::pb::SyncsReply),
    Unknown,
}

impl Counted {
    async fn read(at: CountsAt<'_>) -> Result<Counted, String> {
        Ok(match at {
            CountsAt::Metrics(Some(m)) => Counted::Scrape(scrape(m).await?),
            CountsAt::Metrics(None) => Counted::Unknown,
            CountsAt::Echo(addr) => Counted::Echo(echo_counts(addr).await?),
        })
    }

    /// The fsyncs in this reading (none where the server's metrics are not known).
    fn syncs(&self) -> Option<Syncs> {
        match self {
            Counted::Scrape(s) => Some(Syncs::from_scrape(s)),
            Counted::Echo(reply) => Some(Syncs::from_echo(reply)),
            Counted::Unknown => None,
        }
    }
}

impl Syncs {
    /// The counts now (none where the server's metrics are not known).
    pub async fn read(at: CountsAt<'_>) -> Result<Option<Syncs>, String> {
        Ok(Counted::read(at).await?.syncs())
    }

    fn from_echo(reply: &crate::echo::pb::SyncsReply) -> Syncs {
        Syncs {
            fsyncs: reply.fsyncs as f64,
            seconds: reply.seconds,
            sends: reply.bodies as f64,
            buckets: reply
                .buckets
                .iter()
                .map(|b| (b.le_seconds, b.count as f64))
                .collect(),
            what: "calls",
        }
    }

    fn from_scrape(scrape: &prometheus_parse::Scrape) -> Syncs {
        let total = |name: &str| {
            scrape
                .samples
                .iter()
                .filter(|s| s.metric == name)
                .filter_map(|s| number(&s.value))
                .sum::<f64>()
        };
        let mut buckets: Vec<(f64, f64)> = scrape
            .samples
            .iter()
            .filter(|s| s.metric == "phantom_store_sync_duration_seconds")
            .filter_map(|s| match &s.value {
                prometheus_parse::Value::Histogram(h) => Some(h),
                _ => None,
            })
            .flatten()
            .map(|b| (b.less_than, b.count))
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        Syncs {
            fsyncs: total("phantom_store_sync_duration_seconds_count"),
            seconds: total("phantom_store_sync_duration_seconds_sum"),
            sends: calls_by_code(scrape, "SendMessage")
                .get("Ok")
                .copied()
                .unwrap_or(0.0),
            buckets,
            what: "sends",
        }
    }

    /// Fsyncs at most `bound` seconds long by this reading (a bucket's bound; none if the
    /// histogram has no such bucket).
    fn at_most(&self, bound: f64) -> Option<f64> {
        self.buckets
            .iter()
            .find(|(le, _)| *le == bound || (*le - bound).abs() < 1e-12)
            .map(|(_, n)| *n)
    }

    /// What the store did between two readings: none without both (no metrics).
    fn between(before: Option<Syncs>, after: Option<Syncs>) -> Option<Fsyncs> {
        after?.since(&before?)
    }

    /// Runs `run` and adds to its row the fsyncs over it, read where `at` says (none from a
    /// server whose metrics are not known).
    pub async fn around(
        at: CountsAt<'_>,
        run: impl Future<Output = Result<Row, String>>,
    ) -> Result<Row, String> {
        let before = Syncs::read(at).await?;
        let row = run.await?;
        Ok(row.with_fsyncs(Syncs::between(before, Syncs::read(at).await?)))
    }

    /// What the store did between `before` and this reading: none if it did not sync (a
    /// read-only scenario).
    fn since(&self, before: &Syncs) -> Option<Fsyncs> {
        let count = self.fsyncs - before.fsyncs;
        let between = |bound| Some(self.at_most(bound)? - before.at_most(bound)?);
        // The smallest bound that every fsync of the run stayed within.
        let slowest_within_ms = self
            .buckets
            .iter()
            .find(|(le, _)| between(*le).is_some_and(|n| n >= count))
            .map(|(le, _)| le * 1000.0);
        (count > 0.0).then(|| Fsyncs {
            count: count as u64,
            mean_ms: (self.seconds - before.seconds) / count * 1000.0,
            sends_per_fsync: (self.sends - before.sends) / count,
            slow: between(SLOW_FSYNC_SECS).map(|fast| (count - fast) as u64),
            slowest_within_ms,
            what: self.what,
        })
    }
}

/// The fsyncs over a scenario's run (its warm-ups included), the store's or the durable
/// echo's: how many durable replies one fsync answered, group commit at work.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Fsyncs {
    /// fsyncs of the journal (or WAL).
    pub count: u64,
    /// Their mean duration, ms.
    pub mean_ms: f64,
    /// SendMessage calls answered OK per fsync (the durable echo: calls answered).
    pub sends_per_fsync: f64,
    /// fsyncs longer than 1.6 ms (`SLOW_FSYNC_SECS`): each delays every reply and event
    /// behind it by most of `e2e`'s 2 ms target on its own.
    pub slow: Option<u64>,
    /// The histogram's smallest bucket bound that held every fsync of the run, ms (infinite
    /// past its last finite bound; none where the reading had no buckets).
    pub slowest_within_ms: Option<f64>,
    /// What `sends_per_fsync` counts, for the note.
    #[serde(skip)]
    pub what: &'static str,
}

impl Fsyncs {
    /// For a row's note.
    pub fn describe(&self) -> String {
        let mut text = format!(
            "{} fsyncs, {:.1} {} each, {:.3} ms mean",
            self.count, self.sends_per_fsync, self.what, self.mean_ms
        );
        if let Some(slow) = self.slow {
            text += &format!(", {slow} over {} ms", SLOW_FSYNC_SECS * 1000.0);
        }
        match self.slowest_within_ms {
            Some(ms) if ms.is_finite() => text += &format!(", the slowest at most {ms} ms"),
            Some(_) => text += ", the slowest past the histogram's last bound",
            None => {}
        }
        text
    }
}

/// Where a scenario's h2load rounds go.
pub struct Endpoints<'a> {
    /// The echo ceiling.
    pub echo: &'a str,
    /// The server under test.
    pub server: &'a str,
    /// Where the server's calls are counted: its metrics, to check every call's outcome
    /// (none: unchecked), or, for the durable echo, its `Syncs` call.
    pub counts: CountsAt<'a>,
    /// The server's process, for its CPU per call.
    pub pid: Option<u32>,
    /// The echo's process, for its CPU per call in the same rounds.
    pub echo_pid: Option<u32>,
    /// The server is Phantom's, whose windows `--profile` profiles.
    pub profiled: bool,
}

/// Scenario `name` through h2load, the row `name/h2load`: `rounds` windows of `echo`
/// alternating with `f`'s, adding up to `k.window` each; the row's ratio is to echo's rate
/// over the same rounds.
pub async fn paired(
    name: &str,
    at: &Endpoints<'_>,
    echo: &Fixed,
    f: &Fixed,
    k: &Knobs,
    rounds: u32,
) -> Result<Row, String> {
    eprintln!("phantom-bench: running {name} with h2load ...");
    if at.server.starts_with("unix:") || at.server.contains("://") {
        return Err(format!(
            "--h2load needs a host:port target, not {}",
            at.server
        ));
    }
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (echo_body, body) = (body_file(dir.path(), echo)?, body_file(dir.path(), f)?);
    let method = f.path.rsplit('/').next().unwrap_or(f.path);
    let before = Counted::read(at.counts).await?;
    let rounds = rounds.max(1);
    let slice = k.window / rounds;
    let rewarm = k.warmup.min(Duration::from_millis(500));
    let (mut e, mut s) = (Windows::default(), Windows::default());
    // The CPU of each side's h2load runs, warm-ups included: h2load's own (a child of this
    // tool, waited for) and the serving process's, per call that process counted in them.
    let meter = Meter {
        server: at.pid,
        client: Client::Children,
        profiled: at.profiled,
    };
    let echo_meter = Meter {
        server: at.echo_pid,
        client: Client::Children,
        profiled: false,
    };
    let echo_before = echo_counts(at.echo).await?.calls;
    let (mut runs, mut echo_runs) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let warm = if round == 0 { k.warmup } else { rewarm };
        let from = echo_meter.read();
        e.add(window(at.echo, echo, &echo_body, k, warm, slice).await?);
        echo_runs.push(echo_meter.since(from));
        let from = meter.read();
        // h2load's warm-up is inside its run: the profile starts with the measured part.
        let taking = async {
            tokio::time::sleep(warm).await;
            crate::profile::start(&meter, slice)
        };
        let (measured, taking) = tokio::join!(window(at.server, f, &body, k, warm, slice), taking);
        runs.push(meter.since(from));
        // After the CPU is read: the server resolving the profile's symbols is not a call's.
        taking.finish().await;
        s.add(measured?);
    }
    let spent = cpu::total(runs);
    let echo_calls = echo_counts(at.echo)
        .await?
        .calls
        .saturating_sub(echo_before);
    let echo_cpu = cpu::total(echo_runs).and_then(|c| c.per_call(echo_calls));
    let (checked, served, fsyncs) = match (before, Counted::read(at.counts).await?) {
        (Counted::Scrape(before), Counted::Scrape(after)) => {
            // Each window can cut off what is in flight twice: when its warm-up ends (h2load
            // starts its clients over) and when it ends.
            let cut_bound = (k.concurrency as u64) * u64::from(rounds) * 2;
            let fsyncs = Syncs::from_scrape(&after).since(&Syncs::from_scrape(&before));
            let (before, after) = (
                calls_by_code(&before, method),
                calls_by_code(&after, method),
            );
            let checked = outcome(&before, &after, &s, cut_bound);
            (checked, calls(&before, &after), fsyncs)
        }
        (Counted::Echo(before), Counted::Echo(after)) => (
            String::new(),
            after.calls.saturating_sub(before.calls),
            // The durable echo's group commits, as the store's are given for a send.
            Syncs::from_echo(&after).since(&Syncs::from_echo(&before)),
        ),
        _ => (
            "gRPC outcomes not checked (no metrics address; --target-metrics for a --target)"
                .to_string(),
            0,
            None,
        ),
    };
    let (clients, streams) = shape(k);
    let mut note = format!(
        "h2load -c {clients} -m {streams} -t 1, one request; mean {:.3} ms; \
         echo {:.0}/s through h2load in the same {rounds} rounds",
        s.mean_ms(),
        e.rate()
    );
    if let Some(us) = echo_cpu.and_then(|c| c.server_us) {
        note += &format!(", {us:.1} µs of the echo's CPU per call");
    }
    if !checked.is_empty() {
        note += &format!("; {checked}");
    }
    if s.failed + e.failed > 0 {
        note += &format!("; h2load failed calls: {} (echo {})", s.failed, e.failed);
    }
    Ok(Row {
        scenario: format!("{name}/h2load"),
        per_sec: Some(s.rate()),
        max_ms: Some(s.max_ms),
        note,
        ratio: Some(s.rate() / e.rate()),
        // Without the server's count of calls (no metrics), none.
        cpu: spent.and_then(|c| c.per_call(served)),
        echo_cpu,
        ..Row::default()
    }
    .with_fsyncs(fsyncs))
}

/// Calls the server counted between two counts, whatever their outcome.
fn calls(before: &HashMap<String, f64>, after: &HashMap<String, f64>) -> u64 {
    let total = |m: &HashMap<String, f64>| m.values().sum::<f64>();
    (total(after) - total(before)).max(0.0) as u64
}

/// What the server says of the calls between two counts: h2load counts an HTTP 200 as a
/// success, but a gRPC error is an HTTP 200 too, with the code in its trailers. The server's
/// count includes the warm-ups, which h2load leaves out.
fn outcome(
    before: &HashMap<String, f64>,
    after: &HashMap<String, f64>,
    s: &Windows,
    cut_bound: u64,
) -> String {
    let delta = |code: &str| after.get(code).unwrap_or(&0.0) - before.get(code).unwrap_or(&0.0);
    // The server's code labels are tonic's `Code` names. A call whose connection h2load closes
    // at a window's end is Cancelled, or Unknown if its request was cut before it was whole
    // (tonic's code for a body that broke off).
    let (ok, cut) = (delta("Ok"), delta("Cancelled") + delta("Unknown"));
    let mut failed: Vec<String> = after
        .keys()
        .filter(|c| !matches!(c.as_str(), "Ok" | "Cancelled" | "Unknown"))
        .filter(|c| delta(c) > 0.0)
        .map(|c| format!("{c} {}", delta(c)))
        .collect();
    failed.sort();
    if failed.is_empty() && ok >= s.succeeded as f64 && cut <= cut_bound as f64 {
        format!("server: {ok} OK, {cut} cut off at window ends, none failed")
    } else {
        format!(
            "SERVER ANSWERED ERRORS: {ok} OK against {} counted by h2load, {cut} cancelled or \
             unknown (at most {cut_bound} expected at window ends); {}",
            s.succeeded,
            failed.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_h2loads_summary() {
        let text = "finished in 4.00s, 50352.33 req/s, 4.90MB/s\n\
            requests: 151057 total, 151057 started, 151050 done, 151040 succeeded, 7 failed, \
            3 errored, 0 timeout\n\
            status codes: 151057 2xx, 0 3xx, 0 4xx, 0 5xx\n\
            time for request:       59us      9.68ms      1.13ms       483us    74.85%\n";
        let w = parse(text, 3.0).expect("parsed");
        assert_eq!((w.succeeded, w.failed), (151_040, 10));
        assert!((w.max_ms - 9.68).abs() < 1e-9);
        assert!((w.mean_ms() - 1.13).abs() < 1e-9);
        assert!((w.rate() - 151_040.0 / 3.0).abs() < 1e-6);
        assert_eq!(millis("1.5s"), Some(1500.0));
        assert!(parse("no summary", 1.0).is_err());
    }

    #[test]
    fn a_fixed_request_is_one_grpc_frame() {
        let f = Fixed::new(
            "/phantom.v1.PhantomController/GetContacts",
            Some("t"),
            &phantom::pb::GetContactsRequest {
                page_size: 50,
                page_token: String::new(),
            },
        );
        assert_eq!(f.frame, [0, 0, 0, 0, 2, 0x08, 50]);
    }

    #[test]
    fn errors_the_server_counted_are_reported() {
        let before = HashMap::from([("Ok".to_string(), 10.0)]);
        let w = Windows {
            succeeded: 5,
            ..Default::default()
        };
        let clean = HashMap::from([("Ok".to_string(), 15.0), ("Cancelled".to_string(), 2.0)]);
        assert_eq!(
            outcome(&before, &clean, &w, 4),
            "server: 5 OK, 2 cut off at window ends, none failed"
        );
        let bad = HashMap::from([
            ("Ok".to_string(), 15.0),
            ("Unauthenticated".to_string(), 1.0),
        ]);
        assert!(outcome(&before, &bad, &w, 4).contains("Unauthenticated 1"));
        let too_many_cut = HashMap::from([("Ok".to_string(), 15.0), ("Unknown".to_string(), 9.0)]);
        assert!(outcome(&before, &too_many_cut, &w, 4).starts_with("SERVER ANSWERED ERRORS"));
    }

    /// The server's metrics at one moment: `fsyncs` syncs taking `seconds` in all, `slow`
    /// of them over 1.6 ms and at most 3.2 ms, `sends` SendMessage calls answered OK (and one
    /// refused, which must not count).
    fn metrics(fsyncs: u64, slow: u64, seconds: f64, sends: u64) -> prometheus_parse::Scrape {
        let fast = fsyncs - slow;
        let text = format!(
            "# TYPE phantom_store_sync_duration_seconds histogram\n\
             phantom_store_sync_duration_seconds_bucket{{le=\"0.0001\"}} 0\n\
             phantom_store_sync_duration_seconds_bucket{{le=\"0.0016\"}} {fast}\n\
             phantom_store_sync_duration_seconds_bucket{{le=\"0.0032\"}} {fsyncs}\n\
             phantom_store_sync_duration_seconds_bucket{{le=\"+Inf\"}} {fsyncs}\n\
             phantom_store_sync_duration_seconds_sum {seconds}\n\
             phantom_store_sync_duration_seconds_count {fsyncs}\n\
             # TYPE phantom_grpc_requests_total counter\n\
             phantom_grpc_requests_total{{code=\"Ok\",method=\"SendMessage\"}} {sends}\n\
             phantom_grpc_requests_total{{code=\"InvalidArgument\",method=\"SendMessage\"}} 1\n\
             phantom_grpc_requests_total{{code=\"Ok\",method=\"GetContacts\"}} 500\n"
        );
        prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("parsed")
    }

    #[test]
    fn fsyncs_over_a_run_come_from_two_readings() {
        let before = Syncs::from_scrape(&metrics(100, 1, 0.02, 1_000));
        let after = Syncs::from_scrape(&metrics(300, 4, 0.07, 4_000));
        let f = after.since(&before).expect("synced");
        assert_eq!(f.count, 200);
        assert!((f.sends_per_fsync - 15.0).abs() < 1e-9);
        assert!((f.mean_ms - 0.25).abs() < 1e-9);
        assert_eq!(f.slow, Some(3));
        assert_eq!(
            f.describe(),
            "200 fsyncs, 15.0 sends each, 0.250 ms mean, 3 over 1.6 ms, the slowest at most 3.2 ms"
        );
        // Had none of the run's fsyncs been slow, the bound would be the 1.6 ms bucket's.
        let quick = Syncs::from_scrape(&metrics(300, 1, 0.07, 4_000));
        assert_eq!(
            quick.since(&before).and_then(|f| f.slowest_within_ms),
            Some(1.6)
        );
        // Nothing synced (a read-only run), or a reading missing (no metrics): no figure.
        assert_eq!(after.since(&after), None);
        assert_eq!(Syncs::between(Some(before.clone()), None), None);
        assert_eq!(Syncs::between(Some(before), Some(after)), Some(f));
    }

    #[test]
    fn the_durable_echos_fsyncs_read_like_the_stores() {
        use crate::echo::pb::{SyncBucket, SyncsReply};
        let reply = |fsyncs: u64, slow: u64, bodies: u64| SyncsReply {
            fsyncs,
            seconds: fsyncs as f64 * 0.0005,
            bodies,
            buckets: vec![
                SyncBucket {
                    le_seconds: 0.0016,
                    count: fsyncs - slow,
                },
                SyncBucket {
                    le_seconds: f64::INFINITY,
                    count: fsyncs,
                },
            ],
            calls: bodies,
        };
        let before = Syncs::from_echo(&reply(10, 0, 100));
        let after = Syncs::from_echo(&reply(30, 2, 700));
        let f = after.since(&before).expect("synced");
        assert_eq!((f.count, f.slow), (20, Some(2)));
        assert!(
            f.describe()
                .starts_with("20 fsyncs, 30.0 calls each, 0.500 ms mean, 2 over")
        );
    }

    #[test]
    fn an_fsync_past_the_histograms_last_bound_is_said_so() {
        let before = Syncs::from_scrape(&metrics(10, 0, 0.001, 100));
        let mut after = Syncs::from_scrape(&metrics(20, 0, 0.5, 200));
        // One of the ten new fsyncs only in the +Inf bucket.
        for b in after.buckets.iter_mut().filter(|b| b.0.is_finite()) {
            b.1 -= 1.0;
        }
        let f = after.since(&before).expect("synced");
        assert_eq!(f.slow, Some(1));
        assert!(
            f.describe()
                .ends_with("the slowest past the histogram's last bound")
        );
    }
}
