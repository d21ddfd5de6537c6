//! Stage-gate violations, their status changes, the progress of each rule through the store,
//! and the Slack messages decided with them (the alert outbox).
//!
//! A violation is unique per (rule, transition): evaluating the same transition twice, or
//! replaying a sync, inserts nothing. Alerts are written in the same transaction as the
//! violation or status change that decides them, so a crash loses or duplicates none.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::Arc;

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess,
    Visitor,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sqlx::types::Json;
use sqlx::QueryBuilder;
use tokio::sync::mpsc;

use super::{dispatch, Backend, QueryContext, Store, StoreError, StoreTx, ROWS_PER_STATEMENT};
use crate::record::Millis;

/// A deal's stage move with the record's version at the move, as rules read it.
#[derive(Debug, Clone)]
pub struct MoveAtVersion {
    /// Transition id.
    pub transition_id: i64,
    /// The record.
    pub record_id: i64,
    /// The record's CRM id.
    pub crm_id: String,
    /// Pipeline of the move.
    pub pipeline: Option<String>,
    /// Stage left.
    pub from_stage: Option<String>,
    /// Stage entered.
    pub to_stage: String,
    /// When.
    pub changed_at_ms: Millis,
    /// Who or what moved it (a user, owner or app id).
    pub changed_by: Option<String>,
    /// The actor kind the CRM's history gave.
    pub actor_kind: String,
    /// Id of the version valid at the move; `None` when the store has no state that early.
    pub version_id: Option<i64>,
    /// The version's start.
    pub valid_from_ms: Option<Millis>,
    /// The version's end.
    pub valid_to_ms: Option<Millis>,
    /// Deal name at the move.
    pub name: Option<String>,
    /// Amount at the move, cents.
    pub amount_cents: Option<i64>,
    /// Owner at the move.
    pub owner_id: Option<String>,
    /// Values at the move of the fields asked for (those the version has).
    pub fields: Option<Json<Map<String, Value>>>,
}

/// A violation to store.
#[derive(Debug, Clone)]
pub struct NewViolation<'a> {
    /// Rule name.
    pub rule_name: &'a str,
    /// Connection.
    pub connection_id: i64,
    /// The deal.
    pub record_id: i64,
    /// The move.
    pub transition_id: i64,
    /// Stage left.
    pub from_stage: Option<&'a str>,
    /// Stage entered.
    pub to_stage: &'a str,
    /// `[{"stage", "field"}]` as JSON.
    pub missing_fields: &'a Value,
    /// Skipped stages as a JSON array.
    pub skipped_stages: &'a Value,
    /// When the move happened.
    pub changed_at: Millis,
    /// Who made it.
    pub changed_by: Option<&'a str>,
    /// What kind of actor.
    pub actor_kind: &'a str,
    /// Owner at the move.
    pub owner_id: Option<&'a str>,
    /// forward, skip, closed_lost or backward.
    pub kind: &'a str,
    /// Whether an alert goes out for it.
    pub alerted: bool,
    /// When pipewarden found it.
    pub detected_at: Millis,
}

/// A stored violation.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct Violation {
    /// Violation id.
    pub id: i64,
    /// Rule name.
    pub rule_name: String,
    /// Connection name.
    pub connection: String,
    /// The deal's store id.
    pub record_id: i64,
    /// The deal's CRM id.
    pub crm_id: String,
    /// The move's id.
    pub transition_id: i64,
    /// forward, skip, closed_lost or backward.
    pub kind: String,
    /// Stage left.
    pub from_stage: Option<String>,
    /// Stage entered.
    pub to_stage: String,
    /// Required fields empty at the move.
    #[sqlx(json)]
    pub missing_fields: Value,
    /// Stages jumped over.
    #[sqlx(json)]
    pub skipped_stages: Value,
    /// When the move happened.
    pub changed_at_ms: Millis,
    /// Who made it.
    pub changed_by: Option<String>,
    /// What kind of actor.
    pub actor_kind: String,
    /// Owner at the move.
    pub owner_id: Option<String>,
    /// open, resolved_late, waived or superseded.
    pub status: String,
    /// When pipewarden found it.
    pub detected_at_ms: Millis,
    /// When it stopped being open.
    pub resolved_at_ms: Option<Millis>,
    /// Who waived it.
    pub waived_by: Option<String>,
    /// Why.
    pub waive_reason: Option<String>,
}

impl Violation {
    /// How long it stayed open, for resolved-late violations.
    pub fn delay_ms(&self) -> Option<Millis> {
        self.resolved_at_ms.map(|at| at - self.changed_at_ms)
    }
}

/// The columns of [`Violation`], as a literal so that queries built on it stay `&'static str`.
macro_rules! violation_select {
    () => {
        "SELECT v.id, v.rule_name, c.name AS connection, v.record_id, r.crm_id, v.transition_id, \
     v.kind, v.from_stage, v.to_stage, v.missing_fields, v.skipped_stages, v.changed_at_ms, v.changed_by, v.actor_kind, \
     v.owner_id, v.status, v.detected_at_ms, v.resolved_at_ms, v.waived_by, v.waive_reason \
     FROM violations v JOIN connections c ON c.id = v.connection_id JOIN records r ON r.id = v.record_id"
    };
}

/// Which violations to list; every filter is optional.
#[derive(Debug, Clone, Default)]
pub struct ViolationFilter {
    /// Connection name.
    pub connection: Option<String>,
    /// Owner id at the move.
    pub owner: Option<String>,
    /// Rule name.
    pub rule: Option<String>,
    /// Status.
    pub status: Option<String>,
    /// Moves at or after this instant.
    pub from_ms: Option<Millis>,
    /// Moves before this instant.
    pub to_ms: Option<Millis>,
    /// At most this many, newest moves first.
    pub limit: i64,
}

/// An open violation, as the resolution pass reads it.
#[derive(Debug, Clone, sqlx::FromRow, Deserialize)]
pub struct OpenViolation {
    /// Violation id.
    pub id: i64,
    /// The deal.
    pub record_id: i64,
    /// forward, skip, closed_lost or backward.
    pub kind: String,
    /// Stage entered.
    pub to_stage: String,
    /// When the move happened.
    pub changed_at_ms: Millis,
    /// Required fields empty at the move.
    pub missing_fields: Json<Value>,
}

/// A version of a violation's record that came after its move.
#[derive(Debug, Clone, sqlx::FromRow, Deserialize)]
pub struct LaterVersion {
    /// The violation.
    pub violation_id: i64,
    /// When the version started.
    pub valid_from_ms: Millis,
    /// The record was deleted in it.
    pub deleted: bool,
    /// Its field values.
    pub fields: Json<Map<String, Value>>,
}

/// A move of a violation's record that came after its move.
#[derive(Debug, Clone, sqlx::FromRow, Deserialize)]
pub struct LaterMove {
    /// The violation.
    pub violation_id: i64,
    /// When.
    pub changed_at_ms: Millis,
    /// Stage entered.
    pub to_stage: String,
}

/// Open violations with what followed them, oldest first.
#[derive(Debug, Clone, Default)]
pub struct OpenViolations {
    /// The violations.
    pub violations: Vec<OpenViolation>,
    /// Later versions of their records, by violation then time.
    pub versions: Vec<LaterVersion>,
    /// Later moves of their records, by violation then time.
    pub moves: Vec<LaterMove>,
}

/// The filter of open violations on touched records; `$1` rule, `$2` connection, `$3` last
/// transition id, `$4` last version id.
macro_rules! open_touched {
    () => {
        "WHERE v.rule_name = $1 AND v.connection_id = $2 AND v.status = 'open' AND v.record_id IN ( \
         SELECT record_id FROM record_versions WHERE connection_id = $2 AND id > $4 \
         UNION SELECT record_id FROM stage_transitions WHERE connection_id = $2 AND id > $3)"
    };
}

/// [`open_touched!`] when no transition was read before (last transition id 0): every
/// violation's record then has a later move, its own, so only `$1` rule and `$2` connection
/// filter. Reading every version and move of the connection to find that out cost PostgreSQL
/// about a second per query after a backfill of a million moves.
macro_rules! open_every {
    () => {
        "WHERE v.rule_name = $1 AND v.connection_id = $2 AND v.status = 'open'"
    };
}

/// [`open_touched!`] for SQLite: there the `IN (… UNION …)` form reads every version and move
/// of the connection through an index that lacks `record_id` (seconds per query after a
/// backfill), while these probes look up each open violation's record in the unique indexes
/// of versions and moves, which hold the row id. SQLite checks `$3 = 0` (see [`open_every!`])
/// per row before probing.
macro_rules! open_touched_sqlite {
    () => {
        "WHERE v.rule_name = $1 AND v.connection_id = $2 AND v.status = 'open' AND ($3 = 0 \
         OR EXISTS (SELECT 1 FROM record_versions n WHERE n.record_id = v.record_id AND n.id > $4) \
         OR EXISTS (SELECT 1 FROM stage_transitions n WHERE n.record_id = v.record_id AND n.id > $3))"
    };
}

/// The start of [`Store::field_history_holds`]'s query, up to the test of the field name
/// (`$1` the connection); the field index finds the rows, the join keeps its deals'.
macro_rules! field_history_of_deals {
    () => {
        "SELECT EXISTS (SELECT 1 FROM field_history f JOIN records r ON r.id = f.record_id \
         WHERE r.connection_id = $1 AND r.object_kind = 'deal' AND "
    };
}

/// The end of [`Store::moves_page_end`]'s query, after the test of the connection.
macro_rules! page_end_tail {
    () => {
        "AND t.object_kind = 'deal' AND t.id > $2 AND t.changed_at_ms >= $3 ORDER BY t.id LIMIT 1 OFFSET $4"
    };
}

/// The moves page of [`Store::moves_at_version`] after its columns; `$1` connection, `$2`
/// last transition id before the page, `$3` earliest move, `$4` page size, `$5` last
/// transition id of the page. (The `+` keeps SQLite from reading the time index and sorting:
/// the id range is the cheap path.)
macro_rules! moves_at_version_from {
    () => {
        "FROM stage_transitions t JOIN records r ON r.id = t.record_id \
         LEFT JOIN record_versions v ON v.id = (SELECT w.id FROM record_versions w WHERE w.record_id = t.record_id \
           AND w.valid_from_ms <= t.changed_at_ms ORDER BY w.valid_from_ms DESC LIMIT 1) \
         WHERE +t.connection_id = $1 AND t.object_kind = 'deal' AND t.id > $2 AND t.id <= $5 \
         AND t.changed_at_ms >= $3 ORDER BY t.id LIMIT $4"
    };
}

/// An open violation that evaluation found ended.
#[derive(Debug, Clone)]
pub struct Ending {
    /// The violation.
    pub violation_id: i64,
    /// `resolved_late` or `superseded`.
    pub status: &'static str,
    /// When it ended, in the CRM's time.
    pub at: Millis,
    /// What the event says (the delay of a late resolution).
    pub note: Option<String>,
}

/// A Slack message to deliver.
#[derive(Debug, Clone)]
pub struct NewAlert<'a> {
    /// Unique per message: a replay enqueues nothing twice.
    pub dedupe_key: &'a str,
    /// `violation`, `resolution` or `digest_item`.
    pub kind: &'a str,
    /// Slack channel (`None`: the webhook's own).
    pub channel: Option<&'a str>,
    /// Block Kit body.
    pub payload: &'a Value,
    /// The violation it is about.
    pub violation_id: Option<i64>,
    /// The message it replies to in a thread.
    pub thread_of_id: Option<i64>,
    /// Not before this instant.
    pub not_before: Millis,
    /// Now.
    pub created_at: Millis,
}

impl StoreTx {
    /// Stores violations and their `open` events in a few statements; returns the id of each
    /// new one by its transition (those already stored for their rule and move are left be).
    pub async fn insert_violations(
        &mut self,
        violations: &[NewViolation<'_>],
    ) -> Result<HashMap<i64, i64>, StoreError> {
        let mut ids = HashMap::new();
        for chunk in violations.chunks(ROWS_PER_STATEMENT) {
            let rows: Vec<(i64, i64)> = dispatch!(self.inner(), tx => {
                let mut query = QueryBuilder::new(
                    "INSERT INTO violations (rule_name, connection_id, record_id, transition_id, from_stage, \
                     to_stage, missing_fields, skipped_stages, changed_at_ms, changed_by, actor_kind, owner_id, \
                     status, detected_at_ms, kind, alerted) ",
                );
                query.push_values(chunk, |mut row, v| {
                    row.push_bind(v.rule_name)
                        .push_bind(v.connection_id)
                        .push_bind(v.record_id)
                        .push_bind(v.transition_id)
                        .push_bind(v.from_stage)
                        .push_bind(v.to_stage)
                        .push_bind(Json(v.missing_fields))
                        .push_bind(Json(v.skipped_stages))
                        .push_bind(v.changed_at)
                        .push_bind(v.changed_by)
                        .push_bind(v.actor_kind)
                        .push_bind(v.owner_id)
                        .push_bind("open")
                        .push_bind(v.detected_at)
                        .push_bind(v.kind)
                        .push_bind(v.alerted);
                });
                query.push(" ON CONFLICT (rule_name, transition_id) DO NOTHING RETURNING transition_id, id");
                query.build_query_as().fetch_all(&mut **tx).await
            })
            .during("store violations")?;
            let new: HashSet<i64> = rows.iter().map(|(transition, _)| *transition).collect();
            ids.extend(rows);
            let opened: Vec<&NewViolation> = chunk
                .iter()
                .filter(|v| new.contains(&v.transition_id))
                .collect();
            self.open_events(&opened, &ids).await?;
        }
        Ok(ids)
    }

    /// The `open` event of each new violation, in one statement.
    async fn open_events(
        &mut self,
        opened: &[&NewViolation<'_>],
        ids: &HashMap<i64, i64>,
    ) -> Result<(), StoreError> {
        if opened.is_empty() {
            return Ok(());
        }
        dispatch!(self.inner(), tx => {
            let mut query = QueryBuilder::new(
                "INSERT INTO violation_events (violation_id, status, at_ms, actor, note) ",
            );
            query.push_values(opened, |mut row, v| {
                row.push_bind(ids[&v.transition_id])
                    .push_bind("open")
                    .push_bind(v.detected_at)
                    .push_bind("pipewarden")
                    .push_bind(v.kind);
            });
            query.build().execute(&mut **tx).await.map(drop)
        })
        .during("record violation events")
    }

    /// Records a status change of a violation.
    pub async fn violation_event(
        &mut self,
        violation_id: i64,
        status: &str,
        at: Millis,
        actor: Option<&str>,
        note: Option<&str>,
    ) -> Result<(), StoreError> {
        dispatch!(self.inner(), tx => sqlx::query(
            "INSERT INTO violation_events (violation_id, status, at_ms, actor, note) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(violation_id)
        .bind(status)
        .bind(at)
        .bind(actor)
        .bind(note)
        .execute(&mut **tx)
        .await
        .map(drop))
        .during("store violation event")
    }

    /// Ends an open violation (`resolved_late`, `superseded` or `waived`) as of `at` (the CRM's
    /// time of what ended it) and records the event at `recorded_at`; returns `false` when it
    /// was no longer open.
    pub async fn close_violation(
        &mut self,
        violation_id: i64,
        status: &str,
        at: Millis,
        recorded_at: Millis,
        actor: Option<&str>,
        note: Option<&str>,
    ) -> Result<bool, StoreError> {
        let waived_by = (status == "waived").then_some(actor).flatten();
        let reason = (status == "waived").then_some(note).flatten();
        let changed = dispatch!(self.inner(), tx => sqlx::query(
            "UPDATE violations SET status = $2, resolved_at_ms = $3, waived_by = $4, waive_reason = $5 \
             WHERE id = $1 AND status = 'open'",
        )
        .bind(violation_id)
        .bind(status)
        .bind(at)
        .bind(waived_by)
        .bind(reason)
        .execute(&mut **tx)
        .await
        .map(|done| done.rows_affected()))
        .during("close violation")?;
        if changed == 0 {
            return Ok(false);
        }
        self.violation_event(violation_id, status, recorded_at, actor, note)
            .await?;
        Ok(true)
    }

    /// Ends many open violations at once (`resolved_late` or `superseded`), each as of its
    /// own `at`, with an event recorded at `recorded_at` by `actor`; returns the ids that were
    /// still open and are now ended. A few statements per 500 violations, where one each would
    /// cost a round trip per violation on a networked database.
    pub async fn close_violations(
        &mut self,
        endings: &[Ending],
        recorded_at: Millis,
        actor: &str,
    ) -> Result<HashSet<i64>, StoreError> {
        let mut closed = HashSet::new();
        for chunk in endings.chunks(ROWS_PER_STATEMENT) {
            let ids: Vec<i64> = dispatch!(self.inner(), tx => {
                let mut query = QueryBuilder::new("WITH e (id, status, at_ms) AS (");
                query.push_values(chunk, |mut row, e| {
                    row.push_bind(e.violation_id).push_bind(e.status).push_bind(e.at);
                });
                query.push(
                    ") UPDATE violations SET status = e.status, resolved_at_ms = e.at_ms FROM e \
                     WHERE violations.id = e.id AND violations.status = 'open' RETURNING violations.id",
                );
                query.build_query_scalar().fetch_all(&mut **tx).await
            })
            .during("close violations")?;
            let now_closed: Vec<&Ending> = chunk
                .iter()
                .filter(|e| ids.contains(&e.violation_id))
                .collect();
            if !now_closed.is_empty() {
                dispatch!(self.inner(), tx => {
                    let mut query = QueryBuilder::new(
                        "INSERT INTO violation_events (violation_id, status, at_ms, actor, note) ",
                    );
                    query.push_values(&now_closed, |mut row, e| {
                        row.push_bind(e.violation_id)
                            .push_bind(e.status)
                            .push_bind(recorded_at)
                            .push_bind(actor)
                            .push_bind(e.note.as_deref());
                    });
                    query.build().execute(&mut **tx).await.map(drop)
                })
                .during("record violation endings")?;
            }
            closed.extend(ids);
        }
        Ok(closed)
    }

    /// Puts a Slack message in the outbox; returns its id if it was new.
    pub async fn enqueue_alert(&mut self, a: &NewAlert<'_>) -> Result<Option<i64>, StoreError> {
        dispatch!(self.inner(), tx => sqlx::query_scalar(
            "INSERT INTO alert_outbox (dedupe_key, kind, channel, payload, violation_id, thread_of_id, status, \
             next_attempt_at_ms, created_at_ms) VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7, $8) \
             ON CONFLICT (dedupe_key) DO NOTHING RETURNING id",
        )
        .bind(a.dedupe_key)
        .bind(a.kind)
        .bind(a.channel)
        .bind(Json(a.payload))
        .bind(a.violation_id)
        .bind(a.thread_of_id)
        .bind(a.not_before)
        .bind(a.created_at)
        .fetch_optional(&mut **tx)
        .await)
        .during("enqueue alert")
    }

    /// The outbox message that announced a violation, if any.
    pub async fn alert_of_violation(
        &mut self,
        violation_id: i64,
    ) -> Result<Option<i64>, StoreError> {
        dispatch!(self.inner(), tx => sqlx::query_scalar(
            "SELECT id FROM alert_outbox WHERE violation_id = $1 AND kind IN ('violation', 'digest_item') \
             ORDER BY id LIMIT 1",
        )
        .bind(violation_id)
        .fetch_optional(&mut **tx)
        .await)
        .during("read alert of violation")
    }

    /// Moves a rule's progress marks forward.
    pub async fn set_rule_progress(
        &mut self,
        rule_name: &str,
        connection_id: i64,
        last_transition_id: i64,
        last_version_id: i64,
        now: Millis,
    ) -> Result<(), StoreError> {
        dispatch!(self.inner(), tx => sqlx::query(
            "INSERT INTO rule_progress (rule_name, connection_id, last_transition_id, last_version_id, updated_at_ms) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (rule_name, connection_id) DO UPDATE SET \
             last_transition_id = excluded.last_transition_id, last_version_id = excluded.last_version_id, \
             updated_at_ms = excluded.updated_at_ms",
        )
        .bind(rule_name)
        .bind(connection_id)
        .bind(last_transition_id)
        .bind(last_version_id)
        .bind(now)
        .execute(&mut **tx)
        .await
        .map(drop))
        .during("store rule progress")
    }
}

impl Store {
    /// The connection's id by name, without creating it.
    pub async fn connection_id(&self, name: &str) -> Result<Option<i64>, StoreError> {
        dispatch!(self.pool(), pool => sqlx::query_scalar("SELECT id FROM connections WHERE name = $1")
            .bind(name)
            .fetch_optional(pool)
            .await)
        .during("read connection id")
    }

    /// How far a rule has read: (last transition id, last version id).
    pub async fn rule_progress(
        &self,
        rule_name: &str,
        connection_id: i64,
    ) -> Result<Option<(i64, i64)>, StoreError> {
        dispatch!(self.pool(), pool => sqlx::query_as(
            "SELECT last_transition_id, last_version_id FROM rule_progress WHERE rule_name = $1 AND connection_id = $2",
        )
        .bind(rule_name)
        .bind(connection_id)
        .fetch_optional(pool)
        .await)
        .during("read rule progress")
    }

    /// The newest version id of a connection (0 when none).
    pub async fn last_version_id(&self, connection_id: i64) -> Result<i64, StoreError> {
        let id: Option<i64> = dispatch!(self.pool(), pool => sqlx::query_scalar(
            "SELECT MAX(id) FROM record_versions WHERE connection_id = $1",
        )
        .bind(connection_id)
        .fetch_one(pool)
        .await)
        .during("read last version id")?;
        Ok(id.unwrap_or(0))
    }

    /// The moves pipewarden's own reverts made on a connection: for each violation whose stage
    /// write-back the CRM applied, the first later move of its deal from the
    /// violating stage back to the stage it came from. Evaluation does not judge them: a
    /// revert is a backward move, and a rule that sets `backward_requires` would otherwise
    /// open a violation against the integration user for pipewarden's own write.
    pub async fn revert_moves(&self, connection_id: i64) -> Result<HashSet<i64>, StoreError> {
        let ids: Vec<i64> = dispatch!(self.pool(), pool => sqlx::query_scalar(
            "SELECT MIN(t.id) FROM writeback_outbox w \
             JOIN violations v ON v.id = w.violation_id \
             JOIN stage_transitions t ON t.record_id = v.record_id AND t.changed_at_ms > v.changed_at_ms \
               AND t.from_stage = v.to_stage AND t.to_stage = v.from_stage \
             WHERE w.connection_id = $1 AND w.origin = 'revert' AND w.status = 'applied' \
               AND w.idempotency_key LIKE 'revert/%/stage' \
             GROUP BY v.id",
        )
        .bind(connection_id)
        .fetch_all(pool)
        .await)
        .during("read the moves of reverts")?;
        Ok(ids.into_iter().collect())
    }

    /// Deal moves of a connection in the transition id range `ids` (and, when given, at or
    /// after `since`), at most `limit` of them, oldest id first, each with the record's
    /// version valid at the move and, of its fields, those named in `fields` (a deal may carry
    /// hundreds; a rule reads a few).
    ///
    /// SQLite folds the page into one JSON text: sqlx-sqlite hands every row over from its
    /// worker thread as a message of its own, which bounded reading to some 45,000 moves/s,
    /// while one text per page costs a single hand-over and a `serde_json` parse. The stored
    /// field values are spliced in as they are stored (valid JSON, written by this store), so
    /// SQLite does not parse them. PostgreSQL streams rows over its socket and reads per row.
    ///
    /// Where the CRM's own field history (Salesforce `OpportunityFieldHistory`) recorded a
    /// wanted field changing after the version began and by the move, its latest such value
    /// is the field's value at the move: a version is what a sync saw, and a rep who fills a
    /// field, moves the deal and edits it again between two syncs leaves no version with the
    /// field filled and the old stage.
    pub async fn moves_at_version(
        &self,
        connection_id: i64,
        ids: MoveIds,
        since: Option<Millis>,
        limit: i64,
        fields: &HashSet<String>,
    ) -> Result<Vec<MoveAtVersion>, StoreError> {
        let mut moves = self
            .read_moves_page(connection_id, ids, since, limit, fields)
            .await?;
        // An index probe: pages need not share its answer.
        if self.field_history_holds(connection_id, fields).await? {
            self.apply_field_history(&mut moves, fields).await?;
        }
        Ok(moves)
    }

    /// Whether the CRM's field history holds any change of `fields` on the connection's
    /// deals; when it holds none, reading moves skips looking it up.
    async fn field_history_holds(
        &self,
        connection_id: i64,
        fields: &HashSet<String>,
    ) -> Result<bool, StoreError> {
        let names: Vec<&str> = fields.iter().map(String::as_str).collect();
        match self.pool() {
            Backend::Sqlite(pool) => {
                sqlx::query_scalar(concat!(
                    field_history_of_deals!(),
                    "f.field IN (SELECT value FROM json_each($2)))"
                ))
                .bind(connection_id)
                .bind(Json(&names))
                .fetch_one(pool)
                .await
            }
            Backend::Postgres(pool) => {
                sqlx::query_scalar(concat!(field_history_of_deals!(), "f.field = ANY($2))"))
                    .bind(connection_id)
                    .bind(&names)
                    .fetch_one(pool)
                    .await
            }
        }
        .during("look for field history")
    }

    /// Sets each move's wanted fields to the last value the CRM's field history gives them
    /// between the version's start and the move (see [`Store::moves_at_version`]).
    async fn apply_field_history(
        &self,
        moves: &mut [MoveAtVersion],
        fields: &HashSet<String>,
    ) -> Result<(), StoreError> {
        let Some(latest) = moves.iter().map(|m| m.changed_at_ms).max() else {
            return Ok(());
        };
        let records: Vec<i64> = moves
            .iter()
            .map(|m| m.record_id)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let names: Vec<&str> = fields.iter().map(String::as_str).collect();
        // A row with neither value says only that the field changed (Salesforce records long
        // text fields so), not what it became.
        let changes: Vec<(i64, String, Option<Json<Value>>, Millis)> = match self.pool() {
            Backend::Sqlite(pool) => {
                sqlx::query_as(
                    "SELECT record_id, field, new_value, changed_at_ms FROM field_history \
                 WHERE record_id IN (SELECT value FROM json_each($1)) \
                 AND field IN (SELECT value FROM json_each($2)) AND changed_at_ms <= $3 \
                 AND (old_value IS NOT NULL OR new_value IS NOT NULL) \
                 ORDER BY record_id, changed_at_ms, id",
                )
                .bind(Json(&records))
                .bind(Json(&names))
                .bind(latest)
                .fetch_all(pool)
                .await
            }
            Backend::Postgres(pool) => {
                sqlx::query_as(
                    "SELECT record_id, field, new_value, changed_at_ms FROM field_history \
                 WHERE record_id = ANY($1) AND field = ANY($2) AND changed_at_ms <= $3 \
                 AND (old_value IS NOT NULL OR new_value IS NOT NULL) \
                 ORDER BY record_id, changed_at_ms, id",
                )
                .bind(&records)
                .bind(&names)
                .bind(latest)
                .fetch_all(pool)
                .await
            }
        }
        .during("read field history at the moves")?;
        let mut by_record: HashMap<i64, Vec<(String, Option<Value>, Millis)>> = HashMap::new();
        for (record, field, value, at) in changes {
            by_record
                .entry(record)
                .or_default()
                .push((field, value.map(|Json(v)| v), at));
        }
        for m in moves.iter_mut() {
            let (Some(Json(values)), Some(changes)) =
                (m.fields.as_mut(), by_record.get(&m.record_id))
            else {
                continue;
            };
            // Only what changed after the version began and by the move, oldest first so the
            // last change wins: older changes are in the version already, or were undone by
            // edits it shows.
            let since = m.valid_from_ms.unwrap_or(Millis::MIN);
            for (field, value, _) in changes
                .iter()
                .filter(|(_, _, at)| *at > since && *at <= m.changed_at_ms)
            {
                values.insert(field.clone(), value.clone().unwrap_or(Value::Null));
            }
        }
        Ok(())
    }

    async fn read_moves_page(
        &self,
        connection_id: i64,
        ids: MoveIds,
        since: Option<Millis>,
        limit: i64,
        fields: &HashSet<String>,
    ) -> Result<Vec<MoveAtVersion>, StoreError> {
        const OPERATION: &str = "read moves with their versions";
        let since = since.unwrap_or(i64::MIN);
        let through = ids.through.unwrap_or(i64::MAX);
        match self.pool() {
            Backend::Sqlite(pool) => {
                let page: Option<String> = sqlx::query_scalar(MOVES_AT_VERSION_SQLITE)
                    .bind(connection_id)
                    .bind(ids.after)
                    .bind(since)
                    .bind(limit)
                    .bind(through)
                    .fetch_one(pool)
                    .await
                    .during(OPERATION)?;
                let Some(page) = page else {
                    return Ok(Vec::new());
                };
                let mut json = serde_json::Deserializer::from_str(&page);
                let mut moves = PageSeed(fields)
                    .deserialize(&mut json)
                    .and_then(|moves| json.end().map(|()| moves))
                    .map_err(|err| sqlx::Error::Decode(Box::new(err)))
                    .during(OPERATION)?;
                // group_concat keeps the page's order in practice, not by contract; sorting
                // sorted rows is one pass.
                moves.sort_unstable_by_key(|m| m.transition_id);
                Ok(moves)
            }
            Backend::Postgres(pool) => sqlx::query(MOVES_AT_VERSION_POSTGRES)
                .bind(connection_id)
                .bind(ids.after)
                .bind(since)
                .bind(limit)
                .bind(through)
                .try_map(|row| move_from_row(&row, fields))
                .fetch_all(pool)
                .await
                .during(OPERATION),
        }
    }

    /// [`Store::moves_at_version`] page after page (with the `fields` named), read by a task
    /// of its own ahead of the caller, so that later pages are read while the caller judges
    /// and stores the current one. The task first finds where each page ends (a probe of the
    /// id index), so that it can read two pages at once on two connections: reading the
    /// versions at the moves is the database's work and one connection keeps one core busy.
    /// Reads hold a connection only while they read, never while a page waits to be handed
    /// over, so a small pool does not deadlock against the caller's transaction.
    pub fn moves_at_version_pages(
        &self,
        connection_id: i64,
        after_id: i64,
        since: Option<Millis>,
        page: i64,
        fields: HashSet<String>,
    ) -> MovePages {
        let (sender, pages) = mpsc::channel(PAGES_AHEAD);
        let store = self.clone();
        let fields = Arc::new(fields);
        tokio::spawn(async move {
            let mut reads = VecDeque::new();
            let mut next = Some(after_id);
            loop {
                while reads.len() < READS_AT_ONCE && !sender.is_closed() {
                    let Some(after) = next.take() else { break };
                    let through = match store
                        .moves_page_end(connection_id, after, since, page)
                        .await
                    {
                        Ok(through) => through,
                        Err(err) => {
                            // Handed over after the pages before it.
                            reads.push_back(tokio::spawn(async move { Err(err) }));
                            break;
                        }
                    };
                    let ids = MoveIds { after, through };
                    // A bounded page is read whole: a move committed late with an id inside
                    // it would otherwise push the page's last move out, and that move would
                    // never be read.
                    let limit = if through.is_some() { i64::MAX } else { page };
                    let (store, fields) = (store.clone(), fields.clone());
                    reads.push_back(tokio::spawn(async move {
                        store
                            .moves_at_version(connection_id, ids, since, limit, &fields)
                            .await
                    }));
                    next = through;
                }
                let Some(read) = reads.pop_front() else {
                    return;
                };
                // A read that panicked is an error the caller sees, not an early last page.
                let read = match read.await {
                    Ok(read) => read,
                    Err(_) => {
                        Err(sqlx::Error::WorkerCrashed).during("read moves with their versions")
                    }
                };
                if read.as_ref().is_ok_and(Vec::is_empty) {
                    // The last page, open-ended, found nothing after the one before it.
                    continue;
                }
                let failed = read.is_err();
                // A closed channel means the caller stopped reading.
                if sender.send(read).await.is_err() || failed {
                    return;
                }
            }
        });
        MovePages { pages }
    }

    /// The id of the `page`th deal move after transition `after_id` (at or after `since`):
    /// where a page of that many ends. `None` when fewer are left, so the page runs to the end.
    async fn moves_page_end(
        &self,
        connection_id: i64,
        after_id: i64,
        since: Option<Millis>,
        page: i64,
    ) -> Result<Option<i64>, StoreError> {
        let since = since.unwrap_or(i64::MIN);
        let skip = page.max(1) - 1;
        // The same path as the pages' own query: the id index, with the connection compared
        // bare on PostgreSQL and kept off its index on SQLite (see MOVES_AT_VERSION_POSTGRES).
        let sql = match self.pool() {
            Backend::Sqlite(_) => concat!(
                "SELECT t.id FROM stage_transitions t WHERE +t.connection_id = $1 ",
                page_end_tail!()
            ),
            Backend::Postgres(_) => concat!(
                "SELECT t.id FROM stage_transitions t WHERE t.connection_id = $1 ",
                page_end_tail!()
            ),
        };
        dispatch!(self.pool(), pool => sqlx::query_scalar(sql)
            .bind(connection_id)
            .bind(after_id)
            .bind(since)
            .bind(skip)
            .fetch_optional(pool)
            .await)
        .during("find where a page of moves ends")
    }

    /// A rule's open violations on records that got a new version or move after the marks,
    /// with every later version and move of their records: what the resolution pass needs,
    /// in three queries whatever the number of violations. Later versions are read only for
    /// violations that miss fields: a skip with nothing missing cannot be mended by them.
    /// SQLite folds each answer into one JSON text, as [`Store::moves_at_version`] does.
    pub async fn open_violations_touched(
        &self,
        rule_name: &str,
        connection_id: i64,
        after_transition_id: i64,
        after_version_id: i64,
    ) -> Result<OpenViolations, StoreError> {
        let marks = (
            rule_name,
            connection_id,
            after_transition_id,
            after_version_id,
        );
        let violations: Vec<OpenViolation> = self
            .open_touched_rows(marks, "read open violations", OPEN_VIOLATIONS)
            .await?;
        if violations.is_empty() {
            return Ok(OpenViolations::default());
        }
        let versions: Vec<LaterVersion> = self
            .open_touched_rows(marks, "read versions after open violations", LATER_VERSIONS)
            .await?;
        let moves: Vec<LaterMove> = self
            .open_touched_rows(marks, "read moves after open violations", LATER_MOVES)
            .await?;
        Ok(OpenViolations {
            violations,
            versions,
            moves,
        })
    }

    /// One of the resolution pass's queries, bound to the rule's marks: the SQLite form
    /// answers one JSON text, the PostgreSQL form rows.
    async fn open_touched_rows<T>(
        &self,
        (rule_name, connection_id, after_transition_id, after_version_id): (&str, i64, i64, i64),
        operation: &'static str,
        query: ResolutionQuery,
    ) -> Result<Vec<T>, StoreError>
    where
        T: DeserializeOwned + for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
    {
        match self.pool() {
            Backend::Sqlite(pool) => {
                let rows: Option<String> = sqlx::query_scalar(query.sqlite)
                    .bind(rule_name)
                    .bind(connection_id)
                    .bind(after_transition_id)
                    .bind(after_version_id)
                    .fetch_one(pool)
                    .await
                    .during(operation)?;
                rows_from_json(rows, operation)
            }
            Backend::Postgres(pool) if after_transition_id == 0 => {
                sqlx::query_as(query.postgres_every)
                    .bind(rule_name)
                    .bind(connection_id)
                    .fetch_all(pool)
                    .await
                    .during(operation)
            }
            Backend::Postgres(pool) => sqlx::query_as(query.postgres_touched)
                .bind(rule_name)
                .bind(connection_id)
                .bind(after_transition_id)
                .bind(after_version_id)
                .fetch_all(pool)
                .await
                .during(operation),
        }
    }

    /// One violation.
    pub async fn violation(&self, id: i64) -> Result<Option<Violation>, StoreError> {
        dispatch!(self.pool(), pool => sqlx::query_as(VIOLATION_BY_ID).bind(id).fetch_optional(pool).await)
            .during("read violation")
    }

    /// Violations matching `filter`, newest moves first.
    pub async fn violations(&self, filter: &ViolationFilter) -> Result<Vec<Violation>, StoreError> {
        dispatch!(self.pool(), pool => sqlx::query_as(VIOLATION_LIST)
            .bind(filter.connection.as_deref())
            .bind(filter.owner.as_deref())
            .bind(filter.rule.as_deref())
            .bind(filter.status.as_deref())
            .bind(filter.from_ms.unwrap_or(i64::MIN))
            .bind(filter.to_ms.unwrap_or(i64::MAX))
            .bind(filter.limit)
            .fetch_all(pool)
            .await)
        .during("list violations")
    }

    /// The status changes of a violation, oldest first: (status, at, actor, note).
    pub async fn violation_events(
        &self,
        violation_id: i64,
    ) -> Result<Vec<(String, Millis, Option<String>, Option<String>)>, StoreError> {
        dispatch!(self.pool(), pool => sqlx::query_as(
            "SELECT status, at_ms, actor, note FROM violation_events WHERE violation_id = $1 ORDER BY at_ms, id",
        )
        .bind(violation_id)
        .fetch_all(pool)
        .await)
        .during("read violation events")
    }
}

const VIOLATION_BY_ID: &str = concat!(violation_select!(), " WHERE v.id = $1");

const VIOLATION_LIST: &str = concat!(
    violation_select!(),
    " WHERE ($1 IS NULL OR c.name = $1) AND ($2 IS NULL OR v.owner_id = $2) AND ($3 IS NULL OR v.rule_name = $3) \
     AND ($4 IS NULL OR v.status = $4) AND v.changed_at_ms >= $5 AND v.changed_at_ms < $6 \
     ORDER BY v.changed_at_ms DESC, v.id DESC LIMIT $7"
);

/// Pages of moves [`Store::moves_at_version_pages`] holds read for its caller (besides those
/// being read and the one waiting to be handed over).
const PAGES_AHEAD: usize = 2;
/// Pages of moves [`Store::moves_at_version_pages`] reads at once.
const READS_AT_ONCE: usize = 2;

/// A range of transition ids: after `after`, through `through` (`None`: to the last).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MoveIds {
    /// The last transition id before the range.
    pub after: i64,
    /// The last transition id in the range.
    pub through: Option<i64>,
}

/// Pages of deal moves with their versions, oldest first, read ahead by a task.
#[derive(Debug)]
pub struct MovePages {
    pages: mpsc::Receiver<Result<Vec<MoveAtVersion>, StoreError>>,
}

impl MovePages {
    /// The next page, never empty; `None` after the last one or after an error was handed
    /// over (a read that panicked is handed over as an error).
    pub async fn next(&mut self) -> Option<Result<Vec<MoveAtVersion>, StoreError>> {
        self.pages.recv().await
    }
}

/// Rows a SQLite query folded into one JSON array (`None`: it matched none).
fn rows_from_json<T: DeserializeOwned>(
    text: Option<String>,
    operation: &'static str,
) -> Result<Vec<T>, StoreError> {
    let Some(text) = text else {
        return Ok(Vec::new());
    };
    serde_json::from_str(&text)
        .map_err(|err| sqlx::Error::Decode(Box::new(err)))
        .during(operation)
}

/// A page of moves as one JSON array of moves, each an array of the stored fields followed by
/// the other columns of [`MoveAtVersion`] in its order (`substr(…, 2)` drops the opening
/// bracket of their array); [`PageSeed`] reads it.
const MOVES_AT_VERSION_SQLITE: &str = concat!(
    "SELECT '[' || group_concat(move, ',') || ']' FROM (SELECT '[' || coalesce(v.fields, 'null') || ',' || \
     substr(json_array(t.id, t.record_id, r.crm_id, t.pipeline, t.from_stage, t.to_stage, t.changed_at_ms, \
     t.changed_by, t.actor_kind, v.id, v.valid_from_ms, v.valid_to_ms, v.name, v.amount_cents, v.owner_id), 2) AS move ",
    moves_at_version_from!(),
    ")"
);

/// A page of moves on PostgreSQL, as rows of [`MoveAtVersion`]; parameters as in
/// [`moves_at_version_from!`]. Two differences from that form, both for speed after a
/// backfill. `connection_id` is compared bare: PostgreSQL cannot estimate `+t.connection_id`
/// and guesses that 0.5% of the moves match, so the custom plans it makes for the first five
/// runs of the prepared statement on each pooled connection joined and sorted every move after
/// `$2` to answer one page (1-2 s a page with a million moves stored, against tens of
/// milliseconds by the id index). And the version at the move is read by one lateral probe of
/// the (record_id, valid_from_ms) index instead of an id subquery and a second probe by id.
const MOVES_AT_VERSION_POSTGRES: &str = "SELECT t.id AS transition_id, t.record_id, r.crm_id, t.pipeline, \
     t.from_stage, t.to_stage, t.changed_at_ms, t.changed_by, t.actor_kind, v.id AS version_id, v.valid_from_ms, v.valid_to_ms, \
     v.name, v.amount_cents, v.owner_id, v.fields \
     FROM stage_transitions t JOIN records r ON r.id = t.record_id \
     LEFT JOIN LATERAL (SELECT w.id, w.valid_from_ms, w.valid_to_ms, w.name, w.amount_cents, w.owner_id, w.fields \
       FROM record_versions w WHERE w.record_id = t.record_id AND w.valid_from_ms <= t.changed_at_ms \
       ORDER BY w.valid_from_ms DESC LIMIT 1) v ON TRUE \
     WHERE t.connection_id = $1 AND t.object_kind = 'deal' AND t.id > $2 AND t.id <= $5 \
     AND t.changed_at_ms >= $3 ORDER BY t.id LIMIT $4";

/// A row of [`MOVES_AT_VERSION_POSTGRES`], read by column position (a lookup by name hashes
/// the name, per column and row) and with only the wanted fields of the version parsed.
fn move_from_row(
    row: &sqlx::postgres::PgRow,
    fields: &HashSet<String>,
) -> Result<MoveAtVersion, sqlx::Error> {
    use sqlx::Row;
    Ok(MoveAtVersion {
        transition_id: row.try_get(0)?,
        record_id: row.try_get(1)?,
        crm_id: row.try_get(2)?,
        pipeline: row.try_get(3)?,
        from_stage: row.try_get(4)?,
        to_stage: row.try_get(5)?,
        changed_at_ms: row.try_get(6)?,
        changed_by: row.try_get(7)?,
        actor_kind: row.try_get(8)?,
        version_id: row.try_get(9)?,
        valid_from_ms: row.try_get(10)?,
        valid_to_ms: row.try_get(11)?,
        name: row.try_get(12)?,
        amount_cents: row.try_get(13)?,
        owner_id: row.try_get(14)?,
        fields: wanted_fields(row, 15, fields)?,
    })
}

/// The wanted entries of the JSONB column at `index`, skipping the others without building
/// them (a deal may carry hundreds of fields; a rule reads a few).
fn wanted_fields(
    row: &sqlx::postgres::PgRow,
    index: usize,
    fields: &HashSet<String>,
) -> Result<Option<Json<Map<String, Value>>>, sqlx::Error> {
    use sqlx::{postgres::PgValueFormat, Row, ValueRef};
    let value = row.try_get_raw(index)?;
    if value.is_null() {
        return Ok(None);
    }
    let decode = |err: Box<dyn std::error::Error + Send + Sync>| sqlx::Error::ColumnDecode {
        index: index.to_string(),
        source: err,
    };
    let format = value.format();
    let bytes = value.as_bytes().map_err(decode)?;
    // JSONB's binary form is a version byte (1) before the JSON text.
    let text = match (format, bytes.split_first()) {
        (PgValueFormat::Text, _) => bytes,
        (PgValueFormat::Binary, Some((1, text))) => text,
        (PgValueFormat::Binary, _) => return Err(decode("JSONB of an unknown version".into())),
    };
    let mut json = serde_json::Deserializer::from_slice(text);
    FieldsSeed(fields)
        .deserialize(&mut json)
        .and_then(|values| json.end().map(|()| values))
        .map_err(|err| decode(Box::new(err)))
}

/// One of the resolution pass's queries: the SQLite form, and the PostgreSQL form with the
/// filter of touched records and without it (see [`open_every!`]).
struct ResolutionQuery {
    sqlite: &'static str,
    postgres_touched: &'static str,
    postgres_every: &'static str,
}

/// A [`ResolutionQuery`] from the text around its filter, for each dialect.
macro_rules! resolution_query {
    (sqlite: $sqlite_head:literal, $sqlite_tail:literal; postgres: $head:literal, $tail:literal) => {
        ResolutionQuery {
            sqlite: concat!($sqlite_head, open_touched_sqlite!(), $sqlite_tail),
            postgres_touched: concat!($head, open_touched!(), $tail),
            postgres_every: concat!($head, open_every!(), $tail),
        }
    };
}

/// The resolution pass's open violations, oldest first.
const OPEN_VIOLATIONS: ResolutionQuery = resolution_query!(
    sqlite: "SELECT json_group_array(json_array(v.id, v.record_id, v.kind, v.to_stage, v.changed_at_ms, \
         json(v.missing_fields)) ORDER BY v.id) FROM violations v ", "";
    postgres: "SELECT v.id, v.record_id, v.kind, v.to_stage, v.changed_at_ms, v.missing_fields FROM violations v ",
        " ORDER BY v.id"
);

/// Later versions of the records of open violations that miss fields, by violation then time.
const LATER_VERSIONS: ResolutionQuery = resolution_query!(
    sqlite: "SELECT json_group_array(json_array(v.id, w.valid_from_ms, json(iif(w.deleted, 'true', 'false')), \
         json(w.fields)) ORDER BY v.id, w.valid_from_ms) FROM violations v \
         JOIN record_versions w ON w.record_id = v.record_id AND w.valid_from_ms > v.changed_at_ms ",
        " AND json_array_length(v.missing_fields) > 0";
    postgres: "SELECT v.id AS violation_id, w.valid_from_ms, w.deleted, w.fields FROM violations v \
         JOIN record_versions w ON w.record_id = v.record_id AND w.valid_from_ms > v.changed_at_ms ",
        " AND v.missing_fields <> '[]'::jsonb ORDER BY v.id, w.valid_from_ms"
);

/// Later moves of the records of open violations, by violation then time.
const LATER_MOVES: ResolutionQuery = resolution_query!(
    sqlite: "SELECT json_group_array(json_array(v.id, t.changed_at_ms, t.to_stage) ORDER BY v.id, t.changed_at_ms, t.id) \
         FROM violations v JOIN stage_transitions t ON t.record_id = v.record_id AND t.changed_at_ms > v.changed_at_ms ", "";
    postgres: "SELECT v.id AS violation_id, t.changed_at_ms, t.to_stage FROM violations v \
         JOIN stage_transitions t ON t.record_id = v.record_id AND t.changed_at_ms > v.changed_at_ms ",
        " ORDER BY v.id, t.changed_at_ms, t.id"
);

/// Reads the JSON text of a page of moves (see [`MOVES_AT_VERSION_SQLITE`]), keeping of
/// each version's fields only the wanted ones: the others are skipped without being built.
#[derive(Clone, Copy)]
struct PageSeed<'w>(&'w HashSet<String>);

impl<'de> DeserializeSeed<'de> for PageSeed<'_> {
    type Value = Vec<MoveAtVersion>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for PageSeed<'_> {
    type Value = Vec<MoveAtVersion>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of moves")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut moves = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(m) = seq.next_element_seed(MoveSeed(self.0))? {
            moves.push(m);
        }
        Ok(moves)
    }
}

/// One move of a page: its version's fields, then the other columns.
#[derive(Clone, Copy)]
struct MoveSeed<'w>(&'w HashSet<String>);

impl<'de> DeserializeSeed<'de> for MoveSeed<'_> {
    type Value = MoveAtVersion;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for MoveSeed<'_> {
    type Value = MoveAtVersion;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a move: its version's fields and 15 columns")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let fields = seq
            .next_element_seed(FieldsSeed(self.0))?
            .ok_or_else(|| de::Error::invalid_length(0, &self))?;
        let mut columns = Columns {
            seq,
            index: 0,
            expected: &self,
        };
        // Struct fields are evaluated in the order written: the columns' order in the query.
        Ok(MoveAtVersion {
            transition_id: columns.next()?,
            record_id: columns.next()?,
            crm_id: columns.next()?,
            pipeline: columns.next()?,
            from_stage: columns.next()?,
            to_stage: columns.next()?,
            changed_at_ms: columns.next()?,
            changed_by: columns.next()?,
            actor_kind: columns.next()?,
            version_id: columns.next()?,
            valid_from_ms: columns.next()?,
            valid_to_ms: columns.next()?,
            name: columns.next()?,
            amount_cents: columns.next()?,
            owner_id: columns.next()?,
            fields,
        })
    }
}

/// The columns of a move after its fields, one after the other.
struct Columns<'e, A> {
    seq: A,
    index: usize,
    expected: &'e dyn de::Expected,
}

impl<'de, A: SeqAccess<'de>> Columns<'_, A> {
    fn next<T: Deserialize<'de>>(&mut self) -> Result<T, A::Error> {
        self.index += 1;
        self.seq
            .next_element()?
            .ok_or_else(|| de::Error::invalid_length(self.index, self.expected))
    }
}

/// A version's fields (`null` when the move has no version), only the wanted ones.
#[derive(Clone, Copy)]
struct FieldsSeed<'w>(&'w HashSet<String>);

impl<'de> DeserializeSeed<'de> for FieldsSeed<'_> {
    type Value = Option<Json<Map<String, Value>>>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for FieldsSeed<'_> {
    type Value = Option<Json<Map<String, Value>>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object of field values or null")
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer
            .deserialize_map(WantedFields(self.0))
            .map(|values| Some(Json(values)))
    }
}

/// The wanted entries of a version's fields.
#[derive(Clone, Copy)]
struct WantedFields<'w>(&'w HashSet<String>);

impl<'de> Visitor<'de> for WantedFields<'_> {
    type Value = Map<String, Value>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object of field values")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut values = Map::new();
        while let Some(name) = map.next_key_seed(WantedName(self.0))? {
            match name {
                Some(name) => {
                    values.insert(name, map.next_value()?);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(values)
    }
}

/// A field's name: `Some` (owned) when it is wanted, `None` without allocating otherwise.
#[derive(Clone, Copy)]
struct WantedName<'w>(&'w HashSet<String>);

impl<'de> DeserializeSeed<'de> for WantedName<'_> {
    type Value = Option<String>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for WantedName<'_> {
    type Value = Option<String>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<Self::Value, E> {
        Ok(self.0.contains(name).then(|| name.to_owned()))
    }
}

/// A pending outbox message, with what its thread parent has become.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PendingAlert {
    /// Outbox id.
    pub id: i64,
    /// `violation`, `resolution` or `digest_item`.
    pub kind: String,
    /// Slack channel (`None`: the webhook's own).
    pub channel: Option<String>,
    /// Block Kit body.
    pub payload: Json<Value>,
    /// Attempts so far.
    pub attempts: i64,
    /// Not before this instant.
    pub next_attempt_at_ms: Millis,
    /// The message it replies to.
    pub thread_of_id: Option<i64>,
    /// That message's status.
    pub parent_status: Option<String>,
    /// That message's Slack `ts`.
    pub parent_ts: Option<String>,
    /// When its last send went unanswered (Slack may already hold it).
    pub sent_at_ms: Option<Millis>,
}

/// A stored outbox message, as tests and the API read it.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct StoredAlert {
    /// Outbox id.
    pub id: i64,
    /// Unique key.
    pub dedupe_key: String,
    /// Kind.
    pub kind: String,
    /// Channel.
    pub channel: Option<String>,
    /// pending, delivered or failed.
    pub status: String,
    /// Attempts so far.
    pub attempts: i64,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// Slack `ts` of the delivered message.
    pub slack_ts: Option<String>,
    /// The violation.
    pub violation_id: Option<i64>,
}

impl Store {
    /// Pending outbox messages, oldest first (delivery keeps this order per channel). Digest
    /// items not due by `now` are left out: they wait for their hour, and a backlog of them
    /// must not fill `limit` and hold up the messages queued after them.
    pub async fn pending_alerts(
        &self,
        now: Millis,
        limit: i64,
    ) -> Result<Vec<PendingAlert>, StoreError> {
        dispatch!(self.pool(), pool => sqlx::query_as(
            "SELECT a.id, a.kind, a.channel, a.payload, a.attempts, a.next_attempt_at_ms, a.thread_of_id, \
             p.status AS parent_status, p.slack_ts AS parent_ts, a.sent_at_ms FROM alert_outbox a \
             LEFT JOIN alert_outbox p ON p.id = a.thread_of_id WHERE a.status = 'pending' \
             AND (a.kind <> 'digest_item' OR a.next_attempt_at_ms <= $2) ORDER BY a.id LIMIT $1",
        )
        .bind(limit)
        .bind(now)
        .fetch_all(pool)
        .await)
        .during("read pending alerts")
    }

    /// Marks messages delivered (several at once for a digest), with Slack's `ts`.
    pub async fn mark_alerts_delivered(
        &self,
        ids: &[i64],
        slack_ts: Option<&str>,
        now: Millis,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        for id in ids {
            dispatch!(tx.inner(), tx => sqlx::query(
                "UPDATE alert_outbox SET status = 'delivered', slack_ts = $2, delivered_at_ms = $3, \
                 attempts = attempts + 1, last_error = NULL WHERE id = $1 AND status = 'pending'",
            )
            .bind(id)
            .bind(slack_ts)
            .bind(now)
            .execute(&mut **tx)
            .await
            .map(drop))
            .during("mark alert delivered")?;
        }
        tx.commit().await
    }

    /// When Slack last took a message for `channel` (`None`: the webhook's own), from any
    /// process: a deliverer that starts, or takes over from another replica, keeps its pace.
    pub async fn last_delivery_at(
        &self,
        channel: Option<&str>,
    ) -> Result<Option<Millis>, StoreError> {
        dispatch!(self.pool(), pool => sqlx::query_scalar(
            "SELECT MAX(delivered_at_ms) FROM alert_outbox \
             WHERE channel = $1 OR (channel IS NULL AND $1 IS NULL)",
        )
        .bind(channel)
        .fetch_one(pool)
        .await)
        .during("read the last delivery to a channel")
    }

    /// Notes that messages are about to be sent: until Slack's answer is stored, they may be
    /// in the channel already.
    pub async fn mark_alerts_sending(&self, ids: &[i64], now: Millis) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        for id in ids {
            dispatch!(tx.inner(), tx => sqlx::query(
                "UPDATE alert_outbox SET sent_at_ms = $2 WHERE id = $1 AND status = 'pending'",
            )
            .bind(id)
            .bind(now)
            .execute(&mut **tx)
            .await
            .map(drop))
            .during("mark alert sending")?;
        }
        tx.commit().await
    }

    /// Records a failed attempt: retried at `next_at`, or given up when `next_at` is `None`.
    /// `answered` says Slack refused it in so many words, so it is not in the channel; an
    /// unanswered attempt keeps the message in doubt.
    pub async fn mark_alerts_attempt_failed(
        &self,
        ids: &[i64],
        error: &str,
        next_at: Option<Millis>,
        answered: bool,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        for id in ids {
            dispatch!(tx.inner(), tx => sqlx::query(
                "UPDATE alert_outbox SET attempts = attempts + 1, last_error = $2, \
                 status = CASE WHEN $3 IS NULL THEN 'failed' ELSE 'pending' END, \
                 next_attempt_at_ms = COALESCE($3, next_attempt_at_ms), \
                 sent_at_ms = CASE WHEN $4 THEN NULL ELSE sent_at_ms END WHERE id = $1 AND status = 'pending'",
            )
            .bind(id)
            .bind(error)
            .bind(next_at)
            .bind(answered)
            .execute(&mut **tx)
            .await
            .map(drop))
            .during("mark alert attempt")?;
        }
        tx.commit().await
    }

    /// Every outbox message, oldest first.
    pub async fn alerts(&self) -> Result<Vec<StoredAlert>, StoreError> {
        dispatch!(self.pool(), pool => sqlx::query_as(
            "SELECT id, dedupe_key, kind, channel, status, attempts, last_error, slack_ts, violation_id \
             FROM alert_outbox ORDER BY id",
        )
        .fetch_all(pool)
        .await)
        .during("read alerts")
    }
}
