//! The `revoked_tokens` collection: revoked token and family ids, removed by a
//! TTL index once no token they could match is still valid.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use mongodb::bson::{self, doc};
use mongodb::options::IndexOptions;
use mongodb::{Collection, Database, IndexModel};
use serde::{Deserialize, Serialize};

use super::is_duplicate_key;
use crate::services::StoreError;
use crate::services::tokens::{Revocation, RevocationStore};

const COLLECTION: &str = "revoked_tokens";

#[derive(Debug, Serialize, Deserialize)]
struct RevocationDocument {
    #[serde(rename = "_id")]
    id: String,
    expires_at: bson::DateTime,
    revoked_at: bson::DateTime,
}

pub fn indexes() -> (&'static str, Vec<IndexModel>) {
    let ttl = IndexOptions::builder()
        .expire_after(Duration::ZERO)
        .name("expires_at_ttl".to_owned())
        .build();
    (
        COLLECTION,
        vec![
            IndexModel::builder()
                .keys(doc! { "expires_at": 1 })
                .options(ttl)
                .build(),
            // The periodic sync reads what was revoked since its last look.
            IndexModel::builder().keys(doc! { "revoked_at": 1 }).build(),
        ],
    )
}

#[derive(Clone)]
pub struct MongoRevocations {
    collection: Collection<RevocationDocument>,
    /// Sent with queries as `maxTimeMS`.
    max_time: std::time::Duration,
}

impl MongoRevocations {
    pub fn new(database: &Database) -> Self {
        Self {
            collection: database.collection(COLLECTION),
            max_time: super::DEFAULT_MAX_TIME,
        }
    }

    /// Limits each query to `limit` on the server.
    pub fn with_operation_timeout(mut self, limit: std::time::Duration) -> Self {
        self.max_time = limit;
        self
    }
}

fn to_utc(value: bson::DateTime) -> DateTime<Utc> {
    value.to_chrono()
}

impl RevocationStore for MongoRevocations {
    async fn revoke(&self, revocation: &Revocation) -> Result<bool, StoreError> {
        let document = RevocationDocument {
            id: revocation.id.clone(),
            expires_at: bson::DateTime::from_chrono(revocation.expires_at),
            revoked_at: bson::DateTime::from_chrono(revocation.revoked_at),
        };
        match self.collection.insert_one(document).await {
            Ok(_) => Ok(true),
            Err(error) if is_duplicate_key(&error) => Ok(false),
            Err(error) => Err(error.into()),
        }
    }

    async fn any_revoked(&self, ids: &[&str]) -> Result<bool, StoreError> {
        let found = self
            .collection
            .clone_with_type::<bson::Document>()
            .find_one(doc! { "_id": { "$in": ids } })
            .max_time(self.max_time)
            .projection(doc! { "_id": 1 })
            .await?;
        Ok(found.is_some())
    }

    async fn revoked_since(&self, since: DateTime<Utc>) -> Result<Vec<Revocation>, StoreError> {
        let documents: Vec<RevocationDocument> = self
            .collection
            .find(doc! { "revoked_at": { "$gte": bson::DateTime::from_chrono(since) } })
            .max_time(self.max_time)
            .await?
            .try_collect()
            .await?;
        Ok(documents
            .into_iter()
            .map(|document| Revocation {
                id: document.id,
                expires_at: to_utc(document.expires_at),
                revoked_at: to_utc(document.revoked_at),
            })
            .collect())
    }
}
