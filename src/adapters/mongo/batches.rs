//! The `batches` collection: one document per batch, its allocations inside it.
//!
//! Stock is never oversold because an allocation is a single conditional
//! update of one document: it applies only if, at that instant, the batch still
//! has the quantity available and does not hold the line. MongoDB applies it
//! atomically, so the guarantee holds across any number of allot processes.

use chrono::NaiveDate;
use futures_util::TryStreamExt;
use mongodb::bson::{self, Document, doc};
use mongodb::options::IndexOptions;
use mongodb::{Collection, Database, IndexModel};
use serde::{Deserialize, Serialize};

use super::is_duplicate_key;
use crate::domain::allocation::{Batch, OrderLine};
use crate::services::allocation::{Allocation, BatchRepository, RepositoryError};

pub const COLLECTION: &str = "batches";

#[derive(Debug, Serialize, Deserialize)]
struct LineDocument {
    orderid: String,
    qty: i64,
}

/// How a batch is stored. `available_quantity` duplicates what the allocations
/// imply so that the conditional update can test it atomically.
#[derive(Debug, Serialize, Deserialize)]
struct BatchDocument {
    #[serde(rename = "_id")]
    reference: String,
    sku: String,
    purchased_quantity: i64,
    available_quantity: i64,
    /// Midnight UTC of the arrival date; null (sorting first) when in the warehouse.
    eta: Option<bson::DateTime>,
    /// In allocation order, oldest first.
    allocations: Vec<LineDocument>,
    version: i64,
}

fn to_bson_date(date: NaiveDate) -> bson::DateTime {
    bson::DateTime::from_chrono(date.and_time(chrono::NaiveTime::MIN).and_utc())
}

impl From<&Batch> for BatchDocument {
    fn from(batch: &Batch) -> Self {
        Self {
            reference: batch.reference.clone(),
            sku: batch.sku.clone(),
            purchased_quantity: i64::from(batch.purchased_quantity()),
            available_quantity: batch.available_quantity(),
            eta: batch.eta.map(to_bson_date),
            allocations: batch.allocations().iter().map(line_document).collect(),
            version: i64::try_from(batch.version).unwrap_or(i64::MAX),
        }
    }
}

fn line_document(line: &OrderLine) -> LineDocument {
    LineDocument {
        orderid: line.orderid.clone(),
        qty: i64::from(line.qty),
    }
}

fn corrupt(reference: &str, what: &str) -> RepositoryError {
    RepositoryError::Unavailable(
        format!("batch {reference} is stored with an invalid {what}").into(),
    )
}

impl BatchDocument {
    fn into_batch(self) -> Result<Batch, RepositoryError> {
        let quantity =
            |value: i64, what| u32::try_from(value).map_err(|_| corrupt(&self.reference, what));
        let purchased = quantity(self.purchased_quantity, "purchased_quantity")?;
        let allocations = self
            .allocations
            .iter()
            .map(|line| {
                Ok(OrderLine {
                    orderid: line.orderid.clone(),
                    sku: self.sku.clone(),
                    qty: quantity(line.qty, "allocation qty")?,
                })
            })
            .collect::<Result<Vec<_>, RepositoryError>>()?;
        let version =
            u64::try_from(self.version).map_err(|_| corrupt(&self.reference, "version"))?;
        let eta = self.eta.map(|eta| eta.to_chrono().date_naive());
        Ok(Batch::restore(
            self.reference,
            self.sku,
            purchased,
            eta,
            allocations,
            version,
        ))
    }
}

fn unavailable(error: mongodb::error::Error) -> RepositoryError {
    RepositoryError::Unavailable(Box::new(error))
}

/// The indexes behind every query below: `_id` serves reads and writes of one
/// batch; these serve the rest.
pub fn indexes() -> (&'static str, Vec<IndexModel>) {
    let line_allocated_once = IndexOptions::builder()
        .unique(true)
        .name("order_line_allocated_once".to_owned())
        .partial_filter_expression(doc! { "allocations.orderid": { "$exists": true } })
        .build();
    (
        COLLECTION,
        vec![
            // Candidates for an allocation, and pages of one sku's batches.
            IndexModel::builder()
                .keys(doc! { "sku": 1, "_id": 1 })
                .build(),
            // An order's allocations (GET /allocations/{orderid}).
            IndexModel::builder()
                .keys(doc! { "allocations.orderid": 1 })
                .build(),
            // One order line is allocated to at most one batch of its sku, even
            // under concurrent requests for the same line.
            IndexModel::builder()
                .keys(doc! { "sku": 1, "allocations.orderid": 1 })
                .options(line_allocated_once)
                .build(),
        ],
    )
}

#[derive(Clone)]
pub struct MongoBatches {
    collection: Collection<BatchDocument>,
}

impl MongoBatches {
    pub fn new(database: &Database) -> Self {
        Self {
            collection: database.collection(COLLECTION),
        }
    }

    /// Batches matching `filter`, by reference, at most `limit` of them.
    async fn find_all(
        &self,
        filter: Document,
        limit: Option<usize>,
    ) -> Result<Vec<Batch>, RepositoryError> {
        if limit == Some(0) {
            return Ok(Vec::new());
        }
        let documents: Vec<BatchDocument> = self
            .collection
            .find(filter)
            .sort(doc! { "_id": 1 })
            // 0 means no limit to MongoDB.
            .limit(limit.map_or(0, |n| i64::try_from(n).unwrap_or(i64::MAX)))
            .await
            .map_err(unavailable)?
            .try_collect()
            .await
            .map_err(unavailable)?;
        documents
            .into_iter()
            .map(BatchDocument::into_batch)
            .collect()
    }
}

impl BatchRepository for MongoBatches {
    async fn add(&self, batch: &Batch) -> Result<(), RepositoryError> {
        match self.collection.insert_one(BatchDocument::from(batch)).await {
            Ok(_) => Ok(()),
            Err(error) if is_duplicate_key(&error) => {
                Err(RepositoryError::DuplicateReference(batch.reference.clone()))
            }
            Err(error) => Err(unavailable(error)),
        }
    }

    async fn get(&self, reference: &str) -> Result<Option<Batch>, RepositoryError> {
        self.collection
            .find_one(doc! { "_id": reference })
            .await
            .map_err(unavailable)?
            .map(BatchDocument::into_batch)
            .transpose()
    }

    async fn for_sku(&self, sku: &str) -> Result<Vec<Batch>, RepositoryError> {
        self.find_all(doc! { "sku": sku }, None).await
    }

    async fn list(
        &self,
        sku: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Batch>, RepositoryError> {
        let mut filter = Document::new();
        if let Some(sku) = sku {
            filter.insert("sku", sku);
        }
        if let Some(after) = after {
            filter.insert("_id", doc! { "$gt": after });
        }
        self.find_all(filter, Some(limit)).await
    }

    async fn allocate_if_available(
        &self,
        reference: &str,
        line: &OrderLine,
    ) -> Result<bool, RepositoryError> {
        let qty = i64::from(line.qty);
        let result = self
            .collection
            .update_one(
                doc! {
                    "_id": reference,
                    "sku": &line.sku,
                    "available_quantity": { "$gte": qty },
                    "allocations.orderid": { "$ne": &line.orderid },
                },
                doc! {
                    "$push": { "allocations": { "orderid": &line.orderid, "qty": qty } },
                    "$inc": { "available_quantity": -qty, "version": 1 },
                },
            )
            .await;
        match result {
            Ok(result) => Ok(result.modified_count == 1),
            // The line was allocated to another batch of the sku meanwhile.
            Err(error) if is_duplicate_key(&error) => Ok(false),
            Err(error) => Err(unavailable(error)),
        }
    }

    async fn deallocate(
        &self,
        reference: &str,
        orderid: &str,
    ) -> Result<Option<OrderLine>, RepositoryError> {
        let Some(batch) = self.get(reference).await? else {
            return Ok(None);
        };
        let Some(line) = batch.allocation_for(orderid).cloned() else {
            return Ok(None);
        };
        let qty = i64::from(line.qty);
        // Matches only while the line is still there with that quantity, so a
        // concurrent deallocation cannot return the stock twice.
        let result = self
            .collection
            .update_one(
                doc! { "_id": reference, "allocations": { "$elemMatch": { "orderid": orderid, "qty": qty } } },
                doc! {
                    "$pull": { "allocations": { "orderid": orderid } },
                    "$inc": { "available_quantity": qty, "version": 1 },
                },
            )
            .await
            .map_err(unavailable)?;
        Ok((result.modified_count == 1).then_some(line))
    }

    async fn find_allocation(
        &self,
        orderid: &str,
        sku: &str,
    ) -> Result<Option<Batch>, RepositoryError> {
        self.collection
            .find_one(doc! { "sku": sku, "allocations.orderid": orderid })
            .await
            .map_err(unavailable)?
            .map(BatchDocument::into_batch)
            .transpose()
    }

    async fn allocations_for_order(
        &self,
        orderid: &str,
    ) -> Result<Vec<Allocation>, RepositoryError> {
        let batches = self
            .find_all(doc! { "allocations.orderid": orderid }, None)
            .await?;
        Ok(batches
            .iter()
            .filter_map(|batch| Allocation::in_batch(batch, orderid))
            .collect())
    }

    async fn save_if_unchanged(&self, batch: &Batch) -> Result<bool, RepositoryError> {
        let stored = BatchDocument::from(batch);
        let allocations = bson::to_bson(&stored.allocations)
            .map_err(|e| RepositoryError::Unavailable(Box::new(e)))?;
        let result = self
            .collection
            .update_one(
                doc! { "_id": &batch.reference, "version": stored.version },
                doc! {
                    "$set": {
                        "purchased_quantity": stored.purchased_quantity,
                        "available_quantity": stored.available_quantity,
                        "allocations": allocations,
                    },
                    "$inc": { "version": 1 },
                },
            )
            .await
            .map_err(unavailable)?;
        Ok(result.modified_count == 1)
    }
}
