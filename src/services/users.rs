//! Registration, login, the caller's profile, and granting the admin role.

use std::future::Future;

use chrono::Utc;

use super::StoreError;
use super::tokens::{TokenIssueError, TokenIssuer, TokenPair, issue_pair};
use crate::domain::user::{PasswordHash, PasswordPolicy, Role, User, UserError, Username};

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
#[error("password hashing failed: {0}")]
pub struct HashingError(pub String);

#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    #[error(transparent)]
    Invalid(#[from] UserError),
    #[error("Username {0} is already taken")]
    UsernameTaken(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Hashing(#[from] HashingError),
    #[error(transparent)]
    Issue(#[from] TokenIssueError),
}

#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// Deliberately the same for an unknown user and a wrong password.
    #[error("Bad username or password")]
    BadCredentials,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Hashing(#[from] HashingError),
    #[error(transparent)]
    Issue(#[from] TokenIssueError),
}

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("User {0} no longer exists")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Registers a user with the `user` role and logs them in.
pub async fn register<U, H, T>(
    users: &U,
    hasher: &H,
    issuer: &T,
    policy: PasswordPolicy,
    username: &str,
    password: &str,
) -> Result<(User, TokenPair), RegistrationError>
where
    U: UserRepository,
    H: PasswordHasher,
    T: TokenIssuer,
{
    let requested = username;
    let username = Username::parse(requested)?;
    policy.check(password)?;
    let user = User::new(username, hasher.hash(password).await?, Utc::now());
    match users.add(&user).await {
        Ok(()) => {}
        Err(AddUserError::Taken) => {
            return Err(RegistrationError::UsernameTaken(requested.to_owned()));
        }
        Err(AddUserError::Store(error)) => return Err(error.into()),
    }
    let tokens = issue_pair(issuer, &user.username, &user.roles, None)?;
    Ok((user, tokens))
}

/// Checks the password and starts a new login (a new token family).
pub async fn login<U, H, T>(
    users: &U,
    hasher: &H,
    issuer: &T,
    username: &str,
    password: &str,
) -> Result<(User, TokenPair), LoginError>
where
    U: UserRepository,
    H: PasswordHasher,
    T: TokenIssuer,
{
    let user = match Username::parse(username) {
        Ok(username) => users.get(&username).await?,
        Err(_) => None,
    };
    let hash = user.as_ref().map(|user| &user.password_hash);
    if !hasher.verify(password, hash).await? {
        return Err(LoginError::BadCredentials);
    }
    let user = user.ok_or(LoginError::BadCredentials)?;
    let tokens = issue_pair(issuer, &user.username, &user.roles, None)?;
    Ok((user, tokens))
}

pub async fn profile<U: UserRepository>(users: &U, subject: &str) -> Result<User, ProfileError> {
    let missing = || ProfileError::NotFound(subject.to_owned());
    let username = Username::parse(subject).map_err(|_| missing())?;
    users.get(&username).await?.ok_or_else(missing)
}

/// What `create_admin` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminGrant {
    Created,
    Promoted,
}

/// Grants `admin` to an existing user, or creates an admin with the password
/// that `password` supplies (asked for only when the user does not exist).
pub async fn create_admin<U, H, E>(
    users: &U,
    hasher: &H,
    policy: PasswordPolicy,
    username: &str,
    password: impl FnOnce() -> Result<String, E>,
) -> Result<AdminGrant, CreateAdminError<E>>
where
    U: UserRepository,
    H: PasswordHasher,
{
    let username = Username::parse(username)?;
    if users.grant_role(&username, Role::Admin).await? {
        return Ok(AdminGrant::Promoted);
    }
    let password = password().map_err(CreateAdminError::Password)?;
    policy.check(&password)?;
    let mut user = User::new(username, hasher.hash(&password).await?, Utc::now());
    user.roles.push(Role::Admin);
    match users.add(&user).await {
        Ok(()) => Ok(AdminGrant::Created),
        // Registered in the meantime: promote that user instead.
        Err(AddUserError::Taken) => {
            users.grant_role(&user.username, Role::Admin).await?;
            Ok(AdminGrant::Promoted)
        }
        Err(AddUserError::Store(error)) => Err(error.into()),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CreateAdminError<E> {
    #[error(transparent)]
    Invalid(#[from] UserError),
    #[error("cannot read the password: {0}")]
    Password(E),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Hashing(#[from] HashingError),
}
