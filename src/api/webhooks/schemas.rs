//! The bodies of the `webhooks` tag.

use chrono::{DateTime, Utc};
use poem_openapi::types::{Example, MaybeUndefined};
use poem_openapi::{Enum, Object};

pub use crate::api::events::EventTypeName;
use crate::domain::events::EventType;
use crate::domain::webhooks::{Retrying, Status, Subscription};
use crate::services::ports::webhooks::{AttemptOutcome, ListedAttempt};

pub fn event_types(names: &[EventTypeName]) -> Vec<EventType> {
    names.iter().copied().map(EventType::from).collect()
}

/// Whether a subscription is delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum WebhookStatus {
    /// Events are delivered.
    Active,
    /// Paused by an admin: events wait, none is lost.
    Paused,
    /// The receiver kept failing past the last retry: events wait until the
    /// subscription is set `active` again or replayed.
    Disabled,
}

impl From<Status> for WebhookStatus {
    fn from(status: Status) -> Self {
        match status {
            Status::Active => Self::Active,
            Status::Paused => Self::Paused,
            Status::Disabled => Self::Disabled,
        }
    }
}

/// The status an admin may set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum, serde::Deserialize)]
#[oai(rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum SettableStatus {
    /// Deliver (again): a disabled subscription starts again with the event
    /// that failed.
    Active,
    /// Stop delivering until set `active`; events wait.
    Paused,
}

impl From<SettableStatus> for Status {
    fn from(status: SettableStatus) -> Self {
        match status {
            SettableStatus::Active => Self::Active,
            SettableStatus::Paused => Self::Paused,
        }
    }
}

/// A new subscription.
#[derive(Debug, Object, serde::Deserialize)]
#[oai(example)]
pub struct NewWebhook {
    /// Where to POST the events: an absolute `https://` URL (`http://` only
    /// where allot is configured to allow it) whose host is a public address.
    #[oai(validator(max_length = 2048))]
    pub url: String,
    /// The kinds of event to deliver (at least one).
    #[oai(validator(min_items = 1, max_items = 10))]
    pub types: Vec<EventTypeName>,
    /// What the subscription is for (null or absent: nothing).
    #[oai(validator(max_length = 500), nullable)]
    #[serde(default)]
    pub description: Option<String>,
}

impl Example for NewWebhook {
    fn example() -> Self {
        Self {
            url: "https://warehouse.example.com/allot-events".to_owned(),
            types: vec![EventTypeName::LineAllocated, EventTypeName::LineDeallocated],
            description: Some("Warehouse picking".to_owned()),
        }
    }
}

/// What to change; absent fields stay as they are. `status`: `paused` stops
/// deliveries; `active` resumes them (and re-enables a disabled
/// subscription, starting with the event that failed).
#[derive(Debug, Object, serde::Deserialize)]
#[oai(example)]
pub struct WebhookUpdate {
    /// A new URL, checked as at creation.
    #[oai(validator(max_length = 2048))]
    #[serde(default)]
    pub url: MaybeUndefined<String>,
    /// The kinds of event to deliver from now on (at least one).
    #[oai(validator(min_items = 1, max_items = 10))]
    #[serde(default)]
    pub types: MaybeUndefined<Vec<EventTypeName>>,
    /// A new description; null removes it.
    #[oai(validator(max_length = 500), nullable)]
    #[serde(default)]
    pub description: MaybeUndefined<String>,
    #[serde(default)]
    pub status: MaybeUndefined<SettableStatus>,
}

impl Example for WebhookUpdate {
    fn example() -> Self {
        Self {
            url: MaybeUndefined::Undefined,
            types: MaybeUndefined::Undefined,
            description: MaybeUndefined::Undefined,
            status: MaybeUndefined::Value(SettableStatus::Paused),
        }
    }
}

/// An event whose delivery failed and will be tried again.
#[derive(Debug, Object)]
pub struct RetryBody {
    /// The event's position.
    pub position: u64,
    /// Attempts made so far.
    pub attempts: u32,
    /// When it is tried next.
    pub next_try_at: DateTime<Utc>,
}

impl From<&Retrying> for RetryBody {
    fn from(retrying: &Retrying) -> Self {
        Self {
            position: retrying.position,
            attempts: retrying.attempts,
            next_try_at: retrying.next_try_at,
        }
    }
}

/// A subscription. Its signing secret is shown only when it is created.
#[derive(Debug, Object)]
#[oai(example)]
pub struct WebhookBody {
    /// `wh_` and 24 hex digits.
    pub id: String,
    /// Where the events are POSTed.
    pub url: String,
    /// The kinds of event delivered.
    pub types: Vec<EventTypeName>,
    /// What the subscription is for.
    #[oai(skip_serializing_if_is_none)]
    pub description: Option<String>,
    pub status: WebhookStatus,
    /// Why it was disabled, while it is.
    #[oai(skip_serializing_if_is_none)]
    pub disabled_reason: Option<String>,
    /// The position of the last event delivered or passed over: the next
    /// delivery is of the first event of the chosen types after it.
    pub cursor: u64,
    /// The event being retried, after a failed attempt.
    #[oai(skip_serializing_if_is_none)]
    pub retrying: Option<RetryBody>,
    pub created_at: DateTime<Utc>,
}

impl From<&Subscription> for WebhookBody {
    fn from(subscription: &Subscription) -> Self {
        Self {
            id: subscription.id.clone(),
            url: subscription.url.clone(),
            types: subscription.types.iter().copied().map(Into::into).collect(),
            description: subscription.description.clone(),
            status: subscription.status.into(),
            disabled_reason: subscription.disabled_reason.clone(),
            cursor: subscription.cursor,
            retrying: subscription.retrying.as_ref().map(RetryBody::from),
            created_at: subscription.created_at,
        }
    }
}

impl Example for WebhookBody {
    fn example() -> Self {
        Self {
            id: "wh_65f1c0a2b3d4e5f6a7b8c9d0".to_owned(),
            url: "https://warehouse.example.com/allot-events".to_owned(),
            types: vec![EventTypeName::LineAllocated, EventTypeName::LineDeallocated],
            description: Some("Warehouse picking".to_owned()),
            status: WebhookStatus::Active,
            disabled_reason: None,
            cursor: 1042,
            retrying: None,
            created_at: DateTime::from_timestamp(1_767_225_600, 0).unwrap_or_default(),
        }
    }
}

/// A new subscription, with its signing secret: shown this once, keep it.
#[derive(Debug, Object)]
#[oai(example)]
pub struct CreatedWebhookBody {
    #[oai(flatten)]
    pub webhook: WebhookBody,
    /// Signs every delivery (`webhook-signature`): `whsec_` and the base64 of
    /// the HMAC-SHA256 key. Never shown again.
    pub secret: String,
}

impl Example for CreatedWebhookBody {
    fn example() -> Self {
        Self {
            webhook: WebhookBody::example(),
            secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwMfKQ9r8=".to_owned(),
        }
    }
}

/// A page of subscriptions, by id.
#[derive(Debug, Object)]
pub struct WebhookPage {
    /// At most `limit` subscriptions.
    pub webhooks: Vec<WebhookBody>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[oai(skip_serializing_if_is_none)]
    pub next_cursor: Option<String>,
}

/// One attempt at delivering one event (`type` is the event's kind).
#[derive(Debug, Object)]
pub struct DeliveryAttemptBody {
    /// The event's id: the delivery's `webhook-id`.
    pub event_id: String,
    /// The event's position.
    pub position: u64,
    #[oai(rename = "type")]
    pub event_type: EventTypeName,
    /// 1 for the first attempt at the event (counted anew after a replay or
    /// a re-enabling).
    pub attempt: u32,
    pub attempted_at: DateTime<Utc>,
    /// The receiver's HTTP status; 2xx is a success.
    #[oai(skip_serializing_if_is_none)]
    pub status: Option<u16>,
    /// Why there was no answer (timeout, connection refused, address refused…).
    #[oai(skip_serializing_if_is_none)]
    pub error: Option<String>,
    /// How long the attempt took, in milliseconds.
    pub duration_ms: u64,
    /// When the event is tried again, after a failure that will be retried.
    #[oai(skip_serializing_if_is_none)]
    pub next_try_at: Option<DateTime<Utc>>,
}

impl From<&ListedAttempt> for DeliveryAttemptBody {
    fn from(listed: &ListedAttempt) -> Self {
        let attempt = &listed.attempt;
        let (status, error) = match &attempt.outcome {
            AttemptOutcome::Status(status) => (Some(*status), None),
            AttemptOutcome::Error(error) => (None, Some(error.clone())),
        };
        Self {
            event_id: attempt.event_id.clone(),
            position: attempt.position,
            event_type: attempt.event_type.into(),
            attempt: attempt.attempt,
            attempted_at: attempt.attempted_at,
            status,
            error,
            duration_ms: u64::try_from(attempt.duration.as_millis()).unwrap_or(u64::MAX),
            next_try_at: attempt.next_try_at,
        }
    }
}

/// A page of delivery attempts, newest event first (and each event's
/// attempts newest first).
#[derive(Debug, Object)]
pub struct DeliveryPage {
    /// At most `limit` attempts.
    pub deliveries: Vec<DeliveryAttemptBody>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[oai(skip_serializing_if_is_none)]
    pub next_cursor: Option<String>,
}

/// Where a replay starts.
#[derive(Debug, Object, serde::Deserialize)]
#[oai(example)]
pub struct ReplayRequest {
    /// Deliver again every event of the subscription's types from this
    /// position on (those still kept), then carry on with new ones.
    #[oai(validator(minimum(value = "1")))]
    pub from_position: u64,
}

impl Example for ReplayRequest {
    fn example() -> Self {
        Self {
            from_position: 1000,
        }
    }
}
