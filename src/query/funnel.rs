//! `query funnel --from D1 --to D2 [--by owner|source|campaign]`: for each deal stage, how
//! many deals entered it in the window, how many moved on to a later stage and to won, how
//! long they sat there, and how many are stuck beyond the stage's configured `max_dwell`.
//!
//! Everything is judged as of the window's end: moves after `to` do not count, so the answer
//! for a past window never changes. Entries come from the stage transitions (the CRM's own
//! history where it is synced), not from versions, so no move between two syncs is missed.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::as_of::stage_rank;
use super::{
    check_pipeline, deal_stages, format_bp, format_days, format_instant, max_dwell_by_stage,
    parse_range, quantile, resolve_connection, share_bp, QueryError, Report, Table,
};
use crate::config::Settings;
use crate::record::Millis;
use crate::store::{dispatch, QueryContext, StageDefinition, Store};

/// What `--by` groups deals by (their current value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FunnelBy {
    /// Deal owner.
    Owner,
    /// Lead source.
    Source,
    /// Primary campaign.
    Campaign,
}

/// Parameters of `query funnel` and `GET /api/v1/funnel`.
#[derive(Debug, Clone, Default, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct FunnelParams {
    /// Start of the window: 2026-01-01 or an RFC 3339 instant.
    #[arg(long)]
    pub from: String,
    /// End of the window (after `from`); moves after it do not count.
    #[arg(long)]
    pub to: String,
    /// Connection name (needed when the store holds several).
    #[arg(long)]
    pub connection: Option<String>,
    /// Only this pipeline.
    #[arg(long)]
    pub pipeline: Option<String>,
    /// One funnel per owner, source or campaign.
    #[arg(long, value_enum)]
    pub by: Option<FunnelBy>,
}

/// One stage of one group's funnel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FunnelStage {
    /// Owner, source or campaign (`null` when not grouped, or when the deal has none).
    pub group: Option<String>,
    /// Pipeline.
    pub pipeline: Option<String>,
    /// Stage.
    pub stage: String,
    /// Entries into the stage in the window.
    pub entered: i64,
    /// Of those, how many next moved to a later open stage or to won before `to`.
    pub moved_on: i64,
    /// `moved_on / entered`, basis points.
    pub to_next_bp: i64,
    /// Of those, how many reached won before `to`.
    pub won: i64,
    /// `won / entered`, basis points.
    pub to_won_bp: i64,
    /// Median time in the stage of the entries that left it, milliseconds.
    pub dwell_median_ms: Option<i64>,
    /// 75th percentile of that time.
    pub dwell_p75_ms: Option<i64>,
    /// 90th percentile of that time.
    pub dwell_p90_ms: Option<i64>,
    /// Entries still in the stage at `to`, there longer than `max_dwell`.
    pub stuck: i64,
    /// The stage's configured `max_dwell`, milliseconds, if any.
    pub max_dwell_ms: Option<i64>,
}

/// The answer of `query funnel`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FunnelReport {
    /// The connection.
    pub connection: String,
    /// Window start.
    pub from: String,
    /// Window end.
    pub to: String,
    /// What the groups are.
    pub by: Option<FunnelBy>,
    /// One row per group and stage, groups in name order, stages in pipeline order.
    pub stages: Vec<FunnelStage>,
}

#[derive(Debug, sqlx::FromRow)]
struct MoveRow {
    record_id: i64,
    pipeline: Option<String>,
    to_stage: String,
    changed_at_ms: i64,
    owner_id: Option<String>,
    source: Option<String>,
    campaign_id: Option<String>,
    deleted_at_ms: Option<i64>,
}

/// Every move in the window of the deals that moved in it, oldest first per deal.
const MOVES_IN_WINDOW: &str = "SELECT t.record_id, t.pipeline, t.to_stage, t.changed_at_ms, r.owner_id, r.source, \
     r.campaign_id, r.deleted_at_ms \
     FROM stage_transitions t JOIN records r ON r.id = t.record_id \
     WHERE t.connection_id = $1 AND t.object_kind = 'deal' AND t.changed_at_ms >= $2 AND t.changed_at_ms < $3 \
     AND (CAST($4 AS TEXT) IS NULL OR t.pipeline = $4) \
     ORDER BY t.record_id, t.changed_at_ms, t.id";

/// Answers `query funnel`.
pub async fn run(
    store: &Store,
    settings: &Settings,
    params: &FunnelParams,
) -> Result<FunnelReport, QueryError> {
    let (from, to) = parse_range(&params.from, &params.to)?;
    let connection = resolve_connection(store, params.connection.as_deref()).await?;
    let stages = deal_stages(store, &connection).await?;
    check_pipeline(&stages, params.pipeline.as_deref())?;
    let limits = max_dwell_by_stage(settings, &connection.name, params.pipeline.as_deref());
    let moves: Vec<MoveRow> = dispatch!(store.pool(), pool => sqlx::query_as(MOVES_IN_WINDOW)
        .bind(connection.id)
        .bind(from)
        .bind(to)
        .bind(params.pipeline.as_deref())
        .fetch_all(pool)
        .await)
    .during("read stage moves in a window")?;
    let rows = tally(&stages, &limits, params.by, &moves, to);
    Ok(FunnelReport {
        connection: connection.name,
        from: format_instant(from),
        to: format_instant(to),
        by: params.by,
        stages: rows,
    })
}

#[derive(Default)]
struct Tally {
    entered: i64,
    moved_on: i64,
    won: i64,
    dwells: Vec<i64>,
    stuck: i64,
}

fn tally(
    stages: &[StageDefinition],
    limits: &HashMap<String, Duration>,
    by: Option<FunnelBy>,
    moves: &[MoveRow],
    to: Millis,
) -> Vec<FunnelStage> {
    let definition = |pipeline: &Option<String>, stage: &str| {
        stages
            .iter()
            .find(|s| Some(&s.pipeline) == pipeline.as_ref() && s.stage == stage)
    };
    let limit_ms = |stage: &str| limits.get(stage).map(|d| d.as_millis() as i64);
    // (group, pipeline rank, stage rank, pipeline, stage) keeps groups and stages in order.
    type Key = (Option<String>, (i64, i64), Option<String>, String);
    let mut tallies: BTreeMap<Key, Tally> = BTreeMap::new();
    for deal in moves.chunk_by(|a, b| a.record_id == b.record_id) {
        for (index, entry) in deal.iter().enumerate() {
            let group = by.and_then(|by| match by {
                FunnelBy::Owner => entry.owner_id.clone(),
                FunnelBy::Source => entry.source.clone(),
                FunnelBy::Campaign => entry.campaign_id.clone(),
            });
            let rank = stage_rank(stages, entry.pipeline.as_deref(), Some(&entry.to_stage));
            let key = (group, rank, entry.pipeline.clone(), entry.to_stage.clone());
            let tally = tallies.entry(key).or_default();
            tally.entered += 1;
            let later = &deal[index + 1..];
            match later.first() {
                Some(next) => {
                    tally.dwells.push(next.changed_at_ms - entry.changed_at_ms);
                    let next_def = definition(&next.pipeline, &next.to_stage);
                    let lost = next_def.is_some_and(|d| d.is_closed && !d.is_won);
                    let forward =
                        stage_rank(stages, next.pipeline.as_deref(), Some(&next.to_stage)) > rank;
                    if forward && !lost {
                        tally.moved_on += 1;
                    }
                }
                None => {
                    let closed =
                        definition(&entry.pipeline, &entry.to_stage).is_some_and(|d| d.is_closed);
                    let deleted = entry.deleted_at_ms.is_some_and(|at| at < to);
                    let over = limit_ms(&entry.to_stage)
                        .is_some_and(|limit| to - entry.changed_at_ms > limit);
                    if !closed && !deleted && over {
                        tally.stuck += 1;
                    }
                }
            }
            let won_later = later.iter().any(|m| {
                definition(&m.pipeline, &m.to_stage).is_some_and(|d| d.is_closed && d.is_won)
            });
            if won_later {
                tally.won += 1;
            }
        }
    }
    tallies
        .into_iter()
        .map(|((group, _, pipeline, stage), mut t)| {
            t.dwells.sort_unstable();
            FunnelStage {
                max_dwell_ms: limit_ms(&stage),
                group,
                pipeline,
                stage,
                entered: t.entered,
                moved_on: t.moved_on,
                to_next_bp: share_bp(t.moved_on, t.entered),
                won: t.won,
                to_won_bp: share_bp(t.won, t.entered),
                dwell_median_ms: quantile(&t.dwells, 0.5),
                dwell_p75_ms: quantile(&t.dwells, 0.75),
                dwell_p90_ms: quantile(&t.dwells, 0.9),
                stuck: t.stuck,
            }
        })
        .collect()
}

impl Report for FunnelReport {
    fn tables(&self) -> Vec<Table> {
        let mut table = Table::new(
            format!(
                "Funnel of {} from {} to {}",
                self.connection, self.from, self.to
            ),
            &[
                "group",
                "stage",
                "entered",
                "moved on",
                "to next",
                "won",
                "to won",
                "dwell p50",
                "dwell p75",
                "dwell p90",
                "stuck",
                "max dwell",
            ],
        );
        let days = |ms: Option<i64>| ms.map(format_days).unwrap_or_default();
        for s in &self.stages {
            table.push(vec![
                s.group.clone().unwrap_or_default(),
                s.stage.clone(),
                s.entered.to_string(),
                s.moved_on.to_string(),
                format_bp(s.to_next_bp),
                s.won.to_string(),
                format_bp(s.to_won_bp),
                days(s.dwell_median_ms),
                days(s.dwell_p75_ms),
                days(s.dwell_p90_ms),
                s.stuck.to_string(),
                days(s.max_dwell_ms),
            ]);
        }
        vec![table]
    }
}
