//! The ports of the use cases: what they need from storage, password
//! hashing and token signing (and what the readiness probe asks the store), implemented by `adapters`. Kept apart from the
//! use cases so that no service module imports another in a circle, and so
//! that each has one path.

pub mod accounts;
pub mod allocation;
pub mod events;
pub mod health;
pub mod login_throttle;
pub mod tokens;
pub mod webhooks;
