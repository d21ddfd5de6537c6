//! The HTTP layer both connectors share: one client per connection that authenticates,
//! paces, budgets and retries every call.
//!
//! A call is retried, with exponential backoff and full jitter, when it got no usable answer:
//! a connection error or timeout, a 5xx, a 429 (after its `Retry-After`), Salesforce's
//! concurrent-long-request 403, or a 2xx whose body does not read (cut short on the way).
//! A 401 renews the token and repeats the call once. Everything else is the CRM's answer and
//! goes back to the connector as [`CrmError::Api`], with the CRM's error code. A client told
//! to stop on a signal abandons what it is waiting for when the signal fires.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::sync::Semaphore;
use url::Url;

use super::limits::{header_u64, Budget, BudgetUse, Pace};
use super::tokens::{
    describe_transport_error, with_trailing_slash, RefreshTokenKeeper, Token, TokenManager,
};
use super::CrmError;
use crate::config::settings::{ConnectionSettings, CrmKind, Endpoints};
use crate::record::Millis;
use crate::stop::StopSignal;

/// How often and how patiently a failed call is repeated.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// Delay ceiling of the first retry; it doubles with each further one.
    pub base_delay: Duration,
    /// The longest a single wait may be.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 8,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt `attempt + 1`: the server's `Retry-After` when it gave one,
    /// otherwise a random share of an exponentially growing ceiling (full jitter), so that
    /// clients that failed together do not come back together.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(wait) = retry_after {
            return wait.min(self.max_delay);
        }
        let ceiling = self
            .base_delay
            .saturating_mul(1 << attempt.saturating_sub(1).min(16))
            .min(self.max_delay);
        let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rand::rng().random_range(millis / 2..=millis.max(1)))
    }
}

/// One request to make: where, with what.
#[derive(Debug, Clone)]
pub struct ApiRequest {
    /// HTTP method.
    pub method: Method,
    /// Path (and query) relative to the API base, e.g. `/services/data/v62.0/query?q=…`.
    pub path: String,
    /// Query parameters to add.
    pub query: Vec<(String, String)>,
    /// JSON body.
    pub json: Option<Value>,
    /// Extra headers.
    pub headers: Vec<(&'static str, String)>,
    /// Whether the request only reads, so that abandoning it once sent changes nothing in the
    /// CRM (see [`ApiClient::stop_on`]): every GET, and POSTs marked [`ApiRequest::reads_only`].
    pub reads_only: bool,
}

impl ApiRequest {
    /// A GET of `path`.
    pub fn get(path: impl Into<String>) -> ApiRequest {
        ApiRequest {
            method: Method::GET,
            path: path.into(),
            query: Vec::new(),
            json: None,
            headers: Vec::new(),
            reads_only: true,
        }
    }

    /// A request with a JSON body; taken to change something unless marked
    /// [`ApiRequest::reads_only`].
    pub fn with_json(method: Method, path: impl Into<String>, body: Value) -> ApiRequest {
        ApiRequest {
            json: Some(body),
            method,
            reads_only: false,
            ..ApiRequest::get(path)
        }
    }

    /// Marks a request with a body as one that only reads (a search, a batch read).
    pub fn reads_only(mut self) -> ApiRequest {
        self.reads_only = true;
        self
    }

    /// Adds a query parameter.
    pub fn param(mut self, name: &str, value: impl Into<String>) -> ApiRequest {
        self.query.push((name.to_string(), value.into()));
        self
    }

    /// Adds a header.
    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> ApiRequest {
        self.headers.push((name, value.into()));
        self
    }

    /// `METHOD /path` without the query, for errors and logs.
    pub fn describe(&self) -> String {
        let path = self.path.split('?').next().unwrap_or_default();
        format!("{} {path}", self.method)
    }
}

/// A successful answer, read.
#[derive(Debug)]
pub struct Reply<T> {
    /// What the reader made of the body.
    pub value: T,
    /// Response headers.
    pub headers: HeaderMap,
    /// The CRM's clock when it answered (`Date`), in epoch milliseconds.
    pub server_time: Option<Millis>,
    /// Which token the call carried; Salesforce query locators belong to one.
    pub token_generation: u64,
}

/// Counters of one connection's calls since it was opened.
#[derive(Debug, Default)]
struct ApiCounters {
    calls: AtomicU64,
    retries: AtomicU64,
    rate_limited: AtomicU64,
    failures: AtomicU64,
}

/// A reading of [`ApiCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApiStats {
    /// HTTP calls made to the API (token requests excluded).
    pub calls: u64,
    /// Calls repeated after a transient failure.
    pub retries: u64,
    /// 429 answers met.
    pub rate_limited: u64,
    /// Calls that got no usable answer (each retry counts).
    pub failures: u64,
    /// Tokens obtained from the token endpoint.
    pub token_renewals: u64,
}

/// The API client of one connection.
pub struct ApiClient {
    connection: String,
    kind: CrmKind,
    http: reqwest::Client,
    base_url: Option<Url>,
    tokens: TokenManager,
    pace: Pace,
    in_flight: Semaphore,
    budget: Budget,
    retry: RetryPolicy,
    counters: Arc<ApiCounters>,
    stop: StopSignal,
}

impl ApiClient {
    /// Builds the client of a configured connection (nothing is called yet).
    pub fn new(settings: &ConnectionSettings, retry: RetryPolicy) -> Result<ApiClient, CrmError> {
        let setup = |detail: String| CrmError::Setup {
            connection: settings.name.clone(),
            detail,
        };
        let mut builder = reqwest::Client::builder()
            .timeout(settings.request_timeout)
            .connect_timeout(Duration::from_secs(30))
            .user_agent(concat!("pipewarden/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &settings.extra_ca_file {
            let pem = std::fs::read(path)
                .map_err(|err| setup(format!("extra_ca_file {}: {err}", path.display())))?;
            let certificate = reqwest::Certificate::from_pem(&pem).map_err(|err| {
                setup(format!(
                    "extra_ca_file {} is not a PEM certificate: {err}",
                    path.display()
                ))
            })?;
            builder = builder.add_root_certificate(certificate);
        }
        let http = builder
            .build()
            .map_err(|err| setup(format!("cannot set up HTTP: {err}")))?;
        let base_url = match &settings.endpoints {
            Endpoints::Salesforce { instance_url, .. } => instance_url.clone(),
            Endpoints::Hubspot { api_base_url, .. } => Some(api_base_url.clone()),
        };
        Ok(ApiClient {
            connection: settings.name.clone(),
            kind: settings.kind,
            tokens: TokenManager::new(settings, http.clone(), retry)?,
            http,
            base_url,
            pace: Pace::new(&settings.limits),
            in_flight: Semaphore::new(settings.limits.max_concurrent_requests.max(1) as usize),
            budget: Budget::new(&settings.limits),
            retry,
            counters: Arc::default(),
            stop: StopSignal::never(),
        })
    }

    /// Reads and keeps the connection's rotated refresh tokens through `keeper`, so the next
    /// client, run or replica presents the newest one.
    pub fn keep_refresh_tokens(mut self, keeper: Option<Arc<dyn RefreshTokenKeeper>>) -> Self {
        if let Some(keeper) = keeper {
            self.tokens.keep_refresh_tokens(keeper);
        }
        self
    }

    /// Abandons calls when `stop` fires, with [`CrmError::Interrupted`], so a shutdown is not
    /// held up by a slow CRM: any call while it waits (pacing, a retry's backoff, the wait
    /// between token attempts), and a read (see [`ApiRequest::reads_only`]) also while in
    /// flight, since reading it again costs nothing but a call. A write once sent, and a token
    /// request, whose answer may rotate the refresh token, are awaited.
    pub fn stop_on(mut self, stop: StopSignal) -> Self {
        self.tokens.stop_on(stop.clone());
        self.stop = stop;
        self
    }

    /// The generation of the token calls carry now (obtaining one if there is none).
    pub async fn token_generation(&self) -> Result<u64, CrmError> {
        Ok(self.tokens.token().await?.generation)
    }

    /// The CRM user the session acts as, when the token response names it (Salesforce).
    pub async fn session_user_id(&self) -> Result<Option<String>, CrmError> {
        Ok(self.tokens.token().await?.user_id.clone())
    }

    /// Where API calls go: the configured base, or the token's `instance_url` (Salesforce).
    pub async fn instance_url(&self) -> Result<Option<Url>, CrmError> {
        if let Some(base) = &self.base_url {
            return Ok(Some(base.clone()));
        }
        Ok(self.tokens.token().await?.instance_url.clone())
    }

    /// Calls and allocation used so far.
    pub fn budget_use(&self) -> BudgetUse {
        self.budget.usage()
    }

    /// Counters since the client was built.
    pub fn stats(&self) -> ApiStats {
        ApiStats {
            calls: self.counters.calls.load(Ordering::Relaxed),
            retries: self.counters.retries.load(Ordering::Relaxed),
            rate_limited: self.counters.rate_limited.load(Ordering::Relaxed),
            failures: self.counters.failures.load(Ordering::Relaxed),
            token_renewals: self.tokens.renewals(),
        }
    }

    /// Makes the call, retrying as the module describes, and reads a 2xx body with `read`.
    pub async fn send<T>(
        &self,
        request: &ApiRequest,
        read: impl Fn(&[u8]) -> Result<T, String>,
    ) -> Result<Reply<T>, CrmError> {
        let mut attempt = 0;
        let mut renewed = false;
        loop {
            attempt += 1;
            let failure = match self.attempt(request, &read).await? {
                Attempt::Done(reply) => return Ok(reply),
                Attempt::Unauthorized { generation, .. } if !renewed && self.tokens.renewable() => {
                    // The session ended (timeout, revocation); a new token deserves one more try.
                    self.tokens.reject(generation).await;
                    renewed = true;
                    attempt -= 1;
                    continue;
                }
                Attempt::Unauthorized { code, message, .. } => {
                    return Err(CrmError::Auth {
                        connection: self.connection.clone(),
                        code,
                        description: message,
                    })
                }
                Attempt::Transient(failure) => failure,
            };
            self.counters.failures.fetch_add(1, Ordering::Relaxed);
            if attempt >= self.retry.max_attempts {
                return Err(failure.into_error(self, request, attempt));
            }
            self.counters.retries.fetch_add(1, Ordering::Relaxed);
            let wait = self.retry.delay(attempt, failure.retry_after);
            tracing::warn!(connection = %self.connection, request = %request.describe(), attempt,
                detail = %failure.detail, wait_ms = wait.as_millis() as u64, "retrying a CRM call");
            self.unless_stopped(request, tokio::time::sleep(wait))
                .await?;
        }
    }

    async fn attempt<T>(
        &self,
        request: &ApiRequest,
        read: &impl Fn(&[u8]) -> Result<T, String>,
    ) -> Result<Attempt<T>, CrmError> {
        self.budget.take().map_err(|detail| CrmError::Budget {
            connection: self.connection.clone(),
            detail,
        })?;
        self.unless_stopped(request, self.pace.ready()).await?;
        let _permit = self
            .unless_stopped(request, self.in_flight.acquire())
            .await?
            .expect("the semaphore is never closed");
        // Not raced with a stop: a refresh token the CRM rotated must be read and kept.
        let token = self.tokens.token().await?;
        let url = self.url_for(request, &token)?;
        self.counters.calls.fetch_add(1, Ordering::Relaxed);
        let mut builder = self
            .http
            .request(request.method.clone(), url)
            .bearer_auth(token.bearer());
        for (name, value) in &request.headers {
            builder = builder.header(*name, value);
        }
        if let Some(body) = &request.json {
            builder = builder.json(body);
        }
        let response = match self.unless_abandonable(request, builder.send()).await? {
            Ok(response) => response,
            Err(err) => return Ok(Attempt::transient(describe_transport_error(&err), None)),
        };
        let status = response.status();
        let headers = response.headers().clone();
        self.budget.observe(self.kind, &headers);
        self.pace.observe(self.kind, &headers);
        let body = match self.unless_abandonable(request, response.bytes()).await? {
            Ok(body) => body,
            Err(err) => return Ok(Attempt::transient(describe_transport_error(&err), None)),
        };
        if status.is_success() {
            return Ok(match read(&body) {
                Ok(value) => Attempt::Done(Reply {
                    value,
                    server_time: server_time(&headers),
                    headers,
                    token_generation: token.generation,
                }),
                Err(detail) => Attempt::Transient(Failure {
                    detail: format!("the answer does not read (cut short?): {detail}"),
                    retry_after: None,
                    decode: true,
                }),
            });
        }
        self.judge_error(request, status, &headers, &body, token.generation)
    }

    /// Runs one step of a call unless a stop is asked for first (see [`ApiClient::stop_on`]).
    async fn unless_stopped<F: Future>(
        &self,
        request: &ApiRequest,
        step: F,
    ) -> Result<F::Output, CrmError> {
        self.stop
            .unless_stopped(step)
            .await
            .ok_or_else(|| CrmError::Interrupted {
                connection: self.connection.clone(),
                request: request.describe(),
            })
    }

    /// Runs a step of a call in flight: raced with a stop for reads only.
    async fn unless_abandonable<F: Future>(
        &self,
        request: &ApiRequest,
        step: F,
    ) -> Result<F::Output, CrmError> {
        if request.reads_only {
            self.unless_stopped(request, step).await
        } else {
            Ok(step.await)
        }
    }

    /// Sorts a non-2xx answer into retry, renew, stop or give up.
    fn judge_error<T>(
        &self,
        request: &ApiRequest,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
        generation: u64,
    ) -> Result<Attempt<T>, CrmError> {
        let error = CrmErrorBody::parse(body);
        let retry_after = retry_after(headers);
        let detail = || format!("HTTP {} {}: {}", status.as_u16(), error.code, error.message);
        match status {
            StatusCode::UNAUTHORIZED => Ok(Attempt::Unauthorized {
                generation,
                code: error.code,
                message: error.message,
            }),
            StatusCode::TOO_MANY_REQUESTS if error.code == "DAILY" => {
                Err(self.budget_error(detail()))
            }
            StatusCode::TOO_MANY_REQUESTS => {
                self.counters.rate_limited.fetch_add(1, Ordering::Relaxed);
                // HubSpot's search limit answers without headers; wait out its one-second window.
                let wait = retry_after
                    .or_else(|| {
                        header_u64(headers, "x-hubspot-ratelimit-interval-milliseconds")
                            .map(Duration::from_millis)
                    })
                    .unwrap_or(Duration::from_secs(1));
                self.pace.pause_for(wait);
                Ok(Attempt::transient(detail(), Some(wait)))
            }
            StatusCode::FORBIDDEN if error.code == "REQUEST_LIMIT_EXCEEDED" => {
                if error.message.contains("ConcurrentPerOrgLongTxn") {
                    Ok(Attempt::transient(detail(), retry_after))
                } else {
                    Err(self.budget_error(detail()))
                }
            }
            status if status.is_server_error() => Ok(Attempt::transient(detail(), retry_after)),
            _ => Err(CrmError::Api {
                connection: self.connection.clone(),
                request: request.describe(),
                status: status.as_u16(),
                code: error.code,
                message: error.message,
            }),
        }
    }

    fn budget_error(&self, detail: String) -> CrmError {
        CrmError::Budget {
            connection: self.connection.clone(),
            detail,
        }
    }

    fn url_for(&self, request: &ApiRequest, token: &Token) -> Result<Url, CrmError> {
        let base = self
            .base_url
            .as_ref()
            .or(token.instance_url.as_ref())
            .ok_or_else(|| CrmError::Decode {
                connection: self.connection.clone(),
                request: "token request".into(),
                detail: "the token response named no instance_url and none is configured".into(),
            })?;
        let mut url = with_trailing_slash(base)
            .join(request.path.trim_start_matches('/'))
            .map_err(|err| CrmError::Setup {
                connection: self.connection.clone(),
                detail: format!("cannot build a URL for {}: {err}", request.describe()),
            })?;
        if !request.query.is_empty() {
            url.query_pairs_mut().extend_pairs(&request.query);
        }
        Ok(url)
    }
}

/// What one attempt came to.
enum Attempt<T> {
    Done(Reply<T>),
    Unauthorized {
        generation: u64,
        code: String,
        message: String,
    },
    Transient(Failure),
}

impl<T> Attempt<T> {
    fn transient(detail: String, retry_after: Option<Duration>) -> Attempt<T> {
        Attempt::Transient(Failure {
            detail,
            retry_after,
            decode: false,
        })
    }
}

/// A failure worth retrying.
struct Failure {
    detail: String,
    retry_after: Option<Duration>,
    /// The CRM answered 2xx but the body did not read.
    decode: bool,
}

impl Failure {
    fn into_error(self, client: &ApiClient, request: &ApiRequest, attempts: u32) -> CrmError {
        if self.decode {
            return CrmError::Decode {
                connection: client.connection.clone(),
                request: request.describe(),
                detail: self.detail,
            };
        }
        CrmError::Unavailable {
            connection: client.connection.clone(),
            request: request.describe(),
            attempts,
            detail: self.detail,
        }
    }
}

/// The error code and message of a CRM error body, whichever CRM wrote it.
struct CrmErrorBody {
    code: String,
    message: String,
}

impl CrmErrorBody {
    /// Salesforce: `[{"message","errorCode"}]` or OAuth's `{"error","error_description"}`;
    /// HubSpot: `{"status":"error","message","category"}` with `policyName` on 429s.
    fn parse(body: &[u8]) -> CrmErrorBody {
        let text =
            |value: &Value, key: &str| value.get(key).and_then(Value::as_str).map(str::to_string);
        let parsed: Option<Value> = serde_json::from_slice(body).ok();
        let found = match &parsed {
            Some(Value::Array(items)) => items.first().and_then(|first| {
                Some(CrmErrorBody {
                    code: text(first, "errorCode")?,
                    message: text(first, "message").unwrap_or_default(),
                })
            }),
            Some(object @ Value::Object(_)) => ["policyName", "errorCode", "category", "error"]
                .iter()
                .find_map(|key| text(object, key))
                .map(|code| CrmErrorBody {
                    code,
                    message: text(object, "message")
                        .or_else(|| text(object, "error_description"))
                        .unwrap_or_default(),
                }),
            _ => None,
        };
        found.unwrap_or_else(|| CrmErrorBody {
            code: "UNKNOWN".into(),
            message: String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned(),
        })
    }
}

/// `Retry-After` in seconds.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    header_u64(headers, "retry-after").map(Duration::from_secs)
}

/// The `Date` header as epoch milliseconds.
fn server_time(headers: &HeaderMap) -> Option<Millis> {
    let text = headers.get(reqwest::header::DATE)?.to_str().ok()?;
    chrono::DateTime::parse_from_rfc2822(text)
        .ok()
        .map(|at| at.timestamp_millis())
}
