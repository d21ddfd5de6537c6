//! The command line, run as a user runs it.

use std::process::{Command, Output};

use crate::support::ConfigDir;

const FAKE_TOKEN: &str = "pat-na1-FAKE-0f3c9e1d-secret-token";
const FAKE_WEBHOOK: &str = "https://hooks.slack.com/services/T000/B000/FAKEwebhookSECRET";
const FAKE_DB_PASSWORD: &str = "FAKEdbPASSWORD42";

fn pipewarden(args: &[&str], vars: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pipewarden"));
    command
        .args(args)
        .env_remove("PIPEWARDEN_CONFIG")
        .env("RUST_LOG", "trace");
    for (name, value) in vars {
        command.env(name, value);
    }
    command.output().expect("pipewarden runs")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

const WITH_SECRETS: &str = r#"
[[connections]]
name = "acme-hubspot"
kind = "hubspot"
[connections.auth]
kind = "private_app"
token = { env = "TEST_HUBSPOT_TOKEN" }

[slack]
webhook_url = { env = "TEST_SLACK_WEBHOOK" }

[[rules]]
name = "gates"
connection = "acme-hubspot"
mode = "alert"
"#;

#[test]
fn config_check_prints_settings_but_never_the_secrets() {
    let dir = ConfigDir::new();
    let path = dir.write("pipewarden.toml", WITH_SECRETS);
    let db_url = format!("postgres://pw:{FAKE_DB_PASSWORD}@127.0.0.1:5432/pipewarden");
    let output = pipewarden(
        &["config", "check", "--config", path.to_str().unwrap()],
        &[
            ("TEST_HUBSPOT_TOKEN", FAKE_TOKEN),
            ("TEST_SLACK_WEBHOOK", FAKE_WEBHOOK),
            ("PIPEWARDEN__STORE__URL", &db_url),
        ],
    );
    let all = text(&output);
    assert!(output.status.success(), "{all}");
    for secret in [FAKE_TOKEN, FAKE_WEBHOOK, FAKE_DB_PASSWORD] {
        assert!(!all.contains(secret), "secret leaked in:\n{all}");
    }
    assert!(
        all.contains("**redacted** (env TEST_HUBSPOT_TOKEN)"),
        "{all}"
    );
    assert!(
        all.contains("**redacted** (env TEST_SLACK_WEBHOOK)"),
        "{all}"
    );
    assert!(
        all.contains("postgres://pw:**redacted**@127.0.0.1:5432/pipewarden"),
        "{all}"
    );
}

#[test]
fn config_check_fails_with_status_3_naming_the_key_and_no_secret() {
    let dir = ConfigDir::new();
    // The webhook is not an https URL: the error must say so without repeating it.
    let bad_webhook = "http://hooks.example.com/services/T000/B000/FAKEwebhookSECRET";
    let path = dir.write("pipewarden.toml", WITH_SECRETS);
    let output = pipewarden(
        &["config", "check", "--config", path.to_str().unwrap()],
        &[
            ("TEST_HUBSPOT_TOKEN", FAKE_TOKEN),
            ("TEST_SLACK_WEBHOOK", bad_webhook),
        ],
    );
    let all = text(&output);
    assert_eq!(output.status.code(), Some(3), "{all}");
    assert!(all.contains("slack.webhook_url"), "{all}");
    assert!(
        !all.contains("FAKEwebhookSECRET"),
        "secret leaked in:\n{all}"
    );
    assert!(!all.contains(FAKE_TOKEN), "secret leaked in:\n{all}");
}

#[test]
fn migrate_creates_the_store_then_finds_it_up_to_date() {
    let dir = ConfigDir::new();
    let url = format!("sqlite://{}", dir.path().join("cli.db").display());
    let first = pipewarden(&["migrate"], &[("PIPEWARDEN__STORE__URL", &url)]);
    assert!(first.status.success(), "{}", text(&first));
    assert!(
        String::from_utf8_lossy(&first.stdout)
            .contains("applied 14 migration(s), schema version 14"),
        "{}",
        text(&first)
    );
    let second = pipewarden(&["migrate"], &[("PIPEWARDEN__STORE__URL", &url)]);
    assert!(
        String::from_utf8_lossy(&second.stdout).contains("is up to date (schema version 14)"),
        "{}",
        text(&second)
    );
}

#[test]
fn json_logs_are_one_object_per_line() {
    let dir = ConfigDir::new();
    let url = format!("sqlite://{}", dir.path().join("json.db").display());
    let output = pipewarden(
        &["--log-format", "json", "migrate"],
        &[
            ("PIPEWARDEN__STORE__URL", &url),
            ("RUST_LOG", "pipewarden=info"),
        ],
    );
    assert!(output.status.success(), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(!lines.is_empty(), "migrate logs what it did");
    for line in lines {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert_eq!(value["level"], "INFO", "{line}");
    }
}

#[test]
fn an_unknown_subcommand_is_a_usage_error() {
    let output = pipewarden(&["sync-everything"], &[]);
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn emulate_serves_until_sigterm_then_exits_cleanly() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let mut child = Command::new(env!("CARGO_BIN_EXE_pipewarden"))
        .args(["emulate", "--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("emulator starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .trim()
        .rsplit(' ')
        .next()
        .expect("the banner ends with the URL")
        .to_string();
    assert!(base.starts_with("http://127.0.0.1:"), "{line}");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let versions: serde_json::Value = runtime.block_on(async {
        reqwest::get(format!("{base}services/data/"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    assert!(
        versions.as_array().is_some_and(|list| !list.is_empty()),
        "{versions}"
    );

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "graceful shutdown exits 0, got {status}");
}

#[test]
fn emulate_with_tls_writes_its_ca_for_clients_to_trust() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("emulator-ca.pem");
    let mut child = Command::new(env!("CARGO_BIN_EXE_pipewarden"))
        .args([
            "emulate",
            "--scale",
            "tiny",
            "--listen",
            "127.0.0.1:0",
            "--tls",
            "--ca-out",
        ])
        .arg(&ca_path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("emulator starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let written = lines.next().unwrap().unwrap();
    assert!(
        written.starts_with("CA certificate written to"),
        "{written}"
    );
    let banner = lines.next().unwrap().unwrap();
    let base = banner.rsplit(' ').next().unwrap().to_string();
    assert!(base.starts_with("https://127.0.0.1:"), "{banner}");

    let pem = std::fs::read(&ca_path).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let status = runtime.block_on(async {
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
            .build()
            .unwrap()
            .get(format!("{base}services/data/"))
            .send()
            .await
            .unwrap()
            .status()
    });
    assert_eq!(status, reqwest::StatusCode::OK);
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
}

#[test]
fn ca_out_without_tls_is_a_usage_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_pipewarden"))
        .args(["emulate", "--ca-out", "/tmp/never-written.pem"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--tls"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_once_stores_the_emulated_org_and_logs_no_secret_at_trace_level() {
    let options = pipewarden::emulator::EmulatorOptions::default();
    let emu = pipewarden::emulator::start("127.0.0.1:0".parse().unwrap(), options)
        .await
        .unwrap();
    let dir = ConfigDir::new();
    let store_url = format!("sqlite://{}", dir.path().join("store.db").display());
    let config = super::sync::write_config(&dir, &emu, &store_url, "127.0.0.1:0");
    let unknown_config = config.clone();
    let output = tokio::task::spawn_blocking(move || {
        pipewarden(&["--config", &config, "sync", "--once"], &[])
    })
    .await
    .unwrap();
    let all = text(&output);
    assert!(output.status.success(), "{all}");
    assert!(all.contains("sf: succeeded"), "{all}");
    assert!(
        !all.contains("emulator-demo-refresh-token"),
        "the refresh token leaked: {all}"
    );
    assert!(!all.contains("Bearer "), "an access token leaked: {all}");
    let unknown = pipewarden(
        &[
            "--config",
            &unknown_config,
            "sync",
            "--once",
            "--connection",
            "nope",
        ],
        &[],
    );
    assert_eq!(unknown.status.code(), Some(1));
    assert!(text(&unknown).contains("no connection named `nope`"));
    emu.stop().await.unwrap();
}
