//! Current records and their versions (slowly changing dimension, type 2).
//!
//! Every distinct state observed becomes a version valid over `[valid_from, valid_to)`.
//! `valid_from` is the CRM's modification time of that state; when content changes without
//! the CRM moving its modification time (Salesforce formula fields), the version starts at
//! the moment pipewarden observed it, and says so in `valid_from_basis`.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::{Map, Value};
use sqlx::types::Json;
use sqlx::QueryBuilder;

use super::{dispatch, QueryContext, Store, StoreError, StoreTx, ROWS_PER_STATEMENT};
use crate::record::{Millis, ObjectKind, RecordObservation, RecordState};

/// What storing an observation did.
#[derive(Debug, Clone, PartialEq)]
pub enum ObservationOutcome {
    /// First sighting: the record and its first version were created.
    Created {
        /// The new record's id.
        record_id: i64,
    },
    /// Tracked content changed: the previous version was closed and a new one opened.
    Changed {
        /// The record's id.
        record_id: i64,
        /// The version that was current until now (for observed-diff transitions).
        previous: Box<RecordVersion>,
    },
    /// Nothing tracked changed; only the last-seen time moved.
    Unchanged {
        /// The record's id.
        record_id: i64,
    },
    /// The observation is older than what is stored (a late replay) and was ignored.
    Stale {
        /// The record's id.
        record_id: i64,
    },
}

impl ObservationOutcome {
    /// The record the observation belongs to.
    pub fn record_id(&self) -> i64 {
        match self {
            ObservationOutcome::Created { record_id }
            | ObservationOutcome::Changed { record_id, .. }
            | ObservationOutcome::Unchanged { record_id }
            | ObservationOutcome::Stale { record_id } => *record_id,
        }
    }

    /// Whether a new version was written.
    pub fn wrote_version(&self) -> bool {
        matches!(
            self,
            ObservationOutcome::Created { .. } | ObservationOutcome::Changed { .. }
        )
    }
}

/// What a version's start time is based on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValidFromBasis {
    /// The CRM's modification time of the state.
    CrmModified,
    /// The time pipewarden observed it (the CRM did not move its modification time).
    Observed,
}

impl ValidFromBasis {
    fn as_str(self) -> &'static str {
        match self {
            ValidFromBasis::CrmModified => "crm_modified",
            ValidFromBasis::Observed => "observed",
        }
    }

    fn parse(text: &str) -> ValidFromBasis {
        if text == "observed" {
            ValidFromBasis::Observed
        } else {
            ValidFromBasis::CrmModified
        }
    }
}

/// One stored version of a record.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordVersion {
    /// Version id.
    pub id: i64,
    /// The record it belongs to.
    pub record_id: i64,
    /// Start of validity (inclusive).
    pub valid_from: Millis,
    /// End of validity (exclusive); `None` while current.
    pub valid_to: Option<Millis>,
    /// What `valid_from` is based on.
    pub valid_from_basis: ValidFromBasis,
    /// When pipewarden saw this state.
    pub observed_at: Millis,
    /// The record is deleted in this version.
    pub deleted: bool,
    /// The state.
    pub state: RecordState,
}

/// The records of one kind stored for a connection, as a first history backfill sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreatedSpan {
    /// Stored records of the kind, deleted ones included.
    pub count: u64,
    /// The oldest CRM creation time among them, if any has one.
    pub oldest: Option<Millis>,
}

/// The current row of a record.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRecord {
    /// Record id.
    pub id: i64,
    /// Connection id.
    pub connection_id: i64,
    /// Object kind.
    pub kind: ObjectKind,
    /// CRM object name.
    pub crm_object: String,
    /// CRM id.
    pub crm_id: String,
    /// Current state.
    pub state: RecordState,
    /// CRM modification time of the current state.
    pub crm_modified_at: Millis,
    /// When the CRM deleted it, if it did.
    pub deleted_at: Option<Millis>,
    /// First time pipewarden saw it.
    pub first_seen_at: Millis,
    /// Last time pipewarden saw it.
    pub last_seen_at: Millis,
}

/// The [`RecordState`] columns shared by `records` and `record_versions`, in binding order.
macro_rules! state_columns {
    () => {
        "name, pipeline, stage, status, lifecycle_stage, amount_cents, probability_bp, close_date, owner_id, \
         source, campaign_id, is_closed, is_won, crm_created_at_ms, last_activity_at_ms, fields"
    };
}

/// The columns of a version as read back.
macro_rules! version_columns {
    () => {
        concat!(
            "id, record_id, valid_from_ms, valid_to_ms, valid_from_basis, observed_at_ms, deleted, ",
            state_columns!()
        )
    };
}

/// Binds a [`RecordState`] in `state_columns!` order with `$bind` (`bind` on a query,
/// `push_bind` on a multi-row builder); a macro because the query type differs per backend.
macro_rules! bind_state {
    ($query:expr, $state:expr) => {
        bind_state!($query, $state, bind)
    };
    ($query:expr, $state:expr, $bind:ident) => {
        $query
            .$bind($state.name.as_deref())
            .$bind($state.pipeline.as_deref())
            .$bind($state.stage.as_deref())
            .$bind($state.status.as_deref())
            .$bind($state.lifecycle_stage.as_deref())
            .$bind($state.amount_cents)
            .$bind($state.probability_bp)
            .$bind($state.close_date.as_deref())
            .$bind($state.owner_id.as_deref())
            .$bind($state.source.as_deref())
            .$bind($state.campaign_id.as_deref())
            .$bind($state.is_closed)
            .$bind($state.is_won)
            .$bind($state.crm_created_at)
            .$bind($state.last_activity_at)
            .$bind(Json(&$state.fields))
    };
}

/// The columns of `state_columns!` as read back.
#[derive(sqlx::FromRow)]
struct StateRow {
    name: Option<String>,
    pipeline: Option<String>,
    stage: Option<String>,
    status: Option<String>,
    lifecycle_stage: Option<String>,
    amount_cents: Option<i64>,
    probability_bp: Option<i64>,
    close_date: Option<String>,
    owner_id: Option<String>,
    source: Option<String>,
    campaign_id: Option<String>,
    is_closed: bool,
    is_won: bool,
    crm_created_at_ms: Option<i64>,
    last_activity_at_ms: Option<i64>,
    fields: Json<Map<String, Value>>,
}

impl From<StateRow> for RecordState {
    fn from(row: StateRow) -> Self {
        RecordState {
            name: row.name,
            pipeline: row.pipeline,
            stage: row.stage,
            status: row.status,
            lifecycle_stage: row.lifecycle_stage,
            amount_cents: row.amount_cents,
            probability_bp: row.probability_bp,
            close_date: row.close_date,
            owner_id: row.owner_id,
            source: row.source,
            campaign_id: row.campaign_id,
            is_closed: row.is_closed,
            is_won: row.is_won,
            crm_created_at: row.crm_created_at_ms,
            last_activity_at: row.last_activity_at_ms,
            fields: row.fields.0,
        }
    }
}

#[derive(sqlx::FromRow)]
struct VersionRow {
    id: i64,
    record_id: i64,
    valid_from_ms: i64,
    valid_to_ms: Option<i64>,
    valid_from_basis: String,
    observed_at_ms: i64,
    deleted: bool,
    #[sqlx(flatten)]
    state: StateRow,
}

impl From<VersionRow> for RecordVersion {
    fn from(row: VersionRow) -> Self {
        RecordVersion {
            id: row.id,
            record_id: row.record_id,
            valid_from: row.valid_from_ms,
            valid_to: row.valid_to_ms,
            valid_from_basis: ValidFromBasis::parse(&row.valid_from_basis),
            observed_at: row.observed_at_ms,
            deleted: row.deleted,
            state: row.state.into(),
        }
    }
}

#[derive(sqlx::FromRow)]
struct RecordRow {
    id: i64,
    connection_id: i64,
    object_kind: String,
    crm_object: String,
    crm_id: String,
    crm_modified_at_ms: i64,
    deleted_at_ms: Option<i64>,
    first_seen_at_ms: i64,
    last_seen_at_ms: i64,
    #[sqlx(flatten)]
    state: StateRow,
}

impl RecordRow {
    fn into_record(self) -> Result<StoredRecord, StoreError> {
        let kind = ObjectKind::parse(&self.object_kind).ok_or_else(|| {
            StoreError::Conflict(format!(
                "record {} has unknown object kind `{}`",
                self.id, self.object_kind
            ))
        })?;
        Ok(StoredRecord {
            id: self.id,
            connection_id: self.connection_id,
            kind,
            crm_object: self.crm_object,
            crm_id: self.crm_id,
            state: self.state.into(),
            crm_modified_at: self.crm_modified_at_ms,
            deleted_at: self.deleted_at_ms,
            first_seen_at: self.first_seen_at_ms,
            last_seen_at: self.last_seen_at_ms,
        })
    }
}

/// What is stored now for a record, enough to decide what an observation means.
#[derive(sqlx::FromRow)]
struct CurrentRow {
    crm_id: String,
    record_id: i64,
    content_hash: Vec<u8>,
    crm_modified_at_ms: i64,
    version_id: i64,
    valid_from_ms: i64,
}

impl StoreTx {
    /// Stores one observation of a record: a new version if its tracked content changed.
    pub async fn apply_observation(
        &mut self,
        obs: &RecordObservation,
    ) -> Result<ObservationOutcome, StoreError> {
        let mut outcomes = self.apply_observations(std::slice::from_ref(obs)).await?;
        Ok(outcomes.remove(0))
    }

    /// Stores a page of observations with the same meaning as [`Self::apply_observation`]
    /// applied to each in order, but in a few multi-row statements: a backfill is mostly
    /// first sightings, and one statement per row would make the database round trip the
    /// cost of the whole sync. Returns one outcome per observation, in order.
    pub async fn apply_observations(
        &mut self,
        batch: &[RecordObservation],
    ) -> Result<Vec<ObservationOutcome>, StoreError> {
        let mut outcomes = Vec::with_capacity(batch.len());
        for group in statement_groups(batch) {
            outcomes.extend(self.apply_group(group).await?);
        }
        Ok(outcomes)
    }

    /// Applies observations of distinct records of one connection and kind.
    async fn apply_group(
        &mut self,
        group: &[RecordObservation],
    ) -> Result<Vec<ObservationOutcome>, StoreError> {
        let hashes: Vec<Vec<u8>> = group.iter().map(RecordObservation::content_hash).collect();
        let mut current = self.current_rows(group).await?;
        let mut decided = Vec::with_capacity(group.len());
        let mut first_sightings = Vec::new();
        let mut unchanged: BTreeMap<Millis, Vec<i64>> = BTreeMap::new();
        for (obs, hash) in group.iter().zip(&hashes) {
            let outcome = match current.remove(&obs.crm_id) {
                None => {
                    first_sightings.push((obs, hash.as_slice()));
                    None
                }
                Some(row) if row.content_hash == *hash => {
                    unchanged
                        .entry(obs.observed_at)
                        .or_default()
                        .push(row.record_id);
                    Some(ObservationOutcome::Unchanged {
                        record_id: row.record_id,
                    })
                }
                Some(row) if obs.modified_at < row.crm_modified_at_ms => {
                    Some(ObservationOutcome::Stale {
                        record_id: row.record_id,
                    })
                }
                Some(row) => Some(self.replace_version(obs, hash, &row).await?),
            };
            decided.push(outcome);
        }
        for (observed_at, record_ids) in unchanged {
            self.touch_records(&record_ids, observed_at).await?;
        }
        let mut created = self.insert_records(&first_sightings).await?.into_iter();
        Ok(decided
            .into_iter()
            .map(|outcome| {
                outcome.unwrap_or_else(|| ObservationOutcome::Created {
                    record_id: created.next().expect("one id per first sighting"),
                })
            })
            .collect())
    }

    /// Closes the current version and opens one for the observed state.
    async fn replace_version(
        &mut self,
        obs: &RecordObservation,
        hash: &[u8],
        current: &CurrentRow,
    ) -> Result<ObservationOutcome, StoreError> {
        let (valid_from, basis) = if obs.modified_at > current.valid_from_ms {
            (obs.modified_at, ValidFromBasis::CrmModified)
        } else {
            // Same modification stamp, different content: the CRM recomputed something
            // (a formula) without recording when, so the best known start is our observation.
            (
                obs.observed_at.max(current.valid_from_ms + 1),
                ValidFromBasis::Observed,
            )
        };
        let previous = self.close_version(current.version_id, valid_from).await?;
        self.insert_versions(&[(current.record_id, obs, hash, valid_from, basis)])
            .await?;
        self.update_record(current.record_id, obs, hash).await?;
        Ok(ObservationOutcome::Changed {
            record_id: current.record_id,
            previous: Box::new(previous),
        })
    }

    /// The store's ids of records of one kind, by CRM id; ids not stored are left out.
    pub async fn record_ids(
        &mut self,
        connection_id: i64,
        kind: ObjectKind,
        crm_ids: &[&str],
    ) -> Result<HashMap<String, i64>, StoreError> {
        let mut found = HashMap::with_capacity(crm_ids.len());
        for chunk in crm_ids.chunks(ROWS_PER_STATEMENT) {
            let rows: Vec<(String, i64)> = dispatch!(self.inner(), tx => {
                let mut query = QueryBuilder::new("SELECT crm_id, id FROM records WHERE connection_id = ");
                query.push_bind(connection_id);
                query.push(" AND object_kind = ").push_bind(kind.as_str());
                query.push(" AND crm_id IN (");
                let mut ids = query.separated(", ");
                for id in chunk {
                    ids.push_bind(*id);
                }
                query.push(")");
                query.build_query_as().fetch_all(&mut **tx).await
            })
            .during("find records")?;
            found.extend(rows);
        }
        Ok(found)
    }

    /// Marks records of one kind as seen at `at` by CRM id (an id sweep found them in the CRM).
    pub async fn mark_seen(
        &mut self,
        connection_id: i64,
        kind: ObjectKind,
        crm_ids: &[&str],
        at: Millis,
    ) -> Result<(), StoreError> {
        for chunk in crm_ids.chunks(ROWS_PER_STATEMENT) {
            dispatch!(self.inner(), tx => {
                let mut query = QueryBuilder::new("UPDATE records SET last_seen_at_ms = ");
                query.push_bind(at);
                query.push(" WHERE last_seen_at_ms < ").push_bind(at);
                query.push(" AND connection_id = ").push_bind(connection_id);
                query.push(" AND object_kind = ").push_bind(kind.as_str());
                query.push(" AND crm_id IN (");
                let mut ids = query.separated(", ");
                for id in chunk {
                    ids.push_bind(*id);
                }
                query.push(")");
                query.build().execute(&mut **tx).await.map(|done| done.rows_affected())
            })
            .during("mark records seen")?;
        }
        Ok(())
    }

    /// The current rows of a group's records, by CRM id.
    async fn current_rows(
        &mut self,
        group: &[RecordObservation],
    ) -> Result<HashMap<String, CurrentRow>, StoreError> {
        let rows: Vec<CurrentRow> = dispatch!(self.inner(), tx => {
            let mut query = QueryBuilder::new(
                "SELECT r.crm_id, r.id AS record_id, r.content_hash, r.crm_modified_at_ms, v.id AS version_id, \
                 v.valid_from_ms FROM records r JOIN record_versions v ON v.record_id = r.id AND v.valid_to_ms IS NULL \
                 WHERE r.connection_id = ",
            );
            query.push_bind(group[0].connection_id);
            query.push(" AND r.object_kind = ").push_bind(group[0].kind.as_str());
            query.push(" AND r.crm_id IN (");
            let mut ids = query.separated(", ");
            for obs in group {
                ids.push_bind(obs.crm_id.as_str());
            }
            query.push(")");
            query.build_query_as().fetch_all(&mut **tx).await
        })
        .during("read current records")?;
        Ok(rows
            .into_iter()
            .map(|row| (row.crm_id.clone(), row))
            .collect())
    }

    /// Inserts first sightings and their first versions; returns their ids, in order.
    async fn insert_records(
        &mut self,
        sightings: &[(&RecordObservation, &[u8])],
    ) -> Result<Vec<i64>, StoreError> {
        if sightings.is_empty() {
            return Ok(Vec::new());
        }
        let inserted: Vec<(i64, String)> = dispatch!(self.inner(), tx => {
            let mut query = QueryBuilder::new(concat!(
                "INSERT INTO records (connection_id, object_kind, crm_object, crm_id, crm_modified_at_ms, \
                 content_hash, deleted_at_ms, first_seen_at_ms, last_seen_at_ms, ",
                state_columns!(),
                ") "
            ));
            query.push_values(sightings, |mut row, (obs, hash)| {
                bind_state!(
                    row.push_bind(obs.connection_id)
                        .push_bind(obs.kind.as_str())
                        .push_bind(obs.crm_object.as_str())
                        .push_bind(obs.crm_id.as_str())
                        .push_bind(obs.modified_at)
                        .push_bind(*hash)
                        .push_bind(obs.deleted.then_some(obs.modified_at))
                        .push_bind(obs.observed_at)
                        .push_bind(obs.observed_at),
                    obs.state,
                    push_bind
                );
            });
            query.push(" RETURNING id, crm_id");
            query.build_query_as().fetch_all(&mut **tx).await
        })
        .during("insert records")?;
        let ids: HashMap<String, i64> = inserted
            .into_iter()
            .map(|(id, crm_id)| (crm_id, id))
            .collect();
        let ids: Vec<i64> = sightings.iter().map(|(obs, _)| ids[&obs.crm_id]).collect();
        let versions: Vec<_> = sightings
            .iter()
            .zip(&ids)
            .map(|((obs, hash), id)| {
                (
                    *id,
                    *obs,
                    *hash,
                    obs.modified_at,
                    ValidFromBasis::CrmModified,
                )
            })
            .collect();
        self.insert_versions(&versions).await?;
        Ok(ids)
    }

    async fn update_record(
        &mut self,
        record_id: i64,
        obs: &RecordObservation,
        hash: &[u8],
    ) -> Result<(), StoreError> {
        let deleted_at = obs.deleted.then_some(obs.modified_at);
        dispatch!(self.inner(), tx => bind_state!(sqlx::query(
            "UPDATE records SET crm_modified_at_ms = $2, content_hash = $3, deleted_at_ms = $4, last_seen_at_ms = $5, \
             name = $6, pipeline = $7, stage = $8, status = $9, lifecycle_stage = $10, amount_cents = $11, \
             probability_bp = $12, close_date = $13, owner_id = $14, source = $15, campaign_id = $16, is_closed = $17, \
             is_won = $18, crm_created_at_ms = $19, last_activity_at_ms = $20, fields = $21 WHERE id = $1",
        )
        .bind(record_id)
        .bind(obs.modified_at)
        .bind(hash)
        .bind(deleted_at)
        .bind(obs.observed_at), obs.state)
        .execute(&mut **tx)
        .await
        .map(|done| done.rows_affected()))
        .during("update record")
        .map(drop)
    }

    /// Moves the last-seen time of records seen again unchanged.
    async fn touch_records(
        &mut self,
        record_ids: &[i64],
        observed_at: Millis,
    ) -> Result<(), StoreError> {
        dispatch!(self.inner(), tx => {
            let mut query = QueryBuilder::new("UPDATE records SET last_seen_at_ms = ");
            query.push_bind(observed_at);
            query.push(" WHERE last_seen_at_ms < ").push_bind(observed_at);
            query.push(" AND id IN (");
            let mut ids = query.separated(", ");
            for id in record_ids {
                ids.push_bind(*id);
            }
            query.push(")");
            query.build().execute(&mut **tx).await.map(|done| done.rows_affected())
        })
        .during("touch records")
        .map(drop)
    }

    /// Inserts versions: (record id, observation, content hash, valid from, its basis).
    async fn insert_versions(
        &mut self,
        versions: &[(i64, &RecordObservation, &[u8], Millis, ValidFromBasis)],
    ) -> Result<(), StoreError> {
        dispatch!(self.inner(), tx => {
            let mut query = QueryBuilder::new(concat!(
                "INSERT INTO record_versions (record_id, connection_id, object_kind, valid_from_ms, valid_from_basis, \
                 observed_at_ms, content_hash, deleted, sync_run_id, ",
                state_columns!(),
                ") "
            ));
            query.push_values(versions, |mut row, (record_id, obs, hash, valid_from, basis)| {
                bind_state!(
                    row.push_bind(*record_id)
                        .push_bind(obs.connection_id)
                        .push_bind(obs.kind.as_str())
                        .push_bind(*valid_from)
                        .push_bind(basis.as_str())
                        .push_bind(obs.observed_at)
                        .push_bind(*hash)
                        .push_bind(obs.deleted)
                        .push_bind(obs.sync_run_id),
                    obs.state,
                    push_bind
                );
            });
            query.build().execute(&mut **tx).await.map(|done| done.rows_affected())
        })
        .during("insert versions")
        .map(drop)
    }

    async fn close_version(
        &mut self,
        version_id: i64,
        valid_to: Millis,
    ) -> Result<RecordVersion, StoreError> {
        let row: VersionRow = dispatch!(self.inner(), tx => sqlx::query_as(VERSION_CLOSE_SQL)
            .bind(version_id)
            .bind(valid_to)
            .fetch_one(&mut **tx)
            .await)
        .during("close version")?;
        Ok(row.into())
    }
}

/// Splits a batch into runs that one set of multi-row statements can apply: one connection
/// and kind, each record at most once (a record changed while a query was paging can come
/// back on a later row), at most [`ROWS_PER_STATEMENT`] rows.
fn statement_groups(batch: &[RecordObservation]) -> Vec<&[RecordObservation]> {
    let mut groups = Vec::new();
    let mut start = 0;
    let mut seen = HashSet::new();
    for (index, obs) in batch.iter().enumerate() {
        let first = &batch[start];
        let fits = index - start < ROWS_PER_STATEMENT
            && obs.connection_id == first.connection_id
            && obs.kind == first.kind
            && !seen.contains(obs.crm_id.as_str());
        if !fits {
            groups.push(&batch[start..index]);
            start = index;
            seen.clear();
        }
        seen.insert(obs.crm_id.as_str());
    }
    if start < batch.len() {
        groups.push(&batch[start..]);
    }
    groups
}

const VERSION_CLOSE_SQL: &str = concat!(
    "UPDATE record_versions SET valid_to_ms = $2 WHERE id = $1 RETURNING ",
    version_columns!()
);

impl Store {
    /// The current row of a record, by its CRM id.
    pub async fn record(
        &self,
        connection_id: i64,
        kind: ObjectKind,
        crm_id: &str,
    ) -> Result<Option<StoredRecord>, StoreError> {
        let row: Option<RecordRow> = dispatch!(self.pool(), pool => sqlx::query_as(
            concat!(
                "SELECT id, connection_id, object_kind, crm_object, crm_id, crm_modified_at_ms, deleted_at_ms, \
                 first_seen_at_ms, last_seen_at_ms, ",
                state_columns!(),
                " FROM records WHERE connection_id = $1 AND object_kind = $2 AND crm_id = $3"
            ),
        )
        .bind(connection_id)
        .bind(kind.as_str())
        .bind(crm_id)
        .fetch_optional(pool)
        .await)
        .during("read record")?;
        row.map(RecordRow::into_record).transpose()
    }

    /// How many records of one kind are stored (deleted ones too) and the oldest CRM creation
    /// time among them: what a first history backfill plans its query windows from.
    pub async fn created_span(
        &self,
        connection_id: i64,
        kind: ObjectKind,
    ) -> Result<CreatedSpan, StoreError> {
        let (count, oldest): (i64, Option<i64>) = dispatch!(self.pool(), pool => sqlx::query_as(
            "SELECT COUNT(*), MIN(crm_created_at_ms) FROM records \
             WHERE connection_id = $1 AND object_kind = $2",
        )
        .bind(connection_id)
        .bind(kind.as_str())
        .fetch_one(pool)
        .await)
        .during("count records")?;
        Ok(CreatedSpan {
            count: count.max(0) as u64,
            oldest,
        })
    }

    /// Live records of one kind not seen since `before`, at most `limit` of them: after an id
    /// sweep that began at `before`, the ones the CRM no longer has.
    pub async fn unseen_since(
        &self,
        connection_id: i64,
        kind: ObjectKind,
        before: Millis,
        limit: i64,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        let rows: Vec<RecordRow> = dispatch!(self.pool(), pool => sqlx::query_as(
            concat!(
                "SELECT id, connection_id, object_kind, crm_object, crm_id, crm_modified_at_ms, deleted_at_ms, \
                 first_seen_at_ms, last_seen_at_ms, ",
                state_columns!(),
                " FROM records WHERE connection_id = $1 AND object_kind = $2 AND deleted_at_ms IS NULL \
                 AND last_seen_at_ms < $3 ORDER BY id LIMIT $4"
            ),
        )
        .bind(connection_id)
        .bind(kind.as_str())
        .bind(before)
        .bind(limit)
        .fetch_all(pool)
        .await)
        .during("read unseen records")?;
        rows.into_iter().map(RecordRow::into_record).collect()
    }

    /// Every version of a record, oldest first.
    pub async fn versions(&self, record_id: i64) -> Result<Vec<RecordVersion>, StoreError> {
        let rows: Vec<VersionRow> = dispatch!(self.pool(), pool => sqlx::query_as(
            concat!("SELECT ", version_columns!(), " FROM record_versions WHERE record_id = $1 ORDER BY valid_from_ms")
        )
        .bind(record_id)
        .fetch_all(pool)
        .await)
        .during("read versions")?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    /// The version of a record that was valid at `at`, if the record existed then.
    pub async fn version_as_of(
        &self,
        record_id: i64,
        at: Millis,
    ) -> Result<Option<RecordVersion>, StoreError> {
        let row: Option<VersionRow> = dispatch!(self.pool(), pool => sqlx::query_as(
            concat!(
                "SELECT ", version_columns!(), " FROM record_versions WHERE record_id = $1 AND valid_from_ms <= $2 \
                 AND (valid_to_ms IS NULL OR valid_to_ms > $2) ORDER BY valid_from_ms DESC LIMIT 1"
            )
        )
        .bind(record_id)
        .bind(at)
        .fetch_optional(pool)
        .await)
        .during("read version as of")?;
        Ok(row.map(Into::into))
    }
}
