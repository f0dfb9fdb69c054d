//! Benchmark baseline: the database round trips of one allocation, issued
//! straight from the MongoDB driver in a loop, with no HTTP, no auth and no
//! allot code. One allocation is one multi-document transaction (snapshot read
//! concern, majority write concern, as allot's), retried whole on the
//! `TransientTransactionError` label:
//!
//! 1. `batches.findOneAndUpdate({sku, available_quantity: {$gte: 1}},
//!    {$inc: {available_quantity: -1, version: 1, allocation_seq: 1}})`,
//!    sorted `{eta: 1, _id: 1}`, returning the document after;
//! 2. `order_lines.insertOne({orderid, sku, qty: 1, status: "allocated",
//!    batchref, batch_seq, acknowledged_at})`;
//! 3. `commitTransaction`.
//!
//! The database must hold the batches already (and the indexes allot creates);
//! `bench/run.py` prepares it through allot itself.
//!
//! `cargo run --release --example raw_allocate -- URI DATABASE CONCURRENCY SECONDS SKU...`
//! prints one JSON line: `{"ops": .., "seconds": .., "ops_per_sec": .., "errors": ..,
//! "retries": .., "p50_ms": .., "p99_ms": .., "cpu_us_per_op": ..}` (this process's
//! user + system CPU from `getrusage`, over the loop only, per allocation). With `RAW_ALLOCATE_MAX_OPS=N` in
//! the environment it also stops once N allocations have been attempted (for
//! sequential latency runs: `CONCURRENCY` 1).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mongodb::bson::{DateTime, Document, doc, oid::ObjectId};
use mongodb::error::{Error, TRANSIENT_TRANSACTION_ERROR, UNKNOWN_TRANSACTION_COMMIT_RESULT};
use mongodb::options::{ReadConcern, ReturnDocument, TransactionOptions, WriteConcern};
use mongodb::{Client, ClientSession, Collection};

/// Gives up retrying a transaction after this long (allot: 10 s).
const RETRY_FOR: Duration = Duration::from_secs(10);

struct Target {
    client: Client,
    batches: Collection<Document>,
    lines: Collection<Document>,
}

enum Outcome {
    Allocated,
    NoRoom,
}

/// One attempt: the two writes inside the session's transaction.
async fn attempt(
    target: &Target,
    session: &mut ClientSession,
    sku: &str,
    orderid: &str,
) -> Result<Outcome, Error> {
    let taken = target
        .batches
        .find_one_and_update(
            doc! { "sku": sku, "available_quantity": { "$gte": 1_i64 } },
            doc! { "$inc": { "available_quantity": -1_i64, "version": 1_i64, "allocation_seq": 1_i64 } },
        )
        .sort(doc! { "eta": 1, "_id": 1 })
        .projection(doc! { "allocation_seq": 1 })
        .return_document(ReturnDocument::After)
        .session(&mut *session)
        .await?;
    let Some(batch) = taken else {
        return Ok(Outcome::NoRoom);
    };
    let (Ok(batchref), Ok(seq)) = (batch.get_str("_id"), batch.get_i64("allocation_seq")) else {
        return Ok(Outcome::NoRoom);
    };
    target
        .lines
        .insert_one(doc! {
            "_id": ObjectId::new(),
            "orderid": orderid,
            "sku": sku,
            "qty": 1_i64,
            "status": "allocated",
            "batchref": batchref,
            "batch_seq": seq,
            "acknowledged_at": DateTime::now(),
        })
        .session(&mut *session)
        .await?;
    Ok(Outcome::Allocated)
}

async fn commit(session: &mut ClientSession) -> Result<(), Error> {
    let mut attempts = 0;
    loop {
        match session.commit_transaction().await {
            Err(error)
                if error.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT) && attempts < 3 =>
            {
                attempts += 1
            }
            outcome => return outcome,
        }
    }
}

/// One allocation as a transaction, retried on transient errors. Returns
/// whether a line was allocated and how many retries it took.
async fn allocate(target: &Target, sku: &str, orderid: &str) -> (bool, u64) {
    let deadline = Instant::now() + RETRY_FOR;
    let mut pause = Duration::from_millis(1);
    let mut retries = 0;
    loop {
        let outcome = async {
            let mut session = target.client.start_session().await?;
            session
                .start_transaction()
                .with_options(
                    TransactionOptions::builder()
                        .read_concern(ReadConcern::snapshot())
                        .write_concern(WriteConcern::majority())
                        .build(),
                )
                .await?;
            match attempt(target, &mut session, sku, orderid).await {
                Ok(Outcome::Allocated) => commit(&mut session).await.map(|()| true),
                Ok(Outcome::NoRoom) => {
                    let _ = session.abort_transaction().await;
                    Ok(false)
                }
                Err(error) => {
                    let _ = session.abort_transaction().await;
                    Err(error)
                }
            }
        }
        .await;
        match outcome {
            Ok(allocated) => return (allocated, retries),
            Err(error)
                if error.contains_label(TRANSIENT_TRANSACTION_ERROR)
                    && Instant::now() + pause < deadline =>
            {
                retries += 1;
                // Half to all of the pause, so that workers do not retry in lockstep.
                let nanos = u64::from(
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default()
                        .subsec_nanos(),
                );
                tokio::time::sleep(
                    pause / 2 + Duration::from_nanos(nanos % (pause.as_nanos() as u64 / 2 + 1)),
                )
                .await;
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            Err(_) => return (false, retries),
        }
    }
}

/// User + system CPU this process has used, in seconds.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

fn percentile(sorted: &[f64], percent: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((percent / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [uri, database, concurrency, seconds, skus @ ..] = args.as_slice() else {
        eprintln!("usage: raw_allocate URI DATABASE CONCURRENCY SECONDS SKU...");
        std::process::exit(2);
    };
    if skus.is_empty() {
        eprintln!("usage: raw_allocate URI DATABASE CONCURRENCY SECONDS SKU...");
        std::process::exit(2);
    }
    let concurrency: usize = concurrency.parse().expect("CONCURRENCY");
    let duration = Duration::from_secs_f64(seconds.parse().expect("SECONDS"));
    let max_ops: u64 = std::env::var("RAW_ALLOCATE_MAX_OPS")
        .ok()
        .map(|n| n.parse().expect("RAW_ALLOCATE_MAX_OPS"))
        .unwrap_or(u64::MAX);
    let client = Client::with_uri_str(uri).await.expect("client");
    let db = client.database(database);
    let target = Arc::new(Target {
        batches: db.collection("batches"),
        lines: db.collection("order_lines"),
        client,
    });
    let skus = Arc::new(skus.to_vec());
    let run = std::process::id();
    let (attempted, ops, errors, retries) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|worker| {
            let (target, skus) = (target.clone(), skus.clone());
            let (attempted, ops, errors, retries) = (
                attempted.clone(),
                ops.clone(),
                errors.clone(),
                retries.clone(),
            );
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut n = 0usize;
                while started.elapsed() < duration
                    && attempted.fetch_add(1, Ordering::Relaxed) < max_ops
                {
                    n += 1;
                    let sku = &skus[(worker * 7919 + n * 104_729) % skus.len()];
                    let orderid = format!("raw-{run}-{worker}-{n}");
                    let began = Instant::now();
                    let (allocated, retried) = allocate(&target, sku, &orderid).await;
                    retries.fetch_add(retried, Ordering::Relaxed);
                    if allocated {
                        latencies.push(began.elapsed().as_secs_f64() * 1000.0);
                        ops.fetch_add(1, Ordering::Relaxed);
                    } else {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for worker in workers {
        latencies.extend(worker.await.expect("worker"));
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_before;
    latencies.sort_by(f64::total_cmp);
    let ops = ops.load(Ordering::Relaxed);
    println!(
        r#"{{"ops": {ops}, "seconds": {seconds:.3}, "ops_per_sec": {:.1}, "errors": {}, "retries": {}, "p50_ms": {:.3}, "p99_ms": {:.3}, "cpu_us_per_op": {:.1}}}"#,
        ops as f64 / seconds,
        errors.load(Ordering::Relaxed),
        retries.load(Ordering::Relaxed),
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
        cpu * 1e6 / (ops.max(1) as f64),
    );
}
