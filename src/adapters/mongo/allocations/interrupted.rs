//! Finishing the allocations a process left half-done.
//!
//! An intent (`pending.<line id>` in a batch) says: this batch gave the
//! line's quantity. If the process that wrote it dies (its lease is reaped)
//! or failed to store the line, the line may never have been stored. Every
//! instance finishes such intents, each in a way that applies once however
//! many instances try:
//!
//! - the line is stored: the intent is just removed;
//! - the line is not stored: it is stored as allocated to the batch, and the
//!   intent removed, in one transaction that first removes the intent (so
//!   that a line deallocated meanwhile, which took its intent along, is
//!   never stored again);
//! - the (order, sku) holds another line (a concurrent repeat won): the
//!   stock goes back to the batch with the intent, in one write.
//!
//! The client whose request was interrupted got no 201 (or a 503); asking
//! again, it is answered with the line as stored.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::TryStreamExt;
use mongodb::bson::{Document, doc, oid::ObjectId};

use super::documents::{LineDocument, PENDING_INTENTS};
use super::{MongoAllocations, intent_field};
use crate::adapters::mongo::Finish;
use crate::adapters::mongo::is_duplicate_key;
use crate::domain::allocation::OrderLine;
use crate::services::StoreError;

/// Batches with intents looked at per pass.
const BATCHES_PER_PASS: i64 = 100;

/// This instance's own intents are finished here only once this old (a line
/// id tells when it was made): younger ones are in a group, or stored and
/// removed by the next flush (after `group_commit::FLUSH_AFTER`).
const OWN_INTENTS_AFTER: Duration = Duration::from_secs(5);

fn older_than(id: &ObjectId, age: Duration) -> bool {
    let made = id.timestamp().timestamp_millis();
    made + (age.as_millis() as i64) < mongodb::bson::DateTime::now().timestamp_millis()
}

/// An intent to finish.
#[derive(Clone)]
struct Intent {
    batch: String,
    id: ObjectId,
    line: OrderLine,
    owner: String,
    seq: i64,
}

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Resumed {
    /// Lines stored for a dead instance.
    pub stored: usize,
    /// Intents whose stock went back (their line was a repeat).
    pub given_back: usize,
}

impl MongoAllocations {
    /// Finishes the intents of instances without a lease, and this
    /// instance's own that no group of it is working on.
    pub async fn resume_interrupted(&self) -> Result<Resumed, StoreError> {
        let live = self.instance.live();
        let batches: Vec<Document> = self
            .batches
            .clone_with_type::<Document>()
            .find(doc! { "pending": { "$exists": true } })
            .hint(mongodb::options::Hint::Name(PENDING_INTENTS.to_owned()))
            .projection(doc! { "sku": 1, "pending": 1 })
            .limit(BATCHES_PER_PASS)
            .max_time(self.max_time)
            .await?
            .try_collect()
            .await?;
        let mut intents = Vec::new();
        for batch in &batches {
            let (Ok(reference), Ok(sku)) = (batch.get_str("_id"), batch.get_str("sku")) else {
                continue;
            };
            let Ok(pending) = batch.get_document("pending") else {
                continue;
            };
            if pending.is_empty() {
                self.batches
                    .update_one(
                        doc! { "_id": reference, "pending": {} },
                        doc! { "$unset": { "pending": "" } },
                    )
                    .await?;
                continue;
            }
            for (id, intent) in pending {
                let (Ok(id), Some(intent)) = (ObjectId::parse_str(id), intent.as_document()) else {
                    continue;
                };
                let writer = intent.get_str("i").unwrap_or_default();
                let writer_at_work = if writer == self.instance.id() {
                    // Its own: in a group, or stored and soon removed by a
                    // flush; left here are those whose insert failed.
                    self.intake.is_in_flight(&id) || !older_than(&id, OWN_INTENTS_AFTER)
                } else {
                    live.contains(writer)
                };
                if writer_at_work {
                    continue;
                }
                if let Some(intent) = read_intent(reference, sku, id, intent) {
                    intents.push(intent);
                }
            }
        }
        let ids: Vec<ObjectId> = intents.iter().map(|intent| intent.id).collect();
        let stored = self.stored_ids(&ids).await?;
        let (stored, unstored): (Vec<Intent>, Vec<Intent>) = intents
            .into_iter()
            .partition(|intent| stored.contains(&intent.id));
        let mut done: HashMap<&str, Document> = HashMap::new();
        for intent in &stored {
            done.entry(&intent.batch)
                .or_default()
                .insert(intent_field(&intent.id), "");
        }
        for (batch, fields) in done {
            self.batches
                .update_one(doc! { "_id": batch }, doc! { "$unset": fields })
                .await?;
        }
        let mut resumed = Resumed::default();
        for intent in unstored {
            if self.store_for_intent(&intent).await? {
                resumed.stored += 1;
            } else if !self.stored_ids(&[intent.id]).await?.contains(&intent.id)
                && self
                    .give_back(&intent.batch, intent.id, i64::from(intent.line.qty))
                    .await?
            {
                resumed.given_back += 1;
            }
        }
        Ok(resumed)
    }

    /// Stores the intent's line and removes the intent, in one transaction
    /// that applies only while the intent is there. False when it was gone,
    /// or when the (order, sku) holds a line already.
    async fn store_for_intent(&self, intent: &Intent) -> Result<bool, StoreError> {
        let this = self.clone();
        let intent = intent.clone();
        self.transaction(async move |session| {
            let intent = &intent;
            let claimed = this
                .batches
                .update_one(
                    doc! { "_id": &intent.batch, intent_field(&intent.id): { "$exists": true } },
                    doc! { "$unset": { intent_field(&intent.id): "" } },
                )
                .session(&mut *session)
                .await?;
            if claimed.modified_count == 0 {
                return Ok(Finish::Abort(false));
            }
            let line = LineDocument::allocated(
                intent.id,
                &intent.line,
                &intent.batch,
                intent.seq,
                &intent.owner,
            );
            match this.lines.insert_one(line).session(&mut *session).await {
                Ok(_) => Ok(Finish::Commit(true)),
                Err(error) if is_duplicate_key(&error) => Ok(Finish::Abort(false)),
                Err(error) => Err(error),
            }
        })
        .await
    }
}

fn read_intent(batch: &str, sku: &str, id: ObjectId, intent: &Document) -> Option<Intent> {
    let qty = intent
        .get_i64("q")
        .ok()
        .or_else(|| intent.get_i32("q").ok().map(i64::from))?;
    Some(Intent {
        batch: batch.to_owned(),
        id,
        line: OrderLine {
            orderid: intent.get_str("o").ok()?.to_owned(),
            sku: sku.to_owned(),
            qty: u32::try_from(qty).ok()?,
        },
        owner: intent.get_str("w").ok()?.to_owned(),
        seq: intent
            .get_i64("s")
            .ok()
            .or_else(|| intent.get_i32("s").ok().map(i64::from))?,
    })
}
