//! Fault injection through the control API: each fault kind, each schedule, and replay by seed.

use std::time::Duration;

use pipewarden::emulator::{self, EmulatorOptions, RunningEmulator, Scale};
use reqwest::StatusCode;
use serde_json::{json, Value};

use super::emulator::{access_token, get, url};

const LIMITS: &str = "/services/data/v62.0/limits";

async fn start(seed: u64) -> RunningEmulator {
    let options = EmulatorOptions {
        seed,
        scale: Scale::Tiny,
        ..EmulatorOptions::default()
    };
    emulator::start("127.0.0.1:0".parse().unwrap(), options)
        .await
        .expect("emulator starts")
}

pub(crate) async fn set_faults(emu: &RunningEmulator, faults: Value) {
    let response = reqwest::Client::new()
        .put(url(emu, "/__emulator/faults"))
        .json(&json!({ "faults": faults }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "{}",
        response.text().await.unwrap()
    );
}

async fn fault_counters(emu: &RunningEmulator) -> Value {
    reqwest::get(url(emu, "/__emulator/faults"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn status_of(emu: &RunningEmulator, path: &str, token: &str) -> StatusCode {
    get(emu, path, token).await.status()
}

#[tokio::test]
async fn server_errors_fire_on_schedule_with_the_crm_bodies() {
    let emu = start(1).await;
    let token = access_token(&emu).await;
    set_faults(
        &emu,
        json!([{"kind": "server_error", "target": "salesforce", "next": 1}]),
    )
    .await;
    let failed = get(&emu, LIMITS, &token).await;
    assert_eq!(failed.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body: Value = failed.json().await.unwrap();
    assert_eq!(body[0]["errorCode"], "UNKNOWN_EXCEPTION");
    assert_eq!(
        status_of(&emu, LIMITS, &token).await,
        StatusCode::OK,
        "`next: 1` fires once"
    );
    assert_eq!(fault_counters(&emu).await["faults"][0]["fired"], 1);

    set_faults(&emu, json!([{"kind": "unavailable", "every": 3}])).await;
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(status_of(&emu, LIMITS, &token).await.as_u16());
    }
    assert_eq!(statuses, [200, 200, 503, 200, 200, 503]);

    set_faults(&emu, json!([{"kind": "bad_gateway", "next": 1}])).await;
    let gateway = get(&emu, LIMITS, &token).await;
    assert_eq!(gateway.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(
        gateway.headers()["content-type"],
        "text/html",
        "gateways answer in HTML"
    );
    emu.stop().await.unwrap();
}

#[tokio::test]
async fn resets_truncation_and_slowness_break_the_exchange_as_on_a_real_network() {
    let emu = start(1).await;
    let token = access_token(&emu).await;
    set_faults(&emu, json!([{"kind": "reset", "next": 1}])).await;
    let reset = match reqwest::Client::new()
        .get(url(&emu, LIMITS))
        .bearer_auth(&token)
        .send()
        .await
    {
        Ok(response) => response.bytes().await.is_err(),
        Err(_) => true,
    };
    assert!(reset, "the connection drops before a body arrives");

    set_faults(&emu, json!([{"kind": "truncated_json", "next": 1}])).await;
    let truncated = get(&emu, LIMITS, &token).await;
    assert_eq!(truncated.status(), StatusCode::OK);
    let text = truncated.text().await.unwrap();
    assert!(
        !text.is_empty() && serde_json::from_str::<Value>(&text).is_err(),
        "{text}"
    );

    set_faults(&emu, json!([{"kind": "slow", "delay_ms": 2000, "next": 1}])).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let slow = client
        .get(url(&emu, LIMITS))
        .bearer_auth(&token)
        .send()
        .await;
    assert!(
        slow.is_err_and(|err| err.is_timeout()),
        "the client gives up first"
    );
    emu.stop().await.unwrap();
}

#[tokio::test]
async fn limit_faults_answer_as_each_crm_does() {
    let emu = start(1).await;
    let token = access_token(&emu).await;
    set_faults(
        &emu,
        json!([
            {"kind": "concurrent_limit", "path_contains": "/limits", "next": 1},
            {"kind": "rate_limited", "target": "salesforce", "next": 1},
            {"kind": "rate_limited", "target": "hubspot", "next": 1},
        ]),
    )
    .await;
    let concurrent: Value = get(&emu, LIMITS, &token).await.json().await.unwrap();
    assert_eq!(
        concurrent[0]["message"],
        "ConcurrentPerOrgLongTxn Limit exceeded."
    );
    let daily = get(&emu, "/services/data/v62.0/", &token).await;
    assert_eq!(daily.status(), StatusCode::FORBIDDEN);
    let body: Value = daily.json().await.unwrap();
    assert_eq!(body[0]["errorCode"], "REQUEST_LIMIT_EXCEEDED");
    let hubspot = get(&emu, "/crm/v3/objects/deals", "pat-na1-emulator-demo-token").await;
    assert_eq!(hubspot.status(), StatusCode::TOO_MANY_REQUESTS);
    let body: Value = hubspot.json().await.unwrap();
    assert_eq!(body["policyName"], "TEN_SECONDLY_ROLLING");
    emu.stop().await.unwrap();
}

#[tokio::test]
async fn a_session_expiring_mid_paging_strands_the_locator() {
    let emu = start(1).await;
    let token = access_token(&emu).await;
    let first: Value = get(
        &emu,
        "/services/data/v62.0/query?q=SELECT+Id+FROM+Lead",
        &token,
    )
    .await
    .json()
    .await
    .unwrap();
    let next = first["nextRecordsUrl"].as_str().map(str::to_string);
    // Tiny has fewer than 2,000 leads; page through a small batch instead.
    let next = match next {
        Some(next) => next,
        None => {
            let response = reqwest::Client::new()
                .get(url(
                    &emu,
                    "/services/data/v62.0/query?q=SELECT+Id+FROM+Lead",
                ))
                .bearer_auth(&token)
                .header("Sforce-Query-Options", "batchSize=200")
                .send()
                .await
                .unwrap();
            let body: Value = response.json().await.unwrap();
            body["nextRecordsUrl"].as_str().unwrap().to_string()
        }
    };
    set_faults(
        &emu,
        json!([{"kind": "expire_session", "path_contains": "/query/", "next": 1}]),
    )
    .await;
    let expired = get(&emu, &next, &token).await;
    assert_eq!(expired.status(), StatusCode::UNAUTHORIZED);
    let fresh = access_token(&emu).await;
    let stranded: Value = get(&emu, &next, &fresh).await.json().await.unwrap();
    assert_eq!(
        stranded[0]["errorCode"], "INVALID_SESSION_ID",
        "the locator died with its session"
    );
    emu.stop().await.unwrap();
}

#[tokio::test]
async fn probabilistic_faults_replay_with_the_seed() {
    let mut runs = Vec::new();
    for _ in 0..2 {
        let emu = start(42).await;
        let token = access_token(&emu).await;
        set_faults(&emu, json!([{"kind": "unavailable", "probability": 0.5}])).await;
        let mut statuses = Vec::new();
        for _ in 0..40 {
            statuses.push(status_of(&emu, LIMITS, &token).await.as_u16());
        }
        emu.stop().await.unwrap();
        runs.push(statuses);
    }
    assert_eq!(runs[0], runs[1], "same seed, same faults");
    let failures = runs[0].iter().filter(|status| **status == 503).count();
    assert!((8..=32).contains(&failures), "about half fail: {failures}");
}

#[tokio::test]
async fn a_malformed_fault_plan_is_refused_with_the_reason() {
    let emu = start(1).await;
    let response = reqwest::Client::new()
        .put(url(&emu, "/__emulator/faults"))
        .json(&json!({"faults": [{"kind": "gremlins"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("gremlins"),
        "{body}"
    );
    emu.stop().await.unwrap();
}
