//! No acknowledged order line is ever lost: allot killed (SIGKILL) in the
//! middle of a shrink, recovery at start-up, a hot sku, and the migration of
//! data written by allot 0.1.

use std::collections::HashSet;
use std::time::Duration;

use futures_util::TryStreamExt;
use mongodb::bson::{Document, doc};
use mongodb::{Database, IndexModel};
use serde_json::json;

use crate::allocation::assert_counters_agree;
use crate::helpers::{AllotProcess, allot_command, random_name, spawn_app_with};
use crate::session::session;

/// `allot serve` (testing configuration, JSON logs) as a child process on
/// `database`, once it listens.
pub fn serve_on(database: &str) -> AllotProcess {
    serve(database, false)
}

/// [`serve_on`], relaying events (off in the testing configuration).
pub fn serve_relaying_on(database: &str) -> AllotProcess {
    serve(database, true)
}

fn serve(database: &str, relay: bool) -> AllotProcess {
    let mut command = allot_command();
    command
        .env("ALLOT_ENV", "testing")
        .env("ALLOT__EVENTS__RELAY_ENABLED", relay.to_string())
        .env("ALLOT__LOG__LEVEL", "info")
        .env("ALLOT__LOG__FORMAT", "json")
        .env("ALLOT__MONGO__URI", &session().mongo_uri)
        .env("ALLOT__MONGO__DATABASE", database);
    AllotProcess::start(&mut command)
}

/// An admin token the child processes accept: minted by an in-process app on
/// the same database with the same testing secret, then stopped. Its recovery
/// pass is made too rare to run after its first, idle, one.
pub async fn admin_token(database: &str) -> String {
    let database = database.to_owned();
    let app = spawn_app_with(|settings| {
        settings.mongo.database = database;
        settings.allocation.recovery_interval_ms = 3_600_000;
    })
    .await;
    app.new_admin().await.access
}

/// Stores `lines` order lines of qty 1 in batch `reference` directly, in the
/// layout allot writes, as if they had been allocated one by one.
async fn with_lines(database: &Database, reference: &str, sku: &str, lines: usize) -> Vec<String> {
    let orders: Vec<String> = (0..lines).map(|n| format!("{reference}-o{n:04}")).collect();
    let now = mongodb::bson::DateTime::now();
    let documents: Vec<Document> = orders
        .iter()
        .enumerate()
        .map(|(n, orderid)| {
            doc! {
                "_id": mongodb::bson::oid::ObjectId::new(), "orderid": orderid, "sku": sku,
                "qty": 1_i64, "status": "allocated", "batchref": reference,
                "batch_seq": n as i64 + 1, "acknowledged_at": now,
            }
        })
        .collect();
    database
        .collection::<Document>("order_lines")
        .insert_many(documents)
        .await
        .unwrap();
    database
        .collection::<Document>("batches")
        .update_one(
            doc! {"_id": reference},
            doc! {"$inc": {"available_quantity": -(lines as i64)}, "$set": {"allocation_seq": lines as i64}},
        )
        .await
        .unwrap();
    orders
}

/// What a killed shrink left behind, read from the database.
async fn interrupted_work(database: &Database, sku: &str) -> (u64, u64) {
    let batches = database.collection::<Document>("batches");
    let lines = database.collection::<Document>("order_lines");
    let over_allocated = batches
        .count_documents(doc! {"sku": sku, "available_quantity": {"$lt": 0}})
        .await
        .unwrap();
    let waiting = lines
        .count_documents(doc! {"sku": sku, "status": "backordered"})
        .await
        .unwrap();
    let room = batches
        .count_documents(doc! {"sku": sku, "available_quantity": {"$gt": 0}})
        .await
        .unwrap();
    // Backorders while some batch has room are lines nobody filled yet.
    (over_allocated, if room > 0 { waiting } else { 0 })
}

/// Waits until no batch of `sku` is over-allocated and no line waits while
/// stock is there: what the recovery pass converges to.
async fn settled(database: &Database, sku: &str, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let (over, unfilled) = interrupted_work(database, sku).await;
        if over == 0 && unfilled == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "recovery did not finish: {over} over-allocated batches, {unfilled} unfilled backorders"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A transaction open in a killed process keeps the documents it wrote
/// locked until the server aborts it (60 s on MongoDB and SecantusDB), unless
/// a survivor kills its session once its lease lapses
/// (`mongo.instance_lease_ms`, 1 s): the bound for an interrupted
/// shrink to be consistent again.
const CONSISTENT_WITHIN_AFTER_A_KILL: Duration = Duration::from_secs(5);

/// When the test kills allot during a shrink of `main` (200 lines) to 10,
/// which displaces 190 lines (in two steps of at most 100), moves 50 to
/// `spare` and backorders 140.
#[derive(Clone, Copy, Debug)]
enum KillWhen {
    /// This long after sending the PATCH.
    After(Duration),
    /// Once at least this many lines were displaced (backordered or moved).
    Displaced(u64),
    /// Once at least this many displaced lines were moved to `spare`.
    Moved(u64),
}

async fn a_shrink_killed_at_any_point_loses_no_line() {
    use KillWhen::*;
    let points = [
        After(Duration::ZERO),
        After(Duration::from_millis(20)),
        Displaced(1),
        Displaced(100),
        Displaced(190),
        Moved(1),
        Moved(10),
        Moved(25),
        Moved(40),
        After(Duration::from_secs(2)),
    ];
    // One after the other, so that each is judged on a machine not busy
    // with the others.
    let mut interrupted = 0;
    for point in points {
        interrupted += usize::from(kill_a_shrink(point).await);
    }
    assert!(
        interrupted >= 5,
        "only {interrupted} of 10 kills struck mid-shrink: the test proves little"
    );
}

/// Shrinks a batch of 200 lines to 10 on one of two instances, kills that
/// one at `point`, and checks that the other makes everything consistent
/// within 5 s, every line kept; true if the kill struck mid-shrink.
async fn kill_a_shrink(point: KillWhen) -> bool {
    let database_name = session().new_database_name();
    let database = session().client().database(&database_name);
    let token = admin_token(&database_name).await;
    let _survivor = serve_on(&database_name);
    let mut allot = serve_on(&database_name);
    let sku = random_name("sku");
    let (main, spare) = (random_name("main"), random_name("spare"));
    let (status, body) = allot.caller(&token).add_batch(&main, &sku, 200, None).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = allot
        .caller(&token)
        .add_batch(&spare, &sku, 50, Some("2031-01-01"))
        .await;
    assert_eq!(status, 201, "{body}");
    let mut acknowledged = with_lines(&database, &main, &sku, 200).await;

    let shrink = allot
        .http
        .patch(format!("{}/batches/{main}", allot.url))
        .bearer_auth(&token)
        .json(&json!({"purchased_quantity": 10}))
        .send();
    let shrink = tokio::spawn(shrink);
    let lines = database.collection::<Document>("order_lines");
    let count = |filter: Document| {
        let lines = lines.clone();
        async move { lines.count_documents(filter).await.unwrap() }
    };
    match point {
        KillWhen::After(delay) => tokio::time::sleep(delay).await,
        KillWhen::Displaced(at_least) => {
            while !shrink.is_finished()
                && count(doc! {"sku": &sku, "batchref": {"$ne": &main}}).await < at_least
            {
            }
        }
        KillWhen::Moved(at_least) => {
            while !shrink.is_finished() && count(doc! {"batchref": &spare}).await < at_least {}
        }
    }
    allot.kill();
    let killed_at = tokio::time::Instant::now();
    let answered = shrink.await.unwrap().is_ok_and(|r| r.status() == 200);
    let left = interrupted_work(&database, &sku).await;
    eprintln!(
        "killed at {point:?}: answered {answered}, left {left:?} (over-allocated batches, unfilled backorders)"
    );

    // The survivor aborts the dead instance's transaction once its lease
    // lapses, and completes (or, had nothing been written, never began) the
    // shrink: consistent within the bound, every counter equal to the lines.
    loop {
        let (over_allocated, _) = interrupted_work(&database, &sku).await;
        if over_allocated == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < killed_at + CONSISTENT_WITHIN_AFTER_A_KILL,
            "killed at {point:?}: still over-allocated {:?} after the kill",
            CONSISTENT_WITHIN_AFTER_A_KILL
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_counters_agree(&database, &sku).await;
    eprintln!(
        "killed at {point:?}: consistent after {:?}",
        killed_at.elapsed()
    );
    // Then the waiting lines take the room there is, oldest first.
    settled(&database, &sku, Duration::from_secs(30)).await;
    let lines = assert_counters_agree(&database, &sku).await;
    let mut stored: Vec<String> = lines.iter().map(|(orderid, _)| orderid.clone()).collect();
    stored.sort();
    acknowledged.sort();
    assert_eq!(
        stored, acknowledged,
        "killed at {point:?}: every acknowledged line is kept, once"
    );
    let main_batch = database
        .collection::<Document>("batches")
        .find_one(doc! {"_id": &main})
        .await
        .unwrap()
        .unwrap();
    let backordered = lines
        .iter()
        .filter(|(_, status)| status == "backordered")
        .count();
    match main_batch.get_i64("purchased_quantity").unwrap() {
        // The shrink took effect: 10 stay, 50 move to the spare, 140 wait.
        10 => assert_eq!(backordered, 140, "killed at {point:?}"),
        200 => assert_eq!(backordered, 0, "killed at {point:?}: nothing happened"),
        other => panic!("purchased_quantity {other}"),
    }
    left != (0, 0)
}

async fn the_recovery_pass_finishes_a_shrink_a_crash_left_half_done() {
    let database_name = session().new_database_name();
    let database = session().client().database(&database_name);
    let token = admin_token(&database_name).await;
    let allot = serve_on(&database_name);
    let sku = random_name("sku");
    let batch = random_name("batch");
    let (status, body) = allot.caller(&token).add_batch(&batch, &sku, 30, None).await;
    assert_eq!(status, 201, "{body}");
    with_lines(&database, &batch, &sku, 30).await;
    // The state a crash right after saving the smaller quantity leaves: the
    // batch holds 30 units' worth of lines but has 12.
    database
        .collection::<Document>("batches")
        .update_one(
            doc! {"_id": &batch},
            doc! {"$set": {"purchased_quantity": 12_i64, "available_quantity": -18_i64}},
        )
        .await
        .unwrap();
    // The running process notices on its own, within its recovery interval.
    settled(&database, &sku, Duration::from_secs(10)).await;
    let lines = assert_counters_agree(&database, &sku).await;
    let waiting: Vec<&str> = lines
        .iter()
        .filter(|(_, status)| status == "backordered")
        .map(|(orderid, _)| orderid.as_str())
        .collect();
    assert_eq!(waiting.len(), 18);
    assert!(
        waiting
            .iter()
            .all(|orderid| orderid.as_bytes()[orderid.len() - 2] >= b'1'),
        "the most recent went: {waiting:?}"
    );
    let backorders = format!("/backorders?sku={sku}&limit=1");
    let (status, body) = allot.caller(&token).get(&backorders).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["backorders"][0]["orderid"],
        format!("{batch}-o0012"),
        "oldest waiting first"
    );
}

async fn two_hundred_buyers_of_one_sku_across_two_instances_all_get_201() {
    let database_name = session().new_database_name();
    let database = session().client().database(&database_name);
    let token = admin_token(&database_name).await;
    let first = serve_on(&database_name);
    let second = serve_on(&database_name);
    let sku = random_name("sku");
    let batch = random_name("hot");
    let (status, body) = first
        .caller(&token)
        .add_batch(&batch, &sku, 200, None)
        .await;
    assert_eq!(status, 201, "{body}");
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(200));
    let buyers: Vec<_> = (0..200)
        .map(|n| {
            let buyer = if n % 2 == 0 { &first } else { &second }.caller(&token);
            let (barrier, sku) = (barrier.clone(), sku.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                buyer.allocate(&format!("buyer-{n}"), &sku, 1).await
            })
        })
        .collect();
    for buyer in buyers {
        let (status, body) = buyer.await.unwrap();
        assert_eq!((status, &body), (201, &json!({"batchref": batch})));
    }
    let lines = assert_counters_agree(&database, &sku).await;
    assert_eq!(lines.len(), 200);
    let stored = database
        .collection::<Document>("batches")
        .find_one(doc! {"_id": &batch})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.get_i64("available_quantity"), Ok(0));
}

/// What clients were told about order lines, across every instance.
#[derive(Default)]
struct Ledger {
    /// Acknowledged (201) and not deallocated since: must be stored.
    kept: HashSet<String>,
    /// Deallocated (200): must be gone.
    gone: HashSet<String>,
    /// The survivor's answers, with when they came.
    survivor: Vec<(tokio::time::Instant, u16)>,
}

type SharedLedger = std::sync::Arc<std::sync::Mutex<Ledger>>;

/// A client that allocates new lines of `skus` in turn through `url`; with
/// `deallocate`, it takes each acknowledged line back (a transaction) before
/// the next.
struct Shopper {
    url: String,
    token: String,
    skus: Vec<String>,
    name: String,
    deallocate: bool,
    /// Its answers are the survivor's, kept with their time.
    survivor: bool,
}

impl Shopper {
    /// A shopper that only allocates, and is not the survivor's.
    fn new(url: &str, token: &str, name: String, skus: &[&String]) -> Self {
        Self {
            url: url.to_owned(),
            token: token.to_owned(),
            skus: skus.iter().map(|sku| sku.to_string()).collect(),
            name,
            deallocate: false,
            survivor: false,
        }
    }
}

/// Runs the shopper until `stop` (or its instance dies), recording every
/// answer in the ledger.
fn shop(
    shopper: Shopper,
    ledger: SharedLedger,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    use std::sync::atomic::Ordering;
    let Shopper {
        url,
        token,
        skus,
        name,
        deallocate,
        survivor,
    } = shopper;
    tokio::spawn(async move {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let orderid = format!("{name}-{n}");
            let sku = &skus[n % skus.len()];
            let line = json!({"orderid": orderid, "sku": sku, "qty": 1});
            let Ok(answer) = http
                .post(format!("{url}/allocate"))
                .bearer_auth(&token)
                .json(&line)
                .send()
                .await
            else {
                return; // its instance was killed: the outcome is unknown
            };
            let status = answer.status().as_u16();
            {
                let mut book = ledger.lock().unwrap();
                if survivor {
                    book.survivor.push((tokio::time::Instant::now(), status));
                }
                if status == 201 {
                    book.kept.insert(orderid.clone());
                }
            }
            if deallocate && status == 201 {
                let taken = http
                    .post(format!("{url}/deallocate"))
                    .bearer_auth(&token)
                    .json(&json!({"orderid": orderid, "sku": sku}))
                    .send()
                    .await;
                let mut book = ledger.lock().unwrap();
                book.kept.remove(&orderid);
                match taken.map(|answer| answer.status().as_u16()) {
                    Ok(200) => {
                        book.gone.insert(orderid);
                    }
                    Ok(_) => {
                        book.kept.insert(orderid);
                    }
                    Err(_) => return, // unknown
                }
            }
        }
    })
}

/// Shoppers running together, recording in one ledger, until stopped.
struct Crowd {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    shoppers: Vec<tokio::task::JoinHandle<()>>,
}

impl Crowd {
    /// Starts `shopper(n)` for each `n` below `count`.
    fn start(count: usize, ledger: &SharedLedger, shopper: impl Fn(usize) -> Shopper) -> Self {
        let stop = std::sync::Arc::default();
        let shoppers = (0..count)
            .map(|n| shop(shopper(n), ledger.clone(), std::sync::Arc::clone(&stop)))
            .collect();
        Self { stop, shoppers }
    }

    /// Stops every shopper and waits for it.
    async fn stop(self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for shopper in self.shoppers {
            shopper.await.unwrap();
        }
    }
}

/// `count` moments from 200 ms to 1.5 s, different in every run.
fn random_moments(count: usize) -> Vec<Duration> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    let mut seed = u64::from(now.unwrap().subsec_nanos());
    let mut next = || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        Duration::from_millis(200 + (seed >> 33) % 1300)
    };
    (0..count).map(|_| next()).collect()
}

/// The longest time without an answer, from `since` on.
fn longest_gap(answers: &[(tokio::time::Instant, u16)], since: tokio::time::Instant) -> Duration {
    let (mut last, mut longest) = (since, Duration::ZERO);
    for (at, _) in answers.iter().filter(|(at, _)| *at >= since) {
        longest = longest.max(at.duration_since(last));
        last = *at;
    }
    longest
}

/// Waits until no batch of `skus` holds an allocation's intent, for up to 10 s.
async fn intents_finished(database: &Database, skus: &[&String]) {
    let batches = database.collection::<Document>("batches");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let pending = doc! {"pending": {"$exists": true}, "sku": {"$in": skus}};
    while batches.count_documents(pending.clone()).await.unwrap() > 0 {
        if tokio::time::Instant::now() >= deadline {
            let left = batches.find(pending).await.unwrap();
            let left: Vec<Document> = left.try_collect().await.unwrap();
            panic!("intents left unfinished: {left:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The order ids of every line of `skus`, each allocated and stored once,
/// with every counter agreeing.
async fn stored_once(database: &Database, skus: &[&String]) -> HashSet<String> {
    let mut stored = HashSet::new();
    for sku in skus {
        for (orderid, status) in assert_counters_agree(database, sku).await {
            assert_eq!(status, "allocated");
            assert!(stored.insert(orderid), "a line stored twice");
        }
    }
    stored
}

/// Two instances sell a hot sku (and a calm one); one of them, which also
/// deallocates (transactions on the hot batch), is killed (SIGKILL) at ten
/// random moments and started again. The survivor answers 201 all along: no
/// gap over 2 s, no 503; afterwards every acknowledged line is stored once,
/// every deallocated one is gone, and every counter agrees with the lines.
async fn an_instance_killed_at_ten_random_moments_stalls_no_other() {
    let database_name = session().new_database_name();
    let database = session().client().database(&database_name);
    let token = admin_token(&database_name).await;
    let survivor = serve_on(&database_name);
    let (hot, calm) = (random_name("hot"), random_name("calm"));
    let admin = survivor.caller(&token);
    for sku in [&hot, &calm] {
        let (status, body) = admin.add_batch(sku, sku, 1_000_000, None).await;
        assert_eq!(status, 201, "{body}");
    }
    let ledger = SharedLedger::default();
    let survivors = Crowd::start(4, &ledger, |n| Shopper {
        survivor: true,
        ..Shopper::new(&survivor.url, &token, format!("s{n}"), &[&hot, &calm])
    });
    let moments = random_moments(10);
    let mut first_kill = None;
    for (round, moment) in moments.iter().enumerate() {
        let mut victim = serve_on(&database_name);
        let shoppers = Crowd::start(4, &ledger, |n| Shopper {
            deallocate: n % 2 == 0,
            ..Shopper::new(&victim.url, &token, format!("v{round}-{n}"), &[&hot])
        });
        tokio::time::sleep(*moment).await;
        victim.kill();
        first_kill.get_or_insert_with(tokio::time::Instant::now);
        shoppers.stop().await;
        // The survivor sells on while the dead instance's lease lapses.
        tokio::time::sleep(Duration::from_millis(2500)).await;
    }
    survivors.stop().await;

    let ledger = std::mem::take(&mut *ledger.lock().unwrap());
    let refused: Vec<_> = ledger.survivor.iter().filter(|(_, s)| *s != 201).collect();
    if !refused.is_empty() {
        let errors: Vec<String> = survivor
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|line| line.contains("\"ERROR\"") || line.contains("\"WARN\""))
            .cloned()
            .collect();
        panic!("the survivor refused: {refused:?}; its errors: {errors:#?}");
    }
    let since = first_kill.unwrap() - Duration::from_secs(1);
    let longest = longest_gap(&ledger.survivor, since);
    let answers = ledger.survivor.len();
    eprintln!(
        "kills after {moments:?}; the survivor answered {answers} times, longest gap {longest:?}"
    );
    assert!(
        longest <= Duration::from_secs(2),
        "the survivor stalled for {longest:?}"
    );

    // The dead instances' intents are finished by the survivor.
    intents_finished(&database, &[&hot, &calm]).await;
    let stored = stored_once(&database, &[&hot, &calm]).await;
    let lost: Vec<_> = ledger.kept.difference(&stored).collect();
    assert!(lost.is_empty(), "acknowledged lines lost: {lost:?}");
    let revived: Vec<_> = ledger.gone.intersection(&stored).collect();
    assert!(revived.is_empty(), "deallocated lines back: {revived:?}");
}

/// A dead instance's transaction holds a batch: its lease is taken over (and
/// the transaction aborted) once the lease lapses, although this instance's
/// own write to that batch, the removal of a stored line's intent, is stuck
/// behind the transaction until then.
async fn a_batch_held_by_a_dead_instance_is_freed_once_its_lease_lapses() {
    let database_name = session().new_database_name();
    let database = session().client().database(&database_name);
    let token = admin_token(&database_name).await;
    let survivor = serve_on(&database_name);
    let admin = survivor.caller(&token);
    let sku = random_name("held");
    let (status, body) = admin.add_batch(&sku, &sku, 100, None).await;
    assert_eq!(status, 201, "{body}");
    // Its intent is due for removal 1 to 2 s from now.
    let (status, body) = admin.allocate("o1", &sku, 1).await;
    assert_eq!(status, 201, "{body}");
    let started = tokio::time::Instant::now();

    // The other instance: a transaction that has written the batch, in a
    // session its lease lists.
    let client = session().client();
    let mut held = client.start_session().await.unwrap();
    held.start_transaction().await.unwrap();
    database
        .collection::<Document>("batches")
        .update_one(doc! {"_id": &sku}, doc! {"$set": {"held": true}})
        .session(&mut held)
        .await
        .unwrap();
    let lease = doc! {
        "$set": {"lease_ms": 1000_i64, "pid": 0_i64, "relays": false, "sessions": [held.id().clone()]},
        "$currentDate": {"renewed_at": true},
    };
    let instances = database.collection::<Document>("instances");
    // Alive until the survivor's removal of the intent waits on the batch.
    while started.elapsed() < Duration::from_millis(2600) {
        instances
            .update_one(doc! {"_id": "the-other"}, lease.clone())
            .upsert(true)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let died = tokio::time::Instant::now();

    let (status, body) = admin.allocate("o2", &sku, 1).await;
    let waited = died.elapsed();
    assert_eq!(status, 201, "{body}");
    eprintln!("the batch was freed {waited:?} after the other instance died");
    // The lease lapses 1 s after its last renewal and is surveyed every 250 ms.
    assert!(
        waited < Duration::from_secs(3),
        "the batch was held {waited:?} after the other instance died"
    );
}

/// Writes batches as allot 0.1 did: every line inside its batch document.
async fn write_old_layout(database: &Database, sku: &str) -> (String, String) {
    let (full, empty) = (random_name("old"), random_name("old-empty"));
    let batches = database.collection::<Document>("batches");
    batches
        .insert_many([
            doc! {"_id": &full, "sku": sku, "purchased_quantity": 10_i64, "available_quantity": 4_i64, "eta": null,
                  "allocations": [{"orderid": "o1", "qty": 4_i64}, {"orderid": "o2", "qty": 2_i64}], "version": 2_i64},
            doc! {"_id": &empty, "sku": sku, "purchased_quantity": 5_i64, "available_quantity": 5_i64, "eta": null,
                  "allocations": [], "version": 0_i64},
        ])
        .await
        .unwrap();
    batches
        .create_index(
            IndexModel::builder()
                .keys(doc! {"allocations.orderid": 1})
                .build(),
        )
        .await
        .unwrap();
    (full, empty)
}

fn migrate(database: &str) -> (bool, String, String) {
    let output = allot_command()
        .arg("migrate")
        .env("ALLOT_ENV", "testing")
        .env("ALLOT__MONGO__URI", &session().mongo_uri)
        .env("ALLOT__MONGO__DATABASE", database)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

async fn data_in_the_old_layout_is_refused_until_migrated() {
    let database_name = session().new_database_name();
    let database = session().client().database(&database_name);
    let sku = random_name("sku");
    let (full, _) = write_old_layout(&database, &sku).await;

    let refused = allot_command()
        .env("ALLOT_ENV", "testing")
        .env("ALLOT__MONGO__URI", &session().mongo_uri)
        .env("ALLOT__MONGO__DATABASE", &database_name)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("allot migrate"),
        "names the command: {stderr}"
    );

    let (ok, stdout, stderr) = migrate(&database_name);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("migrated 2 batches and 2 order lines"),
        "{stdout}"
    );
    let (ok, stdout, stderr) = migrate(&database_name);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("migrated 0 batches and 0 order lines"),
        "idempotent: {stdout}"
    );

    let old_indexes: Vec<String> = database
        .collection::<Document>("batches")
        .list_index_names()
        .await
        .unwrap();
    assert!(
        !old_indexes.iter().any(|name| name.contains("allocations")),
        "{old_indexes:?}"
    );
    let stored = database
        .collection::<Document>("batches")
        .find_one(doc! {"_id": &full})
        .await
        .unwrap()
        .unwrap();
    assert!(!stored.contains_key("allocations"), "{stored}");

    let app = serve_on(&database_name);
    let token = admin_token(&database_name).await;
    let reader = app.caller(&token);
    assert_eq!(
        reader.allocations("o1").await,
        (
            200,
            json!([{"sku": sku, "qty": 4, "batchref": full, "status": "allocated"}])
        )
    );
    let (_, lines) = reader.get(&format!("/batches/{full}/allocations")).await;
    assert_eq!(
        lines["allocations"],
        json!([{"orderid": "o1", "qty": 4}, {"orderid": "o2", "qty": 2}])
    );
    assert_eq!(reader.allocate("o3", &sku, 4).await.0, 201);
    assert_counters_agree(&database, &sku).await;
    let total = database
        .collection::<Document>("order_lines")
        .count_documents(doc! {})
        .await
        .unwrap();
    assert_eq!(total, 3);
}

/// The sessions allot keeps for single operations: one is kept once its
/// operation had the server's answer (an error included), and handed back to
/// the driver, not kept, after an operation cut short.
async fn an_operation_session_is_reused_only_after_the_server_answered() {
    use allot::adapters::mongo::sessions::OperationSessions;
    let client = session().client();
    let database = client.database(&session().new_database_name());
    let sessions = OperationSessions::new(client);

    let mut first = sessions.take().await.unwrap();
    let id = first.session().id().clone();
    let pinged = database
        .run_command(doc! { "ping": 1 })
        .session(first.session())
        .await;
    first.check(pinged).unwrap();
    drop(first);
    assert_eq!(sessions.idle(), 1, "a settled session is kept");

    let mut again = sessions.take().await.unwrap();
    assert_eq!(again.session().id(), &id, "and reused");
    assert_eq!(sessions.idle(), 0);
    let refused = database
        .run_command(doc! { "no_such_command": 1 })
        .session(again.session())
        .await;
    assert!(again.check(refused).is_err());
    drop(again);
    assert_eq!(sessions.idle(), 1, "the server answered the refusal");

    let mut third = sessions.take().await.unwrap();
    assert_eq!(third.session().id(), &id);
    // An operation begun and never finished (its future dropped).
    let _ = third.session();
    drop(third);
    assert_eq!(sessions.idle(), 0, "a session cut short is not kept");
}

/// This module's tests, in the order the harness lists them.
pub fn trials() -> Vec<libtest_mimic::Trial> {
    trials!(durability: [
        a_shrink_killed_at_any_point_loses_no_line,
        the_recovery_pass_finishes_a_shrink_a_crash_left_half_done,
        two_hundred_buyers_of_one_sku_across_two_instances_all_get_201,
        an_instance_killed_at_ten_random_moments_stalls_no_other,
        a_batch_held_by_a_dead_instance_is_freed_once_its_lease_lapses,
        data_in_the_old_layout_is_refused_until_migrated,
        an_operation_session_is_reused_only_after_the_server_answered,
    ])
}
