//! Logging: readable lines by default, JSON for log shippers, filtered like `RUST_LOG`.
//!
//! Logs go to standard error so that command output on standard output (tables, JSON,
//! `config check`) can be piped without them.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing_indicatif::filter::{hide_indicatif_span_fields, IndicatifFilter};
use tracing_indicatif::IndicatifLayer;
use tracing_subscriber::fmt::format::DefaultFields;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer};

/// Whether long reads draw progress bars (text logs on a terminal) rather than log lines.
static PROGRESS_BARS: AtomicBool = AtomicBool::new(false);

/// Whether long reads should show their progress as bars: standard error is a terminal and
/// the installed subscriber draws them above the log lines.
pub(crate) fn progress_bars_drawn() -> bool {
    PROGRESS_BARS.load(Ordering::Relaxed)
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The filter used when `RUST_LOG` is not set.
pub const DEFAULT_FILTER: &str = "pipewarden=info,warn";

/// Installs the global subscriber; `RUST_LOG` (e.g. `pipewarden=debug,sqlx=warn`) overrides the default filter.
pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    if format == LogFormat::Text && std::io::stderr().is_terminal() {
        init_with_progress_bars(filter);
        return;
    }
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // A second init (tests calling the library twice) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
}

/// Text logs on a terminal, written above the progress bars of the reads in flight (spans
/// that carry the `indicatif.pb_show` field), so that bars and lines do not overwrite each
/// other.
fn init_with_progress_bars(filter: EnvFilter) {
    let bars = IndicatifLayer::new()
        .with_span_field_formatter(hide_indicatif_span_fields(DefaultFields::new()));
    let lines = fmt::layer()
        .with_writer(bars.get_stderr_writer())
        .fmt_fields(hide_indicatif_span_fields(DefaultFields::new()));
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(lines)
        .with(bars.with_filter(IndicatifFilter::new(false)))
        .try_init();
    if installed.is_ok() {
        PROGRESS_BARS.store(true, Ordering::Relaxed);
    }
}
