//! `/api/v1/violations`: stage-gate violations as JSON or CSV, filtered by connection, owner,
//! rule, status and period, and `POST /api/v1/violations/{id}/waive` to waive one.
//!
//! Both sit behind the API's bearer token, like every `/api/v1` route.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, ApiState};
use crate::query::{self, QueryError};
use crate::rules::{self, WaiveError};
use crate::store::{Violation, ViolationFilter};

/// An API error: status, stable code, message.
fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message.into()}})),
    )
        .into_response()
}

fn store_failed(err: impl std::fmt::Display) -> Response {
    // The store's error stays in the log; clients get a generic answer.
    tracing::error!(error = %err, "violations API: store failed");
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "store_unavailable",
        "the store failed; see the server log",
    )
}

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

pub(super) async fn list(
    State(state): State<Arc<ApiState>>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(query) = match query {
        Ok(query) => query,
        Err(rejection) => {
            return error(StatusCode::BAD_REQUEST, "bad_query", rejection.body_text())
        }
    };
    if let Some(status) = query.status.as_deref() {
        if !STATUSES.contains(&status) {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_status",
                format!("status `{status}` is not one of {}", STATUSES.join(", ")),
            );
        }
    }
    let (from_ms, to_ms) = match period(query.from.as_deref(), query.to.as_deref()) {
        Ok(period) => period,
        Err(err) => return ApiError::from(err).into_response(),
    };
    let csv = match query.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_format",
                format!("format `{other}` is not json or csv"),
            )
        }
    };
    let filter = ViolationFilter {
        connection: query.connection,
        owner: query.owner,
        rule: query.rule,
        status: query.status,
        from_ms,
        to_ms,
        limit: query.limit.unwrap_or(1_000).clamp(1, 100_000),
    };
    let violations = match state.store.violations(&filter).await {
        Ok(violations) => violations,
        Err(err) => return store_failed(err),
    };
    if csv {
        (
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            to_csv(&violations),
        )
            .into_response()
    } else {
        Json(json!({ "violations": violations })).into_response()
    }
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

fn to_csv(violations: &[Violation]) -> String {
    let mut out = String::from(
        "id,rule,connection,crm_id,kind,from_stage,to_stage,missing_fields,skipped_stages,changed_at,changed_by,\
         actor_kind,owner_id,status,resolved_at,delay_ms,waived_by,waive_reason\n",
    );
    let instant = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .unwrap_or_default()
    };
    for v in violations {
        let missing: Vec<String> = v
            .missing_fields
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(|m| m["field"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let skipped: Vec<String> = v
            .skipped_stages
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let cells = [
            v.id.to_string(),
            v.rule_name.clone(),
            v.connection.clone(),
            v.crm_id.clone(),
            v.kind.clone(),
            v.from_stage.clone().unwrap_or_default(),
            v.to_stage.clone(),
            missing.join(";"),
            skipped.join(";"),
            instant(v.changed_at_ms),
            v.changed_by.clone().unwrap_or_default(),
            v.actor_kind.clone(),
            v.owner_id.clone().unwrap_or_default(),
            v.status.clone(),
            v.resolved_at_ms.map(instant).unwrap_or_default(),
            v.delay_ms().map(|d| d.to_string()).unwrap_or_default(),
            v.waived_by.clone().unwrap_or_default(),
            v.waive_reason.clone().unwrap_or_default(),
        ];
        let line: Vec<String> = cells.iter().map(|cell| csv_cell(cell)).collect();
        out.push_str(&line.join(","));
        out.push('\n');
    }
    out
}

/// Quotes a cell when it holds a comma, quote or line break (RFC 4180).
fn csv_cell(cell: &str) -> String {
    if cell.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", cell.replace('"', "\"\""))
    } else {
        cell.to_string()
    }
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
    body: Result<Json<WaiveBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let body = match body {
        Ok(Json(body)) => body,
        Err(rejection) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_body",
                format!(
                    "expected {{\"reason\": …, \"by\": …}}: {}",
                    rejection.body_text()
                ),
            )
        }
    };
    let now = chrono::Utc::now().timestamp_millis();
    match rules::waive(
        &state.store,
        &state.settings,
        id,
        &body.by,
        &body.reason,
        now,
    )
    .await
    {
        Ok(()) => match state.store.violation(id).await {
            Ok(violation) => Json(json!({ "violation": violation })).into_response(),
            Err(err) => store_failed(err),
        },
        Err(err @ WaiveError::NotFound(_)) => {
            error(StatusCode::NOT_FOUND, "not_found", err.to_string())
        }
        Err(err @ WaiveError::NotOpen { .. }) => {
            error(StatusCode::CONFLICT, "not_open", err.to_string())
        }
        Err(err @ WaiveError::NoReason) => {
            error(StatusCode::BAD_REQUEST, "no_reason", err.to_string())
        }
        Err(err @ WaiveError::NoWaiver) => {
            error(StatusCode::BAD_REQUEST, "no_waiver", err.to_string())
        }
        Err(WaiveError::Store(err)) => store_failed(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_cells_are_quoted_when_needed() {
        assert_eq!(csv_cell("plain"), "plain");
        assert_eq!(csv_cell("a,b"), "\"a,b\"");
        assert_eq!(csv_cell("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
