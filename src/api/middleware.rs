//! Middleware: request body limit and one log line per request.

use std::time::Instant;

use poem::http::StatusCode;
use poem::http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use poem::{Body, Endpoint, Error, IntoResponse, Middleware, Request, Response, Result};

/// Answers 413 for bodies over the limit. Unlike poem's `SizeLimit`, a request
/// without `Content-Length` is fine: a chunked body is read up to the limit.
pub struct BodyLimit {
    pub max_bytes: usize,
}

impl<E: Endpoint> Middleware<E> for BodyLimit {
    type Output = BodyLimitEndpoint<E>;

    fn transform(&self, ep: E) -> Self::Output {
        BodyLimitEndpoint {
            inner: ep,
            max_bytes: self.max_bytes,
        }
    }
}

pub struct BodyLimitEndpoint<E> {
    inner: E,
    max_bytes: usize,
}

fn too_large() -> Error {
    Error::from_status(StatusCode::PAYLOAD_TOO_LARGE)
}

impl<E: Endpoint> Endpoint for BodyLimitEndpoint<E> {
    type Output = E::Output;

    async fn call(&self, mut req: Request) -> Result<Self::Output> {
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u64>().ok());
        match declared {
            Some(length) if length > self.max_bytes as u64 => return Err(too_large()),
            Some(_) => {}
            None if req.headers().contains_key(TRANSFER_ENCODING) => {
                let body = req
                    .take_body()
                    .into_bytes_limit(self.max_bytes)
                    .await
                    .map_err(|_| too_large())?;
                req.set_body(Body::from(body));
            }
            None => {}
        }
        self.inner.call(req).await
    }
}

/// Logs method, path, status and latency of every request. Only the path is
/// logged: query strings and headers may carry credentials.
pub async fn log_request<E: Endpoint>(next: E, req: Request) -> Result<Response> {
    if !tracing::enabled!(tracing::Level::INFO) {
        return next.call(req).await.map(IntoResponse::into_response);
    }
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let started = Instant::now();
    let response = next.call(req).await.map(IntoResponse::into_response);
    let status = match &response {
        Ok(response) => response.status(),
        Err(error) => error.status(),
    };
    tracing::info!(
        %method,
        %path,
        status = status.as_u16(),
        latency_ms = started.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
    response
}
