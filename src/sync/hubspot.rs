//! One sync run of a HubSpot portal.
//!
//! Order: deal pipelines first (won and lost deals are known by their stage's metadata),
//! owners, then per object type (companies, contacts, deals) its records and a sweep for the
//! ones archived since.
//!
//! **Finding records.** The first run lists every record (`GET /objects/{type}`, 100 ids a
//! page): listing reads HubSpot's primary store, so it has no index lag and no 10,000-result
//! cap, is not held to search's five requests a second, and costs one call per 100 records.
//! Later runs search for records modified in `[checkpoint − lookback, now)`, sorted by
//! modification time, paging by key rather than by offset: the next query starts at the
//! newest modification time of the page before, and a page whose records all share one
//! millisecond is continued by `hs_object_id` within that millisecond. No query ever pages
//! (`after` is never sent), so none can reach the 10,000-result cap, and records modified
//! while the run pages move ahead of it instead of shifting an offset under it.
//!
//! **Reading records.** Listing and search only name the records; their state comes from a
//! batch read (50 at a time, the limit with history) with every property and the full
//! history of the stage properties. Search results show what the index holds, which can be
//! older than the record, so the store never takes a record's state from search.
//!
//! **Deletes.** Archiving does not move a record's modification time and archived records are
//! never in search, so every run lists the archived records (`archived=true`) and stores the
//! ones not yet known as deleted.

use std::collections::HashMap;

use serde_json::{json, Map, Value};

use super::hubspot_map::{
    actor_kind, is_touched_status, lead_status_event, lifecycle_event, modified_property,
    object_kind, record_row, BadRecord, HistoryEntry, RawRecord, RecordRow,
};
use super::progress::Progress;
use super::{RunContext, SyncError};
use crate::config::settings::Endpoints;
use crate::crm::hubspot::{
    HubspotClient, ListQuery, ObjectPage, Owner, Pipeline, PropertyInfo, LIST_PAGE_MAX,
    SEARCH_PAGE_MAX,
};
use crate::crm::CrmError;
use crate::record::wall_clock;
use crate::record::{ActorKind, LifecycleEvent, Millis, ObjectKind, Origin, RecordObservation};
use crate::store::{
    CrmOwner, FieldDefinition, NewLifecycleEvent, NewStageTransition, ObservationOutcome,
    QuarantineEntry, RecordLink, StageDefinition, StoreTx,
};

/// Object types in the order they are synced.
const RECORD_OBJECTS: &[&str] = &["companies", "contacts", "deals"];
/// The cursor's stream name.
const RECORDS_STREAM: &str = "records";
/// HubSpot calls the lifecycle stages a pipeline of their own; transitions and stage
/// definitions of contacts name it so, and lead statuses likewise by their property.
const LIFECYCLE_PIPELINE: &str = "lifecyclestage";
const LEAD_STATUS_PIPELINE: &str = "hs_lead_status";
/// Stage timing properties HubSpot keeps per deal stage but does not list; requested by name.
const STAGE_ENTERED_PREFIX: &str = "hs_v2_date_entered_";

/// Properties whose full history is read with each record.
fn history_properties(object: &str) -> &'static [&'static str] {
    match object {
        // Pipeline and amount histories tell where a deal was, and for how much, at each move.
        "deals" => &["dealstage", "pipeline", "amount"],
        "contacts" => &["lifecyclestage", "hs_lead_status"],
        _ => &[],
    }
}

/// Associations kept as links: a deal's contacts.
fn linked_objects(object: &str) -> &'static [&'static str] {
    if object == "deals" {
        &["contacts"]
    } else {
        &[]
    }
}

/// Where an object's record stream stands.
#[derive(Debug, Clone, PartialEq)]
enum Position {
    /// Listing every record; `after` is the next page, `since` when the listing began.
    Backfill {
        after: Option<String>,
        since: Millis,
    },
    /// Searching by modification time from `stamp` on.
    Incremental { stamp: Millis },
}

impl Position {
    fn from_cursor(cursor: Option<&Value>) -> Option<Position> {
        let cursor = cursor?;
        if let Some(stamp) = cursor.get("stamp").and_then(Value::as_i64) {
            return Some(Position::Incremental { stamp });
        }
        let backfill = cursor.get("backfill")?;
        Some(Position::Backfill {
            after: backfill
                .get("after")
                .and_then(Value::as_str)
                .map(str::to_string),
            since: backfill.get("since").and_then(Value::as_i64)?,
        })
    }

    fn to_cursor(&self) -> Value {
        match self {
            Position::Backfill { after, since } => {
                json!({ "backfill": { "after": after, "since": since } })
            }
            Position::Incremental { stamp } => json!({ "stamp": stamp }),
        }
    }
}

/// How far a search window has been read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Window {
    /// Records modified in `[from, upper)` remain.
    From(Millis),
    /// Records modified exactly at `stamp` with an id above `after_id` remain, then the rest
    /// of the window after `stamp`.
    Tie {
        stamp: Millis,
        after_id: Option<u64>,
    },
    /// Nothing remains.
    Done,
}

/// One page to store: the records, the links seen with them, search hits that did not
/// read, and the cursor that follows.
struct PageToStore<'p> {
    object: &'p str,
    records: Vec<Map<String, Value>>,
    links: Vec<RecordLink>,
    bad_hits: BadHits,
    cursor: Option<Value>,
    observed_at: Millis,
}

/// One run over one HubSpot connection.
struct Run<'c, 'a> {
    ctx: &'c mut RunContext<'a>,
    client: HubspotClient<'a>,
    /// Deal stages by (pipeline, stage id).
    stages: HashMap<(String, String), StageDefinition>,
    /// The portal's clock at the last answer: search windows and observation times use it,
    /// so that they compare with the portal's own stamps whatever this host's clock says.
    server_now: Option<Millis>,
}

/// Syncs a HubSpot connection: pipelines, owners, then records and deletes per object type.
pub(crate) async fn sync(ctx: &mut RunContext<'_>) -> Result<(), SyncError> {
    Run::new(ctx).sync().await
}

impl<'c, 'a> Run<'c, 'a> {
    fn new(ctx: &'c mut RunContext<'a>) -> Run<'c, 'a> {
        let version = match &ctx.settings.endpoints {
            Endpoints::Hubspot { api_version, .. } => api_version.as_str(),
            Endpoints::Salesforce { .. } => {
                unreachable!("a HubSpot run needs a HubSpot connection")
            }
        };
        Run {
            client: HubspotClient::new(ctx.api, version),
            ctx,
            stages: HashMap::new(),
            server_now: None,
        }
    }

    async fn sync(&mut self) -> Result<(), SyncError> {
        self.learn_record_url_base().await?;
        self.sync_pipelines().await?;
        self.sync_owners().await?;
        for object in RECORD_OBJECTS {
            if !self.ctx.settings.objects.iter().any(|o| o == object) {
                continue;
            }
            let properties = self.properties_to_read(object).await?;
            self.sync_records(object, &properties).await?;
            self.sweep_archived(object, &properties).await?;
        }
        Ok(())
    }

    fn now(&self) -> Millis {
        self.server_now.unwrap_or_else(wall_clock)
    }

    fn saw_server_time(&mut self, at: Option<Millis>) -> Millis {
        self.server_now = at.or(self.server_now);
        self.now()
    }

    /// Reads the portal's id and UI domain once per connection, for links in alerts. A portal
    /// that refuses the call (a token without access to account info) only loses its links.
    async fn learn_record_url_base(&mut self) -> Result<(), SyncError> {
        let connection_id = self.ctx.connection_id;
        if self
            .ctx
            .store
            .record_url_base(connection_id)
            .await?
            .is_some()
        {
            return Ok(());
        }
        match self.client.account_details().await {
            Ok(account) => {
                let base = account.record_url_base();
                self.ctx
                    .store
                    .set_record_url_base(connection_id, &base)
                    .await?;
            }
            Err(err @ CrmError::Interrupted { .. }) => return Err(err.into()),
            Err(err) => {
                tracing::warn!(connection = %self.ctx.settings.name, error = %err,
                    "cannot read the HubSpot account details; alerts will not link to deals");
            }
        }
        Ok(())
    }

    /// Deal pipelines → stage definitions, with order, probability and closed/won.
    async fn sync_pipelines(&mut self) -> Result<(), SyncError> {
        let (pipelines, server_time) = self.client.deal_pipelines().await?;
        let now = self.saw_server_time(server_time);
        let definitions: Vec<StageDefinition> =
            pipelines.iter().flat_map(deal_stage_definitions).collect();
        self.store_stage_definitions(&definitions, now).await?;
        self.stages = definitions
            .into_iter()
            .map(|d| ((d.pipeline.clone(), d.stage.clone()), d))
            .collect();
        Ok(())
    }

    async fn store_stage_definitions(
        &mut self,
        definitions: &[StageDefinition],
        now: Millis,
    ) -> Result<(), SyncError> {
        let mut tx = self.ctx.begin().await?;
        for definition in definitions {
            tx.upsert_stage_definition(self.ctx.connection_id, definition, now)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Owners, so that rules can tell a rep from a queue.
    async fn sync_owners(&mut self) -> Result<(), SyncError> {
        let owners = self.client.owners().await?;
        let now = self.now();
        let mut tx = self.ctx.begin().await?;
        for owner in &owners {
            tx.upsert_owner(self.ctx.connection_id, &owner_row(owner), now)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Every property the portal lists for the object, plus the deal stage timing it does
    /// not list; contacts' lifecycle stages and lead statuses are stored as stage definitions.
    async fn properties_to_read(&mut self, object: &str) -> Result<Vec<String>, SyncError> {
        let listed = self.client.properties(object).await?;
        self.warn_about_missing_custom_fields(object, &listed);
        self.store_field_definitions(object, &listed).await?;
        let mut names: Vec<String> = listed.iter().map(|p| p.name.clone()).collect();
        if object == "deals" {
            let mut stage_ids: Vec<&str> = self.stages.keys().map(|(_, s)| s.as_str()).collect();
            stage_ids.sort_unstable();
            stage_ids.dedup();
            names.extend(
                stage_ids
                    .into_iter()
                    .map(|id| format!("{STAGE_ENTERED_PREFIX}{id}")),
            );
        }
        if object == "contacts" {
            let now = self.now();
            self.store_stage_definitions(&contact_stage_definitions(&listed), now)
                .await?;
        }
        Ok(names)
    }

    /// Keeps the object's properties as the properties API lists them, for `rules check`.
    async fn store_field_definitions(
        &mut self,
        object: &str,
        listed: &[PropertyInfo],
    ) -> Result<(), SyncError> {
        let definitions: Vec<FieldDefinition> = listed
            .iter()
            .map(|p| FieldDefinition {
                field: p.name.clone(),
                label: p.label.clone(),
                data_type: p.data_type.clone(),
                // Search filters on any property.
                filterable: true,
                is_custom: !p.hubspot_defined,
            })
            .collect();
        let now = self.now();
        let mut tx = self.ctx.begin().await?;
        tx.replace_field_definitions(self.ctx.connection_id, object, &definitions, now)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    fn warn_about_missing_custom_fields(&self, object: &str, listed: &[PropertyInfo]) {
        let wanted = self
            .ctx
            .settings
            .custom_fields
            .iter()
            .filter_map(|name| name.split_once('.'))
            .filter(|(owner, _)| *owner == object);
        for (_, field) in wanted {
            if !listed.iter().any(|p| p.name == field) {
                tracing::warn!(connection = %self.ctx.settings.name, object, field,
                    "custom_fields names {object}.{field}, but the properties API does not list it; it is not synced");
            }
        }
    }

    /// The object's record stream, from its checkpoint to now.
    async fn sync_records(&mut self, object: &str, properties: &[String]) -> Result<(), SyncError> {
        let cursor = self
            .ctx
            .store
            .cursor(self.ctx.connection_id, object, RECORDS_STREAM)
            .await?;
        let stamp = match Position::from_cursor(cursor.as_ref()) {
            None => self.backfill(object, properties, None, self.now()).await?,
            Some(Position::Backfill { after, since }) => {
                self.backfill(object, properties, after, since).await?
            }
            Some(Position::Incremental { stamp }) => stamp,
        };
        // Right after a backfill this also picks up what changed while it listed.
        self.incremental(object, properties, stamp).await
    }

    /// Lists every live record; returns the checkpoint incremental runs start from.
    async fn backfill(
        &mut self,
        object: &str,
        properties: &[String],
        mut after: Option<String>,
        since: Millis,
    ) -> Result<Millis, SyncError> {
        let modified = [modified_property(object)];
        let limit = self.ctx.settings.page_size.clamp(1, LIST_PAGE_MAX);
        let connection = self.ctx.settings.name.clone();
        let mut progress = Progress::new(&connection, object, self.records_to_list(object).await);
        loop {
            let query = ListQuery {
                after: after.as_deref(),
                limit,
                archived: false,
                properties: &modified,
                associations: linked_objects(object),
            };
            let page = self.client.list(object, &query).await?;
            let observed_at = self.saw_server_time(page.server_time);
            let (ids, links) = ids_and_links(object, &page);
            let records = self.read_records(object, &ids, properties, false).await?;
            progress.advance(ids.len());
            after = page.next_after.clone();
            let next = match &after {
                Some(_) => Position::Backfill {
                    after: after.clone(),
                    since,
                },
                None => Position::Incremental { stamp: since },
            };
            self.store_page(PageToStore {
                object,
                records,
                links,
                bad_hits: Vec::new(),
                cursor: Some(next.to_cursor()),
                observed_at,
            })
            .await?;
            self.ctx.check_stop()?;
            if after.is_none() {
                return Ok(since);
            }
        }
    }

    /// How many records a backfill of `object` lists, for its progress; 0 (no figures) when the
    /// count cannot be had, since progress is no reason to fail a backfill.
    async fn records_to_list(&self, object: &str) -> u64 {
        match self.client.count(object).await {
            Ok(total) => total,
            // The run ends at its next call; no warning about a count nobody needs.
            Err(CrmError::Interrupted { .. }) => 0,
            Err(err) => {
                tracing::warn!(connection = %self.ctx.settings.name, object, error = %err,
                    "cannot count the records to list; the backfill shows no progress");
                0
            }
        }
    }

    /// Searches the records modified since `stamp` (less the lookback, for changes the index
    /// had not taken in when the last run read it), up to now.
    async fn incremental(
        &mut self,
        object: &str,
        properties: &[String],
        stamp: Millis,
    ) -> Result<(), SyncError> {
        let lookback = i64::try_from(self.ctx.settings.lookback.as_millis()).unwrap_or(i64::MAX);
        let upper = self.now();
        let limit = self.ctx.settings.page_size.clamp(1, SEARCH_PAGE_MAX) as usize;
        let mut window = Window::From(stamp.saturating_sub(lookback).min(upper));
        while window != Window::Done {
            let body = search_body(object, window, upper, limit);
            let page = self.client.search(object, body).await?;
            let observed_at = self.saw_server_time(page.server_time);
            let (found, bad) = indexed_stamps(object, &page.records);
            let (taken, next) = next_window(window, &found, limit);
            let mut ids: Vec<String> = taken.iter().map(|(id, _)| id.to_string()).collect();
            ids.sort_unstable();
            ids.dedup();
            let new_ids = self.unknown_ids(object, &ids).await?;
            let links = self.links_of(object, &new_ids).await?;
            let records = self.read_records(object, &ids, properties, false).await?;
            let checkpoint = match next {
                Window::From(from) => from,
                Window::Tie { stamp, .. } => stamp,
                Window::Done => upper,
            };
            self.store_page(PageToStore {
                object,
                records,
                links,
                bad_hits: bad,
                cursor: Some(Position::Incremental { stamp: checkpoint }.to_cursor()),
                observed_at,
            })
            .await?;
            self.ctx.check_stop()?;
            window = next;
        }
        Ok(())
    }

    /// Which of `ids` the store does not hold yet (new records, whose links must be read).
    async fn unknown_ids(&self, object: &str, ids: &[String]) -> Result<Vec<String>, SyncError> {
        let Some(kind) = object_kind(object) else {
            return Ok(Vec::new());
        };
        if linked_objects(object).is_empty() {
            return Ok(Vec::new());
        }
        let mut unknown = Vec::new();
        for id in ids {
            if self
                .ctx
                .store
                .record(self.ctx.connection_id, kind, id)
                .await?
                .is_none()
            {
                unknown.push(id.clone());
            }
        }
        Ok(unknown)
    }

    /// The associations of records first seen by search (which does not return them), one
    /// read each: new deals are few per run, and batch reads do not carry associations.
    async fn links_of(&self, object: &str, ids: &[String]) -> Result<Vec<RecordLink>, SyncError> {
        let mut links = Vec::new();
        for id in ids {
            let raw = self
                .client
                .read_with_associations(object, id, linked_objects(object))
                .await?;
            if let Some(raw) = raw {
                links.extend(record_links(object, &raw));
            }
        }
        Ok(links)
    }

    /// Lists the archived records and stores those not yet known as deleted.
    async fn sweep_archived(
        &mut self,
        object: &str,
        properties: &[String],
    ) -> Result<(), SyncError> {
        let Some(kind) = object_kind(object) else {
            return Ok(());
        };
        let modified = [modified_property(object)];
        let mut after: Option<String> = None;
        loop {
            let query = ListQuery {
                after: after.as_deref(),
                limit: LIST_PAGE_MAX,
                archived: true,
                properties: &modified,
                associations: &[],
            };
            let page = self.client.list(object, &query).await?;
            let observed_at = self.saw_server_time(page.server_time);
            let (ids, _) = ids_and_links(object, &page);
            let mut newly_archived = Vec::new();
            for id in ids {
                let stored = self
                    .ctx
                    .store
                    .record(self.ctx.connection_id, kind, &id)
                    .await?;
                if stored.is_none_or(|record| record.deleted_at.is_none()) {
                    newly_archived.push(id);
                }
            }
            let records = self
                .read_records(object, &newly_archived, properties, true)
                .await?;
            self.store_page(PageToStore {
                object,
                records,
                links: Vec::new(),
                bad_hits: Vec::new(),
                cursor: None,
                observed_at,
            })
            .await?;
            self.ctx.check_stop()?;
            after = page.next_after;
            if after.is_none() {
                return Ok(());
            }
        }
    }

    async fn read_records(
        &self,
        object: &str,
        ids: &[String],
        properties: &[String],
        archived: bool,
    ) -> Result<Vec<Map<String, Value>>, SyncError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self
            .client
            .batch_read(
                object,
                ids,
                properties,
                history_properties(object),
                archived,
            )
            .await?)
    }

    /// A page's records, links and cursor in one transaction; records that do not read (and
    /// search hits without a usable stamp) are quarantined in it.
    async fn store_page(&mut self, page: PageToStore<'_>) -> Result<(), SyncError> {
        let mut tx = self.ctx.begin().await?;
        for (bad, raw) in &page.bad_hits {
            self.quarantine(&mut tx, bad, raw, page.observed_at).await?;
        }
        for raw in &page.records {
            self.ctx.counters.records_seen += 1;
            if let Err(bad) = self
                .store_record(&mut tx, page.object, raw, page.observed_at)
                .await?
            {
                self.quarantine(&mut tx, &bad, raw, page.observed_at)
                    .await?;
            }
        }
        tx.upsert_links(self.ctx.connection_id, &page.links, page.observed_at)
            .await?;
        if let Some(cursor) = &page.cursor {
            tx.save_cursor(
                self.ctx.connection_id,
                page.object,
                RECORDS_STREAM,
                cursor,
                Some(self.ctx.run_id),
                page.observed_at,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn quarantine(
        &mut self,
        tx: &mut StoreTx,
        bad: &BadRecord,
        raw: &Map<String, Value>,
        seen_at: Millis,
    ) -> Result<(), SyncError> {
        tracing::warn!(connection = %self.ctx.settings.name, object = %bad.object, id = %bad.crm_id,
            field = %bad.field, reason = %bad, "record quarantined");
        let payload = Value::Object(raw.clone()).to_string();
        let reason = bad.to_string();
        tx.quarantine(&QuarantineEntry {
            connection_id: self.ctx.connection_id,
            crm_object: &bad.object,
            crm_id: &bad.crm_id,
            reason: &reason,
            payload: Some(&payload),
            sync_run_id: Some(self.ctx.run_id),
            seen_at,
        })
        .await?;
        self.ctx.counters.quarantined += 1;
        Ok(())
    }

    /// Stores a record as an observation, and the moves and milestones its history shows.
    /// Everything is read before anything is written, so a record that does not read leaves
    /// nothing behind but its quarantine entry.
    async fn store_record(
        &mut self,
        tx: &mut StoreTx,
        object: &str,
        raw: &Map<String, Value>,
        observed_at: Millis,
    ) -> Result<Result<(), BadRecord>, SyncError> {
        let kind = object_kind(object).expect("synced objects all have a kind");
        let read = record_row(object, raw).and_then(|row| {
            let record = RawRecord::new(object, raw)?;
            let histories = history_properties(object)
                .iter()
                .map(|name| Ok((*name, record.history(name)?)))
                .collect::<Result<HashMap<_, _>, BadRecord>>()?;
            Ok((row, histories))
        });
        let (row, histories) = match read {
            Ok(read) => read,
            Err(bad) => return Ok(Err(bad)),
        };
        let observation = observation(self.ctx, kind, object, row, observed_at);
        let outcome = tx.apply_observation(&observation).await?;
        let record_id = outcome.record_id();
        if outcome.wrote_version() {
            self.ctx.counters.versions_written += 1;
            tx.release_from_quarantine(
                self.ctx.connection_id,
                object,
                &[observation.crm_id.as_str()],
                observed_at,
            )
            .await?;
        }
        if let Some(created) = observation.state.crm_created_at {
            let created_event = Milestone {
                record_id,
                kind,
                event: LifecycleEvent::Created,
                at: created,
                origin: Origin::CrmField,
            };
            self.milestone(tx, &created_event, observed_at).await?;
        }
        let context = MoveContext {
            record_id,
            kind,
            observed_at,
        };
        match kind {
            ObjectKind::Deal => {
                self.deal_moves(tx, &context, &histories, &observation, &outcome)
                    .await?
            }
            ObjectKind::Contact => self.contact_moves(tx, &context, &histories).await?,
            _ => {}
        }
        Ok(Ok(()))
    }

    /// A deal's stage moves from its `dealstage` history, each in the pipeline it was in
    /// and with the amount it had then; an observed change when there is no history.
    async fn deal_moves(
        &mut self,
        tx: &mut StoreTx,
        context: &MoveContext,
        histories: &HashMap<&str, Option<Vec<HistoryEntry>>>,
        observation: &RecordObservation,
        outcome: &ObservationOutcome,
    ) -> Result<(), SyncError> {
        let empty = Vec::new();
        let pipelines = histories["pipeline"].as_ref().unwrap_or(&empty);
        let amounts = histories["amount"].as_ref().unwrap_or(&empty);
        let Some(stages) = histories["dealstage"].as_ref() else {
            return self
                .observed_deal_move(tx, context, observation, outcome)
                .await;
        };
        for (from, entry) in moves_in(stages) {
            let pipeline = value_at(pipelines, entry.at)
                .or(observation.state.pipeline.as_deref())
                .map(str::to_string);
            let amount_cents = value_at(amounts, entry.at)
                .and_then(|amount| amount.parse::<f64>().ok())
                .map(|amount| (amount * 100.0).round() as i64);
            let event = self.deal_outcome(pipeline.as_deref(), &entry.value);
            let stage_move = Move {
                pipeline: pipeline.as_deref(),
                from,
                to: &entry.value,
                at: entry.at,
                by: entry.changed_by.as_deref(),
                actor: actor_kind(&entry.source_type),
                source: Some(&entry.source_type),
                origin: Origin::CrmHistory,
                amount_cents,
                event,
            };
            self.record_move(tx, context, &stage_move).await?;
        }
        Ok(())
    }

    /// Won or lost, when `stage` is a closed stage of `pipeline`.
    fn deal_outcome(&self, pipeline: Option<&str>, stage: &str) -> Option<LifecycleEvent> {
        let definition = self
            .stages
            .get(&(pipeline?.to_string(), stage.to_string()))?;
        match (definition.is_closed, definition.is_won) {
            (true, true) => Some(LifecycleEvent::Won),
            (true, false) => Some(LifecycleEvent::Lost),
            _ => None,
        }
    }

    /// A stage change seen between two observations, for deals read without history.
    async fn observed_deal_move(
        &mut self,
        tx: &mut StoreTx,
        context: &MoveContext,
        observation: &RecordObservation,
        outcome: &ObservationOutcome,
    ) -> Result<(), SyncError> {
        let Some(to) = observation.state.stage.as_deref() else {
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
            ObservationOutcome::Changed { previous, .. }
                if previous.state.stage.as_deref() != Some(to) =>
            {
                (previous.state.stage.clone(), observation.modified_at)
            }
            _ => return Ok(()),
        };
        let pipeline = observation.state.pipeline.as_deref();
        let event = pipeline
            .and_then(|p| self.stages.get(&(p.to_string(), to.to_string())))
            .and_then(|stage| {
                stage.is_closed.then_some(if stage.is_won {
                    LifecycleEvent::Won
                } else {
                    LifecycleEvent::Lost
                })
            });
        let stage_move = Move {
            pipeline,
            from: from.as_deref(),
            to,
            at,
            by: None,
            source: None,
            actor: ActorKind::Unknown,
            origin: Origin::ObservedDiff,
            amount_cents: observation.state.amount_cents,
            event,
        };
        self.record_move(tx, context, &stage_move).await
    }

    /// A contact's lifecycle stage and lead status moves, and the milestones they reach.
    async fn contact_moves(
        &mut self,
        tx: &mut StoreTx,
        context: &MoveContext,
        histories: &HashMap<&str, Option<Vec<HistoryEntry>>>,
    ) -> Result<(), SyncError> {
        if let Some(stages) = &histories[LIFECYCLE_PIPELINE] {
            for (from, entry) in moves_in(stages) {
                let stage_move = history_move(LIFECYCLE_PIPELINE, from, entry)
                    .with_event(lifecycle_event(&entry.value));
                self.record_move(tx, context, &stage_move).await?;
            }
        }
        if let Some(statuses) = &histories[LEAD_STATUS_PIPELINE] {
            let mut touched = false;
            for (from, entry) in moves_in(statuses) {
                let event = lead_status_event(&entry.value, touched);
                touched |= is_touched_status(&entry.value);
                let stage_move = history_move(LEAD_STATUS_PIPELINE, from, entry).with_event(event);
                self.record_move(tx, context, &stage_move).await?;
            }
        }
        Ok(())
    }

    /// Stores a move and, if it was new, the milestone it reaches.
    async fn record_move(
        &mut self,
        tx: &mut StoreTx,
        context: &MoveContext,
        m: &Move<'_>,
    ) -> Result<(), SyncError> {
        let transition = NewStageTransition {
            record_id: context.record_id,
            connection_id: self.ctx.connection_id,
            kind: context.kind,
            pipeline: m.pipeline,
            from_stage: m.from,
            to_stage: m.to,
            changed_at: m.at,
            changed_by: m.by,
            actor: m.actor,
            change_source: m.source,
            origin: m.origin,
            crm_history_id: None,
            amount_cents: m.amount_cents,
            observed_at: context.observed_at,
        };
        if tx.record_stage_transition(&transition).await?.is_none() {
            return Ok(());
        }
        self.ctx.counters.transitions_written += 1;
        if let Some(event) = m.event {
            let milestone = Milestone {
                record_id: context.record_id,
                kind: context.kind,
                event,
                at: m.at,
                origin: m.origin,
            };
            self.milestone(tx, &milestone, context.observed_at).await?;
        }
        Ok(())
    }

    async fn milestone(
        &self,
        tx: &mut StoreTx,
        m: &Milestone,
        observed_at: Millis,
    ) -> Result<(), SyncError> {
        tx.record_lifecycle_event(&NewLifecycleEvent {
            record_id: m.record_id,
            connection_id: self.ctx.connection_id,
            kind: m.kind,
            event: m.event,
            occurred_at: m.at,
            origin: m.origin,
            detail: None,
            observed_at,
        })
        .await?;
        Ok(())
    }
}

/// The record an observation is about, as the store takes it.
fn observation(
    ctx: &RunContext<'_>,
    kind: ObjectKind,
    object: &str,
    row: RecordRow,
    observed_at: Millis,
) -> RecordObservation {
    RecordObservation {
        connection_id: ctx.connection_id,
        kind,
        crm_object: object.to_string(),
        crm_id: row.crm_id,
        state: row.state,
        deleted: row.deleted,
        modified_at: row.modified_at,
        observed_at,
        sync_run_id: Some(ctx.run_id),
    }
}

/// What every move of one record shares.
struct MoveContext {
    record_id: i64,
    kind: ObjectKind,
    observed_at: Millis,
}

/// A stage, lifecycle stage or lead status move to store.
struct Move<'m> {
    pipeline: Option<&'m str>,
    from: Option<&'m str>,
    to: &'m str,
    at: Millis,
    by: Option<&'m str>,
    actor: ActorKind,
    source: Option<&'m str>,
    origin: Origin,
    amount_cents: Option<i64>,
    /// The milestone entering `to` means.
    event: Option<LifecycleEvent>,
}

impl<'m> Move<'m> {
    fn with_event(mut self, event: Option<LifecycleEvent>) -> Move<'m> {
        self.event = event;
        self
    }
}

/// A lifecycle milestone to store.
struct Milestone {
    record_id: i64,
    kind: ObjectKind,
    event: LifecycleEvent,
    at: Millis,
    origin: Origin,
}

/// A move from a property history entry, without amount or milestone.
fn history_move<'m>(pipeline: &'m str, from: Option<&'m str>, entry: &'m HistoryEntry) -> Move<'m> {
    Move {
        pipeline: Some(pipeline),
        from,
        to: &entry.value,
        at: entry.at,
        by: entry.changed_by.as_deref(),
        actor: actor_kind(&entry.source_type),
        source: Some(&entry.source_type),
        origin: Origin::CrmHistory,
        amount_cents: None,
        event: None,
    }
}

/// The entries of a history that change the value, each with the value before it. A cleared
/// value (`""`, as when a lifecycle stage is reset to move it back) is not a stage: the move
/// is from the last real value to the next one.
fn moves_in(history: &[HistoryEntry]) -> Vec<(Option<&str>, &HistoryEntry)> {
    let mut moves = Vec::new();
    let mut current: Option<&str> = None;
    for entry in history {
        if entry.value.is_empty() || current == Some(entry.value.as_str()) {
            continue;
        }
        moves.push((current, entry));
        current = Some(entry.value.as_str());
    }
    moves
}

/// A property's value at `at`, from its history (oldest first).
fn value_at(history: &[HistoryEntry], at: Millis) -> Option<&str> {
    history
        .iter()
        .take_while(|entry| entry.at <= at)
        .last()
        .map(|entry| entry.value.as_str())
        .filter(|value| !value.is_empty())
}

/// A pipeline's stages as stage definitions: HubSpot marks closed stages in metadata, and a
/// closed stage with probability 1.0 is the won one.
fn deal_stage_definitions(pipeline: &Pipeline) -> Vec<StageDefinition> {
    pipeline
        .stages
        .iter()
        .map(|stage| {
            let meta = |key: &str| stage.metadata.get(key).and_then(Value::as_str);
            let probability = meta("probability").and_then(|p| p.parse::<f64>().ok());
            let is_closed = meta("isClosed") == Some("true");
            StageDefinition {
                kind: ObjectKind::Deal,
                pipeline: pipeline.id.clone(),
                stage: stage.id.clone(),
                label: stage.label.clone(),
                sort_order: stage.display_order,
                probability_bp: probability.map(|p| (p * 10_000.0).round() as i64),
                is_closed,
                is_won: is_closed && probability == Some(1.0),
                is_active: !stage.archived && !pipeline.archived,
            }
        })
        .collect()
}

/// Lifecycle stages and lead statuses as the stage definitions of two contact "pipelines",
/// in the order the portal shows them.
fn contact_stage_definitions(listed: &[PropertyInfo]) -> Vec<StageDefinition> {
    listed
        .iter()
        .filter(|p| p.name == LIFECYCLE_PIPELINE || p.name == LEAD_STATUS_PIPELINE)
        .flat_map(|p| {
            p.options.iter().map(|option| StageDefinition {
                kind: ObjectKind::Contact,
                pipeline: p.name.clone(),
                stage: option.value.clone(),
                label: option.label.clone(),
                sort_order: option.display_order,
                probability_bp: None,
                is_closed: option.value == "UNQUALIFIED",
                is_won: option.value == "customer",
                is_active: true,
            })
        })
        .collect()
}

/// An owner as the store keeps it.
fn owner_row(owner: &Owner) -> CrmOwner {
    let name = [owner.first_name.as_deref(), owner.last_name.as_deref()]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ");
    CrmOwner {
        crm_id: owner.id.clone(),
        kind: if owner.owner_type.as_deref() == Some("QUEUE") {
            "queue".into()
        } else {
            "person".into()
        },
        name: (!name.is_empty()).then_some(name),
        email: owner.email.clone(),
        teams: serde_json::to_value(&owner.teams).unwrap_or_else(|_| json!([])),
        is_active: !owner.archived,
    }
}

/// The ids a listing page names, and the links its records carry.
fn ids_and_links(object: &str, page: &ObjectPage) -> (Vec<String>, Vec<RecordLink>) {
    let mut ids = Vec::new();
    let mut links = Vec::new();
    for raw in &page.records {
        if let Some(Value::String(id)) = raw.get("id") {
            ids.push(id.clone());
            links.extend(record_links(object, raw));
        }
    }
    (ids, links)
}

/// The associations of one record as links.
fn record_links(object: &str, raw: &Map<String, Value>) -> Vec<RecordLink> {
    let (Ok(record), Some(from_kind)) = (RawRecord::new(object, raw), object_kind(object)) else {
        return Vec::new();
    };
    linked_objects(object)
        .iter()
        .filter_map(|to| Some((*to, object_kind(to)?)))
        .flat_map(|(to, to_kind)| {
            record
                .associated_ids(to)
                .into_iter()
                .map(move |to_crm_id| (to_kind, to_crm_id))
        })
        .map(|(to_kind, to_crm_id)| RecordLink {
            from_kind,
            from_crm_id: record.crm_id.clone(),
            relation: "associated_with".into(),
            to_kind,
            to_crm_id,
        })
        .collect()
}

/// The search request for what remains of a window: records modified in `[from, upper)`
/// by modification time, or, within one millisecond, by id.
fn search_body(object: &str, window: Window, upper: Millis, limit: usize) -> Value {
    let modified = modified_property(object);
    let filter = |property: &str, operator: &str, value: String| json!({ "propertyName": property, "operator": operator, "value": value });
    let (filters, sort) = match window {
        Window::From(from) => (
            vec![
                filter(modified, "GTE", from.to_string()),
                filter(modified, "LT", upper.to_string()),
            ],
            modified,
        ),
        Window::Tie { stamp, after_id } => {
            let mut filters = vec![filter(modified, "EQ", stamp.to_string())];
            if let Some(after_id) = after_id {
                filters.push(filter("hs_object_id", "GT", after_id.to_string()));
            }
            (filters, "hs_object_id")
        }
        Window::Done => unreachable!("a finished window is not searched"),
    };
    json!({
        "filterGroups": [{ "filters": filters }],
        "sorts": [{ "propertyName": sort, "direction": "ASCENDING" }],
        "properties": [modified, "hs_object_id"],
        "limit": limit,
    })
}

/// Search hits that could not be read, with what HubSpot sent.
type BadHits = Vec<(BadRecord, Map<String, Value>)>;

/// Search hits as (id, modification time the index holds), and the hits that lack either.
fn indexed_stamps(object: &str, hits: &[Map<String, Value>]) -> (Vec<(u64, Millis)>, BadHits) {
    let mut found = Vec::new();
    let mut bad = Vec::new();
    for raw in hits {
        let read = RawRecord::new(object, raw).and_then(|record| {
            let stamp = record.indexed_modified_at()?;
            let id = record.crm_id.parse::<u64>().map_err(|_| BadRecord {
                object: object.to_string(),
                crm_id: record.crm_id.clone(),
                field: "id".into(),
                problem: "is not a number".into(),
            })?;
            Ok((id, stamp))
        });
        match read {
            Ok(hit) => found.push(hit),
            Err(err) => bad.push((err, raw.clone())),
        }
    }
    (found, bad)
}

/// Which hits of a page to read now, and what of the window remains after them.
///
/// A short page ends its window (or its millisecond). A full page by time is read up to, not
/// including, its last millisecond, which the next query starts at, since more records of
/// that millisecond may follow; a full page of one millisecond switches to paging by id.
fn next_window(
    window: Window,
    hits: &[(u64, Millis)],
    limit: usize,
) -> (Vec<(u64, Millis)>, Window) {
    let full = hits.len() >= limit;
    match window {
        Window::From(_) if !full => (hits.to_vec(), Window::Done),
        Window::From(from) => {
            let first = hits.first().map_or(from, |hit| hit.1);
            let last = hits.last().map_or(from, |hit| hit.1);
            if first == last {
                return (
                    Vec::new(),
                    Window::Tie {
                        stamp: last,
                        after_id: None,
                    },
                );
            }
            let taken = hits.iter().copied().filter(|hit| hit.1 < last).collect();
            (taken, Window::From(last))
        }
        Window::Tie { stamp, .. } if !full => (hits.to_vec(), Window::From(stamp + 1)),
        Window::Tie { stamp, .. } => {
            let after_id = hits.iter().map(|hit| hit.0).max();
            (hits.to_vec(), Window::Tie { stamp, after_id })
        }
        Window::Done => (Vec::new(), Window::Done),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_page_is_read_up_to_its_last_millisecond() {
        let hits = [(5, 10), (3, 11), (9, 12), (1, 12)];
        let (taken, next) = next_window(Window::From(10), &hits, 4);
        assert_eq!(taken, [(5, 10), (3, 11)]);
        assert_eq!(next, Window::From(12));
    }

    #[test]
    fn a_full_page_of_one_millisecond_pages_on_by_id() {
        let hits = [(5, 12), (3, 12)];
        let (taken, next) = next_window(Window::From(10), &hits, 2);
        assert!(taken.is_empty());
        let tie = Window::Tie {
            stamp: 12,
            after_id: None,
        };
        assert_eq!(next, tie);
        let (taken, next) = next_window(tie, &[(3, 12), (5, 12)], 2);
        assert_eq!(taken.len(), 2);
        assert_eq!(
            next,
            Window::Tie {
                stamp: 12,
                after_id: Some(5)
            }
        );
        let (_, next) = next_window(next, &[(8, 12)], 2);
        assert_eq!(next, Window::From(13));
    }

    #[test]
    fn a_short_page_ends_the_window() {
        let (taken, next) = next_window(Window::From(10), &[(1, 10)], 2);
        assert_eq!((taken.len(), next), (1, Window::Done));
    }

    #[test]
    fn moves_skip_repeats_and_cleared_values() {
        let entry = |value: &str, at| HistoryEntry {
            value: value.into(),
            at,
            source_type: "CRM_UI".into(),
            changed_by: None,
        };
        let history = [
            entry("lead", 1),
            entry("lead", 2),
            entry("customer", 3),
            entry("", 4),
            entry("lead", 5),
        ];
        let moves: Vec<(Option<&str>, &str)> = moves_in(&history)
            .into_iter()
            .map(|(from, e)| (from, e.value.as_str()))
            .collect();
        assert_eq!(
            moves,
            [
                (None, "lead"),
                (Some("lead"), "customer"),
                (Some("customer"), "lead")
            ]
        );
        assert_eq!(value_at(&history, 3), Some("customer"));
        assert_eq!(value_at(&history, 0), None);
    }
}
