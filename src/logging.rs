//! Logs: `tracing` to stderr, filtered by `LOG_LEVEL` (the local runtime's
//! variable: `debug`, `info`, ...) or `RUST_LOG` for per-module filters.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the stderr subscriber once; later calls do nothing.
pub fn init() {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .or_else(|| std::env::var("LOG_LEVEL").ok())
        .and_then(|spec| EnvFilter::try_new(spec).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in log files.
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}
