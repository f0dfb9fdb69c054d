//! Login throttling rules: how many failed logins are tolerated, and how long
//! a client waits after that. Pure: the counts are kept by a store.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

/// Failures of one username from one client address tolerated within
/// [`WINDOW`]; the next attempt waits. Not a setting: it holds everywhere.
pub const USERNAME_FAILURES: u32 = 5;
/// How long failures are counted from the first one of a series.
pub const WINDOW: Duration = Duration::from_secs(15 * 60);
/// The longest wait.
pub const MAX_WAIT: Duration = Duration::from_secs(15 * 60);

/// Failed logins counted under one key (a username from an address, or an address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failures {
    pub count: u32,
    /// When the first failure of this series was recorded.
    pub window_start: DateTime<Utc>,
    pub last_failure_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy)]
pub struct ThrottlePolicy {
    /// The wait after the [`USERNAME_FAILURES`]th failure; it doubles with each
    /// further failure, up to [`MAX_WAIT`].
    pub lockout_base: Duration,
    /// Failures from one address, across usernames, tolerated within [`WINDOW`].
    pub address_failures: u32,
}

fn window() -> TimeDelta {
    TimeDelta::from_std(WINDOW).unwrap_or(TimeDelta::MAX)
}

fn remaining(until: DateTime<Utc>, now: DateTime<Utc>) -> Option<Duration> {
    (until > now).then(|| (until - now).to_std().unwrap_or_default())
}

impl ThrottlePolicy {
    /// How long a username must wait after `count` failures from one address.
    pub fn username_wait(&self, count: u32) -> Duration {
        if count < USERNAME_FAILURES {
            return Duration::ZERO;
        }
        let doublings = (count - USERNAME_FAILURES).min(20);
        self.lockout_base
            .saturating_mul(1 << doublings)
            .min(MAX_WAIT)
    }

    /// How long until a username may be tried again from the address.
    pub fn username_retry_after(
        &self,
        failures: &Failures,
        now: DateTime<Utc>,
    ) -> Option<Duration> {
        let wait = TimeDelta::from_std(self.username_wait(failures.count)).ok()?;
        if wait.is_zero() {
            return None;
        }
        remaining(failures.last_failure_at + wait, now)
    }

    /// How long until any username may be tried again from the address.
    pub fn address_retry_after(&self, failures: &Failures, now: DateTime<Utc>) -> Option<Duration> {
        if failures.count < self.address_failures {
            return None;
        }
        remaining(failures.window_start + window(), now)
    }
}

/// One stored state of a series in which an attempt may be checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clause {
    /// Fewer failures than this.
    Below(u32),
    /// Exactly `count` failures (or more, with `or_more`), the last at or
    /// before `last_failure_by`.
    Waited {
        count: u32,
        or_more: bool,
        last_failure_by: DateTime<Utc>,
    },
    /// A series that started at or before this time: it is over.
    StartedBy(DateTime<Utc>),
}

/// The stored states of a series in which an attempt at one moment may be
/// checked (any clause; no series at all admits too). A store counts the
/// attempt only in one of these states, in the same atomic step, so that
/// concurrent attempts can never check more passwords than the rule allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admissible {
    pub clauses: Vec<Clause>,
    /// A series that started at or before this is over: the attempt counted
    /// starts a new one.
    pub series_over: DateTime<Utc>,
}

impl Admissible {
    /// Whether an attempt may be checked after these failures (None: none).
    pub fn admits(&self, failures: Option<&Failures>) -> bool {
        let Some(failures) = failures else {
            return true;
        };
        self.clauses.iter().any(|clause| match *clause {
            Clause::Below(limit) => failures.count < limit,
            Clause::Waited {
                count,
                or_more,
                last_failure_by,
            } => {
                (failures.count == count || (or_more && failures.count > count))
                    && failures.last_failure_at <= last_failure_by
            }
            Clause::StartedBy(start) => failures.window_start <= start,
        })
    }
}

impl ThrottlePolicy {
    /// When a username may be tried from an address at `now`: below
    /// [`USERNAME_FAILURES`], or once the wait after the last failure is over.
    pub fn username_admissible(&self, now: DateTime<Utc>) -> Admissible {
        let mut clauses = vec![Clause::Below(USERNAME_FAILURES)];
        let mut count = USERNAME_FAILURES;
        loop {
            let wait = self.username_wait(count);
            let last_failure_by = now - TimeDelta::from_std(wait).unwrap_or(TimeDelta::MAX);
            // From the first count that waits the longest, every count waits as long.
            let or_more = wait >= MAX_WAIT || self.username_wait(count + 1) == wait;
            clauses.push(Clause::Waited {
                count,
                or_more,
                last_failure_by,
            });
            if or_more {
                break;
            }
            count += 1;
        }
        Admissible {
            clauses,
            series_over: now - window(),
        }
    }

    /// When any username may be tried from an address at `now`: below
    /// `address_failures`, or once the series' window is over.
    pub fn address_admissible(&self, now: DateTime<Utc>) -> Admissible {
        Admissible {
            clauses: vec![
                Clause::Below(self.address_failures),
                Clause::StartedBy(now - window()),
            ],
            series_over: now - window(),
        }
    }
}

/// When the record of a series may be forgotten: no wait and no count
/// derived from it matters any more.
pub fn forget_after(window_start: DateTime<Utc>, last_failure_at: DateTime<Utc>) -> DateTime<Utc> {
    let max_wait = TimeDelta::from_std(MAX_WAIT).unwrap_or(TimeDelta::MAX);
    (window_start + window()).max(last_failure_at + max_wait)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> ThrottlePolicy {
        ThrottlePolicy {
            lockout_base: Duration::from_secs(30),
            address_failures: 100,
        }
    }

    #[test]
    fn the_wait_starts_at_the_fifth_failure_and_doubles_up_to_fifteen_minutes() {
        let waits: Vec<u64> = (1..=12)
            .map(|n| policy().username_wait(n).as_secs())
            .collect();
        assert_eq!(waits, [0, 0, 0, 0, 30, 60, 120, 240, 480, 900, 900, 900]);
        assert_eq!(policy().username_wait(u32::MAX), MAX_WAIT);
    }

    #[test]
    fn retry_after_counts_from_the_last_failure() {
        let now = Utc::now();
        let failures = Failures {
            count: 6,
            window_start: now - TimeDelta::seconds(100),
            last_failure_at: now - TimeDelta::seconds(20),
        };
        let wait = policy().username_retry_after(&failures, now).unwrap();
        assert_eq!(wait.as_secs(), 40);
        let later = now + TimeDelta::seconds(41);
        assert_eq!(policy().username_retry_after(&failures, later), None);
        let few = Failures {
            count: 4,
            ..failures
        };
        assert_eq!(policy().username_retry_after(&few, now), None);
    }

    #[test]
    fn the_admissible_states_are_exactly_those_without_a_wait() {
        for base in [1, 30, 300] {
            let policy = ThrottlePolicy {
                lockout_base: Duration::from_secs(base),
                ..policy()
            };
            let now = Utc::now();
            let username = policy.username_admissible(now);
            let address = policy.address_admissible(now);
            for count in 0..40 {
                for ago in [0, 1, 29, 30, 31, 299, 300, 301, 899, 900, 901, 5000_i64] {
                    let failures = Failures {
                        count,
                        window_start: now - TimeDelta::seconds(ago + 5),
                        last_failure_at: now - TimeDelta::seconds(ago),
                    };
                    assert_eq!(
                        username.admits(Some(&failures)),
                        policy.username_retry_after(&failures, now).is_none(),
                        "username, base {base}, {count} failures, the last {ago} s ago"
                    );
                    assert_eq!(
                        address.admits(Some(&failures)),
                        policy.address_retry_after(&failures, now).is_none(),
                        "address, {count} failures, the last {ago} s ago"
                    );
                }
            }
            assert!(username.admits(None) && address.admits(None));
            assert!(username.clauses.len() <= 25, "{}", username.clauses.len());
        }
    }

    #[test]
    fn an_address_waits_for_the_end_of_its_window() {
        let now = Utc::now();
        let failures = Failures {
            count: 100,
            window_start: now - TimeDelta::seconds(60),
            last_failure_at: now,
        };
        assert_eq!(
            policy()
                .address_retry_after(&failures, now)
                .unwrap()
                .as_secs(),
            840
        );
        let fewer = Failures {
            count: 99,
            ..failures
        };
        assert_eq!(policy().address_retry_after(&fewer, now), None);
    }
}
