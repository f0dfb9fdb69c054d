//! The port for counting login attempts, shared by every instance, and how an
//! attempt reserves its place before its password is checked.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::StoreError;
use super::ports::login_throttle::{Counted, Counter, LoginThrottle};

/// An attempt counted under both counters, whose password may be checked.
#[derive(Debug, Clone, Copy)]
#[must_use = "a reservation is settled once the password was checked"]
pub struct Reservation {
    username: DateTime<Utc>,
    address: DateTime<Utc>,
}

/// What checking a reserved attempt's password came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checked {
    /// The password was wrong: the attempt stays counted as a failure.
    Failed,
    /// The password was right: the username's failures are forgotten, and the
    /// attempt no longer counts against the address.
    Succeeded,
    /// The password could not be checked (the hashing queue was full).
    NotChecked,
}

/// How many times a reservation is tried again when a concurrent attempt
/// changed its counter between the refusal and the read of the reason.
const RACES: usize = 3;

/// Counts an attempt of `username` from `address` under both counters before
/// its password is checked, the username's first: `Err(wait)` if either
/// refuses it (then neither counts it). However many attempts arrive at once, on however many
/// instances, no more passwords are checked than the policy admits.
pub async fn reserve<L: LoginThrottle>(
    throttle: &L,
    username: &str,
    address: &str,
) -> Result<Result<Reservation, Duration>, StoreError> {
    let policy = throttle.policy();
    let by_username = Counter::Username { username, address };
    let by_address = Counter::Address(address);
    for _ in 0..RACES {
        // The username first: a guess it refuses (the common refusal) costs
        // the address counter nothing.
        let now = Utc::now();
        let username_admissible = policy.username_admissible(now);
        let username = match throttle
            .count(by_username, &username_admissible, now)
            .await?
        {
            Counted::In(series) => series,
            Counted::Refused(failures) => {
                match failures.and_then(|f| policy.username_retry_after(&f, now)) {
                    Some(wait) => return Ok(Err(wait.max(Duration::from_secs(1)))),
                    // Nothing stored makes it wait: the series changed since
                    // (a concurrent first failure, or a success).
                    None => continue,
                }
            }
        };
        let address_admissible = policy.address_admissible(now);
        let failures = match throttle.count(by_address, &address_admissible, now).await? {
            Counted::In(address) => return Ok(Ok(Reservation { username, address })),
            Counted::Refused(failures) => failures,
        };
        throttle.uncount(by_username, username).await?;
        if let Some(wait) = failures.and_then(|f| policy.address_retry_after(&f, now)) {
            return Ok(Err(wait.max(Duration::from_secs(1))));
        }
    }
    Ok(Err(Duration::from_secs(1)))
}

impl Reservation {
    /// Settles the attempt once its password was checked, or could not be.
    pub async fn settle<L: LoginThrottle>(
        self,
        throttle: &L,
        username: &str,
        address: &str,
        checked: Checked,
    ) -> Result<(), StoreError> {
        let by_username = Counter::Username { username, address };
        let by_address = Counter::Address(address);
        let (of_username, of_address) = match checked {
            Checked::Failed => return Ok(()),
            Checked::Succeeded => tokio::join!(
                throttle.forget(by_username),
                throttle.uncount(by_address, self.address),
            ),
            Checked::NotChecked => tokio::join!(
                throttle.uncount(by_username, self.username),
                throttle.uncount(by_address, self.address),
            ),
        };
        of_username.and(of_address)
    }
}

/// The key a username is counted under: as typed, lower-cased (unknown and
/// invalid names are counted too, so probing them costs the same).
pub fn username_key(username: &str) -> String {
    username.to_lowercase()
}
