//! Allocation without a transaction, in groups.
//!
//! The allocations a process receives while its previous groups are at the
//! database travel together as one **group**:
//!
//! 1. one `insert` of `orders` claims the owner of every new order of the
//!    group (none for orders this process has seen; a duplicate key means
//!    the order exists, and one `find` reads its owner);
//! 2. the stock of each sku's lines is taken from the preferred batch with
//!    room for them all, which records each line as an **intent**
//!    (`pending.<line id>`: order, quantity, owner, position, instance) in the
//!    same single-document write. On MongoDB 8.0 that is one `update` for the
//!    whole group (a statement per sku, with a `sort`), and one `find` of the
//!    batches now holding the intents; on MongoDB 7, or for one sku, one
//!    `findAndModify` per sku;
//! 3. one `insert` stores every line of the group.
//!
//! No step holds a lock across round trips, so a process that dies between
//! two of them stalls nobody: the stock it took is recorded with the line it
//! was for, and `interrupted::resume` (run by every instance) stores the line
//! or gives the stock back. An intent whose line is stored is removed from
//! the batch by the next write this process makes to the batch, or by
//! [`MongoAllocations::flush_confirmed`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::TryStreamExt;
use futures_util::future::join_all;
use mongodb::Collection;
use mongodb::bson::{self, Bson, Document, doc, oid::ObjectId};
use mongodb::error::{ErrorKind, InsertManyError};
use mongodb::options::ReturnDocument;
use mongodb::results::InsertManyResult;
use serde::Serialize;
use tokio::sync::{Semaphore, oneshot};

use super::documents::{BATCHES, LineDocument, corrupt};
use super::{MongoAllocations, intent_field};
use crate::domain::allocation::{OrderLine, Requester};
use crate::services::StoreError;
use crate::services::ports::allocation::{AllocateStep, AllocationRepository};

/// Most lines in one group.
const GROUP_LIMIT: usize = 256;
/// Order owners remembered by a process (they never change); forgotten all
/// at once when there are more.
const OWNERS_REMEMBERED: usize = 100_000;
/// How long a stored line's intent is left for the next stock step on its
/// sku to remove in passing before a flush removes it.
const FLUSH_AFTER: Duration = Duration::from_secs(2);
/// Most stored lines' intents one write removes in passing.
const PIGGYBACK_LIMIT: usize = 256;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

type Reply = oneshot::Sender<Result<AllocateStep, StoreError>>;

struct Request {
    line: OrderLine,
    requester: Requester,
    reply: Reply,
}

/// Where a process's allocations wait for their group, and what it
/// remembers between groups.
pub(super) struct Intake {
    queue: Mutex<VecDeque<Request>>,
    /// Groups at the database at once.
    slots: Arc<Semaphore>,
    /// Lines between their stock step and the end of their insert: their
    /// intents are this process's to finish, not the recovery pass's.
    in_flight: Mutex<HashSet<ObjectId>>,
    /// Intents whose lines are stored, by sku and batch: removed from the
    /// batch by the next stock step on the sku, or by a flush.
    confirmed: Mutex<HashMap<String, HashMap<String, Vec<ObjectId>>>>,
    owners: Mutex<HashMap<String, String>>,
    /// Whether the server's `update` takes a `sort` per statement (MongoDB
    /// 8.0), so that one command takes the stock of every sku of a group.
    sorted_updates: tokio::sync::OnceCell<bool>,
}

impl Intake {
    pub(super) fn new(groups_in_flight: usize) -> Self {
        Self {
            queue: Mutex::new(VecDeque::new()),
            slots: Arc::new(Semaphore::new(groups_in_flight.max(1))),
            in_flight: Mutex::new(HashSet::new()),
            confirmed: Mutex::new(HashMap::new()),
            owners: Mutex::new(HashMap::new()),
            sorted_updates: tokio::sync::OnceCell::new(),
        }
    }

    /// Takes the stock of a group one `findAndModify` per sku, as MongoDB 7
    /// must (for tests of that path on a newer server).
    pub(super) fn without_sorted_updates(self) -> Self {
        let _ = self.sorted_updates.set(false);
        self
    }

    pub(super) fn is_in_flight(&self, id: &ObjectId) -> bool {
        lock(&self.in_flight).contains(id)
    }

    /// The next group: queued requests in arrival order, at most one per
    /// (order, sku) (a second one waits for the next group, where it finds
    /// the line stored by the first), none whose caller stopped waiting.
    fn next_group(&self) -> Vec<Request> {
        let mut queue = lock(&self.queue);
        let mut group = Vec::new();
        let mut later = VecDeque::new();
        let mut keys = HashSet::new();
        while group.len() < GROUP_LIMIT {
            let Some(request) = queue.pop_front() else {
                break;
            };
            if request.reply.is_closed() {
                // Its caller stopped waiting (and answered 503): nothing is
                // done for it.
                continue;
            }
            if keys.insert((request.line.orderid.clone(), request.line.sku.clone())) {
                group.push(request);
            } else {
                later.push_back(request);
            }
        }
        while let Some(request) = later.pop_back() {
            queue.push_front(request);
        }
        group
    }

    /// Takes out the intents of lines stored at least [`FLUSH_AFTER`] ago (a
    /// line id tells when it was made), to be removed by one flush; younger
    /// ones are left to the next stock step on their sku, which removes them
    /// in passing.
    pub(super) fn take_confirmed(&self) -> HashMap<String, Vec<ObjectId>> {
        let due = bson::DateTime::now().timestamp_millis() - FLUSH_AFTER.as_millis() as i64;
        let is_due = |id: &ObjectId| id.timestamp().timestamp_millis() <= due;
        let mut by_batch: HashMap<String, Vec<ObjectId>> = HashMap::new();
        let mut confirmed = lock(&self.confirmed);
        for batches in confirmed.values_mut() {
            for (batch, ids) in batches.iter_mut() {
                let (old, young): (Vec<ObjectId>, Vec<ObjectId>) = ids.drain(..).partition(is_due);
                *ids = young;
                if !old.is_empty() {
                    by_batch.entry(batch.clone()).or_default().extend(old);
                }
            }
            batches.retain(|_, ids| !ids.is_empty());
        }
        confirmed.retain(|_, batches| !batches.is_empty());
        by_batch
    }

    /// Puts back intents a flush could not remove, for the next flush.
    pub(super) fn restore_confirmed(&self, by_batch: HashMap<String, Vec<ObjectId>>) {
        let mut confirmed = lock(&self.confirmed);
        for (batch, ids) in by_batch {
            confirmed
                .entry(String::new())
                .or_default()
                .entry(batch)
                .or_default()
                .extend(ids);
        }
    }
}

/// Marks a group's lines as this process's to finish until dropped (also
/// when a group is abandoned half-way: the recovery pass finishes them).
struct InFlight<'a> {
    intake: &'a Intake,
    ids: Vec<ObjectId>,
}

impl<'a> InFlight<'a> {
    fn enter(intake: &'a Intake, ids: Vec<ObjectId>) -> Self {
        lock(&intake.in_flight).extend(ids.iter().copied());
        Self { intake, ids }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut in_flight = lock(&self.intake.in_flight);
        for id in &self.ids {
            in_flight.remove(id);
        }
    }
}

/// A line of a group on its way to a batch.
#[derive(Clone)]
struct Taking<'a> {
    index: usize,
    id: ObjectId,
    line: &'a OrderLine,
    owner: String,
}

/// Where a line of a group stands after the stock step.
#[derive(Clone)]
enum Stock {
    Taken { batchref: String, seq: i64 },
    NoRoom,
}

/// `count` lines taken from one batch, the first at position `first`.
fn positions(batchref: &str, first: i64, count: usize) -> Vec<Stock> {
    (0..count as i64)
        .map(|n| Stock::Taken {
            batchref: batchref.to_owned(),
            seq: first + n,
        })
        .collect()
}

/// The first wire version of MongoDB 8.0, whose `update` statements take a
/// `sort`.
const SORTED_UPDATE_WIRE_VERSION: i32 = 25;

impl MongoAllocations {
    /// Queues the line for the next group and waits for its answer. A caller
    /// that finds a group slot free takes the queue as a group and sends it
    /// on its way (in a task of its own, so that no caller's cancellation
    /// stops a group half-way).
    pub(super) async fn allocate_in_group(
        &self,
        line: &OrderLine,
        requester: &Requester,
    ) -> Result<AllocateStep, StoreError> {
        let (reply, mut answer) = oneshot::channel();
        lock(&self.intake.queue).push_back(Request {
            line: line.clone(),
            requester: requester.clone(),
            reply,
        });
        let dropped = || StoreError("the allocation group was dropped".into());
        let answered = tokio::time::timeout(self.max_time, async {
            loop {
                tokio::select! {
                    biased;
                    answered = &mut answer => return answered.unwrap_or_else(|_| Err(dropped())),
                    slot = Arc::clone(&self.intake.slots).acquire_owned() => {
                        let Ok(slot) = slot else {
                            return Err(dropped());
                        };
                        let group = self.intake.next_group();
                        if group.is_empty() {
                            // Another caller took this request into its group.
                            drop(slot);
                            return answer.await.unwrap_or_else(|_| Err(dropped()));
                        }
                        let repository = self.clone();
                        tokio::spawn(async move {
                            repository.commit_group(group).await;
                            drop(slot);
                        });
                    }
                }
            }
        });
        // Past the limit the line may still be allocated by its group: the
        // client learns where it stands by asking again.
        answered
            .await
            .unwrap_or_else(|_| Err(timed_out(self.max_time)))
    }

    async fn commit_group(&self, group: Vec<Request>) {
        // Each of its three steps is bounded by the operation timeout, also
        // against a server that stops answering altogether.
        let bounded = tokio::time::timeout(self.max_time * 3, self.allocate_group(&group));
        let mut outcomes = match bounded.await {
            Ok(outcomes) => outcomes,
            Err(_elapsed) => failed_for_all(group.len(), &timed_out(self.max_time * 3)),
        };
        for (request, outcome) in group.into_iter().zip(outcomes.drain(..)) {
            let _ = request.reply.send(outcome);
        }
    }

    async fn allocate_group(&self, group: &[Request]) -> Vec<Result<AllocateStep, StoreError>> {
        let owners = match self.claim_orders(group).await {
            Ok(owners) => owners,
            Err(error) => return failed_for_all(group.len(), &error),
        };
        let mut outcomes: Vec<Option<Result<AllocateStep, StoreError>>> =
            (0..group.len()).map(|_| None).collect();
        let mut by_sku: HashMap<&str, Vec<Taking<'_>>> = HashMap::new();
        for (index, (request, owner)) in group.iter().zip(owners).enumerate() {
            match owner {
                Some(owner) => by_sku.entry(&request.line.sku).or_default().push(Taking {
                    index,
                    id: ObjectId::new(),
                    line: &request.line,
                    owner,
                }),
                None => outcomes[index] = Some(Ok(AllocateStep::NotOwner)),
            }
        }
        let ids: Vec<ObjectId> = by_sku.values().flatten().map(|t| t.id).collect();
        let _in_flight = InFlight::enter(&self.intake, ids);

        let stock = self.take_stock_of_group(&by_sku).await;
        let mut stored = Vec::new();
        for (lines, taken) in by_sku.values().zip(stock) {
            match taken {
                Ok(taken) => {
                    for (taking, stock) in lines.iter().zip(taken) {
                        match stock {
                            Stock::Taken { batchref, seq } => stored.push((taking, batchref, seq)),
                            Stock::NoRoom => {
                                outcomes[taking.index] = Some(Ok(AllocateStep::NoRoom))
                            }
                        }
                    }
                }
                Err(error) => {
                    for taking in lines {
                        outcomes[taking.index] = Some(Err(copy_error(&error)));
                    }
                }
            }
        }

        for (taking, outcome) in self.store_lines(&stored).await {
            outcomes[taking.index] = Some(outcome);
        }

        // A line that found no room may have been acknowledged before (the
        // idempotent repeat): it is answered as it stands.
        let unplaced: Vec<usize> = outcomes
            .iter()
            .enumerate()
            .filter(|(_, outcome)| matches!(outcome, Some(Ok(AllocateStep::NoRoom))))
            .map(|(index, _)| index)
            .collect();
        let existing = join_all(unplaced.iter().map(|&index| {
            let line = &group[index].line;
            self.line(&line.orderid, &line.sku)
        }))
        .await;
        for (index, existing) in unplaced.into_iter().zip(existing) {
            outcomes[index] = Some(match existing {
                Ok(Some(existing)) => Ok(AllocateStep::AlreadyAcknowledged(existing)),
                Ok(None) => Ok(AllocateStep::NoRoom),
                Err(error) => Err(error),
            });
        }
        outcomes
            .into_iter()
            .map(|outcome| outcome.unwrap_or_else(|| Err(unavailable_msg("no outcome"))))
            .collect()
    }

    /// The owner of each request's order, claimed for the requester where
    /// the order is new, in one `insert` of `orders` (a duplicate key means it
    /// exists: then one `find` reads its owner); None where the requester may
    /// not add to it.
    async fn claim_orders(&self, group: &[Request]) -> Result<Vec<Option<String>>, StoreError> {
        let mut known: HashMap<String, String> = {
            let owners = lock(&self.intake.owners);
            group
                .iter()
                .filter_map(|r| {
                    let owner = owners.get(&r.line.orderid)?;
                    Some((r.line.orderid.clone(), owner.clone()))
                })
                .collect()
        };
        // One claim per new order: of two requesters of a new order in one
        // group, the first claims it (as if it had come first to the database).
        let mut claims: Vec<(&str, &str)> = Vec::new();
        for request in group {
            let orderid = request.line.orderid.as_str();
            if !known.contains_key(orderid) && !claims.iter().any(|(o, _)| *o == orderid) {
                claims.push((orderid, request.requester.account.as_str()));
            }
        }
        if !claims.is_empty() {
            let orders: Vec<Document> = claims
                .iter()
                .map(|(orderid, account)| doc! { "_id": *orderid, "owner": *account })
                .collect();
            let mut taken_by_another = Vec::new();
            match self.insert_unordered(&self.orders, &orders).await {
                Ok(_) => {}
                Err(error) => match error.kind.as_ref() {
                    ErrorKind::InsertMany(InsertManyError {
                        write_errors: Some(errors),
                        write_concern_error: None,
                        ..
                    }) if errors.iter().all(|e| e.code == 11000) => {
                        taken_by_another = errors
                            .iter()
                            .filter_map(|e| claims.get(e.index).map(|(orderid, _)| *orderid))
                            .collect();
                    }
                    _ => return Err(StoreError::from(error)),
                },
            }
            for (orderid, account) in &claims {
                if !taken_by_another.contains(orderid) {
                    known.insert((*orderid).to_owned(), (*account).to_owned());
                }
            }
            if !taken_by_another.is_empty() {
                // The order exists with another owner (or two of the group's
                // claims raced): read who owns it.
                let mut cursor = self
                    .orders
                    .find(doc! { "_id": { "$in": &taken_by_another } })
                    .max_time(self.max_time)
                    .await?;
                while cursor.advance().await? {
                    let order = cursor.deserialize_current()?;
                    if let (Ok(id), Ok(owner)) = (order.get_str("_id"), order.get_str("owner")) {
                        known.insert(id.to_owned(), owner.to_owned());
                    }
                }
            }
            let mut owners = lock(&self.intake.owners);
            if owners.len() + known.len() > OWNERS_REMEMBERED {
                owners.clear();
            }
            owners.extend(known.iter().map(|(o, w)| (o.clone(), w.clone())));
        }
        Ok(group
            .iter()
            .map(|request| {
                let owner = known.get(&request.line.orderid)?;
                request
                    .requester
                    .may_manage(Some(owner))
                    .then(|| owner.clone())
            })
            .collect())
    }

    /// Takes the stock of each sku's lines of the group (in `by_sku`'s
    /// order): with MongoDB 8.0 and more than one sku, in one `update` of a
    /// statement per sku and one `find` of where they went; else one
    /// `findAndModify` per sku. A sku whose batches have no room for all its
    /// lines at once takes them line by line.
    async fn take_stock_of_group(
        &self,
        by_sku: &HashMap<&str, Vec<Taking<'_>>>,
    ) -> Vec<Result<Vec<Stock>, StoreError>> {
        if by_sku.len() < 2 || !self.sorted_updates().await {
            let each = by_sku
                .iter()
                .map(|(sku, lines)| self.take_stock_for(sku, lines));
            return join_all(each).await;
        }
        let taken = match self.take_stock_in_one_update(by_sku).await {
            Ok(taken) => taken,
            Err(error) => return by_sku.iter().map(|_| Err(copy_error(&error))).collect(),
        };
        let each = by_sku
            .iter()
            .zip(taken)
            .map(|((sku, lines), taken)| async move {
                let taken = taken?;
                let missed: Vec<Taking<'_>> = lines
                    .iter()
                    .zip(&taken)
                    .filter(|(_, stock)| stock.is_none())
                    .map(|(line, _)| line.clone())
                    .collect();
                let mut retried = match missed.is_empty() {
                    true => Vec::new(),
                    false => self.take_stock_line_by_line(sku, &missed).await?,
                }
                .into_iter();
                Ok(taken
                    .into_iter()
                    .map(|stock| stock.or_else(|| retried.next()).unwrap_or(Stock::NoRoom))
                    .collect())
            });
        join_all(each).await
    }

    async fn sorted_updates(&self) -> bool {
        let probe = self.intake.sorted_updates.get_or_try_init(|| async {
            let hello = self.database.run_command(doc! { "hello": 1 }).await?;
            let wire = hello.get_i32("maxWireVersion").unwrap_or_default();
            Ok::<_, mongodb::error::Error>(wire >= SORTED_UPDATE_WIRE_VERSION)
        });
        // Unknown for now (the server did not answer): the safe way.
        probe.await.is_ok_and(|sorted| *sorted)
    }

    /// One `update` with a statement per sku, each the pipeline of
    /// [`Self::take_stock`] on the preferred batch with room (`sort`), then
    /// one `find` of the batches holding each sku's first intent. Per sku and
    /// line: where its stock was taken, or None where no batch had room for
    /// all the sku's lines (to try line by line); per sku, the error of a
    /// statement that failed.
    async fn take_stock_in_one_update(
        &self,
        by_sku: &HashMap<&str, Vec<Taking<'_>>>,
    ) -> Result<Vec<Result<Vec<Option<Stock>>, StoreError>>, StoreError> {
        let mut statements = Vec::with_capacity(by_sku.len());
        let mut piggybacks = Vec::with_capacity(by_sku.len());
        for (sku, lines) in by_sku {
            let (filter, pipeline, piggyback) = self.stock_step(sku, lines);
            statements.push(doc! {
                "q": filter,
                "u": pipeline,
                "sort": { "eta": 1, "_id": 1 },
                "multi": false,
            });
            piggybacks.push(piggyback);
        }
        let max_time_ms = i64::try_from(self.max_time.as_millis()).unwrap_or(i64::MAX);
        let mut session = self.sessions.take().await?;
        let reply = self
            .database
            .run_command(doc! {
                "update": BATCHES,
                "updates": statements,
                "ordered": false,
                "maxTimeMS": max_time_ms,
            })
            .session(session.session())
            .await;
        let reply = session.check(reply)?;
        let applied = match reply.get("nModified") {
            Some(Bson::Int32(n)) => i64::from(*n),
            Some(Bson::Int64(n)) => *n,
            _ => i64::MAX,
        };
        // Statements that failed left no intent, and did not find "no room".
        let mut failed: HashMap<usize, String> = HashMap::new();
        for error in reply.get_array("writeErrors").into_iter().flatten() {
            let Some(error) = error.as_document() else {
                continue;
            };
            let index = error
                .get_i32("index")
                .ok()
                .and_then(|i| usize::try_from(i).ok());
            let message = error.get_str("errmsg").unwrap_or("a statement failed");
            if let Some(index) = index {
                failed.insert(index, message.to_owned());
            }
        }
        let firsts: Vec<String> = by_sku
            .values()
            .map(|lines| intent_field(&lines[0].id))
            .collect();
        let skus: Vec<&str> = by_sku.keys().copied().collect();
        let holding: Vec<Document> = firsts
            .iter()
            .map(|field| doc! { field: { "$exists": true } })
            .collect();
        let projection: Document = firsts
            .iter()
            .map(|field| (format!("{field}.s"), Bson::Int32(1)))
            .collect();
        // A `find` command rather than a cursor, which would cost the driver
        // a task of its own: each intent is in one batch, so one batch of
        // answers holds them all.
        let found = self
            .database
            .run_command(doc! {
                "find": BATCHES,
                "filter": { "sku": { "$in": &skus }, "$or": holding },
                "projection": projection,
                "batchSize": i64::try_from(skus.len()).unwrap_or(i64::MAX),
                "singleBatch": true,
                "maxTimeMS": max_time_ms,
            })
            .session(session.session())
            .await;
        let found = session.check(found)?;
        let found: Vec<&Document> = found
            .get_document("cursor")
            .and_then(|cursor| cursor.get_array("firstBatch"))
            .map_err(|_| StoreError("a find answered without cursor.firstBatch".into()))?
            .iter()
            .filter_map(Bson::as_document)
            .collect();
        let mut taken = Vec::with_capacity(by_sku.len());
        for (index, ((sku, lines), piggyback)) in by_sku.iter().zip(piggybacks).enumerate() {
            if let Some(message) = failed.remove(&index) {
                taken.push(Err(StoreError(message.into())));
                continue;
            }
            let id = lines[0].id.to_hex();
            let held = found.iter().find_map(|batch| {
                let intent = batch.get_document("pending").ok()?.get_document(&id).ok()?;
                Some((batch.get_str("_id").ok()?, intent.get_i64("s").ok()?))
            });
            taken.push(Ok(match held {
                Some((reference, first)) => {
                    self.forget_piggybacked(sku, reference, &piggyback);
                    positions(reference, first, lines.len())
                        .into_iter()
                        .map(Some)
                        .collect()
                }
                None => vec![None; lines.len()],
            }));
        }
        let held = taken
            .iter()
            .flatten()
            .filter(|stock| stock.iter().any(Option::is_some))
            .count();
        if applied > held as i64 {
            // A statement applied whose intents are gone already: the
            // recovery pass finished them (this instance's lease had lapsed).
            // Its lines are stored, or gave their stock back to a repeat.
            self.stored_by_recovery(by_sku, &mut taken).await?;
        }
        Ok(taken)
    }

    /// Where the lines of missed skus stand if the recovery pass stored them
    /// (under their own ids); the others stay missed.
    async fn stored_by_recovery(
        &self,
        by_sku: &HashMap<&str, Vec<Taking<'_>>>,
        taken: &mut [Result<Vec<Option<Stock>>, StoreError>],
    ) -> Result<(), StoreError> {
        let missed: Vec<ObjectId> = by_sku
            .values()
            .zip(taken.iter())
            .filter_map(|(lines, stock)| Some((lines, stock.as_ref().ok()?)))
            .filter(|(_, stock)| stock.iter().all(Option::is_none))
            .flat_map(|(lines, _)| lines.iter().map(|line| line.id))
            .collect();
        let stored: Vec<LineDocument> = self
            .lines
            .find(doc! { "_id": { "$in": missed } })
            .max_time(self.max_time)
            .await?
            .try_collect()
            .await?;
        for (lines, stock) in by_sku.values().zip(taken.iter_mut()) {
            let Ok(stock) = stock else {
                continue;
            };
            for (line, stock) in lines.iter().zip(stock.iter_mut()) {
                let document = stored.iter().find(|document| document.id == line.id);
                if let Some(LineDocument {
                    batchref: Some(batchref),
                    batch_seq: Some(seq),
                    ..
                }) = document
                {
                    *stock = Some(Stock::Taken {
                        batchref: batchref.clone(),
                        seq: *seq,
                    });
                }
            }
        }
        Ok(())
    }

    /// Takes the stock of a sku's lines of the group, all from one batch if
    /// one has room for them all, else line by line.
    async fn take_stock_for(
        &self,
        sku: &str,
        lines: &[Taking<'_>],
    ) -> Result<Vec<Stock>, StoreError> {
        match self.take_stock(sku, lines).await? {
            Some((batchref, last_seq)) => {
                let first = last_seq - lines.len() as i64 + 1;
                Ok(positions(&batchref, first, lines.len()))
            }
            None => self.take_stock_line_by_line(sku, lines).await,
        }
    }

    /// After the lines of a sku found no batch with room for them all: one
    /// `findAndModify` per line.
    async fn take_stock_line_by_line(
        &self,
        sku: &str,
        lines: &[Taking<'_>],
    ) -> Result<Vec<Stock>, StoreError> {
        if lines.len() == 1 {
            return Ok(vec![Stock::NoRoom]);
        }
        let mut stock = Vec::with_capacity(lines.len());
        for line in lines {
            stock.push(
                match self.take_stock(sku, std::slice::from_ref(line)).await? {
                    Some((batchref, seq)) => Stock::Taken { batchref, seq },
                    None => Stock::NoRoom,
                },
            );
        }
        Ok(stock)
    }

    /// One `findAndModify` of [`Self::stock_step`]: the preferred batch of
    /// the sku with room for all of `lines` (warehouse stock first, then the
    /// earliest eta, then the reference: the domain's order, which MongoDB's
    /// sort gives since null sorts before dates). Returns the batch and the
    /// position of the last line.
    async fn take_stock(
        &self,
        sku: &str,
        lines: &[Taking<'_>],
    ) -> Result<Option<(String, i64)>, StoreError> {
        let (filter, pipeline, piggyback) = self.stock_step(sku, lines);
        let mut session = self.sessions.take().await?;
        let taken = self
            .batches
            .clone_with_type::<Document>()
            .find_one_and_update(filter, pipeline)
            .max_time(self.max_time)
            .sort(doc! { "eta": 1, "_id": 1 })
            .projection(doc! { "allocation_seq": 1 })
            .return_document(ReturnDocument::After)
            .session(session.session())
            .await;
        let taken = session.check(taken)?;
        let Some(batch) = taken else {
            return Ok(None);
        };
        let (Ok(reference), Ok(last_seq)) = (batch.get_str("_id"), batch.get_i64("allocation_seq"))
        else {
            return Err(corrupt("allocation_seq", &format!("a batch of sku {sku}")));
        };
        self.forget_piggybacked(sku, reference, &piggyback);
        Ok(Some((reference.to_owned(), last_seq)))
    }

    /// The filter and pipeline of a stock step for a sku's lines: a batch of
    /// the sku with room for all of them gives their quantity and records an
    /// intent for each, and removes in passing the intents of lines stored
    /// since (returned, to be forgotten once the step says which batch it hit).
    fn stock_step(
        &self,
        sku: &str,
        lines: &[Taking<'_>],
    ) -> (Document, Vec<Document>, Vec<(String, ObjectId)>) {
        let total: i64 = lines.iter().map(|t| i64::from(t.line.qty)).sum();
        let count = lines.len() as i64;
        let mut set = doc! {
            "available_quantity": { "$subtract": ["$available_quantity", total] },
            "allocation_seq": { "$add": ["$allocation_seq", count] },
        };
        for (n, taking) in lines.iter().enumerate() {
            set.insert(
                intent_field(&taking.id),
                doc! {
                    "o": { "$literal": &taking.line.orderid },
                    "q": i64::from(taking.line.qty),
                    "w": { "$literal": &taking.owner },
                    "s": { "$add": ["$allocation_seq", n as i64 + 1] },
                    "i": self.instance.id(),
                },
            );
        }
        let mut pipeline = vec![doc! { "$set": set }];
        let piggyback: Vec<(String, ObjectId)> = lock(&self.intake.confirmed)
            .get(sku)
            .map(|batches| {
                batches
                    .iter()
                    .flat_map(|(batch, ids)| ids.iter().map(move |id| (batch.clone(), *id)))
                    .take(PIGGYBACK_LIMIT)
                    .collect()
            })
            .unwrap_or_default();
        if !piggyback.is_empty() {
            let fields: Vec<String> = piggyback.iter().map(|(_, id)| intent_field(id)).collect();
            pipeline.push(doc! { "$unset": fields });
        }
        let filter = doc! { "sku": sku, "available_quantity": { "$gte": total } };
        (filter, pipeline, piggyback)
    }

    /// The piggybacked intents a stock step removed from `reference` are no
    /// longer to remove.
    fn forget_piggybacked(&self, sku: &str, reference: &str, piggyback: &[(String, ObjectId)]) {
        if piggyback.is_empty() {
            return;
        }
        let removed: HashSet<ObjectId> = piggyback
            .iter()
            .filter(|(batch, _)| batch == reference)
            .map(|(_, id)| *id)
            .collect();
        if let Some(ids) = lock(&self.intake.confirmed)
            .get_mut(sku)
            .and_then(|batches| batches.get_mut(reference))
        {
            ids.retain(|id| !removed.contains(id));
        }
    }

    /// One unordered `insert` of `documents`, in a kept session.
    async fn insert_unordered<T: Serialize + Send + Sync>(
        &self,
        collection: &Collection<T>,
        documents: &[T],
    ) -> mongodb::error::Result<InsertManyResult> {
        let mut session = self.sessions.take().await?;
        let inserted = collection
            .insert_many(documents)
            .ordered(false)
            .session(session.session())
            .await;
        session.check(inserted)
    }

    /// One `insert` of the group's lines whose stock was taken. A line whose
    /// (order, sku) was acknowledged meanwhile by another request gives its
    /// stock back and is answered as the stored one stands.
    async fn store_lines<'a>(
        &self,
        stored: &'a [(&'a Taking<'a>, String, i64)],
    ) -> Vec<(&'a Taking<'a>, Result<AllocateStep, StoreError>)> {
        if stored.is_empty() {
            return Vec::new();
        }
        let documents: Vec<LineDocument> = stored
            .iter()
            .map(|(taking, batchref, seq)| {
                LineDocument::allocated(taking.id, taking.line, batchref, *seq, &taking.owner)
            })
            .collect();
        // Lines already stored keep their id: a retry finds them as
        // duplicates of themselves.
        let mut attempt = 0;
        let duplicates: Vec<usize> = loop {
            let error = match self.insert_unordered(&self.lines, &documents).await {
                Ok(_) => break Vec::new(),
                Err(error) => error,
            };
            if let ErrorKind::InsertMany(InsertManyError {
                write_errors: Some(errors),
                write_concern_error: None,
                ..
            }) = error.kind.as_ref()
                && errors.iter().all(|e| e.code == 11000)
            {
                break errors.iter().map(|e| e.index).collect();
            }
            attempt += 1;
            if attempt == 3 {
                // Their intents stay in the batches; the recovery pass
                // stores the lines (or gives the stock back). The client
                // may ask again.
                let error = StoreError::from(error);
                return stored
                    .iter()
                    .map(|(taking, ..)| (*taking, Err(copy_error(&error))))
                    .collect();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let mut outcomes: Vec<(&Taking<'_>, Result<AllocateStep, StoreError>)> = Vec::new();
        let dup_ids: Vec<ObjectId> = duplicates.iter().map(|&i| stored[i].0.id).collect();
        let ours = match self.stored_ids(&dup_ids).await {
            Ok(ours) => ours,
            Err(error) => {
                return stored
                    .iter()
                    .map(|(taking, ..)| (*taking, Err(copy_error(&error))))
                    .collect();
            }
        };
        let mut repeats = Vec::new();
        for (index, (taking, batchref, _)) in stored.iter().enumerate() {
            if duplicates.contains(&index) && !ours.contains(&taking.id) {
                repeats.push((*taking, batchref.as_str()));
            } else {
                self.confirm(&taking.line.sku, batchref, taking.id);
                outcomes.push((*taking, Ok(AllocateStep::Taken(batchref.clone()))));
            }
        }
        let answers = join_all(repeats.iter().map(|(taking, batchref)| async move {
            self.give_back(batchref, taking.id, i64::from(taking.line.qty))
                .await?;
            match self.line(&taking.line.orderid, &taking.line.sku).await? {
                Some(existing) => Ok(AllocateStep::AlreadyAcknowledged(existing)),
                // Deallocated in the meantime: the client may try again.
                None => Err(unavailable_msg("the order line changed meanwhile")),
            }
        }))
        .await;
        outcomes.extend(repeats.iter().map(|(taking, _)| *taking).zip(answers));
        outcomes
    }

    fn confirm(&self, sku: &str, batchref: &str, id: ObjectId) {
        lock(&self.intake.confirmed)
            .entry(sku.to_owned())
            .or_default()
            .entry(batchref.to_owned())
            .or_default()
            .push(id);
    }

    /// Which of these line ids are stored.
    pub(super) async fn stored_ids(
        &self,
        ids: &[ObjectId],
    ) -> Result<HashSet<ObjectId>, StoreError> {
        if ids.is_empty() {
            return Ok(HashSet::new());
        }
        let mut cursor = self
            .lines
            .clone_with_type::<Document>()
            .find(doc! { "_id": { "$in": ids } })
            .projection(doc! { "_id": 1 })
            .max_time(self.max_time)
            .await?;
        let mut found = HashSet::new();
        while cursor.advance().await? {
            let document = cursor.deserialize_current()?;
            if let Ok(id) = document.get_object_id("_id") {
                found.insert(id);
            }
        }
        Ok(found)
    }

    /// Gives an intent's stock back to its batch and removes the intent, in
    /// one write that happens once whoever asks (it only applies while the
    /// intent is there).
    pub(super) async fn give_back(
        &self,
        batchref: &str,
        id: ObjectId,
        qty: i64,
    ) -> Result<bool, StoreError> {
        let field = intent_field(&id);
        let updated = self
            .batches
            .update_one(
                doc! { "_id": batchref, &field: { "$exists": true } },
                doc! {
                    "$inc": { "available_quantity": qty },
                    "$unset": { &field: "" },
                },
            )
            .await?;
        Ok(updated.modified_count == 1)
    }

    /// Removes the intents of stored lines from their batches: one `update`
    /// with a statement per batch. Run on the lease's beat (not in the loop
    /// that keeps the lease), for intents older than [`FLUSH_AFTER`]; under
    /// load most are removed in passing by the next stock step.
    pub async fn flush_confirmed(&self) -> Result<usize, StoreError> {
        let by_batch = self.intake.take_confirmed();
        if by_batch.is_empty() {
            return Ok(0);
        }
        let count = by_batch.values().map(Vec::len).sum();
        let updates: Vec<Document> = by_batch
            .iter()
            .map(|(batch, ids)| {
                let fields: Vec<Bson> = ids
                    .iter()
                    .map(|id| Bson::String(intent_field(id)))
                    .collect();
                doc! {
                    "q": { "_id": batch },
                    "u": [
                        { "$unset": fields },
                        { "$set": { "pending": { "$cond": [
                            { "$eq": ["$pending", {}] }, "$$REMOVE", "$pending",
                        ] } } },
                    ],
                }
            })
            .collect();
        let sent = self
            .database
            .run_command(doc! {
                "update": super::documents::BATCHES,
                "updates": updates,
                "ordered": false,
                "maxTimeMS": max_time_ms(self.max_time),
            })
            .await;
        if let Err(error) = sent {
            self.intake.restore_confirmed(by_batch);
            return Err(StoreError::from(error));
        }
        Ok(count)
    }
}

fn timed_out(limit: Duration) -> StoreError {
    StoreError(Box::new(crate::adapters::deadline::TimedOut {
        operation: "an allocation",
        limit,
    }))
}

fn max_time_ms(limit: Duration) -> i64 {
    i64::try_from(limit.as_millis()).unwrap_or(i64::MAX)
}

fn unavailable_msg(message: &str) -> StoreError {
    StoreError(message.to_owned().into())
}

/// The same failure again, for each request of a group it struck.
fn copy_error(error: &StoreError) -> StoreError {
    unavailable_msg(&format!("{error}: {}", error.0))
}

fn failed_for_all(n: usize, error: &StoreError) -> Vec<Result<AllocateStep, StoreError>> {
    (0..n).map(|_| Err(copy_error(error))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(
        orderid: &str,
        sku: &str,
    ) -> (Request, oneshot::Receiver<Result<AllocateStep, StoreError>>) {
        let (reply, answer) = oneshot::channel();
        let request = Request {
            line: OrderLine::new(orderid, sku, 1),
            requester: Requester {
                account: "someone".to_owned(),
                admin: false,
            },
            reply,
        };
        (request, answer)
    }

    fn keys(group: &[Request]) -> Vec<(&str, &str)> {
        group
            .iter()
            .map(|r| (r.line.orderid.as_str(), r.line.sku.as_str()))
            .collect()
    }

    #[test]
    fn a_group_holds_one_request_per_order_line_in_arrival_order() {
        let intake = Intake::new(1);
        let mut answers = Vec::new();
        for (orderid, sku) in [
            ("o1", "a"),
            ("o1", "b"),
            ("o1", "a"),
            ("o2", "a"),
            ("o1", "a"),
        ] {
            let (request, answer) = request(orderid, sku);
            lock(&intake.queue).push_back(request);
            answers.push(answer);
        }
        let first = intake.next_group();
        assert_eq!(keys(&first), [("o1", "a"), ("o1", "b"), ("o2", "a")]);
        // The repeats wait for the next group, in their order.
        let second = intake.next_group();
        assert_eq!(keys(&second), [("o1", "a")]);
        let third = intake.next_group();
        assert_eq!(keys(&third), [("o1", "a")]);
        assert!(intake.next_group().is_empty());
    }

    #[test]
    fn a_request_whose_caller_stopped_waiting_is_left_out() {
        let intake = Intake::new(1);
        let (gone, answer) = request("o1", "a");
        drop(answer);
        let (kept, _answer) = request("o2", "a");
        lock(&intake.queue).extend([gone, kept]);
        assert_eq!(keys(&intake.next_group()), [("o2", "a")]);
    }

    #[test]
    fn a_group_is_bounded() {
        let intake = Intake::new(1);
        let mut answers = Vec::new();
        for n in 0..GROUP_LIMIT + 5 {
            let (request, answer) = request(&format!("o{n}"), "a");
            lock(&intake.queue).push_back(request);
            answers.push(answer);
        }
        assert_eq!(intake.next_group().len(), GROUP_LIMIT);
        assert_eq!(intake.next_group().len(), 5);
    }

    #[test]
    fn flushed_intents_that_could_not_be_removed_wait_for_the_next_flush() {
        let intake = Intake::new(1);
        let young = ObjectId::new();
        let id = ObjectId::from_parts(1_700_000_000, [0; 5], [0; 3]);
        lock(&intake.confirmed)
            .entry("sku".to_owned())
            .or_default()
            .entry("batch".to_owned())
            .or_default()
            .extend([id, young]);
        // The young one is left for the next stock step to remove in passing.
        let taken = intake.take_confirmed();
        assert_eq!(taken, HashMap::from([("batch".to_owned(), vec![id])]));
        assert!(intake.take_confirmed().is_empty());
        intake.restore_confirmed(taken.clone());
        assert_eq!(intake.take_confirmed(), taken);
    }
}
