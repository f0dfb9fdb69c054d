//! JWTs signed with HS256 (the `jsonwebtoken` crate).

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::ExposeSecret;

use crate::config::AuthSettings;
use crate::domain::token::{Claims, TokenKind, TokenRejection};
use crate::services::ports::tokens::{TokenIssueError, TokenIssuer};

const ALGORITHM: Algorithm = Algorithm::HS256;

pub struct JwtTokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    leeway: i64,
    access_lifetime: Duration,
    refresh_lifetime: Duration,
    verified: VerifiedTokens,
}

/// Tokens whose signature and claims were already checked. A client sends the
/// same access token with every call; without this, each call would pay again
/// for the HMAC and two JSON parses (most of what authentication costs, by
/// profile). Keyed by the whole token, bounded, and the time claims are checked
/// again on every hit; revocation is checked by the caller on every request.
#[derive(Default)]
struct VerifiedTokens {
    // foldhash: every authenticated request hashes its whole token here, and
    // SipHash showed in the request path's profile. Entries are only ever
    // tokens whose signature was verified, so no client chooses the keys.
    entries: RwLock<HashMap<Box<str>, Claims, foldhash::quality::RandomState>>,
}

/// About 0.5 MiB at most; when full, the cache starts over.
const VERIFIED_TOKENS_CAPACITY: usize = 1024;

impl VerifiedTokens {
    fn get(&self, token: &str) -> Option<Claims> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        entries.get(token).cloned()
    }

    fn insert(&self, token: &str, claims: &Claims) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= VERIFIED_TOKENS_CAPACITY {
            entries.clear();
        }
        entries.insert(token.into(), claims.clone());
    }
}

/// `exp` and `nbf` against `now`, with the leeway, as `jsonwebtoken` checks them.
fn check_time(claims: &Claims, now: i64, leeway: i64) -> Result<(), TokenRejection> {
    if claims.exp < now.saturating_sub(leeway) {
        Err(TokenRejection::Expired)
    } else if claims.nbf > now.saturating_add(leeway) {
        Err(TokenRejection::NotYetValid)
    } else {
        Ok(())
    }
}

impl JwtTokens {
    pub fn new(settings: &AuthSettings) -> Self {
        let secret = settings.jwt_secret.expose_secret().as_bytes();
        let mut validation = Validation::new(ALGORITHM);
        validation.leeway = settings.leeway_secs;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "nbf", "iat", "sub"]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            leeway: i64::try_from(settings.leeway_secs).unwrap_or(i64::MAX),
            verified: VerifiedTokens::default(),
            access_lifetime: Duration::from_secs(settings.access_token_ttl_secs),
            refresh_lifetime: Duration::from_secs(settings.refresh_token_ttl_secs),
        }
    }
}

/// The `alg` named in a token's header, read before anything is trusted.
fn header_algorithm(segment: &str) -> Option<String> {
    let bytes = URL_SAFE_NO_PAD.decode(segment).ok()?;
    let header: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    header.get("alg")?.as_str().map(str::to_owned)
}

impl TokenIssuer for JwtTokens {
    fn sign(&self, claims: &Claims) -> Result<String, TokenIssueError> {
        jsonwebtoken::encode(&Header::new(ALGORITHM), claims, &self.encoding)
            .map_err(|e| TokenIssueError(e.to_string()))
    }

    fn decode(&self, token: &str) -> Result<Claims, TokenRejection> {
        if let Some(claims) = self.verified.get(token) {
            check_time(&claims, chrono::Utc::now().timestamp(), self.leeway)?;
            return Ok(claims);
        }
        let claims = self.verify(token)?;
        self.verified.insert(token, &claims);
        Ok(claims)
    }

    fn lifetime(&self, kind: TokenKind) -> Duration {
        match kind {
            TokenKind::Access => self.access_lifetime,
            TokenKind::Refresh => self.refresh_lifetime,
        }
    }
}

impl JwtTokens {
    /// The full check: segments, algorithm, signature, then claims and times.
    fn verify(&self, token: &str) -> Result<Claims, TokenRejection> {
        let segments: Vec<&str> = token.split('.').collect();
        if segments.len() < 3 {
            return Err(TokenRejection::NotEnoughSegments);
        }
        if segments.len() > 3 {
            return Err(TokenRejection::Malformed("too many segments"));
        }
        match header_algorithm(segments[0]) {
            None => return Err(TokenRejection::Malformed("unreadable header")),
            Some(alg) if alg != "HS256" => return Err(TokenRejection::DisallowedAlgorithm),
            Some(_) => {}
        }
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|error| match error.kind() {
                // The header is sound (checked above), so a decoding failure here
                // is in the signature segment.
                ErrorKind::InvalidSignature | ErrorKind::Base64(_) => TokenRejection::BadSignature,
                ErrorKind::ExpiredSignature => TokenRejection::Expired,
                ErrorKind::ImmatureSignature => TokenRejection::NotYetValid,
                ErrorKind::InvalidAlgorithm => TokenRejection::DisallowedAlgorithm,
                ErrorKind::MissingRequiredClaim(_) => TokenRejection::Malformed("missing claim"),
                _ => TokenRejection::Malformed("unreadable claims"),
            })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{Environment, Settings};
    use crate::domain::user::Role;
    use crate::services::tokens::{IssuedToken, Subject, issue_pair};

    fn tokens() -> JwtTokens {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        JwtTokens::new(
            &Settings::load_from(&dir, Environment::Testing)
                .unwrap()
                .auth,
        )
    }

    /// A fresh token of one kind, as login would sign it.
    fn issue(tokens: &JwtTokens, subject: &str, kind: TokenKind, family: &str) -> IssuedToken {
        let subject = Subject {
            username: subject,
            account_id: "acct",
            roles: &[Role::User],
            epoch: 0,
        };
        let pair = issue_pair(tokens, subject).unwrap();
        let mut issued = match kind {
            TokenKind::Access => pair.access,
            TokenKind::Refresh => pair.refresh,
        };
        issued.claims.fam = family.to_owned();
        issued.token = tokens.sign(&issued.claims).unwrap();
        issued
    }

    fn sign(claims: &serde_json::Value, header: Header, secret: &[u8]) -> String {
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(secret)).unwrap()
    }

    fn claims_at(iat: i64, exp: i64) -> serde_json::Value {
        serde_json::json!({"sub": "alice", "type": "access", "jti": "j", "iat": iat,
            "nbf": iat, "exp": exp, "roles": ["user"], "fam": "f"})
    }

    #[test]
    fn an_issued_token_decodes_to_its_claims() {
        let tokens = tokens();
        let issued = issue(&tokens, "alice", TokenKind::Refresh, "fam-1");
        let claims = tokens.decode(&issued.token).unwrap();
        assert_eq!(claims, issued.claims);
        assert_eq!(
            (claims.kind, claims.fam.as_str()),
            (TokenKind::Refresh, "fam-1")
        );
        assert_eq!(claims.exp - claims.iat, 2_592_000);
    }

    #[test]
    fn tampering_is_a_signature_failure() {
        let tokens = tokens();
        let issued = issue(&tokens, "alice", TokenKind::Access, "f");
        let appended = format!("{}extra-string", issued.token);
        assert_eq!(tokens.decode(&appended), Err(TokenRejection::BadSignature));
        let other_key = sign(
            &claims_at(0, i64::MAX / 2),
            Header::new(ALGORITHM),
            b"another secret",
        );
        assert_eq!(tokens.decode(&other_key), Err(TokenRejection::BadSignature));
    }

    #[test]
    fn other_algorithms_and_none_are_refused() {
        let tokens = tokens();
        let now = chrono::Utc::now().timestamp();
        let hs512 = sign(
            &claims_at(now, now + 60),
            Header::new(Algorithm::HS512),
            b"x",
        );
        assert_eq!(
            tokens.decode(&hs512),
            Err(TokenRejection::DisallowedAlgorithm)
        );
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD.encode(claims_at(now, now + 60).to_string());
        let unsigned = format!("{header}.{payload}.");
        assert_eq!(
            tokens.decode(&unsigned),
            Err(TokenRejection::DisallowedAlgorithm)
        );
    }

    #[test]
    fn expiry_allows_the_configured_leeway_only() {
        let tokens = tokens();
        let secret = crate::config::DEVELOPMENT_JWT_SECRET.as_bytes();
        let now = chrono::Utc::now().timestamp();
        let just_expired = sign(
            &claims_at(now - 100, now - 2),
            Header::new(ALGORITHM),
            secret,
        );
        assert!(
            tokens.decode(&just_expired).is_ok(),
            "within the 5 s leeway"
        );
        let expired = sign(
            &claims_at(now - 100, now - 60),
            Header::new(ALGORITHM),
            secret,
        );
        assert_eq!(tokens.decode(&expired), Err(TokenRejection::Expired));
    }

    #[test]
    fn a_remembered_token_still_expires() {
        let tokens = tokens();
        let issued = issue(&tokens, "alice", TokenKind::Access, "f");
        assert_eq!(tokens.decode(&issued.token), Ok(issued.claims.clone()));
        assert_eq!(
            tokens.verified.get(&issued.token),
            Some(issued.claims.clone())
        );
        assert_eq!(
            tokens.decode(&issued.token),
            Ok(issued.claims.clone()),
            "from the cache"
        );
        let (exp, nbf) = (issued.claims.exp, issued.claims.nbf);
        assert_eq!(check_time(&issued.claims, exp + 5, 5), Ok(()));
        assert_eq!(
            check_time(&issued.claims, exp + 6, 5),
            Err(TokenRejection::Expired)
        );
        assert_eq!(
            check_time(&issued.claims, nbf - 6, 5),
            Err(TokenRejection::NotYetValid)
        );
        // A tampered token is another key: it is verified, and refused.
        let tampered = format!("{}x", issued.token);
        assert_eq!(tokens.decode(&tampered), Err(TokenRejection::BadSignature));
    }

    #[test]
    fn the_cache_of_verified_tokens_is_bounded() {
        let tokens = tokens();
        for n in 0..VERIFIED_TOKENS_CAPACITY + 10 {
            let issued = issue(&tokens, &format!("user{n}"), TokenKind::Access, "f");
            tokens.decode(&issued.token).unwrap();
        }
        let cached = tokens.verified.entries.read().unwrap().len();
        assert!(cached <= VERIFIED_TOKENS_CAPACITY, "{cached}");
    }

    #[test]
    fn garbage_is_refused_with_the_seed_messages() {
        let tokens = tokens();
        assert_eq!(
            tokens.decode("this-is-not-json-web-token"),
            Err(TokenRejection::NotEnoughSegments)
        );
        assert!(matches!(
            tokens.decode("a.b.c"),
            Err(TokenRejection::Malformed(_))
        ));
    }
}
