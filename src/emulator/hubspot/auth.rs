//! HubSpot authentication: the private-app token, and OAuth refresh at the v1, v3 and
//! date-versioned token endpoints, with 30-minute access tokens on the simulated clock.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::Uri;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as BASE64URL;
use base64::Engine;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{correlation_id, error_with, iso, PortalState, Refusal};
use crate::emulator::Shared;
use crate::record::Millis;

/// Who a call came from: limits and headers differ between the two kinds of app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Caller {
    /// The private app's static token.
    PrivateApp,
    /// An OAuth access token of the public app.
    OAuth,
}

const AUTH_DOCS_MESSAGE: &str = "Authentication credentials not found. This API supports OAuth 2.0 authentication and you can find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview";

pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/oauth/v1/token", post(token))
        .route("/oauth/v3/token", post(token))
        .route("/oauth/2026-03/token", post(token))
}

/// Accepts the private-app token or an unexpired OAuth access token sent as `Bearer`.
pub(crate) fn check_token(
    portal: &PortalState,
    headers: &HeaderMap,
    now: Millis,
) -> Result<Caller, Refusal> {
    let token = headers
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|token| !token.is_empty());
    let Some(token) = token else {
        return Err(unauthenticated().into());
    };
    if token == portal.options.private_app_token {
        return Ok(Caller::PrivateApp);
    }
    let expires_at = portal.lock().access_tokens.get(token).copied();
    match expires_at {
        Some(at) if now < at => Ok(Caller::OAuth),
        Some(at) => Err(expired(at, now).into()),
        None => Err(unauthenticated().into()),
    }
}

fn with_auth_failure_header(mut response: Response) -> Response {
    response.headers_mut().insert(
        "X-HubSpot-Auth-Failure",
        HeaderValue::from_static("401 Unauthorized"),
    );
    response
}

fn unauthenticated() -> Response {
    with_auth_failure_header(error_with(
        StatusCode::UNAUTHORIZED,
        "INVALID_AUTHENTICATION",
        AUTH_DOCS_MESSAGE,
        None,
    ))
}

fn expired(expired_at: Millis, now: Millis) -> Response {
    let seconds = (now - expired_at) / 1000;
    let message =
        format!("The OAuth token used to make this call expired {seconds} second(s) ago.");
    let context = json!({ "context": { "expire time": [iso_with_millis(expired_at)] } });
    with_auth_failure_header(error_with(
        StatusCode::UNAUTHORIZED,
        "EXPIRED_AUTHENTICATION",
        &message,
        Some(context),
    ))
}

/// The expiry context always shows milliseconds (`2022-06-21T10:37:52.040Z`).
fn iso_with_millis(ms: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| iso(ms))
}

/// Token endpoint errors carry `status` as the error code, not `"error"`; the newer
/// endpoints add the OAuth 2.0 `error`/`error_description` pair.
fn token_error(uri: &Uri, status: &str, message: &str, oauth: (&str, &str)) -> Response {
    let mut body = json!({
        "status": status,
        "message": message,
        "correlationId": correlation_id(),
    });
    if !uri.path().starts_with("/oauth/v1/") {
        body["error"] = Value::String(oauth.0.to_string());
        body["error_description"] = Value::String(oauth.1.to_string());
    }
    (StatusCode::BAD_REQUEST, Json(body)).into_response()
}

/// `POST /oauth/{v1,v3,2026-03}/token`, form-encoded.
async fn token(State(shared): State<Arc<Shared>>, uri: Uri, body: Bytes) -> Response {
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let field = |name: &str| form.get(name).map(String::as_str);
    let portal = &shared.hubspot;
    if field("grant_type") != Some("refresh_token") {
        return token_error(
            &uri,
            "BAD_GRANT_TYPE",
            "missing or unsupported grant_type",
            ("unsupported_grant_type", "grant_type must be refresh_token"),
        );
    }
    if field("client_id") != Some(portal.options.client_id.as_str()) {
        return token_error(
            &uri,
            "BAD_CLIENT_ID",
            "missing or unknown client id",
            ("invalid_client", "client id is invalid"),
        );
    }
    if field("client_secret") != Some(portal.options.client_secret.as_str()) {
        return token_error(
            &uri,
            "BAD_CLIENT_SECRET",
            "missing or invalid client secret",
            ("invalid_client", "client secret is invalid"),
        );
    }
    match refresh(&shared, field("refresh_token")) {
        Some(body) => Json(body).into_response(),
        None => token_error(
            &uri,
            "BAD_REFRESH_TOKEN",
            "missing or unknown refresh token",
            (
                "invalid_grant",
                "refresh token is invalid, expired or revoked",
            ),
        ),
    }
}

/// Issues an access token for a known refresh token, rotating it when the portal does.
fn refresh(shared: &Shared, presented: Option<&str>) -> Option<Value> {
    let portal = &shared.hubspot;
    let presented = presented?;
    let now = shared.clock.now_ms();
    let lifetime = i64::try_from(portal.options.access_token_lifetime.as_millis()).unwrap_or(0);
    let mut inner = portal.lock();
    if !inner.refresh_tokens.contains(presented) {
        return None;
    }
    inner.tokens_issued += 1;
    let issued = inner.tokens_issued;
    let refresh_token = if portal.options.rotate_refresh_tokens {
        inner.refresh_tokens.remove(presented);
        let next = uuid_token(portal.seed, issued);
        inner.refresh_tokens.insert(next.clone());
        next
    } else {
        presented.to_string()
    };
    let access_token = access_token(portal.seed, issued);
    inner
        .access_tokens
        .insert(access_token.clone(), now + lifetime);
    Some(json!({
        "token_type": "bearer",
        "refresh_token": refresh_token,
        "access_token": access_token,
        "expires_in": lifetime / 1000,
    }))
}

/// Opaque, deterministic per seed, and as long as real ones (well over 100 characters).
fn access_token(seed: u64, issued: u64) -> String {
    let first = Sha256::digest(format!("{seed}:access:{issued}"));
    let second = Sha256::digest(first);
    let third = Sha256::digest(second);
    let bytes: Vec<u8> = [first, second, third].concat();
    format!("CKDZ{}", BASE64URL.encode(bytes))
}

/// Refresh tokens are UUID-shaped.
fn uuid_token(seed: u64, issued: u64) -> String {
    let digest = Sha256::digest(format!("{seed}:refresh:{issued}"));
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Ends every OAuth access token now (the fault "token expired in the middle of paging").
pub(crate) fn expire_all(portal: &PortalState, now: Millis) -> usize {
    let mut inner = portal.lock();
    let mut ended = 0;
    for expires_at in inner.access_tokens.values_mut() {
        if *expires_at > now {
            *expires_at = now;
            ended += 1;
        }
    }
    ended
}
