//! `query history ID`: everything the store knows happened to one record — each version and
//! what changed in it, stage moves with who made them, the CRM's own field history,
//! milestones, and the violations and recycle actions that touched it.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::types::Json;

use super::{format_instant, resolve_connection, QueryError, Report, Table};
use crate::record::{ObjectKind, RecordState};
use crate::store::{dispatch, QueryContext, RecordVersion, Store};

/// Parameters of `query history` and `GET /api/v1/history`.
#[derive(Debug, Clone, Default, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct HistoryParams {
    /// The record's CRM id.
    pub id: String,
    /// Connection name (needed when the store holds several).
    #[arg(long)]
    pub connection: Option<String>,
    /// The record's kind (deal, lead, contact, …), when the id alone is ambiguous.
    #[arg(long)]
    pub kind: Option<String>,
}

/// One field that differs from the previous version.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldDiff {
    /// Canonical column or CRM field name.
    pub field: String,
    /// Value before (`null` in the first version).
    pub from: Value,
    /// Value after.
    pub to: Value,
}

/// One stored version.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VersionEntry {
    /// Start of validity.
    pub valid_from: String,
    /// End of validity, if superseded.
    pub valid_to: Option<String>,
    /// `crm_modified` or `observed`: what the start is based on.
    pub valid_from_basis: String,
    /// The record was deleted in this version.
    pub deleted: bool,
    /// What differs from the previous version (every set value for the first).
    pub changes: Vec<FieldDiff>,
}

/// A stage or status move.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MoveEntry {
    /// When.
    pub at: String,
    /// Stage left.
    pub from_stage: Option<String>,
    /// Stage entered.
    pub to_stage: String,
    /// User or source id.
    pub changed_by: Option<String>,
    /// `crm_history` or `observed_diff`.
    pub origin: String,
}

/// A field change from the CRM's own history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldHistoryEntry {
    /// When.
    pub at: String,
    /// Field.
    pub field: String,
    /// Before.
    pub old_value: Option<Value>,
    /// After.
    pub new_value: Option<Value>,
    /// By whom.
    pub changed_by: Option<String>,
}

/// A lifecycle milestone.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MilestoneEntry {
    /// When.
    pub at: String,
    /// Which.
    pub event: String,
    /// Where the fact comes from.
    pub origin: String,
}

/// A stage-gate violation on one of the record's moves.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ViolationEntry {
    /// Rule.
    pub rule: String,
    /// When the move happened.
    pub at: String,
    /// The move.
    pub from_stage: Option<String>,
    /// The move.
    pub to_stage: String,
    /// Open, resolved late, waived or superseded.
    pub status: String,
    /// Required fields that were empty, as stored (JSON array).
    pub missing_fields: Value,
}

/// A recycle decision about the record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecycleEntry {
    /// Policy.
    pub policy: String,
    /// When it was planned.
    pub planned_at: String,
    /// What it does.
    pub action: String,
    /// Planned, applied, failed, skipped or returned.
    pub status: String,
    /// Why.
    pub reason: String,
}

/// The answer of `query history`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistoryReport {
    /// The connection.
    pub connection: String,
    /// Record kind.
    pub kind: String,
    /// CRM id.
    pub crm_id: String,
    /// Current name.
    pub name: Option<String>,
    /// Versions, oldest first.
    pub versions: Vec<VersionEntry>,
    /// Stage moves, oldest first.
    pub moves: Vec<MoveEntry>,
    /// CRM field history, oldest first.
    pub field_history: Vec<FieldHistoryEntry>,
    /// Milestones, oldest first.
    pub milestones: Vec<MilestoneEntry>,
    /// Violations, oldest first.
    pub violations: Vec<ViolationEntry>,
    /// Recycle actions, oldest first.
    pub recycle_actions: Vec<RecycleEntry>,
}

/// Answers `query history`.
pub async fn run(store: &Store, params: &HistoryParams) -> Result<HistoryReport, QueryError> {
    let connection = resolve_connection(store, params.connection.as_deref()).await?;
    let kind = match params.kind.as_deref() {
        Some(text) => Some(ObjectKind::parse(text).ok_or_else(|| {
            let known: Vec<&str> = ObjectKind::ALL.iter().map(|k| k.as_str()).collect();
            QueryError::bad(
                "kind",
                format!("`{text}` is not one of {}", known.join(", ")),
            )
        })?),
        None => None,
    };
    if params.id.trim().is_empty() {
        return Err(QueryError::bad("id", "is empty; give a record's CRM id"));
    }
    // One probe of the unique (connection, kind, CRM id) index per kind: a CRM id alone is not
    // a prefix of any index, and a scan of every record takes seconds in a large store.
    let kinds = kind.map_or(ObjectKind::ALL.to_vec(), |kind| vec![kind]);
    let mut matches: Vec<(i64, String)> = Vec::new();
    for kind in kinds {
        let found: Option<i64> = dispatch!(store.pool(), pool => sqlx::query_scalar(
            "SELECT id FROM records WHERE connection_id = $1 AND object_kind = $2 AND crm_id = $3",
        )
        .bind(connection.id)
        .bind(kind.as_str())
        .bind(&params.id)
        .fetch_optional(pool)
        .await)
        .during("find record")?;
        matches.extend(found.map(|id| (id, kind.as_str().to_string())));
    }
    matches.sort_by(|a, b| a.1.cmp(&b.1));
    let (record_id, kind) = match matches.as_slice() {
        [] => {
            return Err(QueryError::NotFound(format!(
                "no record with id `{}` in connection `{}`",
                params.id, connection.name
            )))
        }
        [only] => only.clone(),
        several => {
            let kinds: Vec<&str> = several.iter().map(|(_, k)| k.as_str()).collect();
            return Err(QueryError::bad(
                "kind",
                format!(
                    "id `{}` names records of several kinds ({}); choose one",
                    params.id,
                    kinds.join(", ")
                ),
            ));
        }
    };
    let versions = store.versions(record_id).await?;
    let name = versions.last().and_then(|v| v.state.name.clone());
    Ok(HistoryReport {
        connection: connection.name.clone(),
        kind,
        crm_id: params.id.clone(),
        name,
        versions: version_entries(&versions),
        moves: store
            .transitions(record_id)
            .await?
            .into_iter()
            .map(|t| MoveEntry {
                at: format_instant(t.changed_at),
                from_stage: t.from_stage,
                to_stage: t.to_stage,
                changed_by: t.changed_by,
                origin: t.origin,
            })
            .collect(),
        field_history: field_history(store, record_id).await?,
        milestones: store
            .lifecycle_events(record_id)
            .await?
            .into_iter()
            .map(|e| MilestoneEntry {
                at: format_instant(e.occurred_at),
                event: e.event.as_str().to_string(),
                origin: e.origin,
            })
            .collect(),
        violations: violations(store, record_id).await?,
        recycle_actions: recycle_actions(store, record_id).await?,
    })
}

fn version_entries(versions: &[RecordVersion]) -> Vec<VersionEntry> {
    let empty = RecordState::default();
    let mut previous = &empty;
    versions
        .iter()
        .map(|version| {
            let changes = diff(previous, &version.state);
            previous = &version.state;
            VersionEntry {
                valid_from: format_instant(version.valid_from),
                valid_to: version.valid_to.map(format_instant),
                valid_from_basis: match version.valid_from_basis {
                    crate::store::ValidFromBasis::CrmModified => "crm_modified".into(),
                    crate::store::ValidFromBasis::Observed => "observed".into(),
                },
                deleted: version.deleted,
                changes,
            }
        })
        .collect()
}

/// The canonical columns, then the CRM fields, that differ between two states.
fn diff(before: &RecordState, after: &RecordState) -> Vec<FieldDiff> {
    let as_map = |state: &RecordState| match serde_json::to_value(state) {
        Ok(Value::Object(mut map)) => {
            map.remove("fields");
            map
        }
        _ => serde_json::Map::new(),
    };
    let (old, new) = (as_map(before), as_map(after));
    // A field that is absent and one that is null mean the same: nothing is set.
    let mut changes: Vec<FieldDiff> = new
        .iter()
        .filter(|(key, value)| old.get(*key).unwrap_or(&Value::Null) != *value)
        .map(|(key, value)| FieldDiff {
            field: key.clone(),
            from: old.get(key).cloned().unwrap_or(Value::Null),
            to: value.clone(),
        })
        .collect();
    let mut names: Vec<&String> = before.fields.keys().chain(after.fields.keys()).collect();
    names.sort();
    names.dedup();
    for name in names {
        let from = before.fields.get(name).unwrap_or(&Value::Null);
        let to = after.fields.get(name).unwrap_or(&Value::Null);
        if from != to {
            changes.push(FieldDiff {
                field: format!("fields.{name}"),
                from: from.clone(),
                to: to.clone(),
            });
        }
    }
    changes
}

async fn field_history(
    store: &Store,
    record_id: i64,
) -> Result<Vec<FieldHistoryEntry>, QueryError> {
    type Row = (i64, String, Option<String>, Option<String>, Option<String>);
    let rows: Vec<Row> = dispatch!(store.pool(), pool => sqlx::query_as(
        "SELECT changed_at_ms, field, CAST(old_value AS TEXT), CAST(new_value AS TEXT), changed_by \
         FROM field_history WHERE record_id = $1 ORDER BY changed_at_ms, id",
    )
    .bind(record_id)
    .fetch_all(pool)
    .await)
    .during("read field history")?;
    let json =
        |text: Option<String>| text.map(|t| serde_json::from_str(&t).unwrap_or(Value::String(t)));
    Ok(rows
        .into_iter()
        .map(|(at, field, old, new, by)| FieldHistoryEntry {
            at: format_instant(at),
            field,
            old_value: json(old),
            new_value: json(new),
            changed_by: by,
        })
        .collect())
}

async fn violations(store: &Store, record_id: i64) -> Result<Vec<ViolationEntry>, QueryError> {
    // JSONB on PostgreSQL, JSON text on SQLite: read as JSON on both so they answer alike.
    type Row = (String, i64, Option<String>, String, String, Json<Value>);
    let rows: Vec<Row> = dispatch!(store.pool(), pool => sqlx::query_as(
        "SELECT rule_name, changed_at_ms, from_stage, to_stage, status, missing_fields \
         FROM violations WHERE record_id = $1 ORDER BY changed_at_ms, id",
    )
    .bind(record_id)
    .fetch_all(pool)
    .await)
    .during("read violations of a record")?;
    Ok(rows
        .into_iter()
        .map(|r| ViolationEntry {
            rule: r.0,
            at: format_instant(r.1),
            from_stage: r.2,
            to_stage: r.3,
            status: r.4,
            missing_fields: r.5 .0,
        })
        .collect())
}

async fn recycle_actions(store: &Store, record_id: i64) -> Result<Vec<RecycleEntry>, QueryError> {
    type Row = (String, i64, String, String, String);
    let rows: Vec<Row> = dispatch!(store.pool(), pool => sqlx::query_as(
        "SELECT policy, planned_at_ms, action, status, reason FROM recycle_actions \
         WHERE record_id = $1 ORDER BY planned_at_ms, id",
    )
    .bind(record_id)
    .fetch_all(pool)
    .await)
    .during("read recycle actions of a record")?;
    Ok(rows
        .into_iter()
        .map(|r| RecycleEntry {
            policy: r.0,
            planned_at: format_instant(r.1),
            action: r.2,
            status: r.3,
            reason: r.4,
        })
        .collect())
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

impl Report for HistoryReport {
    fn tables(&self) -> Vec<Table> {
        let mut versions = Table::new(
            format!(
                "History of {} {} ({}) in {}",
                self.kind,
                self.crm_id,
                self.name.clone().unwrap_or_default(),
                self.connection
            ),
            &["valid from", "valid to", "basis", "field", "from", "to"],
        );
        for version in &self.versions {
            let deleted = version.deleted.then(|| FieldDiff {
                field: "(deleted)".into(),
                from: Value::Null,
                to: Value::Bool(true),
            });
            for (index, change) in version.changes.iter().chain(deleted.as_ref()).enumerate() {
                let first = index == 0;
                versions.push(vec![
                    if first {
                        version.valid_from.clone()
                    } else {
                        String::new()
                    },
                    if first {
                        version.valid_to.clone().unwrap_or_default()
                    } else {
                        String::new()
                    },
                    if first {
                        version.valid_from_basis.clone()
                    } else {
                        String::new()
                    },
                    change.field.clone(),
                    text(&change.from),
                    text(&change.to),
                ]);
            }
        }
        let mut moves = Table::new("Stage moves", &["at", "from", "to", "by", "origin"]);
        for m in &self.moves {
            moves.push(vec![
                m.at.clone(),
                m.from_stage.clone().unwrap_or_default(),
                m.to_stage.clone(),
                m.changed_by.clone().unwrap_or_default(),
                m.origin.clone(),
            ]);
        }
        let mut fields = Table::new("CRM field history", &["at", "field", "from", "to", "by"]);
        for f in &self.field_history {
            fields.push(vec![
                f.at.clone(),
                f.field.clone(),
                f.old_value.as_ref().map(text).unwrap_or_default(),
                f.new_value.as_ref().map(text).unwrap_or_default(),
                f.changed_by.clone().unwrap_or_default(),
            ]);
        }
        let mut milestones = Table::new("Milestones", &["at", "event", "origin"]);
        for m in &self.milestones {
            milestones.push(vec![m.at.clone(), m.event.clone(), m.origin.clone()]);
        }
        let mut violations = Table::new(
            "Violations",
            &["at", "rule", "from", "to", "status", "missing fields"],
        );
        for v in &self.violations {
            violations.push(vec![
                v.at.clone(),
                v.rule.clone(),
                v.from_stage.clone().unwrap_or_default(),
                v.to_stage.clone(),
                v.status.clone(),
                v.missing_fields.to_string(),
            ]);
        }
        let mut recycled = Table::new(
            "Recycle actions",
            &["planned at", "policy", "action", "status", "reason"],
        );
        for r in &self.recycle_actions {
            recycled.push(vec![
                r.planned_at.clone(),
                r.policy.clone(),
                r.action.clone(),
                r.status.clone(),
                r.reason.clone(),
            ]);
        }
        vec![versions, moves, fields, milestones, violations, recycled]
    }
}
