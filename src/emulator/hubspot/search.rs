//! `POST .../{type}/search`: filter groups, sorts and offset paging over an index that lags.
//!
//! The index holds live records only (never archived ones) and misses those modified within
//! the portal's index lag, as HubSpot's eventually consistent search index does. Paging is an
//! offset; one query can reach 10,000 results and no further.

use std::cmp::Ordering;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::objects::{object_type, parse_instant, render, with_view, Selection, PREFIXES};
use super::records::{HsRecord, PortalView};
use super::schema::ObjectType;
use super::validation_error;
use crate::emulator::parallel::map_runs;
use crate::emulator::Shared;
use crate::record::Millis;

const DEFAULT_LIMIT: usize = 10;
const MAX_LIMIT: usize = 200;
/// Results one query can page through.
const MAX_RESULTS: usize = 10_000;
const MAX_GROUPS: usize = 5;
const MAX_FILTERS_PER_GROUP: usize = 6;
const MAX_FILTERS: usize = 18;
const MAX_QUERY_CHARS: usize = 3_000;
/// Searches whose ranked hits are kept: a client pages through one search at a time, and a
/// few more let interleaved searches keep theirs.
const CACHED_SEARCHES: usize = 4;

pub(crate) fn routes() -> Router<Arc<Shared>> {
    let mut router = Router::new();
    for prefix in PREFIXES {
        router = router.route(&format!("{prefix}/{{object}}/search"), post(search));
    }
    router
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operator {
    Eq,
    Neq,
    Lt,
    Lte,
    Gt,
    Gte,
    Between,
    In,
    NotIn,
    HasProperty,
    NotHasProperty,
    ContainsToken,
    NotContainsToken,
}

impl Operator {
    fn parse(name: &str) -> Option<Operator> {
        Some(match name {
            "EQ" => Operator::Eq,
            "NEQ" => Operator::Neq,
            "LT" => Operator::Lt,
            "LTE" => Operator::Lte,
            "GT" => Operator::Gt,
            "GTE" => Operator::Gte,
            "BETWEEN" => Operator::Between,
            "IN" => Operator::In,
            "NOT_IN" => Operator::NotIn,
            "HAS_PROPERTY" => Operator::HasProperty,
            "NOT_HAS_PROPERTY" => Operator::NotHasProperty,
            "CONTAINS_TOKEN" => Operator::ContainsToken,
            "NOT_CONTAINS_TOKEN" => Operator::NotContainsToken,
            _ => return None,
        })
    }
}

/// One checked filter.
#[derive(Debug, Clone, PartialEq)]
struct Filter {
    property: String,
    operator: Operator,
    value: Option<String>,
    high: Option<String>,
    values: Vec<String>,
    numeric: bool,
}

/// One checked search request.
struct SearchRequest {
    criteria: Criteria,
    selection: Selection,
    limit: usize,
    after: usize,
}

fn text_of(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

fn parse_filter(object: ObjectType, raw: &Value) -> Result<Filter, String> {
    let property = raw["propertyName"]
        .as_str()
        .ok_or("Each filter needs a propertyName")?
        .to_string();
    let name = raw["operator"].as_str().unwrap_or("EQ");
    let operator = Operator::parse(name).ok_or_else(|| format!("Unknown operator: {name}"))?;
    let numeric = object
        .property(&property)
        .is_some_and(|def| def.kind.is_numeric());
    let values: Vec<String> = raw["values"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(text_of)
        .collect();
    let filter = Filter {
        property,
        operator,
        value: text_of(&raw["value"]),
        high: text_of(&raw["highValue"]),
        values,
        numeric,
    };
    let needs_value = !matches!(
        operator,
        Operator::HasProperty | Operator::NotHasProperty | Operator::In | Operator::NotIn
    );
    if needs_value && filter.value.is_none() {
        return Err(format!("Filter on {} needs a value", filter.property));
    }
    if operator == Operator::Between && filter.high.is_none() {
        return Err(format!("BETWEEN on {} needs a highValue", filter.property));
    }
    Ok(filter)
}

fn parse_request(object: ObjectType, body: &Value) -> Result<SearchRequest, String> {
    let raw_groups = body["filterGroups"].as_array().cloned().unwrap_or_default();
    if raw_groups.len() > MAX_GROUPS {
        return Err(format!(
            "Too many filter groups: {} (max {MAX_GROUPS})",
            raw_groups.len()
        ));
    }
    let mut groups = Vec::new();
    let mut total = 0;
    for group in &raw_groups {
        let filters = group["filters"].as_array().cloned().unwrap_or_default();
        if filters.len() > MAX_FILTERS_PER_GROUP {
            return Err(format!(
                "Too many filters in a group: {} (max {MAX_FILTERS_PER_GROUP})",
                filters.len()
            ));
        }
        total += filters.len();
        groups.push(
            filters
                .iter()
                .map(|filter| parse_filter(object, filter))
                .collect::<Result<Vec<_>, _>>()?,
        );
    }
    if total > MAX_FILTERS {
        return Err(format!("Too many filters: {total} (max {MAX_FILTERS})"));
    }
    let sorts = body["sorts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|sort| match sort {
            Value::String(name) => Some(match name.strip_prefix('-') {
                Some(name) => (name.to_string(), false),
                None => (name.clone(), true),
            }),
            Value::Object(_) => Some((
                sort["propertyName"].as_str()?.to_string(),
                sort["direction"].as_str() != Some("DESCENDING"),
            )),
            _ => None,
        })
        .collect();
    let query = body["query"].as_str().map(str::to_string);
    if query.as_ref().is_some_and(|q| q.len() > MAX_QUERY_CHARS) {
        return Err(format!(
            "query must be at most {MAX_QUERY_CHARS} characters"
        ));
    }
    let limit = match &body["limit"] {
        Value::Null => DEFAULT_LIMIT,
        value => text_of(value)
            .and_then(|text| text.parse::<usize>().ok())
            .filter(|limit| (1..=MAX_LIMIT).contains(limit))
            .ok_or_else(|| format!("limit must be between 1 and {MAX_LIMIT}"))?,
    };
    let after = match &body["after"] {
        Value::Null => 0,
        value => text_of(value)
            .and_then(|text| text.parse::<usize>().ok())
            .ok_or("after must be a numeric offset")?,
    };
    let properties = body["properties"].as_array().map(|names| {
        names
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect()
    });
    Ok(SearchRequest {
        criteria: Criteria {
            groups,
            sorts,
            query,
        },
        selection: Selection {
            properties,
            ..Selection::default()
        },
        limit,
        after,
    })
}

/// Compares a record value with a filter value: as numbers (instants as epoch ms) for
/// numeric properties, case-insensitively as text otherwise.
fn compare(filter: &Filter, actual: &str, wanted: &str) -> Option<Ordering> {
    if filter.numeric {
        let number = |text: &str| {
            text.parse::<f64>()
                .ok()
                .or_else(|| parse_instant(text).map(|ms| ms as f64))
        };
        return number(actual)?.partial_cmp(&number(wanted)?);
    }
    Some(actual.to_lowercase().cmp(&wanted.to_lowercase()))
}

fn tokens(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric() && c != '@' && c != '.' && c != '-')
        .filter(|token| !token.is_empty())
        .map(str::to_lowercase)
}

/// `CONTAINS_TOKEN` matches whole words, or any text with a `*` wildcard.
fn contains_token(actual: &str, wanted: &str) -> bool {
    let wanted = wanted.to_lowercase();
    if wanted.contains('*') {
        let parts: Vec<&str> = wanted.split('*').filter(|p| !p.is_empty()).collect();
        let actual = actual.to_lowercase();
        let mut from = 0;
        return parts.iter().all(|part| match actual[from..].find(part) {
            Some(found) => {
                from += found + part.len();
                true
            }
            None => false,
        });
    }
    actual.to_lowercase() == wanted || tokens(actual).any(|token| token == wanted)
}

fn matches(filter: &Filter, record: &HsRecord) -> bool {
    let actual = record.current(&filter.property).filter(|v| !v.is_empty());
    let value = filter.value.as_deref().unwrap_or("");
    let ordered = |accept: fn(Ordering) -> bool| {
        actual
            .and_then(|actual| compare(filter, actual, value))
            .is_some_and(accept)
    };
    match filter.operator {
        Operator::HasProperty => actual.is_some(),
        Operator::NotHasProperty => actual.is_none(),
        Operator::Eq => ordered(|o| o == Ordering::Equal),
        Operator::Neq => !ordered(|o| o == Ordering::Equal),
        Operator::Lt => ordered(|o| o == Ordering::Less),
        Operator::Lte => ordered(|o| o != Ordering::Greater),
        Operator::Gt => ordered(|o| o == Ordering::Greater),
        Operator::Gte => ordered(|o| o != Ordering::Less),
        Operator::Between => {
            let high = filter.high.as_deref().unwrap_or("");
            actual.is_some_and(|actual| {
                compare(filter, actual, value).is_some_and(|o| o != Ordering::Less)
                    && compare(filter, actual, high).is_some_and(|o| o != Ordering::Greater)
            })
        }
        Operator::In => actual.is_some_and(|actual| {
            filter
                .values
                .iter()
                .any(|wanted| compare(filter, actual, wanted) == Some(Ordering::Equal))
        }),
        Operator::NotIn => !actual.is_some_and(|actual| {
            filter
                .values
                .iter()
                .any(|wanted| compare(filter, actual, wanted) == Some(Ordering::Equal))
        }),
        Operator::ContainsToken => actual.is_some_and(|actual| contains_token(actual, value)),
        Operator::NotContainsToken => !actual.is_some_and(|actual| contains_token(actual, value)),
    }
}

/// Free-text `query` looks in the properties HubSpot searches by default.
fn matches_query(record: &HsRecord, query: &str) -> bool {
    let searched: &[&str] = match record.object {
        ObjectType::Contacts => &["firstname", "lastname", "email", "company", "phone"],
        ObjectType::Companies => &["name", "domain"],
        ObjectType::Deals => &["dealname"],
    };
    let query = query.to_lowercase();
    searched.iter().any(|name| {
        record.current(name).is_some_and(|value| {
            value.to_lowercase().starts_with(&query) || tokens(value).any(|t| t.starts_with(&query))
        })
    })
}

/// One sort value of a hit, read once: comparing records directly would re-read and re-parse
/// both values at every comparison.
enum SortValue {
    /// Empty or never set: sorts after every value when ascending.
    Missing,
    /// A numeric property (instants as epoch ms; unparseable text as 0).
    Number(f64),
    /// Any other property, lower-cased.
    Text(String),
}

fn sort_value(object: ObjectType, name: &str, record: &HsRecord) -> SortValue {
    let Some(text) = record.current(name).filter(|v| !v.is_empty()) else {
        return SortValue::Missing;
    };
    let numeric = object
        .property(name)
        .is_some_and(|def| def.kind.is_numeric());
    if numeric {
        let number = text
            .parse::<f64>()
            .ok()
            .or_else(|| parse_instant(text).map(|ms| ms as f64))
            .unwrap_or(0.0);
        SortValue::Number(number)
    } else {
        SortValue::Text(text.to_lowercase())
    }
}

fn sort_value_cmp(a: &SortValue, b: &SortValue) -> Ordering {
    match (a, b) {
        (SortValue::Missing, SortValue::Missing) => Ordering::Equal,
        (SortValue::Missing, _) => Ordering::Greater,
        (_, SortValue::Missing) => Ordering::Less,
        (SortValue::Number(x), SortValue::Number(y)) => x.partial_cmp(y).unwrap_or(Ordering::Equal),
        (SortValue::Text(x), SortValue::Text(y)) => x.cmp(y),
        _ => Ordering::Equal,
    }
}

/// Whether a record passes the filter groups (any group, all its filters) and the free text.
fn found(criteria: &Criteria, record: &HsRecord) -> bool {
    let filtered = criteria.groups.is_empty()
        || criteria
            .groups
            .iter()
            .any(|group| group.iter().all(|filter| matches(filter, record)));
    filtered
        && criteria
            .query
            .as_deref()
            .is_none_or(|q| matches_query(record, q))
}

/// Numbers of the records the index finds, in the order the sorts give (ties by number).
/// Only numbers and sort values are kept, never whole records.
fn ranked_hits(
    view: &PortalView,
    indexed: &PortalView,
    object: ObjectType,
    criteria: &Criteria,
) -> Vec<u64> {
    // Every record is looked at: split them over the cores, in number order.
    let numbers: Vec<u64> = (0..indexed.bound(object)).collect();
    let runs = map_runs(&numbers, |run| {
        run.iter()
            .copied()
            .filter(|number| view.is_live(object, *number))
            .filter_map(|number| indexed.live(object, number))
            .filter(|record| found(criteria, record))
            .map(|record| {
                let values = criteria
                    .sorts
                    .iter()
                    .map(|(name, _)| sort_value(object, name, &record))
                    .collect();
                (record.number, values)
            })
            .collect::<Vec<(u64, Vec<SortValue>)>>()
    });
    let mut hits: Vec<(u64, Vec<SortValue>)> = runs.into_iter().flatten().collect();
    hits.sort_by(|(a_number, a), (b_number, b)| {
        criteria
            .sorts
            .iter()
            .zip(a.iter().zip(b))
            .map(|((_, ascending), (a, b))| {
                let order = sort_value_cmp(a, b);
                if *ascending {
                    order
                } else {
                    order.reverse()
                }
            })
            .find(|order| *order != Ordering::Equal)
            .unwrap_or_else(|| a_number.cmp(b_number))
    });
    hits.into_iter().map(|(number, _)| number).collect()
}

/// What a search finds and in what order, whatever page of it is asked for.
#[derive(Clone, PartialEq)]
struct Criteria {
    /// OR of ANDs.
    groups: Vec<Vec<Filter>>,
    sorts: Vec<(String, bool)>,
    query: Option<String>,
}

/// What decides a search's ranked hits: the same key always ranks the same numbers, since
/// records are a pure function of the funnel, the instant and the overlays. Limit and offset
/// are left out, so every page of one search shares its key.
#[derive(PartialEq)]
struct RankKey {
    object: ObjectType,
    criteria: Criteria,
    /// The instant live records are seen at.
    now: Millis,
    /// The instant the index shows records as of.
    indexed_at: Millis,
    /// [`super::PortalInner::overlays_version`] when the hits were ranked.
    overlays_version: u64,
}

impl RankKey {
    fn of(
        object: ObjectType,
        request: &SearchRequest,
        (now, indexed_at): (Millis, Millis),
        overlays_version: u64,
    ) -> RankKey {
        RankKey {
            object,
            criteria: request.criteria.clone(),
            now,
            indexed_at,
            overlays_version,
        }
    }
}

/// Ranked hits of the latest searches, newest last. Ranking builds every record of the
/// object and sorts them, while a page renders at most 200: without this, paging through a
/// search repeated that whole ranking for each page.
#[derive(Default)]
pub(crate) struct RankedCache {
    entries: Vec<(RankKey, Arc<Vec<u64>>)>,
}

impl RankedCache {
    /// The hits ranked under `key`, ranking them with `rank` unless they are kept.
    fn hits(&mut self, key: RankKey, rank: impl FnOnce() -> Vec<u64>) -> Arc<Vec<u64>> {
        if let Some(at) = self.entries.iter().position(|(kept, _)| *kept == key) {
            let entry = self.entries.remove(at);
            let hits = entry.1.clone();
            self.entries.push(entry);
            return hits;
        }
        // Hits of an older instant or overlay version can never be asked for again.
        self.entries.retain(|(kept, _)| {
            kept.now == key.now
                && kept.indexed_at == key.indexed_at
                && kept.overlays_version == key.overlays_version
        });
        if self.entries.len() >= CACHED_SEARCHES {
            self.entries.remove(0);
        }
        let hits = Arc::new(rank());
        self.entries.push((key, hits.clone()));
        hits
    }
}

async fn search(
    State(shared): State<Arc<Shared>>,
    Path(object): Path<String>,
    body: Bytes,
) -> Response {
    let object = match object_type(&object) {
        Ok(object) => object,
        Err(refused) => return refused.into_response(),
    };
    let body: Value = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(err) => return validation_error(&format!("Invalid input JSON: {err}")),
    };
    let request = match parse_request(object, &body) {
        Ok(request) => request,
        Err(message) => return validation_error(&message),
    };
    if request.after >= MAX_RESULTS {
        return validation_error(&format!(
            "Paging past {MAX_RESULTS} results is not supported: after {} is too large. Narrow the search with filters instead.",
            request.after
        ));
    }
    let (total, results) = with_view(&shared, |view, inner| {
        // The index is the portal as it was `lag` ago: a new record is not in it yet, and a
        // just-edited one is found (and shown) with its indexed values, not left out. Archiving
        // takes a record out of search at once.
        let lag = shared.hubspot.search_index_lag_ms(inner);
        let indexed = PortalView {
            funnel: view.funnel,
            now: view.now - lag,
            overlays: view.overlays,
        };
        let key = RankKey::of(
            object,
            &request,
            (view.now, indexed.now),
            inner.overlays_version,
        );
        let hits = inner.search_cache.hits(key, || {
            ranked_hits(view, &indexed, object, &request.criteria)
        });
        let total = hits.len();
        let shown = request.selection.shown(object);
        let page: Vec<Box<RawValue>> = hits
            .iter()
            .skip(request.after)
            .take(request.limit)
            .filter_map(|number| indexed.live(object, *number))
            .map(|record| render(&indexed, &record, &shown))
            .collect();
        (total, page)
    });
    let next = request.after + request.limit;
    let paging = (next < total).then(|| json!({ "next": { "after": next.to_string() } }));
    Json(SearchPage {
        total,
        results,
        paging,
    })
    .into_response()
}

/// A page of search results.
#[derive(Serialize)]
struct SearchPage {
    total: usize,
    results: Vec<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    paging: Option<Value>,
}
