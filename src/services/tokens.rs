//! Token lifecycle: issuing pairs, checking bearer tokens on every request,
//! refresh rotation with reuse detection, and logout.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use tokio::sync::Mutex;

use super::StoreError;
use super::ports::accounts::UserRepository;
use super::ports::tokens::{
    PairIds, RefreshRotations, Revocation, RevocationStore, Rotation, TokenIssueError, TokenIssuer,
};
use crate::domain::token::{Claims, TokenKind, TokenRejection};
use crate::domain::user::{Role, User, Username};

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

/// Who a token pair is for.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub username: &'a str,
    pub account_id: &'a str,
    pub roles: &'a [Role],
    pub epoch: i64,
}

impl<'a> Subject<'a> {
    pub fn of(user: &'a User) -> Self {
        Self {
            username: user.username.as_str(),
            account_id: &user.account_id,
            roles: &user.roles,
            epoch: user.epoch,
        }
    }
}

impl PairIds {
    fn fresh(subject: &Subject<'_>) -> Self {
        Self {
            access_jti: new_id(),
            refresh_jti: new_id(),
            iat: Utc::now().timestamp(),
            roles: subject.roles.to_vec(),
            epoch: subject.epoch,
        }
    }
}

fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The epoch [`Revocation::account_epoch`] takes for a deleted account: every
/// token of it.
pub const DELETED_ACCOUNT_EPOCH: i64 = i64::MAX;

/// Checked on every authenticated request: foldhash rather than SipHash,
/// whose cost showed in the request path's profile. The keys are ids allot made.
type IdMap<V> = HashMap<String, V, foldhash::fast::RandomState>;

#[derive(Debug, Default)]
struct RevokedState {
    ids: IdMap<DateTime<Utc>>,
    /// Account id → (the lowest epoch still valid, when to forget it).
    accounts: IdMap<(i64, DateTime<Utc>)>,
}

/// This instance's copy of the revocations, so that checking an access token
/// needs no database read. Kept fresh by [`RevocationList::sync`].
#[derive(Debug, Default)]
pub struct RevocationList {
    state: RwLock<RevokedState>,
    /// The highest sequence number read from the store; `None` before the first sync.
    synced_seq: Mutex<Option<i64>>,
}

/// How many revocations one read of a sync takes; a sync reads until it has all.
const SYNC_PAGE: usize = 1000;

impl RevocationList {
    pub fn is_revoked(&self, claims: &Claims) -> bool {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        state.ids.contains_key(&claims.jti)
            || state.ids.contains_key(&claims.fam)
            || state
                .accounts
                .get(&claims.uid)
                .is_some_and(|(epoch, _)| claims.ep < *epoch)
    }

    pub fn insert(&self, revocation: &Revocation) {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        Self::apply(&mut state, revocation);
    }

    fn apply(state: &mut RevokedState, revocation: &Revocation) {
        match revocation.account_epoch {
            None => {
                state
                    .ids
                    .insert(revocation.id.clone(), revocation.expires_at);
            }
            Some(epoch) => {
                let entry = state
                    .accounts
                    .entry(revocation.id.clone())
                    .or_insert((epoch, revocation.expires_at));
                entry.0 = entry.0.max(epoch);
                entry.1 = entry.1.max(revocation.expires_at);
            }
        }
    }

    pub fn len(&self) -> usize {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        state.ids.len() + state.accounts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Pulls the revocations numbered after the last one seen (by any
    /// instance) and forgets expired ones. Returns how many were read.
    pub async fn sync<S: RevocationStore>(&self, store: &S) -> Result<usize, StoreError> {
        // One sync at a time, so the number only moves forward.
        let mut synced = self.synced_seq.lock().await;
        let mut read = 0;
        loop {
            // The first sync loads every live revocation at once, as start-up always did.
            let limit = if synced.is_some() {
                SYNC_PAGE
            } else {
                usize::MAX
            };
            let page = store.revoked_after(*synced, limit).await?;
            let now = Utc::now();
            {
                let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
                let before = synced.unwrap_or(0);
                let last = page.last().map_or(before, |(seq, _)| *seq);
                for (_, revocation) in &page {
                    Self::apply(&mut state, revocation);
                }
                *synced = Some(before.max(last));
                state.ids.retain(|_, expires_at| *expires_at > now);
                state
                    .accounts
                    .retain(|_, (_, expires_at)| *expires_at > now);
            }
            read += page.len();
            if page.len() < SYNC_PAGE {
                return Ok(read);
            }
        }
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

/// The two tokens of `ids`: the same ids always sign to the same tokens.
pub fn sign_pair<T: TokenIssuer>(
    issuer: &T,
    username: &str,
    account_id: &str,
    family: &str,
    ids: &PairIds,
) -> Result<TokenPair, TokenIssueError> {
    let token = |kind: TokenKind, jti: &str| -> Result<IssuedToken, TokenIssueError> {
        let lifetime = i64::try_from(issuer.lifetime(kind).as_secs()).unwrap_or(i64::MAX);
        let claims = Claims {
            sub: username.to_owned(),
            kind,
            jti: jti.to_owned(),
            iat: ids.iat,
            nbf: ids.iat,
            exp: ids.iat.saturating_add(lifetime),
            roles: ids.roles.clone(),
            fam: family.to_owned(),
            uid: account_id.to_owned(),
            ep: ids.epoch,
        };
        Ok(IssuedToken {
            token: issuer.sign(&claims)?,
            claims,
        })
    };
    Ok(TokenPair {
        access: token(TokenKind::Access, &ids.access_jti)?,
        refresh: token(TokenKind::Refresh, &ids.refresh_jti)?,
    })
}

/// A new access + refresh pair starting a new login (token family).
pub fn issue_pair<T: TokenIssuer>(
    issuer: &T,
    subject: Subject<'_>,
) -> Result<TokenPair, TokenIssueError> {
    let ids = PairIds::fresh(&subject);
    sign_pair(
        issuer,
        subject.username,
        subject.account_id,
        &new_id(),
        &ids,
    )
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
        account_epoch: None,
        expires_at: now
            .checked_add_signed(lifetime)
            .unwrap_or(DateTime::<Utc>::MAX_UTC),
        revoked_at: now,
    }
}

/// Exchanges a refresh token for a new pair, which replaces it.
///
/// Presenting an already-used refresh token again means it leaked: the whole
/// family (every token of that login) is revoked and the call refused. A
/// retry is no leak: presenting the token that was just rotated, within
/// `grace` and while its successor is unused, answers the same successor pair
/// again (a client whose reply was lost gets what it missed). Which case
/// applies is decided atomically by the store, also between instances.
pub async fn refresh<U, S, F, T>(
    users: &U,
    store: &S,
    rotations: &F,
    revocations: &RevocationList,
    issuer: &T,
    grace: Duration,
    claims: Claims,
) -> Result<TokenPair, AuthError>
where
    U: UserRepository,
    S: RevocationStore,
    F: RefreshRotations,
    T: TokenIssuer,
{
    if claims.kind != TokenKind::Refresh {
        return Err(TokenRejection::RefreshTokenRequired.into());
    }
    if store.any_revoked(&[&claims.jti, &claims.fam]).await? {
        return Err(TokenRejection::Revoked.into());
    }
    // The account as it is now: deleted, disabled, or changed since (a
    // password, its roles) means this login has ended.
    let username = Username::parse(&claims.sub).map_err(|_| TokenRejection::Revoked)?;
    let user = users.get(&username).await?.ok_or(TokenRejection::Revoked)?;
    if user.account_id != claims.uid || user.disabled || claims.ep < user.epoch {
        return Err(TokenRejection::Revoked.into());
    }
    let successor = PairIds::fresh(&Subject::of(&user));
    let lifetime = TimeDelta::from_std(issuer.refresh_lifetime()).unwrap_or(TimeDelta::MAX);
    // An hour over the successor's lifetime, so that the record outlives
    // the clock leeway on `exp` (at most 300 s).
    let expires_at = DateTime::from_timestamp(successor.iat, 0)
        .and_then(|iat| iat.checked_add_signed(lifetime))
        .and_then(|exp| exp.checked_add_signed(TimeDelta::hours(1)))
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    let ids = match rotations
        .rotate(&claims.fam, &claims.jti, &successor, expires_at, grace)
        .await?
    {
        Rotation::Rotated => successor,
        Rotation::Repeat(ids) => ids,
        Rotation::Reused => {
            let family = family_revocation(issuer, &claims.fam, Utc::now());
            store.revoke(&family).await?;
            revocations.insert(&family);
            tracing::warn!(subject = %claims.sub, "refresh token reused: revoked its whole family");
            return Err(TokenRejection::Revoked.into());
        }
    };
    Ok(sign_pair(
        issuer,
        user.username.as_str(),
        &user.account_id,
        &claims.fam,
        &ids,
    )?)
}

/// Ends every session of the account: tokens of an epoch below `epoch`.
pub fn account_revocation<T: TokenIssuer>(
    issuer: &T,
    account_id: &str,
    epoch: i64,
    now: DateTime<Utc>,
) -> Revocation {
    Revocation {
        account_epoch: Some(epoch),
        ..family_revocation(issuer, account_id, now)
    }
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
        account_epoch: None,
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
