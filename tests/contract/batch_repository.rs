//! The behaviour every [`BatchRepository`] must have, written once and run
//! against each implementation: the in-memory one in the library's unit tests,
//! MongoDB in the integration tests.
//!
//! Each check takes a `prefix` that it puts in front of every sku, reference
//! and order id it creates (followed by a tag of its own), so that checks, and
//! runs with distinct prefixes, can share one store. Prefixes must not contain one another followed by `-`
//! (`a` and `a-list` would collide). A failed check panics.
//!
//! This file names the crate only as `allot::` because it is compiled both
//! inside the crate and as part of an integration-test binary.

use allot::domain::allocation::{Batch, OrderLine};
use allot::services::allocation::{Allocation, BatchRepository, RepositoryError};
use chrono::NaiveDate;

/// Every check, in turn, over one store.
pub async fn run_all<R: BatchRepository>(repo: &R, prefix: &str) {
    add_then_get(repo, prefix).await;
    add_refuses_a_duplicate_reference(repo, prefix).await;
    for_sku_returns_only_that_sku(repo, prefix).await;
    list_pages_by_reference(repo, prefix).await;
    allocate_if_available_refuses_short_stock_and_duplicates(repo, prefix).await;
    deallocate_returns_the_line_and_frees_the_stock(repo, prefix).await;
    find_allocation_finds_the_holding_batch(repo, prefix).await;
    allocations_for_order_spans_skus(repo, prefix).await;
    save_if_unchanged_refuses_a_stale_version(repo, prefix).await;
}

fn day(d: u32) -> Option<NaiveDate> {
    NaiveDate::from_ymd_opt(2025, 3, d)
}

async fn add<R: BatchRepository>(repo: &R, reference: &str, sku: &str, qty: u32) -> Batch {
    let batch = Batch::new(reference, sku, qty, None);
    repo.add(&batch).await.expect("add a batch");
    batch
}

async fn stored<R: BatchRepository>(repo: &R, reference: &str) -> Batch {
    repo.get(reference)
        .await
        .expect("get a batch")
        .unwrap_or_else(|| panic!("batch {reference} is stored"))
}

fn references(batches: &[Batch]) -> Vec<&str> {
    batches.iter().map(|b| b.reference.as_str()).collect()
}

pub async fn add_then_get<R: BatchRepository>(repo: &R, prefix: &str) {
    let shipment = Batch::new(
        format!("{prefix}-get-1"),
        format!("{prefix}-get-sku"),
        7,
        day(9),
    );
    repo.add(&shipment).await.expect("add a batch");
    let in_stock = add(
        repo,
        &format!("{prefix}-get-2"),
        &format!("{prefix}-get-sku"),
        3,
    )
    .await;

    assert_eq!(stored(repo, &shipment.reference).await, shipment);
    assert_eq!(stored(repo, &in_stock.reference).await, in_stock);
    let missing = repo
        .get(&format!("{prefix}-get-missing"))
        .await
        .expect("get");
    assert_eq!(missing, None);
}

pub async fn add_refuses_a_duplicate_reference<R: BatchRepository>(repo: &R, prefix: &str) {
    let reference = format!("{prefix}-dup-1");
    let original = add(repo, &reference, &format!("{prefix}-dup-sku"), 10).await;

    let again = Batch::new(&reference, format!("{prefix}-dup-other"), 99, day(1));
    match repo.add(&again).await {
        Err(RepositoryError::DuplicateReference(duplicate)) => assert_eq!(duplicate, reference),
        other => panic!("expected DuplicateReference({reference}), got {other:?}"),
    }
    assert_eq!(stored(repo, &reference).await, original);
}

pub async fn for_sku_returns_only_that_sku<R: BatchRepository>(repo: &R, prefix: &str) {
    let sku = format!("{prefix}-forsku-lamp");
    add(repo, &format!("{prefix}-forsku-2"), &sku, 5).await;
    add(repo, &format!("{prefix}-forsku-1"), &sku, 5).await;
    add(
        repo,
        &format!("{prefix}-forsku-3"),
        &format!("{prefix}-forsku-chair"),
        5,
    )
    .await;

    let mut batches = repo.for_sku(&sku).await.expect("for_sku");
    batches.sort_by(|a, b| a.reference.cmp(&b.reference));
    assert_eq!(
        references(&batches),
        [format!("{prefix}-forsku-1"), format!("{prefix}-forsku-2")]
    );
    assert!(batches.iter().all(|b| b.sku == sku));
    let none = repo
        .for_sku(&format!("{prefix}-forsku-none"))
        .await
        .expect("for_sku");
    assert!(none.is_empty());
}

pub async fn list_pages_by_reference<R: BatchRepository>(repo: &R, prefix: &str) {
    let sku = format!("{prefix}-list-sku");
    let r = |name: &str| format!("{prefix}-list-{name}");
    for name in ["c", "a", "b"] {
        add(repo, &r(name), &sku, 1).await;
    }
    add(repo, &r("bb"), &format!("{prefix}-list-other"), 1).await;

    let page = |sku: Option<String>, after: Option<String>, limit| async move {
        let batches = repo
            .list(sku.as_deref(), after.as_deref(), limit)
            .await
            .expect("list");
        batches.into_iter().map(|b| b.reference).collect::<Vec<_>>()
    };
    let of_sku = || Some(sku.clone());
    assert_eq!(page(of_sku(), None, 2).await, [r("a"), r("b")]);
    assert_eq!(page(of_sku(), Some(r("b")), 2).await, [r("c")]);
    assert_eq!(page(of_sku(), Some(r("c")), 2).await, Vec::<String>::new());
    assert_eq!(page(of_sku(), Some(r("a0")), 10).await, [r("b"), r("c")]);
    // Without a sku every batch counts; `after` keeps other checks' batches,
    // which sort before this prefix's "-list-", out of the page.
    assert_eq!(
        page(None, Some(r("")), 4).await,
        [r("a"), r("b"), r("bb"), r("c")]
    );
    assert_eq!(page(None, Some(r("a")), 1).await, [r("b")]);
}

pub async fn allocate_if_available_refuses_short_stock_and_duplicates<R: BatchRepository>(
    repo: &R,
    prefix: &str,
) {
    let sku = format!("{prefix}-alloc-sku");
    let reference = format!("{prefix}-alloc-1");
    let before = add(repo, &reference, &sku, 10).await;
    let first = OrderLine::new(format!("{prefix}-alloc-o1"), &sku, 6);

    assert!(
        repo.allocate_if_available(&reference, &first)
            .await
            .expect("allocate")
    );
    let after_first = stored(repo, &reference).await;
    assert_eq!(after_first.allocations(), std::slice::from_ref(&first));
    assert_eq!(after_first.available_quantity(), 4);
    assert!(
        after_first.version > before.version,
        "a write bumps the version"
    );

    let too_big = OrderLine::new(format!("{prefix}-alloc-o2"), &sku, 5);
    assert!(
        !repo
            .allocate_if_available(&reference, &too_big)
            .await
            .expect("allocate")
    );
    let same_line = OrderLine::new(format!("{prefix}-alloc-o1"), &sku, 1);
    assert!(
        !repo
            .allocate_if_available(&reference, &same_line)
            .await
            .expect("allocate")
    );
    assert_eq!(
        stored(repo, &reference).await,
        after_first,
        "a refused allocation writes nothing"
    );

    let exact_fit = OrderLine::new(format!("{prefix}-alloc-o2"), &sku, 4);
    assert!(
        repo.allocate_if_available(&reference, &exact_fit)
            .await
            .expect("allocate")
    );
    let full = stored(repo, &reference).await;
    assert_eq!(full.allocations(), [first, exact_fit]);
    assert_eq!(full.available_quantity(), 0);
    assert!(full.version > after_first.version);

    let gone = repo
        .allocate_if_available(&format!("{prefix}-alloc-missing"), &too_big)
        .await
        .expect("allocate");
    assert!(!gone, "no batch, no allocation");
}

pub async fn deallocate_returns_the_line_and_frees_the_stock<R: BatchRepository>(
    repo: &R,
    prefix: &str,
) {
    let sku = format!("{prefix}-dealloc-sku");
    let reference = format!("{prefix}-dealloc-1");
    add(repo, &reference, &sku, 10).await;
    let line = OrderLine::new(format!("{prefix}-dealloc-o1"), &sku, 10);
    let waiting = OrderLine::new(format!("{prefix}-dealloc-o2"), &sku, 1);
    assert!(
        repo.allocate_if_available(&reference, &line)
            .await
            .expect("allocate")
    );
    assert!(
        !repo
            .allocate_if_available(&reference, &waiting)
            .await
            .expect("allocate")
    );
    let full = stored(repo, &reference).await;

    let removed = repo
        .deallocate(&reference, &line.orderid)
        .await
        .expect("deallocate");
    assert_eq!(removed, Some(line.clone()));
    let freed = stored(repo, &reference).await;
    assert_eq!(freed.available_quantity(), 10);
    assert!(freed.allocations().is_empty());
    assert!(freed.version > full.version, "a write bumps the version");
    assert!(
        repo.allocate_if_available(&reference, &waiting)
            .await
            .expect("allocate")
    );

    let again = repo
        .deallocate(&reference, &line.orderid)
        .await
        .expect("deallocate");
    assert_eq!(again, None);
    let gone = repo
        .deallocate(&format!("{prefix}-dealloc-missing"), &line.orderid)
        .await
        .expect("deallocate");
    assert_eq!(gone, None);
}

pub async fn find_allocation_finds_the_holding_batch<R: BatchRepository>(repo: &R, prefix: &str) {
    let sku = format!("{prefix}-find-sku");
    let other_sku = format!("{prefix}-find-other");
    add(repo, &format!("{prefix}-find-1"), &sku, 10).await;
    add(repo, &format!("{prefix}-find-2"), &sku, 10).await;
    add(repo, &format!("{prefix}-find-3"), &other_sku, 10).await;
    let orderid = format!("{prefix}-find-o1");
    let line = OrderLine::new(&orderid, &sku, 3);
    assert!(
        repo.allocate_if_available(&format!("{prefix}-find-2"), &line)
            .await
            .expect("allocate")
    );

    let holder = repo
        .find_allocation(&orderid, &sku)
        .await
        .expect("find_allocation");
    let holder = holder.expect("the line is allocated");
    assert_eq!(holder.reference, format!("{prefix}-find-2"));
    assert_eq!(holder.allocation_for(&orderid), Some(&line));

    let other = repo
        .find_allocation(&orderid, &other_sku)
        .await
        .expect("find_allocation");
    assert_eq!(other, None, "the order has no line of the other sku");
    let stranger = repo
        .find_allocation(&format!("{prefix}-find-o2"), &sku)
        .await
        .expect("find_allocation");
    assert_eq!(stranger, None);
}

pub async fn allocations_for_order_spans_skus<R: BatchRepository>(repo: &R, prefix: &str) {
    let lamp = format!("{prefix}-order-lamp");
    let chair = format!("{prefix}-order-chair");
    add(repo, &format!("{prefix}-order-1"), &lamp, 10).await;
    add(repo, &format!("{prefix}-order-2"), &chair, 10).await;
    let orderid = format!("{prefix}-order-o1");
    let other_order = format!("{prefix}-order-o2");
    for (reference, line) in [
        ("1", OrderLine::new(&orderid, &lamp, 2)),
        ("2", OrderLine::new(&orderid, &chair, 3)),
        ("1", OrderLine::new(&other_order, &lamp, 4)),
    ] {
        let reference = format!("{prefix}-order-{reference}");
        assert!(
            repo.allocate_if_available(&reference, &line)
                .await
                .expect("allocate")
        );
    }

    let mut allocations = repo
        .allocations_for_order(&orderid)
        .await
        .expect("allocations");
    allocations.sort_by(|a, b| a.sku.cmp(&b.sku));
    assert_eq!(
        allocations,
        [
            Allocation {
                sku: chair,
                batchref: format!("{prefix}-order-2"),
                qty: 3
            },
            Allocation {
                sku: lamp,
                batchref: format!("{prefix}-order-1"),
                qty: 2
            },
        ]
    );
    let none = repo
        .allocations_for_order(&format!("{prefix}-order-o3"))
        .await
        .expect("allocations");
    assert!(none.is_empty());
}

pub async fn save_if_unchanged_refuses_a_stale_version<R: BatchRepository>(repo: &R, prefix: &str) {
    let sku = format!("{prefix}-save-sku");
    let reference = format!("{prefix}-save-1");
    let original = Batch::new(&reference, &sku, 10, day(4));
    repo.add(&original).await.expect("add a batch");
    let kept = OrderLine::new(format!("{prefix}-save-o1"), &sku, 4);
    let displaced = OrderLine::new(format!("{prefix}-save-o2"), &sku, 4);
    for line in [&kept, &displaced] {
        assert!(
            repo.allocate_if_available(&reference, line)
                .await
                .expect("allocate")
        );
    }

    let mut copy = stored(repo, &reference).await;
    assert_eq!(
        copy.change_purchased_quantity(5),
        std::slice::from_ref(&displaced)
    );
    assert!(repo.save_if_unchanged(&copy).await.expect("save"));
    let saved = stored(repo, &reference).await;
    assert_eq!(saved.purchased_quantity(), 5);
    assert_eq!(saved.allocations(), std::slice::from_ref(&kept));
    assert_eq!(
        (saved.sku.as_str(), saved.eta),
        (sku.as_str(), original.eta)
    );
    assert!(saved.version > copy.version, "a write bumps the version");

    // The same copy again is now stale.
    copy.change_purchased_quantity(1);
    assert!(!repo.save_if_unchanged(&copy).await.expect("save"));
    assert_eq!(stored(repo, &reference).await, saved);

    // A conditional allocation also makes earlier copies stale.
    let mut before_allocation = saved.clone();
    let small = OrderLine::new(format!("{prefix}-save-o3"), &sku, 1);
    assert!(
        repo.allocate_if_available(&reference, &small)
            .await
            .expect("allocate")
    );
    before_allocation.change_purchased_quantity(100);
    assert!(
        !repo
            .save_if_unchanged(&before_allocation)
            .await
            .expect("save")
    );
    let latest = stored(repo, &reference).await;
    assert_eq!(latest.purchased_quantity(), 5);

    // A fresh copy saves.
    let mut fresh = latest.clone();
    fresh.change_purchased_quantity(100);
    assert!(repo.save_if_unchanged(&fresh).await.expect("save"));
    assert_eq!(stored(repo, &reference).await.purchased_quantity(), 100);
}
