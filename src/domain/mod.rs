//! The domain: plain types and rules — no I/O, and nothing from services,
//! adapters or the API.

pub mod allocation;
pub mod events;
pub mod throttle;
pub mod token;
pub mod user;
pub mod webhooks;
