//! `webhooks` tag: subscriptions that POST events to a URL, signed the
//! Standard Webhooks way. Every operation needs the `admin` role.

mod schemas;

use std::marker::PhantomData;
use std::str::FromStr;

use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, OpenApi};

pub use self::schemas::*;
use super::auth::AdminToken;
use super::error::{ApiError, Failure, message};
use super::fields::{Cursor, Identifier, PageLimit};
use super::json_body::JsonBody;
use super::reply::{Admin, Body, Database, ErrorExamples, Input, Reply};
use super::{Adapters, ApiTags, AppState};
use crate::domain::webhooks::{Subscription, TargetError};
use crate::services::ports::webhooks::{AttemptKey, ListedAttempt, SubscriptionChange};
use crate::services::webhooks::{self, NewSubscription, WebhookError};

pub struct WebhooksApi<A>(pub(super) PhantomData<fn() -> A>);

#[derive(ApiResponse)]
pub enum CreateWebhookResponse {
    /// The subscription, with its signing secret (shown this once). It
    /// receives the events recorded from now on.
    #[oai(status = 201)]
    Created(Json<CreatedWebhookBody>),
    /// A field is malformed or missing, or the URL is refused: not an
    /// absolute http(s) URL, `http://` where https is required, credentials
    /// in it, or a host that is (or resolves to) a loopback, private,
    /// link-local or other internal address, or does not resolve.
    #[oai(status = 400)]
    BadRequest(Json<ApiError>),
}

#[derive(ApiResponse)]
pub enum ListWebhooksResponse {
    /// A page of subscriptions.
    #[oai(status = 200)]
    Ok(Json<WebhookPage>),
}

#[derive(ApiResponse)]
pub enum GetWebhookResponse {
    /// The subscription (without its secret).
    #[oai(status = 200)]
    Ok(Json<WebhookBody>),
    /// No subscription has this id.
    #[oai(status = 404)]
    NotFound(Json<ApiError>),
}

#[derive(ApiResponse)]
pub enum UpdateWebhookResponse {
    /// The subscription as changed.
    #[oai(status = 200)]
    Ok(Json<WebhookBody>),
    /// A field is malformed or null, or the new URL is refused (as at creation).
    #[oai(status = 400)]
    BadRequest(Json<ApiError>),
    /// No subscription has this id.
    #[oai(status = 404)]
    NotFound(Json<ApiError>),
}

#[derive(ApiResponse)]
pub enum DeleteWebhookResponse {
    /// Deleted, with its delivery attempts; nothing more is delivered.
    #[oai(status = 204)]
    Deleted,
    /// No subscription has this id.
    #[oai(status = 404)]
    NotFound(Json<ApiError>),
}

#[derive(ApiResponse)]
pub enum DeliveriesResponse {
    /// A page of the subscription's delivery attempts.
    #[oai(status = 200)]
    Ok(Json<DeliveryPage>),
    /// No subscription has this id.
    #[oai(status = 404)]
    NotFound(Json<ApiError>),
}

#[derive(ApiResponse)]
pub enum ReplayResponse {
    /// The subscription, active, with its cursor just before
    /// `from_position`: the events are delivered again, in order.
    #[oai(status = 200)]
    Ok(Json<WebhookBody>),
    /// The body is malformed, or `from_position` is past the latest event
    /// plus one.
    #[oai(status = 400)]
    BadRequest(Json<ApiError>),
    /// No subscription has this id.
    #[oai(status = 404)]
    NotFound(Json<ApiError>),
}

const EXAMPLE_ID: &str = "wh_65f1c0a2b3d4e5f6a7b8c9d0";

fn no_such_webhook() -> (u16, Json<ApiError>) {
    (404, message(WebhookError::NotFound(EXAMPLE_ID.into())))
}

fn refused_url() -> (u16, Json<ApiError>) {
    let refused = TargetError::Refused("10.0.0.7".into());
    (400, message(WebhookError::Target(refused)))
}

impl ErrorExamples for CreateWebhookResponse {
    fn error_examples() -> Vec<(u16, Json<ApiError>)> {
        vec![refused_url()]
    }
}

impl ErrorExamples for GetWebhookResponse {
    fn error_examples() -> Vec<(u16, Json<ApiError>)> {
        vec![no_such_webhook()]
    }
}

impl ErrorExamples for UpdateWebhookResponse {
    fn error_examples() -> Vec<(u16, Json<ApiError>)> {
        vec![refused_url(), no_such_webhook()]
    }
}

impl ErrorExamples for DeleteWebhookResponse {
    fn error_examples() -> Vec<(u16, Json<ApiError>)> {
        vec![no_such_webhook()]
    }
}

impl ErrorExamples for DeliveriesResponse {
    fn error_examples() -> Vec<(u16, Json<ApiError>)> {
        vec![no_such_webhook()]
    }
}

impl ErrorExamples for ReplayResponse {
    fn error_examples() -> Vec<(u16, Json<ApiError>)> {
        let past = WebhookError::PastTheEnd {
            from: 2000,
            latest: 1042,
        };
        vec![(400, message(past)), no_such_webhook()]
    }
}

/// Examples of this tag's own error responses.
pub fn error_examples() -> Vec<(u16, &'static str, Json<ApiError>)> {
    [
        CreateWebhookResponse::described_examples(),
        GetWebhookResponse::described_examples(),
        UpdateWebhookResponse::described_examples(),
        DeleteWebhookResponse::described_examples(),
        DeliveriesResponse::described_examples(),
        ReplayResponse::described_examples(),
    ]
    .concat()
}

/// The operation's own answer to a refused URL or an unknown subscription;
/// a store failure is a [`Failure`].
fn refusal<T>(
    error: WebhookError,
    bad_request: Option<fn(Json<ApiError>) -> T>,
    not_found: fn(Json<ApiError>) -> T,
) -> Result<T, Failure> {
    match error {
        WebhookError::NotFound(_) => Ok(not_found(message(error))),
        WebhookError::Target(_) | WebhookError::PastTheEnd { .. } => match bad_request {
            Some(bad_request) => Ok(bad_request(message(error))),
            None => Err(Failure::BadRequest(error.to_string())),
        },
        WebhookError::Store(error) => Err(error.into()),
    }
}

/// Where a page of delivery attempts resumes: `position.sequence`.
struct AttemptCursor(AttemptKey);

impl FromStr for AttemptCursor {
    type Err = ();

    fn from_str(text: &str) -> Result<Self, ()> {
        let (position, sequence) = text.split_once('.').ok_or(())?;
        Ok(Self(AttemptKey {
            position: position.parse().map_err(drop)?,
            sequence: sequence.parse().map_err(drop)?,
        }))
    }
}

fn shown(subscription: &Subscription) -> Json<WebhookBody> {
    Json(WebhookBody::from(subscription))
}

#[OpenApi(tag = "ApiTags::Webhooks")]
impl<A: Adapters> WebhooksApi<A> {
    /// Create a webhook
    ///
    /// Subscribes a URL to kinds of event. Each event is POSTed as JSON
    /// (`{"type", "timestamp", "position", "data"}`), signed with the
    /// subscription's secret in the `webhook-id`, `webhook-timestamp` and
    /// `webhook-signature` headers (Standard Webhooks), in position order, at
    /// least once: a receiver answers 2xx within 10 s, or the event is
    /// retried with backoff for about a day, after which the subscription is
    /// disabled. The response holds the signing secret, shown this once.
    /// Requires the `admin` role.
    #[oai(path = "/webhooks", method = "post", operation_id = "create_webhook")]
    async fn create_webhook(
        &self,
        state: Data<&AppState<A>>,
        _admin: AdminToken<A>,
        body: JsonBody<NewWebhook>,
    ) -> Reply<CreateWebhookResponse, (Admin, Input, Body, Database)> {
        let JsonBody(new) = body;
        let new = NewSubscription {
            url: new.url,
            types: event_types(&new.types),
            description: new.description,
        };
        let created = webhooks::create(
            &state.webhooks,
            &*state.events,
            &state.webhook_sender,
            state.webhook_policy,
            new,
        );
        match created.await {
            Ok(subscription) => Ok(CreateWebhookResponse::Created(Json(CreatedWebhookBody {
                secret: subscription.secret.expose().to_owned(),
                webhook: WebhookBody::from(&subscription),
            }))),
            Err(error) => refusal(
                error,
                Some(CreateWebhookResponse::BadRequest),
                // Creation meets no unknown subscription.
                CreateWebhookResponse::BadRequest,
            ),
        }
        .into()
    }

    /// List webhooks
    ///
    /// Pages through the subscriptions, by id. Requires the `admin` role.
    #[oai(path = "/webhooks", method = "get", operation_id = "list_webhooks")]
    async fn list_webhooks(
        &self,
        state: Data<&AppState<A>>,
        _admin: AdminToken<A>,
        /// Subscriptions per page.
        #[oai(default)]
        limit: Query<PageLimit>,
        /// `next_cursor` of the previous page of this listing; a cursor of
        /// another listing gets 400.
        cursor: Query<Option<Cursor>>,
    ) -> Reply<ListWebhooksResponse, (Admin, Input, Database)> {
        const LISTING: &str = "webhooks";
        let after = match Cursor::resume::<String>(cursor.0.as_ref(), LISTING) {
            Ok(after) => after,
            Err(failure) => return Err(failure).into(),
        };
        let listed = webhooks::list(&state.webhooks, after.as_deref(), limit.probe());
        let page = |subscriptions: Vec<Subscription>| {
            let (subscriptions, next_cursor) = limit.page(subscriptions, LISTING, |s| s.id.clone());
            ListWebhooksResponse::Ok(Json(WebhookPage {
                webhooks: subscriptions.iter().map(WebhookBody::from).collect(),
                next_cursor,
            }))
        };
        listed.await.map(page).map_err(Failure::from).into()
    }

    /// Get a webhook
    ///
    /// The subscription and how far its deliveries got; never its secret.
    /// Requires the `admin` role.
    #[oai(path = "/webhooks/:id", method = "get", operation_id = "get_webhook")]
    async fn get_webhook(
        &self,
        state: Data<&AppState<A>>,
        _admin: AdminToken<A>,
        /// The subscription's id.
        id: Path<Identifier>,
    ) -> Reply<GetWebhookResponse, (Admin, Input, Database)> {
        match webhooks::get(&state.webhooks, &id.0).await {
            Ok(subscription) => Ok(GetWebhookResponse::Ok(shown(&subscription))),
            Err(error) => refusal(error, None, GetWebhookResponse::NotFound),
        }
        .into()
    }

    /// Change a webhook
    ///
    /// Pauses or resumes the subscription, or changes its URL, event types
    /// or description; absent fields stay as they are. Setting `active` on a
    /// disabled subscription re-enables it, starting with the event that
    /// failed. Requires the `admin` role.
    #[oai(
        path = "/webhooks/:id",
        method = "patch",
        operation_id = "update_webhook"
    )]
    async fn update_webhook(
        &self,
        state: Data<&AppState<A>>,
        _admin: AdminToken<A>,
        /// The subscription's id.
        id: Path<Identifier>,
        body: JsonBody<WebhookUpdate>,
    ) -> Reply<UpdateWebhookResponse, (Admin, Input, Body, Database)> {
        let JsonBody(update) = body;
        for (field, null) in [
            ("url", update.url.is_null()),
            ("types", update.types.is_null()),
            ("status", update.status.is_null()),
        ] {
            if null {
                let problem = format!("Invalid request body: {field} must not be null");
                return Ok(UpdateWebhookResponse::BadRequest(message(problem))).into();
            }
        }
        let change = SubscriptionChange {
            url: update.url.value().cloned(),
            types: update.types.value().map(|names| event_types(names)),
            description: match update.description {
                poem_openapi::types::MaybeUndefined::Undefined => None,
                poem_openapi::types::MaybeUndefined::Null => Some(None),
                poem_openapi::types::MaybeUndefined::Value(text) => Some(Some(text)),
            },
            status: update.status.value().copied().map(Into::into),
        };
        let changed = webhooks::change(
            &state.webhooks,
            &state.webhook_sender,
            state.webhook_policy,
            &id.0,
            change,
        );
        match changed.await {
            Ok(subscription) => Ok(UpdateWebhookResponse::Ok(shown(&subscription))),
            Err(error) => refusal(
                error,
                Some(UpdateWebhookResponse::BadRequest),
                UpdateWebhookResponse::NotFound,
            ),
        }
        .into()
    }

    /// Delete a webhook
    ///
    /// Deletes the subscription and its delivery attempts; a delivery under
    /// way may still arrive. Requires the `admin` role.
    #[oai(
        path = "/webhooks/:id",
        method = "delete",
        operation_id = "delete_webhook"
    )]
    async fn delete_webhook(
        &self,
        state: Data<&AppState<A>>,
        _admin: AdminToken<A>,
        /// The subscription's id.
        id: Path<Identifier>,
    ) -> Reply<DeleteWebhookResponse, (Admin, Input, Database)> {
        match webhooks::delete(&state.webhooks, &id.0).await {
            Ok(()) => Ok(DeleteWebhookResponse::Deleted),
            Err(error) => refusal(error, None, DeleteWebhookResponse::NotFound),
        }
        .into()
    }

    /// A webhook's delivery attempts
    ///
    /// Pages through the subscription's delivery attempts, newest event
    /// first: each with its time, the receiver's status or the error, and
    /// when the event is tried next. Attempts are kept for
    /// `webhooks.attempts_kept_days` (7 by default). Requires the `admin` role.
    #[oai(
        path = "/webhooks/:id/deliveries",
        method = "get",
        operation_id = "webhook_deliveries"
    )]
    async fn webhook_deliveries(
        &self,
        state: Data<&AppState<A>>,
        _admin: AdminToken<A>,
        /// The subscription's id.
        id: Path<Identifier>,
        /// Attempts per page.
        #[oai(default)]
        limit: Query<PageLimit>,
        /// `next_cursor` of the previous page of this listing; a cursor of
        /// another listing gets 400.
        cursor: Query<Option<Cursor>>,
    ) -> Reply<DeliveriesResponse, (Admin, Input, Database)> {
        let listing = format!("webhooks/{}/deliveries", id.0.0);
        let after = match Cursor::resume::<AttemptCursor>(cursor.0.as_ref(), &listing) {
            Ok(after) => after.map(|cursor| cursor.0),
            Err(failure) => return Err(failure).into(),
        };
        match webhooks::attempts(&state.webhooks, &id.0, after, limit.probe()).await {
            Ok(attempts) => {
                let key = |a: &ListedAttempt| format!("{}.{}", a.key.position, a.key.sequence);
                let (attempts, next_cursor) = limit.page(attempts, &listing, key);
                Ok(DeliveriesResponse::Ok(Json(DeliveryPage {
                    deliveries: attempts.iter().map(DeliveryAttemptBody::from).collect(),
                    next_cursor,
                })))
            }
            Err(error) => refusal(error, None, DeliveriesResponse::NotFound),
        }
        .into()
    }

    /// Replay a webhook's events
    ///
    /// Delivers again, in order, every event of the subscription's types
    /// from `from_position` on (those still kept), then carries on with new
    /// ones. A disabled or paused subscription becomes active. The events
    /// keep their ids (`webhook-id`), so a receiver can tell a replayed
    /// event it already has. Requires the `admin` role.
    #[oai(
        path = "/webhooks/:id/replay",
        method = "post",
        operation_id = "replay_webhook"
    )]
    async fn replay_webhook(
        &self,
        state: Data<&AppState<A>>,
        _admin: AdminToken<A>,
        /// The subscription's id.
        id: Path<Identifier>,
        request: JsonBody<ReplayRequest>,
    ) -> Reply<ReplayResponse, (Admin, Input, Body, Database)> {
        let from = request.from_position;
        match webhooks::replay(&state.webhooks, &*state.events, &id.0, from).await {
            Ok(subscription) => Ok(ReplayResponse::Ok(shown(&subscription))),
            Err(error) => refusal(
                error,
                Some(ReplayResponse::BadRequest),
                ReplayResponse::NotFound,
            ),
        }
        .into()
    }
}
