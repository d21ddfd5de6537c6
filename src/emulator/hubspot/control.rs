//! HubSpot switches of the control API, under `/__emulator/hubspot/`: index lag, daily
//! usage, token expiry, and a record's ground truth (every version of every property).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::iso;
use super::objects::with_view;
use super::records::source_fields;
use super::schema::ObjectType;
use crate::emulator::control::loopback_only;
use crate::emulator::Shared;

pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/__emulator/hubspot/search-index-lag", post(set_index_lag))
        .route("/__emulator/hubspot/daily-usage", post(set_daily_usage))
        .route("/__emulator/hubspot/expire-tokens", post(expire_tokens))
        .route(
            "/__emulator/hubspot/records/{object}/{id}",
            get(ground_truth),
        )
        .layer(middleware::from_fn(loopback_only))
}

fn bad_request(message: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({ "error": message }))).into_response()
}

/// `{"lag": "30s"}`: how long modified records stay out of search results.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IndexLag {
    lag: String,
}

async fn set_index_lag(State(shared): State<Arc<Shared>>, Json(body): Json<IndexLag>) -> Response {
    match humantime::parse_duration(&body.lag) {
        Ok(lag) => {
            let ms = i64::try_from(lag.as_millis()).unwrap_or(i64::MAX);
            shared.hubspot.lock().search_index_lag_ms = Some(ms);
            Json(json!({ "lag_ms": ms })).into_response()
        }
        Err(err) => bad_request(format!(
            "`lag`: `{}` is not a duration like \"30s\" ({err})",
            body.lag
        )),
    }
}

/// `{"used": N}`: calls already made today.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DailyUsage {
    used: u64,
}

async fn set_daily_usage(
    State(shared): State<Arc<Shared>>,
    Json(body): Json<DailyUsage>,
) -> Json<Value> {
    let now = shared.clock.now_ms();
    let mut inner = shared.hubspot.lock();
    inner.limits.set_daily_used(body.used, now);
    Json(json!({ "used": inner.limits.daily_used(now), "max": shared.hubspot.options.daily_limit }))
}

async fn expire_tokens(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let now = shared.clock.now_ms();
    Json(json!({ "expired": shared.hubspot.expire_tokens(now) }))
}

/// Every version of every property of one record, oldest first, archived or not.
async fn ground_truth(
    State(shared): State<Arc<Shared>>,
    Path((object, id)): Path<(String, String)>,
) -> Response {
    let Some(object) = ObjectType::parse(&object) else {
        return bad_request(format!("unknown object type {object}"));
    };
    let found = with_view(&shared, |view, _| {
        let record = view.record(object, object.number(&id)?)?;
        let mut properties = Map::new();
        for (name, versions) in &record.props {
            let versions: Vec<Value> = versions
                .iter()
                .map(|version| {
                    let (source_type, source_id, user) = source_fields(version.source);
                    json!({
                        "value": version.value,
                        "timestamp": iso(version.at),
                        "sourceType": source_type,
                        "sourceId": source_id,
                        "updatedByUserId": user,
                    })
                })
                .collect();
            properties.insert(name.to_string(), Value::Array(versions));
        }
        Some(json!({
            "id": record.id(),
            "createdAt": iso(record.created_at),
            "updatedAt": iso(record.modified_at),
            "archivedAt": record.archived_at.map(iso),
            "properties": properties,
        }))
    });
    match found {
        Some(body) => Json(body).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": format!("no {} with id {id}", object.singular()) })),
        )
            .into_response(),
    }
}
