//! What operators and browsers get: metrics, request ids, CORS, security
//! headers, `Allow` on 405, and the docs switch.

use crate::helpers::{
    AllotProcess, TestApp, allot_command, header, json, spawn_app, spawn_app_with,
};
use crate::session::session;

/// The value of the sample `name{labels}` in a Prometheus text exposition.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

async fn metrics_count_requests_database_operations_and_outcomes() {
    let app = spawn_app().await;
    let admin = app.new_admin().await;
    let user = app.new_user().await;
    let batch = serde_json::json!({"reference": crate::helpers::random_name("m"), "sku": "METRIC-SKU", "purchased_quantity": 1, "eta": null});
    let (status, _) = json(app.post_json("/batches", Some(&admin.access), &batch).await).await;
    assert_eq!(status, 201);
    for (orderid, expected) in [("m-1", 201), ("m-2", 400)] {
        let line = serde_json::json!({"orderid": orderid, "sku": "METRIC-SKU", "qty": 1});
        let (status, _) = json(app.post_json("/allocate", Some(&user.access), &line).await).await;
        assert_eq!(status, expected);
    }
    let (status, _) = app.login("nobody-at-all", "wrong password").await;
    assert_eq!(status, 401);
    let (status, _) = json(app.get("/tests/hello").await).await;
    assert_eq!(status, 200);

    let response = app.get("/metrics").await;
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(content_type.contains("text"), "{content_type}");
    let text = response.text().await.unwrap();
    let at_least_one = [
        r#"allot_http_requests_total{operation="hello",status="200"}"#,
        r#"allot_http_requests_total{operation="allocate",status="201"}"#,
        r#"allot_http_requests_total{operation="allocate",status="400"}"#,
        r#"allot_http_requests_total{operation="login",status="401"}"#,
        r#"allot_http_request_duration_seconds_count{operation="allocate"}"#,
        r#"allot_db_operation_duration_seconds_count{operation="allocate"}"#,
        r#"allot_allocations_total{outcome="allocated"}"#,
        r#"allot_allocations_total{outcome="out_of_stock"}"#,
        r#"allot_logins_total{outcome="bad_credentials"}"#,
        r#"allot_logins_total{outcome="ok"}"#,
    ];
    for series in at_least_one {
        let value = sample(&text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"));
        assert!(value >= 1.0, "{series} is {value}");
    }
    for series in [
        "allot_http_requests_in_flight",
        r#"allot_allocations_total{outcome="backordered"}"#,
        r#"allot_allocations_total{outcome="contention"}"#,
        r#"allot_logins_total{outcome="throttled"}"#,
        "allot_db_timeouts_total",
    ] {
        assert!(sample(&text, series).is_some(), "no {series} in\n{text}");
    }
    assert!(
        text.contains(r#"allot_http_request_duration_seconds_bucket{le="#),
        "{text}"
    );
}

async fn metrics_can_require_a_token_or_be_switched_off() {
    let app = spawn_app_with(|settings| {
        settings.metrics.token = "a-metrics-token-for-scrapers".to_owned().into();
    })
    .await;
    let (status, body) = json(app.get("/metrics").await).await;
    assert_eq!((status, body["message"].is_string()), (401, true), "{body}");
    let response = app
        .get_authorized("/metrics", "Bearer not-the-token-for-scrapers!")
        .await;
    assert_eq!(response.status(), 401);
    let response = app
        .get_authorized("/metrics", "Bearer a-metrics-token-for-scrapers")
        .await;
    assert_eq!(response.status(), 200);
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("allot_http_requests")
    );

    let off = spawn_app_with(|settings| settings.metrics.enabled = false).await;
    let (status, _) = json(off.get("/metrics").await).await;
    assert_eq!(status, 404);
}

async fn request_ids_are_kept_or_made_and_appear_in_the_request_log_lines() {
    let mut command = allot_command();
    command
        .env("ALLOT_ENV", "testing")
        .env("ALLOT__LOG__LEVEL", "info")
        .env("ALLOT__LOG__FORMAT", "json")
        .env("ALLOT__MONGO__URI", &session().mongo_uri)
        .env("ALLOT__MONGO__DATABASE", session().new_database_name());
    let app = AllotProcess::start(&mut command);
    let http = reqwest::Client::new();
    let sent = "client-chosen.id_42:a";
    let response = http
        .get(format!("{}/tests/hello", app.url))
        .header("X-Request-Id", sent)
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], sent);
    let mut made = Vec::new();
    for insane in [Some("spaces are not ok"), Some(&*"x".repeat(200)), None] {
        let mut request = http.get(format!("{}/no/such/path", app.url));
        if let Some(insane) = insane {
            request = request.header("X-Request-Id", insane);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 404);
        let id = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            Some(id.as_str()) != insane && !id.is_empty() && id.len() <= 128,
            "{id}"
        );
        made.push(id);
    }
    made.sort();
    made.dedup();
    assert_eq!(made.len(), 3, "each made-up id is new: {made:?}");

    // The log line of each request carries its id.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let lines: Vec<serde_json::Value> = app
            .log
            .lock()
            .unwrap()
            .iter()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect();
        let ids = |path: &str| -> Vec<String> {
            lines
                .iter()
                .filter(|line| line["path"] == path)
                .map(|line| {
                    line["span"]["request_id"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned()
                })
                .collect()
        };
        let (hello, missing) = (ids("/tests/hello"), ids("/no/such/path"));
        if hello.len() == 1 && missing.len() == 3 {
            assert_eq!(hello, [sent]);
            let mut missing = missing;
            missing.sort();
            assert_eq!(missing, made);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "request log lines with ids not found in {lines:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A CORS preflight, from a page of `origin`, of a `GET /users/me` that
/// sends a token.
async fn preflight(app: &TestApp, origin: &str) -> reqwest::Response {
    let request = app
        .http
        .request(reqwest::Method::OPTIONS, app.url("/users/me"));
    let request = request
        .header("Origin", origin)
        .header("Access-Control-Request-Method", "GET")
        .header(
            "Access-Control-Request-Headers",
            "authorization, content-type",
        );
    request.send().await.unwrap()
}

/// `GET /tests/hello` from a page of `origin`.
async fn hello_from(app: &TestApp, origin: &str) -> reqwest::Response {
    let request = app
        .http
        .get(app.url("/tests/hello"))
        .header("Origin", origin);
    request.send().await.unwrap()
}

/// Whether the response's header `name` lists every one of `items` (in any case).
fn lists(response: &reqwest::Response, name: &str, items: &[&str]) -> bool {
    let listed = header(response, name)
        .unwrap_or_default()
        .to_ascii_lowercase();
    items
        .iter()
        .all(|item| listed.contains(&item.to_ascii_lowercase()))
}

async fn cors_preflights_succeed_for_listed_origins_only() {
    let (shop, elsewhere) = ("https://shop.example.com", "https://evil.example.com");
    let app = spawn_app_with(|settings| settings.http.cors_origins = vec![shop.to_owned()]).await;
    let allow_origin =
        |response: &reqwest::Response| header(response, "access-control-allow-origin");
    let allowed = preflight(&app, shop).await;
    assert!(allowed.status().is_success(), "{}", allowed.status());
    assert_eq!(allow_origin(&allowed).as_deref(), Some(shop));
    let methods = lists(
        &allowed,
        "access-control-allow-methods",
        &["GET", "POST", "PATCH"],
    );
    let headers = ["authorization", "content-type"];
    let headers = lists(&allowed, "access-control-allow-headers", &headers);
    assert!(methods && headers, "{:?}", allowed.headers());

    let refused = preflight(&app, elsewhere).await;
    assert_eq!(allow_origin(&refused), None);
    let (status, body) = json(refused).await;
    assert_eq!(status, 403, "{body}");

    let from_shop = hello_from(&app, shop).await;
    assert_eq!(allow_origin(&from_shop).as_deref(), Some(shop));
    let exposed = lists(
        &from_shop,
        "access-control-expose-headers",
        &["x-request-id"],
    );
    assert!(exposed, "{:?}", from_shop.headers());
    let from_elsewhere = hello_from(&app, elsewhere).await;
    let status = from_elsewhere.status();
    assert_eq!(
        status, 200,
        "same-origin pages and other clients still work"
    );
    assert_eq!(allow_origin(&from_elsewhere), None);

    // None listed (the default): no origin is allowed.
    let closed = spawn_app().await;
    assert_eq!(allow_origin(&preflight(&closed, shop).await), None);
}

async fn a_405_lists_the_methods_of_the_path_in_allow() {
    let app = spawn_app().await;
    for (method, path, allow) in [
        (reqwest::Method::DELETE, "/tests/hello", "GET, HEAD"),
        (
            reqwest::Method::PUT,
            "/batches/some-batch",
            "GET, PATCH, HEAD",
        ),
        (reqwest::Method::GET, "/allocate", "POST"),
    ] {
        let response = app
            .http
            .request(method.clone(), app.url(path))
            .send()
            .await
            .unwrap();
        let header = response
            .headers()
            .get("allow")
            .map(|value| value.to_str().unwrap().to_owned());
        let (status, body) = json(response).await;
        assert_eq!(status, 405, "{method} {path}: {body}");
        let mut listed: Vec<String> = header
            .unwrap_or_else(|| panic!("{method} {path}: no Allow header"))
            .split(',')
            .map(|m| m.trim().to_owned())
            .collect();
        let mut expected: Vec<String> = allow.split(", ").map(str::to_owned).collect();
        listed.sort();
        expected.sort();
        assert_eq!(listed, expected, "{method} {path}");
    }
}

async fn every_response_says_nosniff_and_token_responses_say_no_store() {
    let app = spawn_app().await;
    let (status, _) = app
        .register(&crate::helpers::random_name("h"), crate::helpers::PASSWORD)
        .await;
    assert_eq!(status, 201);
    let credentials = serde_json::json!({"username": "nobody-known", "password": "wrong password"});
    let login = app.post_json("/users/login", None, &credentials).await;
    let registration = app
        .post_json(
            "/users/registration",
            None,
            &serde_json::json!({"username": crate::helpers::random_name("h"), "password": crate::helpers::PASSWORD}),
        )
        .await;
    assert_eq!(registration.status(), 201);
    assert_eq!(registration.headers()["cache-control"], "no-store");
    for response in [
        login,
        registration,
        app.get("/tests/hello").await,
        app.get("/no/such/route").await,
        app.get("/docs").await,
        app.get("/metrics").await,
    ] {
        assert_eq!(
            response.headers()["x-content-type-options"],
            "nosniff",
            "{}",
            response.url()
        );
        assert_eq!(
            response.headers()["cache-control"],
            "no-store",
            "{}",
            response.url()
        );
    }
}

async fn swagger_ui_and_the_spec_can_be_switched_off() {
    let app = spawn_app_with(|settings| settings.http.docs_enabled = false).await;
    for path in ["/docs", "/openapi.json", "/openapi.yaml"] {
        let (status, _) = json(app.get(path).await).await;
        assert_eq!(status, 404, "{path}");
    }
    let (status, _) = json(app.get("/tests/hello").await).await;
    assert_eq!(status, 200);
}

/// This module's tests, in the order the harness lists them.
pub fn trials() -> Vec<libtest_mimic::Trial> {
    trials!(operations: [
        metrics_count_requests_database_operations_and_outcomes,
        metrics_can_require_a_token_or_be_switched_off,
        request_ids_are_kept_or_made_and_appear_in_the_request_log_lines,
        cors_preflights_succeed_for_listed_origins_only,
        a_405_lists_the_methods_of_the_path_in_allow,
        every_response_says_nosniff_and_token_responses_say_no_store,
        swagger_ui_and_the_spec_can_be_switched_off,
    ])
}
