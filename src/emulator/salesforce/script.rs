//! The Salesforce part of the control API: scripted changes and ground truth.
//!
//! Scripted changes are what people and automations do in the org while pipewarden watches:
//! they are made as a chosen user, skip the org's validation rules (a workflow or an import
//! does not meet them the way an API client does) and leave the same history rows as any
//! write. Ground truth is every version of every record and every history row, for tests to
//! compare what pipewarden stored against what happened.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::records::{user_id, CreatedWindow, OrgView};
use super::schema::{self, ObjectDef, SfRecord, SfValue};
use super::sobjects::{record_body, with_batch};
use super::writes::RecordError;
use crate::emulator::funnel::Actor;
use crate::emulator::Shared;
use crate::record::Millis;

/// Routes under `/__emulator/salesforce/`; the caller puts them behind the loopback guard.
pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/__emulator/salesforce/changes", post(apply_changes))
        .route("/__emulator/salesforce/truth/{name}", get(object_truth))
        .route(
            "/__emulator/salesforce/truth/{name}/{id}",
            get(record_truth),
        )
}

/// Who makes a scripted change.
#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "snake_case", tag = "kind")]
enum By {
    /// A sales rep, by number.
    Rep { number: u32 },
    /// The integration user.
    #[default]
    Integration,
    /// A workflow (the automated process).
    Workflow,
    /// A data import.
    Import,
}

impl By {
    fn user_id(self) -> String {
        user_id(match self {
            By::Rep { number } => Actor::Rep(number),
            By::Integration => Actor::Integration,
            By::Workflow => Actor::Workflow,
            By::Import => Actor::Import,
        })
    }
}

/// One scripted change: update, create, delete, merge or lead conversion.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Change {
    object: String,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    set: Option<Map<String, Value>>,
    #[serde(default)]
    create: Option<Map<String, Value>>,
    #[serde(default)]
    delete: bool,
    #[serde(default)]
    merge_into: Option<String>,
    /// Converts the lead `id` into this existing opportunity.
    #[serde(default)]
    convert_to: Option<String>,
    #[serde(default)]
    by: By,
}

/// `{"changes": [...]}`: applied in order, at the simulated now.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Changes {
    changes: Vec<Change>,
}

/// `POST /__emulator/salesforce/changes`: every change applies or none does; the answer lists
/// the id each change touched (or created), or the first error.
async fn apply_changes(
    State(shared): State<Arc<Shared>>,
    body: Result<Json<Changes>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let changes = match body {
        Ok(Json(body)) => body.changes,
        Err(rejection) => return bad_request(&format!("changes: {}", rejection.body_text())),
    };
    let reps = shared.funnel.shape().reps;
    let outcome = with_batch(
        &shared,
        |batch| {
            changes
                .iter()
                .enumerate()
                .map(|(index, change)| {
                    if let By::Rep { number } = change.by {
                        if number >= reps {
                            return Err(format!(
                                "change {index}: there is no rep {number}; reps are numbered 0 to {}",
                                reps - 1
                            ));
                        }
                    }
                    batch.act_as(change.by.user_id());
                    apply_change(batch, change)
                        .map_err(|err| format!("change {index}: {} {}", err.code, err.message))
                })
                .collect::<Result<Vec<String>, String>>()
        },
        Result::is_ok,
    );
    match outcome {
        Ok(ids) => Json(json!({ "ids": ids })).into_response(),
        Err(reason) => bad_request(&reason),
    }
}

fn apply_change(
    batch: &mut super::writes::Batch<'_>,
    change: &Change,
) -> Result<String, RecordError> {
    let object = schema::object(&change.object)
        .filter(|object| object.writable)
        .ok_or_else(|| {
            RecordError::bad(
                "INVALID_TYPE",
                format!("sObject type '{}' is not supported.", change.object),
                &[],
            )
        })?;
    let id = || {
        change.id.as_deref().ok_or_else(|| {
            RecordError::bad("MISSING_ARGUMENT", "`id` is required for this change", &[])
        })
    };
    match (
        &change.create,
        &change.set,
        change.delete,
        &change.merge_into,
        &change.convert_to,
    ) {
        (Some(fields), None, false, None, None) => batch.create(object, fields, &[]),
        (None, Some(fields), false, None, None) => batch.update(object, id()?, fields, &[]),
        (None, None, true, None, None) => batch.delete(object, id()?),
        (None, None, false, Some(master), None) => {
            batch.merge(object, master, &[id()?.to_string()])
        }
        (None, None, false, None, Some(deal)) if object.name == "Lead" => {
            batch.convert_lead(id()?, deal)
        }
        _ => Err(RecordError::bad(
            "MALFORMED_REQUEST",
            "a change has exactly one of `create`, `set`, `delete: true`, `merge_into` or `convert_to` (leads only)",
            &[],
        )),
    }
}

fn bad_request(message: &str) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({ "error": message }))).into_response()
}

/// `GET /__emulator/salesforce/truth/{type}`: every record of a type (deleted ones still in
/// the recycle bin included) with all its versions.
async fn object_truth(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> Response {
    let Some(object) = schema::object(&name).filter(|object| object.queryable) else {
        return bad_request(&format!("no object `{name}`"));
    };
    let overlay = shared.salesforce.overlay();
    let view = OrgView::over(&shared.funnel, shared.clock.now_ms(), &overlay);
    let records: Vec<Value> = view
        .scan(object, CreatedWindow::default())
        .map(|(number, _)| versions_json(&view, object, number))
        .collect();
    Json(json!({ "object": object.name, "records": records })).into_response()
}

/// `GET /__emulator/salesforce/truth/{type}/{id}`: one record's versions.
async fn record_truth(
    State(shared): State<Arc<Shared>>,
    Path((name, id)): Path<(String, String)>,
) -> Response {
    let Some(object) = schema::object(&name).filter(|object| object.queryable) else {
        return bad_request(&format!("no object `{name}`"));
    };
    let overlay = shared.salesforce.overlay();
    let view = OrgView::over(&shared.funnel, shared.clock.now_ms(), &overlay);
    match super::ids::parse_sf_id(&id) {
        Some((prefix, number)) if prefix == object.key_prefix => {
            Json(versions_json(&view, object, number)).into_response()
        }
        _ => bad_request(&format!("`{id}` is not an id of {}", object.name)),
    }
}

/// `{"id", "versions": [{"at", "record"}]}`: the record after each change it went through.
fn versions_json(view: &OrgView<'_>, object: &'static ObjectDef, number: u64) -> Value {
    let versions: Vec<Value> = view
        .change_times(object, number)
        .into_iter()
        .filter_map(|at| {
            let then = OrgView {
                funnel: view.funnel,
                now: at,
                overlay: view.overlay,
                upto_seq: view.upto_seq,
            };
            then.record(object, number)
                .map(|record| version_json(at, &record))
        })
        .collect();
    let id = versions
        .last()
        .and_then(|version| version["record"]["Id"].as_str().map(str::to_string));
    json!({ "id": id, "versions": versions })
}

fn version_json(at: Millis, record: &SfRecord) -> Value {
    let mut body = record_body(record, "v62.0");
    if let Value::Object(fields) = &mut body {
        fields.remove("attributes");
    }
    json!({
        "at": schema::format_datetime(at),
        "deleted": matches!(record.get("IsDeleted"), SfValue::Bool(true)),
        "record": body,
    })
}
