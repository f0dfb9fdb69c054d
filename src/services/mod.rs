//! Use cases. Each is a function over ports (traits) that the adapters
//! implement, so the rules can be tested over in-memory fakes.

pub mod allocation;
pub mod login_throttle;
pub mod ports;
pub mod tokens;
pub mod users;

/// A store (database) failed: unreachable, timed out, or refused the operation.
#[derive(Debug, thiserror::Error)]
#[error("the database is unavailable")]
pub struct StoreError(#[source] pub Box<dyn std::error::Error + Send + Sync>);
