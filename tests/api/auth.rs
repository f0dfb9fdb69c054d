//! The seed's token contract, exactly, plus the rest of the user lifecycle.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::{
    PASSWORD, Tokens, json, msg, random_name, revoked_within_a_second, secret, spawn_app,
    spawn_app_with,
};

/// A token signed with the testing secret, with the given claims changed.
fn forged(changes: serde_json::Value, header: jsonwebtoken::Header) -> String {
    let now = chrono::Utc::now().timestamp();
    let mut claims = json!({"sub": "nobody", "type": "access", "jti": random_name("jti"),
        "iat": now, "nbf": now, "exp": now + 600, "roles": ["user"], "fam": random_name("fam")});
    for (key, value) in changes.as_object().unwrap() {
        claims[key] = value.clone();
    }
    let secret = allot::config::DEVELOPMENT_JWT_SECRET.as_bytes();
    jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .unwrap()
}

async fn registration_returns_201_with_a_token_pair() {
    let app = spawn_app().await;
    let (status, body) = app.register(&random_name("Reg"), PASSWORD).await;
    assert_eq!(status, 201, "{body}");
    assert!(body["access_token"].is_string() && body["refresh_token"].is_string());
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(body["expires_in"], 900);
}

async fn secret_with_an_access_token_says_hello_secret() {
    let app = spawn_app().await;
    let tokens = app.new_user().await;
    let (status, body) = secret(&app, Some(&format!("Bearer {}", tokens.access))).await;
    assert_eq!((status, body), (200, json!({"Hello": "Secret!"})));
}

async fn secret_without_a_header_is_401_missing_header() {
    let app = spawn_app().await;
    let response = app.get("/tests/secret").await;
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    let (status, body) = json(response).await;
    assert_eq!((status, body), (401, msg("Missing Authorization Header")));
}

async fn secret_with_a_refresh_token_is_422_only_access_tokens() {
    let app = spawn_app().await;
    let tokens = app.new_user().await;
    let (status, body) = secret(&app, Some(&format!("Bearer {}", tokens.refresh))).await;
    assert_eq!((status, body), (422, msg("Only access tokens are allowed")));
}

async fn secret_with_characters_appended_is_422_signature_failed() {
    let app = spawn_app().await;
    let tokens = app.new_user().await;
    let tampered = format!("Bearer {}extra-string", tokens.access);
    let (status, body) = secret(&app, Some(&tampered)).await;
    assert_eq!((status, body), (422, msg("Signature verification failed")));
}

async fn secret_with_a_non_jwt_is_422_not_enough_segments() {
    let app = spawn_app().await;
    let (status, body) = secret(&app, Some("Bearer this-is-not-json-web-token")).await;
    assert_eq!((status, body), (422, msg("Not enough segments")));
}

async fn secret_with_a_plain_text_header_is_422_bad_header() {
    let app = spawn_app().await;
    let (status, body) = secret(&app, Some("this-is-plain-text")).await;
    let expected = msg("Bad Authorization header. Expected value 'Bearer <JWT>'");
    assert_eq!((status, body), (422, expected));
}

async fn an_expired_token_is_401_token_has_expired() {
    let app = spawn_app().await;
    let now = chrono::Utc::now().timestamp();
    let expired = forged(
        json!({"iat": now - 3600, "nbf": now - 3600, "exp": now - 60}),
        jsonwebtoken::Header::default(),
    );
    let response = app
        .get_authorized("/tests/secret", &format!("Bearer {expired}"))
        .await;
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    let (status, body) = json(response).await;
    assert_eq!((status, body), (401, msg("Token has expired")));
}

async fn tokens_naming_another_algorithm_or_none_are_refused() {
    let app = spawn_app().await;
    let hs512 = forged(
        json!({}),
        jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS512),
    );
    let (status, body) = secret(&app, Some(&format!("Bearer {hs512}"))).await;
    assert_eq!(
        (status, body),
        (422, msg("The specified alg value is not allowed"))
    );

    // alg "none": the genuine claims, re-headed and with the signature dropped.
    let valid = forged(json!({}), jsonwebtoken::Header::default());
    let payload = valid.split('.').nth(1).unwrap();
    let none_header = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0"; // {"alg":"none","typ":"JWT"}
    let unsigned = format!("Bearer {none_header}.{payload}.");
    let (status, body) = secret(&app, Some(&unsigned)).await;
    assert_eq!(
        (status, body),
        (422, msg("The specified alg value is not allowed"))
    );
}

async fn an_access_token_where_a_refresh_token_is_required_is_422() {
    let app = spawn_app().await;
    let tokens = app.new_user().await;
    let (status, body) = json(
        app.post_json("/users/refresh", Some(&tokens.access), &json!({}))
            .await,
    )
    .await;
    assert_eq!(
        (status, body),
        (422, msg("Only refresh tokens are allowed"))
    );
}

async fn a_logged_out_access_token_is_401_revoked() {
    let app = spawn_app().await;
    let tokens = app.new_user().await;
    let (status, body) = json(
        app.post_json("/users/logout", Some(&tokens.access), &json!({}))
            .await,
    )
    .await;
    assert_eq!((status, body), (200, json!({"revoked": "access_token"})));
    let (status, body) = secret(&app, Some(&format!("Bearer {}", tokens.access))).await;
    assert_eq!((status, body), (401, msg("Token has been revoked")));
}

async fn logging_out_a_refresh_token_ends_its_whole_login() {
    let app = spawn_app().await;
    let tokens = app.new_user().await;
    let (status, _) = json(
        app.post_json("/users/logout", Some(&tokens.refresh), &json!({}))
            .await,
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = secret(&app, Some(&format!("Bearer {}", tokens.access))).await;
    assert_eq!((status, body), (401, msg("Token has been revoked")));
    let (status, body) = json(
        app.post_json("/users/refresh", Some(&tokens.refresh), &json!({}))
            .await,
    )
    .await;
    assert_eq!((status, body), (401, msg("Token has been revoked")));
}

async fn login_returns_a_new_pair_and_refuses_bad_credentials_alike() {
    let app = spawn_app().await;
    let username = random_name("Login");
    app.register(&username, PASSWORD).await;
    let (status, body) = app.login(&username.to_uppercase(), PASSWORD).await;
    assert_eq!(status, 200, "usernames are case-insensitive: {body}");
    let (status, body) = secret(
        &app,
        Some(&format!("Bearer {}", Tokens::from(&body).access)),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    let wrong_password = app.login(&username, "not the password").await;
    let unknown_user = app.login(&random_name("ghost"), PASSWORD).await;
    assert_eq!(wrong_password, (401, msg("Bad username or password")));
    assert_eq!(unknown_user, wrong_password);
}

async fn an_unknown_user_takes_about_as_long_as_a_wrong_password() {
    // Production-strength hashing, so the hash dominates the timing.
    let app = spawn_app_with(|settings| {
        settings.auth.argon2 = allot::config::Argon2Settings {
            memory_kib: 7168,
            iterations: 5,
            parallelism: 1,
        };
    })
    .await;
    let username = random_name("timing");
    app.register(&username, PASSWORD).await;
    let mut wrong_password = Vec::new();
    let mut unknown_user = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        app.login(&username, "not the password").await;
        wrong_password.push(started.elapsed());
        let started = Instant::now();
        app.login(&random_name("ghost"), PASSWORD).await;
        unknown_user.push(started.elapsed());
    }
    wrong_password.sort();
    unknown_user.sort();
    let ratio = unknown_user[2].as_secs_f64() / wrong_password[2].as_secs_f64();
    assert!(
        (0.5..2.0).contains(&ratio),
        "median unknown-user login {:?} vs wrong-password login {:?}",
        unknown_user[2],
        wrong_password[2]
    );
}

async fn refresh_rotates_and_reuse_revokes_the_whole_family() {
    let app = spawn_app().await;
    let a = app.new_user().await;
    let (status, body) = json(
        app.post_json("/users/refresh", Some(&a.refresh), &json!({}))
            .await,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let b = Tokens::from(&body);
    assert_ne!(a.refresh, b.refresh, "a new refresh token each time");
    let (status, _) = secret(&app, Some(&format!("Bearer {}", b.access))).await;
    assert_eq!(status, 200);

    // B is used, so presenting A again is no retry but a reuse.
    let (status, body) = json(
        app.post_json("/users/refresh", Some(&b.refresh), &json!({}))
            .await,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let b = Tokens::from(&body);
    let (status, body) = json(
        app.post_json("/users/refresh", Some(&a.refresh), &json!({}))
            .await,
    )
    .await;
    assert_eq!((status, body), (401, msg("Token has been revoked")));
    // B's successor descends from the same login, so it is revoked too, access token included.
    let (status, body) = json(
        app.post_json("/users/refresh", Some(&b.refresh), &json!({}))
            .await,
    )
    .await;
    assert_eq!((status, body), (401, msg("Token has been revoked")));
    let (status, body) = secret(&app, Some(&format!("Bearer {}", b.access))).await;
    assert_eq!((status, body), (401, msg("Token has been revoked")));
}

async fn me_shows_the_profile_and_never_a_password_hash() {
    let app = spawn_app().await;
    let username = random_name("Me");
    let (_, body) = app.register(&username, PASSWORD).await;
    let tokens = Tokens::from(&body);
    let response = app
        .get_authorized("/users/me", &format!("Bearer {}", tokens.access))
        .await;
    let (status, body) = json(response).await;
    assert_eq!(status, 200);
    assert_eq!(body["username"], username.to_lowercase());
    assert_eq!(body["roles"], json!(["user"]));
    assert!(
        body["created_at"]
            .as_str()
            .is_some_and(|t| t.starts_with("20")),
        "{body}"
    );
    assert_eq!(body["disabled"], json!(false));
    assert_eq!(
        body.as_object().unwrap().len(),
        4,
        "only the documented fields: {body}"
    );
    let stored = app
        .database
        .collection::<mongodb::bson::Document>("users")
        .find_one(mongodb::bson::doc! {"username": username.to_lowercase()})
        .await
        .unwrap()
        .unwrap();
    let hash = stored.get_str("password_hash").unwrap();
    assert!(
        hash.starts_with("$argon2id$"),
        "stored as an Argon2id PHC string"
    );
    assert!(!body.to_string().contains(hash));
}

async fn registration_rejects_bad_input_naming_the_field() {
    let app = spawn_app().await;
    for (username, password, field) in [
        ("ab", PASSWORD, "username"),
        ("has space", PASSWORD, "username"),
        (&"x".repeat(65) as &str, PASSWORD, "username"),
        ("fine-name", "short", "password"),
        ("fine-name", &"p".repeat(257) as &str, "password"),
    ] {
        let (status, body) = app.register(username, password).await;
        assert_eq!(status, 400, "{username:?}/{password:?}: {body}");
        assert!(body["message"].as_str().unwrap().contains(field), "{body}");
    }
    for (body, field) in [
        (json!({"username": "fine-name"}), "password"),
        (
            json!({"username": {"$ne": null}, "password": PASSWORD}),
            "username",
        ),
        (
            json!({"username": "fine-name", "password": 12345678}),
            "password",
        ),
        (json!([1]), "[0]"),
    ] {
        let (status, reply) = json(app.post_json("/users/registration", None, &body).await).await;
        assert_eq!(status, 400, "{body}: {reply}");
        let message = reply["message"].as_str().unwrap();
        assert!(
            message.starts_with("Invalid request body") && message.contains(field),
            "{reply}"
        );
    }
    let count = app
        .database
        .collection::<mongodb::bson::Document>("users")
        .count_documents(mongodb::bson::doc! {})
        .await
        .unwrap();
    assert_eq!(count, 0, "bad input changes nothing");
}

async fn a_taken_username_is_409_regardless_of_case() {
    let app = spawn_app().await;
    let username = random_name("taken");
    assert_eq!(app.register(&username, PASSWORD).await.0, 201);
    let shouted = username.to_uppercase();
    let (status, body) = app.register(&shouted, PASSWORD).await;
    assert_eq!(
        (status, body),
        (
            409,
            json!({"message": format!("Username {shouted} is already taken")})
        )
    );
}

async fn hello_stays_prompt_while_logins_are_hashing() {
    // Costly hashes, at most 2 at once: 8 logins keep the hashing pool busy.
    let app = spawn_app_with(|settings| {
        settings.auth.argon2 = allot::config::Argon2Settings {
            memory_kib: 65536,
            iterations: 3,
            parallelism: 1,
        };
        settings.auth.hashing_concurrency = 2;
    })
    .await;
    // Two accounts, four logins each: no more attempts of one account from
    // one address are in flight than the throttle lets through (5).
    let usernames = [random_name("busy"), random_name("busy")];
    for username in &usernames {
        app.register(username, PASSWORD).await;
    }
    let started = Instant::now();
    let logins: Vec<_> = (0..8)
        .map(|n| {
            let (http, url) = (app.http.clone(), app.url("/users/login"));
            let body = json!({"username": usernames[n % 2], "password": PASSWORD});
            tokio::spawn(async move { http.post(url).json(&body).send().await.unwrap().status() })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut slowest_hello = Duration::ZERO;
    for _ in 0..10 {
        let asked = Instant::now();
        assert_eq!(app.get("/tests/hello").await.status(), 200);
        slowest_hello = slowest_hello.max(asked.elapsed());
    }
    let hellos_done = started.elapsed();
    for login in logins {
        assert_eq!(login.await.unwrap(), 200);
    }
    let logins_done = started.elapsed();
    assert!(
        hellos_done < logins_done,
        "the hellos ran while logins were hashing"
    );
    assert!(
        slowest_hello * 4 < logins_done,
        "slowest hello {slowest_hello:?} during logins that took {logins_done:?}"
    );
}

async fn a_revocation_reaches_another_instance_within_a_second() {
    let first = spawn_app().await;
    let second = first.second_instance().await;
    let tokens = first.new_user().await;
    let bearer = format!("Bearer {}", tokens.access);
    assert_eq!(secret(&second, Some(&bearer)).await.0, 200);

    first.logout(&tokens.access).await;
    let revoked_at = Instant::now();
    assert_eq!(
        secret(&first, Some(&bearer)).await.0,
        401,
        "at once where it was revoked"
    );
    revoked_within_a_second(&second, &tokens.access, revoked_at).await;
}

async fn create_admin_creates_or_promotes_and_login_carries_the_role() {
    let app = spawn_app().await;
    let run = |username: &str| app.create_admin_command(username).output().unwrap();
    let fresh = random_name("admin");
    let output = run(&fresh);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("created admin"));
    let (status, body) = app.login(&fresh, PASSWORD).await;
    assert_eq!(status, 200);
    let me = app
        .get_authorized(
            "/users/me",
            &format!("Bearer {}", Tokens::from(&body).access),
        )
        .await;
    assert_eq!(json(me).await.1["roles"], json!(["user", "admin"]));

    let existing = random_name("promoted");
    app.register(&existing, "another password").await;
    let output = run(&existing);
    assert!(String::from_utf8_lossy(&output.stdout).contains("granted admin"));
    let (status, body) = app.login(&existing, "another password").await;
    assert_eq!(status, 200, "the password is unchanged");
    let me = app
        .get_authorized(
            "/users/me",
            &format!("Bearer {}", Tokens::from(&body).access),
        )
        .await;
    assert_eq!(json(me).await.1["roles"], json!(["user", "admin"]));
}

/// Every operation the spec marks as secured refuses a missing or malformed
/// `Authorization` header with the seed's JSON bodies — not only `/tests/secret`.
async fn every_secured_operation_applies_the_token_rules() {
    let app = spawn_app().await;
    let (_, spec) = json(app.get("/openapi.json").await).await;
    let mut secured = Vec::new();
    let mut open = Vec::new();
    for (path, operations) in spec["paths"].as_object().unwrap() {
        for (method, operation) in operations.as_object().unwrap() {
            let concrete = path
                .replace("{reference}", "some-ref")
                .replace("{orderid}", "some-order");
            match operation.get("security") {
                Some(_) => secured.push((method.to_uppercase(), concrete)),
                None => open.push(operation["operationId"].as_str().unwrap().to_owned()),
            }
        }
    }
    open.sort();
    assert_eq!(open, ["health", "hello", "login", "ready", "register"]);
    assert!(secured.len() >= 10, "{secured:?}");
    for (method, path) in &secured {
        let request = |authorization: Option<&str>| {
            let mut request = app
                .http
                .request(method.parse().unwrap(), app.url(path))
                .json(&json!({}));
            if let Some(value) = authorization {
                request = request.header("Authorization", value);
            }
            request.send()
        };
        let (status, body) = json(request(None).await.unwrap()).await;
        assert_eq!(
            (status, body),
            (401, msg("Missing Authorization Header")),
            "{method} {path}"
        );
        let (status, body) = json(request(Some("this-is-plain-text")).await.unwrap()).await;
        let expected = msg("Bad Authorization header. Expected value 'Bearer <JWT>'");
        assert_eq!((status, body), (422, expected), "{method} {path}");
        let (status, body) = json(
            request(Some("Bearer this-is-not-json-web-token"))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(
            (status, body),
            (422, msg("Not enough segments")),
            "{method} {path}"
        );
    }
}

/// This module's tests, in the order the harness lists them.
pub fn trials() -> Vec<libtest_mimic::Trial> {
    trials!(auth: [
        registration_returns_201_with_a_token_pair,
        secret_with_an_access_token_says_hello_secret,
        secret_without_a_header_is_401_missing_header,
        secret_with_a_refresh_token_is_422_only_access_tokens,
        secret_with_characters_appended_is_422_signature_failed,
        secret_with_a_non_jwt_is_422_not_enough_segments,
        secret_with_a_plain_text_header_is_422_bad_header,
        an_expired_token_is_401_token_has_expired,
        tokens_naming_another_algorithm_or_none_are_refused,
        an_access_token_where_a_refresh_token_is_required_is_422,
        a_logged_out_access_token_is_401_revoked,
        logging_out_a_refresh_token_ends_its_whole_login,
        login_returns_a_new_pair_and_refuses_bad_credentials_alike,
        an_unknown_user_takes_about_as_long_as_a_wrong_password,
        refresh_rotates_and_reuse_revokes_the_whole_family,
        me_shows_the_profile_and_never_a_password_hash,
        registration_rejects_bad_input_naming_the_field,
        a_taken_username_is_409_regardless_of_case,
        hello_stays_prompt_while_logins_are_hashing,
        a_revocation_reaches_another_instance_within_a_second,
        create_admin_creates_or_promotes_and_login_carries_the_role,
        every_secured_operation_applies_the_token_rules,
    ])
}
