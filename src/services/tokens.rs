//! Token lifecycle: issuing pairs, checking bearer tokens on every request,
//! refresh rotation with reuse detection, and logout.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use super::StoreError;
use super::users::UserRepository;
use crate::domain::token::{Claims, TokenKind, TokenRejection};
use crate::domain::user::{Role, Username};

/// Signs and verifies tokens.
pub trait TokenIssuer: Send + Sync {
    fn issue(
        &self,
        subject: &str,
        roles: &[Role],
        kind: TokenKind,
        family: &str,
    ) -> Result<IssuedToken, TokenIssueError>;
    /// Checks signature, algorithm and time claims; does not look at revocations.
    fn decode(&self, token: &str) -> Result<Claims, TokenRejection>;
    /// How long a refresh token lives: a revoked family must be remembered this long.
    fn refresh_lifetime(&self) -> Duration;
}

#[derive(Debug, thiserror::Error)]
#[error("cannot sign a token: {0}")]
pub struct TokenIssueError(pub String);

#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub token: String,
    pub claims: Claims,
}

#[derive(Debug, Clone)]
pub struct TokenPair {
    pub access: IssuedToken,
    pub refresh: IssuedToken,
}

/// A revoked token id (`jti`) or token family id (`fam`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    pub id: String,
    /// After this instant no token it could match is valid anyway, so it may be forgotten.
    pub expires_at: DateTime<Utc>,
    pub revoked_at: DateTime<Utc>,
}

/// Where revocations are recorded, shared by every instance of the service.
pub trait RevocationStore: Send + Sync {
    /// Records a revocation; `Ok(false)` if that id was already revoked.
    fn revoke(
        &self,
        revocation: &Revocation,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Whether any of these ids is revoked (an authoritative read).
    fn any_revoked(&self, ids: &[&str]) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Revocations recorded at or after `since`.
    fn revoked_since(
        &self,
        since: DateTime<Utc>,
    ) -> impl Future<Output = Result<Vec<Revocation>, StoreError>> + Send;
}

/// This instance's copy of the revocations, so that checking an access token
/// needs no database read. Kept fresh by [`RevocationList::sync`].
#[derive(Debug, Default)]
pub struct RevocationList {
    ids: RwLock<HashMap<String, DateTime<Utc>>>,
    synced_until: Mutex<Option<DateTime<Utc>>>,
}

/// Clocks of instances differ a little: each sync re-reads this far back.
const SYNC_OVERLAP: TimeDelta = TimeDelta::seconds(5);

impl RevocationList {
    pub fn is_revoked(&self, claims: &Claims) -> bool {
        let ids = self.ids.read().unwrap_or_else(|e| e.into_inner());
        ids.contains_key(&claims.jti) || ids.contains_key(&claims.fam)
    }

    pub fn insert(&self, revocation: &Revocation) {
        let mut ids = self.ids.write().unwrap_or_else(|e| e.into_inner());
        ids.insert(revocation.id.clone(), revocation.expires_at);
    }

    pub fn len(&self) -> usize {
        self.ids.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Pulls revocations recorded since the last sync (by any instance) and
    /// forgets expired ones. Returns how many were read.
    pub async fn sync<S: RevocationStore>(&self, store: &S) -> Result<usize, StoreError> {
        let since = self
            .synced_until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map_or(DateTime::UNIX_EPOCH, |until| until - SYNC_OVERLAP);
        let started = Utc::now();
        let fresh = store.revoked_since(since).await?;
        let now = Utc::now();
        {
            let mut ids = self.ids.write().unwrap_or_else(|e| e.into_inner());
            for revocation in &fresh {
                ids.insert(revocation.id.clone(), revocation.expires_at);
            }
            ids.retain(|_, expires_at| *expires_at > now);
        }
        *self.synced_until.lock().unwrap_or_else(|e| e.into_inner()) = Some(started);
        Ok(fresh.len())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(transparent)]
    Rejected(#[from] TokenRejection),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Issue(#[from] TokenIssueError),
}

/// A new access + refresh pair; `family` continues a login, `None` starts one.
pub fn issue_pair<T: TokenIssuer>(
    issuer: &T,
    username: &Username,
    roles: &[Role],
    family: Option<String>,
) -> Result<TokenPair, TokenIssueError> {
    let family = family.unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    Ok(TokenPair {
        access: issuer.issue(username.as_str(), roles, TokenKind::Access, &family)?,
        refresh: issuer.issue(username.as_str(), roles, TokenKind::Refresh, &family)?,
    })
}

/// The per-request check of an access token: signature, kind, and this
/// instance's revocation list — no database read.
pub fn authenticate_access<T: TokenIssuer>(
    issuer: &T,
    revocations: &RevocationList,
    token: &str,
) -> Result<Claims, TokenRejection> {
    let claims = issuer.decode(token)?;
    if claims.kind != TokenKind::Access {
        return Err(TokenRejection::AccessTokenRequired);
    }
    if revocations.is_revoked(&claims) {
        return Err(TokenRejection::Revoked);
    }
    Ok(claims)
}

fn expiry_of(claims: &Claims) -> DateTime<Utc> {
    DateTime::from_timestamp(claims.exp, 0).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

fn family_revocation<T: TokenIssuer>(issuer: &T, family: &str, now: DateTime<Utc>) -> Revocation {
    let lifetime = TimeDelta::from_std(issuer.refresh_lifetime()).unwrap_or(TimeDelta::MAX);
    Revocation {
        id: family.to_owned(),
        expires_at: now
            .checked_add_signed(lifetime)
            .unwrap_or(DateTime::<Utc>::MAX_UTC),
        revoked_at: now,
    }
}

/// Exchanges a refresh token for a new pair and revokes the one presented.
/// Presenting an already-used refresh token again means it leaked: the whole
/// family (every token of that login) is revoked and the call refused.
pub async fn refresh<U, S, T>(
    users: &U,
    store: &S,
    revocations: &RevocationList,
    issuer: &T,
    claims: Claims,
) -> Result<TokenPair, AuthError>
where
    U: UserRepository,
    S: RevocationStore,
    T: TokenIssuer,
{
    if claims.kind != TokenKind::Refresh {
        return Err(TokenRejection::RefreshTokenRequired.into());
    }
    if store.any_revoked(&[&claims.fam]).await? {
        return Err(TokenRejection::Revoked.into());
    }
    let now = Utc::now();
    let used = Revocation {
        id: claims.jti.clone(),
        expires_at: expiry_of(&claims),
        revoked_at: now,
    };
    // Recording the use is also the claim on it: of two concurrent refreshes
    // with one token, only the first insert succeeds.
    if !store.revoke(&used).await? {
        let family = family_revocation(issuer, &claims.fam, now);
        store.revoke(&family).await?;
        revocations.insert(&family);
        tracing::warn!(subject = %claims.sub, "refresh token reused: revoked its whole family");
        return Err(TokenRejection::Revoked.into());
    }
    revocations.insert(&used);
    let username = Username::parse(&claims.sub).map_err(|_| TokenRejection::Revoked)?;
    let user = users.get(&username).await?.ok_or(TokenRejection::Revoked)?;
    Ok(issue_pair(
        issuer,
        &user.username,
        &user.roles,
        Some(claims.fam),
    )?)
}

/// Revokes the presented token; a refresh token takes its whole family (the
/// login) with it, access tokens included.
pub async fn logout<S, T>(
    store: &S,
    revocations: &RevocationList,
    issuer: &T,
    claims: Claims,
) -> Result<(), AuthError>
where
    S: RevocationStore,
    T: TokenIssuer,
{
    if store.any_revoked(&[&claims.jti, &claims.fam]).await? {
        return Err(TokenRejection::Revoked.into());
    }
    let now = Utc::now();
    let mut revoked = vec![Revocation {
        id: claims.jti.clone(),
        expires_at: expiry_of(&claims),
        revoked_at: now,
    }];
    if claims.kind == TokenKind::Refresh {
        revoked.push(family_revocation(issuer, &claims.fam, now));
    }
    for revocation in &revoked {
        store.revoke(revocation).await?;
        revocations.insert(revocation);
    }
    Ok(())
}
