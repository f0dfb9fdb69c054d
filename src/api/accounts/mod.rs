//! `accounts` tag: administration of accounts, for the `admin` role.

mod schemas;

use std::marker::PhantomData;

use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, OpenApi};

pub use self::schemas::*;
use super::auth::AdminToken;
use super::error::{ApiError, Failure, message};
use super::fields::{Cursor, PageLimit, UsernameField};
use super::json_body::JsonBody;
use super::reply::{Admin, Body, Database, ErrorExamples, Hashing, Input, Reply, example};
use super::users::{Profile, account_failure};
use super::{Adapters, ApiTags, AppState};
use crate::domain::user::{AccountChange, User};
use crate::services::users::{self, AccountError};

pub struct AccountsApi<A>(pub(super) PhantomData<fn() -> A>);

#[derive(ApiResponse)]
pub enum ListAccountsResponse {
    /// A page of accounts.
    #[oai(status = 200)]
    Ok(Json<AccountPage>),
}

#[derive(ApiResponse)]
pub enum CreateAccountResponse {
    /// Created.
    #[oai(status = 201)]
    Created(Json<Profile>),
    /// The username is taken (regardless of case).
    #[oai(status = 409)]
    Conflict(Json<ApiError>),
}

#[derive(ApiResponse)]
pub enum GetAccountResponse {
    /// The account.
    #[oai(status = 200)]
    Ok(Json<Profile>),
    /// No such account.
    #[oai(status = 404)]
    NotFound(Json<ApiError>),
}

#[derive(ApiResponse)]
pub enum UpdateAccountResponse {
    /// The account as changed. If anything changed, every token it held is revoked.
    #[oai(status = 200)]
    Ok(Json<Profile>),
    /// No such account.
    #[oai(status = 404)]
    NotFound(Json<ApiError>),
    /// Refused, with the reason: admins cannot disable or demote themselves,
    /// and the last enabled admin cannot be disabled or demoted.
    #[oai(status = 409)]
    Conflict(Json<ApiError>),
}

#[derive(ApiResponse)]
pub enum DeleteAccountResponse {
    /// Deleted: every token of the account is revoked and the username is free again.
    #[oai(status = 204)]
    Deleted,
    /// No such account.
    #[oai(status = 404)]
    NotFound(Json<ApiError>),
    /// Refused, with the reason: admins cannot delete themselves, and the last
    /// enabled admin cannot be deleted.
    #[oai(status = 409)]
    Conflict(Json<ApiError>),
}

fn no_such_account() -> (u16, Json<ApiError>) {
    (404, message(AccountError::NotFound(example::USER.into())))
}

impl ErrorExamples for CreateAccountResponse {
    fn error_examples() -> Vec<(u16, Json<ApiError>)> {
        vec![(
            409,
            message(AccountError::UsernameTaken(example::USER.into())),
        )]
    }
}

impl ErrorExamples for GetAccountResponse {
    fn error_examples() -> Vec<(u16, Json<ApiError>)> {
        vec![no_such_account()]
    }
}

impl ErrorExamples for UpdateAccountResponse {
    fn error_examples() -> Vec<(u16, Json<ApiError>)> {
        vec![no_such_account(), (409, message(AccountError::OwnAccount))]
    }
}

impl ErrorExamples for DeleteAccountResponse {
    fn error_examples() -> Vec<(u16, Json<ApiError>)> {
        vec![no_such_account(), (409, message(AccountError::OwnAccount))]
    }
}

/// Examples of this tag's own error responses.
pub fn error_examples() -> Vec<(u16, &'static str, Json<ApiError>)> {
    [
        CreateAccountResponse::described_examples(),
        GetAccountResponse::described_examples(),
        UpdateAccountResponse::described_examples(),
        DeleteAccountResponse::described_examples(),
    ]
    .concat()
}

#[OpenApi(tag = "ApiTags::Accounts")]
impl<A: Adapters> AccountsApi<A> {
    /// List accounts
    ///
    /// Pages through every account, ordered by username. Requires the `admin` role.
    #[oai(path = "/users", method = "get", operation_id = "list_users")]
    async fn list_users(
        &self,
        state: Data<&AppState<A>>,
        _admin: AdminToken<A>,
        /// Accounts per page.
        #[oai(default)]
        limit: Query<PageLimit>,
        /// `next_cursor` of the previous page of this same listing (same
        /// filters); a cursor of another listing gets 400.
        cursor: Query<Option<Cursor>>,
    ) -> Reply<ListAccountsResponse, (Admin, Input, Database)> {
        const LISTING: &str = "users";
        let after = match Cursor::resume::<String>(cursor.0.as_ref(), LISTING) {
            Ok(after) => after,
            Err(failure) => return Err(failure).into(),
        };
        let listed = users::list_users(&state.users, after.as_deref(), limit.probe());
        let page = |users: Vec<User>| {
            let (users, next_cursor) = limit.page(users, LISTING, |u| u.username.to_string());
            ListAccountsResponse::Ok(Json(AccountPage {
                users: users.into_iter().map(Profile::from).collect(),
                next_cursor,
            }))
        };
        listed.await.map(page).map_err(Failure::from).into()
    }

    /// Create an account
    ///
    /// Creates an account with the given roles, whether or not registration is
    /// open. Requires the `admin` role.
    #[oai(path = "/users", method = "post", operation_id = "create_user")]
    async fn create_user(
        &self,
        state: Data<&AppState<A>>,
        _admin: AdminToken<A>,
        body: JsonBody<NewAccount>,
    ) -> Reply<CreateAccountResponse, (Admin, Input, Body, Hashing)> {
        let result = users::create_user(
            &state.users,
            &state.passwords,
            state.password_policy,
            &body.username,
            &body.password,
            &roles(&body.roles),
        )
        .await;
        match result {
            Ok(user) => Ok(CreateAccountResponse::Created(Json(user.into()))),
            Err(error @ AccountError::UsernameTaken(_)) => {
                Ok(CreateAccountResponse::Conflict(message(error)))
            }
            Err(AccountError::Fault(fault)) => Err(fault.into()),
            Err(error) => Err(Failure::BadRequest(error.to_string())),
        }
        .into()
    }

    /// Get an account
    ///
    /// The account's profile. Requires the `admin` role.
    #[oai(path = "/users/:username", method = "get", operation_id = "get_user")]
    async fn get_user(
        &self,
        state: Data<&AppState<A>>,
        _admin: AdminToken<A>,
        /// The username (case-insensitive).
        username: Path<UsernameField>,
    ) -> Reply<GetAccountResponse, (Admin, Input, Database)> {
        match users::get_user(&state.users, &username.0).await {
            Ok(user) => Ok(GetAccountResponse::Ok(Json(user.into()))),
            Err(error) => account_failure(error, GetAccountResponse::NotFound),
        }
        .into()
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
        state: Data<&AppState<A>>,
        admin: AdminToken<A>,
        /// The username (case-insensitive).
        username: Path<UsernameField>,
        body: JsonBody<AccountUpdate>,
    ) -> Reply<UpdateAccountResponse, (Admin, Input, Body, Database)> {
        // Absent means "unchanged"; null means nothing and is refused.
        for (field, null) in [
            ("roles", body.roles.is_null()),
            ("disabled", body.disabled.is_null()),
        ] {
            if null {
                let problem = format!("Invalid request body: {field} must not be null");
                return Err(Failure::BadRequest(problem)).into();
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
        match result {
            Ok(user) => Ok(UpdateAccountResponse::Ok(Json(user.into()))),
            Err(error @ (AccountError::OwnAccount | AccountError::LastAdmin)) => {
                Ok(UpdateAccountResponse::Conflict(message(error)))
            }
            Err(error @ AccountError::NoRoles) => Err(Failure::BadRequest(error.to_string())),
            Err(error) => account_failure(error, UpdateAccountResponse::NotFound),
        }
        .into()
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
        state: Data<&AppState<A>>,
        admin: AdminToken<A>,
        /// The username (case-insensitive).
        username: Path<UsernameField>,
    ) -> Reply<DeleteAccountResponse, (Admin, Input, Database)> {
        let result = users::delete_user(
            &state.users,
            &state.tokens,
            &state.revocations,
            &admin.0,
            &username.0,
        )
        .await;
        match result {
            Ok(()) => Ok(DeleteAccountResponse::Deleted),
            Err(error @ (AccountError::OwnAccount | AccountError::LastAdmin)) => {
                Ok(DeleteAccountResponse::Conflict(message(error)))
            }
            Err(error) => account_failure(error, DeleteAccountResponse::NotFound),
        }
        .into()
    }
}
