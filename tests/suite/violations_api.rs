//! Violations over HTTP (JSON, CSV, filters, waivers, bearer token) and on the command line
//! (`rules check`, `rules backtest`, `violations waive`).

use std::process::Command;
use std::sync::Arc;

use pipewarden::api::{self, ApiState};
use pipewarden::query::{self, history::HistoryParams};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use super::alerts::three_jumps;
use super::rules::{salesforce_settings, SALESFORCE_RULE};
use super::sync::start_emulator;
use crate::support::{on_both_backends, ConfigDir, TestStore};

const API_TOKEN: &str = "violations-api-test-token";

fn pipewarden(config: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pipewarden"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env("RUST_LOG", "pipewarden=warn")
        .output()
        .expect("pipewarden runs")
}

async fn violations_are_listed_filtered_exported_and_waived(test: TestStore) {
    let emu = start_emulator().await;
    let dir = ConfigDir::new();
    dir.write("api-token", &format!("{API_TOKEN}\n"));
    let api_section = "[api]\nlisten = \"127.0.0.1:0\"\nbearer_token = { file = \"api-token\" }\n";
    let settings = salesforce_settings(&dir, &emu, &test.url, SALESFORCE_RULE, api_section);
    let ids = three_jumps(&emu, &test.store, &settings).await;

    // The deal's history lists its violation with the missing fields as JSON on both backends
    // (JSONB on PostgreSQL, text on SQLite).
    let history = query::history::run(
        &test.store,
        &HistoryParams {
            id: ids[0].clone(),
            connection: None,
            kind: Some("deal".into()),
        },
    )
    .await
    .unwrap();
    assert_eq!(history.violations.len(), 1, "{:?}", history.violations);
    assert!(
        history.violations[0]
            .missing_fields
            .as_array()
            .is_some_and(|fields| !fields.is_empty()),
        "{:?}",
        history.violations[0]
    );

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = api::routes(Arc::new(ApiState {
        store: test.store.clone(),
        settings: settings.clone(),
    }));
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });
    let client = reqwest::Client::new();
    let get = |query: &str| {
        client
            .get(format!("{base}/api/v1/violations{query}"))
            .bearer_auth(API_TOKEN)
            .send()
    };

    let refused = client
        .get(format!("{base}/api/v1/violations"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let wrong = client
        .get(format!("{base}/api/v1/violations"))
        .bearer_auth("not-the-token")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);

    let body: Value = get("?connection=sf&rule=sf-bant&status=open")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let listed = body["violations"].as_array().unwrap();
    assert!(listed
        .iter()
        .all(|v| v["status"] == json!("open") && v["rule_name"] == json!("sf-bant")));
    let ours: Vec<&Value> = listed
        .iter()
        .filter(|v| ids.contains(&v["crm_id"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(ours.len(), 3, "{listed:?}");
    assert_eq!(
        ours[0]["skipped_stages"],
        json!(["Qualification", "Needs Analysis"])
    );
    let owner = ours[0]["owner_id"].as_str().unwrap().to_string();
    let by_owner: Value = get(&format!("?owner={owner}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(by_owner["violations"]
        .as_array()
        .unwrap()
        .iter()
        .all(|v| v["owner_id"] == json!(owner)));
    let later: Value = get("?from=2030-01-01").await.unwrap().json().await.unwrap();
    assert_eq!(later["violations"], json!([]));

    let csv = get("?rule=sf-bant&format=csv").await.unwrap();
    assert_eq!(csv.headers()["content-type"], "text/csv; charset=utf-8");
    let text = csv.text().await.unwrap();
    assert!(text.starts_with("id,rule,connection,crm_id,kind,"));
    assert!(ids.iter().all(|id| text.contains(id.as_str())), "{text}");
    assert!(text.contains("Budget__c;Need__c;Authority__c"), "{text}");

    let bad = get("?status=closed").await.unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let bad: Value = bad.json().await.unwrap();
    assert_eq!(bad["error"]["code"], json!("bad_parameter"));
    assert_eq!(bad["error"]["parameter"], json!("status"));
    for (period, parameter) in [
        ("?from=2026-05-01&to=2026-04-01", "from"),
        ("?to=last%20week", "to"),
    ] {
        let bad: Value = get(period).await.unwrap().json().await.unwrap();
        assert_eq!(bad["error"]["code"], json!("bad_parameter"), "{bad}");
        assert_eq!(bad["error"]["parameter"], json!(parameter), "{bad}");
    }

    // Waive one over HTTP; a second waiver conflicts, an unknown id is not found.
    let id = ours[0]["id"].as_i64().unwrap();
    let waive = |id: i64, body: Value| {
        client
            .post(format!("{base}/api/v1/violations/{id}/waive"))
            .bearer_auth(API_TOKEN)
            .json(&body)
            .send()
    };
    let anonymous = waive(id, json!({"reason": "deal desk approved", "by": " "}))
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::BAD_REQUEST);
    let done = waive(id, json!({"reason": "deal desk approved", "by": "ana"}))
        .await
        .unwrap();
    assert_eq!(done.status(), StatusCode::OK);
    let done: Value = done.json().await.unwrap();
    assert_eq!(done["violation"]["status"], json!("waived"));
    assert_eq!(
        done["violation"]["waive_reason"],
        json!("deal desk approved")
    );
    let twice = waive(id, json!({"reason": "again", "by": "ana"}))
        .await
        .unwrap();
    assert_eq!(twice.status(), StatusCode::CONFLICT);
    let missing = waive(999_999, json!({"reason": "x", "by": "ana"}))
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let _ = stop.send(());
    server.await.unwrap().unwrap();

    // The command line: check, backtest and waive against the same store.
    let config = dir.path().join("pipewarden.toml").display().to_string();
    let check = pipewarden(&config, &["rules", "check"]);
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(out.contains("rule sf-bant: OK"), "{out}");
    let backtest = pipewarden(&config, &["rules", "backtest", "--since", "2026-01-05"]);
    let out = String::from_utf8_lossy(&backtest.stdout);
    assert!(backtest.status.success(), "{out}");
    assert!(
        out.contains("would have fired") && out.contains(&ids[1]),
        "{out}"
    );
    let bad_date = pipewarden(&config, &["rules", "backtest", "--since", "last week"]);
    assert_eq!(bad_date.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad_date.stderr).contains("is not a date or time"));

    let second = ours[1]["id"].as_i64().unwrap().to_string();
    let waived = pipewarden(
        &config,
        &[
            "violations",
            "waive",
            &second,
            "--reason",
            "pilot deal",
            "--by",
            "lee",
        ],
    );
    assert!(
        waived.status.success(),
        "{}",
        String::from_utf8_lossy(&waived.stderr)
    );
    let stored = test
        .store
        .violation(second.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (stored.status.as_str(), stored.waived_by.as_deref()),
        ("waived", Some("lee"))
    );
    let no_reason = pipewarden(&config, &["violations", "waive", &second, "--reason", " "]);
    assert!(!no_reason.status.success());
    emu.stop().await.unwrap();
}

on_both_backends!(violations_are_listed_filtered_exported_and_waived);
