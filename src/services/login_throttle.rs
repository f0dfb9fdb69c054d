//! The port for counting failed logins, shared by every instance.

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::StoreError;
use crate::domain::throttle::{Failures, ThrottlePolicy};

/// Where failed logins are counted: per (username, client address) and per
/// client address. Records outlive their use by little (MongoDB: a TTL index),
/// and readers never trust a record past its window, so the deletion's timing
/// does not matter.
pub trait LoginThrottle: Send + Sync {
    fn policy(&self) -> ThrottlePolicy;
    /// The current failures of the username from the address, and of the address.
    fn failures(
        &self,
        username: &str,
        address: &str,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<(Option<Failures>, Option<Failures>), StoreError>> + Send;
    /// Counts one more failure under both keys.
    fn record_failure(
        &self,
        username: &str,
        address: &str,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Forgets the failures of the username from the address (after a success).
    fn clear(
        &self,
        username: &str,
        address: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// What the throttle says before a password is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead; `had_failures` says whether a success must clear a count.
    Allowed { had_failures: bool },
    /// Refused without checking the password; retry after this long.
    Throttled(Duration),
}

/// Decides whether a login attempt may check its password.
pub async fn admit<L: LoginThrottle>(
    throttle: &L,
    username: &str,
    address: &str,
) -> Result<Admission, StoreError> {
    let now = Utc::now();
    let policy = throttle.policy();
    let (of_username, of_address) = throttle.failures(username, address, now).await?;
    let waits = [
        of_username.and_then(|f| policy.username_retry_after(&f, now)),
        of_address.and_then(|f| policy.address_retry_after(&f, now)),
    ];
    Ok(match waits.into_iter().flatten().max() {
        Some(wait) => Admission::Throttled(wait),
        None => Admission::Allowed {
            had_failures: of_username.is_some(),
        },
    })
}

/// The key a username is counted under: as typed, lower-cased (unknown and
/// invalid names are counted too, so probing them costs the same).
pub fn username_key(username: &str) -> String {
    username.to_lowercase()
}
