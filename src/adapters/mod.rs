//! Adapters: MongoDB storage, and later tokens and password hashing.

pub mod mongo;
