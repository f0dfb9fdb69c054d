//! The `login_failures` collection: failed logins counted per (username,
//! client address) and per client address, one small document per key.
//! A TTL index removes a document once it no longer matters; reads and writes
//! also compare the times themselves, so nothing depends on when the TTL
//! monitor runs (mongod's runs once a minute).

use chrono::{DateTime, TimeDelta, Utc};
use futures_util::TryStreamExt;
use mongodb::bson::{self, doc};
use mongodb::{Collection, Database, IndexModel};
use serde::{Deserialize, Serialize};

use crate::domain::throttle::{self, Failures, ThrottlePolicy};
use crate::services::StoreError;
use crate::services::login_throttle::LoginThrottle;

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

fn username_key(username: &str, address: &str) -> String {
    format!("user:{address} {username}")
}

fn address_key(address: &str) -> String {
    format!("address:{address}")
}

#[derive(Clone)]
pub struct MongoLoginFailures {
    collection: Collection<FailuresDocument>,
    policy: ThrottlePolicy,
}

impl MongoLoginFailures {
    pub fn new(database: &Database, policy: ThrottlePolicy) -> Self {
        Self {
            collection: database.collection(COLLECTION),
            policy,
        }
    }

    /// One more failure under `key`: counted in the current window, or the
    /// first of a new one.
    async fn count(&self, key: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
        let window = TimeDelta::from_std(throttle::WINDOW).unwrap_or(TimeDelta::MAX);
        let at = bson::DateTime::from_chrono(now);
        // Nothing derived from a series matters after its last failure plus
        // the longest wait (the window started before that failure).
        let expires_at = bson::DateTime::from_chrono(throttle::forget_after(now, now));
        let counted = self
            .collection
            .update_one(
                doc! {
                    "_id": key,
                    "window_start": { "$gt": bson::DateTime::from_chrono(now - window) },
                },
                doc! {
                    "$inc": { "count": 1_i64 },
                    "$set": { "last_failure_at": at, "expires_at": expires_at },
                },
            )
            .await?;
        if counted.matched_count == 0 {
            // No series, or an old one: start again. Two concurrent starts
            // may count one failure instead of two.
            self.collection
                .update_one(
                    doc! { "_id": key },
                    doc! { "$set": {
                        "count": 1_i64,
                        "window_start": at,
                        "last_failure_at": at,
                        "expires_at": expires_at,
                    } },
                )
                .upsert(true)
                .await?;
        }
        Ok(())
    }
}

impl LoginThrottle for MongoLoginFailures {
    fn policy(&self) -> ThrottlePolicy {
        self.policy
    }

    async fn failures(
        &self,
        username: &str,
        address: &str,
        now: DateTime<Utc>,
    ) -> Result<(Option<Failures>, Option<Failures>), StoreError> {
        let (user_key, address_key) = (username_key(username, address), address_key(address));
        let documents: Vec<FailuresDocument> = self
            .collection
            .find(doc! {
                "_id": { "$in": [&user_key, &address_key] },
                "expires_at": { "$gt": bson::DateTime::from_chrono(now) },
            })
            .await?
            .try_collect()
            .await?;
        let find = |key: &str| {
            documents
                .iter()
                .find(|document| document.key == key)
                .map(FailuresDocument::failures)
        };
        Ok((find(&user_key), find(&address_key)))
    }

    async fn record_failure(
        &self,
        username: &str,
        address: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let (user_key, address_key) = (username_key(username, address), address_key(address));
        let (by_user, by_address) =
            tokio::join!(self.count(&user_key, now), self.count(&address_key, now));
        by_user.and(by_address)
    }

    async fn clear(&self, username: &str, address: &str) -> Result<(), StoreError> {
        self.collection
            .delete_one(doc! { "_id": username_key(username, address) })
            .await?;
        Ok(())
    }
}
