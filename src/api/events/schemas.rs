//! The bodies of the `events` tag.

use chrono::{DateTime, NaiveDate, Utc};
use poem_openapi::{Enum, Object};

use crate::domain::events::{Event, EventType};

/// The type of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum, serde::Deserialize)]
pub enum EventTypeName {
    /// A line was acknowledged and draws from `batchref`.
    #[oai(rename = "line.allocated")]
    #[serde(rename = "line.allocated")]
    LineAllocated,
    /// A line lost its batch (`from`), which shrank, and waits for stock.
    #[oai(rename = "line.backordered")]
    #[serde(rename = "line.backordered")]
    LineBackordered,
    /// A line moved from batch `from` to batch `to`.
    #[oai(rename = "line.moved")]
    #[serde(rename = "line.moved")]
    LineMoved,
    /// A waiting line was allocated to `batchref`.
    #[oai(rename = "line.filled")]
    #[serde(rename = "line.filled")]
    LineFilled,
    /// A line was deallocated; `batchref` is the batch it drew from, if any.
    #[oai(rename = "line.deallocated")]
    #[serde(rename = "line.deallocated")]
    LineDeallocated,
    /// A batch was added.
    #[oai(rename = "batch.created")]
    #[serde(rename = "batch.created")]
    BatchCreated,
    /// A batch's purchased quantity was changed to `qty`.
    #[oai(rename = "batch.quantity_changed")]
    #[serde(rename = "batch.quantity_changed")]
    BatchQuantityChanged,
    /// No batch of the sku has room left.
    #[oai(rename = "sku.out_of_stock")]
    #[serde(rename = "sku.out_of_stock")]
    SkuOutOfStock,
    /// A batch of the sku has room again.
    #[oai(rename = "sku.back_in_stock")]
    #[serde(rename = "sku.back_in_stock")]
    SkuBackInStock,
    /// A new line was refused for lack of stock (`400 Out of stock`); nothing changed.
    #[oai(rename = "allocation.refused")]
    #[serde(rename = "allocation.refused")]
    AllocationRefused,
}

impl From<EventTypeName> for EventType {
    fn from(name: EventTypeName) -> Self {
        match name {
            EventTypeName::LineAllocated => Self::LineAllocated,
            EventTypeName::LineBackordered => Self::LineBackordered,
            EventTypeName::LineMoved => Self::LineMoved,
            EventTypeName::LineFilled => Self::LineFilled,
            EventTypeName::LineDeallocated => Self::LineDeallocated,
            EventTypeName::BatchCreated => Self::BatchCreated,
            EventTypeName::BatchQuantityChanged => Self::BatchQuantityChanged,
            EventTypeName::SkuOutOfStock => Self::SkuOutOfStock,
            EventTypeName::SkuBackInStock => Self::SkuBackInStock,
            EventTypeName::AllocationRefused => Self::AllocationRefused,
        }
    }
}

impl From<EventType> for EventTypeName {
    fn from(kind: EventType) -> Self {
        match kind {
            EventType::LineAllocated => Self::LineAllocated,
            EventType::LineBackordered => Self::LineBackordered,
            EventType::LineMoved => Self::LineMoved,
            EventType::LineFilled => Self::LineFilled,
            EventType::LineDeallocated => Self::LineDeallocated,
            EventType::BatchCreated => Self::BatchCreated,
            EventType::BatchQuantityChanged => Self::BatchQuantityChanged,
            EventType::SkuOutOfStock => Self::SkuOutOfStock,
            EventType::SkuBackInStock => Self::SkuBackInStock,
            EventType::AllocationRefused => Self::AllocationRefused,
        }
    }
}

/// One event.
#[derive(Debug, Object)]
pub struct EventBody {
    /// Orders every event of the deployment: 1, 2, 3, … with no gaps. Pass
    /// the last one handled as `after`.
    pub position: u64,
    /// Unique; a webhook delivery of this event carries it as `webhook-id`.
    pub id: String,
    #[oai(rename = "type")]
    pub kind: EventTypeName,
    /// When the change was committed.
    pub occurred_at: DateTime<Utc>,
    pub data: EventData,
}

/// What the event is about; which fields are present depends on `type`.
#[derive(Debug, Default, Object, serde::Deserialize)]
#[oai(skip_serializing_if_is_none)]
pub struct EventData {
    /// `line.*` and `allocation.refused`.
    pub orderid: Option<String>,
    /// Every type.
    pub sku: Option<String>,
    /// The line's quantity (`line.*`, `allocation.refused`), or the batch's
    /// purchased quantity (`batch.*`).
    pub qty: Option<u32>,
    /// The batch the line draws (or drew) from: `line.allocated`,
    /// `line.filled`, `line.deallocated`.
    pub batchref: Option<String>,
    /// The batch the line left: `line.backordered`, `line.moved`.
    pub from: Option<String>,
    /// The batch the line went to: `line.moved`.
    pub to: Option<String>,
    /// The batch: `batch.*`.
    pub reference: Option<String>,
    /// The batch's expected arrival, none when in the warehouse: `batch.created`.
    pub eta: Option<NaiveDate>,
}

/// A page of the feed.
#[derive(Debug, Object)]
pub struct EventPage {
    pub events: Vec<EventBody>,
    /// The `after` of the next request: the last event's position, or the
    /// request's own `after` when there was none.
    pub next_after: u64,
}

impl From<Event> for EventBody {
    fn from(event: Event) -> Self {
        // The fields are those of `Happened`'s serialization, which webhook
        // payloads use too (`domain::webhooks::payload`): one mapping for both.
        let data = serde_json::to_value(&event.what)
            .ok()
            .and_then(|mut what| serde_json::from_value(what["data"].take()).ok())
            .unwrap_or_default();
        Self {
            position: event.position,
            id: event.id,
            kind: event.what.event_type().into(),
            occurred_at: event.occurred_at,
            data,
        }
    }
}
