//! A Slack stand-in: an incoming webhook under `/slack/services/…` and `chat.postMessage`
//! under `/slack/api/`, answering as Slack does (`ok` / plain-text codes for webhooks, HTTP 200
//! with `{"ok": false, "error"}` for the Web API, 429 with `Retry-After`).
//!
//! Tests script the next answers through `POST /__emulator/slack/answers` (server errors, rate
//! limits, revoked webhooks, unknown channels) and read what was accepted, in arrival order,
//! from `GET /__emulator/slack/messages`; the demo points `[slack]` here to show its alerts.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::control::loopback_only;
use super::Shared;

/// The bot token the stand-in accepts.
pub const BOT_TOKEN: &str = "xoxb-emulator-demo-token";

/// One scripted answer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Answer {
    /// HTTP status (default 200).
    #[serde(default)]
    status: Option<u16>,
    /// Web API error code (`ok: false`), or the webhook's plain-text body.
    #[serde(default)]
    error: Option<String>,
    /// `Retry-After` seconds, for 429s.
    #[serde(default)]
    retry_after: Option<u64>,
    /// Only for messages to this channel.
    #[serde(default)]
    channel: Option<String>,
    /// Give this answer every time instead of once.
    #[serde(default)]
    always: bool,
}

/// A message Slack accepted.
#[derive(Debug, Clone, Serialize)]
struct Received {
    /// `webhook` or `api`.
    via: &'static str,
    channel: Option<String>,
    text: Option<String>,
    thread_ts: Option<String>,
    ts: String,
    blocks: Value,
    /// Real time of arrival, epoch milliseconds (rate checks need the wall clock).
    received_at_ms: i64,
}

/// What the stand-in holds.
#[derive(Debug, Default)]
pub(crate) struct SlackState(Mutex<Inner>);

#[derive(Debug, Default)]
struct Inner {
    answers: VecDeque<Answer>,
    received: Vec<Received>,
    requests: u64,
}

impl SlackState {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panicking handler leaves plain data behind; keep serving it.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Routes of the stand-in and its control switches.
pub(crate) fn routes() -> Router<Arc<Shared>> {
    let control = Router::new()
        .route("/__emulator/slack/answers", post(set_answers))
        .route("/__emulator/slack/messages", get(messages))
        .layer(middleware::from_fn(loopback_only));
    Router::new()
        .route("/slack/services/{*hook}", post(webhook))
        .route("/slack/api/chat.postMessage", post(post_message))
        .merge(control)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Answers {
    answers: Vec<Answer>,
}

async fn set_answers(State(shared): State<Arc<Shared>>, Json(body): Json<Answers>) -> Json<Value> {
    let mut inner = shared.slack.lock();
    inner.answers = body.answers.into();
    Json(json!({ "queued": inner.answers.len() }))
}

async fn messages(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let inner = shared.slack.lock();
    Json(json!({ "messages": inner.received, "requests": inner.requests }))
}

/// The scripted answer for a message to `channel`, if one is queued.
fn scripted(inner: &mut Inner, channel: Option<&str>) -> Option<Answer> {
    let index = inner
        .answers
        .iter()
        .position(|a| a.channel.is_none() || a.channel.as_deref() == channel)?;
    if inner.answers[index].always {
        return inner.answers.get(index).cloned();
    }
    inner.answers.remove(index)
}

fn accept(inner: &mut Inner, via: &'static str, channel: Option<String>, body: &Value) -> String {
    let ts = format!("1767600000.{:06}", inner.received.len() + 1);
    inner.received.push(Received {
        via,
        channel,
        text: body["text"].as_str().map(str::to_string),
        thread_ts: body["thread_ts"].as_str().map(str::to_string),
        ts: ts.clone(),
        blocks: body["blocks"].clone(),
        received_at_ms: chrono::Utc::now().timestamp_millis(),
    });
    ts
}

fn rate_limited(retry_after: Option<u64>, body: impl IntoResponse) -> Response {
    let mut response = (StatusCode::TOO_MANY_REQUESTS, body).into_response();
    response.headers_mut().insert(
        header::RETRY_AFTER,
        retry_after
            .unwrap_or(1)
            .to_string()
            .parse()
            .expect("digits"),
    );
    response
}

/// `POST /slack/services/T…/B…/X…`: answers `ok`, or a scripted status and code.
async fn webhook(State(shared): State<Arc<Shared>>, Json(body): Json<Value>) -> Response {
    let mut inner = shared.slack.lock();
    inner.requests += 1;
    match scripted(&mut inner, None) {
        Some(answer) => {
            let status = answer.status.unwrap_or(200);
            let text = answer.error.unwrap_or_else(|| "ok".into());
            if status == 429 {
                return rate_limited(answer.retry_after, text);
            }
            let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            if code.is_success() {
                accept(&mut inner, "webhook", None, &body);
            }
            (code, text).into_response()
        }
        None if body["text"].as_str().is_none_or(str::is_empty) => {
            (StatusCode::BAD_REQUEST, "no_text").into_response()
        }
        None => {
            accept(&mut inner, "webhook", None, &body);
            (StatusCode::OK, "ok").into_response()
        }
    }
}

/// `POST /slack/api/chat.postMessage`: needs the bot token and a channel.
async fn post_message(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let mut inner = shared.slack.lock();
    inner.requests += 1;
    let fail = |error: &str| Json(json!({"ok": false, "error": error})).into_response();
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match authorization {
        None => return fail("not_authed"),
        Some(value) if value != format!("Bearer {BOT_TOKEN}") => return fail("invalid_auth"),
        Some(_) => {}
    }
    let Some(channel) = body["channel"]
        .as_str()
        .filter(|c| !c.is_empty())
        .map(str::to_string)
    else {
        return fail("channel_not_found");
    };
    if let Some(answer) = scripted(&mut inner, Some(&channel)) {
        let status = answer.status.unwrap_or(200);
        if status == 429 {
            let body = Json(json!({"ok": false, "error": "ratelimited"}));
            return rate_limited(answer.retry_after, body);
        }
        if status != 200 {
            let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return (code, "upstream failure").into_response();
        }
        if let Some(error) = answer.error {
            return fail(&error);
        }
    }
    if body["text"].as_str().is_none_or(str::is_empty) && body["blocks"].is_null() {
        return fail("no_text");
    }
    let ts = accept(&mut inner, "api", Some(channel.clone()), &body);
    Json(json!({"ok": true, "channel": channel, "ts": ts, "message": {"text": body["text"]}}))
        .into_response()
}
