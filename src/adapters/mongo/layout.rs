//! Which layout the data is stored in, and `allot migrate`, which converts a
//! database written by allot 0.1 (every order line embedded in its batch
//! document, in an `allocations` array) to this version's layout (one
//! `order_lines` document per line, counters on the batch).

use mongodb::bson::{Document, doc, oid::ObjectId};
use mongodb::{Client, Database};

use super::allocations::{BATCHES, ORDER_LINES};

/// The layout this version reads and writes. 3 added the intents of lines on
/// their way in (`batches.pending`, see `allocations::group_commit`) and the
/// instances' leases: nothing to convert from 2 (the new index is made at
/// start-up), but an allot written for 2 would not honour the intents, so it
/// refuses to serve once a newer allot has run (stop the old ones first).
pub const LAYOUT_VERSION: i64 = 3;

/// Holds one document, `{_id: "layout", version: N}`, written once the data
/// is known to be in layout N.
pub const META: &str = "allot_meta";

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error(
        "the database holds batches in allot 0.1's layout (order lines inside batch \
         documents); stop every allot process, then run `allot migrate` once"
    )]
    NeedsMigration,
    #[error(
        "the database is in layout {0}, newer than this allot's ({LAYOUT_VERSION}): upgrade allot"
    )]
    Newer(i64),
    #[error("cannot read or write the data layout: {0}")]
    Store(#[from] mongodb::error::Error),
}

/// What `allot migrate` did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Migration {
    pub batches: u64,
    pub lines: u64,
}

async fn recorded_version(database: &Database) -> mongodb::error::Result<Option<i64>> {
    let meta = database
        .collection::<Document>(META)
        .find_one(doc! { "_id": "layout" })
        .await?;
    Ok(meta.and_then(|m| m.get_i64("version").ok()))
}

async fn record_version(database: &Database) -> mongodb::error::Result<()> {
    database
        .collection::<Document>(META)
        .update_one(
            doc! { "_id": "layout" },
            doc! { "$max": { "version": LAYOUT_VERSION } },
        )
        .upsert(true)
        .await
        .map(drop)
}

/// A batch still in the old layout, if any.
async fn legacy_batch(database: &Database) -> mongodb::error::Result<Option<Document>> {
    database
        .collection::<Document>(BATCHES)
        .find_one(doc! { "allocations": { "$exists": true } })
        .await
}

/// Refuses to serve a database in another layout. A database with no
/// recorded layout and no old batch (a new one) is recorded as this layout.
pub async fn check(database: &Database) -> Result<(), LayoutError> {
    match recorded_version(database).await? {
        Some(LAYOUT_VERSION) => Ok(()),
        Some(newer) if newer > LAYOUT_VERSION => Err(LayoutError::Newer(newer)),
        _ if legacy_batch(database).await?.is_some() => Err(LayoutError::NeedsMigration),
        _ => Ok(record_version(database).await?),
    }
}

/// Converts every batch still in the old layout, each in one transaction (its
/// lines become `order_lines` documents, oldest first, and the array goes), so
/// a run that stops half-way is resumed by the next; then drops the old
/// indexes and records the layout. Idempotent.
pub async fn migrate(client: &Client, database: &Database) -> Result<Migration, LayoutError> {
    if let Some(newer) = recorded_version(database)
        .await?
        .filter(|&v| v > LAYOUT_VERSION)
    {
        return Err(LayoutError::Newer(newer));
    }
    let batches = database.collection::<Document>(BATCHES);
    let lines = database.collection::<Document>(ORDER_LINES);
    let mut migration = Migration::default();
    while let Some(batch) = legacy_batch(database).await? {
        let reference = batch.get_str("_id").unwrap_or_default().to_owned();
        let sku = batch.get_str("sku").unwrap_or_default().to_owned();
        let now = mongodb::bson::DateTime::now();
        let documents: Vec<Document> = batch
            .get_array("allocations")
            .map(|a| a.as_slice())
            .unwrap_or_default()
            .iter()
            .filter_map(|line| line.as_document())
            .enumerate()
            .map(|(n, line)| {
                doc! {
                    "_id": ObjectId::new(),
                    "orderid": line.get_str("orderid").unwrap_or_default(),
                    "sku": &sku,
                    "qty": line.get_i64("qty").or_else(|_| line.get_i32("qty").map(i64::from)).unwrap_or_default(),
                    "status": "allocated",
                    "batchref": &reference,
                    "batch_seq": n as i64 + 1,
                    "acknowledged_at": now,
                }
            })
            .collect();
        let count = documents.len() as u64;
        let mut session = client.start_session().await?;
        session.start_transaction().await?;
        if !documents.is_empty() {
            lines.insert_many(documents).session(&mut session).await?;
        }
        batches
            .update_one(
                doc! { "_id": &reference, "allocations": { "$exists": true } },
                doc! {
                    "$unset": { "allocations": "" },
                    "$set": { "allocation_seq": count as i64 },
                },
            )
            .session(&mut session)
            .await?;
        session.commit_transaction().await?;
        migration.batches += 1;
        migration.lines += count;
    }
    for legacy_index in ["order_line_allocated_once", "allocations.orderid_1"] {
        // Already gone after an earlier run: nothing to do.
        let _ = batches.drop_index(legacy_index).await;
    }
    super::ensure_indexes(database).await?;
    record_version(database).await?;
    Ok(migration)
}
