//! The audit of CRM writes: every row of the write-back outbox (stage reverts and recycle
//! actions), what it was to write, why, and what the CRM answered. `pipewarden writes`
//! prints it. Dry runs write nothing and queue nothing, so they are not here: their plans
//! are in the violation events (reverts) and the recycle run's actions.

use serde::Serialize;
use serde_json::Value;
use sqlx::types::Json;

use crate::query::{format_instant, Report, Table};
use crate::record::Millis;
use crate::store::{dispatch, QueryContext, Store, StoreError};

/// Which writes to list.
#[derive(Debug, Clone, Default)]
pub struct WriteFilter {
    /// Only this connection (by name).
    pub connection: Option<String>,
    /// Only writes of this origin: `revert` or `recycle`.
    pub origin: Option<String>,
    /// Only writes in this state: `pending`, `in_flight`, `applied` or `failed`.
    pub status: Option<String>,
    /// Only writes decided at or after this instant.
    pub since_ms: Option<Millis>,
    /// At most this many, newest first.
    pub limit: i64,
}

/// One CRM write and what became of it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct AuditedWrite {
    /// The outbox row's id.
    pub id: i64,
    /// The connection's name.
    pub connection: String,
    /// `revert` or `recycle`.
    pub origin: String,
    /// The violation a revert answers.
    pub violation_id: Option<i64>,
    /// The recycle action a recycle write carries out.
    pub recycle_action_id: Option<i64>,
    /// The CRM object written.
    pub crm_object: String,
    /// The record written (none for a create until it is applied).
    pub crm_id: Option<String>,
    /// `update`, `create` or `list_add`.
    pub operation: String,
    /// The write itself, with its precondition: the values before and after.
    pub payload: Json<Value>,
    /// `pending`, `in_flight`, `applied` or `failed`.
    pub status: String,
    /// Calls made for it.
    pub attempts: i64,
    /// The CRM's error code, or pipewarden's (`PRECONDITION_FAILED`, `NO_ANSWER`).
    pub error_code: Option<String>,
    /// What the error said.
    pub error_message: Option<String>,
    /// The CRM's answer to an applied write.
    pub crm_response: Option<Json<Value>>,
    /// When the write was decided.
    pub created_at_ms: Millis,
    /// When the CRM applied it.
    pub applied_at_ms: Option<Millis>,
}

/// The writes a filter selects, newest first.
#[derive(Debug, Clone, Serialize)]
pub struct WriteAudit {
    /// The writes.
    pub writes: Vec<AuditedWrite>,
}

const WRITES: &str = "SELECT w.id, c.name AS connection, w.origin, w.violation_id, w.recycle_action_id, \
     w.crm_object, w.crm_id, w.operation, w.payload, w.status, w.attempts, w.error_code, w.error_message, \
     w.crm_response, w.created_at_ms, w.applied_at_ms \
     FROM writeback_outbox w JOIN connections c ON c.id = w.connection_id \
     WHERE ($1 IS NULL OR c.name = $1) AND ($2 IS NULL OR w.origin = $2) \
     AND ($3 IS NULL OR w.status = $3) AND ($4 IS NULL OR w.created_at_ms >= $4) \
     ORDER BY w.created_at_ms DESC, w.id DESC LIMIT $5";

/// Lists the writes `filter` selects.
pub async fn list(store: &Store, filter: &WriteFilter) -> Result<WriteAudit, StoreError> {
    let writes = dispatch!(store.pool(), pool => sqlx::query_as(WRITES)
        .bind(filter.connection.as_deref())
        .bind(filter.origin.as_deref())
        .bind(filter.status.as_deref())
        .bind(filter.since_ms)
        .bind(filter.limit)
        .fetch_all(pool)
        .await)
    .during("list write-back audit")?;
    Ok(WriteAudit { writes })
}

impl AuditedWrite {
    /// What the write answers: a violation or a recycle action.
    fn cause(&self) -> String {
        match (self.violation_id, self.recycle_action_id) {
            (Some(id), _) => format!("violation {id}"),
            (None, Some(id)) => format!("recycle action {id}"),
            (None, None) => String::new(),
        }
    }

    /// The write's fields, as `name=value` pairs.
    fn values(&self) -> String {
        let fields = self.payload.0["fields"].as_object();
        fields
            .into_iter()
            .flatten()
            .map(|(name, value)| match value {
                Value::String(text) => format!("{name}={text}"),
                other => format!("{name}={other}"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// What the CRM made of it.
    fn result(&self) -> String {
        match (&self.error_code, &self.error_message) {
            (Some(code), Some(message)) => format!("{code}: {message}"),
            (Some(code), None) => code.clone(),
            (None, Some(message)) => message.clone(),
            (None, None) => String::new(),
        }
    }
}

impl Report for WriteAudit {
    fn tables(&self) -> Vec<Table> {
        let mut table = Table::new(
            format!("CRM writes, newest first ({})", self.writes.len()),
            &[
                "id",
                "decided",
                "connection",
                "origin",
                "cause",
                "object",
                "record",
                "operation",
                "values",
                "status",
                "attempts",
                "applied",
                "result",
            ],
        );
        for w in &self.writes {
            table.push(vec![
                w.id.to_string(),
                format_instant(w.created_at_ms),
                w.connection.clone(),
                w.origin.clone(),
                w.cause(),
                w.crm_object.clone(),
                w.crm_id.clone().unwrap_or_default(),
                w.operation.clone(),
                w.values(),
                w.status.clone(),
                w.attempts.to_string(),
                w.applied_at_ms.map(format_instant).unwrap_or_default(),
                w.result(),
            ]);
        }
        vec![table]
    }
}
