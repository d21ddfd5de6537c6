//! `query pipeline-diff --from T1 --to T2`: what changed in the deal pipeline between two
//! instants, the weekly pipeline review: deals created, won, lost, removed, moved forward or
//! back, and amount or close-date changes.
//!
//! Each deal's state at T1 is compared with its state at T2 (the versions valid then), so a
//! deal that moved forward and back within the window shows as unchanged in stage.

use std::collections::BTreeMap;

use rusqlite::types::Value;
use serde::{Deserialize, Serialize};

use super::as_of::stage_rank;
use super::{
    check_pipeline, deal_stages, format_cents, format_instant, parse_range, resolve_connection,
    QueryError, Report, Table,
};
use crate::record::Millis;
use crate::store::{fetch_all_sqlite, Backend, QueryContext, StageDefinition, Store};

/// Parameters of `query pipeline-diff` and `GET /api/v1/pipeline-diff`.
#[derive(Debug, Clone, Default, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct PipelineDiffParams {
    /// Start of the window: 2026-03-02 or an RFC 3339 instant.
    #[arg(long)]
    pub from: String,
    /// End of the window (after `from`).
    #[arg(long)]
    pub to: String,
    /// Connection name (needed when the store holds several).
    #[arg(long)]
    pub connection: Option<String>,
    /// Only this pipeline.
    #[arg(long)]
    pub pipeline: Option<String>,
}

/// What happened to a deal between the two instants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// Created in the window.
    Created,
    /// Closed won in the window.
    Won,
    /// Closed lost in the window.
    Lost,
    /// Deleted (or left the pipeline) in the window.
    Removed,
    /// Open at both ends, in a later stage at the end.
    MovedForward,
    /// Open at both ends, in an earlier stage at the end.
    MovedBack,
    /// Amount differs.
    AmountChanged,
    /// Expected close date differs.
    CloseDateChanged,
}

impl ChangeKind {
    const ALL: [ChangeKind; 8] = [
        ChangeKind::Created,
        ChangeKind::Won,
        ChangeKind::Lost,
        ChangeKind::Removed,
        ChangeKind::MovedForward,
        ChangeKind::MovedBack,
        ChangeKind::AmountChanged,
        ChangeKind::CloseDateChanged,
    ];

    /// The name in output.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Created => "created",
            ChangeKind::Won => "won",
            ChangeKind::Lost => "lost",
            ChangeKind::Removed => "removed",
            ChangeKind::MovedForward => "moved_forward",
            ChangeKind::MovedBack => "moved_back",
            ChangeKind::AmountChanged => "amount_changed",
            ChangeKind::CloseDateChanged => "close_date_changed",
        }
    }
}

/// A deal's state at one end of the window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DealEnd {
    /// Stage.
    pub stage: Option<String>,
    /// Amount, cents.
    pub amount_cents: Option<i64>,
    /// Expected close date.
    pub close_date: Option<String>,
}

/// One change of one deal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DealChange {
    /// What happened.
    pub change: ChangeKind,
    /// CRM id.
    pub crm_id: String,
    /// Name (at the end, else at the start).
    pub name: Option<String>,
    /// State at `from` (absent if the deal did not exist yet).
    pub before: Option<DealEnd>,
    /// State at `to` (absent if deleted).
    pub after: Option<DealEnd>,
}

/// Count and amount of one kind of change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChangeTotal {
    /// What happened.
    pub change: ChangeKind,
    /// Deals.
    pub count: i64,
    /// Sum of amounts (at `to`, or at `from` for removed deals), cents.
    pub amount_cents: i64,
    /// Sum of amount changes (after − before), cents; for amount changes only, else 0.
    pub delta_cents: i64,
}

/// The answer of `query pipeline-diff`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PipelineDiffReport {
    /// The connection.
    pub connection: String,
    /// Window start.
    pub from: String,
    /// Window end.
    pub to: String,
    /// Totals per kind of change, every kind listed.
    pub totals: Vec<ChangeTotal>,
    /// Every change, by kind then CRM id.
    pub changes: Vec<DealChange>,
}

/// A deal's version valid at an instant.
#[derive(Debug, Clone, sqlx::FromRow)]
struct State {
    record_id: i64,
    crm_id: String,
    name: Option<String>,
    pipeline: Option<String>,
    stage: Option<String>,
    amount_cents: Option<i64>,
    close_date: Option<String>,
    is_closed: bool,
    is_won: bool,
    deleted: bool,
    crm_created_at_ms: Option<i64>,
}

impl TryFrom<&rusqlite::Row<'_>> for State {
    type Error = rusqlite::Error;

    fn try_from(row: &rusqlite::Row<'_>) -> rusqlite::Result<State> {
        Ok(State {
            record_id: row.get(0)?,
            crm_id: row.get(1)?,
            name: row.get(2)?,
            pipeline: row.get(3)?,
            stage: row.get(4)?,
            amount_cents: row.get(5)?,
            close_date: row.get(6)?,
            is_closed: row.get(7)?,
            is_won: row.get(8)?,
            deleted: row.get(9)?,
            crm_created_at_ms: row.get(10)?,
        })
    }
}

impl State {
    fn end(&self) -> DealEnd {
        DealEnd {
            stage: self.stage.clone(),
            amount_cents: self.amount_cents,
            close_date: self.close_date.clone(),
        }
    }
}

/// The columns of a deal's end state, read from a version `v` joined to its record `r`.
macro_rules! deal_end_select {
    ($window:literal) => {
        concat!(
            "SELECT v.record_id, r.crm_id, v.name, v.pipeline, v.stage, v.amount_cents, \
             v.close_date, v.is_closed, v.is_won, v.deleted, v.crm_created_at_ms \
             FROM record_versions v JOIN records r ON r.id = v.record_id \
             WHERE v.connection_id = $1 AND v.object_kind = 'deal' AND ",
            $window
        )
    };
}

/// The state at `from` of each deal whose state changed in `($2, $3]`. A deal's versions
/// follow each other without gaps (a version ends when the next starts), so this is the
/// version that ended in the window and had started by `from`: one range of the index of
/// version ends, reading the window's activity and not the whole pipeline.
const CHANGED_DEALS_AT_FROM: &str =
    deal_end_select!("v.valid_to_ms > $2 AND v.valid_to_ms <= $3 AND v.valid_from_ms <= $2");

/// The state at `to` of the same deals: the version that started in the window and had not
/// ended by `to`, one range of the index of version starts.
const CHANGED_DEALS_AT_TO: &str = deal_end_select!(
    "v.valid_from_ms > $2 AND v.valid_from_ms <= $3 AND (v.valid_to_ms IS NULL OR v.valid_to_ms > $3)"
);

/// Runs [`CHANGED_DEALS_AT_FROM`] or [`CHANGED_DEALS_AT_TO`] over `(from, to]`.
async fn changed_deals(
    store: &Store,
    connection_id: i64,
    (from, to): (Millis, Millis),
    sql: &'static str,
) -> Result<Vec<State>, QueryError> {
    const DURING: &str = "read the deals that changed in the window";
    Ok(match store.pool() {
        Backend::Sqlite(pool) => {
            let params = [connection_id, from, to].map(Value::from).to_vec();
            fetch_all_sqlite(pool, DURING, sql, params).await?
        }
        Backend::Postgres(pool) => sqlx::query_as(sql)
            .bind(connection_id)
            .bind(from)
            .bind(to)
            .fetch_all(pool)
            .await
            .during(DURING)?,
    })
}

/// Answers `query pipeline-diff`.
pub async fn run(
    store: &Store,
    params: &PipelineDiffParams,
) -> Result<PipelineDiffReport, QueryError> {
    let (from, to) = parse_range(&params.from, &params.to)?;
    let connection = resolve_connection(store, params.connection.as_deref()).await?;
    let stages = deal_stages(store, &connection).await?;
    check_pipeline(&stages, params.pipeline.as_deref())?;
    let in_scope = |state: &State| {
        !state.deleted
            && params
                .pipeline
                .as_deref()
                .is_none_or(|p| state.pipeline.as_deref() == Some(p))
    };
    // The two ends are read at once, on two connections: each is a query of its own over the
    // same window, and a store on more than one core answers both in the time of one.
    let (at_from, at_to) = tokio::try_join!(
        changed_deals(store, connection.id, (from, to), CHANGED_DEALS_AT_FROM),
        changed_deals(store, connection.id, (from, to), CHANGED_DEALS_AT_TO)
    )?;
    let mut ends: BTreeMap<i64, (Option<State>, Option<State>)> = BTreeMap::new();
    for state in at_from {
        let record = state.record_id;
        ends.entry(record).or_default().0 = Some(state);
    }
    for state in at_to {
        let record = state.record_id;
        ends.entry(record).or_default().1 = Some(state);
    }
    let mut changes = Vec::new();
    for (before, after) in ends.values() {
        let before = before.as_ref().filter(|s| in_scope(s));
        let after = after.as_ref().filter(|s| in_scope(s));
        for change in classify(&stages, before, after, from, to) {
            let named = after.or(before).expect("a change has a deal at one end");
            changes.push(DealChange {
                change,
                crm_id: named.crm_id.clone(),
                name: named.name.clone(),
                before: before.map(State::end),
                after: after.map(State::end),
            });
        }
    }
    changes.sort_by(|a, b| {
        a.change
            .cmp(&b.change)
            .then_with(|| a.crm_id.cmp(&b.crm_id))
    });
    let totals = ChangeKind::ALL
        .iter()
        .map(|kind| {
            let of_kind = changes.iter().filter(|c| c.change == *kind);
            let amount =
                |end: &Option<DealEnd>| end.as_ref().and_then(|e| e.amount_cents).unwrap_or(0);
            ChangeTotal {
                change: *kind,
                count: of_kind.clone().count() as i64,
                amount_cents: of_kind
                    .clone()
                    .map(|c| {
                        if c.after.is_some() {
                            amount(&c.after)
                        } else {
                            amount(&c.before)
                        }
                    })
                    .sum(),
                delta_cents: if *kind == ChangeKind::AmountChanged {
                    of_kind.map(|c| amount(&c.after) - amount(&c.before)).sum()
                } else {
                    0
                },
            }
        })
        .collect();
    Ok(PipelineDiffReport {
        connection: connection.name,
        from: format_instant(from),
        to: format_instant(to),
        totals,
        changes,
    })
}

/// The kinds of change between a deal's two ends (each `None` when out of the pipeline).
fn classify(
    stages: &[StageDefinition],
    before: Option<&State>,
    after: Option<&State>,
    from: Millis,
    to: Millis,
) -> Vec<ChangeKind> {
    let mut kinds = Vec::new();
    let Some(after) = after else {
        if before.is_some() {
            kinds.push(ChangeKind::Removed);
        }
        return kinds;
    };
    let created_in_window = after
        .crm_created_at_ms
        .is_some_and(|at| (from..to).contains(&at));
    match (before, created_in_window) {
        (None, true) => kinds.push(ChangeKind::Created),
        // Not yet seen at the start, though created before it: nothing is known of the start.
        (None, false) => return kinds,
        _ => {}
    }
    let closed_before = |won: bool| before.is_some_and(|b| b.is_closed && b.is_won == won);
    if after.is_closed && after.is_won && !closed_before(true) {
        kinds.push(ChangeKind::Won);
    }
    if after.is_closed && !after.is_won && !closed_before(false) {
        kinds.push(ChangeKind::Lost);
    }
    let Some(before) = before else {
        return kinds;
    };
    if !before.is_closed && !after.is_closed && before.stage != after.stage {
        let rank = |s: &State| stage_rank(stages, s.pipeline.as_deref(), s.stage.as_deref());
        match rank(after).cmp(&rank(before)) {
            std::cmp::Ordering::Greater => kinds.push(ChangeKind::MovedForward),
            std::cmp::Ordering::Less => kinds.push(ChangeKind::MovedBack),
            std::cmp::Ordering::Equal => {}
        }
    }
    if before.amount_cents != after.amount_cents {
        kinds.push(ChangeKind::AmountChanged);
    }
    if before.close_date != after.close_date {
        kinds.push(ChangeKind::CloseDateChanged);
    }
    kinds
}

impl Report for PipelineDiffReport {
    fn tables(&self) -> Vec<Table> {
        let mut totals = Table::new(
            format!(
                "Pipeline changes in {} from {} to {}",
                self.connection, self.from, self.to
            ),
            &["change", "deals", "amount", "amount delta"],
        );
        for total in &self.totals {
            totals.push(vec![
                total.change.as_str().into(),
                total.count.to_string(),
                format_cents(total.amount_cents),
                format_cents(total.delta_cents),
            ]);
        }
        let mut changes = Table::new(
            "Changed deals",
            &[
                "change",
                "id",
                "name",
                "stage before",
                "stage after",
                "amount before",
                "amount after",
                "close before",
                "close after",
            ],
        );
        let cell = |end: &Option<DealEnd>, pick: fn(&DealEnd) -> String| {
            end.as_ref().map(pick).unwrap_or_default()
        };
        for c in &self.changes {
            changes.push(vec![
                c.change.as_str().into(),
                c.crm_id.clone(),
                c.name.clone().unwrap_or_default(),
                cell(&c.before, |e| e.stage.clone().unwrap_or_default()),
                cell(&c.after, |e| e.stage.clone().unwrap_or_default()),
                cell(&c.before, |e| {
                    e.amount_cents.map(format_cents).unwrap_or_default()
                }),
                cell(&c.after, |e| {
                    e.amount_cents.map(format_cents).unwrap_or_default()
                }),
                cell(&c.before, |e| e.close_date.clone().unwrap_or_default()),
                cell(&c.after, |e| e.close_date.clone().unwrap_or_default()),
            ]);
        }
        vec![totals, changes]
    }
}
