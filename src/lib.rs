pub mod adapters;
pub mod api;
pub mod config;
pub mod startup;
pub mod telemetry;
