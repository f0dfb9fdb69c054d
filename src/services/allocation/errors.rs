//! What the allocation use cases answer besides their outcomes: each
//! use case's own refusals, and [`StoreError`] (the database failed),
//! converted by `?` through `#[from]`. Adding a batch answers the port's own
//! `ports::allocation::AddBatchError` (a duplicate reference is the store's
//! to report).

use crate::domain::allocation::AllocationError;
use crate::services::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum AllocateError {
    #[error(transparent)]
    Allocation(#[from] AllocationError),
    /// Another account's order: answered as if it did not exist, so that its
    /// id is not confirmed.
    #[error("Order {0} not found")]
    OrderNotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, thiserror::Error)]
pub enum DeallocateError {
    #[error("Order line {orderid} for sku {sku} is not allocated")]
    NotAllocated { orderid: String, sku: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("Batch {0} not found")]
    BatchNotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, thiserror::Error)]
pub enum OrderAllocationsError {
    #[error("Order {0} has no allocations")]
    NoAllocations(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}
