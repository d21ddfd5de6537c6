//! Posting one message to Slack, through an incoming webhook or `chat.postMessage`, sorting
//! Slack's answers into delivered, retry later, and give up, and (bot tokens only) finding a
//! message again whose send went unanswered.
//!
//! Each bot message carries its outbox ids in Slack message metadata. When a send gets no
//! answer (timeout, reset, 5xx, or pipewarden died before storing it), the message may be in
//! the channel already; before sending it again the worker reads the channel's recent history
//! (or the thread's replies) for those ids. Incoming webhooks cannot be read back, so after an
//! unanswered send they may deliver a message twice; bot tokens deliver it once.
//!
//! The webhook URL and the bot token are credentials: no error, log line or metric built here
//! contains either (reqwest errors are stripped of their URL).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::config::secret::Secret;
use crate::config::settings::SlackDelivery;
use crate::record::Millis;

/// `event_type` of the metadata pipewarden puts on its messages.
const METADATA_EVENT: &str = "pipewarden_alert";
/// Pages of history or channel list read while looking for one message.
const MAX_LOOKUP_PAGES: usize = 20;
/// How far around the unanswered send the history is read: clock skew between us and Slack,
/// plus the request's own time limit after it.
const LOOKUP_SLACK_MS: Millis = 5 * 60_000;

/// Why a post did not go through.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PostError {
    /// Slack asked to wait (429); `Retry-After` says how long.
    #[error("rate limited by Slack (retry after {}s)", .0.as_secs())]
    RateLimited(Duration),
    /// Slack answered that it failed; worth retrying with backoff.
    #[error("{0}")]
    Transient(String),
    /// No answer (network, timeout, 5xx): Slack may or may not have the message.
    #[error("{0}")]
    Unanswered(String),
    /// Retrying cannot help (revoked webhook, unknown channel, bad token, bad payload).
    #[error("{0}")]
    Permanent(String),
}

/// A Slack client for one `[slack]` section.
#[derive(Debug, Clone)]
pub struct SlackClient {
    http: reqwest::Client,
    delivery: SlackDelivery,
    /// Channel ids by the name configured for them, learnt from posts and channel lists.
    channel_ids: Arc<Mutex<HashMap<String, String>>>,
}

impl SlackClient {
    /// A client with a bounded request time.
    pub fn new(delivery: SlackDelivery) -> Result<SlackClient, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("pipewarden/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(SlackClient {
            http,
            delivery,
            channel_ids: Arc::default(),
        })
    }

    /// Whether replies can go into threads, and sent messages be found again (bot tokens only).
    pub fn threads(&self) -> bool {
        matches!(self.delivery, SlackDelivery::BotToken { .. })
    }

    /// Posts `payload` (`text` and `blocks`) tagged with `marker` (its outbox ids); returns
    /// the message's `ts` when Slack gives one.
    pub async fn post(
        &self,
        channel: Option<&str>,
        payload: &Value,
        thread_ts: Option<&str>,
        marker: &str,
    ) -> Result<Option<String>, PostError> {
        match &self.delivery {
            SlackDelivery::Webhook { url } => {
                let response = self
                    .http
                    .post(url.expose())
                    .json(payload)
                    .send()
                    .await
                    .map_err(network)?;
                let status = response.status();
                let retry_after = retry_after(response.headers());
                let body = response.text().await.map_err(network)?;
                webhook_outcome(status, retry_after, body.trim()).map(|()| None)
            }
            SlackDelivery::BotToken { .. } => {
                let mut body = payload.clone();
                body["channel"] = json!(channel.unwrap_or_default());
                if let Some(ts) = thread_ts {
                    body["thread_ts"] = json!(ts);
                }
                body["metadata"] = json!({
                    "event_type": METADATA_EVENT,
                    "event_payload": {"outbox_ids": marker},
                });
                let answer = self.call_post("chat.postMessage", &body).await?;
                if let (Some(name), Some(id)) = (channel, answer["channel"].as_str()) {
                    self.remember_channel(name, id);
                }
                Ok(answer["ts"].as_str().map(str::to_string))
            }
        }
    }

    /// The `ts` of the message tagged `marker` if Slack holds it: read from the channel's
    /// history (or the thread's replies) since shortly before `sent_at`. `Ok(None)` means
    /// it is not there and may be sent again.
    pub async fn find_posted(
        &self,
        channel: Option<&str>,
        thread_ts: Option<&str>,
        marker: &str,
        sent_at: Millis,
    ) -> Result<Option<String>, PostError> {
        let Some(channel) = channel else {
            return Ok(None);
        };
        let Some(channel_id) = self.channel_id(channel).await? else {
            return Ok(None);
        };
        let mut params = vec![
            ("channel", channel_id),
            ("oldest", slack_ts_of(sent_at - LOOKUP_SLACK_MS)),
            // Bounded on both sides: a busy channel's later messages never push the window
            // past the pages a lookup reads.
            ("latest", slack_ts_of(sent_at + LOOKUP_SLACK_MS)),
            ("inclusive", "true".to_string()),
            ("include_all_metadata", "true".to_string()),
            ("limit", "200".to_string()),
        ];
        let method = match thread_ts {
            Some(ts) => {
                params.push(("ts", ts.to_string()));
                "conversations.replies"
            }
            None => "conversations.history",
        };
        let mut cursor = None;
        for _ in 0..MAX_LOOKUP_PAGES {
            let answer = self.call_get(method, &params, cursor.as_deref()).await?;
            let messages = answer["messages"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            if let Some(found) = messages.iter().find(|m| carries_marker(m, marker)) {
                return Ok(found["ts"].as_str().map(str::to_string));
            }
            cursor = next_cursor(&answer);
            if cursor.is_none() {
                return Ok(None);
            }
        }
        Err(PostError::Transient(format!(
            "{method}: more than {MAX_LOOKUP_PAGES} pages since the unanswered send; not sending again blindly"
        )))
    }

    /// The id of a channel named in config (`#revops` or `revops`), or the id itself;
    /// `None` when the bot cannot see such a channel.
    async fn channel_id(&self, channel: &str) -> Result<Option<String>, PostError> {
        if looks_like_channel_id(channel) {
            return Ok(Some(channel.to_string()));
        }
        if let Some(id) = self.known_channel(channel) {
            return Ok(Some(id));
        }
        let params = [
            ("types", "public_channel,private_channel".to_string()),
            ("exclude_archived", "true".to_string()),
            ("limit", "200".to_string()),
        ];
        let wanted = channel.trim_start_matches('#');
        let mut cursor = None;
        for _ in 0..MAX_LOOKUP_PAGES {
            let answer = self
                .call_get("conversations.list", &params, cursor.as_deref())
                .await?;
            for listed in answer["channels"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                if let (Some(name), Some(id)) = (listed["name"].as_str(), listed["id"].as_str()) {
                    self.remember_channel(name, id);
                }
            }
            if self.known_channel(wanted).is_some() {
                return Ok(self.known_channel(wanted));
            }
            cursor = next_cursor(&answer);
            if cursor.is_none() {
                return Ok(None);
            }
        }
        Ok(None)
    }

    fn known_channel(&self, channel: &str) -> Option<String> {
        let ids = self.channel_ids.lock().unwrap_or_else(|p| p.into_inner());
        ids.get(channel.trim_start_matches('#')).cloned()
    }

    fn remember_channel(&self, channel: &str, id: &str) {
        let mut ids = self.channel_ids.lock().unwrap_or_else(|p| p.into_inner());
        ids.insert(channel.trim_start_matches('#').to_string(), id.to_string());
    }

    /// The URL of a Web API method and the bot token that calls it.
    fn method_endpoint(&self, method: &str) -> Result<(reqwest::Url, &Secret), PostError> {
        let SlackDelivery::BotToken {
            token,
            api_base_url,
        } = &self.delivery
        else {
            return Err(PostError::Permanent(format!("{method} needs a bot token")));
        };
        let url = format!("{}/{method}", api_base_url.as_str().trim_end_matches('/'));
        let url = reqwest::Url::parse(&url).map_err(|err| {
            PostError::Permanent(format!("{method}: bad slack.api_base_url: {err}"))
        })?;
        Ok((url, token))
    }

    /// A Web API POST with a JSON body: the answer when `ok`, else why not.
    async fn call_post(&self, method: &str, body: &Value) -> Result<Value, PostError> {
        let (url, token) = self.method_endpoint(method)?;
        let request = self
            .http
            .post(url)
            .bearer_auth(token.expose())
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/json; charset=utf-8",
            )
            .body(body.to_string());
        answer_of(method, request).await
    }

    /// A Web API read (`conversations.*`): the answer when `ok`, else why not.
    async fn call_get(
        &self,
        method: &str,
        params: &[(&str, String)],
        cursor: Option<&str>,
    ) -> Result<Value, PostError> {
        let (mut url, token) = self.method_endpoint(method)?;
        {
            let mut query = url.query_pairs_mut();
            for (key, value) in params {
                query.append_pair(key, value);
            }
            if let Some(cursor) = cursor {
                query.append_pair("cursor", cursor);
            }
        }
        answer_of(method, self.http.get(url).bearer_auth(token.expose())).await
    }
}

/// Sends a Web API request and sorts its answer.
async fn answer_of(method: &str, request: reqwest::RequestBuilder) -> Result<Value, PostError> {
    let response = request.send().await.map_err(network)?;
    let status = response.status();
    let retry_after = retry_after(response.headers());
    let body = response
        .bytes()
        .await
        .map_err(|err| err.without_url().to_string());
    web_api_answer(
        method,
        status,
        retry_after,
        body.as_deref().map_err(String::as_str),
    )
}

/// Sorts a Web API answer from its status and body. A 429 is a rate limit whatever its body
/// says, since a proxy's or gateway's 429 may carry no JSON at all.
fn web_api_answer(
    method: &str,
    status: StatusCode,
    retry_after: Duration,
    body: Result<&[u8], &str>,
) -> Result<Value, PostError> {
    if status == StatusCode::TOO_MANY_REQUESTS {
        return Err(PostError::RateLimited(retry_after));
    }
    let answer = body
        .map_err(str::to_string)
        .and_then(|body| serde_json::from_slice(body).map_err(|err| err.to_string()));
    match answer {
        Ok(answer) => web_api_outcome(method, status, retry_after, answer),
        // A cut-off or garbled answer says nothing of what Slack did.
        Err(err) => Err(PostError::Unanswered(format!(
            "{method}: unreadable answer (HTTP {}): {err}",
            status.as_u16()
        ))),
    }
}

/// Slack's `ts` notation (seconds with six decimals) of an instant.
fn slack_ts_of(at: Millis) -> String {
    let at = at.max(0);
    format!("{}.{:03}000", at / 1_000, at % 1_000)
}

/// Channel ids are upper-case letters and digits starting with C, G or D (`C0123ABCD`).
fn looks_like_channel_id(channel: &str) -> bool {
    channel.len() >= 9
        && channel.starts_with(['C', 'G', 'D'])
        && channel
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
}

fn carries_marker(message: &Value, marker: &str) -> bool {
    message["metadata"]["event_type"] == json!(METADATA_EVENT)
        && message["metadata"]["event_payload"]["outbox_ids"] == json!(marker)
}

fn next_cursor(answer: &Value) -> Option<String> {
    answer["response_metadata"]["next_cursor"]
        .as_str()
        .filter(|c| !c.is_empty())
        .map(str::to_string)
}

fn network(err: reqwest::Error) -> PostError {
    PostError::Unanswered(format!("no answer from Slack: {}", err.without_url()))
}

fn retry_after(headers: &HeaderMap) -> Duration {
    let seconds = headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(1);
    Duration::from_secs(seconds.clamp(1, 3_600))
}

/// Incoming webhooks answer `ok`, or a plain-text code with the status.
fn webhook_outcome(status: StatusCode, retry_after: Duration, body: &str) -> Result<(), PostError> {
    let code: String = body.chars().take(100).collect();
    match status.as_u16() {
        200..=299 => Ok(()),
        429 => Err(PostError::RateLimited(retry_after)),
        400 | 403 | 404 | 410 => Err(PostError::Permanent(format!(
            "Slack webhook answered HTTP {status}: {code} (404 no_service: the webhook was revoked; \
             404 channel_not_found / 410 channel_is_archived: its channel is gone)",
            status = status.as_u16()
        ))),
        _ => Err(PostError::Unanswered(format!(
            "Slack webhook answered HTTP {}: {code}",
            status.as_u16()
        ))),
    }
}

/// A Web API answer sorted: the JSON when `ok`, else why not. Slack answers HTTP 200 with
/// `ok` false for most errors, and 429 when rate limited.
fn web_api_outcome(
    method: &str,
    status: StatusCode,
    retry_after: Duration,
    answer: Value,
) -> Result<Value, PostError> {
    // A 429 status never gets here (see `web_api_answer`); Slack also answers 200 so.
    if answer["error"] == json!("ratelimited") {
        return Err(PostError::RateLimited(retry_after));
    }
    if !status.is_success() {
        // A gateway's 5xx says nothing of whether Slack itself took the message.
        return Err(PostError::Unanswered(format!(
            "{method} answered HTTP {}",
            status.as_u16()
        )));
    }
    if answer["ok"] == json!(true) {
        return Ok(answer);
    }
    let error = answer["error"].as_str().unwrap_or("(no error code)");
    match error {
        // Slack documents that part of the operation may have succeeded before these.
        "internal_error" | "fatal_error" | "request_timeout" => {
            Err(PostError::Unanswered(format!("{method} failed: {error}")))
        }
        "service_unavailable" => Err(PostError::Transient(format!("{method} failed: {error}"))),
        _ => Err(PostError::Permanent(format!(
            "{method} failed: {error}{}",
            likely_fix(error)
        ))),
    }
}

/// What to do about a permanent Web API error, as a parenthesis for its message.
fn likely_fix(error: &str) -> &'static str {
    match error {
        "channel_not_found" | "not_in_channel" | "is_archived" => {
            " (invite the bot to the channel, or fix the rule's channel)"
        }
        "invalid_auth" | "not_authed" | "token_revoked" | "account_inactive" | "invalid_token" => {
            " (check slack.bot_token)"
        }
        "missing_scope" => {
            " (the bot token needs chat:write, and channels:read, groups:read, channels:history and \
             groups:history to find messages whose send went unanswered)"
        }
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_codes_sort_into_retry_and_give_up() {
        let wait = Duration::from_secs(3);
        assert_eq!(webhook_outcome(StatusCode::OK, wait, "ok"), Ok(()));
        assert_eq!(
            webhook_outcome(StatusCode::TOO_MANY_REQUESTS, wait, ""),
            Err(PostError::RateLimited(wait))
        );
        assert!(matches!(
            webhook_outcome(StatusCode::GONE, wait, "channel_is_archived"),
            Err(PostError::Permanent(_))
        ));
        assert!(matches!(
            webhook_outcome(StatusCode::INTERNAL_SERVER_ERROR, wait, "rollup_error"),
            Err(PostError::Unanswered(_))
        ));
    }

    #[test]
    fn a_429_without_json_still_says_how_long_to_wait() {
        let wait = Duration::from_secs(7);
        let answer = |status, body: &'static str| {
            web_api_answer("chat.postMessage", status, wait, Ok(body.as_bytes()))
        };
        assert_eq!(
            answer(
                StatusCode::TOO_MANY_REQUESTS,
                "<html>Too Many Requests</html>"
            ),
            Err(PostError::RateLimited(wait))
        );
        assert!(matches!(
            answer(StatusCode::OK, "{\"ok\": tr"),
            Err(PostError::Unanswered(_))
        ));
        assert_eq!(
            answer(StatusCode::OK, r#"{"ok": true, "ts": "1.2"}"#),
            Ok(json!({"ok": true, "ts": "1.2"}))
        );
    }

    #[test]
    fn api_errors_come_with_status_200() {
        let wait = Duration::from_secs(1);
        let outcome = |status, answer| web_api_outcome("chat.postMessage", status, wait, answer);
        assert!(matches!(
            outcome(StatusCode::OK, json!({"ok": false, "error": "channel_not_found"})),
            Err(PostError::Permanent(message)) if message.contains("invite the bot")
        ));
        assert!(matches!(
            outcome(StatusCode::OK, json!({"ok": false, "error": "ratelimited"})),
            Err(PostError::RateLimited(_))
        ));
        assert!(matches!(
            outcome(StatusCode::BAD_GATEWAY, Value::Null),
            Err(PostError::Unanswered(_))
        ));
        assert!(
            matches!(
                outcome(
                    StatusCode::OK,
                    json!({"ok": false, "error": "internal_error"})
                ),
                Err(PostError::Unanswered(_))
            ),
            "Slack may have posted before an internal error"
        );
        let ok = json!({"ok": true, "ts": "1.2"});
        assert_eq!(outcome(StatusCode::OK, ok.clone()), Ok(ok));
    }

    #[test]
    fn slack_ts_and_channel_ids_read_as_slack_writes_them() {
        assert_eq!(slack_ts_of(1_767_600_000_123), "1767600000.123000");
        assert!(looks_like_channel_id("C0123ABCD9"));
        assert!(!looks_like_channel_id("#revops-alerts"));
        assert!(!looks_like_channel_id("Cheap"));
    }
}
