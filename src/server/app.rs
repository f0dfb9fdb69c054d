//! The endpoint as a connection calls it: one heap-allocated future per
//! request, polled once in the connection's task and moved to a task of its
//! own only if it has to wait.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use poem::{Endpoint, Response};

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
            // A plain `Box::pin`, which copies the future into its box once.
            // Building it in place instead took an `unsafe` and saved ~90
            // instructions of a plain request's ~29,000 (0.3 %, inside the
            // run-to-run noise): decision record 0003.
            Box::pin(async move {
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
    pub(super) async fn answer(&self, request: poem::Request) -> Response {
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

/// What a request gets if answering it panicked outside the edge's own catch.
fn internal_error() -> Response {
    crate::api::error::json_error(
        poem::http::StatusCode::INTERNAL_SERVER_ERROR,
        "Internal server error",
    )
}
