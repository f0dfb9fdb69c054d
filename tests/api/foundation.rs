//! The service's ground floor: probes, the seed's hello, JSON errors, the spec.

use std::time::Duration;

use crate::helpers::{ToggleProxy, json, spawn_app, spawn_app_with};
use crate::session::session;

pub async fn hello_answers_the_seed_greeting() {
    let app = spawn_app().await;
    let (status, body) = json(app.get("/tests/hello").await).await;
    assert_eq!(status, 200);
    assert_eq!(body, serde_json::json!({"Hello": "World!"}));
}

pub async fn health_answers_200_while_the_process_is_up() {
    let app = spawn_app().await;
    let (status, body) = json(app.get("/health").await).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
}

async fn wait_for_ready_status(app: &crate::helpers::TestApp, expected: u16) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = json(app.get("/ready").await).await;
        if status == expected {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/ready stayed {status} ({body}) instead of becoming {expected}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn ready_follows_the_database_away_and_back_without_a_restart() {
    let proxy = ToggleProxy::start(session().mongo_address.clone()).await;
    let app = spawn_app_with(|settings| {
        settings.mongo.uri = format!("mongodb://{}/?directConnection=true", proxy.address).into();
    })
    .await;
    let (status, body) = json(app.get("/ready").await).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ready")));

    proxy.cut();
    let body = wait_for_ready_status(&app, 503).await;
    assert_eq!(body["status"], "unavailable");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("MongoDB")),
        "{body}"
    );
    let (status, _) = json(app.get("/health").await).await;
    assert_eq!(status, 200, "liveness does not depend on the database");

    proxy.restore();
    let body = wait_for_ready_status(&app, 200).await;
    assert_eq!(body["status"], "ready");
}

pub async fn unknown_routes_and_methods_get_json_errors() {
    let app = spawn_app().await;
    let (status, body) = json(app.get("/no/such/route").await).await;
    assert_eq!((status, body["message"].as_str()), (404, Some("Not found")));
    let response = app
        .http
        .delete(app.url("/tests/hello"))
        .send()
        .await
        .unwrap();
    let (status, body) = json(response).await;
    assert_eq!(
        (status, body["message"].as_str()),
        (405, Some("Method not allowed"))
    );
}

pub async fn bodies_over_the_limit_get_413_json() {
    let app = spawn_app_with(|settings| settings.http.body_limit_bytes = 1024).await;
    let oversized = vec![b'x'; 1025];
    let response = app
        .http
        .post(app.url("/tests/hello"))
        .body(oversized.clone())
        .send()
        .await
        .unwrap();
    let (status, body) = json(response).await;
    assert_eq!(
        (status, body["message"].as_str()),
        (413, Some("Request body is too large"))
    );

    // Chunked, without Content-Length: the limit still holds.
    let stream = futures_util::stream::iter(
        oversized
            .chunks(100)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let response = app
        .http
        .post(app.url("/tests/hello"))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    let (status, _) = json(response).await;
    assert_eq!(status, 413);

    // A bodiless GET without Content-Length is not refused (poem's SizeLimit would say 411).
    let (status, _) = json(app.get("/tests/hello").await).await;
    assert_eq!(status, 200);
}

pub async fn the_default_body_limit_is_64_kib() {
    assert_eq!(
        crate::helpers::testing_settings().http.body_limit_bytes,
        64 * 1024
    );
}

pub async fn docs_and_spec_are_served() {
    let app = spawn_app().await;
    let docs = app.get("/docs").await;
    assert_eq!(docs.status(), 200);
    assert!(docs.text().await.unwrap().contains("swagger"));

    let (status, spec) = json(app.get("/openapi.json").await).await;
    assert_eq!(status, 200);
    assert_eq!(spec["info"]["title"], "allot");
    assert!(spec["paths"]["/tests/hello"]["get"].is_object());

    let served = app.get("/openapi.yaml").await.text().await.unwrap();
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.yaml"))
            .unwrap();
    assert!(
        served == committed,
        "the running service's spec differs from openapi/openapi.yaml; \
         regenerate it with `cargo run --quiet -- openapi > openapi/openapi.yaml`"
    );
}

pub async fn each_test_app_gets_a_database_of_its_own_that_the_session_drops() {
    let (first, second) = (spawn_app().await, spawn_app().await);
    assert_ne!(first.database.name(), second.database.name());
    for app in [&first, &second] {
        assert!(app.database.name().starts_with(&session().database_prefix));
        app.database
            .collection::<mongodb::bson::Document>("marker")
            .insert_one(mongodb::bson::doc! { "written_by": "a test" })
            .await
            .unwrap();
    }
    // The session's teardown drops these and fails the run if any is left.
    let names = session().client().list_database_names().await.unwrap();
    assert!(names.iter().any(|name| name == first.database.name()));
}
