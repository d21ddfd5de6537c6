//! `sobjects`: global describe, per-object describe and reading one record by id.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

use super::composite::json_parser_error;
use super::ids::looks_like_id;
use super::records::{CreatedWindow, OrgView, LEAD_STATUSES, STAGES};
use super::schema::{self, FieldDef, FieldType, ObjectDef, SfRecord, SfValue, OBJECTS};
use super::writes::{Batch, RecordError};
use super::{error, not_found, record_error, served_version};
use crate::emulator::funnel::{DISQUALIFY_REASONS, INDUSTRIES, LOSS_REASONS, SEGMENTS, SOURCES};
use crate::emulator::Shared;
use crate::record::Millis;

fn version_of(uri: &Uri) -> &str {
    served_version(uri.path()).unwrap_or("v62.0")
}

fn object_urls(object: &ObjectDef, version: &str) -> Value {
    let base = format!("/services/data/{version}/sobjects/{}", object.name);
    json!({
        "sobject": base,
        "describe": format!("{base}/describe"),
        "rowTemplate": format!("{base}/{{ID}}"),
    })
}

/// The flags global describe and describe share.
fn object_summary(object: &ObjectDef, version: &str) -> Map<String, Value> {
    let mut summary = Map::new();
    summary.insert("name".into(), json!(object.name));
    summary.insert("label".into(), json!(object.name));
    summary.insert("keyPrefix".into(), json!(object.key_prefix));
    summary.insert("custom".into(), json!(false));
    summary.insert("queryable".into(), json!(object.queryable));
    summary.insert("retrieveable".into(), json!(object.queryable));
    summary.insert("replicateable".into(), json!(object.queryable));
    summary.insert("createable".into(), json!(object.writable));
    summary.insert("updateable".into(), json!(object.writable));
    summary.insert("deletable".into(), json!(object.writable));
    summary.insert("urls".into(), object_urls(object, version));
    summary
}

/// `GET …/sobjects`.
pub(crate) async fn global_describe(uri: Uri) -> Json<Value> {
    let version = version_of(&uri);
    let sobjects: Vec<Value> = OBJECTS
        .iter()
        .map(|object| Value::Object(object_summary(object, version)))
        .collect();
    Json(json!({ "encoding": "UTF-8", "maxBatchSize": 200, "sobjects": sobjects }))
}

/// `GET …/sobjects/{type}/describe`.
pub(crate) async fn describe(uri: Uri, Path((_, name)): Path<(String, String)>) -> Response {
    let version = version_of(&uri);
    let Some(object) = schema::object(&name).filter(|object| object.queryable) else {
        return not_found();
    };
    let mut body = object_summary(object, version);
    let fields: Vec<Value> = object.fields.iter().map(describe_field).collect();
    body.insert("fields".into(), Value::Array(fields));
    Json(Value::Object(body)).into_response()
}

fn describe_field(field: &FieldDef) -> Value {
    let system = matches!(
        field.name,
        "Id" | "IsDeleted"
            | "CreatedDate"
            | "CreatedById"
            | "LastModifiedDate"
            | "LastModifiedById"
            | "SystemModstamp"
    );
    let picklist: Vec<Value> = picklist_values(field.name)
        .iter()
        .map(|value| json!({ "active": true, "defaultValue": false, "label": value, "value": value, "validFor": null }))
        .collect();
    json!({
        "name": field.name,
        "label": field.name.trim_end_matches("__c").replace('_', " "),
        "type": field.kind.describe_name(),
        "soapType": soap_type(field.kind),
        "custom": field.name.ends_with("__c"),
        "calculated": field.calculated,
        "nillable": !system,
        "filterable": field.filterable,
        "sortable": field.filterable,
        "createable": field.writable,
        "updateable": field.writable,
        "referenceTo": field.reference_to,
        "relationshipName": field.relationship,
        "length": if matches!(field.kind, FieldType::String | FieldType::Picklist | FieldType::Email) { 255 } else { 0 },
        "picklistValues": picklist,
    })
}

fn picklist_values(field: &str) -> Vec<&'static str> {
    match field {
        "StageName" => STAGES.iter().map(|stage| stage.name).collect(),
        "Status" => LEAD_STATUSES.iter().map(|(label, _)| *label).collect(),
        "Loss_Reason__c" => LOSS_REASONS.to_vec(),
        "Disqualification_Reason__c" => DISQUALIFY_REASONS.to_vec(),
        "LeadSource" => SOURCES.to_vec(),
        "Industry" => INDUSTRIES.to_vec(),
        "Segment__c" => SEGMENTS.to_vec(),
        _ => Vec::new(),
    }
}

fn soap_type(kind: FieldType) -> &'static str {
    match kind {
        FieldType::Id | FieldType::Reference => "tns:ID",
        FieldType::Currency | FieldType::Percent => "xsd:double",
        FieldType::Int => "xsd:int",
        FieldType::Boolean => "xsd:boolean",
        FieldType::Date => "xsd:date",
        FieldType::DateTime => "xsd:dateTime",
        FieldType::AnyType => "xsd:anyType",
        _ => "xsd:string",
    }
}

/// `GET …/sobjects/{type}/{id}`: every field of one record.
pub(crate) async fn read(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    Path((_, name, id)): Path<(String, String, String)>,
) -> Response {
    let version = version_of(&uri);
    let Some(object) = schema::object(&name).filter(|object| object.queryable) else {
        return not_found();
    };
    if !looks_like_id(&id) {
        // Salesforce reads a non-id here as an external id value and names it.
        return error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            &format!("Provided external ID field does not exist or is not accessible: {id}"),
        );
    }
    let overlay = shared.salesforce.overlay();
    let view = OrgView::over(&shared.funnel, shared.clock.now_ms(), &overlay);
    let Some(record) = view.by_id(&id, &[object.name]) else {
        return not_found();
    };
    if matches!(record.get("IsDeleted"), SfValue::Bool(true)) {
        return record_error(&RecordError::deleted());
    }
    Json(record_body(&record, version)).into_response()
}

/// Every field of a record, as `GET …/sobjects/{type}/{id}` returns it.
pub(crate) fn record_body(record: &SfRecord, version: &str) -> Value {
    let object = record.object;
    let mut body = Map::new();
    body.insert(
        "attributes".into(),
        json!({ "type": object.name, "url": format!("/services/data/{version}/sobjects/{}/{}", object.name, record.id()) }),
    )
    ;
    for (field, value) in object.fields.iter().zip(&record.values) {
        body.insert(field.name.into(), value.to_json(field.kind));
    }
    Value::Object(body)
}

/// Runs one write request on a working copy of the overlay and keeps it when `keep` says so.
/// The write lock is held throughout, so concurrent write requests apply one after another.
pub(crate) fn with_batch<T>(
    shared: &Shared,
    run: impl FnOnce(&mut Batch<'_>) -> T,
    keep: impl FnOnce(&T) -> bool,
) -> T {
    let org = &shared.salesforce;
    let mut overlay = org.overlay_mut();
    let mut batch = Batch::new(
        &shared.funnel,
        overlay.clone(),
        shared.clock.now_ms(),
        org.user_id.clone(),
    );
    let outcome = run(&mut batch);
    if keep(&outcome) {
        *overlay = batch.overlay;
    }
    outcome
}

fn queryable_object(name: &str) -> Option<&'static ObjectDef> {
    schema::object(name).filter(|object| object.queryable)
}

/// `POST …/sobjects/{type}`: 201 `{"id", "success": true, "errors": []}`.
pub(crate) async fn create(
    State(shared): State<Arc<Shared>>,
    Path((_, name)): Path<(String, String)>,
    body: Result<Json<Map<String, Value>>, JsonRejection>,
) -> Response {
    let Some(object) = queryable_object(&name) else {
        return not_found();
    };
    let body = match body {
        Ok(Json(body)) => body,
        Err(rejection) => return json_parser_error(&rejection.body_text()),
    };
    let rules = &shared.salesforce.options.validation_rules;
    let created = with_batch(
        &shared,
        |batch| batch.create(object, &body, rules),
        Result::is_ok,
    );
    match created {
        Ok(id) => (
            StatusCode::CREATED,
            Json(json!({ "id": id, "success": true, "errors": [] })),
        )
            .into_response(),
        Err(err) => record_error(&err),
    }
}

/// `PATCH …/sobjects/{type}/{id}`: 204 with no body.
pub(crate) async fn update(
    State(shared): State<Arc<Shared>>,
    Path((_, name, id)): Path<(String, String, String)>,
    body: Result<Json<Map<String, Value>>, JsonRejection>,
) -> Response {
    let Some(object) = queryable_object(&name) else {
        return not_found();
    };
    let body = match body {
        Ok(Json(body)) => body,
        Err(rejection) => return json_parser_error(&rejection.body_text()),
    };
    let rules = &shared.salesforce.options.validation_rules;
    let updated = with_batch(
        &shared,
        |batch| batch.update(object, &id, &body, rules),
        Result::is_ok,
    );
    match updated {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(err) => record_error(&err),
    }
}

/// `DELETE …/sobjects/{type}/{id}`: 204.
pub(crate) async fn delete(
    State(shared): State<Arc<Shared>>,
    Path((_, name, id)): Path<(String, String, String)>,
) -> Response {
    let Some(object) = queryable_object(&name) else {
        return not_found();
    };
    match with_batch(&shared, |batch| batch.delete(object, &id), Result::is_ok) {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(err) => record_error(&err),
    }
}

/// The most ids one replication call returns.
const REPLICATION_ID_LIMIT: usize = 600_000;
/// How far back `updated` reaches.
const UPDATED_WINDOW_MS: i64 = 30 * 86_400_000;
/// How far back `deleted` reaches (the recycle bin's life).
const DELETED_WINDOW_MS: i64 = 15 * 86_400_000;

/// `?start=&end=` of the replication endpoints.
#[derive(serde::Deserialize)]
pub(crate) struct ReplicationWindow {
    start: Option<String>,
    end: Option<String>,
}

/// A replication window checked as Salesforce checks it, truncated to whole minutes.
fn replication_window(
    window: &ReplicationWindow,
    now: i64,
    reach_ms: i64,
) -> Result<(i64, i64), RecordError> {
    let invalid = |message: String| RecordError::bad("INVALID_REPLICATION_DATE", message, &[]);
    let parse = |name: &str, value: &Option<String>| -> Result<i64, RecordError> {
        let text = value.as_deref().ok_or_else(|| {
            RecordError::bad(
                "MISSING_ARGUMENT",
                format!("{name} parameter is required"),
                &[],
            )
        })?;
        chrono::DateTime::parse_from_rfc3339(text)
            .or_else(|_| chrono::DateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f%z"))
            .map(|at| at.timestamp_millis() / 60_000 * 60_000)
            .map_err(|_| invalid(format!("{name} date is not a valid dateTime: {text}")))
    };
    let start = parse("start", &window.start)?;
    let end = parse("end", &window.end)?.min(now / 60_000 * 60_000);
    if start > end {
        return Err(invalid(
            "start date must chronologically precede end date".into(),
        ));
    }
    if now - start > reach_ms {
        let days = reach_ms / 86_400_000;
        return Err(invalid(format!(
            "startDate cannot be more than {days} days ago"
        )));
    }
    Ok((start, end))
}

fn modstamp(record: &SfRecord) -> i64 {
    match record.get("SystemModstamp") {
        SfValue::DateTime(at) => *at,
        _ => i64::MIN,
    }
}

fn is_deleted(record: &SfRecord) -> bool {
    matches!(record.get("IsDeleted"), SfValue::Bool(true))
}

/// What a replication call found: ids with their `SystemModstamp`, the end of the window
/// covered, and when it was read.
struct Replicated {
    found: Vec<(String, Millis)>,
    end: Millis,
    now: Millis,
}

/// Records of `name` whose `SystemModstamp` falls in the window, deleted or live as asked:
/// what both replication endpoints list.
fn replicated(
    shared: &Shared,
    name: &str,
    window: &ReplicationWindow,
    deleted: bool,
) -> Result<Replicated, Box<Response>> {
    let object = queryable_object(name).ok_or_else(|| Box::new(not_found()))?;
    let now = shared.clock.now_ms();
    let reach = if deleted {
        DELETED_WINDOW_MS
    } else {
        UPDATED_WINDOW_MS
    };
    let (start, end) =
        replication_window(window, now, reach).map_err(|err| Box::new(record_error(&err)))?;
    let overlay = shared.salesforce.overlay();
    let view = OrgView::over(&shared.funnel, now, &overlay);
    let found: Vec<(String, Millis)> = view
        .scan(object, CreatedWindow::default())
        .map(|(_, record)| {
            (
                record.id().to_string(),
                modstamp(&record),
                is_deleted(&record),
            )
        })
        .filter(|(_, stamp, gone)| *gone == deleted && (start..end).contains(stamp))
        .map(|(id, stamp, _)| (id, stamp))
        .collect();
    if found.len() > REPLICATION_ID_LIMIT {
        return Err(Box::new(exceeded_id_limit()));
    }
    Ok(Replicated { found, end, now })
}

/// `GET …/sobjects/{type}/updated/?start=&end=`: ids whose `SystemModstamp` is in the window.
pub(crate) async fn updated(
    State(shared): State<Arc<Shared>>,
    Path((_, name)): Path<(String, String)>,
    axum::extract::Query(window): axum::extract::Query<ReplicationWindow>,
) -> Response {
    match replicated(&shared, &name, &window, false) {
        Ok(Replicated { found, end, .. }) => {
            let ids: Vec<String> = found.into_iter().map(|(id, _)| id).collect();
            Json(json!({ "ids": ids, "latestDateCovered": schema::format_datetime(end) }))
                .into_response()
        }
        Err(response) => *response,
    }
}

/// `GET …/sobjects/{type}/deleted/?start=&end=`: records deleted in the window (a deleted
/// record's last stamp is its deletion).
pub(crate) async fn deleted(
    State(shared): State<Arc<Shared>>,
    Path((_, name)): Path<(String, String)>,
    axum::extract::Query(window): axum::extract::Query<ReplicationWindow>,
) -> Response {
    match replicated(&shared, &name, &window, true) {
        Ok(Replicated { found, end, now }) => {
            let deleted: Vec<Value> = found
                .iter()
                .map(|(id, at)| json!({ "id": id, "deletedDate": schema::format_datetime(*at) }))
                .collect();
            let earliest = (now - DELETED_WINDOW_MS) / 60_000 * 60_000;
            Json(json!({
                "deletedRecords": deleted,
                "earliestDateAvailable": schema::format_datetime(earliest),
                "latestDateCovered": schema::format_datetime(end),
            }))
            .into_response()
        }
        Err(response) => *response,
    }
}

fn exceeded_id_limit() -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "EXCEEDED_ID_LIMIT",
        "too many ids: the window holds more than 600,000 records; use a narrower window",
    )
}
