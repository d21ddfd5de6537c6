//! Progress of long reads: a backfill of a large org runs for hours, and whoever watches it
//! needs to see how far it is. On a terminal it is a progress bar per read; elsewhere
//! (journald, a log pipeline) a log line every few seconds.

use std::time::{Duration, Instant};

use tracing_indicatif::span_ext::IndicatifSpanExt;
use tracing_indicatif::style::ProgressStyle;

use crate::telemetry::progress_bars_drawn;

/// Time between two progress lines of one read.
const LINE_EVERY: Duration = Duration::from_secs(10);

/// How far one read (one object's query) has come.
pub(crate) struct Progress<'a> {
    connection: &'a str,
    object: &'a str,
    total: u64,
    done: u64,
    started: Instant,
    last_line: Instant,
    /// The span whose progress bar the terminal shows; idle when bars are not drawn.
    bar: tracing::Span,
}

impl<'a> Progress<'a> {
    /// Starts counting a read of `total` rows.
    pub fn new(connection: &'a str, object: &'a str, total: u64) -> Progress<'a> {
        let now = Instant::now();
        let bar = tracing::info_span!("read", indicatif.pb_show = tracing::field::Empty);
        if progress_bars_drawn() && total > 0 {
            bar.pb_set_style(&bar_style());
            bar.pb_set_message(&format!("{connection} {object}"));
            bar.pb_set_length(total);
            bar.pb_start();
        }
        Progress {
            connection,
            object,
            total,
            done: 0,
            started: now,
            last_line: now,
            bar,
        }
    }

    /// Counts `rows` more stored rows, and logs a line when the last one is old enough.
    pub fn advance(&mut self, rows: usize) {
        self.done += rows as u64;
        if progress_bars_drawn() {
            self.bar.pb_inc(rows as u64);
            return;
        }
        if self.last_line.elapsed() >= LINE_EVERY && self.done < self.total {
            self.last_line = Instant::now();
            let figures = Figures::of(self.done, self.total, self.started.elapsed());
            tracing::info!(
                connection = self.connection,
                object = self.object,
                done = self.done,
                total = self.total,
                percent = format_args!("{:.1}", figures.percent),
                rows_per_second = figures.rows_per_second.round() as u64,
                remaining = %humantime::format_duration(figures.remaining),
                "read in progress"
            );
        }
    }
}

/// `demo-salesforce Lead [=====>     ] 120000/400000 18000/s eta 15s`
fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{msg} [{bar:30.cyan/blue}] {human_pos}/{human_len} {per_sec} eta {eta}",
    )
    .expect("the progress bar template is valid")
    .progress_chars("=> ")
}

/// The figures of a progress line.
#[derive(Debug, PartialEq)]
struct Figures {
    percent: f64,
    rows_per_second: f64,
    remaining: Duration,
}

impl Figures {
    fn of(done: u64, total: u64, elapsed: Duration) -> Figures {
        let rows_per_second = done as f64 / elapsed.as_secs_f64().max(0.001);
        let left = total.saturating_sub(done) as f64;
        let remaining = if rows_per_second > 0.0 {
            Duration::from_secs((left / rows_per_second).round() as u64)
        } else {
            Duration::ZERO
        };
        Figures {
            percent: 100.0 * done as f64 / total.max(1) as f64,
            rows_per_second,
            remaining,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_extrapolate_the_rate_so_far() {
        let figures = Figures::of(20_000, 100_000, Duration::from_secs(4));
        assert_eq!(
            figures,
            Figures {
                percent: 20.0,
                rows_per_second: 5_000.0,
                remaining: Duration::from_secs(16),
            }
        );
    }

    #[test]
    fn figures_of_an_empty_read_do_not_divide_by_zero() {
        let figures = Figures::of(0, 0, Duration::ZERO);
        assert_eq!(figures.percent, 0.0);
        assert_eq!(figures.remaining, Duration::ZERO);
    }
}
