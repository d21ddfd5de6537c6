//! The emulated Salesforce org: REST API under `/services/data/vNN.N/`, OAuth under `/services/oauth2/`.
//!
//! Every authenticated REST call passes [`guard`], which does what the real org does before
//! any resource runs: an unknown API version is a 404, a missing or stale session a 401, a
//! call past the rolling 24-hour allocation a 403, and every answer that counted carries
//! `Sforce-Limit-Info: api-usage=N/M`.

mod auth;
mod bulk;
mod composite;
mod ids;
mod query;
mod records;
mod schema;
mod script;
mod sobjects;
mod soql;
mod writes;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use super::Shared;
use crate::record::Millis;

use crate::emulator::funnel::Actor;
use crate::record::DAY_MS;
use auth::Session;
use writes::Overlay;
pub use writes::ValidationRule;

/// Oldest and newest REST versions served; Salesforce answers 404 for others.
const OLDEST_VERSION: u32 = 31;
const NEWEST_VERSION: u32 = 68;

/// How the emulated org is set up.
#[derive(Debug, Clone)]
pub struct SalesforceOptions {
    /// Consumer key of the connected app pipewarden uses.
    pub client_id: String,
    /// Its consumer secret (client credentials; signs token responses).
    pub client_secret: String,
    /// A refresh token granted to that app.
    pub refresh_token: String,
    /// Issue a new refresh token on every refresh and revoke the old one.
    pub rotate_refresh_tokens: bool,
    /// PEM public key of the certificate the connected app holds for the JWT bearer grant;
    /// without one the org refuses that grant.
    pub jwt_public_key_pem: Option<String>,
    /// The user the connected app is pre-authorized for (the JWT `sub`).
    pub jwt_username: String,
    /// Inactivity after which an access token stops working (org default: 2 hours).
    pub session_timeout: Duration,
    /// Rolling 24-hour API allocation (Developer Edition: 15,000).
    pub daily_api_limit: u64,
    /// Bulk API 2.0 query jobs the org accepts in a rolling 24 hours (`DailyBulkV2QueryJobs`,
    /// 10,000); past it job creation is refused.
    pub daily_bulk_query_jobs: u64,
    /// A per-app API limit on pipewarden's connected app, which adds
    /// `per-app-api-usage=N/M(appName=…)` to `Sforce-Limit-Info`.
    pub per_app_api_limit: Option<u64>,
    /// A query on a history object matching more rows than this runs too long and answers
    /// `QUERY_TIMEOUT`, as wide history queries do on big orgs.
    pub query_timeout_rows: u64,
    /// The org's validation rules, enforced on client writes.
    pub validation_rules: Vec<ValidationRule>,
    /// The org's active lead assignment rule: the queue (by name, one of "Unassigned Leads",
    /// "Nurture", "Recycled Leads") it assigns leads to. API writes run it only when they
    /// carry `Sforce-Auto-Assign: TRUE`; `None` is an org without an active rule.
    pub lead_assignment_queue: Option<String>,
}

impl Default for SalesforceOptions {
    /// Matches the credentials in `config/demo-credentials/`.
    fn default() -> Self {
        SalesforceOptions {
            client_id: "pipewarden-demo".to_string(),
            client_secret: "emulator-demo-client-secret".to_string(),
            refresh_token: "emulator-demo-refresh-token".to_string(),
            rotate_refresh_tokens: false,
            jwt_public_key_pem: None,
            jwt_username: records::INTEGRATION_USERNAME.to_string(),
            session_timeout: Duration::from_secs(2 * 3600),
            daily_api_limit: 15_000,
            daily_bulk_query_jobs: 10_000,
            per_app_api_limit: None,
            query_timeout_rows: 500_000,
            validation_rules: vec![ValidationRule::loss_reason_required()],
            lead_assignment_queue: None,
        }
    }
}

/// The org's mutable state: sessions, refresh tokens, API usage.
pub(crate) struct OrgState {
    pub options: SalesforceOptions,
    pub seed: u64,
    pub org_id: &'static str,
    /// The integration user every session runs as.
    pub user_id: String,
    inner: Mutex<OrgInner>,
    cursors: Mutex<query::Cursors>,
    jobs: Mutex<bulk::Jobs>,
    /// Client writes; queries hold a read lock, a write request the write lock throughout.
    overlay: RwLock<Overlay>,
}

#[derive(Default)]
struct OrgInner {
    sessions: HashMap<String, Session>,
    refresh_tokens: HashSet<String>,
    tokens_issued: u64,
    /// Times of the calls inside the rolling 24-hour window, oldest first.
    calls: VecDeque<Millis>,
}

impl OrgState {
    pub fn new(seed: u64, options: SalesforceOptions) -> OrgState {
        let inner = OrgInner {
            refresh_tokens: HashSet::from([options.refresh_token.clone()]),
            ..OrgInner::default()
        };
        OrgState {
            options,
            seed,
            org_id: "00D5e000000PwEmEAK",
            user_id: records::user_id(Actor::Integration),
            inner: Mutex::new(inner),
            cursors: Mutex::default(),
            jobs: Mutex::default(),
            overlay: RwLock::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, OrgInner> {
        // A handler that panicked mid-update leaves plain data behind; keep serving it.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Client writes, for reading.
    fn overlay(&self) -> RwLockReadGuard<'_, Overlay> {
        self.overlay
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Client writes, for one write request.
    fn overlay_mut(&self) -> RwLockWriteGuard<'_, Overlay> {
        self.overlay
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Ends every session at once (the fault "token expired in the middle of paging").
    pub fn expire_sessions(&self) -> usize {
        let mut inner = self.lock();
        let ended = inner.sessions.len();
        inner.sessions.clear();
        ended
    }

    /// Sets how many calls the rolling window holds, all made now (to reach the limit quickly).
    /// Usage past the limit answers exactly as usage at it, so it is held at the limit rather
    /// than allocated call by call.
    pub fn set_api_usage(&self, used: u64, now: Millis) {
        let held = used.min(self.options.daily_api_limit);
        let mut inner = self.lock();
        inner.calls =
            std::iter::repeat_n(now, usize::try_from(held).unwrap_or(usize::MAX)).collect();
    }

    /// Calls used in the window ending now.
    fn usage(inner: &mut OrgInner, now: Millis) -> u64 {
        while inner.calls.front().is_some_and(|&at| at <= now - DAY_MS) {
            inner.calls.pop_front();
        }
        inner.calls.len() as u64
    }

    pub fn api_usage(&self, now: Millis) -> u64 {
        Self::usage(&mut self.lock(), now)
    }
}

/// A record-level error as single-record calls return it: `[{message, errorCode, fields}]`.
pub(crate) fn record_error(err: &writes::RecordError) -> Response {
    let status = StatusCode::from_u16(err.status).unwrap_or(StatusCode::BAD_REQUEST);
    (
        status,
        Json(json!([{ "message": err.message, "errorCode": err.code, "fields": err.fields }])),
    )
        .into_response()
}

/// Salesforce's error envelope: a JSON array of `{message, errorCode}`.
pub(crate) fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!([{ "message": message, "errorCode": code }])),
    )
        .into_response()
}

pub(crate) fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        "The requested resource does not exist",
    )
}

/// The Salesforce part of the control API (scripted changes, ground truth).
pub(crate) fn control_routes() -> Router<Arc<Shared>> {
    script::routes().merge(bulk::control_routes())
}

pub(crate) fn routes(shared: Arc<Shared>) -> Router<Arc<Shared>> {
    // Salesforce clients use both `limits` and `limits/`; both forms are served.
    let rest = Router::new()
        .route("/services/data/{version}", get(resources))
        .route("/services/data/{version}/", get(resources))
        .route("/services/data/{version}/limits", get(limits))
        .route("/services/data/{version}/limits/", get(limits))
        .route(
            "/services/data/{version}/sobjects",
            get(sobjects::global_describe),
        )
        .route(
            "/services/data/{version}/sobjects/",
            get(sobjects::global_describe),
        )
        .route(
            "/services/data/{version}/sobjects/{name}/describe",
            get(sobjects::describe),
        )
        .route(
            "/services/data/{version}/sobjects/{name}/describe/",
            get(sobjects::describe),
        )
        .route(
            "/services/data/{version}/sobjects/{name}/updated",
            get(sobjects::updated),
        )
        .route(
            "/services/data/{version}/sobjects/{name}/updated/",
            get(sobjects::updated),
        )
        .route(
            "/services/data/{version}/sobjects/{name}/deleted",
            get(sobjects::deleted),
        )
        .route(
            "/services/data/{version}/sobjects/{name}/deleted/",
            get(sobjects::deleted),
        )
        .route(
            "/services/data/{version}/sobjects/{name}",
            post(sobjects::create),
        )
        .route(
            "/services/data/{version}/sobjects/{name}/",
            post(sobjects::create),
        )
        .route(
            "/services/data/{version}/sobjects/{name}/{id}",
            get(sobjects::read)
                .patch(sobjects::update)
                .delete(sobjects::delete),
        )
        .route(
            "/services/data/{version}/composite/sobjects",
            post(composite::create_collection)
                .patch(composite::update_collection)
                .delete(composite::delete_collection),
        )
        .route(
            "/services/data/{version}/composite",
            post(composite::composite),
        )
        .route(
            "/services/data/{version}/composite/",
            post(composite::composite),
        )
        .route(
            "/services/data/{version}/jobs/query",
            post(bulk::create).get(bulk::list),
        )
        .route(
            "/services/data/{version}/jobs/query/{id}",
            get(bulk::status).patch(bulk::abort).delete(bulk::delete),
        )
        .route(
            "/services/data/{version}/jobs/query/{id}/results",
            get(bulk::results),
        )
        .route("/services/data/{version}/query", get(query::query))
        .route("/services/data/{version}/query/", get(query::query))
        .route("/services/data/{version}/queryAll", get(query::query_all))
        .route("/services/data/{version}/queryAll/", get(query::query_all))
        .route(
            "/services/data/{version}/query/{locator}",
            get(query::query_more),
        )
        .route(
            "/services/data/{version}/queryAll/{locator}",
            get(query::query_more),
        )
        .route(
            "/services/data/{version}/{*resource}",
            any(|| async { not_found() }),
        )
        .route_layer(middleware::from_fn_with_state(shared, guard));
    Router::new()
        .route("/services/oauth2/token", post(auth::token))
        .route("/services/data", get(versions))
        .route("/services/data/", get(versions))
        .merge(rest)
}

/// The version segment of a REST path (`v62.0`), if it is one the org serves.
fn served_version(path: &str) -> Option<&str> {
    let segment = path.strip_prefix("/services/data/")?.split('/').next()?;
    let major: u32 = segment
        .strip_prefix('v')?
        .strip_suffix(".0")?
        .parse()
        .ok()?;
    (OLDEST_VERSION..=NEWEST_VERSION)
        .contains(&major)
        .then_some(segment)
}

/// Checks version, session and allocation for one REST call, then stamps the usage header.
async fn guard(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    if served_version(request.uri().path()).is_none() {
        return not_found();
    }
    let org = &shared.salesforce;
    let now = shared.clock.now_ms();
    let session = match auth::check_session(org, request.headers(), now) {
        Ok(session) => session,
        Err(refused) => return refused.into_response(),
    };
    let mut request = request;
    request.extensions_mut().insert(session);
    let used = {
        let mut inner = org.lock();
        let used = OrgState::usage(&mut inner, now);
        if used >= org.options.daily_api_limit {
            return error(
                StatusCode::FORBIDDEN,
                "REQUEST_LIMIT_EXCEEDED",
                "TotalRequests Limit exceeded.",
            );
        }
        inner.calls.push_back(now);
        used + 1
    };
    let mut response = next.run(request).await;
    let header = limit_info(&org.options, used);
    if let Ok(value) = HeaderValue::from_str(&header) {
        response.headers_mut().insert("Sforce-Limit-Info", value);
    }
    response
}

/// `Sforce-Limit-Info`: `api-usage=N/M`, plus the connected app's own share when the org set a
/// per-app limit. Only then: some clients parse the header with an anchored pattern that the
/// longer form breaks, so both forms need testing.
fn limit_info(options: &SalesforceOptions, used: u64) -> String {
    let org_wide = format!("api-usage={used}/{}", options.daily_api_limit);
    match options.per_app_api_limit {
        // pipewarden's connected app is the only client, so its share is every call.
        Some(limit) => format!(
            "{org_wide}; per-app-api-usage={used}/{limit}(appName={})",
            options.client_id
        ),
        None => org_wide,
    }
}

/// Release names cycle Winter, Spring, Summer; v59.0 was Winter '24.
fn release_label(major: u32) -> String {
    let index = i64::from(major) - 59;
    let season = ["Winter", "Spring", "Summer"][index.rem_euclid(3) as usize];
    format!("{season} '{:02}", 24 + index.div_euclid(3))
}

async fn versions() -> Json<Value> {
    let list: Vec<Value> = (OLDEST_VERSION..=NEWEST_VERSION)
        .map(|major| {
            json!({
                "label": release_label(major),
                "url": format!("/services/data/v{major}.0"),
                "version": format!("{major}.0"),
            })
        })
        .collect();
    Json(Value::Array(list))
}

async fn resources(uri: Uri) -> Response {
    let Some(version) = served_version(uri.path()) else {
        return not_found();
    };
    let resources: serde_json::Map<String, Value> = ["limits", "query", "queryAll", "sobjects"]
        .iter()
        .map(|name| {
            (
                (*name).to_string(),
                json!(format!("/services/data/{version}/{name}")),
            )
        })
        .collect();
    Json(Value::Object(resources)).into_response()
}

async fn limits(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let org = &shared.salesforce;
    let max = org.options.daily_api_limit;
    let now = shared.clock.now_ms();
    let used = org.api_usage(now);
    Json(json!({
        "DailyApiRequests": { "Max": max, "Remaining": max.saturating_sub(used) },
        // Bulk API (1.0) batches and ingest jobs count here; tap-salesforce reads it. This org
        // serves only Bulk API 2.0 query jobs, which count against DailyBulkV2QueryJobs.
        "DailyBulkApiBatches": { "Max": 15_000, "Remaining": 15_000 },
        "DailyBulkV2QueryJobs": {
            "Max": org.options.daily_bulk_query_jobs,
            "Remaining": org.options.daily_bulk_query_jobs.saturating_sub(bulk::jobs_since(&org.jobs, now - DAY_MS)),
        },
    }))
}
