//! The emulated HubSpot portal: CRM objects, search, pipelines, owners, lists and OAuth.
//!
//! Every CRM call passes [`guard`], which does what HubSpot's edge does before a resource
//! runs: an over-long URL is a 414, a missing, unknown or expired token a 401, and a call past
//! the ten-second burst or the daily limit a 429; answers that counted carry the
//! `X-HubSpot-RateLimit-*` headers (search answers carry none and have their own limit).
//!
//! Records are a pure function of (funnel, record number, simulated now), as on the
//! Salesforce side; the only stored data are the changes clients make (an overlay of
//! time-stamped property writes and archive times), list memberships and tasks.

mod auth;
mod control;
mod limits;
pub(crate) use limits::too_many;
mod lists;
mod metadata;
mod objects;
mod records;
mod schema;
mod search;
mod tasks;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::timefmt::Civil;
use super::Shared;
use crate::record::Millis;

/// How the emulated portal is set up.
#[derive(Debug, Clone)]
pub struct HubspotOptions {
    /// The private-app token pipewarden's demo configuration uses.
    pub private_app_token: String,
    /// Id of that private app: the `sourceId` of the changes it makes.
    pub private_app_id: u64,
    /// Client id of the public OAuth app pipewarden can also connect as.
    pub client_id: String,
    /// That app's client secret.
    pub client_secret: String,
    /// A refresh token the portal granted that app.
    pub refresh_token: String,
    /// Issue a new refresh token on every refresh and revoke the presented one.
    pub rotate_refresh_tokens: bool,
    /// Lifetime of OAuth access tokens on the simulated clock (HubSpot: 30 minutes).
    pub access_token_lifetime: Duration,
    /// Private-app calls allowed per rolling ten seconds (tier burst limit).
    pub burst_per_ten_seconds: u64,
    /// Calls allowed per portal per day (tier daily limit).
    pub daily_limit: u64,
    /// Records modified this recently (simulated time) are not yet visible to search.
    pub search_index_lag: Duration,
    /// Requests whose path and query are longer than this get 414 URI Too Long.
    pub max_url_chars: usize,
    /// The portal (hub) id.
    pub portal_id: u64,
}

/// Private-app limits of the Free and Starter tiers: (burst per 10 s, daily).
const STARTER_LIMITS: (u64, u64) = (100, 250_000);
/// Professional tier.
const PROFESSIONAL_LIMITS: (u64, u64) = (190, 650_000);
/// Enterprise tier.
const ENTERPRISE_LIMITS: (u64, u64) = (190, 1_000_000);
/// Burst with the API limit increase pack (packs do not stack on burst).
const LIMIT_PACK_BURST: u64 = 250;
/// Daily calls each limit increase pack adds.
const LIMIT_PACK_DAILY: u64 = 1_000_000;
/// Packs a portal may buy.
const MAX_LIMIT_PACKS: u32 = 2;

impl Default for HubspotOptions {
    /// Matches the token in `config/demo-credentials/`; limits of a Free/Starter portal.
    fn default() -> Self {
        HubspotOptions {
            private_app_token: "pat-na1-emulator-demo-token".to_string(),
            private_app_id: 3_141_592,
            client_id: "5f1c2a8e-emulator-demo-client".to_string(),
            client_secret: "emulator-demo-hubspot-client-secret".to_string(),
            refresh_token: "6f18f26a-0b1c-4d2e-9f3a-emulator0demo".to_string(),
            rotate_refresh_tokens: false,
            access_token_lifetime: Duration::from_secs(30 * 60),
            burst_per_ten_seconds: STARTER_LIMITS.0,
            daily_limit: STARTER_LIMITS.1,
            search_index_lag: Duration::from_secs(10),
            max_url_chars: 16_000,
            portal_id: 26_892_217,
        }
    }
}

impl HubspotOptions {
    /// The limits of a Professional portal.
    pub fn professional(self) -> Self {
        self.with_limits(PROFESSIONAL_LIMITS)
    }

    /// The limits of an Enterprise portal.
    pub fn enterprise(self) -> Self {
        self.with_limits(ENTERPRISE_LIMITS)
    }

    /// Adds API limit increase packs (at most two): burst 250, a million more calls a day each.
    pub fn with_limit_increase_packs(mut self, packs: u32) -> Self {
        let packs = packs.min(MAX_LIMIT_PACKS);
        if packs > 0 {
            self.burst_per_ten_seconds = LIMIT_PACK_BURST;
            self.daily_limit += u64::from(packs) * LIMIT_PACK_DAILY;
        }
        self
    }

    fn with_limits(mut self, (burst, daily): (u64, u64)) -> Self {
        self.burst_per_ten_seconds = burst;
        self.daily_limit = daily;
        self
    }
}

/// The portal's mutable state.
pub(crate) struct PortalState {
    pub options: HubspotOptions,
    pub seed: u64,
    inner: Mutex<PortalInner>,
}

/// What clients changed, and the credentials and counters of the portal.
#[derive(Default)]
pub(crate) struct PortalInner {
    /// OAuth access tokens and when they expire (simulated ms).
    pub access_tokens: HashMap<String, Millis>,
    pub refresh_tokens: HashSet<String>,
    pub tokens_issued: u64,
    pub overlays: records::Overlays,
    /// Bumped whenever client writes or archives reach `overlays`, so that what was worked
    /// out from them (search's ranked hits) can tell it is out of date.
    pub overlays_version: u64,
    /// Ranked hits of recent searches, so paging through one does not rank every record again.
    pub search_cache: search::RankedCache,
    /// List id → member record number → when it was added.
    pub memberships: HashMap<u64, BTreeMap<u64, Millis>>,
    pub limits: limits::Counters,
    /// Set through the control API; the option's value until then.
    pub search_index_lag_ms: Option<Millis>,
    /// Tasks clients created.
    pub tasks: tasks::Tasks,
}

impl PortalState {
    /// Ends every OAuth access token now (the fault "token expired in the middle of paging").
    pub fn expire_tokens(&self, now: Millis) -> usize {
        auth::expire_all(self, now)
    }

    pub fn new(seed: u64, options: HubspotOptions) -> PortalState {
        let inner = PortalInner {
            refresh_tokens: HashSet::from([options.refresh_token.clone()]),
            ..PortalInner::default()
        };
        PortalState {
            options,
            seed,
            inner: Mutex::new(inner),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, PortalInner> {
        // A handler that panicked mid-update leaves plain data behind; keep serving it.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn search_index_lag_ms(&self, inner: &PortalInner) -> Millis {
        inner.search_index_lag_ms.unwrap_or_else(|| {
            i64::try_from(self.options.search_index_lag.as_millis()).unwrap_or(i64::MAX)
        })
    }
}

/// A fresh id in the UUID shape HubSpot gives every answer, so clients can quote it.
pub(crate) fn correlation_id() -> String {
    static ISSUED: AtomicU64 = AtomicU64::new(0);
    let n = ISSUED.fetch_add(1, Ordering::Relaxed);
    let digest = Sha256::digest(format!("hubspot-correlation:{n}"));
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-4{}-a{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        &hex[17..20],
        &hex[20..32]
    )
}

/// HubSpot's error body: `{status, message, correlationId, category}`.
pub(crate) fn error(status: StatusCode, category: &str, message: &str) -> Response {
    error_with(status, category, message, None)
}

/// The error body with extra keys (`context`, `errors`) merged in.
pub(crate) fn error_with(
    status: StatusCode,
    category: &str,
    message: &str,
    extra: Option<Value>,
) -> Response {
    let mut body = json!({
        "status": "error",
        "message": message,
        "correlationId": correlation_id(),
        "category": category,
    });
    if let (Some(Value::Object(extra)), Value::Object(map)) = (extra, &mut body) {
        map.extend(extra);
    }
    (status, Json(body)).into_response()
}

/// A refused request, boxed: a whole `Response` is too large to pass around in `Err`.
pub(crate) struct Refusal(Box<Response>);

impl From<Response> for Refusal {
    fn from(response: Response) -> Refusal {
        Refusal(Box::new(response))
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        *self.0
    }
}

pub(crate) fn validation_error(message: &str) -> Response {
    error(StatusCode::BAD_REQUEST, "VALIDATION_ERROR", message)
}

/// Epoch ms as HubSpot writes instants: UTC with `Z`, milliseconds only when non-zero.
pub(crate) fn iso(ms: Millis) -> String {
    let Some(at) = chrono::DateTime::from_timestamp_millis(ms) else {
        return String::new();
    };
    let Some(civil) = Civil::of(&at) else {
        let format = if ms.rem_euclid(1000) == 0 {
            chrono::SecondsFormat::Secs
        } else {
            chrono::SecondsFormat::Millis
        };
        return at.to_rfc3339_opts(format, true);
    };
    let mut text = String::with_capacity(24);
    civil.push_date_time(&mut text);
    if !civil.whole_second() {
        civil.push_millis(&mut text);
    }
    text.push('Z');
    text
}

pub(crate) fn routes(shared: Arc<Shared>) -> Router<Arc<Shared>> {
    let api = objects::routes()
        .merge(search::routes())
        .merge(metadata::routes())
        .merge(lists::routes())
        .merge(tasks::routes())
        .route_layer(middleware::from_fn_with_state(shared, guard));
    Router::new()
        .merge(auth::routes())
        .merge(api)
        .merge(control::routes())
}

/// URL length, token and limits for one CRM call, then the rate-limit headers.
async fn guard(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let portal = &shared.hubspot;
    let url_chars = request
        .uri()
        .path_and_query()
        .map_or(0, |pq| pq.as_str().len());
    if url_chars > portal.options.max_url_chars {
        return (StatusCode::URI_TOO_LONG, "414 Request-URI Too Large").into_response();
    }
    let now = shared.clock.now_ms();
    let caller = match auth::check_token(portal, request.headers(), now) {
        Ok(caller) => caller,
        Err(refused) => return refused.into_response(),
    };
    let is_search = request.uri().path().ends_with("/search");
    let admitted = {
        let mut inner = portal.lock();
        if is_search {
            limits::admit_search(&mut inner.limits).map(|()| None)
        } else {
            limits::admit(&portal.options, &mut inner.limits, caller, now).map(Some)
        }
    };
    let mut request = request;
    request.extensions_mut().insert(caller);
    match admitted {
        Err(refused) => refused.into_response(),
        Ok(headers) => {
            let mut response = next.run(request).await;
            if let Some(headers) = headers {
                headers.stamp(&mut response);
            }
            stamp_correlation(&mut response);
            response
        }
    }
}

fn stamp_correlation(response: &mut Response) {
    if let Ok(value) = HeaderValue::from_str(&correlation_id()) {
        response
            .headers_mut()
            .insert("X-HubSpot-Correlation-Id", value);
    }
}
