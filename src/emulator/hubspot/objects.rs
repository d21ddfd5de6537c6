//! CRM objects under `/crm/v3/objects/{type}` and `/crm/objects/2026-03/{type}`: list, read,
//! batch read, update, batch update and archive.

use std::collections::HashSet;
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
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::auth::Caller;
use super::records::{source_fields, HsRecord, PortalView, Source, Version, Write};
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

impl Selection {
    /// What a response shows of each `object` record: the selection's known properties, each
    /// once in the order first asked (as a JSON map keeps them), worked out once per request
    /// rather than once per record.
    pub(crate) fn shown(&self, object: ObjectType) -> Shown<'_> {
        let properties = match &self.properties {
            Some(names) => known_once(object, names.iter().map(String::as_str)),
            None => known_once(object, object.default_properties().iter().copied()),
        };
        let mut associations = self.associations.clone();
        let mut seen = HashSet::new();
        // `contacts`, `contact` and `0-1` name one type, listed once as a map would.
        associations.retain(|target| seen.insert(*target));
        Shown {
            properties,
            history_asked: !self.with_history.is_empty(),
            with_history: known_once(object, self.with_history.iter().map(String::as_str)),
            associations,
        }
    }
}

/// The names `object` has a property of, each once, in the order first met.
fn known_once<'s>(object: ObjectType, names: impl Iterator<Item = &'s str>) -> Vec<&'s str> {
    let mut seen = HashSet::new();
    names
        .filter(|name| object.property(name).is_some() && seen.insert(*name))
        .collect()
}

/// A [`Selection`] resolved for one object type (see [`Selection::shown`]).
pub(crate) struct Shown<'s> {
    properties: Vec<&'s str>,
    /// History was asked for, of known names or not: HubSpot then answers
    /// `propertiesWithHistory`, empty when it knows none of them.
    history_asked: bool,
    with_history: Vec<&'s str>,
    associations: Vec<ObjectType>,
}

/// A record as HubSpot's `SimplePublicObject(WithAssociations)`, as JSON text: pages of
/// records are written straight into the response, never built as `Value`s, which cost more
/// than building the records themselves.
pub(crate) fn render(view: &PortalView, record: &HsRecord, shown: &Shown) -> Box<RawValue> {
    let json = RecordJson {
        view,
        record,
        shown,
    };
    serde_json::value::to_raw_value(&json).expect("every map key of a record is a string")
}

struct RecordJson<'a> {
    view: &'a PortalView<'a>,
    record: &'a HsRecord,
    shown: &'a Shown<'a>,
}

impl Serialize for RecordJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let (record, shown) = (self.record, self.shown);
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("id", &record.id())?;
        map.serialize_entry(
            "properties",
            &PropertiesJson {
                record,
                names: &shown.properties,
            },
        )?;
        if shown.history_asked {
            map.serialize_entry(
                "propertiesWithHistory",
                &HistoryJson {
                    record,
                    names: &shown.with_history,
                },
            )?;
        }
        map.serialize_entry("createdAt", &iso(record.created_at))?;
        map.serialize_entry("updatedAt", &iso(record.modified_at))?;
        map.serialize_entry("archived", &record.archived_at.is_some())?;
        if let Some(at) = record.archived_at {
            map.serialize_entry("archivedAt", &iso(at))?;
        }
        let associated: Vec<(ObjectType, Vec<u64>)> = shown
            .associations
            .iter()
            .map(|&target| {
                let numbers = self.view.associated(record.object, record.number, target);
                (target, numbers)
            })
            .filter(|(_, numbers)| !numbers.is_empty())
            .collect();
        if !associated.is_empty() {
            map.serialize_entry(
                "associations",
                &AssociationsJson {
                    from: record.object,
                    associated: &associated,
                },
            )?;
        }
        map.end()
    }
}

/// Each shown property's current value (`null` when it never had one).
struct PropertiesJson<'a> {
    record: &'a HsRecord,
    names: &'a [&'a str],
}

impl Serialize for PropertiesJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.names.len()))?;
        for &name in self.names {
            map.serialize_entry(name, &self.record.current(name))?;
        }
        map.end()
    }
}

/// Every version of each named property, newest first.
struct HistoryJson<'a> {
    record: &'a HsRecord,
    names: &'a [&'a str],
}

impl Serialize for HistoryJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.names.len()))?;
        for &name in self.names {
            let versions = self.record.props.get(name).map_or(&[][..], Vec::as_slice);
            map.serialize_entry(name, &VersionsJson(versions))?;
        }
        map.end()
    }
}

struct VersionsJson<'a>(&'a [Version]);

impl Serialize for VersionsJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
        for version in self.0.iter().rev() {
            seq.serialize_element(&VersionJson(version))?;
        }
        seq.end()
    }
}

struct VersionJson<'a>(&'a Version);

impl Serialize for VersionJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let version = self.0;
        let (source_type, source_id, user) = source_fields(version.source);
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("value", &version.value)?;
        map.serialize_entry("timestamp", &iso(version.at))?;
        map.serialize_entry("sourceType", source_type)?;
        if let Some(source_id) = source_id {
            map.serialize_entry("sourceId", &source_id)?;
        }
        if let Some(user) = user {
            map.serialize_entry("updatedByUserId", &user)?;
        }
        map.end()
    }
}

/// `{"contacts": {"results": [{"id", "type": "deal_to_contact"}]}}` per associated type.
struct AssociationsJson<'a> {
    from: ObjectType,
    associated: &'a [(ObjectType, Vec<u64>)],
}

impl Serialize for AssociationsJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.associated.len()))?;
        for (target, numbers) in self.associated {
            let kind = format!("{}_to_{}", self.from.singular(), target.singular());
            let results: Vec<Value> = numbers
                .iter()
                .map(|&number| json!({ "id": target.id(number), "type": kind }))
                .collect();
            map.serialize_entry(target.plural(), &json!({ "results": results }))?;
        }
        map.end()
    }
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
    let shown = selection.shown(object);
    let (results, next) = with_view(&shared, |view, _| {
        let bound = view.bound(object);
        let listed = |number: u64| {
            view.record(object, number)
                .filter(|record| record.archived_at.is_some() == archived)
        };
        let mut results = Vec::new();
        let mut number = start;
        // One thread: built over the cores, a page of 100 measured slower than this (when
        // records were rendered as `Value`s), unlike search and Salesforce pages.
        while number < bound && results.len() < limit {
            if let Some(record) = listed(number) {
                results.push(render(view, &record, &shown));
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
    let paging = next.map(|next| {
        let after = encode_after(next);
        json!({ "next": { "after": after, "link": next_link(&shared, &uri, &after) } })
    });
    Json(ListPage { results, paging }).into_response()
}

/// A page of a listing.
#[derive(Serialize)]
struct ListPage {
    results: Vec<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    paging: Option<Value>,
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
        Some(render(view, &record, &selection.shown(object)))
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
    results: Vec<Box<RawValue>>,
    missing: Vec<String>,
    object: ObjectType,
    now: Millis,
) -> Response {
    let mut body = BatchAnswer {
        status: "COMPLETE",
        results,
        started_at: iso(now),
        completed_at: iso(now),
        num_errors: None,
        errors: None,
    };
    if missing.is_empty() {
        return Json(body).into_response();
    }
    body.num_errors = Some(1);
    body.errors = Some(json!([{
        "status": "error",
        "category": "OBJECT_NOT_FOUND",
        "message": format!(
            "Could not get some {} objects, they may be deleted or not exist. Check that ids are valid.",
            object.singular().to_uppercase()
        ),
        "context": { "ids": missing },
    }]));
    (StatusCode::MULTI_STATUS, Json(body)).into_response()
}

/// A batch's answer, with its errors when some inputs were not found.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BatchAnswer {
    status: &'static str,
    results: Vec<Box<RawValue>>,
    started_at: String,
    completed_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    num_errors: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    errors: Option<Value>,
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
    let shown = selection.shown(object);
    let (results, missing) = with_view(&shared, |view, _| {
        let mut results = Vec::new();
        let mut missing = Vec::new();
        for id in &ids {
            let record = object
                .number(id)
                .and_then(|number| view.record(object, number))
                .filter(|record| record.archived_at.is_some() == archived);
            match record {
                Some(record) => results.push(render(view, &record, &shown)),
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
        Some(render(view, &record, &selection.shown(object)))
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
                Some(render(view, &record, &selection.shown(object)))
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
