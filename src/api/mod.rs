//! The HTTP entrypoint: poem-openapi endpoints (one file per tag), the error
//! mapping, and the middleware every request passes through.

pub mod accounts;
pub mod allocations;
pub mod auth;
pub mod batches;
pub mod client;
pub mod error;
pub mod fields;
pub mod health;
pub mod json_body;
pub mod middleware;
pub mod operations;
pub mod reply;
pub mod spec;
pub mod test_endpoints;
pub mod users;
pub mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use mongodb::Database;
use poem_openapi::{OpenApiService, Tags};

use crate::adapters::deadline::Deadline;
use crate::adapters::mongo::allocations::MongoAllocations;
use crate::adapters::mongo::login_failures::MongoLoginFailures;
use crate::adapters::mongo::revocations::MongoRevocations;
use crate::adapters::mongo::rotations::MongoRotations;
use crate::adapters::mongo::users::MongoUsers;
use crate::adapters::mongo::webhooks::MongoWebhooks;
use crate::adapters::no_events::NoEvents;
use crate::adapters::passwords::Argon2Hasher;
use crate::adapters::tokens::JwtTokens;
use crate::adapters::webhook_sender::HttpSender;
use crate::config::Registration;
use crate::domain::user::PasswordPolicy;
use crate::domain::webhooks::TargetPolicy;
use crate::services::tokens::RevocationList;

/// What the handlers share, attached to every request. One `Arc`, because
/// poem clones it into each request.
#[derive(Clone)]
pub struct AppState(Arc<Components>);

impl AppState {
    pub fn new(components: Components) -> Self {
        Self(Arc::new(components))
    }
}

impl std::ops::Deref for AppState {
    type Target = Components;

    fn deref(&self) -> &Components {
        &self.0
    }
}

/// The adapters and settings the handlers use.
pub struct Components {
    pub database: Database,
    pub ready_timeout: Duration,
    pub users: Deadline<MongoUsers>,
    pub passwords: Argon2Hasher,
    pub password_policy: PasswordPolicy,
    pub tokens: JwtTokens,
    pub revocation_store: Deadline<MongoRevocations>,
    pub revocations: Arc<RevocationList>,
    pub rotations: Deadline<MongoRotations>,
    pub refresh_retry_grace: Duration,
    pub login_failures: Deadline<MongoLoginFailures>,
    pub trusted_proxies: Vec<std::net::IpAddr>,
    pub registration: Registration,
    pub allocations: Deadline<MongoAllocations>,
    pub webhooks: Deadline<MongoWebhooks>,
    pub webhook_sender: HttpSender,
    pub webhook_policy: TargetPolicy,
    /// The recorded events (the relay's log once merged).
    pub events: NoEvents,
}

#[derive(Tags)]
#[oai(rename_all = "lowercase")]
pub enum ApiTags {
    /// Liveness and readiness probes.
    Health,
    /// Sample endpoints from the original service, handy for checking a token.
    Tests,
    /// Registration, login, tokens, and the caller's own account.
    Users,
    /// Administration of accounts (the `admin` role).
    Accounts,
    /// Stock: batches of a sku, with a quantity and an expected arrival.
    Batches,
    /// Allocating customer order lines to batches.
    Allocations,
    /// Subscriptions that POST events to your URL, signed the Standard
    /// Webhooks way (the `admin` role).
    Webhooks,
}

/// The whole API, described for the OpenAPI document.
pub type Api = (
    health::HealthApi,
    test_endpoints::TestEndpointsApi,
    users::UsersApi,
    accounts::AccountsApi,
    batches::BatchesApi,
    allocations::AllocationsApi,
    webhooks::WebhooksApi,
);

const DESCRIPTION: &str = "\
allot registers users, issues JWT access and refresh tokens, and allocates \
customer order lines to stock batches without ever overselling.

Errors are JSON: `{\"message\": ...}` for request and business errors, \
`{\"msg\": ...}` for bearer-token errors.";

/// The OpenAPI service; `spec` serves and commits its document.
pub fn service() -> OpenApiService<Api, ()> {
    OpenApiService::new(Api::default(), "allot", env!("CARGO_PKG_VERSION"))
        .description(DESCRIPTION)
        .server("/")
}
