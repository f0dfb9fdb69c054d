//! Sessions kept for single operations (no transaction).
//!
//! The driver runs an operation given no session in an implicit one that it
//! creates and ends around it. Creating a session spawns a task that waits
//! for its end, and ending it wakes that task, on whichever runtime worker it
//! landed, to check the server session back in. Under load that is a task and
//! a wake-up of another thread per operation: during `bench/allocate_load.py`,
//! 536 of the 1,407 wake-ups one worker gave another came from ending
//! implicit sessions. The frequent operations (the group commit's, a
//! login's, the lease's) therefore run in sessions kept here, created once
//! and reused, in one pool per process (the `Instance`'s).
//!
//! They are explicit sessions without causal consistency, as implicit ones
//! are, so each operation reads and writes exactly as it would without one.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mongodb::error::{Error, ErrorKind};
use mongodb::options::SessionOptions;
use mongodb::{Client, ClientSession};

/// How many idle sessions are kept: as many as operations once ran at the
/// same time, up to this; more are ended when they come back.
const KEPT: usize = 64;

/// A session idle this long is ended rather than reused. The server forgets
/// a session after `logicalSessionTimeoutMinutes` (30 by default) unused; the
/// driver's own pool stops reusing one a minute before.
const IDLE_FOR_AT_MOST: Duration = Duration::from_secs(10 * 60);

/// A pool of sessions for operations outside transactions.
#[derive(Clone)]
pub struct OperationSessions {
    client: Client,
    idle: Arc<Mutex<Vec<(ClientSession, Instant)>>>,
}

impl OperationSessions {
    pub fn new(client: &Client) -> Self {
        Self {
            client: client.clone(),
            idle: Arc::default(),
        }
    }

    /// How many sessions wait in the pool.
    pub fn idle(&self) -> usize {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// A session for one or more operations, from the pool or new. Pass
    /// each operation's result through [`OperationSession::check`]: the
    /// session goes back to the pool when dropped if the last one settled.
    pub async fn take(&self) -> mongodb::error::Result<OperationSession> {
        let kept = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            // Pushed as they come back, so the most recently used is on top
            // and every one below it has been idle longer.
            match idle.pop() {
                Some((session, since)) if since.elapsed() < IDLE_FOR_AT_MOST => Some(session),
                Some(_) => {
                    idle.clear();
                    None
                }
                None => None,
            }
        };
        let session = match kept {
            Some(session) => session,
            None => {
                self.client
                    .start_session()
                    .with_options(SessionOptions::builder().causal_consistency(false).build())
                    .await?
            }
        };
        Ok(OperationSession {
            session: Some(session),
            settled: true,
            pool: self.clone(),
        })
    }
}

/// A session taken from [`OperationSessions`].
pub struct OperationSession {
    session: Option<ClientSession>,
    /// Whether the last operation ended with the server's answer. A session
    /// whose operation did not (a network error, a timeout, a future dropped
    /// half-way) is not kept but dropped, which hands its server session back
    /// to the driver as an implicit one's would be: the driver then reuses it
    /// or, when the operation met a network error, discards it.
    settled: bool,
    pool: OperationSessions,
}

impl OperationSession {
    /// The session, for the next operation.
    pub fn session(&mut self) -> &mut ClientSession {
        self.settled = false;
        self.session.as_mut().expect("present until dropped")
    }

    /// Passes on the result of the operation just run, noting whether it
    /// settled.
    pub fn check<T>(&mut self, result: mongodb::error::Result<T>) -> mongodb::error::Result<T> {
        self.settled = match &result {
            Ok(_) => true,
            Err(error) => server_answered(error),
        };
        result
    }
}

impl Drop for OperationSession {
    fn drop(&mut self) {
        if !self.settled {
            return;
        }
        let mut idle = self.pool.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < KEPT
            && let Some(session) = self.session.take()
        {
            idle.push((session, Instant::now()));
        }
    }
}

/// Whether the server answered the operation that failed with `error`.
fn server_answered(error: &Error) -> bool {
    matches!(
        error.kind.as_ref(),
        ErrorKind::Command(_)
            | ErrorKind::Write(_)
            | ErrorKind::InsertMany(_)
            | ErrorKind::BulkWrite(_)
    )
}
