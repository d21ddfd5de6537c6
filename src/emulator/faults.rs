//! Fault injection: server errors, slow answers, dropped connections, truncated bodies, limit
//! errors and expired sessions, on chosen requests of either CRM.
//!
//! Faults are rules set through the control API. Each rule picks requests by CRM and path and
//! fires by probability (drawn from a seeded stream, so a seed replays the same faults), on
//! every n-th match, or on the next n matches. The first rule that fires decides the answer.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::Shared;

/// What a fault does to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// 500 with the CRM's internal-error body.
    ServerError,
    /// 502 from the edge proxy (an HTML page, as gateways send).
    BadGateway,
    /// 503 service unavailable.
    Unavailable,
    /// The answer comes after `delay_ms`; past a client's timeout this is a timeout.
    Slow,
    /// The request is carried out at once, but its answer comes only after `delay_ms`: a
    /// client that gives up or dies meanwhile never learns that its write was applied.
    SlowAnswer,
    /// The connection drops after the headers, before any body.
    Reset,
    /// The real answer with its JSON cut in half.
    TruncatedJson,
    /// The CRM's rate-limit refusal: HubSpot 429 (ten-secondly), Salesforce 403
    /// `REQUEST_LIMIT_EXCEEDED`.
    RateLimited,
    /// Salesforce's 403 for too many concurrent long requests (`ConcurrentPerOrgLongTxn`); on
    /// HubSpot paths, its burst 429.
    ConcurrentLimit,
    /// Every session of the request's CRM (Salesforce sessions, HubSpot OAuth tokens) ends just
    /// before the request, which then meets a 401: the token expiring in the middle of paging.
    ExpireSession,
}

/// Which CRM a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultTarget {
    /// Both.
    #[default]
    Any,
    /// Paths under `/services/`.
    Salesforce,
    /// Paths under `/crm/` and `/oauth/`.
    Hubspot,
}

/// One fault rule, as the control API takes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRule {
    /// What happens.
    pub kind: FaultKind,
    /// Which CRM.
    #[serde(default)]
    pub target: FaultTarget,
    /// Only requests whose path contains this.
    #[serde(default)]
    pub path_contains: Option<String>,
    /// Fire on each matching request with this probability.
    #[serde(default)]
    pub probability: Option<f64>,
    /// Fire on every n-th matching request.
    #[serde(default)]
    pub every: Option<u64>,
    /// Fire on the next n matching requests, then retire.
    #[serde(default)]
    pub next: Option<u64>,
    /// Delay of `slow` faults, milliseconds of real time.
    #[serde(default)]
    pub delay_ms: Option<u64>,
    /// Requests this rule matched so far.
    #[serde(default)]
    pub matched: u64,
    /// Requests it fired on so far.
    #[serde(default)]
    pub fired: u64,
}

impl FaultRule {
    fn applies_to(&self, path: &str) -> bool {
        let crm_matches = match self.target {
            FaultTarget::Any => path.starts_with("/services/") || is_hubspot(path),
            FaultTarget::Salesforce => path.starts_with("/services/"),
            FaultTarget::Hubspot => is_hubspot(path),
        };
        crm_matches
            && self
                .path_contains
                .as_deref()
                .is_none_or(|needle| path.contains(needle))
    }

    /// Counts a matching request and says whether the rule fires on it.
    fn fires(&mut self, rng: &mut Pcg64Mcg) -> bool {
        self.matched += 1;
        let fire = if let Some(remaining) = self.next {
            remaining > self.fired
        } else if let Some(every) = self.every {
            every > 0 && self.matched.is_multiple_of(every)
        } else {
            rng.random_bool(self.probability.unwrap_or(1.0).clamp(0.0, 1.0))
        };
        if fire {
            self.fired += 1;
        }
        fire
    }
}

fn is_hubspot(path: &str) -> bool {
    path.starts_with("/crm/") || path.starts_with("/oauth/")
}

/// The rules in force and the random stream they draw from.
pub(crate) struct Faults {
    inner: Mutex<(Vec<FaultRule>, Pcg64Mcg)>,
}

impl Faults {
    /// No faults; probabilities will draw from a stream seeded by `seed`.
    pub fn new(seed: u64) -> Faults {
        Faults {
            inner: Mutex::new((Vec::new(), Pcg64Mcg::seed_from_u64(seed ^ 0xFA17))),
        }
    }

    fn lock(&self) -> MutexGuard<'_, (Vec<FaultRule>, Pcg64Mcg)> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Replaces every rule.
    pub fn set(&self, rules: Vec<FaultRule>) {
        self.lock().0 = rules;
    }

    /// The rules with their counters.
    pub fn rules(&self) -> Vec<FaultRule> {
        self.lock().0.clone()
    }

    /// The fault to inject into a request on `path`, if a rule fires.
    fn pick(&self, path: &str) -> Option<FaultRule> {
        let mut guard = self.lock();
        let (rules, rng) = &mut *guard;
        rules
            .iter_mut()
            .filter(|rule| rule.applies_to(path))
            .find_map(|rule| rule.fires(rng).then(|| rule.clone()))
    }
}

/// Middleware in front of both CRMs: injects the fault a rule picks, or passes the request on.
pub(crate) async fn inject(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path().to_string();
    let Some(rule) = shared.faults.pick(&path) else {
        return next.run(request).await;
    };
    tracing::debug!(?rule.kind, path, "injecting a fault");
    let salesforce = path.starts_with("/services/");
    match rule.kind {
        FaultKind::ServerError => server_error(salesforce),
        FaultKind::BadGateway => bad_gateway(),
        FaultKind::Unavailable => unavailable(salesforce),
        FaultKind::Slow => {
            tokio::time::sleep(Duration::from_millis(rule.delay_ms.unwrap_or(30_000))).await;
            next.run(request).await
        }
        FaultKind::SlowAnswer => {
            let answer = next.run(request).await;
            tokio::time::sleep(Duration::from_millis(rule.delay_ms.unwrap_or(30_000))).await;
            answer
        }
        FaultKind::Reset => reset(),
        FaultKind::TruncatedJson => truncate(next.run(request).await).await,
        FaultKind::RateLimited => rate_limited(&shared, salesforce),
        // HubSpot has no concurrency limit of its own; its nearest answer is the burst 429.
        FaultKind::ConcurrentLimit if !salesforce => rate_limited(&shared, false),
        FaultKind::ConcurrentLimit => super::salesforce::error(
            StatusCode::FORBIDDEN,
            "REQUEST_LIMIT_EXCEEDED",
            "ConcurrentPerOrgLongTxn Limit exceeded.",
        ),
        FaultKind::ExpireSession => {
            if salesforce {
                shared.salesforce.expire_sessions();
            } else {
                shared.hubspot.expire_tokens(shared.clock.now_ms());
            }
            next.run(request).await
        }
    }
}

fn server_error(salesforce: bool) -> Response {
    if salesforce {
        return super::salesforce::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "UNKNOWN_EXCEPTION",
            "An unexpected error occurred. Please include this ErrorId if you contact support: 1416052411-94512 (-1257362823)",
        );
    }
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(json!({
            "status": "error",
            "message": "internal error",
            "correlationId": "5e0c8f1a-0000-4000-8000-000000000500",
            "category": "INTERNAL_ERROR",
        })),
    )
        .into_response()
}

fn bad_gateway() -> Response {
    (
        StatusCode::BAD_GATEWAY,
        [(header::CONTENT_TYPE, "text/html")],
        "<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center></body></html>",
    )
        .into_response()
}

fn unavailable(salesforce: bool) -> Response {
    if salesforce {
        return super::salesforce::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "SERVER_UNAVAILABLE",
            "Server is unavailable. Please try again later.",
        );
    }
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({
            "status": "error",
            "message": "Service Unavailable",
            "correlationId": "5e0c8f1a-0000-4000-8000-000000000503",
            "category": "SERVICE_UNAVAILABLE",
        })),
    )
        .into_response()
}

fn rate_limited(shared: &Shared, salesforce: bool) -> Response {
    if salesforce {
        return super::salesforce::error(
            StatusCode::FORBIDDEN,
            "REQUEST_LIMIT_EXCEEDED",
            "TotalRequests Limit exceeded.",
        );
    }
    let mut response = super::hubspot::too_many(
        "You have reached your ten_secondly_rolling limit.",
        "TEN_SECONDLY_ROLLING",
        &shared.hubspot.options,
    );
    response.headers_mut().insert(
        "X-HubSpot-RateLimit-Interval-Milliseconds",
        HeaderValue::from_static("10000"),
    );
    response
}

/// Headers of a successful answer, then the connection drops.
fn reset() -> Response {
    let failing = failing_body();
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(failing)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// A body whose first read fails, which makes the server abort the connection.
fn failing_body() -> Body {
    let failure: Result<Bytes, std::io::Error> = Err(std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        "injected connection reset",
    ));
    Body::from_stream(futures_util::stream::iter([failure]))
}

/// The real answer's status and headers with the first half of its body.
async fn truncate(response: Response) -> Response {
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return reset();
    };
    let half = bytes.slice(..bytes.len() / 2);
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(half))
}
