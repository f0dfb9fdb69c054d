//! The allot instances sharing one database, and the sessions their
//! transactions run in.
//!
//! A MongoDB transaction belongs to a logical session, not to a connection:
//! when a process dies with a transaction open, the documents it wrote stay
//! locked until the server gives up on it (`transactionLifetimeLimitSeconds`,
//! 60 s by default), and every other instance's writes to them wait. So each
//! instance holds a **lease** (a document in `instances` it renews every
//! quarter of `mongo.instance_lease_ms`, timed by the server's clock) listing the
//! sessions its transactions run in, all registered before their first use.
//! Once a lease has lapsed for `mongo.instance_lease_ms`, any surviving
//! instance kills those sessions (`killSessions`), which aborts the dead
//! instance's transactions at once, and deletes the lease: from then on the
//! dead instance's unfinished allocations are the survivors' to complete
//! (see `allocations::interrupted`).
//!
//! On a secured deployment every instance must connect as the same user (a
//! user may kill the sessions it owns) or hold `killAnySession`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::TryStreamExt;
use mongodb::bson::{Bson, Document, doc, oid::ObjectId};
use mongodb::options::{ReadConcern, TransactionOptions, WriteConcern};
use mongodb::{Client, ClientSession, Collection, Database};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::sessions::OperationSessions;

pub const INSTANCES: &str = "instances";

/// How many transactions one instance runs at once; also how many sessions
/// its lease lists at most.
const SESSIONS: usize = 64;

/// This process, as one of the instances sharing the database.
#[derive(Clone)]
pub struct Instance {
    inner: Arc<Inner>,
}

struct Inner {
    id: String,
    client: Client,
    /// The process's sessions for single operations (see
    /// [`super::sessions`]): the lease's, and every adapter's given this
    /// instance.
    operations: OperationSessions,
    instances: Collection<Document>,
    lease: Duration,
    /// Sessions registered in the lease and free for a transaction.
    idle: Mutex<Vec<ClientSession>>,
    /// Instances holding a lease at the last survey.
    live: Mutex<HashSet<String>>,
    /// Those of them that may relay events (`events.relay_enabled`).
    live_relays: Mutex<HashSet<String>>,
    /// Whether this one may.
    relays: std::sync::atomic::AtomicBool,
    /// The ids (`lsid`) of every session registered and not yet dropped.
    registered: Mutex<HashSet<Vec<u8>>>,
    slots: Arc<Semaphore>,
}

/// A lease that lapsed and was taken over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reaped {
    pub instance: String,
    pub sessions: usize,
}

fn lsid_key(lsid: &Document) -> Vec<u8> {
    match lsid.get("id") {
        Some(Bson::Binary(binary)) => binary.bytes.clone(),
        _ => lsid.to_string().into_bytes(),
    }
}

impl Instance {
    /// A new identity (ids are never reused: a restarted process is a new instance).
    pub fn new(database: &Database, lease: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                id: ObjectId::new().to_hex(),
                client: database.client().clone(),
                operations: OperationSessions::new(database.client()),
                instances: database.collection(INSTANCES),
                lease,
                idle: Mutex::new(Vec::new()),
                live: Mutex::new(HashSet::new()),
                live_relays: Mutex::new(HashSet::new()),
                relays: std::sync::atomic::AtomicBool::new(false),
                registered: Mutex::new(HashSet::new()),
                slots: Arc::new(Semaphore::new(SESSIONS)),
            }),
        }
    }

    /// This process's sessions for single operations.
    pub fn operation_sessions(&self) -> &OperationSessions {
        &self.inner.operations
    }

    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// Takes (or renews) the lease, by the server's clock so that instances'
    /// clocks need not agree. A lease that was reaped meanwhile is taken anew.
    pub async fn renew(&self) -> mongodb::error::Result<()> {
        let lease_ms = i64::try_from(self.inner.lease.as_millis()).unwrap_or(i64::MAX);
        let mut session = self.inner.operations.take().await?;
        let renewed = self
            .inner
            .instances
            .update_one(
                doc! { "_id": &self.inner.id },
                vec![doc! { "$set": {
                    "renewed_at": "$$NOW",
                    "lease_ms": lease_ms,
                    "pid": i64::from(std::process::id()),
                    "relays": self.relays(),
                } }],
            )
            .upsert(true)
            .session(session.session())
            .await;
        session.check(renewed).map(drop)
    }

    /// Reads every lease, by the server's clock: kills the sessions of each
    /// instance whose lease lapsed (aborting its open transactions) and
    /// deletes its lease; remembers the others as live (see [`Instance::live`]).
    pub async fn survey(&self) -> mongodb::error::Result<Vec<Reaped>> {
        let mut session = self.inner.operations.take().await?;
        let leases = self
            .inner
            .instances
            // In milliseconds: SecantusDB compares `$$NOW` with stored dates wrongly.
            .aggregate(vec![doc! { "$set": { "lapsed": { "$lt": [
                { "$toLong": "$renewed_at" },
                { "$subtract": [{ "$toLong": "$$NOW" }, "$lease_ms"] },
            ] } } }])
            .session(session.session())
            .await;
        let mut cursor = session.check(leases)?;
        let leases = cursor.stream(session.session()).try_collect().await;
        let leases: Vec<Document> = session.check(leases)?;
        drop(session);
        let mut live = HashSet::new();
        let mut live_relays = HashSet::new();
        let mut reaped = Vec::new();
        for lease in leases {
            let Ok(instance) = lease.get_str("_id") else {
                continue;
            };
            if !lease.get_bool("lapsed").unwrap_or(false) {
                live.insert(instance.to_owned());
                if lease.get_bool("relays").unwrap_or(false) {
                    live_relays.insert(instance.to_owned());
                }
                continue;
            }
            let sessions: Vec<Bson> = lease
                .get_array("sessions")
                .map(|sessions| sessions.to_vec())
                .unwrap_or_default();
            let killed = sessions.len();
            if killed > 0 {
                let admin = self.inner.client.database("admin");
                admin.run_command(doc! { "killSessions": sessions }).await?;
            }
            // Unless it renewed meanwhile (it was slow, not dead).
            let renewed_at = lease.get("renewed_at").cloned().unwrap_or(Bson::Null);
            let deleted = self
                .inner
                .instances
                .delete_one(doc! { "_id": instance, "renewed_at": renewed_at })
                .await?;
            if deleted.deleted_count == 1 {
                reaped.push(Reaped {
                    instance: instance.to_owned(),
                    sessions: killed,
                });
            } else {
                live.insert(instance.to_owned());
            }
        }
        *self.inner.live.lock().unwrap_or_else(|e| e.into_inner()) = live;
        *self
            .inner
            .live_relays
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = live_relays;
        Ok(reaped)
    }

    /// Marks this instance as one that may relay events (in its lease from
    /// the next renewal).
    pub fn may_relay(&self) {
        use std::sync::atomic::Ordering;
        self.inner.relays.store(true, Ordering::Relaxed);
    }

    fn relays(&self) -> bool {
        self.inner.relays.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The instances that may relay events, found live by the last
    /// [`Instance::survey`] (this one, if it may).
    pub fn live_relays(&self) -> HashSet<String> {
        let live = self
            .inner
            .live_relays
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut live = live.clone();
        if self.relays() {
            live.insert(self.inner.id.clone());
        }
        live
    }

    /// The instances found holding a lease by the last [`Instance::survey`]
    /// (this one always).
    pub fn live(&self) -> HashSet<String> {
        let live = self.inner.live.lock().unwrap_or_else(|e| e.into_inner());
        let mut live = live.clone();
        live.insert(self.inner.id.clone());
        live
    }

    /// A session registered in this instance's lease, in a new snapshot
    /// transaction with majority writes whose commit the server gives up
    /// after `max_commit_time`, and the slot it holds (at most [`SESSIONS`]
    /// transactions run at once). Hand the session back with
    /// [`SessionSlot::reuse`] once its transaction has ended cleanly.
    pub async fn transaction(
        &self,
        max_commit_time: Duration,
    ) -> mongodb::error::Result<(ClientSession, SessionSlot)> {
        let permit = Arc::clone(&self.inner.slots)
            .acquire_owned()
            .await
            .map_err(|_| mongodb::error::Error::custom("the session pool is closed"))?;
        let idle = self
            .inner
            .idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop();
        let mut session = match idle {
            Some(session) => session,
            None => self.register_new_session().await?,
        };
        let slot = SessionSlot {
            lsid: lsid_key(session.id()),
            instance: self.clone(),
            reused: false,
            _permit: permit,
        };
        session
            .start_transaction()
            .with_options(
                TransactionOptions::builder()
                    .read_concern(ReadConcern::snapshot())
                    .write_concern(WriteConcern::majority())
                    .max_commit_time(max_commit_time)
                    .build(),
            )
            .await?;
        Ok((session, slot))
    }

    /// A new session, listed in the lease before it is ever used, so that a
    /// transaction of this instance can never be one the survivors cannot kill.
    async fn register_new_session(&self) -> mongodb::error::Result<ClientSession> {
        let session = self.inner.client.start_session().await?;
        let lsid = session.id().clone();
        self.inner
            .instances
            .update_one(
                doc! { "_id": &self.inner.id },
                doc! { "$addToSet": { "sessions": &lsid } },
            )
            .upsert(true)
            .await?;
        self.inner
            .registered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(lsid_key(&lsid));
        Ok(session)
    }

    /// Removes from the lease the sessions this instance dropped, so the
    /// list stays as short as the pool.
    pub async fn prune_sessions(&self) -> mongodb::error::Result<()> {
        let Some(lease) = self
            .inner
            .instances
            .find_one(doc! { "_id": &self.inner.id })
            .projection(doc! { "sessions": 1 })
            .await?
        else {
            return Ok(());
        };
        let listed = lease
            .get_array("sessions")
            .map(|sessions| sessions.to_vec())
            .unwrap_or_default();
        let stale: Vec<Bson> = {
            let registered = self
                .inner
                .registered
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            listed
                .into_iter()
                .filter(|lsid| match lsid {
                    Bson::Document(lsid) => !registered.contains(&lsid_key(lsid)),
                    _ => true,
                })
                .collect()
        };
        if stale.is_empty() {
            return Ok(());
        }
        self.inner
            .instances
            .update_one(
                doc! { "_id": &self.inner.id },
                doc! { "$pullAll": { "sessions": stale } },
            )
            .await
            .map(drop)
    }
}

/// A transaction's place in the pool. Dropped without
/// [`SessionSlot::reuse`], its session is forgotten (the driver aborts what
/// it left open) and the lease drops it at the next
/// [`Instance::prune_sessions`].
pub struct SessionSlot {
    lsid: Vec<u8>,
    instance: Instance,
    reused: bool,
    _permit: OwnedSemaphorePermit,
}

impl SessionSlot {
    /// The session's transaction was committed or aborted: it may run another.
    pub fn reuse(mut self, session: ClientSession) {
        self.instance
            .inner
            .idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(session);
        self.reused = true;
    }
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        if !self.reused {
            self.instance
                .inner
                .registered
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&self.lsid);
        }
    }
}
