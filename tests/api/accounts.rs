//! Accounts and authorization: self-service, administration, revocation that
//! reaches every instance, retry-safe refresh, login throttling, order
//! ownership, the registration policy and the 401 headers (issue 10).

use std::time::{Duration, Instant};

use mongodb::bson::{Document, doc};
use serde_json::{Value, json};

use crate::helpers::{
    Caller, PASSWORD, TestApp, Tokens, header, json, msg, random_name, revoked_within_a_second,
    secret_as, spawn_app, spawn_app_with,
};

/// Point 1: a password change revokes every token of every login, here at
/// once and on another instance within a second; a wrong current password
/// changes nothing; the new password works at once (same second included).
async fn a_password_change_ends_every_login_everywhere() {
    let first = spawn_app().await;
    let second = first.second_instance().await;
    let (username, registration) = first.registered().await;
    let (_, body) = first.login(&username, PASSWORD).await;
    let other_login = Tokens::from(&body);
    assert_eq!(secret_as(&second, &other_login.access).await.0, 200);

    let path = "/users/me/password";
    let me = first.with_token(&registration.access);
    let wrong = json!({"current_password": "not the password", "new_password": "a brand new one"});
    let (status, body) = me.patch(path, &wrong).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        first.login(&username, PASSWORD).await.0,
        200,
        "nothing changed"
    );

    let change = json!({"current_password": PASSWORD, "new_password": "a brand new one"});
    let (status, body) = me.patch(path, &change).await;
    assert_eq!(status, 200, "{body}");
    let fresh = Tokens::from(&body);
    for old in [&registration.access, &other_login.access] {
        assert_eq!(
            secret_as(&first, old).await,
            (401, msg("Token has been revoked")),
            "at once here"
        );
    }
    revoked_within_a_second(&second, &registration.access, Instant::now()).await;
    revoked_within_a_second(&second, &other_login.access, Instant::now()).await;
    assert_eq!(
        second.refresh(&other_login.refresh).await.0,
        401,
        "old refresh tokens too"
    );
    // The new pair and a new login, in the same second as the change, work on both.
    assert_eq!(secret_as(&first, &fresh.access).await.0, 200);
    assert_eq!(secret_as(&second, &fresh.access).await.0, 200);
    assert_eq!(first.login(&username, PASSWORD).await.0, 401);
    let (status, body) = second.login(&username, "a brand new one").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(secret_as(&second, &Tokens::from(&body).access).await.0, 200);
    assert_eq!(first.refresh(&fresh.refresh).await.0, 200);
}

/// Point 1: deleting one's account revokes its tokens everywhere and frees the
/// username; the new account of that name inherits neither tokens nor orders.
async fn deleting_my_account_revokes_it_and_frees_the_username() {
    let first = spawn_app().await;
    let second = first.second_instance().await;
    let admin = first.as_admin().await;
    let sku = random_name("sku");
    let (status, _) = admin.add_batch(&random_name("batch"), &sku, 10, None).await;
    assert_eq!(status, 201);
    let (username, tokens) = first.registered().await;
    let order = random_name("order");
    let me = first.with_token(&tokens.access);
    assert_eq!(me.allocate(&order, &sku, 1).await.0, 201);
    assert_eq!(secret_as(&second, &tokens.access).await.0, 200);

    assert_eq!(me.delete("/users/me").await.0, 204);
    assert_eq!(
        secret_as(&first, &tokens.access).await,
        (401, msg("Token has been revoked"))
    );
    revoked_within_a_second(&second, &tokens.access, Instant::now()).await;
    assert_eq!(first.login(&username, PASSWORD).await.0, 401);

    let (status, body) = second.register(&username, "another password").await;
    assert_eq!(status, 201, "the username is free again: {body}");
    let newcomer = Tokens::from(&body);
    assert_eq!(secret_as(&first, &newcomer.access).await.0, 200);
    let (status, _) = first.with_token(&newcomer.access).allocations(&order).await;
    assert_eq!(status, 404, "the old account's order is not the newcomer's");
    let (status, _) = admin.allocations(&order).await;
    assert_eq!(status, 200, "admins still see it");
}

fn never_a_secret(body: &Value) {
    let text = body.to_string();
    assert!(
        !text.contains("argon2") && !text.contains("password"),
        "{text}"
    );
}

/// The usernames of a listing page.
fn usernames(page: &Value) -> Vec<String> {
    let users = page["users"].as_array().expect("a page of users");
    users
        .iter()
        .map(|u| u["username"].as_str().unwrap().to_owned())
        .collect()
}

/// `GET /users` pages by username, two at a time, showing no secret: here
/// the admin and the two users `a` and `b`.
async fn users_are_listed_in_pages(admin: &Caller, a: &String, b: &String) {
    let (status, page) = admin.get("/users?limit=2").await;
    assert_eq!(status, 200, "{page}");
    never_a_secret(&page);
    let cursor = page["next_cursor"].as_str().expect("a next page");
    let (_, rest) = admin.get(&format!("/users?limit=2&cursor={cursor}")).await;
    let mut names = [usernames(&page), usernames(&rest)].concat();
    assert_eq!(names.len(), 3);
    assert!(names.is_sorted(), "{names:?}");
    names.sort();
    assert!(names.contains(a) && names.contains(b));
    assert_eq!(rest["next_cursor"], Value::Null);
    let user = &page["users"][0];
    for field in ["username", "roles", "created_at", "disabled"] {
        assert!(user.get(field).is_some(), "{user}");
    }
}

/// Point 2: admins list, read, change and delete accounts; every change
/// revokes the account's tokens (a demoted admin keeps no admin token); a
/// disabled account's login is 403 only after the password was checked.
async fn admins_manage_accounts_and_every_change_revokes() {
    let first = spawn_app().await;
    let second = first.second_instance().await;
    let admin = first.as_admin().await;
    let (name_a, _) = first.registered().await;
    let (name_b, user_b) = first.registered().await;
    assert_eq!(first.with_token(&user_b.access).get("/users").await.0, 403);
    users_are_listed_in_pages(&admin, &name_a, &name_b).await;
    let (status, profile) = admin
        .get(&format!("/users/{}", name_b.to_uppercase()))
        .await;
    assert_eq!((status, &profile["username"]), (200, &json!(name_b)));
    never_a_secret(&profile);
    assert_eq!(admin.get("/users/nobody-here").await.0, 404);

    // Promote B: B's old tokens are revoked; a new login carries admin.
    let (status, body) = admin.set_roles(&name_b, &["user", "admin"]).await;
    assert_eq!(status, 200, "{body}");
    never_a_secret(&body);
    revoked_within_a_second(&second, &user_b.access, Instant::now()).await;
    let b_admin = second.logged_in(&name_b).await;
    assert_eq!(b_admin.get("/users").await.0, 200);

    // Demote B again: its admin token is refused on the other instance within a second.
    assert_eq!(admin.set_roles(&name_b, &["user"]).await.0, 200);
    revoked_within_a_second(&second, &b_admin.token, Instant::now()).await;
    assert_eq!(b_admin.get("/users").await.0, 401);

    // Disable: the right password gets 403, a wrong one still 401.
    let before = Tokens::from(&first.login(&name_b, PASSWORD).await.1);
    let (status, body) = admin.set_disabled(&name_b, true).await;
    assert_eq!((status, &body["disabled"]), (200, &json!(true)));
    revoked_within_a_second(&second, &before.access, Instant::now()).await;
    let disabled = (403, msg("Account disabled"));
    assert_eq!(second.login(&name_b, PASSWORD).await, disabled);
    let wrong = (401, msg("Bad username or password"));
    assert_eq!(second.login(&name_b, "wrong password").await, wrong);
    assert_eq!(second.refresh(&before.refresh).await.0, 401);
    assert_eq!(admin.set_disabled(&name_b, false).await.0, 200);
    assert_eq!(second.login(&name_b, PASSWORD).await.0, 200);

    // Bad changes change nothing.
    for bad in [
        json!({"roles": []}),
        json!({"roles": ["root"]}),
        json!({"disabled": null}),
    ] {
        assert_eq!(admin.change_user(&name_b, &bad).await.0, 400, "{bad}");
    }

    // Names of paths under /users/ cannot be taken, so every account can be
    // addressed as /users/{username}.
    assert_eq!(second.register("Login", PASSWORD).await.0, 400);
    let (status, body) = admin.create_user("refresh", &["user"]).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("reserved"),
        "{body}"
    );

    // Delete: 204, then 404; its tokens are refused; the name is free.
    let a = first.logged_in(&name_a).await;
    assert_eq!(admin.delete_user(&name_a).await.0, 204);
    assert_eq!(admin.delete_user(&name_a).await.0, 404);
    revoked_within_a_second(&second, &a.token, Instant::now()).await;
    assert_eq!(second.register(&name_a, PASSWORD).await.0, 201);
}

/// Point 2: admins cannot disable, delete or demote themselves, nor remove the
/// last admin, also when two admins try to remove each other at once.
async fn admins_cannot_remove_themselves_or_the_last_admin() {
    let first = spawn_app().await;
    let second = first.second_instance().await;
    let admin = first.as_admin().await;
    let own = admin.username().await;
    for change in [json!({"disabled": true}), json!({"roles": ["user"]})] {
        let (status, body) = admin.change_user(&own, &change).await;
        assert_eq!(status, 409, "{body}");
        assert!(
            body["message"].as_str().unwrap().contains("themselves"),
            "{body}"
        );
    }
    assert_eq!(admin.delete_user(&own).await.0, 409);
    assert_eq!(admin.delete("/users/me").await.0, 409);
    let (status, _) = secret_as(&first, &admin.token).await;
    assert_eq!(status, 200, "nothing was revoked");

    // Two admins, each demoting the other at the same time on two instances:
    // one admin must remain.
    let demote = json!({"roles": ["user"]});
    for _ in 0..3 {
        let x = first.as_admin().await;
        let y = second.with_token(&first.new_admin().await.access);
        let (nx, ny) = (x.username().await, y.username().await);
        // Leave x and y as the only admins.
        let (_, page) = x.get("/users?limit=200").await;
        for user in page["users"].as_array().unwrap() {
            let username = user["username"].as_str().unwrap();
            let is_admin = user["roles"].as_array().unwrap().contains(&json!("admin"));
            if is_admin && username != nx && username != ny {
                let (status, body) = x.change_user(username, &demote).await;
                assert_eq!(status, 200, "{body}");
            }
        }
        let ((sx, bx), (sy, by)) =
            tokio::join!(x.change_user(&ny, &demote), y.change_user(&nx, &demote));
        let statuses = [sx, sy];
        assert!(
            statuses.contains(&409) || statuses.contains(&401),
            "{sx} {bx} / {sy} {by}"
        );
        let admins = first
            .database
            .collection::<Document>("users")
            .count_documents(doc! { "roles": "admin", "disabled": { "$ne": true } })
            .await
            .unwrap();
        assert_eq!(admins, 1, "{sx} {bx} / {sy} {by}");
        // Restore two admins for the next round.
        first.grant_admin(&nx).await;
        first.grant_admin(&ny).await;
    }
}

/// Point 4: a revocation that becomes visible late (its transaction commits
/// 1.5 s after it began, and its timestamp is an hour old) still reaches
/// the other instance: the sync asks by sequence number, not by time.
async fn a_revocation_made_visible_late_still_reaches_every_instance() {
    let first = spawn_app().await;
    let second = first.second_instance().await;
    let late = first.new_user().await;
    let prompt = first.new_user().await;
    assert_eq!(secret_as(&second, &late.access).await.0, 200);
    let claims: Value = {
        let payload = late.access.split('.').nth(1).unwrap();
        use base64::Engine;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    };
    let jti = claims["jti"].as_str().unwrap().to_owned();

    // Write the revocation as allot does (number from the counter, insert, in
    // one transaction), but stamped an hour ago and committed late.
    let client = first.database.client().clone();
    let database = first.database.clone();
    let writer = tokio::spawn(async move {
        let mut session = client.start_session().await.unwrap();
        session.start_transaction().await.unwrap();
        let counter = database
            .collection::<Document>("counters")
            .find_one_and_update(
                doc! { "_id": "revocations" },
                doc! { "$inc": { "seq": 1_i64 } },
            )
            .upsert(true)
            .return_document(mongodb::options::ReturnDocument::After)
            .session(&mut session)
            .await
            .unwrap()
            .unwrap();
        let hour_ago =
            mongodb::bson::DateTime::from_millis(chrono::Utc::now().timestamp_millis() - 3_600_000);
        let in_a_day = mongodb::bson::DateTime::from_millis(
            chrono::Utc::now().timestamp_millis() + 86_400_000,
        );
        database
            .collection::<Document>("revoked_tokens")
            .insert_one(doc! { "_id": &jti, "seq": counter.get_i64("seq").unwrap(), "revoked_at": hour_ago, "expires_at": in_a_day })
            .session(&mut session)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        session.commit_transaction().await.unwrap();
        Instant::now()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Meanwhile another revocation is made (it waits behind the open one).
    assert_eq!(first.logout(&prompt.access).await.0, 200);
    let committed = writer.await.unwrap();
    // Within a second of its commit, the late one is refused too.
    revoked_within_a_second(&second, &late.access, committed).await;
    revoked_within_a_second(&second, &prompt.access, Instant::now()).await;
}

/// Point 5: a refresh retried (the reply was lost) gets the very same pair,
/// also when two instances race with it; a real reuse — after the successor
/// was used — still revokes the whole login.
async fn a_retried_refresh_is_no_reuse_but_a_real_reuse_is_caught() {
    let first = spawn_app().await;
    let second = first.second_instance().await;
    let login = first.new_user().await;

    // The same refresh token on both instances at once: same answer, twice.
    let (a, b) = tokio::join!(
        first.refresh(&login.refresh),
        second.refresh(&login.refresh)
    );
    assert_eq!(a.0, 200, "{}", a.1);
    assert_eq!(b.0, 200, "{}", b.1);
    assert_eq!(a.1, b.1, "a retry gets the identical pair");
    // And once more, later (within the grace period).
    let (status, again) = second.refresh(&login.refresh).await;
    assert_eq!((status, &again), (200, &a.1));
    let successor = Tokens::from(&a.1);
    assert_eq!(secret_as(&second, &successor.access).await.0, 200);

    // The successor is used: the original is now a real reuse.
    let (status, body) = second.refresh(&successor.refresh).await;
    assert_eq!(status, 200, "{body}");
    let third = Tokens::from(&body);
    let (status, body) = first.refresh(&login.refresh).await;
    assert_eq!((status, body), (401, msg("Token has been revoked")));
    // The whole login is revoked, on both instances.
    assert_eq!(
        secret_as(&first, &third.access).await,
        (401, msg("Token has been revoked"))
    );
    revoked_within_a_second(&second, &third.access, Instant::now()).await;
    assert_eq!(second.refresh(&third.refresh).await.0, 401);
}

/// Point 5: past the grace period, presenting a used refresh token is a reuse
/// even if its successor was never used.
async fn a_used_refresh_token_after_the_grace_period_is_a_reuse() {
    let app = spawn_app_with(|settings| settings.auth.refresh_retry_grace_secs = 1).await;
    let login = app.new_user().await;
    let (status, body) = app.refresh(&login.refresh).await;
    assert_eq!(status, 200, "{body}");
    let successor = Tokens::from(&body);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(
        app.refresh(&login.refresh).await,
        (401, msg("Token has been revoked"))
    );
    assert_eq!(secret_as(&app, &successor.access).await.0, 401);
}

async fn throttled_app() -> TestApp {
    spawn_app_with(|settings| {
        settings.http.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    })
    .await
}

/// Points 6 and 9: five failures of a username from one address within 15
/// minutes make the next attempt wait (429, Retry-After, even with the right
/// password) on every instance; the wait doubles with each further failure;
/// the owner logs in from another address meanwhile; a success resets the count.
async fn failed_logins_are_throttled_per_username_and_address_on_every_instance() {
    let first = throttled_app().await;
    let database = first.database.name().to_owned();
    let second = spawn_app_with(|settings| {
        settings.mongo.database = database;
        settings.http.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    })
    .await;
    let (username, _) = first.registered().await;
    let attacker = "198.51.100.7";
    for n in 1..=5 {
        let response = first
            .login_from(attacker, &username, "wrong password")
            .await;
        assert_eq!(response.status(), 401, "failure {n}");
        assert_eq!(
            header(&response, "www-authenticate").as_deref(),
            Some("Bearer")
        );
        assert_eq!(json(response).await.1, msg("Bad username or password"));
    }
    let response = second.login_from(attacker, &username, PASSWORD).await;
    assert_eq!(
        response.status(),
        429,
        "throttled on the other instance, right password or not"
    );
    let wait: u64 = header(&response, "retry-after").unwrap().parse().unwrap();
    assert_eq!(wait, 1, "the testing lockout is 1 s");
    assert!(json(response).await.1["msg"].is_string());
    // The owner, elsewhere, is not locked out.
    let response = second.login_from("203.0.113.9", &username, PASSWORD).await;
    assert_eq!(response.status(), 200);

    // After the wait, one more failure doubles it.
    let status = async |app: &TestApp, password: &str| {
        let response = app.login_from(attacker, &username, password).await;
        response.status()
    };
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(status(&first, "wrong password").await, 401);
    let response = first.login_from(attacker, &username, PASSWORD).await;
    assert_eq!(response.status(), 429);
    assert_eq!(header(&response, "retry-after").as_deref(), Some("2"));
    // Once the wait is over, the right password works and resets the count.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(status(&second, PASSWORD).await, 200);
    for _ in 0..4 {
        assert_eq!(status(&first, "wrong password").await, 401);
    }
    let below = "four failures after the reset are below the limit";
    assert_eq!(status(&first, PASSWORD).await, 200, "{below}");
    // The counts live in MongoDB, with a TTL.
    let indexes = first
        .database
        .collection::<Document>("login_failures")
        .list_index_names()
        .await
        .unwrap();
    assert!(
        indexes.contains(&"expires_at_ttl".to_owned()),
        "{indexes:?}"
    );
}

/// Point 6: many failures from one address, across usernames, throttle every
/// username from it (the limit is a setting); other addresses are unaffected.
async fn an_address_with_many_failures_is_throttled_for_every_username() {
    let app = spawn_app_with(|settings| {
        settings.http.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
        settings.auth.login_throttle.address_failures = 6;
    })
    .await;
    let (victim, _) = app.registered().await;
    let sprayer = "198.51.100.66";
    for n in 0..6 {
        let response = app
            .login_from(sprayer, &format!("guess-{n}"), "wrong password")
            .await;
        assert_eq!(response.status(), 401);
    }
    let response = app.login_from(sprayer, &victim, PASSWORD).await;
    assert_eq!(response.status(), 429);
    let wait: u64 = header(&response, "retry-after").unwrap().parse().unwrap();
    assert!(
        (800..=900).contains(&wait),
        "the rest of the 15 minutes: {wait}"
    );
    assert_eq!(
        app.login_from("198.51.100.67", &victim, PASSWORD)
            .await
            .status(),
        200
    );
}

/// Point 6: `X-Forwarded-For` counts only from a trusted proxy; from anyone
/// else the client is the TCP peer, so a forged header escapes nothing.
async fn a_forged_forwarded_header_does_not_escape_throttling() {
    let app = spawn_app().await; // no trusted proxies
    let (username, _) = app.registered().await;
    for n in 0..5 {
        let forged = format!("198.51.100.{n}");
        assert_eq!(
            app.login_from(&forged, &username, "wrong password")
                .await
                .status(),
            401
        );
    }
    let response = app.login_from("203.0.113.200", &username, PASSWORD).await;
    assert_eq!(response.status(), 429, "all five came from 127.0.0.1");
}

/// Point 6: the hashing queue is bounded: a flood of logins gets 429 at once
/// beyond it instead of queueing without end.
async fn a_full_hashing_queue_answers_429_at_once() {
    let app = spawn_app_with(|settings| {
        settings.auth.hashing_concurrency = 1;
        settings.auth.hashing_queue = 2;
        settings.auth.argon2.memory_kib = 16 * 1024;
        settings.auth.argon2.iterations = 4;
    })
    .await;
    // Unknown usernames, each tried once: hashed all the same, never throttled.
    let logins = (0..12).map(|n| {
        let app = &app;
        let client = format!("198.51.100.{n}");
        let username = random_name("nobody");
        async move {
            let started = Instant::now();
            let response = app.login_from(&client, &username, "wrong password").await;
            let retry = header(&response, "retry-after");
            (response.status().as_u16(), retry, started.elapsed())
        }
    });
    let answers = futures_util::future::join_all(logins).await;
    let busy: Vec<_> = answers
        .iter()
        .filter(|(status, _, _)| *status == 429)
        .collect();
    assert!(!busy.is_empty(), "{answers:?}");
    assert!(
        busy.iter()
            .all(|(_, retry, _)| retry.as_deref() == Some("1")),
        "{answers:?}"
    );
    assert!(
        answers
            .iter()
            .all(|(status, _, _)| [401, 429].contains(status)),
        "{answers:?}"
    );
    let slowest_busy = busy.iter().map(|(_, _, took)| *took).min().unwrap();
    let slowest_checked = answers
        .iter()
        .filter(|(s, _, _)| *s == 401)
        .map(|(_, _, t)| *t)
        .max()
        .unwrap();
    assert!(
        slowest_busy < slowest_checked,
        "refused at once: {answers:?}"
    );
}

/// Point 8: with `auth.registration = "closed"`, only admins create accounts.
async fn closed_registration_leaves_account_creation_to_admins() {
    let app = spawn_app_with(|settings| {
        settings.auth.registration = allot::config::Registration::Closed;
    })
    .await;
    let username = random_name("user");
    let (status, body) = app.register(&username, PASSWORD).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("closed"),
        "{body}"
    );

    // An admin made through an instance with open registration on the same
    // database (as the CLI would make one).
    let admin = {
        let open = app.second_instance().await;
        let tokens = open.new_admin().await;
        drop(open);
        tokens
    };
    let admin = app.with_token(&admin.access);
    let (status, body) = admin.create_user(&username, &["user"]).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["roles"], json!(["user"]));
    never_a_secret(&body);
    assert_eq!(app.login(&username, PASSWORD).await.0, 200);
    assert_eq!(admin.create_user(&username, &["user"]).await.0, 409);
    let (_, body) = app.login(&username, PASSWORD).await;
    let user = Tokens::from(&body);
    let user = app.with_token(&user.access);
    let (status, _) = user.create_user(&random_name("x"), &["admin"]).await;
    assert_eq!(status, 403, "only admins");
}

/// Point 7: an order belongs to the account that allocated its first line;
/// others get 404 reading it, deallocating from it or adding to it; admins
/// manage every order; batch reads show non-admins no order ids.
async fn orders_belong_to_the_account_that_started_them() {
    let app = spawn_app().await;
    let admin = app.as_admin().await;
    let (owner, intruder) = (app.as_user().await, app.as_user().await);
    let (sku, other_sku, reference) =
        (random_name("sku"), random_name("sku"), random_name("batch"));
    for (reference, sku) in [
        (reference.clone(), &sku),
        (random_name("batch"), &other_sku),
    ] {
        assert_eq!(admin.add_batch(&reference, sku, 10, None).await.0, 201);
    }
    let order = random_name("order");
    assert_eq!(owner.allocate(&order, &sku, 2).await.0, 201);

    let (status, body) = intruder.allocations(&order).await;
    assert_eq!(status, 404, "{body}");
    let (_, unknown) = intruder.allocations("no-such-order").await;
    assert_eq!(
        body["message"].as_str().unwrap().replace(&order, "X"),
        unknown["message"]
            .as_str()
            .unwrap()
            .replace("no-such-order", "X"),
        "the same as an unknown order"
    );
    assert_eq!(intruder.deallocate(&order, &sku).await.0, 404);
    let (status, body) = intruder.allocate(&order, &other_sku, 2).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = intruder.allocate(&order, &sku, 2).await;
    assert_eq!(
        status, 404,
        "not even the repeat of an existing line: {body}"
    );

    // Batch reads: quantities for everyone, order ids for admins only.
    let (status, batch) = intruder.get_batch(&reference).await;
    assert_eq!((status, &batch["allocated_quantity"]), (200, &json!(2)));
    assert!(!batch.to_string().contains(&order));
    let (status, page) = intruder.get(&format!("/batches?sku={sku}")).await;
    assert_eq!(status, 200);
    assert!(!page.to_string().contains(&order));
    let listing = format!("/batches/{reference}/allocations");
    assert_eq!(intruder.get(&listing).await.0, 403);

    // The owner and admins.
    let (status, lines) = owner.allocations(&order).await;
    assert_eq!((status, lines.as_array().unwrap().len()), (200, 1));
    assert_eq!(admin.allocate(&order, &other_sku, 2).await.0, 201);
    let (_, lines) = owner.allocations(&order).await;
    assert_eq!(
        lines.as_array().unwrap().len(),
        2,
        "a line an admin added belongs to the owner's order"
    );
    assert_eq!(admin.deallocate(&order, &sku).await.0, 200);
    assert_eq!(owner.deallocate(&order, &other_sku).await.0, 200);
}

/// Point 9: a failed login's 401 carries `WWW-Authenticate: Bearer` and the
/// seed's body, for an unknown user too.
async fn a_failed_login_401_carries_www_authenticate() {
    let app = spawn_app().await;
    let (username, _) = app.registered().await;
    for name in [username.as_str(), "nobody-at-all"] {
        let response = app
            .post_json(
                "/users/login",
                None,
                &json!({"username": name, "password": "wrong password"}),
            )
            .await;
        assert_eq!(response.status(), 401);
        assert_eq!(
            header(&response, "www-authenticate").as_deref(),
            Some("Bearer")
        );
        assert_eq!(json(response).await.1, msg("Bad username or password"));
    }
}

/// This module's tests, in the order the harness lists them.
pub fn trials() -> Vec<libtest_mimic::Trial> {
    trials!(accounts: [
        a_password_change_ends_every_login_everywhere,
        deleting_my_account_revokes_it_and_frees_the_username,
        admins_manage_accounts_and_every_change_revokes,
        admins_cannot_remove_themselves_or_the_last_admin,
        a_revocation_made_visible_late_still_reaches_every_instance,
        a_retried_refresh_is_no_reuse_but_a_real_reuse_is_caught,
        a_used_refresh_token_after_the_grace_period_is_a_reuse,
        failed_logins_are_throttled_per_username_and_address_on_every_instance,
        an_address_with_many_failures_is_throttled_for_every_username,
        a_forged_forwarded_header_does_not_escape_throttling,
        a_full_hashing_queue_answers_429_at_once,
        closed_registration_leaves_account_creation_to_admins,
        orders_belong_to_the_account_that_started_them,
        a_failed_login_401_carries_www_authenticate,
    ])
}
