//! Allocation use cases and the repository port they need.
//!
//! Several processes may serve requests against the same store, so no use case
//! trusts what it read: stock is only ever taken through a conditional write
//! that the store checks atomically, and a refused write means "read again".

use std::future::Future;

use chrono::NaiveDate;

use crate::domain::allocation::{AllocationError, Batch, OrderLine, choose_batch};

/// How often a use case re-reads and retries after losing a race for the same
/// stock, before it gives up and asks the client to retry. Bounded so that a
/// hot sku cannot keep a request busy forever.
pub const MAX_ATTEMPTS: usize = 8;

/// One allocated order line as seen from its order: which batch holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocation {
    pub sku: String,
    pub batchref: String,
    pub qty: u32,
}

impl Allocation {
    /// The line of order `orderid` in `batch`, if the batch holds one.
    pub fn in_batch(batch: &Batch, orderid: &str) -> Option<Self> {
        batch.allocation_for(orderid).map(|line| Self {
            sku: batch.sku.clone(),
            batchref: batch.reference.clone(),
            qty: line.qty,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RepositoryError {
    #[error("a batch with reference {0} already exists")]
    DuplicateReference(String),
    #[error("the batch store is unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Where batches live. Every write that could oversell is a single conditional
/// write that the implementation checks atomically, so use cases stay correct
/// with many processes sharing one store.
///
/// The methods return `impl Future + Send` (implementors may write `async fn`)
/// so that the use cases' futures are `Send` and can run on a multi-threaded
/// runtime.
pub trait BatchRepository: Send + Sync {
    /// Stores a new batch; Err(RepositoryError::DuplicateReference) if the reference exists.
    fn add(&self, batch: &Batch) -> impl Future<Output = Result<(), RepositoryError>> + Send;

    fn get(
        &self,
        reference: &str,
    ) -> impl Future<Output = Result<Option<Batch>, RepositoryError>> + Send;

    /// Every batch of a sku (the candidates for an allocation).
    fn for_sku(
        &self,
        sku: &str,
    ) -> impl Future<Output = Result<Vec<Batch>, RepositoryError>> + Send;

    /// A page of batches ordered by reference, optionally of one sku, strictly after `after`.
    fn list(
        &self,
        sku: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Batch>, RepositoryError>> + Send;

    /// Atomically appends `line` to batch `reference` only if, at that instant,
    /// the batch still has available >= line.qty and does not hold the line;
    /// bumps version. Ok(false) when the condition failed (someone else took the
    /// stock or the batch is gone). This single conditional write is what keeps
    /// stock from being oversold across processes.
    fn allocate_if_available(
        &self,
        reference: &str,
        line: &OrderLine,
    ) -> impl Future<Output = Result<bool, RepositoryError>> + Send;

    /// Atomically removes the line (orderid) from batch `reference`; returns the
    /// removed line, or None if it was not there.
    fn deallocate(
        &self,
        reference: &str,
        orderid: &str,
    ) -> impl Future<Output = Result<Option<OrderLine>, RepositoryError>> + Send;

    /// The batch holding order line (orderid, sku), if any.
    fn find_allocation(
        &self,
        orderid: &str,
        sku: &str,
    ) -> impl Future<Output = Result<Option<Batch>, RepositoryError>> + Send;

    /// Every allocation of an order across skus: (sku, batch reference, qty).
    fn allocations_for_order(
        &self,
        orderid: &str,
    ) -> impl Future<Output = Result<Vec<Allocation>, RepositoryError>> + Send;

    /// Writes purchased_quantity and allocations of `batch` only if the stored
    /// version still equals batch.version (then bumps it); Ok(false) on a
    /// version conflict.
    fn save_if_unchanged(
        &self,
        batch: &Batch,
    ) -> impl Future<Output = Result<bool, RepositoryError>> + Send;
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
    /// Every attempt lost the race for the chosen batch's stock.
    #[error("Too much contention for sku {0}; retry")]
    Contention(String),
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
pub enum ChangeQuantityError {
    #[error("Batch {0} not found")]
    BatchNotFound(String),
    /// Every attempt to save the new quantity met a newer version of the batch.
    #[error("Too much contention for batch {0}; retry")]
    Contention(String),
    /// The new quantity is saved, but re-allocating the lines it displaced
    /// failed for a reason other than missing stock. `unplaced` are the
    /// displaced lines that are now allocated nowhere, so that they are not lost
    /// silently.
    #[error("Batch {reference} was changed, but {} displaced order lines could not be re-allocated", unplaced.len())]
    Reallocation {
        reference: String,
        unplaced: Vec<OrderLine>,
        #[source]
        source: AllocateError,
    },
    #[error(transparent)]
    Store(#[from] RepositoryError),
}

#[derive(Debug, thiserror::Error)]
pub enum GetBatchError {
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

/// What changing a batch's quantity did to the lines it had to give up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuantityChange {
    /// The batch as stored after the change and the re-allocations.
    pub batch: Batch,
    /// Displaced lines and the batch each one now draws from (possibly this one,
    /// if a smaller line fits after a larger one left).
    pub reallocated: Vec<(OrderLine, String)>,
    /// Displaced lines for which no batch of the sku had stock left.
    pub unallocated: Vec<OrderLine>,
}

/// Registers newly bought stock.
pub async fn add_batch<R: BatchRepository>(
    repo: &R,
    reference: &str,
    sku: &str,
    purchased_quantity: u32,
    eta: Option<NaiveDate>,
) -> Result<Batch, AddBatchError> {
    let batch = Batch::new(reference, sku, purchased_quantity, eta);
    match repo.add(&batch).await {
        Ok(()) => Ok(batch),
        Err(RepositoryError::DuplicateReference(reference)) => {
            Err(AddBatchError::DuplicateBatch(reference))
        }
        Err(error) => Err(AddBatchError::Store(error)),
    }
}

/// Allocates `line` to the preferred batch with room for it and returns that
/// batch's reference.
///
/// Idempotent: if a batch of the sku already holds the order's line, its
/// reference is returned and nothing is written (even if the quantity asked
/// now differs; change an allocation by deallocating first). Uncontended, this
/// costs exactly two repository calls: one read and one conditional write.
pub async fn allocate<R: BatchRepository>(
    repo: &R,
    line: OrderLine,
) -> Result<String, AllocateError> {
    for _ in 0..MAX_ATTEMPTS {
        let batches = repo.for_sku(&line.sku).await?;
        if let Some(holder) = batches
            .iter()
            .find(|batch| batch.allocation_for(&line.orderid).is_some())
        {
            return Ok(holder.reference.clone());
        }
        let reference = choose_batch(&line, &batches)?.reference.clone();
        if repo.allocate_if_available(&reference, &line).await? {
            return Ok(reference);
        }
        // Someone took the stock between our read and our write: look again.
    }
    Err(AllocateError::Contention(line.sku))
}

/// Frees the stock held by order `orderid` for `sku`; returns the batch it was
/// taken from and the line.
pub async fn deallocate<R: BatchRepository>(
    repo: &R,
    orderid: &str,
    sku: &str,
) -> Result<(String, OrderLine), DeallocateError> {
    let not_allocated = || DeallocateError::NotAllocated {
        orderid: orderid.to_owned(),
        sku: sku.to_owned(),
    };
    let batch = repo
        .find_allocation(orderid, sku)
        .await?
        .ok_or_else(not_allocated)?;
    // A concurrent deallocation may win between the two calls: then the line
    // is simply no longer allocated.
    let line = repo
        .deallocate(&batch.reference, orderid)
        .await?
        .ok_or_else(not_allocated)?;
    Ok((batch.reference, line))
}

/// Sets a batch's purchased quantity. If the batch now holds more than it has,
/// its most recent lines are displaced and each is allocated again as if newly
/// ordered; those that find no stock are reported as unallocated.
pub async fn change_batch_quantity<R: BatchRepository>(
    repo: &R,
    reference: &str,
    new_qty: u32,
) -> Result<QuantityChange, ChangeQuantityError> {
    let not_found = || ChangeQuantityError::BatchNotFound(reference.to_owned());
    let mut displaced = None;
    for _ in 0..MAX_ATTEMPTS {
        let mut batch = repo.get(reference).await?.ok_or_else(not_found)?;
        let removed = batch.change_purchased_quantity(new_qty);
        if repo.save_if_unchanged(&batch).await? {
            displaced = Some(removed);
            break;
        }
        // The batch changed since we read it (an allocation, say): redo the
        // change on the fresh copy so that no concurrent write is lost.
    }
    let displaced =
        displaced.ok_or_else(|| ChangeQuantityError::Contention(reference.to_owned()))?;

    let mut reallocated = Vec::new();
    let mut unallocated = Vec::new();
    for (index, line) in displaced.iter().enumerate() {
        match allocate(repo, line.clone()).await {
            Ok(batchref) => reallocated.push((line.clone(), batchref)),
            Err(AllocateError::Allocation(_)) => unallocated.push(line.clone()),
            Err(source) => {
                let mut unplaced = unallocated;
                unplaced.extend_from_slice(&displaced[index..]);
                return Err(ChangeQuantityError::Reallocation {
                    reference: reference.to_owned(),
                    unplaced,
                    source,
                });
            }
        }
    }
    let batch = repo.get(reference).await?.ok_or_else(not_found)?;
    Ok(QuantityChange {
        batch,
        reallocated,
        unallocated,
    })
}

pub async fn get_batch<R: BatchRepository>(
    repo: &R,
    reference: &str,
) -> Result<Batch, GetBatchError> {
    repo.get(reference)
        .await?
        .ok_or_else(|| GetBatchError::BatchNotFound(reference.to_owned()))
}

/// A page of batches ordered by reference; pass the last reference of a page
/// as `after` to get the next one.
pub async fn list_batches<R: BatchRepository>(
    repo: &R,
    sku: Option<&str>,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<Batch>, RepositoryError> {
    repo.list(sku, after, limit).await
}

/// Where each line of an order draws its stock from, ordered by sku then batch
/// reference so that answers are stable whatever the store's order.
pub async fn allocations_for_order<R: BatchRepository>(
    repo: &R,
    orderid: &str,
) -> Result<Vec<Allocation>, OrderAllocationsError> {
    let mut allocations = repo.allocations_for_order(orderid).await?;
    if allocations.is_empty() {
        return Err(OrderAllocationsError::NoAllocations(orderid.to_owned()));
    }
    allocations.sort_by(|a, b| (&a.sku, &a.batchref).cmp(&(&b.sku, &b.batchref)));
    Ok(allocations)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::adapters::memory::InMemoryBatchRepository;

    fn day(d: u32) -> Option<NaiveDate> {
        NaiveDate::from_ymd_opt(2025, 5, d)
    }

    fn line(orderid: &str, sku: &str, qty: u32) -> OrderLine {
        OrderLine::new(orderid, sku, qty)
    }

    async fn repo_with(
        batches: &[(&str, &str, u32, Option<NaiveDate>)],
    ) -> InMemoryBatchRepository {
        let repo = InMemoryBatchRepository::new();
        for &(reference, sku, qty, eta) in batches {
            add_batch(&repo, reference, sku, qty, eta).await.unwrap();
        }
        repo
    }

    async fn available(repo: &InMemoryBatchRepository, reference: &str) -> i64 {
        get_batch(repo, reference)
            .await
            .unwrap()
            .available_quantity()
    }

    #[tokio::test]
    async fn returns_allocation() {
        let repo = repo_with(&[("b1", "COMPLICATED-LAMP", 100, None)]).await;
        let batchref = allocate(&repo, line("o1", "COMPLICATED-LAMP", 10))
            .await
            .unwrap();
        assert_eq!(batchref, "b1");
        assert_eq!(available(&repo, "b1").await, 90);
    }

    #[tokio::test]
    async fn add_batch_refuses_a_duplicate_reference() {
        let repo = repo_with(&[("b1", "LAMP", 100, None)]).await;
        let error = add_batch(&repo, "b1", "CHAIR", 5, None).await.unwrap_err();
        assert!(matches!(&error, AddBatchError::DuplicateBatch(r) if r == "b1"));
        assert_eq!(error.to_string(), "Batch b1 already exists");
        assert_eq!(get_batch(&repo, "b1").await.unwrap().sku, "LAMP");
    }

    #[tokio::test]
    async fn prefers_warehouse_stock_then_the_earliest_shipment() {
        let repo = repo_with(&[
            ("shipment-late", "RETRO-CLOCK", 10, day(20)),
            ("shipment-soon", "RETRO-CLOCK", 10, day(2)),
            ("warehouse", "RETRO-CLOCK", 10, None),
        ])
        .await;
        let mut chosen = Vec::new();
        for orderid in ["o1", "o2", "o3"] {
            chosen.push(
                allocate(&repo, line(orderid, "RETRO-CLOCK", 10))
                    .await
                    .unwrap(),
            );
        }
        assert_eq!(chosen, ["warehouse", "shipment-soon", "shipment-late"]);
    }

    #[tokio::test]
    async fn errors_for_an_invalid_sku() {
        let repo = repo_with(&[("b1", "AREALSKU", 100, None)]).await;
        let error = allocate(&repo, line("o1", "NONEXISTENTSKU", 10))
            .await
            .unwrap_err();
        assert!(matches!(
            error,
            AllocateError::Allocation(AllocationError::InvalidSku(_))
        ));
        assert_eq!(error.to_string(), "Invalid sku NONEXISTENTSKU");
    }

    #[tokio::test]
    async fn errors_when_out_of_stock() {
        let repo = repo_with(&[("b1", "SMALL-TABLE", 10, day(1))]).await;
        allocate(&repo, line("o1", "SMALL-TABLE", 10))
            .await
            .unwrap();
        let error = allocate(&repo, line("o2", "SMALL-TABLE", 1))
            .await
            .unwrap_err();
        assert!(matches!(
            error,
            AllocateError::Allocation(AllocationError::OutOfStock(_))
        ));
        assert_eq!(error.to_string(), "Out of stock for sku SMALL-TABLE");
    }

    #[tokio::test]
    async fn allocating_the_same_line_again_returns_the_same_batch_and_writes_nothing() {
        let repo = repo_with(&[("b1", "LAMP", 10, None), ("b2", "LAMP", 10, day(1))]).await;
        assert_eq!(allocate(&repo, line("o1", "LAMP", 6)).await.unwrap(), "b1");
        repo.reset_calls();
        assert_eq!(allocate(&repo, line("o1", "LAMP", 6)).await.unwrap(), "b1");
        assert_eq!(repo.calls(), 1, "one read, no write");
        let b1 = get_batch(&repo, "b1").await.unwrap();
        assert_eq!(b1.allocations(), [line("o1", "LAMP", 6)]);
        assert_eq!(available(&repo, "b2").await, 10);
    }

    #[tokio::test]
    async fn an_uncontended_allocation_costs_two_repository_calls() {
        let repo = repo_with(&[("b1", "LAMP", 10, None), ("b2", "LAMP", 10, day(1))]).await;
        repo.reset_calls();
        allocate(&repo, line("o1", "LAMP", 1)).await.unwrap();
        assert_eq!(repo.calls(), 2, "one read and one conditional write");
    }

    #[tokio::test]
    async fn a_lost_race_is_retried_on_fresh_data() {
        let repo = LosesRaces::new(repo_with(&[("b1", "LAMP", 10, None)]).await, 1);
        assert_eq!(allocate(&repo, line("o1", "LAMP", 1)).await.unwrap(), "b1");
        assert_eq!(
            repo.inner.calls(),
            4,
            "two rounds of read + conditional write"
        );
    }

    #[tokio::test]
    async fn gives_up_after_max_attempts() {
        let repo = LosesRaces::new(repo_with(&[("b1", "LAMP", 10, None)]).await, usize::MAX);
        let error = allocate(&repo, line("o1", "LAMP", 1)).await.unwrap_err();
        assert!(matches!(error, AllocateError::Contention(_)));
        assert_eq!(error.to_string(), "Too much contention for sku LAMP; retry");
        assert_eq!(repo.inner.calls(), 2 * MAX_ATTEMPTS);
    }

    #[tokio::test]
    async fn deallocate_frees_the_stock() {
        let repo = repo_with(&[("b1", "LAMP", 10, None)]).await;
        allocate(&repo, line("o1", "LAMP", 10)).await.unwrap();
        let (batchref, removed) = deallocate(&repo, "o1", "LAMP").await.unwrap();
        assert_eq!((batchref.as_str(), removed), ("b1", line("o1", "LAMP", 10)));
        assert_eq!(available(&repo, "b1").await, 10);
        assert_eq!(allocate(&repo, line("o2", "LAMP", 10)).await.unwrap(), "b1");
    }

    #[tokio::test]
    async fn deallocating_a_line_that_is_not_allocated_fails() {
        let repo = repo_with(&[("b1", "LAMP", 10, None)]).await;
        allocate(&repo, line("o1", "LAMP", 1)).await.unwrap();
        for (orderid, sku) in [("o2", "LAMP"), ("o1", "CHAIR")] {
            let error = deallocate(&repo, orderid, sku).await.unwrap_err();
            assert!(matches!(error, DeallocateError::NotAllocated { .. }));
            assert_eq!(
                error.to_string(),
                format!("Order line {orderid} for sku {sku} is not allocated")
            );
        }
        assert_eq!(available(&repo, "b1").await, 9);
    }

    #[tokio::test]
    async fn shrinking_a_batch_reallocates_the_most_recent_lines_elsewhere() {
        let repo = repo_with(&[
            ("warehouse", "LAMP", 10, None),
            ("shipment", "LAMP", 3, day(1)),
        ])
        .await;
        for (orderid, qty) in [("o1", 4), ("o2", 3), ("o3", 3)] {
            assert_eq!(
                allocate(&repo, line(orderid, "LAMP", qty)).await.unwrap(),
                "warehouse"
            );
        }

        let change = change_batch_quantity(&repo, "warehouse", 4).await.unwrap();

        assert_eq!(change.batch.purchased_quantity(), 4);
        assert_eq!(change.batch.allocations(), [line("o1", "LAMP", 4)]);
        // o3 was allocated last, so it was displaced first and took the shipment.
        assert_eq!(
            change.reallocated,
            [(line("o3", "LAMP", 3), "shipment".to_owned())]
        );
        assert_eq!(change.unallocated, [line("o2", "LAMP", 3)]);
        assert_eq!(available(&repo, "shipment").await, 0);
        let o2 = allocations_for_order(&repo, "o2").await.unwrap_err();
        assert!(matches!(o2, OrderAllocationsError::NoAllocations(_)));
    }

    #[tokio::test]
    async fn a_displaced_line_may_return_to_the_same_batch_if_it_now_fits() {
        let repo = repo_with(&[("warehouse", "LAMP", 10, None)]).await;
        for (orderid, qty) in [("o1", 4), ("o2", 4), ("o3", 2)] {
            allocate(&repo, line(orderid, "LAMP", qty)).await.unwrap();
        }

        let change = change_batch_quantity(&repo, "warehouse", 7).await.unwrap();

        // o3 then o2 had to go; with o2 gone, o3 fits again.
        assert_eq!(
            change.reallocated,
            [(line("o3", "LAMP", 2), "warehouse".to_owned())]
        );
        assert_eq!(change.unallocated, [line("o2", "LAMP", 4)]);
        assert_eq!(
            change.batch.allocations(),
            [line("o1", "LAMP", 4), line("o3", "LAMP", 2)]
        );
        assert_eq!(change.batch.available_quantity(), 1);
    }

    #[tokio::test]
    async fn growing_a_batch_displaces_nothing() {
        let repo = repo_with(&[("b1", "LAMP", 10, None)]).await;
        allocate(&repo, line("o1", "LAMP", 10)).await.unwrap();
        let change = change_batch_quantity(&repo, "b1", 15).await.unwrap();
        assert!(change.reallocated.is_empty() && change.unallocated.is_empty());
        assert_eq!(change.batch.available_quantity(), 5);
    }

    #[tokio::test]
    async fn a_version_conflict_redoes_the_change_on_a_fresh_copy() {
        let inner = repo_with(&[("b1", "LAMP", 10, None)]).await;
        allocate(&inner, line("o1", "LAMP", 4)).await.unwrap();
        let repo = LosesRaces::new(inner, 0).losing_saves(1);
        let change = change_batch_quantity(&repo, "b1", 6).await.unwrap();
        assert_eq!(change.batch.purchased_quantity(), 6);
        assert_eq!(change.batch.allocations(), [line("o1", "LAMP", 4)]);

        let repo = repo.losing_saves(usize::MAX);
        let error = change_batch_quantity(&repo, "b1", 2).await.unwrap_err();
        assert!(matches!(error, ChangeQuantityError::Contention(_)));
        assert_eq!(error.to_string(), "Too much contention for batch b1; retry");
        assert_eq!(
            get_batch(&repo.inner, "b1")
                .await
                .unwrap()
                .purchased_quantity(),
            6
        );
    }

    #[tokio::test]
    async fn displaced_lines_that_cannot_be_retried_are_reported_not_lost() {
        let inner = repo_with(&[("b1", "LAMP", 10, None), ("b2", "LAMP", 10, day(1))]).await;
        for orderid in ["o1", "o2", "o3"] {
            allocate(&inner, line(orderid, "LAMP", 3)).await.unwrap();
        }
        let repo = LosesRaces::new(inner, usize::MAX);
        let error = change_batch_quantity(&repo, "b1", 3).await.unwrap_err();
        let ChangeQuantityError::Reallocation {
            unplaced, source, ..
        } = &error
        else {
            panic!("expected a reallocation error, got {error:?}");
        };
        assert_eq!(*unplaced, [line("o3", "LAMP", 3), line("o2", "LAMP", 3)]);
        assert!(matches!(source, AllocateError::Contention(_)));
        assert_eq!(
            error.to_string(),
            "Batch b1 was changed, but 2 displaced order lines could not be re-allocated"
        );
    }

    #[tokio::test]
    async fn unknown_batches_are_not_found() {
        let repo = InMemoryBatchRepository::new();
        let error = change_batch_quantity(&repo, "nope", 1).await.unwrap_err();
        assert!(matches!(error, ChangeQuantityError::BatchNotFound(_)));
        assert_eq!(error.to_string(), "Batch nope not found");
        let error = get_batch(&repo, "nope").await.unwrap_err();
        assert!(matches!(error, GetBatchError::BatchNotFound(_)));
        assert_eq!(error.to_string(), "Batch nope not found");
    }

    #[tokio::test]
    async fn lists_batches_a_page_at_a_time() {
        let repo = repo_with(&[
            ("b3", "LAMP", 1, None),
            ("b1", "LAMP", 1, None),
            ("b2", "CHAIR", 1, None),
        ])
        .await;
        let refs =
            |batches: Vec<Batch>| batches.into_iter().map(|b| b.reference).collect::<Vec<_>>();
        assert_eq!(
            refs(list_batches(&repo, None, None, 2).await.unwrap()),
            ["b1", "b2"]
        );
        assert_eq!(
            refs(list_batches(&repo, None, Some("b2"), 2).await.unwrap()),
            ["b3"]
        );
        assert_eq!(
            refs(
                list_batches(&repo, Some("LAMP"), Some("b1"), 5)
                    .await
                    .unwrap()
            ),
            ["b3"]
        );
    }

    #[tokio::test]
    async fn lists_an_orders_allocations_across_skus() {
        let repo = repo_with(&[("b1", "LAMP", 10, None), ("b2", "CHAIR", 10, None)]).await;
        allocate(&repo, line("o1", "LAMP", 2)).await.unwrap();
        allocate(&repo, line("o1", "CHAIR", 3)).await.unwrap();
        allocate(&repo, line("o2", "LAMP", 1)).await.unwrap();
        let allocations = allocations_for_order(&repo, "o1").await.unwrap();
        let expected =
            [("CHAIR", "b2", 3), ("LAMP", "b1", 2)].map(|(sku, batchref, qty)| Allocation {
                sku: sku.into(),
                batchref: batchref.into(),
                qty,
            });
        assert_eq!(allocations, expected);
        let error = allocations_for_order(&repo, "o9").await.unwrap_err();
        assert_eq!(error.to_string(), "Order o9 has no allocations");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_allocations_never_oversell() {
        let repo = Arc::new(
            repo_with(&[
                ("warehouse", "CHAIR", 10, None),
                ("shipment", "CHAIR", 10, day(3)),
            ])
            .await,
        );
        let tasks: Vec<_> = (0..50)
            .map(|n| {
                let repo = Arc::clone(&repo);
                tokio::spawn(
                    async move { allocate(&*repo, line(&format!("o{n}"), "CHAIR", 1)).await },
                )
            })
            .collect();
        let mut allocated = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(_) => allocated += 1,
                Err(AllocateError::Allocation(AllocationError::OutOfStock(sku))) => {
                    assert_eq!(sku, "CHAIR")
                }
                Err(other) => panic!("unexpected error: {other}"),
            }
        }
        assert_eq!(allocated, 20);
        for reference in ["warehouse", "shipment"] {
            let batch = get_batch(&*repo, reference).await.unwrap();
            assert_eq!(
                batch.available_quantity(),
                0,
                "{reference} is neither over- nor under-allocated"
            );
            assert_eq!(batch.allocations().len(), 10);
        }
    }

    /// Loses the first `losses` conditional allocations and the first
    /// `lost_saves` versioned saves, as if another process always wrote just
    /// before.
    struct LosesRaces {
        inner: InMemoryBatchRepository,
        losses: AtomicUsize,
        lost_saves: AtomicUsize,
    }

    impl LosesRaces {
        fn new(inner: InMemoryBatchRepository, losses: usize) -> Self {
            inner.reset_calls();
            Self {
                inner,
                losses: AtomicUsize::new(losses),
                lost_saves: AtomicUsize::new(0),
            }
        }

        fn losing_saves(self, lost_saves: usize) -> Self {
            self.lost_saves.store(lost_saves, Ordering::SeqCst);
            self
        }
    }

    /// Takes one from `counter` unless it is zero; true if it did.
    fn take_one(counter: &AtomicUsize) -> bool {
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    impl BatchRepository for LosesRaces {
        async fn add(&self, batch: &Batch) -> Result<(), RepositoryError> {
            self.inner.add(batch).await
        }
        async fn get(&self, reference: &str) -> Result<Option<Batch>, RepositoryError> {
            self.inner.get(reference).await
        }
        async fn for_sku(&self, sku: &str) -> Result<Vec<Batch>, RepositoryError> {
            self.inner.for_sku(sku).await
        }
        async fn list(
            &self,
            sku: Option<&str>,
            after: Option<&str>,
            limit: usize,
        ) -> Result<Vec<Batch>, RepositoryError> {
            self.inner.list(sku, after, limit).await
        }
        async fn allocate_if_available(
            &self,
            reference: &str,
            line: &OrderLine,
        ) -> Result<bool, RepositoryError> {
            if take_one(&self.losses) {
                self.inner.get(reference).await?; // still a round trip
                return Ok(false);
            }
            self.inner.allocate_if_available(reference, line).await
        }
        async fn deallocate(
            &self,
            reference: &str,
            orderid: &str,
        ) -> Result<Option<OrderLine>, RepositoryError> {
            self.inner.deallocate(reference, orderid).await
        }
        async fn find_allocation(
            &self,
            orderid: &str,
            sku: &str,
        ) -> Result<Option<Batch>, RepositoryError> {
            self.inner.find_allocation(orderid, sku).await
        }
        async fn allocations_for_order(
            &self,
            orderid: &str,
        ) -> Result<Vec<Allocation>, RepositoryError> {
            self.inner.allocations_for_order(orderid).await
        }
        async fn save_if_unchanged(&self, batch: &Batch) -> Result<bool, RepositoryError> {
            if take_one(&self.lost_saves) {
                self.inner.get(&batch.reference).await?; // still a round trip
                return Ok(false);
            }
            self.inner.save_if_unchanged(batch).await
        }
    }
}
