//! What the account use cases need: a store of users and a password hasher.

use std::future::Future;

use super::tokens::Revocation;
use crate::domain::user::{PasswordHash, Role, User, Username};
use crate::services::StoreError;

/// What a guarded account write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Done,
    /// The account is gone, or changed since it was read (its epoch moved).
    Stale,
    /// It would leave no enabled admin.
    LastAdmin,
}

/// Where users are kept.
pub trait UserRepository: Send + Sync {
    /// Stores a new user; [`AddUserError::Taken`] if the username exists.
    fn add(&self, user: &User) -> impl Future<Output = Result<(), AddUserError>> + Send;
    fn get(
        &self,
        username: &Username,
    ) -> impl Future<Output = Result<Option<User>, StoreError>> + Send;
    /// Adds a role to an existing user; `Ok(false)` if there is no such user.
    fn grant_role(
        &self,
        username: &Username,
        role: Role,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// A page of users ordered by username, strictly after `after`.
    fn list(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<User>, StoreError>> + Send;
    /// Atomically: replaces the stored account by `changed` if its epoch is
    /// still `changed.epoch - 1`, and records `revocation`. With
    /// `keep_an_admin`, refuses ([`Written::LastAdmin`]) when no other
    /// enabled admin would be left.
    fn update(
        &self,
        changed: &User,
        revocation: &Revocation,
        keep_an_admin: bool,
    ) -> impl Future<Output = Result<Written, StoreError>> + Send;
    /// Atomically: deletes the account if its epoch is still `epoch`, and
    /// records `revocation`; `keep_an_admin` as for [`UserRepository::update`].
    fn delete(
        &self,
        account_id: &str,
        epoch: i64,
        revocation: &Revocation,
        keep_an_admin: bool,
    ) -> impl Future<Output = Result<Written, StoreError>> + Send;
}

#[derive(Debug, thiserror::Error)]
pub enum AddUserError {
    #[error("username taken")]
    Taken,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Hashes and verifies passwords (slow on purpose; off the async executor).
pub trait PasswordHasher: Send + Sync {
    fn hash(
        &self,
        password: &str,
    ) -> impl Future<Output = Result<PasswordHash, HashingError>> + Send;
    /// With no hash (unknown user), verifies against a dummy hash so that the
    /// answer takes as long as for a wrong password, and returns `false`.
    fn verify(
        &self,
        password: &str,
        hash: Option<&PasswordHash>,
    ) -> impl Future<Output = Result<bool, HashingError>> + Send;
}

#[derive(Debug, thiserror::Error)]
pub enum HashingError {
    #[error("password hashing failed: {0}")]
    Failed(String),
    /// The bounded queue of passwords to hash is full: answered at once
    /// rather than queued without end.
    #[error("Too many logins at once; retry shortly")]
    Busy,
}
