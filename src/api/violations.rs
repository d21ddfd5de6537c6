//! `/api/v1/violations`: stage-gate violations as JSON or CSV, filtered by connection, owner,
//! rule, status and period, and `POST /api/v1/violations/{id}/waive` to waive one.
//!
//! Both sit behind the API's bearer token, like every `/api/v1` route, and answer errors in
//! the API's one shape ([`ApiError`]).

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{parameters, ApiError, ApiState};
use crate::query::output::{self, Format, Report, Table};
use crate::query::{self, QueryError};
use crate::rules::{self, WaiveError};
use crate::store::{StoreError, Violation, ViolationFilter};

/// Query parameters of the listing.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    connection: Option<String>,
    owner: Option<String>,
    rule: Option<String>,
    status: Option<String>,
    /// Moves from this day (YYYY-MM-DD) or instant (RFC 3339) on.
    from: Option<String>,
    /// Moves before this day or instant.
    to: Option<String>,
    /// `json` (default) or `csv`.
    format: Option<String>,
    /// At most this many (default 1,000, at most 100,000).
    limit: Option<i64>,
}

const STATUSES: &[&str] = &["open", "resolved_late", "waived", "superseded"];

/// The listing's answer: JSON as is, CSV one row per violation.
#[derive(Serialize)]
struct ViolationList {
    violations: Vec<Violation>,
}

pub(super) async fn list(
    State(state): State<Arc<ApiState>>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let query = parameters(query)?;
    if let Some(status) = query.status.as_deref() {
        if !STATUSES.contains(&status) {
            return Err(QueryError::bad(
                "status",
                format!("`{status}` is not one of {}", STATUSES.join(", ")),
            )
            .into());
        }
    }
    let format = match query.format.as_deref() {
        None | Some("json") => Format::Json,
        Some("csv") => Format::Csv,
        Some(other) => {
            return Err(QueryError::bad("format", format!("`{other}` is not json or csv")).into())
        }
    };
    let (from_ms, to_ms) = period(query.from.as_deref(), query.to.as_deref())?;
    let filter = ViolationFilter {
        connection: query.connection,
        owner: query.owner,
        rule: query.rule,
        status: query.status,
        from_ms,
        to_ms,
        limit: query.limit.unwrap_or(1_000).clamp(1, 100_000),
    };
    let list = ViolationList {
        violations: state
            .store
            .violations(&filter)
            .await
            .map_err(store_failed)?,
    };
    Ok(match format {
        Format::Csv => {
            let mut body = Vec::new();
            output::render(&list, Format::Csv, &mut body).map_err(|err| {
                tracing::error!(error = %err, "violations API: CSV could not be written");
                ApiError::internal()
            })?;
            ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], body).into_response()
        }
        Format::Json | Format::Table => Json(list).into_response(),
    })
}

/// The optional `[from, to)` of the listing, read as the queries read instants.
fn period(from: Option<&str>, to: Option<&str>) -> Result<(Option<i64>, Option<i64>), QueryError> {
    match (from, to) {
        (Some(from), Some(to)) => {
            query::parse_range(from, to).map(|(from, to)| (Some(from), Some(to)))
        }
        (from, to) => Ok((
            from.map(|text| query::parse_instant("from", text))
                .transpose()?,
            to.map(|text| query::parse_instant("to", text))
                .transpose()?,
        )),
    }
}

impl Report for ViolationList {
    fn tables(&self) -> Vec<Table> {
        let mut table = Table::new(
            "Violations",
            &[
                "id",
                "rule",
                "connection",
                "crm_id",
                "kind",
                "from_stage",
                "to_stage",
                "missing_fields",
                "skipped_stages",
                "changed_at",
                "changed_by",
                "actor_kind",
                "owner_id",
                "status",
                "resolved_at",
                "delay_ms",
                "waived_by",
                "waive_reason",
            ],
        );
        for v in &self.violations {
            table.push(violation_row(v));
        }
        vec![table]
    }
}

fn violation_row(v: &Violation) -> Vec<String> {
    let missing = json_strings(&v.missing_fields, |item| item["field"].as_str());
    let skipped = json_strings(&v.skipped_stages, |item| item.as_str());
    vec![
        v.id.to_string(),
        v.rule_name.clone(),
        v.connection.clone(),
        v.crm_id.clone(),
        v.kind.clone(),
        v.from_stage.clone().unwrap_or_default(),
        v.to_stage.clone(),
        missing.join(";"),
        skipped.join(";"),
        query::format_instant(v.changed_at_ms),
        v.changed_by.clone().unwrap_or_default(),
        v.actor_kind.clone(),
        v.owner_id.clone().unwrap_or_default(),
        v.status.clone(),
        v.resolved_at_ms
            .map(query::format_instant)
            .unwrap_or_default(),
        v.delay_ms().map(|d| d.to_string()).unwrap_or_default(),
        v.waived_by.clone().unwrap_or_default(),
        v.waive_reason.clone().unwrap_or_default(),
    ]
}

/// The strings `pick` finds in the items of a JSON array.
fn json_strings(
    array: &serde_json::Value,
    pick: impl Fn(&serde_json::Value) -> Option<&str>,
) -> Vec<String> {
    array
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|item| pick(item).map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn store_failed(err: StoreError) -> ApiError {
    QueryError::Store(err).into()
}

/// Body of a waiver.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WaiveBody {
    reason: String,
    by: String,
}

pub(super) async fn waive(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<i64>,
    body: Result<Json<WaiveBody>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Json(body) = body.map_err(|rejection| {
        ApiError::bad_request(format!(
            "expected {{\"reason\": …, \"by\": …}}: {}",
            rejection.body_text()
        ))
    })?;
    let now = crate::record::wall_clock();
    rules::waive(
        &state.store,
        &state.settings,
        id,
        &body.by,
        &body.reason,
        now,
    )
    .await
    .map_err(waive_failed)?;
    let violation = state.store.violation(id).await.map_err(store_failed)?;
    Ok(Json(json!({ "violation": violation })))
}

fn waive_failed(err: WaiveError) -> ApiError {
    let message = err.to_string();
    let (status, code, parameter) = match err {
        WaiveError::Store(err) => return store_failed(err),
        WaiveError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found", None),
        WaiveError::NotOpen { .. } => (StatusCode::CONFLICT, "not_open", None),
        WaiveError::NoReason => (StatusCode::BAD_REQUEST, "bad_parameter", Some("reason")),
        WaiveError::NoWaiver => (StatusCode::BAD_REQUEST, "bad_parameter", Some("by")),
    };
    ApiError {
        status,
        code,
        message,
        parameter,
    }
}
