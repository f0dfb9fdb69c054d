//! What login throttling needs: counters of attempts shared by every instance.

use std::future::Future;

use chrono::{DateTime, Utc};

use crate::domain::throttle::{Admissible, Failures, ThrottlePolicy};
use crate::services::StoreError;

/// What attempts are counted under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter<'a> {
    /// A username (see [`username_key`]) from a client address.
    Username { username: &'a str, address: &'a str },
    /// A client address, across usernames.
    Address(&'a str),
}

/// What counting one attempt did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// Counted in the series that started then.
    In(DateTime<Utc>),
    /// Not counted: the series' failures (None if it ended meanwhile) do not
    /// admit the attempt.
    Refused(Option<Failures>),
}

/// What is given back under one counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveBack<'a> {
    /// One attempt counted in the series that started then (nothing if
    /// another series has started since).
    Attempt(Counter<'a>, DateTime<Utc>),
    /// The counter's whole series: a success clears a username's failures.
    Series(Counter<'a>),
}

/// Where login attempts are counted, per (username, client address) and per
/// client address. Every attempt is counted as a failure before its password
/// is checked, and given back once it is known not to be one. Records outlive
/// their use by little (MongoDB: a TTL index).
pub trait LoginThrottle: Send + Sync {
    fn policy(&self) -> ThrottlePolicy;
    /// Counts one attempt at `now` if, and only if, the counter's series is
    /// in an `admissible` state (or there is none; a series over starts
    /// anew), in one atomic step.
    fn count(
        &self,
        counter: Counter<'_>,
        admissible: &Admissible,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<Counted, StoreError>> + Send;
    /// Gives back attempts once they are known not to be failures, all in
    /// one database step; each applies, or not, by itself.
    fn give_back(
        &self,
        given: &[GiveBack<'_>],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}
