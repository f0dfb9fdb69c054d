//! `accounts` tag: administration of accounts, for the `admin` role.

use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::types::{Example, MaybeUndefined};
use poem_openapi::{ApiResponse, Enum, Object, OpenApi};

use super::auth::{AdminOnly, AdminToken};
use super::batches::{default_limit, next_cursor};
use super::error::{ApiError, bad_request, error_body, internal_error, message, unavailable};
use super::json_body::JsonBody;
use super::users::{Profile, UsernameField};
use super::{ApiTags, AppState};
use crate::domain::user::{AccountChange, Role};
use crate::services::users::{self, AccountError, HashingError};

pub struct AccountsApi;

/// A role an account may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum, serde::Deserialize)]
#[oai(rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum RoleName {
    User,
    Admin,
}

impl From<RoleName> for Role {
    fn from(role: RoleName) -> Self {
        match role {
            RoleName::User => Role::User,
            RoleName::Admin => Role::Admin,
        }
    }
}

fn roles(names: &[RoleName]) -> Vec<Role> {
    names.iter().copied().map(Role::from).collect()
}

/// A new account, created by an admin.
#[derive(Debug, Object, serde::Deserialize)]
#[oai(example)]
pub struct NewAccount {
    /// 3–64 characters: letters, digits, `_`, `-` or `.` (case-insensitive).
    pub username: UsernameField,
    /// Between the configured bounds (by default 8–256 characters).
    #[oai(validator(max_length = 4096))]
    pub password: String,
    /// At least one role.
    #[oai(validator(min_items = 1, max_items = 2))]
    pub roles: Vec<RoleName>,
}

impl Example for NewAccount {
    fn example() -> Self {
        Self {
            username: UsernameField("bob".to_owned()),
            password: "correct horse battery".to_owned(),
            roles: vec![RoleName::User],
        }
    }
}

/// What to change; absent fields stay as they are (null is refused). Any
/// change revokes every token of the account (roles travel inside tokens).
#[derive(Debug, Object, serde::Deserialize)]
#[oai(example)]
pub struct AccountUpdate {
    /// The account's roles from now on (at least one).
    #[oai(validator(min_items = 1, max_items = 2))]
    #[serde(default)]
    pub roles: MaybeUndefined<Vec<RoleName>>,
    /// `true` disables the account: it cannot log in (403) and its tokens are revoked.
    #[serde(default)]
    pub disabled: MaybeUndefined<bool>,
}

impl Example for AccountUpdate {
    fn example() -> Self {
        Self {
            roles: MaybeUndefined::Value(vec![RoleName::User]),
            disabled: MaybeUndefined::Value(true),
        }
    }
}

/// A page of accounts, by username.
#[derive(Debug, Object)]
pub struct AccountPage {
    pub users: Vec<Profile>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[oai(skip_serializing_if_is_none)]
    pub next_cursor: Option<String>,
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "list_bad_request")]
pub enum ListAccountsResponse {
    /// A page of accounts.
    #[oai(status = 200)]
    Ok(Json<AccountPage>),
    /// A query parameter is out of range; the message names it.
    #[oai(status = 400)]
    BadRequest(Json<ApiError>),
    /// The database is unreachable; retry later.
    #[oai(status = 503)]
    Unavailable(Json<ApiError>),
}

fn list_bad_request(error: poem::Error) -> ListAccountsResponse {
    ListAccountsResponse::BadRequest(bad_request(error))
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "create_bad_request")]
pub enum CreateAccountResponse {
    /// Created.
    #[oai(status = 201)]
    Created(Json<Profile>),
    /// The body is not valid JSON, a field is missing, or the username or
    /// password breaks the rules; the message names the field.
    #[oai(status = 400)]
    BadRequest(Json<ApiError>),
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

fn create_bad_request(error: poem::Error) -> CreateAccountResponse {
    CreateAccountResponse::BadRequest(bad_request(error))
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "get_bad_request")]
pub enum GetAccountResponse {
    /// The account.
    #[oai(status = 200)]
    Ok(Json<Profile>),
    /// The username is malformed.
    #[oai(status = 400)]
    BadRequest(Json<ApiError>),
    /// No such account.
    #[oai(status = 404)]
    NotFound(Json<ApiError>),
    /// The database is unreachable; retry later.
    #[oai(status = 503)]
    Unavailable(Json<ApiError>),
}

fn get_bad_request(error: poem::Error) -> GetAccountResponse {
    GetAccountResponse::BadRequest(bad_request(error))
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "update_bad_request")]
pub enum UpdateAccountResponse {
    /// The account as changed. If anything changed, every token it held is revoked.
    #[oai(status = 200)]
    Ok(Json<Profile>),
    /// The body is not valid JSON or a field is malformed; the message names it.
    #[oai(status = 400)]
    BadRequest(Json<ApiError>),
    /// No such account.
    #[oai(status = 404)]
    NotFound(Json<ApiError>),
    /// Refused, with the reason: admins cannot disable or demote themselves,
    /// and the last enabled admin cannot be disabled or demoted.
    #[oai(status = 409)]
    Conflict(Json<ApiError>),
    /// The request body is over the size limit (64 KiB by default).
    // Answered by `middleware::BodyLimit` before the handler runs.
    #[oai(status = 413)]
    PayloadTooLarge(Json<ApiError>),
    /// The database is unreachable; retry later.
    #[oai(status = 503)]
    Unavailable(Json<ApiError>),
}

fn update_bad_request(error: poem::Error) -> UpdateAccountResponse {
    UpdateAccountResponse::BadRequest(bad_request(error))
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "delete_bad_request")]
pub enum DeleteAccountResponse {
    /// Deleted: every token of the account is revoked and the username is free again.
    #[oai(status = 204)]
    Deleted,
    /// The username is malformed.
    #[oai(status = 400)]
    BadRequest(Json<ApiError>),
    /// No such account.
    #[oai(status = 404)]
    NotFound(Json<ApiError>),
    /// Refused, with the reason: admins cannot delete themselves, and the last
    /// enabled admin cannot be deleted.
    #[oai(status = 409)]
    Conflict(Json<ApiError>),
    /// The database is unreachable; retry later.
    #[oai(status = 503)]
    Unavailable(Json<ApiError>),
}

fn delete_bad_request(error: poem::Error) -> DeleteAccountResponse {
    DeleteAccountResponse::BadRequest(bad_request(error))
}

#[OpenApi(tag = "ApiTags::Accounts")]
impl AccountsApi {
    /// List accounts
    ///
    /// Pages through every account, ordered by username. Requires the `admin` role.
    #[oai(path = "/users", method = "get", operation_id = "list_users")]
    async fn list_users(
        &self,
        state: Data<&AppState>,
        _admin: AdminToken,
        /// Accounts per page, 1–200 (default 50).
        #[oai(
            default = "default_limit",
            validator(minimum(value = "1"), maximum(value = "200"))
        )]
        limit: Query<u32>,
        /// `next_cursor` of the previous page.
        #[oai(validator(min_length = 1, max_length = 100))]
        cursor: Query<Option<String>>,
    ) -> AdminOnly<ListAccountsResponse> {
        let limit = limit.0 as usize;
        let result = users::list_users(&state.users, cursor.0.as_deref(), limit + 1).await;
        AdminOnly::Ok(match result {
            Ok(mut page) => {
                let next_cursor = next_cursor(&mut page, limit, |u| u.username.to_string());
                ListAccountsResponse::Ok(Json(AccountPage {
                    users: page.into_iter().map(Profile::from).collect(),
                    next_cursor,
                }))
            }
            Err(AccountError::Store(error)) => {
                ListAccountsResponse::Unavailable(unavailable(&error))
            }
            Err(error) => ListAccountsResponse::BadRequest(error_body(&error)),
        })
    }

    /// Create an account
    ///
    /// Creates an account with the given roles, whether or not registration is
    /// open. Requires the `admin` role.
    #[oai(path = "/users", method = "post", operation_id = "create_user")]
    async fn create_user(
        &self,
        state: Data<&AppState>,
        _admin: AdminToken,
        body: JsonBody<NewAccount>,
    ) -> poem::Result<AdminOnly<CreateAccountResponse>> {
        let result = users::create_user(
            &state.users,
            &state.passwords,
            state.password_policy,
            &body.username,
            &body.password,
            &roles(&body.roles),
        )
        .await;
        Ok(AdminOnly::Ok(match result {
            Ok(user) => CreateAccountResponse::Created(Json(user.into())),
            Err(error @ AccountError::UsernameTaken(_)) => {
                CreateAccountResponse::Conflict(error_body(&error))
            }
            Err(AccountError::Store(error)) => {
                CreateAccountResponse::Unavailable(unavailable(&error))
            }
            Err(AccountError::Hashing(HashingError::Busy)) => {
                CreateAccountResponse::Unavailable(error_body(&HashingError::Busy))
            }
            Err(AccountError::Hashing(error)) => return Err(internal_error(&error)),
            Err(error) => CreateAccountResponse::BadRequest(error_body(&error)),
        }))
    }

    /// Get an account
    ///
    /// The account's profile. Requires the `admin` role.
    #[oai(path = "/users/:username", method = "get", operation_id = "get_user")]
    async fn get_user(
        &self,
        state: Data<&AppState>,
        _admin: AdminToken,
        /// The username (case-insensitive).
        #[oai(validator(min_length = 1, max_length = 256))]
        username: Path<String>,
    ) -> AdminOnly<GetAccountResponse> {
        AdminOnly::Ok(match users::get_user(&state.users, &username.0).await {
            Ok(user) => GetAccountResponse::Ok(Json(user.into())),
            Err(AccountError::Store(error)) => GetAccountResponse::Unavailable(unavailable(&error)),
            Err(error) => GetAccountResponse::NotFound(error_body(&error)),
        })
    }

    /// Change an account
    ///
    /// Sets the account's roles and/or disables or enables it. Any change
    /// revokes every token of the account, at once on this instance and within
    /// a second on the others (roles travel inside tokens, so a demoted admin
    /// keeps no admin token). Requires the `admin` role.
    #[oai(
        path = "/users/:username",
        method = "patch",
        operation_id = "update_user"
    )]
    async fn update_user(
        &self,
        state: Data<&AppState>,
        admin: AdminToken,
        /// The username (case-insensitive).
        #[oai(validator(min_length = 1, max_length = 256))]
        username: Path<String>,
        body: JsonBody<AccountUpdate>,
    ) -> AdminOnly<UpdateAccountResponse> {
        // Absent means "unchanged"; null means nothing and is refused.
        for (field, null) in [
            ("roles", body.roles.is_null()),
            ("disabled", body.disabled.is_null()),
        ] {
            if null {
                return AdminOnly::Ok(UpdateAccountResponse::BadRequest(message(format!(
                    "Invalid request body: {field} must not be null"
                ))));
            }
        }
        let change = AccountChange {
            roles: body.roles.value().map(|names| roles(names)),
            disabled: body.disabled.value().copied(),
        };
        let result = users::change_account(
            &state.users,
            &state.tokens,
            &state.revocations,
            &admin.0,
            &username.0,
            &change,
        )
        .await;
        AdminOnly::Ok(match result {
            Ok(user) => UpdateAccountResponse::Ok(Json(user.into())),
            Err(error @ (AccountError::OwnAccount | AccountError::LastAdmin)) => {
                UpdateAccountResponse::Conflict(error_body(&error))
            }
            Err(error @ AccountError::NoRoles) => {
                UpdateAccountResponse::BadRequest(error_body(&error))
            }
            Err(AccountError::Store(error)) => {
                UpdateAccountResponse::Unavailable(unavailable(&error))
            }
            Err(error) => UpdateAccountResponse::NotFound(error_body(&error)),
        })
    }

    /// Delete an account
    ///
    /// Deletes the account: every token of it is revoked and the username is
    /// free again. Its orders stay. Requires the `admin` role.
    #[oai(
        path = "/users/:username",
        method = "delete",
        operation_id = "delete_user"
    )]
    async fn delete_user(
        &self,
        state: Data<&AppState>,
        admin: AdminToken,
        /// The username (case-insensitive).
        #[oai(validator(min_length = 1, max_length = 256))]
        username: Path<String>,
    ) -> AdminOnly<DeleteAccountResponse> {
        let result = users::delete_user(
            &state.users,
            &state.tokens,
            &state.revocations,
            &admin.0,
            &username.0,
        )
        .await;
        AdminOnly::Ok(match result {
            Ok(()) => DeleteAccountResponse::Deleted,
            Err(error @ (AccountError::OwnAccount | AccountError::LastAdmin)) => {
                DeleteAccountResponse::Conflict(error_body(&error))
            }
            Err(AccountError::Store(error)) => {
                DeleteAccountResponse::Unavailable(unavailable(&error))
            }
            Err(error) => DeleteAccountResponse::NotFound(error_body(&error)),
        })
    }
}
