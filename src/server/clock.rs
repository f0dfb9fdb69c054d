//! When a connection last did what: the clock behind its head deadline and
//! its idle timeout, and the timer hyper's head deadline runs on.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use super::ConnectionLimits;

/// What one connection has done when: the clock behind its head deadline
/// and its idle timeout.
pub(super) struct ConnectionClock {
    pub(super) limits: ConnectionLimits,
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
    pub(super) fn new(limits: ConnectionLimits) -> Self {
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

    pub(super) fn read(&self) {
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

    pub(super) fn request_started(&self) {
        let mut state = self.state();
        state.in_flight += 1;
        state.last_request = Instant::now();
        state.reading_head = false;
    }

    pub(super) fn reading_head(&self) -> bool {
        self.state().reading_head
    }

    pub(super) fn request_finished(&self) {
        let mut state = self.state();
        state.in_flight = state.in_flight.saturating_sub(1);
        state.last_request = Instant::now();
    }

    /// Resolves once no request was handled for `idle_timeout`: bytes that
    /// bring no request (HTTP/2 PINGs, a header trickling in) do not count,
    /// except an HTTP/1.1 head under way, which its own deadline bounds. A
    /// connection that never sends a byte goes after `header_read_timeout`
    /// (before hyper knows which protocol it speaks).
    pub(super) async fn idle(&self) {
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
pub(super) struct HeadTimer(Arc<ConnectionClock>, Arc<HeadSleep>, Instant);

impl HeadTimer {
    /// The timer of the connection `clock` belongs to, which starts now.
    pub(super) fn new(clock: Arc<ConnectionClock>) -> Self {
        Self(clock, Arc::new(HeadSleep::new()), Instant::now())
    }
}

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
