//! What the allocation use cases need: a store of batches and order lines
//! whose every method is one atomic step.

use std::future::Future;

use crate::domain::allocation::{AcknowledgedLine, Batch, OrderLine, Requester};
use crate::services::StoreError;

/// Why a batch was not stored.
#[derive(Debug, thiserror::Error)]
pub enum AddBatchError {
    #[error("Batch {0} already exists")]
    DuplicateBatch(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What an atomic allocation step did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AllocateStep {
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
pub enum FillStep {
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
    /// Stores a new batch; [`AddBatchError::DuplicateBatch`] if the reference exists.
    fn add_batch(&self, batch: &Batch) -> impl Future<Output = Result<(), AddBatchError>> + Send;

    fn batch(
        &self,
        reference: &str,
    ) -> impl Future<Output = Result<Option<Batch>, StoreError>> + Send;

    /// A page of batches ordered by reference, optionally of one sku, strictly after `after`.
    fn batches(
        &self,
        sku: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Batch>, StoreError>> + Send;

    /// Whether a batch of the sku has room for `qty` units.
    fn stock(&self, sku: &str, qty: u32) -> impl Future<Output = Result<Stock, StoreError>> + Send;

    /// Records that a new line was refused for lack of stock, so that the
    /// event feed tells it (`allocation.refused`; nothing else changes).
    fn record_refusal(
        &self,
        line: &OrderLine,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Takes the line's quantity from the preferred batch of its sku that has
    /// room (the order of [`crate::domain::allocation::choose_batch`]) and
    /// records the line as allocated there, unless the line (orderid, sku) was
    /// acknowledged before.
    ///
    /// The order's owner is decided in the same atomic step: the requester
    /// becomes the owner of an order that has none, even when another account
    /// races to allocate the first line of the same order (on another sku);
    /// a non-admin requester who does not own the order gets
    /// [`AllocateStep::NotOwner`]. The line records the order's owner.
    fn allocate(
        &self,
        line: &OrderLine,
        requester: &Requester,
    ) -> impl Future<Output = Result<AllocateStep, StoreError>> + Send;

    fn line(
        &self,
        orderid: &str,
        sku: &str,
    ) -> impl Future<Output = Result<Option<AcknowledgedLine>, StoreError>> + Send;

    /// The lines of an order, allocated or backordered, at most `limit`.
    fn lines_of_order(
        &self,
        orderid: &str,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<AcknowledgedLine>, StoreError>> + Send;

    /// The lines of one sku held by these orders (at most one each).
    fn lines_of_sku(
        &self,
        sku: &str,
        orderids: &[String],
    ) -> impl Future<Output = Result<Vec<AcknowledgedLine>, StoreError>> + Send;

    /// Forgets the line and, if it was allocated, gives its stock back to its
    /// batch. None if there was no such line, or none the requester may manage.
    fn remove_line(
        &self,
        orderid: &str,
        sku: &str,
        requester: &Requester,
    ) -> impl Future<Output = Result<Option<AcknowledgedLine>, StoreError>> + Send;

    /// Sets the batch's purchased quantity (see
    /// [`Batch::change_purchased_quantity`]); the batch as changed, or None if
    /// there is no such batch.
    fn change_purchased_quantity(
        &self,
        reference: &str,
        qty: u32,
    ) -> impl Future<Output = Result<Option<Batch>, StoreError>> + Send;

    /// If the batch holds more than it has, backorders its most recent lines
    /// (at most `max_lines`, chosen by
    /// [`crate::domain::allocation::lines_to_give_up`]) and takes their stock
    /// back; returns the lines given up.
    fn give_up_recent_lines(
        &self,
        reference: &str,
        max_lines: usize,
    ) -> impl Future<Output = Result<Vec<OrderLine>, StoreError>> + Send;

    /// References of batches that hold more than they have, at most `limit`.
    fn over_allocated_batches(
        &self,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;

    /// Waiting lines, oldest first, optionally of one sku, strictly after
    /// position `after`.
    fn backorders(
        &self,
        sku: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Backorder>, StoreError>> + Send;

    /// Allocates a waiting line like [`AllocationRepository::allocate`] would.
    fn fill_backorder(
        &self,
        line: &OrderLine,
    ) -> impl Future<Output = Result<FillStep, StoreError>> + Send;

    /// The lines drawing from a batch, oldest first, strictly after position `after`.
    fn batch_lines(
        &self,
        reference: &str,
        after: Option<u64>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<BatchLine>, StoreError>> + Send;
}
