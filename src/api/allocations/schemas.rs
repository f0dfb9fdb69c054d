//! The bodies of the `allocations` tag.

use chrono::{DateTime, Utc};
use poem_openapi::types::Example;
use poem_openapi::{Object, Union};

use crate::api::fields::{Cursor, Identifier, Quantity};
use crate::domain::allocation::{AcknowledgedLine, LineStatus};

/// An order line to allocate.
#[derive(Debug, Object, serde::Deserialize)]
#[oai(example)]
pub struct OrderLineRequest {
    /// The customer order.
    pub orderid: Identifier,
    /// The stock-keeping unit ordered.
    pub sku: Identifier,
    /// Units ordered.
    pub qty: Quantity,
}

impl Example for OrderLineRequest {
    fn example() -> Self {
        Self {
            orderid: Identifier("order-001".to_owned()),
            sku: Identifier("SMALL-TABLE".to_owned()),
            qty: Quantity(2),
        }
    }
}

/// An order line to deallocate.
#[derive(Debug, Object, serde::Deserialize)]
#[oai(example)]
pub struct OrderLineRef {
    /// The customer order.
    pub orderid: Identifier,
    /// The sku of the line.
    pub sku: Identifier,
}

impl Example for OrderLineRef {
    fn example() -> Self {
        Self {
            orderid: Identifier("order-001".to_owned()),
            sku: Identifier("SMALL-TABLE".to_owned()),
        }
    }
}

/// Where an order line was allocated.
#[derive(Debug, Object)]
#[oai(example)]
pub struct Allocated {
    /// Reference of the batch the line draws from.
    pub batchref: String,
}

impl Example for Allocated {
    fn example() -> Self {
        Self {
            batchref: "batch-001".to_owned(),
        }
    }
}

/// Where an order line stands: `allocated` (it draws from `batchref`) or
/// `backordered` (it waits for stock of its sku).
#[derive(Debug, Clone, Copy, PartialEq, Eq, poem_openapi::Enum)]
#[oai(rename_all = "lowercase")]
pub enum LineStatusBody {
    /// The line draws its stock from `batchref`.
    Allocated,
    /// The line lost its stock (its batch shrank) and waits for stock of its
    /// sku; it is allocated, oldest first, as soon as some appears.
    Backordered,
}

/// An acknowledged order line was repeated while it waits for stock; `status`
/// is always `backordered`.
#[derive(Debug, Object)]
#[oai(example)]
pub struct Waiting {
    // No doc comment on enum fields: a described `$ref` becomes an `allOf`
    // wrapper, which client generators cannot take (see `LineStatusBody`).
    pub status: LineStatusBody,
}

impl Example for Waiting {
    fn example() -> Self {
        Self {
            status: LineStatusBody::Backordered,
        }
    }
}

/// One line of an order, as it stands.
#[derive(Debug, Object)]
#[oai(example)]
pub struct OrderLineBody {
    /// The customer order.
    pub orderid: String,
    /// The sku of the line.
    pub sku: String,
    /// Units ordered.
    pub qty: u32,
    /// The batch the line draws from; null while it is backordered.
    #[oai(nullable)]
    pub batchref: Option<String>,
    pub status: LineStatusBody,
}

impl Example for OrderLineBody {
    fn example() -> Self {
        Self {
            orderid: "order-001".to_owned(),
            sku: "SMALL-TABLE".to_owned(),
            qty: 2,
            batchref: Some("batch-001".to_owned()),
            status: LineStatusBody::Allocated,
        }
    }
}

impl From<AcknowledgedLine> for OrderLineBody {
    fn from(acknowledged: AcknowledgedLine) -> Self {
        let (batchref, status) = match acknowledged.status {
            LineStatus::Allocated { batchref } => (Some(batchref), LineStatusBody::Allocated),
            LineStatus::Backordered => (None, LineStatusBody::Backordered),
        };
        Self {
            orderid: acknowledged.line.orderid,
            sku: acknowledged.line.sku,
            qty: acknowledged.line.qty,
            batchref,
            status,
        }
    }
}

/// What an allocation answers: `Allocated` with 201, `Waiting` with 202. One
/// schema for both, so that a generated client has one success type.
#[derive(Debug, Union)]
#[oai(one_of)]
pub enum AllocationResult {
    Allocated(Allocated),
    Waiting(Waiting),
}

/// One line of an order.
#[derive(Debug, Object)]
#[oai(example)]
pub struct OrderAllocation {
    /// The sku of the line.
    pub sku: String,
    /// Units ordered.
    pub qty: u32,
    /// The batch the line draws from; null while it is backordered.
    #[oai(nullable)]
    pub batchref: Option<String>,
    pub status: LineStatusBody,
}

impl From<AcknowledgedLine> for OrderAllocation {
    fn from(acknowledged: AcknowledgedLine) -> Self {
        let OrderLineBody {
            sku,
            qty,
            batchref,
            status,
            ..
        } = acknowledged.into();
        Self {
            sku,
            qty,
            batchref,
            status,
        }
    }
}

impl Example for OrderAllocation {
    fn example() -> Self {
        Self {
            sku: "SMALL-TABLE".to_owned(),
            qty: 2,
            batchref: Some("batch-001".to_owned()),
            status: LineStatusBody::Allocated,
        }
    }
}

/// An order line waiting for stock.
#[derive(Debug, Object)]
pub struct BackorderBody {
    /// The customer order.
    pub orderid: String,
    /// The stock-keeping unit ordered.
    pub sku: String,
    /// Units ordered.
    pub qty: u32,
    /// When the line was first allocated (and acknowledged with 201).
    pub acknowledged_at: DateTime<Utc>,
}

impl From<AcknowledgedLine> for BackorderBody {
    fn from(acknowledged: AcknowledgedLine) -> Self {
        Self {
            orderid: acknowledged.line.orderid,
            sku: acknowledged.line.sku,
            qty: acknowledged.line.qty,
            acknowledged_at: acknowledged.acknowledged_at,
        }
    }
}

/// A page of backordered lines, oldest first: the order they are served in.
#[derive(Debug, Object)]
#[oai(example)]
pub struct BackorderPage {
    /// At most `limit` lines.
    pub backorders: Vec<BackorderBody>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[oai(skip_serializing_if_is_none)]
    pub next_cursor: Option<String>,
}

impl Example for BackorderPage {
    fn example() -> Self {
        Self {
            backorders: vec![BackorderBody {
                orderid: "order-003".to_owned(),
                sku: "SMALL-TABLE".to_owned(),
                qty: 2,
                acknowledged_at: DateTime::from_timestamp(1_767_225_600, 0).unwrap_or_default(),
            }],
            next_cursor: Some(Cursor::after("backorders", "6952b8c0a1b2c3d4e5f60718")),
        }
    }
}
