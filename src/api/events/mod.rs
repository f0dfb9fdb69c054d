//! `events` tag: the feed of what happened to stock and order lines, in
//! position order, for the `admin` and `events` roles.

mod schemas;

use std::marker::PhantomData;
use std::time::Duration;

use poem::web::Data;
use poem_openapi::param::Query;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, OpenApi};

pub use self::schemas::*;
use super::auth::EventsToken;
use super::error::{ApiError, Failure, msg};
use super::reply::{Database, ErrorExamples, Input, Reply, Token};
use super::{Adapters, ApiTags, AppState};
use crate::domain::events::EventType;
use crate::domain::token::TokenRejection;
use crate::services::ports::events::EventLog;

pub struct EventsApi<A>(pub(super) PhantomData<fn() -> A>);

#[derive(ApiResponse)]
pub enum FeedResponse {
    /// The events after `after`, oldest first (none when `wait_ms` passed
    /// with nothing new).
    #[oai(status = 200)]
    Ok(Json<EventPage>),
    /// The token's user has neither the `admin` nor the `events` role.
    #[oai(status = 403)]
    Forbidden(Json<ApiError>),
}

impl ErrorExamples for FeedResponse {
    fn error_examples() -> Vec<(u16, Json<ApiError>)> {
        vec![(403, msg(TokenRejection::EventsRoleRequired))]
    }
}

/// Examples of this tag's own error responses.
pub fn error_examples() -> Vec<(u16, &'static str, Json<ApiError>)> {
    FeedResponse::described_examples()
}

#[OpenApi(tag = "ApiTags::Events")]
impl<A: Adapters> EventsApi<A> {
    /// Read the event feed
    ///
    /// Every change of allocation state, in the order it was committed: each
    /// event has a `position` (1, 2, 3, … for the whole deployment, with no
    /// gaps), so a consumer keeps the last position it handled and asks for
    /// the events `after` it; reading from 0 and following live give the same
    /// sequence. Events are kept `events.retention_days` (7 by default).
    ///
    /// With `wait_ms`, a request that finds nothing new waits up to that long
    /// for the next event (long polling) instead of answering an empty page
    /// at once. Requires the `admin` or the `events` role.
    #[oai(path = "/events", method = "get", operation_id = "read_events")]
    async fn read_events(
        &self,
        state: Data<&AppState<A>>,
        _reader: EventsToken<A>,
        /// The position of the last event the consumer has; 0 for the start.
        #[oai(default)]
        after: Query<u64>,
        /// Only events of these types (repeat the parameter for several).
        types: Query<Option<Vec<EventTypeName>>>,
        /// Events per page, 1 to 1000.
        #[oai(
            default = "default_limit",
            validator(minimum(value = "1"), maximum(value = "1000"))
        )]
        limit: Query<u32>,
        /// When there is nothing after `after`, wait up to this many
        /// milliseconds for an event (at most 30000, and at most the
        /// deployment's `events.long_poll_max_ms`).
        #[oai(default, validator(maximum(value = "30000")))]
        wait_ms: Query<u64>,
    ) -> Reply<FeedResponse, (Token, Input, Database)> {
        let types: Vec<EventType> = types.0.iter().flatten().map(|&t| t.into()).collect();
        let wait = Duration::from_millis(wait_ms.0).min(state.longest_wait);
        let until = tokio::time::Instant::now() + wait;
        let mut head = after.0;
        let events = loop {
            let events = match state.events.read(after.0, &types, limit.0).await {
                Ok(events) => events,
                Err(error) => return Err(Failure::from(error)).into(),
            };
            if !events.is_empty() || tokio::time::Instant::now() >= until {
                break events;
            }
            // Read again once an event (maybe of other types) is recorded.
            head = state.feed_head.wait_past(&state.events, head, until).await;
        };
        let next_after = events.last().map_or(after.0, |event| event.position);
        Ok(FeedResponse::Ok(Json(EventPage {
            events: events.into_iter().map(EventBody::from).collect(),
            next_after,
        })))
        .into()
    }
}

fn default_limit() -> u32 {
    100
}
