//! Middleware: the edge every request passes (request ids, JSON errors,
//! metrics, headers, the log line), CORS, and the body limit.

use std::future::Future;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use poem::http::StatusCode;
use poem::http::header::{self, CONTENT_LENGTH, HeaderValue};
use poem::{Body, Endpoint, Error, IntoResponse, Middleware, Request, Response, Result};
use poem_openapi::OperationId;
use tracing::Instrument;

/// Answers 413 for bodies over the limit, counting the bytes as they arrive
/// whatever the protocol says (Content-Length, chunked, HTTP/2 frames), and
/// 408 for a body that takes longer than `read_timeout`. Bodies are small, so
/// the handler gets it read in full.
pub struct BodyLimit {
    pub max_bytes: usize,
    pub read_timeout: Duration,
}

impl<E: Endpoint> Middleware<E> for BodyLimit {
    type Output = BodyLimitEndpoint<E>;

    fn transform(&self, ep: E) -> Self::Output {
        BodyLimitEndpoint {
            inner: ep,
            max_bytes: self.max_bytes,
            read_timeout: self.read_timeout,
        }
    }
}

pub struct BodyLimitEndpoint<E> {
    inner: E,
    max_bytes: usize,
    read_timeout: Duration,
}

fn too_large() -> Error {
    Error::from_status(StatusCode::PAYLOAD_TOO_LARGE)
}

impl<E: Endpoint> Endpoint for BodyLimitEndpoint<E> {
    type Output = E::Output;

    // Not an `async fn`, so that a request without a body (most of them)
    // adds nothing to its future: it goes straight to the inner endpoint.
    fn call(&self, mut req: Request) -> impl Future<Output = Result<Self::Output>> + Send {
        use futures_util::future::Either;
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u64>().ok());
        let body = match declared {
            Some(length) if length > self.max_bytes as u64 => {
                return Either::Left(Either::Left(std::future::ready(Err(too_large()))));
            }
            Some(0) => None,
            _ => {
                let body = req.take_body();
                if body.is_empty() {
                    // Nothing to read (e.g. a GET): no deadline to set.
                    req.set_body(body);
                    None
                } else {
                    Some(body)
                }
            }
        };
        match body {
            None => Either::Right(self.inner.call(req)),
            // Boxed: its state (a timer, the stream) would otherwise make
            // every request's future larger, bodies or not.
            Some(body) => Either::Left(Either::Right(Box::pin(async move {
                let body = self.read(body).await?;
                req.set_body(body);
                self.inner.call(req).await
            }))),
        }
    }
}

impl<E> BodyLimitEndpoint<E> {
    /// The whole body, within the limit and the deadline.
    async fn read(&self, body: Body) -> Result<Body> {
        let read = read_limited(body, self.max_bytes);
        let body = tokio::time::timeout(self.read_timeout, read)
            .await
            .map_err(|_elapsed| Error::from_status(StatusCode::REQUEST_TIMEOUT))??;
        Ok(Body::from(body))
    }
}

/// How long the rest of an oversized body is read and thrown away after the
/// 413 goes out. Closing at once would make the kernel reset the connection,
/// and many clients (curl among them) then report the reset, not the 413.
const DISCARD_FOR: Duration = Duration::from_secs(2);

/// Reads the whole body, counting bytes as frames arrive; past `max_bytes`,
/// answers 413 and discards the rest in the background for a moment.
async fn read_limited(body: Body, max_bytes: usize) -> Result<Vec<u8>> {
    use futures_util::StreamExt;
    let mut frames = body.into_bytes_stream();
    let mut data = Vec::new();
    while let Some(frame) = frames.next().await {
        let frame = frame.map_err(|error| Error::new(error, StatusCode::BAD_REQUEST))?;
        if data.len() + frame.len() > max_bytes {
            tokio::spawn(async move {
                let discard = async { while let Some(Ok(_)) = frames.next().await {} };
                let _ = tokio::time::timeout(DISCARD_FOR, discard).await;
            });
            return Err(too_large());
        }
        data.extend_from_slice(&frame);
    }
    Ok(data)
}

/// Everything every request passes through on its way in and out, in one
/// layer rather than one a concern: each layer is a future wrapped around the
/// next, and at framework speed their size and nesting are most of the cost
/// (see `bench/results`). In order:
/// - a request id: a sane `X-Request-Id` from the client is kept, otherwise one
///   is made up; it is returned on the response and is a field of every log
///   line written while the request is handled (`log.request_ids`);
/// - a panicking handler becomes a 500, and any error that escaped the typed
///   responses becomes JSON (`error::error_to_json`);
/// - `/metrics` counts: by operation and status, latency, in flight;
/// - `Allow` on a 405; `X-Content-Type-Options: nosniff`, and
///   `Cache-Control: no-store` since responses carry tokens or one user's data;
/// - one log line: method, path (never the query string or headers, which may
///   carry credentials), status and latency.
pub struct Edge {
    pub request_ids: bool,
    pub metrics: bool,
    pub allowed: std::sync::Arc<AllowedMethods>,
}

impl<E: Endpoint> Middleware<E> for Edge {
    type Output = EdgeEndpoint<E>;

    fn transform(&self, ep: E) -> Self::Output {
        let mut prefix = uuid::Uuid::new_v4().simple().to_string();
        prefix.truncate(12);
        EdgeEndpoint {
            inner: ep,
            request_ids: self.request_ids.then_some(RequestIds {
                prefix,
                next: AtomicU64::new(0),
            }),
            metrics: self.metrics,
            allowed: self.allowed.clone(),
        }
    }
}

pub struct EdgeEndpoint<E> {
    inner: E,
    request_ids: Option<RequestIds>,
    metrics: bool,
    allowed: std::sync::Arc<AllowedMethods>,
}

struct RequestIds {
    /// Random per process, so ids from several instances do not collide.
    prefix: String,
    next: AtomicU64,
}

impl RequestIds {
    /// The client's `X-Request-Id` if it is sane, otherwise a new one.
    fn for_request(&self, req: &Request) -> HeaderValue {
        match req.headers().get(REQUEST_ID) {
            Some(id) if id.to_str().is_ok_and(is_sane_request_id) => id.clone(),
            _ => {
                // `{prefix}-{n:x}`, written by hand (no formatting machinery).
                let n = self.next.fetch_add(1, Ordering::Relaxed);
                let digits = (64 - n.leading_zeros()).div_ceil(4).max(1) as usize;
                let mut id = Vec::with_capacity(self.prefix.len() + 1 + digits);
                id.extend_from_slice(self.prefix.as_bytes());
                id.push(b'-');
                for shift in (0..digits).rev() {
                    id.push(b"0123456789abcdef"[((n >> (4 * shift)) & 0xf) as usize]);
                }
                // Letters, digits and a dash: always a valid header value.
                HeaderValue::from_maybe_shared(bytes::Bytes::from(id))
                    .unwrap_or_else(|_| HeaderValue::from_static("-"))
            }
        }
    }
}

/// Up to 128 characters of letters, digits and `-_.:`: safe in a header
/// and in a log line.
fn is_sane_request_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

pub const REQUEST_ID: &str = "x-request-id";
const REQUEST_ID_HEADER: header::HeaderName = header::HeaderName::from_static(REQUEST_ID);

impl<E: Endpoint> Endpoint for EdgeEndpoint<E> {
    type Output = Response;

    // Not an `async fn`: the request moves straight into the inner
    // endpoint's future instead of being kept in this one as well (an async
    // fn keeps its arguments for its whole life), which keeps every request's
    // future small.
    fn call(&self, req: Request) -> impl Future<Output = Result<Response>> + Send {
        use futures_util::FutureExt;
        // The URI is shared, not copied: its path is read again only for a
        // 405 and for the log line.
        let uri = req.uri().clone();
        let method = req.method().clone();
        let id = self.request_ids.as_ref().map(|ids| ids.for_request(&req));
        let span = match &id {
            Some(id) => {
                tracing::info_span!("request", request_id = id.to_str().unwrap_or_default())
            }
            None => tracing::Span::none(),
        };
        let started = Instant::now();
        let metrics = self.metrics.then(crate::metrics::metrics);
        let in_flight = metrics.map(|metrics| metrics.request_started());
        // What the inner layers do before their first await runs here, so
        // it is inside the panic catch too.
        let inner = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.inner.call(req)));
        async move {
            let answer = match inner {
                Ok(inner) => std::panic::AssertUnwindSafe(inner).catch_unwind().await,
                Err(panic) => Err(panic),
            };
            let (mut response, operation) = match answer {
                Ok(Ok(answer)) => {
                    let response = answer.into_response();
                    let operation = response.data::<OperationId>().map(|id| id.0);
                    (response, operation)
                }
                Ok(Err(error)) => {
                    let operation = error.data::<OperationId>().map(|id| id.0);
                    // Boxed, so that the error path does not enlarge every request's future.
                    (
                        Box::pin(super::error::error_to_json(error)).await,
                        operation,
                    )
                }
                Err(panic) => (super::error::panic_response(panic), None),
            };
            drop(in_flight);
            let status = response.status();
            if let Some(metrics) = metrics {
                let operation = operation.unwrap_or("none");
                metrics.request_finished(operation, status.as_u16(), started.elapsed());
            }
            let headers = response.headers_mut();
            if status == StatusCode::METHOD_NOT_ALLOWED
                && let Some(allow) = self.allowed.allow(uri.path())
            {
                headers.insert(header::ALLOW, allow.clone());
            }
            headers.insert(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            );
            headers
                .entry(header::CACHE_CONTROL)
                .or_insert(HeaderValue::from_static("no-store"));
            if let Some(id) = id {
                headers.insert(REQUEST_ID_HEADER, id);
            }
            tracing::info!(
                %method,
                path = uri.path(),
                status = status.as_u16(),
                latency_ms = started.elapsed().as_secs_f64() * 1000.0,
                "request"
            );
            Ok(response)
        }
        .instrument(span)
    }
}

/// The methods each path of the API answers, read from its OpenAPI
/// document, for the `Allow` header of a 405 (RFC 9110 §15.5.6). The
/// document is made on the first 405, not at start: making it leaves about
/// 1 MiB of the heap resident.
pub struct AllowedMethods {
    spec: fn() -> String,
    paths: OnceLock<Vec<(Vec<String>, HeaderValue)>>,
}

impl AllowedMethods {
    /// `spec` makes the API's OpenAPI document as JSON.
    pub fn new(spec: fn() -> String) -> Self {
        Self {
            spec,
            paths: OnceLock::new(),
        }
    }

    fn paths(&self) -> &[(Vec<String>, HeaderValue)] {
        self.paths
            .get_or_init(|| Self::read(&serde_json::from_str(&(self.spec)()).unwrap_or_default()))
    }

    fn read(spec: &serde_json::Value) -> Vec<(Vec<String>, HeaderValue)> {
        let mut paths = Vec::new();
        for (path, item) in spec["paths"].as_object().into_iter().flatten() {
            let mut methods: Vec<String> = item
                .as_object()
                .into_iter()
                .flatten()
                .map(|(key, _)| key.to_ascii_uppercase())
                // A path item's other keys (parameters, summary, …) are not methods.
                .filter(|key| {
                    matches!(
                        key.as_str(),
                        "GET" | "PUT" | "POST" | "DELETE" | "OPTIONS" | "HEAD" | "PATCH" | "TRACE"
                    )
                })
                .collect();
            if methods.iter().any(|m| m == "GET") && !methods.iter().any(|m| m == "HEAD") {
                methods.push("HEAD".to_owned());
            }
            if let Ok(value) = HeaderValue::from_str(&methods.join(", ")) {
                paths.push((segments(path).map(str::to_owned).collect(), value));
            }
        }
        paths
    }

    /// The `Allow` value for a request path; `{param}` segments match any one.
    fn allow(&self, path: &str) -> Option<&HeaderValue> {
        let wanted: Vec<&str> = segments(path).collect();
        self.paths().iter().find_map(|(pattern, allow)| {
            let matches = pattern.len() == wanted.len()
                && pattern
                    .iter()
                    .zip(&wanted)
                    .all(|(p, w)| p == w || (p.starts_with('{') && p.ends_with('}')));
            matches.then_some(allow)
        })
    }
}

fn segments(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|segment| !segment.is_empty())
}

/// CORS for the origins in `http.cors_origins`: their preflights succeed
/// with the methods and headers the API uses, and their requests get
/// `Access-Control-Allow-Origin`. A preflight from any other origin gets 403;
/// other requests pass untouched (a browser then keeps the answer from a
/// foreign page, and same-origin pages such as Swagger UI keep working).
pub struct BrowserOrigins(pub Vec<String>);

impl<E: Endpoint + 'static> Middleware<E> for BrowserOrigins {
    type Output = BrowserOriginsEndpoint<E>;

    fn transform(&self, ep: E) -> Self::Output {
        use poem::http::Method;
        let inner = std::sync::Arc::new(ep);
        let cors = poem::middleware::Cors::new()
            .allow_origins(self.0.iter().map(String::as_str))
            .allow_methods([Method::GET, Method::POST, Method::PATCH])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
            .allow_header(REQUEST_ID)
            .expose_header(REQUEST_ID)
            .max_age(600);
        BrowserOriginsEndpoint {
            origins: self.0.clone(),
            cors: cors.transform(inner.clone()),
            inner,
        }
    }
}

pub struct BrowserOriginsEndpoint<E> {
    origins: Vec<String>,
    cors: poem::middleware::CorsEndpoint<std::sync::Arc<E>>,
    inner: std::sync::Arc<E>,
}

impl<E: Endpoint + 'static> Endpoint for BrowserOriginsEndpoint<E> {
    type Output = Response;

    async fn call(&self, req: Request) -> Result<Response> {
        let listed = req
            .headers()
            .get(header::ORIGIN)
            .and_then(|origin| origin.to_str().ok())
            .map(|origin| self.origins.iter().any(|allowed| allowed == origin));
        let preflight = req.method() == poem::http::Method::OPTIONS
            && req
                .headers()
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        match listed {
            Some(listed) if listed || preflight => match self.cors.call(req).await {
                Ok(response) => Ok(response.into_response()),
                Err(error) => Ok(super::error::error_to_json(error).await),
            },
            _ => self.inner.call(req).await.map(IntoResponse::into_response),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{AllowedMethods, is_sane_request_id};

    #[test]
    fn made_up_request_ids_are_the_prefix_and_a_hex_count() {
        let ids = super::RequestIds {
            prefix: "0123456789ab".to_owned(),
            next: std::sync::atomic::AtomicU64::new(0),
        };
        let request = poem::Request::builder().finish();
        assert_eq!(ids.for_request(&request), "0123456789ab-0");
        ids.next.store(0x1f, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(ids.for_request(&request), "0123456789ab-1f");
        ids.next
            .store(u64::MAX, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(ids.for_request(&request), "0123456789ab-ffffffffffffffff");
        let kept = poem::Request::builder()
            .header(super::REQUEST_ID, "client-id.1")
            .finish();
        assert_eq!(ids.for_request(&kept), "client-id.1");
    }

    #[test]
    fn request_ids_are_short_plain_tokens() {
        for sane in ["a", "0f3c-9a.b_c:1", &"x".repeat(128)] {
            assert!(is_sane_request_id(sane), "{sane}");
        }
        for insane in ["", "with space", "line\nbreak", "é", &"x".repeat(129)] {
            assert!(!is_sane_request_id(insane), "{insane:?}");
        }
    }

    #[test]
    fn allow_lists_the_methods_of_the_matching_path() {
        let methods = AllowedMethods::new(|| {
            serde_json::json!({"paths": {
                "/batches/{reference}": {"get": {}, "patch": {}, "parameters": []},
                "/allocate": {"post": {}},
            }})
            .to_string()
        });
        assert_eq!(methods.allow("/batches/b-1").unwrap(), "GET, PATCH, HEAD");
        assert_eq!(methods.allow("/allocate").unwrap(), "POST");
        assert!(methods.allow("/batches/b-1/extra").is_none());
        assert!(methods.allow("/nowhere").is_none());
    }
}
