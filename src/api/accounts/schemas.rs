//! The bodies of the `accounts` tag.

use poem_openapi::types::{Example, MaybeUndefined};
use poem_openapi::{Enum, Object};

use crate::api::fields::UsernameField;
use crate::api::users::Profile;
use crate::domain::user::Role;

/// A role an account may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum, serde::Deserialize)]
#[oai(rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum RoleName {
    User,
    Admin,
    /// Reads the event feed (`GET /events`) and nothing else.
    Events,
}

impl From<RoleName> for Role {
    fn from(role: RoleName) -> Self {
        match role {
            RoleName::User => Role::User,
            RoleName::Admin => Role::Admin,
            RoleName::Events => Role::Events,
        }
    }
}

pub fn roles(names: &[RoleName]) -> Vec<Role> {
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
