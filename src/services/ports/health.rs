//! What the readiness probe needs: a store that says whether it answers.

use std::future::Future;

use crate::services::StoreError;

/// The store, asked whether it can serve requests now.
pub trait Readiness: Send + Sync {
    /// One round trip that reads and writes nothing (MongoDB: `ping`).
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
}
