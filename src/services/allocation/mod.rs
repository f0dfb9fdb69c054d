//! Allocation use cases, over the port `ports::allocation::AllocationRepository`;
//! their errors are in [`errors`].
//!
//! Several processes may serve requests against the same store, so no use case
//! trusts what it read: stock is only ever taken or given back by an atomic
//! repository step that also records where the order line stands. A step
//! that dies half-way leaves nothing behind; a use case made of several steps
//! (a shrink, filling backorders) leaves a state that [`recover`] completes.

use std::collections::BTreeSet;

use chrono::NaiveDate;

mod errors;

pub use self::errors::{AllocateError, BatchError, DeallocateError, OrderAllocationsError};
use super::StoreError;
use super::ports::allocation::{
    AddBatchError, AllocateStep, AllocationRepository, Backorder, BatchLine, FillStep, Stock,
};
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

/// Where an allocation request left its line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement {
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
    repo.add_batch(&batch).await?;
    let filled = fill_backorders(repo, sku).await?;
    if filled.is_empty() {
        return Ok(batch);
    }
    Ok(repo.batch(reference).await?.unwrap_or(batch))
}

/// Allocates `line` to the preferred batch with room for it.
///
/// Idempotent: if the order's line for this sku was acknowledged before, its
/// batch is returned (or [`Placement::Backordered`]) and nothing is written,
/// even if the quantity asked now differs (change a line by deallocating
/// first). A new line that finds no room is refused (`Out of stock`); only
/// lines the system acknowledged ever become backorders.
pub async fn allocate<R: AllocationRepository>(
    repo: &R,
    line: OrderLine,
    requester: &Requester,
) -> Result<Placement, AllocateError> {
    match repo.allocate(&line, requester).await? {
        AllocateStep::Taken(batchref) => Ok(Placement::Allocated(batchref)),
        AllocateStep::NotOwner => Err(not_yours(repo, line).await?),
        AllocateStep::AlreadyAcknowledged(existing)
            if !requester.may_manage(existing.owner.as_deref()) =>
        {
            Err(not_yours(repo, line).await?)
        }
        AllocateStep::AlreadyAcknowledged(existing) => Ok(match existing.status {
            LineStatus::Allocated { batchref } => Placement::Allocated(batchref),
            LineStatus::Backordered => Placement::Backordered,
        }),
        AllocateStep::NoRoom => match repo.stock(&line.sku, line.qty).await? {
            Stock::NoSuchSku => Err(AllocationError::InvalidSku(line.sku).into()),
            // Enough: stock came back since the step found none.
            Stock::Short | Stock::Enough => {
                repo.record_refusal(&line).await?;
                Err(AllocationError::OutOfStock(line.sku).into())
            }
        },
    }
}

/// The answer to a line of another account's order: what an order id nobody
/// holds would get, short of succeeding (then: not found). Nothing tells the
/// two apart but a line that would have been allocated; see docs/security.md.
async fn not_yours<R: AllocationRepository>(
    repo: &R,
    line: OrderLine,
) -> Result<AllocateError, StoreError> {
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
) -> Result<Vec<OrderLine>, StoreError> {
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
) -> Result<Vec<(OrderLine, String)>, StoreError> {
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
                FillStep::Taken(batchref) => filled.push((waiting.line.line, batchref)),
                FillStep::NotWaiting => {}
                FillStep::NoRoom => return Ok(filled),
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
) -> Result<Recovery, StoreError> {
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
) -> Result<Vec<Batch>, StoreError> {
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
) -> Result<Vec<Backorder>, StoreError> {
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
