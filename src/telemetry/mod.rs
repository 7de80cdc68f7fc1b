//! Logging set-up: `RUST_LOG`-style filtering, human lines on a terminal, JSON for shippers;
//! and the Prometheus [`metrics`].
//!
//! Secrets never reach a log line because they are only ever held in `secrecy` types,
//! whose `Debug` prints `[REDACTED]`, and no code formats an exposed secret into a message.

pub mod metrics;
pub mod repeated_warning;

#[cfg(test)]
pub(crate) mod captured_log;

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber writing to standard error. `default_level` applies when
/// `RUST_LOG` is unset or invalid (e.g. `info` for the daemon, `off` for one-shot commands, which report their own outcome).
pub fn init(format: LogFormat, default_level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Json => builder.json().with_current_span(false).try_init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).try_init(),
    };
    if let Err(err) = result {
        eprintln!("tokenwarden: logging was already initialised: {err}");
    }
}
