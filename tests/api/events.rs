//! The event feed: every change of allocation state, recorded exactly when
//! it is committed, in one sequence that readers replay and follow.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::TryStreamExt;
use mongodb::bson::{Document, doc};
use serde_json::Value;

use crate::durability::serve_relaying_on;
use crate::helpers::{Caller, Shop, line, random_name, relaying, spawn_app, spawn_app_with};

/// Reads the feed after `after` until it holds `count` events (or 20 s pass).
async fn feed_until(reader: &Caller, after: u64, count: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut events: Vec<Value> = Vec::new();
    let mut position = after;
    while events.len() < count {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the feed has {} of {count} events: {events:#?}",
            events.len()
        );
        let (status, page) = reader
            .get(&format!("/events?after={position}&limit=1000&wait_ms=500"))
            .await;
        assert_eq!(status, 200, "{page}");
        position = page["next_after"].as_u64().unwrap();
        events.extend(page["events"].as_array().unwrap().iter().cloned());
    }
    events
}

fn types(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

/// Relaying, with waits as long as a reader asks (up to 10 s): an answer
/// well before then can only be an event's.
fn relaying_with_long_waits(settings: &mut allot::config::Settings) {
    relaying(settings);
    settings.events.long_poll_max_ms = 10_000;
}

async fn a_story_is_told_by_the_feed_in_the_order_it_happened() {
    let shop = Shop::on(spawn_app_with(relaying).await).await;
    let admin = shop.as_admin();
    shop.add_stock(&[("b1", "LAMP", 10, None)]).await;
    assert_eq!(shop.allocate("o1", "LAMP", 10).await.0, 201);
    assert_eq!(shop.allocate("o2", "LAMP", 1).await.0, 400);
    assert_eq!(shop.patch_quantity("b1", 0).await.0, 200);
    assert_eq!(shop.line_status("o1").await, "backordered");
    shop.add_stock(&[("b2", "LAMP", 20, Some("2031-01-01"))])
        .await;
    assert_eq!(admin.deallocate("o1", "LAMP").await.0, 200);

    let events = feed_until(&admin, 0, 10).await;
    assert_eq!(
        types(&events),
        [
            "batch.created",
            "sku.out_of_stock", // the stock step, before the line is stored
            "line.allocated",
            "allocation.refused",
            "batch.quantity_changed",
            "line.backordered",
            "batch.created",
            "sku.back_in_stock",
            "line.filled",
            "line.deallocated",
        ]
    );
    let positions: Vec<u64> = events
        .iter()
        .map(|e| e["position"].as_u64().unwrap())
        .collect();
    assert_eq!(positions, (1..=10).collect::<Vec<_>>());
    assert_eq!(events[2]["data"]["batchref"], "b1");
    assert_eq!(events[3]["data"]["orderid"], "o2");
    assert_eq!(events[5]["data"]["from"], "b1");
    assert_eq!(events[8]["data"]["batchref"], "b2");
    // A filter by type keeps the positions; a reader from a later position sees the rest.
    let (_, lines) = admin
        .get("/events?types=line.filled&types=line.deallocated")
        .await;
    assert_eq!(lines["events"][0]["position"], 9);
    assert_eq!(lines["next_after"], 10);
    let (_, rest) = admin.get("/events?after=8").await;
    assert_eq!(
        types(rest["events"].as_array().unwrap()),
        ["line.filled", "line.deallocated"]
    );
}

async fn the_feed_is_for_admins_and_the_events_role_only() {
    let shop = Shop::on(spawn_app_with(relaying).await).await;
    let (status, body) = shop.get("/events").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["msg"], "Admin or events role required");
    let username = random_name("warehouse");
    assert_eq!(
        shop.as_admin().create_user(&username, &["events"]).await.0,
        201
    );
    let warehouse = shop.app.logged_in(&username).await;
    let (status, body) = warehouse.get("/events?after=0").await;
    assert_eq!(status, 200, "{body}");
    // ... and nothing else of stock and orders.
    let (status, body) = warehouse.allocate("o1", "LAMP", 1).await;
    assert_eq!(
        (status, &body["msg"]),
        (403, &"The events role reads only the event feed".into())
    );
    assert_eq!(warehouse.get("/batches").await.0, 403);
    let (status, body) = warehouse.get("/events?limit=0").await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = warehouse.get("/events?types=line.exploded").await;
    assert_eq!(status, 400, "{body}");
}

async fn a_waiting_reader_gets_the_next_event_as_it_is_recorded() {
    let app = spawn_app_with(relaying_with_long_waits).await;
    let shop = Shop::on(app).await;
    let admin = shop.as_admin();
    let head = feed_until(&admin, 0, 0).await.len() as u64;
    let waiting = {
        let admin = admin.clone();
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let (status, page) = admin
                .get(&format!("/events?after={head}&wait_ms=10000"))
                .await;
            (status, page, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    shop.add_stock(&[("b1", "DESK", 5, None)]).await;
    let (status, page, waited) = waiting.await.unwrap();
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["events"][0]["type"], "batch.created");
    assert!(waited < Duration::from_secs(5), "waited {waited:?}");
    // Nothing new: an empty page once the wait is over.
    let after = page["next_after"].as_u64().unwrap() + 1;
    let (status, page) = admin
        .get(&format!("/events?after={after}&wait_ms=200"))
        .await;
    assert_eq!((status, page["events"].as_array().unwrap().len()), (200, 0));
}

/// One long poll of the feed after `after`, on a connection of its own,
/// dropped after `cut_off` if no answer came by then (None).
async fn long_poll(address: &str, token: &str, after: u64, cut_off: Duration) -> Option<Value> {
    let request = reqwest::Client::new()
        .get(format!("{address}/events?after={after}&wait_ms=10000"))
        .bearer_auth(token)
        .timeout(cut_off);
    match request.send().await {
        Ok(response) => {
            assert_eq!(response.status(), 200);
            Some(response.json().await.unwrap())
        }
        Err(error) if error.is_timeout() => None,
        Err(error) => panic!("the feed failed: {error}"),
    }
}

/// A reader follows the feed live while the changes happen, resuming from
/// the last position it saw after each wait it cuts off; a reader replaying
/// the feed from 0 afterwards gets the very same events.
async fn a_live_reader_cut_off_while_waiting_sees_what_a_replay_sees() {
    let app = spawn_app_with(relaying_with_long_waits).await;
    let address = app.address.clone();
    let shop = Shop::on(app).await;
    let admin = shop.as_admin();
    // Created, two lines allocated (the second takes the last of the stock:
    // out of stock), one deallocated (back in stock).
    const EVENTS: usize = 6;
    let follower = {
        let token = admin.token.clone();
        tokio::spawn(async move {
            let (mut live, mut cut_offs) = (Vec::<Value>::new(), 0);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            for wait in 0.. {
                if live.len() >= EVENTS {
                    break;
                }
                assert!(tokio::time::Instant::now() < deadline, "{live:#?}");
                // Every other wait is cut off; the first surely is: nothing
                // happens for 500 ms.
                let cut_off = Duration::from_millis(if wait % 2 == 0 { 200 } else { 20_000 });
                let after = live.last().map_or(0, |e| e["position"].as_u64().unwrap());
                match long_poll(&address, &token, after, cut_off).await {
                    Some(page) => live.extend(page["events"].as_array().unwrap().iter().cloned()),
                    None => cut_offs += 1,
                }
            }
            (live, cut_offs)
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    shop.add_stock(&[("b1", "DESK", 3, None)]).await;
    for (orderid, qty) in [("o1", 2), ("o2", 1)] {
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(shop.allocate(orderid, "DESK", qty).await.0, 201);
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(admin.deallocate("o1", "DESK").await.0, 200);

    let (live, cut_offs) = follower.await.unwrap();
    let replayed = feed_until(&admin, 0, EVENTS).await;
    assert!(cut_offs >= 1, "no wait was cut off");
    assert_eq!(live, replayed);
    let positions: Vec<u64> = live
        .iter()
        .map(|e| e["position"].as_u64().unwrap())
        .collect();
    assert_eq!(positions, (1..=EVENTS as u64).collect::<Vec<_>>());
    eprintln!(
        "the live reader cut off {cut_offs} waits: {:?}",
        types(&live)
    );
}

/// Two instances allocate while the relay's (the older) is SIGKILLed and
/// restarted, six times: every stored line has exactly one `line.allocated`,
/// and the positions run 1, 2, 3, … with no gap and no repeat.
async fn relays_killed_while_recording_lose_and_repeat_no_event() {
    let app = spawn_app().await;
    let database = app.database.clone();
    let name = database.name().to_owned();
    let (admin, buyer) = (app.new_admin().await.access, app.new_user().await.access);
    // Stopped, so that the relay is one of the two: the oldest live instance
    // leads, so each kill below kills the relay.
    drop(app);
    let mut instances = [serve_relaying_on(&name), serve_relaying_on(&name)];
    assert_eq!(
        instances[0]
            .caller(&admin)
            .add_batch("b1", "CHAIR", 100_000, None)
            .await
            .0,
        201
    );
    let http = reqwest::Client::new();
    for round in 0..6 {
        let urls: Vec<String> = instances
            .iter()
            .map(|i| format!("{}/allocate", i.url))
            .collect();
        // Requests to the instance being killed may fail: they are not counted.
        let load = futures_util::future::join_all((0..40).map(|n| {
            let request = http.post(&urls[n % 2]).bearer_auth(&buyer).json(&line(
                &format!("r{round}-o{n}"),
                "CHAIR",
                1,
            ));
            async move { request.send().await.map(|r| r.status()) }
        }));
        let victim = round % 2;
        let kill_after = Duration::from_millis(20 + 30 * round as u64);
        let (_, ()) = tokio::join!(load, async {
            tokio::time::sleep(kill_after).await;
            instances[victim].kill();
        });
        instances[victim] = serve_relaying_on(&name);
    }
    // Lines of killed instances are stored by the survivors' recovery: once
    // no batch holds an intent, every line that will be stored is. (A fixed
    // 3 s was too short for the recovery on a database slowed by the other
    // tests running beside this one.)
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let with_intents = doc! { "pending": { "$exists": true, "$ne": {} } };
    while database
        .collection::<Document>("batches")
        .count_documents(with_intents.clone())
        .await
        .unwrap()
        > 0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "intents left unfinished"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stored: Vec<Document> = database
        .collection::<Document>("order_lines")
        .find(doc! {})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let reader = instances[0].caller(&admin);
    let expected = stored.len() + 1; // and the batch's creation
    let events = feed_until(&reader, 0, expected).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_, more) = reader.get(&format!("/events?after={}", events.len())).await;
    assert_eq!(more["events"], serde_json::json!([]), "events of no change");
    let positions: Vec<u64> = events
        .iter()
        .map(|e| e["position"].as_u64().unwrap())
        .collect();
    assert_eq!(positions, (1..=expected as u64).collect::<Vec<_>>());
    let mut allocated: HashMap<String, usize> = HashMap::new();
    for event in events.iter().filter(|e| e["type"] == "line.allocated") {
        *allocated
            .entry(event["data"]["orderid"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(allocated.len(), stored.len());
    for line in &stored {
        assert_eq!(allocated.get(line.get_str("orderid").unwrap()), Some(&1));
    }
    for mut instance in instances {
        instance.kill();
    }
}

/// This module's tests, in the order the harness lists them.
pub fn trials() -> Vec<libtest_mimic::Trial> {
    trials!(events: [
        a_story_is_told_by_the_feed_in_the_order_it_happened,
        the_feed_is_for_admins_and_the_events_role_only,
        a_waiting_reader_gets_the_next_event_as_it_is_recorded,
        a_live_reader_cut_off_while_waiting_sees_what_a_replay_sees,
        relays_killed_while_recording_lose_and_repeat_no_event,
    ])
}
