//! The `login_failures` collection: failed logins counted per (username,
//! client address) and per client address, one small document per key.
//! A TTL index removes a document once it no longer matters; writes compare
//! the times themselves, so nothing depends on when the TTL monitor runs
//! (mongod's runs once a minute).

use chrono::{DateTime, Utc};
use mongodb::bson::{self, Document, doc};
use mongodb::options::ReturnDocument;
use mongodb::{Collection, Database, IndexModel};
use serde::{Deserialize, Serialize};

use super::instances::Instance;
use super::sessions::OperationSessions;
use crate::domain::throttle::{self, Admissible, Clause, Failures, ThrottlePolicy};
use crate::services::StoreError;
use crate::services::ports::login_throttle::{Counted, Counter, GiveBack, LoginThrottle};

const COLLECTION: &str = "login_failures";

#[derive(Debug, Serialize, Deserialize)]
struct FailuresDocument {
    /// `user:<address> <username>` or `address:<address>`.
    #[serde(rename = "_id")]
    key: String,
    count: i64,
    window_start: bson::DateTime,
    last_failure_at: bson::DateTime,
    expires_at: bson::DateTime,
}

impl FailuresDocument {
    fn failures(&self) -> Failures {
        Failures {
            count: u32::try_from(self.count).unwrap_or(u32::MAX),
            window_start: self.window_start.to_chrono(),
            last_failure_at: self.last_failure_at.to_chrono(),
        }
    }
}

pub fn indexes() -> (&'static str, Vec<IndexModel>) {
    (COLLECTION, vec![super::expiry_index()])
}

fn key(counter: Counter<'_>) -> String {
    match counter {
        Counter::Username { username, address } => format!("user:{address} {username}"),
        Counter::Address(address) => format!("address:{address}"),
    }
}

/// The filter of the series states in which an attempt is admitted.
fn admitting(clauses: &[Clause]) -> Vec<Document> {
    clauses
        .iter()
        .map(|clause| match *clause {
            Clause::Below(limit) => doc! { "count": { "$lt": i64::from(limit) } },
            Clause::Waited {
                count,
                or_more,
                last_failure_by,
            } => doc! {
                "count": if or_more {
                    bson::Bson::Document(doc! { "$gte": i64::from(count) })
                } else {
                    bson::Bson::Int64(i64::from(count))
                },
                "last_failure_at": { "$lte": bson::DateTime::from_chrono(last_failure_by) },
            },
            Clause::StartedBy(start) => {
                doc! { "window_start": { "$lte": bson::DateTime::from_chrono(start) } }
            }
        })
        .collect()
}

#[derive(Clone)]
pub struct MongoLoginFailures {
    database: Database,
    /// For every step (see [`super::sessions`]).
    sessions: OperationSessions,
    collection: Collection<FailuresDocument>,
    policy: ThrottlePolicy,
}

impl MongoLoginFailures {
    /// Its steps run in `instance`'s sessions for single operations.
    pub fn new(database: &Database, instance: &Instance, policy: ThrottlePolicy) -> Self {
        Self {
            database: database.clone(),
            sessions: instance.operation_sessions().clone(),
            collection: database.collection(COLLECTION),
            policy,
        }
    }
}

impl LoginThrottle for MongoLoginFailures {
    fn policy(&self) -> ThrottlePolicy {
        self.policy
    }

    /// One `findAndModify` that upserts: its filter admits only the states of
    /// `admissible`, so a refused attempt meets the existing document as a
    /// duplicate key (and one `find` reads why). A missing document reads as
    /// a series over in the pipeline, which starts one.
    async fn count(
        &self,
        counter: Counter<'_>,
        admissible: &Admissible,
        now: DateTime<Utc>,
    ) -> Result<Counted, StoreError> {
        let key = key(counter);
        let at = bson::DateTime::from_chrono(now);
        let over =
            doc! { "$lte": ["$window_start", bson::DateTime::from_chrono(admissible.series_over)] };
        // Nothing derived from a series matters after its last failure plus
        // the longest wait (the window started before that failure).
        let expires_at = bson::DateTime::from_chrono(throttle::forget_after(now, now));
        let mut session = self.sessions.take().await?;
        let counted = self
            .collection
            .find_one_and_update(
                doc! { "_id": &key, "$or": admitting(&admissible.clauses) },
                vec![doc! { "$set": {
                    "count": { "$cond": [&over, 1_i64, { "$add": ["$count", 1_i64] }] },
                    "window_start": { "$cond": [&over, at, "$window_start"] },
                    "last_failure_at": at,
                    "expires_at": expires_at,
                } }],
            )
            .upsert(true)
            .return_document(ReturnDocument::After)
            .session(session.session())
            .await;
        match session.check(counted) {
            Ok(Some(series)) => Ok(Counted::In(series.window_start.to_chrono())),
            // MongoDB always returns the document. SecantusDB returns none
            // for an upsert that lost the insert race and updated instead;
            // its count includes the attempt (seen in a probe), so read
            // which series it joined.
            Ok(None) => match self.collection.find_one(doc! { "_id": &key }).await? {
                Some(series) => Ok(Counted::In(series.window_start.to_chrono())),
                None => Ok(Counted::Refused(None)),
            },
            Err(error) if super::is_duplicate_key(&error) => {
                let stored = self.collection.find_one(doc! { "_id": &key }).await?;
                Ok(Counted::Refused(
                    stored.as_ref().map(FailuresDocument::failures),
                ))
            }
            Err(error) => Err(error.into()),
        }
    }

    /// One `update` command, a statement per counter. Forgetting a series
    /// stores it as over rather than deleting it, so that both fit one
    /// command (the TTL index removes it later, like any other).
    async fn give_back(&self, given: &[GiveBack<'_>]) -> Result<(), StoreError> {
        let statements: Vec<Document> = given
            .iter()
            .map(|given| match *given {
                GiveBack::Attempt(counter, series) => doc! {
                    "q": {
                        "_id": key(counter),
                        "window_start": bson::DateTime::from_chrono(series),
                        "count": { "$gt": 0_i64 },
                    },
                    "u": { "$inc": { "count": -1_i64 } },
                },
                GiveBack::Series(counter) => doc! {
                    "q": { "_id": key(counter) },
                    "u": { "$set": { "count": 0_i64, "window_start": bson::DateTime::from_millis(0) } },
                },
            })
            .collect();
        let mut session = self.sessions.take().await?;
        let reply = self
            .database
            .run_command(doc! { "update": COLLECTION, "updates": statements, "ordered": false })
            .session(session.session())
            .await;
        let reply = session.check(reply)?;
        // A command that ran answers ok even when a statement failed.
        let failed = reply
            .get_array("writeErrors")
            .ok()
            .and_then(|errors| errors.first());
        match failed.or_else(|| reply.get("writeConcernError")) {
            Some(error) => Err(StoreError(
                format!("a login counter was not given back: {error}").into(),
            )),
            None => Ok(()),
        }
    }
}
