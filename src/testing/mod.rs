//! The test kit: an in-memory [`AllocationRepository`](crate::services::ports::allocation::AllocationRepository)
//! and the contract every implementation must meet. Compiled for the crate's
//! unit tests (`cfg(test)`) and, through the `testing` feature, for the
//! integration tests (Cargo.toml's dev-dependency on this crate turns it on);
//! never in a normal or release build.

pub mod contract;
pub mod memory;
pub mod webhooks;
