//! The webhook use cases and the delivery worker over in-memory fakes.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use super::worker::{Next, Worker, WorkerSettings};
use super::*;
use crate::domain::events::Happened;
use crate::domain::webhooks::{RetrySchedule, SigningSecret};
use crate::services::ports::webhooks::{AttemptOutcome, WebhookStore as _};
use crate::testing::webhooks::{CountingObserver, FakeSender, InMemoryEventLog, InMemoryWebhooks};

const URL: &str = "https://hooks.example.com/allot";

fn strict() -> TargetPolicy {
    TargetPolicy {
        allow_private: false,
        require_https: true,
    }
}

fn batch(reference: &str) -> Happened {
    Happened::BatchCreated {
        reference: reference.to_owned(),
        sku: "LAMP".to_owned(),
        qty: 10,
        eta: None,
    }
}

fn out_of_stock() -> Happened {
    Happened::SkuOutOfStock {
        sku: "LAMP".to_owned(),
    }
}

struct Kit {
    worker: Worker<InMemoryWebhooks, InMemoryEventLog, FakeSender, CountingObserver>,
    store: InMemoryWebhooks,
    events: InMemoryEventLog,
    sender: FakeSender,
    observer: CountingObserver,
}

impl Kit {
    fn new(instance: &str) -> Self {
        Self::sharing(instance, InMemoryWebhooks::new(), InMemoryEventLog::new())
    }

    fn sharing(instance: &str, store: InMemoryWebhooks, events: InMemoryEventLog) -> Self {
        let sender = FakeSender::new();
        sender.resolves("hooks.example.com", &["93.184.215.14"]);
        let observer = CountingObserver::default();
        let settings = WorkerSettings {
            instance: instance.to_owned(),
            lease: Duration::from_millis(300),
            poll: Duration::from_millis(10),
            schedule: RetrySchedule::new(vec![Duration::from_secs(5), Duration::from_secs(60)]),
            max_in_flight: 4,
        };
        Self {
            worker: Worker::new(
                store.clone(),
                events.clone(),
                sender.clone(),
                observer.clone(),
                settings,
            ),
            store,
            events,
            sender,
            observer,
        }
    }

    async fn subscribe(&self, types: &[EventType]) -> Subscription {
        let new = NewSubscription {
            url: URL.to_owned(),
            types: types.to_vec(),
            description: Some("warehouse".to_owned()),
        };
        create(&self.store, &self.events, &self.sender, strict(), new)
            .await
            .unwrap()
    }

    /// Takes the leases, as the dispatcher does.
    async fn claim(&self) -> Vec<String> {
        self.worker.claim().await.unwrap()
    }

    /// Steps the subscription until it has nothing due now.
    async fn drain(&self, id: &str) -> Next {
        for _ in 0..100 {
            match self.worker.step(id, Utc::now()).await.unwrap() {
                Next::Now => continue,
                other => return other,
            }
        }
        panic!("never settled");
    }

    fn delivered_positions(&self) -> Vec<u64> {
        self.sender
            .sent()
            .iter()
            .map(|s| {
                let body: serde_json::Value = serde_json::from_slice(&s.body).unwrap();
                body["position"].as_u64().unwrap()
            })
            .collect()
    }
}

#[tokio::test]
async fn a_subscription_gets_a_secret_and_starts_after_the_latest_event() {
    let kit = Kit::new("i1");
    kit.events.append("evt_old", batch("b0"));
    let created = kit
        .subscribe(&[EventType::BatchCreated, EventType::BatchCreated])
        .await;
    assert!(created.id.starts_with("wh_"));
    assert!(created.secret.expose().starts_with("whsec_"));
    assert_eq!(created.types, [EventType::BatchCreated]);
    assert_eq!(created.cursor, 1);
    assert_eq!(created.status, Status::Active);
    let other = kit.subscribe(&[EventType::BatchCreated]).await;
    assert_ne!(created.secret.expose(), other.secret.expose());
    assert_eq!(get(&kit.store, &created.id).await.unwrap().url, URL);
    assert_eq!(list(&kit.store, None, 10).await.unwrap().len(), 2);
}

#[tokio::test]
async fn internal_or_unresolvable_targets_are_refused_at_creation() {
    let kit = Kit::new("i1");
    kit.sender.resolves("internal.example.com", &["10.0.0.5"]);
    kit.sender
        .resolves("mixed.example.com", &["93.184.215.14", "127.0.0.1"]);
    for (url, expected) in [
        ("https://internal.example.com/", "10.0.0.5"),
        ("https://mixed.example.com/", "127.0.0.1"),
        ("https://169.254.169.254/latest", "169.254.169.254"),
        ("https://nowhere.example.com/", "does not resolve"),
        ("http://hooks.example.com/", "https"),
    ] {
        let new = NewSubscription {
            url: url.to_owned(),
            types: vec![EventType::LineAllocated],
            description: None,
        };
        let error = create(&kit.store, &kit.events, &kit.sender, strict(), new)
            .await
            .unwrap_err();
        assert!(matches!(error, WebhookError::Target(_)), "{url}: {error}");
        assert!(error.to_string().contains(expected), "{url}: {error}");
    }
    assert!(list(&kit.store, None, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn events_are_delivered_signed_in_position_order_and_only_of_the_chosen_types() {
    let kit = Kit::new("i1");
    let subscription = kit.subscribe(&[EventType::BatchCreated]).await;
    kit.events.append("evt_1", batch("b1"));
    kit.events.append("evt_2", out_of_stock());
    kit.events.append("evt_3", batch("b3"));
    kit.claim().await;
    assert_eq!(kit.drain(&subscription.id).await, Next::Idle);
    assert_eq!(kit.delivered_positions(), [1, 3]);
    let sent = kit.sender.sent();
    assert_eq!(sent[0].id, "evt_1");
    let expected = subscription
        .secret
        .sign(&sent[0].id, sent[0].timestamp, &sent[0].body);
    assert_eq!(sent[0].signature, expected);
    // Verified as a receiver would, with the secret it was shown.
    let shown = SigningSecret::parse(subscription.secret.expose()).unwrap();
    assert_eq!(
        shown.sign(&sent[1].id, sent[1].timestamp, &sent[1].body),
        sent[1].signature
    );
    assert_eq!(get(&kit.store, &subscription.id).await.unwrap().cursor, 3);
    assert_eq!(kit.observer.of(&subscription.id), (2, 0, 0));
    // Events of other types past the last one delivered are passed over.
    kit.events.append("evt_4", out_of_stock());
    assert_eq!(kit.drain(&subscription.id).await, Next::Idle);
    assert_eq!(get(&kit.store, &subscription.id).await.unwrap().cursor, 4);
}

#[tokio::test]
async fn a_failed_delivery_is_retried_later_and_holds_back_the_next_event() {
    let kit = Kit::new("i1");
    let subscription = kit.subscribe(&[EventType::BatchCreated]).await;
    kit.sender.script(URL, [AttemptOutcome::Status(500)]);
    kit.events.append("evt_1", batch("b1"));
    kit.events.append("evt_2", batch("b2"));
    kit.claim().await;
    let before = Utc::now();
    let Next::At(due) = kit.drain(&subscription.id).await else {
        panic!("no retry scheduled");
    };
    let wait = (due - before).to_std().unwrap();
    assert!(
        wait >= Duration::from_secs(4) && wait <= Duration::from_secs(7),
        "{wait:?}"
    );
    // Not before it is due: the second event waits behind the first.
    assert_eq!(kit.drain(&subscription.id).await, Next::At(due));
    assert_eq!(kit.delivered_positions(), [1]);
    let later = due + chrono::Duration::seconds(1);
    assert_eq!(
        kit.worker.step(&subscription.id, later).await.unwrap(),
        Next::Now
    );
    assert_eq!(
        kit.worker.step(&subscription.id, later).await.unwrap(),
        Next::Now
    );
    assert_eq!(kit.delivered_positions(), [1, 1, 2]);
    // Same event, same webhook-id.
    let sent = kit.sender.sent();
    assert_eq!(sent[0].id, sent[1].id);
    let attempts = attempts(&kit.store, &subscription.id, None, 10)
        .await
        .unwrap();
    let listed: Vec<_> = attempts
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
        listed,
        [
            (2, 1, AttemptOutcome::Status(200)),
            (1, 2, AttemptOutcome::Status(200)),
            (1, 1, AttemptOutcome::Status(500)),
        ]
    );
    assert_eq!(attempts[2].attempt.next_try_at, Some(due));
    assert_eq!(attempts[1].attempt.next_try_at, None);
    let (made, failed, _lag) = kit.observer.of(&subscription.id);
    assert_eq!((made, failed), (2, 1));
}

#[tokio::test]
async fn a_receiver_failing_past_the_last_retry_disables_the_subscription_until_replayed() {
    let kit = Kit::new("i1");
    let subscription = kit.subscribe(&[EventType::BatchCreated]).await;
    let timeout = AttemptOutcome::Error("timed out after 10 s".to_owned());
    kit.sender.script(URL, vec![timeout; 3]);
    kit.events.append("evt_1", batch("b1"));
    kit.claim().await;
    let mut now = Utc::now();
    for _ in 0..3 {
        match kit.worker.step(&subscription.id, now).await.unwrap() {
            Next::At(due) => now = due,
            Next::Now | Next::Stop => {}
            Next::Idle => panic!("delivered"),
        }
    }
    let disabled = get(&kit.store, &subscription.id).await.unwrap();
    assert_eq!(disabled.status, Status::Disabled);
    let reason = disabled.disabled_reason.unwrap();
    assert!(
        reason.contains("3 attempts") && reason.contains("timed out"),
        "{reason}"
    );
    assert_eq!(
        kit.worker.step(&subscription.id, now).await.unwrap(),
        Next::Stop
    );
    assert_eq!(kit.sender.sent().len(), 3);

    let replayed = replay(&kit.store, &kit.events, &subscription.id, 1)
        .await
        .unwrap();
    assert_eq!((replayed.status, replayed.cursor), (Status::Active, 0));
    kit.claim().await;
    assert_eq!(kit.drain(&subscription.id).await, Next::Idle);
    assert_eq!(kit.delivered_positions(), [1, 1, 1, 1]);
    let first = attempts(&kit.store, &subscription.id, None, 1)
        .await
        .unwrap();
    assert_eq!(first[0].attempt.attempt, 1, "a replay counts attempts anew");
}

#[tokio::test]
async fn a_replay_delivers_again_from_a_position() {
    let kit = Kit::new("i1");
    let subscription = kit.subscribe(&[]).await;
    for n in 1..=4 {
        kit.events
            .append(&format!("evt_{n}"), batch(&format!("b{n}")));
    }
    kit.claim().await;
    kit.drain(&subscription.id).await;
    replay(&kit.store, &kit.events, &subscription.id, 3)
        .await
        .unwrap();
    kit.drain(&subscription.id).await;
    assert_eq!(kit.delivered_positions(), [1, 2, 3, 4, 3, 4]);
    assert!(matches!(
        replay(&kit.store, &kit.events, "wh_000000000000000000000000", 1).await,
        Err(WebhookError::NotFound(_))
    ));
    let past = replay(&kit.store, &kit.events, &subscription.id, 6).await;
    assert_eq!(
        past.unwrap_err().to_string(),
        "from_position 6 is past the latest event (4)"
    );
    // Just past the latest is where a subscription waits for the next one.
    let waiting = replay(&kit.store, &kit.events, &subscription.id, 5).await;
    assert_eq!(waiting.unwrap().cursor, 4);
}

#[tokio::test]
async fn a_paused_subscription_is_not_delivered_and_resumes_where_it_stopped() {
    let kit = Kit::new("i1");
    let subscription = kit.subscribe(&[EventType::BatchCreated]).await;
    let pause = SubscriptionChange {
        status: Some(Status::Paused),
        ..Default::default()
    };
    change(&kit.store, &kit.sender, strict(), &subscription.id, pause)
        .await
        .unwrap();
    kit.events.append("evt_1", batch("b1"));
    assert!(
        kit.claim().await.is_empty(),
        "paused subscriptions are not claimed"
    );
    assert_eq!(
        kit.worker.step(&subscription.id, Utc::now()).await.unwrap(),
        Next::Stop
    );
    let resume = SubscriptionChange {
        status: Some(Status::Active),
        ..Default::default()
    };
    change(&kit.store, &kit.sender, strict(), &subscription.id, resume)
        .await
        .unwrap();
    kit.claim().await;
    kit.drain(&subscription.id).await;
    assert_eq!(kit.delivered_positions(), [1]);
}

#[tokio::test]
async fn a_change_of_url_is_checked_and_unknown_subscriptions_are_not_found() {
    let kit = Kit::new("i1");
    let subscription = kit.subscribe(&[EventType::BatchCreated]).await;
    let to_internal = SubscriptionChange {
        url: Some("https://10.0.0.1/".to_owned()),
        ..Default::default()
    };
    let refused = change(
        &kit.store,
        &kit.sender,
        strict(),
        &subscription.id,
        to_internal,
    )
    .await;
    assert!(matches!(refused, Err(WebhookError::Target(_))));
    let describe = SubscriptionChange {
        description: Some(None),
        types: Some(vec![EventType::LineMoved, EventType::LineAllocated]),
        ..Default::default()
    };
    let changed = change(
        &kit.store,
        &kit.sender,
        strict(),
        &subscription.id,
        describe,
    )
    .await
    .unwrap();
    assert_eq!(changed.description, None);
    assert_eq!(
        changed.types,
        [EventType::LineAllocated, EventType::LineMoved]
    );
    assert_eq!(changed.url, URL);
    assert_eq!(
        changed.revision, subscription.revision,
        "a delivery under way still records its progress"
    );
    delete(&kit.store, &subscription.id).await.unwrap();
    for result in [
        get(&kit.store, &subscription.id).await.map(drop),
        delete(&kit.store, &subscription.id).await,
        attempts(&kit.store, &subscription.id, None, 1)
            .await
            .map(drop),
    ] {
        assert!(matches!(result, Err(WebhookError::NotFound(_))));
    }
}

#[tokio::test]
async fn one_instance_delivers_a_subscription_and_another_takes_over_when_its_lease_lapses() {
    let store = InMemoryWebhooks::new();
    let events = InMemoryEventLog::new();
    let first = Kit::sharing("i1", store.clone(), events.clone());
    let second = Kit::sharing("i2", store.clone(), events.clone());
    let subscription = first.subscribe(&[EventType::BatchCreated]).await;
    assert_eq!(first.claim().await, std::slice::from_ref(&subscription.id));
    assert!(second.claim().await.is_empty());
    events.append("evt_1", batch("b1"));
    // The second holds no lease: it sends nothing.
    let tried = second.worker.step(&subscription.id, Utc::now()).await;
    assert!(matches!(tried.unwrap(), Next::At(_)));
    assert!(second.sender.sent().is_empty());
    assert_eq!(
        store.get(&subscription.id).await.unwrap().unwrap().cursor,
        0
    );
    // Stopping, an instance hands its subscriptions over at once.
    first.worker.release_all().await.unwrap();
    assert_eq!(store.holder(&subscription.id), None);
    first.claim().await;
    // The first dies: its lease lapses, the second takes over.
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(second.claim().await, std::slice::from_ref(&subscription.id));
    assert_eq!(store.holder(&subscription.id).as_deref(), Some("i2"));
    second.drain(&subscription.id).await;
    assert_eq!(
        store.get(&subscription.id).await.unwrap().unwrap().cursor,
        1
    );
    // Every delivery of the event carried its id.
    assert!(second.sender.sent().iter().all(|s| s.id == "evt_1"));
}

#[tokio::test]
async fn the_dispatcher_delivers_each_subscription_at_its_own_pace() {
    let kit = Kit::new("i1");
    let slow = kit.subscribe(&[EventType::BatchCreated]).await;
    let other = NewSubscription {
        url: "https://hooks.example.com/other".to_owned(),
        types: vec![EventType::BatchCreated],
        description: None,
    };
    let fast = create(&kit.store, &kit.events, &kit.sender, strict(), other)
        .await
        .unwrap();
    kit.sender.script(URL, [AttemptOutcome::Status(503)]);
    let worker = Arc::new(kit.worker);
    let running = tokio::spawn(Arc::clone(&worker).run());
    kit.events.append("evt_1", batch("b1"));
    kit.events.append("evt_2", batch("b2"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while kit.store.get(&fast.id).await.unwrap().unwrap().cursor < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the fast subscription waited"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let slow_now = kit.store.get(&slow.id).await.unwrap().unwrap();
    assert_eq!(slow_now.cursor, 0);
    assert_eq!(slow_now.retrying.map(|r| r.position), Some(1));
    running.abort();
}

#[tokio::test]
async fn the_dispatcher_reads_the_latest_event_only_while_it_delivers() {
    let Kit {
        worker,
        store,
        events,
        sender,
        ..
    } = Kit::new("i1");
    let running = tokio::spawn(Arc::new(worker).run());
    // Polls every 10 ms: with no subscription, none reads the head.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(events.head_reads(), 0);
    let new = NewSubscription {
        url: URL.to_owned(),
        types: vec![EventType::BatchCreated],
        description: None,
    };
    create(&store, &events, &sender, strict(), new)
        .await
        .unwrap();
    // Once it delivers the subscription, the polls read the head again.
    let created = events.head_reads();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while events.head_reads() <= created + 5 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the head is not read"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    running.abort();
}
