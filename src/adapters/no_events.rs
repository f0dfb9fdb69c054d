//! An event log with no events, standing in for the relay's MongoDB event
//! log (issue 18, parts 1–2) until it is merged: webhooks are created and
//! managed, and deliver nothing.

use crate::domain::events::{Event, EventType};
use crate::services::StoreError;
use crate::services::ports::events::EventLog;

#[derive(Clone, Copy, Debug, Default)]
pub struct NoEvents;

impl EventLog for NoEvents {
    async fn read(
        &self,
        _after: u64,
        _types: &[EventType],
        _limit: u32,
    ) -> Result<Vec<Event>, StoreError> {
        Ok(Vec::new())
    }

    async fn head(&self) -> Result<u64, StoreError> {
        Ok(0)
    }
}
