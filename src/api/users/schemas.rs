//! The bodies and responses of the `users` tag.

use chrono::{DateTime, Utc};
use poem_openapi::payload::Json;
use poem_openapi::types::Example;
use poem_openapi::{ApiResponse, Object};

use crate::api::error::{ApiError, message, msg};
use crate::api::fields::UsernameField;
use crate::api::reply::{ErrorExamples, example};
use crate::domain::user::User;
use crate::metrics::LoginOutcome;
use crate::services::tokens::TokenPair;
use crate::services::users::{AccountError, LoginError, ProfileError, RegistrationError};

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
pub enum RegistrationResponse {
    /// Registered with the `user` role, and logged in.
    #[oai(status = 201)]
    Created(Json<TokenPairBody>),
    /// Registration is closed (`auth.registration = "closed"`): an admin
    /// creates accounts with `POST /users`.
    #[oai(status = 403)]
    Closed(Json<ApiError>),
    /// The username is taken (regardless of case).
    #[oai(status = 409)]
    Conflict(Json<ApiError>),
}

impl ErrorExamples for RegistrationResponse {
    fn error_examples() -> Vec<(u16, Json<ApiError>)> {
        vec![
            (403, message(super::REGISTRATION_CLOSED)),
            (
                409,
                message(RegistrationError::UsernameTaken(example::USER.into())),
            ),
        ]
    }
}

#[derive(ApiResponse)]
pub enum LoginResponse {
    /// Logged in: a new token pair starting a new login.
    #[oai(status = 200)]
    Ok(Json<TokenPairBody>),
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
}

impl LoginResponse {
    /// What the metrics count of this answer.
    pub fn outcome(&self) -> LoginOutcome {
        match self {
            Self::Ok(_) => LoginOutcome::Ok,
            Self::BadCredentials(..) => LoginOutcome::BadCredentials,
            Self::Disabled(_) => LoginOutcome::Disabled,
            Self::TooManyRequests(..) => LoginOutcome::Throttled,
        }
    }
}

impl ErrorExamples for LoginResponse {
    fn error_examples() -> Vec<(u16, Json<ApiError>)> {
        vec![
            (401, msg(LoginError::BadCredentials)),
            (403, msg(LoginError::Disabled)),
            (429, msg(LoginError::Throttled(Default::default()))),
        ]
    }
}

#[derive(ApiResponse)]
pub enum ChangePasswordResponse {
    /// Changed. Every earlier token of the account, from every login, is
    /// revoked (at once here, within a second on every other instance); this
    /// new pair starts a new login.
    #[oai(status = 200)]
    Ok(Json<TokenPairBody>),
    /// The current password is wrong; nothing changed. Counts as a failed login.
    #[oai(status = 403)]
    WrongPassword(Json<ApiError>),
    /// The account no longer exists.
    #[oai(status = 404)]
    NotFound(Json<ApiError>),
    /// Too many failed password checks for this account from this address,
    /// or too many passwords being hashed at once; retry after `Retry-After` seconds.
    #[oai(status = 429)]
    TooManyRequests(
        Json<ApiError>,
        /// Seconds to wait before trying again.
        #[oai(header = "Retry-After")]
        u64,
    ),
}

impl ErrorExamples for ChangePasswordResponse {
    fn error_examples() -> Vec<(u16, Json<ApiError>)> {
        vec![
            (403, message(AccountError::WrongPassword)),
            (404, message(AccountError::NotFound(example::USER.into()))),
            (429, message(AccountError::Throttled(Default::default()))),
        ]
    }
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
}

impl ErrorExamples for DeleteOwnAccountResponse {
    fn error_examples() -> Vec<(u16, Json<ApiError>)> {
        vec![
            (404, message(AccountError::NotFound(example::USER.into()))),
            (409, message(AccountError::OwnAccount)),
        ]
    }
}

#[derive(ApiResponse)]
pub enum RefreshResponse {
    /// A new access token and a new refresh token; the one presented is now used up.
    #[oai(status = 200)]
    Ok(Json<TokenPairBody>),
}

#[derive(ApiResponse)]
pub enum LogoutResponse {
    /// The token (and, for a refresh token, its whole login) is revoked.
    #[oai(status = 200)]
    Ok(Json<LogoutBody>),
}

#[derive(ApiResponse)]
pub enum ProfileResponse {
    /// The caller's profile.
    #[oai(status = 200)]
    Ok(Json<Profile>),
    /// The token is valid but its user no longer exists.
    #[oai(status = 404)]
    NotFound(Json<ApiError>),
}

impl ErrorExamples for ProfileResponse {
    fn error_examples() -> Vec<(u16, Json<ApiError>)> {
        vec![(404, message(ProfileError::NotFound(example::USER.into())))]
    }
}

/// Examples of this tag's own error responses.
pub fn error_examples() -> Vec<(u16, &'static str, Json<ApiError>)> {
    [
        RegistrationResponse::described_examples(),
        LoginResponse::described_examples(),
        ChangePasswordResponse::described_examples(),
        DeleteOwnAccountResponse::described_examples(),
        ProfileResponse::described_examples(),
    ]
    .concat()
}
