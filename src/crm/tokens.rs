//! Access tokens: obtained through the connection's OAuth flow, renewed before they expire,
//! one renewal at a time.
//!
//! Refresh-token and client-credentials grants go through the `oauth2` crate. The Salesforce
//! JWT bearer grant (RFC 7523) is not one of its grants, so its assertion is signed with
//! `jsonwebtoken` and posted here; its answer has the same shape and is read with the same
//! type. HubSpot private-app tokens never change. Salesforce names no lifetime (a session ends
//! after inactivity), so its token is renewed when the API answers 401.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use oauth2::basic::{
    BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse,
    BasicTokenType,
};
use oauth2::{
    AuthType, ClientId, ClientSecret, EndpointNotSet, EndpointSet, ExtraTokenFields, HttpRequest,
    HttpResponse, RefreshToken, RequestTokenError, StandardRevocableToken, StandardTokenResponse,
    TokenResponse, TokenUrl,
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use url::Url;

use super::http::RetryPolicy;
use super::limits::lock;
use super::CrmError;
use crate::config::settings::{AuthSettings, ConnectionSettings, Endpoints};
use crate::record::Millis;
use crate::stop::StopSignal;

/// Why a [`RefreshTokenKeeper`] could not read or keep a token.
pub type KeeperError = Box<dyn std::error::Error + Send + Sync>;

/// Keeps a connection's refresh token across runs, clients and replicas when the CRM rotates
/// it: once rotated, the configured token is refused, so whoever refreshes next must present
/// the newest one.
pub trait RefreshTokenKeeper: Send + Sync {
    /// The newest refresh token kept for the configured one, if it was ever rotated.
    fn latest(&self) -> BoxFuture<'_, Result<Option<SecretString>, KeeperError>>;
    /// Keeps the refresh token the CRM issued at `at` in place of the one presented.
    fn keep(&self, token: SecretString, at: Millis) -> BoxFuture<'_, Result<(), KeeperError>>;
}

/// Fields a token response carries beyond RFC 6749: Salesforce names the instance to call.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct CrmTokenFields {
    #[serde(default)]
    instance_url: Option<String>,
    /// Salesforce's identity URL, `…/id/{org id}/{user id}`: who the session acts as.
    #[serde(default)]
    id: Option<String>,
}

impl ExtraTokenFields for CrmTokenFields {}

type CrmTokenResponse = StandardTokenResponse<CrmTokenFields, BasicTokenType>;

type OAuthClient = oauth2::Client<
    BasicErrorResponse,
    CrmTokenResponse,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

/// How tokens are obtained for one connection.
enum Grant {
    /// A token that never changes (HubSpot private app).
    Static(SecretString),
    /// OAuth refresh-token grant; the refresh token is replaced when the CRM rotates it.
    Refresh {
        client: OAuthClient,
        refresh_token: std::sync::Mutex<SecretString>,
    },
    /// OAuth client-credentials grant.
    ClientCredentials(OAuthClient),
    /// Salesforce JWT bearer grant.
    JwtBearer {
        token_url: Url,
        client_id: String,
        username: String,
        audience: String,
        key: EncodingKey,
    },
}

/// A usable access token.
pub(crate) struct Token {
    secret: SecretString,
    /// Salesforce's `instance_url`: where API calls go.
    pub instance_url: Option<Url>,
    /// The user the session acts as (Salesforce: the identity URL's last segment).
    pub user_id: Option<String>,
    /// When to renew it ahead of its expiry, if it has one.
    renew_at: Option<Instant>,
    /// Counts tokens issued to this connection; a query locator belongs to one of them.
    pub generation: u64,
}

impl Token {
    /// The bearer value for the `Authorization` header.
    pub fn bearer(&self) -> &str {
        self.secret.expose_secret()
    }
}

/// Holds the connection's current token; at most one renewal runs at a time and the callers
/// that arrive meanwhile wait for its result instead of starting their own.
pub(crate) struct TokenManager {
    connection: String,
    grant: Grant,
    http: reqwest::Client,
    retry: RetryPolicy,
    current: Mutex<Option<Arc<Token>>>,
    generations: AtomicU64,
    renewals: AtomicU64,
    keeper: Option<Arc<dyn RefreshTokenKeeper>>,
    /// The last rotated token could not be kept: the one in hand is newer than the store's.
    unkept_rotation: AtomicBool,
    /// Ends the wait between token attempts (shutdown).
    stop: StopSignal,
}

/// Waits before looking again for a token another client kept, after a refusal.
const KEPT_TOKEN_WAITS: [Duration; 3] = [
    Duration::ZERO,
    Duration::from_millis(500),
    Duration::from_secs(2),
];

/// Renew this long before a token's stated expiry, so no request carries an expiring token.
const RENEW_MARGIN: Duration = Duration::from_secs(120);

impl TokenManager {
    /// Prepares the grant the connection's `auth` settings describe.
    pub fn new(
        settings: &ConnectionSettings,
        http: reqwest::Client,
        retry: RetryPolicy,
    ) -> Result<TokenManager, CrmError> {
        let setup = |detail: String| CrmError::Setup {
            connection: settings.name.clone(),
            detail,
        };
        let token_url = token_url(&settings.endpoints).map_err(setup)?;
        let oauth_client =
            |client_id: &str, secret: Option<&str>| -> Result<OAuthClient, CrmError> {
                let url = TokenUrl::from_url(token_url.clone());
                let client = oauth2::Client::new(ClientId::new(client_id.to_string()))
                    .set_token_uri(url)
                    // Both CRMs take the client credentials as form fields.
                    .set_auth_type(AuthType::RequestBody);
                Ok(match secret {
                    Some(secret) => client.set_client_secret(ClientSecret::new(secret.to_string())),
                    None => client,
                })
            };
        let grant = match &settings.auth {
            AuthSettings::PrivateApp { token } => Grant::Static(token.expose().into()),
            AuthSettings::RefreshToken {
                client_id,
                client_secret,
                refresh_token,
            } => Grant::Refresh {
                client: oauth_client(client_id, client_secret.as_ref().map(|s| s.expose()))?,
                refresh_token: std::sync::Mutex::new(refresh_token.expose().into()),
            },
            AuthSettings::Oauth {
                client_id,
                client_secret,
                refresh_token,
            } => Grant::Refresh {
                client: oauth_client(client_id, Some(client_secret.expose()))?,
                refresh_token: std::sync::Mutex::new(refresh_token.expose().into()),
            },
            AuthSettings::ClientCredentials {
                client_id,
                client_secret,
            } => Grant::ClientCredentials(oauth_client(client_id, Some(client_secret.expose()))?),
            AuthSettings::JwtBearer {
                client_id,
                username,
                audience,
                private_key,
            } => Grant::JwtBearer {
                token_url,
                client_id: client_id.clone(),
                username: username.clone(),
                audience: audience.clone(),
                key: EncodingKey::from_rsa_pem(private_key.expose().as_bytes()).map_err(|err| {
                    setup(format!(
                        "auth.private_key ({}) is not an RSA private key in PEM: {err}",
                        private_key.origin()
                    ))
                })?,
            },
        };
        Ok(TokenManager {
            connection: settings.name.clone(),
            grant,
            http,
            retry,
            current: Mutex::new(None),
            generations: AtomicU64::new(0),
            renewals: AtomicU64::new(0),
            keeper: None,
            unkept_rotation: AtomicBool::new(false),
            stop: StopSignal::never(),
        })
    }

    /// Gives up waiting between token attempts when `stop` fires (see `ApiClient::stop_on`);
    /// a token request already sent is still awaited, since its answer may rotate the refresh
    /// token.
    pub fn stop_on(&mut self, stop: StopSignal) {
        self.stop = stop;
    }

    /// Reads and keeps rotated refresh tokens through `keeper` from now on.
    pub fn keep_refresh_tokens(&mut self, keeper: Arc<dyn RefreshTokenKeeper>) {
        self.keeper = Some(keeper);
    }

    /// A token to call with: the current one, or a new one when there is none or it is due.
    pub async fn token(&self) -> Result<Arc<Token>, CrmError> {
        let mut current = self.current.lock().await;
        if let Some(token) = current.as_ref() {
            if token.renew_at.is_none_or(|at| Instant::now() < at) {
                return Ok(token.clone());
            }
        }
        let token = Arc::new(self.obtain().await?);
        *current = Some(token.clone());
        Ok(token)
    }

    /// Drops the token a request was refused with, unless a newer one already replaced it.
    pub async fn reject(&self, generation: u64) {
        let mut current = self.current.lock().await;
        if current.as_ref().is_some_and(|t| t.generation == generation) {
            *current = None;
        }
    }

    /// Whether the token can be renewed at all (a private-app token cannot).
    pub fn renewable(&self) -> bool {
        !matches!(self.grant, Grant::Static(_))
    }

    /// How many tokens were obtained from the token endpoint so far.
    pub fn renewals(&self) -> u64 {
        self.renewals.load(Ordering::Relaxed)
    }

    async fn obtain(&self) -> Result<Token, CrmError> {
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        if let Grant::Static(secret) = &self.grant {
            return Ok(Token {
                secret: secret.clone(),
                instance_url: None,
                user_id: None,
                renew_at: None,
                generation,
            });
        }
        let mut attempt = 0;
        let response = loop {
            attempt += 1;
            match self.request_token().await {
                Ok(response) => break response,
                Err(TokenFailure::Transient(detail)) if attempt < self.retry.max_attempts => {
                    tracing::warn!(connection = %self.connection, attempt, %detail, "token endpoint unavailable; retrying");
                    let wait = tokio::time::sleep(self.retry.delay(attempt, None));
                    if self.stop.unless_stopped(wait).await.is_none() {
                        return Err(CrmError::Interrupted {
                            connection: self.connection.clone(),
                            request: "token request".into(),
                        });
                    }
                }
                Err(TokenFailure::Transient(detail)) => {
                    return Err(CrmError::Unavailable {
                        connection: self.connection.clone(),
                        request: "token request".into(),
                        attempts: attempt,
                        detail,
                    })
                }
                Err(TokenFailure::Refused { code, description }) => {
                    return Err(CrmError::Auth {
                        connection: self.connection.clone(),
                        code,
                        description,
                    })
                }
            }
        };
        self.renewals.fetch_add(1, Ordering::Relaxed);
        if let (Grant::Refresh { refresh_token, .. }, Some(rotated)) =
            (&self.grant, response.refresh_token())
        {
            let rotated: SecretString = rotated.secret().as_str().into();
            let changed = lock(refresh_token).expose_secret() != rotated.expose_secret();
            if changed {
                // The CRM rotated the refresh token; the old one no longer works.
                *lock(refresh_token) = rotated.clone();
                self.keep_rotated(rotated).await;
            }
        }
        let instance_url = match &response.extra_fields().instance_url {
            Some(text) => Some(Url::parse(text).map_err(|err| CrmError::Auth {
                connection: self.connection.clone(),
                code: "invalid_response".into(),
                description: format!("the token response's instance_url is not a URL: {err}"),
            })?),
            None => None,
        };
        let renew_at = response.expires_in().map(|lifetime| {
            Instant::now() + lifetime.saturating_sub(RENEW_MARGIN.min(lifetime / 4))
        });
        tracing::debug!(connection = %self.connection, generation, "obtained an access token");
        let user_id = response
            .extra_fields()
            .id
            .as_deref()
            .and_then(|id| id.trim_end_matches('/').rsplit('/').next())
            .filter(|id| !id.is_empty())
            .map(str::to_string);
        Ok(Token {
            secret: response.access_token().secret().as_str().into(),
            instance_url,
            user_id,
            renew_at,
            generation,
        })
    }

    async fn request_token(&self) -> Result<CrmTokenResponse, TokenFailure> {
        let http = |request: HttpRequest| send_token_request(&self.http, request);
        match &self.grant {
            Grant::Static(_) => unreachable!("static tokens are never requested"),
            Grant::Refresh {
                client,
                refresh_token,
            } => {
                self.adopt_kept_refresh_token(refresh_token).await;
                let mut presented = lock(refresh_token).clone();
                let mut answer = self.exchange_refresh_token(client, &presented).await;
                // Another client or replica of this connection may be rotating the token at
                // this moment: its successor is kept once that answer arrives, so look again
                // a few times before taking the refusal as final.
                for wait in KEPT_TOKEN_WAITS {
                    if self.keeper.is_none() || !matches!(answer, Err(TokenFailure::Refused { .. }))
                    {
                        break;
                    }
                    tokio::time::sleep(wait).await;
                    self.adopt_kept_refresh_token(refresh_token).await;
                    let newest = lock(refresh_token).clone();
                    if newest.expose_secret() != presented.expose_secret() {
                        presented = newest;
                        answer = self.exchange_refresh_token(client, &presented).await;
                    }
                }
                answer
            }
            Grant::ClientCredentials(client) => client
                .exchange_client_credentials()
                .request_async(&http)
                .await
                .map_err(TokenFailure::from_oauth),
            Grant::JwtBearer {
                token_url,
                client_id,
                username,
                audience,
                key,
            } => {
                let assertion = sign_assertion(client_id, username, audience, key)?;
                let request = jwt_bearer_request(token_url, &assertion);
                let response = send_token_request(&self.http, request)
                    .await
                    .map_err(|err| TokenFailure::Transient(err.to_string()))?;
                read_token_response(response)
            }
        }
    }
}

impl TokenManager {
    /// Replaces the refresh token in hand with the newest kept one, if a keeper has any.
    async fn adopt_kept_refresh_token(&self, refresh_token: &std::sync::Mutex<SecretString>) {
        let Some(keeper) = &self.keeper else { return };
        if self.unkept_rotation.load(Ordering::Relaxed) {
            return;
        }
        match keeper.latest().await {
            Ok(Some(kept)) => *lock(refresh_token) = kept,
            Ok(None) => {}
            Err(err) => {
                tracing::warn!(connection = %self.connection, error = %err, "cannot read the kept refresh token; presenting the one in hand")
            }
        }
    }

    async fn exchange_refresh_token(
        &self,
        client: &OAuthClient,
        refresh_token: &SecretString,
    ) -> Result<CrmTokenResponse, TokenFailure> {
        let http = |request: HttpRequest| send_token_request(&self.http, request);
        let refresh = RefreshToken::new(refresh_token.expose_secret().to_string());
        client
            .exchange_refresh_token(&refresh)
            .request_async(&http)
            .await
            .map_err(TokenFailure::from_oauth)
    }

    /// Hands a rotated refresh token to the keeper, so later runs and replicas present it.
    async fn keep_rotated(&self, rotated: SecretString) {
        let Some(keeper) = &self.keeper else { return };
        let now = crate::record::wall_clock();
        let kept = keeper.keep(rotated, now).await;
        self.unkept_rotation.store(kept.is_err(), Ordering::Relaxed);
        if let Err(err) = kept {
            // Only this client holds the new token now: it goes on presenting it rather than
            // the store's older one, while other clients and later runs are refused.
            tracing::error!(connection = %self.connection, error = %err, "cannot keep the rotated refresh token");
        }
    }
}

/// The token endpoint of the connection's CRM.
fn token_url(endpoints: &Endpoints) -> Result<Url, String> {
    let (base, path) = match endpoints {
        Endpoints::Salesforce { login_url, .. } => (login_url, "services/oauth2/token".to_string()),
        Endpoints::Hubspot {
            api_base_url,
            api_version,
        } => {
            // OAuth v1 is deprecated; the date-versioned path is the one to use with that API.
            let version = if api_version == "v3" {
                "v1"
            } else {
                api_version
            };
            (api_base_url, format!("oauth/{version}/token"))
        }
    };
    with_trailing_slash(base)
        .join(&path)
        .map_err(|err| format!("cannot build the token URL from {base}: {err}"))
}

/// `base` with a trailing slash, so that joining keeps its path.
pub(crate) fn with_trailing_slash(base: &Url) -> Url {
    let mut base = base.clone();
    if !base.path().ends_with('/') {
        let path = format!("{}/", base.path());
        base.set_path(&path);
    }
    base
}

/// Why a token request failed.
enum TokenFailure {
    /// Worth another try: no answer, 5xx, or 429.
    Transient(String),
    /// The endpoint refused: the credentials are wrong, revoked or expired.
    Refused { code: String, description: String },
}

impl TokenFailure {
    fn from_oauth(err: RequestTokenError<TransportError, BasicErrorResponse>) -> TokenFailure {
        match err {
            RequestTokenError::ServerResponse(body) => TokenFailure::Refused {
                code: body.error().as_ref().to_string(),
                description: body.error_description().cloned().unwrap_or_default(),
            },
            RequestTokenError::Request(err) => TokenFailure::Transient(err.to_string()),
            RequestTokenError::Parse(err, _) => TokenFailure::Refused {
                code: "invalid_response".into(),
                description: format!("the token response does not parse: {err}"),
            },
            RequestTokenError::Other(detail) => TokenFailure::Refused {
                code: "invalid_response".into(),
                description: detail,
            },
        }
    }
}

impl From<String> for TokenFailure {
    fn from(detail: String) -> Self {
        TokenFailure::Refused {
            code: "invalid_assertion".into(),
            description: detail,
        }
    }
}

/// A token request that got no usable answer; 429 and 5xx count as such, so they are retried
/// rather than read as a refusal.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TransportError(String);

async fn send_token_request(
    http: &reqwest::Client,
    request: HttpRequest,
) -> Result<HttpResponse, TransportError> {
    let request = reqwest::Request::try_from(request)
        .map_err(|err| TransportError(format!("cannot build the token request: {err}")))?;
    let response = http
        .execute(request)
        .await
        .map_err(|err| TransportError(describe_transport_error(&err)))?;
    let status = response.status();
    if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        return Err(TransportError(format!(
            "token endpoint answered HTTP {status}"
        )));
    }
    let mut builder = oauth2::http::Response::builder().status(status.as_u16());
    for (name, value) in response.headers() {
        builder = builder.header(name.as_str(), value.as_bytes());
    }
    let body = response
        .bytes()
        .await
        .map_err(|err| TransportError(describe_transport_error(&err)))?;
    builder
        .body(body.to_vec())
        .map_err(|err| TransportError(err.to_string()))
}

/// A transport error without the URL reqwest attaches (it may carry query parameters).
pub(crate) fn describe_transport_error(err: &reqwest::Error) -> String {
    let kind = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "cannot connect"
    } else if err.is_body() || err.is_decode() {
        "the body was cut short"
    } else {
        "request failed"
    };
    let mut detail = kind.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        detail = format!("{detail}: {cause}");
        source = cause.source();
    }
    detail
}

#[derive(Serialize)]
struct JwtClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    exp: i64,
}

/// Signs the RS256 assertion Salesforce's JWT bearer grant expects (valid for three minutes).
fn sign_assertion(
    client_id: &str,
    username: &str,
    audience: &str,
    key: &EncodingKey,
) -> Result<String, TokenFailure> {
    let claims = JwtClaims {
        iss: client_id,
        sub: username,
        aud: audience,
        exp: chrono::Utc::now().timestamp() + 180,
    };
    jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, key)
        .map_err(|err| TokenFailure::from(format!("cannot sign the JWT assertion: {err}")))
}

fn jwt_bearer_request(token_url: &Url, assertion: &str) -> HttpRequest {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer")
        .append_pair("assertion", assertion)
        .finish();
    oauth2::http::Request::builder()
        .method(oauth2::http::Method::POST)
        .uri(token_url.as_str())
        .header("content-type", "application/x-www-form-urlencoded")
        .header("accept", "application/json")
        .body(body.into_bytes())
        .expect("a POST with a parsed URL and fixed headers is a valid request")
}

fn read_token_response(response: HttpResponse) -> Result<CrmTokenResponse, TokenFailure> {
    let body = response.body();
    if response.status().is_success() {
        return serde_json::from_slice(body).map_err(|err| TokenFailure::Refused {
            code: "invalid_response".into(),
            description: format!("the token response does not parse: {err}"),
        });
    }
    match serde_json::from_slice::<BasicErrorResponse>(body) {
        Ok(error) => Err(TokenFailure::Refused {
            code: error.error().as_ref().to_string(),
            description: error.error_description().cloned().unwrap_or_default(),
        }),
        Err(_) => Err(TokenFailure::Refused {
            code: format!("http_{}", response.status().as_u16()),
            description: String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
        }),
    }
}
