//! The one place where errors become HTTP responses: every error body is JSON.

use poem::Response;
use poem::http::StatusCode;
use poem_openapi::error::ParseRequestPayloadError;
use poem_openapi::payload::Json;
use poem_openapi::types::Example;
use poem_openapi::{Object, Union};

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
#[derive(Debug, Clone, Object, serde::Serialize)]
#[oai(example)]
pub struct ErrorBody {
    /// What went wrong, in words meant for the API's user.
    pub message: String,
}

impl Example for ErrorBody {
    fn example() -> Self {
        Self::new("Out of stock for sku SMALL-TABLE")
    }
}

impl ErrorBody {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

/// The body of every bearer-token error, and of a failed login.
#[derive(Debug, Clone, Object, serde::Serialize)]
#[oai(example)]
pub struct AuthErrorBody {
    /// Why the token was refused, e.g. `Token has expired`.
    pub msg: String,
}

impl Example for AuthErrorBody {
    fn example() -> Self {
        Self {
            msg: "Token has expired".to_owned(),
        }
    }
}

/// An [`ErrorBody`] with the given message.
pub fn message(message: impl Into<String>) -> Json<ApiError> {
    Json(ApiError::Message(ErrorBody::new(message)))
}

/// A business error's own message as the body (e.g. `Out of stock for sku X`).
pub fn error_body(error: &impl std::fmt::Display) -> Json<ApiError> {
    message(error.to_string())
}

/// The 400 body for a request poem-openapi could not parse; its message
/// names the field at fault.
pub fn bad_request(error: poem::Error) -> Json<ApiError> {
    let message = match error.downcast_ref::<ParseRequestPayloadError>() {
        Some(payload) => format!("Invalid request body: {}", payload.reason),
        None => error.to_string(),
    };
    self::message(message)
}

/// The 503 body when the database fails; the cause is logged, not returned.
pub fn unavailable(error: &(dyn std::error::Error + 'static)) -> Json<ApiError> {
    tracing::error!(error = %error, cause = ?error.source().map(ToString::to_string), "database unavailable");
    message("The database is unavailable; retry later")
}

/// A 500 for a failure that is a bug or a broken environment; logged in full,
/// answered opaquely (by [`error_to_json`]).
pub fn internal_error(error: &(dyn std::error::Error + 'static)) -> poem::Error {
    tracing::error!(error = %error, cause = ?error.source().map(ToString::to_string), "internal error");
    poem::Error::from_status(StatusCode::INTERNAL_SERVER_ERROR)
}

/// A JSON response with the given status and an [`ErrorBody`].
pub fn json_error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = serde_json::to_vec(&ErrorBody::new(message)).unwrap_or_default();
    Response::builder()
        .status(status)
        .content_type("application/json; charset=utf-8")
        .body(body)
}

/// Turns any error that escaped the typed responses (unknown route, wrong method,
/// unparsable request, oversized body, panic) into a JSON response.
pub async fn error_to_json(error: poem::Error) -> Response {
    if error.is_from_response() {
        return error.into_response();
    }
    let status = error.status();
    let message = match status {
        StatusCode::NOT_FOUND => "Not found".to_owned(),
        StatusCode::METHOD_NOT_ALLOWED => "Method not allowed".to_owned(),
        StatusCode::PAYLOAD_TOO_LARGE => "Request body is too large".to_owned(),
        status if status.is_server_error() => {
            tracing::error!(%error, "request failed");
            "Internal server error".to_owned()
        }
        _ => error.to_string(),
    };
    json_error(status, message)
}

/// What a panicking handler answers: the panic is a bug, the caller still gets JSON.
pub fn panic_response(_panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    json_error(StatusCode::INTERNAL_SERVER_ERROR, "Internal server error")
}
