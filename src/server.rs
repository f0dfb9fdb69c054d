//! Serves the poem endpoint over HTTP/1.1 and HTTP/2 (h2c) with bounded
//! connections: a cap on how many are open, a deadline for each request head,
//! an idle timeout, and bounded header memory.
//!
//! poem's own `Server` has none of these but an activity-based idle timeout
//! (which a client sending one byte a second never trips), and it spins when
//! `accept` fails for want of file descriptors. So allot drives hyper itself,
//! as poem does inside, with the bounds set.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use poem::http::uri::Scheme;
use poem::web::{LocalAddr, RemoteAddr};
use poem::{Addr, Endpoint, Response};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use crate::config::HttpSettings;

type ResponseBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// The answer to one request, on the heap: a future that owns what it needs,
/// so it can move into a task of its own if it has to wait.
type Answer = Pin<Box<dyn Future<Output = Response> + Send>>;

/// The application as the server calls it: each request becomes one
/// [`Answer`], a single allocation for the whole middleware stack (a poem
/// `BoxEndpoint` would box the stack's future, and the server would box again
/// to own it).
#[derive(Clone)]
pub struct App(Arc<dyn Fn(poem::Request) -> Answer + Send + Sync>);

impl App {
    pub fn new<E: Endpoint<Output = Response> + 'static>(endpoint: E) -> Self {
        let endpoint = Arc::new(endpoint);
        Self(Arc::new(move |request| {
            let endpoint = endpoint.clone();
            // The request waits in a box of its own rather than in the
            // answer's future, which (under the size glibc caches) stays
            // cheap to allocate and to build.
            let request = Box::new(request);
            boxed_in_place(move || async move {
                match Endpoint::call(&*endpoint, *request).await {
                    Ok(response) => response,
                    Err(error) => error.into_response(),
                }
            })
        }))
    }

    /// Answers `request`. Most requests (everything that does not wait on the
    /// database) are answered by the first poll, right here in the connection's
    /// task. One that has to wait moves to a task of its own, so that a client
    /// who disconnects does not cancel it halfway: the MongoDB driver closes
    /// the connection of an operation dropped mid-flight, and a burst of
    /// disconnects would empty the pool for everyone.
    async fn answer(&self, request: poem::Request) -> Response {
        let mut answer = (self.0)(request);
        let first = std::future::poll_fn(|cx| {
            Poll::Ready(std::panic::catch_unwind(std::panic::AssertUnwindSafe(
                || answer.as_mut().poll(cx),
            )))
        })
        .await;
        match first {
            Ok(Poll::Ready(response)) => response,
            Ok(Poll::Pending) => match tokio::spawn(answer).await {
                Ok(response) => response,
                Err(_) => internal_error(),
            },
            Err(_panic) => internal_error(),
        }
    }
}

/// Boxes the future `make` returns, letting the compiler build it straight in
/// its heap slot: the middleware stack's future is a few kilobytes, and
/// `Box::pin(future)` builds it on the stack and then copies all of it.
fn boxed_in_place<F: Future<Output = Response> + Send + 'static>(
    make: impl FnOnce() -> F,
) -> Answer {
    let mut slot = Box::<F>::new_uninit();
    slot.write(make());
    // SAFETY: `write` initialised the slot.
    Box::into_pin(unsafe { slot.assume_init() })
}

/// What a request gets if answering it panicked outside the edge's own catch.
fn internal_error() -> Response {
    crate::api::error::json_error(
        poem::http::StatusCode::INTERNAL_SERVER_ERROR,
        "Internal server error",
    )
}

/// The bounds every connection is served with (the `http.*` settings).
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_connections: usize,
    pub http2_max_concurrent_streams: u32,
}

impl From<&HttpSettings> for ConnectionLimits {
    fn from(http: &HttpSettings) -> Self {
        Self {
            header_read_timeout: Duration::from_millis(http.header_read_timeout_ms),
            idle_timeout: Duration::from_millis(http.idle_timeout_ms),
            max_header_bytes: http.max_header_bytes,
            max_connections: http.max_connections,
            http2_max_concurrent_streams: http.http2_max_concurrent_streams,
        }
    }
}

/// Flow-control windows of HTTP/2: how much request data one stream, and one
/// connection, may have in flight before allot reads it. Small, because no
/// request body may exceed `http.body_limit_bytes` anyway.
const HTTP2_STREAM_WINDOW: u32 = 256 * 1024;
const HTTP2_CONNECTION_WINDOW: u32 = 1024 * 1024;

/// Raises this process's soft limit on open files to the hard limit, so the
/// connection cap, not the descriptor limit, is what bounds connections.
/// Returns the limit now in force.
pub fn raise_open_file_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            limit = raised;
        }
    }
    Ok(limit.rlim_cur)
}

/// Serves `app` on `listener` until `shutdown` resolves, then stops
/// accepting and gives open connections up to `grace` to finish.
pub async fn serve(
    listener: TcpListener,
    app: App,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> std::io::Result<()> {
    let local = listener.local_addr()?;
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (stop, stopped) = watch::channel(false);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .max_buf_size(limits.max_header_bytes.max(8192))
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(limits.http2_max_concurrent_streams)
        .initial_stream_window_size(HTTP2_STREAM_WINDOW)
        .initial_connection_window_size(HTTP2_CONNECTION_WINDOW);
    tokio::pin!(shutdown);
    let mut last_accept_warning = None;
    loop {
        // At the cap, stop accepting: new connections wait in the backlog.
        let slot = tokio::select! {
            () = &mut shutdown => break,
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, remote) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // E.g. EMFILE: retrying at once would spin; wait a little,
                // and say so once a second at most.
                if last_accept_warning
                    .is_none_or(|at: Instant| at.elapsed() >= Duration::from_secs(1))
                {
                    tracing::warn!(%error, "cannot accept a connection; retrying");
                    last_accept_warning = Some(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            stream,
            local,
            remote,
            app: app.clone(),
            limits,
            stopped: stopped.clone(),
        };
        let builder = builder.clone();
        tokio::spawn(async move {
            connection.serve(builder).await;
            drop(slot);
        });
    }
    drop(listener);
    let _ = stop.send(true);
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(grace, slots.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the shutdown grace period; closing them");
    }
    Ok(())
}

struct Connection {
    stream: TcpStream,
    local: SocketAddr,
    remote: SocketAddr,
    app: App,
    limits: ConnectionLimits,
    stopped: watch::Receiver<bool>,
}

impl Connection {
    async fn serve(self, mut builder: auto::Builder<TokioExecutor>) {
        let Connection {
            stream,
            local,
            remote,
            app,
            limits,
            mut stopped,
        } = self;
        let clock = Arc::new(ConnectionClock::new(limits));
        builder.http1().timer(HeadTimer(
            clock.clone(),
            Arc::new(HeadSleep::new()),
            Instant::now(),
        ));
        let io = TokioIo::new(Watched {
            inner: stream,
            clock: clock.clone(),
            replacement: None,
        });
        let service_clock = clock.clone();
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let app = app.clone();
            let clock = service_clock.clone();
            clock.request_started();
            async move {
                let request = poem::Request::from((
                    request,
                    LocalAddr(Addr::SocketAddr(local)),
                    RemoteAddr(Addr::SocketAddr(remote)),
                    Scheme::HTTP,
                ));
                let response = app.answer(request).await;
                clock.request_finished();
                Ok::<_, Infallible>(hyper::Response::<ResponseBody>::from(response))
            }
        });
        let connection = builder.serve_connection(io, service);
        tokio::pin!(connection);
        let idle = tokio::select! {
            _ = connection.as_mut() => return,
            _ = stopped.wait_for(|stopped| *stopped) => false,
            () = clock.idle() => true,
        };
        connection.as_mut().graceful_shutdown();
        if idle {
            // An HTTP/2 graceful shutdown waits for the client to answer a
            // PING; a client that never does would keep the connection.
            tracing::debug!(%remote, "closing an idle connection");
            let _ = tokio::time::timeout(limits.header_read_timeout, connection).await;
        } else {
            // In-flight requests finish; `serve` bounds this by the grace period.
            let _ = connection.await;
        }
    }
}

/// What one connection has done when: the clock behind its head deadline
/// and its idle timeout.
struct ConnectionClock {
    limits: ConnectionLimits,
    state: Mutex<ClockState>,
}

struct ClockState {
    /// When the connection opened, or a request last started or finished.
    last_request: Instant,
    /// Whether the client sent anything yet.
    spoke: bool,
    /// Requests handed to the endpoint whose response is not ready yet.
    in_flight: usize,
    /// Heads hyper started to read (1 = the connection's first request).
    heads: u64,
    /// When the current head's first byte arrived.
    head_first_byte: Option<Instant>,
    /// Whether bytes arrived since hyper started the current head. Their
    /// time is read only if the head deadline is polled (the head is still
    /// incomplete), which hyper does right after that read; a head that
    /// arrives whole, as nearly all do, costs no clock read.
    head_bytes: bool,
    /// Whether hyper is reading a head that it has not handed on yet: what it
    /// writes then is its own error answer to an unparsable head.
    reading_head: bool,
}

impl ConnectionClock {
    fn new(limits: ConnectionLimits) -> Self {
        Self {
            limits,
            state: Mutex::new(ClockState {
                last_request: Instant::now(),
                spoke: false,
                in_flight: 0,
                heads: 0,
                head_first_byte: None,
                head_bytes: false,
                reading_head: false,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ClockState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn read(&self) {
        let mut state = self.state();
        state.spoke = true;
        state.head_bytes = true;
    }

    /// hyper starts reading a request head; returns whether it is the first.
    fn head_started(&self) -> bool {
        let mut state = self.state();
        state.heads += 1;
        state.head_first_byte = None;
        state.head_bytes = false;
        state.reading_head = true;
        state.heads == 1
    }

    /// When the current head's first byte arrived, if one did.
    fn first_byte(&self) -> Option<Instant> {
        let mut state = self.state();
        if state.head_bytes && state.head_first_byte.is_none() {
            state.head_first_byte = Some(Instant::now());
        }
        state.head_first_byte
    }

    fn request_started(&self) {
        let mut state = self.state();
        state.in_flight += 1;
        state.last_request = Instant::now();
        state.reading_head = false;
    }

    fn reading_head(&self) -> bool {
        self.state().reading_head
    }

    fn request_finished(&self) {
        let mut state = self.state();
        state.in_flight = state.in_flight.saturating_sub(1);
        state.last_request = Instant::now();
    }

    /// Resolves once no request was handled for `idle_timeout`: bytes that
    /// bring no request (HTTP/2 PINGs, a header trickling in) do not count,
    /// except an HTTP/1.1 head under way, which its own deadline bounds. A
    /// connection that never sends a byte goes after `header_read_timeout`
    /// (before hyper knows which protocol it speaks).
    async fn idle(&self) {
        loop {
            let (deadline, in_flight) = {
                let state = self.state();
                let deadline = if state.spoke {
                    let active = match state.head_first_byte {
                        Some(first_byte) if state.reading_head => {
                            state.last_request.max(first_byte)
                        }
                        _ => state.last_request,
                    };
                    active + self.limits.idle_timeout
                } else {
                    state.last_request + self.limits.header_read_timeout
                };
                (deadline, state.in_flight)
            };
            if in_flight == 0 && Instant::now() >= deadline {
                return;
            }
            let wake = if in_flight == 0 {
                deadline
            } else {
                Instant::now() + self.limits.idle_timeout
            };
            tokio::time::sleep_until(wake.into()).await;
        }
    }
}

/// The socket, noting when bytes arrive, and turning hyper's own answers to
/// unparsable requests (empty 400, 414, 431) into JSON ones.
struct Watched {
    inner: TcpStream,
    clock: Arc<ConnectionClock>,
    /// A JSON answer still to be written, and how much of it is.
    replacement: Option<(Vec<u8>, usize)>,
}

impl Watched {
    /// Writes what is left of the replacement answer.
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while let Some((bytes, written)) = &mut self.replacement {
            if *written == bytes.len() {
                self.replacement = None;
                break;
            }
            let n =
                std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        Poll::Ready(Ok(()))
    }

    /// When `buf` is hyper's answer to a head it could not parse, queues a
    /// JSON answer in its place and returns true.
    fn replace_parse_error(&mut self, buf: &[u8]) -> bool {
        if !buf.starts_with(b"HTTP/1.1 4") || !self.clock.reading_head() {
            return false;
        }
        let Some(replacement) = json_parse_error(buf, self.clock.limits.max_header_bytes) else {
            return false;
        };
        self.replacement = Some((replacement, 0));
        true
    }
}

/// The JSON version of hyper's automatic answer `head` (a status line and
/// headers, no body), or `None` when `head` is something else.
fn json_parse_error(head: &[u8], max_header_bytes: usize) -> Option<Vec<u8>> {
    let head = std::str::from_utf8(head).ok()?.strip_suffix("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let message = match status_line.get(9..12)? {
        "400" => "The request is not valid HTTP: a malformed request line or header".to_owned(),
        "414" => "The request URI is too long".to_owned(),
        "431" => format!(
            "The request head (request line and headers) is too large: at most {max_header_bytes} bytes"
        ),
        _ => return None,
    };
    let mut kept = Vec::new();
    for line in lines {
        let name = line
            .split(':')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        match name.as_str() {
            // An answer of allot's own always has a content type: leave it be.
            "content-type" => return None,
            "content-length" | "connection" => {}
            _ => kept.push(line),
        }
    }
    let body = serde_json::json!({ "message": message }).to_string();
    let mut answer = format!(
        "{status_line}\r\ncontent-type: application/json; charset=utf-8\r\n\
         content-length: {}\r\nx-content-type-options: nosniff\r\nconnection: close\r\n",
        body.len()
    );
    for line in kept {
        answer.push_str(line);
        answer.push_str("\r\n");
    }
    answer.push_str("\r\n");
    answer.push_str(&body);
    Some(answer.into_bytes())
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.clock.read();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        std::task::ready!(self.poll_replacement(cx))?;
        if self.replace_parse_error(buf) {
            // hyper's bytes count as written; poll_flush finishes ours.
            if let Poll::Ready(Err(error)) = self.poll_replacement(cx) {
                return Poll::Ready(Err(error));
            }
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        std::task::ready!(self.poll_replacement(cx))?;
        if let Some(first) = bufs.iter().find(|buf| !buf.is_empty())
            && self.replace_parse_error(first)
        {
            if let Poll::Ready(Err(error)) = self.poll_replacement(cx) {
                return Poll::Ready(Err(error));
            }
            return Poll::Ready(Ok(first.len()));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    /// No: hyper then writes each response (head and body) from one buffer
    /// in one `send`, as poem's own server does. For allot's small JSON
    /// bodies copying them costs less than the kernel's `writev` path.
    fn is_write_vectored(&self) -> bool {
        false
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::task::ready!(self.poll_replacement(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::task::ready!(self.poll_replacement(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// hyper's HTTP/1 timer, used only for its header read timeout. hyper starts
/// that deadline as soon as it waits for a head, so on a kept-alive
/// connection it would also cut the idle time between requests. This timer
/// gives the first head `header_read_timeout` from the connection's start;
/// each later head `idle_timeout` until its first byte, then
/// `header_read_timeout` from that byte.
///
/// hyper asks for a new deadline for every head. Rather than a new tokio timer
/// each time (an allocation, and a lock to register and another to cancel
/// it), each connection has one that every head reuses: moving a timer's
/// deadline later, as each new head does, costs tokio no lock.
struct HeadTimer(Arc<ConnectionClock>, Arc<HeadSleep>, Instant);

/// The one timer behind a connection's head deadlines.
struct HeadSleep(Mutex<Pin<Box<tokio::time::Sleep>>>);

impl HeadSleep {
    fn new() -> Self {
        Self(Mutex::new(Box::pin(tokio::time::sleep(Duration::ZERO))))
    }

    /// Polls the timer set to `deadline`.
    fn poll_until(&self, deadline: Instant, cx: &mut Context<'_>) -> Poll<()> {
        let mut sleep = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let deadline = tokio::time::Instant::from(deadline);
        if sleep.deadline() != deadline {
            sleep.as_mut().reset(deadline);
        }
        sleep.as_mut().poll(cx)
    }
}

impl hyper::rt::Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(PlainSleep(Box::pin(tokio::time::sleep(duration))))
    }

    /// hyper reads the time only to work out the deadline it passes to
    /// `sleep_until`, which this timer ignores: no need for a clock read.
    fn now(&self) -> Instant {
        self.2
    }

    fn sleep_until(&self, _deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(HeadDeadline {
            clock: self.0.clone(),
            sleep: self.1.clone(),
            started: Instant::now(),
            first: self.0.head_started(),
        })
    }
}

struct PlainSleep(Pin<Box<tokio::time::Sleep>>);

impl Future for PlainSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.as_mut().poll(cx)
    }
}

impl hyper::rt::Sleep for PlainSleep {}

struct HeadDeadline {
    clock: Arc<ConnectionClock>,
    sleep: Arc<HeadSleep>,
    started: Instant,
    first: bool,
}

impl Future for HeadDeadline {
    type Output = ();

    // hyper polls this each time the head is still incomplete after a read,
    // so the deadline moves as soon as a kept-alive request's first byte comes.
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let limits = self.clock.limits;
        let deadline = if self.first {
            // Recorded for the idle timer; the first head's own deadline
            // counts from the connection's start.
            self.clock.first_byte();
            self.started + limits.header_read_timeout
        } else {
            match self.clock.first_byte() {
                Some(first_byte) => first_byte + limits.header_read_timeout,
                None => self.started + limits.idle_timeout,
            }
        };
        self.sleep.poll_until(deadline, cx)
    }
}

impl hyper::rt::Sleep for HeadDeadline {}

#[cfg(test)]
mod tests {
    use super::json_parse_error;

    #[test]
    fn hyper_s_empty_error_answers_become_json() {
        let head = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Sun, 22 Nov 2026 08:00:00 GMT\r\n\r\n";
        let answer = String::from_utf8(json_parse_error(head, 16384).unwrap()).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(head.contains("content-type: application/json"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert!(head.contains("date: Sun"));
        assert!(!head.contains("content-length: 0"));
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert!(body["message"].as_str().unwrap().contains("16384 bytes"));
    }

    #[test]
    fn answers_of_allot_s_own_are_left_alone() {
        let with_type =
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n";
        assert!(json_parse_error(with_type, 16384).is_none());
        let other = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n";
        assert!(json_parse_error(other, 16384).is_none());
        assert!(json_parse_error(b"HTTP/1.1 400 Bad", 16384).is_none());
    }
}
