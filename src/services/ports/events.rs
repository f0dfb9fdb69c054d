//! What the feed and the webhooks need: the recorded events, read in
//! position order.

use std::future::Future;

use crate::domain::events::{Event, EventType};
use crate::services::StoreError;

/// The recorded events (decision record 0004). Only the relay appends; every
/// reader sees the same sequence.
pub trait EventLog: Send + Sync + 'static {
    /// At most `limit` events after position `after`, in position order, of
    /// the given types (every type when `types` is empty). Fewer than `limit`
    /// means the end was reached.
    fn read(
        &self,
        after: u64,
        types: &[EventType],
        limit: u32,
    ) -> impl Future<Output = Result<Vec<Event>, StoreError>> + Send;

    /// The position of the latest event (0 when there is none yet).
    fn head(&self) -> impl Future<Output = Result<u64, StoreError>> + Send;
}
