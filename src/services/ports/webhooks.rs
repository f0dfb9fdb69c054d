//! What the webhook use cases and the delivery worker need: the
//! subscriptions and their delivery attempts in a store, and a way to POST a
//! delivery (and to resolve a receiver's host).

use std::future::Future;
use std::net::IpAddr;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::domain::events::EventType;
use crate::domain::webhooks::{Retrying, Status, Subscription};
use crate::services::StoreError;

/// A change an admin makes to a subscription; `None` leaves a field as it is.
#[derive(Clone, Debug, Default)]
pub struct SubscriptionChange {
    pub url: Option<String>,
    pub types: Option<Vec<EventType>>,
    /// `Some(None)` removes the description.
    pub description: Option<Option<String>>,
    /// Paused or active; making a disabled subscription active re-enables it.
    pub status: Option<Status>,
}

/// One attempt at delivering one event to one subscription.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempt {
    pub subscription: String,
    pub position: u64,
    pub event_id: String,
    pub event_type: EventType,
    /// 1 for the first attempt at this event (counted again from 1 after a
    /// replay or a re-enabling).
    pub attempt: u32,
    pub attempted_at: DateTime<Utc>,
    pub outcome: AttemptOutcome,
    pub duration: Duration,
    /// When the event is tried again, after a failure that will be retried.
    pub next_try_at: Option<DateTime<Utc>>,
}

/// What a receiver answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// An HTTP status (2xx is a success, anything else a failure).
    Status(u16),
    /// No answer: the reason (timeout, refused connection, refused address…).
    Error(String),
}

impl AttemptOutcome {
    pub fn succeeded(&self) -> bool {
        matches!(self, Self::Status(200..=299))
    }
}

/// Where a listing of attempts resumes: after this attempt (newest first).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttemptKey {
    pub position: u64,
    pub sequence: u64,
}

/// A stored attempt and its key in the listing.
#[derive(Clone, Debug)]
pub struct ListedAttempt {
    pub key: AttemptKey,
    pub attempt: Attempt,
}

/// What the worker writes after an attempt, if the subscription is still as
/// it read it (same `revision`, lease still its own).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Delivered, or skipped (not of the subscription's types): the cursor
    /// moves to `position`.
    Delivered { position: u64 },
    /// Failed; tried again at `retrying.next_try_at`.
    Retry(Retrying),
    /// Failed for the last time: the subscription is disabled.
    Disable { reason: String },
}

/// The subscriptions, their delivery attempts, and which instance delivers
/// each (a lease by the store's clock).
pub trait WebhookStore: Send + Sync + 'static {
    fn create(
        &self,
        subscription: &Subscription,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// At most `limit` subscriptions with an id after `after`, by id.
    fn list(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Subscription>, StoreError>> + Send;

    fn get(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<Subscription>, StoreError>> + Send;

    /// Applies the change; the subscription as changed, or none if there is
    /// no such subscription. A status change counts a revision (a delivery
    /// under way then records nothing) and clears the retry under way, so a
    /// re-enabled subscription starts again with the event that failed. A
    /// new URL, types or description apply from the next delivery.
    fn change(
        &self,
        id: &str,
        change: &SubscriptionChange,
    ) -> impl Future<Output = Result<Option<Subscription>, StoreError>> + Send;

    /// Whether there was such a subscription. Its attempts go with it.
    fn delete(&self, id: &str) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Sets the cursor to `cursor`, makes the subscription active and clears
    /// the retry under way (and counts a revision); none if there is no such
    /// subscription.
    fn rewind(
        &self,
        id: &str,
        cursor: u64,
    ) -> impl Future<Output = Result<Option<Subscription>, StoreError>> + Send;

    /// At most `limit` attempts of the subscription, newest first, after `after`.
    fn attempts(
        &self,
        id: &str,
        after: Option<AttemptKey>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<ListedAttempt>, StoreError>> + Send;

    // The delivery worker's steps.

    /// Takes the lease of every active subscription whose lease is free or
    /// lapsed, and renews those `instance` holds, for `lease`; the ids it holds.
    fn claim(
        &self,
        instance: &str,
        lease: Duration,
    ) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;

    /// Gives the lease up (the subscription was paused, disabled or deleted,
    /// or this instance stops).
    fn release(
        &self,
        id: &str,
        instance: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Gives up every lease `instance` holds (it is stopping).
    fn release_all(&self, instance: &str) -> impl Future<Output = Result<(), StoreError>> + Send;

    fn record_attempt(
        &self,
        attempt: &Attempt,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Writes the progress if the subscription is still at `revision` and
    /// `instance` still holds its lease; whether it did.
    fn advance(
        &self,
        id: &str,
        instance: &str,
        revision: u64,
        progress: &Progress,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

/// One signed delivery, ready to POST.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub url: String,
    /// `webhook-id`: the event's id, the same on every attempt.
    pub id: String,
    /// `webhook-timestamp`: unix seconds, of this attempt.
    pub timestamp: i64,
    /// `webhook-signature`.
    pub signature: String,
    pub body: Vec<u8>,
}

/// Why a host's addresses are unknown.
#[derive(Debug, thiserror::Error)]
#[error("cannot resolve {host}: {reason}")]
pub struct ResolveError {
    pub host: String,
    pub reason: String,
}

/// POSTs deliveries. The sender checks every address it connects to with
/// the address rule (`domain::webhooks::TargetPolicy`) and times each
/// delivery out.
pub trait WebhookSender: Send + Sync + 'static {
    /// The receiver's status, or why there was none.
    fn send(&self, delivery: Outgoing) -> impl Future<Output = AttemptOutcome> + Send;

    /// The addresses of `host`.
    fn resolve(
        &self,
        host: &str,
        port: u16,
    ) -> impl Future<Output = Result<Vec<IpAddr>, ResolveError>> + Send;
}

/// Where the worker reports what it did, per subscription (`/metrics`).
pub trait DeliveryObserver: Send + Sync + 'static {
    /// An attempt succeeded (`true`) or failed.
    fn attempted(&self, subscription: &str, succeeded: bool);
    /// How many events the subscription is behind the latest one.
    fn lag(&self, subscription: &str, events: u64);
    /// This instance no longer delivers the subscription.
    fn forget(&self, subscription: &str);
}
