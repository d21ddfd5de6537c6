//! Connections, sync runs, cursors and quarantined records: the sync engine's bookkeeping.

use serde_json::Value;
use sqlx::types::Json;
use sqlx::QueryBuilder;

use super::{dispatch, QueryContext, Store, StoreError, StoreTx, ROWS_PER_STATEMENT};
use crate::config::settings::CrmKind;
use crate::record::Millis;

/// The message of a run whose process ended before the run could close its audit row.
pub const ABANDONED_RUN_MESSAGE: &str =
    "ended without closing this row (process killed or crashed, or lease lost); the next run resumed from its last checkpoint";

/// How a sync run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncRunStatus {
    /// Still going, or its process died and no run of the connection started since.
    Running,
    /// Finished everything it set out to do.
    Succeeded,
    /// Stopped by an error.
    Failed,
    /// Stopped at the API budget; the next run resumes from the cursor.
    BudgetStopped,
    /// Stopped by shutdown; the next run resumes from the cursor.
    Interrupted,
}

impl SyncRunStatus {
    /// The name stored in the database and shown to users.
    pub fn as_str(self) -> &'static str {
        match self {
            SyncRunStatus::Running => "running",
            SyncRunStatus::Succeeded => "succeeded",
            SyncRunStatus::Failed => "failed",
            SyncRunStatus::BudgetStopped => "budget_stopped",
            SyncRunStatus::Interrupted => "interrupted",
        }
    }

    fn parse(text: &str) -> SyncRunStatus {
        match text {
            "succeeded" => SyncRunStatus::Succeeded,
            "failed" => SyncRunStatus::Failed,
            "budget_stopped" => SyncRunStatus::BudgetStopped,
            "interrupted" => SyncRunStatus::Interrupted,
            _ => SyncRunStatus::Running,
        }
    }
}

/// The counters and outcome of one sync run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncRunSummary {
    /// Run id.
    pub id: i64,
    /// How it ended.
    pub status: SyncRunStatus,
    /// Started at.
    pub started_at: Millis,
    /// Finished at, once finished.
    pub finished_at: Option<Millis>,
    /// Records fetched.
    pub records_seen: i64,
    /// New versions stored.
    pub versions_written: i64,
    /// New stage transitions stored.
    pub transitions_written: i64,
    /// CRM API calls made.
    pub api_calls: i64,
    /// Errors met (retried or not).
    pub errors: i64,
    /// Records quarantined.
    pub quarantined: i64,
    /// Why it stopped, for failed or stopped runs.
    pub message: Option<String>,
}

/// A record that could not be parsed, kept with its reason so nothing is silently lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantinedRecord {
    /// CRM object name.
    pub crm_object: String,
    /// CRM id (or a stand-in when the id itself was unreadable).
    pub crm_id: String,
    /// What was wrong, naming the field.
    pub reason: String,
    /// How many times it was seen in this state.
    pub occurrences: i64,
    /// Last time it was seen.
    pub last_seen_at: Millis,
}

/// A record to set aside, with what was wrong with it.
#[derive(Debug, Clone)]
pub struct QuarantineEntry<'a> {
    /// The connection it came from.
    pub connection_id: i64,
    /// CRM object name.
    pub crm_object: &'a str,
    /// CRM id, or a stand-in when the id itself was unreadable.
    pub crm_id: &'a str,
    /// What was wrong, naming the field.
    pub reason: &'a str,
    /// The raw payload as received, for diagnosis (it may not even be valid JSON).
    pub payload: Option<&'a str>,
    /// The sync run that met it.
    pub sync_run_id: Option<i64>,
    /// When it was met.
    pub seen_at: Millis,
}

impl Store {
    /// Records where the connection's records open in the CRM's UI.
    pub async fn set_record_url_base(
        &self,
        connection_id: i64,
        base: &str,
    ) -> Result<(), StoreError> {
        dispatch!(self.pool(), pool => sqlx::query(
            "UPDATE connections SET record_url_base = $2 WHERE id = $1",
        )
        .bind(connection_id)
        .bind(base)
        .execute(pool)
        .await
        .map(drop))
        .during("store record URL base")
    }

    /// Where the connection's records open in the CRM's UI, once a sync has learnt it.
    pub async fn record_url_base(&self, connection_id: i64) -> Result<Option<String>, StoreError> {
        dispatch!(self.pool(), pool => sqlx::query_scalar(
            "SELECT record_url_base FROM connections WHERE id = $1",
        )
        .bind(connection_id)
        .fetch_optional(pool)
        .await
        .map(Option::flatten))
        .during("read record URL base")
    }

    /// Registers a configured connection (or finds it) and returns its id.
    ///
    /// A name first stored for one CRM cannot be reused for the other: its history would mix.
    pub async fn ensure_connection(
        &self,
        name: &str,
        kind: CrmKind,
        now: Millis,
    ) -> Result<i64, StoreError> {
        dispatch!(self.pool(), pool => sqlx::query(
            "INSERT INTO connections (name, kind, created_at_ms) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(kind.as_str())
        .bind(now)
        .execute(pool)
        .await
        .map(|done| done.rows_affected()))
        .during("register connection")?;
        let (id, stored_kind): (i64, String) = dispatch!(self.pool(), pool => sqlx::query_as(
            "SELECT id, kind FROM connections WHERE name = $1",
        )
        .bind(name)
        .fetch_one(pool)
        .await)
        .during("register connection")?;
        if stored_kind != kind.as_str() {
            return Err(StoreError::Conflict(format!(
                "connection `{name}` holds {stored_kind} data; it cannot become a {} connection (give it a new name)",
                kind.as_str()
            )));
        }
        Ok(id)
    }

    /// Opens the audit row of a sync run.
    pub async fn start_sync_run(
        &self,
        connection_id: i64,
        triggered_by: &str,
        replica: &str,
        now: Millis,
    ) -> Result<i64, StoreError> {
        dispatch!(self.pool(), pool => sqlx::query_scalar(
            "INSERT INTO sync_runs (connection_id, triggered_by, replica, started_at_ms, status) \
             VALUES ($1, $2, $3, $4, 'running') RETURNING id",
        )
        .bind(connection_id)
        .bind(triggered_by)
        .bind(replica)
        .bind(now)
        .fetch_one(pool)
        .await)
        .during("start sync run")
    }

    /// Marks the runs of a connection still shown as running as failed, and says how many.
    /// The run that holds the connection's sync lease calls this before it starts, so none of
    /// those runs should be alive: each ended before closing its row (process killed or
    /// crashed, lease lost). SQLite has no lease between processes and relies on the
    /// commands' sole-replica claim for this. When a run ended is unknown and stays empty; a
    /// run wrongly taken for ended would still close its own row with its outcome.
    pub async fn close_abandoned_sync_runs(&self, connection_id: i64) -> Result<u64, StoreError> {
        dispatch!(self.pool(), pool => sqlx::query(
            "UPDATE sync_runs SET status = 'failed', message = $2 \
             WHERE connection_id = $1 AND status = 'running'",
        )
        .bind(connection_id)
        .bind(ABANDONED_RUN_MESSAGE)
        .execute(pool)
        .await
        .map(|done| done.rows_affected()))
        .during("close abandoned sync runs")
    }

    /// Closes the audit row of a sync run with its counters.
    pub async fn finish_sync_run(&self, summary: &SyncRunSummary) -> Result<(), StoreError> {
        dispatch!(self.pool(), pool => sqlx::query(
            "UPDATE sync_runs SET status = $2, finished_at_ms = $3, records_seen = $4, versions_written = $5, \
             transitions_written = $6, api_calls = $7, errors = $8, quarantined = $9, message = $10 WHERE id = $1",
        )
        .bind(summary.id)
        .bind(summary.status.as_str())
        .bind(summary.finished_at)
        .bind(summary.records_seen)
        .bind(summary.versions_written)
        .bind(summary.transitions_written)
        .bind(summary.api_calls)
        .bind(summary.errors)
        .bind(summary.quarantined)
        .bind(summary.message.as_deref())
        .execute(pool)
        .await
        .map(|done| done.rows_affected()))
        .during("finish sync run")
        .map(drop)
    }

    /// The most recent sync runs of a connection, newest first.
    pub async fn recent_sync_runs(
        &self,
        connection_id: i64,
        limit: i64,
    ) -> Result<Vec<SyncRunSummary>, StoreError> {
        type Row = (
            i64,
            String,
            Millis,
            Option<Millis>,
            i64,
            i64,
            i64,
            i64,
            i64,
            i64,
            Option<String>,
        );
        let rows: Vec<Row> = dispatch!(self.pool(), pool => sqlx::query_as(
            "SELECT id, status, started_at_ms, finished_at_ms, records_seen, versions_written, transitions_written, \
             api_calls, errors, quarantined, message FROM sync_runs WHERE connection_id = $1 \
             ORDER BY started_at_ms DESC, id DESC LIMIT $2",
        )
        .bind(connection_id)
        .bind(limit)
        .fetch_all(pool)
        .await)
        .during("read sync runs")?;
        Ok(rows
            .into_iter()
            .map(|r| SyncRunSummary {
                id: r.0,
                status: SyncRunStatus::parse(&r.1),
                started_at: r.2,
                finished_at: r.3,
                records_seen: r.4,
                versions_written: r.5,
                transitions_written: r.6,
                api_calls: r.7,
                errors: r.8,
                quarantined: r.9,
                message: r.10,
            })
            .collect())
    }

    /// Where a stream of an object stopped, if it ever ran.
    pub async fn cursor(
        &self,
        connection_id: i64,
        crm_object: &str,
        stream: &str,
    ) -> Result<Option<Value>, StoreError> {
        let found: Option<Json<Value>> = dispatch!(self.pool(), pool => sqlx::query_scalar(
            "SELECT position FROM sync_cursors WHERE connection_id = $1 AND crm_object = $2 AND stream = $3",
        )
        .bind(connection_id)
        .bind(crm_object)
        .bind(stream)
        .fetch_optional(pool)
        .await)
        .during("read cursor")?;
        Ok(found.map(|Json(value)| value))
    }

    /// Quarantined records of a connection that are not resolved, most recent first.
    pub async fn quarantined(
        &self,
        connection_id: i64,
    ) -> Result<Vec<QuarantinedRecord>, StoreError> {
        let rows: Vec<(String, String, String, i64, Millis)> = dispatch!(self.pool(), pool => sqlx::query_as(
            "SELECT crm_object, crm_id, reason, occurrences, last_seen_at_ms FROM quarantined_records \
             WHERE connection_id = $1 AND resolved_at_ms IS NULL ORDER BY last_seen_at_ms DESC, id DESC",
        )
        .bind(connection_id)
        .fetch_all(pool)
        .await)
        .during("read quarantine")?;
        Ok(rows
            .into_iter()
            .map(
                |(crm_object, crm_id, reason, occurrences, last_seen_at)| QuarantinedRecord {
                    crm_object,
                    crm_id,
                    reason,
                    occurrences,
                    last_seen_at,
                },
            )
            .collect())
    }
}

impl StoreTx {
    /// Moves a stream's cursor; commits with the page it follows, or not at all.
    pub async fn save_cursor(
        &mut self,
        connection_id: i64,
        crm_object: &str,
        stream: &str,
        position: &Value,
        sync_run_id: Option<i64>,
        now: Millis,
    ) -> Result<(), StoreError> {
        dispatch!(self.inner(), tx => sqlx::query(
            "INSERT INTO sync_cursors (connection_id, crm_object, stream, position, updated_at_ms, sync_run_id) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (connection_id, crm_object, stream) DO UPDATE SET \
             position = excluded.position, updated_at_ms = excluded.updated_at_ms, sync_run_id = excluded.sync_run_id",
        )
        .bind(connection_id)
        .bind(crm_object)
        .bind(stream)
        .bind(Json(position))
        .bind(now)
        .bind(sync_run_id)
        .execute(&mut **tx)
        .await
        .map(|done| done.rows_affected()))
        .during("save cursor")
        .map(drop)
    }

    /// Sets a record aside with the reason it could not be read; repeated sightings are counted.
    pub async fn quarantine(&mut self, entry: &QuarantineEntry<'_>) -> Result<(), StoreError> {
        dispatch!(self.inner(), tx => sqlx::query(
            "INSERT INTO quarantined_records (connection_id, crm_object, crm_id, reason, payload, sync_run_id, \
             first_seen_at_ms, last_seen_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $7) \
             ON CONFLICT (connection_id, crm_object, crm_id) DO UPDATE SET reason = excluded.reason, \
             payload = excluded.payload, sync_run_id = excluded.sync_run_id, last_seen_at_ms = excluded.last_seen_at_ms, \
             occurrences = quarantined_records.occurrences + 1, resolved_at_ms = NULL",
        )
        .bind(entry.connection_id)
        .bind(entry.crm_object)
        .bind(entry.crm_id)
        .bind(entry.reason)
        .bind(entry.payload)
        .bind(entry.sync_run_id)
        .bind(entry.seen_at)
        .execute(&mut **tx)
        .await
        .map(|done| done.rows_affected()))
        .during("quarantine record")
        .map(drop)
    }

    /// Marks quarantined records as resolved, once a later sighting of each parsed cleanly;
    /// returns how many were.
    pub async fn release_from_quarantine(
        &mut self,
        connection_id: i64,
        crm_object: &str,
        crm_ids: &[&str],
        now: Millis,
    ) -> Result<u64, StoreError> {
        let mut released = 0;
        for chunk in crm_ids.chunks(ROWS_PER_STATEMENT) {
            released += dispatch!(self.inner(), tx => {
                let mut query = QueryBuilder::new("UPDATE quarantined_records SET resolved_at_ms = ");
                query.push_bind(now);
                query.push(" WHERE connection_id = ").push_bind(connection_id);
                query.push(" AND crm_object = ").push_bind(crm_object);
                query.push(" AND resolved_at_ms IS NULL AND crm_id IN (");
                let mut ids = query.separated(", ");
                for id in chunk {
                    ids.push_bind(*id);
                }
                query.push(")");
                query.build().execute(&mut **tx).await.map(|done| done.rows_affected())
            })
            .during("release quarantined records")?;
        }
        Ok(released)
    }
}

/// How much the store holds for one connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectionTotals {
    /// Current records by object kind name, with how many of them are deleted.
    pub records: Vec<(String, i64, i64)>,
    /// Record versions.
    pub versions: i64,
    /// Stage transitions.
    pub transitions: i64,
    /// Lifecycle milestones.
    pub lifecycle_events: i64,
    /// Field changes from CRM history.
    pub field_changes: i64,
    /// Unresolved quarantined records.
    pub quarantined: i64,
}

impl Store {
    /// Counts of what is stored for a connection.
    pub async fn connection_totals(
        &self,
        connection_id: i64,
    ) -> Result<ConnectionTotals, StoreError> {
        let records: Vec<(String, i64, i64)> = dispatch!(self.pool(), pool => sqlx::query_as(
            "SELECT object_kind, COUNT(*), COUNT(deleted_at_ms) FROM records WHERE connection_id = $1 \
             GROUP BY object_kind ORDER BY object_kind",
        )
        .bind(connection_id)
        .fetch_all(pool)
        .await)
        .during("count records")?;
        let versions = self
            .count_for(
                connection_id,
                "SELECT COUNT(*) FROM record_versions WHERE connection_id = $1",
            )
            .await?;
        let transitions = self
            .count_for(
                connection_id,
                "SELECT COUNT(*) FROM stage_transitions WHERE connection_id = $1",
            )
            .await?;
        let lifecycle_events = self
            .count_for(
                connection_id,
                "SELECT COUNT(*) FROM lifecycle_events WHERE connection_id = $1",
            )
            .await?;
        let field_changes = self.count_for(
            connection_id,
            "SELECT COUNT(*) FROM field_history f JOIN records r ON r.id = f.record_id WHERE r.connection_id = $1",
        )
        .await?;
        let quarantined = self.count_for(
            connection_id,
            "SELECT COUNT(*) FROM quarantined_records WHERE connection_id = $1 AND resolved_at_ms IS NULL",
        )
        .await?;
        Ok(ConnectionTotals {
            records,
            versions,
            transitions,
            lifecycle_events,
            field_changes,
            quarantined,
        })
    }

    async fn count_for(&self, connection_id: i64, sql: &'static str) -> Result<i64, StoreError> {
        dispatch!(self.pool(), pool => sqlx::query_scalar(sql).bind(connection_id).fetch_one(pool).await)
            .during("count stored rows")
    }
}
