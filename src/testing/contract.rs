//! The behaviour every [`AllocationRepository`] must have, written once and run
//! against each implementation: the in-memory one in the library's unit tests,
//! MongoDB in the integration tests.
//!
//! Each check takes a `prefix` that it puts in front of every sku, reference
//! and order id it creates (followed by a tag of its own), so that checks, and
//! runs with distinct prefixes, can share one store. Prefixes must not contain
//! one another followed by `-` (`a` and `a-list` would collide). A failed check
//! panics.
//!
//! It runs in memory in this crate's unit tests (`testing::memory`) and on
//! MongoDB in `tests/api` (`allocation::the_mongodb_repository_passes_the_repository_contract`),
//! which reaches it as `allot::testing::contract` through the `testing` feature.

use crate::domain::allocation::{Batch, LineStatus, OrderLine, Requester};
use crate::services::ports::allocation::{
    AddBatchError, AllocateStep, AllocationRepository, FillStep, Stock,
};
use chrono::NaiveDate;

/// Calls `$m![check, ...]` with every check, so that each implementation's
/// test list cannot miss one.
macro_rules! for_each_check {
    ($m:ident) => {
        $m![
            add_then_get,
            add_refuses_a_duplicate_reference,
            batches_page_by_reference_and_sku,
            allocate_takes_from_the_preferred_batch_with_room,
            allocate_is_idempotent_per_order_line,
            allocate_reports_no_room_and_changes_nothing,
            remove_line_gives_the_stock_back,
            lines_of_order_span_skus,
            a_shrunk_batch_gives_up_its_most_recent_lines,
            backorders_wait_oldest_first_and_are_filled,
            batch_lines_page_oldest_first,
            orders_belong_to_the_account_of_their_first_line,
        ];
    };
}
#[allow(unused_imports)] // used by the in-memory tests only
pub(crate) use for_each_check;

/// Every check, in turn, over one store.
pub async fn run_all<R: AllocationRepository>(repo: &R, prefix: &str) {
    macro_rules! run {
        ($($check:ident),* $(,)?) => {$( $check(repo, prefix).await; )*};
    }
    for_each_check!(run);
}

/// The account the checks allocate as, unless a check is about ownership.
fn owner() -> Requester {
    account("owner-account", false)
}

fn account(id: &str, admin: bool) -> Requester {
    Requester {
        account: id.to_owned(),
        admin,
    }
}

fn day(d: u32) -> Option<NaiveDate> {
    NaiveDate::from_ymd_opt(2025, 3, d)
}

async fn add<R: AllocationRepository>(
    repo: &R,
    reference: &str,
    sku: &str,
    qty: u32,
    eta: Option<NaiveDate>,
) {
    repo.add_batch(&Batch::new(reference, sku, qty, eta))
        .await
        .expect("add a batch");
}

async fn stored<R: AllocationRepository>(repo: &R, reference: &str) -> Batch {
    repo.batch(reference)
        .await
        .expect("get a batch")
        .unwrap_or_else(|| panic!("batch {reference} is stored"))
}

async fn taken<R: AllocationRepository>(repo: &R, line: &OrderLine) -> String {
    match repo.allocate(line, &owner()).await.expect("allocate") {
        AllocateStep::Taken(batchref) => batchref,
        other => panic!("{line:?} was not allocated: {other:?}"),
    }
}

fn references(batches: &[Batch]) -> Vec<&str> {
    batches.iter().map(|b| b.reference.as_str()).collect()
}

pub async fn add_then_get<R: AllocationRepository>(repo: &R, prefix: &str) {
    let (reference, sku) = (format!("{prefix}-get-1"), format!("{prefix}-get-sku"));
    add(repo, &reference, &sku, 7, day(9)).await;
    let batch = stored(repo, &reference).await;
    assert_eq!(batch, Batch::new(&reference, &sku, 7, day(9)));
    add(repo, &format!("{prefix}-get-2"), &sku, 3, None).await;
    assert_eq!(stored(repo, &format!("{prefix}-get-2")).await.eta, None);
    assert!(
        repo.batch(&format!("{prefix}-get-none"))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(repo.stock(&sku, 7).await.unwrap(), Stock::Enough);
    assert_eq!(repo.stock(&sku, 8).await.unwrap(), Stock::Short);
    let unknown = format!("{prefix}-get-nosku");
    assert_eq!(repo.stock(&unknown, 1).await.unwrap(), Stock::NoSuchSku);
}

pub async fn add_refuses_a_duplicate_reference<R: AllocationRepository>(repo: &R, prefix: &str) {
    let reference = format!("{prefix}-dup-1");
    add(repo, &reference, &format!("{prefix}-dup-sku"), 5, None).await;
    let error = repo
        .add_batch(&Batch::new(
            &reference,
            format!("{prefix}-dup-other"),
            9,
            None,
        ))
        .await
        .unwrap_err();
    assert!(matches!(error, AddBatchError::DuplicateBatch(r) if r == reference));
    assert_eq!(stored(repo, &reference).await.purchased_quantity(), 5);
}

pub async fn batches_page_by_reference_and_sku<R: AllocationRepository>(repo: &R, prefix: &str) {
    let sku = format!("{prefix}-page-sku");
    for n in [3, 1, 2] {
        add(repo, &format!("{prefix}-page-{n}"), &sku, 1, None).await;
    }
    add(
        repo,
        &format!("{prefix}-page-4"),
        &format!("{prefix}-page-other"),
        1,
        None,
    )
    .await;
    let first = repo.batches(Some(&sku), None, 2).await.unwrap();
    let names = [1, 2, 3].map(|n| format!("{prefix}-page-{n}"));
    assert_eq!(references(&first), [&names[0], &names[1]]);
    let rest = repo.batches(Some(&sku), Some(&names[1]), 5).await.unwrap();
    assert_eq!(references(&rest), [&names[2]]);
    let after = repo.batches(None, Some(&names[2]), 1).await.unwrap();
    assert_eq!(references(&after), [format!("{prefix}-page-4")]);
}

/// The store picks the batch itself (MongoDB: one sorted findAndModify), so
/// it must follow the domain's preference: warehouse, earliest eta, reference.
pub async fn allocate_takes_from_the_preferred_batch_with_room<R: AllocationRepository>(
    repo: &R,
    prefix: &str,
) {
    let sku = format!("{prefix}-pref-sku");
    let name = |n: &str| format!("{prefix}-pref-{n}");
    add(repo, &name("late"), &sku, 10, day(20)).await;
    add(repo, &name("soon-b"), &sku, 10, day(2)).await;
    add(repo, &name("soon-a"), &sku, 10, day(2)).await;
    add(repo, &name("wh-b"), &sku, 10, None).await;
    add(repo, &name("wh-a"), &sku, 3, None).await;
    let line = |n: u32, qty| OrderLine::new(format!("{prefix}-pref-o{n}"), &sku, qty);
    assert_eq!(taken(repo, &line(1, 2)).await, name("wh-a"));
    // wh-a has 1 left: too little for 5, so the next warehouse batch.
    assert_eq!(taken(repo, &line(2, 5)).await, name("wh-b"));
    assert_eq!(taken(repo, &line(3, 5)).await, name("wh-b"));
    assert_eq!(taken(repo, &line(4, 5)).await, name("soon-a"));
    assert_eq!(taken(repo, &line(5, 6)).await, name("soon-b"));
    assert_eq!(taken(repo, &line(6, 10)).await, name("late"));
    assert_eq!(taken(repo, &line(7, 1)).await, name("wh-a"));
    let available = |b: Batch| b.available_quantity();
    assert_eq!(available(stored(repo, &name("wh-a")).await), 0);
    assert_eq!(available(stored(repo, &name("wh-b")).await), 0);
    assert_eq!(available(stored(repo, &name("soon-a")).await), 5);
    assert_eq!(available(stored(repo, &name("soon-b")).await), 4);
    assert_eq!(available(stored(repo, &name("late")).await), 0);
}

pub async fn allocate_is_idempotent_per_order_line<R: AllocationRepository>(
    repo: &R,
    prefix: &str,
) {
    let (sku, other_sku) = (format!("{prefix}-idem-sku"), format!("{prefix}-idem-sku2"));
    let reference = format!("{prefix}-idem-1");
    add(repo, &reference, &sku, 10, None).await;
    add(repo, &format!("{prefix}-idem-2"), &other_sku, 10, None).await;
    let orderid = format!("{prefix}-idem-o1");
    let line = OrderLine::new(&orderid, &sku, 4);
    assert_eq!(taken(repo, &line).await, reference);
    // Same order line again, even with another quantity: nothing changes.
    for again in [line.clone(), OrderLine::new(&orderid, &sku, 1)] {
        match repo.allocate(&again, &owner()).await.unwrap() {
            AllocateStep::AlreadyAcknowledged(existing) => {
                assert_eq!(existing.line, line);
                assert_eq!(
                    existing.status,
                    LineStatus::Allocated {
                        batchref: reference.clone()
                    }
                );
            }
            other => panic!("a repeat was {other:?}"),
        }
    }
    assert_eq!(stored(repo, &reference).await.available_quantity(), 6);
    // The same order may hold a line of another sku.
    taken(repo, &OrderLine::new(&orderid, &other_sku, 1)).await;
}

pub async fn allocate_reports_no_room_and_changes_nothing<R: AllocationRepository>(
    repo: &R,
    prefix: &str,
) {
    let sku = format!("{prefix}-room-sku");
    let reference = format!("{prefix}-room-1");
    add(repo, &reference, &sku, 3, None).await;
    let big = OrderLine::new(format!("{prefix}-room-o1"), &sku, 4);
    assert_eq!(
        repo.allocate(&big, &owner()).await.unwrap(),
        AllocateStep::NoRoom
    );
    let unknown = OrderLine::new(
        format!("{prefix}-room-o2"),
        format!("{prefix}-room-none"),
        1,
    );
    assert_eq!(
        repo.allocate(&unknown, &owner()).await.unwrap(),
        AllocateStep::NoRoom
    );
    assert_eq!(stored(repo, &reference).await.available_quantity(), 3);
    assert!(repo.line(&big.orderid, &sku).await.unwrap().is_none());
}

pub async fn remove_line_gives_the_stock_back<R: AllocationRepository>(repo: &R, prefix: &str) {
    let sku = format!("{prefix}-rm-sku");
    let reference = format!("{prefix}-rm-1");
    add(repo, &reference, &sku, 10, None).await;
    let line = OrderLine::new(format!("{prefix}-rm-o1"), &sku, 4);
    taken(repo, &line).await;
    let removed = repo
        .remove_line(&line.orderid, &sku, &owner())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(removed.line, line);
    assert_eq!(
        removed.status,
        LineStatus::Allocated {
            batchref: reference.clone()
        }
    );
    assert_eq!(stored(repo, &reference).await.available_quantity(), 10);
    assert!(
        repo.remove_line(&line.orderid, &sku, &owner())
            .await
            .unwrap()
            .is_none()
    );
    assert!(repo.line(&line.orderid, &sku).await.unwrap().is_none());
    // A line can be allocated again once removed.
    assert_eq!(taken(repo, &line).await, reference);
}

pub async fn lines_of_order_span_skus<R: AllocationRepository>(repo: &R, prefix: &str) {
    let skus = [1, 2].map(|n| format!("{prefix}-ord-sku{n}"));
    for (n, sku) in skus.iter().enumerate() {
        add(repo, &format!("{prefix}-ord-b{n}"), sku, 10, None).await;
    }
    let orderid = format!("{prefix}-ord-o1");
    taken(repo, &OrderLine::new(&orderid, &skus[1], 2)).await;
    taken(repo, &OrderLine::new(&orderid, &skus[0], 3)).await;
    taken(
        repo,
        &OrderLine::new(format!("{prefix}-ord-o2"), &skus[0], 1),
    )
    .await;
    let mut lines = repo.lines_of_order(&orderid, 10).await.unwrap();
    lines.sort_by(|a, b| a.line.sku.cmp(&b.line.sku));
    let got: Vec<_> = lines
        .iter()
        .map(|l| (l.line.sku.as_str(), l.line.qty))
        .collect();
    assert_eq!(got, [(skus[0].as_str(), 3), (skus[1].as_str(), 2)]);
    assert_eq!(repo.lines_of_order(&orderid, 1).await.unwrap().len(), 1);
    let of_sku = repo
        .lines_of_sku(
            &skus[0],
            &[
                orderid.clone(),
                format!("{prefix}-ord-o2"),
                format!("{prefix}-ord-none"),
            ],
        )
        .await
        .unwrap();
    let mut held: Vec<_> = of_sku
        .iter()
        .map(|l| (l.line.orderid.clone(), l.line.qty))
        .collect();
    held.sort();
    assert_eq!(
        held,
        [(orderid.clone(), 3), (format!("{prefix}-ord-o2"), 1)]
    );
    assert!(
        repo.lines_of_order(&format!("{prefix}-ord-none"), 10)
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn a_shrunk_batch_gives_up_its_most_recent_lines<R: AllocationRepository>(
    repo: &R,
    prefix: &str,
) {
    let sku = format!("{prefix}-shr-sku");
    let reference = format!("{prefix}-shr-1");
    add(repo, &reference, &sku, 10, None).await;
    let lines: Vec<OrderLine> = [3, 3, 2, 2]
        .iter()
        .enumerate()
        .map(|(n, &qty)| OrderLine::new(format!("{prefix}-shr-o{n}"), &sku, qty))
        .collect();
    for line in &lines {
        taken(repo, line).await;
    }
    assert!(
        repo.give_up_recent_lines(&reference, 10)
            .await
            .unwrap()
            .is_empty(),
        "fits"
    );
    let shrunk = repo
        .change_purchased_quantity(&reference, 5)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (shrunk.purchased_quantity(), shrunk.available_quantity()),
        (5, -5)
    );
    assert_eq!(
        repo.over_allocated_batches(1000)
            .await
            .unwrap()
            .iter()
            .filter(|r| **r == reference)
            .count(),
        1
    );
    // At most one line per step: the most recent first.
    assert_eq!(
        repo.give_up_recent_lines(&reference, 1).await.unwrap(),
        [lines[3].clone()]
    );
    assert_eq!(stored(repo, &reference).await.available_quantity(), -3);
    assert_eq!(
        repo.give_up_recent_lines(&reference, 10).await.unwrap(),
        [lines[2].clone(), lines[1].clone()]
    );
    let batch = stored(repo, &reference).await;
    assert_eq!(
        (batch.available_quantity(), batch.allocated_quantity()),
        (2, 3)
    );
    assert!(
        !repo
            .over_allocated_batches(1000)
            .await
            .unwrap()
            .contains(&reference)
    );
    for given_up in &lines[1..] {
        let stands = repo.line(&given_up.orderid, &sku).await.unwrap().unwrap();
        assert_eq!(stands.status, LineStatus::Backordered, "{given_up:?}");
    }
    assert!(
        repo.change_purchased_quantity(&format!("{prefix}-shr-none"), 1)
            .await
            .unwrap()
            .is_none()
    );
}

pub async fn backorders_wait_oldest_first_and_are_filled<R: AllocationRepository>(
    repo: &R,
    prefix: &str,
) {
    let sku = format!("{prefix}-bo-sku");
    let reference = format!("{prefix}-bo-1");
    add(repo, &reference, &sku, 6, None).await;
    let lines: Vec<OrderLine> = (0..3)
        .map(|n| OrderLine::new(format!("{prefix}-bo-o{n}"), &sku, 2))
        .collect();
    for line in &lines {
        taken(repo, line).await;
    }
    repo.change_purchased_quantity(&reference, 0).await.unwrap();
    assert_eq!(
        repo.give_up_recent_lines(&reference, 10)
            .await
            .unwrap()
            .len(),
        3
    );
    let waiting = repo.backorders(Some(&sku), None, 10).await.unwrap();
    let ids: Vec<&str> = waiting
        .iter()
        .map(|b| b.line.line.orderid.as_str())
        .collect();
    // All three were given up in one step; the queue keeps acknowledgement order.
    assert_eq!(
        ids,
        lines.iter().map(|l| l.orderid.as_str()).collect::<Vec<_>>()
    );
    let page = repo
        .backorders(Some(&sku), Some(&waiting[0].position), 1)
        .await
        .unwrap();
    assert_eq!(page[0].line.line, lines[1]);
    assert!(
        repo.backorders(None, None, 1000)
            .await
            .unwrap()
            .iter()
            .any(|b| b.line.line == lines[2])
    );

    // A repeat of a waiting line changes nothing and says it waits.
    match repo.allocate(&lines[0], &owner()).await.unwrap() {
        AllocateStep::AlreadyAcknowledged(l) => assert_eq!(l.status, LineStatus::Backordered),
        other => panic!("a repeat of a backorder was {other:?}"),
    }
    assert_eq!(
        repo.fill_backorder(&lines[0]).await.unwrap(),
        FillStep::NoRoom
    );
    repo.change_purchased_quantity(&reference, 4).await.unwrap();
    assert_eq!(
        repo.fill_backorder(&lines[0]).await.unwrap(),
        FillStep::Taken(reference.clone())
    );
    // Filled already: not again, though there is room.
    assert_eq!(
        repo.fill_backorder(&lines[0]).await.unwrap(),
        FillStep::NotWaiting
    );
    assert_eq!(stored(repo, &reference).await.available_quantity(), 2);
    repo.change_purchased_quantity(&reference, 3).await.unwrap();
    assert_eq!(
        repo.fill_backorder(&lines[1]).await.unwrap(),
        FillStep::NoRoom
    );
    assert_eq!(stored(repo, &reference).await.available_quantity(), 1);
    // Removing a waiting line gives no stock back: it held none.
    let removed = repo
        .remove_line(&lines[1].orderid, &sku, &owner())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(removed.status, LineStatus::Backordered);
    assert_eq!(stored(repo, &reference).await.available_quantity(), 1);
    // Gone, so never filled; a store may find that out, or find no room, first.
    let cancelled = repo.fill_backorder(&lines[1]).await.unwrap();
    assert!(
        matches!(cancelled, FillStep::NotWaiting | FillStep::NoRoom),
        "{cancelled:?}"
    );
    let left = repo.backorders(Some(&sku), None, 10).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].line.line, lines[2]);
}

pub async fn batch_lines_page_oldest_first<R: AllocationRepository>(repo: &R, prefix: &str) {
    let sku = format!("{prefix}-bl-sku");
    let reference = format!("{prefix}-bl-1");
    add(repo, &reference, &sku, 10, None).await;
    for n in 0..3 {
        taken(
            repo,
            &OrderLine::new(format!("{prefix}-bl-o{n}"), &sku, n + 1),
        )
        .await;
    }
    let first = repo.batch_lines(&reference, None, 2).await.unwrap();
    let got: Vec<_> = first.iter().map(|l| (l.orderid.clone(), l.qty)).collect();
    assert_eq!(
        got,
        [
            (format!("{prefix}-bl-o0"), 1),
            (format!("{prefix}-bl-o1"), 2)
        ]
    );
    let rest = repo
        .batch_lines(&reference, Some(first[1].position), 2)
        .await
        .unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].orderid, format!("{prefix}-bl-o2"));
    assert!(
        repo.batch_lines(&format!("{prefix}-bl-none"), None, 2)
            .await
            .unwrap()
            .is_empty()
    );
}

/// The account that allocates an order's first line owns the order, decided
/// atomically even when two accounts race for the first lines of one order on
/// different skus; only the owner and admins may add to it or remove from it,
/// and every line records the owner.
pub async fn orders_belong_to_the_account_of_their_first_line<R: AllocationRepository>(
    repo: &R,
    prefix: &str,
) {
    let skus = [1, 2, 3].map(|n| format!("{prefix}-own-sku{n}"));
    for (n, sku) in skus.iter().enumerate() {
        add(repo, &format!("{prefix}-own-b{n}"), sku, 100, None).await;
    }
    let (alice, bob, admin) = (
        account("alice", false),
        account("bob", false),
        account("root", true),
    );
    let order = format!("{prefix}-own-o1");
    let line = |sku: &str| OrderLine::new(&order, sku, 1);
    assert!(matches!(
        repo.allocate(&line(&skus[0]), &alice).await.unwrap(),
        AllocateStep::Taken(_)
    ));
    assert_eq!(
        repo.allocate(&line(&skus[1]), &bob).await.unwrap(),
        AllocateStep::NotOwner
    );
    assert!(
        repo.remove_line(&order, &skus[0], &bob)
            .await
            .unwrap()
            .is_none(),
        "another account cannot remove the line"
    );
    // An admin adds to the order; the line still belongs to its owner.
    assert!(matches!(
        repo.allocate(&line(&skus[1]), &admin).await.unwrap(),
        AllocateStep::Taken(_)
    ));
    let lines = repo.lines_of_order(&order, 10).await.unwrap();
    assert_eq!(lines.len(), 2);
    assert!(lines.iter().all(|l| l.owner.as_deref() == Some("alice")));
    assert!(
        repo.remove_line(&order, &skus[1], &alice)
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        repo.remove_line(&order, &skus[0], &admin)
            .await
            .unwrap()
            .is_some()
    );

    // Two accounts race for the first lines of a new order, on two skus:
    // exactly one owns it.
    for round in 0..5 {
        let order = format!("{prefix}-own-race{round}");
        let (first, second) = (
            OrderLine::new(&order, &skus[1], 1),
            OrderLine::new(&order, &skus[2], 1),
        );
        let (a, b) = tokio::join!(repo.allocate(&first, &alice), repo.allocate(&second, &bob));
        let outcomes = [a.unwrap(), b.unwrap()];
        let taken = outcomes
            .iter()
            .filter(|o| matches!(o, AllocateStep::Taken(_)))
            .count();
        assert_eq!(taken, 1, "round {round}: {outcomes:?}");
        assert!(outcomes.contains(&AllocateStep::NotOwner), "{outcomes:?}");
        let owners: Vec<_> = repo
            .lines_of_order(&order, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|l| l.owner)
            .collect();
        assert_eq!(owners.len(), 1, "one line, of the winner");
    }
}
