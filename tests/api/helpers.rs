//! Spawning the real app on a random port with its own database, and talking to it.

use std::io::BufRead;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use allot::config::{Environment, Settings};
use allot::startup::Application;
use tokio::sync::oneshot;

use crate::session::session;

/// The `testing` settings, as the app would load them.
pub fn testing_settings() -> Settings {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    Settings::load_from(&dir, Environment::Testing).expect("config/testing.toml loads")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free local port")
}

pub struct TestApp {
    pub address: String,
    pub database: mongodb::Database,
    pub http: reqwest::Client,
    _stop: oneshot::Sender<()>,
}

/// Starts the app on a random port with a database of its own.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Turns the event relay on (the testing configuration has it off): for
/// `spawn_app_with`, in the tests that read events.
pub fn relaying(settings: &mut Settings) {
    settings.events.relay_enabled = true;
}

/// Like [`spawn_app`], after letting the test adjust the settings.
pub async fn spawn_app_with(adjust: impl FnOnce(&mut Settings)) -> TestApp {
    let mut settings = testing_settings();
    settings.http.host = "127.0.0.1".to_owned();
    settings.http.port = 0;
    settings.mongo.uri = session().mongo_uri.clone().into();
    settings.mongo.database = session().new_database_name();
    adjust(&mut settings);
    let database = session().client().database(&settings.mongo.database);
    let app = Application::build(settings).await.expect("the app starts");
    let address = format!("http://127.0.0.1:{}", app.port());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    TestApp {
        address,
        database,
        http: reqwest::Client::new(),
        _stop: stop,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .send()
            .await
            .expect("request sent")
    }

    /// GET with a raw `Authorization` header value.
    pub async fn get_authorized(&self, path: &str, authorization: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .header("Authorization", authorization)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn post_json(
        &self,
        path: &str,
        token: Option<&str>,
        body: &serde_json::Value,
    ) -> reqwest::Response {
        let mut request = self.http.post(self.url(path)).json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("request sent")
    }

    pub async fn register(&self, username: &str, password: &str) -> (u16, serde_json::Value) {
        let credentials = serde_json::json!({"username": username, "password": password});
        json(
            self.post_json("/users/registration", None, &credentials)
                .await,
        )
        .await
    }

    pub async fn login(&self, username: &str, password: &str) -> (u16, serde_json::Value) {
        let credentials = serde_json::json!({"username": username, "password": password});
        json(self.post_json("/users/login", None, &credentials).await).await
    }

    /// Grants `admin` to a registered user directly in the database, as
    /// `allot users create-admin` does; takes effect at the next login.
    pub async fn grant_admin(&self, username: &str) {
        self.database
            .collection::<mongodb::bson::Document>("users")
            .update_one(
                mongodb::bson::doc! { "username": username.to_lowercase() },
                mongodb::bson::doc! { "$addToSet": { "roles": "admin" } },
            )
            .await
            .expect("admin role granted");
    }

    /// Registers a fresh user, grants it `admin` in the database (as the CLI
    /// would) and logs it in, so the token carries the role.
    pub async fn new_admin(&self) -> Tokens {
        let username = random_name("admin");
        self.register(&username, PASSWORD).await;
        self.grant_admin(&username).await;
        let (status, body) = self.login(&username, PASSWORD).await;
        assert_eq!(status, 200, "{body}");
        Tokens::from(&body)
    }

    /// Registers a fresh user and returns its token pair.
    pub async fn new_user(&self) -> Tokens {
        let (status, body) = self.register(&random_name("user"), PASSWORD).await;
        assert_eq!(status, 201, "{body}");
        Tokens::from(&body)
    }
}

/// The API's endpoints, one helper each (see also [`Caller`] for the ones that
/// take a token).
impl TestApp {
    /// Requests made with `access` as the bearer token.
    pub fn with_token(&self, access: &str) -> Caller {
        Caller::new(&self.http, &self.address, access)
    }

    /// A fresh admin ([`TestApp::new_admin`]), ready to send requests.
    pub async fn as_admin(&self) -> Caller {
        let tokens = self.new_admin().await;
        self.with_token(&tokens.access)
    }

    /// A fresh user ([`TestApp::new_user`]), ready to send requests.
    pub async fn as_user(&self) -> Caller {
        let tokens = self.new_user().await;
        self.with_token(&tokens.access)
    }

    /// Logs `username` in with [`PASSWORD`] (the login's status unchecked),
    /// ready to send requests with the access token.
    pub async fn logged_in(&self, username: &str) -> Caller {
        let (_, body) = self.login(username, PASSWORD).await;
        self.with_token(&Tokens::from(&body).access)
    }

    /// Registers a fresh user: its username and token pair.
    pub async fn registered(&self) -> (String, Tokens) {
        let username = random_name("user");
        let (status, body) = self.register(&username, PASSWORD).await;
        assert_eq!(status, 201, "{body}");
        (username, Tokens::from(&body))
    }

    /// `POST /users/refresh` with a refresh token.
    pub async fn refresh(&self, refresh: &str) -> (u16, serde_json::Value) {
        let body = serde_json::json!({});
        json(self.post_json("/users/refresh", Some(refresh), &body).await).await
    }

    /// `POST /users/logout` with an access or refresh token.
    pub async fn logout(&self, token: &str) -> (u16, serde_json::Value) {
        let body = serde_json::json!({});
        json(self.post_json("/users/logout", Some(token), &body).await).await
    }

    /// A login from `client` (sent as `X-Forwarded-For`), with the raw response.
    pub async fn login_from(
        &self,
        client: &str,
        username: &str,
        password: &str,
    ) -> reqwest::Response {
        self.http
            .post(self.url("/users/login"))
            .header("X-Forwarded-For", client)
            .json(&serde_json::json!({"username": username, "password": password}))
            .send()
            .await
            .expect("request sent")
    }

    /// A second instance on this one's database.
    pub async fn second_instance(&self) -> TestApp {
        let database = self.database.name().to_owned();
        spawn_app_with(|settings| settings.mongo.database = database).await
    }
}

/// The CLI and the generated Rust client, on this app.
impl TestApp {
    /// `allot users create-admin --username <username>` on this app's
    /// database, with [`PASSWORD`]; not started yet.
    pub fn create_admin_command(&self, username: &str) -> std::process::Command {
        let mut command = allot_command();
        command
            .args(["users", "create-admin", "--username", username])
            .env("ALLOT_ENV", "testing")
            .env("ALLOT__MONGO__URI", &session().mongo_uri)
            .env("ALLOT__MONGO__DATABASE", self.database.name())
            .env("ALLOT_ADMIN_PASSWORD", PASSWORD);
        command
    }

    /// The generated Rust client (`clients/rust`), sending `token` as the
    /// bearer token when there is one.
    pub fn rust_client(&self, token: Option<&str>) -> generated::RustClient {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = token {
            let value = format!("Bearer {token}").parse().expect("a header value");
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .build()
            .expect("an HTTP client");
        generated::RustClient(allot_client::Client::new_with_client(&self.address, http))
    }
}

/// The generated Rust client, one helper per operation the story uses: the
/// requests are the generated ones; the helpers only build their bodies and
/// unwrap their answers.
pub mod generated {
    use allot_client::types::{self, AllocationResult};
    use allot_client::{Error, ResponseValue};
    use chrono::NaiveDate;

    /// An error answer of the generated client.
    pub type Refused = Error<types::Error>;

    pub struct RustClient(pub allot_client::Client);

    /// A username with [`PASSWORD`](super::PASSWORD).
    fn credentials(username: &str) -> types::Credentials {
        types::Credentials {
            username: username.parse().expect("a valid username"),
            password: super::PASSWORD.parse().expect("a valid password"),
        }
    }

    impl RustClient {
        pub async fn register(&self, username: &str) -> ResponseValue<types::TokenPairBody> {
            self.0
                .register(&credentials(username))
                .await
                .expect("registered")
        }

        pub async fn login(&self, username: &str) -> types::TokenPairBody {
            let tokens = self.0.login(&credentials(username)).await;
            tokens.expect("logged in").into_inner()
        }

        pub async fn me(&self) -> Result<types::Profile, Refused> {
            self.0.me().await.map(ResponseValue::into_inner)
        }

        pub async fn add_batch(
            &self,
            reference: &str,
            sku: &str,
            quantity: u32,
            eta: Option<NaiveDate>,
        ) -> Result<types::BatchBody, Refused> {
            let batch = types::NewBatch {
                reference: reference.parse().expect("a valid reference"),
                sku: sku.parse().expect("a valid sku"),
                purchased_quantity: quantity.try_into().expect("a positive quantity"),
                eta,
            };
            self.0
                .add_batch(&batch)
                .await
                .map(ResponseValue::into_inner)
        }

        pub async fn allocate(
            &self,
            orderid: &str,
            sku: &str,
            qty: u32,
        ) -> Result<ResponseValue<AllocationResult>, Refused> {
            let line = types::OrderLineRequest {
                orderid: orderid.parse().expect("a valid order id"),
                sku: sku.parse().expect("a valid sku"),
                qty: qty.try_into().expect("a positive quantity"),
            };
            self.0.allocate(&line).await
        }

        /// Allocates a line, which must answer 201: the batch it went to.
        pub async fn allocated_to(&self, orderid: &str, sku: &str, qty: u32) -> String {
            let answer = self.allocate(orderid, sku, qty).await.expect("allocated");
            assert_eq!(answer.status().as_u16(), 201);
            match answer.into_inner() {
                AllocationResult::Allocated(allocated) => allocated.batchref,
                other => panic!("expected an allocation, got {other:?}"),
            }
        }

        /// The `line.allocated` events of the feed, as (orderid, batchref),
        /// followed (long polling) until there are `count`.
        pub async fn allocations_in_feed(&self, count: usize) -> Vec<(String, String)> {
            let allocated = vec![types::EventTypeName::LineAllocated];
            let (mut seen, mut after) = (Vec::new(), 0);
            for _ in 0..40 {
                let page = self
                    .0
                    .read_events(Some(after), None, Some(&allocated), Some(500));
                let page = page.await.expect("a page of events").into_inner();
                let lines = page.events.into_iter().map(|event| event.data);
                seen.extend(lines.map(|data| (data.orderid.unwrap(), data.batchref.unwrap())));
                after = page.next_after;
                if seen.len() >= count {
                    break;
                }
            }
            seen
        }

        /// The order's one line: its status, batch and quantity.
        pub async fn line(&self, orderid: &str) -> (types::LineStatusBody, Option<String>, u32) {
            let orderid = orderid.parse().expect("a valid order id");
            let lines = self.0.order_allocations(&orderid).await;
            let lines = lines.expect("lines").into_inner();
            assert_eq!(lines.len(), 1, "{lines:?}");
            let line = &lines[0];
            (line.status, line.batchref.clone(), line.qty)
        }

        pub async fn batch(&self, reference: &str) -> types::BatchBody {
            let reference = reference.parse().expect("a valid reference");
            self.0
                .get_batch(&reference)
                .await
                .expect("a batch")
                .into_inner()
        }

        /// The order ids of the batch's lines.
        pub async fn drawing(&self, reference: &str) -> Vec<String> {
            let reference = reference.parse().expect("a valid reference");
            let lines = self.0.batch_allocations(&reference, None, None).await;
            let lines = lines.expect("its lines").into_inner().allocations;
            lines.into_iter().map(|line| line.orderid).collect()
        }

        /// The references of every batch of `sku`, read one batch per page.
        pub async fn batch_references(&self, sku: &str) -> Vec<String> {
            let (sku, limit) = (sku.parse().expect("a valid sku"), 1.try_into().unwrap());
            let (mut references, mut cursor) = (Vec::new(), None);
            loop {
                let page = self
                    .0
                    .list_batches(cursor.as_ref(), Some(limit), Some(&sku));
                let page = page.await.expect("a page").into_inner();
                references.extend(page.batches.into_iter().map(|batch| batch.reference));
                match page.next_cursor {
                    Some(next) => cursor = Some(next.parse().expect("a valid cursor")),
                    None => return references,
                }
            }
        }

        /// Changes the batch's quantity: the order ids it backordered.
        pub async fn change_quantity(&self, reference: &str, quantity: u32) -> Vec<String> {
            let reference = reference.parse().expect("a valid reference");
            let update = types::QuantityUpdate {
                purchased_quantity: quantity,
            };
            let change = self.0.change_batch_quantity(&reference, &update).await;
            let backordered = change.expect("changed").into_inner().backordered;
            backordered.into_iter().map(|line| line.orderid).collect()
        }

        pub async fn refresh(&self) -> types::TokenPairBody {
            self.0.refresh().await.expect("refreshed").into_inner()
        }

        pub async fn logout(&self) -> types::LogoutBody {
            self.0.logout().await.expect("logged out").into_inner()
        }
    }

    /// The status and text of a documented error answer.
    pub fn refusal<T: std::fmt::Debug>(result: Result<T, Refused>) -> (u16, String) {
        match result.expect_err("an error answer") {
            Error::ErrorResponse(answer) => {
                let status = answer.status().as_u16();
                match answer.into_inner() {
                    types::Error::ErrorBody(body) => (status, body.message),
                    types::Error::AuthErrorBody(body) => (status, body.msg),
                }
            }
            other => panic!("expected a documented error answer, got {other:?}"),
        }
    }
}

/// The value of the response's header `name`, if it is there and is text.
pub fn header(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Any request, with an optional bearer token and JSON body: the status and
/// the JSON body (`null` for an empty 204).
async fn send(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
    body: Option<&serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut request = http.request(method, url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    json(request.send().await.expect("request sent")).await
}

/// Requests to one app (a [`TestApp`], or an allot process at `address`)
/// with one bearer token: one helper per endpoint. Each answers the status
/// and the JSON body.
#[derive(Clone)]
pub struct Caller {
    http: reqwest::Client,
    address: String,
    pub token: String,
}

impl Caller {
    /// Requests to the app at `address` (`http://host:port`) with `token`.
    pub fn new(http: &reqwest::Client, address: &str, token: &str) -> Self {
        Self {
            http: http.clone(),
            address: address.to_owned(),
            token: token.to_owned(),
        }
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let url = format!("{}{path}", self.address);
        send(&self.http, method, &url, Some(&self.token), body).await
    }

    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        self.send(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn patch(&self, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        self.send(reqwest::Method::PATCH, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> (u16, serde_json::Value) {
        self.send(reqwest::Method::DELETE, path, None).await
    }

    /// `POST /batches`.
    pub async fn add_batch(
        &self,
        reference: &str,
        sku: &str,
        qty: u32,
        eta: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let batch = serde_json::json!(
            {"reference": reference, "sku": sku, "purchased_quantity": qty, "eta": eta}
        );
        self.post("/batches", &batch).await
    }

    /// `GET /batches/{reference}`.
    pub async fn get_batch(&self, reference: &str) -> (u16, serde_json::Value) {
        self.get(&format!("/batches/{reference}")).await
    }

    /// `PATCH /batches/{reference}` with a new purchased quantity.
    pub async fn change_quantity(&self, reference: &str, qty: u32) -> (u16, serde_json::Value) {
        let change = serde_json::json!({"purchased_quantity": qty});
        self.patch(&format!("/batches/{reference}"), &change).await
    }

    /// `POST /allocate`.
    pub async fn allocate(&self, orderid: &str, sku: &str, qty: u32) -> (u16, serde_json::Value) {
        self.post("/allocate", &line(orderid, sku, qty)).await
    }

    /// `POST /deallocate`.
    pub async fn deallocate(&self, orderid: &str, sku: &str) -> (u16, serde_json::Value) {
        let line = serde_json::json!({"orderid": orderid, "sku": sku});
        self.post("/deallocate", &line).await
    }

    /// `GET /allocations/{orderid}`.
    pub async fn allocations(&self, orderid: &str) -> (u16, serde_json::Value) {
        self.get(&format!("/allocations/{orderid}")).await
    }

    /// `GET /users/me`: the caller's username.
    pub async fn username(&self) -> String {
        let (status, me) = self.get("/users/me").await;
        assert_eq!(status, 200, "{me}");
        me["username"].as_str().expect("a username").to_owned()
    }

    /// `PATCH /users/{username}`.
    pub async fn change_user(
        &self,
        username: &str,
        change: &serde_json::Value,
    ) -> (u16, serde_json::Value) {
        self.patch(&format!("/users/{username}"), change).await
    }

    /// `PATCH /users/{username}` with new roles.
    pub async fn set_roles(&self, username: &str, roles: &[&str]) -> (u16, serde_json::Value) {
        let change = serde_json::json!({"roles": roles});
        self.change_user(username, &change).await
    }

    /// `PATCH /users/{username}` disabling or enabling the account.
    pub async fn set_disabled(&self, username: &str, disabled: bool) -> (u16, serde_json::Value) {
        let change = serde_json::json!({"disabled": disabled});
        self.change_user(username, &change).await
    }

    /// `DELETE /users/{username}`.
    pub async fn delete_user(&self, username: &str) -> (u16, serde_json::Value) {
        self.delete(&format!("/users/{username}")).await
    }

    /// `POST /users` (an admin creating an account).
    pub async fn create_user(&self, username: &str, roles: &[&str]) -> (u16, serde_json::Value) {
        let account =
            serde_json::json!({"username": username, "password": PASSWORD, "roles": roles});
        self.post("/users", &account).await
    }
}

/// An order line's JSON body.
pub fn line(orderid: &str, sku: &str, qty: u32) -> serde_json::Value {
    serde_json::json!({"orderid": orderid, "sku": sku, "qty": qty})
}

pub const PASSWORD: &str = "correct horse battery";

/// An app with an admin's and a user's token, for the allocation stories.
pub struct Shop {
    pub app: TestApp,
    pub admin: String,
    pub user: String,
}

impl Shop {
    pub async fn open() -> Self {
        Self::on(spawn_app().await).await
    }

    pub async fn on(app: TestApp) -> Self {
        let admin = app.new_admin().await.access;
        let user = app.new_user().await.access;
        Self { app, admin, user }
    }

    pub fn as_admin(&self) -> Caller {
        self.app.with_token(&self.admin)
    }

    pub fn as_user(&self) -> Caller {
        self.app.with_token(&self.user)
    }

    /// Adds each `(reference, sku, qty, eta)` as the admin, expecting 201.
    pub async fn add_stock(&self, batches: &[(&str, &str, u32, Option<&str>)]) {
        for (reference, sku, qty, eta) in batches {
            let (status, reply) = self.as_admin().add_batch(reference, sku, *qty, *eta).await;
            assert_eq!(status, 201, "{reply}");
        }
    }

    pub async fn post(
        &self,
        path: &str,
        token: &str,
        body: &serde_json::Value,
    ) -> (u16, serde_json::Value) {
        self.app.with_token(token).post(path, body).await
    }

    /// GET as the user.
    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        self.as_user().get(path).await
    }

    /// `POST /allocate` as the user.
    pub async fn allocate(&self, orderid: &str, sku: &str, qty: u32) -> (u16, serde_json::Value) {
        self.as_user().allocate(orderid, sku, qty).await
    }

    /// `PATCH /batches/{reference}` as the admin.
    pub async fn patch_quantity(&self, reference: &str, qty: u32) -> (u16, serde_json::Value) {
        self.as_admin().change_quantity(reference, qty).await
    }

    pub async fn get_as_admin(&self, path: &str) -> (u16, serde_json::Value) {
        self.as_admin().get(path).await
    }

    /// The status of the order's first line.
    pub async fn line_status(&self, orderid: &str) -> serde_json::Value {
        self.get(&format!("/allocations/{orderid}")).await.1[0]["status"].clone()
    }

    pub async fn batch_count(&self) -> u64 {
        self.app
            .database
            .collection::<mongodb::bson::Document>("batches")
            .count_documents(mongodb::bson::doc! {})
            .await
            .unwrap()
    }
}

#[derive(Debug, Clone)]
pub struct Tokens {
    pub access: String,
    pub refresh: String,
}

impl From<&serde_json::Value> for Tokens {
    fn from(body: &serde_json::Value) -> Self {
        Self {
            access: body["access_token"]
                .as_str()
                .expect("access_token")
                .to_owned(),
            refresh: body["refresh_token"]
                .as_str()
                .expect("refresh_token")
                .to_owned(),
        }
    }
}

/// A name no other test uses (the seed's `random_sku()` idea).
/// A token refusal's body, as Flask-JWT-Extended words it.
pub fn msg(text: &str) -> serde_json::Value {
    serde_json::json!({ "msg": text })
}

/// `GET /tests/secret` with this `Authorization` header (None: without one).
pub async fn secret(app: &TestApp, authorization: Option<&str>) -> (u16, serde_json::Value) {
    let response = match authorization {
        Some(value) => app.get_authorized("/tests/secret", value).await,
        None => app.get("/tests/secret").await,
    };
    json(response).await
}

/// `GET /tests/secret` with a bearer access token.
pub async fn secret_as(app: &TestApp, access: &str) -> (u16, serde_json::Value) {
    secret(app, Some(&format!("Bearer {access}"))).await
}

/// Waits until `app` refuses `access` as revoked, failing once a second has
/// passed since `since` (the revocation).
pub async fn revoked_within_a_second(app: &TestApp, access: &str, since: std::time::Instant) {
    use std::time::Duration;
    loop {
        if secret_as(app, access).await == (401, msg("Token has been revoked")) {
            return;
        }
        assert!(
            since.elapsed() < Duration::from_secs(1),
            "the token is still accepted {:?} after its revocation",
            since.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn random_name(kind: &str) -> String {
    format!(
        "{kind}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

/// Status and JSON body of a response (`null` for an empty 204); panics on
/// any other body that is not JSON.
pub async fn json(response: reqwest::Response) -> (u16, serde_json::Value) {
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let text = response.text().await.expect("a response body");
    if status == 204 && text.is_empty() {
        return (status, serde_json::Value::Null);
    }
    let body = serde_json::from_str(&text).unwrap_or_else(|_| {
        panic!("expected a JSON body, got {status} {content_type:?}: {text:?}")
    });
    (status, body)
}

/// A TCP proxy in front of the test database that a test can cut and restore,
/// to see what the app does while its database is unreachable.
pub struct ToggleProxy {
    pub address: String,
    up: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl ToggleProxy {
    pub async fn start(target: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        let up = Arc::new(AtomicBool::new(true));
        let connections = Arc::new(Mutex::new(Vec::new()));
        let (accept_up, accept_connections) = (up.clone(), connections.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !accept_up.load(Ordering::SeqCst) {
                    continue; // dropping `inbound` refuses the connection
                }
                let target = target.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                accept_connections.lock().unwrap().push(task.abort_handle());
            }
        });
        Self {
            address,
            up,
            connections,
        }
    }

    /// Refuses new connections and cuts the open ones.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// The allot binary, run from the project folder with a clean `ALLOT_*` environment.
pub fn allot_command() -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_allot"));
    command.current_dir(env!("CARGO_MANIFEST_DIR"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ALLOT") || key == "RUST_LOG" {
            command.env_remove(key);
        }
    }
    command
}

/// `allot serve` (testing configuration) as a child process, once it
/// listens; its log lines are collected in the background.
pub struct AllotProcess {
    pub child: std::process::Child,
    pub url: String,
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    pub http: reqwest::Client,
}

impl AllotProcess {
    pub fn start(command: &mut std::process::Command) -> Self {
        // Its stdout is not the test run's: a child left behind would hold
        // the pipe `scripts/test` reads until it exits.
        let mut child = command
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut reader = std::io::BufReader::new(child.stderr.take().unwrap());
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut line = String::new();
        let port = loop {
            line.clear();
            assert!(
                reader.read_line(&mut line).unwrap() > 0,
                "allot exited before listening: {:?}",
                log.lock().unwrap()
            );
            log.lock().unwrap().push(line.clone());
            if let Some(docs) = line.split("/docs").next()
                && line.contains("listening")
                && let Some(port) = docs.rsplit(':').next()
                && let Ok(port) = port.parse::<u16>()
            {
                break port;
            }
        };
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in reader.lines() {
                let Ok(line) = line else { break };
                lines.lock().unwrap().push(line);
            }
        });
        Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
            http: reqwest::Client::new(),
        }
    }

    /// Requests to this process with `token`.
    pub fn caller(&self, token: &str) -> Caller {
        Caller::new(&self.http, &self.url, token)
    }

    /// SIGKILL, and waits for the process to be gone.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Peak resident memory (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/<pid>/status")
    }
}

impl Drop for AllotProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The webhook endpoints.
impl Caller {
    /// `POST /webhooks` for every event type.
    pub async fn create_webhook(&self, url: &str, types: &[&str]) -> (u16, serde_json::Value) {
        let body =
            serde_json::json!({"url": url, "types": types, "description": "a test receiver"});
        self.post("/webhooks", &body).await
    }

    /// `POST /webhooks`, expecting 201: the subscription's id and secret.
    pub async fn subscribe(&self, url: &str, types: &[&str]) -> (String, String) {
        let (status, body) = self.create_webhook(url, types).await;
        assert_eq!(status, 201, "{body}");
        let id = body["id"].as_str().expect("an id").to_owned();
        let secret = body["secret"].as_str().expect("a secret").to_owned();
        (id, secret)
    }

    /// `GET /webhooks/{id}/deliveries`.
    pub async fn deliveries(&self, id: &str) -> (u16, serde_json::Value) {
        self.get(&format!("/webhooks/{id}/deliveries")).await
    }

    /// `POST /webhooks/{id}/replay`.
    pub async fn replay(&self, id: &str, from_position: u64) -> (u16, serde_json::Value) {
        let body = serde_json::json!({"from_position": from_position});
        self.post(&format!("/webhooks/{id}/replay"), &body).await
    }
}

/// How a [`Receiver`] answers a delivery.
#[derive(Debug, Clone, Copy)]
pub enum Answer {
    Status(u16),
    /// Never answers (until the sender gives up).
    Hang,
}

/// A delivery a [`Receiver`] got, its signature checked.
#[derive(Debug, Clone)]
pub struct Received {
    /// `webhook-id`.
    pub id: String,
    pub body: serde_json::Value,
    /// Whether `webhook-signature` is right for the secret, and
    /// `webhook-timestamp` within five minutes of now.
    pub verified: bool,
}

#[derive(Default)]
struct Inbox {
    secret: Mutex<Option<String>>,
    script: Mutex<std::collections::VecDeque<Answer>>,
    received: Mutex<Vec<Received>>,
}

/// A webhook receiver on 127.0.0.1 that checks every delivery's signature
/// the Standard Webhooks way, and answers as scripted (then 204).
pub struct Receiver {
    pub url: String,
    inbox: Arc<Inbox>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Checks a delivery as a receiver would (the secret is `whsec_` + base64).
pub fn verify_delivery(
    secret: &str,
    id: &str,
    timestamp: &str,
    body: &[u8],
    signature: &str,
) -> bool {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use hmac::Mac;
    let Some(key) = secret
        .strip_prefix("whsec_")
        .and_then(|k| STANDARD.decode(k).ok())
    else {
        return false;
    };
    let Ok(seconds) = timestamp.parse::<i64>() else {
        return false;
    };
    if (chrono::Utc::now().timestamp() - seconds).abs() > 300 {
        return false;
    }
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).expect("any key");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    let expected = STANDARD.encode(mac.finalize().into_bytes());
    // Several space-separated signatures may be sent (secret rotation).
    signature
        .split(' ')
        .any(|one| one.strip_prefix("v1,") == Some(expected.as_str()))
}

impl Receiver {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("address"));
        let inbox = Arc::new(Inbox::default());
        let served = Arc::clone(&inbox);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let inbox = Arc::clone(&served);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let inbox = Arc::clone(&inbox);
                        async move { inbox.take(request).await }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { url, inbox, task }
    }

    /// The secret deliveries are checked with.
    pub fn expect_secret(&self, secret: &str) {
        *self.inbox.secret.lock().unwrap() = Some(secret.to_owned());
    }

    /// The next deliveries get these answers, in order.
    pub fn answer(&self, answers: &[Answer]) {
        self.inbox
            .script
            .lock()
            .unwrap()
            .extend(answers.iter().copied());
    }

    /// Every delivery so far; panics if any failed its check.
    pub fn received(&self) -> Vec<Received> {
        let received = self.inbox.received.lock().unwrap().clone();
        for delivery in &received {
            assert!(
                delivery.verified,
                "a delivery failed its signature check: {delivery:?}"
            );
        }
        received
    }

    /// The `position`s of the deliveries so far, in the order they came.
    pub fn positions(&self) -> Vec<u64> {
        self.received()
            .iter()
            .map(|r| r.body["position"].as_u64().expect("a position"))
            .collect()
    }

    /// Waits (up to `within`) until `done` holds for the deliveries.
    pub async fn wait_for(
        &self,
        within: std::time::Duration,
        done: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let received = self.received();
            if done(&received) {
                return received;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the receiver did not get what was expected within {within:?}; got {received:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

impl Inbox {
    async fn take(
        &self,
        request: hyper::Request<hyper::body::Incoming>,
    ) -> Result<hyper::Response<http_body_util::Full<bytes::Bytes>>, std::convert::Infallible> {
        use http_body_util::BodyExt;
        let header = |name: &str| {
            request
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        let (id, timestamp, signature) = (
            header("webhook-id"),
            header("webhook-timestamp"),
            header("webhook-signature"),
        );
        let body = request
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let secret = self.secret.lock().unwrap().clone().unwrap_or_default();
        let verified = verify_delivery(&secret, &id, &timestamp, &body, &signature);
        self.received.lock().unwrap().push(Received {
            id,
            body: serde_json::from_slice(&body).unwrap_or_default(),
            verified,
        });
        let answer = self.script.lock().unwrap().pop_front();
        let status = match answer {
            Some(Answer::Hang) => std::future::pending().await,
            Some(Answer::Status(status)) => status,
            None => 204,
        };
        let mut response = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::new()));
        *response.status_mut() = hyper::StatusCode::from_u16(status).expect("a status");
        Ok(response)
    }
}
