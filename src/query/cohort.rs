//! `query cohort`: records grouped by the period in which a start event happened (leads
//! created in April), and how many reached an outcome (meeting, won, …) in that period and in
//! each later one, with cumulative rates.
//!
//! Outcomes are counted in the period they happened, not the period the record started in,
//! which is what per-month counting gets wrong: a lead created in April that books a meeting
//! in May and is won in August counts for the April cohort in the May and August columns.
//!
//! An outcome counts when it happens, at or after the start, on the record itself or on a
//! record it is linked to: the deal a Salesforce lead converted into (`ConvertedOpportunityId`,
//! `ConvertedContactId`) or a HubSpot association, either way round.
//!
//! With `--by`, records are grouped by owner, source or campaign, seen in one of three views
//! of their path: `first_touch` (the first value the store saw), `nurture` (every value along
//! the way, so a record counts once in each), or `latest` (the value now). Campaigns come from
//! the record's own campaign field and from its campaign memberships.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Datelike, NaiveDate, NaiveTime, Utc};
use serde::{Deserialize, Serialize};

use super::{format_bp, parse_instant, resolve_connection, share_bp, QueryError, Report, Table};
use crate::record::{LifecycleEvent, Millis, ObjectKind};
use crate::store::{dispatch, fetch_all_sqlite, Backend, BackendKind, QueryContext, Store};

/// The length of a cohort.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    /// Calendar month, UTC.
    Month,
    /// Calendar quarter, UTC.
    Quarter,
    /// Calendar year, UTC.
    Year,
}

impl Period {
    /// A running number of the period that holds `at`; consecutive periods differ by one.
    pub fn index(self, at: Millis) -> i64 {
        // Instants beyond chrono's range (only a corrupt stored value) fall in its first or
        // last period rather than in 1970.
        let date = DateTime::from_timestamp_millis(at).unwrap_or(if at < 0 {
            DateTime::<Utc>::MIN_UTC
        } else {
            DateTime::<Utc>::MAX_UTC
        });
        let (year, month0) = (i64::from(date.year()), i64::from(date.month0()));
        match self {
            Period::Month => year * 12 + month0,
            Period::Quarter => year * 4 + month0 / 3,
            Period::Year => year,
        }
    }

    /// The name of period number `index`: `2026-04`, `2026-Q2`, `2026`.
    pub fn label(self, index: i64) -> String {
        match self {
            Period::Month => format!("{}-{:02}", index.div_euclid(12), index.rem_euclid(12) + 1),
            Period::Quarter => format!("{}-Q{}", index.div_euclid(4), index.rem_euclid(4) + 1),
            Period::Year => index.to_string(),
        }
    }

    /// The instant period number `index` begins (UTC midnight of its first day).
    pub fn start_ms(self, index: i64) -> Millis {
        let (year, month0) = match self {
            Period::Month => (index.div_euclid(12), index.rem_euclid(12)),
            Period::Quarter => (index.div_euclid(4), index.rem_euclid(4) * 3),
            Period::Year => (index, 0),
        };
        // Beyond chrono's years no record can start; the ends of time stand in.
        i32::try_from(year)
            .ok()
            .and_then(|year| NaiveDate::from_ymd_opt(year, month0 as u32 + 1, 1))
            .map(|day| day.and_time(NaiveTime::MIN).and_utc().timestamp_millis())
            .unwrap_or(if year < 0 { Millis::MIN } else { Millis::MAX })
    }

    fn default_horizon(self) -> u32 {
        match self {
            Period::Month => 12,
            Period::Quarter => 4,
            Period::Year => 2,
        }
    }
}

/// What `--by` groups records by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CohortBy {
    /// Campaign (the record's campaign field and its campaign memberships).
    Campaign,
    /// Lead source.
    Source,
    /// Owner.
    Owner,
}

/// Which value of a record's path a group is taken from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PathView {
    /// The first value the store saw.
    #[default]
    #[value(name = "first_touch")]
    FirstTouch,
    /// Every value along the path (a record counts in each).
    Nurture,
    /// The value now.
    Latest,
}

/// Parameters of `query cohort` and `GET /api/v1/cohort`.
#[derive(Debug, Clone, Default, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct CohortParams {
    /// Cohort length: month, quarter or year.
    #[arg(long)]
    pub period: String,
    /// The event that puts a record in a cohort (created, first_contacted, mql, sql,
    /// meeting_booked, opportunity_created, won, lost, disqualified, recycled, returned).
    #[arg(long)]
    pub start: String,
    /// The event counted as the outcome (same names).
    #[arg(long)]
    pub outcome: String,
    /// Periods after the start period to report (default 12 months, 4 quarters, 2 years).
    #[arg(long)]
    pub horizon: Option<u32>,
    /// Group by campaign, source or owner.
    #[arg(long, value_enum)]
    pub by: Option<CohortBy>,
    /// Which value of the path groups a record (default first_touch).
    #[arg(long, value_enum)]
    pub view: Option<PathView>,
    /// Only records of this kind (lead, contact, deal).
    #[arg(long)]
    pub kind: Option<String>,
    /// Only start events at or after this instant.
    #[arg(long)]
    pub from: Option<String>,
    /// Only start events before this instant.
    #[arg(long)]
    pub to: Option<String>,
    /// Connection name (needed when the store holds several).
    #[arg(long)]
    pub connection: Option<String>,
}

/// Outcomes of one cohort in one period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CohortColumn {
    /// Periods after the cohort's own (0 = the same period).
    pub offset: u32,
    /// The period's name.
    pub period: String,
    /// Records whose first outcome fell in this period.
    pub reached: i64,
    /// Records that reached the outcome by the end of this period.
    pub cumulative: i64,
    /// `cumulative / size`, basis points.
    pub cumulative_bp: i64,
}

/// One cohort.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cohort {
    /// The group (with `--by`; `null` for records without a value).
    pub group: Option<String>,
    /// The start period's name.
    pub period: String,
    /// Records in the cohort.
    pub size: i64,
    /// One column per period, from the start period to the horizon.
    pub columns: Vec<CohortColumn>,
    /// Records that reached the outcome after the horizon.
    pub later: i64,
}

/// The answer of `query cohort`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CohortReport {
    /// The connection.
    pub connection: String,
    /// Cohort length.
    pub period: Period,
    /// Start event.
    pub start: String,
    /// Outcome event.
    pub outcome: String,
    /// Periods reported after the start period.
    pub horizon: u32,
    /// Grouping.
    pub by: Option<CohortBy>,
    /// View of the path used for grouping.
    pub view: PathView,
    /// Cohorts by group then period.
    pub cohorts: Vec<Cohort>,
}

/// The checked parameters.
struct Plan {
    period: Period,
    start: LifecycleEvent,
    outcome: LifecycleEvent,
    horizon: u32,
    by: Option<CohortBy>,
    view: PathView,
    kind: Option<ObjectKind>,
    from: Option<Millis>,
    to: Option<Millis>,
}

fn event(parameter: &'static str, text: &str) -> Result<LifecycleEvent, QueryError> {
    LifecycleEvent::parse(text.trim()).ok_or_else(|| {
        let known: Vec<&str> = LifecycleEvent::ALL.iter().map(|e| e.as_str()).collect();
        QueryError::bad(
            parameter,
            format!("`{text}` is not an event; use one of {}", known.join(", ")),
        )
    })
}

fn plan(params: &CohortParams) -> Result<Plan, QueryError> {
    let period = match params.period.trim() {
        "month" => Period::Month,
        "quarter" => Period::Quarter,
        "year" => Period::Year,
        other => {
            return Err(QueryError::bad(
                "period",
                format!("`{other}` is not a period; use month, quarter or year"),
            ))
        }
    };
    let kind = match params.kind.as_deref() {
        None => None,
        Some(text) => Some(
            ObjectKind::parse(text)
                .filter(|k| matches!(k, ObjectKind::Lead | ObjectKind::Contact | ObjectKind::Deal))
                .ok_or_else(|| {
                    QueryError::bad(
                        "kind",
                        format!("`{text}` is not one of lead, contact, deal"),
                    )
                })?,
        ),
    };
    let from = params
        .from
        .as_deref()
        .map(|t| parse_instant("from", t))
        .transpose()?;
    let to = params
        .to
        .as_deref()
        .map(|t| parse_instant("to", t))
        .transpose()?;
    if let (Some(from), Some(to)) = (from, to) {
        if from >= to {
            return Err(QueryError::bad("from", "is not before `to`"));
        }
    }
    let horizon = params.horizon.unwrap_or(period.default_horizon());
    if horizon > 120 {
        return Err(QueryError::bad(
            "horizon",
            format!("{horizon} is more than 120 periods"),
        ));
    }
    Ok(Plan {
        period,
        start: event("start", &params.start)?,
        outcome: event("outcome", &params.outcome)?,
        horizon,
        by: params.by,
        view: params.view.unwrap_or_default(),
        kind,
        from,
        to,
    })
}

/// Answers `query cohort`.
pub async fn run(store: &Store, params: &CohortParams) -> Result<CohortReport, QueryError> {
    let plan = plan(params)?;
    let connection = resolve_connection(store, params.connection.as_deref()).await?;
    let mut cohorts: BTreeMap<(Option<String>, i64), Tally> = BTreeMap::new();
    let columns = plan.horizon as usize + 1;
    let count_outcome = |tally: &mut Tally, offset: i64| match usize::try_from(offset) {
        Ok(offset) if offset <= plan.horizon as usize => tally.1[offset] += 1,
        _ => tally.2 += 1,
    };
    // Outcomes, starts and groups are read from the store at once, each on a connection of
    // its own.
    match plan.by {
        // Without groups only counts leave the store: cohort sizes, and the records that
        // reached the outcome.
        None => {
            let (reached, sizes) = tokio::try_join!(
                first_outcomes(store, connection.id, &plan),
                starts_by_period(store, connection.id, &plan)
            )?;
            for (start_period, size) in sizes {
                tally(&mut cohorts, None, start_period, columns).0 += size;
            }
            for (started, at) in reached.values() {
                let start_period = plan.period.index(*started);
                count_outcome(
                    tally(&mut cohorts, None, start_period, columns),
                    plan.period.index(*at) - start_period,
                );
            }
        }
        Some(by) => {
            let (reached, starts, groups) = tokio::try_join!(
                first_outcomes(store, connection.id, &plan),
                starts_in_range(store, connection.id, &plan),
                touches(store, connection.id, by)
            )?;
            for (record, started) in starts {
                let start_period = plan.period.index(started);
                let offset = reached
                    .get(&record)
                    .map(|(_, at)| plan.period.index(*at) - start_period);
                for name in group_names(groups.get(&record), plan.view) {
                    let counts = tally(&mut cohorts, name, start_period, columns);
                    counts.0 += 1;
                    if let Some(offset) = offset {
                        count_outcome(counts, offset);
                    }
                }
            }
        }
    }
    let cohorts = cohorts
        .into_iter()
        .map(|((group, start_period), (size, reached, later))| {
            let mut cumulative = 0;
            let columns = reached
                .iter()
                .enumerate()
                .map(|(offset, reached)| {
                    cumulative += reached;
                    CohortColumn {
                        offset: offset as u32,
                        period: plan.period.label(start_period + offset as i64),
                        reached: *reached,
                        cumulative,
                        cumulative_bp: share_bp(cumulative, size),
                    }
                })
                .collect();
            Cohort {
                group,
                period: plan.period.label(start_period),
                size,
                columns,
                later,
            }
        })
        .collect();
    Ok(CohortReport {
        connection: connection.name,
        period: plan.period,
        start: plan.start.as_str().into(),
        outcome: plan.outcome.as_str().into(),
        horizon: plan.horizon,
        by: plan.by,
        view: plan.view,
        cohorts,
    })
}

/// Each record whose first start event is in the plan's range, with its time.
async fn starts_in_range(
    store: &Store,
    connection_id: i64,
    plan: &Plan,
) -> Result<Vec<(i64, Millis)>, QueryError> {
    Ok(dispatch!(store.pool(), pool => sqlx::query_as(
        "SELECT record_id, occurred_at_ms FROM lifecycle_firsts WHERE connection_id = $1 AND event = $2 \
         AND (CAST($3 AS TEXT) IS NULL OR object_kind = $3) AND occurred_at_ms >= $4 AND occurred_at_ms < $5",
    )
    .bind(connection_id)
    .bind(plan.start.as_str())
    .bind(plan.kind.map(ObjectKind::as_str))
    .bind(plan.from.unwrap_or(Millis::MIN))
    .bind(plan.to.unwrap_or(Millis::MAX))
    .fetch_all(pool)
    .await)
    .during("read cohort start events")?)
}

/// One cohort's counts: size, first outcomes per period offset, outcomes after the horizon.
type Tally = (i64, Vec<i64>, i64);

/// The cohort of `group` starting in `start_period`, made empty on first use.
fn tally(
    cohorts: &mut BTreeMap<(Option<String>, i64), Tally>,
    group: Option<String>,
    start_period: i64,
    columns: usize,
) -> &mut Tally {
    cohorts
        .entry((group, start_period))
        .or_insert_with(|| (0, vec![0; columns], 0))
}

/// The earliest first start event of one kind in `[$4, $5)`: one index probe.
const NEXT_START: &str =
    "SELECT MIN(occurred_at_ms) FROM lifecycle_firsts WHERE connection_id = $1 \
     AND event = $2 AND object_kind = $3 AND occurred_at_ms >= $4 AND occurred_at_ms < $5";

/// Records of one kind whose first start event is in `[$4, $5)`: a range of the index of first
/// events by kind and time, counted without reading the table.
const STARTS_IN: &str = "SELECT COUNT(*) FROM lifecycle_firsts WHERE connection_id = $1 \
     AND event = $2 AND object_kind = $3 AND occurred_at_ms >= $4 AND occurred_at_ms < $5";

/// Records that reached the outcome, with their start and their first outcome at or after
/// it. Outcomes are few next to starts, so the search runs from each outcome to the records
/// it counts for: its own, and those linked to it either way round (a lead converted into
/// the won deal, a contact associated with it), found by store id in the links' indexes.
/// `timed` is materialized so that each hit's start is looked up once, not once per mention
/// of it.
const FIRST_OUTCOMES: &str = "WITH hits AS ( \
     SELECT o.record_id AS subject, o.occurred_at_ms AS at FROM lifecycle_events o \
     WHERE o.connection_id = $1 AND o.event = $3 AND (CAST($4 AS TEXT) IS NULL OR o.object_kind = $4) \
     UNION ALL SELECT k.from_record_id, o.occurred_at_ms FROM lifecycle_events o \
     JOIN record_links k ON k.to_record_id = o.record_id \
     WHERE o.connection_id = $1 AND o.event = $3 AND k.removed_at_ms IS NULL \
     AND k.relation IN ('converted_to', 'associated_with') \
     UNION ALL SELECT k.to_record_id, o.occurred_at_ms FROM lifecycle_events o \
     JOIN record_links k ON k.from_record_id = o.record_id \
     WHERE o.connection_id = $1 AND o.event = $3 AND k.removed_at_ms IS NULL \
     AND k.relation IN ('converted_to', 'associated_with')), \
     timed AS MATERIALIZED (SELECT h.subject, h.at, (SELECT f.occurred_at_ms FROM lifecycle_firsts f \
     WHERE f.connection_id = $1 AND f.event = $2 AND f.record_id = h.subject \
     AND (CAST($4 AS TEXT) IS NULL OR f.object_kind = $4)) AS started FROM hits h) \
     SELECT subject, started, MIN(at) AS reached FROM timed WHERE started IS NOT NULL AND at >= started \
     AND (CAST($5 AS BIGINT) IS NULL OR started >= $5) AND (CAST($6 AS BIGINT) IS NULL OR started < $6) \
     GROUP BY subject, started";

/// Cohort sizes by start period. For each kind of record, each period that holds a start is
/// found by an index probe and counted as one index range: several times cheaper than
/// grouping millions of rows by period, and a range per kind keeps the index narrowed to the
/// kind when none was asked for. Periods without starts cost nothing, so a stray date
/// decades away adds two queries, not one per period in between.
async fn starts_by_period(
    store: &Store,
    connection_id: i64,
    plan: &Plan,
) -> Result<Vec<(i64, i64)>, QueryError> {
    let kinds = match plan.kind {
        Some(kind) => vec![kind],
        None => ObjectKind::ALL.to_vec(),
    };
    let (from, to) = (
        plan.from.unwrap_or(Millis::MIN),
        plan.to.unwrap_or(Millis::MAX),
    );
    // Both queries take (connection, start event, kind, range) and answer one number.
    let over_starts = |sql: &'static str, kind: ObjectKind, (lo, hi): (Millis, Millis)| async move {
        let value: Option<i64> = dispatch!(store.pool(), pool => sqlx::query_scalar(sql)
            .bind(connection_id)
            .bind(plan.start.as_str())
            .bind(kind.as_str())
            .bind(lo)
            .bind(hi)
            .fetch_one(pool)
            .await)
        .during("count cohort starts")?;
        Ok::<_, QueryError>(value)
    };
    let mut sizes = Vec::new();
    for kind in kinds {
        let mut cursor = from;
        while let Some(next) = over_starts(NEXT_START, kind, (cursor, to)).await? {
            let period = plan.period.index(next);
            let end = plan.period.start_ms(period + 1).max(next + 1).min(to);
            let size = over_starts(STARTS_IN, kind, (cursor, end))
                .await?
                .unwrap_or(0);
            sizes.push((period, size));
            cursor = end;
        }
    }
    Ok(sizes)
}

/// Each record that reached the outcome: its start and its first outcome after it.
async fn first_outcomes(
    store: &Store,
    connection_id: i64,
    plan: &Plan,
) -> Result<HashMap<i64, (Millis, Millis)>, QueryError> {
    const DURING: &str = "read cohort outcomes";
    let rows: Vec<(i64, Millis, Millis)> = match store.pool() {
        Backend::Sqlite(pool) => {
            let params = vec![
                connection_id.into(),
                plan.start.as_str().to_string().into(),
                plan.outcome.as_str().to_string().into(),
                plan.kind.map(|kind| kind.as_str().to_string()).into(),
                plan.from.into(),
                plan.to.into(),
            ];
            fetch_all_sqlite(pool, DURING, FIRST_OUTCOMES, params).await?
        }
        Backend::Postgres(pool) => sqlx::query_as(FIRST_OUTCOMES)
            .bind(connection_id)
            .bind(plan.start.as_str())
            .bind(plan.outcome.as_str())
            .bind(plan.kind.map(ObjectKind::as_str))
            .bind(plan.from)
            .bind(plan.to)
            .fetch_all(pool)
            .await
            .during(DURING)?,
    };
    Ok(rows
        .into_iter()
        .map(|(record, started, at)| (record, (started, at)))
        .collect())
}

/// Campaign memberships (Salesforce CampaignMember rows) by the lead or contact they hold.
/// Each join matches on one indexed column: an `OR` or `IN` over two would scan every record.
const MEMBERSHIPS_SQLITE: &str = "SELECT p.id, COALESCE(m.crm_created_at_ms, m.first_seen_at_ms), \
     json_extract(m.fields, '$.CampaignId') FROM records m JOIN records p ON p.connection_id = m.connection_id \
     AND p.object_kind = 'lead' AND p.crm_id = json_extract(m.fields, '$.LeadId') \
     WHERE m.connection_id = $1 AND m.object_kind = 'campaign_member' AND m.deleted_at_ms IS NULL \
     UNION ALL SELECT p.id, COALESCE(m.crm_created_at_ms, m.first_seen_at_ms), \
     json_extract(m.fields, '$.CampaignId') FROM records m JOIN records p ON p.connection_id = m.connection_id \
     AND p.object_kind = 'contact' AND p.crm_id = json_extract(m.fields, '$.ContactId') \
     WHERE m.connection_id = $1 AND m.object_kind = 'campaign_member' AND m.deleted_at_ms IS NULL";
const MEMBERSHIPS_POSTGRES: &str =
    "SELECT p.id, COALESCE(m.crm_created_at_ms, m.first_seen_at_ms), \
     m.fields->>'CampaignId' FROM records m JOIN records p ON p.connection_id = m.connection_id \
     AND p.object_kind = 'lead' AND p.crm_id = m.fields->>'LeadId' \
     WHERE m.connection_id = $1 AND m.object_kind = 'campaign_member' AND m.deleted_at_ms IS NULL \
     UNION ALL SELECT p.id, COALESCE(m.crm_created_at_ms, m.first_seen_at_ms), \
     m.fields->>'CampaignId' FROM records m JOIN records p ON p.connection_id = m.connection_id \
     AND p.object_kind = 'contact' AND p.crm_id = m.fields->>'ContactId' \
     WHERE m.connection_id = $1 AND m.object_kind = 'campaign_member' AND m.deleted_at_ms IS NULL";

const OWNER_PATH: &str =
    "SELECT record_id, valid_from_ms, owner_id FROM record_versions WHERE connection_id = $1";
const SOURCE_PATH: &str =
    "SELECT record_id, valid_from_ms, source FROM record_versions WHERE connection_id = $1";
const CAMPAIGN_PATH: &str =
    "SELECT record_id, valid_from_ms, campaign_id FROM record_versions WHERE connection_id = $1";

/// Each record's values of the grouping field over time, oldest first.
async fn touches(
    store: &Store,
    connection_id: i64,
    by: CohortBy,
) -> Result<HashMap<i64, Vec<(Millis, String)>>, QueryError> {
    let mut sqls = vec![match by {
        CohortBy::Owner => OWNER_PATH,
        CohortBy::Source => SOURCE_PATH,
        CohortBy::Campaign => CAMPAIGN_PATH,
    }];
    if by == CohortBy::Campaign {
        sqls.push(match store.backend() {
            BackendKind::Sqlite => MEMBERSHIPS_SQLITE,
            BackendKind::Postgres => MEMBERSHIPS_POSTGRES,
        });
    }
    let mut by_record: HashMap<i64, Vec<(Millis, String)>> = HashMap::new();
    for sql in sqls {
        let rows: Vec<(i64, Millis, Option<String>)> =
            dispatch!(store.pool(), pool => sqlx::query_as(sql)
            .bind(connection_id)
            .fetch_all(pool)
            .await)
            .during("read the paths of cohort records")?;
        for (record, at, value) in rows {
            if let Some(value) = value {
                by_record.entry(record).or_default().push((at, value));
            }
        }
    }
    for path in by_record.values_mut() {
        path.sort();
    }
    Ok(by_record)
}

/// The groups a record counts in, under a view of its path.
fn group_names(path: Option<&Vec<(Millis, String)>>, view: PathView) -> Vec<Option<String>> {
    let Some(path) = path.filter(|p| !p.is_empty()) else {
        return vec![None];
    };
    match view {
        PathView::FirstTouch => vec![path.first().map(|(_, v)| v.clone())],
        PathView::Latest => vec![path.last().map(|(_, v)| v.clone())],
        PathView::Nurture => path
            .iter()
            .map(|(_, v)| v.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .map(Some)
            .collect(),
    }
}

impl Report for CohortReport {
    fn tables(&self) -> Vec<Table> {
        let mut columns: Vec<String> = vec!["group".into(), "cohort".into(), "size".into()];
        columns.extend((0..=self.horizon).map(|o| format!("+{o}")));
        columns.push("later".into());
        let mut table = Table::new(
            format!(
                "Cohorts by {} of `{}`, reaching `{}` (reached, cumulative rate)",
                match self.period {
                    Period::Month => "month",
                    Period::Quarter => "quarter",
                    Period::Year => "year",
                },
                self.start,
                self.outcome
            ),
            &[],
        );
        table.columns = columns;
        for cohort in &self.cohorts {
            let mut row = vec![
                cohort.group.clone().unwrap_or_default(),
                cohort.period.clone(),
                cohort.size.to_string(),
            ];
            row.extend(
                cohort
                    .columns
                    .iter()
                    .map(|c| format!("{} ({})", c.reached, format_bp(c.cumulative_bp))),
            );
            row.push(cohort.later.to_string());
            table.push(row);
        }
        vec![table]
    }
}

#[cfg(test)]
mod tests {
    use super::Period;

    #[test]
    fn a_period_starts_at_the_first_instant_its_index_holds() {
        const APRIL_1_2026: i64 = 1_775_001_600_000;
        assert_eq!(Period::Quarter.start_ms(2026 * 4 + 1), APRIL_1_2026);
        assert_eq!(Period::Month.start_ms(2026 * 12 + 3), APRIL_1_2026);
        assert_eq!(Period::Quarter.start_ms(1969 * 4 + 3), -7_948_800_000);
        for at in [
            -7_948_800_001,
            -1,
            0,
            APRIL_1_2026 - 1,
            APRIL_1_2026,
            1_775_811_600_000,
        ] {
            for period in [Period::Month, Period::Quarter, Period::Year] {
                let index = period.index(at);
                assert!(period.start_ms(index) <= at, "{period:?} {at}");
                assert!(at < period.start_ms(index + 1), "{period:?} {at}");
                assert_eq!(period.index(period.start_ms(index) - 1), index - 1);
            }
        }
        for period in [Period::Month, Period::Quarter, Period::Year] {
            assert!(period.index(i64::MIN) < period.index(-1), "{period:?}");
            assert!(
                period.index(i64::MAX) > period.index(APRIL_1_2026),
                "{period:?}"
            );
        }
    }
}
