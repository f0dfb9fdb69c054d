//! The relay: turns committed changes into events (decision record 0004).
//!
//! One instance at a time (the live instance with the smallest id) follows a
//! change stream of `batches`, `order_lines` and `event_notes` from the
//! checkpoint, derives the events of each committed change, and records them
//! in one transaction with the stock levels they imply and the new
//! checkpoint. The checkpoint is updated only if it is still where the relay
//! read it, so two relays (a slow one taken for dead) cannot both record: an
//! event exists exactly when its change was committed, once, at the next
//! position. A relay that dies loses nothing: the next one resumes from the
//! checkpoint.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use futures_util::StreamExt;
use mongodb::bson::{self, Document, RawBsonRef, RawDocument, RawDocumentBuf, Timestamp, doc};
use mongodb::raw_batch_cursor::SessionRawBatchCursor;
use mongodb::{ClientSession, Collection, Database};

use super::{CHECKPOINT, EVENT_NOTES, EVENT_RELAY, EVENTS, STOCK_LEVELS, to_document};
use crate::adapters::mongo::allocations::{BATCHES, ORDER_LINES};
use crate::adapters::mongo::instances::Instance;
use crate::adapters::mongo::{Finish, in_transaction, is_duplicate_key};
use crate::domain::events::{Event, Happened};

/// The most changes read (one `getMore`) before recording their events.
const MOST_CHANGES: usize = 500;

/// How long an idle relay's `getMore` waits on the server for a change; it
/// answers as soon as one is committed.
const IDLE_WAIT: Duration = Duration::from_secs(1);

/// The most batches whose stock level is kept in memory between rounds.
const MOST_LEVELS_CACHED: usize = 100_000;

/// A committed change, as far as its events go, read from the raw change
/// event: the rest of it (a batch's intents, most of a batch update's size)
/// is skipped unread.
#[derive(Debug)]
struct Change {
    /// The resume token (`_id`).
    token: RawDocumentBuf,
    operation: Operation,
    collection: Source,
    /// A batch's reference (`documentKey._id`).
    reference: Option<String>,
    /// The fields an update set, and those it removed.
    updated: Option<RawDocumentBuf>,
    removed: Vec<String>,
    cluster_time: Option<Timestamp>,
    wall_time: Option<bson::DateTime>,
    full_document: Option<Fields>,
    full_document_before_change: Option<Fields>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Operation {
    Insert,
    Update,
    Replace,
    Delete,
    Other,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    Batches,
    OrderLines,
    EventNotes,
    Other,
}

impl Change {
    fn read(raw: &RawDocument) -> Option<Self> {
        let mut change = Change {
            token: raw.get_document("_id").ok()?.to_raw_document_buf(),
            operation: Operation::Other,
            collection: Source::Other,
            reference: None,
            updated: None,
            removed: Vec::new(),
            cluster_time: None,
            wall_time: None,
            full_document: None,
            full_document_before_change: None,
        };
        let fields = |value: RawBsonRef<'_>| value.as_document().map(Fields::of);
        for (key, value) in raw.iter().flatten() {
            match key {
                "operationType" => {
                    change.operation = match value.as_str() {
                        Some("insert") => Operation::Insert,
                        Some("update") => Operation::Update,
                        Some("replace") => Operation::Replace,
                        Some("delete") => Operation::Delete,
                        _ => Operation::Other,
                    }
                }
                "ns" => {
                    change.collection = match value.as_document()?.get_str("coll") {
                        Ok(BATCHES) => Source::Batches,
                        Ok(ORDER_LINES) => Source::OrderLines,
                        Ok(EVENT_NOTES) => Source::EventNotes,
                        _ => Source::Other,
                    }
                }
                "documentKey" => {
                    change.reference = value.as_document()?.get_str("_id").ok().map(str::to_owned)
                }
                "updateDescription" => {
                    let description = value.as_document()?;
                    change.updated = description
                        .get_document("updatedFields")
                        .ok()
                        .map(ToOwned::to_owned);
                    if let Ok(removed) = description.get_array("removedFields") {
                        change.removed = removed
                            .into_iter()
                            .filter_map(|field| Some(field.ok()?.as_str()?.to_owned()))
                            .collect();
                    }
                }
                "clusterTime" => change.cluster_time = value.as_timestamp(),
                "wallTime" => change.wall_time = value.as_datetime(),
                "fullDocument" => change.full_document = fields(value),
                "fullDocumentBeforeChange" => change.full_document_before_change = fields(value),
                _ => {}
            }
        }
        Some(change)
    }
}

/// The fields of a line, a batch or a note that events are made of.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Fields {
    orderid: Option<String>,
    sku: Option<String>,
    qty: Option<i64>,
    status: Option<String>,
    /// `Some(None)`: null, as an update that takes a line off its batch sets it.
    batchref: Option<Option<String>>,
    available_quantity: Option<i64>,
    purchased_quantity: Option<i64>,
    eta: Option<bson::DateTime>,
}

impl Fields {
    fn of(document: &RawDocument) -> Self {
        Self::default().with(document)
    }

    /// These fields with `document`'s over them.
    fn with(mut self, document: &RawDocument) -> Self {
        for (key, value) in document.iter().flatten() {
            self.set(key, Some(value));
        }
        self
    }

    /// These fields after an update that set `updated` and removed `removed`.
    fn updated(&self, updated: &RawDocument, removed: &[String]) -> Self {
        let mut after = self.clone();
        for field in removed {
            after.set(field, None);
        }
        after.with(updated)
    }

    /// Sets a field to `value`; None removes it.
    fn set(&mut self, field: &str, value: Option<RawBsonRef<'_>>) {
        let text = || Some(value?.as_str()?.to_owned());
        let integer = || integer(value?);
        match field {
            "orderid" => self.orderid = text(),
            "sku" => self.sku = text(),
            "qty" => self.qty = integer(),
            "status" => self.status = text(),
            "batchref" => self.batchref = value.map(|_| text()),
            "available_quantity" => self.available_quantity = integer(),
            "purchased_quantity" => self.purchased_quantity = integer(),
            "eta" => self.eta = value.and_then(RawBsonRef::as_datetime),
            _ => {}
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Store(#[from] mongodb::error::Error),
    #[error("another instance recorded events meanwhile; resuming from its checkpoint")]
    Overtaken,
    #[error("the change stream gave no resume token")]
    NoResumeToken,
    #[error("the change stream closed")]
    Closed,
    #[error("invalid {0}")]
    Corrupt(&'static str),
}

/// Follows the committed changes and records their events; see the module.
pub struct Relay {
    database: Database,
    instance: Instance,
    events: Collection<Document>,
    relay: Collection<Document>,
    levels: Collection<Document>,
    batches: Collection<Document>,
    retention: Duration,
    every: Duration,
    max_time: Duration,
}

/// Where the relay is: the open change stream, the last recorded position,
/// and what it knows of the stock levels (the recorded ones plus its own
/// changes).
struct Following {
    stream: Stream,
    position: u64,
    levels: Levels,
    unread: Vec<Change>,
    last_recorded: tokio::time::Instant,
}

/// Whether each batch has room, and how many batches of each sku there are
/// and have room.
#[derive(Default)]
struct Levels {
    batches: HashMap<String, Level>,
    skus: HashMap<String, SkuLevel>,
    changed: BTreeMap<String, Level>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct SkuLevel {
    batches: u64,
    with_room: u64,
}

impl SkuLevel {
    /// Whether the sku is in stock; None for a sku no batch has.
    fn in_stock(self) -> Option<bool> {
        (self.batches > 0).then_some(self.with_room > 0)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Level {
    sku: String,
    room: bool,
    purchased: i64,
}

impl Relay {
    pub fn new(
        database: &Database,
        instance: &Instance,
        retention: Duration,
        every: Duration,
        max_time: Duration,
    ) -> Self {
        Self {
            database: database.clone(),
            instance: instance.clone(),
            events: database.collection(EVENTS),
            relay: database.collection(EVENT_RELAY),
            levels: database.collection(STOCK_LEVELS),
            batches: database.collection(BATCHES),
            retention,
            every,
            max_time,
        }
    }

    /// Relays while this instance leads, forever.
    pub async fn run(self) {
        let mut following: Option<Following> = None;
        loop {
            if !self.leads() {
                following = None;
                tokio::time::sleep(self.every).await;
                continue;
            }
            let mut now = match following.take() {
                Some(now) => now,
                None => match self.open().await {
                    Ok(now) => now,
                    Err(error) => {
                        tracing::warn!(%error, "cannot follow changes for the event feed; will retry");
                        tokio::time::sleep(self.every).await;
                        continue;
                    }
                },
            };
            let began = tokio::time::Instant::now();
            match self.round(&mut now).await {
                // Changes came: let more gather (the next `getMore` returns
                // them at once).
                Ok(Some(false)) => {
                    following = Some(now);
                    tokio::time::sleep(self.every).await;
                }
                // None came: the `getMore` waited for them, unless writes to
                // other collections woke it (a server may answer each with an
                // empty batch), which must not make the relay spin.
                Ok(None) => {
                    following = Some(now);
                    tokio::time::sleep_until(began + self.every).await;
                }
                Ok(Some(true)) => following = Some(now),
                Err(error) => {
                    tracing::warn!(%error, "cannot record events; resuming from the checkpoint");
                    tokio::time::sleep(self.every).await;
                }
            }
        }
    }

    /// The live relaying instance with the smallest id leads; while two
    /// disagree for a moment, the checkpoint's condition lets only one record.
    fn leads(&self) -> bool {
        let live = self.instance.live_relays();
        live.iter().min().map(String::as_str) == Some(self.instance.id())
    }

    /// Opens a change stream of the database after `token` (from now
    /// without one), read one raw batch (one `getMore`) a round: the
    /// driver's change stream cannot tell a drained batch from an empty one
    /// without another `getMore`, and decodes every field of every change.
    /// The stream has no `$project`: [`Change`] skips what it does not need
    /// as it decodes, which costs less than the server's projection
    /// (measured on SecantusDB, whose CPU bounds the allocations a second).
    async fn watch(&self, token: Option<Document>) -> Result<Stream, RelayError> {
        let collections = [BATCHES, ORDER_LINES, EVENT_NOTES];
        let mut options = doc! { "fullDocumentBeforeChange": "whenAvailable" };
        if let Some(token) = token {
            options.insert("resumeAfter", token);
        }
        let mut session = self.database.client().start_session().await?;
        let mut cursor = self
            .database
            .run_cursor_command(doc! {
                "aggregate": 1,
                "pipeline": [
                    { "$changeStream": options },
                    { "$match": {
                        "ns.coll": { "$in": collections.as_slice() },
                        "operationType": { "$in": ["insert", "update", "replace", "delete"] },
                    } },
                ],
                "cursor": { "batchSize": 0 },
            })
            .batch_size(MOST_CHANGES as u32)
            .max_time(IDLE_WAIT)
            .session(&mut session)
            .batch()
            .await?;
        // The first batch is the `aggregate`'s own (empty) answer.
        let opened = cursor
            .stream(&mut session)
            .next()
            .await
            .ok_or(RelayError::Closed)??;
        let token = opened
            .as_raw_document()
            .get_document("cursor")
            .ok()
            .and_then(|cursor| cursor.get_document("postBatchResumeToken").ok())
            .and_then(|token| token.try_into().ok());
        Ok(Stream {
            cursor,
            token,
            session,
        })
    }

    /// Resumes from the checkpoint, or starts the feed (the first time).
    async fn open(&self) -> Result<Following, RelayError> {
        let checkpoint = self.relay.find_one(doc! { "_id": CHECKPOINT }).await?;
        let (stream, position) = match checkpoint {
            Some(checkpoint) => {
                let token = checkpoint
                    .get_document("token")
                    .map_err(|_| RelayError::Corrupt("checkpoint token"))?
                    .clone();
                let position = checkpoint
                    .get_i64("position")
                    .ok()
                    .and_then(|p| u64::try_from(p).ok())
                    .ok_or(RelayError::Corrupt("checkpoint position"))?;
                (self.watch(Some(token)).await?, position)
            }
            None => (self.start().await?, 0),
        };
        Ok(Following {
            stream,
            position,
            levels: Levels::default(),
            unread: Vec::new(),
            last_recorded: tokio::time::Instant::now(),
        })
    }

    /// Starts the feed if nothing has yet (no checkpoint): run at start-up,
    /// before this instance serves, so that no change it makes is before the
    /// feed's start, whichever instance relays later.
    pub async fn begin(&self) -> Result<(), RelayError> {
        let started = self.relay.find_one(doc! { "_id": CHECKPOINT }).await?;
        match started {
            Some(_) => Ok(()),
            None => match self.start().await {
                Err(RelayError::Overtaken) => Ok(()),
                outcome => outcome.map(drop),
            },
        }
    }

    /// The first start: follows changes from now, records the stock levels
    /// of the batches as they are (changes between the two are applied
    /// again, which levels allow), then the checkpoint.
    async fn start(&self) -> Result<Stream, RelayError> {
        use futures_util::TryStreamExt;
        let stream = self.watch(None).await?;
        let token = stream.token.clone().ok_or(RelayError::NoResumeToken)?;
        let mut batches = self
            .batches
            .clone_with_type::<RawDocumentBuf>()
            .find(doc! {})
            .projection(doc! { "sku": 1, "available_quantity": 1, "purchased_quantity": 1 })
            .await?;
        while let Some(batch) = batches.try_next().await? {
            let (Ok(reference), Some(level)) =
                (batch.get_str("_id"), level_of(&Fields::of(&batch)))
            else {
                continue;
            };
            self.levels
                .update_one(doc! { "_id": reference }, doc! { "$set": level.stored() })
                .upsert(true)
                .await?;
        }
        match self
            .relay
            .insert_one(doc! { "_id": CHECKPOINT, "position": 0_i64, "token": token })
            .await
        {
            Err(error) if is_duplicate_key(&error) => Err(RelayError::Overtaken),
            outcome => outcome.map(|_| stream).map_err(Into::into),
        }
    }

    /// Reads what changed since the last round and records its events;
    /// whether more changes are waiting (None: none came).
    async fn round(&self, now: &mut Following) -> Result<Option<bool>, RelayError> {
        let read = now.stream.next_batch().await?;
        now.unread.extend(read);
        let full = now.unread.len() >= MOST_CHANGES;
        // A transaction's changes share their cluster time and are visible
        // together; a full read may have cut the last one short.
        let complete = if full {
            let last = now.unread.last().and_then(|c| c.cluster_time);
            let cut = now.unread.iter().rposition(|c| c.cluster_time != last);
            cut.map_or(now.unread.len(), |i| i + 1)
        } else {
            now.unread.len()
        };
        let changes: Vec<Change> = now.unread.drain(..complete).collect();
        let Some(token) = changes.last().map(|c| c.token.clone()) else {
            return Ok(None);
        };
        let mut happened: Vec<(Happened, chrono::DateTime<chrono::Utc>)> = Vec::new();
        for group in changes.chunk_by(|a, b| a.cluster_time == b.cluster_time) {
            self.derive_group(group, &mut now.levels, &mut happened)
                .await?;
        }
        let idle_for = now.last_recorded.elapsed();
        if happened.is_empty() && now.levels.changed.is_empty() && idle_for < self.every * 50 {
            // Nothing to record: the checkpoint may stay behind (these
            // changes give no event when read again).
            return Ok(Some(full));
        }
        let events: Vec<Event> = happened
            .into_iter()
            .zip(now.position + 1..)
            .map(|((what, occurred_at), position)| Event {
                position,
                id: uuid::Uuid::new_v4().to_string(),
                occurred_at,
                what,
            })
            .collect();
        let recorded = now.position + events.len() as u64;
        self.record(now.position, recorded, &events, &now.levels.changed, &token)
            .await?;
        now.position = recorded;
        now.last_recorded = tokio::time::Instant::now();
        now.levels.changed.clear();
        if now.levels.batches.len() > MOST_LEVELS_CACHED {
            now.levels = Levels::default();
        }
        crate::metrics::metrics().events_recorded(events.len() as u64);
        Ok(Some(full))
    }

    /// One transaction: the events, the stock levels, the checkpoint, if it
    /// is still at `from`.
    async fn record(
        &self,
        from: u64,
        to: u64,
        events: &[Event],
        changed: &BTreeMap<String, Level>,
        token: &RawDocumentBuf,
    ) -> Result<(), RelayError> {
        let stored: Vec<RawDocumentBuf> = events
            .iter()
            .map(|event| to_document(event, self.retention))
            .collect::<Option<_>>()
            .ok_or(RelayError::Corrupt("event document"))?;
        let token =
            Document::try_from(token.as_ref()).map_err(|_| RelayError::Corrupt("resume token"))?;
        let (events_collection, levels, relay) = (
            self.events.clone_with_type::<RawDocumentBuf>(),
            self.levels.clone(),
            self.relay.clone(),
        );
        let changed = changed.clone();
        let as_i64 = |p: u64| i64::try_from(p).unwrap_or(i64::MAX);
        let (from, to) = (as_i64(from), as_i64(to));
        let moved = in_transaction(
            &self.instance,
            self.max_time,
            || {},
            async move |session| {
                if !stored.is_empty() {
                    events_collection
                        .insert_many(&stored)
                        .session(&mut *session)
                        .await?;
                }
                for (reference, level) in &changed {
                    levels
                        .update_one(doc! { "_id": reference }, doc! { "$set": level.stored() })
                        .upsert(true)
                        .session(&mut *session)
                        .await?;
                }
                let moved = relay
                    .update_one(
                        doc! { "_id": CHECKPOINT, "position": from },
                        doc! { "$set": { "position": to, "token": token.clone() } },
                    )
                    .session(&mut *session)
                    .await?;
                Ok(if moved.matched_count == 1 {
                    Finish::Commit(true)
                } else {
                    Finish::Abort(false)
                })
            },
        )
        .await?;
        if moved {
            Ok(())
        } else {
            Err(RelayError::Overtaken)
        }
    }

    /// The events of one committed write (or transaction): each change's,
    /// then the skus that ran out or came back.
    async fn derive_group(
        &self,
        group: &[Change],
        levels: &mut Levels,
        happened: &mut Vec<(Happened, chrono::DateTime<chrono::Utc>)>,
    ) -> Result<(), RelayError> {
        let mut had_room: BTreeMap<String, Option<bool>> = BTreeMap::new();
        let mut at = chrono::Utc::now();
        for change in group {
            at = occurred_at(change);
            match change.collection {
                Source::OrderLines => happened.extend(line_event(change).map(|what| (what, at))),
                Source::EventNotes => happened.extend(note_event(change).map(|what| (what, at))),
                Source::Batches => {
                    if let Some(what) = self.batch_change(change, levels, &mut had_room).await? {
                        happened.push((what, at));
                    }
                }
                Source::Other => {}
            }
        }
        // A sku's first batch puts it in stock, not back.
        for (sku, before) in had_room {
            let now = levels.sku(&sku).in_stock();
            match (before, now) {
                (Some(true), Some(false) | None) => {
                    happened.push((Happened::SkuOutOfStock { sku }, at));
                }
                (Some(false), Some(true)) => {
                    happened.push((Happened::SkuBackInStock { sku }, at));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Applies a batch's change to the levels; a batch added, or its
    /// purchased quantity changed, is an event.
    async fn batch_change(
        &self,
        change: &Change,
        levels: &mut Levels,
        had_room: &mut BTreeMap<String, Option<bool>>,
    ) -> Result<Option<Happened>, RelayError> {
        let Some(reference) = change.reference.as_deref() else {
            return Ok(None);
        };
        let (before, after, what) = match change.operation {
            Operation::Insert => {
                let Some(batch) = change.full_document.as_ref() else {
                    return Ok(None);
                };
                let Some(level) = level_of(batch) else {
                    return Ok(None);
                };
                let what = batch_created(reference, batch);
                self.load_sku(&level.sku, levels).await?;
                // Known already when the first start recorded it.
                (
                    self.level(reference, levels, false).await?,
                    Some(level),
                    what,
                )
            }
            Operation::Update | Operation::Replace => {
                let Some(before) = self.level(reference, levels, true).await? else {
                    return Ok(None);
                };
                let updated = change.updated.as_deref().map(Fields::of);
                let fields = change.full_document.as_ref().or(updated.as_ref());
                let mut after = before.clone();
                if let Some(fields) = fields {
                    if let Some(available) = fields.available_quantity {
                        after.room = available > 0;
                    }
                    if let Some(purchased) = fields.purchased_quantity {
                        after.purchased = purchased;
                    }
                }
                let what =
                    (after.purchased != before.purchased).then(|| Happened::BatchQuantityChanged {
                        reference: reference.to_owned(),
                        sku: after.sku.clone(),
                        qty: u32::try_from(after.purchased).unwrap_or(0),
                    });
                (Some(before), Some(after), what)
            }
            Operation::Delete => (self.level(reference, levels, false).await?, None, None),
            _ => return Ok(None),
        };
        let Some(sku) = before.as_ref().or(after.as_ref()).map(|l| l.sku.clone()) else {
            return Ok(what);
        };
        had_room
            .entry(sku.clone())
            .or_insert_with(|| levels.sku(&sku).in_stock());
        levels.set(reference, before.as_ref(), after);
        Ok(what)
    }

    /// The batch's level, read from `stock_levels` (then its sku's count)
    /// the first time; a batch the relay never saw is read from `batches`
    /// if `or_batch`.
    async fn level(
        &self,
        reference: &str,
        levels: &mut Levels,
        or_batch: bool,
    ) -> Result<Option<Level>, RelayError> {
        if let Some(level) = levels.batches.get(reference) {
            return Ok(Some(level.clone()));
        }
        let projection = doc! { "sku": 1, "room": 1, "purchased": 1 };
        let stored = self
            .levels
            .clone_with_type::<RawDocumentBuf>()
            .find_one(doc! { "_id": reference })
            .projection(projection)
            .await?;
        let stored_level = stored.is_some();
        let level = match stored {
            Some(stored) => Level::restore(&stored),
            None if !or_batch => None,
            None => {
                let batch = self
                    .batches
                    .clone_with_type::<RawDocumentBuf>()
                    .find_one(doc! { "_id": reference })
                    .await?;
                batch.and_then(|batch| level_of(&Fields::of(&batch)))
            }
        };
        if let Some(level) = &level {
            self.load_sku(&level.sku, levels).await?;
            if stored_level {
                levels.batches.insert(reference.to_owned(), level.clone());
            } else {
                // Counted from now on, as the batch is (its earlier changes are past).
                levels.set(reference, None, Some(level.clone()));
            }
        }
        Ok(level)
    }

    /// Counts the sku's batches the first time (a sku with changes not yet
    /// recorded is loaded already).
    async fn load_sku(&self, sku: &str, levels: &mut Levels) -> Result<(), RelayError> {
        if !levels.skus.contains_key(sku) {
            let count = |filter| self.levels.count_documents(filter);
            let level = SkuLevel {
                batches: count(doc! { "sku": sku }).await?,
                with_room: count(doc! { "sku": sku, "room": true }).await?,
            };
            levels.skus.insert(sku.to_owned(), level);
        }
        Ok(())
    }
}

/// An open change stream: its cursor, in the session that opened it.
struct Stream {
    cursor: SessionRawBatchCursor,
    /// Where the stream stands before its first change (at the first start).
    token: Option<Document>,
    session: ClientSession,
}

impl Stream {
    /// One `getMore`: the changes committed since the last (at most
    /// [`MOST_CHANGES`]), waiting up to [`IDLE_WAIT`] for the first.
    async fn next_batch(&mut self) -> Result<Vec<Change>, RelayError> {
        let batch = self
            .cursor
            .stream(&mut self.session)
            .next()
            .await
            .ok_or(RelayError::Closed)??;
        batch
            .doc_slices()?
            .into_iter()
            .map(|change| {
                change
                    .ok()
                    .and_then(RawBsonRef::as_document)
                    .and_then(Change::read)
                    .ok_or(RelayError::Corrupt("change event"))
            })
            .collect()
    }
}

impl Levels {
    fn sku(&self, sku: &str) -> SkuLevel {
        self.skus.get(sku).copied().unwrap_or_default()
    }

    /// Records a batch's new level (None: deleted) and keeps its sku's counts.
    fn set(&mut self, reference: &str, before: Option<&Level>, after: Option<Level>) {
        let had = before.is_some_and(|level| level.room);
        let has = after.as_ref().is_some_and(|level| level.room);
        if let Some(sku) = before.or(after.as_ref()).map(|level| level.sku.clone()) {
            let counts = self.skus.entry(sku).or_default();
            match (before.is_some(), after.is_some()) {
                (false, true) => counts.batches += 1,
                (true, false) => counts.batches = counts.batches.saturating_sub(1),
                _ => {}
            }
            match (had, has) {
                (false, true) => counts.with_room += 1,
                (true, false) => counts.with_room = counts.with_room.saturating_sub(1),
                _ => {}
            }
        }
        let after = after.unwrap_or(Level {
            sku: before.map(|level| level.sku.clone()).unwrap_or_default(),
            room: false,
            purchased: 0,
        });
        if before != Some(&after) {
            self.changed.insert(reference.to_owned(), after.clone());
        }
        self.batches.insert(reference.to_owned(), after);
    }
}

impl Level {
    fn stored(&self) -> Document {
        doc! { "sku": &self.sku, "room": self.room, "purchased": self.purchased }
    }

    fn restore(stored: &RawDocument) -> Option<Self> {
        Some(Self {
            sku: stored.get_str("sku").ok()?.to_owned(),
            room: stored.get_bool("room").ok()?,
            purchased: integer(stored.get("purchased").ok()??)?,
        })
    }
}

/// A batch's level.
fn level_of(batch: &Fields) -> Option<Level> {
    Some(Level {
        sku: batch.sku.clone()?,
        room: batch.available_quantity? > 0,
        purchased: batch.purchased_quantity?,
    })
}

/// A quantity, however it was stored (a shell writes doubles).
fn integer(value: RawBsonRef<'_>) -> Option<i64> {
    match value {
        RawBsonRef::Int32(n) => Some(i64::from(n)),
        RawBsonRef::Int64(n) => Some(n),
        RawBsonRef::Double(n) => Some(n as i64),
        _ => None,
    }
}

fn occurred_at(change: &Change) -> chrono::DateTime<chrono::Utc> {
    match (change.wall_time, change.cluster_time) {
        (Some(wall), _) => wall.to_chrono(),
        (None, Some(time)) => chrono::DateTime::from_timestamp(i64::from(time.time), 0)
            .unwrap_or_else(chrono::Utc::now),
        (None, None) => chrono::Utc::now(),
    }
}

fn batch_created(reference: &str, batch: &Fields) -> Option<Happened> {
    Some(Happened::BatchCreated {
        reference: reference.to_owned(),
        sku: batch.sku.clone()?,
        qty: u32::try_from(batch.purchased_quantity?).ok()?,
        eta: batch.eta.map(|eta| eta.to_chrono().date_naive()),
    })
}

fn note_event(change: &Change) -> Option<Happened> {
    if change.operation != Operation::Insert {
        return None;
    }
    let note = change.full_document.as_ref()?;
    Some(Happened::AllocationRefused {
        orderid: note.orderid.clone()?,
        sku: note.sku.clone()?,
        qty: u32::try_from(note.qty?).ok()?,
    })
}

/// A line as far as its events go: (orderid, sku, qty) and its batch while
/// allocated.
#[derive(Debug, PartialEq, Eq)]
struct LineState {
    orderid: String,
    sku: String,
    qty: u32,
    batchref: Option<String>,
}

impl LineState {
    fn of(line: &Fields) -> Option<Self> {
        let allocated = line.status.as_deref()? == "allocated";
        Some(Self {
            orderid: line.orderid.clone()?,
            sku: line.sku.clone()?,
            qty: u32::try_from(line.qty?).ok()?,
            batchref: allocated.then(|| line.batchref.clone().flatten()).flatten(),
        })
    }
}

/// The event of a change of `order_lines`, from the line before (the
/// pre-image) and after.
fn line_event(change: &Change) -> Option<Happened> {
    let pre = change.full_document_before_change.as_ref();
    let (before, after) = match change.operation {
        Operation::Insert => (None, LineState::of(change.full_document.as_ref()?)),
        Operation::Delete => (pre.and_then(LineState::of), None),
        Operation::Replace => (
            pre.and_then(LineState::of),
            LineState::of(change.full_document.as_ref()?),
        ),
        Operation::Update => {
            let pre = pre?;
            let before = LineState::of(pre);
            let post = pre.updated(change.updated.as_deref()?, &change.removed);
            let after = before.as_ref().and(LineState::of(&post));
            (before, after)
        }
        _ => return None,
    };
    line_transition(before, after)
}

/// What a line's change was, from its state before and after (None: it did
/// not exist).
fn line_transition(before: Option<LineState>, after: Option<LineState>) -> Option<Happened> {
    match (before, after) {
        (None, Some(line)) => Some(Happened::LineAllocated {
            batchref: line.batchref?,
            orderid: line.orderid,
            sku: line.sku,
            qty: line.qty,
        }),
        (Some(line), None) => Some(Happened::LineDeallocated {
            orderid: line.orderid,
            sku: line.sku,
            qty: line.qty,
            batchref: line.batchref,
        }),
        (Some(before), Some(after)) => match (before.batchref, after.batchref) {
            (Some(from), Some(to)) if from != to => Some(Happened::LineMoved {
                orderid: after.orderid,
                sku: after.sku,
                qty: after.qty,
                from,
                to,
            }),
            (Some(from), None) => Some(Happened::LineBackordered {
                orderid: after.orderid,
                sku: after.sku,
                qty: after.qty,
                from,
            }),
            (None, Some(batchref)) => Some(Happened::LineFilled {
                orderid: after.orderid,
                sku: after.sku,
                qty: after.qty,
                batchref,
            }),
            _ => None,
        },
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use mongodb::bson::rawdoc;

    use super::*;

    fn line(status: &str, batchref: Option<&str>) -> Fields {
        Fields {
            orderid: Some("o1".into()),
            sku: Some("LAMP".into()),
            qty: Some(3),
            status: Some(status.into()),
            batchref: Some(batchref.map(str::to_owned)),
            ..Fields::default()
        }
    }

    fn transition(before: Option<Fields>, after: Option<Fields>) -> Option<Happened> {
        line_transition(
            before.as_ref().and_then(LineState::of),
            after.as_ref().and_then(LineState::of),
        )
    }

    #[test]
    fn a_lines_change_is_the_event_its_states_before_and_after_say() {
        let allocated = |b| Some(line("allocated", Some(b)));
        let waiting = Some(line("backordered", None));
        assert!(matches!(
            transition(None, allocated("b1")),
            Some(Happened::LineAllocated { batchref, qty: 3, .. }) if batchref == "b1"
        ));
        assert!(matches!(
            transition(allocated("b1"), waiting.clone()),
            Some(Happened::LineBackordered { from, .. }) if from == "b1"
        ));
        assert!(matches!(
            transition(waiting.clone(), allocated("b2")),
            Some(Happened::LineFilled { batchref, .. }) if batchref == "b2"
        ));
        assert!(matches!(
            transition(allocated("b1"), allocated("b2")),
            Some(Happened::LineMoved { from, to, .. }) if from == "b1" && to == "b2"
        ));
        assert!(matches!(
            transition(waiting, None),
            Some(Happened::LineDeallocated { batchref: None, .. })
        ));
        // A change that leaves the line where it was (its position) is no event.
        assert_eq!(transition(allocated("b1"), allocated("b1")), None);
    }

    #[test]
    fn an_update_is_applied_to_the_pre_image() {
        let pre = line("allocated", Some("b1"));
        // The fields a shrink sets, as a change event has them: a null
        // batchref is set, not absent; other fields are skipped.
        let set = rawdoc! { "status": "backordered", "batchref": null, "batch_seq": 4 };
        assert_eq!(Fields::of(&set).batchref, Some(None));
        let after = LineState::of(&pre.updated(&set, &[])).unwrap();
        assert_eq!((after.batchref, after.qty), (None, 3));
        let unset = pre.updated(&rawdoc! { "status": "backordered" }, &["batchref".into()]);
        assert_eq!(LineState::of(&unset).unwrap().batchref, None);
        let moved = pre.updated(&rawdoc! { "batchref": "b2", "qty": 3_i32 }, &[]);
        assert_eq!(
            LineState::of(&moved).unwrap().batchref.as_deref(),
            Some("b2")
        );
    }

    #[test]
    fn a_change_is_read_from_its_raw_event_and_the_rest_skipped() {
        let token = rawdoc! { "_data": "8263" };
        let event = rawdoc! {
            "_id": token.clone(),
            "operationType": "update",
            "clusterTime": bson::Timestamp { time: 7, increment: 2 },
            "ns": { "db": "allot", "coll": "batches" },
            "documentKey": { "_id": "b1" },
            "updateDescription": {
                "updatedFields": { "available_quantity": 0_i64, "pending": { "x": { "q": 1 } } },
                "removedFields": ["pending.y"],
                "truncatedArrays": [],
            },
        };
        let change = Change::read(&event).unwrap();
        assert_eq!(change.token, token);
        assert_eq!(
            (change.operation, change.collection),
            (Operation::Update, Source::Batches)
        );
        assert_eq!(change.reference.as_deref(), Some("b1"));
        assert_eq!(change.removed, ["pending.y"]);
        let set = Fields::of(change.updated.as_deref().unwrap());
        assert_eq!(
            set,
            Fields {
                available_quantity: Some(0),
                ..Fields::default()
            }
        );
        assert!(change.full_document.is_none());
        // A quantity set from a shell is a double.
        let shell =
            Fields::of(&rawdoc! { "purchased_quantity": 20.0, "available_quantity": 0_i32 });
        assert_eq!(
            (shell.purchased_quantity, shell.available_quantity),
            (Some(20), Some(0))
        );
    }

    #[test]
    fn levels_count_the_batches_with_room_per_sku() {
        let mut levels = Levels::default();
        let level = |room| Level {
            sku: "LAMP".into(),
            room,
            purchased: 10,
        };
        assert_eq!(levels.sku("LAMP").in_stock(), None);
        levels.set("b1", None, Some(level(true)));
        levels.set("b2", None, Some(level(true)));
        assert_eq!(
            levels.sku("LAMP"),
            SkuLevel {
                batches: 2,
                with_room: 2
            }
        );
        levels.set("b1", Some(&level(true)), Some(level(false)));
        assert_eq!(levels.sku("LAMP").in_stock(), Some(true));
        levels.set("b2", Some(&level(true)), None);
        assert_eq!(
            levels.sku("LAMP"),
            SkuLevel {
                batches: 1,
                with_room: 0
            }
        );
        assert_eq!(levels.sku("LAMP").in_stock(), Some(false));
        // Unchanged levels are not written again.
        levels.changed.clear();
        levels.set("b1", Some(&level(false)), Some(level(false)));
        assert!(levels.changed.is_empty());
    }
}
