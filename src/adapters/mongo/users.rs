//! The `users` collection.

use mongodb::bson::{self, doc};
use mongodb::options::IndexOptions;
use mongodb::{Collection, Database, IndexModel};
use serde::{Deserialize, Serialize};

use super::is_duplicate_key;
use crate::domain::user::{PasswordHash, Role, User, Username};
use crate::services::StoreError;
use crate::services::users::{AddUserError, UserRepository};

const COLLECTION: &str = "users";

/// How a user is stored. `username` is already lower-cased, so the unique
/// index makes names unique regardless of case.
#[derive(Debug, Serialize, Deserialize)]
struct UserDocument {
    username: String,
    password_hash: String,
    roles: Vec<Role>,
    created_at: bson::DateTime,
}

impl From<&User> for UserDocument {
    fn from(user: &User) -> Self {
        Self {
            username: user.username.as_str().to_owned(),
            password_hash: user.password_hash.as_str().to_owned(),
            roles: user.roles.clone(),
            created_at: bson::DateTime::from_chrono(user.created_at),
        }
    }
}

impl UserDocument {
    fn into_user(self) -> Result<User, StoreError> {
        let username = Username::parse(&self.username)
            .map_err(|e| StoreError(format!("stored username {:?}: {e}", self.username).into()))?;
        Ok(User {
            username,
            password_hash: PasswordHash::new(self.password_hash),
            roles: self.roles,
            created_at: self.created_at.to_chrono(),
        })
    }
}

pub fn indexes() -> (&'static str, Vec<IndexModel>) {
    (
        COLLECTION,
        vec![
            IndexModel::builder()
                .keys(doc! { "username": 1 })
                .options(
                    IndexOptions::builder()
                        .unique(true)
                        .name("username_unique".to_owned())
                        .build(),
                )
                .build(),
        ],
    )
}

#[derive(Clone)]
pub struct MongoUsers {
    collection: Collection<UserDocument>,
    /// Sent with queries as `maxTimeMS`.
    max_time: std::time::Duration,
}

impl MongoUsers {
    pub fn new(database: &Database) -> Self {
        Self {
            collection: database.collection(COLLECTION),
            max_time: super::DEFAULT_MAX_TIME,
        }
    }

    /// Limits each query to `limit` on the server.
    pub fn with_operation_timeout(mut self, limit: std::time::Duration) -> Self {
        self.max_time = limit;
        self
    }
}

impl UserRepository for MongoUsers {
    async fn add(&self, user: &User) -> Result<(), AddUserError> {
        match self.collection.insert_one(UserDocument::from(user)).await {
            Ok(_) => Ok(()),
            Err(error) if is_duplicate_key(&error) => Err(AddUserError::Taken),
            Err(error) => Err(AddUserError::Store(error.into())),
        }
    }

    async fn get(&self, username: &Username) -> Result<Option<User>, StoreError> {
        self.collection
            .find_one(doc! { "username": username.as_str() })
            .max_time(self.max_time)
            .await?
            .map(UserDocument::into_user)
            .transpose()
    }

    async fn grant_role(&self, username: &Username, role: Role) -> Result<bool, StoreError> {
        let result = self
            .collection
            .update_one(
                doc! { "username": username.as_str() },
                doc! { "$addToSet": { "roles": role.as_str() } },
            )
            .await?;
        Ok(result.matched_count == 1)
    }
}
