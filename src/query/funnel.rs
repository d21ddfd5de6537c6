//! `query funnel --from D1 --to D2 [--by owner|source|campaign]`: for each deal stage, how
//! many deals entered it in the window, how many moved on to a later stage and to won, how
//! long they sat there, and how many are stuck beyond the stage's configured `max_dwell`.
//!
//! Everything is judged as of the window's end: moves after `to` do not count, so the answer
//! for a past window never changes. Entries come from the stage transitions (the CRM's own
//! history where it is synced), not from versions, so no move between two syncs is missed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use futures_util::{stream, StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::as_of::stage_rank;
use super::{
    check_pipeline, cores, deal_stages, format_bp, format_days, format_instant, max_dwell_by_stage,
    parse_range, resolve_connection, share_bp, sqlite_reads_at_once, QueryError, Report, Table,
};
use crate::config::Settings;
use crate::record::Millis;
use crate::store::{dispatch, scan_sqlite, Backend, QueryContext, StageDefinition, Store};

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

/// One move in the window, its stage numbered in [`Stages`].
struct Move {
    record_id: i64,
    stage: usize,
    changed_at_ms: i64,
    id: i64,
}

/// The (pipeline, stage) pairs the window's moves went to, numbered in order of meeting,
/// each with what the tally asks of it: moves are millions, stages a handful.
#[derive(Default)]
struct Stages {
    met: Vec<StageFacts>,
}

struct StageFacts {
    pipeline: Option<String>,
    stage: String,
    rank: (i64, i64),
    closed: bool,
    won: bool,
    lost: bool,
    limit_ms: Option<i64>,
}

impl Stages {
    /// The number of a (pipeline, stage), its facts looked up the first time it is met.
    fn number(
        &mut self,
        definitions: &[StageDefinition],
        limits: &HashMap<String, Duration>,
        pipeline: Option<&str>,
        stage: &str,
    ) -> usize {
        if let Some(known) = self
            .met
            .iter()
            .position(|s| s.pipeline.as_deref() == pipeline && s.stage == stage)
        {
            return known;
        }
        let definition = definitions
            .iter()
            .find(|d| Some(d.pipeline.as_str()) == pipeline && d.stage == stage);
        self.met.push(StageFacts {
            pipeline: pipeline.map(str::to_string),
            stage: stage.to_string(),
            rank: stage_rank(definitions, pipeline, Some(stage)),
            closed: definition.is_some_and(|d| d.is_closed),
            won: definition.is_some_and(|d| d.is_closed && d.is_won),
            lost: definition.is_some_and(|d| d.is_closed && !d.is_won),
            limit_ms: limits.get(stage).map(|d| d.as_millis() as i64),
        });
        self.met.len() - 1
    }
}

/// Every deal move in `[$2, $3)`, from the covering index of moves. The store returns them in
/// time order; they are put in deal order here, which is cheaper than asking the database to
/// sort millions of rows.
macro_rules! moves_in_window {
    ($columns:literal) => {
        concat!(
            "SELECT ",
            $columns,
            " FROM stage_transitions t \
             WHERE t.connection_id = $1 AND t.object_kind = 'deal' AND t.changed_at_ms >= $2 \
             AND t.changed_at_ms < $3 AND (CAST($4 AS TEXT) IS NULL OR t.pipeline = $4)"
        )
    };
}

/// The moves of [`moves_in_window`] as rows.
const MOVES_IN_WINDOW: &str =
    moves_in_window!("t.record_id, t.pipeline, t.to_stage, t.changed_at_ms, t.id");

/// How much of the window one SQLite scan reads: the scans of a long window run side by side.
const SCAN_SPAN_MS: Millis = 31 * 86_400_000;

/// What one SQLite scan of a span read: moves by bucket, their stages numbered in the order
/// the scan met them (each scan runs on a thread of its own, apart from [`Stages`]).
#[derive(Default)]
struct SpanMoves {
    buckets: Vec<Vec<Move>>,
    stages: Vec<(Option<Vec<u8>>, Vec<u8>)>,
    last_stage: usize,
}

impl SpanMoves {
    /// The scan's number of a (pipeline, stage); moves of one stage tend to come in runs, so
    /// the last one met is tried first.
    fn number(&mut self, pipeline: Option<&[u8]>, stage: &[u8]) -> usize {
        let is =
            |known: &(Option<Vec<u8>>, Vec<u8>)| known.1 == stage && known.0.as_deref() == pipeline;
        if self.stages.get(self.last_stage).is_some_and(is) {
            return self.last_stage;
        }
        self.last_stage = match self.stages.iter().position(is) {
            Some(known) => known,
            None => {
                self.stages
                    .push((pipeline.map(<[u8]>::to_vec), stage.to_vec()));
                self.stages.len() - 1
            }
        };
        self.last_stage
    }

    /// Keeps one row of [`MOVES_IN_WINDOW`].
    fn keep(&mut self, row: &rusqlite::Row<'_>) -> rusqlite::Result<()> {
        let pipeline = row.get_ref(1)?.as_bytes_or_null()?;
        let stage = row.get_ref(2)?.as_bytes()?;
        let m = Move {
            record_id: row.get(0)?,
            stage: self.number(pipeline, stage),
            changed_at_ms: row.get(3)?,
            id: row.get(4)?,
        };
        let bucket = m.record_id.rem_euclid(self.buckets.len() as i64) as usize;
        self.buckets[bucket].push(m);
        Ok(())
    }
}

/// Reads the deal moves of one span of the window from SQLite.
async fn scan_span(
    pool: &sqlx::SqlitePool,
    connection_id: i64,
    (start, end): (Millis, Millis),
    pipeline: Option<&str>,
) -> Result<SpanMoves, QueryError> {
    let params = vec![
        connection_id.into(),
        start.into(),
        end.into(),
        pipeline.map(str::to_string).into(),
    ];
    let empty = SpanMoves {
        buckets: (0..cores()).map(|_| Vec::new()).collect(),
        ..SpanMoves::default()
    };
    let read = scan_sqlite(
        pool,
        "read stage moves in a window",
        MOVES_IN_WINDOW,
        params,
        empty,
        |span, row| span.keep(row),
    )
    .await?;
    Ok(read)
}

/// Reads every deal move of the window, numbering stages as they are met, into one bucket per
/// core by deal (each deal's moves in one bucket), in no order.
async fn read_moves(
    store: &Store,
    connection_id: i64,
    (from, to): (Millis, Millis),
    pipeline: Option<&str>,
    mut stage_of: impl FnMut(Option<&str>, &str) -> usize,
) -> Result<Vec<Vec<Move>>, QueryError> {
    let buckets = cores();
    let mut moves: Vec<Vec<Move>> = (0..buckets).map(|_| Vec::new()).collect();
    match store.pool() {
        Backend::Sqlite(pool) => {
            let spans = (from..to)
                .step_by(SCAN_SPAN_MS as usize)
                .map(|start| (start, to.min(start.saturating_add(SCAN_SPAN_MS))));
            // SQLite runs each statement on one core: spans are read side by side, as many as
            // there are cores, within the connections reads may take.
            let mut scans = stream::iter(spans)
                .map(|span| scan_span(pool, connection_id, span, pipeline))
                .buffered(buckets.min(sqlite_reads_at_once(pool)));
            while let Some(span) = scans.next().await {
                let mut span = span?;
                let numbers: Vec<usize> = span
                    .stages
                    .iter()
                    .map(|(pipeline, stage)| {
                        stage_of(
                            pipeline.as_deref().map(String::from_utf8_lossy).as_deref(),
                            &String::from_utf8_lossy(stage),
                        )
                    })
                    .collect();
                for (bucket, part) in moves.iter_mut().zip(&mut span.buckets) {
                    part.iter_mut().for_each(|m| m.stage = numbers[m.stage]);
                    bucket.append(part);
                }
            }
        }
        Backend::Postgres(pool) => {
            let mut rows = sqlx::query(MOVES_IN_WINDOW)
                .bind(connection_id)
                .bind(from)
                .bind(to)
                .bind(pipeline)
                .fetch(pool);
            while let Some(row) = rows
                .try_next()
                .await
                .during("read stage moves in a window")?
            {
                let stage: &str = row.try_get(2).during("read a stage move")?;
                let pipeline: Option<&str> = row.try_get(1).during("read a stage move")?;
                let m = Move {
                    record_id: row.try_get(0).during("read a stage move")?,
                    stage: stage_of(pipeline, stage),
                    changed_at_ms: row.try_get(3).during("read a stage move")?,
                    id: row.try_get(4).during("read a stage move")?,
                };
                moves[m.record_id.rem_euclid(buckets as i64) as usize].push(m);
            }
        }
    }
    Ok(moves)
}

/// Deals deleted before an instant: their last stage does not make them stuck.
const DELETED_DEALS: &str =
    "SELECT id FROM records WHERE connection_id = $1 AND object_kind = 'deal' \
     AND deleted_at_ms IS NOT NULL AND deleted_at_ms < $2";

/// The current `--by` value of every deal of a connection, in deal order: (SQLite,
/// PostgreSQL), the index named so that SQLite reads the deals' values from it alone, in its
/// order.
macro_rules! deal_groups {
    ($column:literal) => {
        (
            concat!(
                "SELECT id, ",
                $column,
                " FROM records INDEXED BY records_deal_groups \
                 WHERE connection_id = $1 AND object_kind = 'deal' AND ",
                $column,
                " IS NOT NULL ORDER BY id"
            ),
            concat!(
                "SELECT id, ",
                $column,
                " FROM records \
                 WHERE connection_id = $1 AND object_kind = 'deal' AND ",
                $column,
                " IS NOT NULL ORDER BY id"
            ),
        )
    };
}

/// [`deal_groups`] for each `--by`.
const GROUP_SQL: [(FunnelBy, (&str, &str)); 3] = [
    (FunnelBy::Owner, deal_groups!("owner_id")),
    (FunnelBy::Source, deal_groups!("source")),
    (FunnelBy::Campaign, deal_groups!("campaign_id")),
];

/// Each deal's `--by` value, the values (owners, sources, campaigns: few next to the deals)
/// numbered and held once each.
#[derive(Default)]
struct Groups {
    names: Vec<String>,
    numbers: HashMap<String, u32>,
    /// (deal, value number), in deal order.
    of_deal: Vec<(i64, u32)>,
}

impl Groups {
    /// Notes a deal's value.
    fn add(&mut self, deal: i64, value: &str) {
        let number = match self.numbers.get(value) {
            Some(known) => *known,
            None => {
                self.names.push(value.to_string());
                let number = (self.names.len() - 1) as u32;
                self.numbers.insert(value.to_string(), number);
                number
            }
        };
        self.of_deal.push((deal, number));
    }

    /// A walk that finds the values of deals asked for in increasing order.
    fn walk(&self) -> GroupWalk<'_> {
        GroupWalk {
            of_deal: &self.of_deal,
            next: 0,
        }
    }
}

/// Finds deals' values in one pass over [`Groups`], as the tally meets deals in order: cheaper
/// than a hash lookup for each of millions of moves.
struct GroupWalk<'a> {
    of_deal: &'a [(i64, u32)],
    next: usize,
}

impl GroupWalk<'_> {
    /// The value number of `deal`, which is no lower than any deal asked for before.
    fn of(&mut self, deal: i64) -> Option<u32> {
        while self.of_deal.get(self.next).is_some_and(|(d, _)| *d < deal) {
            self.next += 1;
        }
        match self.of_deal.get(self.next) {
            Some((d, number)) if *d == deal => Some(*number),
            _ => None,
        }
    }
}

/// Answers `query funnel`.
pub async fn run(
    store: &Store,
    settings: &Settings,
    params: &FunnelParams,
) -> Result<FunnelReport, QueryError> {
    let (from, to) = parse_range(&params.from, &params.to)?;
    let connection = resolve_connection(store, params.connection.as_deref()).await?;
    let definitions = deal_stages(store, &connection).await?;
    check_pipeline(&definitions, params.pipeline.as_deref())?;
    let limits = max_dwell_by_stage(settings, &connection.name, params.pipeline.as_deref());
    let mut stages = Stages::default();
    let read_groups = async {
        match params.by {
            Some(by) => group_values(store, connection.id, by).await.map(Some),
            None => Ok(None),
        }
    };
    // The groups are read on a connection of their own while the moves are.
    let (moves, groups) = tokio::try_join!(
        read_moves(
            store,
            connection.id,
            (from, to),
            params.pipeline.as_deref(),
            |pipeline, stage| stages.number(&definitions, &limits, pipeline, stage),
        ),
        read_groups
    )?;
    let deleted: HashSet<i64> = dispatch!(store.pool(), pool => sqlx::query_scalar(DELETED_DEALS)
        .bind(connection.id)
        .bind(to)
        .fetch_all(pool)
        .await)
    .during("read deleted deals")?
    .into_iter()
    .collect();
    // Sorting and tallying millions of moves would hold up a thread the runtime shares.
    let tallied =
        tokio::task::spawn_blocking(move || tally(&stages, moves, &deleted, groups.as_ref(), to))
            .await;
    let rows = tallied.unwrap_or_else(|failed| match failed.try_into_panic() {
        Ok(panic) => std::panic::resume_unwind(panic),
        Err(cancelled) => panic!("the funnel tally was cancelled: {cancelled}"),
    });
    Ok(FunnelReport {
        connection: connection.name,
        from: format_instant(from),
        to: format_instant(to),
        by: params.by,
        stages: rows,
    })
}

/// The `--by` value of each deal of the connection.
async fn group_values(
    store: &Store,
    connection_id: i64,
    by: FunnelBy,
) -> Result<Groups, QueryError> {
    const DURING: &str = "read the groups of funnel deals";
    let (sqlite, postgres) = GROUP_SQL
        .iter()
        .find(|(of, _)| *of == by)
        .map(|(_, sql)| *sql)
        .expect("every --by has its query");
    let mut groups = Groups::default();
    match store.pool() {
        Backend::Sqlite(pool) => {
            let params = vec![connection_id.into()];
            groups = scan_sqlite(pool, DURING, sqlite, params, groups, |groups, row| {
                groups.add(row.get(0)?, row.get_ref(1)?.as_str()?);
                Ok(())
            })
            .await?;
        }
        Backend::Postgres(pool) => {
            let mut rows = sqlx::query_as::<_, (i64, String)>(postgres)
                .bind(connection_id)
                .fetch(pool);
            while let Some((deal, value)) = rows.try_next().await.during(DURING)? {
                groups.add(deal, &value);
            }
        }
    }
    Ok(groups)
}

#[derive(Default)]
struct Tally {
    entered: i64,
    moved_on: i64,
    won: i64,
    dwells: Vec<i64>,
    stuck: i64,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.entered += other.entered;
        self.moved_on += other.moved_on;
        self.won += other.won;
        self.dwells.extend(other.dwells);
        self.stuck += other.stuck;
    }
}

/// (group, stage rank, pipeline, stage, stage number) keeps groups and stages in order, by
/// name where ranks tie (stages the metadata does not know).
type Key<'a> = (Option<&'a str>, (i64, i64), Option<&'a str>, &'a str, usize);

/// Where a deal's entry is counted: (group value number, stage number), numbers being cheaper
/// to look up millions of times than the names they stand for.
type Slot = (Option<u32>, usize);

/// Tallies each bucket of deals on a thread of its own (sorting millions of moves is most of
/// the work left once they are read), then adds the buckets up.
fn tally(
    stages: &Stages,
    buckets: Vec<Vec<Move>>,
    deleted: &HashSet<i64>,
    groups: Option<&Groups>,
    to: Millis,
) -> Vec<FunnelStage> {
    let tallies = std::thread::scope(|scope| {
        let threads: Vec<_> = buckets
            .into_iter()
            .map(|mut moves| {
                scope.spawn(move || tally_deals(stages, &mut moves, deleted, groups, to))
            })
            .collect();
        let mut tallies: HashMap<Slot, Tally> = HashMap::new();
        for thread in threads {
            let part = thread
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            for (slot, tally) in part {
                tallies.entry(slot).or_default().add(tally);
            }
        }
        tallies
    });
    let name = |number: u32| groups.map(|g| g.names[number as usize].as_str());
    let ordered: BTreeMap<Key, Tally> = tallies
        .into_iter()
        .map(|((group, stage), tally)| {
            let facts = &stages.met[stage];
            let key = (
                group.and_then(name),
                facts.rank,
                facts.pipeline.as_deref(),
                facts.stage.as_str(),
                stage,
            );
            (key, tally)
        })
        .collect();
    ordered
        .into_iter()
        .map(|((group, _, _, _, stage), mut t)| {
            let facts = &stages.met[stage];
            let [median, p75, p90] = dwell_quantiles(&mut t.dwells);
            FunnelStage {
                max_dwell_ms: facts.limit_ms,
                group: group.map(str::to_string),
                pipeline: facts.pipeline.clone(),
                stage: facts.stage.clone(),
                entered: t.entered,
                moved_on: t.moved_on,
                to_next_bp: share_bp(t.moved_on, t.entered),
                won: t.won,
                to_won_bp: share_bp(t.won, t.entered),
                dwell_median_ms: median,
                dwell_p75_ms: p75,
                dwell_p90_ms: p90,
                stuck: t.stuck,
            }
        })
        .collect()
}

/// The tallies of deals whose moves are all in `moves`, which it sorts by deal and time.
fn tally_deals(
    stages: &Stages,
    moves: &mut [Move],
    deleted: &HashSet<i64>,
    groups: Option<&Groups>,
    to: Millis,
) -> HashMap<Slot, Tally> {
    moves.sort_unstable_by_key(|m| (m.record_id, m.changed_at_ms, m.id));
    let mut walk = groups.map(Groups::walk);
    let mut tallies: HashMap<Slot, Tally> = HashMap::new();
    for deal in moves.chunk_by(|a, b| a.record_id == b.record_id) {
        let record_id = deal[0].record_id;
        let group = walk.as_mut().and_then(|w| w.of(record_id));
        for (index, entry) in deal.iter().enumerate() {
            let facts = &stages.met[entry.stage];
            let tally = tallies.entry((group, entry.stage)).or_default();
            tally.entered += 1;
            let later = &deal[index + 1..];
            match later.first() {
                Some(next) => {
                    tally.dwells.push(next.changed_at_ms - entry.changed_at_ms);
                    let next_facts = &stages.met[next.stage];
                    if next_facts.rank > facts.rank && !next_facts.lost {
                        tally.moved_on += 1;
                    }
                }
                None => {
                    let over = facts
                        .limit_ms
                        .is_some_and(|limit| to - entry.changed_at_ms > limit);
                    if !facts.closed && !deleted.contains(&record_id) && over {
                        tally.stuck += 1;
                    }
                }
            }
            if later.iter().any(|m| stages.met[m.stage].won) {
                tally.won += 1;
            }
        }
    }
    tallies
}

/// Median, p75 and p90 of the dwell times by nearest rank, as [`super::quantile`] gives them, found
/// by selection rather than by sorting millions of them: each rank is selected among the
/// values at or after the one before it.
fn dwell_quantiles(dwells: &mut [i64]) -> [Option<i64>; 3] {
    let mut selected = 0;
    [0.5, 0.75, 0.9].map(|q| {
        if dwells.is_empty() {
            return None;
        }
        let rank = ((q * dwells.len() as f64).ceil() as usize).clamp(1, dwells.len()) - 1;
        let (_, value, _) = dwells[selected..].select_nth_unstable(rank - selected);
        let value = *value;
        selected = rank;
        Some(value)
    })
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

#[cfg(test)]
mod tests {
    use super::dwell_quantiles;
    use crate::query::quantile;

    #[test]
    fn dwell_quantiles_are_the_nearest_ranks_of_the_sorted_values() {
        for len in 0..40_i64 {
            // Repeats and an order far from sorted.
            let values: Vec<i64> = (0..len).map(|i| (i * 7919) % 13 - i % 3).collect();
            let mut sorted = values.clone();
            sorted.sort_unstable();
            let expected = [0.5, 0.75, 0.9].map(|q| quantile(&sorted, q));
            assert_eq!(dwell_quantiles(&mut values.clone()), expected, "{values:?}");
        }
    }
}
