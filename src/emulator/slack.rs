//! A Slack stand-in: an incoming webhook under `/slack/services/…`, and under `/slack/api/`
//! `chat.postMessage` plus the reads a bot uses to find its own messages again
//! (`conversations.list`, `conversations.history`, `conversations.replies`, with message
//! metadata). It answers as Slack does: `ok` / plain-text codes for webhooks, HTTP 200 with
//! `{"ok": false, "error"}` for the Web API, 429 with `Retry-After`. Channels get ids (`C…`)
//! when first posted to, and `ts` values follow the wall clock.
//!
//! Tests script the next answers through `POST /__emulator/slack/answers` (server errors, rate
//! limits, revoked webhooks, unknown channels, and answers lost after the message was taken)
//! and read what was accepted, in arrival order, from `GET /__emulator/slack/messages`; the
//! demo points `[slack]` here to show its alerts.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::{Query, State};
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
#[derive(Debug, Clone, Default, Deserialize)]
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
    /// Take the message although the answer is an error (the answer is lost on the way back).
    #[serde(default)]
    accept: bool,
    /// Take the message, then wait this long before answering.
    #[serde(default)]
    delay_ms: Option<u64>,
}

/// A message Slack accepted.
#[derive(Debug, Clone, Serialize)]
struct Received {
    /// `webhook` or `api`.
    via: &'static str,
    channel: Option<String>,
    /// The channel's id (Web API messages only).
    channel_id: Option<String>,
    text: Option<String>,
    thread_ts: Option<String>,
    ts: String,
    blocks: Value,
    /// Message metadata (`event_type`, `event_payload`), as posted.
    metadata: Value,
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
    /// Channel ids by name, in order of first use.
    channels: Vec<(String, String)>,
    /// The last `ts` given, in microseconds: each message gets a later one.
    last_ts_micros: i64,
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
        .route("/slack/api/conversations.list", get(list_channels))
        .route("/slack/api/conversations.history", get(history))
        .route("/slack/api/conversations.replies", get(replies))
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
    let micros = (chrono::Utc::now().timestamp_micros()).max(inner.last_ts_micros + 1);
    inner.last_ts_micros = micros;
    let ts = format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000);
    let channel_id = match (via, channel.as_deref()) {
        ("api", Some(channel)) => Some(channel_id(inner, channel)),
        _ => None,
    };
    inner.received.push(Received {
        via,
        channel,
        channel_id,
        text: body["text"].as_str().map(str::to_string),
        thread_ts: body["thread_ts"].as_str().map(str::to_string),
        ts: ts.clone(),
        blocks: body["blocks"].clone(),
        metadata: body["metadata"].clone(),
        received_at_ms: chrono::Utc::now().timestamp_millis(),
    });
    ts
}

/// The id of a channel given by id, `#name` or `name`; a new name gets the next id.
fn channel_id(inner: &mut Inner, given: &str) -> String {
    if let Some((_, id)) = inner.channels.iter().find(|(_, id)| id == given) {
        return id.clone();
    }
    let name = given.trim_start_matches('#');
    if let Some((_, id)) = inner.channels.iter().find(|(known, _)| known == name) {
        return id.clone();
    }
    let id = format!("C{:08}", inner.channels.len() + 1);
    inner.channels.push((name.to_string(), id.clone()));
    id
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
    let (answer, ts, channel_id) = {
        let mut inner = shared.slack.lock();
        inner.requests += 1;
        if let Some(error) = auth_error(&headers) {
            return api_error(error);
        }
        let Some(channel) = body["channel"]
            .as_str()
            .filter(|c| !c.is_empty())
            .map(str::to_string)
        else {
            return api_error("channel_not_found");
        };
        let answer = scripted(&mut inner, Some(&channel));
        let takes_it = answer
            .as_ref()
            .is_none_or(|a| a.accept || a.delay_ms.is_some());
        if takes_it && body["text"].as_str().is_none_or(str::is_empty) && body["blocks"].is_null() {
            return api_error("no_text");
        }
        if !takes_it {
            return refusal(answer.unwrap_or_default());
        }
        let ts = accept(&mut inner, "api", Some(channel.clone()), &body);
        (answer, ts, channel_id(&mut inner, &channel))
    };
    if let Some(answer) = answer {
        if let Some(delay) = answer.delay_ms {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if answer.status.is_some_and(|s| s != 200) || answer.error.is_some() {
            return refusal(answer);
        }
    }
    Json(json!({"ok": true, "channel": channel_id, "ts": ts, "message": {"text": body["text"]}}))
        .into_response()
}

/// A scripted failure of `chat.postMessage`.
fn refusal(answer: Answer) -> Response {
    let status = answer.status.unwrap_or(200);
    if status == 429 {
        let body = Json(json!({"ok": false, "error": "ratelimited"}));
        return rate_limited(answer.retry_after, body);
    }
    if status != 200 {
        let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return (code, "upstream failure").into_response();
    }
    api_error(answer.error.as_deref().unwrap_or("internal_error"))
}

fn api_error(error: &str) -> Response {
    Json(json!({"ok": false, "error": error})).into_response()
}

/// The error code of the bot token check every Web API method makes, if it fails.
fn auth_error(headers: &HeaderMap) -> Option<&'static str> {
    match headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        None => Some("not_authed"),
        Some(value) if value != format!("Bearer {BOT_TOKEN}") => Some("invalid_auth"),
        Some(_) => None,
    }
}

/// `GET /slack/api/conversations.list`: the channels posted to so far, in one page.
async fn list_channels(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let mut inner = shared.slack.lock();
    inner.requests += 1;
    if let Some(error) = auth_error(&headers) {
        return api_error(error);
    }
    let channels: Vec<Value> = inner
        .channels
        .iter()
        .map(|(name, id)| json!({"id": id, "name": name, "is_channel": true, "is_private": false, "is_archived": false}))
        .collect();
    Json(json!({"ok": true, "channels": channels, "response_metadata": {"next_cursor": ""}}))
        .into_response()
}

/// Parameters of `conversations.history` and `conversations.replies`.
#[derive(Debug, Deserialize)]
struct ReadParams {
    channel: String,
    /// The thread (replies only).
    ts: Option<String>,
    oldest: Option<String>,
    latest: Option<String>,
    #[serde(default)]
    inclusive: Option<String>,
    #[serde(default)]
    include_all_metadata: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

/// `GET /slack/api/conversations.history`: the channel's top-level messages, newest first.
async fn history(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(params): Query<ReadParams>,
) -> Response {
    read_messages(
        &shared,
        &headers,
        params,
        |m, _| m.thread_ts.is_none(),
        true,
    )
}

/// `GET /slack/api/conversations.replies`: a thread's parent and replies, oldest first.
async fn replies(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(params): Query<ReadParams>,
) -> Response {
    if params.ts.is_none() {
        return api_error("thread_not_found");
    }
    read_messages(
        &shared,
        &headers,
        params,
        |m, thread| Some(m.ts.as_str()) == thread || m.thread_ts.as_deref() == thread,
        false,
    )
}

/// One page of a channel's messages that `keep` selects, with `cursor` paging by offset.
fn read_messages(
    shared: &Shared,
    headers: &HeaderMap,
    params: ReadParams,
    keep: impl Fn(&Received, Option<&str>) -> bool,
    newest_first: bool,
) -> Response {
    let mut inner = shared.slack.lock();
    inner.requests += 1;
    if let Some(error) = auth_error(headers) {
        return api_error(error);
    }
    if !inner.channels.iter().any(|(_, id)| *id == params.channel) {
        return api_error("channel_not_found");
    }
    let oldest: f64 = params
        .oldest
        .as_deref()
        .and_then(|o| o.parse().ok())
        .unwrap_or(0.0);
    let latest: f64 = params
        .latest
        .as_deref()
        .and_then(|l| l.parse().ok())
        .unwrap_or(f64::MAX);
    let inclusive = matches!(params.inclusive.as_deref(), Some("true" | "1"));
    let with_metadata = matches!(params.include_all_metadata.as_deref(), Some("true" | "1"));
    let thread = params.ts.as_deref();
    let mut selected: Vec<&Received> = inner
        .received
        .iter()
        .filter(|m| m.channel_id.as_deref() == Some(params.channel.as_str()))
        .filter(|m| keep(m, thread))
        .filter(|m| {
            let ts: f64 = m.ts.parse().unwrap_or(0.0);
            (ts > oldest && ts < latest) || (inclusive && (ts == oldest || ts == latest))
        })
        .collect();
    if newest_first {
        selected.reverse();
    }
    let offset = params
        .cursor
        .as_deref()
        .and_then(|c| c.strip_prefix("offset:"))
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(0);
    let limit = params.limit.unwrap_or(100).clamp(1, 999);
    let page: Vec<Value> = selected
        .iter()
        .skip(offset)
        .take(limit)
        .map(|m| {
            let mut message = json!({"type": "message", "ts": m.ts, "text": m.text});
            if let Some(thread_ts) = &m.thread_ts {
                message["thread_ts"] = json!(thread_ts);
            }
            if with_metadata && !m.metadata.is_null() {
                message["metadata"] = m.metadata.clone();
            }
            message
        })
        .collect();
    let has_more = offset + limit < selected.len();
    let next_cursor = if has_more {
        format!("offset:{}", offset + limit)
    } else {
        String::new()
    };
    Json(json!({
        "ok": true,
        "messages": page,
        "has_more": has_more,
        "response_metadata": {"next_cursor": next_cursor},
    }))
    .into_response()
}
