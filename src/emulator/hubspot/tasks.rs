//! Tasks, the engagement pipewarden leaves for a deal's owner: create one associated with a
//! deal (`POST .../tasks`), read tasks back (`GET .../tasks/{id}`, `POST .../tasks/batch/read`)
//! and list a deal's tasks through the v4 associations API.
//!
//! Unlike the generated CRM records, tasks exist only once a client creates them, so they are
//! kept as plain stored data. Only the task-to-deal association (HubSpot-defined type 216) is
//! modelled: it is the one a revert needs.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Map, Value};

use super::objects::{list_param, not_found, parse_instant, query_pairs, with_view, PREFIXES};
use super::records::OWNER_ID_BASE;
use super::schema::ObjectType;
use super::{error, iso, validation_error, Refusal};
use crate::emulator::Shared;
use crate::record::Millis;

/// HubSpot's association type id for a task associated with a deal.
pub(crate) const TASK_TO_DEAL: u64 = 216;
/// Task ids start here, far from the generated records' ids.
const TASK_ID_BASE: u64 = 80_000_000_000;
/// Inputs one batch read may carry.
const BATCH_MAX: usize = 100;
/// Properties a client may set on a task, and the values the choice properties take.
const WRITABLE: &[(&str, &[&str])] = &[
    ("hs_timestamp", &[]),
    ("hs_task_subject", &[]),
    ("hs_task_body", &[]),
    ("hubspot_owner_id", &[]),
    (
        "hs_task_status",
        &[
            "NOT_STARTED",
            "IN_PROGRESS",
            "WAITING",
            "COMPLETED",
            "DEFERRED",
        ],
    ),
    ("hs_task_priority", &["NONE", "LOW", "MEDIUM", "HIGH"]),
    ("hs_task_type", &["EMAIL", "CALL", "TODO"]),
];
/// What a read returns when it names no properties.
const DEFAULT_PROPERTIES: &[&str] = &[
    "hs_createdate",
    "hs_lastmodifieddate",
    "hs_object_id",
    "hs_task_subject",
    "hs_task_status",
    "hs_timestamp",
];

/// A task as stored: its property values and the deals it is associated with.
#[derive(Debug, Clone)]
pub(crate) struct StoredTask {
    properties: BTreeMap<String, String>,
    created_at: Millis,
    deals: Vec<String>,
}

/// The portal's tasks, by id.
pub(crate) type Tasks = BTreeMap<u64, StoredTask>;

pub(crate) fn routes() -> Router<Arc<Shared>> {
    let mut router = Router::new().route(
        "/crm/v4/objects/deals/{id}/associations/tasks",
        get(tasks_of_deal),
    );
    for prefix in PREFIXES {
        router = router
            .route(&format!("{prefix}/tasks"), post(create))
            .route(&format!("{prefix}/tasks/{{id}}"), get(read))
            .route(&format!("{prefix}/tasks/batch/read"), post(batch_read));
    }
    router
}

/// `POST .../tasks` with `{properties, associations}`: 201 with the task.
async fn create(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    match create_task(&shared, &body) {
        Ok(task) => (StatusCode::CREATED, Json(task)).into_response(),
        Err(refused) => refused.into_response(),
    }
}

fn create_task(shared: &Shared, body: &Bytes) -> Result<Value, Refusal> {
    let request: Value = serde_json::from_slice(body)
        .map_err(|err| validation_error(&format!("Invalid input JSON: {err}")))?;
    let owners = shared.funnel.shape().reps;
    let mut properties = checked_properties(&request["properties"], owners)?;
    let deals = associated_deals(&request["associations"])?;
    let now = shared.clock.now_ms();
    with_view(shared, |view, inner| {
        let unknown: Vec<&String> = deals
            .iter()
            .filter(|id| {
                ObjectType::Deals
                    .number(id)
                    .and_then(|n| view.live(ObjectType::Deals, n))
                    .is_none()
            })
            .collect();
        if let Some(id) = unknown.first() {
            return Err(Refusal::from(validation_error(&format!(
                "One or more association targets were not found: deal {id}"
            ))));
        }
        let id = TASK_ID_BASE + inner.tasks.len() as u64 + 1;
        properties.insert("hs_object_id".into(), id.to_string());
        properties.insert("hs_createdate".into(), iso(now));
        properties.insert("hs_lastmodifieddate".into(), iso(now));
        let task = StoredTask {
            properties,
            created_at: now,
            deals: deals.clone(),
        };
        let body = render(id, &task, None);
        inner.tasks.insert(id, task);
        Ok(body)
    })
}

/// The task's property values as HubSpot stores them; `hs_timestamp` is required.
fn checked_properties(raw: &Value, owners: u32) -> Result<BTreeMap<String, String>, Refusal> {
    let Some(given) = raw.as_object() else {
        return Err(validation_error("properties is required").into());
    };
    let mut properties = BTreeMap::new();
    for (name, value) in given {
        let text = match value {
            Value::String(text) => text.clone(),
            Value::Null => String::new(),
            other => other.to_string(),
        };
        properties.insert(name.clone(), checked_value(name, text, owners)?);
    }
    if properties.get("hs_timestamp").is_none_or(String::is_empty) {
        return Err(invalid("hs_timestamp", "REQUIRED", "hs_timestamp is required").into());
    }
    Ok(properties)
}

fn checked_value(name: &str, value: String, owners: u32) -> Result<String, Refusal> {
    let Some((_, options)) = WRITABLE.iter().find(|(known, _)| *known == name) else {
        let message = format!("Property \"{name}\" does not exist");
        return Err(invalid(name, "PROPERTY_DOESNT_EXIST", &message).into());
    };
    if value.is_empty() {
        return Ok(value);
    }
    let valid = match name {
        "hs_timestamp" => parse_instant(&value).is_some(),
        "hubspot_owner_id" => value
            .parse::<u64>()
            .ok()
            .and_then(|id| id.checked_sub(OWNER_ID_BASE))
            .is_some_and(|rep| rep < u64::from(owners)),
        _ => options.is_empty() || options.contains(&value.as_str()),
    };
    if !valid {
        let message = format!("{value} is not a valid value for {name}");
        return Err(invalid(name, "INVALID_OPTION", &message).into());
    }
    Ok(match name {
        "hs_timestamp" => parse_instant(&value).map(iso).unwrap_or(value),
        _ => value,
    })
}

/// HubSpot's `VALIDATION_ERROR` naming one property.
fn invalid(name: &str, code: &str, message: &str) -> Response {
    let detail = json!([{ "isValid": false, "message": message, "error": code, "name": name }]);
    error(
        StatusCode::BAD_REQUEST,
        "VALIDATION_ERROR",
        &format!("Property values were not valid: {detail}"),
    )
}

/// The deal ids of `associations`; any association but task-to-deal is refused.
fn associated_deals(raw: &Value) -> Result<Vec<String>, Refusal> {
    let mut deals = Vec::new();
    for association in raw.as_array().into_iter().flatten() {
        let id = match &association["to"]["id"] {
            Value::String(id) => id.clone(),
            Value::Number(id) => id.to_string(),
            _ => return Err(validation_error("associations[].to.id is required").into()),
        };
        let types = association["types"].as_array().cloned().unwrap_or_default();
        let to_deal = !types.is_empty()
            && types.iter().all(|t| {
                t["associationCategory"] == "HUBSPOT_DEFINED"
                    && t["associationTypeId"].as_u64() == Some(TASK_TO_DEAL)
            });
        if !to_deal {
            return Err(validation_error(&format!(
                "association type is not valid for task to {id}: this portal models HUBSPOT_DEFINED {TASK_TO_DEAL} (task to deal) only"
            ))
            .into());
        }
        deals.push(id);
    }
    Ok(deals)
}

/// A task as `SimplePublicObject`, with `names` or the default properties.
fn render(id: u64, task: &StoredTask, names: Option<&[String]>) -> Value {
    let shown: Vec<&str> = match names {
        Some(names) => names.iter().map(String::as_str).collect(),
        None => DEFAULT_PROPERTIES.to_vec(),
    };
    let properties: Map<String, Value> = shown
        .into_iter()
        .map(|name| {
            let value = task.properties.get(name).map_or(Value::Null, |v| json!(v));
            (name.to_string(), value)
        })
        .collect();
    json!({
        "id": id.to_string(),
        "properties": properties,
        "createdAt": iso(task.created_at),
        "updatedAt": iso(task.created_at),
        "archived": false,
    })
}

fn find_task(shared: &Shared, id: &str) -> Option<(u64, StoredTask)> {
    let id = id.trim().parse::<u64>().ok()?;
    let inner = shared.hubspot.lock();
    inner.tasks.get(&id).map(|task| (id, task.clone()))
}

/// `GET .../tasks/{id}`, with `properties` as a comma list.
async fn read(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    uri: axum::http::Uri,
) -> Response {
    let names = list_param(&query_pairs(&uri), "properties");
    match find_task(&shared, &id) {
        Some((id, task)) => Json(render(id, &task, names.as_deref())).into_response(),
        None => not_found(),
    }
}

/// `POST .../tasks/batch/read` with `{inputs: [{id}], properties}`; unknown ids make a 207.
async fn batch_read(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return validation_error("Invalid input JSON");
    };
    let inputs = request["inputs"].as_array().cloned().unwrap_or_default();
    if inputs.len() > BATCH_MAX {
        return validation_error(&format!(
            "The maximum number of inputs supported in a batch request is {BATCH_MAX}. Please reduce the number of items and try again"
        ));
    }
    let names: Option<Vec<String>> = request["properties"].as_array().map(|names| {
        names
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect()
    });
    let mut results = Vec::new();
    let mut missing = Vec::new();
    for input in &inputs {
        let id = input["id"].as_str().unwrap_or_default();
        match find_task(&shared, id) {
            Some((id, task)) => results.push(render(id, &task, names.as_deref())),
            None => missing.push(id.to_string()),
        }
    }
    let now = iso(shared.clock.now_ms());
    let mut answer = json!({
        "status": "COMPLETE",
        "results": results,
        "startedAt": now,
        "completedAt": now,
    });
    if missing.is_empty() {
        return Json(answer).into_response();
    }
    answer["numErrors"] = json!(1);
    answer["errors"] = json!([{
        "status": "error",
        "category": "OBJECT_NOT_FOUND",
        "message": "Could not get some TASK objects, they may be deleted or not exist. Check that ids are valid.",
        "context": { "ids": missing },
    }]);
    (StatusCode::MULTI_STATUS, Json(answer)).into_response()
}

/// `GET /crm/v4/objects/deals/{id}/associations/tasks`: the deal's tasks, in one page.
async fn tasks_of_deal(State(shared): State<Arc<Shared>>, Path(deal): Path<String>) -> Response {
    let exists = with_view(&shared, |view, _| {
        ObjectType::Deals
            .number(&deal)
            .and_then(|n| view.live(ObjectType::Deals, n))
            .is_some()
    });
    if !exists {
        return not_found();
    }
    let inner = shared.hubspot.lock();
    let results: Vec<Value> = inner
        .tasks
        .iter()
        .filter(|(_, task)| task.deals.contains(&deal))
        .map(|(id, _)| {
            json!({
                "toObjectId": id,
                "associationTypes": [{
                    "category": "HUBSPOT_DEFINED",
                    "typeId": TASK_TO_DEAL,
                    "label": null,
                }],
            })
        })
        .collect();
    Json(json!({ "results": results })).into_response()
}
