//! Webhooks: the `/webhooks` endpoints, and deliveries to real receivers on
//! 127.0.0.1 that check every signature.
//!
//! The delivery stories run the delivery worker itself over MongoDB (its
//! store and leases), the real HTTP sender, and an in-memory event log, so
//! they need no event source. The stories `through_the_api` and the one
//! killing an instance take their events from the API (`POST /batches`
//! records `batch.created`): they need the relay of issue 18 parts 1–2.

use std::sync::Arc;
use std::time::Duration;

use allot::adapters::mongo::webhooks::MongoWebhooks;
use allot::adapters::webhook_sender::HttpSender;
use allot::domain::events::{EventType, Happened};
use allot::domain::webhooks::{RetrySchedule, Status, Subscription, TargetPolicy};
use allot::services::ports::webhooks::{AttemptOutcome, Outgoing, WebhookSender, WebhookStore};
use allot::services::webhooks::worker::{Worker, WorkerSettings};
use allot::services::webhooks::{self, NewSubscription};
use allot::testing::webhooks::{CountingObserver, InMemoryEventLog};
use serde_json::json;

use crate::durability::{admin_token, serve_relaying_on};
use crate::helpers::{
    Answer, Received, Receiver, Shop, random_name, relaying, spawn_app, spawn_app_with,
};
use crate::session::session;

const OPEN: TargetPolicy = TargetPolicy {
    allow_private: true,
    require_https: false,
};

type TestWorker = Worker<MongoWebhooks, InMemoryEventLog, HttpSender, CountingObserver>;

/// A database of webhooks and an event log the test appends to, shared by
/// the workers ("instances") it starts.
struct Deliveries {
    store: MongoWebhooks,
    events: InMemoryEventLog,
    sender: HttpSender,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Deliveries {
    fn drop(&mut self) {
        for worker in &self.workers {
            worker.abort();
        }
    }
}

impl Deliveries {
    async fn new() -> Self {
        let database = session().client().database(&session().new_database_name());
        allot::adapters::mongo::ensure_indexes(&database)
            .await
            .unwrap();
        Self {
            store: MongoWebhooks::new(&database, Duration::from_secs(3600)),
            events: InMemoryEventLog::new(),
            sender: HttpSender::new(OPEN, Duration::from_millis(500)).unwrap(),
            workers: Vec::new(),
        }
    }

    fn worker(&self, instance: &str) -> Arc<TestWorker> {
        let settings = WorkerSettings {
            instance: instance.to_owned(),
            lease: Duration::from_millis(900),
            poll: Duration::from_millis(20),
            schedule: RetrySchedule::new(vec![Duration::from_millis(100); 3]),
            max_in_flight: 8,
        };
        Arc::new(Worker::new(
            self.store.clone(),
            self.events.clone(),
            self.sender.clone(),
            CountingObserver::default(),
            settings,
        ))
    }

    /// Starts an instance's worker; it runs until aborted.
    fn start(&mut self, worker: &Arc<TestWorker>) -> tokio::task::AbortHandle {
        let task = tokio::spawn(Arc::clone(worker).run());
        let handle = task.abort_handle();
        self.workers.push(task);
        handle
    }

    /// A subscription of `receiver` to `batch.created`, whose secret the
    /// receiver checks deliveries with.
    async fn subscribe(&self, receiver: &Receiver) -> String {
        let new = NewSubscription {
            url: receiver.url.clone(),
            types: vec![EventType::BatchCreated],
            description: None,
        };
        let created = webhooks::create(&self.store, &self.events, &self.sender, OPEN, new)
            .await
            .unwrap();
        receiver.expect_secret(created.secret.expose());
        created.id
    }

    /// Waits until the subscription's cursor reached `position`.
    async fn delivered_up_to(&self, id: &str, position: u64) -> Subscription {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let subscription = self.store.get(id).await.unwrap().unwrap();
            if subscription.cursor >= position {
                return subscription;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "stuck at {}",
                subscription.cursor
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn batch_created(&self, reference: &str) -> u64 {
        let what = Happened::BatchCreated {
            reference: reference.to_owned(),
            sku: "LAMP".to_owned(),
            qty: 10,
            eta: None,
        };
        self.events.append(&format!("evt_{reference}"), what)
    }
}

async fn deliveries_are_signed_in_order_and_a_500_is_retried() {
    let mut deliveries = Deliveries::new().await;
    let receiver = Receiver::start().await;
    receiver.answer(&[Answer::Status(500)]);
    let id = deliveries.subscribe(&receiver).await;
    let worker = deliveries.worker("instance-a");
    deliveries.start(&worker);
    for n in 1..=3 {
        deliveries.batch_created(&format!("b{n}"));
    }
    let received = receiver
        .wait_for(Duration::from_secs(10), |r| r.len() >= 4)
        .await;
    assert_eq!(receiver.positions(), [1, 1, 2, 3]);
    assert_eq!(
        received[0].id, received[1].id,
        "a retry keeps its webhook-id"
    );
    assert_eq!(received[0].body["type"], "batch.created");
    assert_eq!(received[0].body["data"]["reference"], "b1");
    assert!(
        received[0].body["timestamp"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    let subscription = deliveries.delivered_up_to(&id, 3).await;
    assert_eq!(subscription.retrying, None);
    let attempts = deliveries.store.attempts(&id, None, 10).await.unwrap();
    let outcomes: Vec<_> = attempts
        .iter()
        .map(|a| {
            (
                a.attempt.position,
                a.attempt.attempt,
                a.attempt.outcome.clone(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            (3, 1, AttemptOutcome::Status(204)),
            (2, 1, AttemptOutcome::Status(204)),
            (1, 2, AttemptOutcome::Status(204)),
            (1, 1, AttemptOutcome::Status(500)),
        ]
    );
    assert!(attempts[3].attempt.next_try_at.is_some());
    let (made, failed, _lag) = worker.observer.of(&id);
    assert_eq!((made, failed), (3, 1));
}

async fn a_hanging_receiver_times_out_without_holding_up_another_subscription() {
    let mut deliveries = Deliveries::new().await;
    let (hanging, healthy) = (Receiver::start().await, Receiver::start().await);
    hanging.answer(&[Answer::Hang]);
    let stuck = deliveries.subscribe(&hanging).await;
    deliveries.subscribe(&healthy).await;
    deliveries.start(&deliveries.worker("instance-a"));
    for n in 1..=5 {
        deliveries.batch_created(&format!("b{n}"));
    }
    // The healthy receiver gets every event while the other one hangs.
    healthy
        .wait_for(Duration::from_secs(5), |r| r.len() == 5)
        .await;
    assert_eq!(healthy.positions(), [1, 2, 3, 4, 5]);
    // The hanging one is given up on after the timeout, then gets them all in order.
    hanging
        .wait_for(Duration::from_secs(10), |r| r.len() == 6)
        .await;
    assert_eq!(hanging.positions(), [1, 1, 2, 3, 4, 5]);
    let attempts = deliveries.store.attempts(&stuck, None, 10).await.unwrap();
    let first = attempts.last().unwrap();
    match &first.attempt.outcome {
        AttemptOutcome::Error(error) => assert!(error.contains("500 ms"), "{error}"),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(first.attempt.duration >= Duration::from_millis(450));
}

async fn a_receiver_failing_every_retry_disables_its_subscription_until_replayed() {
    let mut deliveries = Deliveries::new().await;
    let receiver = Receiver::start().await;
    receiver.answer(&[Answer::Status(503); 4]);
    let id = deliveries.subscribe(&receiver).await;
    deliveries.start(&deliveries.worker("instance-a"));
    deliveries.batch_created("b1");
    deliveries.batch_created("b2");
    receiver
        .wait_for(Duration::from_secs(5), |r| r.len() == 4)
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let disabled = loop {
        let subscription = deliveries.store.get(&id).await.unwrap().unwrap();
        if subscription.status == Status::Disabled {
            break subscription;
        }
        assert!(tokio::time::Instant::now() < deadline, "never disabled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(disabled.disabled_reason.unwrap().contains("HTTP 503"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        receiver.positions(),
        [1, 1, 1, 1],
        "nothing more after disabling"
    );

    // A replay from the first event re-enables it and delivers both, in order.
    let replayed = webhooks::replay(&deliveries.store, &deliveries.events, &id, 1)
        .await
        .unwrap();
    assert_eq!(replayed.status, Status::Active);
    receiver
        .wait_for(Duration::from_secs(5), |r| r.len() == 6)
        .await;
    assert_eq!(receiver.positions(), [1, 1, 1, 1, 1, 2]);
}

async fn a_second_instance_takes_over_the_deliveries_of_one_that_stopped() {
    let mut deliveries = Deliveries::new().await;
    let receiver = Receiver::start().await;
    let id = deliveries.subscribe(&receiver).await;
    let first = deliveries.worker("instance-a");
    let second = deliveries.worker("instance-b");
    let first_task = deliveries.start(&first);
    deliveries.batch_created("b1");
    receiver
        .wait_for(Duration::from_secs(5), |r| r.len() == 1)
        .await;
    deliveries.start(&second);
    deliveries.batch_created("b2");
    receiver
        .wait_for(Duration::from_secs(5), |r| r.len() == 2)
        .await;
    // Counted once recorded (the receiver answers first).
    deliveries.delivered_up_to(&id, 2).await;
    // Only the holder delivered.
    assert_eq!(first.observer.of(&id).0, 2);
    assert_eq!(second.observer.of(&id).0, 0);
    // The first dies (its lease is not released): within a few seconds the
    // second delivers what follows.
    first_task.abort();
    let stopped = tokio::time::Instant::now();
    deliveries.batch_created("b3");
    receiver
        .wait_for(Duration::from_secs(5), |r| r.len() >= 3)
        .await;
    let taken_over = stopped.elapsed();
    deliveries.delivered_up_to(&id, 3).await;
    assert!(taken_over < Duration::from_secs(3), "{taken_over:?}");
    assert_eq!(second.observer.of(&id).0, 1);
    let positions = receiver.positions();
    let mut unique = positions.clone();
    unique.dedup();
    assert_eq!(
        unique,
        [1, 2, 3],
        "in order; a duplicate only of the same event"
    );
}

async fn webhooks_are_managed_by_admins_and_the_secret_is_shown_once() {
    let app = spawn_app().await;
    let admin = app.as_admin().await;
    let url = format!("http://127.0.0.1:9/{}", random_name("hook"));
    let (status, created) = admin
        .create_webhook(&url, &["line.allocated", "batch.created"])
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert!(
        secret.starts_with("whsec_") && secret.len() >= 6 + 32,
        "{secret}"
    );
    assert_eq!(created["status"], "active");
    assert_eq!(created["url"], url);
    assert_eq!(created["description"], "a test receiver");

    let (status, read) = admin.get(&format!("/webhooks/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(read["types"], json!(["line.allocated", "batch.created"]));
    let (_, listed) = admin.get("/webhooks").await;
    for shown in [read.to_string(), listed.to_string()] {
        assert!(
            !shown.contains(&secret[6..]),
            "the secret is shown again: {shown}"
        );
        assert!(!shown.contains("secret"), "{shown}");
    }
    assert_eq!(listed["webhooks"][0]["id"], id);
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(!metrics.contains(&secret[6..]));

    let (status, paused) = admin
        .patch(
            &format!("/webhooks/{id}"),
            &json!({"status": "paused", "types": ["sku.out_of_stock"], "description": null}),
        )
        .await;
    assert_eq!(status, 200, "{paused}");
    assert_eq!(paused["status"], "paused");
    assert_eq!(paused["types"], json!(["sku.out_of_stock"]));
    assert!(paused.get("description").is_none(), "{paused}");

    let (status, page) = admin.deliveries(&id).await;
    assert_eq!((status, page), (200, json!({"deliveries": []})));

    // A second one, to page through.
    admin.subscribe(&url, &["line.moved"]).await;
    let (_, first_page) = admin.get("/webhooks?limit=1").await;
    let cursor = first_page["next_cursor"].as_str().unwrap();
    let (_, second_page) = admin
        .get(&format!("/webhooks?limit=1&cursor={cursor}"))
        .await;
    assert_eq!(second_page["webhooks"].as_array().unwrap().len(), 1);
    assert!(second_page.get("next_cursor").is_none());

    let (status, refused) = app.as_user().await.get("/webhooks").await;
    assert_eq!(status, 403, "{refused}");

    assert_eq!(admin.delete(&format!("/webhooks/{id}")).await.0, 204);
    for (status, body) in [
        admin.get(&format!("/webhooks/{id}")).await,
        admin.delete(&format!("/webhooks/{id}")).await,
        admin.deliveries(&id).await,
        admin.replay(&id, 1).await,
        admin
            .patch(&format!("/webhooks/{id}"), &json!({"status": "active"}))
            .await,
    ] {
        assert_eq!(
            (status, body),
            (404, json!({"message": format!("Webhook {id} not found")}))
        );
    }
}

async fn bad_webhook_input_is_refused_naming_the_field() {
    let app = spawn_app().await;
    let admin = app.as_admin().await;
    for (body, expected) in [
        (json!({"types": ["line.allocated"]}), "url"),
        (json!({"url": "http://127.0.0.1:9/", "types": []}), "types"),
        (
            json!({"url": "http://127.0.0.1:9/", "types": ["line.exploded"]}),
            "types",
        ),
        (
            json!({"url": "ftp://127.0.0.1/", "types": ["line.allocated"]}),
            "url",
        ),
        (
            json!({"url": "http://u:p@127.0.0.1:9/", "types": ["line.allocated"]}),
            "user name or password",
        ),
    ] {
        let (status, reply) = admin.post("/webhooks", &body).await;
        assert_eq!(status, 400, "{body}: {reply}");
        let message = reply["message"].as_str().unwrap();
        assert!(message.contains(expected), "{body}: {message}");
    }
    let (id, _secret) = admin
        .subscribe("http://127.0.0.1:9/", &["line.allocated"])
        .await;
    let (status, reply) = admin
        .patch(&format!("/webhooks/{id}"), &json!({"url": null}))
        .await;
    assert_eq!(status, 400, "{reply}");
    assert!(
        reply["message"]
            .as_str()
            .unwrap()
            .contains("url must not be null")
    );
    let (status, reply) = admin.replay(&id, 0).await;
    assert_eq!(status, 400, "{reply}");
    let (status, reply) = admin.replay(&id, 1_000_000).await;
    assert_eq!(status, 400, "{reply}");
    assert!(
        reply["message"]
            .as_str()
            .unwrap()
            .contains("past the latest event")
    );
}

async fn internal_addresses_are_refused_at_creation_and_at_delivery() {
    let app = spawn_app_with(|settings| {
        settings.webhooks.allow_private_targets = false;
        settings.webhooks.require_https = true;
    })
    .await;
    let admin = app.as_admin().await;
    for (url, expected) in [
        ("http://hooks.example.com/", "https"),
        ("https://127.0.0.1/hook", "127.0.0.1"),
        ("https://[::1]/hook", "::1"),
        ("https://localhost/hook", "localhost"),
        ("https://10.1.2.3/hook", "10.1.2.3"),
        (
            "https://169.254.169.254/latest/meta-data",
            "169.254.169.254",
        ),
        ("https://[::ffff:127.0.0.1]/", "::ffff:127.0.0.1"),
        ("https://0x7f000001/", "127.0.0.1"),
    ] {
        let (status, reply) = admin.create_webhook(url, &["line.allocated"]).await;
        assert_eq!(status, 400, "{url}: {reply}");
        let message = reply["message"].as_str().unwrap();
        assert!(
            message.contains(expected) && message.starts_with("Invalid webhook: url"),
            "{url}: {message}"
        );
    }
    let (_, listed) = admin.get("/webhooks").await;
    assert_eq!(listed, json!({"webhooks": []}));

    // At delivery: the sender checks again, and connects to nothing internal.
    let receiver = Receiver::start().await;
    let strict = TargetPolicy {
        allow_private: false,
        require_https: false,
    };
    let sender = HttpSender::new(strict, Duration::from_secs(1)).unwrap();
    let outgoing = Outgoing {
        url: receiver.url.clone(),
        id: "evt_1".to_owned(),
        timestamp: 0,
        signature: "v1,x".to_owned(),
        body: b"{}".to_vec(),
    };
    let outcome = sender.send(outgoing.clone()).await;
    assert!(
        matches!(&outcome, AttemptOutcome::Error(e) if e.contains("127.0.0.1")),
        "{outcome:?}"
    );
    // A name resolving to loopback is refused by the resolver itself.
    let by_name = Outgoing {
        url: receiver.url.replace("127.0.0.1", "localhost.localdomain"),
        ..outgoing
    };
    let outcome = sender.send(by_name).await;
    assert!(matches!(outcome, AttemptOutcome::Error(_)), "{outcome:?}");
    assert!(receiver.received().is_empty());
}

/// Needs the relay (issue 18 parts 1–2): `POST /batches` records `batch.created`.
async fn an_admin_subscribes_and_receives_batch_events_through_the_api() {
    let app = spawn_app_with(relaying).await;
    let admin = app.as_admin().await;
    let receiver = Receiver::start().await;
    let (id, secret) = admin.subscribe(&receiver.url, &["batch.created"]).await;
    receiver.expect_secret(&secret);
    let (reference, sku) = (random_name("batch"), random_name("sku"));
    let (status, reply) = admin.add_batch(&reference, &sku, 10, None).await;
    assert_eq!(status, 201, "{reply}");
    let received = receiver
        .wait_for(Duration::from_secs(10), |r| !r.is_empty())
        .await;
    assert_eq!(received[0].body["type"], "batch.created");
    assert_eq!(received[0].body["data"]["reference"], reference);
    let position = received[0].body["position"].as_u64().unwrap();
    // The attempt is recorded once the receiver has answered.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let page = loop {
        let (status, page) = admin.deliveries(&id).await;
        assert_eq!(status, 200, "{page}");
        if page["deliveries"].as_array().is_some_and(|d| !d.is_empty()) {
            break page;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no attempt recorded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(page["deliveries"][0]["position"], position);
    assert_eq!(page["deliveries"][0]["status"], 204);
    assert_eq!(page["deliveries"][0]["event_id"], received[0].id.as_str());
}

/// Needs the relay (issue 18 parts 1–2).
async fn a_replay_through_the_api_delivers_the_events_again() {
    let app = spawn_app_with(relaying).await;
    let admin = app.as_admin().await;
    let receiver = Receiver::start().await;
    let (id, secret) = admin.subscribe(&receiver.url, &["batch.created"]).await;
    receiver.expect_secret(&secret);
    let sku = random_name("sku");
    for _ in 0..2 {
        let (status, reply) = admin.add_batch(&random_name("batch"), &sku, 5, None).await;
        assert_eq!(status, 201, "{reply}");
    }
    receiver
        .wait_for(Duration::from_secs(10), |r| r.len() == 2)
        .await;
    let first = receiver.positions()[0];
    let (status, replayed) = admin.replay(&id, first).await;
    assert_eq!(status, 200, "{replayed}");
    assert_eq!(replayed["cursor"], first - 1);
    let received = receiver
        .wait_for(Duration::from_secs(10), |r| r.len() == 4)
        .await;
    assert_eq!(
        received[2].id, received[0].id,
        "a replay keeps the webhook-id"
    );
    assert_eq!(received[3].id, received[1].id);
}

/// Needs the relay (issue 18 parts 1–2). The story: a warehouse and a
/// customer service, each with its own receiver and types.
async fn a_warehouse_and_customer_service_follow_a_line_through_the_api() {
    let shop = Shop::on(spawn_app_with(relaying).await).await;
    let admin = shop.as_admin();
    let (warehouse, service) = (Receiver::start().await, Receiver::start().await);
    let (_, secret) = admin
        .subscribe(&warehouse.url, &["line.allocated", "line.filled"])
        .await;
    warehouse.expect_secret(&secret);
    let (_, secret) = admin
        .subscribe(
            &service.url,
            &["line.backordered", "sku.out_of_stock", "sku.back_in_stock"],
        )
        .await;
    service.expect_secret(&secret);
    let (sku, first, second) = (
        random_name("sku"),
        random_name("batch"),
        random_name("batch"),
    );
    let order = random_name("order");
    shop.add_stock(&[(&first, &sku, 10, None)]).await;
    assert_eq!(shop.allocate(&order, &sku, 10).await.0, 201);
    let allocated = warehouse
        .wait_for(Duration::from_secs(10), |r| !r.is_empty())
        .await;
    assert_eq!(allocated[0].body["type"], "line.allocated");
    assert_eq!(
        allocated[0].body["data"],
        json!({"orderid": order, "sku": sku, "qty": 10, "batchref": first})
    );

    // The batch is lost: customer service hears of the backorder.
    assert_eq!(shop.patch_quantity(&first, 0).await.0, 200);
    let heard = |received: &[Received], kind: &str| received.iter().any(|r| r.body["type"] == kind);
    let told = service
        .wait_for(Duration::from_secs(10), |r| heard(r, "line.backordered"))
        .await;
    let backordered = told
        .iter()
        .find(|r| r.body["type"] == "line.backordered")
        .unwrap();
    assert_eq!(backordered.body["data"]["orderid"], order.as_str());

    // Restocked: the warehouse picks the filled line, service hears it is back.
    shop.add_stock(&[(&second, &sku, 10, None)]).await;
    let picked = warehouse
        .wait_for(Duration::from_secs(10), |r| heard(r, "line.filled"))
        .await;
    let filled = picked
        .iter()
        .find(|r| r.body["type"] == "line.filled")
        .unwrap();
    assert_eq!(filled.body["data"]["batchref"], second.as_str());
    service
        .wait_for(Duration::from_secs(10), |r| heard(r, "sku.back_in_stock"))
        .await;
    for receiver in [&warehouse, &service] {
        let positions = receiver.positions();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    }
}

/// Needs the relay (issue 18 parts 1–2). Two allot processes share a
/// database; the one delivering is SIGKILLed while a delivery is under way.
async fn the_delivering_instance_killed_mid_delivery_loses_no_event() {
    let database = session().new_database_name();
    let token = admin_token(&database).await;
    let mut instances = [serve_relaying_on(&database), serve_relaying_on(&database)];
    let receiver = Receiver::start().await;
    receiver.answer(&[Answer::Hang]);
    let admin = instances[0].caller(&token);
    let (id, secret) = admin.subscribe(&receiver.url, &["batch.created"]).await;
    receiver.expect_secret(&secret);
    let sku = random_name("sku");
    for _ in 0..5 {
        let (status, reply) = admin.add_batch(&random_name("batch"), &sku, 1, None).await;
        assert_eq!(status, 201, "{reply}");
    }
    receiver
        .wait_for(Duration::from_secs(10), |r| !r.is_empty())
        .await;
    // The holder of the subscription's lease, by its instance's pid.
    let db = session().client().database(&database);
    let webhook = db
        .collection::<mongodb::bson::Document>("webhooks")
        .find_one(mongodb::bson::doc! { "_id": &id })
        .await
        .unwrap()
        .unwrap();
    let holder = webhook
        .get_document("lease")
        .unwrap()
        .get_str("holder")
        .unwrap();
    let lease = db
        .collection::<mongodb::bson::Document>("instances")
        .find_one(mongodb::bson::doc! { "_id": holder })
        .await
        .unwrap()
        .unwrap();
    let pid = u32::try_from(lease.get_i64("pid").unwrap()).unwrap();
    let holding = instances
        .iter()
        .position(|process| process.child.id() == pid)
        .expect("the holder is one of the two");
    instances[holding].kill();
    let received = receiver
        .wait_for(Duration::from_secs(20), |r| {
            let mut positions: Vec<_> = r.iter().map(|r| r.body["position"].clone()).collect();
            positions.dedup();
            positions.len() == 5
        })
        .await;
    // In order; a duplicate only of the same event, under the same id.
    let mut seen: Vec<(u64, String)> = received
        .iter()
        .map(|r| (r.body["position"].as_u64().unwrap(), r.id.clone()))
        .collect();
    seen.dedup();
    assert_eq!(seen.len(), 5, "{seen:?}");
    assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "{seen:?}");
}

/// This module's tests, in the order the harness lists them.
pub fn trials() -> Vec<libtest_mimic::Trial> {
    trials!(webhooks: [
        webhooks_are_managed_by_admins_and_the_secret_is_shown_once,
        bad_webhook_input_is_refused_naming_the_field,
        internal_addresses_are_refused_at_creation_and_at_delivery,
        deliveries_are_signed_in_order_and_a_500_is_retried,
        a_hanging_receiver_times_out_without_holding_up_another_subscription,
        a_receiver_failing_every_retry_disables_its_subscription_until_replayed,
        a_second_instance_takes_over_the_deliveries_of_one_that_stopped,
        an_admin_subscribes_and_receives_batch_events_through_the_api,
        a_replay_through_the_api_delivers_the_events_again,
        a_warehouse_and_customer_service_follow_a_line_through_the_api,
        the_delivering_instance_killed_mid_delivery_loses_no_event,
    ])
}
