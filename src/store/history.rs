//! Facts with their own timestamps: stage transitions, lifecycle events and field changes.
//!
//! Each is unique on its natural key, so replaying a page after a crash, or reading the same
//! CRM history twice, stores nothing twice; the insert reports whether the fact was new.

use std::collections::HashMap;

use serde_json::Value;
use sqlx::types::Json;
use sqlx::QueryBuilder;

use super::{dispatch, QueryContext, Store, StoreError, StoreTx, ROWS_PER_STATEMENT};
use crate::record::{ActorKind, LifecycleEvent, Millis, ObjectKind, Origin};

/// A stage change to store.
#[derive(Debug, Clone)]
pub struct NewStageTransition<'a> {
    /// The record that moved.
    pub record_id: i64,
    /// Its connection.
    pub connection_id: i64,
    /// Its kind (deal, or lead for status changes).
    pub kind: ObjectKind,
    /// The pipeline it moved in.
    pub pipeline: Option<&'a str>,
    /// The stage it left (`None` at creation).
    pub from_stage: Option<&'a str>,
    /// The stage it entered.
    pub to_stage: &'a str,
    /// When the CRM recorded the move.
    pub changed_at: Millis,
    /// The user or source id that made it.
    pub changed_by: Option<&'a str>,
    /// What kind of actor that was.
    pub actor: ActorKind,
    /// The CRM's own label for the source (`CRM_UI`, `API`, `OpportunityHistory`, …).
    pub change_source: Option<&'a str>,
    /// CRM history or observed difference.
    pub origin: Origin,
    /// Id of the CRM history row, when there is one.
    pub crm_history_id: Option<&'a str>,
    /// Deal amount at the move.
    pub amount_cents: Option<i64>,
    /// When pipewarden learned of it.
    pub observed_at: Millis,
}

/// A stored stage change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageTransition {
    /// Transition id.
    pub id: i64,
    /// The record that moved.
    pub record_id: i64,
    /// Pipeline.
    pub pipeline: Option<String>,
    /// Stage left.
    pub from_stage: Option<String>,
    /// Stage entered.
    pub to_stage: String,
    /// When.
    pub changed_at: Millis,
    /// By whom.
    pub changed_by: Option<String>,
    /// What kind of actor.
    pub actor: ActorKind,
    /// CRM history or observed difference.
    pub origin: String,
}

/// A lifecycle milestone to store.
#[derive(Debug, Clone)]
pub struct NewLifecycleEvent<'a> {
    /// The lead, contact or deal.
    pub record_id: i64,
    /// Its connection.
    pub connection_id: i64,
    /// Its kind.
    pub kind: ObjectKind,
    /// The milestone.
    pub event: LifecycleEvent,
    /// When it happened, by the CRM's clock.
    pub occurred_at: Millis,
    /// Where the fact comes from.
    pub origin: Origin,
    /// Extra context (campaign, policy, the qualifying milestone of a return).
    pub detail: Option<&'a Value>,
    /// When pipewarden learned of it.
    pub observed_at: Millis,
}

/// A stored lifecycle milestone.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredLifecycleEvent {
    /// The milestone.
    pub event: LifecycleEvent,
    /// When it happened.
    pub occurred_at: Millis,
    /// Where the fact comes from.
    pub origin: String,
    /// Extra context.
    pub detail: Option<Value>,
}

/// A stage transition a multi-row insert stored (it was not stored before).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct InsertedTransition {
    /// Its id.
    pub id: i64,
    /// The record.
    pub record_id: i64,
    /// When it happened.
    #[sqlx(rename = "changed_at_ms")]
    pub changed_at: Millis,
    /// The stage it entered.
    pub to_stage: String,
}

/// A field change the CRM recorded in its own history.
#[derive(Debug, Clone)]
pub struct FieldChange<'a> {
    /// The record.
    pub record_id: i64,
    /// Field API name.
    pub field: &'a str,
    /// Value before (any JSON type: history values are untyped in the CRM).
    pub old_value: Option<&'a Value>,
    /// Value after.
    pub new_value: Option<&'a Value>,
    /// When.
    pub changed_at: Millis,
    /// By whom.
    pub changed_by: Option<&'a str>,
    /// The CRM's label for the source.
    pub change_source: Option<&'a str>,
    /// The CRM history row id, or a stand-in that tells equal-time changes apart.
    pub dedupe_key: &'a str,
}

impl StoreTx {
    /// Stores a stage transition; returns its id if it was new, `None` if already stored.
    pub async fn record_stage_transition(
        &mut self,
        t: &NewStageTransition<'_>,
    ) -> Result<Option<i64>, StoreError> {
        let inserted = self
            .record_stage_transitions(std::slice::from_ref(t))
            .await?;
        Ok(inserted.first().map(|new| new.id))
    }

    /// Stores stage transitions in a few statements; returns the ones that were new (the
    /// others were already stored).
    pub async fn record_stage_transitions(
        &mut self,
        transitions: &[NewStageTransition<'_>],
    ) -> Result<Vec<InsertedTransition>, StoreError> {
        let mut inserted = Vec::new();
        for chunk in transitions.chunks(ROWS_PER_STATEMENT) {
            let rows: Vec<InsertedTransition> = dispatch!(self.inner(), tx => {
                let mut query = QueryBuilder::new(
                    "INSERT INTO stage_transitions (record_id, connection_id, object_kind, pipeline, from_stage, \
                     to_stage, changed_at_ms, changed_by, actor_kind, change_source, origin, crm_history_id, \
                     amount_cents, observed_at_ms) ",
                );
                query.push_values(chunk, |mut row, t| {
                    row.push_bind(t.record_id)
                        .push_bind(t.connection_id)
                        .push_bind(t.kind.as_str())
                        .push_bind(t.pipeline)
                        .push_bind(t.from_stage)
                        .push_bind(t.to_stage)
                        .push_bind(t.changed_at)
                        .push_bind(t.changed_by)
                        .push_bind(t.actor.as_str())
                        .push_bind(t.change_source)
                        .push_bind(t.origin.as_str())
                        .push_bind(t.crm_history_id)
                        .push_bind(t.amount_cents)
                        .push_bind(t.observed_at);
                });
                query.push(
                    " ON CONFLICT (record_id, changed_at_ms, to_stage) DO NOTHING \
                     RETURNING id, record_id, changed_at_ms, to_stage",
                );
                query.build_query_as().fetch_all(&mut **tx).await
            })
            .during("record stage transitions")?;
            inserted.extend(rows);
        }
        Ok(inserted)
    }

    /// Every stored stage of these records with its start, oldest first (this transaction's
    /// included), so a page of history can tell each move's previous stage without a query
    /// per row.
    pub async fn stage_timelines(
        &mut self,
        record_ids: &[i64],
    ) -> Result<HashMap<i64, Vec<(Millis, String)>>, StoreError> {
        let mut timelines: HashMap<i64, Vec<(Millis, String)>> = HashMap::new();
        for chunk in record_ids.chunks(ROWS_PER_STATEMENT) {
            let rows: Vec<(i64, Millis, String)> = dispatch!(self.inner(), tx => {
                let mut query = QueryBuilder::new(
                    "SELECT record_id, changed_at_ms, to_stage FROM stage_transitions WHERE record_id IN (",
                );
                let mut ids = query.separated(", ");
                for id in chunk {
                    ids.push_bind(*id);
                }
                query.push(") ORDER BY record_id, changed_at_ms, id");
                query.build_query_as().fetch_all(&mut **tx).await
            })
            .during("read stage timelines")?;
            for (record_id, at, stage) in rows {
                timelines.entry(record_id).or_default().push((at, stage));
            }
        }
        Ok(timelines)
    }

    /// Stores a lifecycle milestone; returns whether it was new.
    pub async fn record_lifecycle_event(
        &mut self,
        e: &NewLifecycleEvent<'_>,
    ) -> Result<bool, StoreError> {
        let inserted: Option<i64> = dispatch!(self.inner(), tx => sqlx::query_scalar(
            "INSERT INTO lifecycle_events (record_id, connection_id, object_kind, event, occurred_at_ms, origin, detail, \
             observed_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (record_id, event, occurred_at_ms) DO NOTHING RETURNING id",
        )
        .bind(e.record_id)
        .bind(e.connection_id)
        .bind(e.kind.as_str())
        .bind(e.event.as_str())
        .bind(e.occurred_at)
        .bind(e.origin.as_str())
        .bind(e.detail.map(Json))
        .bind(e.observed_at)
        .fetch_optional(&mut **tx)
        .await)
        .during("record lifecycle event")?;
        Ok(inserted.is_some())
    }

    /// Stores many lifecycle milestones in a few statements (a backfill's creations); the
    /// ones already stored are left as they are.
    pub async fn record_lifecycle_events(
        &mut self,
        events: &[NewLifecycleEvent<'_>],
    ) -> Result<(), StoreError> {
        for chunk in events.chunks(ROWS_PER_STATEMENT) {
            dispatch!(self.inner(), tx => {
                let mut query = QueryBuilder::new(
                    "INSERT INTO lifecycle_events (record_id, connection_id, object_kind, event, occurred_at_ms, \
                     origin, detail, observed_at_ms) ",
                );
                query.push_values(chunk, |mut row, e| {
                    row.push_bind(e.record_id)
                        .push_bind(e.connection_id)
                        .push_bind(e.kind.as_str())
                        .push_bind(e.event.as_str())
                        .push_bind(e.occurred_at)
                        .push_bind(e.origin.as_str())
                        .push_bind(e.detail.map(Json))
                        .push_bind(e.observed_at);
                });
                query.push(" ON CONFLICT (record_id, event, occurred_at_ms) DO NOTHING");
                query.build().execute(&mut **tx).await.map(|done| done.rows_affected())
            })
            .during("record lifecycle events")?;
        }
        Ok(())
    }

    /// Stores a field change from CRM history; returns whether it was new.
    pub async fn record_field_change(&mut self, c: &FieldChange<'_>) -> Result<bool, StoreError> {
        Ok(self.record_field_changes(std::slice::from_ref(c)).await? > 0)
    }

    /// Stores field changes from CRM history in a few statements; returns how many were new.
    pub async fn record_field_changes(
        &mut self,
        changes: &[FieldChange<'_>],
    ) -> Result<u64, StoreError> {
        let mut inserted = 0;
        for chunk in changes.chunks(ROWS_PER_STATEMENT) {
            inserted += dispatch!(self.inner(), tx => {
                let mut query = QueryBuilder::new(
                    "INSERT INTO field_history (record_id, field, old_value, new_value, changed_at_ms, changed_by, \
                     change_source, dedupe_key) ",
                );
                query.push_values(chunk, |mut row, c| {
                    row.push_bind(c.record_id)
                        .push_bind(c.field)
                        .push_bind(c.old_value.map(Json))
                        .push_bind(c.new_value.map(Json))
                        .push_bind(c.changed_at)
                        .push_bind(c.changed_by)
                        .push_bind(c.change_source)
                        .push_bind(c.dedupe_key);
                });
                query.push(" ON CONFLICT (record_id, field, changed_at_ms, dedupe_key) DO NOTHING");
                query.build().execute(&mut **tx).await.map(|done| done.rows_affected())
            })
            .during("record field changes")?;
        }
        Ok(inserted)
    }
}

impl Store {
    /// A record's stage transitions, oldest first.
    pub async fn transitions(&self, record_id: i64) -> Result<Vec<StageTransition>, StoreError> {
        type Row = (
            i64,
            i64,
            Option<String>,
            Option<String>,
            String,
            Millis,
            Option<String>,
            String,
            String,
        );
        let rows: Vec<Row> = dispatch!(self.pool(), pool => sqlx::query_as(
            "SELECT id, record_id, pipeline, from_stage, to_stage, changed_at_ms, changed_by, actor_kind, origin \
             FROM stage_transitions WHERE record_id = $1 ORDER BY changed_at_ms, id",
        )
        .bind(record_id)
        .fetch_all(pool)
        .await)
        .during("read transitions")?;
        Ok(rows
            .into_iter()
            .map(|r| StageTransition {
                id: r.0,
                record_id: r.1,
                pipeline: r.2,
                from_stage: r.3,
                to_stage: r.4,
                changed_at: r.5,
                changed_by: r.6,
                actor: ActorKind::parse(&r.7).unwrap_or(ActorKind::Unknown),
                origin: r.8,
            })
            .collect())
    }

    /// A record's lifecycle milestones, oldest first.
    pub async fn lifecycle_events(
        &self,
        record_id: i64,
    ) -> Result<Vec<StoredLifecycleEvent>, StoreError> {
        let rows: Vec<(String, Millis, String, Option<Json<Value>>)> = dispatch!(self.pool(), pool => sqlx::query_as(
            "SELECT event, occurred_at_ms, origin, detail FROM lifecycle_events WHERE record_id = $1 \
             ORDER BY occurred_at_ms, id",
        )
        .bind(record_id)
        .fetch_all(pool)
        .await)
        .during("read lifecycle events")?;
        rows.into_iter()
            .map(|(event, occurred_at, origin, detail)| {
                let event = LifecycleEvent::parse(&event).ok_or_else(|| {
                    StoreError::Conflict(format!("unknown lifecycle event `{event}` in the store"))
                })?;
                Ok(StoredLifecycleEvent {
                    event,
                    occurred_at,
                    origin,
                    detail: detail.map(|Json(value)| value),
                })
            })
            .collect()
    }

    /// How many field changes are stored for a record.
    pub async fn field_change_count(&self, record_id: i64) -> Result<i64, StoreError> {
        dispatch!(self.pool(), pool => sqlx::query_scalar(
            "SELECT COUNT(*) FROM field_history WHERE record_id = $1",
        )
        .bind(record_id)
        .fetch_one(pool)
        .await)
        .during("count field changes")
    }
}
