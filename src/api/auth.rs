//! Bearer-token extractors for protected operations, and the token errors
//! they answer with. They are hand-written rather than derived so that every
//! refusal — a missing header included — is JSON in the seed's `{"msg": ...}` shape.

use poem::http::StatusCode;
use poem::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use poem::{Request, RequestBody, Response};
use poem_openapi::payload::Json;
use poem_openapi::registry::{MetaResponses, MetaSecurityScheme, Registry};
use poem_openapi::{ApiExtractor, ApiExtractorType, ApiResponse, ExtractParamOptions};

use super::AppState;
use super::error::{ApiError, AuthErrorBody};
use crate::domain::token::{Claims, TokenKind, TokenRejection};
use crate::domain::user::Role;
use crate::services::tokens::TokenIssuer as _;
use crate::services::tokens::authenticate_access;

const SCHEME: &str = "bearerAuth";

/// Statuses follow Flask-JWT-Extended: 401 for a missing, expired or revoked
/// token, 403 for a missing role, 422 for a token that is not acceptable.
pub fn rejection_response(rejection: &TokenRejection) -> Response {
    let status = match rejection {
        TokenRejection::MissingHeader | TokenRejection::Expired | TokenRejection::Revoked => {
            StatusCode::UNAUTHORIZED
        }
        TokenRejection::AdminRequired => StatusCode::FORBIDDEN,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    };
    let body = AuthErrorBody {
        msg: rejection.to_string(),
    };
    let mut response = Response::builder()
        .status(status)
        .content_type("application/json; charset=utf-8")
        .body(serde_json::to_vec(&body).unwrap_or_default());
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            WWW_AUTHENTICATE,
            poem::http::HeaderValue::from_static("Bearer"),
        );
    }
    response
}

fn refuse(rejection: TokenRejection) -> poem::Error {
    poem::Error::from_response(rejection_response(&rejection))
}

fn state(req: &Request) -> poem::Result<&AppState> {
    req.data::<AppState>().ok_or_else(|| {
        poem::Error::from_string(
            "application state missing",
            StatusCode::INTERNAL_SERVER_ERROR,
        )
    })
}

fn token(req: &Request) -> Result<&str, TokenRejection> {
    let header = req
        .headers()
        .get(AUTHORIZATION)
        .map(|value| value.to_str().unwrap_or_default());
    bearer_token(header)
}

fn register_scheme(registry: &mut Registry) {
    registry.create_security_scheme(
        SCHEME,
        MetaSecurityScheme {
            ty: "http",
            description: Some(
                "An access token from `POST /users/login` or `POST /users/registration` \
                 (`refresh` and `logout` take the refresh token instead).",
            ),
            name: None,
            key_in: None,
            scheme: Some("bearer"),
            bearer_format: Some("JWT"),
            flows: None,
            openid_connect_url: None,
        },
    );
}

/// Implements `ApiExtractor` for a claims wrapper, declaring the bearer scheme.
macro_rules! bearer_extractor {
    ($name:ident, $check:path) => {
        impl<'a> ApiExtractor<'a> for $name {
            const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::SecurityScheme];
            type ParamType = ();
            type ParamRawType = ();

            fn register(registry: &mut Registry) {
                register_scheme(registry);
            }

            fn security_schemes() -> Vec<&'static str> {
                vec![SCHEME]
            }

            async fn from_request(
                req: &'a Request,
                _body: &mut RequestBody,
                _param_opts: ExtractParamOptions<Self::ParamType>,
            ) -> poem::Result<Self> {
                let state = state(req)?;
                let token = token(req).map_err(refuse)?;
                $check(state, token).map(Self).map_err(refuse)
            }
        }
    };
}

/// A valid, unrevoked access token. Checked without a database read.
pub struct AccessToken(pub Claims);

fn check_access(state: &AppState, token: &str) -> Result<Claims, TokenRejection> {
    authenticate_access(&state.tokens, &state.revocations, token)
}
bearer_extractor!(AccessToken, check_access);

/// A valid access token of a user with the `admin` role.
pub struct AdminToken(pub Claims);

fn check_admin(state: &AppState, token: &str) -> Result<Claims, TokenRejection> {
    let claims = check_access(state, token)?;
    if claims.has_role(Role::Admin) {
        Ok(claims)
    } else {
        Err(TokenRejection::AdminRequired)
    }
}
bearer_extractor!(AdminToken, check_admin);

/// A validly signed refresh token. Whether it was revoked or already used is
/// decided by the refresh use case itself, which must see reuse to act on it.
pub struct RefreshToken(pub Claims);

fn check_refresh(state: &AppState, token: &str) -> Result<Claims, TokenRejection> {
    let claims = state.tokens.decode(token)?;
    match claims.kind {
        TokenKind::Refresh => Ok(claims),
        TokenKind::Access => Err(TokenRejection::RefreshTokenRequired),
    }
}
bearer_extractor!(RefreshToken, check_refresh);

/// A validly signed token of either kind (logout accepts both).
pub struct AnyToken(pub Claims);

fn check_any(state: &AppState, token: &str) -> Result<Claims, TokenRejection> {
    state.tokens.decode(token)
}
bearer_extractor!(AnyToken, check_any);

/// The token errors of a protected operation, for the spec; the extractors
/// above produce them.
#[derive(ApiResponse)]
pub enum TokenErrors {
    /// No `Authorization` header, or an expired or revoked token.
    /// Comes with `WWW-Authenticate: Bearer`.
    #[oai(status = 401)]
    Unauthorized(Json<ApiError>),
    /// A token that is malformed, wrongly signed, uses another algorithm, or is
    /// of the wrong kind (access vs refresh); or a header not of the form `Bearer <JWT>`.
    #[oai(status = 422)]
    Unprocessable(Json<ApiError>),
}

#[derive(ApiResponse)]
pub enum AdminErrors {
    /// The token is valid but its user does not have the `admin` role.
    #[oai(status = 403)]
    Forbidden(Json<ApiError>),
}

/// An operation's own responses plus the token errors (401, 422).
pub enum Protected<T> {
    Ok(T),
    /// A token refusal, answered as the extractor built it.
    Refused(Response),
}

/// An operation's own responses plus the token errors and 403 for non-admins.
pub enum AdminOnly<T> {
    Ok(T),
    /// A token refusal, answered as the extractor built it.
    Refused(Response),
}

macro_rules! with_extra_responses {
    ($wrapper:ident, $($extra:ty),+) => {
        impl<T: ApiResponse> ApiResponse for $wrapper<T> {
            const BAD_REQUEST_HANDLER: bool = T::BAD_REQUEST_HANDLER;

            fn meta() -> MetaResponses {
                let mut meta = T::meta();
                $(meta.responses.extend(<$extra>::meta().responses);)+
                meta
            }

            fn register(registry: &mut Registry) {
                T::register(registry);
                $(<$extra>::register(registry);)+
            }

            /// poem-openapi sends every extractor error here when the operation
            /// has a bad-request handler; a token refusal must keep its status
            /// and body rather than become a 400.
            fn from_parse_request_error(error: poem::Error) -> Self {
                if error.is_from_response() {
                    Self::Refused(error.into_response())
                } else {
                    Self::Ok(T::from_parse_request_error(error))
                }
            }
        }

        impl<T: poem::IntoResponse> poem::IntoResponse for $wrapper<T> {
            fn into_response(self) -> Response {
                match self {
                    Self::Ok(answer) => answer.into_response(),
                    Self::Refused(response) => response,
                }
            }
        }
    };
}
with_extra_responses!(Protected, TokenErrors);
with_extra_responses!(AdminOnly, TokenErrors, AdminErrors);

/// Reads the token out of an `Authorization: Bearer <JWT>` header value.
fn bearer_token(header: Option<&str>) -> Result<&str, TokenRejection> {
    let header = header.ok_or(TokenRejection::MissingHeader)?;
    match header.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(token.trim())
        }
        _ => Err(TokenRejection::BadHeader),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_token_is_read_from_the_header() {
        assert_eq!(bearer_token(Some("Bearer a.b.c")), Ok("a.b.c"));
        assert_eq!(bearer_token(None), Err(TokenRejection::MissingHeader));
        for bad in ["this-is-plain-text", "Bearer", "Bearer ", "Basic abc"] {
            assert_eq!(
                bearer_token(Some(bad)),
                Err(TokenRejection::BadHeader),
                "{bad}"
            );
        }
    }
}
