//! Log output: readable lines in development, JSON lines in production.

use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogFormat, LogSettings};

/// Installs the global subscriber. `RUST_LOG`, when set and valid, overrides
/// `log.level`; both take `level` or `target=level` directives, comma-separated
/// (e.g. `allot=debug,warn`). Logs go to stderr so that stdout stays clean for
/// commands like `allot openapi`.
pub fn init(settings: &LogSettings) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|directives| directives.parse::<Targets>().ok())
        .or_else(|| settings.level.parse().ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO));
    let output = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter);
    let _already_set = match settings.format {
        LogFormat::Json => registry.with(output.json().flatten_event(true)).try_init(),
        LogFormat::Pretty => registry.with(output).try_init(),
    };
}
