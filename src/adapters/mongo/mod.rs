//! MongoDB: connecting, preparing collections, and the repositories.

pub mod allocations;
pub mod events;
pub mod instances;
pub mod layout;
pub mod login_failures;
pub mod revocations;
pub mod rotations;
pub mod sessions;
pub mod users;
pub mod webhooks;

use std::time::Duration;

use mongodb::bson::doc;
use mongodb::error::{TRANSIENT_TRANSACTION_ERROR, UNKNOWN_TRANSACTION_COMMIT_RESULT};
use mongodb::options::{ClientOptions, IndexOptions};
use mongodb::{Client, ClientSession, Database, IndexModel};
use secrecy::ExposeSecret;

use crate::services::ports::health::Readiness;

/// How long a step retries transactions that lost to a concurrent one.
pub const TRANSACTION_RETRY_FOR: Duration = Duration::from_secs(10);

/// What a transaction attempt decided.
pub enum Finish<T> {
    Commit(T),
    Abort(T),
}

/// Runs `attempt` (given a `ClientSession` in a transaction) as one
/// transaction in a session of `instance` (so that survivors can abort it
/// should this process die): commits or aborts as it says, retries the whole
/// attempt on transient errors (a WriteConflict with a concurrent
/// transaction) for up to [`TRANSACTION_RETRY_FOR`], calling `on_retry`
/// before each retry, and the commit on an unknown commit result (see
/// [`commit`]).
///
/// Each attempt, and each commit, waits at most `limit` for the database
/// (also enforced on the server: maxTimeMS, maxCommitTimeMS); past it, the
/// error is a [`TimedOut`](crate::adapters::deadline::TimedOut).
///
/// Where the future must be `Send` (every port method's), `attempt` owns what
/// it captures (`async move`, with clones of `self` and of borrowed
/// arguments): an async closure that captures a reference fails to compile
/// there (E0477, rust-lang/rust#149407).
pub async fn in_transaction<T>(
    instance: &instances::Instance,
    limit: Duration,
    mut on_retry: impl FnMut(),
    mut attempt: impl AsyncFnMut(&mut ClientSession) -> mongodb::error::Result<Finish<T>>,
) -> mongodb::error::Result<T> {
    let deadline = tokio::time::Instant::now() + TRANSACTION_RETRY_FOR;
    let mut pause = Duration::from_millis(1);
    let timed_out = |operation| {
        mongodb::error::Error::custom(crate::adapters::deadline::TimedOut { operation, limit })
    };
    loop {
        let (mut session, slot) = instance.transaction(limit).await?;
        let outcome = match tokio::time::timeout(limit, attempt(&mut session)).await {
            Ok(outcome) => outcome,
            Err(_elapsed) => return Err(timed_out("a transaction")),
        };
        let retry = match outcome {
            Ok(Finish::Commit(value)) => {
                match tokio::time::timeout(limit, commit(&mut session)).await {
                    Ok(Ok(())) => {
                        slot.reuse(session);
                        return Ok(value);
                    }
                    Ok(Err(error)) => error,
                    Err(_elapsed) => return Err(timed_out("a commit")),
                }
            }
            Ok(Finish::Abort(value)) => {
                if abort(&mut session, limit).await {
                    slot.reuse(session);
                }
                return Ok(value);
            }
            Err(error) => {
                if abort(&mut session, limit).await {
                    slot.reuse(session);
                }
                error
            }
        };
        if !retry.contains_label(TRANSIENT_TRANSACTION_ERROR)
            || tokio::time::Instant::now() + pause >= deadline
        {
            return Err(retry);
        }
        on_retry();
        tokio::time::sleep(jitter(pause)).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Aborts the session's transaction within `limit`; whether it did (then the
/// session may run another).
async fn abort(session: &mut ClientSession, limit: Duration) -> bool {
    matches!(
        tokio::time::timeout(limit, session.abort_transaction()).await,
        Ok(Ok(()))
    )
}

/// Commits, retrying while the outcome is unknown (a commit is idempotent).
pub async fn commit(session: &mut ClientSession) -> mongodb::error::Result<()> {
    let mut attempts = 0;
    loop {
        match session.commit_transaction().await {
            Err(error)
                if error.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT) && attempts < 3 =>
            {
                attempts += 1;
            }
            outcome => return outcome,
        }
    }
}

/// Somewhere between half and all of `pause`, so that processes that
/// conflicted once do not retry in lockstep.
pub fn jitter(pause: Duration) -> Duration {
    let nanos = u64::from(chrono::Utc::now().timestamp_subsec_nanos());
    pause / 2 + Duration::from_nanos(nanos % (pause.as_nanos() as u64 / 2 + 1))
}

use crate::config::MongoSettings;

/// A TTL index on `expires_at`: the server deletes each document once that
/// instant has passed (readers never rely on when it does).
pub fn expiry_index() -> IndexModel {
    let ttl = IndexOptions::builder()
        .expire_after(Duration::ZERO)
        .name("expires_at_ttl".to_owned())
        .build();
    IndexModel::builder()
        .keys(doc! { "expires_at": 1 })
        .options(ttl)
        .build()
}

/// `maxTimeMS` of a repository built without `with_operation_timeout`.
pub const DEFAULT_MAX_TIME: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum MongoError {
    #[error("invalid MongoDB URI {uri}: {source}")]
    InvalidUri {
        uri: String,
        #[source]
        source: mongodb::error::Error,
    },
    #[error(
        "MongoDB at {uri} is a standalone server, but allot needs transactions: run it as a \
         replica set (a single node will do: start mongod with --replSet rs0, then run \
         rs.initiate() once; docker-compose.yml does both)"
    )]
    NotAReplicaSet { uri: String },
    #[error(transparent)]
    Layout(#[from] layout::LayoutError),
    #[error("MongoDB at {uri} is unreachable after {waited_secs} s: {source}")]
    Unreachable {
        uri: String,
        waited_secs: u64,
        #[source]
        source: mongodb::error::Error,
    },
}

/// Builds a client with bounded timeouts. The driver connects lazily, so this
/// succeeds even while the server is down.
pub async fn client(settings: &MongoSettings) -> Result<Client, MongoError> {
    let invalid = |source| MongoError::InvalidUri {
        uri: settings.redacted_uri(),
        source,
    };
    let mut options = ClientOptions::parse(settings.uri.expose_secret())
        .await
        .map_err(invalid)?;
    options.app_name.get_or_insert_with(|| "allot".to_owned());
    options.connect_timeout = Some(Duration::from_millis(settings.connect_timeout_ms));
    options.server_selection_timeout =
        Some(Duration::from_millis(settings.server_selection_timeout_ms));
    Client::with_options(options).map_err(invalid)
}

/// Round-trips a `ping` to the server.
pub async fn ping(database: &Database) -> mongodb::error::Result<()> {
    database.run_command(doc! { "ping": 1 }).await.map(drop)
}

/// `/ready` pings the database the repositories use.
impl Readiness for Database {
    async fn ping(&self) -> Result<(), crate::services::StoreError> {
        Ok(ping(self).await?)
    }
}

/// Each collection with the indexes it needs, declared next to the code that
/// queries it.
pub fn required_indexes() -> impl Iterator<Item = (&'static str, Vec<IndexModel>)> {
    [
        users::indexes(),
        rotations::indexes(),
        login_failures::indexes(),
    ]
    .into_iter()
    .chain(revocations::indexes())
    .chain(allocations::indexes())
    .chain(webhooks::indexes())
    .chain(events::indexes())
}

/// Whether the server can run multi-document transactions: a replica-set
/// member or a sharded cluster's router, not a standalone `mongod`.
pub async fn supports_transactions(database: &Database) -> mongodb::error::Result<bool> {
    let hello = database.run_command(doc! { "hello": 1 }).await?;
    Ok(hello.contains_key("setName") || hello.get_str("msg") == Ok("isdbgrid"))
}

/// Whether a write failed on a unique index (E11000).
pub fn is_duplicate_key(error: &mongodb::error::Error) -> bool {
    use mongodb::error::{ErrorKind, WriteFailure};
    match error.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(write)) => write.code == 11000,
        ErrorKind::Command(command) => command.code == 11000,
        _ => false,
    }
}

impl From<mongodb::error::Error> for crate::services::StoreError {
    fn from(error: mongodb::error::Error) -> Self {
        Self(Box::new(error))
    }
}

/// Creates the required indexes, one command per collection; a no-op for
/// those that already exist.
pub async fn ensure_indexes(database: &Database) -> mongodb::error::Result<()> {
    for (collection, indexes) in required_indexes() {
        database
            .collection::<mongodb::bson::Document>(collection)
            .create_indexes(indexes)
            .await?;
    }
    Ok(())
}

/// Waits for the server (ping), checks that it runs transactions and that the
/// data is in this version's layout, then creates the indexes; retrying with capped backoff for up to
/// `startup_retry_secs`, and logs each failed attempt with the redacted URI.
pub async fn prepare(settings: &MongoSettings, database: &Database) -> Result<(), MongoError> {
    let started = tokio::time::Instant::now();
    let deadline = started + Duration::from_secs(settings.startup_retry_secs);
    let mut delay = Duration::from_millis(250);
    loop {
        let attempt = async {
            ping(database).await?;
            supports_transactions(database).await
        };
        match attempt.await {
            Ok(false) => {
                return Err(MongoError::NotAReplicaSet {
                    uri: settings.redacted_uri(),
                });
            }
            Ok(true) => {
                layout::check(database).await?;
                let prepared = async {
                    ensure_indexes(database).await?;
                    events::prepare(database).await
                };
                return prepared.await.map_err(|source| MongoError::Unreachable {
                    uri: settings.redacted_uri(),
                    waited_secs: started.elapsed().as_secs(),
                    source,
                });
            }
            Err(source) if tokio::time::Instant::now() + delay >= deadline => {
                return Err(MongoError::Unreachable {
                    uri: settings.redacted_uri(),
                    waited_secs: started.elapsed().as_secs(),
                    source,
                });
            }
            Err(error) => {
                tracing::warn!(
                    uri = %settings.redacted_uri(),
                    %error,
                    retry_in_ms = delay.as_millis() as u64,
                    "MongoDB is not reachable yet"
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}
