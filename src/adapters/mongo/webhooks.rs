//! The `webhooks` collection (one document per subscription, with its
//! delivery state and lease) and `webhook_attempts` (one small document per
//! delivery attempt, removed by a TTL index after `webhooks.attempts_kept_days`).
//!
//! A subscription's lease (`lease: {holder, until_ms}`) is timed by the
//! server's clock (`$$NOW`), in milliseconds as `instances` does, so that
//! instances' clocks need not agree.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use mongodb::bson::{self, Bson, Document, doc};
use mongodb::options::{IndexOptions, ReturnDocument};
use mongodb::{Collection, Database, IndexModel};

use crate::domain::events::EventType;
use crate::domain::webhooks::{Retrying, SigningSecret, Status, Subscription};
use crate::services::StoreError;
use crate::services::ports::webhooks::{
    Attempt, AttemptKey, AttemptOutcome, ListedAttempt, Progress, SubscriptionChange, WebhookStore,
};

pub const WEBHOOKS: &str = "webhooks";
pub const ATTEMPTS: &str = "webhook_attempts";

pub fn indexes() -> [(&'static str, Vec<IndexModel>); 2] {
    let listing = IndexModel::builder()
        .keys(doc! { "subscription": 1, "position": -1, "sequence": -1 })
        .options(
            IndexOptions::builder()
                .name("by_subscription".to_owned())
                .build(),
        )
        .build();
    let holder = IndexModel::builder()
        .keys(doc! { "lease.holder": 1 })
        .options(
            IndexOptions::builder()
                .name("by_lease_holder".to_owned())
                .build(),
        )
        .build();
    [
        (WEBHOOKS, vec![holder]),
        (ATTEMPTS, vec![listing, super::expiry_index()]),
    ]
}

#[derive(Clone)]
pub struct MongoWebhooks {
    webhooks: Collection<Document>,
    attempts: Collection<Document>,
    attempts_kept: Duration,
}

impl MongoWebhooks {
    pub fn new(database: &Database, attempts_kept: Duration) -> Self {
        Self {
            webhooks: database.collection(WEBHOOKS),
            attempts: database.collection(ATTEMPTS),
            attempts_kept,
        }
    }
}

fn corrupt(what: &str) -> StoreError {
    StoreError(format!("a stored webhook has no valid {what}").into())
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn number(document: &Document, key: &str) -> u64 {
    match document.get(key) {
        Some(Bson::Int64(n)) => u64::try_from(*n).unwrap_or(0),
        Some(Bson::Int32(n)) => u64::try_from(*n).unwrap_or(0),
        Some(Bson::Double(n)) => *n as u64,
        _ => 0,
    }
}

fn date(value: DateTime<Utc>) -> bson::DateTime {
    bson::DateTime::from_chrono(value)
}

fn retrying_document(retrying: &Retrying) -> Document {
    doc! {
        "position": to_i64(retrying.position),
        "attempts": i64::from(retrying.attempts),
        "next_try_at": date(retrying.next_try_at),
    }
}

fn subscription_document(subscription: &Subscription) -> Document {
    doc! {
        "_id": &subscription.id,
        "url": &subscription.url,
        "types": type_names(&subscription.types),
        "description": subscription.description.as_deref(),
        "status": subscription.status.as_str(),
        "disabled_reason": subscription.disabled_reason.as_deref(),
        "cursor": to_i64(subscription.cursor),
        "retrying": subscription.retrying.as_ref().map(retrying_document),
        "revision": to_i64(subscription.revision),
        "created_at": date(subscription.created_at),
        "secret": subscription.secret.expose(),
    }
}

fn type_names(types: &[EventType]) -> Vec<&'static str> {
    types.iter().map(|kind| kind.as_str()).collect()
}

fn subscription(document: &Document) -> Result<Subscription, StoreError> {
    let text = |key| document.get_str(key).map_err(|_| corrupt(key));
    let types = document
        .get_array("types")
        .map_err(|_| corrupt("types"))?
        .iter()
        .filter_map(|name| name.as_str().and_then(EventType::parse))
        .collect();
    let retrying = match document.get_document("retrying") {
        Ok(retrying) => Some(Retrying {
            position: number(retrying, "position"),
            attempts: u32::try_from(number(retrying, "attempts")).unwrap_or(u32::MAX),
            next_try_at: retrying
                .get_datetime("next_try_at")
                .map_err(|_| corrupt("retry time"))?
                .to_chrono(),
        }),
        Err(_) => None,
    };
    Ok(Subscription {
        id: text("_id")?.to_owned(),
        url: text("url")?.to_owned(),
        types,
        description: document.get_str("description").ok().map(str::to_owned),
        status: Status::parse(text("status")?).ok_or_else(|| corrupt("status"))?,
        disabled_reason: document.get_str("disabled_reason").ok().map(str::to_owned),
        cursor: number(document, "cursor"),
        retrying,
        revision: number(document, "revision"),
        created_at: document
            .get_datetime("created_at")
            .map_err(|_| corrupt("creation time"))?
            .to_chrono(),
        secret: SigningSecret::parse(text("secret")?).map_err(|_| corrupt("secret"))?,
    })
}

fn attempt(document: &Document) -> Result<ListedAttempt, StoreError> {
    let outcome = match document.get("status") {
        Some(Bson::Int32(status)) => AttemptOutcome::Status(u16::try_from(*status).unwrap_or(0)),
        Some(Bson::Int64(status)) => AttemptOutcome::Status(u16::try_from(*status).unwrap_or(0)),
        _ => AttemptOutcome::Error(document.get_str("error").unwrap_or_default().to_owned()),
    };
    let key = AttemptKey {
        position: number(document, "position"),
        sequence: number(document, "sequence"),
    };
    let attempt = Attempt {
        subscription: document
            .get_str("subscription")
            .unwrap_or_default()
            .to_owned(),
        position: key.position,
        event_id: document.get_str("event_id").unwrap_or_default().to_owned(),
        event_type: document
            .get_str("type")
            .ok()
            .and_then(EventType::parse)
            .ok_or_else(|| corrupt("attempt type"))?,
        attempt: u32::try_from(number(document, "attempt")).unwrap_or(u32::MAX),
        attempted_at: document
            .get_datetime("attempted_at")
            .map_err(|_| corrupt("attempt time"))?
            .to_chrono(),
        outcome,
        duration: Duration::from_millis(number(document, "duration_ms")),
        next_try_at: document
            .get_datetime("next_try_at")
            .ok()
            .map(|at| at.to_chrono()),
    };
    Ok(ListedAttempt { key, attempt })
}

/// `$$NOW` in milliseconds (SecantusDB compares `$$NOW` with stored dates wrongly).
fn now_ms() -> Document {
    doc! { "$toLong": "$$NOW" }
}

impl WebhookStore for MongoWebhooks {
    async fn create(&self, subscription: &Subscription) -> Result<(), StoreError> {
        self.webhooks
            .insert_one(subscription_document(subscription))
            .await?;
        Ok(())
    }

    async fn list(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Subscription>, StoreError> {
        let filter = match after {
            Some(after) => doc! { "_id": { "$gt": after } },
            None => doc! {},
        };
        let documents: Vec<Document> = self
            .webhooks
            .find(filter)
            .sort(doc! { "_id": 1 })
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .await?
            .try_collect()
            .await?;
        documents.iter().map(subscription).collect()
    }

    async fn get(&self, id: &str) -> Result<Option<Subscription>, StoreError> {
        let found = self.webhooks.find_one(doc! { "_id": id }).await?;
        found.as_ref().map(subscription).transpose()
    }

    async fn change(
        &self,
        id: &str,
        change: &SubscriptionChange,
    ) -> Result<Option<Subscription>, StoreError> {
        let mut set = Document::new();
        if let Some(url) = &change.url {
            set.insert("url", url);
        }
        if let Some(types) = &change.types {
            set.insert("types", type_names(types));
        }
        if let Some(description) = &change.description {
            set.insert("description", description.as_deref());
        }
        let mut update = Document::new();
        if let Some(status) = change.status {
            set.insert("status", status.as_str());
            set.insert("disabled_reason", Bson::Null);
            set.insert("retrying", Bson::Null);
            update.insert("$inc", doc! { "revision": 1_i64 });
        }
        // Even with nothing to change: the subscription as it is.
        set.insert("_id", id);
        update.insert("$set", set);
        let changed = self
            .webhooks
            .find_one_and_update(doc! { "_id": id }, update)
            .return_document(ReturnDocument::After)
            .await?;
        changed.as_ref().map(subscription).transpose()
    }

    async fn delete(&self, id: &str) -> Result<bool, StoreError> {
        let deleted = self.webhooks.delete_one(doc! { "_id": id }).await?;
        self.attempts
            .delete_many(doc! { "subscription": id })
            .await?;
        Ok(deleted.deleted_count == 1)
    }

    async fn rewind(&self, id: &str, cursor: u64) -> Result<Option<Subscription>, StoreError> {
        let update = doc! {
            "$set": {
                "cursor": to_i64(cursor),
                "status": Status::Active.as_str(),
                "disabled_reason": Bson::Null,
                "retrying": Bson::Null,
            },
            "$inc": { "revision": 1_i64 },
        };
        let rewound = self
            .webhooks
            .find_one_and_update(doc! { "_id": id }, update)
            .return_document(ReturnDocument::After)
            .await?;
        rewound.as_ref().map(subscription).transpose()
    }

    async fn attempts(
        &self,
        id: &str,
        after: Option<AttemptKey>,
        limit: usize,
    ) -> Result<Vec<ListedAttempt>, StoreError> {
        let mut filter = doc! { "subscription": id };
        if let Some(after) = after {
            let (position, sequence) = (to_i64(after.position), to_i64(after.sequence));
            filter.insert(
                "$or",
                vec![
                    doc! { "position": { "$lt": position } },
                    doc! { "position": position, "sequence": { "$lt": sequence } },
                ],
            );
        }
        let documents: Vec<Document> = self
            .attempts
            .find(filter)
            .sort(doc! { "position": -1, "sequence": -1 })
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .await?
            .try_collect()
            .await?;
        documents.iter().map(attempt).collect()
    }

    async fn claim(&self, instance: &str, lease: Duration) -> Result<Vec<String>, StoreError> {
        let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
        // Free, lapsed or already ours: ours for another `lease`.
        let claimable = doc! {
            "status": Status::Active.as_str(),
            "$or": [
                { "lease": Bson::Null },
                { "lease.holder": instance },
                { "$expr": { "$lt": ["$lease.until_ms", now_ms()] } },
            ],
        };
        let take = vec![doc! { "$set": { "lease": {
            "holder": instance,
            "until_ms": { "$add": [now_ms(), lease_ms] },
        } } }];
        self.webhooks.update_many(claimable, take).await?;
        let held: Vec<Document> = self
            .webhooks
            .find(doc! { "lease.holder": instance, "status": Status::Active.as_str() })
            .projection(doc! { "_id": 1 })
            .await?
            .try_collect()
            .await?;
        Ok(held
            .iter()
            .filter_map(|held| held.get_str("_id").ok().map(str::to_owned))
            .collect())
    }

    async fn release(&self, id: &str, instance: &str) -> Result<(), StoreError> {
        self.webhooks
            .update_one(
                doc! { "_id": id, "lease.holder": instance },
                doc! { "$set": { "lease": Bson::Null } },
            )
            .await?;
        Ok(())
    }

    async fn release_all(&self, instance: &str) -> Result<(), StoreError> {
        self.webhooks
            .update_many(
                doc! { "lease.holder": instance },
                doc! { "$set": { "lease": Bson::Null } },
            )
            .await?;
        Ok(())
    }

    async fn record_attempt(&self, attempt: &Attempt) -> Result<(), StoreError> {
        let mut document = doc! {
            "subscription": &attempt.subscription,
            "position": to_i64(attempt.position),
            // Orders the attempts at one event; one at a time per subscription.
            "sequence": attempt.attempted_at.timestamp_micros(),
            "event_id": &attempt.event_id,
            "type": attempt.event_type.as_str(),
            "attempt": i64::from(attempt.attempt),
            "attempted_at": date(attempt.attempted_at),
            "duration_ms": i64::try_from(attempt.duration.as_millis()).unwrap_or(i64::MAX),
            "next_try_at": attempt.next_try_at.map(date),
            "expires_at": date(attempt.attempted_at + self.attempts_kept),
        };
        match &attempt.outcome {
            AttemptOutcome::Status(status) => document.insert("status", i32::from(*status)),
            AttemptOutcome::Error(error) => document.insert("error", error),
        };
        self.attempts.insert_one(document).await?;
        Ok(())
    }

    async fn advance(
        &self,
        id: &str,
        instance: &str,
        revision: u64,
        progress: &Progress,
    ) -> Result<bool, StoreError> {
        let filter = doc! {
            "_id": id,
            "revision": to_i64(revision),
            "lease.holder": instance,
        };
        let update = match progress {
            Progress::Delivered { position } => doc! {
                "$max": { "cursor": to_i64(*position) },
                "$set": { "retrying": Bson::Null },
            },
            Progress::Retry(retrying) => doc! {
                "$set": { "retrying": retrying_document(retrying) },
            },
            Progress::Disable { reason } => doc! {
                "$set": {
                    "status": Status::Disabled.as_str(),
                    "disabled_reason": reason,
                    "lease": Bson::Null,
                },
            },
        };
        let updated = self.webhooks.update_one(filter, update).await?;
        Ok(updated.matched_count == 1)
    }
}
