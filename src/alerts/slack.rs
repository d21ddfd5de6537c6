//! Posting one message to Slack, through an incoming webhook or `chat.postMessage`, and
//! sorting Slack's answers into delivered, retry later, and give up.
//!
//! The webhook URL and the bot token are credentials: no error, log line or metric built here
//! contains either (reqwest errors are stripped of their URL).

use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::config::settings::SlackDelivery;

/// Why a post did not go through.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PostError {
    /// Slack asked to wait (429); `Retry-After` says how long.
    #[error("rate limited by Slack (retry after {}s)", .0.as_secs())]
    RateLimited(Duration),
    /// Worth retrying with backoff (5xx, network, Slack-side failures).
    #[error("{0}")]
    Transient(String),
    /// Retrying cannot help (revoked webhook, unknown channel, bad token, bad payload).
    #[error("{0}")]
    Permanent(String),
}

/// A Slack client for one `[slack]` section.
#[derive(Debug, Clone)]
pub struct SlackClient {
    http: reqwest::Client,
    delivery: SlackDelivery,
}

impl SlackClient {
    /// A client with a bounded request time.
    pub fn new(delivery: SlackDelivery) -> SlackClient {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("pipewarden/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        SlackClient { http, delivery }
    }

    /// Whether replies can go into threads (bot tokens only).
    pub fn threads(&self) -> bool {
        matches!(self.delivery, SlackDelivery::BotToken { .. })
    }

    /// Posts `payload` (`text` and `blocks`); returns the message's `ts` when Slack gives one.
    pub async fn post(
        &self,
        channel: Option<&str>,
        payload: &Value,
        thread_ts: Option<&str>,
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
            SlackDelivery::BotToken {
                token,
                api_base_url,
            } => {
                let mut body = payload.clone();
                body["channel"] = json!(channel.unwrap_or_default());
                if let Some(ts) = thread_ts {
                    body["thread_ts"] = json!(ts);
                }
                let url = format!(
                    "{}/chat.postMessage",
                    api_base_url.as_str().trim_end_matches('/')
                );
                let response = self
                    .http
                    .post(url)
                    .bearer_auth(token.expose())
                    .header(
                        reqwest::header::CONTENT_TYPE,
                        "application/json; charset=utf-8",
                    )
                    .body(body.to_string())
                    .send()
                    .await
                    .map_err(network)?;
                let status = response.status();
                let retry_after = retry_after(response.headers());
                let answer: Value = response.json().await.unwrap_or(Value::Null);
                api_outcome(status, retry_after, &answer)
            }
        }
    }
}

fn network(err: reqwest::Error) -> PostError {
    PostError::Transient(format!("cannot reach Slack: {}", err.without_url()))
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
        _ => Err(PostError::Transient(format!(
            "Slack webhook answered HTTP {}: {code}",
            status.as_u16()
        ))),
    }
}

/// `chat.postMessage` answers HTTP 200 with `ok` true or false, and 429 when rate limited.
fn api_outcome(
    status: StatusCode,
    retry_after: Duration,
    answer: &Value,
) -> Result<Option<String>, PostError> {
    if status == StatusCode::TOO_MANY_REQUESTS {
        return Err(PostError::RateLimited(retry_after));
    }
    if !status.is_success() {
        return Err(PostError::Transient(format!(
            "chat.postMessage answered HTTP {}",
            status.as_u16()
        )));
    }
    if answer["ok"] == json!(true) {
        return Ok(answer["ts"].as_str().map(str::to_string));
    }
    let error = answer["error"].as_str().unwrap_or("(no error code)");
    match error {
        "ratelimited" => Err(PostError::RateLimited(retry_after)),
        "internal_error" | "fatal_error" | "service_unavailable" | "request_timeout" => Err(
            PostError::Transient(format!("chat.postMessage failed: {error}")),
        ),
        "channel_not_found" | "not_in_channel" | "is_archived" => Err(PostError::Permanent(
            format!("chat.postMessage failed: {error} (invite the bot to the channel, or fix the rule's channel)"),
        )),
        "invalid_auth" | "not_authed" | "token_revoked" | "account_inactive" | "missing_scope"
        | "invalid_token" => Err(PostError::Permanent(format!(
            "chat.postMessage failed: {error} (check slack.bot_token and its chat:write scope)"
        ))),
        other => Err(PostError::Permanent(format!(
            "chat.postMessage failed: {other}"
        ))),
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
            Err(PostError::Transient(_))
        ));
    }

    #[test]
    fn api_errors_come_with_status_200() {
        let wait = Duration::from_secs(1);
        let answer = json!({"ok": false, "error": "channel_not_found"});
        assert!(matches!(
            api_outcome(StatusCode::OK, wait, &answer),
            Err(PostError::Permanent(message)) if message.contains("channel_not_found")
        ));
        let ok = json!({"ok": true, "ts": "1.2"});
        assert_eq!(
            api_outcome(StatusCode::OK, wait, &ok),
            Ok(Some("1.2".into()))
        );
    }
}
