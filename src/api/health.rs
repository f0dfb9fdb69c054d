//! `health` tag: liveness and readiness probes for orchestrators and load balancers.

use std::marker::PhantomData;

use poem::web::Data;
use poem_openapi::payload::Json;
use poem_openapi::types::Example;
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::reply::Reply;
use super::{Adapters, ApiTags, AppState};
use crate::services::ports::health::Readiness as _;

pub struct HealthApi<A>(pub(super) PhantomData<fn() -> A>);

/// The state of this instance.
#[derive(Debug, Object)]
#[oai(example)]
pub struct Status {
    /// `ok` (alive), `ready` (can serve requests) or `unavailable`.
    pub status: String,
    /// Why the instance is not ready, when it is not.
    #[oai(skip_serializing_if_is_none)]
    pub message: Option<String>,
}

impl Example for Status {
    fn example() -> Self {
        Self {
            status: "ready".to_owned(),
            message: None,
        }
    }
}

#[derive(ApiResponse)]
pub enum HealthResponse {
    /// The process is up and serving HTTP.
    #[oai(status = 200)]
    Alive(Json<Status>),
}

#[derive(ApiResponse)]
pub enum ReadyResponse {
    /// MongoDB answered a ping: this instance can serve requests.
    #[oai(status = 200)]
    Ready(Json<Status>),
    /// MongoDB did not answer in time. The instance keeps trying and becomes ready
    /// again by itself once the database is back.
    #[oai(status = 503)]
    Unavailable(Json<Status>),
}

#[OpenApi(tag = "ApiTags::Health")]
impl<A: Adapters> HealthApi<A> {
    /// Liveness probe
    ///
    /// Answers 200 while the process is up; it does not touch the database.
    #[oai(path = "/health", method = "get", operation_id = "health")]
    async fn health(&self) -> Reply<HealthResponse> {
        Reply::ok(HealthResponse::Alive(Json(Status {
            status: "ok".to_owned(),
            message: None,
        })))
    }

    /// Readiness probe
    ///
    /// Pings MongoDB: 200 when it answers, 503 while it is unreachable.
    #[oai(path = "/ready", method = "get", operation_id = "ready")]
    async fn ready(&self, state: Data<&AppState<A>>) -> Reply<ReadyResponse> {
        let ping = tokio::time::timeout(state.ready_timeout, state.database.ping()).await;
        let message = match ping {
            Ok(Ok(())) => {
                return Reply::ok(ReadyResponse::Ready(Json(Status {
                    status: "ready".to_owned(),
                    message: None,
                })));
            }
            Ok(Err(error)) => {
                // The driver's own error, not `StoreError`'s generic words.
                tracing::warn!(error = %error.0, "readiness check: MongoDB ping failed");
                "MongoDB is unreachable"
            }
            Err(_elapsed) => {
                tracing::warn!("readiness check: MongoDB ping timed out");
                "MongoDB did not answer in time"
            }
        };
        Reply::ok(ReadyResponse::Unavailable(Json(Status {
            status: "unavailable".to_owned(),
            message: Some(message.to_owned()),
        })))
    }
}
