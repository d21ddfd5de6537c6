//! One sync run of a Salesforce org.
//!
//! Order matters: stage metadata first (deal milestones need to know which stages are won and
//! lost), then the record objects, then the history objects. History is read only up to the
//! moment the record phase began, so every history row's parent has been stored by then.
//!
//! Records stream by (`SystemModstamp`, `Id`) with `>=`, so rows sharing one stamp across a
//! page boundary are never skipped; `queryAll` brings soft-deleted rows with `IsDeleted`. A
//! lost query locator (the token was renewed, the locator expired) restarts the query at the
//! last committed page; `QUERY_TIMEOUT` narrows the time window and tries again.

mod bulk;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::progress::Progress;
use super::salesforce_map::{
    conversion_links, history_row, lead_status_event, record_kind, record_row, user_owner, BadRow,
};
use super::{RunContext, SyncError};
use crate::config::settings::Endpoints;
use crate::crm::salesforce::{
    soql_datetime, FieldInfo, NextPageError, QueryPage, SalesforceClient,
};
use crate::crm::CrmError;
use crate::record::wall_clock;
use crate::record::{
    ActorKind, LifecycleEvent, Millis, ObjectKind, Origin, RecordObservation, RecordState,
};
use crate::store::{
    CreatedSpan, FieldChange, FieldDefinition, NewLifecycleEvent, NewStageTransition,
    ObservationOutcome, QuarantineEntry, StageDefinition, StoreTx,
};

/// Record objects in the order they are synced.
const RECORD_OBJECTS: &[&str] = &[
    "Account",
    "Campaign",
    "Contact",
    "Lead",
    "Opportunity",
    "CampaignMember",
];
/// History objects, with the field naming their parent and the parent's kind.
const HISTORY_OBJECTS: &[(&str, &str, ObjectKind)] = &[
    ("OpportunityHistory", "OpportunityId", ObjectKind::Deal),
    ("OpportunityFieldHistory", "OpportunityId", ObjectKind::Deal),
    ("LeadHistory", "LeadId", ObjectKind::Lead),
];
/// Describe types that cannot be selected as plain columns.
const COMPOUND_TYPES: &[&str] = &["address", "location", "base64"];
/// The narrowest window a timed-out query is split into before the run gives up.
const NARROWEST_WINDOW: Duration = Duration::from_secs(3600);
/// The start of time for a window over a stream that never ran (2000-01-01, before any org).
const OLDEST_POSSIBLE: Millis = 946_684_800_000;
/// The cursor that remembers when the last id sweep of an object began.
const ID_SWEEP_CURSOR: &str = "id_sweep";
/// The cursor that remembers where the formula refresh of an object is.
const FORMULA_REFRESH_CURSOR: &str = "formula_refresh";
/// History rows per parent record a backfill's first window is planned for: on the high side,
/// so that the first window seldom times out; windows widen from there at the density read.
const ASSUMED_HISTORY_PER_PARENT: u64 = 10;
/// Locator losses in a row after which the query is not restarted again.
const MAX_RESTARTS: u32 = 10;

/// Where a history backfill's windows start and how wide the first one is.
struct BackfillPlan {
    /// The oldest parent's creation. History is not older than its record, yet the first
    /// window reaches back to 2000 all the same, as far as any stream's narrowing does.
    oldest: Millis,
    /// The first window's width past `oldest`.
    width: Duration,
}

/// How a windowed read sizes its time windows. It is saved with the cursor, so that a read cut
/// short (budget, stop, crash) goes on with the windows it had learned, rather than one query
/// from its checkpoint that times out and is halved again.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
struct Windows {
    /// Width of the window being read.
    width_ms: u64,
    /// The most rows a window of this read has held.
    fullest: u64,
    /// A window timed out: from then on each window aims at half the fullest that answered
    /// and is never narrower than the one before.
    timed_out: bool,
}

impl Windows {
    /// The windows of a planned backfill, starting at `width`.
    fn planned(width: Duration) -> Windows {
        Windows {
            width_ms: width.as_millis() as u64,
            fullest: 0,
            timed_out: false,
        }
    }

    /// Sizes the next window after one that answered with `rows` rows. Until a window times
    /// out, windows keep to `planned_rows` (a plan's density is a guess) and may narrow by
    /// half; after a timeout a window that answered is known to fit, so the next is never
    /// narrower.
    fn answered(&mut self, rows: u64, planned_rows: u64) {
        self.fullest = self.fullest.max(rows);
        let (aim, least) = if self.timed_out {
            (self.fullest / 2, 1.0)
        } else {
            (planned_rows, 0.5)
        };
        self.width_ms = resized(self.width(), rows, aim, least).as_millis() as u64;
    }

    fn width(&self) -> Duration {
        Duration::from_millis(self.width_ms)
    }
}

/// What a stream reads and how its rows are stored.
struct Stream {
    object: &'static str,
    /// `records` or `history`: the cursor's name.
    cursor: &'static str,
    select: String,
    stamp_field: &'static str,
    query_all: bool,
    rows: Rows,
    /// Field name → `describe` type, for typing Bulk API CSV rows (record streams).
    field_types: HashMap<String, String>,
    /// Some selected field is a formula or roll-up, whose changes the stamp does not show.
    formulas: bool,
}

enum Rows {
    Records(ObjectKind),
    History {
        parent_field: &'static str,
        parent_kind: ObjectKind,
    },
}

/// One run over one Salesforce connection.
struct Run<'c, 'a> {
    ctx: &'c mut RunContext<'a>,
    client: SalesforceClient<'a>,
    /// REST version (`v62.0`), for the Bulk API resources.
    version: String,
    stages: HashMap<String, StageDefinition>,
    /// Who each user is (person, integration, automation), for the moves they make.
    actors: HashMap<String, ActorKind>,
    /// The org's clock at the last answer; observation times come from it, so that they are
    /// comparable with the org's own stamps whatever this host's clock says.
    server_now: Option<Millis>,
    /// The oldest snapshot a record object was read from in this run, when a bulk job an
    /// earlier run created was read on: history is read no further, so that every history
    /// row's parent is stored.
    oldest_snapshot: Option<Millis>,
    /// Stored parents per kind, counted once per run for the history backfills that plan
    /// windows (OpportunityHistory and OpportunityFieldHistory share theirs).
    created_spans: HashMap<ObjectKind, CreatedSpan>,
}

/// Syncs a Salesforce connection: stages, then records, then history.
pub(crate) async fn sync(ctx: &mut RunContext<'_>) -> Result<(), SyncError> {
    Run::new(ctx).sync().await
}

impl<'c, 'a> Run<'c, 'a> {
    fn new(ctx: &'c mut RunContext<'a>) -> Run<'c, 'a> {
        let version = match &ctx.settings.endpoints {
            Endpoints::Salesforce { api_version, .. } => api_version.as_str(),
            Endpoints::Hubspot { .. } => {
                unreachable!("a Salesforce run needs a Salesforce connection")
            }
        };
        Run {
            client: SalesforceClient::new(ctx.api, version),
            version: version.to_string(),
            ctx,
            stages: HashMap::new(),
            actors: HashMap::new(),
            server_now: None,
            oldest_snapshot: None,
            created_spans: HashMap::new(),
        }
    }

    async fn sync(&mut self) -> Result<(), SyncError> {
        self.sync_stages().await?;
        let history_until = self.now();
        let mut with_formulas = Vec::new();
        for object in RECORD_OBJECTS {
            if self.configured(object) {
                let stream = self.record_stream(object).await?;
                self.run_stream(&stream, None).await?;
                if stream.formulas {
                    with_formulas.push(stream);
                }
            }
        }
        for (object, parent_field, parent_kind) in HISTORY_OBJECTS {
            if self.configured(object) {
                let stream = history_stream(object, parent_field, *parent_kind);
                let until = self
                    .oldest_snapshot
                    .map_or(history_until, |s| s.min(history_until));
                self.run_stream(&stream, Some(until)).await?;
            }
        }
        // CampaignMember deletes are hard (queryAll never shows them), and other deletes leave
        // the Recycle Bin after 15 days or when it is emptied: past that only a missing id
        // tells a record is gone.
        for object in RECORD_OBJECTS {
            if self.configured(object) {
                self.sweep_ids(object).await?;
            }
        }
        // Last, so that a long refresh cut short by the budget or a stop never keeps the
        // history and the sweeps from running.
        for stream in &with_formulas {
            self.refresh_formulas(stream).await?;
        }
        Ok(())
    }

    /// Finds records of `object` deleted for good, at most once per `id_sweep_interval`: every
    /// id the org still has is marked seen, then the records not seen since the sweep began are
    /// stored as deleted. A sweep cut short marks nothing deleted; the next run sweeps again.
    async fn sweep_ids(&mut self, object: &'static str) -> Result<(), SyncError> {
        let Some(every) = self.ctx.settings.id_sweep_interval else {
            return Ok(());
        };
        let kind = record_kind(object).expect("swept objects are record objects");
        let started = self.now();
        let last = self
            .ctx
            .store
            .cursor(self.ctx.connection_id, object, ID_SWEEP_CURSOR)
            .await?
            .and_then(|position| position.get("started").and_then(Value::as_i64));
        // Without a sweep before (a first backfill, or a store from before sweeps existed),
        // the first sweep is only scheduled: deleting what this run did not mark seen would
        // delete every member that an earlier page or run stored.
        let Some(last) = last else {
            return self
                .save_position(object, ID_SWEEP_CURSOR, json!({ "started": started }))
                .await;
        };
        if started - last < every.as_millis() as Millis {
            return Ok(());
        }
        if !self.mark_ids_seen(object, kind, started).await? {
            return Ok(());
        }
        let deleted = self.store_unseen_as_deleted(object, kind, started).await?;
        if deleted > 0 {
            tracing::info!(connection = %self.ctx.settings.name, object, deleted,
                "id sweep found records deleted for good in the CRM");
        }
        self.save_position(object, ID_SWEEP_CURSOR, json!({ "started": started }))
            .await
    }

    /// Reads every live row of a record object again, at most once per
    /// `formula_refresh_interval`, so that formula and roll-up values that changed without
    /// the row's stamp moving are stored (as versions starting when they were observed). The
    /// rows are read in `Id` order and the last stored `Id` is checkpointed with each page, so
    /// a refresh cut short (budget, shutdown, lost locator) goes on where it stopped.
    async fn refresh_formulas(&mut self, stream: &Stream) -> Result<(), SyncError> {
        let Some(every) = self.ctx.settings.formula_refresh_interval else {
            return Ok(());
        };
        let position = self
            .ctx
            .store
            .cursor(
                self.ctx.connection_id,
                stream.object,
                FORMULA_REFRESH_CURSOR,
            )
            .await?;
        let (started, after) = match FormulaRefresh::due(position.as_ref(), self.now(), every) {
            FormulaRefresh::NeverRan => {
                // The backfill that just ran read every row: the first refresh is a period away.
                let now = self.now();
                return self.save_formula_done(stream.object, now).await;
            }
            FormulaRefresh::NotDue => return Ok(()),
            FormulaRefresh::Reading { started, after } => (started, after),
        };
        let mut after = after;
        let mut restarts = 0;
        loop {
            let soql = formula_refresh_soql(stream, after.as_deref())?;
            let mut page = self
                .client
                .query(&soql, false, self.ctx.settings.page_size)
                .await?;
            loop {
                self.server_now = page.server_time.or(self.server_now);
                after = self
                    .store_refreshed_page(stream, &page, started, after)
                    .await?;
                self.ctx.check_stop()?;
                match self.client.next_page(&page).await {
                    Ok(Some(next)) => page = next,
                    Ok(None) => {
                        tracing::info!(connection = %self.ctx.settings.name, object = stream.object,
                            "formula refresh done");
                        let done_at = self.now();
                        return self.save_formula_done(stream.object, done_at).await;
                    }
                    Err(NextPageError::LocatorLost) if restarts < MAX_RESTARTS => {
                        restarts += 1;
                        break;
                    }
                    Err(NextPageError::LocatorLost) => {
                        tracing::warn!(connection = %self.ctx.settings.name, object = stream.object,
                            "query locator lost {MAX_RESTARTS} times in a row during the formula refresh; it goes on next run");
                        return Ok(());
                    }
                    Err(NextPageError::Failed(err)) => return Err(err.into()),
                }
            }
        }
    }

    /// Stores one page of a formula refresh and its checkpoint in one transaction; returns the
    /// last `Id` read.
    async fn store_refreshed_page(
        &mut self,
        stream: &Stream,
        page: &QueryPage,
        started: Millis,
        after: Option<String>,
    ) -> Result<Option<String>, SyncError> {
        let Rows::Records(kind) = stream.rows else {
            unreachable!("formula refreshes read record objects")
        };
        let observed_at = page.server_time.unwrap_or_else(|| self.now());
        let last = page
            .records
            .iter()
            .filter_map(|row| row.get("Id").and_then(Value::as_str))
            .max()
            .map(str::to_string)
            .or(after);
        let mut tx = self.ctx.begin().await?;
        self.store_records(&mut tx, stream, kind, &page.records, observed_at)
            .await?;
        tx.save_cursor(
            self.ctx.connection_id,
            stream.object,
            FORMULA_REFRESH_CURSOR,
            &json!({ "started": started, "reading": true, "after": last }),
            Some(self.ctx.run_id),
            observed_at,
        )
        .await?;
        tx.commit().await?;
        Ok(last)
    }

    /// Remembers that a formula refresh of `object` ended (or, before the first, was
    /// scheduled) at `done_at`: the next is due an interval later, so that a refresh longer
    /// than the interval is not followed by another at once.
    async fn save_formula_done(&mut self, object: &str, done_at: Millis) -> Result<(), SyncError> {
        let position = json!({ "done_at": done_at, "reading": false });
        self.save_position(object, FORMULA_REFRESH_CURSOR, position)
            .await
    }

    /// Saves a cursor position of `object` in a transaction of its own: the formula refresh
    /// and the id sweep remember when they last ended or began.
    async fn save_position(
        &mut self,
        object: &str,
        cursor: &str,
        position: Value,
    ) -> Result<(), SyncError> {
        let mut tx = self.ctx.begin().await?;
        tx.save_cursor(
            self.ctx.connection_id,
            object,
            cursor,
            &position,
            Some(self.ctx.run_id),
            self.now(),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Pages through every id of `object`, marking each stored record seen; false when the
    /// query locator was lost and the sweep must wait for the next run.
    async fn mark_ids_seen(
        &mut self,
        object: &str,
        kind: ObjectKind,
        started: Millis,
    ) -> Result<bool, SyncError> {
        let mut page = self
            .client
            .query(&format!("SELECT Id FROM {object}"), false, 2_000)
            .await?;
        loop {
            self.server_now = page.server_time.or(self.server_now);
            let ids: Vec<&str> = page
                .records
                .iter()
                .filter_map(|row| row.get("Id").and_then(Value::as_str))
                .collect();
            let mut tx = self.ctx.begin().await?;
            tx.mark_seen(self.ctx.connection_id, kind, &ids, self.now().max(started))
                .await?;
            tx.commit().await?;
            self.ctx.check_stop()?;
            match self.client.next_page(&page).await {
                Ok(Some(next)) => page = next,
                Ok(None) => return Ok(true),
                Err(NextPageError::LocatorLost) => {
                    tracing::info!(connection = %self.ctx.settings.name, object,
                        "query locator lost during the id sweep; the next run sweeps again");
                    return Ok(false);
                }
                Err(NextPageError::Failed(err)) => return Err(err.into()),
            }
        }
    }

    /// Stores a deleted version of every live record of `kind` not seen since `started`;
    /// returns how many there were. The CRM keeps no trace of when, so the sweep's start
    /// stands for the deletion time.
    async fn store_unseen_as_deleted(
        &mut self,
        object: &str,
        kind: ObjectKind,
        started: Millis,
    ) -> Result<u64, SyncError> {
        let mut deleted = 0;
        loop {
            let gone = self
                .ctx
                .store
                .unseen_since(self.ctx.connection_id, kind, started, 500)
                .await?;
            if gone.is_empty() {
                return Ok(deleted);
            }
            let observations: Vec<RecordObservation> = gone
                .into_iter()
                .map(|record| RecordObservation {
                    connection_id: self.ctx.connection_id,
                    kind,
                    crm_object: object.to_string(),
                    crm_id: record.crm_id,
                    state: record.state,
                    deleted: true,
                    modified_at: started.max(record.crm_modified_at),
                    observed_at: started.max(record.last_seen_at),
                    sync_run_id: Some(self.ctx.run_id),
                })
                .collect();
            let mut tx = self.ctx.begin().await?;
            let outcomes = tx.apply_observations(&observations).await?;
            tx.commit().await?;
            let written = outcomes.iter().filter(|o| o.wrote_version()).count();
            if written == 0 {
                // Nothing changed, so the same records would come back: stop rather than spin.
                return Ok(deleted);
            }
            deleted += written as u64;
            self.ctx.counters.versions_written += written as i64;
        }
    }

    fn configured(&self, object: &str) -> bool {
        self.ctx.settings.objects.iter().any(|o| o == object)
    }

    fn now(&self) -> Millis {
        self.server_now.unwrap_or_else(wall_clock)
    }

    /// OpportunityStage and LeadStatus: the order and meaning of stages and statuses; and the
    /// org's users, who own records and make the moves.
    async fn sync_stages(&mut self) -> Result<(), SyncError> {
        let deal_stages = self
            .query_small(
                "SELECT Id, ApiName, MasterLabel, SortOrder, IsActive, IsClosed, IsWon, DefaultProbability \
                 FROM OpportunityStage ORDER BY SortOrder",
            )
            .await?;
        let lead_statuses = self
            .query_small("SELECT Id, ApiName, MasterLabel, SortOrder, IsConverted FROM LeadStatus ORDER BY SortOrder")
            .await?;
        let definitions: Vec<StageDefinition> = deal_stages
            .iter()
            .map(|row| stage_definition(ObjectKind::Deal, row))
            .chain(
                lead_statuses
                    .iter()
                    .map(|row| stage_definition(ObjectKind::Lead, row)),
            )
            .collect();
        let users = match self
            .query_small("SELECT Id, Name, Email, IsActive, Department, UserType FROM User")
            .await
        {
            Ok(users) => users,
            // Without users, moves keep an unknown actor; that must not stop the sync.
            Err(SyncError::Crm(err @ CrmError::Api { .. })) => {
                tracing::warn!(connection = %self.ctx.settings.name, error = %err,
                    "cannot read User; stage moves are stored without their actor kind");
                Vec::new()
            }
            Err(err) => return Err(err),
        };
        let session_user = self.ctx.api.session_user_id().await?;
        let mut tx = self.ctx.begin().await?;
        for definition in &definitions {
            tx.upsert_stage_definition(self.ctx.connection_id, definition, self.now())
                .await?;
        }
        for (owner, actor) in users
            .iter()
            .filter_map(|row| user_owner(row, session_user.as_deref()))
        {
            tx.upsert_owner(self.ctx.connection_id, &owner, self.now())
                .await?;
            self.actors.insert(owner.crm_id, actor);
        }
        tx.commit().await?;
        self.stages = definitions
            .into_iter()
            .filter(|d| d.kind == ObjectKind::Deal)
            .map(|d| (d.stage.clone(), d))
            .collect();
        Ok(())
    }

    /// A query whose answer fits one page.
    async fn query_small(&mut self, soql: &str) -> Result<Vec<Map<String, Value>>, SyncError> {
        let page = self.client.query(soql, false, 2_000).await?;
        self.server_now = page.server_time.or(self.server_now);
        Ok(page.records)
    }

    /// Keeps the object's fields as `describe` lists them, for `rules check`: those the sync
    /// reads (compound fields are not selected, only their components).
    async fn store_field_definitions(
        &mut self,
        object: &str,
        fields: &[FieldInfo],
    ) -> Result<(), SyncError> {
        let definitions: Vec<FieldDefinition> = fields
            .iter()
            .filter(|f| !COMPOUND_TYPES.contains(&f.data_type.as_str()))
            .map(|f| FieldDefinition {
                field: f.name.clone(),
                label: f.label.clone(),
                data_type: f.data_type.clone(),
                filterable: f.filterable,
                is_custom: f.custom,
            })
            .collect();
        let mut tx = self.ctx.begin().await?;
        let now = self.now();
        tx.replace_field_definitions(self.ctx.connection_id, object, &definitions, now)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The fields to select: every plain field `describe` lists, and a warning for configured
    /// custom fields it does not (the integration user may lack field-level access).
    async fn record_stream(&mut self, object: &'static str) -> Result<Stream, SyncError> {
        let fields = self.client.describe(object).await?;
        self.store_field_definitions(object, &fields).await?;
        let wanted_custom = self
            .ctx
            .settings
            .custom_fields
            .iter()
            .filter_map(|name| name.split_once('.'))
            .filter(|(owner, _)| *owner == object);
        for (_, field) in wanted_custom {
            if !fields.iter().any(|f| f.name == field) {
                tracing::warn!(connection = %self.ctx.settings.name, object, field,
                    "custom_fields names {object}.{field}, but describe does not list it (missing, or hidden from the integration user); it is not synced");
            }
        }
        let filterable = |name: &str| fields.iter().any(|f| f.name == name && f.filterable);
        let stamp_field = ["SystemModstamp", "LastModifiedDate", "CreatedDate"]
            .into_iter()
            .find(|name| filterable(name))
            .unwrap_or("CreatedDate");
        let select = fields
            .iter()
            .filter(|f| !COMPOUND_TYPES.contains(&f.data_type.as_str()))
            .map(|f| f.name.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let kind = record_kind(object).expect("record objects all have a kind");
        let field_types = fields
            .iter()
            .map(|f| (f.name.clone(), f.data_type.clone()))
            .collect();
        let formulas = fields
            .iter()
            .any(|f| f.calculated && !COMPOUND_TYPES.contains(&f.data_type.as_str()));
        Ok(Stream {
            object,
            cursor: "records",
            select,
            stamp_field,
            // CampaignMember deletes are hard: queryAll shows no more than query does.
            query_all: true,
            rows: Rows::Records(kind),
            field_types,
            formulas,
        })
    }

    /// Reads a stream from its checkpoint (less the lookback) to `until` (exclusive): through
    /// a Bulk API job when the window is large (or a job is being read), else REST pages.
    async fn run_stream(
        &mut self,
        stream: &Stream,
        until: Option<Millis>,
    ) -> Result<(), SyncError> {
        let position = self
            .ctx
            .store
            .cursor(self.ctx.connection_id, stream.object, stream.cursor)
            .await?;
        let checkpoint = position
            .as_ref()
            .and_then(|position| position.get("stamp").and_then(Value::as_i64));
        let lookback = self.ctx.settings.lookback.as_millis() as Millis;
        let mut from = checkpoint.map(|stamp| stamp - lookback);
        if self.run_bulk_stream(stream, &position, from, until).await? {
            return Ok(());
        }
        // A read cut short (budget, stop, crash) resumes with the windows it had learned.
        let mut windows = position
            .as_ref()
            .and_then(|position| position.get("windows"))
            .and_then(|saved| serde_json::from_value::<Windows>(saved.clone()).ok());
        // Windows start no earlier than this (the oldest parent of a planned history backfill).
        let mut floor = None;
        if checkpoint.is_none() {
            if let Some(plan) = self.plan_history_backfill(stream).await? {
                from = Some(OLDEST_POSSIBLE);
                windows = Some(Windows::planned(plan.width));
                floor = Some(plan.oldest);
            }
        }
        let mut restarts = 0;
        loop {
            let upper = match (windows, from) {
                (Some(windows), Some(start)) => {
                    Some(start.max(floor.unwrap_or(start)) + windows.width_ms as Millis)
                }
                _ => None,
            };
            let upper = match (upper, until) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let soql = stream_soql(stream, from, upper);
            let first = match self
                .client
                .query(&soql, stream.query_all, self.ctx.settings.page_size)
                .await
            {
                Ok(page) => page,
                Err(err) if err.code() == Some("QUERY_TIMEOUT") => {
                    windows = Some(self.narrower(stream, windows, from, err)?);
                    from = Some(from.unwrap_or(OLDEST_POSSIBLE));
                    continue;
                }
                Err(err) => return Err(err.into()),
            };
            let rows = first.total_size;
            match self.read_pages(stream, first, windows.as_ref()).await? {
                PagesEnd::Done => {
                    restarts = 0;
                    if let Some(windows) = windows.as_mut() {
                        windows.answered(rows, self.ctx.settings.history_window_rows);
                    }
                }
                PagesEnd::LocatorLost(last_stamp) => {
                    restarts += 1;
                    if restarts > MAX_RESTARTS {
                        return Err(SyncError::Crm(CrmError::Decode {
                            connection: self.ctx.settings.name.clone(),
                            request: format!("query of {}", stream.object),
                            detail: format!(
                                "the query locator was lost {MAX_RESTARTS} times in a row"
                            ),
                        }));
                    }
                    from = last_stamp.or(from);
                    continue;
                }
            }
            match upper {
                Some(end) if until.is_none_or(|until| end < until) && end < self.now() => {
                    from = Some(end)
                }
                _ if windows.is_some() => return self.forget_windows(stream).await,
                _ => return Ok(()),
            }
        }
    }

    /// Drops the windows from a stream's cursor once its read has caught up: the next runs
    /// read the little that is new in one query, rather than widening from the last width.
    async fn forget_windows(&mut self, stream: &Stream) -> Result<(), SyncError> {
        let position = self
            .ctx
            .store
            .cursor(self.ctx.connection_id, stream.object, stream.cursor)
            .await?;
        let Some(stamp) = position
            .filter(|position| position.get("windows").is_some())
            .and_then(|position| position.get("stamp").and_then(Value::as_i64))
        else {
            return Ok(());
        };
        self.save_position(stream.object, stream.cursor, json!({ "stamp": stamp }))
            .await
    }

    /// The first windows of a history stream that never ran, when its parents are too many
    /// for one query: one wide query over millions of history rows would time out (after two
    /// minutes on a real org) once per halving before any row is read. `None` reads the
    /// stream in one query, as for record objects and small orgs.
    async fn plan_history_backfill(
        &mut self,
        stream: &Stream,
    ) -> Result<Option<BackfillPlan>, SyncError> {
        let Rows::History { parent_kind, .. } = stream.rows else {
            return Ok(None);
        };
        let parents = match self.created_spans.get(&parent_kind) {
            Some(span) => *span,
            None => {
                let span = self
                    .ctx
                    .store
                    .created_span(self.ctx.connection_id, parent_kind)
                    .await?;
                self.created_spans.insert(parent_kind, span);
                span
            }
        };
        let Some(oldest) = parents.oldest else {
            return Ok(None);
        };
        let expected = parents.count.saturating_mul(ASSUMED_HISTORY_PER_PARENT);
        let aim = self.ctx.settings.history_window_rows;
        let span = (self.now() - oldest).max(0) as u64;
        if expected <= aim || span == 0 {
            return Ok(None);
        }
        let width = Duration::from_millis(span)
            .mul_f64(aim as f64 / expected as f64)
            .max(NARROWEST_WINDOW);
        tracing::info!(connection = %self.ctx.settings.name, object = stream.object,
            parents = parents.count, window_hours = width.as_secs() / 3600,
            "reading history in time windows");
        Ok(Some(BackfillPlan { oldest, width }))
    }

    /// Halves the time window of a query that timed out, down to an hour.
    fn narrower(
        &self,
        stream: &Stream,
        windows: Option<Windows>,
        from: Option<Millis>,
        err: CrmError,
    ) -> Result<Windows, SyncError> {
        let span = (self.now() - from.unwrap_or(OLDEST_POSSIBLE)).max(0) as u64;
        let next = windows.map_or(span, |windows| windows.width_ms) / 2;
        if next < NARROWEST_WINDOW.as_millis() as u64 {
            return Err(err.into());
        }
        tracing::warn!(connection = %self.ctx.settings.name, object = stream.object,
            window_hours = next / 3_600_000, "query timed out; narrowing its time window");
        Ok(Windows {
            width_ms: next,
            fullest: windows.map_or(0, |windows| windows.fullest),
            timed_out: true,
        })
    }

    /// Stores page after page; says where it stopped if the locator was lost.
    async fn read_pages(
        &mut self,
        stream: &Stream,
        first: QueryPage,
        windows: Option<&Windows>,
    ) -> Result<PagesEnd, SyncError> {
        let connection = self.ctx.settings.name.clone();
        let mut progress = Progress::new(&connection, stream.object, first.total_size);
        let mut page = first;
        let mut last_stamp = None;
        loop {
            self.server_now = page.server_time.or(self.server_now);
            if let Some(stamp) = self.store_page(stream, &page, windows).await? {
                last_stamp = Some(stamp);
            }
            progress.advance(page.records.len());
            self.ctx.check_stop()?;
            match self.client.next_page(&page).await {
                Ok(Some(next)) => page = next,
                Ok(None) => return Ok(PagesEnd::Done),
                Err(NextPageError::LocatorLost) => {
                    tracing::info!(connection = %self.ctx.settings.name, object = stream.object,
                        "query locator lost (token renewed or locator expired); restarting the query at the last checkpoint");
                    return Ok(PagesEnd::LocatorLost(last_stamp));
                }
                Err(NextPageError::Failed(err)) => return Err(err.into()),
            }
        }
    }

    /// One page and its cursor (with the read's windows, if any) in one transaction; returns
    /// the page's newest stamp.
    async fn store_page(
        &mut self,
        stream: &Stream,
        page: &QueryPage,
        windows: Option<&Windows>,
    ) -> Result<Option<Millis>, SyncError> {
        let observed_at = page.server_time.unwrap_or_else(|| self.now());
        let mut tx = self.ctx.begin().await?;
        let newest = match &stream.rows {
            Rows::Records(kind) => {
                self.store_records(&mut tx, stream, *kind, &page.records, observed_at)
                    .await?
            }
            Rows::History {
                parent_field,
                parent_kind,
            } => {
                self.store_history(
                    &mut tx,
                    stream.object,
                    parent_field,
                    *parent_kind,
                    &page.records,
                    observed_at,
                )
                .await?
            }
        };
        if let Some(stamp) = newest {
            tx.save_cursor(
                self.ctx.connection_id,
                stream.object,
                stream.cursor,
                &stream_position(stamp, windows),
                Some(self.ctx.run_id),
                observed_at,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(newest)
    }

    async fn quarantine(
        &mut self,
        tx: &mut StoreTx,
        object: &str,
        bad: BadRow,
        row: &Map<String, Value>,
        seen_at: Millis,
    ) -> Result<(), SyncError> {
        tracing::warn!(connection = %self.ctx.settings.name, object, id = %bad.crm_id, reason = %bad.reason, "record quarantined");
        let payload = Value::Object(row.clone()).to_string();
        tx.quarantine(&QuarantineEntry {
            connection_id: self.ctx.connection_id,
            crm_object: object,
            crm_id: &bad.crm_id,
            reason: &bad.reason,
            payload: Some(&payload),
            sync_run_id: Some(self.ctx.run_id),
            seen_at,
        })
        .await?;
        self.ctx.counters.quarantined += 1;
        Ok(())
    }

    /// Stores a page of record rows as observations, and what their changes say: an observed
    /// stage move when the CRM's own history of it is not synced, a creation as a milestone.
    /// Returns the page's newest stamp.
    async fn store_records(
        &mut self,
        tx: &mut StoreTx,
        stream: &Stream,
        kind: ObjectKind,
        rows: &[Map<String, Value>],
        observed_at: Millis,
    ) -> Result<Option<Millis>, SyncError> {
        self.ctx.counters.records_seen += rows.len() as i64;
        let mut observations = Vec::with_capacity(rows.len());
        for row in rows {
            match record_row(stream.object, stream.stamp_field, row) {
                Ok(parsed) => observations.push(RecordObservation {
                    connection_id: self.ctx.connection_id,
                    kind,
                    crm_object: stream.object.to_string(),
                    crm_id: parsed.crm_id,
                    state: parsed.state,
                    deleted: parsed.deleted,
                    modified_at: parsed.modified_at,
                    observed_at,
                    sync_run_id: Some(self.ctx.run_id),
                }),
                Err(bad) => {
                    self.quarantine(tx, stream.object, bad, row, observed_at)
                        .await?
                }
            }
        }
        let outcomes = tx.apply_observations(&observations).await?;
        let mut written = Vec::new();
        let mut milestones = Vec::new();
        let mut links = Vec::new();
        for (observation, outcome) in observations.iter().zip(&outcomes) {
            if !outcome.wrote_version() {
                continue;
            }
            written.push(observation.crm_id.as_str());
            if kind == ObjectKind::Lead {
                links.extend(conversion_links(&observation.crm_id, &observation.state));
            }
            if let (ObservationOutcome::Created { record_id }, Some(created)) =
                (outcome, observation.state.crm_created_at)
            {
                milestones.push(self.milestone(
                    *record_id,
                    kind,
                    LifecycleEvent::Created,
                    created,
                    Origin::CrmField,
                    observed_at,
                ));
            }
            if !self.history_covers(kind) {
                self.observed_move(tx, observation, outcome).await?;
            }
        }
        self.ctx.counters.versions_written += written.len() as i64;
        tx.release_from_quarantine(self.ctx.connection_id, stream.object, &written, observed_at)
            .await?;
        tx.record_lifecycle_events(&milestones).await?;
        tx.upsert_links(self.ctx.connection_id, &links, observed_at)
            .await?;
        Ok(observations.iter().map(|obs| obs.modified_at).max())
    }

    /// Whether the CRM's own history of this kind's stage is synced.
    fn history_covers(&self, kind: ObjectKind) -> bool {
        match kind {
            ObjectKind::Deal => self.configured("OpportunityHistory"),
            ObjectKind::Lead => self.configured("LeadHistory"),
            _ => true,
        }
    }

    /// A stage or status change seen between two observations.
    async fn observed_move(
        &mut self,
        tx: &mut StoreTx,
        observation: &RecordObservation,
        outcome: &ObservationOutcome,
    ) -> Result<(), SyncError> {
        let Some(to) = stage_of(observation.kind, &observation.state) else {
            return Ok(());
        };
        let (from, at) = match outcome {
            ObservationOutcome::Created { .. } => (
                None,
                observation
                    .state
                    .crm_created_at
                    .unwrap_or(observation.modified_at),
            ),
            ObservationOutcome::Changed { previous, .. } => {
                let from = stage_of(observation.kind, &previous.state);
                if from.as_deref() == Some(to.as_str()) {
                    return Ok(());
                }
                (from, observation.modified_at)
            }
            _ => return Ok(()),
        };
        let move_ = Move {
            record_id: outcome.record_id(),
            kind: observation.kind,
            from: from.as_deref(),
            to: &to,
            at,
            by: None,
            source: None,
            origin: Origin::ObservedDiff,
            history_id: None,
            amount_cents: observation.state.amount_cents,
            observed_at: observation.observed_at,
        };
        self.record_moves(tx, &[move_]).await
    }

    /// Stores a page of history rows: stage changes (OpportunityHistory), or field changes
    /// with the status moves they may be (LeadHistory `Status`). Returns the page's newest
    /// stamp.
    async fn store_history(
        &mut self,
        tx: &mut StoreTx,
        object: &str,
        parent_field: &str,
        parent_kind: ObjectKind,
        rows: &[Map<String, Value>],
        observed_at: Millis,
    ) -> Result<Option<Millis>, SyncError> {
        self.ctx.counters.records_seen += rows.len() as i64;
        let mut changes = Vec::with_capacity(rows.len());
        for row in rows {
            match history_row(object, parent_field, row) {
                Ok(change) => changes.push((change, row)),
                Err(bad) => self.quarantine(tx, object, bad, row, observed_at).await?,
            }
        }
        let parent_ids: Vec<&str> = changes.iter().map(|(c, _)| c.parent_id.as_str()).collect();
        let parents = tx
            .record_ids(self.ctx.connection_id, parent_kind, &parent_ids)
            .await?;
        let mut timelines = if object == "OpportunityHistory" {
            let ids: Vec<i64> = parents.values().copied().collect();
            tx.stage_timelines(&ids).await?
        } else {
            HashMap::new()
        };
        let mut stored = Vec::with_capacity(changes.len());
        for (change, row) in &changes {
            match parents.get(&change.parent_id) {
                Some(record_id) => stored.push((*record_id, change)),
                None => {
                    let bad = BadRow {
                        reason: format!(
                            "{object} {}: its {parent_field} {} is not in the store (deleted and purged before it was synced?)",
                            change.history_id, change.parent_id
                        ),
                        crm_id: change.history_id.clone(),
                    };
                    self.quarantine(tx, object, bad, row, observed_at).await?
                }
            }
        }
        let mut moves = Vec::new();
        let mut field_changes = Vec::new();
        for (record_id, change) in &stored {
            let stage_move = match (object, change.field.as_str()) {
                ("OpportunityHistory", _) => value_text(&change.new_value).and_then(|to| {
                    let timeline = timelines.entry(*record_id).or_default();
                    let from = stage_before(timeline, change.changed_at);
                    if from.as_deref() == Some(to.as_str()) {
                        return None;
                    }
                    enter_stage(timeline, change.changed_at, &to);
                    Some((from, to))
                }),
                ("LeadHistory", "Status") => {
                    value_text(&change.new_value).map(|to| (value_text(&change.old_value), to))
                }
                _ => None,
            };
            if object != "OpportunityHistory" {
                field_changes.push(FieldChange {
                    record_id: *record_id,
                    field: &change.field,
                    old_value: change.old_value.as_ref(),
                    new_value: change.new_value.as_ref(),
                    changed_at: change.changed_at,
                    changed_by: change.changed_by.as_deref(),
                    change_source: Some(object),
                    dedupe_key: &change.history_id,
                });
            }
            if let Some((from, to)) = stage_move {
                moves.push((*record_id, change, from, to));
            }
        }
        tx.record_field_changes(&field_changes).await?;
        let moves: Vec<Move> = moves
            .iter()
            .map(|(record_id, change, from, to)| Move {
                record_id: *record_id,
                kind: parent_kind,
                from: from.as_deref(),
                to,
                at: change.changed_at,
                by: change.changed_by.as_deref(),
                source: Some(object),
                origin: Origin::CrmHistory,
                history_id: Some(&change.history_id),
                amount_cents: change.amount_cents,
                observed_at,
            })
            .collect();
        self.record_moves(tx, &moves).await?;
        Ok(stored.iter().map(|(_, change)| change.changed_at).max())
    }

    /// Stores stage or status moves and the milestones the new ones reach.
    async fn record_moves(
        &mut self,
        tx: &mut StoreTx,
        moves: &[Move<'_>],
    ) -> Result<(), SyncError> {
        let transitions: Vec<NewStageTransition> = moves
            .iter()
            .map(|m| NewStageTransition {
                record_id: m.record_id,
                connection_id: self.ctx.connection_id,
                kind: m.kind,
                pipeline: (m.kind == ObjectKind::Deal).then_some("default"),
                from_stage: m.from,
                to_stage: m.to,
                changed_at: m.at,
                changed_by: m.by,
                actor: m
                    .by
                    .and_then(|by| self.actors.get(by))
                    .copied()
                    .unwrap_or(ActorKind::Unknown),
                change_source: m.source,
                origin: m.origin,
                crm_history_id: m.history_id,
                amount_cents: m.amount_cents,
                observed_at: m.observed_at,
            })
            .collect();
        let inserted = tx.record_stage_transitions(&transitions).await?;
        self.ctx.counters.transitions_written += inserted.len() as i64;
        let new: HashSet<(i64, Millis, &str)> = inserted
            .iter()
            .map(|t| (t.record_id, t.changed_at, t.to_stage.as_str()))
            .collect();
        let milestones: Vec<NewLifecycleEvent> = moves
            .iter()
            .filter(|m| new.contains(&(m.record_id, m.at, m.to)))
            .filter_map(|m| {
                let event = self.move_milestone(m)?;
                Some(self.milestone(m.record_id, m.kind, event, m.at, m.origin, m.observed_at))
            })
            .collect();
        tx.record_lifecycle_events(&milestones).await?;
        Ok(())
    }

    /// The milestone a move reaches: won or lost for a deal, a lead status's event.
    fn move_milestone(&self, m: &Move<'_>) -> Option<LifecycleEvent> {
        match m.kind {
            ObjectKind::Deal => {
                let stage = self.stages.get(m.to)?;
                match (stage.is_closed, stage.is_won) {
                    (true, true) => Some(LifecycleEvent::Won),
                    (true, false) => Some(LifecycleEvent::Lost),
                    _ => None,
                }
            }
            ObjectKind::Lead => lead_status_event(m.to),
            _ => None,
        }
    }

    /// A milestone of a record of this connection.
    fn milestone(
        &self,
        record_id: i64,
        kind: ObjectKind,
        event: LifecycleEvent,
        at: Millis,
        origin: Origin,
        observed_at: Millis,
    ) -> NewLifecycleEvent<'static> {
        NewLifecycleEvent {
            record_id,
            connection_id: self.ctx.connection_id,
            kind,
            event,
            occurred_at: at,
            origin,
            detail: None,
            observed_at,
        }
    }
}

/// A history value as text (stage and status values are text).
fn value_text(value: &Option<Value>) -> Option<String> {
    value.as_ref().and_then(Value::as_str).map(str::to_string)
}

/// The stage of a deal, the status of anything else.
fn stage_of(kind: ObjectKind, state: &RecordState) -> Option<String> {
    match kind {
        ObjectKind::Deal => state.stage.clone(),
        _ => state.status.clone(),
    }
}

/// How a run of pages ended.
enum PagesEnd {
    Done,
    /// The locator was lost after the page with this newest stamp was stored.
    LocatorLost(Option<Millis>),
}

/// A stage or status move to store.
struct Move<'m> {
    record_id: i64,
    kind: ObjectKind,
    from: Option<&'m str>,
    to: &'m str,
    at: Millis,
    by: Option<&'m str>,
    source: Option<&'m str>,
    origin: Origin,
    history_id: Option<&'m str>,
    amount_cents: Option<i64>,
    observed_at: Millis,
}

fn history_stream(
    object: &'static str,
    parent_field: &'static str,
    parent_kind: ObjectKind,
) -> Stream {
    let select = match object {
        "OpportunityHistory" => {
            "Id, OpportunityId, StageName, Amount, CloseDate, Probability, CreatedDate, CreatedById"
                .to_string()
        }
        _ => format!(
            "Id, {parent_field}, Field, DataType, OldValue, NewValue, CreatedDate, CreatedById"
        ),
    };
    Stream {
        object,
        cursor: "history",
        select,
        // History rows never change once written; their creation time orders them.
        stamp_field: "CreatedDate",
        // A record deleted before its history was read takes its history rows to the Recycle
        // Bin with it; its moves happened all the same (and field history past 18 months is
        // served by queryAll alone).
        query_all: true,
        rows: Rows::History {
            parent_field,
            parent_kind,
        },
        field_types: HashMap::new(),
        formulas: false,
    }
}

/// Where the formula refresh of one object stands.
#[derive(Debug, PartialEq)]
enum FormulaRefresh {
    /// No refresh was ever scheduled (the object's first backfill).
    NeverRan,
    /// The last refresh is more recent than the interval.
    NotDue,
    /// A refresh that began at `started` is due, or was cut short after `after` (by `Id`).
    Reading {
        started: Millis,
        after: Option<String>,
    },
}

impl FormulaRefresh {
    /// What to do now, from the saved position: go on with a refresh cut short, begin one
    /// when the last ended `every` ago or more, or nothing.
    fn due(position: Option<&Value>, now: Millis, every: Duration) -> FormulaRefresh {
        let Some(position) = position else {
            return FormulaRefresh::NeverRan;
        };
        if position.get("reading").and_then(Value::as_bool) == Some(true) {
            let started = position
                .get("started")
                .and_then(Value::as_i64)
                .unwrap_or(now);
            let after = position
                .get("after")
                .and_then(Value::as_str)
                .map(str::to_string);
            return FormulaRefresh::Reading { started, after };
        }
        let done_at = position.get("done_at").and_then(Value::as_i64).unwrap_or(0);
        if now - done_at >= every.as_millis() as Millis {
            FormulaRefresh::Reading {
                started: now,
                after: None,
            }
        } else {
            FormulaRefresh::NotDue
        }
    }
}

/// `SELECT … FROM object [WHERE Id > after] ORDER BY Id`: live rows only, since a deleted row's
/// formulas no longer matter. The resume point comes from the store, so it is checked to be a
/// Salesforce id before it goes into the query.
fn formula_refresh_soql(stream: &Stream, after: Option<&str>) -> Result<String, SyncError> {
    let after = match after {
        None => String::new(),
        Some(id) if is_salesforce_id(id) => format!(" WHERE Id > '{id}'"),
        Some(id) => {
            return Err(SyncError::Store(crate::store::StoreError::Conflict(
                format!(
                "the formula refresh checkpoint of {} holds `{id}`, which is not a Salesforce id",
                stream.object
            ),
            )))
        }
    };
    Ok(format!(
        "SELECT {} FROM {}{after} ORDER BY Id ASC",
        stream.select, stream.object
    ))
}

/// 15 or 18 letters and digits, as Salesforce ids are.
fn is_salesforce_id(id: &str) -> bool {
    matches!(id.len(), 15 | 18) && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// The window after one of `width` that read `rows` rows: wide enough for about `aim` rows at
/// the density just read, at most four times wider and at least `least` times as wide (and
/// an hour), so one odd window does not swing the next too far. A timeout narrows one dense
/// stretch (an import, a mass update); without widening again, the years after it would each
/// be read an hour or a day at a time.
fn resized(width: Duration, rows: u64, aim: u64, least: f64) -> Duration {
    let factor = (aim.max(1) as f64 / rows.max(1) as f64).clamp(least, 4.0);
    width.mul_f64(factor).max(NARROWEST_WINDOW)
}

/// A REST stream's cursor: the newest stamp stored, and the windows of a windowed read.
fn stream_position(stamp: Millis, windows: Option<&Windows>) -> Value {
    match windows {
        Some(windows) => json!({ "stamp": stamp, "windows": windows }),
        None => json!({ "stamp": stamp }),
    }
}

/// `SELECT … FROM object WHERE stamp >= from AND stamp < upper ORDER BY stamp, Id`.
fn stream_soql(stream: &Stream, from: Option<Millis>, upper: Option<Millis>) -> String {
    format!(
        "SELECT {} FROM {}{} ORDER BY {} ASC, Id ASC",
        stream.select,
        stream.object,
        stream_window(stream, from, upper),
        stream.stamp_field
    )
}

/// ` WHERE stamp >= from AND stamp < upper`, or nothing for an unbounded window.
fn stream_window(stream: &Stream, from: Option<Millis>, upper: Option<Millis>) -> String {
    let mut conditions = Vec::new();
    if let Some(from) = from {
        conditions.push(format!("{} >= {}", stream.stamp_field, soql_datetime(from)));
    }
    if let Some(upper) = upper {
        conditions.push(format!("{} < {}", stream.stamp_field, soql_datetime(upper)));
    }
    if conditions.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conditions.join(" AND "))
    }
}

/// An OpportunityStage or LeadStatus row as a stage definition.
fn stage_definition(kind: ObjectKind, row: &Map<String, Value>) -> StageDefinition {
    let text = |field: &str| {
        row.get(field)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let flag = |field: &str| row.get(field).and_then(Value::as_bool).unwrap_or(false);
    StageDefinition {
        kind,
        pipeline: "default".into(),
        stage: text("ApiName"),
        label: text("MasterLabel"),
        sort_order: row
            .get("SortOrder")
            .and_then(Value::as_i64)
            .unwrap_or_default(),
        probability_bp: row
            .get("DefaultProbability")
            .and_then(Value::as_f64)
            .map(|percent| (percent * 100.0).round() as i64),
        is_closed: flag("IsClosed") || (kind == ObjectKind::Lead && flag("IsConverted")),
        is_won: flag("IsWon") || (kind == ObjectKind::Lead && flag("IsConverted")),
        is_active: row.get("IsActive").and_then(Value::as_bool).unwrap_or(true),
    }
}

/// The stage a timeline (oldest first) shows just before `at`: the last one entered earlier.
fn stage_before(timeline: &[(Millis, String)], at: Millis) -> Option<String> {
    let earlier = timeline.partition_point(|(entered, _)| *entered < at);
    earlier
        .checked_sub(1)
        .map(|index| timeline[index].1.clone())
}

/// Adds a stage entry to a timeline, after any entry at the same time, as the store orders
/// equal-time transitions by insertion.
fn enter_stage(timeline: &mut Vec<(Millis, String)>, at: Millis, stage: &str) {
    let position = timeline.partition_point(|(entered, _)| *entered <= at);
    timeline.insert(position, (at, stage.to_string()));
}
