//! The tower layer every call passes through: it enforces the deadline (the client's
//! `grpc-timeout` or `limits.unary_deadline_ms`, whichever is sooner) with DEADLINE_EXCEEDED,
//! answers an oversized request with RESOURCE_EXHAUSTED, and records the call's code and
//! duration in the metrics.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use pin_project_lite::pin_project;
use prometheus::{Histogram, IntCounter, IntCounterVec};
use tokio::time::Sleep;
use tonic::body::Body;
use tonic::{Code, Status};
use tower::{Layer, Service};

use super::status::too_large;
use crate::metrics::CallMetrics;

/// tonic's own `grpc-timeout` handling sits outside this layer and answers CANCELLED; ending
/// the call a little earlier (a twentieth of the deadline, at most this much) means the client
/// gets the right code, DEADLINE_EXCEEDED, and has it before its own timer fires.
const AHEAD_OF_CLIENT: Duration = Duration::from_millis(20);

/// Routes with metrics of their own; calls to further paths (a scanner's, say) are counted
/// together under `OTHER`, so that no client can make the metrics grow without bound.
const MAX_ROUTES: usize = 256;
/// Service and method label of the calls past `MAX_ROUTES`.
const OTHER: &str = "other";

/// Header names looked up on every call, made once: a lookup by `&str` parses the name
/// first (~300 instructions a lookup, counted with callgrind).
static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// Builds [`CallService`]s.
#[derive(Clone)]
pub struct CallLayer {
    /// Deadline of a call whose client set none (or a later one).
    pub default_deadline: Duration,
    routes: Arc<Routes>,
}

impl CallLayer {
    /// A layer enforcing `default_deadline` and recording into `metrics`.
    pub fn new(default_deadline: Duration, metrics: CallMetrics) -> Self {
        CallLayer {
            default_deadline,
            routes: Arc::new(Routes::new(metrics)),
        }
    }
}

/// Each route's metric handles, resolved on its first call: a label lookup costs a hash and a
/// lock, and a call would otherwise make two (profiled on GetContacts).
struct Routes {
    metrics: CallMetrics,
    known: RwLock<foldhash::HashMap<String, Arc<RouteMetrics>>>,
    /// The handles of every path past `MAX_ROUTES`.
    other: Arc<RouteMetrics>,
}

/// The handles of one route.
struct RouteMetrics {
    latency: Histogram,
    requests: IntCounterVec,
    labels: (String, String),
    /// One counter per status code, by its number.
    codes: [OnceLock<IntCounter>; 17],
}

impl RouteMetrics {
    fn count(&self, code: Code) {
        let (service, method) = (&self.labels.0, &self.labels.1);
        if let Some(slot) = self.codes.get(code as usize) {
            slot.get_or_init(|| {
                self.requests
                    .with_label_values(&[service, method, code_label(code)])
            })
            .inc();
        }
    }
}

impl Routes {
    fn new(metrics: CallMetrics) -> Self {
        Routes {
            other: build(&metrics, OTHER, OTHER),
            metrics,
            known: RwLock::default(),
        }
    }

    fn of(&self, path: &str) -> Arc<RouteMetrics> {
        if let Some(known) = self.known.read().ok().and_then(|k| k.get(path).cloned()) {
            return known;
        }
        let Ok(mut known) = self.known.write() else {
            return self.other.clone();
        };
        if let Some(m) = known.get(path) {
            return m.clone();
        }
        if known.len() >= MAX_ROUTES {
            return self.other.clone();
        }
        let (service, method) = route(path);
        let m = build(&self.metrics, service, method);
        known.insert(path.to_string(), m.clone());
        m
    }
}

/// The handles of the route labelled `service` and `method`.
fn build(metrics: &CallMetrics, service: &str, method: &str) -> Arc<RouteMetrics> {
    Arc::new(RouteMetrics {
        latency: metrics.latency.with_label_values(&[service, method]),
        requests: metrics.requests.clone(),
        labels: (service.to_string(), method.to_string()),
        codes: Default::default(),
    })
}

impl<S> Layer<S> for CallLayer {
    type Service = CallService<S>;
    fn layer(&self, inner: S) -> CallService<S> {
        CallService {
            inner,
            layer: self.clone(),
        }
    }
}

/// See the module doc.
#[derive(Clone)]
pub struct CallService<S> {
    inner: S,
    layer: CallLayer,
}

/// Parses a `grpc-timeout` header value: up to 8 digits and a unit (H, M, S, m, u, n).
fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(&GRPC_TIMEOUT)?.to_str().ok()?;
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// `/package.Service/Method` as (service, method).
fn route(path: &str) -> (&str, &str) {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let service = parts.next().unwrap_or_default();
    let method = parts.next().unwrap_or_default();
    (service, method)
}

/// A status code's name as the metrics label it is (`NotFound`, as tonic's `Debug` spells it),
/// without formatting a string on every call.
fn code_label(code: Code) -> &'static str {
    match code {
        Code::Ok => "Ok",
        Code::Cancelled => "Cancelled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// What is recorded when a call ends.
struct Record {
    route: Arc<RouteMetrics>,
    started: Instant,
}

impl Record {
    fn finish(self, code: Code) {
        self.route.count(code);
        self.route
            .latency
            .observe(self.started.elapsed().as_secs_f64());
    }
}

fn code_of(headers: &HeaderMap) -> Option<Code> {
    let v = headers.get(&GRPC_STATUS)?.to_str().ok()?;
    Some(Code::from_i32(v.parse().ok()?))
}

impl<S> Service<Request<Body>> for CallService<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = CallFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let record = Record {
            route: self.layer.routes.of(req.uri().path()),
            started: Instant::now(),
        };
        let deadline = match grpc_timeout(req.headers()) {
            Some(client) => client
                .saturating_sub((client / 20).clamp(Duration::from_millis(1), AHEAD_OF_CLIENT))
                .min(self.layer.default_deadline),
            None => self.layer.default_deadline,
        };
        // The clone is ready (tower's usual swap), the original takes the next poll_ready.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        CallFuture {
            inner: inner.call(req),
            timer: None,
            expires: tokio::time::Instant::from_std(record.started) + deadline,
            deadline,
            record: Some(record),
        }
    }
}

pin_project! {
    /// A call in flight: the handler's future, and its deadline's timer once it has to wait.
    /// For a stream it covers producing the response head, not the stream itself.
    pub struct CallFuture<F> {
        #[pin]
        inner: F,
        // Armed on the first poll that leaves the call pending: a call answered at once (a
        // published page of contacts) never touches the timer wheel.
        #[pin]
        timer: Option<Sleep>,
        // When the timer fires: the call's start plus `deadline`.
        expires: tokio::time::Instant,
        deadline: Duration,
        record: Option<Record>,
    }
}

impl<F, E> Future for CallFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
{
    type Output = Result<Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(response) = this.inner.poll(cx) {
            let response = response?;
            return Poll::Ready(Ok(match this.record.take() {
                Some(record) => observe(response, record),
                None => response,
            }));
        }
        if this.timer.is_none() {
            this.timer
                .set(Some(tokio::time::sleep_until(*this.expires)));
        }
        let expired = match this.timer.as_pin_mut() {
            Some(timer) => timer.poll(cx).is_ready(),
            None => false,
        };
        if !expired {
            return Poll::Pending;
        }
        // Dropping the handler's future (with this one) cancels the work it had not done yet.
        if let Some(record) = this.record.take() {
            record.finish(Code::DeadlineExceeded);
        }
        Poll::Ready(Ok(Status::deadline_exceeded(format!(
            "deadline of {} ms exceeded; the call was cancelled",
            this.deadline.as_millis()
        ))
        .into_http()))
    }
}

/// The response head is out: a status in its headers ends the call now (trailers-only
/// response); otherwise the body records the call when it ends.
fn observe(response: Response<Body>, record: Record) -> Response<Body> {
    if let Some(code) = code_of(response.headers()) {
        if code == Code::OutOfRange
            && let Some(status) = Status::from_header_map(response.headers())
            && let Some(mapped) = too_large(&status)
        {
            record.finish(mapped.code());
            return mapped.into_http();
        }
        record.finish(code);
        return response;
    }
    response.map(|body| {
        Body::new(Observed {
            inner: body,
            rest: Bytes::new(),
            record: Some(record),
        })
    })
}

/// The largest DATA frame h2 copies into its write buffer on a connection without vectored
/// writes (`net::Coalesced`) instead of writing the buffer out before it.
const COPIED_FRAME: usize = 1023;

/// Chunks up to this size leave in pieces of at most `COPIED_FRAME` bytes (a GetContacts page
/// of 20 contacts is ~1.45 KiB: two pieces), so that many replies share one write; larger ones
/// leave whole, where a frame of their own costs less than the many copied pieces would.
const SPLIT_UP_TO: usize = 4 * COPIED_FRAME;

/// The next piece of `chunk` to send, leaving the rest in it (see `SPLIT_UP_TO`).
fn next_piece(chunk: &mut Bytes) -> Bytes {
    let len = chunk.len();
    if len <= COPIED_FRAME || len > SPLIT_UP_TO {
        return std::mem::take(chunk);
    }
    // Even pieces: 1,450 bytes go as 725 + 725, not 1,023 + 427.
    let pieces = len.div_ceil(COPIED_FRAME);
    chunk.split_to(len.div_ceil(pieces))
}

/// A response body that records the call when its trailers (with `grpc-status`) go out, or as
/// CANCELLED if the client leaves first, and hands h2 its data in pieces it can coalesce.
struct Observed {
    inner: Body,
    /// What is left of a data chunk handed out in pieces (`next_piece`).
    rest: Bytes,
    record: Option<Record>,
}

impl HttpBody for Observed {
    type Data = <Body as HttpBody>::Data;
    type Error = <Body as HttpBody>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        if !self.rest.is_empty() {
            let piece = next_piece(&mut self.rest);
            return Poll::Ready(Some(Ok(Frame::data(piece))));
        }
        let mut polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &mut polled
            && let Some(data) = frame.data_mut()
        {
            self.rest = std::mem::take(data);
            *data = next_piece(&mut self.rest);
        }
        let ended = match &polled {
            Poll::Ready(Some(Ok(frame))) => frame
                .trailers_ref()
                .map(|trailers| code_of(trailers).unwrap_or(Code::Unknown)),
            Poll::Ready(Some(Err(_))) => Some(Code::Internal),
            Poll::Ready(None) => Some(Code::Ok),
            Poll::Pending => None,
        };
        if let Some(code) = ended
            && let Some(record) = self.record.take()
        {
            record.finish(code);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let (inner, rest) = (self.inner.size_hint(), self.rest.len() as u64);
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + rest);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + rest);
        }
        hint
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        if let Some(record) = self.record.take() {
            record.finish(Code::Cancelled);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn data_goes_out_in_pieces_h2_can_copy_and_arrives_whole() {
        use http_body_util::BodyExt;
        let bytes = |n: usize| Bytes::from((0..n).map(|i| i as u8).collect::<Vec<u8>>());
        let sent = [bytes(1450), bytes(100), bytes(5000), bytes(3000)];
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        let frames: Vec<Result<Frame<Bytes>, Status>> = sent
            .iter()
            .cloned()
            .map(|b| Ok(Frame::data(b)))
            .chain([Ok(Frame::trailers(trailers))])
            .collect();
        let inner = Body::new(http_body_util::StreamBody::new(futures::stream::iter(
            frames,
        )));
        let mut body = Observed {
            inner,
            rest: Bytes::new(),
            record: None,
        };
        let (mut lens, mut joined, mut got_trailers) = (Vec::new(), Vec::new(), false);
        while let Some(frame) = body.frame().await {
            match frame.unwrap().into_data() {
                Ok(d) => {
                    lens.push(d.len());
                    joined.extend_from_slice(&d);
                }
                Err(f) => got_trailers = f.is_trailers(),
            }
        }
        // 1,450 in two even pieces, 100 whole, 5,000 whole (past SPLIT_UP_TO), 3,000 in three.
        assert_eq!(lens, [725, 725, 100, 5000, 1000, 1000, 1000]);
        assert_eq!(joined, sent.concat());
        assert!(got_trailers, "the trailers follow the data");
        assert!(lens.iter().all(|&n| n <= COPIED_FRAME || n > SPLIT_UP_TO));
    }

    #[test]
    fn grpc_timeout_units() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert("grpc-timeout", v.parse().unwrap());
            grpc_timeout(&m)
        };
        assert_eq!(h("100m"), Some(Duration::from_millis(100)));
        assert_eq!(h("2S"), Some(Duration::from_secs(2)));
        assert_eq!(h("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(h("5x"), None);
        assert_eq!(h("123456789m"), None, "at most 8 digits");
    }

    #[test]
    fn routes_resolve_once_and_stop_growing_at_the_cap() {
        let routes = Routes::new(CallMetrics::new().unwrap());
        let first = routes.of("/phantom.v1.PhantomController/GetContacts");
        assert_eq!(
            first.labels,
            ("phantom.v1.PhantomController".into(), "GetContacts".into())
        );
        let again = routes.of("/phantom.v1.PhantomController/GetContacts");
        assert!(
            Arc::ptr_eq(&first, &again),
            "the handles were looked up once"
        );
        first.count(Code::Ok);
        again.count(Code::Ok);
        first.count(Code::NotFound);
        let counted = |code| {
            routes
                .metrics
                .requests
                .with_label_values(&["phantom.v1.PhantomController", "GetContacts", code])
                .get()
        };
        assert_eq!((counted("Ok"), counted("NotFound")), (2, 1));
        for i in 0..MAX_ROUTES + 10 {
            routes.of(&format!("/probe.Service/M{i}"));
        }
        assert_eq!(routes.known.read().unwrap().len(), MAX_ROUTES);
        let late = routes.of("/probe.Service/Late");
        assert_eq!(late.labels, (OTHER.into(), OTHER.into()));
        assert!(Arc::ptr_eq(&late, &routes.of("/probe.Service/Later")));
        // Routes seen before the cap keep their own.
        assert!(Arc::ptr_eq(
            &first,
            &routes.of("/phantom.v1.PhantomController/GetContacts")
        ));
    }

    #[test]
    fn code_labels_are_the_debug_names() {
        for i in 0..=16 {
            let code = Code::from_i32(i);
            assert_eq!(code_label(code), format!("{code:?}"));
        }
    }
}
