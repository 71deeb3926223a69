//! Logging: where lines go and how they are written (`log_format`).
//!
//! Lines go to standard error, so that standard output carries only a command's
//! result (`tune --json` must print exactly one JSON object). `RUST_LOG` overrides
//! the level (`info` by default). Every line written while an HTTP request is
//! handled carries its ID (the `request` span of `server::gate`): in text as
//! `request{request_id=...}:`, in JSON under `span.request_id` (and `spans`).

use std::io::IsTerminal;

use tracing::Subscriber;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogFormat;

/// The level filter: `RUST_LOG` if set and valid, else `info`.
#[must_use]
pub fn filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))
}

/// The subscriber the daemon logs with, writing to `writer` (standard error for
/// the binary; tests pass their own). `ansi` colours text lines (for a terminal).
pub fn subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    writer: W,
    ansi: bool,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Text => Box::new(builder.with_ansi(ansi).finish()),
        // Never colour codes in JSON; the current span (the request) and the list of
        // spans, so a collector finds `span.request_id` on every line of a request.
        LogFormat::Json => Box::new(
            builder
                .json()
                .with_current_span(true)
                .with_span_list(true)
                .finish(),
        ),
    }
}

/// Sets the process's subscriber: `format` on standard error, coloured text only
/// for a terminal (log files and pipes get plain `key=value`). Lines of the `log`
/// crate (which some dependencies write with) go through it too.
///
/// # Panics
///
/// If a subscriber was set already.
pub fn init(format: LogFormat) {
    let ansi = std::io::stderr().is_terminal();
    subscriber(format, filter(), std::io::stderr, ansi).init();
}
