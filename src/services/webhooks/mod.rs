//! The webhook use cases: an admin's subscriptions (create, list, read,
//! change, delete, replay, their delivery attempts) and the delivery worker
//! ([`worker`]).

pub mod worker;

#[cfg(test)]
mod tests;

use crate::domain::events::EventType;
use crate::domain::webhooks::{
    Host, SigningSecret, Status, Subscription, Target, TargetError, TargetPolicy,
};
use crate::services::StoreError;
use crate::services::ports::events::EventLog;
use crate::services::ports::webhooks::{
    AttemptKey, ListedAttempt, SubscriptionChange, WebhookSender, WebhookStore,
};

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("Webhook {0} not found")]
    NotFound(String),
    #[error("Invalid webhook: {0}")]
    Target(#[from] TargetError),
    #[error("from_position {from} is past the latest event ({latest})")]
    PastTheEnd { from: u64, latest: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What an admin asks for.
#[derive(Clone, Debug)]
pub struct NewSubscription {
    pub url: String,
    pub types: Vec<EventType>,
    pub description: Option<String>,
}

/// Refuses a URL that is malformed, not https where required, or whose host
/// is (or resolves to) an internal address.
pub async fn check_target<T: WebhookSender>(
    sender: &T,
    policy: TargetPolicy,
    url: &str,
) -> Result<Target, TargetError> {
    let target = Target::parse(url, policy)?;
    // With private targets allowed every address is, so no lookup is needed.
    if let (Host::Name(name), false) = (target.host()?, policy.allow_private) {
        let addresses = sender
            .resolve(&name, target.port())
            .await
            .map_err(|_| TargetError::Unresolved(name.clone()))?;
        policy
            .check_addresses(&addresses)
            .map_err(|error| match error {
                TargetError::Unresolved(_) => TargetError::Unresolved(name),
                other => other,
            })?;
    }
    Ok(target)
}

/// A new subscription with a new secret: it receives the events recorded
/// from now on.
pub async fn create<S: WebhookStore, E: EventLog, T: WebhookSender>(
    store: &S,
    events: &E,
    sender: &T,
    policy: TargetPolicy,
    new: NewSubscription,
) -> Result<Subscription, WebhookError> {
    let target = check_target(sender, policy, &new.url).await?;
    let mut types = new.types;
    types.sort_unstable();
    types.dedup();
    let subscription = Subscription {
        id: new_id(),
        url: target.url.to_string(),
        types,
        description: new.description,
        status: Status::Active,
        disabled_reason: None,
        cursor: events.head().await?,
        retrying: None,
        revision: 0,
        created_at: chrono::Utc::now(),
        secret: SigningSecret::from_random(random_bytes()),
    };
    store.create(&subscription).await?;
    Ok(subscription)
}

/// Random bytes from the operating system.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0; N];
    // The OS random source does not fail on any platform allot runs on;
    // should it, the bytes would be predictable, so stop instead.
    getrandom::fill(&mut bytes).expect("the operating system's random source");
    bytes
}

fn new_id() -> String {
    let bytes: [u8; 12] = random_bytes();
    let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    format!("wh_{hex}")
}

/// A page of subscriptions, by id.
pub async fn list<S: WebhookStore>(
    store: &S,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<Subscription>, StoreError> {
    store.list(after, limit).await
}

pub async fn get<S: WebhookStore>(store: &S, id: &str) -> Result<Subscription, WebhookError> {
    store
        .get(id)
        .await?
        .ok_or_else(|| WebhookError::NotFound(id.to_owned()))
}

/// Changes a subscription; a new URL is checked as at creation.
pub async fn change<S: WebhookStore, T: WebhookSender>(
    store: &S,
    sender: &T,
    policy: TargetPolicy,
    id: &str,
    mut change: SubscriptionChange,
) -> Result<Subscription, WebhookError> {
    if let Some(url) = &change.url {
        change.url = Some(check_target(sender, policy, url).await?.url.to_string());
    }
    if let Some(types) = &mut change.types {
        types.sort_unstable();
        types.dedup();
    }
    store
        .change(id, &change)
        .await?
        .ok_or_else(|| WebhookError::NotFound(id.to_owned()))
}

pub async fn delete<S: WebhookStore>(store: &S, id: &str) -> Result<(), WebhookError> {
    if store.delete(id).await? {
        Ok(())
    } else {
        Err(WebhookError::NotFound(id.to_owned()))
    }
}

/// Delivers again every event of the subscription's types from
/// `from_position` on (the events still kept), and re-enables the
/// subscription if it was disabled or paused.
pub async fn replay<S: WebhookStore, E: EventLog>(
    store: &S,
    events: &E,
    id: &str,
    from_position: u64,
) -> Result<Subscription, WebhookError> {
    // Past the end, the events up to the position would be passed over.
    let latest = events.head().await?;
    if from_position > latest.saturating_add(1) {
        return Err(WebhookError::PastTheEnd {
            from: from_position,
            latest,
        });
    }
    store
        .rewind(id, from_position.saturating_sub(1))
        .await?
        .ok_or_else(|| WebhookError::NotFound(id.to_owned()))
}

/// A page of the subscription's delivery attempts, newest first.
pub async fn attempts<S: WebhookStore>(
    store: &S,
    id: &str,
    after: Option<AttemptKey>,
    limit: usize,
) -> Result<Vec<ListedAttempt>, WebhookError> {
    if store.get(id).await?.is_none() {
        return Err(WebhookError::NotFound(id.to_owned()));
    }
    Ok(store.attempts(id, after, limit).await?)
}
