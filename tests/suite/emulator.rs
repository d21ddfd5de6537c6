//! The CRM emulator over real HTTP: Salesforce sessions, limits and the control API.

use std::time::Duration;

use pipewarden::emulator::{self, EmulatorOptions, RunningEmulator, SalesforceOptions};
use reqwest::StatusCode;
use serde_json::{json, Value};

pub(crate) const CLIENT_ID: &str = "pipewarden-demo";
pub(crate) const REFRESH_TOKEN: &str = "emulator-demo-refresh-token";

pub(crate) async fn start(salesforce: SalesforceOptions) -> RunningEmulator {
    let options = EmulatorOptions {
        salesforce,
        ..EmulatorOptions::default()
    };
    emulator::start("127.0.0.1:0".parse().unwrap(), options)
        .await
        .expect("emulator starts")
}

pub(crate) fn url(emu: &RunningEmulator, path: &str) -> String {
    emu.base_url()
        .join(path.trim_start_matches('/'))
        .unwrap()
        .to_string()
}

pub(crate) async fn token(emu: &RunningEmulator, form: &[(&str, &str)]) -> (StatusCode, Value) {
    let response = reqwest::Client::new()
        .post(url(emu, "/services/oauth2/token"))
        .form(form)
        .send()
        .await
        .unwrap();
    (response.status(), response.json().await.unwrap())
}

pub(crate) async fn access_token(emu: &RunningEmulator) -> String {
    let (status, body) = token(
        emu,
        &[
            ("grant_type", "refresh_token"),
            ("client_id", CLIENT_ID),
            ("refresh_token", REFRESH_TOKEN),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["access_token"].as_str().unwrap().to_string()
}

pub(crate) async fn get(emu: &RunningEmulator, path: &str, bearer: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(url(emu, path))
        .bearer_auth(bearer)
        .send()
        .await
        .unwrap()
}

pub(crate) async fn control(emu: &RunningEmulator, path: &str, body: Value) -> Value {
    let response = reqwest::Client::new()
        .post(url(emu, path))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{path}: {}",
        response.status()
    );
    response.json().await.unwrap()
}

#[tokio::test]
async fn the_token_response_is_shaped_as_salesforce_sends_it() {
    let emu = start(SalesforceOptions::default()).await;
    let (status, body) = token(
        &emu,
        &[
            ("grant_type", "refresh_token"),
            ("client_id", CLIENT_ID),
            ("refresh_token", REFRESH_TOKEN),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["instance_url"],
        emu.base_url().as_str().trim_end_matches('/'),
        "instance_url is the emulator itself"
    );
    assert_eq!(body["token_type"], "Bearer");
    let issued_at = body["issued_at"].as_str().expect("issued_at is a string");
    assert_eq!(
        issued_at.len(),
        13,
        "milliseconds since the epoch: {issued_at}"
    );
    assert_eq!(issued_at.parse::<i64>().unwrap(), emu.clock().now_ms());
    assert!(
        body.get("expires_in").is_none(),
        "Salesforce sends no expires_in"
    );
    assert!(
        body.get("refresh_token").is_none(),
        "no rotation unless enabled"
    );
    assert!(body["access_token"].as_str().unwrap().starts_with("00D"));
    assert!(!body["signature"].as_str().unwrap().is_empty());
    emu.stop().await.unwrap();
}

#[tokio::test]
async fn token_errors_are_flat_objects_with_the_real_codes() {
    let emu = start(SalesforceOptions::default()).await;
    type Form<'a> = &'a [(&'a str, &'a str)];
    let cases: [(Form, &str, &str); 5] = [
        (
            &[("client_id", CLIENT_ID)],
            "invalid_request",
            "grant type is missing",
        ),
        (
            &[("grant_type", "password")],
            "unsupported_grant_type",
            "grant type not supported",
        ),
        (
            &[
                ("grant_type", "refresh_token"),
                ("client_id", "someone-else"),
                ("refresh_token", REFRESH_TOKEN),
            ],
            "invalid_client_id",
            "client identifier invalid",
        ),
        (
            &[
                ("grant_type", "refresh_token"),
                ("client_id", CLIENT_ID),
                ("refresh_token", "revoked"),
            ],
            "invalid_grant",
            "expired access/refresh token",
        ),
        (
            &[
                ("grant_type", "client_credentials"),
                ("client_id", CLIENT_ID),
                ("client_secret", "wrong"),
            ],
            "invalid_client",
            "invalid client credentials",
        ),
    ];
    for (form, code, description) in cases {
        let (status, body) = token(&emu, form).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{form:?}");
        assert_eq!(
            body,
            json!({"error": code, "error_description": description}),
            "{form:?}"
        );
    }
    emu.stop().await.unwrap();
}

#[tokio::test]
async fn client_credentials_work_with_basic_auth_and_return_no_refresh_token() {
    let emu = start(SalesforceOptions::default()).await;
    let response = reqwest::Client::new()
        .post(url(&emu, "/services/oauth2/token"))
        .basic_auth(CLIENT_ID, Some("emulator-demo-client-secret"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert!(body.get("refresh_token").is_none());
    let limits = get(
        &emu,
        "/services/data/v62.0/limits",
        body["access_token"].as_str().unwrap(),
    )
    .await;
    assert_eq!(limits.status(), StatusCode::OK);
    emu.stop().await.unwrap();
}

#[tokio::test]
async fn with_rotation_a_refresh_token_works_once() {
    let emu = start(SalesforceOptions {
        rotate_refresh_tokens: true,
        ..SalesforceOptions::default()
    })
    .await;
    let form = [
        ("grant_type", "refresh_token"),
        ("client_id", CLIENT_ID),
        ("refresh_token", REFRESH_TOKEN),
    ];
    let (status, first) = token(&emu, &form).await;
    assert_eq!(status, StatusCode::OK);
    let rotated = first["refresh_token"]
        .as_str()
        .expect("a new refresh token")
        .to_string();
    assert_ne!(rotated, REFRESH_TOKEN);
    let (status, body) = token(&emu, &form).await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "the old refresh token is revoked"
    );
    assert_eq!(body["error"], "invalid_grant");
    let (status, _) = token(
        &emu,
        &[
            ("grant_type", "refresh_token"),
            ("client_id", CLIENT_ID),
            ("refresh_token", &rotated),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    emu.stop().await.unwrap();
}

#[tokio::test]
async fn sessions_end_after_the_idle_timeout_or_when_expired_on_purpose() {
    let emu = start(SalesforceOptions {
        session_timeout: Duration::from_secs(15 * 60),
        ..SalesforceOptions::default()
    })
    .await;
    let session = access_token(&emu).await;
    control(&emu, "/__emulator/clock/advance", json!({"by": "14m"})).await;
    assert_eq!(
        get(&emu, "/services/data/v62.0/limits", &session)
            .await
            .status(),
        StatusCode::OK,
        "use renews the session"
    );
    control(&emu, "/__emulator/clock/advance", json!({"by": "14m"})).await;
    assert_eq!(
        get(&emu, "/services/data/v62.0/limits", &session)
            .await
            .status(),
        StatusCode::OK
    );
    control(&emu, "/__emulator/clock/advance", json!({"by": "16m"})).await;
    let expired = get(&emu, "/services/data/v62.0/limits", &session).await;
    assert_eq!(expired.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        expired.json::<Value>().await.unwrap(),
        json!([{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}])
    );

    let session = access_token(&emu).await;
    let ended = control(&emu, "/__emulator/salesforce/expire-sessions", json!({})).await;
    assert_eq!(ended["expired"], 1);
    assert_eq!(
        get(&emu, "/services/data/v62.0/limits", &session)
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    emu.stop().await.unwrap();
}

#[tokio::test]
async fn a_missing_authorization_header_is_invalid_auth_header() {
    let emu = start(SalesforceOptions::default()).await;
    let response = reqwest::get(url(&emu, "/services/data/v62.0/limits"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body[0]["errorCode"], "INVALID_AUTH_HEADER");
    emu.stop().await.unwrap();
}

#[tokio::test]
async fn every_call_counts_against_the_daily_allocation_until_it_is_refused() {
    let emu = start(SalesforceOptions {
        daily_api_limit: 5,
        ..SalesforceOptions::default()
    })
    .await;
    let session = access_token(&emu).await;
    for expected in 1..=3 {
        let response = get(&emu, "/services/data/v62.0/limits", &session).await;
        assert_eq!(
            response.headers()["sforce-limit-info"],
            format!("api-usage={expected}/5").as_str()
        );
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            body["DailyApiRequests"],
            json!({"Max": 5, "Remaining": 5 - expected})
        );
    }
    control(&emu, "/__emulator/salesforce/api-usage", json!({"used": 5})).await;
    let refused = get(&emu, "/services/data/v62.0/limits", &session).await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        refused.json::<Value>().await.unwrap(),
        json!([{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}])
    );
    // The window rolls: a day later the calls have aged out.
    control(&emu, "/__emulator/clock/advance", json!({"by": "1day"})).await;
    let session = access_token(&emu).await;
    let again = get(&emu, "/services/data/v62.0/limits", &session).await;
    assert_eq!(again.headers()["sforce-limit-info"], "api-usage=1/5");
    emu.stop().await.unwrap();
}

#[tokio::test]
async fn versions_are_listed_and_unknown_ones_are_not_found() {
    let emu = start(SalesforceOptions::default()).await;
    let versions: Value = reqwest::get(url(&emu, "/services/data/"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let v59 = versions
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["version"] == "59.0")
        .expect("v59.0 listed");
    assert_eq!(
        v59,
        &json!({"label": "Winter '24", "url": "/services/data/v59.0", "version": "59.0"})
    );
    let session = access_token(&emu).await;
    let resources: Value = get(&emu, "/services/data/v62.0/", &session)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(resources["limits"], "/services/data/v62.0/limits");
    for path in [
        "/services/data/v12.0/limits",
        "/services/data/v62.0/nothing-here",
    ] {
        let response = get(&emu, path, &session).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body[0]["errorCode"], "NOT_FOUND", "{path}");
    }
    emu.stop().await.unwrap();
}

#[tokio::test]
async fn the_control_api_rejects_a_bad_duration_with_a_clear_message() {
    let emu = start(SalesforceOptions::default()).await;
    let before = emu.clock().now_ms();
    let response = reqwest::Client::new()
        .post(url(&emu, "/__emulator/clock/advance"))
        .json(&json!({"by": "soon"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("`soon` is not a duration"),
        "{body}"
    );
    assert_eq!(emu.clock().now_ms(), before);
    emu.stop().await.unwrap();
}

const JWT_PRIVATE_KEY: &str = include_str!("../fixtures/jwt-test-private.pem");
const JWT_PUBLIC_KEY: &str = include_str!("../fixtures/jwt-test-public.pem");
const JWT_USER: &str = "integration.user0@pipewarden-demo.example.com";

/// An RS256 assertion as a JWT bearer client signs it, expiring `expires_in_s` after the
/// emulator's simulated now.
fn assertion(emu: &RunningEmulator, iss: &str, sub: &str, aud: &str, expires_in_s: i64) -> String {
    let claims = json!({
        "iss": iss,
        "sub": sub,
        "aud": aud,
        "exp": emu.clock().now_ms() / 1000 + expires_in_s,
    });
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(JWT_PRIVATE_KEY.as_bytes()).unwrap();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &claims,
        &key,
    )
    .unwrap()
}

async fn jwt_login(emu: &RunningEmulator, assertion: &str) -> (StatusCode, Value) {
    token(
        emu,
        &[
            ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
            ("assertion", assertion),
        ],
    )
    .await
}

#[tokio::test]
async fn the_jwt_bearer_grant_checks_signature_issuer_audience_expiry_and_user() {
    let emu = start(SalesforceOptions {
        jwt_public_key_pem: Some(JWT_PUBLIC_KEY.to_string()),
        ..SalesforceOptions::default()
    })
    .await;
    let login = "https://login.salesforce.com";
    let good = assertion(&emu, CLIENT_ID, JWT_USER, login, 180);
    let (status, body) = jwt_login(&emu, &good).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body.get("refresh_token").is_none(),
        "the JWT flow issues no refresh token"
    );
    let session = body["access_token"].as_str().unwrap();
    let limits = get(&emu, "/services/data/v62.0/limits", session).await;
    assert_eq!(limits.status(), StatusCode::OK, "the session works");

    // Another user's claims under this assertion's signature.
    let other = assertion(&emu, CLIENT_ID, "other@example.com", login, 180);
    let signature = good.rsplit('.').next().unwrap();
    let claims = other.rsplit_once('.').unwrap().0;
    let tampered = format!("{claims}.{signature}");
    let cases = [
        (tampered, "invalid_grant", "invalid assertion"),
        (
            assertion(&emu, CLIENT_ID, JWT_USER, login, -10),
            "invalid_grant",
            "invalid assertion",
        ),
        (
            assertion(&emu, CLIENT_ID, JWT_USER, "https://example.com", 180),
            "invalid_grant",
            "audience is invalid",
        ),
        (
            assertion(&emu, "someone-else", JWT_USER, login, 180),
            "invalid_client_id",
            "client identifier invalid",
        ),
        (
            assertion(&emu, CLIENT_ID, "intruder@example.com", login, 180),
            "invalid_grant",
            "user hasn't approved this consumer",
        ),
    ];
    for (assertion, error, description) in cases {
        let (status, body) = jwt_login(&emu, &assertion).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["error"], error, "{body}");
        assert_eq!(body["error_description"], description, "{body}");
    }
    emu.stop().await.unwrap();
}

#[tokio::test]
async fn without_a_certificate_the_org_refuses_the_jwt_grant() {
    let emu = start(SalesforceOptions::default()).await;
    let signed = assertion(
        &emu,
        CLIENT_ID,
        JWT_USER,
        "https://login.salesforce.com",
        180,
    );
    let (status, body) = jwt_login(&emu, &signed).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body["error_description"],
        "user hasn't approved this consumer"
    );
    emu.stop().await.unwrap();
}

#[tokio::test]
async fn with_tls_it_serves_https_trusted_through_its_own_ca() {
    let options = EmulatorOptions {
        tls: true,
        ..EmulatorOptions::default()
    };
    let emu = emulator::start("127.0.0.1:0".parse().unwrap(), options)
        .await
        .expect("emulator starts");
    assert_eq!(emu.base_url().scheme(), "https");
    let ca = emu.ca_certificate_pem().expect("a TLS emulator has a CA");
    let trusting = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
        .build()
        .unwrap();
    let versions = trusting
        .get(url(&emu, "/services/data/"))
        .send()
        .await
        .unwrap();
    assert_eq!(versions.status(), StatusCode::OK);
    let (status, body) = {
        let response = trusting
            .post(url(&emu, "/services/oauth2/token"))
            .form(&[
                ("grant_type", "refresh_token"),
                ("client_id", CLIENT_ID),
                ("refresh_token", REFRESH_TOKEN),
            ])
            .send()
            .await
            .unwrap();
        (response.status(), response.json::<Value>().await.unwrap())
    };
    assert_eq!(status, StatusCode::OK);
    assert!(body["instance_url"]
        .as_str()
        .unwrap()
        .starts_with("https://127.0.0.1:"));
    let stranger = reqwest::Client::new()
        .get(url(&emu, "/services/data/"))
        .send()
        .await;
    assert!(
        stranger.is_err(),
        "a client without the CA refuses the certificate"
    );
    emu.stop().await.unwrap();
}

#[tokio::test]
async fn a_per_app_limit_adds_its_usage_to_the_limit_header() {
    let emu = start(SalesforceOptions {
        per_app_api_limit: Some(250),
        ..SalesforceOptions::default()
    })
    .await;
    let session = access_token(&emu).await;
    let response = get(&emu, "/services/data/v62.0/limits", &session).await;
    assert_eq!(
        response.headers()["sforce-limit-info"],
        "api-usage=1/15000; per-app-api-usage=1/250(appName=pipewarden-demo)"
    );
    emu.stop().await.unwrap();
}
