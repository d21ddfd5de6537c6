//! `GET /api/v1/openapi.json`: an OpenAPI 3.1 description of the query and violations API.
//!
//! Parameters are listed here beside the routes in `mod.rs`; the test suite checks that every
//! route is described and that every described parameter is accepted.

use axum::Json;
use serde_json::{json, Value};

use crate::record::LifecycleEvent;

/// One query-string parameter: name, required, description, JSON schema.
type Param = (&'static str, bool, &'static str, Value);

fn text() -> Value {
    json!({ "type": "string" })
}

fn instant() -> Value {
    json!({ "type": "string", "description": "RFC 3339 instant or YYYY-MM-DD (midnight UTC)" })
}

fn one_of(values: &[&str]) -> Value {
    json!({ "type": "string", "enum": values })
}

fn connection() -> Param {
    (
        "connection",
        false,
        "Connection name; needed when the store holds several.",
        text(),
    )
}

/// Every route: path, summary, parameters.
pub(crate) fn described_routes() -> Vec<(&'static str, &'static str, Vec<Param>)> {
    let events: Vec<&str> = LifecycleEvent::ALL.iter().map(|e| e.as_str()).collect();
    vec![
        (
            "/api/v1/as-of",
            "Every open deal as it was at an instant, with totals by stage.",
            vec![
                ("at", true, "The instant.", instant()),
                connection(),
                ("pipeline", false, "Only this pipeline.", text()),
                ("owner", false, "Only deals of this owner id.", text()),
                ("stage", false, "Only deals in this stage.", text()),
                (
                    "totals_only",
                    false,
                    "Only the totals by stage, without the list of deals.",
                    json!({ "type": "boolean" }),
                ),
            ],
        ),
        (
            "/api/v1/history",
            "Every version, stage move, milestone, violation and recycle action of one record.",
            vec![
                ("id", true, "The record's CRM id.", text()),
                connection(),
                (
                    "kind",
                    false,
                    "Record kind, when the id is ambiguous.",
                    one_of(&["deal", "lead", "contact", "account", "campaign", "campaign_member"]),
                ),
            ],
        ),
        (
            "/api/v1/pipeline-diff",
            "Deals created, won, lost, removed, moved forward or back, re-priced or re-dated between two instants.",
            vec![
                ("from", true, "Window start.", instant()),
                ("to", true, "Window end (after from).", instant()),
                connection(),
                ("pipeline", false, "Only this pipeline.", text()),
            ],
        ),
        (
            "/api/v1/funnel",
            "Per stage: entries in the window, conversion to the next stage and to won, dwell median/p75/p90, stuck deals.",
            vec![
                ("from", true, "Window start.", instant()),
                ("to", true, "Window end; moves after it do not count.", instant()),
                connection(),
                ("pipeline", false, "Only this pipeline.", text()),
                ("by", false, "One funnel per group.", one_of(&["owner", "source", "campaign"])),
            ],
        ),
        (
            "/api/v1/cohort",
            "Records by the period of a start event, and in which later period they reached an outcome.",
            vec![
                ("period", true, "Cohort length.", one_of(&["month", "quarter", "year"])),
                ("start", true, "Event that puts a record in a cohort.", one_of(&events)),
                ("outcome", true, "Event counted as the outcome.", one_of(&events)),
                ("horizon", false, "Periods reported after the start period.", json!({ "type": "integer", "minimum": 0, "maximum": 120 })),
                ("by", false, "Group records.", one_of(&["campaign", "source", "owner"])),
                ("view", false, "Which value of a record's path groups it.", one_of(&["first_touch", "nurture", "latest"])),
                ("kind", false, "Only records of this kind.", one_of(&["lead", "contact", "deal"])),
                ("from", false, "Only start events from this instant.", instant()),
                ("to", false, "Only start events before this instant.", instant()),
                connection(),
            ],
        ),
        (
            "/api/v1/campaigns",
            "Per campaign: members, responses, the deals and wins they led to, and the difference from the average campaign.",
            vec![
                ("from", true, "Window start.", instant()),
                ("to", true, "Window end (after from).", instant()),
                connection(),
            ],
        ),
        (
            "/api/v1/recycled",
            "Records pipewarden recycled in a window, how many returned (MQL, meeting, opportunity) and after how long (median, p75), by policy.",
            vec![
                ("from", false, "Only records recycled from this instant.", instant()),
                ("to", false, "Only records recycled before this instant.", instant()),
                ("policy", false, "Only this recycle policy.", text()),
                connection(),
            ],
        ),
        (
            "/api/v1/violations",
            "Stage-gate violations, newest moves first (POST /api/v1/violations/{id}/waive with {\"reason\", \"by\"} waives an open one).",
            vec![
                connection(),
                ("owner", false, "Only violations of deals of this owner id.", text()),
                ("rule", false, "Only this rule's violations.", text()),
                ("status", false, "Only violations in this status.", one_of(&["open", "resolved_late", "waived", "superseded"])),
                ("from", false, "Only moves from this instant.", instant()),
                ("to", false, "Only moves before this instant.", instant()),
                ("format", false, "Answer as JSON (default) or CSV.", one_of(&["json", "csv"])),
                ("limit", false, "At most this many (default 1,000).", json!({ "type": "integer", "minimum": 1, "maximum": 100000 })),
            ],
        ),
    ]
}

/// The OpenAPI document.
pub(crate) async fn document() -> Json<Value> {
    let error = json!({
        "description": "What is wrong",
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } }
    });
    let mut paths = serde_json::Map::new();
    for (path, summary, params) in described_routes() {
        let parameters: Vec<Value> = params
            .into_iter()
            .map(|(name, required, description, schema)| {
                json!({ "name": name, "in": "query", "required": required, "description": description, "schema": schema })
            })
            .collect();
        paths.insert(
            path.to_string(),
            json!({ "get": {
                "summary": summary,
                "parameters": parameters,
                "responses": {
                    "200": { "description": "The answer", "content": { "application/json": { "schema": { "type": "object" } } } },
                    "400": error.clone(),
                    "401": error.clone(),
                    "404": error.clone(),
                    "500": error.clone(),
                }
            }}),
        );
    }
    Json(json!({
        "openapi": "3.1.0",
        "info": {
            "title": "pipewarden query API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Historical pipeline queries answered from pipewarden's snapshot store. Ranges are half-open [from, to); money is integer cents; rates are basis points."
        },
        "security": [ { "bearer": [] } ],
        "paths": paths,
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": { "Error": {
                "type": "object",
                "properties": { "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {
                        "code": { "type": "string" },
                        "message": { "type": "string" },
                        "parameter": { "type": "string" }
                    }
                }}
            }}
        }
    }))
}
