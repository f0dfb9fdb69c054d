//! Adapters: the outside world behind the services' ports — MongoDB storage,
//! JWT signing and Argon2 password hashing.

pub mod deadline;
pub mod mongo;
pub mod passwords;
pub mod tokens;
pub mod webhook_sender;
