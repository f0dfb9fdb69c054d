//! What an attacker tries: password guesses released at once on two
//! instances, probing another account's order ids, look-alike ids, and
//! cursors carried from one listing to another.

use futures_util::future::join_all;
use mongodb::bson::{Document, doc};
use serde_json::{Value, json};

use crate::helpers::{Caller, PASSWORD, TestApp, random_name, spawn_app, spawn_app_with};

const ATTACKER: &str = "198.51.100.23";

/// Two instances on one database that take the client address from
/// `X-Forwarded-For`, with a lockout long enough to outlast a burst and a
/// hashing queue long enough to hold one (so every 429 is the throttle's).
async fn two_instances(address_failures: u32) -> (TestApp, TestApp) {
    let adjust = |database: Option<String>| {
        move |settings: &mut allot::config::Settings| {
            settings.http.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
            settings.auth.login_throttle.lockout_secs = 600;
            settings.auth.login_throttle.address_failures = address_failures;
            settings.auth.hashing_queue = 256;
            if let Some(database) = database {
                settings.mongo.database = database;
            }
        }
    };
    let first = spawn_app_with(adjust(None)).await;
    let second = spawn_app_with(adjust(Some(first.database.name().to_owned()))).await;
    (first, second)
}

/// Sends every request at once, alternating the two instances; the statuses.
async fn burst(
    apps: &(TestApp, TestApp),
    requests: impl Iterator<Item = (reqwest::Method, &'static str, Option<String>, Value)>,
) -> Vec<u16> {
    let sent = requests
        .enumerate()
        .map(|(n, (method, path, token, body))| {
            let app = if n % 2 == 0 { &apps.0 } else { &apps.1 };
            let mut request = app
                .http
                .request(method, app.url(path))
                .header("X-Forwarded-For", ATTACKER)
                .json(&body);
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            async move { request.send().await.expect("sent").status().as_u16() }
        });
    join_all(sent).await
}

fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|&&s| s == status).count()
}

fn login(username: &str, password: &str) -> (reqwest::Method, &'static str, Option<String>, Value) {
    let body = json!({"username": username, "password": password});
    (reqwest::Method::POST, "/users/login", None, body)
}

/// The failures stored for the attacker's address, read from the database.
async fn stored_failures(app: &TestApp, key: &str) -> i64 {
    let stored = app
        .database
        .collection::<Document>("login_failures")
        .find_one(doc! { "_id": key })
        .await
        .unwrap()
        .expect("a count");
    stored.get_i64("count").unwrap()
}

/// 60 wrong passwords for one username, released at once over two instances:
/// exactly five are checked (401); the rest wait (429), and so does the whole
/// next burst and then the right password.
async fn sixty_concurrent_guesses_check_five_passwords_across_two_instances() {
    let apps = two_instances(1000).await;
    let username = random_name("victim");
    assert_eq!(apps.0.register(&username, PASSWORD).await.0, 201);
    let guesses = || (0..60).map(|n| login(&username, &format!("guess {n}")));
    let statuses = burst(&apps, guesses()).await;
    assert_eq!(count(&statuses, 401), 5, "{statuses:?}");
    assert_eq!(count(&statuses, 429), 55, "{statuses:?}");
    let key = format!("user:{ATTACKER} {username}");
    assert_eq!(stored_failures(&apps.0, &key).await, 5);
    let again = burst(&apps, guesses()).await;
    assert_eq!(count(&again, 429), 60, "{again:?}");
    let right = burst(&apps, std::iter::once(login(&username, PASSWORD))).await;
    assert_eq!(right, [429]);
    assert_eq!(stored_failures(&apps.0, &key).await, 5);
}

/// 60 wrong passwords for 60 usernames from one address, at once: no more
/// are checked than the address may fail (here 20).
async fn concurrent_guesses_across_usernames_stop_at_the_address_limit() {
    let apps = two_instances(20).await;
    let names: Vec<String> = (0..60).map(|_| random_name("sprayed")).collect();
    let statuses = burst(&apps, names.iter().map(|name| login(name, "guess"))).await;
    assert_eq!(count(&statuses, 401), 20, "{statuses:?}");
    assert_eq!(count(&statuses, 429), 40, "{statuses:?}");
    let key = format!("address:{ATTACKER}");
    assert_eq!(stored_failures(&apps.0, &key).await, 20);
}

/// 40 wrong current passwords at once on `PATCH /users/me/password`: five
/// are checked (403), the rest wait (429), and the password is unchanged.
async fn concurrent_wrong_current_passwords_check_five() {
    let apps = two_instances(1000).await;
    let username = random_name("owner");
    let (status, body) = apps.0.register(&username, PASSWORD).await;
    assert_eq!(status, 201);
    let access = body["access_token"].as_str().unwrap().to_owned();
    let changes = (0..40).map(|n| {
        let body =
            json!({"current_password": format!("guess {n}"), "new_password": "a brand new one"});
        (
            reqwest::Method::PATCH,
            "/users/me/password",
            Some(access.clone()),
            body,
        )
    });
    let statuses = burst(&apps, changes).await;
    assert_eq!(count(&statuses, 403), 5, "{statuses:?}");
    assert_eq!(count(&statuses, 429), 35, "{statuses:?}");
    // From elsewhere, the old password still logs in.
    assert_eq!(apps.1.login(&username, PASSWORD).await.0, 200);
}

/// Adds a batch of 10 units of `sku` as `admin`.
async fn stock(admin: &Caller, reference: &str, sku: &str) {
    assert_eq!(admin.add_batch(reference, sku, 10, None).await.0, 201);
}

/// Another account's order gets what an order id nobody holds gets, for an
/// unknown sku and for too large a quantity; a line that would be allocated
/// is the one answer that differs (201 against 404), as a taken username
/// does at registration.
async fn another_accounts_order_answers_as_an_order_nobody_holds() {
    let app = spawn_app().await;
    let admin = app.as_admin().await;
    let (owner, prober) = (app.as_user().await, app.as_user().await);
    let sku = random_name("sku");
    stock(&admin, &random_name("batch"), &sku).await;
    let taken = random_name("order");
    assert_eq!(owner.allocate(&taken, &sku, 1).await.0, 201);
    let unknown_sku = random_name("nosku");
    for (case, sku, qty) in [("unknown sku", &unknown_sku, 1), ("out of stock", &sku, 50)] {
        let nobodys = random_name("order");
        let (status, body) = prober.allocate(&taken, sku, qty).await;
        let (fresh_status, fresh_body) = prober.allocate(&nobodys, sku, qty).await;
        assert_eq!((status, &body), (fresh_status, &fresh_body), "{case}");
        assert_eq!(status, 400, "{case}: {body}");
    }
    let (status, body) = prober.allocate(&taken, &sku, 1).await;
    assert_eq!(
        (status, body),
        (404, json!({"message": format!("Order {taken} not found")}))
    );
    assert_eq!(prober.allocate(&random_name("order"), &sku, 1).await.0, 201);
    // The owner's order holds only the owner's line.
    let (_, lines) = owner.allocations(&taken).await;
    assert_eq!(lines.as_array().map(Vec::len), Some(1), "{lines}");
}

/// Ids that would look like another are refused with 400 naming the field,
/// and nothing is created; ids are case-sensitive, so a case variant is
/// another order.
async fn look_alike_ids_are_refused_and_case_makes_another_id() {
    let app = spawn_app().await;
    let admin = app.as_admin().await;
    let user = app.as_user().await;
    let sku = random_name("sku");
    stock(&admin, &random_name("batch"), &sku).await;
    let order = random_name("order");
    assert_eq!(user.allocate(&order, &sku, 1).await.0, 201);
    for look_alike in [
        format!("{order}\u{200b}"),
        order.replace('-', "\u{2010}"),
        order.replace('-', "\u{ff0d}"),
        order.replacen('o', "\u{3bf}", 1),
        format!("{order}\0"),
        format!("{order} "),
    ] {
        let (status, body) = user.allocate(&look_alike, &sku, 1).await;
        assert_eq!(status, 400, "{look_alike:?}: {body}");
        assert!(
            body["message"].as_str().unwrap().contains("orderid"),
            "{body}"
        );
    }
    let weird_batch = json!({"reference": "b\u{0391}tch", "sku": sku, "purchased_quantity": 1});
    let (status, body) = admin.post("/batches", &weird_batch).await;
    assert_eq!(status, 400, "{body}");
    let lines = app.database.collection::<Document>("order_lines");
    let stored = lines.count_documents(doc! { "sku": &sku }).await.unwrap();
    assert_eq!(stored, 1, "only the first order's line");
    assert_eq!(
        user.allocate(&order.to_uppercase(), &sku, 1).await.0,
        201,
        "another order"
    );
}

/// A cursor resumes its own listing after the last item it saw, even when
/// lines before it go; on any other listing (another batch, another sku
/// filter, another kind) or forged, it gets 400.
async fn a_cursor_resumes_only_its_own_listing() {
    let app = spawn_app().await;
    let admin = app.as_admin().await;
    let user = app.as_user().await;
    let sku = random_name("sku");
    let (first, second) = (random_name("batch-a"), random_name("batch-b"));
    for reference in [&first, &second] {
        stock(&admin, reference, &sku).await;
    }
    let orders: Vec<String> = (0..3).map(|_| random_name("order")).collect();
    for orderid in &orders {
        assert_eq!(user.allocate(orderid, &sku, 1).await.0, 201);
    }
    let admin = &admin;
    let get = |path: String| async move { admin.get(&path).await };
    let lines = format!("/batches/{first}/allocations");
    let (status, page) = get(format!("{lines}?limit=1")).await;
    assert_eq!(
        (status, &page["allocations"][0]["orderid"]),
        (200, &json!(orders[0]))
    );
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    // The line before the cursor goes: the next page still starts after it.
    assert_eq!(user.deallocate(&orders[0], &sku).await.0, 200);
    let (_, next) = get(format!("{lines}?limit=1&cursor={cursor}")).await;
    assert_eq!(
        next["allocations"][0]["orderid"],
        json!(orders[1]),
        "{next}"
    );
    let (status, page) = get(format!("/batches?sku={sku}&limit=1")).await;
    assert_eq!(status, 200);
    let batches_cursor = page["next_cursor"].as_str().unwrap().to_owned();
    for (path, what) in [
        (
            format!("/batches/{second}/allocations?cursor={cursor}"),
            "another batch",
        ),
        (
            format!("/batches?cursor={cursor}"),
            "another kind of listing",
        ),
        (
            format!("/batches?sku=other&cursor={batches_cursor}"),
            "another sku",
        ),
        (
            format!("/batches?cursor={batches_cursor}"),
            "without the sku filter",
        ),
        (format!("/users?cursor={batches_cursor}"), "the accounts"),
        (format!("{lines}?cursor=2"), "a forged offset"),
    ] {
        let (status, body) = get(path).await;
        assert_eq!(status, 400, "{what}: {body}");
        assert!(
            body["message"].as_str().unwrap().contains("cursor"),
            "{body}"
        );
    }
    let (status, _) = get(format!("/batches?sku={sku}&cursor={batches_cursor}")).await;
    assert_eq!(status, 200);
}

/// This module's tests, in the order the harness lists them.
pub fn trials() -> Vec<libtest_mimic::Trial> {
    trials!(attacks: [
        sixty_concurrent_guesses_check_five_passwords_across_two_instances,
        concurrent_guesses_across_usernames_stop_at_the_address_limit,
        concurrent_wrong_current_passwords_check_five,
        another_accounts_order_answers_as_an_order_nobody_holds,
        look_alike_ids_are_refused_and_case_makes_another_id,
        a_cursor_resumes_only_its_own_listing,
    ])
}
