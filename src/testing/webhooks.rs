//! In-memory fakes for the webhook use cases and the delivery worker: the
//! store, the event log, a sender that answers as scripted and keeps what it
//! was sent, and an observer that counts.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::domain::events::{Event, EventType};
use crate::domain::webhooks::{Status, Subscription};
use crate::services::StoreError;
use crate::services::ports::events::EventLog;
use crate::services::ports::webhooks::{
    Attempt, AttemptKey, AttemptOutcome, DeliveryObserver, ListedAttempt, Outgoing, Progress,
    ResolveError, SubscriptionChange, WebhookSender, WebhookStore,
};

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug)]
struct Lease {
    holder: String,
    until: Instant,
}

#[derive(Default)]
struct Stored {
    subscriptions: BTreeMap<String, Subscription>,
    leases: HashMap<String, Lease>,
    attempts: Vec<(AttemptKey, Attempt)>,
    sequence: u64,
}

/// Subscriptions and attempts behind one lock; leases by this process's clock.
#[derive(Clone, Default)]
pub struct InMemoryWebhooks(Arc<Mutex<Stored>>);

impl InMemoryWebhooks {
    pub fn new() -> Self {
        Self::default()
    }

    /// Who holds the subscription's lease, if anyone (lapsed or not).
    pub fn holder(&self, id: &str) -> Option<String> {
        lock(&self.0).leases.get(id).map(|l| l.holder.clone())
    }
}

impl WebhookStore for InMemoryWebhooks {
    async fn create(&self, subscription: &Subscription) -> Result<(), StoreError> {
        lock(&self.0)
            .subscriptions
            .insert(subscription.id.clone(), subscription.clone());
        Ok(())
    }

    async fn list(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Subscription>, StoreError> {
        Ok(lock(&self.0)
            .subscriptions
            .values()
            .filter(|s| after.is_none_or(|after| s.id.as_str() > after))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn get(&self, id: &str) -> Result<Option<Subscription>, StoreError> {
        Ok(lock(&self.0).subscriptions.get(id).cloned())
    }

    async fn change(
        &self,
        id: &str,
        change: &SubscriptionChange,
    ) -> Result<Option<Subscription>, StoreError> {
        let mut stored = lock(&self.0);
        let Some(subscription) = stored.subscriptions.get_mut(id) else {
            return Ok(None);
        };
        if let Some(url) = &change.url {
            subscription.url = url.clone();
        }
        if let Some(types) = &change.types {
            subscription.types = types.clone();
        }
        if let Some(description) = &change.description {
            subscription.description = description.clone();
        }
        if let Some(status) = change.status {
            subscription.status = status;
            subscription.disabled_reason = None;
            subscription.retrying = None;
            subscription.revision += 1;
        }
        Ok(Some(subscription.clone()))
    }

    async fn delete(&self, id: &str) -> Result<bool, StoreError> {
        let mut stored = lock(&self.0);
        stored.attempts.retain(|(_, a)| a.subscription != id);
        stored.leases.remove(id);
        Ok(stored.subscriptions.remove(id).is_some())
    }

    async fn rewind(&self, id: &str, cursor: u64) -> Result<Option<Subscription>, StoreError> {
        let mut stored = lock(&self.0);
        let Some(subscription) = stored.subscriptions.get_mut(id) else {
            return Ok(None);
        };
        subscription.cursor = cursor;
        subscription.status = Status::Active;
        subscription.disabled_reason = None;
        subscription.retrying = None;
        subscription.revision += 1;
        Ok(Some(subscription.clone()))
    }

    async fn attempts(
        &self,
        id: &str,
        after: Option<AttemptKey>,
        limit: usize,
    ) -> Result<Vec<ListedAttempt>, StoreError> {
        let stored = lock(&self.0);
        let mut attempts: Vec<ListedAttempt> = stored
            .attempts
            .iter()
            .filter(|(_, a)| a.subscription == id)
            .map(|(key, attempt)| ListedAttempt {
                key: *key,
                attempt: attempt.clone(),
            })
            .collect();
        attempts.sort_by_key(|a| std::cmp::Reverse((a.key.position, a.key.sequence)));
        Ok(attempts
            .into_iter()
            .filter(|a| {
                after.is_none_or(|after| {
                    (a.key.position, a.key.sequence) < (after.position, after.sequence)
                })
            })
            .take(limit)
            .collect())
    }

    async fn claim(&self, instance: &str, lease: Duration) -> Result<Vec<String>, StoreError> {
        let mut stored = lock(&self.0);
        let now = Instant::now();
        let active: Vec<String> = stored
            .subscriptions
            .values()
            .filter(|s| s.status == Status::Active)
            .map(|s| s.id.clone())
            .collect();
        let mut held = Vec::new();
        for id in active {
            let free = match stored.leases.get(&id) {
                None => true,
                Some(current) => current.holder == instance || current.until < now,
            };
            if free {
                stored.leases.insert(
                    id.clone(),
                    Lease {
                        holder: instance.to_owned(),
                        until: now + lease,
                    },
                );
                held.push(id);
            }
        }
        Ok(held)
    }

    async fn release(&self, id: &str, instance: &str) -> Result<(), StoreError> {
        let mut stored = lock(&self.0);
        if stored.leases.get(id).is_some_and(|l| l.holder == instance) {
            stored.leases.remove(id);
        }
        Ok(())
    }

    async fn release_all(&self, instance: &str) -> Result<(), StoreError> {
        lock(&self.0)
            .leases
            .retain(|_, lease| lease.holder != instance);
        Ok(())
    }

    async fn record_attempt(&self, attempt: &Attempt) -> Result<(), StoreError> {
        let mut stored = lock(&self.0);
        stored.sequence += 1;
        let key = AttemptKey {
            position: attempt.position,
            sequence: stored.sequence,
        };
        stored.attempts.push((key, attempt.clone()));
        Ok(())
    }

    async fn advance(
        &self,
        id: &str,
        instance: &str,
        revision: u64,
        progress: &Progress,
    ) -> Result<bool, StoreError> {
        let mut stored = lock(&self.0);
        let holds = stored.leases.get(id).is_some_and(|l| l.holder == instance);
        let Some(subscription) = stored.subscriptions.get_mut(id) else {
            return Ok(false);
        };
        if !holds || subscription.revision != revision {
            return Ok(false);
        }
        match progress {
            Progress::Delivered { position } => {
                subscription.cursor = *position;
                subscription.retrying = None;
            }
            Progress::Retry(retrying) => subscription.retrying = Some(retrying.clone()),
            Progress::Disable { reason } => {
                subscription.status = Status::Disabled;
                subscription.disabled_reason = Some(reason.clone());
            }
        }
        Ok(true)
    }
}

/// The recorded events, appended by the test, and how often the head was read.
#[derive(Clone, Default)]
pub struct InMemoryEventLog {
    events: Arc<Mutex<Vec<Event>>>,
    head_reads: Arc<AtomicUsize>,
}

impl InMemoryEventLog {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records an event at the next position.
    pub fn append(&self, id: &str, what: crate::domain::events::Happened) -> u64 {
        let mut events = lock(&self.events);
        let position = events.len() as u64 + 1;
        events.push(Event {
            position,
            id: id.to_owned(),
            occurred_at: chrono::Utc::now(),
            what,
        });
        position
    }

    pub fn head_reads(&self) -> usize {
        self.head_reads.load(Ordering::SeqCst)
    }
}

impl EventLog for InMemoryEventLog {
    async fn read(
        &self,
        after: u64,
        types: &[EventType],
        limit: u32,
    ) -> Result<Vec<Event>, StoreError> {
        Ok(lock(&self.events)
            .iter()
            .filter(|e| e.position > after)
            .filter(|e| types.is_empty() || types.contains(&e.what.event_type()))
            .take(limit as usize)
            .cloned()
            .collect())
    }

    async fn head(&self) -> Result<u64, StoreError> {
        self.head_reads.fetch_add(1, Ordering::SeqCst);
        Ok(lock(&self.events).len() as u64)
    }
}

/// Answers each URL's deliveries from its script (then 200), keeps every
/// delivery, and resolves names from a table.
#[derive(Clone, Default)]
pub struct FakeSender {
    scripts: Arc<Mutex<HashMap<String, VecDeque<AttemptOutcome>>>>,
    sent: Arc<Mutex<Vec<Outgoing>>>,
    names: Arc<Mutex<HashMap<String, Vec<IpAddr>>>>,
}

impl FakeSender {
    pub fn new() -> Self {
        Self::default()
    }

    /// The next deliveries to `url` get these outcomes, in order.
    pub fn script(&self, url: &str, outcomes: impl IntoIterator<Item = AttemptOutcome>) {
        lock(&self.scripts)
            .entry(url.to_owned())
            .or_default()
            .extend(outcomes);
    }

    /// `host` resolves to `addresses`.
    pub fn resolves(&self, host: &str, addresses: &[&str]) {
        let addresses = addresses.iter().map(|a| a.parse().unwrap()).collect();
        lock(&self.names).insert(host.to_owned(), addresses);
    }

    pub fn sent(&self) -> Vec<Outgoing> {
        lock(&self.sent).clone()
    }
}

impl WebhookSender for FakeSender {
    async fn send(&self, delivery: Outgoing) -> AttemptOutcome {
        let outcome = lock(&self.scripts)
            .get_mut(&delivery.url)
            .and_then(VecDeque::pop_front)
            .unwrap_or(AttemptOutcome::Status(200));
        lock(&self.sent).push(delivery);
        outcome
    }

    async fn resolve(&self, host: &str, _port: u16) -> Result<Vec<IpAddr>, ResolveError> {
        lock(&self.names)
            .get(host)
            .cloned()
            .ok_or_else(|| ResolveError {
                host: host.to_owned(),
                reason: "unknown name".to_owned(),
            })
    }
}

/// (deliveries made, failures, lag) of a subscription.
type Counts = (u64, u64, u64);

/// Counts what the worker reports.
#[derive(Clone, Default)]
pub struct CountingObserver(Arc<Mutex<HashMap<String, Counts>>>);

impl CountingObserver {
    pub fn of(&self, id: &str) -> Counts {
        lock(&self.0).get(id).copied().unwrap_or_default()
    }
}

impl DeliveryObserver for CountingObserver {
    fn attempted(&self, subscription: &str, succeeded: bool) {
        let mut counts = lock(&self.0);
        let entry = counts.entry(subscription.to_owned()).or_default();
        if succeeded {
            entry.0 += 1;
        } else {
            entry.1 += 1;
        }
    }

    fn lag(&self, subscription: &str, events: u64) {
        lock(&self.0).entry(subscription.to_owned()).or_default().2 = events;
    }

    fn forget(&self, _subscription: &str) {}
}
