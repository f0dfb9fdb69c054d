//! The domain: plain types and rules, no I/O and no framework.

pub mod token;
pub mod user;
