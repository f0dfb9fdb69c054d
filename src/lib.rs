pub mod adapters;
pub mod api;
pub mod config;
pub mod domain;
pub mod metrics;
pub mod server;
pub mod services;
pub mod startup;
pub mod telemetry;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
