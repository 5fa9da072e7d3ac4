//! Structured logs through `tracing`; `RUST_LOG` filters, `KEYMETER_LOG_FORMAT=json` for machines.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// `filter` is `Config::log_filter`, already checked.
pub fn init(format: LogFormat, filter: &str) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new(crate::config::DEFAULT_LOG_FILTER));
    // Colours only for people: escape codes in a log file or a collector are noise.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let result = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
    // Already initialised (e.g. several servers in one test process): keep the first.
    let _ = result;
}
