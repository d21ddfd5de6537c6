//! HubSpot's rate limits: the rolling ten-second burst per app, the daily limit per portal,
//! and the separate five-per-second search limit.
//!
//! The burst and search windows run on wall-clock time, not the simulated clock: they exist
//! to shape how fast a client sends requests, which is real time as the client experiences
//! it, and a simulated clock that stands still between test steps would otherwise turn one
//! burst into a permanent lockout. The daily limit is a quota over simulated days, so a test
//! can cross midnight without waiting for it.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::auth::Caller;
use super::{correlation_id, HubspotOptions, Refusal};
use crate::record::Millis;
use crate::record::DAY_MS;

const BURST_WINDOW: Duration = Duration::from_secs(10);
const SEARCH_WINDOW: Duration = Duration::from_secs(1);
const SEARCH_PER_SECOND: usize = 5;
/// Public OAuth apps get this many calls per ten seconds per installed portal, whatever the tier.
const OAUTH_BURST: u64 = 110;

/// Calls counted so far.
#[derive(Default)]
pub(crate) struct Counters {
    private_app_calls: VecDeque<Instant>,
    oauth_calls: VecDeque<Instant>,
    search_calls: VecDeque<Instant>,
    /// Simulated day number the daily count belongs to.
    day: i64,
    daily_used: u64,
}

impl Counters {
    /// Calls used today (simulated), after rolling over to `now`'s day.
    pub fn daily_used(&mut self, now: Millis) -> u64 {
        let today = now.div_euclid(DAY_MS);
        if today != self.day {
            self.day = today;
            self.daily_used = 0;
        }
        self.daily_used
    }

    /// Pretends `used` calls were already made today.
    pub fn set_daily_used(&mut self, used: u64, now: Millis) {
        self.daily_used(now);
        self.daily_used = used;
    }
}

/// The rate-limit headers one answer carries.
pub(crate) struct RateHeaders {
    daily: Option<(u64, u64)>,
    max: u64,
    remaining: u64,
}

impl RateHeaders {
    pub fn stamp(&self, response: &mut Response) {
        let headers = response.headers_mut();
        let mut put = |name: &'static str, value: u64| {
            headers.insert(name, HeaderValue::from(value));
        };
        // HubSpot reports the daily figures to private apps only, not on OAuth calls.
        if let Some((limit, remaining)) = self.daily {
            put("X-HubSpot-RateLimit-Daily", limit);
            put("X-HubSpot-RateLimit-Daily-Remaining", remaining);
        }
        put("X-HubSpot-RateLimit-Interval-Milliseconds", 10_000);
        put("X-HubSpot-RateLimit-Max", self.max);
        put("X-HubSpot-RateLimit-Remaining", self.remaining);
    }
}

fn prune(calls: &mut VecDeque<Instant>, window: Duration, now: Instant) {
    while calls
        .front()
        .is_some_and(|&at| now.duration_since(at) >= window)
    {
        calls.pop_front();
    }
}

/// Counts one non-search call, or refuses it with HubSpot's 429 body.
pub(crate) fn admit(
    options: &HubspotOptions,
    counters: &mut Counters,
    caller: Caller,
    now: Millis,
) -> Result<RateHeaders, Refusal> {
    let wall = Instant::now();
    let daily_limit = options.daily_limit;
    let used_today = counters.daily_used(now);
    let (calls, max) = match caller {
        Caller::PrivateApp => (
            &mut counters.private_app_calls,
            options.burst_per_ten_seconds,
        ),
        Caller::OAuth => (&mut counters.oauth_calls, OAUTH_BURST),
    };
    prune(calls, BURST_WINDOW, wall);
    let in_window = calls.len() as u64;
    let daily_shown =
        |remaining: u64| (caller == Caller::PrivateApp).then_some((daily_limit, remaining));
    if used_today >= daily_limit {
        let mut refused = too_many("You have reached your daily limit.", "DAILY", options);
        RateHeaders {
            daily: daily_shown(0),
            max,
            remaining: max.saturating_sub(in_window),
        }
        .stamp(&mut refused);
        return Err(refused.into());
    }
    if in_window >= max {
        let mut refused = too_many(
            "You have reached your ten_secondly_rolling limit.",
            "TEN_SECONDLY_ROLLING",
            options,
        );
        RateHeaders {
            daily: daily_shown(daily_limit - used_today),
            max,
            remaining: 0,
        }
        .stamp(&mut refused);
        return Err(refused.into());
    }
    calls.push_back(wall);
    counters.daily_used += 1;
    Ok(RateHeaders {
        daily: daily_shown(daily_limit - counters.daily_used),
        max,
        remaining: max - in_window - 1,
    })
}

/// Counts one search call against the portal's five per second; refused ones carry no
/// rate-limit headers, as search answers never do.
pub(crate) fn admit_search(counters: &mut Counters) -> Result<(), Refusal> {
    let wall = Instant::now();
    prune(&mut counters.search_calls, SEARCH_WINDOW, wall);
    if counters.search_calls.len() >= SEARCH_PER_SECOND {
        let body = json!({
            "status": "error",
            "message": "You have reached your secondly limit.",
            "errorType": "RATE_LIMIT",
            "correlationId": correlation_id(),
        });
        return Err((StatusCode::TOO_MANY_REQUESTS, Json(body))
            .into_response()
            .into());
    }
    counters.search_calls.push_back(wall);
    Ok(())
}

/// HubSpot's 429 for a `policy` (`TEN_SECONDLY_ROLLING`, `DAILY`) with its real body.
pub(crate) fn too_many(message: &str, policy: &str, options: &HubspotOptions) -> Response {
    let group = match policy {
        "DAILY" => "publicapi:private_app-api-calls-daily",
        _ => "publicapi:private_app-api-calls-ten-secondly",
    };
    let body = json!({
        "status": "error",
        "message": message,
        "errorType": "RATE_LIMIT",
        "correlationId": correlation_id(),
        "policyName": policy,
        "groupName": format!("{group}:{}:{}", options.private_app_id, options.portal_id),
    });
    (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response()
}
