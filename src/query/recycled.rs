//! `query recycled [--from --to] [--policy]`: records pipewarden recycled in a window, how
//! many returned (reached a qualifying milestone afterwards), and after how long, by policy.
//!
//! A recycling is one record recycled by one run (all of that run's actions on it); its
//! instant is the run's. Dry runs wrote nothing and are not counted. A record recycled more
//! than once shows how many times in `times_recycled`.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::{
    format_instant, parse_instant, quantile, resolve_connection, QueryError, Report, Table,
};
use crate::record::Millis;
use crate::store::{dispatch, QueryContext, Store};

/// Parameters of `query recycled` and `GET /api/v1/recycled`.
#[derive(Debug, Clone, Default, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct RecycledParams {
    /// Only records recycled from this instant.
    #[arg(long)]
    pub from: Option<String>,
    /// Only records recycled before this instant.
    #[arg(long)]
    pub to: Option<String>,
    /// Only this policy.
    #[arg(long)]
    pub policy: Option<String>,
    /// Connection name (needed when the store holds several).
    #[arg(long)]
    pub connection: Option<String>,
}

/// One policy's yield.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PolicyYield {
    /// Policy name.
    pub policy: String,
    /// Records recycled.
    pub recycled: u64,
    /// Of those, records that returned.
    pub returned: u64,
    /// Returned per recycled, basis points.
    pub return_rate_bp: i64,
    /// Median time from recycling to return, ms.
    pub median_return_ms: Option<i64>,
    /// 75th percentile of that time, ms.
    pub p75_return_ms: Option<i64>,
}

/// One recycled record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecycledRecord {
    /// The policy that recycled it.
    pub policy: String,
    /// Its CRM id.
    pub crm_id: String,
    /// `lead` or `contact`.
    pub kind: String,
    /// Its name.
    pub name: Option<String>,
    /// When it was recycled.
    pub recycled_at: String,
    /// When it returned, if it did.
    pub returned_at: Option<String>,
    /// The milestone it returned with.
    pub returned_with: Option<String>,
    /// Time from recycling to return, ms.
    pub return_after_ms: Option<i64>,
    /// How many times pipewarden has recycled this record in all.
    pub times_recycled: i64,
}

/// The answer of `query recycled`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecycledReport {
    /// The connection.
    pub connection: String,
    /// Window start, when given.
    pub from: Option<String>,
    /// Window end, when given.
    pub to: Option<String>,
    /// All policies together.
    pub total: PolicyYield,
    /// Per policy, by name.
    pub policies: Vec<PolicyYield>,
    /// The records, oldest recycling first.
    pub records: Vec<RecycledRecord>,
}

type Row = (
    String,
    i64,
    String,
    String,
    Option<String>,
    i64,
    Option<i64>,
    Option<String>,
);

/// One row per (policy, record, run instant) of actions that were applied.
const RECYCLINGS: &str = "SELECT a.policy, a.record_id, r.crm_id, r.object_kind, r.name, a.recycled_at_ms, \
     MAX(a.returned_at_ms), MAX(a.returned_event) FROM recycle_actions a JOIN records r ON r.id = a.record_id \
     WHERE a.connection_id = $1 AND a.dry_run = $2 AND a.status IN ('applied', 'returned') \
     AND a.recycled_at_ms >= $3 AND a.recycled_at_ms < $4 \
     GROUP BY a.policy, a.record_id, r.crm_id, r.object_kind, r.name, a.recycled_at_ms \
     ORDER BY a.recycled_at_ms, a.record_id";
const TIMES_RECYCLED: &str = "SELECT record_id, COUNT(DISTINCT recycled_at_ms) FROM recycle_actions \
     WHERE connection_id = $1 AND dry_run = $2 AND status IN ('applied', 'returned') GROUP BY record_id";

/// Answers `query recycled`.
pub async fn run(store: &Store, params: &RecycledParams) -> Result<RecycledReport, QueryError> {
    let from = params
        .from
        .as_deref()
        .map(|text| parse_instant("from", text))
        .transpose()?;
    let to = params
        .to
        .as_deref()
        .map(|text| parse_instant("to", text))
        .transpose()?;
    if let (Some(start), Some(end)) = (from, to) {
        if start >= end {
            return Err(QueryError::bad("from", "is not before `to`"));
        }
    }
    let connection = resolve_connection(store, params.connection.as_deref()).await?;
    let rows: Vec<Row> = dispatch!(store.pool(), pool => sqlx::query_as(RECYCLINGS)
        .bind(connection.id)
        .bind(false)
        .bind(from.unwrap_or(Millis::MIN))
        .bind(to.unwrap_or(Millis::MAX))
        .fetch_all(pool)
        .await)
    .during("read recycled records")?;
    let times: HashMap<i64, i64> = dispatch!(store.pool(), pool => sqlx::query_as(TIMES_RECYCLED)
        .bind(connection.id)
        .bind(false)
        .fetch_all(pool)
        .await)
    .during("count recyclings per record")?
    .into_iter()
    .collect();
    let mut records = Vec::new();
    let mut delays: BTreeMap<String, (u64, Vec<i64>)> = BTreeMap::new();
    let mut all = (0u64, Vec::new());
    for (policy, record_id, crm_id, kind, name, recycled_at, returned_at, event) in rows {
        if params.policy.as_deref().is_some_and(|p| p != policy) {
            continue;
        }
        let delay = returned_at.map(|at| at - recycled_at);
        let entry = delays.entry(policy.clone()).or_default();
        entry.0 += 1;
        all.0 += 1;
        if let Some(delay) = delay {
            entry.1.push(delay);
            all.1.push(delay);
        }
        records.push(RecycledRecord {
            policy,
            crm_id,
            kind,
            name,
            recycled_at: format_instant(recycled_at),
            returned_at: returned_at.map(format_instant),
            returned_with: event,
            return_after_ms: delay,
            times_recycled: times.get(&record_id).copied().unwrap_or(1),
        });
    }
    let policies = delays
        .into_iter()
        .map(|(policy, (recycled, returns))| yield_of(policy, recycled, returns))
        .collect();
    Ok(RecycledReport {
        connection: connection.name,
        from: from.map(format_instant),
        to: to.map(format_instant),
        total: yield_of("(all)".to_string(), all.0, all.1),
        policies,
        records,
    })
}

fn yield_of(policy: String, recycled: u64, mut returns: Vec<i64>) -> PolicyYield {
    returns.sort_unstable();
    let returned = returns.len() as u64;
    PolicyYield {
        policy,
        recycled,
        returned,
        return_rate_bp: (returned * 10_000).checked_div(recycled).unwrap_or(0) as i64,
        median_return_ms: quantile(&returns, 0.5),
        p75_return_ms: quantile(&returns, 0.75),
    }
}

fn days(ms: Option<i64>) -> String {
    ms.map(|ms| format!("{:.1}", ms as f64 / 86_400_000.0))
        .unwrap_or_default()
}

impl Report for RecycledReport {
    fn tables(&self) -> Vec<Table> {
        let mut yields = Table::new(
            format!("Recycled records of {} and their return", self.connection),
            &[
                "policy",
                "recycled",
                "returned",
                "return rate %",
                "median days to return",
                "p75 days to return",
            ],
        );
        for y in self.policies.iter().chain(std::iter::once(&self.total)) {
            yields.push(vec![
                y.policy.clone(),
                y.recycled.to_string(),
                y.returned.to_string(),
                format!("{:.1}", y.return_rate_bp as f64 / 100.0),
                days(y.median_return_ms),
                days(y.p75_return_ms),
            ]);
        }
        let mut records = Table::new(
            "Recycled records",
            &[
                "policy",
                "record",
                "name",
                "recycled at",
                "returned at",
                "with",
                "days",
                "times recycled",
            ],
        );
        for r in &self.records {
            records.push(vec![
                r.policy.clone(),
                r.crm_id.clone(),
                r.name.clone().unwrap_or_default(),
                r.recycled_at.clone(),
                r.returned_at.clone().unwrap_or_default(),
                r.returned_with.clone().unwrap_or_default(),
                days(r.return_after_ms),
                r.times_recycled.to_string(),
            ]);
        }
        vec![yields, records]
    }
}
