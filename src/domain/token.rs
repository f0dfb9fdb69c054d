//! Bearer tokens: what they claim, and every reason one is refused.

use serde::{Deserialize, Serialize};

use super::user::Role;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    /// Short-lived; sent with every API call.
    Access,
    /// Long-lived; only exchanged for a new token pair or used to log out.
    Refresh,
}

/// The claims allot signs into every token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The username.
    pub sub: String,
    #[serde(rename = "type")]
    pub kind: TokenKind,
    /// Unique id of this token, the handle for revoking it.
    pub jti: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    pub roles: Vec<Role>,
    /// Id shared by every token descended from one login: revoking the family
    /// logs that login out everywhere.
    pub fam: String,
    /// The account's id ([`crate::domain::user::User::account_id`]); empty in
    /// tokens issued before accounts had ids, which refresh refuses.
    #[serde(default)]
    pub uid: String,
    /// The account's epoch when the token was issued: a token of an epoch
    /// older than the account's current one is revoked.
    #[serde(default)]
    pub ep: i64,
}

impl Claims {
    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

/// Why a request's token is refused. The messages are the API's contract
/// (those of Flask-JWT-Extended, which the original service used).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenRejection {
    #[error("Missing Authorization Header")]
    MissingHeader,
    #[error("Bad Authorization header. Expected value 'Bearer <JWT>'")]
    BadHeader,
    #[error("Not enough segments")]
    NotEnoughSegments,
    #[error("Signature verification failed")]
    BadSignature,
    #[error("The specified alg value is not allowed")]
    DisallowedAlgorithm,
    #[error("Token has expired")]
    Expired,
    #[error("The token is not yet valid (nbf)")]
    NotYetValid,
    #[error("Token has been revoked")]
    Revoked,
    #[error("Only access tokens are allowed")]
    AccessTokenRequired,
    #[error("Only refresh tokens are allowed")]
    RefreshTokenRequired,
    #[error("Admin role required")]
    AdminRequired,
    #[error("Admin or events role required")]
    EventsRoleRequired,
    #[error("The events role reads only the event feed")]
    FeedOnly,
    #[error("Invalid token: {0}")]
    Malformed(&'static str),
}
