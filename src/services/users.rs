//! Registration, login, self-service (password, deletion), administration of
//! accounts, and granting the admin role from the command line.

use std::time::Duration;

use chrono::Utc;

use super::login_throttle::{self, Checked, Reservation, Throttle};
use super::ports::accounts::{AddUserError, HashingError, PasswordHasher, UserRepository, Written};
use super::ports::login_throttle::LoginThrottle;
use super::ports::tokens::TokenIssuer;
use super::tokens::{
    DELETED_ACCOUNT_EPOCH, RevocationList, Subject, TokenPair, account_revocation, issue_pair,
};
use super::{Fault, StoreError, faults};
use crate::domain::token::Claims;
use crate::domain::user::{
    AccountChange, PasswordHash, PasswordPolicy, Role, User, UserError, Username,
};

#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    #[error(transparent)]
    Invalid(#[from] UserError),
    #[error("Username {0} is already taken")]
    UsernameTaken(String),
    #[error(transparent)]
    Fault(#[from] Fault),
}

#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// Deliberately the same for an unknown user and a wrong password.
    #[error("Bad username or password")]
    BadCredentials,
    /// Checked only after the password was.
    #[error("Account disabled")]
    Disabled,
    #[error("Too many failed logins; retry later")]
    Throttled(Duration),
    #[error(transparent)]
    Fault(#[from] Fault),
}

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("User {0} no longer exists")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a change to an account was refused.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("User {0} not found")]
    NotFound(String),
    #[error("The current password is wrong")]
    WrongPassword,
    #[error("Too many failed password checks; retry later")]
    Throttled(Duration),
    #[error(transparent)]
    Invalid(#[from] UserError),
    #[error("Username {0} is already taken")]
    UsernameTaken(String),
    #[error("Admins cannot disable, delete or demote themselves")]
    OwnAccount,
    #[error("This is the last admin: make another admin first")]
    LastAdmin,
    #[error("Roles must include at least one role")]
    NoRoles,
    #[error(transparent)]
    Fault(#[from] Fault),
}

faults!(RegistrationError, LoginError, AccountError);

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
    let username = Username::parse_new(requested)?;
    policy.check(password)?;
    let user = User::new(username, hasher.hash(password).await?, Utc::now());
    match users.add(&user).await {
        Ok(()) => {}
        Err(AddUserError::Taken) => {
            return Err(RegistrationError::UsernameTaken(requested.to_owned()));
        }
        Err(AddUserError::Store(error)) => return Err(error.into()),
    }
    let tokens = issue_pair(issuer, Subject::of(&user))?;
    Ok((user, tokens))
}

/// Checks a reserved attempt's password (`None`: an unknown user, checked
/// against a dummy hash all the same) and settles the reservation: a failure
/// stays counted, a success clears the username's count.
async fn verify<H: PasswordHasher, L: LoginThrottle>(
    hasher: &H,
    throttle: &Throttle<L>,
    reservation: Reservation<'_>,
    key: &str,
    client: &str,
    password: &str,
    hash: Option<&PasswordHash>,
) -> Result<bool, Fault> {
    let checked = hasher.verify(password, hash).await;
    let outcome = match checked {
        Ok(true) => Checked::Succeeded,
        Ok(false) => Checked::Failed,
        Err(_) => Checked::NotChecked,
    };
    reservation.settle(throttle, key, client, outcome).await?;
    Ok(checked?)
}

/// Checks the password and starts a new login (a new token family).
///
/// Throttled per (username, client address) and per client address: every
/// attempt is counted as a failure before its password is checked, and a
/// throttled one is refused before any hashing, even with the right
/// password; a success takes its count back and clears the (username,
/// address) count.
pub async fn login<U, H, T, L>(
    users: &U,
    hasher: &H,
    issuer: &T,
    throttle: &Throttle<L>,
    client: &str,
    username: &str,
    password: &str,
) -> Result<(User, TokenPair), LoginError>
where
    U: UserRepository,
    H: PasswordHasher,
    T: TokenIssuer,
    L: LoginThrottle,
{
    let key = login_throttle::username_key(username);
    let reservation = match throttle.reserve(&key, client).await? {
        Ok(reservation) => reservation,
        Err(wait) => return Err(LoginError::Throttled(wait)),
    };
    let user = match Username::parse(username) {
        Ok(username) => users.get(&username).await?,
        Err(_) => None,
    };
    let hash = user.as_ref().map(|user| &user.password_hash);
    let verified = verify(hasher, throttle, reservation, &key, client, password, hash).await?;
    let user = match (verified, user) {
        (true, Some(user)) => user,
        _ => return Err(LoginError::BadCredentials),
    };
    if user.disabled {
        return Err(LoginError::Disabled);
    }
    let tokens = issue_pair(issuer, Subject::of(&user))?;
    Ok((user, tokens))
}

pub async fn profile<U: UserRepository>(users: &U, subject: &str) -> Result<User, ProfileError> {
    let missing = || ProfileError::NotFound(subject.to_owned());
    let username = Username::parse(subject).map_err(|_| missing())?;
    users.get(&username).await?.ok_or_else(missing)
}

/// The account a token was issued to, if it still exists (a new account with
/// the same name is another account).
async fn account_of<U: UserRepository>(users: &U, claims: &Claims) -> Result<User, AccountError> {
    let missing = || AccountError::NotFound(claims.sub.clone());
    let username = Username::parse(&claims.sub).map_err(|_| missing())?;
    match users.get(&username).await? {
        Some(user) if user.account_id == claims.uid => Ok(user),
        _ => Err(missing()),
    }
}

async fn stored<U: UserRepository>(users: &U, username: &str) -> Result<User, AccountError> {
    let missing = || AccountError::NotFound(username.to_owned());
    let parsed = Username::parse(username).map_err(|_| missing())?;
    users.get(&parsed).await?.ok_or_else(missing)
}

/// How often a guarded write is retried after losing to a concurrent change
/// of the same account.
const STALE_RETRIES: usize = 3;

/// Changes the caller's password after checking the current one, ends every
/// session of the account (every login, on every instance), and starts a new
/// login. A wrong current password counts as a failed login for throttling.
#[allow(clippy::too_many_arguments)]
pub async fn change_password<U, H, T, L>(
    users: &U,
    hasher: &H,
    issuer: &T,
    throttle: &Throttle<L>,
    revocations: &RevocationList,
    policy: PasswordPolicy,
    client: &str,
    claims: &Claims,
    current: &str,
    new: &str,
) -> Result<TokenPair, AccountError>
where
    U: UserRepository,
    H: PasswordHasher,
    T: TokenIssuer,
    L: LoginThrottle,
{
    policy.check(new)?;
    let key = login_throttle::username_key(&claims.sub);
    let reservation = match throttle.reserve(&key, client).await? {
        Ok(reservation) => reservation,
        Err(wait) => return Err(AccountError::Throttled(wait)),
    };
    let user = account_of(users, claims).await?;
    let hash = Some(&user.password_hash);
    if !verify(hasher, throttle, reservation, &key, client, current, hash).await? {
        return Err(AccountError::WrongPassword);
    }
    let new_hash = hasher.hash(new).await?;
    let mut user = user;
    for _ in 0..STALE_RETRIES {
        let mut changed = user.clone();
        changed.password_hash = new_hash.clone();
        changed.epoch = user.epoch + 1;
        let revocation = account_revocation(issuer, &user.account_id, changed.epoch, Utc::now());
        match users.update(&changed, &revocation, false).await? {
            Written::Done => {
                revocations.insert(&revocation);
                return Ok(issue_pair(issuer, Subject::of(&changed))?);
            }
            Written::Stale | Written::LastAdmin => user = account_of(users, claims).await?,
        }
    }
    Err(AccountError::NotFound(claims.sub.clone()))
}

/// Deletes the caller's account and ends all its sessions; the username is
/// free again. An admin cannot delete their own account.
pub async fn delete_own_account<U, T>(
    users: &U,
    issuer: &T,
    revocations: &RevocationList,
    claims: &Claims,
) -> Result<(), AccountError>
where
    U: UserRepository,
    T: TokenIssuer,
{
    let user = account_of(users, claims).await?;
    if user.is_admin() {
        return Err(AccountError::OwnAccount);
    }
    delete_account(users, issuer, revocations, user).await
}

async fn delete_account<U, T>(
    users: &U,
    issuer: &T,
    revocations: &RevocationList,
    mut user: User,
) -> Result<(), AccountError>
where
    U: UserRepository,
    T: TokenIssuer,
{
    for _ in 0..STALE_RETRIES {
        let revocation =
            account_revocation(issuer, &user.account_id, DELETED_ACCOUNT_EPOCH, Utc::now());
        let keep_an_admin = user.is_active_admin();
        match users
            .delete(&user.account_id, user.epoch, &revocation, keep_an_admin)
            .await?
        {
            Written::Done => {
                revocations.insert(&revocation);
                return Ok(());
            }
            Written::LastAdmin => return Err(AccountError::LastAdmin),
            Written::Stale => match users.get(&user.username).await? {
                Some(again) if again.account_id == user.account_id => user = again,
                _ => return Err(AccountError::NotFound(user.username.to_string())),
            },
        }
    }
    Err(AccountError::NotFound(user.username.to_string()))
}

/// A page of accounts, by username.
pub async fn list_users<U: UserRepository>(
    users: &U,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<User>, StoreError> {
    users.list(after, limit).await
}

pub async fn get_user<U: UserRepository>(users: &U, username: &str) -> Result<User, AccountError> {
    stored(users, username).await
}

/// An admin changes an account's roles or disabled state. Any change ends the
/// account's sessions (roles travel inside tokens). Admins cannot disable or
/// demote themselves, and the last enabled admin cannot be removed.
pub async fn change_account<U, T>(
    users: &U,
    issuer: &T,
    revocations: &RevocationList,
    admin: &Claims,
    username: &str,
    change: &AccountChange,
) -> Result<User, AccountError>
where
    U: UserRepository,
    T: TokenIssuer,
{
    if change.roles.as_ref().is_some_and(Vec::is_empty) {
        return Err(AccountError::NoRoles);
    }
    let mut user = stored(users, username).await?;
    for _ in 0..STALE_RETRIES {
        let (mut changed, differs) = change.apply(&user);
        if !differs {
            return Ok(user);
        }
        let removes_admin = user.is_active_admin() && !changed.is_active_admin();
        if removes_admin && user.account_id == admin.uid {
            return Err(AccountError::OwnAccount);
        }
        changed.epoch = user.epoch + 1;
        let revocation = account_revocation(issuer, &user.account_id, changed.epoch, Utc::now());
        match users.update(&changed, &revocation, removes_admin).await? {
            Written::Done => {
                revocations.insert(&revocation);
                return Ok(changed);
            }
            Written::LastAdmin => return Err(AccountError::LastAdmin),
            Written::Stale => user = stored(users, username).await?,
        }
    }
    Err(AccountError::NotFound(username.to_owned()))
}

/// An admin deletes an account (not their own); its sessions end.
pub async fn delete_user<U, T>(
    users: &U,
    issuer: &T,
    revocations: &RevocationList,
    admin: &Claims,
    username: &str,
) -> Result<(), AccountError>
where
    U: UserRepository,
    T: TokenIssuer,
{
    let user = stored(users, username).await?;
    if user.account_id == admin.uid {
        return Err(AccountError::OwnAccount);
    }
    delete_account(users, issuer, revocations, user).await
}

/// An admin creates an account with the given roles (the way in when
/// registration is closed).
pub async fn create_user<U, H>(
    users: &U,
    hasher: &H,
    policy: PasswordPolicy,
    username: &str,
    password: &str,
    roles: &[Role],
) -> Result<User, AccountError>
where
    U: UserRepository,
    H: PasswordHasher,
{
    if roles.is_empty() {
        return Err(AccountError::NoRoles);
    }
    let parsed = Username::parse_new(username)?;
    policy.check(password)?;
    let mut user = User::new(parsed, hasher.hash(password).await?, Utc::now());
    let (with_roles, _) = AccountChange {
        roles: Some(roles.to_vec()),
        disabled: None,
    }
    .apply(&user);
    user.roles = with_roles.roles;
    match users.add(&user).await {
        Ok(()) => Ok(user),
        Err(AddUserError::Taken) => Err(AccountError::UsernameTaken(username.to_owned())),
        Err(AddUserError::Store(error)) => Err(error.into()),
    }
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
    let username = Username::parse_new(username.as_str())?;
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
