//! Argon2id password hashing on a bounded set of blocking threads, so that
//! logins never stall the async executor or each other beyond the bound.

use std::sync::Arc;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::{OnceCell, Semaphore};

use crate::config::AuthSettings;
use crate::domain::user::PasswordHash;
use crate::services::users::{HashingError, PasswordHasher};

#[derive(Clone)]
pub struct Argon2Hasher {
    argon2: Argon2<'static>,
    permits: Arc<Semaphore>,
    /// Verified against when the user does not exist, to take the same time.
    /// Made on first use so that start-up does not pay for a hash.
    dummy_hash: Arc<OnceCell<String>>,
}

impl Argon2Hasher {
    pub fn new(settings: &AuthSettings) -> Result<Self, HashingError> {
        let cost = settings.argon2;
        let params = Params::new(cost.memory_kib, cost.iterations, cost.parallelism, None)
            .map_err(|e| HashingError(format!("invalid auth.argon2 settings: {e}")))?;
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        // By default half the CPUs hash, so logins at full load leave the
        // other half to every other request.
        let concurrency = match settings.hashing_concurrency {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get().div_ceil(2)),
            n => n,
        };
        Ok(Self {
            argon2,
            permits: Arc::new(Semaphore::new(concurrency)),
            dummy_hash: Arc::new(OnceCell::new()),
        })
    }

    async fn run_blocking<R: Send + 'static>(
        &self,
        work: impl FnOnce(&Argon2<'static>) -> R + Send + 'static,
    ) -> Result<R, HashingError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| HashingError(e.to_string()))?;
        let argon2 = self.argon2.clone();
        tokio::task::spawn_blocking(move || work(&argon2))
            .await
            .map_err(|e| HashingError(e.to_string()))
    }
}

fn hash_with(argon2: &Argon2<'_>, password: &str) -> Result<String, HashingError> {
    let salt = SaltString::generate(&mut OsRng);
    argon2
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| HashingError(e.to_string()))
}

fn verify_with(argon2: &Argon2<'_>, password: &str, phc: &str) -> bool {
    argon2::PasswordHash::new(phc)
        .is_ok_and(|parsed| argon2.verify_password(password.as_bytes(), &parsed).is_ok())
}

impl PasswordHasher for Argon2Hasher {
    async fn hash(&self, password: &str) -> Result<PasswordHash, HashingError> {
        let password = password.to_owned();
        self.run_blocking(move |argon2| hash_with(argon2, &password))
            .await?
            .map(PasswordHash::new)
    }

    async fn verify(
        &self,
        password: &str,
        hash: Option<&PasswordHash>,
    ) -> Result<bool, HashingError> {
        let password = password.to_owned();
        let known = hash.is_some();
        let phc = match hash {
            Some(hash) => hash.as_str().to_owned(),
            None => self
                .dummy_hash
                .get_or_try_init(|| async {
                    self.run_blocking(|argon2| hash_with(argon2, "allot dummy password"))
                        .await?
                })
                .await?
                .clone(),
        };
        let matches = self
            .run_blocking(move |argon2| verify_with(argon2, &password, &phc))
            .await?;
        Ok(known && matches)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{Environment, Settings};

    fn hasher() -> Argon2Hasher {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        Argon2Hasher::new(
            &Settings::load_from(&dir, Environment::Testing)
                .unwrap()
                .auth,
        )
        .unwrap()
    }

    #[tokio::test]
    async fn a_hash_verifies_its_password_only() {
        let hasher = hasher();
        let hash = hasher.hash("correct horse").await.unwrap();
        assert!(hash.as_str().starts_with("$argon2id$"));
        assert!(hasher.verify("correct horse", Some(&hash)).await.unwrap());
        assert!(!hasher.verify("wrong horse", Some(&hash)).await.unwrap());
    }

    #[tokio::test]
    async fn an_unknown_user_never_verifies() {
        let hasher = hasher();
        assert!(!hasher.verify("allot dummy password", None).await.unwrap());
    }
}
