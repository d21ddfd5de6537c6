//! The control API under `/__emulator/`: move simulated time, switch faults, read state.
//!
//! It is for tests and the demo, never for the CRM clients under test, and it answers only
//! clients on loopback, whatever address the emulator listens on.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::faults::FaultRule;
use super::{Peer, Shared};

pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/__emulator/clock", get(clock))
        .route("/__emulator/clock/advance", post(advance))
        .route(
            "/__emulator/salesforce/expire-sessions",
            post(expire_sessions),
        )
        .route("/__emulator/salesforce/api-usage", post(set_api_usage))
        .route(
            "/__emulator/faults",
            get(faults).put(set_faults).delete(clear_faults),
        )
        .merge(super::salesforce::control_routes())
        .layer(middleware::from_fn(loopback_only))
}

/// Refuses every client that is not on loopback.
pub(crate) async fn loopback_only(
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    request: Request,
    next: Next,
) -> Response {
    if peer.ip().is_loopback() {
        next.run(request).await
    } else {
        (
            StatusCode::FORBIDDEN,
            Json(json!({"error": "the control API answers loopback clients only"})),
        )
            .into_response()
    }
}

fn clock_body(now_ms: i64) -> Json<Value> {
    let iso = chrono::DateTime::from_timestamp_millis(now_ms)
        .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    Json(json!({ "now_ms": now_ms, "now": iso }))
}

async fn clock(State(shared): State<Arc<Shared>>) -> Json<Value> {
    clock_body(shared.clock.now_ms())
}

/// `{"by": "90m"}`: how far to move simulated time.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Advance {
    by: String,
}

async fn advance(State(shared): State<Arc<Shared>>, Json(body): Json<Advance>) -> Response {
    match humantime::parse_duration(&body.by) {
        Ok(by) => clock_body(shared.clock.advance(by)).into_response(),
        Err(err) => (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": format!("`by`: `{}` is not a duration like \"90m\" ({err})", body.by)})),
        )
            .into_response(),
    }
}

async fn expire_sessions(State(shared): State<Arc<Shared>>) -> Json<Value> {
    Json(json!({ "expired": shared.salesforce.expire_sessions() }))
}

/// `{"used": N}`: calls already made in the rolling 24-hour window.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiUsage {
    used: u64,
}

async fn set_api_usage(
    State(shared): State<Arc<Shared>>,
    Json(body): Json<ApiUsage>,
) -> Json<Value> {
    let now = shared.clock.now_ms();
    shared.salesforce.set_api_usage(body.used, now);
    Json(
        json!({ "used": shared.salesforce.api_usage(now), "max": shared.salesforce.options.daily_api_limit }),
    )
}

/// `{"faults": [rule, ...]}`: the fault rules in force, with their counters.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultPlan {
    faults: Vec<FaultRule>,
}

async fn faults(State(shared): State<Arc<Shared>>) -> Json<Value> {
    Json(json!({ "faults": shared.faults.rules() }))
}

async fn set_faults(
    State(shared): State<Arc<Shared>>,
    body: Result<Json<FaultPlan>, JsonRejection>,
) -> Response {
    match body {
        Ok(Json(plan)) => {
            shared.faults.set(plan.faults);
            Json(json!({ "faults": shared.faults.rules() })).into_response()
        }
        Err(rejection) => (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": format!("fault plan: {}", rejection.body_text()) })),
        )
            .into_response(),
    }
}

async fn clear_faults(State(shared): State<Arc<Shared>>) -> Json<Value> {
    shared.faults.set(Vec::new());
    Json(json!({ "faults": [] }))
}
