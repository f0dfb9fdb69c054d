//! Events: what happened to stock and order lines, in the order it happened.
//!
//! An event is recorded exactly when its change is (decision record 0004):
//! the relay derives it from the committed change itself and gives it the
//! next **position**, one sequence for the whole deployment.

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

/// One recorded event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Orders every event of the deployment: 1, 2, 3, … with no gaps.
    pub position: u64,
    /// Unique, stable across redeliveries (a webhook's `webhook-id`).
    pub id: String,
    /// When the change was committed (the database's clock).
    pub occurred_at: DateTime<Utc>,
    pub what: Happened,
}

/// What happened, with the data of each kind. Serialized as
/// `{"type": "line.allocated", "data": {...}}`, the names of [`EventType`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum Happened {
    /// A line was acknowledged and draws from `batchref`.
    #[serde(rename = "line.allocated")]
    LineAllocated {
        orderid: String,
        sku: String,
        qty: u32,
        batchref: String,
    },
    /// A line lost its batch (the batch shrank) and waits for stock.
    #[serde(rename = "line.backordered")]
    LineBackordered {
        orderid: String,
        sku: String,
        qty: u32,
        from: String,
    },
    /// A line moved to another batch (its batch shrank).
    #[serde(rename = "line.moved")]
    LineMoved {
        orderid: String,
        sku: String,
        qty: u32,
        from: String,
        to: String,
    },
    /// A waiting (backordered) line was allocated to `batchref`.
    #[serde(rename = "line.filled")]
    LineFilled {
        orderid: String,
        sku: String,
        qty: u32,
        batchref: String,
    },
    /// A line was deallocated; `batchref` is the batch it drew from, if any.
    #[serde(rename = "line.deallocated")]
    LineDeallocated {
        orderid: String,
        sku: String,
        qty: u32,
        batchref: Option<String>,
    },
    /// A batch was added.
    #[serde(rename = "batch.created")]
    BatchCreated {
        reference: String,
        sku: String,
        qty: u32,
        eta: Option<NaiveDate>,
    },
    /// A batch's purchased quantity was changed to `qty`.
    #[serde(rename = "batch.quantity_changed")]
    BatchQuantityChanged {
        reference: String,
        sku: String,
        qty: u32,
    },
    /// No batch of the sku has room left.
    #[serde(rename = "sku.out_of_stock")]
    SkuOutOfStock { sku: String },
    /// A batch of the sku has room again.
    #[serde(rename = "sku.back_in_stock")]
    SkuBackInStock { sku: String },
    /// A new line was refused for lack of stock; nothing changed.
    #[serde(rename = "allocation.refused")]
    AllocationRefused {
        orderid: String,
        sku: String,
        qty: u32,
    },
}

/// The kinds of event, by the name the feed and webhooks use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    LineAllocated,
    LineBackordered,
    LineMoved,
    LineFilled,
    LineDeallocated,
    BatchCreated,
    BatchQuantityChanged,
    SkuOutOfStock,
    SkuBackInStock,
    AllocationRefused,
}

impl EventType {
    pub const ALL: [EventType; 10] = [
        Self::LineAllocated,
        Self::LineBackordered,
        Self::LineMoved,
        Self::LineFilled,
        Self::LineDeallocated,
        Self::BatchCreated,
        Self::BatchQuantityChanged,
        Self::SkuOutOfStock,
        Self::SkuBackInStock,
        Self::AllocationRefused,
    ];

    /// The name in the feed and in webhook payloads (`type`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LineAllocated => "line.allocated",
            Self::LineBackordered => "line.backordered",
            Self::LineMoved => "line.moved",
            Self::LineFilled => "line.filled",
            Self::LineDeallocated => "line.deallocated",
            Self::BatchCreated => "batch.created",
            Self::BatchQuantityChanged => "batch.quantity_changed",
            Self::SkuOutOfStock => "sku.out_of_stock",
            Self::SkuBackInStock => "sku.back_in_stock",
            Self::AllocationRefused => "allocation.refused",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == name)
    }
}

impl Happened {
    pub fn event_type(&self) -> EventType {
        match self {
            Self::LineAllocated { .. } => EventType::LineAllocated,
            Self::LineBackordered { .. } => EventType::LineBackordered,
            Self::LineMoved { .. } => EventType::LineMoved,
            Self::LineFilled { .. } => EventType::LineFilled,
            Self::LineDeallocated { .. } => EventType::LineDeallocated,
            Self::BatchCreated { .. } => EventType::BatchCreated,
            Self::BatchQuantityChanged { .. } => EventType::BatchQuantityChanged,
            Self::SkuOutOfStock { .. } => EventType::SkuOutOfStock,
            Self::SkuBackInStock { .. } => EventType::SkuBackInStock,
            Self::AllocationRefused { .. } => EventType::AllocationRefused,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_parses_back_from_its_name_and_names_are_distinct() {
        let mut names: Vec<_> = EventType::ALL.iter().map(|t| t.as_str()).collect();
        for kind in EventType::ALL {
            assert_eq!(EventType::parse(kind.as_str()), Some(kind));
        }
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), EventType::ALL.len());
        assert_eq!(EventType::parse("line.Allocated"), None);
    }

    #[test]
    fn the_serialized_type_is_the_type_name() {
        let what = Happened::SkuOutOfStock { sku: "LAMP".into() };
        let json = serde_json::to_value(&what).unwrap();
        assert_eq!(json["type"], what.event_type().as_str());
        assert_eq!(json["data"]["sku"], "LAMP");
        assert_eq!(serde_json::from_value::<Happened>(json).unwrap(), what);
    }
}
