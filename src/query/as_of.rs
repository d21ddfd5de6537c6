//! `query as-of`: every open deal as it was at an instant, with totals by stage.
//!
//! A deal's state at T is the version valid at T. Versions are as fine as the syncs were:
//! between two syncs only the last state the CRM had is known, from its modification time.

use std::collections::HashMap;
use std::future::Future;

use futures_util::{stream, StreamExt, TryStreamExt};
use rusqlite::types::Value;
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgPool;
use sqlx::sqlite::SqlitePool;

use super::{
    check_pipeline, check_stage, deal_stages, format_cents, format_instant, parse_instant,
    resolve_connection, sqlite_reads_at_once, Connection, QueryError, Report, Table,
};
use crate::record::Millis;
use crate::store::{fetch_all_sqlite, Backend, QueryContext, StageDefinition, Store, StoreError};

/// Parameters of `query as-of` and `GET /api/v1/as-of`.
#[derive(Debug, Clone, Default, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct AsOfParams {
    /// The instant: 2026-03-31, or 2026-03-31T23:59:59Z.
    #[arg(long)]
    pub at: String,
    /// Connection name (needed when the store holds several).
    #[arg(long)]
    pub connection: Option<String>,
    /// Only this pipeline.
    #[arg(long)]
    pub pipeline: Option<String>,
    /// Only deals of this owner id.
    #[arg(long)]
    pub owner: Option<String>,
    /// Only deals in this stage.
    #[arg(long)]
    pub stage: Option<String>,
    /// Only the totals by stage, without the list of deals: counted in the store, which is
    /// what makes the answer fast when hundreds of thousands of deals were open.
    #[arg(long)]
    #[serde(default)]
    pub totals_only: bool,
}

/// One open deal as it was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DealAsOf {
    /// CRM id.
    pub crm_id: String,
    /// Name.
    pub name: Option<String>,
    /// Pipeline.
    pub pipeline: Option<String>,
    /// Stage.
    pub stage: Option<String>,
    /// Owner id.
    pub owner_id: Option<String>,
    /// Amount, cents.
    pub amount_cents: Option<i64>,
    /// Win probability, basis points (the deal's own, else the stage's default).
    pub probability_bp: Option<i64>,
    /// Expected close date.
    pub close_date: Option<String>,
    /// Since when the deal was in this state.
    pub state_since: String,
}

/// Totals of one stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StageTotal {
    /// Pipeline.
    pub pipeline: Option<String>,
    /// Stage.
    pub stage: Option<String>,
    /// Open deals.
    pub count: i64,
    /// Sum of amounts, cents.
    pub amount_cents: i64,
    /// Sum of amount × probability, cents (rounded once, after summing).
    pub weighted_cents: i64,
}

/// The answer of `query as-of`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AsOfReport {
    /// The connection.
    pub connection: String,
    /// The instant, RFC 3339.
    pub at: String,
    /// Totals by stage, in pipeline order.
    pub stages: Vec<StageTotal>,
    /// Totals over every stage.
    pub total: StageTotal,
    /// Every open deal, by stage order then CRM id (empty with `totals_only`).
    pub deals: Vec<DealAsOf>,
}

type Row = (
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<String>,
    i64,
);

/// How a backend reads open deal versions (`index`, `not_ended`) and their deals' CRM ids
/// (`deals`): SQLite from its partial index in stage order, which it is told to use (without
/// planner statistics it prefers the index of every version), and each deal's row by id;
/// PostgreSQL from its partial index keyed by the version's end, whose range of versions not
/// ended by `$2` the condition names in the index's own terms, and the deals from the index of
/// deals' groups, which the join's terms let it use (else it reads every record).
macro_rules! open_versions {
    (sqlite, index) => {
        "INDEXED BY record_versions_open_deals"
    };
    (sqlite, not_ended) => {
        "(v.valid_to_ms IS NULL OR v.valid_to_ms > $2)"
    };
    (sqlite, deals) => {
        "JOIN records r ON r.id = v.record_id"
    };
    (postgres, index) => {
        ""
    };
    // Spelled as in `record_versions_open_deals_by_end` (migrations/postgres/0014): PostgreSQL
    // uses an expression index only for the same expression.
    (postgres, not_ended) => {
        "COALESCE(v.valid_to_ms, 9223372036854775807) > $2"
    };
    (postgres, deals) => {
        "JOIN records r ON r.connection_id = v.connection_id AND r.object_kind = 'deal' \
         AND r.id = v.record_id"
    };
}

/// Open deal versions valid at `$2`, read as [`open_versions`] says for `$backend`.
macro_rules! open_deals_at {
    ($backend:ident, $columns:literal, $joins:expr, $grouping:literal) => {
        concat!(
            "SELECT ",
            $columns,
            " FROM record_versions v ",
            open_versions!($backend, index),
            " ",
            $joins,
            " WHERE v.connection_id = $1 AND v.object_kind = 'deal' AND v.is_closed = FALSE AND v.deleted = FALSE \
             AND v.valid_from_ms <= $2 AND ",
            open_versions!($backend, not_ended),
            " AND (CAST($3 AS TEXT) IS NULL OR v.pipeline = $3) AND (CAST($4 AS TEXT) IS NULL OR v.owner_id = $4) \
             AND (CAST($5 AS TEXT) IS NULL OR v.stage = $5)",
            $grouping
        )
    };
}

/// [`open_deals_at`] with what a listing shows.
macro_rules! open_deals_listing {
    ($backend:ident, $grouping:literal) => {
        open_deals_at!(
            $backend,
            "r.crm_id, v.name, v.pipeline, v.stage, v.owner_id, v.amount_cents, v.probability_bp, \
             v.close_date, v.valid_from_ms",
            open_versions!($backend, deals),
            $grouping
        )
    };
}

/// [`open_deals_at`] counting the open deals and summing their amounts by stage and own
/// probability, from the partial index alone.
macro_rules! open_deals_totals {
    ($backend:ident, $grouping:literal) => {
        open_deals_at!(
            $backend,
            "v.pipeline, v.stage, v.probability_bp, COUNT(*), CAST(SUM(v.amount_cents) AS BIGINT)",
            "",
            $grouping
        )
    };
}

/// The listing, for (SQLite, PostgreSQL).
const OPEN_DEALS_AT: (&str, &str) = (
    open_deals_listing!(sqlite, ""),
    open_deals_listing!(postgres, ""),
);

/// The SQLite listing of [`OPEN_DEALS_AT`] for one (pipeline, stage) group.
const OPEN_DEALS_IN_GROUP: &str =
    open_deals_listing!(sqlite, " AND v.pipeline IS $6 AND v.stage IS $7");

/// The totals, for (SQLite, PostgreSQL).
const OPEN_TOTALS_AT: (&str, &str) = (
    open_deals_totals!(sqlite, " GROUP BY v.pipeline, v.stage, v.probability_bp"),
    open_deals_totals!(postgres, " GROUP BY v.pipeline, v.stage, v.probability_bp"),
);

/// The SQLite totals of [`OPEN_TOTALS_AT`] for one (pipeline, stage) group.
const OPEN_TOTALS_IN_GROUP: &str = open_deals_totals!(
    sqlite,
    " AND v.pipeline IS $6 AND v.stage IS $7 GROUP BY v.probability_bp"
);

/// The newest version's id. Every write that opens or closes a version adds one, so the same
/// id before and after a read means no such write landed during it.
const NEWEST_VERSION: &str = "SELECT MAX(id) FROM record_versions";

/// The first (pipeline, stage) group of the open-deal index that meets `$condition`, in the
/// index's order (SQLite's: null first).
macro_rules! open_group {
    ($condition:literal) => {
        concat!(
            "SELECT v.pipeline, v.stage FROM record_versions v INDEXED BY record_versions_open_deals \
             WHERE v.connection_id = $1 AND v.object_kind = 'deal' AND v.is_closed = FALSE \
             AND v.deleted = FALSE",
            $condition,
            " ORDER BY v.pipeline, v.stage LIMIT 1"
        )
    };
}

/// The groups of the open-deal index, one probe each; the next group after (p, s) is a later
/// stage of p (any text sorts after null, and after ''), else the next pipeline.
const FIRST_GROUP: &str = open_group!("");
const STAGE_AFTER: &str = open_group!(" AND v.pipeline IS $2 AND v.stage > $3");
const FIRST_STAGE_OF: &str = open_group!(" AND v.pipeline IS $2 AND v.stage >= ''");
const PIPELINE_AFTER: &str = open_group!(" AND v.pipeline > $2");
const FIRST_PIPELINE: &str = open_group!(" AND v.pipeline >= ''");

/// A (pipeline, stage) pair.
type Group = (Option<String>, Option<String>);

/// One group of open deals: pipeline, stage, their own probability, count, amount.
type TotalsRow = (
    Option<String>,
    Option<String>,
    Option<i64>,
    i64,
    Option<i64>,
);

/// Answers `query as-of`.
pub async fn run(store: &Store, params: &AsOfParams) -> Result<AsOfReport, QueryError> {
    let at = parse_instant("at", &params.at)?;
    let connection = resolve_connection(store, params.connection.as_deref()).await?;
    let stages = deal_stages(store, &connection).await?;
    check_pipeline(&stages, params.pipeline.as_deref())?;
    check_stage(&stages, params.stage.as_deref())?;
    if params.totals_only {
        const DURING: &str = "count deals as of";
        let rows: Vec<TotalsRow> = match store.pool() {
            Backend::Sqlite(pool) => {
                let sql = (OPEN_TOTALS_AT.0, OPEN_TOTALS_IN_GROUP);
                open_at_sqlite(pool, sql, connection.id, at, params, DURING).await?
            }
            Backend::Postgres(pool) => {
                open_at_postgres(pool, OPEN_TOTALS_AT.1, connection.id, at, params, DURING).await?
            }
        };
        let groups = rows
            .into_iter()
            .map(|(pipeline, stage, own, count, amount)| {
                let probability = own.or_else(|| default_probability(&stages, &pipeline, &stage));
                let amount = amount.unwrap_or(0);
                let weighted = i128::from(amount) * i128::from(probability.unwrap_or(0));
                (pipeline, stage, count, amount, weighted)
            });
        let (stage_totals, total) = totals(&stages, groups);
        return Ok(AsOfReport {
            connection: connection.name,
            at: format_instant(at),
            stages: stage_totals,
            total,
            deals: Vec::new(),
        });
    }
    const DURING: &str = "read deals as of";
    let rows: Vec<Row> = match store.pool() {
        Backend::Sqlite(pool) => {
            let sql = (OPEN_DEALS_AT.0, OPEN_DEALS_IN_GROUP);
            open_at_sqlite(pool, sql, connection.id, at, params, DURING).await?
        }
        Backend::Postgres(pool) => {
            open_at_postgres(pool, OPEN_DEALS_AT.1, connection.id, at, params, DURING).await?
        }
    };
    Ok(assemble(&connection, at, &stages, rows))
}

/// Runs an [`open_deals_at`] query on SQLite: `(whole, in_group)` are the statement over every
/// group and the one over a single (pipeline, stage) group, `$6` and `$7`. The groups are read
/// side by side unless a write landed meanwhile (see [`unless_written_meanwhile`]).
async fn open_at_sqlite<T>(
    pool: &SqlitePool,
    (whole, in_group): (&'static str, &'static str),
    connection_id: i64,
    at: Millis,
    params: &AsOfParams,
    operation: &'static str,
) -> Result<Vec<T>, StoreError>
where
    T: for<'r> TryFrom<&'r rusqlite::Row<'r>, Error = rusqlite::Error> + Send + 'static,
{
    let filters = || {
        let mut values = vec![Value::from(connection_id), Value::from(at)];
        values.extend([&params.pipeline, &params.owner, &params.stage].map(|v| v.clone().into()));
        values
    };
    unless_written_meanwhile(
        pool,
        operation,
        over_open_groups(
            pool,
            connection_id,
            params,
            operation,
            |(pipeline, stage)| {
                let mut values = filters();
                values.extend([pipeline.into(), stage.into()]);
                fetch_all_sqlite(pool, operation, in_group, values)
            },
        ),
        fetch_all_sqlite(pool, operation, whole, filters()),
    )
    .await
}

/// The answer `by_groups` reads in parallel, unless a write opened or closed a version while
/// it ran: its statements each see the store as it was when they began, so a deal that moved
/// between two of them could be counted twice or not at all. Then `whole`, one statement,
/// which sees one state of the store, answers instead.
async fn unless_written_meanwhile<T>(
    pool: &SqlitePool,
    operation: &'static str,
    by_groups: impl Future<Output = Result<Vec<T>, StoreError>>,
    whole: impl Future<Output = Result<Vec<T>, StoreError>>,
) -> Result<Vec<T>, StoreError> {
    let newest = || async {
        sqlx::query_scalar::<_, Option<i64>>(NEWEST_VERSION)
            .fetch_one(pool)
            .await
            .during(operation)
    };
    let before = newest().await?;
    let rows = by_groups.await?;
    if newest().await? == before {
        return Ok(rows);
    }
    whole.await
}

/// Runs `query` for each (pipeline, stage) group of the open-deal index that the parameters
/// let through, several at a time (see [`sqlite_reads_at_once`]): each group is a range of
/// the index of its own, so on SQLite, whose query runs on one core, the groups share the
/// machine's cores.
async fn over_open_groups<T, F, Fut>(
    pool: &SqlitePool,
    connection_id: i64,
    params: &AsOfParams,
    operation: &'static str,
    query: F,
) -> Result<Vec<T>, StoreError>
where
    F: Fn(Group) -> Fut,
    Fut: Future<Output = Result<Vec<T>, StoreError>>,
{
    let wanted = |(pipeline, stage): &Group| {
        let passes =
            |filter: &Option<String>, value: &Option<String>| filter.is_none() || filter == value;
        passes(&params.pipeline, pipeline) && passes(&params.stage, stage)
    };
    let groups = open_groups(pool, connection_id).await.during(operation)?;
    stream::iter(groups.into_iter().filter(wanted))
        .map(query)
        .buffer_unordered(sqlite_reads_at_once(pool))
        .try_concat()
        .await
}

/// The (pipeline, stage) groups of a connection's open-deal index, in its order. SQLite's
/// `DISTINCT` would read every entry; this probes the index once per group.
async fn open_groups(pool: &SqlitePool, connection_id: i64) -> Result<Vec<Group>, sqlx::Error> {
    let mut groups = Vec::new();
    let mut next: Option<Group> = sqlx::query_as(FIRST_GROUP)
        .bind(connection_id)
        .fetch_optional(pool)
        .await?;
    while let Some((pipeline, stage)) = next {
        let later_stage = match &stage {
            Some(stage) => sqlx::query_as(STAGE_AFTER)
                .bind(connection_id)
                .bind(&pipeline)
                .bind(stage),
            None => sqlx::query_as(FIRST_STAGE_OF)
                .bind(connection_id)
                .bind(&pipeline),
        };
        next = match later_stage.fetch_optional(pool).await? {
            Some(group) => Some(group),
            None => {
                let later_pipeline = match &pipeline {
                    Some(pipeline) => sqlx::query_as(PIPELINE_AFTER)
                        .bind(connection_id)
                        .bind(pipeline),
                    None => sqlx::query_as(FIRST_PIPELINE).bind(connection_id),
                };
                later_pipeline.fetch_optional(pool).await?
            }
        };
        groups.push((pipeline, stage));
    }
    Ok(groups)
}

/// Runs one of the [`open_deals_at`] queries on PostgreSQL, in one statement (which the
/// server spreads over its parallel workers).
async fn open_at_postgres<T>(
    pool: &PgPool,
    sql: &'static str,
    connection_id: i64,
    at: Millis,
    params: &AsOfParams,
    operation: &'static str,
) -> Result<Vec<T>, StoreError>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
{
    sqlx::query_as(sql)
        .bind(connection_id)
        .bind(at)
        .bind(params.pipeline.as_deref())
        .bind(params.owner.as_deref())
        .bind(params.stage.as_deref())
        .fetch_all(pool)
        .await
        .during(operation)
}

/// The stage's default probability, for deals without their own.
fn default_probability(
    stages: &[StageDefinition],
    pipeline: &Option<String>,
    stage: &Option<String>,
) -> Option<i64> {
    stages
        .iter()
        .find(|s| Some(&s.pipeline) == pipeline.as_ref() && Some(&s.stage) == stage.as_ref())
        .and_then(|s| s.probability_bp)
}

/// Totals by stage, in pipeline order, and over all, from groups of deals: (pipeline, stage,
/// count, amount, Σ amount × probability in cents × basis points). The weighted sums are
/// rounded once, after summing.
fn totals(
    stages: &[StageDefinition],
    groups: impl Iterator<Item = (Option<String>, Option<String>, i64, i64, i128)>,
) -> (Vec<StageTotal>, StageTotal) {
    let mut by_stage: Vec<(StageTotal, i128)> = Vec::new();
    let mut grand = (total_row(None, None), 0i128);
    for (pipeline, stage, count, amount, weighted) in groups {
        let index = match by_stage
            .iter()
            .position(|(t, _)| t.pipeline == pipeline && t.stage == stage)
        {
            Some(index) => index,
            None => {
                by_stage.push((total_row(pipeline, stage), 0));
                by_stage.len() - 1
            }
        };
        for (total, weighted_sum) in [&mut by_stage[index], &mut grand] {
            total.count += count;
            total.amount_cents += amount;
            *weighted_sum += weighted;
        }
    }
    by_stage.sort_by(|(a, _), (b, _)| {
        let rank = |t: &StageTotal| stage_rank(stages, t.pipeline.as_deref(), t.stage.as_deref());
        rank(a)
            .cmp(&rank(b))
            .then_with(|| a.stage.cmp(&b.stage))
            .then_with(|| a.pipeline.cmp(&b.pipeline))
    });
    let finish = |(mut total, weighted): (StageTotal, i128)| {
        total.weighted_cents = ((weighted + 5_000) / 10_000) as i64;
        total
    };
    (by_stage.into_iter().map(finish).collect(), finish(grand))
}

/// Position of a stage in its pipeline; unknown stages sort last.
pub(crate) fn stage_rank(
    stages: &[StageDefinition],
    pipeline: Option<&str>,
    stage: Option<&str>,
) -> (i64, i64) {
    let pipeline_rank = stages
        .iter()
        .position(|s| Some(s.pipeline.as_str()) == pipeline)
        .map_or(i64::MAX, |p| p as i64);
    let stage_rank = stages
        .iter()
        .find(|s| Some(s.pipeline.as_str()) == pipeline && Some(s.stage.as_str()) == stage)
        .map_or(i64::MAX, |s| s.sort_order);
    (pipeline_rank, stage_rank)
}

fn assemble(
    connection: &Connection,
    at: Millis,
    stages: &[StageDefinition],
    rows: Vec<Row>,
) -> AsOfReport {
    // Deals share a handful of stages: rank and default each stage once, not once per deal.
    type StageKey = (Option<String>, Option<String>);
    let mut by_stage: HashMap<StageKey, ((i64, i64), Option<i64>)> = HashMap::new();
    let mut ranked: Vec<((i64, i64), DealAsOf)> = rows
        .into_iter()
        .map(|r| {
            let (rank, default) =
                *by_stage
                    .entry((r.2.clone(), r.3.clone()))
                    .or_insert_with(|| {
                        (
                            stage_rank(stages, r.2.as_deref(), r.3.as_deref()),
                            default_probability(stages, &r.2, &r.3),
                        )
                    });
            let deal = DealAsOf {
                probability_bp: r.6.or(default),
                crm_id: r.0,
                name: r.1,
                pipeline: r.2,
                stage: r.3,
                owner_id: r.4,
                amount_cents: r.5,
                close_date: r.7,
                state_since: format_instant(r.8),
            };
            (rank, deal)
        })
        .collect();
    ranked.sort_unstable_by(|(rank_a, a), (rank_b, b)| {
        rank_a
            .cmp(rank_b)
            .then_with(|| a.stage.cmp(&b.stage))
            .then_with(|| a.crm_id.cmp(&b.crm_id))
    });
    let deals: Vec<DealAsOf> = ranked.into_iter().map(|(_, deal)| deal).collect();
    let groups = deals.iter().map(|deal| {
        let amount = deal.amount_cents.unwrap_or(0);
        let weighted = i128::from(amount) * i128::from(deal.probability_bp.unwrap_or(0));
        (
            deal.pipeline.clone(),
            deal.stage.clone(),
            1,
            amount,
            weighted,
        )
    });
    let (stages, total) = totals(stages, groups);
    AsOfReport {
        connection: connection.name.clone(),
        at: format_instant(at),
        stages,
        total,
        deals,
    }
}

fn total_row(pipeline: Option<String>, stage: Option<String>) -> StageTotal {
    StageTotal {
        pipeline,
        stage,
        count: 0,
        amount_cents: 0,
        weighted_cents: 0,
    }
}

fn opt(value: &Option<String>) -> String {
    value.clone().unwrap_or_default()
}

impl Report for AsOfReport {
    fn tables(&self) -> Vec<Table> {
        let mut by_stage = Table::new(
            format!("Open pipeline of {} at {}", self.connection, self.at),
            &["pipeline", "stage", "deals", "amount", "weighted"],
        );
        for total in self.stages.iter().chain([&self.total]) {
            let is_total = std::ptr::eq(total, &self.total);
            by_stage.push(vec![
                if is_total {
                    "TOTAL".into()
                } else {
                    opt(&total.pipeline)
                },
                opt(&total.stage),
                total.count.to_string(),
                format_cents(total.amount_cents),
                format_cents(total.weighted_cents),
            ]);
        }
        let mut deals = Table::new(
            "Open deals",
            &[
                "id",
                "name",
                "stage",
                "owner",
                "amount",
                "probability",
                "close date",
                "since",
            ],
        );
        for deal in &self.deals {
            deals.push(vec![
                deal.crm_id.clone(),
                opt(&deal.name),
                opt(&deal.stage),
                opt(&deal.owner_id),
                deal.amount_cents.map(format_cents).unwrap_or_default(),
                deal.probability_bp
                    .map(super::format_bp)
                    .unwrap_or_default(),
                opt(&deal.close_date),
                deal.state_since.clone(),
            ]);
        }
        vec![by_stage, deals]
    }
}
