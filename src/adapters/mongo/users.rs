//! The `users` collection.

use futures_util::TryStreamExt;
use mongodb::bson::{self, Document, doc};
use mongodb::options::IndexOptions;
use mongodb::{ClientSession, Collection, Database, IndexModel};
use serde::{Deserialize, Serialize};

use super::instances::Instance;
use super::revocations::RevocationWriter;
use super::sessions::OperationSessions;
use super::{Finish, in_transaction, is_duplicate_key};
use crate::domain::user::{PasswordHash, Role, User, Username};
use crate::services::StoreError;
use crate::services::ports::accounts::{AddUserError, UserRepository, Written};
use crate::services::ports::tokens::Revocation;

const COLLECTION: &str = "users";

/// How a user is stored. `username` is already lower-cased, so the unique
/// index makes names unique regardless of case.
#[derive(Debug, Serialize, Deserialize)]
struct UserDocument {
    username: String,
    /// Absent in users stored before accounts had ids: see [`Self::into_user`].
    #[serde(default)]
    account_id: Option<String>,
    password_hash: String,
    roles: Vec<Role>,
    created_at: bson::DateTime,
    #[serde(default)]
    disabled: bool,
    #[serde(default)]
    epoch: i64,
}

impl From<&User> for UserDocument {
    fn from(user: &User) -> Self {
        Self {
            username: user.username.as_str().to_owned(),
            account_id: Some(user.account_id.clone()),
            password_hash: user.password_hash.as_str().to_owned(),
            roles: user.roles.clone(),
            created_at: bson::DateTime::from_chrono(user.created_at),
            disabled: user.disabled,
            epoch: user.epoch,
        }
    }
}

impl UserDocument {
    fn into_user(self) -> Result<User, StoreError> {
        let username = Username::parse(&self.username)
            .map_err(|e| StoreError(format!("stored username {:?}: {e}", self.username).into()))?;
        // An account stored before ids existed is named by its username with a
        // prefix no generated id has; a new account of that name gets a fresh id.
        let account_id = self
            .account_id
            .unwrap_or_else(|| format!("legacy:{}", self.username));
        Ok(User {
            account_id,
            username,
            password_hash: PasswordHash::new(self.password_hash),
            roles: self.roles,
            created_at: self.created_at.to_chrono(),
            disabled: self.disabled,
            epoch: self.epoch,
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
            // "Is there another enabled admin?" reads one entry, however many users.
            IndexModel::builder()
                .keys(doc! { "roles": 1, "disabled": 1 })
                .options(IndexOptions::builder().name("admins".to_owned()).build())
                .build(),
        ],
    )
}

#[derive(Clone)]
pub struct MongoUsers {
    instance: Instance,
    /// For single reads (see [`super::sessions`]).
    sessions: OperationSessions,
    collection: Collection<UserDocument>,
    /// Sent with queries as `maxTimeMS`.
    max_time: std::time::Duration,
    revocations: RevocationWriter,
}

impl MongoUsers {
    /// Transactions run in sessions of `instance`.
    pub fn new(database: &Database, instance: &Instance) -> Self {
        Self {
            instance: instance.clone(),
            sessions: instance.operation_sessions().clone(),
            collection: database.collection(COLLECTION),
            max_time: super::DEFAULT_MAX_TIME,
            revocations: RevocationWriter::new(database),
        }
    }

    /// Limits each query to `limit` on the server.
    pub fn with_operation_timeout(mut self, limit: std::time::Duration) -> Self {
        self.max_time = limit;
        self
    }

    /// The stored account with this id (or legacy username id) and epoch.
    fn filter(account_id: &str, username: &str, epoch: i64) -> Document {
        let id = match account_id.strip_prefix("legacy:") {
            Some(_) => doc! { "username": username, "account_id": { "$exists": false } },
            None => doc! { "account_id": account_id },
        };
        let mut filter = id;
        // Stored before epochs existed means epoch 0.
        if epoch == 0 {
            filter.insert(
                "$or",
                vec![
                    doc! { "epoch": 0_i64 },
                    doc! { "epoch": { "$exists": false } },
                ],
            );
        } else {
            filter.insert("epoch", epoch);
        }
        filter
    }

    /// Whether an enabled admin other than `account_id` exists, read in the
    /// transaction. Two transactions removing two different admins cannot
    /// both pass it: each also numbers a revocation, which writes the one
    /// revocation counter document, so they conflict and one retries after
    /// the other has committed (no write skew).
    async fn another_admin(
        &self,
        session: &mut ClientSession,
        account_id: &str,
        username: &str,
    ) -> mongodb::error::Result<bool> {
        let other = self
            .collection
            .clone_with_type::<Document>()
            .find_one(doc! {
                "roles": Role::Admin.as_str(),
                "disabled": { "$ne": true },
                "account_id": { "$ne": account_id },
                "username": { "$ne": username },
            })
            .projection(doc! { "_id": 1 })
            .max_time(self.max_time)
            .session(&mut *session)
            .await?;
        Ok(other.is_some())
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
        let mut session = self.sessions.take().await?;
        let found = self
            .collection
            .find_one(doc! { "username": username.as_str() })
            .max_time(self.max_time)
            .session(session.session())
            .await;
        session
            .check(found)?
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

    async fn list(&self, after: Option<&str>, limit: usize) -> Result<Vec<User>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let filter = match after {
            Some(after) => doc! { "username": { "$gt": after } },
            None => doc! {},
        };
        let documents: Vec<UserDocument> = self
            .collection
            .find(filter)
            .sort(doc! { "username": 1 })
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .max_time(self.max_time)
            .await?
            .try_collect()
            .await?;
        documents.into_iter().map(UserDocument::into_user).collect()
    }

    async fn update(
        &self,
        changed: &User,
        revocation: &Revocation,
        keep_an_admin: bool,
    ) -> Result<Written, StoreError> {
        let filter = Self::filter(
            &changed.account_id,
            changed.username.as_str(),
            changed.epoch - 1,
        );
        let mut set = doc! {
            "password_hash": changed.password_hash.as_str(),
            "roles": changed.roles.iter().map(|role| role.as_str()).collect::<Vec<_>>(),
            "disabled": changed.disabled,
            "epoch": changed.epoch,
        };
        if !changed.account_id.starts_with("legacy:") {
            set.insert("account_id", &changed.account_id);
        }
        let this = self.clone();
        let account_id = changed.account_id.clone();
        let username = changed.username.as_str().to_owned();
        let revocation = revocation.clone();
        let transaction = in_transaction(
            &self.instance,
            self.max_time,
            || {},
            async move |session| {
                if keep_an_admin
                    && !this
                        .another_admin(&mut *session, &account_id, &username)
                        .await?
                {
                    return Ok(Finish::Abort(Written::LastAdmin));
                }
                let updated = this
                    .collection
                    .update_one(filter.clone(), doc! { "$set": set.clone() })
                    .session(&mut *session)
                    .await?;
                if updated.matched_count == 0 {
                    return Ok(Finish::Abort(Written::Stale));
                }
                this.revocations.insert(&mut *session, &revocation).await?;
                Ok(Finish::Commit(Written::Done))
            },
        );
        Ok(transaction.await?)
    }

    async fn delete(
        &self,
        account_id: &str,
        epoch: i64,
        revocation: &Revocation,
        keep_an_admin: bool,
    ) -> Result<Written, StoreError> {
        let username = account_id.strip_prefix("legacy:").unwrap_or_default();
        let filter = Self::filter(account_id, username, epoch);
        let this = self.clone();
        let account_id = account_id.to_owned();
        let username = username.to_owned();
        let revocation = revocation.clone();
        let transaction = in_transaction(
            &self.instance,
            self.max_time,
            || {},
            async move |session| {
                let (account_id, username) = (account_id.as_str(), username.as_str());
                if keep_an_admin
                    && !this
                        .another_admin(&mut *session, account_id, username)
                        .await?
                {
                    return Ok(Finish::Abort(Written::LastAdmin));
                }
                let deleted = this
                    .collection
                    .delete_one(filter.clone())
                    .session(&mut *session)
                    .await?;
                if deleted.deleted_count == 0 {
                    return Ok(Finish::Abort(Written::Stale));
                }
                this.revocations.insert(&mut *session, &revocation).await?;
                Ok(Finish::Commit(Written::Done))
            },
        );
        Ok(transaction.await?)
    }
}
