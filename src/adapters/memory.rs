//! An in-memory [`BatchRepository`]: the book's FakeRepository, for unit tests
//! of the use cases without a database.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::domain::allocation::{Batch, OrderLine};
use crate::services::allocation::{Allocation, BatchRepository, RepositoryError};

/// Batches by reference behind one lock, so that each conditional write is
/// checked and applied atomically, as the port requires of every store.
#[derive(Debug, Default)]
pub struct InMemoryBatchRepository {
    batches: Mutex<BTreeMap<String, Batch>>,
    calls: AtomicUsize,
}

impl InMemoryBatchRepository {
    pub fn new() -> Self {
        Self::default()
    }

    /// How many repository methods were called since creation or the last
    /// [`InMemoryBatchRepository::reset_calls`]; lets tests hold use cases to
    /// their round-trip budget.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    pub fn reset_calls(&self) {
        self.calls.store(0, Ordering::SeqCst);
    }

    /// Counts the call, then yields once as a real store's round trip would, so
    /// that concurrent tests interleave between reads and writes.
    async fn round_trip(&self) -> MutexGuard<'_, BTreeMap<String, Batch>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::task::yield_now().await;
        // A panic while holding the lock cannot leave a batch half-written
        // (every write is one assignment), so a poisoned map is still sound.
        self.batches
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl BatchRepository for InMemoryBatchRepository {
    async fn add(&self, batch: &Batch) -> Result<(), RepositoryError> {
        let mut batches = self.round_trip().await;
        if batches.contains_key(&batch.reference) {
            return Err(RepositoryError::DuplicateReference(batch.reference.clone()));
        }
        batches.insert(batch.reference.clone(), batch.clone());
        Ok(())
    }

    async fn get(&self, reference: &str) -> Result<Option<Batch>, RepositoryError> {
        Ok(self.round_trip().await.get(reference).cloned())
    }

    async fn for_sku(&self, sku: &str) -> Result<Vec<Batch>, RepositoryError> {
        let batches = self.round_trip().await;
        Ok(batches.values().filter(|b| b.sku == sku).cloned().collect())
    }

    async fn list(
        &self,
        sku: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Batch>, RepositoryError> {
        let batches = self.round_trip().await;
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        Ok(batches
            .range::<str, _>((start, Bound::Unbounded))
            .map(|(_, batch)| batch)
            .filter(|batch| sku.is_none_or(|sku| batch.sku == sku))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn allocate_if_available(
        &self,
        reference: &str,
        line: &OrderLine,
    ) -> Result<bool, RepositoryError> {
        let mut batches = self.round_trip().await;
        let Some(batch) = batches.get_mut(reference) else {
            return Ok(false);
        };
        let allocated = batch.allocate(line.clone());
        if allocated {
            batch.version += 1;
        }
        Ok(allocated)
    }

    async fn deallocate(
        &self,
        reference: &str,
        orderid: &str,
    ) -> Result<Option<OrderLine>, RepositoryError> {
        let mut batches = self.round_trip().await;
        let Some(batch) = batches.get_mut(reference) else {
            return Ok(None);
        };
        let removed = batch.deallocate(orderid);
        if removed.is_some() {
            batch.version += 1;
        }
        Ok(removed)
    }

    async fn find_allocation(
        &self,
        orderid: &str,
        sku: &str,
    ) -> Result<Option<Batch>, RepositoryError> {
        let batches = self.round_trip().await;
        Ok(batches
            .values()
            .find(|batch| batch.sku == sku && batch.allocation_for(orderid).is_some())
            .cloned())
    }

    async fn allocations_for_order(
        &self,
        orderid: &str,
    ) -> Result<Vec<Allocation>, RepositoryError> {
        let batches = self.round_trip().await;
        Ok(batches
            .values()
            .filter_map(|batch| Allocation::in_batch(batch, orderid))
            .collect())
    }

    async fn save_if_unchanged(&self, batch: &Batch) -> Result<bool, RepositoryError> {
        let mut batches = self.round_trip().await;
        let Some(stored) = batches.get_mut(&batch.reference) else {
            return Ok(false);
        };
        if stored.version != batch.version {
            return Ok(false);
        }
        // Only the quantity and the allocations are the caller's to change.
        *stored = Batch::restore(
            stored.reference.clone(),
            stored.sku.clone(),
            batch.purchased_quantity(),
            stored.eta,
            batch.allocations().to_vec(),
            stored.version + 1,
        );
        Ok(true)
    }
}

#[cfg(test)]
#[path = "../../tests/contract/batch_repository.rs"]
mod contract;

#[cfg(test)]
mod tests {
    use super::{InMemoryBatchRepository, contract};

    /// One `#[tokio::test]` per contract check, each over a fresh repository.
    macro_rules! contract_tests {
        ($($check:ident),* $(,)?) => {$(
            #[tokio::test]
            async fn $check() {
                contract::$check(&InMemoryBatchRepository::new(), "mem").await;
            }
        )*};
    }

    contract_tests![
        add_then_get,
        add_refuses_a_duplicate_reference,
        for_sku_returns_only_that_sku,
        list_pages_by_reference,
        allocate_if_available_refuses_short_stock_and_duplicates,
        deallocate_returns_the_line_and_frees_the_stock,
        find_allocation_finds_the_holding_batch,
        allocations_for_order_spans_skus,
        save_if_unchanged_refuses_a_stale_version,
    ];

    #[tokio::test]
    async fn all_checks_share_one_repository_without_interfering() {
        let repo = InMemoryBatchRepository::new();
        contract::run_all(&repo, "first").await;
        contract::run_all(&repo, "second").await;
    }
}
