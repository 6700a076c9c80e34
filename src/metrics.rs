//! Prometheus metrics (the `prometheus` crate) and their HTTP endpoint, `GET /metrics` on
//! `[metrics] listen`; with `[metrics] profiling`, also `GET /debug/pprof/profile` (`profile`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::LazyLock;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::core::stats::{DeliveryStats, StoreStats};

/// Requests and replies queued at or being handled by an actor, by actor, as seen from the gRPC
/// layer (actix does not expose mailbox lengths). Process-wide: every server registers it.
pub static ACTOR_IN_FLIGHT: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    IntGaugeVec::new(
        Opts::new(
            "phantom_actor_mailbox_depth",
            "Requests from the gRPC layer queued at or being handled by an actor.",
        ),
        &["actor"],
    )
    .expect("valid metric")
});

/// `ACTOR_IN_FLIGHT`'s gauge for actor type `A`, resolved once per type: naming the actor and
/// looking up its label cost ~500 instructions per call (callgrind), a map of types ~50.
pub fn actor_in_flight<A: 'static>() -> prometheus::IntGauge {
    use std::any::TypeId;
    static BY_TYPE: LazyLock<std::sync::RwLock<foldhash::HashMap<TypeId, prometheus::IntGauge>>> =
        LazyLock::new(Default::default);
    let id = TypeId::of::<A>();
    if let Some(g) = BY_TYPE.read().ok().and_then(|m| m.get(&id).cloned()) {
        return g;
    }
    let actor = std::any::type_name::<A>()
        .rsplit("::")
        .next()
        .unwrap_or("actor");
    let g = ACTOR_IN_FLIGHT.with_label_values(&[actor]);
    if let Ok(mut m) = BY_TYPE.write() {
        m.insert(id, g.clone());
    }
    g
}

/// Per-call figures, recorded by the call layer for every RPC.
#[derive(Clone)]
pub struct CallMetrics {
    /// Finished calls by service, method and status code.
    pub requests: IntCounterVec,
    /// Call duration by service and method (streams: until they end).
    pub latency: HistogramVec,
}

impl CallMetrics {
    pub(crate) fn new() -> prometheus::Result<Self> {
        Ok(CallMetrics {
            requests: IntCounterVec::new(
                Opts::new(
                    "phantom_grpc_requests_total",
                    "Finished gRPC calls by service, method and status code.",
                ),
                &["service", "method", "code"],
            )?,
            latency: HistogramVec::new(
                HistogramOpts::new(
                    "phantom_grpc_request_duration_seconds",
                    "gRPC call duration by service and method (streams: until they end).",
                )
                .buckets(prometheus::exponential_buckets(0.00005, 2.0, 20)?),
                &["service", "method"],
            )?,
        })
    }
}

/// Every metric of one server.
#[derive(Clone)]
pub struct Metrics {
    /// What `/metrics` shows.
    pub registry: Registry,
    /// RPC counters and latencies.
    pub calls: CallMetrics,
}

impl Metrics {
    /// A registry holding the call, delivery, store and actor metrics.
    pub fn new(delivery: &DeliveryStats, store: &StoreStats) -> Result<Self, String> {
        let build = || -> prometheus::Result<Metrics> {
            let registry = Registry::new();
            let calls = CallMetrics::new()?;
            registry.register(Box::new(calls.requests.clone()))?;
            registry.register(Box::new(calls.latency.clone()))?;
            delivery.register(&registry)?;
            store.register(&registry)?;
            registry.register(Box::new(ACTOR_IN_FLIGHT.clone()))?;
            Ok(Metrics { registry, calls })
        };
        build().map_err(|e| format!("metrics: {e}"))
    }

    /// The registry in Prometheus text format.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        out
    }
}

/// Serves `GET /metrics` on `listen` until `stop` is cancelled, and CPU profiles if `profiling`;
/// returns the bound address.
pub async fn serve(
    listen: &str,
    metrics: Metrics,
    profiling: bool,
    stop: CancellationToken,
) -> Result<SocketAddr, String> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("metrics.listen: cannot bind {listen}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        loop {
            let (tcp, _) = tokio::select! {
                _ = stop.cancelled() => return,
                accepted = crate::net::accept(&listener, "metrics") => accepted,
            };
            let metrics = metrics.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let conn_stop = stop.clone();
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (metrics, stop) = (metrics.clone(), conn_stop.clone());
                    async move { Ok::<_, Infallible>(answer(&req, &metrics, profiling, &stop).await) }
                });
                let conn = http1::Builder::new().serve_connection(TokioIo::new(tcp), svc);
                tokio::select! {
                    _ = conn => {}
                    _ = stop.cancelled() => {}
                }
            });
        }
    });
    Ok(local)
}

/// Where CPU profiles are served (`profile`), the path Go's net/http/pprof uses.
pub const PROFILE_PATH: &str = "/debug/pprof/profile";

fn reply(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

/// A CPU profile of the process, as collapsed stacks (`crate::profile`).
async fn profile(
    query: Option<&str>,
    profiling: bool,
    stop: &CancellationToken,
) -> Response<Full<Bytes>> {
    use crate::profile::{ProfileError, requested, take};
    let text = |status, body: String| reply(status, "text/plain", body.into_bytes());
    if !profiling {
        return text(
            StatusCode::NOT_FOUND,
            "profiling is off: set [metrics] profiling = true\n".into(),
        );
    }
    match async { take(requested(query)?, stop).await }.await {
        Ok(stacks) => text(StatusCode::OK, stacks),
        Err(ProfileError::BadRequest(m)) => text(StatusCode::BAD_REQUEST, m + "\n"),
        Err(ProfileError::Busy) => text(
            StatusCode::CONFLICT,
            "a profile is being taken already; one at a time\n".into(),
        ),
        Err(ProfileError::Failed(m)) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("profiling failed: {m}\n"),
        ),
    }
}

/// The reply to one request of the listener: metrics, a profile (when `profiling`), or why not.
async fn answer<B>(
    req: &Request<B>,
    metrics: &Metrics,
    profiling: bool,
    stop: &CancellationToken,
) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&hyper::Method::GET, "/metrics") => {
            reply(StatusCode::OK, prometheus::TEXT_FORMAT, metrics.render())
        }
        (&hyper::Method::GET, PROFILE_PATH) => profile(req.uri().query(), profiling, stop).await,
        (&hyper::Method::GET, _) => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            format!("only /metrics and {PROFILE_PATH} are served here\n").into_bytes(),
        ),
        _ => reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            b"GET /metrics\n".to_vec(),
        ),
    }
}
