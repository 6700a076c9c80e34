//! The tower layer every call passes through: it enforces the deadline (the client's
//! `grpc-timeout` or `limits.unary_deadline_ms`, whichever is sooner) with DEADLINE_EXCEEDED,
//! answers an oversized request with RESOURCE_EXHAUSTED, and records the call's code and
//! duration in the metrics.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{HeaderMap, Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tonic::body::Body;
use tonic::{Code, Status};
use tower::{Layer, Service};

use super::status::too_large;
use crate::metrics::CallMetrics;

/// tonic's own `grpc-timeout` handling sits outside this layer and answers CANCELLED; ending
/// the call a little earlier (a twentieth of the deadline, at most this much) means the client
/// gets the right code, DEADLINE_EXCEEDED, and has it before its own timer fires.
const AHEAD_OF_CLIENT: Duration = Duration::from_millis(20);

/// Builds [`CallService`]s.
#[derive(Clone)]
pub struct CallLayer {
    /// Deadline of a call whose client set none (or a later one).
    pub default_deadline: Duration,
    /// Where figures go.
    pub metrics: CallMetrics,
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
    let v = headers.get("grpc-timeout")?.to_str().ok()?;
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
    metrics: CallMetrics,
    /// The request path (shared bytes, not copied), split only when the call ends.
    path: Option<http::uri::PathAndQuery>,
    started: Instant,
}

impl Record {
    fn finish(self, code: Code) {
        let (service, method) = route(self.path.as_ref().map_or("", |p| p.path()));
        self.metrics
            .requests
            .with_label_values(&[service, method, code_label(code)])
            .inc();
        self.metrics
            .latency
            .with_label_values(&[service, method])
            .observe(self.started.elapsed().as_secs_f64());
    }
}

fn code_of(headers: &HeaderMap) -> Option<Code> {
    let v = headers.get("grpc-status")?.to_str().ok()?;
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
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let record = Record {
            metrics: self.layer.metrics.clone(),
            path: req.uri().path_and_query().cloned(),
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
        Box::pin(async move {
            // For a stream this covers producing the response head, not the stream itself.
            let response = match tokio::time::timeout(deadline, inner.call(req)).await {
                Ok(r) => r?,
                Err(_) => {
                    // Dropping the handler's future cancels the work it had not done yet.
                    record.finish(Code::DeadlineExceeded);
                    return Ok(Status::deadline_exceeded(format!(
                        "deadline of {} ms exceeded; the call was cancelled",
                        deadline.as_millis()
                    ))
                    .into_http());
                }
            };
            // A status in the headers: the call is over already (trailers-only response).
            if let Some(code) = code_of(response.headers()) {
                if code == Code::OutOfRange
                    && let Some(status) = Status::from_header_map(response.headers())
                    && let Some(mapped) = too_large(&status)
                {
                    record.finish(mapped.code());
                    return Ok(mapped.into_http());
                }
                record.finish(code);
                return Ok(response);
            }
            Ok(response.map(|body| {
                Body::new(Observed {
                    inner: body,
                    record: Some(record),
                })
            }))
        })
    }
}

/// A response body that records the call when its trailers (with `grpc-status`) go out, or as
/// CANCELLED if the client leaves first.
struct Observed {
    inner: Body,
    record: Option<Record>,
}

impl HttpBody for Observed {
    type Data = <Body as HttpBody>::Data;
    type Error = <Body as HttpBody>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
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
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
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
    fn code_labels_are_the_debug_names() {
        for i in 0..=16 {
            let code = Code::from_i32(i);
            assert_eq!(code_label(code), format!("{code:?}"));
        }
    }
}
