//! The bodies of the `batches` tag.

use poem_openapi::Object;
use poem_openapi::types::Example;

use crate::api::fields::{Cursor, Date, Identifier, Quantity};
use crate::domain::allocation::{Batch, OrderLine};
use crate::services::allocation::QuantityChange;

/// A batch to add to the stock.
#[derive(Debug, Object, serde::Deserialize)]
#[oai(example)]
pub struct NewBatch {
    /// Unique reference of the batch.
    pub reference: Identifier,
    /// The stock-keeping unit it holds.
    pub sku: Identifier,
    /// How many units were bought.
    pub purchased_quantity: Quantity,
    /// Expected arrival (`YYYY-MM-DD`, years 0001 to 9999), or null
    /// for stock already in the warehouse.
    /// Allocation prefers warehouse stock, then the earliest arrival.
    #[oai(nullable)]
    pub eta: Option<Date>,
}

impl Example for NewBatch {
    fn example() -> Self {
        Self {
            reference: Identifier("batch-001".to_owned()),
            sku: Identifier("SMALL-TABLE".to_owned()),
            purchased_quantity: Quantity(20),
            eta: None,
        }
    }
}

/// A new purchased quantity for a batch.
#[derive(Debug, Object, serde::Deserialize)]
#[oai(example)]
pub struct QuantityUpdate {
    /// The new number of units bought (0 for a lost shipment).
    pub purchased_quantity: Quantity<0>,
}

impl Example for QuantityUpdate {
    fn example() -> Self {
        Self {
            purchased_quantity: Quantity(15),
        }
    }
}

/// A batch and its quantities. Its lines are paged by
/// `GET /batches/{reference}/allocations`.
#[derive(Debug, Object)]
#[oai(example)]
pub struct BatchBody {
    /// Unique reference of the batch.
    pub reference: String,
    /// The stock-keeping unit it holds.
    pub sku: String,
    /// How many units were bought.
    pub purchased_quantity: u32,
    /// Units held by the order lines drawing from it.
    pub allocated_quantity: i64,
    /// Units not yet allocated. Negative only for a moment, while a batch that
    /// shrank below its lines gives the most recent of them up.
    pub available_quantity: i64,
    /// Expected arrival, or null when in the warehouse.
    #[oai(nullable)]
    pub eta: Option<Date>,
}

impl Example for BatchBody {
    fn example() -> Self {
        Self {
            reference: "batch-001".to_owned(),
            sku: "SMALL-TABLE".to_owned(),
            purchased_quantity: 20,
            allocated_quantity: 2,
            available_quantity: 18,
            eta: None,
        }
    }
}

impl From<&Batch> for BatchBody {
    fn from(batch: &Batch) -> Self {
        Self {
            reference: batch.reference.clone(),
            sku: batch.sku.clone(),
            purchased_quantity: batch.purchased_quantity(),
            allocated_quantity: batch.allocated_quantity(),
            available_quantity: batch.available_quantity(),
            eta: batch.eta.map(Date),
        }
    }
}

/// A page of batches, ordered by reference.
#[derive(Debug, Object)]
#[oai(example)]
pub struct BatchPage {
    /// At most `limit` batches.
    pub batches: Vec<BatchBody>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[oai(skip_serializing_if_is_none)]
    pub next_cursor: Option<String>,
}

impl Example for BatchPage {
    fn example() -> Self {
        Self {
            batches: vec![BatchBody::example()],
            next_cursor: Some(Cursor::after("batches", "batch-001")),
        }
    }
}

/// One order line drawing from a batch.
#[derive(Debug, Object)]
pub struct BatchAllocation {
    /// The customer order.
    pub orderid: String,
    /// Units allocated.
    pub qty: u32,
}

/// A page of a batch's order lines, oldest first.
#[derive(Debug, Object)]
#[oai(example)]
pub struct BatchAllocationPage {
    /// At most `limit` lines.
    pub allocations: Vec<BatchAllocation>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[oai(skip_serializing_if_is_none)]
    pub next_cursor: Option<String>,
}

impl Example for BatchAllocationPage {
    fn example() -> Self {
        Self {
            allocations: vec![BatchAllocation {
                orderid: "order-001".to_owned(),
                qty: 2,
            }],
            next_cursor: Some(Cursor::after("batches/batch-001/allocations", "1")),
        }
    }
}

/// An order line waiting for stock.
#[derive(Debug, Object)]
pub struct BackorderedLine {
    /// The customer order.
    pub orderid: String,
    /// The stock-keeping unit ordered.
    pub sku: String,
    /// Units ordered.
    pub qty: u32,
}

impl From<&OrderLine> for BackorderedLine {
    fn from(line: &OrderLine) -> Self {
        Self {
            orderid: line.orderid.clone(),
            sku: line.sku.clone(),
            qty: line.qty,
        }
    }
}

/// An order line allocated to a batch by a quantity change.
#[derive(Debug, Object)]
pub struct ReallocatedLine {
    /// The customer order.
    pub orderid: String,
    /// The stock-keeping unit ordered.
    pub sku: String,
    /// Units ordered.
    pub qty: u32,
    /// The batch it now draws from.
    pub batchref: String,
}

/// The outcome of a quantity change: `batch` is the batch after the change.
#[derive(Debug, Object)]
#[oai(example)]
pub struct QuantityChangeBody {
    // No doc comment: a described `$ref` becomes an `allOf` wrapper, which client
    // generators turn into a copy of `BatchBody` instead of `BatchBody` itself.
    pub batch: BatchBody,
    /// Lines this change allocated: lines the smaller quantity no longer
    /// covered that found room (in another batch, or back in this one), and
    /// backordered lines that a larger quantity served.
    pub reallocated: Vec<ReallocatedLine>,
    /// Lines the smaller quantity no longer covered that found no room: they
    /// wait for stock of their sku (see `GET /backorders`).
    pub backordered: Vec<BackorderedLine>,
}

impl Example for QuantityChangeBody {
    fn example() -> Self {
        Self {
            batch: BatchBody {
                purchased_quantity: 2,
                allocated_quantity: 2,
                available_quantity: 0,
                ..BatchBody::example()
            },
            reallocated: vec![ReallocatedLine {
                orderid: "order-002".to_owned(),
                sku: "SMALL-TABLE".to_owned(),
                qty: 2,
                batchref: "batch-002".to_owned(),
            }],
            backordered: vec![BackorderedLine {
                orderid: "order-003".to_owned(),
                sku: "SMALL-TABLE".to_owned(),
                qty: 2,
            }],
        }
    }
}

impl From<QuantityChange> for QuantityChangeBody {
    fn from(change: QuantityChange) -> Self {
        Self {
            batch: BatchBody::from(&change.batch),
            reallocated: change
                .reallocated
                .into_iter()
                .map(|(line, batchref)| ReallocatedLine {
                    orderid: line.orderid,
                    sku: line.sku,
                    qty: line.qty,
                    batchref,
                })
                .collect(),
            backordered: change
                .backordered
                .iter()
                .map(BackorderedLine::from)
                .collect(),
        }
    }
}
