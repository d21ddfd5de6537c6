//! The query API over HTTP and the `pipewarden query` command: same answers as the library,
//! bearer-token auth, and errors that name what is wrong.

use std::process::Command;
use std::sync::Arc;

use pipewarden::api::{self, ApiState};
use pipewarden::config::Settings;
use pipewarden::query::{self, format_instant};
use reqwest::StatusCode;
use serde_json::Value;
use tokio::sync::oneshot;

use super::queries::{sync_now, World};
use crate::support::{on_both_backends, ConfigDir, TestStore};

const TOKEN: &str = "test-api-token-5f1c";

/// The query API on a free loopback port, until the returned sender is dropped or fired.
async fn serve(
    store: pipewarden::store::Store,
    settings: Settings,
) -> (String, oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = api::routes(Arc::new(ApiState { store, settings }));
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    (base, stop)
}

/// A world like `synced_world`, with a bearer token in the configuration.
async fn world_with_token(test: &TestStore) -> (World, ConfigDir) {
    let world = super::queries::synced_world(test).await;
    let dir = ConfigDir::new();
    let path = super::sync::write_config(&dir, &world.emu, &test.url, "127.0.0.1:0");
    dir.write("api-token", &format!("{TOKEN}\n"));
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "listen = \"127.0.0.1:0\"",
        "listen = \"127.0.0.1:0\"\nbearer_token = { file = \"api-token\" }",
    );
    std::fs::write(&path, text).unwrap();
    (world, dir)
}

async fn get(url: &str, token: Option<&str>) -> (StatusCode, Value) {
    let mut request = reqwest::Client::new().get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn http_answers_like_the_library_and_checks_tokens_and_parameters(test: TestStore) {
    let (world, dir) = world_with_token(&test).await;
    let settings =
        pipewarden::config::load(Some(dir.path().join("pipewarden.toml").as_ref())).unwrap();
    assert!(settings.api.bearer_token.is_some());
    let (base, stop) = serve(test.store.clone(), settings).await;
    let at = format_instant(world.syncs[1]);
    let as_of = format!("{base}/api/v1/as-of?at={at}");

    let (status, body) = get(&as_of, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["code"], "unauthorized");
    let (status, _) = get(&as_of, Some("test-api-token-5f1d")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        !body.to_string().contains(TOKEN),
        "the token is never echoed"
    );

    let (status, body) = get(&as_of, Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let expected = query::as_of::run(
        &test.store,
        &query::as_of::AsOfParams {
            at: at.clone(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(body, serde_json::to_value(&expected).unwrap());

    let from = format_instant(world.syncs[0] - 90 * 86_400_000);
    let to = format_instant(world.syncs[2]);
    let (status, body) = get(
        &format!("{base}/api/v1/cohort?period=quarter&start=created&outcome=won&kind=lead&by=campaign&view=nurture"),
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["view"], "nurture");
    for path in [
        format!("pipeline-diff?from={from}&to={to}"),
        format!("funnel?from={from}&to={to}&by=owner"),
        format!("campaigns?from={from}&to={to}"),
    ] {
        let (status, body) = get(&format!("{base}/api/v1/{path}"), Some(TOKEN)).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
    }

    // (query, parameter named, words the message must hold)
    let bad = [
        ("as-of?at=2026-02-30", Some("at"), "2026-02-30"),
        ("as-of", None, "at"),
        (
            "as-of?at=2026-02-01&stage=Closed%20Maybe",
            Some("stage"),
            "Closed Maybe",
        ),
        (
            "as-of?at=2026-02-01&connection=nope",
            Some("connection"),
            "nope",
        ),
        (
            "pipeline-diff?from=2026-03-01&to=2026-02-01",
            Some("from"),
            "not before",
        ),
        ("funnel?from=2026-01-01&to=2026-02-01&by=team", None, "team"),
        (
            "cohort?period=week&start=created&outcome=won",
            Some("period"),
            "week",
        ),
        (
            "cohort?period=month&start=created&outcome=signed",
            Some("outcome"),
            "signed",
        ),
        (
            "cohort?period=month&start=created&outcome=won&colour=red",
            None,
            "colour",
        ),
    ];
    for (path, parameter, words) in bad {
        let (status, body) = get(&format!("{base}/api/v1/{path}"), Some(TOKEN)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert_eq!(body["error"]["code"], "bad_parameter", "{path}");
        if let Some(parameter) = parameter {
            assert_eq!(body["error"]["parameter"], parameter, "{path}: {body}");
        }
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(words), "{path}: {message}");
    }
    let (status, body) = get(&format!("{base}/api/v1/history?id=006NOPE"), Some(TOKEN)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, _) = get(&format!("{base}/api/v1/nothing-here"), Some(TOKEN)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, openapi) = get(&format!("{base}/api/v1/openapi.json"), Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK);
    let mut paths: Vec<&str> = openapi["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            "/api/v1/as-of",
            "/api/v1/campaigns",
            "/api/v1/cohort",
            "/api/v1/funnel",
            "/api/v1/history",
            "/api/v1/pipeline-diff",
            "/api/v1/recycled",
            "/api/v1/violations"
        ]
    );
    // Every described parameter is one the route accepts (an unknown one would be a 400
    // naming it, not a complaint about its value).
    for (path, item) in openapi["paths"].as_object().unwrap() {
        for parameter in item["get"]["parameters"].as_array().unwrap() {
            let name = parameter["name"].as_str().unwrap();
            let (_, body) = get(&format!("{base}{path}?{name}=x"), Some(TOKEN)).await;
            let message = body["error"]["message"].as_str().unwrap_or_default();
            assert!(
                !message.contains("unknown field"),
                "{path} refuses its described parameter {name}: {message}"
            );
        }
    }
    stop.send(()).unwrap();
    world.emu.stop().await.unwrap();
}

fn pipewarden(config: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pipewarden"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env("RUST_LOG", "pipewarden=warn")
        .output()
        .expect("pipewarden runs")
}

async fn cli_prints_tables_json_and_csv_and_names_bad_parameters(test: TestStore) {
    let (world, dir) = world_with_token(&test).await;
    let config = dir.path().join("pipewarden.toml").display().to_string();
    let at = format_instant(world.syncs[1]);

    let output = pipewarden(
        &config,
        &["query", "as-of", "--at", &at, "--format", "json"],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed: Value = serde_json::from_slice(&output.stdout).unwrap();
    let expected = query::as_of::run(
        &test.store,
        &query::as_of::AsOfParams {
            at: at.clone(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(printed, serde_json::to_value(&expected).unwrap());

    let output = pipewarden(&config, &["query", "as-of", "--at", &at]);
    let table = String::from_utf8(output.stdout).unwrap();
    assert!(table.starts_with("Open pipeline of sf at "), "{table}");
    assert!(table.contains("\nTOTAL "), "{table}");

    let output = pipewarden(
        &config,
        &[
            "query",
            "cohort",
            "--period",
            "month",
            "--start",
            "created",
            "--outcome",
            "meeting_booked",
            "--horizon",
            "2",
            "--format",
            "csv",
        ],
    );
    let csv = String::from_utf8(output.stdout).unwrap();
    assert_eq!(
        csv.lines().next(),
        Some("group,cohort,size,+0,+1,+2,later"),
        "{csv}"
    );

    let output = pipewarden(
        &config,
        &[
            "query",
            "pipeline-diff",
            "--from",
            "2026-03-01",
            "--to",
            "2026-13-01",
        ],
    );
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("parameter `to`") && stderr.contains("2026-13-01"),
        "{stderr}"
    );

    let output = pipewarden(&config, &["query", "history", "0069999999999999AAA"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no record with id"));
    world.emu.stop().await.unwrap();
}

/// A later sync shows in the next answer: the API reads the store, never a cache.
async fn answers_follow_new_syncs(test: TestStore) {
    let (world, dir) = world_with_token(&test).await;
    let settings =
        pipewarden::config::load(Some(dir.path().join("pipewarden.toml").as_ref())).unwrap();
    let (base, stop) = serve(test.store.clone(), settings.clone()).await;
    super::emulator::control(
        &world.emu,
        "/__emulator/clock/advance",
        serde_json::json!({"by": "10d"}),
    )
    .await;
    sync_now(&test, &settings).await;
    let now = format_instant(world.emu.clock().now_ms());
    let (status, body) = get(&format!("{base}/api/v1/as-of?at={now}"), Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK);
    let expected = query::as_of::run(
        &test.store,
        &query::as_of::AsOfParams {
            at: now,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        body["total"],
        serde_json::to_value(&expected.total).unwrap()
    );
    stop.send(()).unwrap();
    world.emu.stop().await.unwrap();
}

on_both_backends!(
    http_answers_like_the_library_and_checks_tokens_and_parameters,
    cli_prints_tables_json_and_csv_and_names_bad_parameters,
    answers_follow_new_syncs,
);
