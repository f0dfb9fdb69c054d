//! Benchmark probe: GETs a URL at a fixed rate and reports the latency
//! percentiles. Open loop: every request has its own task and is sent when due
//! whatever the others are doing, so a server stall shows in the latency of
//! every request it delays. Each is timed from its due instant, so the
//! figures include the timer's own slack (about 1 ms in tokio) and the
//! probe's wait for a CPU; the budgets compare two such figures, and every
//! recorded one was taken this way. (Timed from the send, the idle p99 of
//! `GET /tests/hello` is 0.2-0.4 ms here, and a ratio to it swings widely.)
//!
//! `cargo run --release --example probe -- URL RATE_PER_SEC SECONDS`
//! prints one JSON line: `{"requests": .., "errors": .., "p50_ms": .., "p99_ms": .., "max_ms": ..}`.

use std::time::{Duration, Instant};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, rate, seconds] = args.as_slice() else {
        eprintln!("usage: probe URL RATE_PER_SEC SECONDS");
        std::process::exit(2);
    };
    let rate: f64 = rate.parse().expect("RATE_PER_SEC");
    let seconds: f64 = seconds.parse().expect("SECONDS");
    // reqwest is built without a TLS provider of its own (allot's webhook sender).
    allot::adapters::webhook_sender::install_crypto_provider();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .expect("client");
    let interval = Duration::from_secs_f64(1.0 / rate);
    let total = (rate * seconds) as u32;
    let start = Instant::now() + Duration::from_millis(50);
    let requests: Vec<_> = (0..total)
        .map(|n| {
            let (client, url) = (client.clone(), url.clone());
            let due = start + interval * n;
            tokio::spawn(async move {
                tokio::time::sleep_until(due.into()).await;
                let ok = client
                    .get(&url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                (due.elapsed(), ok)
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(requests.len());
    let mut errors = 0;
    for request in requests {
        let (latency, ok) = request.await.expect("request task");
        if !ok {
            errors += 1;
        }
        latencies.push(latency.as_secs_f64() * 1000.0);
    }
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q).round() as usize];
    println!(
        r#"{{"requests": {}, "errors": {errors}, "p50_ms": {:.3}, "p99_ms": {:.3}, "max_ms": {:.3}}}"#,
        latencies.len(),
        at(0.50),
        at(0.99),
        at(1.0)
    );
}
