//! Structured logs through `tracing`; `RUST_LOG` filters, `KEYMETER_LOG_FORMAT=json` for machines.

use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,tower_http=warn"));
    let json = std::env::var("KEYMETER_LOG_FORMAT").map(|v| v == "json").unwrap_or(false);
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let result = if json { builder.json().try_init() } else { builder.try_init() };
    // Already initialised (e.g. several servers in one test process): keep the first.
    let _ = result;
}
