//! The HTTP entrypoint: poem-openapi endpoints (one file per tag), the error
//! mapping, and the middleware every request passes through.

pub mod accounts;
pub mod allocations;
pub mod auth;
pub mod batches;
pub mod client;
pub mod error;
pub mod events;
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

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use poem_openapi::{OpenApiService, Tags};

use crate::config::Registration;
use crate::domain::user::PasswordPolicy;
use crate::domain::webhooks::TargetPolicy;
use crate::services::feed::FeedHead;
use crate::services::login_throttle::Throttle;
use crate::services::ports::accounts::{PasswordHasher, UserRepository};
use crate::services::ports::allocation::AllocationRepository;
use crate::services::ports::events::EventLog;
use crate::services::ports::health::Readiness;
use crate::services::ports::login_throttle::LoginThrottle;
use crate::services::ports::tokens::{RefreshRotations, RevocationStore, TokenIssuer};
use crate::services::ports::webhooks::{WebhookSender, WebhookStore};
use crate::services::tokens::RevocationList;

/// The implementations of the ports the handlers use, one associated type
/// per port. `startup.rs` names them (`startup::Production`); `api` knows
/// only the ports.
///
/// The endpoint structs (`UsersApi<A>`, ...) and the bearer-token extractors
/// are generic over it rather than holding trait objects: the ports return
/// `impl Future`, so they cannot be `dyn`, and a generic handler is compiled
/// for the adapters it runs on, as cheap as naming them. The OpenAPI
/// document does not depend on `A`.
pub trait Adapters: Send + Sync + 'static {
    type Users: UserRepository + 'static;
    type Passwords: PasswordHasher + 'static;
    type Tokens: TokenIssuer + 'static;
    type Revocations: RevocationStore + 'static;
    type Rotations: RefreshRotations + 'static;
    type LoginFailures: LoginThrottle + 'static;
    type Allocations: AllocationRepository + 'static;
    type Events: EventLog + 'static;
    type Webhooks: WebhookStore + 'static;
    type WebhookSender: WebhookSender + 'static;
    type Database: Readiness + 'static;
}

/// What the handlers share, attached to every request. One `Arc`, because
/// poem clones it into each request.
pub struct AppState<A: Adapters>(Arc<Components<A>>);

impl<A: Adapters> AppState<A> {
    pub fn new(components: Components<A>) -> Self {
        Self(Arc::new(components))
    }
}

impl<A: Adapters> Clone for AppState<A> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<A: Adapters> std::ops::Deref for AppState<A> {
    type Target = Components<A>;

    fn deref(&self) -> &Components<A> {
        &self.0
    }
}

/// The adapters and settings the handlers use.
pub struct Components<A: Adapters> {
    /// Pinged by `/ready`.
    pub database: A::Database,
    pub ready_timeout: Duration,
    pub users: A::Users,
    pub passwords: A::Passwords,
    pub password_policy: PasswordPolicy,
    pub tokens: A::Tokens,
    pub revocation_store: A::Revocations,
    pub revocations: Arc<RevocationList>,
    pub rotations: A::Rotations,
    pub refresh_retry_grace: Duration,
    pub login_throttle: Throttle<A::LoginFailures>,
    pub trusted_proxies: Vec<std::net::IpAddr>,
    pub registration: Registration,
    pub allocations: A::Allocations,
    pub events: Arc<A::Events>,
    /// `events.long_poll_max_ms`.
    pub longest_wait: Duration,
    /// What the feed's waiting requests wait on.
    pub feed_head: FeedHead,
    pub webhooks: A::Webhooks,
    pub webhook_sender: A::WebhookSender,
    /// `webhooks.allow_private_targets`, `webhooks.require_https`.
    pub webhook_policy: TargetPolicy,
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
    /// The feed of what happened to stock and order lines (`admin` or `events` role).
    Events,
    /// Subscriptions that POST events to your URL, signed the Standard
    /// Webhooks way (the `admin` role).
    Webhooks,
}

/// The whole API, described for the OpenAPI document.
pub type Api<A> = (
    health::HealthApi<A>,
    test_endpoints::TestEndpointsApi<A>,
    users::UsersApi<A>,
    accounts::AccountsApi<A>,
    batches::BatchesApi<A>,
    allocations::AllocationsApi<A>,
    events::EventsApi<A>,
    webhooks::WebhooksApi<A>,
);

const DESCRIPTION: &str = "\
allot registers users, issues JWT access and refresh tokens, and allocates \
customer order lines to stock batches without ever overselling.

Errors are JSON: `{\"message\": ...}` for request and business errors, \
`{\"msg\": ...}` for bearer-token errors.";

/// The OpenAPI service over these adapters; `spec` serves and commits its
/// document, which is the same for every `A`.
pub fn service<A: Adapters>() -> OpenApiService<Api<A>, ()> {
    // Each endpoint struct holds only a `PhantomData<fn() -> A>`: no `A`,
    // and `Send` and `Sync` whatever `A` is.
    let api = (
        health::HealthApi(PhantomData),
        test_endpoints::TestEndpointsApi(PhantomData),
        users::UsersApi(PhantomData),
        accounts::AccountsApi(PhantomData),
        batches::BatchesApi(PhantomData),
        allocations::AllocationsApi(PhantomData),
        events::EventsApi(PhantomData),
        webhooks::WebhooksApi(PhantomData),
    );
    OpenApiService::new(api, "allot", env!("CARGO_PKG_VERSION"))
        .description(DESCRIPTION)
        .server("/")
}
