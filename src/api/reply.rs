//! The one return shape of every handler: [`Reply<T, S>`], an operation's own
//! outcomes `T` (its `ApiResponse` enum) or a [`Failure`]. `S` names the shared
//! responses the operation can meet, e.g. `(Token, Input, Database)`, and
//! adds them to its spec, so that each operation's enum lists only its own.

use std::marker::PhantomData;

use poem::error::ResponseError;
use poem::{IntoResponse, Response};
use poem_openapi::ApiResponse;
use poem_openapi::payload::Json;
use poem_openapi::registry::{MetaResponse, MetaResponses, Registry};

use super::error::{ApiError, Failure};

pub struct Reply<T, S = ()> {
    outcome: Result<T, Failure>,
    shared: PhantomData<fn() -> S>,
}

impl<T, S> From<Result<T, Failure>> for Reply<T, S> {
    fn from(outcome: Result<T, Failure>) -> Self {
        Self {
            outcome,
            shared: PhantomData,
        }
    }
}

impl<T, S> Reply<T, S> {
    pub fn ok(answer: T) -> Self {
        Ok(answer).into()
    }
}

impl<T: ApiResponse, S: Shared> ApiResponse for Reply<T, S> {
    /// Every request error reaches [`Failure::from_request_error`]: a token
    /// refusal keeps its status and body, anything else is a 400.
    const BAD_REQUEST_HANDLER: bool = true;

    fn meta() -> MetaResponses {
        let mut meta = T::meta();
        // An operation's own description of a status (e.g. allocate's 400 with
        // "Out of stock") covers the shared one.
        for shared in S::responses() {
            if !meta.responses.iter().any(|own| own.status == shared.status) {
                meta.responses.push(shared);
            }
        }
        meta.responses.sort_by_key(|response| response.status);
        meta
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
        S::register(registry);
    }

    fn from_parse_request_error(error: poem::Error) -> Self {
        Err(Failure::from_request_error(error)).into()
    }
}

impl<T: IntoResponse, S> IntoResponse for Reply<T, S> {
    fn into_response(self) -> Response {
        match self.outcome {
            Ok(answer) => answer.into_response(),
            Err(failure) => failure.as_response(),
        }
    }
}

/// An operation's own error responses, each with an example message for the
/// spec, written beside the operation's response enum (every error shares
/// the `Error` schema, which can hold one example only).
pub trait ErrorExamples: ApiResponse {
    /// `(status, example)` for each of the enum's error responses.
    fn error_examples() -> Vec<(u16, Json<ApiError>)>;

    /// `(status, description, example)`: the description tells the spec's
    /// response apart.
    fn described_examples() -> Vec<(u16, &'static str, Json<ApiError>)> {
        let meta = Self::meta();
        Self::error_examples()
            .into_iter()
            .filter_map(|(status, example)| {
                let response = meta.responses.iter().find(|r| r.status == Some(status))?;
                Some((status, response.description, example))
            })
            .collect()
    }
}

/// The names the examples use.
pub mod example {
    pub const SKU: &str = "SMALL-TABLE";
    pub const BATCH: &str = "batch-001";
    pub const ORDER: &str = "order-001";
    pub const USER: &str = "alice";
}

/// A set of shared responses, for the spec: one of the enums below, or a tuple of them.
pub trait Shared {
    fn responses() -> Vec<MetaResponse>;
    fn register(registry: &mut Registry);
}

impl Shared for () {
    fn responses() -> Vec<MetaResponse> {
        Vec::new()
    }

    fn register(_registry: &mut Registry) {}
}

macro_rules! shared_sets {
    ($($set:ident),+) => {
        $(impl Shared for $set {
            fn responses() -> Vec<MetaResponse> {
                <$set as ApiResponse>::meta().responses
            }

            fn register(registry: &mut Registry) {
                <$set as ApiResponse>::register(registry);
            }
        })+
    };
}

macro_rules! shared_tuples {
    ($(($($set:ident),+)),+) => {
        $(impl<$($set: Shared),+> Shared for ($($set,)+) {
            fn responses() -> Vec<MetaResponse> {
                let mut responses = Vec::new();
                $(responses.extend($set::responses());)+
                responses
            }

            fn register(registry: &mut Registry) {
                $($set::register(registry);)+
            }
        })+
    };
}

shared_sets!(Token, AdminRole, FeedOnly, Input, Body, Database, Hashing);
shared_tuples!((A, B), (A, B, C), (A, B, C, D));

// The enums below only describe responses; [`Failure`] answers them.

/// A bearer token is required: the token errors.
#[derive(ApiResponse)]
pub enum Token {
    /// No `Authorization` header, or an expired or revoked token.
    #[oai(status = 401)]
    Unauthorized(
        Json<ApiError>,
        /// Always `Bearer`.
        #[oai(header = "WWW-Authenticate")]
        String,
    ),
    /// A token that is malformed, wrongly signed, uses another algorithm, or is
    /// of the wrong kind (access vs refresh); or a header not of the form `Bearer <JWT>`.
    #[oai(status = 422)]
    Unprocessable(Json<ApiError>),
}

/// An access token of a user with the `admin` role is required.
pub type Admin = (Token, AdminRole);

/// The role an admin-only operation requires.
#[derive(ApiResponse)]
pub enum AdminRole {
    /// The token is valid but its user does not have the `admin` role.
    #[oai(status = 403)]
    Forbidden(Json<ApiError>),
}

/// An access token of an account that works with stock and orders is required.
pub type Stock = (Token, FeedOnly);

/// What an account of the `events` role alone meets outside the feed.
#[derive(ApiResponse)]
pub enum FeedOnly {
    /// The token's account holds only the `events` role, which reads the event
    /// feed and nothing else.
    #[oai(status = 403)]
    Forbidden(Json<ApiError>),
}

/// The operation takes parameters or a body.
#[derive(ApiResponse)]
pub enum Input {
    /// A parameter or the body is malformed, missing or out of range; the
    /// message names the field.
    #[oai(status = 400)]
    BadRequest(Json<ApiError>),
}

/// The operation takes a body (answered before the operation runs).
#[derive(ApiResponse)]
pub enum Body {
    /// The request body is over the size limit (`http.body_limit_bytes`, 64 KiB by default).
    #[oai(status = 413)]
    PayloadTooLarge(Json<ApiError>),
}

/// The operation reads or writes the database.
#[derive(ApiResponse)]
pub enum Database {
    /// The database is unreachable; retry later.
    #[oai(status = 503)]
    Unavailable(Json<ApiError>),
}

/// The operation hashes a password, and reads or writes the database.
#[derive(ApiResponse)]
pub enum Hashing {
    /// Too many passwords are being hashed at once, or the database is
    /// unreachable; retry later.
    #[oai(status = 503)]
    Unavailable(Json<ApiError>),
}
