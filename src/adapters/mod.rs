//! Adapters: MongoDB storage, and later tokens and password hashing.

pub mod memory;
pub mod mongo;
