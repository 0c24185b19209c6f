//! The process's log output: one `tracing` subscriber writing text or JSON lines to stdout.

use std::io::IsTerminal;

use anyhow::Context;
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the subscriber: `RUST_LOG` when set, `log.level` otherwise.
pub fn init(log: &LogConfig) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(env) if !env.is_empty() => EnvFilter::try_new(&env).context("RUST_LOG")?,
        _ => EnvFilter::try_new(&log.level).context("log.level")?,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colours(std::io::stdout().is_terminal()));
    let installed = match log.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    installed.map_err(|e| anyhow::anyhow!("installing the logger: {e}"))
}

/// Whether text lines get ANSI colours: only on a terminal, where a person reads them, and
/// not when `NO_COLOR` is set (no-color.org). In a file, a pipe or a log collector
/// (journald, `docker logs`) the escape codes would be noise in every line.
fn colours(terminal: bool) -> bool {
    terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}
