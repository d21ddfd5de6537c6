//! Historical questions about the pipeline, answered from the snapshot store only.
//!
//! Each query lives in its own file and takes one parameter struct, the same whether it is
//! filled from the command line (`pipewarden query …`) or from an HTTP query string
//! (`/api/v1/…`). Parameters arrive as text and are checked here, so both faces report a bad
//! date, an unknown stage or an inverted range with the same words.
//!
//! Times are UTC epoch milliseconds inside; on the way in a parameter may be an RFC 3339
//! instant or a bare `YYYY-MM-DD` date (midnight UTC at its start). Ranges are half-open,
//! `[from, to)`. Money stays in integer cents so that SQLite and PostgreSQL answers agree to
//! the last digit.

pub mod as_of;
pub mod campaigns;
pub mod cohort;
pub mod funnel;
pub mod history;
pub mod output;
pub mod pipeline_diff;
pub mod recycled;

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, NaiveDateTime, SecondsFormat};

use crate::config::Settings;
use crate::record::{Millis, ObjectKind};
use crate::store::{dispatch, QueryContext, StageDefinition, Store, StoreError};

pub use output::{render, Format, Report, Table};

/// Why a query could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// A parameter is malformed or names something the store does not know.
    #[error("parameter `{parameter}`: {message}")]
    BadParameter {
        /// The parameter's name, as the CLI flag and the HTTP query key spell it.
        parameter: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The record or object asked for is not in the store.
    #[error("{0}")]
    NotFound(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl QueryError {
    /// A [`QueryError::BadParameter`].
    pub fn bad(parameter: &'static str, message: impl Into<String>) -> QueryError {
        QueryError::BadParameter {
            parameter,
            message: message.into(),
        }
    }
}

/// A row type both backends decode, for helpers that run one query on either store.
pub(crate) trait BackendRow:
    for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow>
    + for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>
    + Send
    + Unpin
{
}

impl<T> BackendRow for T where
    T: for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow>
        + for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>
        + Send
        + Unpin
{
}

/// A connection as the store knows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Connection {
    /// Store id.
    pub id: i64,
    /// Configured name.
    pub name: String,
    /// `salesforce` or `hubspot`.
    pub kind: String,
}

/// The connection a query runs on: the one named, or the only one in the store.
pub async fn resolve_connection(
    store: &Store,
    name: Option<&str>,
) -> Result<Connection, QueryError> {
    let rows: Vec<(i64, String, String)> = dispatch!(store.pool(), pool => sqlx::query_as(
        "SELECT id, name, kind FROM connections ORDER BY name",
    )
    .fetch_all(pool)
    .await)
    .during("list connections")?;
    let known = || {
        rows.iter()
            .map(|(_, name, _)| format!("`{name}`"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let pick = |row: &(i64, String, String)| Connection {
        id: row.0,
        name: row.1.clone(),
        kind: row.2.clone(),
    };
    match name {
        Some(name) => rows
            .iter()
            .find(|(_, stored, _)| stored == name)
            .map(pick)
            .ok_or_else(|| {
                QueryError::bad(
                    "connection",
                    format!(
                        "no connection named `{name}` in the store (it has: {})",
                        if rows.is_empty() {
                            "none".into()
                        } else {
                            known()
                        }
                    ),
                )
            }),
        None => match rows.as_slice() {
            [only] => Ok(pick(only)),
            [] => Err(QueryError::bad(
                "connection",
                "the store holds no connection yet (run `pipewarden sync --once` first)",
            )),
            _ => Err(QueryError::bad(
                "connection",
                format!(
                    "the store holds several connections; name one of {}",
                    known()
                ),
            )),
        },
    }
}

/// Parses an instant: RFC 3339 (`2026-04-01T09:30:00Z`), a UTC date-time without offset
/// (`2026-04-01T09:30:00`), or a bare date (`2026-04-01`, midnight UTC).
pub fn parse_instant(parameter: &'static str, text: &str) -> Result<Millis, QueryError> {
    let text = text.trim();
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Ok(at.timestamp_millis());
    }
    if let Ok(at) = NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f") {
        return Ok(at.and_utc().timestamp_millis());
    }
    if let Ok(day) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(day
            .and_time(chrono::NaiveTime::MIN)
            .and_utc()
            .timestamp_millis());
    }
    Err(QueryError::bad(
        parameter,
        format!("`{text}` is not a date or time; write 2026-04-01 or 2026-04-01T09:30:00Z"),
    ))
}

/// Parses `[from, to)` and refuses an empty or inverted range.
pub fn parse_range(from: &str, to: &str) -> Result<(Millis, Millis), QueryError> {
    let start = parse_instant("from", from)?;
    let end = parse_instant("to", to)?;
    if start >= end {
        return Err(QueryError::bad(
            "from",
            format!("`{from}` is not before `to` (`{to}`)"),
        ));
    }
    Ok((start, end))
}

/// An instant as RFC 3339 UTC with seconds, for output.
pub fn format_instant(at: Millis) -> String {
    DateTime::from_timestamp_millis(at)
        .map(|at| at.to_rfc3339_opts(SecondsFormat::Secs, true))
        .unwrap_or_else(|| at.to_string())
}

/// Cents as a decimal amount (`1234.50`), for tables.
pub fn format_cents(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let cents = cents.unsigned_abs();
    format!("{sign}{}.{:02}", cents / 100, cents % 100)
}

/// A duration in days with one decimal, for tables.
pub fn format_days(millis: i64) -> String {
    format!("{:.1}d", millis as f64 / 86_400_000.0)
}

/// `part / whole` as a share in basis points (10000 = 100 %), rounded down; 0 when `whole` is 0.
/// Integer shares keep the answers of both backends, and of JSON and tables, identical.
pub fn share_bp(part: i64, whole: i64) -> i64 {
    if whole == 0 {
        0
    } else {
        part * 10_000 / whole
    }
}

/// Basis points as a percentage with two decimals (`37.50%`).
pub fn format_bp(bp: i64) -> String {
    format!("{}.{:02}%", bp / 100, (bp % 100).abs())
}

/// The stages of the connection's deals, to validate `stage` and `pipeline` parameters and
/// to order stages.
pub async fn deal_stages(
    store: &Store,
    connection: &Connection,
) -> Result<Vec<StageDefinition>, QueryError> {
    Ok(store
        .stage_definitions(connection.id, ObjectKind::Deal)
        .await?)
}

/// Checks an optional `pipeline` parameter against the stored stage definitions.
pub fn check_pipeline(
    stages: &[StageDefinition],
    pipeline: Option<&str>,
) -> Result<(), QueryError> {
    let Some(pipeline) = pipeline else {
        return Ok(());
    };
    if stages.iter().any(|s| s.pipeline == pipeline) {
        return Ok(());
    }
    let mut known: Vec<&str> = stages.iter().map(|s| s.pipeline.as_str()).collect();
    known.dedup();
    Err(QueryError::bad(
        "pipeline",
        format!(
            "no pipeline `{pipeline}` in this connection (known: {})",
            known.join(", ")
        ),
    ))
}

/// Checks an optional `stage` parameter against the stored stage definitions.
pub fn check_stage(stages: &[StageDefinition], stage: Option<&str>) -> Result<(), QueryError> {
    let Some(stage) = stage else {
        return Ok(());
    };
    if stages.iter().any(|s| s.stage == stage) {
        return Ok(());
    }
    let known: Vec<&str> = stages.iter().map(|s| s.stage.as_str()).collect();
    Err(QueryError::bad(
        "stage",
        format!(
            "no deal stage `{stage}` in this connection (known: {})",
            known.join(", ")
        ),
    ))
}

/// The configured `max_dwell` of each stage, from the stage-gate rules of one connection
/// (and pipeline, when given). Where two rules disagree the shorter limit wins.
pub fn max_dwell_by_stage(
    settings: &Settings,
    connection: &str,
    pipeline: Option<&str>,
) -> HashMap<String, Duration> {
    let mut limits: HashMap<String, Duration> = HashMap::new();
    let rules = settings
        .rules
        .iter()
        .filter(|rule| rule.connection == connection)
        .filter(|rule| pipeline.is_none_or(|p| rule.pipeline == p));
    for rule in rules {
        for gate in &rule.stages {
            if let Some(limit) = gate.max_dwell {
                limits
                    .entry(gate.stage.clone())
                    .and_modify(|known| *known = (*known).min(limit))
                    .or_insert(limit);
            }
        }
    }
    limits
}

/// The value at quantile `q` (0–1) of sorted values, nearest rank; `None` when empty.
pub fn quantile(sorted: &[i64], q: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// How many SQLite queries one answer runs at once, when it splits its reading: SQLite runs
/// each query on one core, and a store larger than the page cache keeps each waiting on the
/// disk part of the time, so twice the cores keeps them busy (measured on the 180x bench store
/// on 2 cores: as-of totals 76 ms on one connection, 58 ms on two, 49 ms on four). One of the
/// pool's connections is left to the syncs and requests that share it.
fn sqlite_reads_at_once(pool: &sqlx::SqlitePool) -> usize {
    let spare = pool
        .options()
        .get_max_connections()
        .saturating_sub(1)
        .max(1);
    (2 * cores()).min(spare as usize)
}

/// The cores this process may use, read once (the standard library reads cgroup files each
/// time it is asked).
fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES
        .get_or_init(|| std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get))
}
