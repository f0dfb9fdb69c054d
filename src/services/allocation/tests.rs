//! The allocation use cases over the in-memory repository.

use std::sync::Arc;

use super::*;
use crate::testing::memory::InMemoryAllocations;

fn admin() -> Requester {
    Requester {
        account: "admin".to_owned(),
        admin: true,
    }
}

fn day(d: u32) -> Option<NaiveDate> {
    NaiveDate::from_ymd_opt(2025, 5, d)
}

fn line(orderid: &str, sku: &str, qty: u32) -> OrderLine {
    OrderLine::new(orderid, sku, qty)
}

async fn repo_with(batches: &[(&str, &str, u32, Option<NaiveDate>)]) -> InMemoryAllocations {
    let repo = InMemoryAllocations::new();
    for &(reference, sku, qty, eta) in batches {
        add_batch(&repo, reference, sku, qty, eta).await.unwrap();
    }
    repo
}

async fn available(repo: &InMemoryAllocations, reference: &str) -> i64 {
    get_batch(repo, reference)
        .await
        .unwrap()
        .available_quantity()
}

async fn allocated(repo: &InMemoryAllocations, l: OrderLine) -> String {
    match allocate(repo, l, &admin()).await.unwrap() {
        Placement::Allocated(batchref) => batchref,
        Placement::Backordered => panic!("backordered"),
    }
}

async fn status(repo: &InMemoryAllocations, orderid: &str, sku: &str) -> LineStatus {
    repo.line(orderid, sku).await.unwrap().unwrap().status
}

fn at(batchref: &str) -> LineStatus {
    LineStatus::Allocated {
        batchref: batchref.to_owned(),
    }
}

#[tokio::test]
async fn returns_allocation() {
    let repo = repo_with(&[("b1", "COMPLICATED-LAMP", 100, None)]).await;
    assert_eq!(
        allocated(&repo, line("o1", "COMPLICATED-LAMP", 10)).await,
        "b1"
    );
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
        chosen.push(allocated(&repo, line(orderid, "RETRO-CLOCK", 10)).await);
    }
    assert_eq!(chosen, ["warehouse", "shipment-soon", "shipment-late"]);
}

#[tokio::test]
async fn errors_for_an_invalid_sku() {
    let repo = repo_with(&[("b1", "AREALSKU", 100, None)]).await;
    let error = allocate(&repo, line("o1", "NONEXISTENTSKU", 10), &admin())
        .await
        .unwrap_err();
    assert!(matches!(
        error,
        AllocateError::Allocation(AllocationError::InvalidSku(_))
    ));
    assert_eq!(error.to_string(), "Invalid sku NONEXISTENTSKU");
}

#[tokio::test]
async fn errors_when_out_of_stock_and_keeps_no_record_of_the_line() {
    let repo = repo_with(&[("b1", "SMALL-TABLE", 10, day(1))]).await;
    allocated(&repo, line("o1", "SMALL-TABLE", 10)).await;
    let error = allocate(&repo, line("o2", "SMALL-TABLE", 1), &admin())
        .await
        .unwrap_err();
    assert!(matches!(
        error,
        AllocateError::Allocation(AllocationError::OutOfStock(_))
    ));
    assert_eq!(error.to_string(), "Out of stock for sku SMALL-TABLE");
    // A new line without stock is refused, not backordered.
    assert!(repo.line("o2", "SMALL-TABLE").await.unwrap().is_none());
    assert!(
        list_backorders(&repo, None, None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    // The refusal is recorded for the event feed (`allocation.refused`).
    assert_eq!(repo.refusals(), vec![line("o2", "SMALL-TABLE", 1)]);
}

#[tokio::test]
async fn allocating_the_same_line_again_returns_the_same_batch_and_writes_nothing() {
    let repo = repo_with(&[("b1", "LAMP", 10, None), ("b2", "LAMP", 10, day(1))]).await;
    assert_eq!(allocated(&repo, line("o1", "LAMP", 6)).await, "b1");
    repo.reset_calls();
    assert_eq!(allocated(&repo, line("o1", "LAMP", 6)).await, "b1");
    assert_eq!(repo.calls(), 1, "one step, no write");
    assert_eq!(available(&repo, "b1").await, 4);
    assert_eq!(available(&repo, "b2").await, 10);
}

#[tokio::test]
async fn an_uncontended_allocation_is_one_repository_step() {
    let repo = repo_with(&[("b1", "LAMP", 10, None), ("b2", "LAMP", 10, day(1))]).await;
    repo.reset_calls();
    allocated(&repo, line("o1", "LAMP", 1)).await;
    assert_eq!(
        repo.calls(),
        1,
        "take the stock and record the line, atomically"
    );
}

#[tokio::test]
async fn deallocate_frees_the_stock() {
    let repo = repo_with(&[("b1", "LAMP", 10, None)]).await;
    allocated(&repo, line("o1", "LAMP", 10)).await;
    let removed = deallocate(&repo, "o1", "LAMP", &admin()).await.unwrap();
    assert_eq!(
        (removed.line, removed.status),
        (line("o1", "LAMP", 10), at("b1"))
    );
    assert_eq!(available(&repo, "b1").await, 10);
    assert_eq!(allocated(&repo, line("o2", "LAMP", 10)).await, "b1");
}

#[tokio::test]
async fn deallocating_a_line_that_is_not_allocated_fails() {
    let repo = repo_with(&[("b1", "LAMP", 10, None)]).await;
    allocated(&repo, line("o1", "LAMP", 1)).await;
    for (orderid, sku) in [("o2", "LAMP"), ("o1", "CHAIR")] {
        let error = deallocate(&repo, orderid, sku, &admin()).await.unwrap_err();
        assert!(matches!(error, DeallocateError::NotAllocated { .. }));
        assert_eq!(
            error.to_string(),
            format!("Order line {orderid} for sku {sku} is not allocated")
        );
    }
    assert_eq!(available(&repo, "b1").await, 9);
}

#[tokio::test]
async fn shrinking_a_batch_moves_the_most_recent_lines_and_backorders_the_rest() {
    let repo = repo_with(&[
        ("warehouse", "LAMP", 10, None),
        ("shipment", "LAMP", 3, day(1)),
    ])
    .await;
    for (orderid, qty) in [("o1", 4), ("o2", 3), ("o3", 3)] {
        assert_eq!(
            allocated(&repo, line(orderid, "LAMP", qty)).await,
            "warehouse"
        );
    }

    let change = change_batch_quantity(&repo, "warehouse", 4).await.unwrap();

    assert_eq!(change.batch.purchased_quantity(), 4);
    assert_eq!(change.batch.available_quantity(), 0);
    // o3 and o2 were displaced; o2 is older, so it is served first.
    assert_eq!(
        change.reallocated,
        [(line("o2", "LAMP", 3), "shipment".to_owned())]
    );
    assert_eq!(change.backordered, [line("o3", "LAMP", 3)]);
    assert_eq!(status(&repo, "o3", "LAMP").await, LineStatus::Backordered);
    assert_eq!(status(&repo, "o1", "LAMP").await, at("warehouse"));
    // The waiting line is still the order's: listed, not 404.
    let o3 = allocations_for_order(&repo, "o3", &admin()).await.unwrap();
    assert_eq!(o3[0].status, LineStatus::Backordered);
}

#[tokio::test]
async fn a_displaced_line_may_return_to_the_same_batch_if_it_now_fits() {
    let repo = repo_with(&[("warehouse", "LAMP", 10, None)]).await;
    for (orderid, qty) in [("o1", 4), ("o2", 4), ("o3", 2)] {
        allocated(&repo, line(orderid, "LAMP", qty)).await;
    }
    let change = change_batch_quantity(&repo, "warehouse", 7).await.unwrap();
    // o3 then o2 had to go; o2 (older) does not fit and blocks o3: waiting
    // lines are served strictly oldest first.
    assert!(change.reallocated.is_empty());
    assert_eq!(
        change.backordered,
        [line("o3", "LAMP", 2), line("o2", "LAMP", 4)]
    );
    assert_eq!(change.batch.available_quantity(), 3);
    // One more unit and o2 fits; then o3 waits for 2 more.
    let change = change_batch_quantity(&repo, "warehouse", 8).await.unwrap();
    assert_eq!(
        change.reallocated,
        [(line("o2", "LAMP", 4), "warehouse".to_owned())]
    );
    assert_eq!(status(&repo, "o3", "LAMP").await, LineStatus::Backordered);
}

#[tokio::test]
async fn a_batch_may_shrink_to_zero() {
    let repo = repo_with(&[("lost", "LAMP", 5, day(3))]).await;
    allocated(&repo, line("o1", "LAMP", 2)).await;
    allocated(&repo, line("o2", "LAMP", 3)).await;
    let change = change_batch_quantity(&repo, "lost", 0).await.unwrap();
    assert_eq!(change.batch.purchased_quantity(), 0);
    assert_eq!(change.batch.available_quantity(), 0);
    assert_eq!(change.backordered.len(), 2);
}

#[tokio::test]
async fn growing_a_batch_serves_backorders_oldest_first() {
    let repo = repo_with(&[("b1", "LAMP", 10, None)]).await;
    for orderid in ["o1", "o2", "o3"] {
        allocated(&repo, line(orderid, "LAMP", 3)).await;
    }
    change_batch_quantity(&repo, "b1", 0).await.unwrap();
    let change = change_batch_quantity(&repo, "b1", 7).await.unwrap();
    let served: Vec<&str> = change
        .reallocated
        .iter()
        .map(|(l, _)| l.orderid.as_str())
        .collect();
    assert_eq!(served, ["o1", "o2"]);
    assert!(change.backordered.is_empty());
    assert_eq!(status(&repo, "o3", "LAMP").await, LineStatus::Backordered);
}

#[tokio::test]
async fn new_stock_and_freed_stock_go_to_waiting_lines() {
    let repo = repo_with(&[("b1", "LAMP", 4, None)]).await;
    allocated(&repo, line("o1", "LAMP", 2)).await;
    allocated(&repo, line("o2", "LAMP", 2)).await;
    change_batch_quantity(&repo, "b1", 2).await.unwrap();
    assert_eq!(status(&repo, "o2", "LAMP").await, LineStatus::Backordered);
    // A repeat of the waiting line says it waits and changes nothing.
    assert_eq!(
        allocate(&repo, line("o2", "LAMP", 2), &admin())
            .await
            .unwrap(),
        Placement::Backordered
    );
    deallocate(&repo, "o1", "LAMP", &admin()).await.unwrap();
    assert_eq!(status(&repo, "o2", "LAMP").await, at("b1"));

    change_batch_quantity(&repo, "b1", 0).await.unwrap();
    let batch = add_batch(&repo, "b2", "LAMP", 5, day(4)).await.unwrap();
    assert_eq!(status(&repo, "o2", "LAMP").await, at("b2"));
    assert_eq!(
        batch.available_quantity(),
        3,
        "the batch as its backorders left it"
    );
}

#[tokio::test]
async fn deallocating_a_backordered_line_cancels_it() {
    let repo = repo_with(&[("b1", "LAMP", 4, None)]).await;
    allocated(&repo, line("o1", "LAMP", 4)).await;
    change_batch_quantity(&repo, "b1", 1).await.unwrap();
    let removed = deallocate(&repo, "o1", "LAMP", &admin()).await.unwrap();
    assert_eq!(removed.status, LineStatus::Backordered);
    assert!(
        list_backorders(&repo, None, None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(available(&repo, "b1").await, 1);
}

#[tokio::test]
async fn recovery_finishes_an_interrupted_shrink_and_fills_backorders() {
    let repo = repo_with(&[("b1", "LAMP", 10, None), ("b2", "CHAIR", 1, None)]).await;
    for orderid in ["o1", "o2", "o3"] {
        allocated(&repo, line(orderid, "LAMP", 3)).await;
    }
    // A crash right after the quantity was saved: nothing given up yet.
    repo.change_purchased_quantity("b1", 4).await.unwrap();
    let recovery = recover(&repo, None).await.unwrap();
    assert_eq!(recovery.backordered, 2);
    assert_eq!(recovery.filled, 0);
    assert_eq!(available(&repo, "b1").await, 1);
    // Stock that appeared without anybody filling (a crash before the fill).
    repo.change_purchased_quantity("b1", 7).await.unwrap();
    let recovery = recover(&repo, None).await.unwrap();
    assert_eq!((recovery.backordered, recovery.filled), (0, 1));
    assert_eq!(status(&repo, "o2", "LAMP").await, at("b1"));
    assert_eq!(recover(&repo, None).await.unwrap(), Recovery::default());
}

#[tokio::test]
async fn unknown_batches_are_not_found() {
    let repo = InMemoryAllocations::new();
    let error = change_batch_quantity(&repo, "nope", 1).await.unwrap_err();
    assert!(matches!(error, BatchError::BatchNotFound(_)));
    assert_eq!(error.to_string(), "Batch nope not found");
    let error = get_batch(&repo, "nope").await.unwrap_err();
    assert_eq!(error.to_string(), "Batch nope not found");
    let error = batch_lines(&repo, "nope", None, 5).await.unwrap_err();
    assert!(matches!(error, BatchError::BatchNotFound(_)));
}

#[tokio::test]
async fn lists_an_orders_lines_across_skus() {
    let repo = repo_with(&[("b1", "LAMP", 10, None), ("b2", "CHAIR", 10, None)]).await;
    allocated(&repo, line("o1", "LAMP", 2)).await;
    allocated(&repo, line("o1", "CHAIR", 3)).await;
    allocated(&repo, line("o2", "LAMP", 1)).await;
    let lines = allocations_for_order(&repo, "o1", &admin()).await.unwrap();
    let got: Vec<_> = lines
        .iter()
        .map(|l| (l.line.sku.as_str(), l.batchref(), l.line.qty))
        .collect();
    assert_eq!(got, [("CHAIR", Some("b2"), 3), ("LAMP", Some("b1"), 2)]);
    let error = allocations_for_order(&repo, "o9", &admin())
        .await
        .unwrap_err();
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
            tokio::spawn(async move {
                allocate(&*repo, line(&format!("o{n}"), "CHAIR", 1), &admin()).await
            })
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
        assert_eq!(available(&repo, reference).await, 0, "{reference}");
        assert_eq!(
            batch_lines(&*repo, reference, None, 100)
                .await
                .unwrap()
                .len(),
            10
        );
    }
}
