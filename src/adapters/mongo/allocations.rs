//! The `batches` and `order_lines` collections.
//!
//! A batch document holds only what the allocation decision needs (its
//! quantities, eta and a version), and every acknowledged order line is a
//! document of its own, so no document grows with the number of orders.
//! Every step that touches both a batch and a line is one multi-document
//! transaction (this needs a replica set): taking stock and recording the line
//! happen together or not at all, whatever crashes or disconnects. A
//! transaction that meets a concurrent one (WriteConflict, labelled
//! `TransientTransactionError`) is retried whole until
//! [`TRANSACTION_RETRY_FOR`] has passed.

use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

use chrono::NaiveDate;
use futures_util::TryStreamExt;
use mongodb::bson::{self, Bson, Document, doc, oid::ObjectId};
use mongodb::error::Error as MongoError;
use mongodb::options::{IndexOptions, ReturnDocument};
use mongodb::{Client, ClientSession, Collection, Database, IndexModel};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::is_duplicate_key;
use crate::domain::allocation::{
    AcknowledgedLine, Batch, LineStatus, OrderLine, Requester, lines_to_give_up,
};
use crate::services::allocation::{
    Allocated, AllocationRepository, Backorder, BatchLine, Filled, RepositoryError,
};

pub const BATCHES: &str = "batches";
pub const ORDER_LINES: &str = "order_lines";
/// One document per order id, `{_id: orderid, owner}`: who owns the order.
pub const ORDERS: &str = "orders";

pub use super::TRANSACTION_RETRY_FOR;

const ALLOCATED: &str = "allocated";
const BACKORDERED: &str = "backordered";

/// How a batch is stored. `available_quantity` is `purchased_quantity` minus
/// what its lines hold, kept in step by the transactions below.
#[derive(Debug, Serialize, Deserialize)]
struct BatchDocument {
    #[serde(rename = "_id")]
    reference: String,
    sku: String,
    purchased_quantity: i64,
    available_quantity: i64,
    /// Midnight UTC of the arrival date; null (sorting first) when in the warehouse.
    eta: Option<bson::DateTime>,
    version: i64,
    /// Position of the latest line allocated to this batch.
    allocation_seq: i64,
}

/// How an acknowledged order line is stored; unique per (orderid, sku).
#[derive(Debug, Serialize, Deserialize)]
struct LineDocument {
    /// Generated when the line is first acknowledged: backorders are served in
    /// this order.
    #[serde(rename = "_id")]
    id: ObjectId,
    orderid: String,
    sku: String,
    qty: i64,
    /// `allocated` or `backordered`.
    status: String,
    /// The batch it draws from, while allocated.
    batchref: Option<String>,
    /// Its position among the batch's lines, while allocated.
    batch_seq: Option<i64>,
    acknowledged_at: bson::DateTime,
    /// The account owning the order (as in `orders`); absent on lines stored
    /// before orders had owners.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    owner: Option<String>,
}

fn to_bson_date(date: NaiveDate) -> bson::DateTime {
    bson::DateTime::from_chrono(date.and_time(chrono::NaiveTime::MIN).and_utc())
}

fn corrupt(what: &str, id: &str) -> RepositoryError {
    RepositoryError::Unavailable(format!("{id} is stored with an invalid {what}").into())
}

fn quantity(value: i64, what: &str, id: &str) -> Result<u32, RepositoryError> {
    u32::try_from(value).map_err(|_| corrupt(what, id))
}

impl BatchDocument {
    fn new(batch: &Batch) -> Self {
        Self {
            reference: batch.reference.clone(),
            sku: batch.sku.clone(),
            purchased_quantity: i64::from(batch.purchased_quantity()),
            available_quantity: batch.available_quantity(),
            eta: batch.eta.map(to_bson_date),
            version: 0,
            allocation_seq: 0,
        }
    }

    fn into_batch(self) -> Result<Batch, RepositoryError> {
        let purchased = quantity(
            self.purchased_quantity,
            "purchased_quantity",
            &self.reference,
        )?;
        let version =
            u64::try_from(self.version).map_err(|_| corrupt("version", &self.reference))?;
        let eta = self.eta.map(|eta| eta.to_chrono().date_naive());
        Ok(Batch::restore(
            self.reference,
            self.sku,
            purchased,
            self.available_quantity,
            eta,
            version,
        ))
    }
}

impl LineDocument {
    fn allocated(line: &OrderLine, batchref: &str, batch_seq: i64, owner: &str) -> Self {
        Self {
            id: ObjectId::new(),
            orderid: line.orderid.clone(),
            sku: line.sku.clone(),
            qty: i64::from(line.qty),
            status: ALLOCATED.to_owned(),
            batchref: Some(batchref.to_owned()),
            batch_seq: Some(batch_seq),
            acknowledged_at: bson::DateTime::now(),
            owner: Some(owner.to_owned()),
        }
    }

    fn into_line(self) -> Result<AcknowledgedLine, RepositoryError> {
        let id = || format!("order line {}/{}", self.orderid, self.sku);
        let qty = quantity(self.qty, "qty", &id())?;
        let status = match (self.status.as_str(), self.batchref) {
            (ALLOCATED, Some(batchref)) => LineStatus::Allocated { batchref },
            (BACKORDERED, None) => LineStatus::Backordered,
            _ => return Err(corrupt("status", &id())),
        };
        Ok(AcknowledgedLine {
            line: OrderLine {
                orderid: self.orderid,
                sku: self.sku,
                qty,
            },
            status,
            acknowledged_at: self.acknowledged_at.to_chrono(),
            owner: self.owner,
        })
    }
}

fn unavailable(error: MongoError) -> RepositoryError {
    RepositoryError::Unavailable(Box::new(error))
}

/// The indexes behind every query below, per collection.
pub fn indexes() -> [(&'static str, Vec<IndexModel>); 2] {
    let named = |name: &str| IndexOptions::builder().name(name.to_owned());
    let backordered = doc! { "status": BACKORDERED };
    [
        (
            BATCHES,
            vec![
                // Candidates for an allocation, in the domain's order of preference.
                IndexModel::builder()
                    .keys(doc! { "sku": 1, "eta": 1, "_id": 1 })
                    .build(),
                // Pages of one sku's batches.
                IndexModel::builder()
                    .keys(doc! { "sku": 1, "_id": 1 })
                    .build(),
                // Batches left over-allocated by an unfinished shrink (few, usually none).
                IndexModel::builder()
                    .keys(doc! { "available_quantity": 1 })
                    .options(
                        named("over_allocated")
                            .partial_filter_expression(doc! { "available_quantity": { "$lt": 0 } })
                            .build(),
                    )
                    .build(),
            ],
        ),
        (
            ORDER_LINES,
            vec![
                // One line per (order, sku): the idempotent repeat, and an
                // order's lines (GET /allocations/{orderid}).
                IndexModel::builder()
                    .keys(doc! { "orderid": 1, "sku": 1 })
                    .options(named("order_line").unique(true).build())
                    .build(),
                // A batch's lines in allocation order (paging; the most recent
                // are given up first).
                IndexModel::builder()
                    .keys(doc! { "batchref": 1, "batch_seq": 1 })
                    .options(
                        named("batch_lines")
                            .partial_filter_expression(doc! { "status": ALLOCATED })
                            .build(),
                    )
                    .build(),
                // The backorder queue, oldest first, of one sku or of all.
                IndexModel::builder()
                    .keys(doc! { "status": 1, "sku": 1, "_id": 1 })
                    .options(
                        named("backorders_by_sku")
                            .partial_filter_expression(backordered.clone())
                            .build(),
                    )
                    .build(),
                IndexModel::builder()
                    .keys(doc! { "status": 1, "_id": 1 })
                    .options(
                        named("backorders")
                            .partial_filter_expression(backordered)
                            .build(),
                    )
                    .build(),
            ],
        ),
    ]
}

/// How many locks writes to one sku are spread over within a process.
const SKU_LOCKS: usize = 64;

#[derive(Clone)]
pub struct MongoAllocations {
    client: Client,
    batches: Collection<BatchDocument>,
    lines: Collection<LineDocument>,
    orders: Collection<Document>,
    /// Writes to one sku from this process take turns: concurrent
    /// transactions on the same batch document would otherwise mostly fail
    /// with WriteConflict and retry. Other processes still conflict, and retry.
    sku_locks: std::sync::Arc<[Mutex<()>; SKU_LOCKS]>,
    hasher: RandomState,
    /// Sent with queries as `maxTimeMS`, and as the commit's limit.
    max_time: Duration,
}

/// Runs `$attempt` as one transaction (see [`super::in_transaction`]),
/// answering [`RepositoryError::Unavailable`] when it cannot.
macro_rules! transaction {
    ($repo:expr, |$session:ident| $attempt:expr) => {
        in_transaction!(
            &$repo.client,
            $repo.max_time,
            |$session| $attempt,
            on_retry = {
                crate::metrics::metrics().allocation(crate::metrics::AllocationOutcome::Contention)
            }
        )
        .map_err(unavailable)
    };
}

impl MongoAllocations {
    pub fn new(database: &Database) -> Self {
        Self {
            client: database.client().clone(),
            batches: database.collection(BATCHES),
            lines: database.collection(ORDER_LINES),
            orders: database.collection(ORDERS),
            sku_locks: std::sync::Arc::new(std::array::from_fn(|_| Mutex::new(()))),
            hasher: RandomState::new(),
            max_time: super::DEFAULT_MAX_TIME,
        }
    }

    /// Limits each query (and each commit) to `limit` on the server.
    pub fn with_operation_timeout(mut self, limit: Duration) -> Self {
        self.max_time = limit;
        self
    }

    fn sku_lock(&self, sku: &str) -> &Mutex<()> {
        &self.sku_locks[self.hasher.hash_one(sku) as usize % SKU_LOCKS]
    }

    /// The order's owner, made the requester if the order has none, in the
    /// transaction: of two accounts racing to allocate an order's first lines
    /// (even on different skus), one upsert creates the document and the
    /// other conflicts, retries, and finds it. None if the requester may not
    /// add to the order.
    async fn claim_order(
        &self,
        session: &mut ClientSession,
        line: &OrderLine,
        requester: &Requester,
    ) -> Result<Option<String>, MongoError> {
        let order = self
            .orders
            .find_one_and_update(
                doc! { "_id": &line.orderid },
                doc! { "$setOnInsert": { "owner": &requester.account } },
            )
            .upsert(true)
            .return_document(ReturnDocument::After)
            .session(session)
            .await?;
        let owner = order
            .as_ref()
            .and_then(|order| order.get_str("owner").ok())
            .unwrap_or(&requester.account);
        Ok(requester.may_manage(Some(owner)).then(|| owner.to_owned()))
    }

    /// Takes `line.qty` from the preferred batch of its sku with room (warehouse
    /// stock first, then the earliest eta, then the reference: the domain's
    /// order, which MongoDB's sort gives since null sorts before dates), in one
    /// command. Returns the batch and the line's position in it.
    async fn take_stock(
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
                doc! { "$inc": { "available_quantity": -qty, "version": 1, "allocation_seq": 1 } },
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
) -> Result<Vec<T>, RepositoryError>
where
    T: serde::de::DeserializeOwned + Send + Sync,
{
    collection
        .find(filter)
        .max_time(max_time)
        .sort(sort)
        .limit(limit(limit_to))
        .await
        .map_err(unavailable)?
        .try_collect()
        .await
        .map_err(unavailable)
}

/// A page of a listing in `_id` order, optionally of one sku, strictly after `after`.
async fn find_page<T>(
    collection: &Collection<T>,
    max_time: Duration,
    mut filter: Document,
    sku: Option<&str>,
    after: Option<Bson>,
    limit_to: usize,
) -> Result<Vec<T>, RepositoryError>
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
    async fn add_batch(&self, batch: &Batch) -> Result<(), RepositoryError> {
        match self.batches.insert_one(BatchDocument::new(batch)).await {
            Ok(_) => Ok(()),
            Err(error) if is_duplicate_key(&error) => {
                Err(RepositoryError::DuplicateReference(batch.reference.clone()))
            }
            Err(error) => Err(unavailable(error)),
        }
    }

    async fn batch(&self, reference: &str) -> Result<Option<Batch>, RepositoryError> {
        self.batches
            .find_one(doc! { "_id": reference })
            .max_time(self.max_time)
            .await
            .map_err(unavailable)?
            .map(BatchDocument::into_batch)
            .transpose()
    }

    async fn batches(
        &self,
        sku: Option<&str>,
        after: Option<&str>,
        limit_to: usize,
    ) -> Result<Vec<Batch>, RepositoryError> {
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

    async fn sku_exists(&self, sku: &str) -> Result<bool, RepositoryError> {
        let found = self
            .batches
            .clone_with_type::<Document>()
            .find_one(doc! { "sku": sku })
            .max_time(self.max_time)
            .projection(doc! { "_id": 1 })
            .await
            .map_err(unavailable)?;
        Ok(found.is_some())
    }

    async fn allocate(
        &self,
        line: &OrderLine,
        requester: &Requester,
    ) -> Result<Allocated, RepositoryError> {
        let taken = {
            let _turn = self.sku_lock(&line.sku).lock().await;
            transaction!(self, |session| async {
                let Some(owner) = self.claim_order(&mut session, line, requester).await? else {
                    return Ok(Finish::Abort(Some(Err(Allocated::NotOwner))));
                };
                let Some((batchref, seq)) = self.take_stock(&mut session, line).await? else {
                    return Ok(Finish::Abort(None));
                };
                let document = LineDocument::allocated(line, &batchref, seq, &owner);
                match self.lines.insert_one(document).session(&mut session).await {
                    Ok(_) => Ok(Finish::Commit(Some(Ok(batchref)))),
                    // Acknowledged before: the stock taken above goes back with the abort.
                    Err(error) if is_duplicate_key(&error) => Ok(Finish::Abort(None)),
                    Err(error) => Err(error),
                }
            }
            .await)?
        };
        match taken {
            Some(Ok(batchref)) => Ok(Allocated::Taken(batchref)),
            Some(Err(refused)) => Ok(refused),
            // No room, or a repeat: a line acknowledged before is answered as it stands.
            _ => Ok(match self.line(&line.orderid, &line.sku).await? {
                Some(existing) => Allocated::AlreadyAcknowledged(existing),
                None => Allocated::NoRoom,
            }),
        }
    }

    async fn line(
        &self,
        orderid: &str,
        sku: &str,
    ) -> Result<Option<AcknowledgedLine>, RepositoryError> {
        self.lines
            .find_one(doc! { "orderid": orderid, "sku": sku })
            .max_time(self.max_time)
            .await
            .map_err(unavailable)?
            .map(LineDocument::into_line)
            .transpose()
    }

    async fn lines_of_order(
        &self,
        orderid: &str,
        limit_to: usize,
    ) -> Result<Vec<AcknowledgedLine>, RepositoryError> {
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
    ) -> Result<Vec<AcknowledgedLine>, RepositoryError> {
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
    ) -> Result<Option<AcknowledgedLine>, RepositoryError> {
        let mut filter = doc! { "orderid": orderid, "sku": sku };
        if !requester.admin {
            filter.insert("owner", &requester.account);
        }
        let _turn = self.sku_lock(sku).lock().await;
        let removed = transaction!(self, |session| async {
            let Some(removed) = self
                .lines
                .find_one_and_delete(filter.clone())
                .max_time(self.max_time)
                .session(&mut session)
                .await?
            else {
                return Ok(Finish::Abort(None));
            };
            if let Some(batchref) = &removed.batchref {
                self.batches
                    .update_one(
                        doc! { "_id": batchref },
                        doc! { "$inc": { "available_quantity": removed.qty, "version": 1 } },
                    )
                    .session(&mut session)
                    .await?;
            }
            Ok(Finish::Commit(Some(removed)))
        }
        .await)?;
        removed.map(LineDocument::into_line).transpose()
    }

    async fn change_purchased_quantity(
        &self,
        reference: &str,
        qty: u32,
    ) -> Result<Option<Batch>, RepositoryError> {
        let Some(sku) = self.batch(reference).await?.map(|b| b.sku) else {
            return Ok(None);
        };
        let _turn = self.sku_lock(&sku).lock().await;
        let changed = transaction!(self, |session| async {
            let Some(stored) = self
                .batches
                .find_one(doc! { "_id": reference })
                .max_time(self.max_time)
                .session(&mut session)
                .await?
            else {
                return Ok(Finish::Abort(None));
            };
            let delta = i64::from(qty) - stored.purchased_quantity;
            let changed = self
                .batches
                .find_one_and_update(
                    doc! { "_id": reference },
                    doc! {
                        "$set": { "purchased_quantity": i64::from(qty) },
                        "$inc": { "available_quantity": delta, "version": 1 },
                    },
                )
                .max_time(self.max_time)
                .return_document(ReturnDocument::After)
                .session(&mut session)
                .await?;
            Ok(Finish::Commit(changed))
        }
        .await)?;
        changed.map(BatchDocument::into_batch).transpose()
    }

    async fn give_up_recent_lines(
        &self,
        reference: &str,
        max_lines: usize,
    ) -> Result<Vec<OrderLine>, RepositoryError> {
        let Some(sku) = self.batch(reference).await?.map(|b| b.sku) else {
            return Ok(Vec::new());
        };
        let _turn = self.sku_lock(&sku).lock().await;
        transaction!(self, |session| async {
            let over_by = match self
                .batches
                .find_one(doc! { "_id": reference })
                .max_time(self.max_time)
                .session(&mut session)
                .await?
            {
                Some(batch) => batch.available_quantity.min(0).unsigned_abs(),
                None => 0,
            };
            if over_by == 0 {
                return Ok(Finish::Abort(Vec::new()));
            }
            let recent: Vec<LineDocument> = self
                .lines
                .find(doc! { "batchref": reference, "status": ALLOCATED })
                .max_time(self.max_time)
                .sort(doc! { "batchref": 1, "batch_seq": -1 })
                .limit(limit(max_lines))
                .session(&mut session)
                .await?
                .stream(&mut session)
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
            self.lines
                .update_many(
                    doc! { "_id": { "$in": ids } },
                    doc! { "$set": { "status": BACKORDERED, "batchref": null, "batch_seq": null } },
                )
                .session(&mut session)
                .await?;
            let freed: i64 = given_up.iter().map(|line| line.qty).sum();
            self.batches
                .update_one(
                    doc! { "_id": reference },
                    doc! { "$inc": { "available_quantity": freed, "version": 1 } },
                )
                .session(&mut session)
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
        }
        .await)
    }

    async fn over_allocated_batches(
        &self,
        limit_to: usize,
    ) -> Result<Vec<String>, RepositoryError> {
        let filter = doc! { "available_quantity": { "$lt": 0 } };
        let batches = find_many(&self.batches, self.max_time, filter, doc! {}, limit_to).await?;
        Ok(batches.into_iter().map(|batch| batch.reference).collect())
    }

    async fn backorders(
        &self,
        sku: Option<&str>,
        after: Option<&str>,
        limit_to: usize,
    ) -> Result<Vec<Backorder>, RepositoryError> {
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

    async fn fill_backorder(&self, line: &OrderLine) -> Result<Filled, RepositoryError> {
        let _turn = self.sku_lock(&line.sku).lock().await;
        transaction!(self, |session| {
            async {
            let Some((batchref, seq)) = self.take_stock(&mut session, line).await? else {
                return Ok(Finish::Abort(Filled::NoRoom));
            };
            let updated = self
                .lines
                .update_one(
                    doc! { "orderid": &line.orderid, "sku": &line.sku, "status": BACKORDERED },
                    doc! { "$set": { "status": ALLOCATED, "batchref": &batchref, "batch_seq": seq } },
                )
                .session(&mut session)
                .await?;
            if updated.modified_count == 0 {
                // Filled or cancelled meanwhile: the abort gives the stock back.
                return Ok(Finish::Abort(Filled::NotWaiting));
            }
            Ok(Finish::Commit(Filled::Taken(batchref)))
        }
        .await
        })
    }

    async fn batch_lines(
        &self,
        reference: &str,
        after: Option<u64>,
        limit_to: usize,
    ) -> Result<Vec<BatchLine>, RepositoryError> {
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
