//! `users` tag: registration, login, token refresh, logout, and the caller's profile.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::payload::Json;
use poem_openapi::registry::{MetaSchema, MetaSchemaRef};
use poem_openapi::types::{Example, ParseError, ParseFromJSON, ParseResult, ToJSON, Type};
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde_json::Value;

use poem::Request;

use super::auth::{AccessToken, AnyToken, Protected, RefreshToken};
use super::client::client_address;
use super::error::{
    ApiError, AuthErrorBody, bad_request, error_body, internal_error, message, unavailable,
};
use super::json_body::JsonBody;
use super::{ApiTags, AppState};
use crate::config::Registration;
use crate::domain::user::{User, Username};
use crate::metrics::{LoginOutcome, metrics};
use crate::services::tokens::{self, AuthError, TokenPair};
use crate::services::users::{
    self, AccountError, HashingError, LoginError, ProfileError, RegistrationError,
};

pub struct UsersApi;

/// A username as sent: its schema states the rule of [`Username::parse`], which
/// checks it (registration answers 400 with the rule in words; login answers
/// 401 as for any unknown user). Only a string over 256 characters is refused here.
#[derive(Debug, serde::Deserialize)]
#[serde(transparent)]
pub struct UsernameField(pub String);

impl std::ops::Deref for UsernameField {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl Type for UsernameField {
    const IS_REQUIRED: bool = true;
    type RawValueType = Self;
    type RawElementValueType = Self;

    fn name() -> Cow<'static, str> {
        "username".into()
    }

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Inline(Box::new(MetaSchema {
            min_length: Some(Username::MIN_LENGTH),
            max_length: Some(Username::MAX_LENGTH),
            pattern: Some(r"^[A-Za-z0-9_.-]+$".to_owned()),
            ..MetaSchema::new("string")
        }))
    }

    fn as_raw_value(&self) -> Option<&Self> {
        Some(self)
    }

    fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a Self> + 'a> {
        Box::new(self.as_raw_value().into_iter())
    }
}

impl ParseFromJSON for UsernameField {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        let text = String::parse_from_json(value).map_err(ParseError::propagate)?;
        if text.chars().count() > 256 {
            return Err(ParseError::custom("longer than 256 characters"));
        }
        Ok(Self(text))
    }
}

impl ToJSON for UsernameField {
    fn to_json(&self) -> Option<Value> {
        self.0.to_json()
    }
}

/// A username and password.
#[derive(Debug, Object, serde::Deserialize)]
#[oai(example)]
pub struct Credentials {
    /// 3–64 characters: letters, digits, `_`, `-` or `.`. Usernames are
    /// case-insensitive and stored in lower case.
    pub username: UsernameField,
    /// Between the configured bounds (by default 8–256 characters).
    #[oai(validator(max_length = 4096))]
    pub password: String,
}

impl Example for Credentials {
    fn example() -> Self {
        Self {
            username: UsernameField("alice".to_owned()),
            password: "correct horse battery".to_owned(),
        }
    }
}

/// A new access token and refresh token.
#[derive(Debug, Object)]
#[oai(example)]
pub struct TokenPairBody {
    /// Send as `Authorization: Bearer <access_token>`; valid for `expires_in` seconds.
    pub access_token: String,
    /// Exchange at `POST /users/refresh` for a new pair. Single use: presenting
    /// it twice revokes the whole login.
    pub refresh_token: String,
    /// Always `bearer`.
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: i64,
}

impl Example for TokenPairBody {
    fn example() -> Self {
        Self {
            access_token: "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"
                .to_owned(),
            refresh_token: "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9.eyJ0eXBlIjoicmVmcmVzaCJ9.c2ln"
                .to_owned(),
            token_type: "bearer".to_owned(),
            expires_in: 900,
        }
    }
}

impl From<TokenPair> for TokenPairBody {
    fn from(pair: TokenPair) -> Self {
        let claims = &pair.access.claims;
        Self {
            expires_in: claims.exp - claims.iat,
            access_token: pair.access.token,
            refresh_token: pair.refresh.token,
            token_type: "bearer".to_owned(),
        }
    }
}

/// A user as the API shows it: never with a password or its hash.
#[derive(Debug, Object)]
#[oai(example)]
pub struct Profile {
    /// Lower-cased username.
    pub username: String,
    /// `user`, and `admin` for administrators.
    pub roles: Vec<String>,
    /// When the user registered.
    pub created_at: DateTime<Utc>,
    /// A disabled account cannot log in (403) and its tokens are revoked.
    pub disabled: bool,
}

impl Example for Profile {
    fn example() -> Self {
        Self {
            username: "alice".to_owned(),
            roles: vec!["user".to_owned()],
            created_at: DateTime::from_timestamp(1_767_225_600, 0).unwrap_or_default(),
            disabled: false,
        }
    }
}

impl From<User> for Profile {
    fn from(user: User) -> Self {
        Self {
            username: user.username.to_string(),
            roles: user.roles.iter().map(|r| r.as_str().to_owned()).collect(),
            created_at: user.created_at,
            disabled: user.disabled,
        }
    }
}

/// The current password and the new one.
#[derive(Debug, Object, serde::Deserialize)]
#[oai(example)]
pub struct PasswordChange {
    #[oai(validator(max_length = 4096))]
    pub current_password: String,
    /// Between the configured bounds (by default 8–256 characters).
    #[oai(validator(max_length = 4096))]
    pub new_password: String,
}

impl Example for PasswordChange {
    fn example() -> Self {
        Self {
            current_password: "correct horse battery".to_owned(),
            new_password: "staple battery horse correct".to_owned(),
        }
    }
}

/// Confirmation of a logout.
#[derive(Debug, Object)]
#[oai(example)]
pub struct LogoutBody {
    /// What was revoked: `access_token`, or `login` (the refresh token and every
    /// token of its login).
    pub revoked: String,
}

impl Example for LogoutBody {
    fn example() -> Self {
        Self {
            revoked: "login".to_owned(),
        }
    }
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "registration_bad_request")]
pub enum RegistrationResponse {
    /// Registered with the `user` role, and logged in.
    #[oai(status = 201)]
    Created(Json<TokenPairBody>),
    /// The body is not valid JSON, a field is missing, or the username or
    /// password breaks the rules; the message names the field.
    #[oai(status = 400)]
    BadRequest(Json<ApiError>),
    /// Registration is closed (`auth.registration = "closed"`): an admin
    /// creates accounts with `POST /users`.
    #[oai(status = 403)]
    Closed(Json<ApiError>),
    /// The username is taken (regardless of case).
    #[oai(status = 409)]
    Conflict(Json<ApiError>),
    /// The request body is over the size limit (64 KiB by default).
    // Answered by `middleware::BodyLimit` before the handler runs.
    #[oai(status = 413)]
    PayloadTooLarge(Json<ApiError>),
    /// The database is unreachable, or too many passwords are being hashed; retry later.
    #[oai(status = 503)]
    Unavailable(Json<ApiError>),
}

fn registration_bad_request(error: poem::Error) -> RegistrationResponse {
    RegistrationResponse::BadRequest(bad_request(error))
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "login_bad_request")]
pub enum LoginResponse {
    /// Logged in: a new token pair starting a new login.
    #[oai(status = 200)]
    Ok(Json<TokenPairBody>),
    /// The body is not valid JSON or a field is missing.
    #[oai(status = 400)]
    BadRequest(Json<ApiError>),
    /// `{"msg": "Bad username or password"}`, the same for an unknown user.
    /// Counts as a failed login for throttling.
    #[oai(status = 401)]
    BadCredentials(
        Json<ApiError>,
        /// Always `Bearer`.
        #[oai(header = "WWW-Authenticate")]
        String,
    ),
    /// `{"msg": "Account disabled"}`: the password was right, but an admin
    /// disabled the account.
    #[oai(status = 403)]
    Disabled(Json<ApiError>),
    /// The request body is over the size limit (64 KiB by default).
    // Answered by `middleware::BodyLimit` before the handler runs.
    #[oai(status = 413)]
    PayloadTooLarge(Json<ApiError>),
    /// Throttled, without checking the password: 5 failed logins of this
    /// username from this client address within 15 minutes (the wait then
    /// doubles with each further failure, up to 15 minutes), or too many
    /// failures from this address across usernames; or too many logins are
    /// being checked at once. Retry after `Retry-After` seconds.
    #[oai(status = 429)]
    TooManyRequests(
        Json<ApiError>,
        /// Seconds to wait before trying again.
        #[oai(header = "Retry-After")]
        u64,
    ),
    /// The database is unreachable; retry later.
    #[oai(status = 503)]
    Unavailable(Json<ApiError>),
}

fn login_bad_request(error: poem::Error) -> LoginResponse {
    LoginResponse::BadRequest(bad_request(error))
}

/// Whole seconds to wait, at least one.
pub fn retry_after_secs(wait: std::time::Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "password_bad_request")]
pub enum ChangePasswordResponse {
    /// Changed. Every earlier token of the account, from every login, is
    /// revoked (at once here, within a second on every other instance); this
    /// new pair starts a new login.
    #[oai(status = 200)]
    Ok(Json<TokenPairBody>),
    /// The body is not valid JSON, a field is missing, or the new password
    /// breaks the rules; the message names the field.
    #[oai(status = 400)]
    BadRequest(Json<ApiError>),
    /// The current password is wrong; nothing changed. Counts as a failed login.
    #[oai(status = 403)]
    WrongPassword(Json<ApiError>),
    /// The account no longer exists.
    #[oai(status = 404)]
    NotFound(Json<ApiError>),
    /// The request body is over the size limit (64 KiB by default).
    // Answered by `middleware::BodyLimit` before the handler runs.
    #[oai(status = 413)]
    PayloadTooLarge(Json<ApiError>),
    /// Too many failed password checks for this account from this address,
    /// or too many passwords being hashed at once; retry after `Retry-After` seconds.
    #[oai(status = 429)]
    TooManyRequests(
        Json<ApiError>,
        /// Seconds to wait before trying again.
        #[oai(header = "Retry-After")]
        u64,
    ),
    /// The database is unreachable; retry later.
    #[oai(status = 503)]
    Unavailable(Json<ApiError>),
}

fn password_bad_request(error: poem::Error) -> ChangePasswordResponse {
    ChangePasswordResponse::BadRequest(bad_request(error))
}

#[derive(ApiResponse)]
pub enum DeleteOwnAccountResponse {
    /// Deleted; every token of the account is revoked and the username is free again.
    #[oai(status = 204)]
    Deleted,
    /// The account no longer exists.
    #[oai(status = 404)]
    NotFound(Json<ApiError>),
    /// Admins cannot delete their own account (another admin can).
    #[oai(status = 409)]
    Conflict(Json<ApiError>),
    /// The database is unreachable; retry later.
    #[oai(status = 503)]
    Unavailable(Json<ApiError>),
}

#[derive(ApiResponse)]
pub enum RefreshResponse {
    /// A new access token and a new refresh token; the one presented is now used up.
    #[oai(status = 200)]
    Ok(Json<TokenPairBody>),
    /// The database is unreachable; retry later.
    #[oai(status = 503)]
    Unavailable(Json<ApiError>),
}

#[derive(ApiResponse)]
pub enum LogoutResponse {
    /// The token (and, for a refresh token, its whole login) is revoked.
    #[oai(status = 200)]
    Ok(Json<LogoutBody>),
    /// The database is unreachable; retry later.
    #[oai(status = 503)]
    Unavailable(Json<ApiError>),
}

#[derive(ApiResponse)]
pub enum ProfileResponse {
    /// The caller's profile.
    #[oai(status = 200)]
    Ok(Json<Profile>),
    /// The token is valid but its user no longer exists.
    #[oai(status = 404)]
    NotFound(Json<ApiError>),
    /// The database is unreachable; retry later.
    #[oai(status = 503)]
    Unavailable(Json<ApiError>),
}

/// Token errors raised inside a use case answer like the extractors' do.
fn token_error<T>(
    error: AuthError,
    unavailable_variant: fn(Json<ApiError>) -> T,
) -> poem::Result<T> {
    match error {
        AuthError::Rejected(rejection) => Err(poem::Error::from_response(
            super::auth::rejection_response(&rejection),
        )),
        AuthError::Store(error) => Ok(unavailable_variant(unavailable(&error))),
        AuthError::Issue(error) => Err(internal_error(&error)),
    }
}

#[OpenApi(tag = "ApiTags::Users")]
impl UsersApi {
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
        state: Data<&AppState>,
        body: JsonBody<Credentials>,
    ) -> poem::Result<RegistrationResponse> {
        if state.registration == Registration::Closed {
            return Ok(RegistrationResponse::Closed(message(
                "Registration is closed: an admin creates accounts",
            )));
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
        Ok(match result {
            Ok((_, tokens)) => RegistrationResponse::Created(Json(tokens.into())),
            Err(RegistrationError::Invalid(error)) => {
                RegistrationResponse::BadRequest(error_body(&error))
            }
            Err(error @ RegistrationError::UsernameTaken(_)) => {
                RegistrationResponse::Conflict(error_body(&error))
            }
            Err(RegistrationError::Store(error)) => {
                RegistrationResponse::Unavailable(unavailable(&error))
            }
            Err(RegistrationError::Hashing(HashingError::Busy)) => {
                RegistrationResponse::Unavailable(error_body(&HashingError::Busy))
            }
            Err(RegistrationError::Hashing(error)) => return Err(internal_error(&error)),
            Err(RegistrationError::Issue(error)) => return Err(internal_error(&error)),
        })
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
        state: Data<&AppState>,
        req: &Request,
        body: JsonBody<Credentials>,
    ) -> poem::Result<LoginResponse> {
        let client = client_address(req, &state.trusted_proxies);
        let result = users::login(
            &state.users,
            &state.passwords,
            &state.tokens,
            &state.login_failures,
            &client,
            &body.username,
            &body.password,
        )
        .await;
        metrics().login(match &result {
            Ok(_) => LoginOutcome::Ok,
            Err(LoginError::BadCredentials) => LoginOutcome::BadCredentials,
            Err(LoginError::Throttled(_) | LoginError::Hashing(HashingError::Busy)) => {
                LoginOutcome::Throttled
            }
            Err(_) => LoginOutcome::Unavailable,
        });
        let msg = |error: &LoginError| {
            Json(ApiError::Token(AuthErrorBody {
                msg: error.to_string(),
            }))
        };
        Ok(match result {
            Ok((_, tokens)) => LoginResponse::Ok(Json(tokens.into())),
            Err(error @ LoginError::BadCredentials) => {
                LoginResponse::BadCredentials(msg(&error), "Bearer".to_owned())
            }
            Err(error @ LoginError::Disabled) => LoginResponse::Disabled(msg(&error)),
            Err(LoginError::Throttled(wait)) => LoginResponse::TooManyRequests(
                msg(&LoginError::Throttled(wait)),
                retry_after_secs(wait),
            ),
            Err(LoginError::Hashing(HashingError::Busy)) => LoginResponse::TooManyRequests(
                Json(ApiError::Token(AuthErrorBody {
                    msg: HashingError::Busy.to_string(),
                })),
                1,
            ),
            Err(LoginError::Store(error)) => LoginResponse::Unavailable(unavailable(&error)),
            Err(LoginError::Hashing(error)) => return Err(internal_error(&error)),
            Err(LoginError::Issue(error)) => return Err(internal_error(&error)),
        })
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
        state: Data<&AppState>,
        token: RefreshToken,
    ) -> poem::Result<Protected<RefreshResponse>> {
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
        match result {
            Ok(pair) => Ok(RefreshResponse::Ok(Json(pair.into()))),
            Err(error) => token_error(error, RefreshResponse::Unavailable),
        }
        .map(Protected::Ok)
    }

    /// Log out
    ///
    /// Revokes the bearer token. With a refresh token, revokes its whole login:
    /// that refresh token and every access token issued with it.
    #[oai(path = "/users/logout", method = "post", operation_id = "logout")]
    async fn logout(
        &self,
        state: Data<&AppState>,
        token: AnyToken,
    ) -> poem::Result<Protected<LogoutResponse>> {
        let revoked = match token.0.kind {
            crate::domain::token::TokenKind::Access => "access_token",
            crate::domain::token::TokenKind::Refresh => "login",
        };
        let result = tokens::logout(
            &state.revocation_store,
            &state.revocations,
            &state.tokens,
            token.0,
        )
        .await;
        match result {
            Ok(()) => Ok(LogoutResponse::Ok(Json(LogoutBody {
                revoked: revoked.to_owned(),
            }))),
            Err(error) => token_error(error, LogoutResponse::Unavailable),
        }
        .map(Protected::Ok)
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
        state: Data<&AppState>,
        req: &Request,
        token: AccessToken,
        body: JsonBody<PasswordChange>,
    ) -> poem::Result<Protected<ChangePasswordResponse>> {
        let client = client_address(req, &state.trusted_proxies);
        let result = users::change_password(
            &state.users,
            &state.passwords,
            &state.tokens,
            &state.login_failures,
            &state.revocations,
            state.password_policy,
            &client,
            &token.0,
            &body.current_password,
            &body.new_password,
        )
        .await;
        Ok(Protected::Ok(match result {
            Ok(pair) => ChangePasswordResponse::Ok(Json(pair.into())),
            Err(AccountError::Invalid(error)) => {
                ChangePasswordResponse::BadRequest(error_body(&error))
            }
            Err(error @ AccountError::WrongPassword) => {
                ChangePasswordResponse::WrongPassword(error_body(&error))
            }
            Err(error @ AccountError::Throttled(wait)) => {
                ChangePasswordResponse::TooManyRequests(error_body(&error), retry_after_secs(wait))
            }
            Err(AccountError::Hashing(HashingError::Busy)) => {
                ChangePasswordResponse::TooManyRequests(error_body(&HashingError::Busy), 1)
            }
            Err(AccountError::Store(error)) => {
                ChangePasswordResponse::Unavailable(unavailable(&error))
            }
            Err(AccountError::Hashing(error)) => return Err(internal_error(&error)),
            Err(AccountError::Issue(error)) => return Err(internal_error(&error)),
            Err(error) => ChangePasswordResponse::NotFound(error_body(&error)),
        }))
    }

    /// Delete my account
    ///
    /// Deletes the caller's account: every token of it is revoked, and the
    /// username is free again. Its orders stay (admins still see them).
    #[oai(path = "/users/me", method = "delete", operation_id = "delete_me")]
    async fn delete_me(
        &self,
        state: Data<&AppState>,
        token: AccessToken,
    ) -> Protected<DeleteOwnAccountResponse> {
        let result =
            users::delete_own_account(&state.users, &state.tokens, &state.revocations, &token.0)
                .await;
        Protected::Ok(match result {
            Ok(()) => DeleteOwnAccountResponse::Deleted,
            Err(error @ (AccountError::OwnAccount | AccountError::LastAdmin)) => {
                DeleteOwnAccountResponse::Conflict(error_body(&error))
            }
            Err(AccountError::Store(error)) => {
                DeleteOwnAccountResponse::Unavailable(unavailable(&error))
            }
            Err(error) => DeleteOwnAccountResponse::NotFound(error_body(&error)),
        })
    }

    /// Who am I
    ///
    /// The caller's username, roles, registration time and state.
    #[oai(path = "/users/me", method = "get", operation_id = "me")]
    async fn me(
        &self,
        state: Data<&AppState>,
        token: super::auth::AccessToken,
    ) -> Protected<ProfileResponse> {
        Protected::Ok(match users::profile(&state.users, &token.0.sub).await {
            Ok(user) => ProfileResponse::Ok(Json(user.into())),
            Err(error @ ProfileError::NotFound(_)) => ProfileResponse::NotFound(error_body(&error)),
            Err(ProfileError::Store(error)) => ProfileResponse::Unavailable(unavailable(&error)),
        })
    }
}
