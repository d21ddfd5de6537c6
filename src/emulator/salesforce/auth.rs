//! Salesforce OAuth 2.0 as the org answers it: token grants, sessions, and their error bodies.
//!
//! The token response carries no `expires_in`: a session lasts until it has been idle for the
//! org's session timeout, and clients learn of the end from a 401 `INVALID_SESSION_ID`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::{error, OrgState};
use crate::emulator::Shared;
use crate::record::Millis;

/// An access token's session.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    last_used_ms: Millis,
}

const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// Why the org turns a client away, rendered as Salesforce renders it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// No usable `Authorization` header on a REST call.
    MissingAuthHeader,
    /// Unknown or idle-expired access token.
    InvalidSession,
    /// Consumer key of another app.
    UnknownClient,
    /// Wrong or missing consumer secret.
    BadClientSecret,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::MissingAuthHeader => error(
                StatusCode::UNAUTHORIZED,
                "INVALID_AUTH_HEADER",
                "INVALID_HEADER_TYPE",
            ),
            Refusal::InvalidSession => error(
                StatusCode::UNAUTHORIZED,
                "INVALID_SESSION_ID",
                "Session expired or invalid",
            ),
            Refusal::UnknownClient => token_error("invalid_client_id", "client identifier invalid"),
            Refusal::BadClientSecret => token_error("invalid_client", "invalid client credentials"),
        }
    }
}

/// Token errors are a flat object, unlike the REST error array.
fn token_error(code: &str, description: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({ "error": code, "error_description": description })),
    )
        .into_response()
}

/// `POST /services/oauth2/token` (form-encoded body, client credentials in the body or Basic auth).
pub(crate) async fn token(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let field = |name: &str| form.get(name).cloned();
    let (client_id, client_secret) = match basic_credentials(&headers) {
        Some((id, secret)) => (Some(id), Some(secret)),
        None => (field("client_id"), field("client_secret")),
    };
    let org = &shared.salesforce;
    let grant = field("grant_type");
    match grant.as_deref() {
        None => token_error("invalid_request", "grant type is missing"),
        Some("refresh_token") => {
            if let Err(refused) =
                check_client(org, client_id.as_deref(), client_secret.as_deref(), false)
            {
                return refused.into_response();
            }
            refresh(&shared, field("refresh_token").as_deref())
        }
        Some("client_credentials") => {
            if let Err(refused) =
                check_client(org, client_id.as_deref(), client_secret.as_deref(), true)
            {
                return refused.into_response();
            }
            issue(&shared, None, "api")
        }
        Some(JWT_BEARER) => jwt_bearer(&shared, field("assertion").as_deref()),
        Some(_) => token_error("unsupported_grant_type", "grant type not supported"),
    }
}

/// The claims Salesforce reads from a JWT bearer assertion.
#[derive(Deserialize)]
struct Assertion {
    iss: String,
    sub: String,
    aud: Audience,
    exp: i64,
}

/// `aud` may be one string or a list of them.
#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn contains(&self, wanted: &[&str]) -> bool {
        let matches = |aud: &String| wanted.contains(&aud.trim_end_matches('/'));
        match self {
            Audience::One(aud) => matches(aud),
            Audience::Many(auds) => auds.iter().any(matches),
        }
    }
}

/// The JWT bearer grant: an RS256 assertion signed with the key whose certificate the connected
/// app holds, for the user the app is pre-authorized for.
fn jwt_bearer(shared: &Shared, assertion: Option<&str>) -> Response {
    let org = &shared.salesforce;
    let invalid_grant = |description: &str| token_error("invalid_grant", description);
    // Without a certificate on the connected app, no user can have approved it for JWT.
    let Some(public_key) = &org.options.jwt_public_key_pem else {
        return invalid_grant("user hasn't approved this consumer");
    };
    let Some(claims) = assertion.and_then(|assertion| verify_assertion(assertion, public_key))
    else {
        return invalid_grant("invalid assertion");
    };
    if claims.iss != org.options.client_id {
        return Refusal::UnknownClient.into_response();
    }
    let own = shared.base_url.as_str().trim_end_matches('/');
    if !claims.aud.contains(&[
        "https://login.salesforce.com",
        "https://test.salesforce.com",
        own,
    ]) {
        return invalid_grant("audience is invalid");
    }
    if claims.exp.saturating_mul(1000) < shared.clock.now_ms() {
        return invalid_grant("invalid assertion");
    }
    if claims.sub != org.options.jwt_username {
        return invalid_grant("user hasn't approved this consumer");
    }
    issue(shared, None, "api")
}

/// The assertion's claims if its RS256 signature verifies with `public_key_pem`. Expiry is
/// checked by the caller against simulated time, not here against the wall clock.
fn verify_assertion(assertion: &str, public_key_pem: &str) -> Option<Assertion> {
    let key = DecodingKey::from_rsa_pem(public_key_pem.as_bytes()).ok()?;
    let mut validation = Validation::new(Algorithm::RS256);
    validation.validate_exp = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    jsonwebtoken::decode::<Assertion>(assertion, &key, &validation)
        .ok()
        .map(|data| data.claims)
}

fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get("authorization")?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = String::from_utf8(BASE64.decode(encoded.trim()).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((id.to_string(), secret.to_string()))
}

/// The consumer key must be the app's; the secret is optional for refresh, required otherwise.
fn check_client(
    org: &OrgState,
    id: Option<&str>,
    secret: Option<&str>,
    secret_required: bool,
) -> Result<(), Refusal> {
    if id != Some(org.options.client_id.as_str()) {
        return Err(Refusal::UnknownClient);
    }
    match secret {
        Some(given) if given != org.options.client_secret => Err(Refusal::BadClientSecret),
        None if secret_required => Err(Refusal::BadClientSecret),
        _ => Ok(()),
    }
}

fn refresh(shared: &Shared, presented: Option<&str>) -> Response {
    let org = &shared.salesforce;
    let Some(presented) = presented else {
        return token_error("invalid_grant", "expired access/refresh token");
    };
    let rotated = {
        let mut inner = org.lock();
        if !inner.refresh_tokens.contains(presented) {
            return token_error("invalid_grant", "expired access/refresh token");
        }
        if org.options.rotate_refresh_tokens {
            inner.refresh_tokens.remove(presented);
            let next = next_token(org, &mut inner.tokens_issued, "5Aep861");
            inner.refresh_tokens.insert(next.clone());
            Some(next)
        } else {
            None
        }
    };
    issue(shared, rotated, "api refresh_token")
}

/// Opens a session and answers as Salesforce does: `issued_at` in ms, a signature, no `expires_in`.
fn issue(shared: &Shared, refresh_token: Option<String>, scope: &str) -> Response {
    let org = &shared.salesforce;
    let now = shared.clock.now_ms();
    let access_token = {
        let mut inner = org.lock();
        let token = next_token(org, &mut inner.tokens_issued, &format!("{}!AQ", org.org_id));
        inner
            .sessions
            .insert(token.clone(), Session { last_used_ms: now });
        token
    };
    let instance_url = shared.base_url.as_str().trim_end_matches('/');
    let id = format!("{instance_url}/id/{}/{}", org.org_id, org.user_id);
    let issued_at = now.to_string();
    let mut body = json!({
        "access_token": access_token,
        "instance_url": instance_url,
        "id": id,
        "token_type": "Bearer",
        "issued_at": issued_at,
        "signature": signature(&org.options.client_secret, &id, &issued_at),
        "scope": scope,
    });
    if let Some(refresh_token) = refresh_token {
        body["refresh_token"] = Value::String(refresh_token);
    }
    Json(body).into_response()
}

/// Deterministic per seed, unguessable without it, like real tokens are to a client.
fn next_token(org: &OrgState, issued: &mut u64, prefix: &str) -> String {
    *issued += 1;
    let digest = Sha256::digest(format!("{}:{}:{prefix}", org.seed, issued));
    format!("{prefix}{}", hex_string(&digest[..24]))
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Base64(HMAC-SHA256(consumer secret, id + issued_at)).
fn signature(secret: &str, id: &str, issued_at: &str) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(id.as_bytes());
    mac.update(issued_at.as_bytes());
    BASE64.encode(mac.finalize().into_bytes())
}

/// The access token a REST call was made with; query locators belong to it.
#[derive(Debug, Clone)]
pub(crate) struct SessionToken(pub String);

/// Accepts `Bearer` or `OAuth` access tokens whose session has not been idle too long.
pub(crate) fn check_session(
    org: &OrgState,
    headers: &HeaderMap,
    now: Millis,
) -> Result<SessionToken, Refusal> {
    let token = headers
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("OAuth "))
        })
        .map(str::trim)
        .filter(|token| !token.is_empty());
    let Some(token) = token else {
        return Err(Refusal::MissingAuthHeader);
    };
    let timeout = i64::try_from(org.options.session_timeout.as_millis()).unwrap_or(i64::MAX);
    let mut inner = org.lock();
    match inner.sessions.get_mut(token) {
        Some(session) if now - session.last_used_ms <= timeout => {
            session.last_used_ms = now;
            Ok(SessionToken(token.to_string()))
        }
        Some(_) => {
            inner.sessions.remove(token);
            Err(Refusal::InvalidSession)
        }
        None => Err(Refusal::InvalidSession),
    }
}
