//! Users: who may call the API, and with which roles.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A username, validated and lower-cased: usernames are unique regardless of case.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Username(String);

impl Username {
    pub const MIN_LENGTH: usize = 3;
    pub const MAX_LENGTH: usize = 64;

    /// Accepts 3–64 ASCII letters, digits, `_`, `-` or `.`.
    pub fn parse(raw: &str) -> Result<Self, UserError> {
        let valid_length = (Self::MIN_LENGTH..=Self::MAX_LENGTH).contains(&raw.len());
        let valid_chars = raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if valid_length && valid_chars {
            Ok(Self(raw.to_ascii_lowercase()))
        } else {
            Err(UserError::InvalidUsername)
        }
    }

    /// Names of paths of their own under `/users/`: an account so named could
    /// not be addressed as `/users/{username}`, so new accounts cannot take them.
    pub const RESERVED: [&'static str; 5] = ["login", "logout", "me", "refresh", "registration"];

    /// Like [`Username::parse`], for a new account: also refuses reserved names.
    pub fn parse_new(raw: &str) -> Result<Self, UserError> {
        let username = Self::parse(raw)?;
        if Self::RESERVED.contains(&username.as_str()) {
            return Err(UserError::ReservedUsername);
        }
        Ok(username)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a user may do. Everyone who registers is a `user`; `admin` is granted
/// only from the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Admin,
    /// Reads the event feed (`GET /events`) and nothing else: for the
    /// accounts of systems that follow what happens.
    Events,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Admin => "admin",
            Role::Events => "events",
        }
    }
}

/// A password hash in PHC string form. Its `Debug` never shows the hash.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash(String);

impl PasswordHash {
    pub fn new(phc: String) -> Self {
        Self(phc)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PasswordHash(****)")
    }
}

#[derive(Debug, Clone)]
pub struct User {
    /// Never reused, unlike the username (free again once the account is
    /// deleted): tokens and orders name the account by this id, so a new
    /// account with an old name inherits neither.
    pub account_id: String,
    pub username: Username,
    pub password_hash: PasswordHash,
    pub roles: Vec<Role>,
    pub created_at: DateTime<Utc>,
    /// A disabled account cannot log in or refresh; its tokens were revoked.
    pub disabled: bool,
    /// Raised by every change that must end the account's sessions (password,
    /// roles, disabling). Tokens carry the epoch they were issued in, and a
    /// token of an older epoch is refused: unlike a "not before" time, this
    /// does not depend on the one-second granularity of `iat`.
    pub epoch: i64,
}

impl User {
    pub fn new(username: Username, password_hash: PasswordHash, now: DateTime<Utc>) -> Self {
        Self {
            account_id: uuid::Uuid::new_v4().simple().to_string(),
            username,
            password_hash,
            roles: vec![Role::User],
            created_at: now,
            disabled: false,
            epoch: 0,
        }
    }

    pub fn is_admin(&self) -> bool {
        self.roles.contains(&Role::Admin)
    }

    /// Whether this account stays an enabled admin with these roles and state.
    pub fn is_active_admin(&self) -> bool {
        self.is_admin() && !self.disabled
    }
}

/// An administrator's change to an account; `None` leaves that part as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccountChange {
    pub roles: Option<Vec<Role>>,
    pub disabled: Option<bool>,
}

impl AccountChange {
    /// The account as changed, and whether anything changed.
    pub fn apply(&self, user: &User) -> (User, bool) {
        let mut changed = user.clone();
        if let Some(roles) = &self.roles {
            let mut roles = roles.clone();
            roles.sort_by_key(|role| role.as_str());
            roles.dedup();
            changed.roles = roles;
        }
        if let Some(disabled) = self.disabled {
            changed.disabled = disabled;
        }
        let sorted = |roles: &[Role]| {
            let mut roles = roles.to_vec();
            roles.sort_by_key(|role| role.as_str());
            roles.dedup();
            roles
        };
        let differs =
            sorted(&changed.roles) != sorted(&user.roles) || changed.disabled != user.disabled;
        (changed, differs)
    }
}

/// Length bounds on passwords, in characters.
#[derive(Debug, Clone, Copy)]
pub struct PasswordPolicy {
    pub min_length: usize,
    pub max_length: usize,
}

impl PasswordPolicy {
    pub fn check(&self, password: &str) -> Result<(), UserError> {
        let length = password.chars().count();
        if (self.min_length..=self.max_length).contains(&length) {
            Ok(())
        } else {
            Err(UserError::InvalidPassword {
                min: self.min_length,
                max: self.max_length,
            })
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    #[error(
        "username must be 3 to 64 characters long and use only letters, digits, '_', '-' or '.'"
    )]
    InvalidUsername,
    #[error("username is reserved: login, logout, me, refresh and registration cannot be taken")]
    ReservedUsername,
    #[error("password must be {min} to {max} characters long")]
    InvalidPassword { min: usize, max: usize },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_are_case_insensitive() {
        assert_eq!(
            Username::parse("Alice.B-2_x").unwrap(),
            Username::parse("alice.b-2_X").unwrap()
        );
    }

    #[test]
    fn usernames_outside_the_rules_are_rejected() {
        for bad in [
            "ab",
            &"a".repeat(65),
            "with space",
            "emoji🙂",
            "a/b",
            "$ne",
            "",
        ] {
            assert_eq!(
                Username::parse(bad),
                Err(UserError::InvalidUsername),
                "{bad}"
            );
        }
        assert!(Username::parse(&"a".repeat(64)).is_ok());
    }

    #[test]
    fn new_accounts_cannot_take_the_names_of_paths() {
        for reserved in ["login", "LOGIN", "registration", "refresh", "logout"] {
            assert_eq!(
                Username::parse_new(reserved),
                Err(UserError::ReservedUsername),
                "{reserved}"
            );
            assert!(Username::parse(reserved).is_ok(), "stored ones still read");
        }
        assert!(Username::parse_new("logins").is_ok());
    }

    #[test]
    fn password_bounds_count_characters() {
        let policy = PasswordPolicy {
            min_length: 8,
            max_length: 10,
        };
        assert!(policy.check("12345678").is_ok());
        assert!(policy.check("ééééééééé").is_ok());
        assert!(policy.check("1234567").is_err());
        let error = policy.check("12345678901").unwrap_err();
        assert_eq!(
            error.to_string(),
            "password must be 8 to 10 characters long"
        );
    }

    #[test]
    fn a_password_hash_never_prints() {
        let hash = PasswordHash::new("$argon2id$v=19$secret".to_owned());
        assert!(!format!("{hash:?}").contains("argon2"));
    }
}
