//! `composite/sobjects` (sObject Collections, up to 200 records) and `composite` (up to 25
//! subrequests with references), each one API call.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::error;
use super::ids::sf_id;
use super::schema::{self, ObjectDef};
use super::sobjects::{record_body, with_batch};
use super::writes::{Batch, RecordError, ValidationRule};
use crate::emulator::funnel::QUEUES;
use crate::emulator::Shared;

/// Records one collections call may carry.
const MAX_COLLECTION: usize = 200;
/// Subrequests one composite call may carry.
const MAX_SUBREQUESTS: usize = 25;

/// `{"allOrNone": bool, "records": [...]}`.
#[derive(Deserialize)]
pub(crate) struct Collection {
    #[serde(rename = "allOrNone", default)]
    all_or_none: bool,
    records: Vec<Map<String, Value>>,
}

/// `?ids=a,b&allOrNone=true` of a collections delete.
#[derive(Deserialize)]
pub(crate) struct CollectionDelete {
    ids: String,
    #[serde(rename = "allOrNone", default)]
    all_or_none: bool,
}

enum Operation {
    Create,
    Update,
}

/// `POST …/composite/sobjects`: creates.
pub(crate) async fn create_collection(
    State(shared): State<Arc<Shared>>,
    body: Result<Json<Collection>, axum::extract::rejection::JsonRejection>,
) -> Response {
    run_collection(&shared, body, Operation::Create, None)
}

/// `PATCH …/composite/sobjects`: updates.
pub(crate) async fn update_collection(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Result<Json<Collection>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let assign_to = assignment_owner(&shared, &headers);
    run_collection(&shared, body, Operation::Update, assign_to.as_deref())
}

/// The owner the org's lead assignment rule gives, when the request asks for assignment
/// rules (`Sforce-Auto-Assign: TRUE`) and the org has an active rule.
fn assignment_owner(shared: &Shared, headers: &HeaderMap) -> Option<String> {
    let asked = headers
        .get("Sforce-Auto-Assign")
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.eq_ignore_ascii_case("true"));
    let queue = shared.salesforce.options.lead_assignment_queue.as_deref()?;
    let index = QUEUES.iter().position(|name| *name == queue)?;
    asked.then(|| sf_id(schema::GROUP.key_prefix, index as u64))
}

/// `DELETE …/composite/sobjects?ids=`: deletes by id, whatever their type.
pub(crate) async fn delete_collection(
    State(shared): State<Arc<Shared>>,
    Query(params): Query<CollectionDelete>,
) -> Response {
    let ids: Vec<&str> = params.ids.split(',').map(str::trim).collect();
    if ids.len() > MAX_COLLECTION {
        return too_many_records();
    }
    let results = with_batch(
        &shared,
        |batch| {
            ids.iter()
                .map(|id| {
                    let object = object_of_id(id).ok_or_else(RecordError::not_found)?;
                    batch.delete(object, id)
                })
                .collect::<Vec<_>>()
        },
        |results| !params.all_or_none || results.iter().all(Result::is_ok),
    );
    Json(collection_results(&results, params.all_or_none)).into_response()
}

fn object_of_id(id: &str) -> Option<&'static ObjectDef> {
    let prefix = id.get(..3)?;
    schema::OBJECTS
        .iter()
        .copied()
        .find(|object| object.writable && object.key_prefix == prefix)
}

fn too_many_records() -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "EXCEEDED_ID_LIMIT",
        "record limit reached. cannot submit more than 200 records into this call",
    )
}

fn run_collection(
    shared: &Shared,
    body: Result<Json<Collection>, axum::extract::rejection::JsonRejection>,
    operation: Operation,
    assign_leads_to: Option<&str>,
) -> Response {
    let Json(collection) = match body {
        Ok(body) => body,
        Err(rejection) => return json_parser_error(&rejection.body_text()),
    };
    if collection.records.len() > MAX_COLLECTION {
        return too_many_records();
    }
    let rules = &shared.salesforce.options.validation_rules;
    let all_or_none = collection.all_or_none;
    let results = with_batch(
        shared,
        |batch| {
            collection
                .records
                .iter()
                .map(|record| {
                    let assigned = assign(record, assign_leads_to);
                    write_one(
                        batch,
                        assigned.as_ref().unwrap_or(record),
                        &operation,
                        rules,
                    )
                })
                .collect::<Vec<_>>()
        },
        |results| !all_or_none || results.iter().all(Result::is_ok),
    );
    Json(collection_results(&results, all_or_none)).into_response()
}

/// A lead write with the assignment rule's owner in place of any the client gave.
fn assign(record: &Map<String, Value>, owner: Option<&str>) -> Option<Map<String, Value>> {
    let owner = owner?;
    let is_lead = record
        .get("attributes")
        .and_then(|attributes| attributes.get("type"))
        .and_then(Value::as_str)
        == Some("Lead");
    is_lead.then(|| {
        let mut assigned = record.clone();
        assigned.insert("OwnerId".into(), Value::String(owner.to_string()));
        assigned
    })
}

fn write_one(
    batch: &mut Batch<'_>,
    record: &Map<String, Value>,
    operation: &Operation,
    rules: &[ValidationRule],
) -> Result<String, RecordError> {
    let type_name = record
        .get("attributes")
        .and_then(|attributes| attributes.get("type"))
        .and_then(Value::as_str);
    let object = type_name
        .and_then(schema::object)
        .ok_or_else(|| RecordError {
            status: 400,
            code: "INVALID_TYPE",
            message: format!(
                "sObject type '{}' is not supported.",
                type_name.unwrap_or_default()
            ),
            fields: Vec::new(),
        })?;
    match operation {
        Operation::Create => batch.create(object, record, rules),
        Operation::Update => {
            let id = record
                .get("id")
                .or_else(|| record.get("Id"))
                .and_then(Value::as_str)
                .ok_or_else(|| RecordError {
                    status: 400,
                    code: "MISSING_ARGUMENT",
                    message: "Id not specified in an update call".into(),
                    fields: Vec::new(),
                })?;
            batch.update(object, id, record, rules)
        }
    }
}

/// Results in request order; with `allOrNone` and a failure, the others report the rollback.
fn collection_results(results: &[Result<String, RecordError>], all_or_none: bool) -> Value {
    let failed = results.iter().any(Result::is_err);
    let items: Vec<Value> = results
        .iter()
        .map(|result| match result {
            Ok(_) if all_or_none && failed => json!({
                "success": false,
                "errors": [{
                    "statusCode": "ALL_OR_NONE_OPERATION_ROLLED_BACK",
                    "message": "Record rolled back because not all records were valid and the request was using AllOrNone header",
                    "fields": [],
                }],
            }),
            Ok(id) => json!({ "id": id, "success": true, "errors": [] }),
            // Collections name the code `statusCode`, unlike the single-record error array.
            Err(err) => json!({
                "success": false,
                "errors": [{ "statusCode": err.code, "message": err.message, "fields": err.fields }],
            }),
        })
        .collect();
    Value::Array(items)
}

/// Salesforce's answer to a body it cannot parse.
pub(crate) fn json_parser_error(detail: &str) -> Response {
    error(StatusCode::BAD_REQUEST, "JSON_PARSER_ERROR", detail)
}

/// `{"allOrNone": bool, "compositeRequest": [...]}`.
#[derive(Deserialize)]
pub(crate) struct Composite {
    #[serde(rename = "allOrNone", default)]
    all_or_none: bool,
    #[serde(rename = "compositeRequest")]
    requests: Vec<Subrequest>,
}

#[derive(Deserialize)]
struct Subrequest {
    method: String,
    url: String,
    #[serde(rename = "referenceId")]
    reference_id: String,
    #[serde(default)]
    body: Option<Value>,
}

/// What one subrequest answered.
struct SubResponse {
    status: u16,
    body: Value,
    location: Option<String>,
}

/// `POST …/composite`.
pub(crate) async fn composite(
    State(shared): State<Arc<Shared>>,
    body: Result<Json<Composite>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(request) = match body {
        Ok(body) => body,
        Err(rejection) => return json_parser_error(&rejection.body_text()),
    };
    if request.requests.len() > MAX_SUBREQUESTS {
        return error(
            StatusCode::BAD_REQUEST,
            "LIMIT_EXCEEDED",
            "Composite API: the number of subrequests exceeds the limit of 25",
        );
    }
    let rules = &shared.salesforce.options.validation_rules;
    let all_or_none = request.all_or_none;
    let responses = with_batch(
        &shared,
        |batch| run_subrequests(batch, &request.requests, all_or_none, rules),
        |responses| !all_or_none || responses.iter().all(|r| r.status < 400),
    );
    let failed = responses.iter().any(|response| response.status >= 400);
    let halted = json!([{
        "errorCode": "PROCESSING_HALTED",
        "message": "The transaction was rolled back since another operation in the same transaction failed.",
    }]);
    let items: Vec<Value> = responses
        .iter()
        .zip(&request.requests)
        .map(|(response, sub)| {
            let (status, body) = if all_or_none && failed && response.status < 400 {
                (400, halted.clone())
            } else {
                (response.status, response.body.clone())
            };
            let headers = match &response.location {
                Some(location) if status < 400 => json!({ "Location": location }),
                _ => json!({}),
            };
            json!({ "body": body, "httpHeaders": headers, "httpStatusCode": status, "referenceId": sub.reference_id })
        })
        .collect();
    Json(json!({ "compositeResponse": items })).into_response()
}

fn run_subrequests(
    batch: &mut Batch<'_>,
    requests: &[Subrequest],
    all_or_none: bool,
    rules: &[ValidationRule],
) -> Vec<SubResponse> {
    let mut answered: HashMap<&str, Value> = HashMap::new();
    let mut responses = Vec::new();
    let mut stopped = false;
    for sub in requests {
        let response = if stopped {
            halted_response()
        } else {
            match resolve_references(sub, &answered) {
                Ok((url, body)) => run_subrequest(batch, &sub.method, &url, body.as_ref(), rules),
                Err(missing) => SubResponse {
                    status: 400,
                    body: json!([{ "errorCode": "PROCESSING_HALTED", "message": format!("Invalid reference specified. No value for {missing} found.") }]),
                    location: None,
                },
            }
        };
        if response.status >= 400 && all_or_none {
            stopped = true;
        }
        answered.insert(&sub.reference_id, response.body.clone());
        responses.push(response);
    }
    responses
}

fn halted_response() -> SubResponse {
    SubResponse {
        status: 400,
        body: json!([{
            "errorCode": "PROCESSING_HALTED",
            "message": "The transaction was rolled back since another operation in the same transaction failed.",
        }]),
        location: None,
    }
}

/// Replaces `@{ref.path}` in the url and in the body's strings with earlier answers.
fn resolve_references(
    sub: &Subrequest,
    answered: &HashMap<&str, Value>,
) -> Result<(String, Option<Value>), String> {
    let url = substitute(&sub.url, answered)?;
    let body = match &sub.body {
        Some(body) => Some(substitute_value(body, answered)?),
        None => None,
    };
    Ok((url, body))
}

fn substitute_value(value: &Value, answered: &HashMap<&str, Value>) -> Result<Value, String> {
    Ok(match value {
        Value::String(text) => Value::String(substitute(text, answered)?),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|item| substitute_value(item, answered))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(key, item)| Ok((key.clone(), substitute_value(item, answered)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

fn substitute(text: &str, answered: &HashMap<&str, Value>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("@{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or_else(|| after.to_string())?;
        let reference = &after[..end];
        out.push_str(&lookup_reference(reference, answered).ok_or_else(|| reference.to_string())?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// `r1.id` or `r2.records[0].Id` in an earlier answer.
fn lookup_reference(reference: &str, answered: &HashMap<&str, Value>) -> Option<String> {
    let mut parts = reference.split('.');
    let mut value = answered.get(parts.next()?)?;
    for part in parts {
        let (key, index) = match part.split_once('[') {
            Some((key, index)) => (key, index.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        value = value.get(key)?;
        if let Some(index) = index {
            value = value.get(index)?;
        }
    }
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

/// Runs one `sobjects` subrequest against the batch.
fn run_subrequest(
    batch: &mut Batch<'_>,
    method: &str,
    url: &str,
    body: Option<&Value>,
    rules: &[ValidationRule],
) -> SubResponse {
    let path = url.split('?').next().unwrap_or_default();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (object, id) = match segments.as_slice() {
        ["services", "data", _, "sobjects", name] => (schema::object(name), None),
        ["services", "data", _, "sobjects", name, id] => (schema::object(name), Some(*id)),
        _ => (None, None),
    };
    let Some(object) = object.filter(|object| object.queryable) else {
        return SubResponse {
            status: 404,
            body: json!([{ "errorCode": "NOT_FOUND", "message": "The requested resource does not exist" }]),
            location: None,
        };
    };
    let empty = Map::new();
    let fields = body.and_then(Value::as_object).unwrap_or(&empty);
    let version = segments.get(2).copied().unwrap_or("v62.0");
    let outcome = match (method.to_ascii_uppercase().as_str(), id) {
        ("POST", None) => batch.create(object, fields, rules).map(|id| {
            let location = format!("/services/data/{version}/sobjects/{}/{id}", object.name);
            SubResponse {
                status: 201,
                body: json!({ "id": id, "success": true, "errors": [] }),
                location: Some(location),
            }
        }),
        ("PATCH", Some(id)) => batch
            .update(object, id, fields, rules)
            .map(|_| SubResponse {
                status: 204,
                body: Value::Null,
                location: None,
            }),
        ("DELETE", Some(id)) => batch.delete(object, id).map(|_| SubResponse {
            status: 204,
            body: Value::Null,
            location: None,
        }),
        ("GET", Some(id)) => {
            let view = batch.view();
            super::writes::locate(&view, object, id).map(|(_, record)| SubResponse {
                status: 200,
                body: record_body(&record, version),
                location: None,
            })
        }
        _ => {
            return SubResponse {
                status: 405,
                body: json!([{ "errorCode": "METHOD_NOT_ALLOWED", "message": format!("HTTP Method '{method}' not allowed. Allowed are GET,PATCH,DELETE") }]),
                location: None,
            }
        }
    };
    outcome.unwrap_or_else(|err| SubResponse {
        status: err.status,
        body: json!([{ "errorCode": err.code, "message": err.message, "fields": err.fields }]),
        location: None,
    })
}
