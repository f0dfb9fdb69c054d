//! How batches and order lines are stored, and the indexes behind every
//! query of the repository.

use chrono::NaiveDate;
use mongodb::IndexModel;
use mongodb::bson::{self, doc, oid::ObjectId};
use mongodb::options::IndexOptions;
use serde::{Deserialize, Serialize};

use crate::domain::allocation::{AcknowledgedLine, Batch, LineStatus, OrderLine};
use crate::services::StoreError;

pub const BATCHES: &str = "batches";
pub const ORDER_LINES: &str = "order_lines";
/// One document per order id, `{_id: orderid, owner}`: who owns the order.
pub const ORDERS: &str = "orders";

pub(super) const ALLOCATED: &str = "allocated";
pub(super) const BACKORDERED: &str = "backordered";

/// The partial index of batches with intents (`pending`).
pub(super) const PENDING_INTENTS: &str = "pending_intents";

/// How a batch is stored. `available_quantity` is `purchased_quantity` minus
/// what its lines hold and what its intents (`pending`, see `group_commit`)
/// are about to.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct BatchDocument {
    #[serde(rename = "_id")]
    pub(super) reference: String,
    pub(super) sku: String,
    pub(super) purchased_quantity: i64,
    pub(super) available_quantity: i64,
    /// Midnight UTC of the arrival date; null (sorting first) when in the warehouse.
    pub(super) eta: Option<bson::DateTime>,
    /// Position of the latest line allocated to this batch.
    pub(super) allocation_seq: i64,
}

/// How an acknowledged order line is stored; unique per (orderid, sku).
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct LineDocument {
    /// Generated when the line is first acknowledged: backorders are served in
    /// this order.
    #[serde(rename = "_id")]
    pub(super) id: ObjectId,
    pub(super) orderid: String,
    pub(super) sku: String,
    pub(super) qty: i64,
    /// `allocated` or `backordered`.
    pub(super) status: String,
    /// The batch it draws from, while allocated.
    pub(super) batchref: Option<String>,
    /// Its position among the batch's lines, while allocated.
    pub(super) batch_seq: Option<i64>,
    pub(super) acknowledged_at: bson::DateTime,
    /// The account owning the order (as in `orders`); absent on lines stored
    /// before orders had owners.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) owner: Option<String>,
}

pub(super) fn to_bson_date(date: NaiveDate) -> bson::DateTime {
    bson::DateTime::from_chrono(date.and_time(chrono::NaiveTime::MIN).and_utc())
}

pub(super) fn corrupt(what: &str, id: &str) -> StoreError {
    StoreError(format!("{id} is stored with an invalid {what}").into())
}

pub(super) fn quantity(value: i64, what: &str, id: &str) -> Result<u32, StoreError> {
    u32::try_from(value).map_err(|_| corrupt(what, id))
}

impl BatchDocument {
    pub(super) fn new(batch: &Batch) -> Self {
        Self {
            reference: batch.reference.clone(),
            sku: batch.sku.clone(),
            purchased_quantity: i64::from(batch.purchased_quantity()),
            available_quantity: batch.available_quantity(),
            eta: batch.eta.map(to_bson_date),
            allocation_seq: 0,
        }
    }

    pub(super) fn into_batch(self) -> Result<Batch, StoreError> {
        let purchased = quantity(
            self.purchased_quantity,
            "purchased_quantity",
            &self.reference,
        )?;
        let eta = self.eta.map(|eta| eta.to_chrono().date_naive());
        Ok(Batch::restore(
            self.reference,
            self.sku,
            purchased,
            self.available_quantity,
            eta,
        ))
    }
}

impl LineDocument {
    pub(super) fn allocated(
        id: ObjectId,
        line: &OrderLine,
        batchref: &str,
        batch_seq: i64,
        owner: &str,
    ) -> Self {
        Self {
            id,
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

    pub(super) fn into_line(self) -> Result<AcknowledgedLine, StoreError> {
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
                // Batches with intents: lines whose stock was taken and
                // which may not be stored yet (few; see group_commit).
                // (Any key pattern would do; queries hint it by name.)
                IndexModel::builder()
                    .keys(doc! { "sku": 1, "eta": 1 })
                    .options(
                        named(PENDING_INTENTS)
                            .partial_filter_expression(doc! { "pending": { "$exists": true } })
                            .build(),
                    )
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
