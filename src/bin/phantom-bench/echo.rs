//! The ceiling: a bare tonic echo service (no actors, no storage), served by this same binary
//! in a child process so that it costs what the real server costs in processes and sockets.
//! With `--echo-coalesced` its connections go through the server's own wrapper instead.
//!
//! With `--echo-durable DIR` the same service answers each call only once its body is on the
//! disk: appended to a file in DIR and fdatasync'd, in group commits on a writer thread and a
//! syncer thread, as the server's store does it, with zeros written a chunk ahead as the store
//! writes them in its journal (`store/lsm/prefill.rs`), so that an fsync overwrites blocks
//! that exist. That is the least a durable reply costs on a machine, with no actors, no index
//! and no events (the `echo-durable` scenario).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

#[allow(missing_docs, clippy::all)]
pub mod pb {
    tonic::include_proto!("phantom.bench.v1");
}

use pb::echo_server::{Echo, EchoServer};

/// A body to make durable, and where to say it is (or why it is not).
type Job = (Vec<u8>, oneshot::Sender<Result<(), String>>);

/// Calls queued for the writer; past this the handlers wait, as the server's mailboxes do.
const QUEUE: usize = 4096;
/// Most bodies in one group commit (the server's store takes as many).
const MAX_GROUP: usize = 512;
/// Written groups waiting for the syncer before the writer waits in turn (as the store).
const SYNC_QUEUE: usize = 64;

struct Service {
    /// The durable log's queue, when the echo is durable.
    durable: Option<mpsc::Sender<Job>>,
    /// The durable log's fsyncs (none for the bare echo).
    synced: Option<Arc<Synced>>,
    /// Unary calls answered OK.
    calls: AtomicU64,
}

/// What the durable log's syncer has done: its fsyncs, timed into the store's buckets, and
/// the bodies they made durable.
struct Synced {
    seconds: prometheus::Histogram,
    bodies: AtomicU64,
}

impl Synced {
    fn new() -> Result<Synced, String> {
        let opts = prometheus::HistogramOpts::new("echo_sync_seconds", "fdatasyncs of the log")
            .buckets(phantom::core::stats::sync_buckets());
        Ok(Synced {
            seconds: prometheus::Histogram::with_opts(opts).map_err(|e| e.to_string())?,
            bodies: AtomicU64::new(0),
        })
    }

    /// The counts so far, the buckets ending with +Inf as in the server's exposition.
    fn reply(&self) -> pb::SyncsReply {
        use prometheus::core::Collector;
        let fsyncs = self.seconds.get_sample_count();
        let mut buckets: Vec<pb::SyncBucket> = self
            .seconds
            .collect()
            .iter()
            .flat_map(|family| family.get_metric())
            .flat_map(|m| m.get_histogram().get_bucket())
            .map(|b| pb::SyncBucket {
                le_seconds: b.upper_bound(),
                count: b.cumulative_count(),
            })
            .collect();
        buckets.push(pb::SyncBucket {
            le_seconds: f64::INFINITY,
            count: fsyncs,
        });
        pb::SyncsReply {
            fsyncs,
            seconds: self.seconds.get_sample_sum(),
            bodies: self.bodies.load(Ordering::Relaxed),
            buckets,
            // The service's count, not the log's.
            calls: 0,
        }
    }
}

#[tonic::async_trait]
impl Echo for Service {
    async fn unary(
        &self,
        req: Request<pb::EchoMessage>,
    ) -> Result<Response<pb::EchoMessage>, Status> {
        let message = req.into_inner();
        if let Some(log) = &self.durable {
            let (reply, synced) = oneshot::channel();
            let stopped = || Status::unavailable("the durable echo's log has stopped");
            log.send((message.body.clone(), reply))
                .await
                .map_err(|_| stopped())?;
            synced
                .await
                .map_err(|_| stopped())?
                .map_err(Status::unavailable)?;
        }
        self.calls.fetch_add(1, Ordering::Relaxed);
        Ok(Response::new(message))
    }

    async fn syncs(
        &self,
        _: Request<pb::SyncsRequest>,
    ) -> Result<Response<pb::SyncsReply>, Status> {
        let mut reply = self.synced.as_ref().map(|s| s.reply()).unwrap_or_default();
        reply.calls = self.calls.load(Ordering::Relaxed);
        Ok(Response::new(reply))
    }
}

/// Opens `dir/echo.log` and starts its writer and syncer threads; returns the writer's queue
/// and what the syncer has done.
fn durable_log(dir: &Path) -> Result<(mpsc::Sender<Job>, Arc<Synced>), String> {
    let path = dir.join("echo.log");
    let file = File::options()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let synced = file.try_clone().map_err(|e| e.to_string())?;
    let (to_writer, jobs) = mpsc::channel(QUEUE);
    let (to_syncer, written) = std_mpsc::sync_channel(SYNC_QUEUE);
    let synced_so_far = Arc::new(Synced::new()?);
    let counts = synced_so_far.clone();
    std::thread::Builder::new()
        .name("echo-writer".into())
        .spawn(move || write_groups(file, jobs, to_syncer))
        .map_err(|e| e.to_string())?;
    std::thread::Builder::new()
        .name("echo-syncer".into())
        .spawn(move || sync_groups(&synced, written, &counts))
        .map_err(|e| e.to_string())?;
    Ok((to_writer, synced_so_far))
}

/// The replies of one written group, in order.
type Replies = Vec<oneshot::Sender<Result<(), String>>>;

/// Zeros the echo's writer keeps written ahead of its bodies, and the chunk it writes them in
/// (the store's journal prefill's sizes).
const ZEROS_AHEAD: u64 = 32 << 10;
const ZEROS_CHUNK: usize = 64 << 10;

/// The writer: takes every job waiting (up to `MAX_GROUP`), appends their bodies (each after
/// its length) in one write, and hands the group's replies to the syncer; then keeps zeros
/// written `ZEROS_AHEAD` beyond the end.
fn write_groups(
    file: File,
    mut jobs: mpsc::Receiver<Job>,
    to_syncer: std_mpsc::SyncSender<Replies>,
) {
    let mut buf = Vec::new();
    let (mut end, mut zeroed) = (0u64, 0u64);
    let zeros = vec![0u8; ZEROS_CHUNK];
    while let Some(first) = jobs.blocking_recv() {
        buf.clear();
        let mut replies = Vec::new();
        let mut next = Some(first);
        while let Some((body, reply)) = next {
            buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
            buf.extend_from_slice(&body);
            replies.push(reply);
            next = (replies.len() < MAX_GROUP)
                .then(|| jobs.try_recv().ok())
                .flatten();
        }
        if let Err(e) = file.write_all_at(&buf, end) {
            answer(replies, Err(format!("write: {e}")));
            return;
        }
        end += buf.len() as u64;
        if let Err(std_mpsc::SendError(replies)) = to_syncer.send(replies) {
            answer(replies, Err("the syncer has stopped".into()));
            return;
        }
        while zeroed < end + ZEROS_AHEAD {
            // A failed write of zeros costs only the saving: the bodies go on regardless.
            let _ = file.write_all_at(&zeros, zeroed.max(end));
            zeroed = zeroed.max(end) + ZEROS_CHUNK as u64;
        }
    }
}

/// The syncer: one fdatasync for every written group waiting, then their replies.
fn sync_groups(file: &File, written: std_mpsc::Receiver<Replies>, counts: &Synced) {
    while let Ok(first) = written.recv() {
        let mut waiting = vec![first];
        waiting.extend(written.try_iter());
        let started = Instant::now();
        let synced = file.sync_data().map_err(|e| format!("fdatasync: {e}"));
        counts.seconds.observe(started.elapsed().as_secs_f64());
        let bodies: usize = waiting.iter().map(Vec::len).sum();
        counts.bodies.fetch_add(bodies as u64, Ordering::Relaxed);
        let failed = synced.is_err();
        for replies in waiting {
            answer(replies, synced.clone());
        }
        if failed {
            return;
        }
    }
}

/// Says `result` to every caller of a group.
fn answer(replies: Replies, result: Result<(), String>) {
    for reply in replies {
        let _ = reply.send(result.clone());
    }
}

/// Serves echo on `listen` (`host:port` or `unix:/path`) until killed; prints the bound
/// address first. `coalesced` hands each connection to tonic through the server's own wrapper
/// (`phantom::net::coalesced`); `durable` makes each reply wait until its body is fdatasync'd
/// in a file in that directory.
pub async fn serve(listen: &str, coalesced: bool, durable: Option<&Path>) -> Result<(), String> {
    let server = router(durable)?;
    if let Some(path) = listen.strip_prefix("unix:") {
        let listener = tokio::net::UnixListener::bind(path)
            .map_err(|e| format!("cannot bind {listen}: {e}"))?;
        println!("echo listening on {listen}");
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
        return serve_on(server, incoming, coalesced).await;
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot bind {listen}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    println!("echo listening on {addr}");
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    serve_on(server, incoming, coalesced).await
}

/// The echo service, durable with a log in `durable`.
fn router(durable: Option<&Path>) -> Result<tonic::transport::server::Router, String> {
    let (durable, synced) = durable.map(durable_log).transpose()?.unzip();
    Ok(
        tonic::transport::Server::builder().add_service(EchoServer::new(Service {
            durable,
            synced,
            calls: AtomicU64::new(0),
        })),
    )
}

/// Serves `incoming`'s connections, bare or through the server's wrapper.
async fn serve_on<S, IO, E>(
    server: tonic::transport::server::Router,
    incoming: S,
    coalesced: bool,
) -> Result<(), String>
where
    S: tokio_stream::Stream<Item = Result<IO, E>> + Send + 'static,
    IO: tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + tonic::transport::server::Connected
        + Unpin
        + Send
        + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let served = if coalesced {
        server
            .serve_with_incoming(incoming.map(phantom::net::coalesced))
            .await
    } else {
        server.serve_with_incoming(incoming).await
    };
    served.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_durable_reply_comes_after_its_body_is_in_the_log() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (log, counts) = durable_log(dir.path()).expect("log");
        let bodies: [&[u8]; 3] = [b"one", b"", b"three"];
        let mut want = Vec::new();
        for body in bodies {
            let (reply, synced) = oneshot::channel();
            log.send((body.to_vec(), reply)).await.expect("queued");
            synced.await.expect("answered").expect("synced");
            // Answered, so already in the file, each body after its length; after them only
            // the zeros written ahead.
            want.extend_from_slice(&(body.len() as u32).to_le_bytes());
            want.extend_from_slice(body);
            let on_disk = std::fs::read(dir.path().join("echo.log")).expect("log file");
            assert_eq!(on_disk[..want.len()], want[..]);
            assert!(on_disk[want.len()..].iter().all(|&b| b == 0));
        }
        // One fsync per call here (each waited for its reply), counted as the store counts.
        let so_far = counts.reply();
        assert_eq!((so_far.fsyncs, so_far.bodies), (3, 3));
        let bounds = phantom::core::stats::sync_buckets();
        assert_eq!(so_far.buckets.len(), bounds.len() + 1);
        assert_eq!(so_far.buckets[0].le_seconds, bounds[0]);
        let all = so_far.buckets.last().map(|b| (b.le_seconds, b.count));
        assert_eq!(all, Some((f64::INFINITY, 3)));
    }

    #[tokio::test]
    async fn the_echo_answers_over_a_unix_socket_bare_or_coalesced() {
        let dir = tempfile::tempdir().expect("temp dir");
        for coalesced in [false, true] {
            let path = dir.path().join(format!("echo-{coalesced}.sock"));
            let listener = tokio::net::UnixListener::bind(&path).expect("bind");
            let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
            let served = tokio::spawn(serve_on(router(None).expect("router"), incoming, coalesced));
            let conn = phantom::client::connect(&format!("unix:{}", path.display()))
                .await
                .expect("connected");
            let body = b"over a unix socket".to_vec();
            let echoed = pb::echo_client::EchoClient::new(conn)
                .unary(pb::EchoMessage { body: body.clone() })
                .await
                .expect("echoed");
            assert_eq!(echoed.into_inner().body, body, "coalesced: {coalesced}");
            served.abort();
        }
    }

    #[tokio::test]
    async fn the_echo_counts_the_calls_it_answers() {
        let bare = Service {
            durable: None,
            synced: None,
            calls: AtomicU64::new(0),
        };
        for body in [b"a".to_vec(), Vec::new()] {
            let echoed = bare
                .unary(Request::new(pb::EchoMessage { body: body.clone() }))
                .await
                .expect("echoed");
            assert_eq!(echoed.into_inner().body, body);
        }
        let counts = bare
            .syncs(Request::new(pb::SyncsRequest {}))
            .await
            .expect("counts")
            .into_inner();
        assert_eq!((counts.calls, counts.fsyncs), (2, 0));
    }
}
