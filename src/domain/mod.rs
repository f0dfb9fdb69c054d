//! The pure domain model: no I/O, and nothing from services, adapters or the API.

pub mod allocation;
