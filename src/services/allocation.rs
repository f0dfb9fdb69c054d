//! Allocation use cases and the repository port they need.
//!
//! Several processes may serve requests against the same store, so no use case
//! trusts what it read: stock is only ever taken or given back by an atomic
//! repository step that also records where the order line stands. A step
//! that dies half-way leaves nothing behind; a use case made of several steps
//! (a shrink, filling backorders) leaves a state that [`recover`] completes.

use std::collections::BTreeSet;
use std::future::Future;

use chrono::NaiveDate;

use crate::domain::allocation::{
    AcknowledgedLine, AllocationError, Batch, LineStatus, OrderLine, Requester,
};

/// How many lines one atomic step of a shrink gives up. A shrink that must
/// give up more takes several steps; between two of them the batch is left
/// over-allocated, which [`recover`] notices and finishes.
pub const GIVE_UP_STEP: usize = 100;

/// How many backorders of a sku one call of [`fill_backorders`] allocates at
/// most, so that a request that brought stock stays bounded; the periodic
/// [`recover`] pass serves the rest.
pub const FILL_LIMIT: usize = 200;

/// How many of an order's lines [`allocations_for_order`] returns at most.
pub const ORDER_LINES_LIMIT: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum RepositoryError {
    #[error("a batch with reference {0} already exists")]
    DuplicateReference(String),
    #[error("the batch store is unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// What an atomic allocation step did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Allocated {
    /// Took the line's quantity from this batch and recorded the line there.
    Taken(String),
    /// No batch of the sku has room; nothing changed.
    NoRoom,
    /// The line was acknowledged before; nothing changed.
    AlreadyAcknowledged(AcknowledgedLine),
    /// The order belongs to another account; nothing changed.
    NotOwner,
}

/// What an atomic step to allocate a waiting line did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Filled {
    /// The line now draws from this batch.
    Taken(String),
    /// No batch of the sku has room for it; nothing changed.
    NoRoom,
    /// The line is no longer waiting (filled or cancelled meanwhile).
    NotWaiting,
}

/// Whether a sku has room for a quantity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stock {
    /// No batch has the sku.
    NoSuchSku,
    /// No batch of the sku has that much available.
    Short,
    /// A batch of the sku has that much available.
    Enough,
}

impl Stock {
    /// From the most that one batch of the sku has available (None: no batch).
    pub fn of(most_available: Option<i64>, qty: u32) -> Self {
        match most_available {
            None => Self::NoSuchSku,
            Some(most) if most >= i64::from(qty) => Self::Enough,
            Some(_) => Self::Short,
        }
    }
}

/// A waiting line and its place in the queue (oldest first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backorder {
    pub line: AcknowledgedLine,
    /// Opaque; positions order as strings, oldest first.
    pub position: String,
}

/// A line drawing from a batch and its place among the batch's lines (oldest
/// first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchLine {
    pub orderid: String,
    pub qty: u32,
    pub position: u64,
}

/// Where batches and order lines live. Every method is one atomic step: the
/// store applies it whole or not at all (MongoDB: one transaction), so use
/// cases stay correct with many processes sharing one store and with a crash
/// between any two steps.
///
/// The methods return `impl Future + Send` (implementors may write `async fn`)
/// so that the use cases' futures are `Send` and can run on a multi-threaded
/// runtime.
pub trait AllocationRepository: Send + Sync {
    /// Stores a new batch; Err(RepositoryError::DuplicateReference) if the reference exists.
    fn add_batch(&self, batch: &Batch) -> impl Future<Output = Result<(), RepositoryError>> + Send;

    fn batch(
        &self,
        reference: &str,
    ) -> impl Future<Output = Result<Option<Batch>, RepositoryError>> + Send;

    /// A page of batches ordered by reference, optionally of one sku, strictly after `after`.
    fn batches(
        &self,
        sku: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Batch>, RepositoryError>> + Send;

    /// Whether a batch of the sku has room for `qty` units.
    fn stock(
        &self,
        sku: &str,
        qty: u32,
    ) -> impl Future<Output = Result<Stock, RepositoryError>> + Send;

    /// Takes the line's quantity from the preferred batch of its sku that has
    /// room (the order of [`crate::domain::allocation::choose_batch`]) and
    /// records the line as allocated there, unless the line (orderid, sku) was
    /// acknowledged before.
    ///
    /// The order's owner is decided in the same atomic step: the requester
    /// becomes the owner of an order that has none, even when another account
    /// races to allocate the first line of the same order (on another sku);
    /// a non-admin requester who does not own the order gets
    /// [`Allocated::NotOwner`]. The line records the order's owner.
    fn allocate(
        &self,
        line: &OrderLine,
        requester: &Requester,
    ) -> impl Future<Output = Result<Allocated, RepositoryError>> + Send;

    fn line(
        &self,
        orderid: &str,
        sku: &str,
    ) -> impl Future<Output = Result<Option<AcknowledgedLine>, RepositoryError>> + Send;

    /// The lines of an order, allocated or backordered, at most `limit`.
    fn lines_of_order(
        &self,
        orderid: &str,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<AcknowledgedLine>, RepositoryError>> + Send;

    /// The lines of one sku held by these orders (at most one each).
    fn lines_of_sku(
        &self,
        sku: &str,
        orderids: &[String],
    ) -> impl Future<Output = Result<Vec<AcknowledgedLine>, RepositoryError>> + Send;

    /// Forgets the line and, if it was allocated, gives its stock back to its
    /// batch. None if there was no such line, or none the requester may manage.
    fn remove_line(
        &self,
        orderid: &str,
        sku: &str,
        requester: &Requester,
    ) -> impl Future<Output = Result<Option<AcknowledgedLine>, RepositoryError>> + Send;

    /// Sets the batch's purchased quantity (see
    /// [`Batch::change_purchased_quantity`]); the batch as changed, or None if
    /// there is no such batch.
    fn change_purchased_quantity(
        &self,
        reference: &str,
        qty: u32,
    ) -> impl Future<Output = Result<Option<Batch>, RepositoryError>> + Send;

    /// If the batch holds more than it has, backorders its most recent lines
    /// (at most `max_lines`, chosen by
    /// [`crate::domain::allocation::lines_to_give_up`]) and takes their stock
    /// back; returns the lines given up.
    fn give_up_recent_lines(
        &self,
        reference: &str,
        max_lines: usize,
    ) -> impl Future<Output = Result<Vec<OrderLine>, RepositoryError>> + Send;

    /// References of batches that hold more than they have, at most `limit`.
    fn over_allocated_batches(
        &self,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<String>, RepositoryError>> + Send;

    /// Waiting lines, oldest first, optionally of one sku, strictly after
    /// position `after`.
    fn backorders(
        &self,
        sku: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Backorder>, RepositoryError>> + Send;

    /// Allocates a waiting line like [`AllocationRepository::allocate`] would.
    fn fill_backorder(
        &self,
        line: &OrderLine,
    ) -> impl Future<Output = Result<Filled, RepositoryError>> + Send;

    /// The lines drawing from a batch, oldest first, strictly after position `after`.
    fn batch_lines(
        &self,
        reference: &str,
        after: Option<u64>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<BatchLine>, RepositoryError>> + Send;
}

#[derive(Debug, thiserror::Error)]
pub enum AddBatchError {
    #[error("Batch {0} already exists")]
    DuplicateBatch(String),
    #[error(transparent)]
    Store(RepositoryError),
}

#[derive(Debug, thiserror::Error)]
pub enum AllocateError {
    #[error(transparent)]
    Allocation(#[from] AllocationError),
    /// Another account's order: answered as if it did not exist, so that its
    /// id is not confirmed.
    #[error("Order {0} not found")]
    OrderNotFound(String),
    #[error(transparent)]
    Store(#[from] RepositoryError),
}

#[derive(Debug, thiserror::Error)]
pub enum DeallocateError {
    #[error("Order line {orderid} for sku {sku} is not allocated")]
    NotAllocated { orderid: String, sku: String },
    #[error(transparent)]
    Store(#[from] RepositoryError),
}

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("Batch {0} not found")]
    BatchNotFound(String),
    #[error(transparent)]
    Store(#[from] RepositoryError),
}

#[derive(Debug, thiserror::Error)]
pub enum OrderAllocationsError {
    #[error("Order {0} has no allocations")]
    NoAllocations(String),
    #[error(transparent)]
    Store(#[from] RepositoryError),
}

/// Where an allocation request left its line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Allocation {
    /// The line draws from this batch.
    Allocated(String),
    /// The line was acknowledged before and now waits for stock.
    Backordered,
}

/// What changing a batch's quantity did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuantityChange {
    /// The batch as stored after the change and the re-allocations.
    pub batch: Batch,
    /// Lines this change allocated, each with its batch: lines it displaced
    /// that found room (possibly back in this batch), and waiting lines that
    /// the new stock took.
    pub reallocated: Vec<(OrderLine, String)>,
    /// Lines this change displaced that found no room: they wait for stock.
    pub backordered: Vec<OrderLine>,
}

/// What one [`recover`] pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Lines that over-allocated batches gave up (a shrink that had not finished).
    pub backordered: usize,
    /// Waiting lines that were allocated.
    pub filled: usize,
    /// Where the next pass resumes its walk through the backorders.
    pub next_position: Option<String>,
}

/// Registers newly bought stock; waiting lines of the sku take it at once.
pub async fn add_batch<R: AllocationRepository>(
    repo: &R,
    reference: &str,
    sku: &str,
    purchased_quantity: u32,
    eta: Option<NaiveDate>,
) -> Result<Batch, AddBatchError> {
    let batch = Batch::new(reference, sku, purchased_quantity, eta);
    match repo.add_batch(&batch).await {
        Ok(()) => {}
        Err(RepositoryError::DuplicateReference(reference)) => {
            return Err(AddBatchError::DuplicateBatch(reference));
        }
        Err(error) => return Err(AddBatchError::Store(error)),
    }
    let filled = fill_backorders(repo, sku)
        .await
        .map_err(AddBatchError::Store)?;
    if filled.is_empty() {
        return Ok(batch);
    }
    Ok(repo
        .batch(reference)
        .await
        .map_err(AddBatchError::Store)?
        .unwrap_or(batch))
}

/// Allocates `line` to the preferred batch with room for it.
///
/// Idempotent: if the order's line for this sku was acknowledged before, its
/// batch is returned (or [`Allocation::Backordered`]) and nothing is written,
/// even if the quantity asked now differs (change a line by deallocating
/// first). A new line that finds no room is refused (`Out of stock`); only
/// lines the system acknowledged ever become backorders.
pub async fn allocate<R: AllocationRepository>(
    repo: &R,
    line: OrderLine,
    requester: &Requester,
) -> Result<Allocation, AllocateError> {
    match repo.allocate(&line, requester).await? {
        Allocated::Taken(batchref) => Ok(Allocation::Allocated(batchref)),
        Allocated::NotOwner => Err(not_yours(repo, line).await?),
        Allocated::AlreadyAcknowledged(existing)
            if !requester.may_manage(existing.owner.as_deref()) =>
        {
            Err(not_yours(repo, line).await?)
        }
        Allocated::AlreadyAcknowledged(existing) => Ok(match existing.status {
            LineStatus::Allocated { batchref } => Allocation::Allocated(batchref),
            LineStatus::Backordered => Allocation::Backordered,
        }),
        Allocated::NoRoom => match repo.stock(&line.sku, line.qty).await? {
            Stock::NoSuchSku => Err(AllocationError::InvalidSku(line.sku).into()),
            // Enough: stock came back since the step found none.
            Stock::Short | Stock::Enough => Err(AllocationError::OutOfStock(line.sku).into()),
        },
    }
}

/// The answer to a line of another account's order: what an order id nobody
/// holds would get, short of succeeding (then: not found). Nothing tells the
/// two apart but a line that would have been allocated; see docs/security.md.
async fn not_yours<R: AllocationRepository>(
    repo: &R,
    line: OrderLine,
) -> Result<AllocateError, RepositoryError> {
    Ok(match repo.stock(&line.sku, line.qty).await? {
        Stock::NoSuchSku => AllocationError::InvalidSku(line.sku).into(),
        Stock::Short => AllocationError::OutOfStock(line.sku).into(),
        Stock::Enough => AllocateError::OrderNotFound(line.orderid),
    })
}

/// Forgets the order's line for `sku`, allocated or backordered, and gives its
/// stock back; waiting lines of the sku take that stock at once.
pub async fn deallocate<R: AllocationRepository>(
    repo: &R,
    orderid: &str,
    sku: &str,
    requester: &Requester,
) -> Result<AcknowledgedLine, DeallocateError> {
    let removed = repo
        .remove_line(orderid, sku, requester)
        .await?
        .ok_or_else(|| DeallocateError::NotAllocated {
            orderid: orderid.to_owned(),
            sku: sku.to_owned(),
        })?;
    if removed.batchref().is_some() {
        fill_backorders(repo, sku).await?;
    }
    Ok(removed)
}

/// Sets a batch's purchased quantity. If the batch now holds more than it has,
/// its most recent lines are backordered (durably, before anything else), then
/// the sku's waiting lines, oldest first, are allocated where stock allows.
/// More stock also goes to waiting lines first.
pub async fn change_batch_quantity<R: AllocationRepository>(
    repo: &R,
    reference: &str,
    new_qty: u32,
) -> Result<QuantityChange, BatchError> {
    let not_found = || BatchError::BatchNotFound(reference.to_owned());
    let batch = repo
        .change_purchased_quantity(reference, new_qty)
        .await?
        .ok_or_else(not_found)?;
    let displaced = give_up_all(repo, reference).await?;
    let mut reallocated = fill_backorders(repo, &batch.sku).await?;
    // Another process (a recovery pass, a concurrent fill) may have served
    // some displaced lines meanwhile: report where each stands now.
    let unplaced: Vec<String> = displaced
        .iter()
        .filter(|line| !reallocated.iter().any(|(placed, _)| placed == *line))
        .map(|line| line.orderid.clone())
        .collect();
    let mut backordered = Vec::new();
    if !unplaced.is_empty() {
        // Deallocated meanwhile: no longer there, reported nowhere.
        for stands in repo.lines_of_sku(&batch.sku, &unplaced).await? {
            match stands.status {
                LineStatus::Allocated { batchref } => reallocated.push((stands.line, batchref)),
                LineStatus::Backordered => backordered.push(stands.line),
            }
        }
        // Most recent first, as displaced.
        backordered.sort_by_key(|line: &OrderLine| {
            unplaced.iter().position(|orderid| *orderid == line.orderid)
        });
    }
    let batch = repo.batch(reference).await?.ok_or_else(not_found)?;
    Ok(QuantityChange {
        batch,
        reallocated,
        backordered,
    })
}

/// Gives up the most recent lines of an over-allocated batch, one atomic step
/// at a time, until it holds no more than it has.
async fn give_up_all<R: AllocationRepository>(
    repo: &R,
    reference: &str,
) -> Result<Vec<OrderLine>, RepositoryError> {
    let mut displaced = Vec::new();
    loop {
        let step = repo.give_up_recent_lines(reference, GIVE_UP_STEP).await?;
        if step.is_empty() {
            return Ok(displaced);
        }
        displaced.extend(step);
    }
}

/// Allocates the sku's waiting lines, oldest first, while stock allows: it
/// stops at the first line that finds no room, so a line is never overtaken
/// by a younger one of the same sku. At most [`FILL_LIMIT`] lines per call.
pub async fn fill_backorders<R: AllocationRepository>(
    repo: &R,
    sku: &str,
) -> Result<Vec<(OrderLine, String)>, RepositoryError> {
    const PAGE: usize = 50;
    let mut filled = Vec::new();
    let mut after = None;
    while filled.len() < FILL_LIMIT {
        let page = repo.backorders(Some(sku), after.as_deref(), PAGE).await?;
        let Some(last) = page.last() else {
            break;
        };
        after = Some(last.position.clone());
        let full_page = page.len() == PAGE;
        for waiting in page {
            match repo.fill_backorder(&waiting.line.line).await? {
                Filled::Taken(batchref) => filled.push((waiting.line.line, batchref)),
                Filled::NotWaiting => {}
                Filled::NoRoom => return Ok(filled),
            }
        }
        if !full_page {
            break;
        }
    }
    Ok(filled)
}

/// Completes what a crash or a lost connection may have left half-done, and
/// serves backorders whose stock appeared without anybody filling them. Runs
/// at start-up and periodically; safe to run in any number of processes at
/// once, since every step it takes is atomic and checks its condition again.
///
/// - A batch that shrank but did not finish giving up lines is over-allocated:
///   its most recent lines are backordered.
/// - The backorders are walked from `resume_after` a page at a time; each
///   sku met is filled (oldest first).
pub async fn recover<R: AllocationRepository>(
    repo: &R,
    resume_after: Option<&str>,
) -> Result<Recovery, RepositoryError> {
    const PAGE: usize = 100;
    let mut recovery = Recovery::default();
    for reference in repo.over_allocated_batches(PAGE).await? {
        recovery.backordered += give_up_all(repo, &reference).await?.len();
    }
    let page = repo.backorders(None, resume_after, PAGE).await?;
    let skus: BTreeSet<&str> = page.iter().map(|b| b.line.line.sku.as_str()).collect();
    for sku in skus {
        recovery.filled += fill_backorders(repo, sku).await?.len();
    }
    recovery.next_position = (page.len() == PAGE)
        .then(|| page.last().map(|b| b.position.clone()))
        .flatten();
    Ok(recovery)
}

pub async fn get_batch<R: AllocationRepository>(
    repo: &R,
    reference: &str,
) -> Result<Batch, BatchError> {
    repo.batch(reference)
        .await?
        .ok_or_else(|| BatchError::BatchNotFound(reference.to_owned()))
}

/// A page of batches ordered by reference; pass the last reference of a page
/// as `after` to get the next one.
pub async fn list_batches<R: AllocationRepository>(
    repo: &R,
    sku: Option<&str>,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<Batch>, RepositoryError> {
    repo.batches(sku, after, limit).await
}

/// A page of the lines drawing from a batch, oldest first.
pub async fn batch_lines<R: AllocationRepository>(
    repo: &R,
    reference: &str,
    after: Option<u64>,
    limit: usize,
) -> Result<Vec<BatchLine>, BatchError> {
    let lines = repo.batch_lines(reference, after, limit).await?;
    if lines.is_empty() && repo.batch(reference).await?.is_none() {
        return Err(BatchError::BatchNotFound(reference.to_owned()));
    }
    Ok(lines)
}

/// A page of waiting lines, oldest first.
pub async fn list_backorders<R: AllocationRepository>(
    repo: &R,
    sku: Option<&str>,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<Backorder>, RepositoryError> {
    repo.backorders(sku, after, limit).await
}

/// Every line of an order, allocated or backordered, ordered by sku. Another
/// account's order is answered as if it had no line.
pub async fn allocations_for_order<R: AllocationRepository>(
    repo: &R,
    orderid: &str,
    requester: &Requester,
) -> Result<Vec<AcknowledgedLine>, OrderAllocationsError> {
    let mut lines = repo.lines_of_order(orderid, ORDER_LINES_LIMIT).await?;
    lines.retain(|line| requester.may_manage(line.owner.as_deref()));
    if lines.is_empty() {
        return Err(OrderAllocationsError::NoAllocations(orderid.to_owned()));
    }
    lines.sort_by(|a, b| a.line.sku.cmp(&b.line.sku));
    Ok(lines)
}

#[cfg(test)]
mod tests;
