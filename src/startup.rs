//! Builds the application from settings: database, routes, listener.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use poem::{Endpoint, EndpointExt, IntoEndpoint, Response, Route};

use crate::adapters::deadline::Deadline;
use crate::adapters::mongo::allocations::{MongoAllocations, Resumed};
use crate::adapters::mongo::events::MongoEventLog;
use crate::adapters::mongo::events::relay::Relay;
use crate::adapters::mongo::instances::Instance;
use crate::adapters::mongo::login_failures::MongoLoginFailures;
use crate::adapters::mongo::revocations::MongoRevocations;
use crate::adapters::mongo::rotations::MongoRotations;
use crate::adapters::mongo::users::MongoUsers;
use crate::adapters::mongo::webhooks::MongoWebhooks;
use crate::adapters::mongo::{self, MongoError};
use crate::adapters::passwords::Argon2Hasher;
use crate::adapters::tokens::JwtTokens;
use crate::adapters::webhook_sender::{HttpSender, SenderError};
use crate::api::{self, Adapters, AppState, Components, middleware};
use crate::config::Settings;
use crate::metrics::WebhookMetrics;
use crate::server::{self, ConnectionLimits};
use crate::services::StoreError;
use crate::services::allocation;
use crate::services::feed::FeedHead;
use crate::services::login_throttle::Throttle;
use crate::services::ports::accounts::HashingError;
use crate::services::tokens::RevocationList;
use crate::services::webhooks::worker::{Worker, WorkerSettings};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Mongo(#[from] MongoError),
    #[error(transparent)]
    Hashing(#[from] HashingError),
    #[error(transparent)]
    Webhooks(#[from] SenderError),
    #[error("cannot load revoked tokens: {0}")]
    Revocations(#[from] StoreError),
    #[error("cannot start the event feed: {0}")]
    Events(#[from] crate::adapters::mongo::events::relay::RelayError),
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: String,
        #[source]
        source: std::io::Error,
    },
}

/// The adapters allot runs on: MongoDB for every store, each step under a
/// time limit ([`Deadline`]), Argon2 for passwords, JWT for tokens. The
/// handlers are compiled for these; `api` itself names only the ports.
pub struct Production;

impl Adapters for Production {
    type Users = Deadline<MongoUsers>;
    type Passwords = Argon2Hasher;
    type Tokens = JwtTokens;
    type Revocations = Deadline<MongoRevocations>;
    type Rotations = Deadline<MongoRotations>;
    type LoginFailures = Deadline<MongoLoginFailures>;
    type Allocations = Deadline<MongoAllocations>;
    type Events = MongoEventLog;
    type Webhooks = Deadline<MongoWebhooks>;
    type WebhookSender = HttpSender;
    type Database = mongodb::Database;
}

/// A built application: connected, indexed and bound, not yet serving.
pub struct Application {
    listener: tokio::net::TcpListener,
    limits: ConnectionLimits,
    port: u16,
    app: server::App,
    shutdown_grace: Duration,
    revocation_sync: RevocationSync,
    recovery: RecoveryLoop,
    lease: LeaseKeeper,
    intent_flush: IntentFlush,
    relay: Option<Relay>,
    webhooks: Arc<WebhookWorker>,
}

/// The webhook delivery worker as built here.
type WebhookWorker = Worker<Deadline<MongoWebhooks>, MongoEventLog, HttpSender, WebhookMetrics>;

/// A tick every `every`, the first at once; a late tick delays the next
/// rather than bunching them.
fn ticks(every: Duration) -> tokio::time::Interval {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks
}

/// Keeps this instance's revocation list in step with the shared store.
struct RevocationSync {
    list: Arc<RevocationList>,
    store: Deadline<MongoRevocations>,
    every: Duration,
}

/// Runs `step` on every tick of `every`, logging each failure as `failed`.
async fn on_every_tick<T, E, F>(every: Duration, failed: &str, mut step: impl FnMut() -> F)
where
    E: std::fmt::Display,
    F: Future<Output = Result<T, E>>,
{
    let mut ticks = ticks(every);
    loop {
        ticks.tick().await;
        if let Err(error) = step().await {
            tracing::warn!(%error, "{failed}");
        }
    }
}

impl RevocationSync {
    async fn run(self) {
        let failed = "cannot sync revoked tokens; will retry";
        on_every_tick(self.every, failed, || self.list.sync(&self.store)).await
    }
}

/// Runs the allocation recovery pass at start, periodically, and as soon as
/// an instance was found dead: it finishes the allocations a dead instance
/// left half-done, completes interrupted shrinks and serves waiting lines.
struct RecoveryLoop {
    allocations: Deadline<MongoAllocations>,
    every: Duration,
    now: Arc<Notify>,
}

impl RecoveryLoop {
    async fn run(self) {
        let mut ticks = ticks(self.every);
        let mut resume_after = None;
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                () = self.now.notified() => {}
            }
            match self.allocations.inner().resume_interrupted().await {
                Ok(resumed) if resumed != Resumed::default() => tracing::info!(
                    stored = resumed.stored,
                    given_back = resumed.given_back,
                    "finished interrupted allocations"
                ),
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(%error, "cannot finish interrupted allocations; will retry")
                }
            }
            match allocation::recover(&self.allocations, resume_after.as_deref()).await {
                Ok(recovery) => {
                    if recovery.backordered + recovery.filled > 0 {
                        tracing::info!(
                            backordered = recovery.backordered,
                            filled = recovery.filled,
                            "allocation recovery pass"
                        );
                    }
                    resume_after = recovery.next_position;
                }
                Err(error) => tracing::warn!(%error, "allocation recovery pass failed; will retry"),
            }
        }
    }
}

/// Keeps this instance's lease and takes over the leases of dead instances
/// (aborting their transactions, then waking the recovery pass). It writes
/// nothing but leases: a write to a batch could wait behind a dead
/// instance's transaction, and so put off the very survey that aborts it.
struct LeaseKeeper {
    instance: Instance,
    every: Duration,
    recover_now: Arc<Notify>,
}

impl LeaseKeeper {
    async fn run(self) {
        let mut ticks = ticks(self.every);
        let mut beats: u64 = 0;
        loop {
            ticks.tick().await;
            beats += 1;
            if let Err(error) = self.instance.renew().await {
                tracing::warn!(%error, "cannot renew this instance's lease; will retry");
            }
            match self.instance.survey().await {
                Ok(reaped) if !reaped.is_empty() => {
                    for dead in &reaped {
                        tracing::warn!(
                            instance = %dead.instance,
                            sessions = dead.sessions,
                            "an instance's lease lapsed: its transactions were aborted"
                        );
                    }
                    self.recover_now.notify_one();
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "cannot survey instance leases; will retry"),
            }
            // Now and then: the lease lists only the sessions still pooled.
            if beats.is_multiple_of(64)
                && let Err(error) = self.instance.prune_sessions().await
            {
                tracing::warn!(%error, "cannot prune this instance's sessions; will retry");
            }
        }
    }
}

/// Removes the intents of stored lines from their batches, on the lease's
/// beat.
struct IntentFlush {
    allocations: Deadline<MongoAllocations>,
    every: Duration,
}

impl IntentFlush {
    async fn run(self) {
        let failed = "cannot clear allocation intents; will retry";
        on_every_tick(self.every, failed, || {
            self.allocations.inner().flush_confirmed()
        })
        .await
    }
}

impl Application {
    /// Connects to MongoDB (retrying for `mongo.startup_retry_secs`), creates the
    /// indexes and binds the listener. Port 0 picks a free port; see [`Self::port`].
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        let client = mongo::client(&settings.mongo).await?;
        let database = client.database(&settings.mongo.database);
        mongo::prepare(&settings.mongo, &database).await?;

        let address = format!("{}:{}", settings.http.host, settings.http.port);
        let bind_error = |source| StartupError::Bind {
            address: address.clone(),
            source,
        };
        let listener = tokio::net::TcpListener::bind(&address)
            .await
            .map_err(bind_error)?;
        let port = listener.local_addr().map_err(bind_error)?.port();

        let operation_timeout = Duration::from_millis(settings.mongo.operation_timeout_ms);
        let lease = Duration::from_millis(settings.mongo.instance_lease_ms);
        let instance = Instance::new(&database, lease);
        if settings.events.relay_enabled {
            instance.may_relay();
        }
        // Holding a lease (and knowing the others') before the first write.
        let register = async {
            instance.renew().await?;
            instance.survey().await
        };
        register.await.map_err(|source| MongoError::Unreachable {
            uri: settings.mongo.redacted_uri(),
            waited_secs: 0,
            source,
        })?;
        let revocation_store = Deadline::new(
            MongoRevocations::new(&database, &instance).with_operation_timeout(operation_timeout),
            operation_timeout,
        );
        let revocations = Arc::new(RevocationList::default());
        revocations.sync(&revocation_store).await?;
        let allocations = Deadline::new(
            MongoAllocations::new(&database, &instance).with_operation_timeout(operation_timeout),
            operation_timeout,
        );
        let recover_now = Arc::new(Notify::new());
        let relay = Relay::new(
            &database,
            &instance,
            settings.events.retention(),
            Duration::from_millis(settings.events.relay_interval_ms),
            operation_timeout,
        );
        // The feed starts before the first instance serves (any instance).
        relay.begin().await?;
        let relay = settings.events.relay_enabled.then_some(relay);
        let events = MongoEventLog::new(&database, operation_timeout);
        let webhooks = Deadline::new(
            MongoWebhooks::new(
                &database,
                Duration::from_secs(settings.webhooks.attempts_kept_days * 86_400),
            ),
            operation_timeout,
        );
        let webhook_sender = HttpSender::new(
            settings.webhooks.policy(),
            Duration::from_millis(settings.webhooks.delivery_timeout_ms),
        )?;
        let worker = Arc::new(Worker::new(
            webhooks.clone(),
            events.clone(),
            webhook_sender.clone(),
            WebhookMetrics,
            WorkerSettings {
                instance: instance.id().to_owned(),
                lease: Duration::from_millis(settings.webhooks.lease_ms),
                poll: Duration::from_millis(settings.webhooks.poll_interval_ms),
                schedule: settings.webhooks.schedule(),
                max_in_flight: settings.webhooks.max_in_flight,
            },
        ));
        let state = AppState::<Production>::new(Components {
            users: Deadline::new(
                MongoUsers::new(&database, &instance).with_operation_timeout(operation_timeout),
                operation_timeout,
            ),
            allocations: allocations.clone(),
            events: Arc::new(events),
            longest_wait: Duration::from_millis(settings.events.long_poll_max_ms),
            feed_head: FeedHead::new(FEED_HEAD_EVERY),
            passwords: Argon2Hasher::new(&settings.auth)?,
            password_policy: settings.auth.password_policy(),
            tokens: JwtTokens::new(&settings.auth),
            revocation_store: revocation_store.clone(),
            revocations: revocations.clone(),
            rotations: Deadline::new(MongoRotations::new(&database), operation_timeout),
            refresh_retry_grace: Duration::from_secs(settings.auth.refresh_retry_grace_secs),
            login_throttle: Throttle::new(Deadline::new(
                MongoLoginFailures::new(
                    &database,
                    &instance,
                    settings.auth.login_throttle.policy(),
                ),
                operation_timeout,
            )),
            trusted_proxies: settings.http.trusted_proxies.clone(),
            registration: settings.auth.registration,
            webhooks,
            webhook_sender,
            webhook_policy: settings.webhooks.policy(),
            database,
            ready_timeout: Duration::from_millis(settings.mongo.ready_timeout_ms),
        });
        Ok(Self {
            listener,
            limits: ConnectionLimits::from(&settings.http),
            port,
            app: routes(state, &settings),
            shutdown_grace: Duration::from_secs(settings.http.shutdown_grace_secs),
            revocation_sync: RevocationSync {
                list: revocations,
                store: revocation_store,
                every: Duration::from_millis(settings.auth.revocation_sync_ms.max(10)),
            },
            recovery: RecoveryLoop {
                allocations: allocations.clone(),
                every: Duration::from_millis(settings.allocation.recovery_interval_ms.max(10)),
                now: recover_now.clone(),
            },
            relay,
            lease: LeaseKeeper {
                instance,
                every: lease / 4,
                recover_now,
            },
            intent_flush: IntentFlush {
                allocations,
                every: lease / 4,
            },
            webhooks: worker,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until `shutdown` resolves, then lets in-flight requests finish
    /// for up to `http.shutdown_grace_secs`.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let sync = tokio::spawn(self.revocation_sync.run());
        let recovery = tokio::spawn(self.recovery.run());
        let lease = tokio::spawn(self.lease.run());
        let intent_flush = tokio::spawn(self.intent_flush.run());
        let relay = self.relay.map(|relay| tokio::spawn(relay.run()));
        let webhooks = tokio::spawn(Arc::clone(&self.webhooks).run());
        let served = server::serve(
            self.listener,
            self.app,
            self.limits,
            shutdown,
            self.shutdown_grace,
        )
        .await;
        sync.abort();
        recovery.abort();
        lease.abort();
        intent_flush.abort();
        if let Some(relay) = relay {
            relay.abort();
        }
        webhooks.abort();
        // Its tasks stopped with it; the others take its subscriptions now.
        let _ = webhooks.await;
        if let Err(error) = self.webhooks.release_all().await {
            tracing::warn!(%error, "cannot hand webhook subscriptions over; they will lapse");
        }
        served
    }
}

const METRICS_PATH: &str = "/metrics";

/// How often an instance reads the event feed's head while requests wait
/// for the next event (`GET /events?wait_ms=`).
const FEED_HEAD_EVERY: Duration = Duration::from_millis(100);

/// The full route table with its middleware, outermost last, as the server
/// calls it.
pub fn routes<A: Adapters>(state: AppState<A>, settings: &Settings) -> server::App {
    let (http, log, metrics) = (&settings.http, &settings.log, &settings.metrics);
    let api = api::service::<A>();
    let allowed = Arc::new(middleware::AllowedMethods::new(api::spec::json::<A>));
    let mut operator = Route::new();
    if http.docs_enabled {
        operator = api::spec::routes::<A>(operator);
    }
    if metrics.enabled {
        operator = operator.at(
            METRICS_PATH,
            api::operations::metrics_endpoint(&metrics.token),
        );
    }
    let routes = Routes {
        state,
        docs: http.docs_enabled,
        metrics: metrics.enabled,
        operator,
        api: api.into_endpoint(),
    }
    .with(middleware::BodyLimit {
        max_bytes: http.body_limit_bytes,
        read_timeout: Duration::from_millis(http.body_read_timeout_ms),
    });
    let edge = middleware::Edge {
        request_ids: log.request_ids,
        metrics: metrics.enabled,
        allowed,
    };
    // Two compositions rather than `with_if`, whose either-endpoint would
    // wrap every request's future once more.
    if http.cors_origins.is_empty() {
        server::App::new(routes.with(edge))
    } else {
        server::App::new(
            routes
                .with(middleware::BrowserOrigins(http.cors_origins.clone()))
                .with(edge),
        )
    }
}

/// The application's state on every request, then its route: the operator
/// paths (the documents, Swagger UI, `/metrics`) go to their own route, and
/// every other path straight to the API, which answers 404 for those it does
/// not know. (A `Route` with the API nested at `/` did the same, but rewrote
/// every request's URI and matched its path twice.)
struct Routes<A: Adapters> {
    state: AppState<A>,
    docs: bool,
    metrics: bool,
    operator: Route,
    api: poem::endpoint::BoxEndpoint<'static, Response>,
}

impl<A: Adapters> Endpoint for Routes<A> {
    type Output = Response;

    // Not an `async fn`: the request goes straight into the API's own (boxed)
    // future, and this layer adds nothing to the request's future.
    fn call(
        &self,
        mut req: poem::Request,
    ) -> impl std::future::Future<Output = poem::Result<Response>> + Send {
        use futures_util::future::Either;
        req.set_data(self.state.clone());
        let path = req.uri().path();
        let operator =
            (self.docs && api::spec::serves(path)) || (self.metrics && path == METRICS_PATH);
        if operator {
            Either::Left(Box::pin(self.operator.call(req)))
        } else {
            Either::Right(poem::endpoint::DynEndpoint::call(self.api.as_ref(), req))
        }
    }
}

/// A future that resolves on SIGINT (Ctrl-C) or SIGTERM. The handlers are
/// registered here, at once, so a signal sent as soon as the service says it
/// is listening is never missed (the default action would kill the process).
#[cfg(unix)]
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        tracing::info!("shutting down: finishing in-flight requests");
    })
}

#[cfg(not(unix))]
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down: finishing in-flight requests");
    })
}
