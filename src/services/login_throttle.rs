//! How a login attempt reserves its place before its password is checked:
//! in the counters every instance shares (the `LoginThrottle` port), after
//! this instance's own count of the attempts it has in flight.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::StoreError;
use super::ports::login_throttle::{Counted, Counter, GiveBack, LoginThrottle};
use crate::domain::throttle::USERNAME_FAILURES;

/// The login throttle of this instance: the shared counters, and how many
/// attempts of each (username, address) this instance has in flight.
pub struct Throttle<L> {
    counters: L,
    /// Attempts reserving or holding a reservation, by (username key,
    /// address); an entry is removed when its last attempt ends.
    in_flight: Mutex<HashMap<(String, String), u32>>,
}

/// An attempt counted under both counters, whose password may be checked.
#[must_use = "a reservation is settled once the password was checked"]
pub struct Reservation<'a> {
    username: DateTime<Utc>,
    address: DateTime<Utc>,
    _in_flight: InFlight<'a>,
}

/// One attempt in [`Throttle::in_flight`], from before its first database
/// step until it is settled or refused. Dropping it (a refusal, an error, a
/// cancelled request) is what takes it out, so no path can leak it.
struct InFlight<'a> {
    attempts: &'a Mutex<HashMap<(String, String), u32>>,
    key: (String, String),
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut attempts = self.attempts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = attempts.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                attempts.remove(&self.key);
            }
        }
    }
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

/// How long an attempt refused in-process waits before its answer.
const REFUSAL_PAUSE: Duration = Duration::from_millis(250);

/// How many times a reservation is tried again when a concurrent attempt
/// changed its counter between the refusal and the read of the reason.
const RACES: usize = 3;

impl<L: LoginThrottle> Throttle<L> {
    pub fn new(counters: L) -> Self {
        Self {
            counters,
            in_flight: Mutex::default(),
        }
    }

    /// Counts an attempt of `username` from `address` under both counters
    /// before its password is checked, the username's first: `Err(wait)` if
    /// either refuses it (then neither counts it). However many attempts
    /// arrive at once, on however many instances, no more passwords are
    /// checked than the policy admits.
    ///
    /// While this instance has [`USERNAME_FAILURES`] attempts of the same
    /// (username, address) in flight, another is refused at once, with no
    /// database step: each of those is counted, or is being counted, as a
    /// failure, so the counters would refuse it too. A flood of one login
    /// keeps at most that many of its attempts at the database at a time
    /// per instance. Such a refusal is answered after [`REFUSAL_PAUSE`].
    pub async fn reserve(
        &self,
        username: &str,
        address: &str,
    ) -> Result<Result<Reservation<'_>, Duration>, StoreError> {
        let Some(in_flight) = self.enter(username, address) else {
            // Answered after a pause: a client that resends without
            // honouring Retry-After would otherwise get thousands of these a
            // second, and their handling alone would slow every other request
            // (bench budget 3). One of those in flight ends within a
            // password check.
            tokio::time::sleep(REFUSAL_PAUSE).await;
            return Ok(Err(Duration::from_secs(1)));
        };
        let reserved = reserve(&self.counters, username, address).await?;
        Ok(reserved.map(|(username, address)| Reservation {
            username,
            address,
            _in_flight: in_flight,
        }))
    }

    /// Counts one more attempt of (username, address) in flight here, unless
    /// there are already as many as the username's counter admits.
    fn enter(&self, username: &str, address: &str) -> Option<InFlight<'_>> {
        let key = (username.to_owned(), address.to_owned());
        let mut attempts = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let count = attempts.entry(key.clone()).or_default();
        if *count >= USERNAME_FAILURES {
            return None;
        }
        *count += 1;
        Some(InFlight {
            attempts: &self.in_flight,
            key,
        })
    }
}

/// [`Throttle::reserve`]'s database steps: the series each counter counted
/// the attempt in, or the wait.
async fn reserve<L: LoginThrottle>(
    throttle: &L,
    username: &str,
    address: &str,
) -> Result<Result<(DateTime<Utc>, DateTime<Utc>), Duration>, StoreError> {
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
            Counted::In(address) => return Ok(Ok((username, address))),
            Counted::Refused(failures) => failures,
        };
        throttle
            .give_back(&[GiveBack::Attempt(by_username, username)])
            .await?;
        if let Some(wait) = failures.and_then(|f| policy.address_retry_after(&f, now)) {
            return Ok(Err(wait.max(Duration::from_secs(1))));
        }
    }
    Ok(Err(Duration::from_secs(1)))
}

impl Reservation<'_> {
    /// Settles the attempt once its password was checked, or could not be;
    /// it is in flight until then.
    pub async fn settle<L: LoginThrottle>(
        self,
        throttle: &Throttle<L>,
        username: &str,
        address: &str,
        checked: Checked,
    ) -> Result<(), StoreError> {
        let by_username = Counter::Username { username, address };
        let by_address = Counter::Address(address);
        let username = match checked {
            Checked::Failed => return Ok(()),
            Checked::Succeeded => GiveBack::Series(by_username),
            Checked::NotChecked => GiveBack::Attempt(by_username, self.username),
        };
        let address = GiveBack::Attempt(by_address, self.address);
        throttle.counters.give_back(&[username, address]).await
    }
}

/// The key a username is counted under: as typed, lower-cased (unknown and
/// invalid names are counted too, so probing them costs the same).
pub fn username_key(username: &str) -> String {
    username.to_lowercase()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures_util::FutureExt as _;

    use super::*;
    use crate::domain::throttle::{Admissible, ThrottlePolicy};

    /// Counters that admit every attempt (or, `stalled`, never answer) and
    /// count the database steps asked of them.
    #[derive(Default)]
    struct Counters {
        steps: AtomicUsize,
        stalled: bool,
    }

    impl Counters {
        async fn step(&self) {
            self.steps.fetch_add(1, Ordering::SeqCst);
            if self.stalled {
                std::future::pending::<()>().await;
            }
        }
    }

    impl LoginThrottle for Counters {
        fn policy(&self) -> ThrottlePolicy {
            ThrottlePolicy {
                lockout_base: Duration::from_secs(1),
                address_failures: 100,
            }
        }

        async fn count(
            &self,
            _: Counter<'_>,
            _: &Admissible,
            now: DateTime<Utc>,
        ) -> Result<Counted, StoreError> {
            self.step().await;
            Ok(Counted::In(now))
        }

        async fn give_back(&self, _: &[GiveBack<'_>]) -> Result<(), StoreError> {
            self.step().await;
            Ok(())
        }
    }

    fn in_flight<L>(throttle: &Throttle<L>) -> usize {
        throttle.in_flight.lock().unwrap().values().sum::<u32>() as usize
    }

    #[tokio::test]
    async fn a_sixth_login_in_flight_is_refused_without_a_database_step() {
        let throttle = Throttle::new(Counters::default());
        let reserve = |username, address| throttle.reserve(username, address);
        let mut held = Vec::new();
        for _ in 0..USERNAME_FAILURES {
            held.push(reserve("alice", "10.0.0.1").await.unwrap().unwrap());
        }
        let steps = throttle.counters.steps.load(Ordering::SeqCst);

        let asked = std::time::Instant::now();
        let refused = reserve("alice", "10.0.0.1").await.unwrap();
        assert_eq!(refused.err(), Some(Duration::from_secs(1)));
        // Not at once: a flood that ignores Retry-After is slowed down.
        assert!(asked.elapsed() >= REFUSAL_PAUSE);
        assert_eq!(throttle.counters.steps.load(Ordering::SeqCst), steps);

        // Another address or username is another login.
        assert!(reserve("alice", "10.0.0.2").await.unwrap().is_ok());
        assert!(reserve("bob", "10.0.0.1").await.unwrap().is_ok());
        // A settled attempt, or a dropped one, makes room for the next.
        let settled = held.pop().unwrap();
        settled
            .settle(&throttle, "alice", "10.0.0.1", Checked::Failed)
            .await
            .unwrap();
        assert!(reserve("alice", "10.0.0.1").await.unwrap().is_ok());
        drop(held);
        assert_eq!(in_flight(&throttle), 0);
    }

    #[tokio::test]
    async fn a_login_takes_two_database_steps_before_its_password_and_one_after() {
        let throttle = Throttle::new(Counters::default());
        let steps = || throttle.counters.steps.load(Ordering::SeqCst);
        for checked in [Checked::Succeeded, Checked::NotChecked, Checked::Failed] {
            let before = steps();
            let reservation = throttle
                .reserve("alice", "10.0.0.1")
                .await
                .unwrap()
                .unwrap();
            assert_eq!(steps() - before, 2, "{checked:?}");
            reservation
                .settle(&throttle, "alice", "10.0.0.1", checked)
                .await
                .unwrap();
            let after = usize::from(checked != Checked::Failed);
            assert_eq!(steps() - before, 2 + after, "{checked:?}");
        }
    }

    #[test]
    fn a_cancelled_login_leaves_nothing_in_flight() {
        let throttle = Throttle::new(Counters {
            stalled: true,
            ..Counters::default()
        });
        // Polled once, it is in flight, waiting on the database; then dropped.
        assert!(
            throttle
                .reserve("alice", "10.0.0.1")
                .now_or_never()
                .is_none()
        );
        assert_eq!(throttle.counters.steps.load(Ordering::SeqCst), 1);
        assert_eq!(in_flight(&throttle), 0);
    }
}
