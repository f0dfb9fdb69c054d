// Lets code shared with the integration tests (tests/contract) name this crate `allot` here too.
extern crate self as allot;

pub mod adapters;
pub mod api;
pub mod config;
pub mod domain;
pub mod metrics;
pub mod server;
pub mod services;
pub mod startup;
pub mod telemetry;
