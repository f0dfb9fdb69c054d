//! The event log (decision record 0004): `events`, one document per event
//! with its position as `_id`, written only by the [`relay`]; `event_notes`,
//! what happened without changing any other document (a refused
//! allocation); `event_relay`, the relay's checkpoint; `stock_levels`, which
//! batches have room, as the relay last recorded them.

pub mod relay;

use std::time::Duration;

use futures_util::TryStreamExt;
use mongodb::bson::{self, Bson, Document, RawDocumentBuf, doc, rawdoc};
use mongodb::options::IndexOptions;
use mongodb::{Collection, Database, IndexModel};

use crate::domain::allocation::OrderLine;
use crate::domain::events::{Event, EventType, Happened};
use crate::services::StoreError;
use crate::services::ports::events::EventLog;

pub const EVENTS: &str = "events";
pub const EVENT_NOTES: &str = "event_notes";
pub const EVENT_RELAY: &str = "event_relay";
pub const STOCK_LEVELS: &str = "stock_levels";

/// The `event_relay` document holding the position of the latest event and
/// the change it was derived from.
const CHECKPOINT: &str = "checkpoint";

/// How long a note waits for the relay before the server deletes it (the
/// relay reads it from the change stream, not from the collection).
const NOTE_KEPT_FOR: Duration = Duration::from_secs(24 * 3600);

/// The indexes of the event collections.
pub fn indexes() -> [(&'static str, Vec<IndexModel>); 3] {
    let named = |name: &str| IndexOptions::builder().name(name.to_owned()).build();
    [
        (
            EVENTS,
            vec![
                // The feed filtered by type, in position order.
                IndexModel::builder()
                    .keys(doc! { "type": 1, "_id": 1 })
                    .options(named("type_position"))
                    .build(),
                // `events.retention_days`.
                super::expiry_index(),
            ],
        ),
        (EVENT_NOTES, vec![super::expiry_index()]),
        (
            STOCK_LEVELS,
            vec![
                IndexModel::builder()
                    .keys(doc! { "sku": 1, "room": 1 })
                    .options(named("sku_room"))
                    .build(),
            ],
        ),
    ]
}

/// Turns on pre-images for `order_lines` (MongoDB 6.0+), so that the relay
/// knows what a changed or deleted line was. Lines change rarely (a shrink,
/// a fill, a deallocation); allocations insert them, which stores no
/// pre-image.
pub async fn prepare(database: &Database) -> mongodb::error::Result<()> {
    use crate::adapters::mongo::allocations::ORDER_LINES;
    let names = database.list_collection_names().await?;
    if !names.iter().any(|name| name == ORDER_LINES) {
        match database.create_collection(ORDER_LINES).await {
            Err(error) if !is_namespace_exists(&error) => return Err(error),
            _ => {}
        }
    }
    database
        .run_command(doc! {
            "collMod": ORDER_LINES,
            "changeStreamPreAndPostImages": { "enabled": true },
        })
        .await
        .map(drop)
}

fn is_namespace_exists(error: &mongodb::error::Error) -> bool {
    matches!(error.kind.as_ref(), mongodb::error::ErrorKind::Command(c) if c.code == 48)
}

/// Writes the note of a refused allocation (see [`relay`]).
pub(crate) async fn note_refusal(
    notes: &Collection<Document>,
    line: &OrderLine,
) -> Result<(), StoreError> {
    let expires = chrono::Utc::now() + NOTE_KEPT_FOR;
    notes
        .insert_one(doc! {
            "type": EventType::AllocationRefused.as_str(),
            "orderid": &line.orderid,
            "sku": &line.sku,
            "qty": i64::from(line.qty),
            "expires_at": bson::DateTime::from_chrono(expires),
        })
        .await?;
    Ok(())
}

/// An event as stored: `{_id: position, id, occurred_at, expires_at, type, data}`
/// (built raw: the relay writes every event).
fn to_document(event: &Event, retention: Duration) -> Option<RawDocumentBuf> {
    let mut stored = rawdoc! {
        "_id": i64::try_from(event.position).unwrap_or(i64::MAX),
        "id": event.id.as_str(),
        "occurred_at": bson::DateTime::from_chrono(event.occurred_at),
        "expires_at": bson::DateTime::from_chrono(event.occurred_at + retention),
    };
    for element in bson::to_raw_document_buf(&event.what).ok()?.iter() {
        let (key, value) = element.ok()?;
        stored.append_ref(key, value);
    }
    Some(stored)
}

fn from_document(mut stored: Document) -> Result<Event, StoreError> {
    let corrupt =
        |what: &str| StoreError(format!("an event is stored with an invalid {what}").into());
    let position = stored.get_i64("_id").map_err(|_| corrupt("_id"))?;
    let id = stored.get_str("id").map_err(|_| corrupt("id"))?.to_owned();
    let occurred_at = stored
        .get_datetime("occurred_at")
        .map_err(|_| corrupt("occurred_at"))?
        .to_chrono();
    let what = doc! {
        "type": stored.remove("type").unwrap_or(Bson::Null),
        "data": stored.remove("data").unwrap_or(Bson::Null),
    };
    Ok(Event {
        position: u64::try_from(position).map_err(|_| corrupt("_id"))?,
        id,
        occurred_at,
        what: bson::from_document::<Happened>(what).map_err(|_| corrupt("type or data"))?,
    })
}

/// The feed's reads of `events`.
#[derive(Clone)]
pub struct MongoEventLog {
    events: Collection<Document>,
    relay: Collection<Document>,
    max_time: Duration,
}

impl MongoEventLog {
    pub fn new(database: &Database, max_time: Duration) -> Self {
        Self {
            events: database.collection(EVENTS),
            relay: database.collection(EVENT_RELAY),
            max_time,
        }
    }
}

impl EventLog for MongoEventLog {
    async fn read(
        &self,
        after: u64,
        types: &[EventType],
        limit: u32,
    ) -> Result<Vec<Event>, StoreError> {
        let mut filter = doc! { "_id": { "$gt": i64::try_from(after).unwrap_or(i64::MAX) } };
        if !types.is_empty() {
            let names: Vec<&str> = types.iter().map(|kind| kind.as_str()).collect();
            filter.insert("type", doc! { "$in": names });
        }
        let stored: Vec<Document> = self
            .events
            .find(filter)
            .sort(doc! { "_id": 1 })
            .limit(i64::from(limit))
            .projection(doc! { "expires_at": 0 })
            .max_time(self.max_time)
            .await?
            .try_collect()
            .await?;
        stored.into_iter().map(from_document).collect()
    }

    /// From the relay's checkpoint: the latest event may have expired.
    async fn head(&self) -> Result<u64, StoreError> {
        let checkpoint = self
            .relay
            .find_one(doc! { "_id": CHECKPOINT })
            .projection(doc! { "position": 1 })
            .max_time(self.max_time)
            .await?;
        Ok(checkpoint
            .and_then(|c| c.get_i64("position").ok())
            .and_then(|p| u64::try_from(p).ok())
            .unwrap_or(0))
    }
}
