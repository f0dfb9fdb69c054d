//! Order lines, stock batches and the rule for which batch an order line draws
//! from ("Architecture Patterns with Python", chapters 1 and 4).

use chrono::NaiveDate;

/// A quantity of one sku that a customer ordered. Its identity is
/// (`orderid`, `sku`): an order holds at most one line per sku.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderLine {
    pub orderid: String,
    pub sku: String,
    pub qty: u32,
}

impl OrderLine {
    pub fn new(orderid: impl Into<String>, sku: impl Into<String>, qty: u32) -> Self {
        Self {
            orderid: orderid.into(),
            sku: sku.into(),
            qty,
        }
    }
}

/// Why an order line cannot be allocated. The messages are part of the API
/// contract: clients see them verbatim.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AllocationError {
    /// No batch of this sku exists at all.
    #[error("Invalid sku {0}")]
    InvalidSku(String),
    /// Batches of this sku exist, but none has room for the line.
    #[error("Out of stock for sku {0}")]
    OutOfStock(String),
}

/// Stock of one sku that was bought together: either already in the warehouse
/// (`eta` is `None`) or on its way (`eta` is the expected arrival).
///
/// The quantity and the allocations are private so that only the methods below,
/// which keep them consistent, can change them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    pub reference: String,
    pub sku: String,
    pub eta: Option<NaiveDate>,
    purchased_quantity: u32,
    /// Oldest first, so the most recent allocation is the one given up first.
    allocations: Vec<OrderLine>,
    /// Optimistic-concurrency token: the repository bumps it on every write and
    /// refuses a whole-batch write made from a stale copy. The domain never
    /// changes it.
    pub version: u64,
}

impl Batch {
    /// A freshly bought batch: nothing allocated yet, never stored (version 0).
    pub fn new(
        reference: impl Into<String>,
        sku: impl Into<String>,
        purchased_quantity: u32,
        eta: Option<NaiveDate>,
    ) -> Self {
        Self::restore(reference, sku, purchased_quantity, eta, Vec::new(), 0)
    }

    /// Rebuilds a stored batch exactly as it was saved; for repositories.
    /// `allocations` must be oldest first.
    pub fn restore(
        reference: impl Into<String>,
        sku: impl Into<String>,
        purchased_quantity: u32,
        eta: Option<NaiveDate>,
        allocations: Vec<OrderLine>,
        version: u64,
    ) -> Self {
        Self {
            reference: reference.into(),
            sku: sku.into(),
            eta,
            purchased_quantity,
            allocations,
            version,
        }
    }

    pub fn purchased_quantity(&self) -> u32 {
        self.purchased_quantity
    }

    /// Summed as `u64` so that many large lines cannot overflow.
    pub fn allocated_quantity(&self) -> u64 {
        self.allocations
            .iter()
            .map(|line| u64::from(line.qty))
            .sum()
    }

    /// Signed because [`Batch::change_purchased_quantity`] may shrink the batch
    /// below what is allocated, until it has given up enough lines.
    pub fn available_quantity(&self) -> i64 {
        let allocated = i64::try_from(self.allocated_quantity()).unwrap_or(i64::MAX);
        i64::from(self.purchased_quantity) - allocated
    }

    /// The lines allocated to this batch, oldest first.
    pub fn allocations(&self) -> &[OrderLine] {
        &self.allocations
    }

    /// The line of order `orderid` in this batch. A batch holds one sku, so the
    /// order id alone identifies the line here.
    pub fn allocation_for(&self, orderid: &str) -> Option<&OrderLine> {
        self.allocations.iter().find(|line| line.orderid == orderid)
    }

    /// Whether [`Batch::allocate`] would add `line`: same sku, not already here,
    /// and enough stock left.
    pub fn can_allocate(&self, line: &OrderLine) -> bool {
        self.sku == line.sku
            && self.allocation_for(&line.orderid).is_none()
            && self.available_quantity() >= i64::from(line.qty)
    }

    /// Adds `line` if [`Batch::can_allocate`] allows it, and says whether it did.
    ///
    /// Idempotent: if this batch already holds the order line, nothing changes
    /// and the answer is `false`, as for a line that does not fit; callers that
    /// need to tell the two apart check [`Batch::allocation_for`] first.
    pub fn allocate(&mut self, line: OrderLine) -> bool {
        let fits = self.can_allocate(&line);
        if fits {
            self.allocations.push(line);
        }
        fits
    }

    /// Removes and returns the line of order `orderid`, if this batch holds it.
    pub fn deallocate(&mut self, orderid: &str) -> Option<OrderLine> {
        let index = self
            .allocations
            .iter()
            .position(|line| line.orderid == orderid)?;
        Some(self.allocations.remove(index))
    }

    /// Sets the purchased quantity (a recount, or a delivery that came short)
    /// and, while more is allocated than there is, gives up the most recently
    /// allocated line: the oldest orders keep their stock. Returns the lines
    /// given up, in the order they were removed (most recent first), so that
    /// the caller can allocate them elsewhere.
    pub fn change_purchased_quantity(&mut self, qty: u32) -> Vec<OrderLine> {
        self.purchased_quantity = qty;
        let mut removed = Vec::new();
        while self.available_quantity() < 0 {
            match self.allocations.pop() {
                Some(line) => removed.push(line),
                None => break,
            }
        }
        removed
    }

    /// Sort key for allocation preference: stock in the warehouse (`None`)
    /// ships sooner than any shipment, then the earliest arrival; the reference
    /// breaks ties so that the choice never depends on storage order.
    fn preference(&self) -> (bool, Option<NaiveDate>, &str) {
        (self.eta.is_some(), self.eta, &self.reference)
    }
}

/// The batch `line` should be allocated to: the preferred one among those that
/// can take it (see [`Batch::can_allocate`]).
///
/// Errors with [`AllocationError::InvalidSku`] when no batch has the line's sku,
/// and [`AllocationError::OutOfStock`] when some do but none can take the line.
pub fn choose_batch<'a>(
    line: &OrderLine,
    batches: &'a [Batch],
) -> Result<&'a Batch, AllocationError> {
    let mut of_sku = batches
        .iter()
        .filter(|batch| batch.sku == line.sku)
        .peekable();
    if of_sku.peek().is_none() {
        return Err(AllocationError::InvalidSku(line.sku.clone()));
    }
    of_sku
        .filter(|batch| batch.can_allocate(line))
        .min_by(|a, b| a.preference().cmp(&b.preference()))
        .ok_or_else(|| AllocationError::OutOfStock(line.sku.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(d: u32) -> Option<NaiveDate> {
        NaiveDate::from_ymd_opt(2025, 1, d)
    }

    fn batch_and_line(batch_qty: u32, line_qty: u32) -> (Batch, OrderLine) {
        (
            Batch::new("batch-001", "ELEGANT-LAMP", batch_qty, None),
            OrderLine::new("order-123", "ELEGANT-LAMP", line_qty),
        )
    }

    #[test]
    fn allocating_to_a_batch_reduces_the_available_quantity() {
        let mut batch = Batch::new("batch-001", "SMALL-TABLE", 20, day(1));
        assert!(batch.allocate(OrderLine::new("order-ref", "SMALL-TABLE", 2)));
        assert_eq!(batch.available_quantity(), 18);
        assert_eq!(batch.allocated_quantity(), 2);
        assert_eq!(batch.purchased_quantity(), 20);
        assert_eq!(batch.version, 0);
    }

    #[test]
    fn can_allocate_if_available_greater_than_or_equal_to_required() {
        let (batch, line) = batch_and_line(20, 2);
        assert!(batch.can_allocate(&line));
        let (batch, line) = batch_and_line(2, 2);
        assert!(batch.can_allocate(&line));
    }

    #[test]
    fn cannot_allocate_if_available_smaller_than_required() {
        let (mut batch, line) = batch_and_line(2, 20);
        assert!(!batch.can_allocate(&line));
        assert!(!batch.allocate(line));
        assert!(batch.allocations().is_empty());
    }

    #[test]
    fn cannot_allocate_if_skus_do_not_match() {
        let batch = Batch::new("batch-001", "UNCOMFORTABLE-CHAIR", 100, None);
        let line = OrderLine::new("order-123", "EXPENSIVE-TOASTER", 10);
        assert!(!batch.can_allocate(&line));
    }

    #[test]
    fn allocation_is_idempotent() {
        let (mut batch, line) = batch_and_line(20, 2);
        assert!(batch.allocate(line.clone()));
        assert!(!batch.can_allocate(&line));
        assert!(!batch.allocate(line.clone()));
        assert_eq!(batch.available_quantity(), 18);
        assert_eq!(batch.allocations(), [line]);
    }

    #[test]
    fn deallocate_returns_the_line_and_frees_its_stock() {
        let (mut batch, line) = batch_and_line(20, 2);
        batch.allocate(line.clone());
        assert_eq!(batch.allocation_for("order-123"), Some(&line));
        assert_eq!(batch.deallocate("order-123"), Some(line));
        assert_eq!(batch.available_quantity(), 20);
        assert_eq!(batch.allocation_for("order-123"), None);
    }

    #[test]
    fn can_only_deallocate_allocated_lines() {
        let (mut batch, _) = batch_and_line(20, 2);
        assert_eq!(batch.deallocate("order-123"), None);
        assert_eq!(batch.available_quantity(), 20);
    }

    #[test]
    fn shrinking_a_batch_gives_up_the_most_recent_lines_first() {
        let mut batch = Batch::new("batch-001", "LAMP", 10, None);
        for (orderid, qty) in [("o1", 3), ("o2", 3), ("o3", 2), ("o4", 2)] {
            assert!(batch.allocate(OrderLine::new(orderid, "LAMP", qty)));
        }
        let removed = batch.change_purchased_quantity(5);
        assert_eq!(
            removed,
            [
                OrderLine::new("o4", "LAMP", 2),
                OrderLine::new("o3", "LAMP", 2),
                OrderLine::new("o2", "LAMP", 3)
            ]
        );
        assert_eq!(batch.purchased_quantity(), 5);
        assert_eq!(batch.allocations(), [OrderLine::new("o1", "LAMP", 3)]);
        assert_eq!(batch.available_quantity(), 2);
    }

    #[test]
    fn changing_the_quantity_keeps_lines_that_still_fit() {
        let mut batch = Batch::new("batch-001", "LAMP", 10, None);
        batch.allocate(OrderLine::new("o1", "LAMP", 4));
        assert!(batch.change_purchased_quantity(4).is_empty());
        assert!(batch.change_purchased_quantity(50).is_empty());
        assert_eq!(batch.available_quantity(), 46);
        assert_eq!(batch.change_purchased_quantity(0).len(), 1);
        assert_eq!(batch.available_quantity(), 0);
    }

    #[test]
    fn prefers_warehouse_batches_to_shipments() {
        let batches = [
            Batch::new("shipment-batch", "RETRO-CLOCK", 100, day(2)),
            Batch::new("in-stock-batch", "RETRO-CLOCK", 100, None),
        ];
        let line = OrderLine::new("oref", "RETRO-CLOCK", 10);
        assert_eq!(
            choose_batch(&line, &batches).unwrap().reference,
            "in-stock-batch"
        );
    }

    #[test]
    fn prefers_earlier_batches() {
        let batches = [
            Batch::new("slow", "MINIMALIST-SPOON", 100, day(20)),
            Batch::new("speedy", "MINIMALIST-SPOON", 100, day(1)),
            Batch::new("normal", "MINIMALIST-SPOON", 100, day(10)),
        ];
        let line = OrderLine::new("order1", "MINIMALIST-SPOON", 10);
        assert_eq!(choose_batch(&line, &batches).unwrap().reference, "speedy");
    }

    #[test]
    fn ties_are_broken_by_reference() {
        let batches = [
            Batch::new("b-2", "SPOON", 100, day(1)),
            Batch::new("b-1", "SPOON", 100, day(1)),
            Batch::new("w-2", "SPOON", 100, None),
            Batch::new("w-1", "SPOON", 100, None),
        ];
        let line = OrderLine::new("order1", "SPOON", 10);
        assert_eq!(choose_batch(&line, &batches).unwrap().reference, "w-1");
        assert_eq!(choose_batch(&line, &batches[..2]).unwrap().reference, "b-1");
    }

    #[test]
    fn skips_preferred_batches_that_cannot_take_the_line() {
        let batches = [
            Batch::new("in-stock", "CLOCK", 5, None),
            Batch::new("other-sku", "LAMP", 100, None),
            Batch::new("shipment", "CLOCK", 100, day(3)),
        ];
        let line = OrderLine::new("order1", "CLOCK", 10);
        assert_eq!(choose_batch(&line, &batches).unwrap().reference, "shipment");
    }

    #[test]
    fn invalid_sku_when_no_batch_has_the_sku() {
        let batches = [Batch::new("b1", "AREALSKU", 100, None)];
        let line = OrderLine::new("o1", "NONEXISTENTSKU", 10);
        let error = choose_batch(&line, &batches).unwrap_err();
        assert_eq!(error, AllocationError::InvalidSku("NONEXISTENTSKU".into()));
        assert_eq!(error.to_string(), "Invalid sku NONEXISTENTSKU");
    }

    #[test]
    fn out_of_stock_when_no_batch_can_take_the_line() {
        let mut batch = Batch::new("batch1", "SMALL-TABLE", 10, day(1));
        batch.allocate(OrderLine::new("order1", "SMALL-TABLE", 10));
        let line = OrderLine::new("order2", "SMALL-TABLE", 1);
        let error = choose_batch(&line, &[batch]).unwrap_err();
        assert_eq!(error, AllocationError::OutOfStock("SMALL-TABLE".into()));
        assert_eq!(error.to_string(), "Out of stock for sku SMALL-TABLE");
    }
}
