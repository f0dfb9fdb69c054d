//! An in-memory [`AllocationRepository`]: the book's FakeRepository, for unit
//! tests of the use cases without a database.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use chrono::Utc;

use crate::domain::allocation::{
    AcknowledgedLine, Batch, LineStatus, OrderLine, Requester, choose_batch, lines_to_give_up,
};
use crate::services::StoreError;
use crate::services::ports::allocation::{
    AddBatchError, AllocateStep, AllocationRepository, Backorder, BatchLine, FillStep, Stock,
};

#[derive(Debug)]
struct StoredLine {
    line: AcknowledgedLine,
    /// Order of acknowledgement: the backorder queue's order.
    id: u64,
    /// Order among the lines of its batch, while allocated.
    batch_position: Option<u64>,
}

#[derive(Debug, Default)]
struct Store {
    batches: BTreeMap<String, Batch>,
    /// Keyed by (orderid, sku): an order holds one line per sku.
    lines: BTreeMap<(String, String), StoredLine>,
    /// Per batch, the position of its latest allocation.
    batch_positions: HashMap<String, u64>,
    /// Per order id, the account that owns it.
    orders: HashMap<String, String>,
    next_id: u64,
    /// Lines refused for lack of stock, in order (`record_refusal`).
    refusals: Vec<OrderLine>,
}

impl Store {
    /// Takes the line's quantity from the batch [`choose_batch`] prefers.
    fn take_stock(&mut self, line: &OrderLine) -> Option<(String, u64)> {
        let candidates: Vec<Batch> = self
            .batches
            .values()
            .filter(|b| b.sku == line.sku)
            .cloned()
            .collect();
        let reference = choose_batch(line, &candidates).ok()?.reference.clone();
        let batch = self.batches.get_mut(&reference)?;
        batch.allocate(line);
        let position = self.batch_positions.entry(reference.clone()).or_default();
        *position += 1;
        Some((reference, *position))
    }
}

/// Batches and lines behind one lock, so that each step is checked and
/// applied atomically, as the port requires of every store.
#[derive(Debug, Default)]
pub struct InMemoryAllocations {
    store: Mutex<Store>,
    calls: AtomicUsize,
}

impl InMemoryAllocations {
    pub fn new() -> Self {
        Self::default()
    }

    /// How many repository methods were called since creation or the last
    /// [`InMemoryAllocations::reset_calls`]; lets tests hold use cases to
    /// their round-trip budget.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// The lines refused for lack of stock, in order.
    pub fn refusals(&self) -> Vec<OrderLine> {
        let store = self.store.lock().unwrap_or_else(|p| p.into_inner());
        store.refusals.clone()
    }

    pub fn reset_calls(&self) {
        self.calls.store(0, Ordering::SeqCst);
    }

    /// Counts the call, then yields once as a real store's round trip would, so
    /// that concurrent tests interleave between steps.
    async fn step(&self) -> MutexGuard<'_, Store> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::task::yield_now().await;
        // Every step checks before it writes anything, so a panic cannot
        // leave a step half-applied: a poisoned store is still sound.
        self.store
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn key(orderid: &str, sku: &str) -> (String, String) {
    (orderid.to_owned(), sku.to_owned())
}

fn position(id: u64) -> String {
    format!("{id:024x}")
}

impl AllocationRepository for InMemoryAllocations {
    async fn add_batch(&self, batch: &Batch) -> Result<(), AddBatchError> {
        let mut store = self.step().await;
        if store.batches.contains_key(&batch.reference) {
            return Err(AddBatchError::DuplicateBatch(batch.reference.clone()));
        }
        store.batches.insert(batch.reference.clone(), batch.clone());
        Ok(())
    }

    async fn batch(&self, reference: &str) -> Result<Option<Batch>, StoreError> {
        Ok(self.step().await.batches.get(reference).cloned())
    }

    async fn batches(
        &self,
        sku: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Batch>, StoreError> {
        let store = self.step().await;
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        Ok(store
            .batches
            .range::<str, _>((start, Bound::Unbounded))
            .map(|(_, batch)| batch)
            .filter(|batch| sku.is_none_or(|sku| batch.sku == sku))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn stock(&self, sku: &str, qty: u32) -> Result<Stock, StoreError> {
        let store = self.step().await;
        let most = store
            .batches
            .values()
            .filter(|b| b.sku == sku)
            .map(Batch::available_quantity)
            .max();
        Ok(Stock::of(most, qty))
    }

    async fn record_refusal(&self, line: &OrderLine) -> Result<(), StoreError> {
        self.step().await.refusals.push(line.clone());
        Ok(())
    }

    async fn allocate(
        &self,
        line: &OrderLine,
        requester: &Requester,
    ) -> Result<AllocateStep, StoreError> {
        let mut store = self.step().await;
        let owner = store
            .orders
            .get(&line.orderid)
            .cloned()
            .unwrap_or_else(|| requester.account.clone());
        if !requester.may_manage(Some(&owner)) {
            return Ok(AllocateStep::NotOwner);
        }
        if let Some(existing) = store.lines.get(&key(&line.orderid, &line.sku)) {
            return Ok(AllocateStep::AlreadyAcknowledged(existing.line.clone()));
        }
        let Some((batchref, batch_position)) = store.take_stock(line) else {
            return Ok(AllocateStep::NoRoom);
        };
        store.next_id += 1;
        let stored = StoredLine {
            line: AcknowledgedLine {
                line: line.clone(),
                status: LineStatus::Allocated {
                    batchref: batchref.clone(),
                },
                acknowledged_at: Utc::now(),
                owner: Some(owner.clone()),
            },
            id: store.next_id,
            batch_position: Some(batch_position),
        };
        store.lines.insert(key(&line.orderid, &line.sku), stored);
        store.orders.insert(line.orderid.clone(), owner);
        Ok(AllocateStep::Taken(batchref))
    }

    async fn line(&self, orderid: &str, sku: &str) -> Result<Option<AcknowledgedLine>, StoreError> {
        let store = self.step().await;
        Ok(store.lines.get(&key(orderid, sku)).map(|s| s.line.clone()))
    }

    async fn lines_of_order(
        &self,
        orderid: &str,
        limit: usize,
    ) -> Result<Vec<AcknowledgedLine>, StoreError> {
        let store = self.step().await;
        Ok(store
            .lines
            .values()
            .filter(|s| s.line.line.orderid == orderid)
            .take(limit)
            .map(|s| s.line.clone())
            .collect())
    }

    async fn lines_of_sku(
        &self,
        sku: &str,
        orderids: &[String],
    ) -> Result<Vec<AcknowledgedLine>, StoreError> {
        let store = self.step().await;
        Ok(orderids
            .iter()
            .filter_map(|orderid| store.lines.get(&key(orderid, sku)))
            .map(|s| s.line.clone())
            .collect())
    }

    async fn remove_line(
        &self,
        orderid: &str,
        sku: &str,
        requester: &Requester,
    ) -> Result<Option<AcknowledgedLine>, StoreError> {
        let mut store = self.step().await;
        let owned = store
            .lines
            .get(&key(orderid, sku))
            .is_some_and(|stored| requester.may_manage(stored.line.owner.as_deref()));
        if !owned {
            return Ok(None);
        }
        let Some(removed) = store.lines.remove(&key(orderid, sku)) else {
            return Ok(None);
        };
        if let Some(batch) = removed
            .line
            .batchref()
            .and_then(|batchref| store.batches.get_mut(batchref))
        {
            batch.deallocate(&removed.line.line);
        }
        Ok(Some(removed.line))
    }

    async fn change_purchased_quantity(
        &self,
        reference: &str,
        qty: u32,
    ) -> Result<Option<Batch>, StoreError> {
        let mut store = self.step().await;
        Ok(store.batches.get_mut(reference).map(|batch| {
            batch.change_purchased_quantity(qty);
            batch.clone()
        }))
    }

    async fn give_up_recent_lines(
        &self,
        reference: &str,
        max_lines: usize,
    ) -> Result<Vec<OrderLine>, StoreError> {
        let mut store = self.step().await;
        let over_by = match store.batches.get(reference) {
            Some(batch) => batch.over_allocated_by(),
            None => return Ok(Vec::new()),
        };
        let mut recent: Vec<(&(String, String), u64, u32)> = store
            .lines
            .iter()
            .filter(|(_, s)| s.line.batchref() == Some(reference))
            .filter_map(|(k, s)| Some((k, s.batch_position?, s.line.line.qty)))
            .collect();
        recent.sort_by_key(|&(_, position, _)| std::cmp::Reverse(position));
        recent.truncate(max_lines);
        let quantities: Vec<u32> = recent.iter().map(|&(_, _, qty)| qty).collect();
        let count = lines_to_give_up(over_by, &quantities);
        let keys: Vec<(String, String)> = recent[..count]
            .iter()
            .map(|(k, _, _)| (*k).clone())
            .collect();
        let mut given_up = Vec::new();
        for k in keys {
            let stored = store.lines.get_mut(&k).expect("listed above");
            stored.line.status = LineStatus::Backordered;
            stored.batch_position = None;
            given_up.push(stored.line.line.clone());
        }
        let batch = store.batches.get_mut(reference).expect("checked above");
        for line in &given_up {
            batch.deallocate(line);
        }
        Ok(given_up)
    }

    async fn over_allocated_batches(&self, limit: usize) -> Result<Vec<String>, StoreError> {
        let store = self.step().await;
        Ok(store
            .batches
            .values()
            .filter(|b| b.over_allocated_by() > 0)
            .take(limit)
            .map(|b| b.reference.clone())
            .collect())
    }

    async fn backorders(
        &self,
        sku: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Backorder>, StoreError> {
        let store = self.step().await;
        let mut waiting: Vec<Backorder> = store
            .lines
            .values()
            .filter(|s| s.line.status == LineStatus::Backordered)
            .filter(|s| sku.is_none_or(|sku| s.line.line.sku == sku))
            .map(|s| Backorder {
                line: s.line.clone(),
                position: position(s.id),
            })
            .filter(|b| after.is_none_or(|after| b.position.as_str() > after))
            .collect();
        waiting.sort_by(|a, b| a.position.cmp(&b.position));
        waiting.truncate(limit);
        Ok(waiting)
    }

    async fn fill_backorder(&self, line: &OrderLine) -> Result<FillStep, StoreError> {
        let mut store = self.step().await;
        let k = key(&line.orderid, &line.sku);
        let waiting = store
            .lines
            .get(&k)
            .is_some_and(|s| s.line.status == LineStatus::Backordered);
        if !waiting {
            return Ok(FillStep::NotWaiting);
        }
        let stored_line = store.lines[&k].line.line.clone();
        let Some((batchref, batch_position)) = store.take_stock(&stored_line) else {
            return Ok(FillStep::NoRoom);
        };
        let stored = store.lines.get_mut(&k).expect("checked above");
        stored.line.status = LineStatus::Allocated {
            batchref: batchref.clone(),
        };
        stored.batch_position = Some(batch_position);
        Ok(FillStep::Taken(batchref))
    }

    async fn batch_lines(
        &self,
        reference: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<BatchLine>, StoreError> {
        let store = self.step().await;
        let mut lines: Vec<BatchLine> = store
            .lines
            .values()
            .filter(|s| s.line.batchref() == Some(reference))
            .filter_map(|s| {
                Some(BatchLine {
                    orderid: s.line.line.orderid.clone(),
                    qty: s.line.line.qty,
                    position: s.batch_position?,
                })
            })
            .filter(|l| after.is_none_or(|after| l.position > after))
            .collect();
        lines.sort_by_key(|l| l.position);
        lines.truncate(limit);
        Ok(lines)
    }
}

#[cfg(test)]
mod tests {
    use super::InMemoryAllocations;
    use crate::testing::contract;

    /// One `#[tokio::test]` per contract check, each over a fresh repository.
    macro_rules! contract_tests {
        ($($check:ident),* $(,)?) => {$(
            #[tokio::test]
            async fn $check() {
                contract::$check(&InMemoryAllocations::new(), "mem").await;
            }
        )*};
    }

    contract::for_each_check!(contract_tests);

    #[tokio::test]
    async fn all_checks_share_one_repository_without_interfering() {
        let repo = InMemoryAllocations::new();
        contract::run_all(&repo, "first").await;
        contract::run_all(&repo, "second").await;
    }
}
