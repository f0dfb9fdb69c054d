//! The delivery worker: on every instance, a dispatcher takes the leases of
//! the subscriptions no live instance delivers, and runs one task per
//! subscription it holds.
//!
//! Each task delivers its subscription's events one at a time, in position
//! order: the next event only once the store recorded the last one as
//! delivered, so that a receiver sees them in order and none is skipped.
//! Its pace is its own: a receiver that hangs holds up its own subscription
//! (for at most the delivery timeout), never another one or a request.
//! At most `max_in_flight` deliveries are under way at once per instance.
//!
//! A lease lasts `lease` by the store's clock and is renewed every third of
//! it; an instance that dies leaves its leases to lapse, and the others take
//! them over. Every write of a task is conditional on its lease and on the
//! subscription's revision (see [`WebhookStore::advance`]), so a task that
//! lost its lease, or delivers a subscription an admin just changed, writes
//! nothing: the event is delivered again, under the same `webhook-id`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Semaphore;
use tokio::task::{AbortHandle, JoinSet};

use super::random_bytes;
use crate::domain::webhooks::{MAX_PAYLOAD_BYTES, RetrySchedule, Retrying, Status, payload};
use crate::services::StoreError;
use crate::services::feed::FeedHead;
use crate::services::ports::events::EventLog;
use crate::services::ports::webhooks::{
    Attempt, AttemptOutcome, DeliveryObserver, Outgoing, Progress, WebhookSender, WebhookStore,
};

/// How the worker runs.
#[derive(Clone, Debug)]
pub struct WorkerSettings {
    /// This instance's id: the holder of the leases it takes.
    pub instance: String,
    pub lease: Duration,
    /// How often the latest event's position is read while a subscription
    /// with nothing to deliver waits for it to move.
    pub poll: Duration,
    pub schedule: RetrySchedule,
    /// Deliveries under way at once on this instance.
    pub max_in_flight: usize,
}

/// What a subscription's task does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Deliver the next event at once.
    Now,
    /// Nothing to deliver: wait for a new event.
    Idle,
    /// A retry is due then.
    At(DateTime<Utc>),
    /// The subscription is gone, paused or disabled: stop delivering it.
    Stop,
}

/// The worker's parts, shared by the dispatcher and the tasks.
pub struct Worker<S, E, T, O> {
    pub store: S,
    pub events: Arc<E>,
    pub sender: T,
    pub observer: O,
    pub settings: WorkerSettings,
    in_flight: Semaphore,
    /// The latest event, read while a delivery waits for the next.
    head: FeedHead,
    /// The subscriptions of the last claim, and until when their leases
    /// surely hold (counted from before it was asked for): no delivery is
    /// started for another, or past then, so that a lease that may have
    /// lapsed (renewals failing) is not delivered under.
    held: std::sync::Mutex<(tokio::time::Instant, HashSet<String>)>,
}

impl<S, E, T, O> Worker<S, E, T, O>
where
    S: WebhookStore,
    E: EventLog,
    T: WebhookSender,
    O: DeliveryObserver,
{
    pub fn new(store: S, events: E, sender: T, observer: O, settings: WorkerSettings) -> Self {
        Self {
            in_flight: Semaphore::new(settings.max_in_flight.max(1)),
            head: FeedHead::new(settings.poll),
            held: std::sync::Mutex::new((tokio::time::Instant::now(), HashSet::new())),
            store,
            events: Arc::new(events),
            sender,
            observer,
            settings,
        }
    }

    /// Takes the leases of the subscriptions no live instance delivers, and
    /// renews this instance's; the subscriptions it holds.
    pub async fn claim(&self) -> Result<Vec<String>, StoreError> {
        let asked = tokio::time::Instant::now();
        let held = self
            .store
            .claim(&self.settings.instance, self.settings.lease)
            .await?;
        *self.held.lock().unwrap_or_else(|e| e.into_inner()) =
            (asked + self.settings.lease, held.iter().cloned().collect());
        Ok(held)
    }

    /// Whether this instance surely holds the subscription's lease.
    fn holds_lease(&self, id: &str) -> bool {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        tokio::time::Instant::now() < held.0 && held.1.contains(id)
    }

    /// One step of a subscription's delivery at `now`: delivers its next
    /// event (or the one being retried, once due) and records the attempt
    /// and the progress.
    pub async fn step(&self, id: &str, now: DateTime<Utc>) -> Result<Next, StoreError> {
        let Some(subscription) = self.store.get(id).await? else {
            return Ok(Next::Stop);
        };
        if subscription.status != Status::Active {
            return Ok(Next::Stop);
        }
        if let Some(retrying) = &subscription.retrying
            && retrying.next_try_at > now
        {
            return Ok(Next::At(retrying.next_try_at));
        }
        let head = self.events.head().await?;
        self.head.saw(head);
        let cursor = subscription.cursor;
        let revision = subscription.revision;
        let Some(event) = self
            .events
            .read(cursor, &subscription.types, 1)
            .await?
            .into_iter()
            .next()
        else {
            // Every event up to `head` (read before) is of other types: pass them.
            if head > cursor {
                let progress = Progress::Delivered { position: head };
                self.advance(id, revision, &progress).await?;
            }
            self.observer.lag(id, 0);
            return Ok(Next::Idle);
        };
        let attempt = match &subscription.retrying {
            Some(retrying) if retrying.position == event.position => retrying.attempts + 1,
            _ => 1,
        };
        if !self.holds_lease(id) {
            // Renewals are failing: wait for the next one (or for another
            // instance to take over).
            return Ok(Next::At(now + self.settings.lease / 3));
        }
        let body = payload(&event);
        let timestamp = now.timestamp();
        let outgoing = Outgoing {
            url: subscription.url.clone(),
            id: event.id.clone(),
            timestamp,
            signature: subscription.secret.sign(&event.id, timestamp, &body),
            body,
        };
        let started = tokio::time::Instant::now();
        let outcome = if outgoing.body.len() > MAX_PAYLOAD_BYTES {
            // Cannot happen with the events there are; failing (then
            // disabling) shows it, where skipping would lose the event.
            AttemptOutcome::Error(format!(
                "the payload is over {MAX_PAYLOAD_BYTES} bytes; not sent"
            ))
        } else {
            let _slot = self.in_flight.acquire().await;
            self.sender.send(outgoing).await
        };
        let duration = started.elapsed();
        let succeeded = outcome.succeeded();
        self.observer.attempted(id, succeeded);
        let progress = if succeeded {
            Progress::Delivered {
                position: event.position,
            }
        } else {
            let random = u64::from_le_bytes(random_bytes());
            match self.settings.schedule.after_failure(attempt, random) {
                Some(delay) => Progress::Retry(Retrying {
                    position: event.position,
                    attempts: attempt,
                    next_try_at: now + delay,
                }),
                None => Progress::Disable {
                    reason: format!(
                        "{attempt} attempts at delivering event {} failed; the last: {}",
                        event.position,
                        describe(&outcome)
                    ),
                },
            }
        };
        let record = Attempt {
            subscription: id.to_owned(),
            position: event.position,
            event_id: event.id.clone(),
            event_type: event.what.event_type(),
            attempt,
            attempted_at: now,
            outcome,
            duration,
            next_try_at: match &progress {
                Progress::Retry(retrying) => Some(retrying.next_try_at),
                _ => None,
            },
        };
        self.store.record_attempt(&record).await?;
        if !self.advance(id, revision, &progress).await? {
            // Changed meanwhile (or the lease was lost): read it again.
            return Ok(Next::Now);
        }
        Ok(match progress {
            Progress::Delivered { position } => {
                self.observer.lag(id, head.saturating_sub(position));
                Next::Now
            }
            Progress::Retry(retrying) => {
                self.observer.lag(id, head.saturating_sub(cursor));
                Next::At(retrying.next_try_at)
            }
            Progress::Disable { .. } => Next::Stop,
        })
    }

    async fn advance(
        &self,
        id: &str,
        revision: u64,
        progress: &Progress,
    ) -> Result<bool, StoreError> {
        let instance = &self.settings.instance;
        self.store.advance(id, instance, revision, progress).await
    }

    /// Delivers one subscription until it stops (or the task is aborted).
    async fn deliver(self: Arc<Self>, id: String) -> String {
        // A wait is cut short now and then to notice an admin's change.
        let recheck = self.settings.poll.max(Duration::from_millis(10)) * 4;
        loop {
            let next = match self.step(&id, Utc::now()).await {
                Ok(next) => next,
                Err(error) => {
                    tracing::warn!(subscription = %id, %error, "webhook delivery step failed; will retry");
                    Next::At(Utc::now() + recheck)
                }
            };
            match next {
                Next::Now => {}
                Next::Idle => {
                    let until = tokio::time::Instant::now() + recheck;
                    self.head
                        .wait_past(&self.events, self.head.latest(), until)
                        .await;
                }
                Next::At(due) => {
                    let wait = (due - Utc::now()).to_std().unwrap_or_default();
                    tokio::time::sleep(wait.min(recheck)).await;
                }
                Next::Stop => {
                    if let Err(error) = self.store.release(&id, &self.settings.instance).await {
                        tracing::warn!(subscription = %id, %error, "cannot release a webhook lease");
                    }
                    return id;
                }
            }
        }
    }

    /// Hands this instance's subscriptions over at once (it is stopping,
    /// and its tasks were stopped): the others need not wait for the leases
    /// to lapse.
    pub async fn release_all(&self) -> Result<(), StoreError> {
        *self.held.lock().unwrap_or_else(|e| e.into_inner()) =
            (tokio::time::Instant::now(), HashSet::new());
        self.store.release_all(&self.settings.instance).await
    }

    /// Runs the dispatcher until dropped: takes and renews leases, starts a
    /// task per subscription held, and stops those whose lease was lost.
    /// Dropping it stops every task.
    pub async fn run(self: Arc<Self>) {
        let mut tasks: JoinSet<String> = JoinSet::new();
        let mut running: HashMap<String, AbortHandle> = HashMap::new();
        let mut ticks = tokio::time::interval(self.settings.lease / 3);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            while let Some(done) = tasks.try_join_next() {
                if let Ok(id) = done {
                    running.remove(&id);
                    self.observer.forget(&id);
                }
            }
            let held = match self.claim().await {
                Ok(held) => held,
                Err(error) => {
                    tracing::warn!(%error, "cannot renew webhook leases; will retry");
                    continue;
                }
            };
            running.retain(|id, task| {
                let keep = held.contains(id);
                if !keep {
                    // Another instance holds it now.
                    task.abort();
                    self.observer.forget(id);
                }
                keep
            });
            for id in held {
                if let std::collections::hash_map::Entry::Vacant(free) = running.entry(id) {
                    let id = free.key().clone();
                    free.insert(tasks.spawn(Arc::clone(&self).deliver(id)));
                }
            }
        }
    }
}

fn describe(outcome: &AttemptOutcome) -> String {
    match outcome {
        AttemptOutcome::Status(status) => format!("HTTP {status}"),
        AttemptOutcome::Error(error) => error.clone(),
    }
}
