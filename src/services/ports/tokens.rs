//! What the token use cases need: a signer, the revocations every instance
//! shares, and the refresh tokens' rotations.

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::domain::token::{Claims, TokenKind, TokenRejection};
use crate::domain::user::Role;
use crate::services::StoreError;

/// Signs and verifies tokens.
pub trait TokenIssuer: Send + Sync {
    /// Signs these claims. Deterministic: the same claims give the same token,
    /// which lets a retried refresh be answered with the very pair it got first.
    fn sign(&self, claims: &Claims) -> Result<String, TokenIssueError>;
    /// Checks signature, algorithm and time claims; does not look at revocations.
    fn decode(&self, token: &str) -> Result<Claims, TokenRejection>;
    /// How long a token of this kind lives.
    fn lifetime(&self, kind: TokenKind) -> Duration;
    /// How long a refresh token lives: a revoked family must be remembered this long.
    fn refresh_lifetime(&self) -> Duration {
        self.lifetime(TokenKind::Refresh)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot sign a token: {0}")]
pub struct TokenIssueError(pub String);

/// What identifies a pair of tokens once signed: with the subject and the
/// family, these give back the very same two tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairIds {
    pub access_jti: String,
    pub refresh_jti: String,
    pub iat: i64,
    pub roles: Vec<Role>,
    pub epoch: i64,
}

/// A revoked token id (`jti`), token family id (`fam`), or every token of an
/// account issued before an epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// The `jti` or `fam`; for an account, its id.
    pub id: String,
    /// For an account: tokens of an epoch below this one are revoked.
    pub account_epoch: Option<i64>,
    /// After this instant no token it could match is valid anyway, so it may be forgotten.
    pub expires_at: DateTime<Utc>,
    pub revoked_at: DateTime<Utc>,
}

/// Where revocations are recorded, shared by every instance of the service.
///
/// Each revocation gets a sequence number that the store hands out in commit
/// order, so an instance that has seen every revocation up to number `n` and
/// asks for those after `n` can never miss one, however late it was written
/// or however far the instances' clocks differ.
pub trait RevocationStore: Send + Sync {
    /// Records a revocation; `Ok(false)` if that id was already revoked.
    fn revoke(
        &self,
        revocation: &Revocation,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Whether any of these ids is revoked (an authoritative read).
    fn any_revoked(&self, ids: &[&str]) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// At most `limit` revocations with a sequence number above `after` (all
    /// of them for `None`), in sequence order, each with its number.
    fn revoked_after(
        &self,
        after: Option<i64>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<(i64, Revocation)>, StoreError>> + Send;
}

/// What the store decided about a presented refresh token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotation {
    /// It was the login's current refresh token: `successor` replaces it.
    Rotated,
    /// It was just rotated (within the grace period) and its successor is still
    /// unused: a retry of that refresh, answered with the same successor.
    Repeat(PairIds),
    /// It was used before, and this is no retry: the token leaked.
    Reused,
}

/// One record per login (token family): which refresh token is current, and
/// which one it replaced, with when.
pub trait RefreshRotations: Send + Sync {
    /// Atomically: if `presented` is the family's current refresh token (or
    /// the family has no record yet, so `presented` is its first), records
    /// `successor` as current and `presented` as previous. Otherwise reports
    /// whether this is a repeat within `grace` or a reuse.
    fn rotate(
        &self,
        family: &str,
        presented: &str,
        successor: &PairIds,
        expires_at: DateTime<Utc>,
        grace: Duration,
    ) -> impl Future<Output = Result<Rotation, StoreError>> + Send;
}
