//! A time limit on every store operation, measured for `/metrics`.
//!
//! `Deadline<R>` wraps a repository and gives each of its operations at most
//! `mongo.operation_timeout_ms`. The MongoDB repositories also send that
//! limit to the server (`maxTimeMS`), but a server that stops answering
//! altogether (frozen, partitioned) would otherwise hold a request for as
//! long as the driver waits, which has no bound of its own.
//!
//! The steps that write a sku's stock first queue, which is not waiting for
//! the database: an allocation for its group, the others for their turn on
//! the sku (one transaction per sku at a time in a process). Those the
//! repository bounds itself (`MongoAllocations`: a request's wait for its
//! group; each transaction attempt and commit), and here they are only
//! measured.

use std::future::Future;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::domain::allocation::{AcknowledgedLine, Batch, OrderLine, Requester};
use crate::domain::throttle::{Admissible, ThrottlePolicy};
use crate::domain::user::{Role, User, Username};
use crate::domain::webhooks::Subscription;
use crate::metrics::metrics;
use crate::services::StoreError;
use crate::services::ports::accounts::{AddUserError, UserRepository, Written};
use crate::services::ports::allocation::{
    AddBatchError, AllocateStep, AllocationRepository, Backorder, BatchLine, FillStep, Stock,
};
use crate::services::ports::login_throttle::{Counted, Counter, GiveBack, LoginThrottle};
use crate::services::ports::tokens::{
    PairIds, RefreshRotations, Revocation, RevocationStore, Rotation,
};
use crate::services::ports::webhooks::{
    Attempt, AttemptKey, ListedAttempt, Progress, SubscriptionChange, WebhookStore,
};

/// The store did not answer within the time limit.
#[derive(Debug, thiserror::Error)]
#[error("the database did not answer {operation} within {limit:?}")]
pub struct TimedOut {
    pub operation: &'static str,
    pub limit: Duration,
}

/// A repository whose every operation ends within `limit`.
#[derive(Clone)]
pub struct Deadline<R> {
    inner: R,
    limit: Duration,
}

impl<R> Deadline<R> {
    pub fn new(inner: R, limit: Duration) -> Self {
        Self { inner, limit }
    }

    pub fn inner(&self) -> &R {
        &self.inner
    }

    /// Runs an operation the inner repository bounds itself, recording its
    /// latency and whether it failed.
    async fn measure<T, E>(
        &self,
        operation: &'static str,
        work: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let started = Instant::now();
        let result = work.await;
        metrics().db_operation(operation, started.elapsed(), result.is_err());
        result
    }

    /// Runs one operation within the limit, recording its latency and
    /// whether it failed.
    async fn run<T, E>(
        &self,
        operation: &'static str,
        work: impl Future<Output = Result<T, E>>,
        timed_out: impl FnOnce(TimedOut) -> E,
    ) -> Result<T, E> {
        let started = Instant::now();
        match tokio::time::timeout(self.limit, work).await {
            Ok(result) => {
                metrics().db_operation(operation, started.elapsed(), result.is_err());
                result
            }
            Err(_elapsed) => {
                metrics().db_operation(operation, started.elapsed(), true);
                metrics().db_timeout();
                Err(timed_out(TimedOut {
                    operation,
                    limit: self.limit,
                }))
            }
        }
    }
}

fn store(error: TimedOut) -> StoreError {
    StoreError(Box::new(error))
}

impl<R: AllocationRepository> AllocationRepository for Deadline<R> {
    async fn add_batch(&self, batch: &Batch) -> Result<(), AddBatchError> {
        self.run("add_batch", self.inner.add_batch(batch), |timed_out| {
            AddBatchError::Store(store(timed_out))
        })
        .await
    }

    async fn batch(&self, reference: &str) -> Result<Option<Batch>, StoreError> {
        self.run("batch", self.inner.batch(reference), store).await
    }

    async fn batches(
        &self,
        sku: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Batch>, StoreError> {
        let work = self.inner.batches(sku, after, limit);
        self.run("batches", work, store).await
    }

    async fn stock(&self, sku: &str, qty: u32) -> Result<Stock, StoreError> {
        self.run("stock", self.inner.stock(sku, qty), store).await
    }

    async fn record_refusal(&self, line: &OrderLine) -> Result<(), StoreError> {
        self.run("record_refusal", self.inner.record_refusal(line), store)
            .await
    }

    async fn allocate(
        &self,
        line: &OrderLine,
        requester: &Requester,
    ) -> Result<AllocateStep, StoreError> {
        let work = self.inner.allocate(line, requester);
        self.measure("allocate", work).await
    }

    async fn line(&self, orderid: &str, sku: &str) -> Result<Option<AcknowledgedLine>, StoreError> {
        self.run("line", self.inner.line(orderid, sku), store).await
    }

    async fn lines_of_order(
        &self,
        orderid: &str,
        limit: usize,
    ) -> Result<Vec<AcknowledgedLine>, StoreError> {
        let work = self.inner.lines_of_order(orderid, limit);
        self.run("lines_of_order", work, store).await
    }

    async fn lines_of_sku(
        &self,
        sku: &str,
        orderids: &[String],
    ) -> Result<Vec<AcknowledgedLine>, StoreError> {
        let work = self.inner.lines_of_sku(sku, orderids);
        self.run("lines_of_sku", work, store).await
    }

    async fn remove_line(
        &self,
        orderid: &str,
        sku: &str,
        requester: &Requester,
    ) -> Result<Option<AcknowledgedLine>, StoreError> {
        let work = self.inner.remove_line(orderid, sku, requester);
        self.measure("remove_line", work).await
    }

    async fn change_purchased_quantity(
        &self,
        reference: &str,
        qty: u32,
    ) -> Result<Option<Batch>, StoreError> {
        let work = self.inner.change_purchased_quantity(reference, qty);
        self.measure("change_purchased_quantity", work).await
    }

    async fn give_up_recent_lines(
        &self,
        reference: &str,
        max_lines: usize,
    ) -> Result<Vec<OrderLine>, StoreError> {
        let work = self.inner.give_up_recent_lines(reference, max_lines);
        self.measure("give_up_recent_lines", work).await
    }

    async fn over_allocated_batches(&self, limit: usize) -> Result<Vec<String>, StoreError> {
        let work = self.inner.over_allocated_batches(limit);
        self.run("over_allocated_batches", work, store).await
    }

    async fn backorders(
        &self,
        sku: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Backorder>, StoreError> {
        let work = self.inner.backorders(sku, after, limit);
        self.run("backorders", work, store).await
    }

    async fn fill_backorder(&self, line: &OrderLine) -> Result<FillStep, StoreError> {
        let work = self.inner.fill_backorder(line);
        self.measure("fill_backorder", work).await
    }

    async fn batch_lines(
        &self,
        reference: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<BatchLine>, StoreError> {
        let work = self.inner.batch_lines(reference, after, limit);
        self.run("batch_lines", work, store).await
    }
}

impl<R: UserRepository> UserRepository for Deadline<R> {
    async fn add(&self, user: &User) -> Result<(), AddUserError> {
        self.run("add_user", self.inner.add(user), |timed_out| {
            AddUserError::Store(store(timed_out))
        })
        .await
    }

    async fn get(&self, username: &Username) -> Result<Option<User>, StoreError> {
        self.run("user", self.inner.get(username), store).await
    }

    async fn grant_role(&self, username: &Username, role: Role) -> Result<bool, StoreError> {
        let work = self.inner.grant_role(username, role);
        self.run("grant_role", work, store).await
    }

    async fn list(&self, after: Option<&str>, limit: usize) -> Result<Vec<User>, StoreError> {
        self.run("users", self.inner.list(after, limit), store)
            .await
    }

    // Transactions: the inner repository bounds each attempt and commit.
    async fn update(
        &self,
        changed: &User,
        revocation: &Revocation,
        keep_an_admin: bool,
    ) -> Result<Written, StoreError> {
        let work = self.inner.update(changed, revocation, keep_an_admin);
        self.measure("update_user", work).await
    }

    async fn delete(
        &self,
        account_id: &str,
        epoch: i64,
        revocation: &Revocation,
        keep_an_admin: bool,
    ) -> Result<Written, StoreError> {
        let work = self
            .inner
            .delete(account_id, epoch, revocation, keep_an_admin);
        self.measure("delete_user", work).await
    }
}

impl<R: RevocationStore> RevocationStore for Deadline<R> {
    // A transaction: the inner store bounds each attempt and commit.
    async fn revoke(&self, revocation: &Revocation) -> Result<bool, StoreError> {
        self.measure("revoke", self.inner.revoke(revocation)).await
    }

    async fn any_revoked(&self, ids: &[&str]) -> Result<bool, StoreError> {
        self.run("any_revoked", self.inner.any_revoked(ids), store)
            .await
    }

    async fn revoked_after(
        &self,
        after: Option<i64>,
        limit: usize,
    ) -> Result<Vec<(i64, Revocation)>, StoreError> {
        let work = self.inner.revoked_after(after, limit);
        self.run("revoked_after", work, store).await
    }
}

impl<R: LoginThrottle> LoginThrottle for Deadline<R> {
    fn policy(&self) -> ThrottlePolicy {
        self.inner.policy()
    }

    async fn count(
        &self,
        counter: Counter<'_>,
        admissible: &Admissible,
        now: DateTime<Utc>,
    ) -> Result<Counted, StoreError> {
        let work = self.inner.count(counter, admissible, now);
        self.run("count_login_attempt", work, store).await
    }

    async fn give_back(&self, given: &[GiveBack<'_>]) -> Result<(), StoreError> {
        let work = self.inner.give_back(given);
        self.run("give_back_login_attempts", work, store).await
    }
}

impl<R: RefreshRotations> RefreshRotations for Deadline<R> {
    async fn rotate(
        &self,
        family: &str,
        presented: &str,
        successor: &PairIds,
        expires_at: DateTime<Utc>,
        grace: Duration,
    ) -> Result<Rotation, StoreError> {
        let work = self
            .inner
            .rotate(family, presented, successor, expires_at, grace);
        self.run("rotate_refresh_token", work, store).await
    }
}

impl<R: WebhookStore> WebhookStore for Deadline<R> {
    async fn create(&self, subscription: &Subscription) -> Result<(), StoreError> {
        let work = self.inner.create(subscription);
        self.run("create_webhook", work, store).await
    }

    async fn list(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Subscription>, StoreError> {
        let work = self.inner.list(after, limit);
        self.run("list_webhooks", work, store).await
    }

    async fn get(&self, id: &str) -> Result<Option<Subscription>, StoreError> {
        self.run("get_webhook", self.inner.get(id), store).await
    }

    async fn change(
        &self,
        id: &str,
        change: &SubscriptionChange,
    ) -> Result<Option<Subscription>, StoreError> {
        let work = self.inner.change(id, change);
        self.run("change_webhook", work, store).await
    }

    async fn delete(&self, id: &str) -> Result<bool, StoreError> {
        self.run("delete_webhook", self.inner.delete(id), store)
            .await
    }

    async fn rewind(&self, id: &str, cursor: u64) -> Result<Option<Subscription>, StoreError> {
        let work = self.inner.rewind(id, cursor);
        self.run("rewind_webhook", work, store).await
    }

    async fn attempts(
        &self,
        id: &str,
        after: Option<AttemptKey>,
        limit: usize,
    ) -> Result<Vec<ListedAttempt>, StoreError> {
        let work = self.inner.attempts(id, after, limit);
        self.run("webhook_attempts", work, store).await
    }

    async fn claim(&self, instance: &str, lease: Duration) -> Result<Vec<String>, StoreError> {
        let work = self.inner.claim(instance, lease);
        self.run("claim_webhooks", work, store).await
    }

    async fn release(&self, id: &str, instance: &str) -> Result<(), StoreError> {
        let work = self.inner.release(id, instance);
        self.run("release_webhook", work, store).await
    }

    async fn release_all(&self, instance: &str) -> Result<(), StoreError> {
        let work = self.inner.release_all(instance);
        self.run("release_webhooks", work, store).await
    }

    async fn record_attempt(&self, attempt: &Attempt) -> Result<(), StoreError> {
        let work = self.inner.record_attempt(attempt);
        self.run("record_webhook_attempt", work, store).await
    }

    async fn advance(
        &self,
        id: &str,
        instance: &str,
        revision: u64,
        progress: &Progress,
    ) -> Result<bool, StoreError> {
        let work = self.inner.advance(id, instance, revision, progress);
        self.run("advance_webhook", work, store).await
    }
}
