//! `query` and `queryAll`: SOQL over the generated org, paged through query locators.
//!
//! A query evaluates once, at the simulated instant it arrives, and keeps only the numbers of
//! the records it matched. Later pages rebuild those records as of that same instant, so a
//! cursor is a snapshot, as on a real org. Locators behave as Salesforce's do: they belong to
//! the session that opened them, a user holds at most ten (opening an eleventh releases the
//! oldest), and fifteen idle minutes end them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::{Path, Query as QueryParams, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{json, Map, Value};

use super::auth::SessionToken;
use super::ids::sf_id;
use super::records::{CreatedWindow, OrgView};
use super::schema::{FieldDef, JsonValue, SfRecord, SfValue};
use super::soql::{self, FieldPath, Resolver, Selection};
use super::{error, served_version};
use crate::emulator::parallel::map_runs;
use crate::emulator::Shared;
use crate::record::Millis;

/// Records per page unless `Sforce-Query-Options: batchSize=N` asks for fewer.
const DEFAULT_BATCH: usize = 2_000;
/// The smallest batch Salesforce honours.
const MIN_BATCH: usize = 200;
/// Open locators a user may hold.
const MAX_OPEN_LOCATORS: usize = 10;
/// Idle time after which a locator is gone.
const LOCATOR_IDLE_MS: Millis = 15 * 60_000;
/// Key prefix of query locators.
const LOCATOR_PREFIX: &str = "01g";
/// History objects, whose wide queries can run too long.
const HISTORY_OBJECTS: &[&str] = &[
    "OpportunityHistory",
    "OpportunityFieldHistory",
    "LeadHistory",
];

/// The open cursors of the org.
#[derive(Default)]
pub(crate) struct Cursors {
    open: HashMap<String, Cursor>,
    issued: u64,
}

struct Cursor {
    session: String,
    opened_seq: u64,
    last_used: Millis,
    /// The snapshot its pages are read from: the instant and the last write it saw.
    as_of: Millis,
    seq: u64,
    query: Arc<soql::Query>,
    numbers: Arc<Vec<u64>>,
    batch: usize,
}

/// Locks the cursor table, keeping it usable after a panicked handler.
fn lock(cursors: &Mutex<Cursors>) -> MutexGuard<'_, Cursors> {
    cursors
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `?q=` of a first query call.
#[derive(Deserialize)]
pub(crate) struct QueryText {
    q: Option<String>,
}

/// Resolves lookups through the org as it was when the query ran.
pub(crate) struct ViewResolver<'a>(pub &'a OrgView<'a>);

impl Resolver for ViewResolver<'_> {
    fn parent(&self, reference: &FieldDef, id: &str) -> Option<SfRecord> {
        if reference.reference_to.len() > 1 {
            self.0.name_record(id)
        } else {
            self.0.by_id(id, reference.reference_to)
        }
    }
}

/// `GET …/query?q=`: rows that are not deleted.
pub(crate) async fn query(
    State(shared): State<Arc<Shared>>,
    Extension(session): Extension<SessionToken>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    QueryParams(params): QueryParams<QueryText>,
) -> Response {
    run_query(&shared, &session, uri.path(), &headers, params.q, false)
}

/// `GET …/queryAll?q=`: deleted and merged rows too, while they are in the recycle bin.
pub(crate) async fn query_all(
    State(shared): State<Arc<Shared>>,
    Extension(session): Extension<SessionToken>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    QueryParams(params): QueryParams<QueryText>,
) -> Response {
    run_query(&shared, &session, uri.path(), &headers, params.q, true)
}

/// `GET …/query/{locator}-{offset}`: the next page of an open cursor.
pub(crate) async fn query_more(
    State(shared): State<Arc<Shared>>,
    Extension(session): Extension<SessionToken>,
    uri: axum::http::Uri,
    Path((_, locator)): Path<(String, String)>,
) -> Response {
    let version = served_version(uri.path()).unwrap_or("v62.0");
    let now = shared.clock.now_ms();
    let Some((id, offset)) = split_locator(&locator) else {
        return invalid_locator();
    };
    let cursor = {
        let mut cursors = lock(&shared.salesforce.cursors);
        let Some(cursor) = cursors.open.get_mut(id) else {
            return invalid_locator();
        };
        if now - cursor.last_used > LOCATOR_IDLE_MS {
            cursors.open.remove(id);
            return invalid_locator();
        }
        if cursor.session != session.0 {
            // The locator belongs to the session that opened it; a refreshed token cannot
            // continue it, and Salesforce says so as a session error.
            return error(
                StatusCode::UNAUTHORIZED,
                "INVALID_SESSION_ID",
                "Session expired or invalid",
            );
        }
        if offset > cursor.numbers.len() {
            return invalid_locator();
        }
        cursor.last_used = now;
        (
            cursor.query.clone(),
            cursor.numbers.clone(),
            cursor.as_of,
            cursor.seq,
            cursor.batch,
        )
    };
    let (query, numbers, as_of, seq, batch) = cursor;
    let overlay = shared.salesforce.overlay();
    let view = OrgView::snapshot(&shared.funnel, as_of, &overlay, seq);
    let end = (offset + batch).min(numbers.len());
    let next = (end < numbers.len()).then(|| format!("{id}-{end}"));
    if next.is_none() {
        lock(&shared.salesforce.cursors).open.remove(id);
    }
    page(
        &view,
        &query,
        version,
        numbers.len(),
        &numbers[offset..end],
        next,
    )
}

fn invalid_locator() -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "INVALID_QUERY_LOCATOR",
        "invalid query locator",
    )
}

/// `01g5e0000000001AAA-2000` → (`01g5e0000000001AAA`, 2000).
fn split_locator(locator: &str) -> Option<(&str, usize)> {
    let (id, offset) = locator.rsplit_once('-')?;
    Some((id, offset.parse().ok()?))
}

fn run_query(
    shared: &Shared,
    session: &SessionToken,
    path: &str,
    headers: &HeaderMap,
    text: Option<String>,
    include_deleted: bool,
) -> Response {
    let version = served_version(path).unwrap_or("v62.0");
    let Some(text) = text.filter(|text| !text.trim().is_empty()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "MALFORMED_QUERY",
            "A query string has to be specified",
        );
    };
    let now = shared.clock.now_ms();
    let parsed = match soql::parse(&text, now) {
        Ok(parsed) => parsed,
        Err(err) => return error(StatusCode::BAD_REQUEST, err.code, &err.message),
    };
    let overlay = shared.salesforce.overlay();
    let view = OrgView::over(&shared.funnel, now, &overlay);
    let matched = match evaluate(shared, &view, &parsed, include_deleted) {
        Ok(matched) => matched,
        Err(response) => return *response,
    };
    if matches!(parsed.select, Selection::Count) {
        return Json(json!({ "totalSize": matched.len(), "done": true, "records": [] }))
            .into_response();
    }
    let batch = batch_size(headers);
    let total = matched.len();
    let matched = Arc::new(matched);
    let next = (total > batch).then(|| {
        let snapshot = (now, overlay.seq());
        let id = open_cursor(
            shared,
            session,
            snapshot,
            parsed.clone(),
            matched.clone(),
            batch,
        );
        format!("{id}-{batch}")
    });
    page(
        &view,
        &parsed,
        version,
        total,
        &matched[..batch.min(total)],
        next,
    )
}

/// Numbers of the records matching the query, ordered and cut by ORDER BY, OFFSET and LIMIT.
/// Only numbers (and sort keys while sorting) are kept, never whole records: a query over a
/// million rows must not hold a million records.
pub(crate) fn evaluate(
    shared: &Shared,
    view: &OrgView<'_>,
    parsed: &soql::Query,
    include_deleted: bool,
) -> Result<Vec<u64>, Box<Response>> {
    let resolver = ViewResolver(view);
    let is_history = HISTORY_OBJECTS.contains(&parsed.object.name);
    let timeout_rows = shared.salesforce.options.query_timeout_rows;
    let ordered = !parsed.order.is_empty();
    // Without ORDER BY the first OFFSET + LIMIT matches in id order are the answer.
    let enough = match (ordered, parsed.limit) {
        (false, Some(limit)) => limit.saturating_add(parsed.offset.unwrap_or(0)),
        _ => usize::MAX,
    };
    if parsed.filter.is_none() && !ordered && !is_history {
        return Ok(present_numbers(view, parsed, include_deleted, enough));
    }
    let mut matched = if is_history || enough != usize::MAX {
        let mut matched: Vec<(u64, Vec<SfValue>)> = Vec::new();
        let created = CreatedWindow {
            from: parsed.created_from(),
            by: parsed.created_by(),
        };
        for (number, row) in view.scan(parsed.object, created) {
            if matched.len() >= enough {
                break;
            }
            let Some(keys) = row_match(parsed, &resolver, &row, include_deleted) else {
                continue;
            };
            matched.push((number, keys));
            if is_history && matched.len() as u64 > timeout_rows {
                return Err(Box::new(error(
                    StatusCode::BAD_REQUEST,
                    "QUERY_TIMEOUT",
                    "Your query request was running for too long.",
                )));
            }
        }
        matched
    } else {
        // Every record is looked at: split them over the cores, in id order.
        let numbers: Vec<u64> = view.numbers(parsed.object).collect();
        let runs = map_runs(&numbers, |run| {
            run.iter()
                .filter_map(|&number| {
                    let row = view.record(parsed.object, number)?;
                    let keys = row_match(parsed, &resolver, &row, include_deleted)?;
                    Some((number, keys))
                })
                .collect::<Vec<_>>()
        });
        runs.into_iter().flatten().collect()
    };
    if ordered {
        // A stable sort keeps id order among equal keys, as the scan produced them.
        matched.sort_by(|(_, a), (_, b)| parsed.compare_keys(a, b));
    }
    let offset = parsed.offset.unwrap_or(0).min(matched.len());
    let limit = parsed.limit.unwrap_or(usize::MAX);
    Ok(matched
        .into_iter()
        .skip(offset)
        .take(limit)
        .map(|(number, _)| number)
        .collect())
}

/// The sort keys of a row the query matches (empty without ORDER BY), `None` when it does
/// not match or is deleted and deleted rows are not asked for.
fn row_match(
    parsed: &soql::Query,
    resolver: &ViewResolver<'_>,
    row: &SfRecord,
    include_deleted: bool,
) -> Option<Vec<SfValue>> {
    let deleted = matches!(row.get("IsDeleted"), SfValue::Bool(true));
    if (deleted && !include_deleted) || !parsed.matches(row, resolver) {
        return None;
    }
    Some(if parsed.order.is_empty() {
        Vec::new()
    } else {
        parsed.sort_keys(row, resolver)
    })
}

/// [`evaluate`] for a query without WHERE or ORDER BY on a non-history object: every record
/// that exists matches, so records are only asked whether they exist and are deleted.
fn present_numbers(
    view: &OrgView<'_>,
    parsed: &soql::Query,
    include_deleted: bool,
    enough: usize,
) -> Vec<u64> {
    let present = |number: u64| {
        let deleted = view.presence(parsed.object, number)?;
        (include_deleted || !deleted).then_some(number)
    };
    let offset = parsed.offset.unwrap_or(0);
    let limit = parsed.limit.unwrap_or(usize::MAX);
    if enough != usize::MAX {
        // A LIMIT stops the scan early, which runs over the cores would not.
        return view
            .numbers(parsed.object)
            .filter_map(present)
            .take(enough)
            .skip(offset)
            .take(limit)
            .collect();
    }
    let numbers: Vec<u64> = view.numbers(parsed.object).collect();
    let runs = map_runs(&numbers, |run| {
        run.iter()
            .copied()
            .filter_map(present)
            .collect::<Vec<u64>>()
    });
    runs.into_iter().flatten().skip(offset).collect()
}

/// The page size a client asked for, within what Salesforce honours.
fn batch_size(headers: &HeaderMap) -> usize {
    headers
        .get("sforce-query-options")
        .and_then(|value| value.to_str().ok())
        .and_then(|options| {
            options.split(',').find_map(|option| {
                let (key, value) = option.split_once('=')?;
                key.trim()
                    .eq_ignore_ascii_case("batchSize")
                    .then(|| value.trim().parse::<usize>().ok())?
            })
        })
        .map_or(DEFAULT_BATCH, |size| size.clamp(MIN_BATCH, DEFAULT_BATCH))
}

/// Registers a cursor, releasing the oldest when the user already holds ten.
fn open_cursor(
    shared: &Shared,
    session: &SessionToken,
    (now, write_seq): (Millis, u64),
    query: soql::Query,
    numbers: Arc<Vec<u64>>,
    batch: usize,
) -> String {
    let mut cursors = lock(&shared.salesforce.cursors);
    cursors
        .open
        .retain(|_, cursor| now - cursor.last_used <= LOCATOR_IDLE_MS);
    while cursors.open.len() >= MAX_OPEN_LOCATORS {
        let oldest = cursors
            .open
            .iter()
            .min_by_key(|(_, cursor)| cursor.opened_seq)
            .map(|(id, _)| id.clone());
        if let Some(oldest) = oldest {
            cursors.open.remove(&oldest);
        }
    }
    cursors.issued += 1;
    let issued = cursors.issued;
    let id = sf_id(LOCATOR_PREFIX, issued);
    cursors.open.insert(
        id.clone(),
        Cursor {
            session: session.0.clone(),
            opened_seq: issued,
            last_used: now,
            as_of: now,
            seq: write_seq,
            query: Arc::new(query),
            numbers,
            batch,
        },
    );
    id
}

/// One page of a query result as Salesforce writes it: the records behind `numbers` as of the
/// view's instant, built and serialized in parallel runs and joined in order.
fn page(
    view: &OrgView<'_>,
    query: &soql::Query,
    version: &str,
    total: usize,
    numbers: &[u64],
    next: Option<String>,
) -> Response {
    let Selection::Fields(fields) = &query.select else {
        return Json(json!({ "totalSize": total, "done": true, "records": [] })).into_response();
    };
    let own = own_fields(fields);
    let resolver = ViewResolver(view);
    let runs = map_runs(numbers, |run| {
        let mut out = Vec::new();
        for &number in run {
            let Some(record) = view.record(query.object, number) else {
                continue;
            };
            if !out.is_empty() {
                out.push(b',');
            }
            let written = match &own {
                Some(own) => serde_json::to_writer(
                    &mut out,
                    &OwnRowJson {
                        record: &record,
                        fields: own,
                        version,
                    },
                ),
                None => {
                    serde_json::to_writer(&mut out, &render(&record, fields, &resolver, version))
                }
            };
            // Writing into a Vec fails only on a non-string map key, which these have none of.
            debug_assert!(written.is_ok());
        }
        out
    });
    let next = next.map(|next| format!("/services/data/{version}/query/{next}"));
    let body = page_json(total, next.as_deref(), &runs);
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// `{"totalSize", "done", "nextRecordsUrl"?, "records"}` around records already serialized in
/// runs (each a comma-separated list, possibly empty), byte for byte what serializing the
/// whole page at once writes.
fn page_json(total: usize, next: Option<&str>, runs: &[Vec<u8>]) -> Vec<u8> {
    let records: usize = runs.iter().map(Vec::len).sum();
    let mut out = Vec::with_capacity(records + runs.len() + 160);
    out.extend_from_slice(b"{\"totalSize\":");
    out.extend_from_slice(total.to_string().as_bytes());
    out.extend_from_slice(b",\"done\":");
    out.extend_from_slice(if next.is_none() { b"true" } else { b"false" });
    if let Some(next) = next {
        out.extend_from_slice(b",\"nextRecordsUrl\":");
        // A string always serializes.
        let _ = serde_json::to_writer(&mut out, next);
    }
    out.extend_from_slice(b",\"records\":[");
    let mut first = true;
    for run in runs.iter().filter(|run| !run.is_empty()) {
        if !first {
            out.push(b',');
        }
        first = false;
        out.extend_from_slice(run);
    }
    out.extend_from_slice(b"]}");
    out
}

/// The selected fields when none is a parent's, each once, in the order first written;
/// `None` when some path walks a relationship and the record needs [`render`]'s nesting.
fn own_fields(fields: &[FieldPath]) -> Option<Vec<&FieldPath>> {
    let mut own: Vec<&FieldPath> = Vec::with_capacity(fields.len());
    for path in fields {
        if !path.steps.is_empty() {
            return None;
        }
        // A field selected twice keeps its first place, as a JSON map insert does.
        if !own.iter().any(|seen| seen.field.name == path.field.name) {
            own.push(path);
        }
    }
    Some(own)
}

/// A record whose selected fields are all its own: attributes, then each field.
struct OwnRowJson<'a> {
    record: &'a SfRecord,
    fields: &'a [&'a FieldPath],
    version: &'a str,
}

impl Serialize for OwnRowJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.fields.len() + 1))?;
        map.serialize_entry(
            "attributes",
            &AttributesJson {
                record: self.record,
                version: self.version,
            },
        )?;
        for path in self.fields {
            let value = JsonValue {
                value: &self.record.values[path.index],
                kind: path.field.kind,
            };
            map.serialize_entry(path.field.name, &value)?;
        }
        map.end()
    }
}

/// [`attributes`] written straight into a serializer.
struct AttributesJson<'a> {
    record: &'a SfRecord,
    version: &'a str,
}

impl Serialize for AttributesJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let (shown, actual) = attribute_types(self.record);
        let mut map = serializer.serialize_map(Some(2))?;
        map.serialize_entry("type", shown)?;
        map.serialize_entry("url", &record_url(self.version, actual, self.record.id()))?;
        map.end()
    }
}

/// The type a record's attributes show and the one its URL names: polymorphic parents show
/// `Name` but link to the user or queue behind it.
fn attribute_types(record: &SfRecord) -> (&'static str, &str) {
    if record.object.name != "Name" {
        return (record.object.name, record.object.name);
    }
    let actual = match record.get("Type") {
        SfValue::Text(kind) if kind == "Queue" => "Group",
        SfValue::Text(kind) => kind.as_str(),
        _ => "User",
    };
    ("Name", actual)
}

/// `{"attributes":{"type":…,"url":…}}` of a record (polymorphic parents say `Name`).
fn attributes(record: &SfRecord, version: &str) -> Value {
    let (shown, actual) = attribute_types(record);
    json!({
        "type": shown,
        "url": record_url(version, actual, record.id()),
    })
}

/// `/services/data/{version}/sobjects/{object}/{id}`, spelled without the formatting
/// machinery: every record of a page carries one.
fn record_url(version: &str, object: &str, id: &str) -> String {
    const PREFIX: &str = "/services/data/";
    const SOBJECTS: &str = "/sobjects/";
    let mut url = String::with_capacity(
        PREFIX.len() + version.len() + SOBJECTS.len() + object.len() + 1 + id.len(),
    );
    url.push_str(PREFIX);
    url.push_str(version);
    url.push_str(SOBJECTS);
    url.push_str(object);
    url.push('/');
    url.push_str(id);
    url
}

/// A record with the selected fields, parent fields nested under their relationship names.
fn render(
    record: &SfRecord,
    fields: &[FieldPath],
    resolver: &dyn Resolver,
    version: &str,
) -> Value {
    let mut out = Map::new();
    out.insert("attributes".into(), attributes(record, version));
    for path in fields {
        if path.steps.is_empty() {
            out.insert(
                path.field.name.into(),
                record.values[path.index].to_json(path.field.kind),
            );
        } else {
            insert_parent_field(&mut out, record, path, 0, resolver, version);
        }
    }
    Value::Object(out)
}

/// Walks one relationship step of `path` from `record`, creating the nested object (or
/// `null` for an empty lookup) the first time the relationship appears.
fn insert_parent_field(
    out: &mut Map<String, Value>,
    record: &SfRecord,
    path: &FieldPath,
    depth: usize,
    resolver: &dyn Resolver,
    version: &str,
) {
    let relationship = path.relationships[depth];
    let reference = &record.object.fields[path.steps[depth]];
    let parent = match &record.values[path.steps[depth]] {
        SfValue::Text(id) => resolver.parent(reference, id),
        _ => None,
    };
    let Some(parent) = parent else {
        out.entry(relationship).or_insert(Value::Null);
        return;
    };
    let slot = out
        .entry(relationship)
        .or_insert_with(|| json!({ "attributes": attributes(&parent, version) }));
    let Value::Object(nested) = slot else {
        return;
    };
    if depth + 1 == path.steps.len() {
        nested.insert(
            path.field.name.into(),
            parent.values[path.index].to_json(path.field.kind),
        );
    } else {
        insert_parent_field(nested, &parent, path, depth + 1, resolver, version);
    }
}
