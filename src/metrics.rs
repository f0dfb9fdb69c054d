//! What allot counts for Prometheus (`GET /metrics`): requests, database
//! operations, allocation and login outcomes.
//!
//! Built on `prometheus-client`, the Prometheus project's own Rust client: a
//! few small dependencies, lock-free counters and histograms, and the text
//! exposition format. One registry per process, because the store adapters
//! and the handlers both report to it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    operation: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreLabels {
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SubscriptionLabels {
    /// A webhook subscription's id (never its URL or secret).
    subscription: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// What became of an allocation request.
#[derive(Clone, Copy, Debug)]
pub enum AllocationOutcome {
    Allocated,
    Backordered,
    OutOfStock,
    InvalidSku,
    /// A transaction met a concurrent one on the same batch and was retried.
    Contention,
    /// The database failed (503).
    Unavailable,
}

/// What became of a login.
#[derive(Clone, Copy, Debug)]
pub enum LoginOutcome {
    Ok,
    BadCredentials,
    /// The password was right, but the account is disabled.
    Disabled,
    /// Refused for too many recent failures (see the login throttle), or
    /// for too many passwords being hashed at once.
    Throttled,
    Unavailable,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<OperationLabels, Histogram, fn() -> Histogram>,
    in_flight: Gauge,
    db_latency: Family<StoreLabels, Histogram, fn() -> Histogram>,
    db_errors: Family<StoreLabels, Counter>,
    db_timeouts: Counter,
    allocations: Family<OutcomeLabels, Counter>,
    logins: Family<OutcomeLabels, Counter>,
    webhook_deliveries: Family<SubscriptionLabels, Counter>,
    webhook_failures: Family<SubscriptionLabels, Counter>,
    webhook_lag: Family<SubscriptionLabels, Gauge>,
    events_recorded: Counter,
}

/// 0.5 ms to ~16 s, doubling.
fn latency_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0005, 2.0, 16,
    ))
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// Which request metrics: of which registry, operation (its text by address
/// and length: operations are `'static` strings) and status.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct RequestKey {
    metrics: usize,
    operation: (usize, usize),
    status: u16,
}

type RequestHandles = HashMap<RequestKey, (Counter, Histogram), foldhash::fast::RandomState>;

thread_local! {
    static REQUEST_METRICS: RefCell<RequestHandles> = RefCell::default();
}

/// This process's metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("allot");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by operation (operationId; `none` for unknown routes) and status",
            requests.clone(),
        );
        let latency = Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register(
            "http_request_duration_seconds",
            "Time from request to response head, by operation",
            latency.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "http_requests_in_flight",
            "Requests being handled now",
            in_flight.clone(),
        );
        let db_latency = Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register(
            "db_operation_duration_seconds",
            "Database operations (one repository step: a query, or a whole transaction), by operation",
            db_latency.clone(),
        );
        let db_errors = Family::<StoreLabels, Counter>::default();
        registry.register(
            "db_operation_errors",
            "Database operations that failed, by operation",
            db_errors.clone(),
        );
        let db_timeouts = Counter::default();
        registry.register(
            "db_timeouts",
            "Database operations allot stopped waiting for (mongo.operation_timeout_ms)",
            db_timeouts.clone(),
        );
        let allocations = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "allocations",
            "Allocation requests by outcome; `contention` counts transaction retries",
            allocations.clone(),
        );
        let logins = Family::<OutcomeLabels, Counter>::default();
        registry.register("logins", "Logins by outcome", logins.clone());
        let webhook_deliveries = Family::<SubscriptionLabels, Counter>::default();
        registry.register(
            "webhook_deliveries",
            "Webhook deliveries made (answered 2xx) by this instance, by subscription",
            webhook_deliveries.clone(),
        );
        let webhook_failures = Family::<SubscriptionLabels, Counter>::default();
        registry.register(
            "webhook_delivery_failures",
            "Webhook delivery attempts that failed (non-2xx, timeout, refused), by subscription",
            webhook_failures.clone(),
        );
        let webhook_lag = Family::<SubscriptionLabels, Gauge>::default();
        registry.register(
            "webhook_lag_events",
            "Events a subscription delivered by this instance is behind the latest one",
            webhook_lag.clone(),
        );
        let events_recorded = Counter::default();
        registry.register(
            "events_recorded",
            "Events this instance's relay recorded in the feed",
            events_recorded.clone(),
        );
        // Every outcome is listed from the start, at 0, so rates work at once.
        for outcome in ["allocated", "backordered", "out_of_stock", "contention"] {
            let _ = allocations.get_or_create(&OutcomeLabels { outcome });
        }
        for outcome in ["ok", "bad_credentials", "disabled", "throttled"] {
            let _ = logins.get_or_create(&OutcomeLabels { outcome });
        }
        Self {
            registry,
            requests,
            latency,
            in_flight,
            db_latency,
            db_errors,
            db_timeouts,
            allocations,
            logins,
            webhook_deliveries,
            webhook_failures,
            webhook_lag,
            events_recorded,
        }
    }

    /// Counts a request in flight until the guard is dropped.
    pub fn request_started(&self) -> InFlight<'_> {
        self.in_flight.inc();
        InFlight(&self.in_flight)
    }

    pub fn request_finished(&self, operation: &'static str, status: u16, elapsed: Duration) {
        self.with_request_metrics(operation, status, |count, latency| {
            count.inc();
            latency.observe(elapsed.as_secs_f64());
        });
    }

    /// Runs `record` on the request counter and latency histogram of
    /// `operation` and `status`. Each thread keeps handles on them (they share
    /// the families' own values), so a request does not hash its labels and
    /// take the families' locks, which every thread would contend for; nor
    /// are the handles cloned (their reference counts are shared too).
    fn with_request_metrics(
        &self,
        operation: &'static str,
        status: u16,
        record: impl FnOnce(&Counter, &Histogram),
    ) {
        let key = RequestKey {
            metrics: self as *const Self as usize,
            operation: (operation.as_ptr() as usize, operation.len()),
            status,
        };
        REQUEST_METRICS.with_borrow_mut(|known| {
            let (count, latency) = known.entry(key).or_insert_with(|| {
                let count = self
                    .requests
                    .get_or_create(&RequestLabels { operation, status })
                    .clone();
                let latency = self
                    .latency
                    .get_or_create(&OperationLabels { operation })
                    .clone();
                (count, latency)
            });
            record(count, latency);
        });
    }

    pub fn db_operation(&self, operation: &'static str, elapsed: Duration, failed: bool) {
        let labels = StoreLabels { operation };
        self.db_latency
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
        if failed {
            self.db_errors.get_or_create(&labels).inc();
        }
    }

    /// allot gave up waiting for the database (`mongo.operation_timeout_ms`).
    pub fn db_timeout(&self) {
        self.db_timeouts.inc();
    }

    pub fn allocation(&self, outcome: AllocationOutcome) {
        let outcome = match outcome {
            AllocationOutcome::Allocated => "allocated",
            AllocationOutcome::Backordered => "backordered",
            AllocationOutcome::OutOfStock => "out_of_stock",
            AllocationOutcome::InvalidSku => "invalid_sku",
            AllocationOutcome::Contention => "contention",
            AllocationOutcome::Unavailable => "unavailable",
        };
        self.allocations
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    pub fn login(&self, outcome: LoginOutcome) {
        let outcome = match outcome {
            LoginOutcome::Ok => "ok",
            LoginOutcome::BadCredentials => "bad_credentials",
            LoginOutcome::Disabled => "disabled",
            LoginOutcome::Throttled => "throttled",
            LoginOutcome::Unavailable => "unavailable",
        };
        self.logins.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// A webhook delivery attempt to `subscription` succeeded or failed.
    pub fn webhook_attempt(&self, subscription: &str, succeeded: bool) {
        let labels = SubscriptionLabels {
            subscription: subscription.to_owned(),
        };
        let family = if succeeded {
            &self.webhook_deliveries
        } else {
            &self.webhook_failures
        };
        family.get_or_create(&labels).inc();
    }

    /// How many events `subscription` is behind; `None` once this instance
    /// no longer delivers it.
    pub fn webhook_lag(&self, subscription: &str, events: Option<u64>) {
        let labels = SubscriptionLabels {
            subscription: subscription.to_owned(),
        };
        match events {
            Some(events) => {
                let events = i64::try_from(events).unwrap_or(i64::MAX);
                self.webhook_lag.get_or_create(&labels).set(events);
            }
            None => {
                self.webhook_lag.remove(&labels);
            }
        }
    }

    pub fn events_recorded(&self, count: u64) {
        self.events_recorded.inc_by(count);
    }

    /// The text exposition of every metric ([`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

pub struct InFlight<'a>(&'a Gauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The webhook worker's reports, into this process's metrics.
#[derive(Clone, Copy, Debug, Default)]
pub struct WebhookMetrics;

impl crate::services::ports::webhooks::DeliveryObserver for WebhookMetrics {
    fn attempted(&self, subscription: &str, succeeded: bool) {
        metrics().webhook_attempt(subscription, succeeded);
    }

    fn lag(&self, subscription: &str, events: u64) {
        metrics().webhook_lag(subscription, Some(events));
    }

    fn forget(&self, subscription: &str) {
        metrics().webhook_lag(subscription, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::ports::webhooks::DeliveryObserver;

    #[test]
    fn webhook_metrics_name_subscriptions_by_id_and_drop_the_lag_of_one_handed_over() {
        let metrics = Metrics::new();
        metrics.webhook_attempt("wh_1", true);
        metrics.webhook_attempt("wh_1", false);
        metrics.webhook_lag("wh_1", Some(7));
        let text = metrics.render();
        for line in [
            "allot_webhook_deliveries_total{subscription=\"wh_1\"} 1",
            "allot_webhook_delivery_failures_total{subscription=\"wh_1\"} 1",
            "allot_webhook_lag_events{subscription=\"wh_1\"} 7",
        ] {
            assert!(text.contains(line), "{line} missing from {text}");
        }
        metrics.webhook_lag("wh_1", None);
        assert!(!metrics.render().contains("allot_webhook_lag_events{"));
        // The process-wide observer reports to the same families.
        WebhookMetrics.attempted("wh_2", true);
        assert!(metrics_text().contains("subscription=\"wh_2\""));
    }

    fn metrics_text() -> String {
        super::metrics().render()
    }
}
