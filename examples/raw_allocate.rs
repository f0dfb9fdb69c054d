//! Benchmark baseline: the database round trips of one allocation, issued
//! straight from the MongoDB driver in a loop — a `find` of the sku's batches
//! and the conditional `update` — with no HTTP, no auth and no allot code.
//!
//! `cargo run --release --example raw_allocate -- URI DATABASE CONCURRENCY SECONDS SKU...`
//! prints one JSON line: `{"ops": .., "seconds": .., "ops_per_sec": .., "errors": ..}`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use mongodb::bson::{Document, doc};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [uri, database, concurrency, seconds, skus @ ..] = args.as_slice() else {
        eprintln!("usage: raw_allocate URI DATABASE CONCURRENCY SECONDS SKU...");
        std::process::exit(2);
    };
    let concurrency: usize = concurrency.parse().expect("CONCURRENCY");
    let duration = Duration::from_secs_f64(seconds.parse().expect("SECONDS"));
    let client = mongodb::Client::with_uri_str(uri).await.expect("client");
    let batches = client.database(database).collection::<Document>("batches");
    let skus = Arc::new(skus.to_vec());
    let (ops, errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|worker| {
            let (batches, skus, ops, errors) = (batches.clone(), skus.clone(), ops.clone(), errors.clone());
            tokio::spawn(async move {
                let mut n = 0usize;
                while started.elapsed() < duration {
                    n += 1;
                    let sku = &skus[(worker * 7919 + n * 104_729) % skus.len()];
                    let orderid = format!("raw-{worker}-{n}");
                    let candidates: Result<Vec<Document>, _> = async {
                        batches.find(doc! { "sku": sku }).sort(doc! { "_id": 1 }).await?.try_collect().await
                    }
                    .await;
                    let Ok(candidates) = candidates else {
                        errors.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    let Some(reference) = candidates.first().and_then(|b| b.get_str("_id").ok()) else {
                        errors.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    let updated = batches
                        .update_one(
                            doc! { "_id": reference, "sku": sku, "available_quantity": { "$gte": 1 },
                                   "allocations.orderid": { "$ne": &orderid } },
                            doc! { "$push": { "allocations": { "orderid": &orderid, "qty": 1 } },
                                   "$inc": { "available_quantity": -1, "version": 1 } },
                        )
                        .await;
                    match updated {
                        Ok(result) if result.modified_count == 1 => ops.fetch_add(1, Ordering::Relaxed),
                        _ => errors.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("worker");
    }
    let seconds = started.elapsed().as_secs_f64();
    let ops = ops.load(Ordering::Relaxed);
    println!(
        r#"{{"ops": {ops}, "seconds": {seconds:.3}, "ops_per_sec": {:.1}, "errors": {}}}"#,
        ops as f64 / seconds,
        errors.load(Ordering::Relaxed)
    );
}
