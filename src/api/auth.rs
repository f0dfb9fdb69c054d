//! Bearer-token extractors for protected operations. They are hand-written
//! rather than derived so that every refusal — a missing header included — is
//! a [`Failure::Token`], answered in the seed's `{"msg": ...}` shape; the
//! operation's `Reply` lists those responses (`reply::Token`, `reply::Admin`).
//!
//! Each is generic over the [`Adapters`] whose token issuer checks it, as the
//! handlers are, and reads them from the request's `AppState<A>`.

use std::marker::PhantomData;

use poem::http::header::AUTHORIZATION;
use poem::{Request, RequestBody};
use poem_openapi::registry::{MetaSecurityScheme, Registry};
use poem_openapi::{ApiExtractor, ApiExtractorType, ExtractParamOptions};

use super::error::Failure;
use super::{Adapters, AppState};
use crate::domain::token::{Claims, TokenKind, TokenRejection};
use crate::domain::user::Role;
use crate::services::ports::tokens::TokenIssuer as _;
use crate::services::tokens::authenticate_access;

const SCHEME: &str = "bearerAuth";

fn refuse(rejection: TokenRejection) -> poem::Error {
    Failure::Token(rejection).into()
}

fn state<A: Adapters>(req: &Request) -> poem::Result<&AppState<A>> {
    req.data::<AppState<A>>()
        .ok_or_else(|| Failure::Internal("application state missing".into()).into())
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
        impl<'a, A: Adapters> ApiExtractor<'a> for $name<A> {
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
                let state = state::<A>(req)?;
                let token = token(req).map_err(refuse)?;
                let claims = $check(state, token).map_err(refuse)?;
                Ok(Self(claims, PhantomData))
            }
        }
    };
}

/// A valid, unrevoked access token. Checked without a database read.
pub struct AccessToken<A>(pub Claims, PhantomData<fn() -> A>);

fn check_access<A: Adapters>(state: &AppState<A>, token: &str) -> Result<Claims, TokenRejection> {
    authenticate_access(&state.tokens, &state.revocations, token)
}
bearer_extractor!(AccessToken, check_access);

/// A valid access token of a user with the `admin` role.
pub struct AdminToken<A>(pub Claims, PhantomData<fn() -> A>);

fn check_admin<A: Adapters>(state: &AppState<A>, token: &str) -> Result<Claims, TokenRejection> {
    let claims = check_access(state, token)?;
    if claims.has_role(Role::Admin) {
        Ok(claims)
    } else {
        Err(TokenRejection::AdminRequired)
    }
}
bearer_extractor!(AdminToken, check_admin);

/// A valid access token of an account that works with stock and orders: any
/// but an account holding only the `events` role, which reads the feed alone.
pub struct StockToken<A>(pub Claims, PhantomData<fn() -> A>);

fn check_stock<A: Adapters>(state: &AppState<A>, token: &str) -> Result<Claims, TokenRejection> {
    let claims = check_access(state, token)?;
    let feed_only = claims.has_role(Role::Events)
        && !claims.has_role(Role::User)
        && !claims.has_role(Role::Admin);
    if feed_only {
        Err(TokenRejection::FeedOnly)
    } else {
        Ok(claims)
    }
}
bearer_extractor!(StockToken, check_stock);

/// A valid access token of a user with the `admin` or the `events` role.
pub struct EventsToken<A>(pub Claims, PhantomData<fn() -> A>);

fn check_events<A: Adapters>(state: &AppState<A>, token: &str) -> Result<Claims, TokenRejection> {
    let claims = check_access(state, token)?;
    if claims.has_role(Role::Admin) || claims.has_role(Role::Events) {
        Ok(claims)
    } else {
        Err(TokenRejection::EventsRoleRequired)
    }
}
bearer_extractor!(EventsToken, check_events);

/// A validly signed refresh token. Whether it was revoked or already used is
/// decided by the refresh use case itself, which must see reuse to act on it.
pub struct RefreshToken<A>(pub Claims, PhantomData<fn() -> A>);

fn check_refresh<A: Adapters>(state: &AppState<A>, token: &str) -> Result<Claims, TokenRejection> {
    let claims = state.tokens.decode(token)?;
    match claims.kind {
        TokenKind::Refresh => Ok(claims),
        TokenKind::Access => Err(TokenRejection::RefreshTokenRequired),
    }
}
bearer_extractor!(RefreshToken, check_refresh);

/// A validly signed token of either kind (logout accepts both).
pub struct AnyToken<A>(pub Claims, PhantomData<fn() -> A>);

fn check_any<A: Adapters>(state: &AppState<A>, token: &str) -> Result<Claims, TokenRejection> {
    state.tokens.decode(token)
}
bearer_extractor!(AnyToken, check_any);

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
