//! The one place where errors become HTTP responses, each with its status
//! documented here: [`Failure`] (what every operation may answer besides its
//! own outcomes), and [`error_to_json`] for what fails before an operation is
//! chosen (unknown route, wrong method, oversized body, panic). Every error
//! body is JSON of the one `Error` schema.

use std::error::Error as StdError;

use poem::error::ResponseError;
use poem::http::header::WWW_AUTHENTICATE;
use poem::http::{HeaderValue, StatusCode};
use poem::{IntoResponse, Response};
use poem_openapi::error::ParseRequestPayloadError;
use poem_openapi::payload::Json;
use poem_openapi::{Object, Union};

use crate::domain::token::TokenRejection;
use crate::services::ports::accounts::HashingError;
use crate::services::ports::tokens::TokenIssueError;
use crate::services::tokens::AuthError;
use crate::services::{Fault, StoreError};

/// Every error body: `{"message": ...}`, or `{"msg": ...}` for bearer-token
/// errors and a failed login (the original service's contract). One schema for
/// every error response, so that a generated client has one error type.
#[derive(Debug, Clone, Union)]
#[oai(one_of, rename = "Error")]
pub enum ApiError {
    Message(ErrorBody),
    Token(AuthErrorBody),
}

/// The body of every error response that is not about a bearer token.
#[derive(Debug, Clone, Object)]
pub struct ErrorBody {
    /// What went wrong, in words meant for the API's user.
    pub message: String,
}

/// The body of every bearer-token error, and of a failed login.
#[derive(Debug, Clone, Object)]
pub struct AuthErrorBody {
    /// Why the token or the login was refused, e.g. `Token has expired`.
    pub msg: String,
}

/// A `{"message"}` body with the error's own words (e.g. `Out of stock for sku X`).
pub fn message(error: impl ToString) -> Json<ApiError> {
    Json(ApiError::Message(ErrorBody {
        message: error.to_string(),
    }))
}

/// A `{"msg"}` body, the shape of token errors and of a refused login.
pub fn msg(error: impl ToString) -> Json<ApiError> {
    Json(ApiError::Token(AuthErrorBody {
        msg: error.to_string(),
    }))
}

/// What any operation may answer besides its own outcomes; each operation's
/// spec lists the ones it can meet (see `api::reply`).
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// 400 `{"message"}`: a parameter or the body is malformed, missing or out
    /// of range; the message names the field.
    #[error("{0}")]
    BadRequest(String),
    /// `{"msg"}`, as Flask-JWT-Extended answers: 401 (with `WWW-Authenticate:
    /// Bearer`) for a missing, expired or revoked token, 403 for a missing
    /// role, 422 for a token that is not acceptable.
    #[error(transparent)]
    Token(#[from] TokenRejection),
    /// 503 `{"message"}`: the database failed. The cause is logged, not returned.
    #[error("The database is unavailable; retry later")]
    Unavailable(#[source] Box<dyn StdError + Send + Sync>),
    /// 503 `{"message"}`: too many passwords are being hashed at once.
    #[error(transparent)]
    Busy(HashingError),
    /// 500 `{"message"}`: a bug or a broken environment. Logged in full,
    /// answered opaquely.
    #[error("Internal server error")]
    Internal(#[source] Box<dyn StdError + Send + Sync>),
}

impl Failure {
    /// The failure of a request poem-openapi could not parse: a token refusal
    /// as the extractor raised it, anything else a 400 naming the field.
    pub fn from_request_error(error: poem::Error) -> Self {
        match error.downcast::<Self>() {
            Ok(failure) => failure,
            Err(error) => {
                Self::BadRequest(match error.downcast_ref::<ParseRequestPayloadError>() {
                    Some(payload) => format!("Invalid request body: {}", payload.reason),
                    None => error.to_string(),
                })
            }
        }
    }

    /// Logs what the body does not say: the cause of a 503 or a 500.
    fn log(&self) {
        let (cause, what) = match self {
            Self::Unavailable(cause) => (cause, "database unavailable"),
            Self::Internal(cause) => (cause, "internal error"),
            Self::BadRequest(_) | Self::Token(_) | Self::Busy(_) => return,
        };
        tracing::error!(error = %cause, cause = ?cause.source().map(ToString::to_string), "{what}");
    }
}

impl ResponseError for Failure {
    fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Token(
                TokenRejection::MissingHeader | TokenRejection::Expired | TokenRejection::Revoked,
            ) => StatusCode::UNAUTHORIZED,
            Self::Token(
                TokenRejection::AdminRequired
                | TokenRejection::EventsRoleRequired
                | TokenRejection::FeedOnly,
            ) => StatusCode::FORBIDDEN,
            Self::Token(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unavailable(_) | Self::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn as_response(&self) -> Response {
        self.log();
        let status = self.status();
        let body = match self {
            Self::Token(rejection) => msg(rejection),
            other => message(other),
        };
        let mut response = body.with_status(status).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<StoreError> for Failure {
    fn from(error: StoreError) -> Self {
        Self::Unavailable(Box::new(error))
    }
}

impl From<Fault> for Failure {
    fn from(fault: Fault) -> Self {
        match fault {
            Fault::Store(error) => error.into(),
            Fault::Hashing(HashingError::Busy) => Self::Busy(HashingError::Busy),
            Fault::Hashing(error) => Self::Internal(Box::new(error)),
            Fault::Issue(error) => error.into(),
        }
    }
}

impl From<TokenIssueError> for Failure {
    fn from(error: TokenIssueError) -> Self {
        Self::Internal(Box::new(error))
    }
}

impl From<AuthError> for Failure {
    fn from(error: AuthError) -> Self {
        match error {
            AuthError::Rejected(rejection) => rejection.into(),
            AuthError::Store(error) => error.into(),
            AuthError::Issue(error) => error.into(),
        }
    }
}

/// What a body over `http.body_limit_bytes` gets, with 413.
pub const BODY_TOO_LARGE: &str = "Request body is too large";

/// A JSON response with the given status and a `{"message"}` body.
pub fn json_error(status: StatusCode, text: impl ToString) -> Response {
    message(text).with_status(status).into_response()
}

/// Turns any error that escaped the typed responses (unknown route, wrong method,
/// oversized or slow body) into a JSON response.
pub async fn error_to_json(error: poem::Error) -> Response {
    if error.is_from_response() || error.downcast_ref::<Failure>().is_some() {
        return error.into_response();
    }
    let status = error.status();
    let text = match status {
        StatusCode::NOT_FOUND => "Not found".to_owned(),
        StatusCode::METHOD_NOT_ALLOWED => "Method not allowed".to_owned(),
        StatusCode::PAYLOAD_TOO_LARGE => BODY_TOO_LARGE.to_owned(),
        status if status.is_server_error() => {
            tracing::error!(%error, "request failed");
            "Internal server error".to_owned()
        }
        _ => error.to_string(),
    };
    json_error(status, text)
}

/// What a panicking handler answers: the panic is a bug, the caller still gets JSON.
pub fn panic_response(_panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    json_error(StatusCode::INTERNAL_SERVER_ERROR, "Internal server error")
}
