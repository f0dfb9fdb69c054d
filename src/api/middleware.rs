//! Middleware: request body limit and one log line per request.

use std::time::{Duration, Instant};

use poem::http::StatusCode;
use poem::http::header::CONTENT_LENGTH;
use poem::{Body, Endpoint, Error, IntoResponse, Middleware, Request, Response, Result};

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

    async fn call(&self, mut req: Request) -> Result<Self::Output> {
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u64>().ok());
        match declared {
            Some(length) if length > self.max_bytes as u64 => return Err(too_large()),
            Some(0) => {}
            _ => {
                let read = read_limited(req.take_body(), self.max_bytes);
                let body = tokio::time::timeout(self.read_timeout, read)
                    .await
                    .map_err(|_elapsed| Error::from_status(StatusCode::REQUEST_TIMEOUT))??;
                req.set_body(Body::from(body));
            }
        }
        self.inner.call(req).await
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
