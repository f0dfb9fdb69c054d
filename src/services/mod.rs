//! Use cases: each one a function over the repository ports, with no knowledge
//! of which store or transport is behind them.

pub mod allocation;
