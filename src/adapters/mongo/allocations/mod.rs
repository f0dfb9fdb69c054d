//! The `batches` and `order_lines` collections.
//!
//! A batch document holds only what the allocation decision needs (its
//! quantities, eta and the intents of lines on their way in), and
//! every acknowledged order line is a document of its own, so no document
//! grows with the number of orders.
//!
//! Allocation, the hot path, runs without a transaction, in groups
//! ([`group_commit`]): single-document writes whose intents any instance can
//! finish ([`interrupted`]). The rarer steps that move stock between a batch
//! and lines (deallocating, shrinking, filling backorders) are each one
//! multi-document transaction (this needs a replica set) in a session of
//! this instance's lease, which survivors kill should this process die
//! ([`super::instances`]). A transaction that meets a concurrent write
//! (WriteConflict, labelled `TransientTransactionError`) is retried whole
//! until [`TRANSACTION_RETRY_FOR`](super::TRANSACTION_RETRY_FOR) has passed.

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::Duration;

use futures_util::TryStreamExt;
use mongodb::bson::{Bson, Document, doc, oid::ObjectId};
use mongodb::error::Error as MongoError;
use mongodb::options::ReturnDocument;
use mongodb::{ClientSession, Collection, Database};
use tokio::sync::Mutex;

use self::documents::{ALLOCATED, BACKORDERED, BatchDocument, LineDocument, corrupt, quantity};
pub use self::documents::{BATCHES, ORDER_LINES, ORDERS, indexes};
use self::group_commit::Intake;
use super::instances::Instance;
use super::sessions::OperationSessions;
use super::{Finish, in_transaction, is_duplicate_key};
use crate::domain::allocation::{AcknowledgedLine, Batch, OrderLine, Requester, lines_to_give_up};
use crate::metrics::{AllocationOutcome, metrics};
use crate::services::StoreError;
use crate::services::ports::allocation::{
    AddBatchError, AllocateStep, AllocationRepository, Backorder, BatchLine, FillStep, Stock,
};

/// How many allocation groups of a process are at the database at once. One:
/// the requests that arrive meanwhile make the next group, so groups grow
/// with the load and a sku's lines share one `findAndModify` (measured: 152
/// allocations/s with two, 218 with one, in `bench/run --only original`'s
/// setting). A group held up by a dead instance's transaction holds up the
/// next for at most a lease (1 s).
const GROUPS_IN_FLIGHT: usize = 1;

/// How many locks writes to one sku are spread over within a process.
const SKU_LOCKS: usize = 64;

#[derive(Clone)]
pub struct MongoAllocations {
    database: Database,
    instance: Instance,
    /// For the group commit's operations (see [`super::sessions`]).
    sessions: OperationSessions,
    intake: Arc<Intake>,
    batches: Collection<BatchDocument>,
    lines: Collection<LineDocument>,
    orders: Collection<Document>,
    /// Refusals for the event feed (`events::note_refusal`).
    notes: Collection<Document>,
    /// Writes to one sku from this process take turns: concurrent
    /// transactions on the same batch document would otherwise mostly fail
    /// with WriteConflict and retry. Other processes still conflict, and retry.
    sku_locks: std::sync::Arc<[Mutex<()>; SKU_LOCKS]>,
    hasher: RandomState,
    /// Sent with queries as `maxTimeMS`, and as the commit's limit.
    max_time: Duration,
}

mod documents;
mod group_commit;
mod interrupted;

pub use self::interrupted::Resumed;

impl MongoAllocations {
    /// Transactions run in sessions of `instance`, whose intents
    /// `resume_interrupted` leaves alone while it holds its lease.
    pub fn new(database: &Database, instance: &Instance) -> Self {
        Self {
            database: database.clone(),
            instance: instance.clone(),
            sessions: instance.operation_sessions().clone(),
            intake: Arc::new(Intake::new(GROUPS_IN_FLIGHT)),
            batches: database.collection(BATCHES),
            lines: database.collection(ORDER_LINES),
            orders: database.collection(ORDERS),
            notes: database.collection(super::events::EVENT_NOTES),
            sku_locks: std::sync::Arc::new(std::array::from_fn(|_| Mutex::new(()))),
            hasher: RandomState::new(),
            max_time: super::DEFAULT_MAX_TIME,
        }
    }

    /// Takes a group's stock one `findAndModify` per sku, as on MongoDB 7,
    /// whatever the server (to test that path on a newer one).
    pub fn without_sorted_updates(mut self) -> Self {
        self.intake = Arc::new(Intake::new(GROUPS_IN_FLIGHT).without_sorted_updates());
        self
    }

    /// Limits each query (and each commit) to `limit` on the server.
    pub fn with_operation_timeout(mut self, limit: Duration) -> Self {
        self.max_time = limit;
        self
    }

    /// Runs `attempt` as one transaction (see [`in_transaction`]) in a
    /// session of this instance, counting each retry as contention.
    async fn transaction<T>(
        &self,
        attempt: impl AsyncFnMut(&mut ClientSession) -> Result<Finish<T>, MongoError>,
    ) -> Result<T, StoreError> {
        let contention = || metrics().allocation(AllocationOutcome::Contention);
        Ok(in_transaction(&self.instance, self.max_time, contention, attempt).await?)
    }

    fn sku_lock(&self, sku: &str) -> &Mutex<()> {
        &self.sku_locks[self.hasher.hash_one(sku) as usize % SKU_LOCKS]
    }

    /// In a transaction: takes `line.qty` from the preferred batch of its sku
    /// with room (the order of the allocation's stock step). Returns the
    /// batch and the line's position in it.
    async fn take_stock_in(
        &self,
        session: &mut ClientSession,
        line: &OrderLine,
    ) -> Result<Option<(String, i64)>, MongoError> {
        let qty = i64::from(line.qty);
        let taken = self
            .batches
            .clone_with_type::<Document>()
            .find_one_and_update(
                doc! { "sku": &line.sku, "available_quantity": { "$gte": qty } },
                doc! { "$inc": { "available_quantity": -qty, "allocation_seq": 1 } },
            )
            .max_time(self.max_time)
            .sort(doc! { "eta": 1, "_id": 1 })
            .projection(doc! { "allocation_seq": 1 })
            .return_document(ReturnDocument::After)
            .session(session)
            .await?;
        Ok(taken.and_then(|batch| {
            let reference = batch.get_str("_id").ok()?.to_owned();
            let seq = batch.get_i64("allocation_seq").ok()?;
            Some((reference, seq))
        }))
    }
}

/// Where a line's intent is kept in its batch while the line is on its way
/// in: an intent exists only while its line is not stored yet, or stored and
/// drawing from that batch (a step that moves the line away removes it).
fn intent_field(line: &ObjectId) -> String {
    format!("pending.{}", line.to_hex())
}

fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// At most `limit_to` documents matching `filter`, in `sort` order.
async fn find_many<T>(
    collection: &Collection<T>,
    max_time: Duration,
    filter: Document,
    sort: Document,
    limit_to: usize,
) -> Result<Vec<T>, StoreError>
where
    T: serde::de::DeserializeOwned + Send + Sync,
{
    collection
        .find(filter)
        .max_time(max_time)
        .sort(sort)
        .limit(limit(limit_to))
        .await?
        .try_collect()
        .await
        .map_err(StoreError::from)
}

/// A page of a listing in `_id` order, optionally of one sku, strictly after `after`.
async fn find_page<T>(
    collection: &Collection<T>,
    max_time: Duration,
    mut filter: Document,
    sku: Option<&str>,
    after: Option<Bson>,
    limit_to: usize,
) -> Result<Vec<T>, StoreError>
where
    T: serde::de::DeserializeOwned + Send + Sync,
{
    if let Some(sku) = sku {
        filter.insert("sku", sku);
    }
    if let Some(after) = after {
        filter.insert("_id", doc! { "$gt": after });
    }
    find_many(collection, max_time, filter, doc! { "_id": 1 }, limit_to).await
}

impl AllocationRepository for MongoAllocations {
    async fn add_batch(&self, batch: &Batch) -> Result<(), AddBatchError> {
        match self.batches.insert_one(BatchDocument::new(batch)).await {
            Ok(_) => Ok(()),
            Err(error) if is_duplicate_key(&error) => {
                Err(AddBatchError::DuplicateBatch(batch.reference.clone()))
            }
            Err(error) => Err(StoreError::from(error).into()),
        }
    }

    async fn batch(&self, reference: &str) -> Result<Option<Batch>, StoreError> {
        self.batches
            .find_one(doc! { "_id": reference })
            .max_time(self.max_time)
            .await?
            .map(BatchDocument::into_batch)
            .transpose()
    }

    async fn batches(
        &self,
        sku: Option<&str>,
        after: Option<&str>,
        limit_to: usize,
    ) -> Result<Vec<Batch>, StoreError> {
        if limit_to == 0 {
            return Ok(Vec::new());
        }
        let after = after.map(Bson::from);
        let documents: Vec<BatchDocument> =
            find_page(&self.batches, self.max_time, doc! {}, sku, after, limit_to).await?;
        documents
            .into_iter()
            .map(BatchDocument::into_batch)
            .collect()
    }

    async fn record_refusal(&self, line: &OrderLine) -> Result<(), StoreError> {
        super::events::note_refusal(&self.notes, line).await
    }

    async fn stock(&self, sku: &str, qty: u32) -> Result<Stock, StoreError> {
        let roomiest = self
            .batches
            .clone_with_type::<Document>()
            .find_one(doc! { "sku": sku })
            .sort(doc! { "available_quantity": -1 })
            .max_time(self.max_time)
            .projection(doc! { "_id": 0, "available_quantity": 1 })
            .await?;
        let most = roomiest.map(|batch| batch.get_i64("available_quantity").unwrap_or(0));
        Ok(Stock::of(most, qty))
    }

    async fn allocate(
        &self,
        line: &OrderLine,
        requester: &Requester,
    ) -> Result<AllocateStep, StoreError> {
        self.allocate_in_group(line, requester).await
    }

    async fn line(&self, orderid: &str, sku: &str) -> Result<Option<AcknowledgedLine>, StoreError> {
        self.lines
            .find_one(doc! { "orderid": orderid, "sku": sku })
            .max_time(self.max_time)
            .await?
            .map(LineDocument::into_line)
            .transpose()
    }

    async fn lines_of_order(
        &self,
        orderid: &str,
        limit_to: usize,
    ) -> Result<Vec<AcknowledgedLine>, StoreError> {
        let documents: Vec<LineDocument> = find_many(
            &self.lines,
            self.max_time,
            doc! { "orderid": orderid },
            doc! { "orderid": 1, "sku": 1 },
            limit_to,
        )
        .await?;
        documents.into_iter().map(LineDocument::into_line).collect()
    }

    async fn lines_of_sku(
        &self,
        sku: &str,
        orderids: &[String],
    ) -> Result<Vec<AcknowledgedLine>, StoreError> {
        let filter = doc! { "orderid": { "$in": orderids }, "sku": sku };
        let documents =
            find_many(&self.lines, self.max_time, filter, doc! {}, orderids.len()).await?;
        documents.into_iter().map(LineDocument::into_line).collect()
    }

    async fn remove_line(
        &self,
        orderid: &str,
        sku: &str,
        requester: &Requester,
    ) -> Result<Option<AcknowledgedLine>, StoreError> {
        let mut filter = doc! { "orderid": orderid, "sku": sku };
        if !requester.admin {
            filter.insert("owner", &requester.account);
        }
        let _turn = self.sku_lock(sku).lock().await;
        let this = self.clone();
        let removed = self
            .transaction(async move |session| {
                let Some(removed) = this
                    .lines
                    .find_one_and_delete(filter.clone())
                    .max_time(this.max_time)
                    .session(&mut *session)
                    .await?
                else {
                    return Ok(Finish::Abort(None));
                };
                if let Some(batchref) = &removed.batchref {
                    // With the line goes its intent, if still there: nobody may
                    // store the line again.
                    this.batches
                        .update_one(
                            doc! { "_id": batchref },
                            doc! {
                                "$inc": { "available_quantity": removed.qty },
                                "$unset": { intent_field(&removed.id): "" },
                            },
                        )
                        .session(&mut *session)
                        .await?;
                }
                Ok(Finish::Commit(Some(removed)))
            })
            .await?;
        removed.map(LineDocument::into_line).transpose()
    }

    async fn change_purchased_quantity(
        &self,
        reference: &str,
        qty: u32,
    ) -> Result<Option<Batch>, StoreError> {
        let Some(sku) = self.batch(reference).await?.map(|b| b.sku) else {
            return Ok(None);
        };
        let _turn = self.sku_lock(&sku).lock().await;
        let this = self.clone();
        let reference = reference.to_owned();
        let changed = self
            .transaction(async move |session| {
                let reference = reference.as_str();
                let Some(stored) = this
                    .batches
                    .find_one(doc! { "_id": reference })
                    .max_time(this.max_time)
                    .session(&mut *session)
                    .await?
                else {
                    return Ok(Finish::Abort(None));
                };
                let delta = i64::from(qty) - stored.purchased_quantity;
                let changed = this
                    .batches
                    .find_one_and_update(
                        doc! { "_id": reference },
                        doc! {
                            "$set": { "purchased_quantity": i64::from(qty) },
                            "$inc": { "available_quantity": delta },
                        },
                    )
                    .max_time(this.max_time)
                    .return_document(ReturnDocument::After)
                    .session(&mut *session)
                    .await?;
                Ok(Finish::Commit(changed))
            })
            .await?;
        changed.map(BatchDocument::into_batch).transpose()
    }

    async fn give_up_recent_lines(
        &self,
        reference: &str,
        max_lines: usize,
    ) -> Result<Vec<OrderLine>, StoreError> {
        let Some(sku) = self.batch(reference).await?.map(|b| b.sku) else {
            return Ok(Vec::new());
        };
        let _turn = self.sku_lock(&sku).lock().await;
        let this = self.clone();
        let reference = reference.to_owned();
        self.transaction(async move |session| {
            let reference = reference.as_str();
            let over_by = match this
                .batches
                .find_one(doc! { "_id": reference })
                .max_time(this.max_time)
                .session(&mut *session)
                .await?
            {
                Some(batch) => batch.available_quantity.min(0).unsigned_abs(),
                None => 0,
            };
            if over_by == 0 {
                return Ok(Finish::Abort(Vec::new()));
            }
            let recent: Vec<LineDocument> = this
                .lines
                .find(doc! { "batchref": reference, "status": ALLOCATED })
                .max_time(this.max_time)
                .sort(doc! { "batchref": 1, "batch_seq": -1 })
                .limit(limit(max_lines))
                .session(&mut *session)
                .await?
                .stream(&mut *session)
                .try_collect()
                .await?;
            let quantities: Vec<u32> = recent
                .iter()
                .map(|line| u32::try_from(line.qty).unwrap_or(u32::MAX))
                .collect();
            let given_up = &recent[..lines_to_give_up(over_by, &quantities)];
            if given_up.is_empty() {
                return Ok(Finish::Abort(Vec::new()));
            }
            let ids: Vec<ObjectId> = given_up.iter().map(|line| line.id).collect();
            this.lines
                .update_many(
                    doc! { "_id": { "$in": &ids } },
                    doc! { "$set": { "status": BACKORDERED, "batchref": null, "batch_seq": null } },
                )
                .session(&mut *session)
                .await?;
            let freed: i64 = given_up.iter().map(|line| line.qty).sum();
            let intents: Document = ids
                .iter()
                .map(|id| (intent_field(id), Bson::from("")))
                .collect();
            this.batches
                .update_one(
                    doc! { "_id": reference },
                    doc! {
                        "$inc": { "available_quantity": freed },
                        "$unset": intents,
                    },
                )
                .session(&mut *session)
                .await?;
            Ok(Finish::Commit(
                given_up
                    .iter()
                    .map(|line| OrderLine {
                        orderid: line.orderid.clone(),
                        sku: line.sku.clone(),
                        qty: u32::try_from(line.qty).unwrap_or(u32::MAX),
                    })
                    .collect(),
            ))
        })
        .await
    }

    async fn over_allocated_batches(&self, limit_to: usize) -> Result<Vec<String>, StoreError> {
        let filter = doc! { "available_quantity": { "$lt": 0 } };
        let batches = find_many(&self.batches, self.max_time, filter, doc! {}, limit_to).await?;
        Ok(batches.into_iter().map(|batch| batch.reference).collect())
    }

    async fn backorders(
        &self,
        sku: Option<&str>,
        after: Option<&str>,
        limit_to: usize,
    ) -> Result<Vec<Backorder>, StoreError> {
        let filter = doc! { "status": BACKORDERED };
        // A position that is no ObjectId was not made here: start over.
        let after = after.and_then(|after| ObjectId::parse_str(after).ok().map(Bson::from));
        let documents: Vec<LineDocument> =
            find_page(&self.lines, self.max_time, filter, sku, after, limit_to).await?;
        documents
            .into_iter()
            .map(|document| {
                let position = document.id.to_hex();
                Ok(Backorder {
                    line: document.into_line()?,
                    position,
                })
            })
            .collect()
    }

    async fn fill_backorder(&self, line: &OrderLine) -> Result<FillStep, StoreError> {
        let _turn = self.sku_lock(&line.sku).lock().await;
        let this = self.clone();
        let line = line.clone();
        self.transaction(async move |session| {
            let line = &line;
            let Some((batchref, seq)) = this.take_stock_in(&mut *session, line).await? else {
                return Ok(Finish::Abort(FillStep::NoRoom));
            };
            let updated = this
                .lines
                .update_one(
                    doc! { "orderid": &line.orderid, "sku": &line.sku, "status": BACKORDERED },
                    doc! { "$set": { "status": ALLOCATED, "batchref": &batchref, "batch_seq": seq } },
                )
                .session(&mut *session)
                .await?;
            if updated.modified_count == 0 {
                // Filled or cancelled meanwhile: the abort gives the stock back.
                return Ok(Finish::Abort(FillStep::NotWaiting));
            }
            Ok(Finish::Commit(FillStep::Taken(batchref)))
        })
        .await
    }

    async fn batch_lines(
        &self,
        reference: &str,
        after: Option<u64>,
        limit_to: usize,
    ) -> Result<Vec<BatchLine>, StoreError> {
        let mut filter = doc! { "batchref": reference, "status": ALLOCATED };
        if let Some(after) = after {
            filter.insert(
                "batch_seq",
                doc! { "$gt": i64::try_from(after).unwrap_or(i64::MAX) },
            );
        }
        let documents: Vec<LineDocument> = find_many(
            &self.lines,
            self.max_time,
            filter,
            doc! { "batchref": 1, "batch_seq": 1 },
            limit_to,
        )
        .await?;
        documents
            .into_iter()
            .map(|document| {
                let id = format!("order line {}/{}", document.orderid, document.sku);
                Ok(BatchLine {
                    qty: quantity(document.qty, "qty", &id)?,
                    position: document
                        .batch_seq
                        .and_then(|seq| u64::try_from(seq).ok())
                        .ok_or_else(|| corrupt("batch_seq", &id))?,
                    orderid: document.orderid,
                })
            })
            .collect()
    }
}
