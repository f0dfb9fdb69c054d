//! The `revoked_tokens` collection: revoked token, family and account ids,
//! removed by a TTL index once no token they could match is still valid.
//!
//! **Why a sequence number.** Instances sync their in-memory copy by asking
//! for what is new. Asking by time ("revoked since my last look") misses a
//! revocation that becomes visible later than its timestamp says: a write
//! slowed by a failover, a skewed clock. Instead, each revocation takes a
//! number from a counter document (`$inc` on `counters/revocations`) in the
//! same transaction as its insert. The counter document stays write-locked by
//! that transaction until it commits: a second revocation's `$inc` meets a
//! WriteConflict and retries after the first has committed. So numbers become
//! visible in increasing order, with no later-visible smaller one, and an
//! instance that has read everything up to `n` and asks for `seq > n` can
//! never skip a revocation. The cost is one transaction (three round trips)
//! per revocation, and revocations take turns; they are rare next to requests.

use futures_util::TryStreamExt;
use mongodb::bson::{self, Document, doc};
use mongodb::options::ReturnDocument;
use mongodb::{ClientSession, Collection, Database, IndexModel};
use serde::{Deserialize, Serialize};

use super::instances::Instance;
use super::{Finish, in_transaction, is_duplicate_key};
use crate::services::StoreError;
use crate::services::ports::tokens::{Revocation, RevocationStore};

const COLLECTION: &str = "revoked_tokens";
pub const COUNTERS: &str = "counters";
/// The counter document that numbers revocations.
pub const REVOCATION_COUNTER: &str = "revocations";

#[derive(Debug, Serialize, Deserialize)]
struct RevocationDocument {
    /// The token or family id; for an account, `account:<id>:<epoch>`, so that
    /// each change of an account is a revocation of its own.
    #[serde(rename = "_id")]
    id: String,
    /// Position in the order revocations became visible.
    #[serde(default)]
    seq: i64,
    /// For an account revocation: the account's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    account: Option<String>,
    /// For an account revocation: tokens of a lower epoch are revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    epoch: Option<i64>,
    expires_at: bson::DateTime,
    revoked_at: bson::DateTime,
}

impl RevocationDocument {
    fn new(revocation: &Revocation, seq: i64) -> Self {
        let (id, account) = match revocation.account_epoch {
            None => (revocation.id.clone(), None),
            Some(epoch) => (
                format!("account:{}:{epoch}", revocation.id),
                Some(revocation.id.clone()),
            ),
        };
        Self {
            id,
            seq,
            account,
            epoch: revocation.account_epoch,
            expires_at: bson::DateTime::from_chrono(revocation.expires_at),
            revoked_at: bson::DateTime::from_chrono(revocation.revoked_at),
        }
    }

    fn into_revocation(self) -> Revocation {
        Revocation {
            id: self.account.unwrap_or(self.id),
            account_epoch: self.epoch,
            expires_at: self.expires_at.to_chrono(),
            revoked_at: self.revoked_at.to_chrono(),
        }
    }
}

pub fn indexes() -> [(&'static str, Vec<IndexModel>); 1] {
    [(
        COLLECTION,
        vec![
            super::expiry_index(),
            // The periodic sync reads what was numbered after its last look.
            IndexModel::builder().keys(doc! { "seq": 1 }).build(),
        ],
    )]
}

/// Writes revocations, numbered; also inside other transactions (an account
/// change records its revocation in the same transaction as the change).
#[derive(Clone)]
pub struct RevocationWriter {
    revocations: Collection<RevocationDocument>,
    counters: Collection<Document>,
}

impl RevocationWriter {
    pub fn new(database: &Database) -> Self {
        Self {
            revocations: database.collection(COLLECTION),
            counters: database.collection(COUNTERS),
        }
    }

    /// Numbers and inserts the revocation in the session's transaction;
    /// `Ok(false)` if the id was already revoked (the caller aborts).
    pub async fn insert(
        &self,
        session: &mut ClientSession,
        revocation: &Revocation,
    ) -> mongodb::error::Result<bool> {
        let counter = self
            .counters
            .find_one_and_update(
                doc! { "_id": REVOCATION_COUNTER },
                doc! { "$inc": { "seq": 1_i64 } },
            )
            .upsert(true)
            .return_document(ReturnDocument::After)
            .session(&mut *session)
            .await?;
        let seq = counter
            .and_then(|counter| counter.get_i64("seq").ok())
            .unwrap_or(1);
        let document = RevocationDocument::new(revocation, seq);
        match self
            .revocations
            .insert_one(document)
            .session(&mut *session)
            .await
        {
            Ok(_) => Ok(true),
            Err(error) if is_duplicate_key(&error) => Ok(false),
            Err(error) => Err(error),
        }
    }
}

#[derive(Clone)]
pub struct MongoRevocations {
    instance: Instance,
    writer: RevocationWriter,
    /// Sent with queries as `maxTimeMS`.
    max_time: std::time::Duration,
}

impl MongoRevocations {
    /// Transactions run in sessions of `instance`.
    pub fn new(database: &Database, instance: &Instance) -> Self {
        Self {
            instance: instance.clone(),
            writer: RevocationWriter::new(database),
            max_time: super::DEFAULT_MAX_TIME,
        }
    }

    /// Limits each query to `limit` on the server.
    pub fn with_operation_timeout(mut self, limit: std::time::Duration) -> Self {
        self.max_time = limit;
        self
    }
}

impl RevocationStore for MongoRevocations {
    async fn revoke(&self, revocation: &Revocation) -> Result<bool, StoreError> {
        let writer = self.writer.clone();
        let revocation = revocation.clone();
        let transaction = in_transaction(
            &self.instance,
            self.max_time,
            || {},
            async move |session| {
                Ok(match writer.insert(session, &revocation).await? {
                    true => Finish::Commit(true),
                    false => Finish::Abort(false),
                })
            },
        );
        Ok(transaction.await?)
    }

    async fn any_revoked(&self, ids: &[&str]) -> Result<bool, StoreError> {
        let found = self
            .writer
            .revocations
            .clone_with_type::<Document>()
            .find_one(doc! { "_id": { "$in": ids } })
            .max_time(self.max_time)
            .projection(doc! { "_id": 1 })
            .await?;
        Ok(found.is_some())
    }

    async fn revoked_after(
        &self,
        after: Option<i64>,
        limit: usize,
    ) -> Result<Vec<(i64, Revocation)>, StoreError> {
        // The first read takes everything, also revocations written before
        // they were numbered (they sort first, as 0).
        let filter = match after {
            Some(after) => doc! { "seq": { "$gt": after } },
            None => doc! {},
        };
        let documents: Vec<RevocationDocument> = self
            .writer
            .revocations
            .find(filter)
            .sort(doc! { "seq": 1 })
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .max_time(self.max_time)
            .await?
            .try_collect()
            .await?;
        Ok(documents
            .into_iter()
            .map(|document| (document.seq, document.into_revocation()))
            .collect())
    }
}
