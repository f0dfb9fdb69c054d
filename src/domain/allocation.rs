//! Order lines, stock batches and the rules for which batch an order line draws
//! from ("Architecture Patterns with Python", chapters 1 and 4).
//!
//! A batch knows only its quantities: the lines drawing from it are stored
//! apart, one record each, so that nothing grows with the number of orders.

use chrono::{DateTime, NaiveDate, Utc};

/// The most units a batch or an order line may hold: sums over many lines
/// then stay far within the stores' 64-bit integers.
pub const MAX_QUANTITY: u32 = 1_000_000_000;

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

/// Where an acknowledged order line stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LineStatus {
    /// The line draws its stock from this batch.
    Allocated { batchref: String },
    /// The line lost its stock (its batch shrank) and waits for stock of its
    /// sku to appear; it is allocated, oldest first, as soon as some does.
    Backordered,
}

/// An order line the system acknowledged: it stays the system's to keep,
/// allocated or backordered, until it is deallocated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcknowledgedLine {
    pub line: OrderLine,
    pub status: LineStatus,
    /// When the line was first allocated; backorders are served oldest first.
    pub acknowledged_at: DateTime<Utc>,
    /// The account that owns the line's order; `None` for lines stored
    /// before orders had owners (only admins see those).
    pub owner: Option<String>,
}

/// Who asks to read or change an order: an account, and whether it is an
/// admin (admins see and manage every order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requester {
    pub account: String,
    pub admin: bool,
}

impl Requester {
    /// Whether this requester may read or change an order owned by `owner`.
    pub fn may_manage(&self, owner: Option<&str>) -> bool {
        self.admin || owner == Some(self.account.as_str())
    }
}

impl AcknowledgedLine {
    pub fn batchref(&self) -> Option<&str> {
        match &self.status {
            LineStatus::Allocated { batchref } => Some(batchref),
            LineStatus::Backordered => None,
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
/// The quantities are private so that only the methods below, which keep them
/// consistent, can change them. `available_quantity` is what the lines
/// drawing from the batch leave of `purchased_quantity`; it is negative only
/// while a shrunk batch still has to give up lines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    pub reference: String,
    pub sku: String,
    pub eta: Option<NaiveDate>,
    purchased_quantity: u32,
    available_quantity: i64,
}

impl Batch {
    /// A freshly bought batch: nothing allocated yet.
    pub fn new(
        reference: impl Into<String>,
        sku: impl Into<String>,
        purchased_quantity: u32,
        eta: Option<NaiveDate>,
    ) -> Self {
        Self::restore(
            reference,
            sku,
            purchased_quantity,
            i64::from(purchased_quantity),
            eta,
        )
    }

    /// Rebuilds a stored batch exactly as it was saved; for repositories.
    pub fn restore(
        reference: impl Into<String>,
        sku: impl Into<String>,
        purchased_quantity: u32,
        available_quantity: i64,
        eta: Option<NaiveDate>,
    ) -> Self {
        Self {
            reference: reference.into(),
            sku: sku.into(),
            eta,
            purchased_quantity,
            available_quantity,
        }
    }

    pub fn purchased_quantity(&self) -> u32 {
        self.purchased_quantity
    }

    pub fn available_quantity(&self) -> i64 {
        self.available_quantity
    }

    /// Units held by the lines drawing from this batch.
    pub fn allocated_quantity(&self) -> i64 {
        i64::from(self.purchased_quantity) - self.available_quantity
    }

    /// Whether [`Batch::allocate`] would take `line`: same sku and enough stock
    /// left. (That the line is not allocated elsewhere already is the
    /// repository's to enforce: lines are stored apart from batches.)
    pub fn can_allocate(&self, line: &OrderLine) -> bool {
        self.sku == line.sku && self.available_quantity >= i64::from(line.qty)
    }

    /// Takes `line`'s quantity if [`Batch::can_allocate`] allows it, and says
    /// whether it did.
    pub fn allocate(&mut self, line: &OrderLine) -> bool {
        let fits = self.can_allocate(line);
        if fits {
            self.available_quantity -= i64::from(line.qty);
        }
        fits
    }

    /// Gives back the stock of a line that drew from this batch.
    pub fn deallocate(&mut self, line: &OrderLine) {
        self.available_quantity += i64::from(line.qty);
    }

    /// Sets the purchased quantity (a recount, or a delivery that came short or
    /// was lost). Returns how many units the lines drawing from the batch now
    /// hold beyond what it has: the most recent of them must give their stock
    /// up (see [`lines_to_give_up`]).
    pub fn change_purchased_quantity(&mut self, qty: u32) -> u64 {
        self.available_quantity += i64::from(qty) - i64::from(self.purchased_quantity);
        self.purchased_quantity = qty;
        self.over_allocated_by()
    }

    /// Units held beyond what the batch has; 0 unless it shrank below its lines.
    pub fn over_allocated_by(&self) -> u64 {
        self.available_quantity.min(0).unsigned_abs()
    }

    /// Sort key for allocation preference: stock in the warehouse (`None`)
    /// ships sooner than any shipment, then the earliest arrival; the reference
    /// breaks ties so that the choice never depends on storage order. Stores
    /// that pick the batch themselves (MongoDB sorts on `eta` then reference,
    /// nulls first) must follow the same order.
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

/// How many lines a batch over-allocated by `over_by` units gives up, given
/// the quantities of its lines most recent first: the most recent lines go
/// first, so the oldest orders keep their stock.
pub fn lines_to_give_up(over_by: u64, most_recent_first: &[u32]) -> usize {
    let mut freed = 0u64;
    most_recent_first
        .iter()
        .take_while(|&&qty| {
            let needed = freed < over_by;
            freed += u64::from(qty);
            needed
        })
        .count()
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
        assert!(batch.allocate(&OrderLine::new("order-ref", "SMALL-TABLE", 2)));
        assert_eq!(batch.available_quantity(), 18);
        assert_eq!(batch.allocated_quantity(), 2);
        assert_eq!(batch.purchased_quantity(), 20);
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
        assert!(!batch.allocate(&line));
        assert_eq!(batch.available_quantity(), 2);
    }

    #[test]
    fn cannot_allocate_if_skus_do_not_match() {
        let batch = Batch::new("batch-001", "UNCOMFORTABLE-CHAIR", 100, None);
        let line = OrderLine::new("order-123", "EXPENSIVE-TOASTER", 10);
        assert!(!batch.can_allocate(&line));
    }

    #[test]
    fn deallocate_frees_the_lines_stock() {
        let (mut batch, line) = batch_and_line(20, 2);
        batch.allocate(&line);
        batch.deallocate(&line);
        assert_eq!(batch.available_quantity(), 20);
    }

    #[test]
    fn shrinking_below_the_allocations_says_by_how_much() {
        let mut batch = Batch::new("batch-001", "LAMP", 10, None);
        for (orderid, qty) in [("o1", 3), ("o2", 3), ("o3", 2)] {
            assert!(batch.allocate(&OrderLine::new(orderid, "LAMP", qty)));
        }
        assert_eq!(batch.change_purchased_quantity(9), 0);
        assert_eq!(batch.available_quantity(), 1);
        assert_eq!(batch.change_purchased_quantity(5), 3);
        assert_eq!(batch.available_quantity(), -3);
        assert_eq!(batch.over_allocated_by(), 3);
        assert_eq!(batch.change_purchased_quantity(0), 8);
        assert_eq!(batch.change_purchased_quantity(50), 0);
        assert_eq!(batch.available_quantity(), 42);
    }

    #[test]
    fn the_most_recent_lines_are_given_up_until_the_batch_fits() {
        // Most recent first: o4 (2), o3 (2), o2 (3), o1 (3).
        let recent = [2, 2, 3, 3];
        assert_eq!(lines_to_give_up(0, &recent), 0);
        assert_eq!(lines_to_give_up(1, &recent), 1);
        assert_eq!(lines_to_give_up(2, &recent), 1);
        assert_eq!(lines_to_give_up(5, &recent), 3);
        assert_eq!(lines_to_give_up(10, &recent), 4);
        assert_eq!(
            lines_to_give_up(99, &recent),
            4,
            "no more lines than there are"
        );
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
        batch.allocate(&OrderLine::new("order1", "SMALL-TABLE", 10));
        let line = OrderLine::new("order2", "SMALL-TABLE", 1);
        let error = choose_batch(&line, &[batch]).unwrap_err();
        assert_eq!(error, AllocationError::OutOfStock("SMALL-TABLE".into()));
        assert_eq!(error.to_string(), "Out of stock for sku SMALL-TABLE");
    }
}
