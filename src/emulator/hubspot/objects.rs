//! CRM objects under `/crm/v3/objects/{type}` and `/crm/objects/2026-03/{type}`: list, read,
//! batch read, update, batch update and archive.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use serde_json::{json, Map, Value};

use super::auth::Caller;
use super::records::{source_fields, HsRecord, PortalView, Source, Write};
use super::schema::{lifecycle_rank, Kind, ObjectType};
use super::{error, iso, validation_error, PortalInner, Refusal};
use crate::emulator::Shared;
use crate::record::Millis;

/// Object paths are served under both the v3 and the date-versioned prefix.
pub(crate) const PREFIXES: &[&str] = &["/crm/v3/objects", "/crm/objects/2026-03"];
const DEFAULT_LIMIT: usize = 10;
const MAX_LIMIT: usize = 100;
/// Pages and batches with property history hold at most this many records.
pub(crate) const HISTORY_MAX: usize = 50;
const BATCH_MAX: usize = 100;
const HISTORY_BATCH_MESSAGE: &str = "The maximum number of inputs supported in a batch request for property histories is 50. Please reduce the number of items and try again";

pub(crate) fn routes() -> Router<Arc<Shared>> {
    let mut router = Router::new();
    for prefix in PREFIXES {
        router = router
            .route(&format!("{prefix}/{{object}}"), get(list))
            .route(
                &format!("{prefix}/{{object}}/{{id}}"),
                get(read).patch(update).delete(archive),
            )
            .route(&format!("{prefix}/{{object}}/batch/read"), post(batch_read))
            .route(
                &format!("{prefix}/{{object}}/batch/update"),
                post(batch_update),
            );
    }
    router
}

/// What to show of each record.
#[derive(Debug, Default, Clone)]
pub(crate) struct Selection {
    /// Named properties, or the object's default set when `None`.
    pub properties: Option<Vec<String>>,
    pub with_history: Vec<String>,
    pub associations: Vec<ObjectType>,
}

/// The object type of a path segment, or HubSpot's answer to an unknown one.
pub(crate) fn object_type(name: &str) -> Result<ObjectType, Refusal> {
    ObjectType::parse(name).ok_or_else(|| {
        validation_error(&format!("Unable to infer object type from: {name}")).into()
    })
}

/// Locks the portal and sees its data as of the simulated now.
pub(crate) fn with_view<T>(
    shared: &Shared,
    read: impl FnOnce(&PortalView, &mut PortalInner) -> T,
) -> T {
    let now = shared.clock.now_ms();
    let mut inner = shared.hubspot.lock();
    let overlays = std::mem::take(&mut inner.overlays);
    let view = PortalView {
        funnel: &shared.funnel,
        now,
        overlays: &overlays,
    };
    // The overlays must go back even if the handler panics, or every client write is lost.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read(&view, &mut inner)));
    // Writers append to the (emptied) map while the view borrowed the real one.
    let written = std::mem::replace(&mut inner.overlays, overlays);
    if !written.is_empty() {
        // Every client write and archive lands in the emptied map, so this is the one place
        // that sees the overlays change.
        inner.overlays_version += 1;
    }
    for (key, overlay) in written {
        let target = inner.overlays.entry(key).or_default();
        target.writes.extend(overlay.writes);
        if overlay.archived_at.is_some() {
            target.archived_at = overlay.archived_at;
        }
    }
    drop(inner);
    result.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// A record as HubSpot's `SimplePublicObject(WithAssociations)`.
pub(crate) fn render(view: &PortalView, record: &HsRecord, selection: &Selection) -> Value {
    let object = record.object;
    let mut properties = Map::new();
    let names: Vec<&str> = match &selection.properties {
        Some(names) => names.iter().map(String::as_str).collect(),
        None => object.default_properties().to_vec(),
    };
    for name in names {
        if object.property(name).is_some() {
            let value = record.current(name).map_or(Value::Null, |v| json!(v));
            properties.insert(name.to_string(), value);
        }
    }
    let mut body = Map::new();
    body.insert("id".into(), json!(record.id()));
    body.insert("properties".into(), Value::Object(properties));
    if !selection.with_history.is_empty() {
        body.insert(
            "propertiesWithHistory".into(),
            Value::Object(history(record, &selection.with_history)),
        );
    }
    body.insert("createdAt".into(), json!(iso(record.created_at)));
    body.insert("updatedAt".into(), json!(iso(record.modified_at)));
    body.insert("archived".into(), json!(record.archived_at.is_some()));
    if let Some(at) = record.archived_at {
        body.insert("archivedAt".into(), json!(iso(at)));
    }
    let associations = associations(view, record, &selection.associations);
    if !associations.is_empty() {
        body.insert("associations".into(), Value::Object(associations));
    }
    Value::Object(body)
}

/// Every version of each named property, newest first.
fn history(record: &HsRecord, names: &[String]) -> Map<String, Value> {
    let mut out = Map::new();
    for name in names {
        if record.object.property(name).is_none() {
            continue;
        }
        let versions: Vec<Value> = record
            .props
            .get(name.as_str())
            .into_iter()
            .flatten()
            .rev()
            .map(|version| {
                let (source_type, source_id, user) = source_fields(version.source);
                let mut entry = json!({
                    "value": version.value,
                    "timestamp": iso(version.at),
                    "sourceType": source_type,
                });
                if let Some(source_id) = source_id {
                    entry["sourceId"] = json!(source_id);
                }
                if let Some(user) = user {
                    entry["updatedByUserId"] = json!(user);
                }
                entry
            })
            .collect();
        out.insert(name.clone(), Value::Array(versions));
    }
    out
}

fn associations(view: &PortalView, record: &HsRecord, to: &[ObjectType]) -> Map<String, Value> {
    let mut out = Map::new();
    for &target in to {
        let ids: Vec<Value> = view
            .associated(record.object, record.number, target)
            .into_iter()
            .map(|number| {
                json!({
                    "id": target.id(number),
                    "type": format!("{}_to_{}", record.object.singular(), target.singular()),
                })
            })
            .collect();
        if !ids.is_empty() {
            out.insert(target.plural().to_string(), json!({ "results": ids }));
        }
    }
    out
}

/// Query parameters as pairs, since `properties` may come as a comma list or repeated.
pub(crate) fn query_pairs(uri: &Uri) -> Vec<(String, String)> {
    url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

pub(crate) fn list_param(pairs: &[(String, String)], key: &str) -> Option<Vec<String>> {
    let values: Vec<String> = pairs
        .iter()
        .filter(|(name, _)| name == key)
        .flat_map(|(_, value)| value.split(','))
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .collect();
    pairs.iter().any(|(name, _)| name == key).then_some(values)
}

fn single_param<'p>(pairs: &'p [(String, String)], key: &str) -> Option<&'p str> {
    pairs
        .iter()
        .find(|(name, _)| name == key)
        .map(|(_, value)| value.as_str())
}

fn selection_from_query(pairs: &[(String, String)]) -> Selection {
    Selection {
        properties: list_param(pairs, "properties"),
        with_history: list_param(pairs, "propertiesWithHistory").unwrap_or_default(),
        associations: list_param(pairs, "associations")
            .unwrap_or_default()
            .iter()
            .filter_map(|name| ObjectType::parse(name))
            .collect(),
    }
}

fn archived_flag(pairs: &[(String, String)]) -> bool {
    single_param(pairs, "archived").is_some_and(|value| value.eq_ignore_ascii_case("true"))
}

/// The list cursor: base64 of the next record number, opaque to clients as HubSpot's is.
fn encode_after(number: u64) -> String {
    BASE64.encode(format!("{number}\n"))
}

fn decode_after(after: &str) -> Option<u64> {
    let bytes = BASE64.decode(after.trim()).ok()?;
    String::from_utf8(bytes).ok()?.trim().parse().ok()
}

/// `GET .../{type}`: pages in id order; `archived=true` lists only archived records.
async fn list(State(shared): State<Arc<Shared>>, Path(object): Path<String>, uri: Uri) -> Response {
    let object = match object_type(&object) {
        Ok(object) => object,
        Err(refused) => return refused.into_response(),
    };
    let pairs = query_pairs(&uri);
    let selection = selection_from_query(&pairs);
    let max = if selection.with_history.is_empty() {
        MAX_LIMIT
    } else {
        HISTORY_MAX
    };
    let limit = match single_param(&pairs, "limit").map(str::parse::<usize>) {
        None => DEFAULT_LIMIT,
        Some(Ok(limit)) if (1..=max).contains(&limit) => limit,
        Some(_) if !selection.with_history.is_empty() => {
            return validation_error(&format!(
                "The maximum number of objects supported in a request for property histories is {HISTORY_MAX}."
            ))
        }
        Some(_) => {
            return validation_error(&format!(
                "limit must be between 1 and {MAX_LIMIT}"
            ))
        }
    };
    let start = match single_param(&pairs, "after") {
        None => 0,
        Some(after) => match decode_after(after) {
            Some(number) => number,
            None => return validation_error(&format!("Invalid after: {after}")),
        },
    };
    let archived = archived_flag(&pairs);
    let (results, next) = with_view(&shared, |view, _| {
        let bound = view.bound(object);
        let listed = |number: u64| {
            view.record(object, number)
                .filter(|record| record.archived_at.is_some() == archived)
        };
        let mut results = Vec::new();
        let mut number = start;
        // One thread: built over the cores, a page of 100 measured slower than this (its
        // rendered values, probably, crossing threads), unlike search and Salesforce pages.
        while number < bound && results.len() < limit {
            if let Some(record) = listed(number) {
                results.push(render(view, &record, &selection));
            }
            number += 1;
        }
        let more = (number..bound).any(|candidate| {
            if archived {
                listed(candidate).is_some()
            } else {
                // Liveness reads the life alone, without building the record.
                view.is_live(object, candidate)
            }
        });
        (results, more.then_some(number))
    });
    let mut body = json!({ "results": results });
    if let Some(next) = next {
        let after = encode_after(next);
        body["paging"] =
            json!({ "next": { "after": after, "link": next_link(&shared, &uri, &after) } });
    }
    Json(body).into_response()
}

/// The next page's URL: this request's path and query with `after` replaced.
fn next_link(shared: &Shared, uri: &Uri, after: &str) -> String {
    let Ok(mut link) = shared.base_url.join(uri.path().trim_start_matches('/')) else {
        return String::new();
    };
    let kept: Vec<(String, String)> = query_pairs(uri)
        .into_iter()
        .filter(|(name, _)| name != "after")
        .collect();
    {
        let mut query = link.query_pairs_mut();
        for (name, value) in &kept {
            query.append_pair(name, value);
        }
        query.append_pair("after", after);
    }
    link.to_string()
}

pub(crate) fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "OBJECT_NOT_FOUND",
        "resource not found",
    )
}

/// `GET .../{type}/{id}`.
async fn read(
    State(shared): State<Arc<Shared>>,
    Path((object, id)): Path<(String, String)>,
    uri: Uri,
) -> Response {
    let object = match object_type(&object) {
        Ok(object) => object,
        Err(refused) => return refused.into_response(),
    };
    let pairs = query_pairs(&uri);
    if single_param(&pairs, "idProperty").is_some_and(|name| name != "hs_object_id") {
        return validation_error("idProperty is only supported as hs_object_id by this portal");
    }
    let selection = selection_from_query(&pairs);
    let archived = archived_flag(&pairs);
    let found = with_view(&shared, |view, _| {
        let record = object
            .number(&id)
            .and_then(|number| view.record(object, number))
            .filter(|record| record.archived_at.is_some() == archived)?;
        Some(render(view, &record, &selection))
    });
    match found {
        Some(body) => Json(body).into_response(),
        None => not_found(),
    }
}

fn parse_json(body: &Bytes) -> Result<Value, Refusal> {
    serde_json::from_slice(body).map_err(|err| {
        validation_error(&format!(
            "Invalid input JSON on line 1, column {}: {err}",
            err.column()
        ))
        .into()
    })
}

fn string_list(value: &Value) -> Vec<String> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect()
}

fn batch_response(
    results: Vec<Value>,
    missing: Vec<String>,
    object: ObjectType,
    now: Millis,
) -> Response {
    let mut body = json!({
        "status": "COMPLETE",
        "results": results,
        "startedAt": iso(now),
        "completedAt": iso(now),
    });
    if missing.is_empty() {
        return Json(body).into_response();
    }
    body["numErrors"] = json!(1);
    body["errors"] = json!([{
        "status": "error",
        "category": "OBJECT_NOT_FOUND",
        "message": format!(
            "Could not get some {} objects, they may be deleted or not exist. Check that ids are valid.",
            object.singular().to_uppercase()
        ),
        "context": { "ids": missing },
    }]);
    (StatusCode::MULTI_STATUS, Json(body)).into_response()
}

/// `POST .../{type}/batch/read`.
async fn batch_read(
    State(shared): State<Arc<Shared>>,
    Path(object): Path<String>,
    uri: Uri,
    body: Bytes,
) -> Response {
    let object = match object_type(&object) {
        Ok(object) => object,
        Err(refused) => return refused.into_response(),
    };
    let request = match parse_json(&body) {
        Ok(request) => request,
        Err(refused) => return refused.into_response(),
    };
    let ids: Vec<String> = request["inputs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|input| match &input["id"] {
            Value::String(id) => Some(id.clone()),
            Value::Number(id) => Some(id.to_string()),
            _ => None,
        })
        .collect();
    let selection = Selection {
        properties: request["properties"]
            .as_array()
            .map(|_| string_list(&request["properties"])),
        with_history: string_list(&request["propertiesWithHistory"]),
        associations: Vec::new(),
    };
    if !selection.with_history.is_empty() && ids.len() > HISTORY_MAX {
        return validation_error(HISTORY_BATCH_MESSAGE);
    }
    if ids.len() > BATCH_MAX {
        return validation_error(&format!(
            "The maximum number of inputs supported in a batch request is {BATCH_MAX}. Please reduce the number of items and try again"
        ));
    }
    if request["idProperty"]
        .as_str()
        .is_some_and(|name| name != "hs_object_id")
    {
        return validation_error("idProperty is only supported as hs_object_id by this portal");
    }
    let archived = archived_flag(&query_pairs(&uri));
    let now = shared.clock.now_ms();
    let (results, missing) = with_view(&shared, |view, _| {
        let mut results = Vec::new();
        let mut missing = Vec::new();
        for id in &ids {
            let record = object
                .number(id)
                .and_then(|number| view.record(object, number))
                .filter(|record| record.archived_at.is_some() == archived);
            match record {
                Some(record) => results.push(render(view, &record, &selection)),
                None => missing.push(id.clone()),
            }
        }
        (results, missing)
    });
    batch_response(results, missing, object, now)
}

/// One invalid property value, as HubSpot lists it inside `VALIDATION_ERROR` messages.
struct Invalid {
    name: String,
    code: &'static str,
    message: String,
}

fn invalid_response(invalid: &[Invalid], portal_id: u64) -> Response {
    let errors: Vec<Value> = invalid
        .iter()
        .map(|item| {
            json!({
                "isValid": false,
                "message": item.message,
                "error": item.code,
                "name": item.name,
                "localizedErrorMessage": item.message,
                "portalId": portal_id,
            })
        })
        .collect();
    let listed = serde_json::to_string(&errors).unwrap_or_default();
    error(
        StatusCode::BAD_REQUEST,
        "VALIDATION_ERROR",
        &format!("Property values were not valid: {listed}"),
    )
}

/// Checks one written value and returns it as HubSpot stores it.
fn normalise(object: ObjectType, name: &str, raw: &Value, owners: u32) -> Result<String, Invalid> {
    let invalid = |code: &'static str, message: String| Invalid {
        name: name.to_string(),
        code,
        message,
    };
    let Some(def) = object.property(name) else {
        return Err(invalid(
            "PROPERTY_DOESNT_EXIST",
            format!("Property \"{name}\" does not exist"),
        ));
    };
    if def.read_only {
        return Err(invalid(
            "READ_ONLY_VALUE",
            format!("\"{name}\" is a read only property; its value cannot be set."),
        ));
    }
    let value = match raw {
        Value::String(text) => text.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    if value.is_empty() {
        return Ok(value);
    }
    if name == "hubspot_owner_id" {
        let known = value
            .parse::<u64>()
            .ok()
            .and_then(|id| id.checked_sub(super::records::OWNER_ID_BASE))
            .is_some_and(|rep| rep < u64::from(owners));
        return if known {
            Ok(value)
        } else {
            Err(invalid(
                "INVALID_OWNER_ID",
                format!("{value} is not a valid owner id"),
            ))
        };
    }
    match def.kind {
        Kind::Number => value
            .parse::<f64>()
            .map(|_| value.clone())
            .map_err(|_| invalid("INVALID_FLOAT", format!("{value} was not a valid number."))),
        Kind::DateTime => parse_instant(&value)
            .map(iso)
            .ok_or_else(|| invalid("INVALID_DATE", format!("{value} was not a valid date."))),
        Kind::Date => parse_instant(&value)
            .filter(|ms| ms.rem_euclid(86_400_000) == 0)
            .and_then(chrono::DateTime::from_timestamp_millis)
            .map(|at| at.format("%Y-%m-%d").to_string())
            .ok_or_else(|| {
                invalid(
                    "INVALID_DATE",
                    format!("{value} is not a valid date; dates must be midnight UTC."),
                )
            }),
        Kind::Select | Kind::Checkbox | Kind::Bool if !def.options.is_empty() => {
            if def.options.iter().any(|(option, _)| *option == value) {
                Ok(value)
            } else {
                let allowed: Vec<String> = def
                    .options
                    .iter()
                    .map(|(option, label)| format!("label: \"{label}\"\nvalue: \"{option}\""))
                    .collect();
                Err(invalid(
                    "INVALID_OPTION",
                    format!(
                        "{value} was not one of the allowed options: [{}]",
                        allowed.join(", ")
                    ),
                ))
            }
        }
        _ => Ok(value),
    }
}

/// Epoch milliseconds, an ISO instant, or a calendar date (midnight UTC).
pub(crate) fn parse_instant(text: &str) -> Option<Millis> {
    if let Ok(ms) = text.parse::<i64>() {
        return Some(ms);
    }
    if let Ok(at) = chrono::DateTime::parse_from_rfc3339(text) {
        return Some(at.timestamp_millis());
    }
    chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|day| day.and_hms_opt(0, 0, 0))
        .map(|at| at.and_utc().timestamp_millis())
}

/// The checked writes of one update input, or why they were refused.
fn checked_writes(
    object: ObjectType,
    properties: &Value,
    owners: u32,
) -> Result<Vec<(String, String)>, Vec<Invalid>> {
    let Some(map) = properties.as_object() else {
        return Ok(Vec::new());
    };
    let mut writes = Vec::new();
    let mut invalid = Vec::new();
    for (name, raw) in map {
        match normalise(object, name, raw, owners) {
            Ok(value) => writes.push((name.clone(), value)),
            Err(problem) => invalid.push(problem),
        }
    }
    if invalid.is_empty() {
        Ok(writes)
    } else {
        Err(invalid)
    }
}

/// Records the writes that change something. A lifecycle stage only moves forward: an
/// earlier stage is ignored without an error, as HubSpot does, until the stage is cleared.
fn apply_writes(
    inner: &mut PortalInner,
    record: &HsRecord,
    writes: &[(String, String)],
    now: Millis,
    source: Source,
) -> Vec<String> {
    let mut applied = Vec::new();
    let overlay = inner
        .overlays
        .entry((record.object, record.number))
        .or_default();
    for (name, value) in writes {
        if record.current(name).unwrap_or("") == value.as_str() {
            continue;
        }
        if name == "lifecyclestage" && moves_backward(record.current(name), value) {
            continue;
        }
        overlay.writes.push(Write {
            at: now,
            property: name.clone(),
            value: value.clone(),
            source,
        });
        applied.push(name.clone());
    }
    applied
}

fn moves_backward(current: Option<&str>, next: &str) -> bool {
    match (current.and_then(lifecycle_rank), lifecycle_rank(next)) {
        (Some(from), Some(to)) => to < from,
        _ => false,
    }
}

fn app_source(shared: &Shared, _caller: Caller) -> Source {
    Source::App(shared.hubspot.options.private_app_id)
}

/// `PATCH .../{type}/{id}` with `{"properties": {...}}`: 200 with the updated object.
async fn update(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path((object, id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let object = match object_type(&object) {
        Ok(object) => object,
        Err(refused) => return refused.into_response(),
    };
    let request = match parse_json(&body) {
        Ok(request) => request,
        Err(refused) => return refused.into_response(),
    };
    let owners = shared.funnel.shape().reps;
    let writes = match checked_writes(object, &request["properties"], owners) {
        Ok(writes) => writes,
        Err(invalid) => return invalid_response(&invalid, shared.hubspot.options.portal_id),
    };
    let source = app_source(&shared, caller);
    let now = shared.clock.now_ms();
    let updated = with_view(&shared, |view, inner| {
        let record = object.number(&id).and_then(|n| view.live(object, n))?;
        let mut names = apply_writes(inner, &record, &writes, now, source);
        names.extend(writes.iter().map(|(name, _)| name.clone()));
        Some((record.number, names))
    });
    let Some((number, names)) = updated else {
        return not_found();
    };
    let body = with_view(&shared, |view, _| {
        let record = view.record(object, number)?;
        let mut properties: Vec<String> = object
            .default_properties()
            .iter()
            .map(|name| name.to_string())
            .collect();
        properties.extend(names);
        properties.dedup();
        let selection = Selection {
            properties: Some(properties),
            ..Selection::default()
        };
        Some(render(view, &record, &selection))
    });
    body.map_or_else(not_found, |body| Json(body).into_response())
}

/// `POST .../{type}/batch/update`: invalid values fail the batch; unknown ids make it a 207.
async fn batch_update(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path(object): Path<String>,
    body: Bytes,
) -> Response {
    let object = match object_type(&object) {
        Ok(object) => object,
        Err(refused) => return refused.into_response(),
    };
    let request = match parse_json(&body) {
        Ok(request) => request,
        Err(refused) => return refused.into_response(),
    };
    let inputs = request["inputs"].as_array().cloned().unwrap_or_default();
    if inputs.len() > BATCH_MAX {
        return validation_error(&format!(
            "The maximum number of inputs supported in a batch request is {BATCH_MAX}. Please reduce the number of items and try again"
        ));
    }
    let owners = shared.funnel.shape().reps;
    let mut checked = Vec::new();
    for input in &inputs {
        let id = match &input["id"] {
            Value::String(id) => id.clone(),
            other => other.to_string(),
        };
        match checked_writes(object, &input["properties"], owners) {
            Ok(writes) => checked.push((id, writes)),
            Err(invalid) => return invalid_response(&invalid, shared.hubspot.options.portal_id),
        }
    }
    let source = app_source(&shared, caller);
    let now = shared.clock.now_ms();
    let (numbers, missing) = with_view(&shared, |view, inner| {
        let mut numbers = Vec::new();
        let mut missing = Vec::new();
        for (id, writes) in &checked {
            match object.number(id).and_then(|n| view.live(object, n)) {
                Some(record) => {
                    apply_writes(inner, &record, writes, now, source);
                    numbers.push((record.number, writes.clone()));
                }
                None => missing.push(id.clone()),
            }
        }
        (numbers, missing)
    });
    let results = with_view(&shared, |view, _| {
        numbers
            .iter()
            .filter_map(|(number, writes)| {
                let record = view.record(object, *number)?;
                let selection = Selection {
                    properties: Some(writes.iter().map(|(name, _)| name.clone()).collect()),
                    ..Selection::default()
                };
                Some(render(view, &record, &selection))
            })
            .collect()
    });
    batch_response(results, missing, object, now)
}

/// `DELETE .../{type}/{id}`: archives; 204 whether or not there was anything to archive.
async fn archive(
    State(shared): State<Arc<Shared>>,
    Path((object, id)): Path<(String, String)>,
) -> Response {
    let object = match object_type(&object) {
        Ok(object) => object,
        Err(refused) => return refused.into_response(),
    };
    let now = shared.clock.now_ms();
    with_view(&shared, |view, inner| {
        if let Some(record) = object.number(&id).and_then(|n| view.live(object, n)) {
            inner
                .overlays
                .entry((object, record.number))
                .or_default()
                .archived_at = Some(now);
        }
    });
    StatusCode::NO_CONTENT.into_response()
}
