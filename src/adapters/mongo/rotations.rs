//! The `refresh_rotations` collection: one document per login (token family)
//! naming its current refresh token and the one that token replaced. Every
//! decision on a presented refresh token is one atomic command on that
//! document, so two instances racing with the same token agree.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use mongodb::bson::{self, doc};
use mongodb::options::ReturnDocument;
use mongodb::{Collection, Database, IndexModel};
use serde::{Deserialize, Serialize};

use super::is_duplicate_key;
use crate::domain::user::Role;
use crate::services::StoreError;
use crate::services::ports::tokens::{PairIds, RefreshRotations, Rotation};

const COLLECTION: &str = "refresh_rotations";

#[derive(Debug, Serialize, Deserialize)]
struct SuccessorDocument {
    access_jti: String,
    refresh_jti: String,
    iat: i64,
    roles: Vec<Role>,
    epoch: i64,
}

#[derive(Debug, Serialize, Deserialize)]
struct RotationDocument {
    /// The family id (`fam`).
    #[serde(rename = "_id")]
    family: String,
    /// The refresh token that may be used now.
    current: String,
    /// The refresh token `current` replaced.
    previous: String,
    /// The pair issued when `previous` was used (its refresh token is `current`).
    successor: SuccessorDocument,
    rotated_at: bson::DateTime,
    /// When `current` (and so every token of the family) has expired.
    expires_at: bson::DateTime,
}

impl From<&PairIds> for SuccessorDocument {
    fn from(ids: &PairIds) -> Self {
        Self {
            access_jti: ids.access_jti.clone(),
            refresh_jti: ids.refresh_jti.clone(),
            iat: ids.iat,
            roles: ids.roles.clone(),
            epoch: ids.epoch,
        }
    }
}

impl From<SuccessorDocument> for PairIds {
    fn from(document: SuccessorDocument) -> Self {
        Self {
            access_jti: document.access_jti,
            refresh_jti: document.refresh_jti,
            iat: document.iat,
            roles: document.roles,
            epoch: document.epoch,
        }
    }
}

pub fn indexes() -> (&'static str, Vec<IndexModel>) {
    (COLLECTION, vec![super::expiry_index()])
}

#[derive(Clone)]
pub struct MongoRotations {
    collection: Collection<RotationDocument>,
}

impl MongoRotations {
    pub fn new(database: &Database) -> Self {
        Self {
            collection: database.collection(COLLECTION),
        }
    }
}

impl RefreshRotations for MongoRotations {
    async fn rotate(
        &self,
        family: &str,
        presented: &str,
        successor: &PairIds,
        expires_at: DateTime<Utc>,
        grace: Duration,
    ) -> Result<Rotation, StoreError> {
        let now = Utc::now();
        let successor_document =
            bson::to_bson(&SuccessorDocument::from(successor)).map_err(|e| StoreError(e.into()))?;
        // Matches only if `presented` is current; with no document yet, the
        // upsert creates it (`presented` is then the login's first refresh
        // token, as every rotation leaves a document). If a document exists
        // with another current token, the upsert's insert fails on `_id`.
        let rotated = self
            .collection
            .find_one_and_update(
                doc! { "_id": family, "current": presented },
                doc! { "$set": {
                    "current": &successor.refresh_jti,
                    "previous": presented,
                    "successor": successor_document,
                    "rotated_at": bson::DateTime::from_chrono(now),
                    "expires_at": bson::DateTime::from_chrono(expires_at),
                } },
            )
            .upsert(true)
            .return_document(ReturnDocument::After)
            .await;
        match rotated {
            Ok(_) => return Ok(Rotation::Rotated),
            Err(error) if is_duplicate_key(&error) => {}
            Err(error) => return Err(error.into()),
        }
        // Not current. A repeat is the token just replaced, within the grace
        // period, while its successor is still current (unused): one read of
        // one document decides it.
        let grace = TimeDelta::from_std(grace).unwrap_or(TimeDelta::MAX);
        let since = now
            .checked_sub_signed(grace)
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        let repeat = self
            .collection
            .find_one(doc! {
                "_id": family,
                "previous": presented,
                "rotated_at": { "$gte": bson::DateTime::from_chrono(since) },
            })
            .await?;
        Ok(match repeat {
            Some(document) => Rotation::Repeat(document.successor.into()),
            None => Rotation::Reused,
        })
    }
}
