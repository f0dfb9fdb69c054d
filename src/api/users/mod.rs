//! `users` tag: registration, login, token refresh, logout, and the caller's profile.

mod schemas;

use std::marker::PhantomData;

use poem::Request;
use poem::web::Data;
use poem_openapi::OpenApi;
use poem_openapi::payload::Json;

pub use self::schemas::*;
use super::auth::{AccessToken, AnyToken, RefreshToken};
use super::client::client_address;
use super::error::{ApiError, Failure, message, msg};
use super::json_body::JsonBody;
use super::reply::{Body, Database, Hashing, Input, Reply, Token};
use super::{Adapters, ApiTags, AppState};
use crate::config::Registration;
use crate::domain::token::TokenKind;
use crate::metrics::{LoginOutcome, metrics};
use crate::services::Fault;
use crate::services::ports::accounts::HashingError;
use crate::services::tokens;
use crate::services::users::{self, AccountError, LoginError, ProfileError, RegistrationError};

pub struct UsersApi<A>(pub(super) PhantomData<fn() -> A>);

/// What registration answers while it is closed.
pub const REGISTRATION_CLOSED: &str = "Registration is closed: an admin creates accounts";

/// Whole seconds to wait, at least one.
pub fn retry_after_secs(wait: std::time::Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

#[OpenApi(tag = "ApiTags::Users")]
impl<A: Adapters> UsersApi<A> {
    /// Register
    ///
    /// Creates a user with the `user` role and returns a token pair, as a login would.
    #[oai(
        path = "/users/registration",
        method = "post",
        operation_id = "register"
    )]
    async fn register(
        &self,
        state: Data<&AppState<A>>,
        body: JsonBody<Credentials>,
    ) -> Reply<RegistrationResponse, (Input, Body, Hashing)> {
        if state.registration == Registration::Closed {
            return Reply::ok(RegistrationResponse::Closed(message(REGISTRATION_CLOSED)));
        }
        let result = users::register(
            &state.users,
            &state.passwords,
            &state.tokens,
            state.password_policy,
            &body.username,
            &body.password,
        )
        .await;
        match result {
            Ok((_, tokens)) => Ok(RegistrationResponse::Created(Json(tokens.into()))),
            Err(RegistrationError::Invalid(error)) => Err(Failure::BadRequest(error.to_string())),
            Err(error @ RegistrationError::UsernameTaken(_)) => {
                Ok(RegistrationResponse::Conflict(message(error)))
            }
            Err(RegistrationError::Fault(fault)) => Err(fault.into()),
        }
        .into()
    }

    /// Log in
    ///
    /// Checks the password and returns a new token pair. A wrong password and an
    /// unknown user get the same answer, in about the same time.
    ///
    /// Failed logins are counted per (username, client address) and per client
    /// address, across every instance: see the 429 answer. A success clears
    /// the username's count for that address. The client address is the TCP
    /// peer, or `X-Forwarded-For` when the peer is listed in `http.trusted_proxies`.
    #[oai(path = "/users/login", method = "post", operation_id = "login")]
    async fn login(
        &self,
        state: Data<&AppState<A>>,
        req: &Request,
        body: JsonBody<Credentials>,
    ) -> Reply<LoginResponse, (Input, Body, Database)> {
        let client = client_address(req, &state.trusted_proxies);
        let result = users::login(
            &state.users,
            &state.passwords,
            &state.tokens,
            &state.login_throttle,
            &client,
            &body.username,
            &body.password,
        )
        .await;
        let answer = match result {
            Ok((_, tokens)) => Ok(LoginResponse::Ok(Json(tokens.into()))),
            Err(error @ LoginError::BadCredentials) => Ok(LoginResponse::BadCredentials(
                msg(error),
                "Bearer".to_owned(),
            )),
            Err(error @ LoginError::Disabled) => Ok(LoginResponse::Disabled(msg(error))),
            Err(error @ LoginError::Throttled(wait)) => Ok(LoginResponse::TooManyRequests(
                msg(error),
                retry_after_secs(wait),
            )),
            Err(LoginError::Fault(Fault::Hashing(error @ HashingError::Busy))) => {
                Ok(LoginResponse::TooManyRequests(msg(error), 1))
            }
            Err(LoginError::Fault(fault)) => Err(fault.into()),
        };
        metrics().login(match &answer {
            Ok(response) => response.outcome(),
            Err(_) => LoginOutcome::Unavailable,
        });
        answer.into()
    }

    /// Refresh tokens
    ///
    /// Send the refresh token as the bearer token. Returns a new access token and
    /// a new refresh token, which replace the one presented. Presenting a used
    /// refresh token again revokes every token of that login and answers 401 —
    /// except a retry: the token just used, presented again within
    /// `auth.refresh_retry_grace_secs` (10 s) while the pair it got is still
    /// unused, answers that same pair again (for a client whose reply was lost).
    /// A deleted, disabled or changed account's refresh tokens are refused.
    #[oai(path = "/users/refresh", method = "post", operation_id = "refresh")]
    async fn refresh(
        &self,
        state: Data<&AppState<A>>,
        token: RefreshToken<A>,
    ) -> Reply<RefreshResponse, (Token, Database)> {
        let result = tokens::refresh(
            &state.users,
            &state.revocation_store,
            &state.rotations,
            &state.revocations,
            &state.tokens,
            state.refresh_retry_grace,
            token.0,
        )
        .await;
        let answer = |pair: tokens::TokenPair| RefreshResponse::Ok(Json(pair.into()));
        result.map(answer).map_err(Failure::from).into()
    }

    /// Log out
    ///
    /// Revokes the bearer token. With a refresh token, revokes its whole login:
    /// that refresh token and every access token issued with it.
    #[oai(path = "/users/logout", method = "post", operation_id = "logout")]
    async fn logout(
        &self,
        state: Data<&AppState<A>>,
        token: AnyToken<A>,
    ) -> Reply<LogoutResponse, (Token, Database)> {
        let revoked = match token.0.kind {
            TokenKind::Access => "access_token",
            TokenKind::Refresh => "login",
        };
        let result = tokens::logout(
            &state.revocation_store,
            &state.revocations,
            &state.tokens,
            token.0,
        )
        .await;
        let answer = |()| {
            LogoutResponse::Ok(Json(LogoutBody {
                revoked: revoked.to_owned(),
            }))
        };
        result.map(answer).map_err(Failure::from).into()
    }

    /// Change my password
    ///
    /// Checks the current password and sets the new one. Every token of the
    /// account, from every login, is refused from then on (by this instance at
    /// once, by every other within a second); the answer is a new token pair.
    #[oai(
        path = "/users/me/password",
        method = "patch",
        operation_id = "change_password"
    )]
    async fn change_password(
        &self,
        state: Data<&AppState<A>>,
        req: &Request,
        token: AccessToken<A>,
        body: JsonBody<PasswordChange>,
    ) -> Reply<ChangePasswordResponse, (Token, Input, Body, Database)> {
        let client = client_address(req, &state.trusted_proxies);
        let result = users::change_password(
            &state.users,
            &state.passwords,
            &state.tokens,
            &state.login_throttle,
            &state.revocations,
            state.password_policy,
            &client,
            &token.0,
            &body.current_password,
            &body.new_password,
        )
        .await;
        use ChangePasswordResponse as Answer;
        match result {
            Ok(pair) => Ok(Answer::Ok(Json(pair.into()))),
            Err(AccountError::Invalid(error)) => Err(Failure::BadRequest(error.to_string())),
            Err(error @ AccountError::WrongPassword) => Ok(Answer::WrongPassword(message(error))),
            Err(error @ AccountError::Throttled(wait)) => Ok(Answer::TooManyRequests(
                message(error),
                retry_after_secs(wait),
            )),
            Err(AccountError::Fault(Fault::Hashing(error @ HashingError::Busy))) => {
                Ok(Answer::TooManyRequests(message(error), 1))
            }
            Err(error) => account_failure(error, Answer::NotFound),
        }
        .into()
    }

    /// Delete my account
    ///
    /// Deletes the caller's account: every token of it is revoked, and the
    /// username is free again. Its orders stay (admins still see them).
    #[oai(path = "/users/me", method = "delete", operation_id = "delete_me")]
    async fn delete_me(
        &self,
        state: Data<&AppState<A>>,
        token: AccessToken<A>,
    ) -> Reply<DeleteOwnAccountResponse, (Token, Database)> {
        let result =
            users::delete_own_account(&state.users, &state.tokens, &state.revocations, &token.0)
                .await;
        match result {
            Ok(()) => Ok(DeleteOwnAccountResponse::Deleted),
            Err(error @ (AccountError::OwnAccount | AccountError::LastAdmin)) => {
                Ok(DeleteOwnAccountResponse::Conflict(message(error)))
            }
            Err(error) => account_failure(error, DeleteOwnAccountResponse::NotFound),
        }
        .into()
    }

    /// Who am I
    ///
    /// The caller's username, roles, registration time and state.
    #[oai(path = "/users/me", method = "get", operation_id = "me")]
    async fn me(
        &self,
        state: Data<&AppState<A>>,
        token: AccessToken<A>,
    ) -> Reply<ProfileResponse, (Token, Database)> {
        match users::profile(&state.users, &token.0.sub).await {
            Ok(user) => Ok(ProfileResponse::Ok(Json(user.into()))),
            Err(error @ ProfileError::NotFound(_)) => Ok(ProfileResponse::NotFound(message(error))),
            Err(ProfileError::Store(error)) => Err(error.into()),
        }
        .into()
    }
}

/// An account error an operation does not answer itself: the store's and
/// the hasher's failures are shared; any other means the account is gone
/// (or, for a new account, breaks a rule), the operation's own answer.
pub fn account_failure<T>(error: AccountError, own: fn(Json<ApiError>) -> T) -> Result<T, Failure> {
    match error {
        AccountError::Fault(fault) => Err(fault.into()),
        error => Ok(own(message(error))),
    }
}
