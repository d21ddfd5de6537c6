//! Prometheus metrics of the daemon, served at `/metrics`.
//!
//! Runs report what they did when they finish; the figures are per connection, so one
//! dashboard covers every CRM a deployment syncs. Nothing here ever carries a secret: labels
//! are connection names, statuses and error kinds.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::record::Millis;
use crate::sync::SyncReport;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectionLabel {
    connection: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabel {
    connection: String,
    status: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabel {
    connection: String,
    kind: String,
}

/// The daemon's metrics and their registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    runs: Family<RunLabel, Counter>,
    records: Family<ConnectionLabel, Counter>,
    versions: Family<ConnectionLabel, Counter>,
    transitions: Family<ConnectionLabel, Counter>,
    quarantined: Family<ConnectionLabel, Counter>,
    api_calls: Family<ConnectionLabel, Counter>,
    errors: Family<ErrorLabel, Counter>,
    daily_remaining: Family<ConnectionLabel, Gauge>,
    last_success: Family<ConnectionLabel, Gauge<f64, AtomicU64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("pipewarden");
        let metrics = Metrics {
            runs: Family::default(),
            records: Family::default(),
            versions: Family::default(),
            transitions: Family::default(),
            quarantined: Family::default(),
            api_calls: Family::default(),
            errors: Family::default(),
            daily_remaining: Family::default(),
            last_success: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "sync_runs",
            "Sync runs by how they ended",
            metrics.runs.clone(),
        );
        registry.register(
            "records_synced",
            "Records read from the CRM",
            metrics.records.clone(),
        );
        registry.register(
            "versions_written",
            "New record versions stored",
            metrics.versions.clone(),
        );
        registry.register(
            "transitions_written",
            "New stage transitions stored",
            metrics.transitions.clone(),
        );
        registry.register(
            "quarantined_records",
            "Records set aside because they did not parse",
            metrics.quarantined.clone(),
        );
        registry.register(
            "api_calls",
            "Calls made to the CRM API",
            metrics.api_calls.clone(),
        );
        registry.register(
            "sync_errors",
            "CRM call failures (each retry counts) and failed runs, by kind",
            metrics.errors.clone(),
        );
        registry.register(
            "api_daily_remaining",
            "Calls left in the CRM's daily allocation, as it last reported",
            metrics.daily_remaining.clone(),
        );
        registry.register(
            "last_successful_sync_timestamp_seconds",
            "When the last successful run finished (sync lag = now - this)",
            metrics.last_success.clone(),
        );
        Metrics {
            registry,
            ..metrics
        }
    }

    /// Adds a finished run's figures.
    pub fn record_run(&self, connection: &str, report: &SyncReport) {
        let label = ConnectionLabel {
            connection: connection.to_string(),
        };
        let run = &report.summary;
        self.runs
            .get_or_create(&RunLabel {
                connection: connection.to_string(),
                status: run.status.as_str().to_string(),
            })
            .inc();
        self.records
            .get_or_create(&label)
            .inc_by(to_u64(run.records_seen));
        self.versions
            .get_or_create(&label)
            .inc_by(to_u64(run.versions_written));
        self.transitions
            .get_or_create(&label)
            .inc_by(to_u64(run.transitions_written));
        self.quarantined
            .get_or_create(&label)
            .inc_by(to_u64(run.quarantined));
        self.api_calls
            .get_or_create(&label)
            .inc_by(report.api.calls);
        if report.api.failures > 0 {
            self.record_errors(connection, "call_failed", report.api.failures);
        }
        if let (Some(used), Some(limit)) = (report.budget.org_used, report.budget.org_limit) {
            let remaining = i64::try_from(limit.saturating_sub(used)).unwrap_or(i64::MAX);
            self.daily_remaining.get_or_create(&label).set(remaining);
        }
        if let (crate::store::SyncRunStatus::Succeeded, Some(finished)) =
            (run.status, run.finished_at)
        {
            self.last_success
                .get_or_create(&label)
                .set(seconds(finished));
        }
    }

    /// Counts errors of one kind (a failed run counts as one of its kind).
    pub fn record_errors(&self, connection: &str, kind: &str, count: u64) {
        self.errors
            .get_or_create(&ErrorLabel {
                connection: connection.to_string(),
                kind: kind.to_string(),
            })
            .inc_by(count);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}

fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn seconds(at: Millis) -> f64 {
    at as f64 / 1000.0
}
