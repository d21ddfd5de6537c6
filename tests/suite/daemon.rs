//! `pipewarden run` and `sync --once` as processes: probes, metrics, SIGTERM, and SIGKILL at
//! random points followed by a restart that still reaches the emulator's ground truth.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use pipewarden::emulator::RunningEmulator;
use pipewarden::store::{SyncRunStatus, ABANDONED_RUN_MESSAGE};
use rand::Rng;
use serde_json::json;

use super::emulator_faults::set_faults;
use super::sync::{assert_store_matches_truth, connection_id, start_emulator, write_config};
use crate::support::{on_both_backends, ConfigDir, TestStore};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(crate) fn spawn(config: &str, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_pipewarden"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env("RUST_LOG", "pipewarden=warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("pipewarden starts")
}

pub(crate) fn signal(child: &Child, name: &str) {
    let sent = Command::new("kill")
        .args([name, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
}

/// Waits for the process to end, at most `limit`.
pub(crate) async fn wait_for_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "pipewarden did not exit within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `url` until its body satisfies `done`, at most 30 seconds.
async fn poll_until(url: &str, done: impl Fn(&str) -> bool) -> String {
    for _ in 0..300 {
        if let Ok(response) = reqwest::get(url).await {
            let body = response.text().await.unwrap_or_default();
            if done(&body) {
                return body;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{url} never answered as expected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_syncs_serves_probes_and_metrics_and_stops_on_sigterm() {
    let emu = start_emulator().await;
    let test = TestStore::sqlite().await;
    let dir = ConfigDir::new();
    let listen = format!("127.0.0.1:{}", free_port());
    let config = write_config(&dir, &emu, &test.url, &listen);
    let mut child = spawn(&config, &["run"]);

    assert_eq!(
        poll_until(&format!("http://{listen}/healthz"), |b| b == "ok\n").await,
        "ok\n"
    );
    let metrics = poll_until(&format!("http://{listen}/metrics"), |body| {
        body.contains(r#"pipewarden_sync_runs_total{connection="sf",status="succeeded"} 1"#)
    })
    .await;
    let records: f64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix(r#"pipewarden_records_synced_total{connection="sf"} "#))
        .expect("records counter")
        .parse()
        .unwrap();
    assert!(records > 100.0, "{metrics}");
    assert!(
        metrics.contains(r#"pipewarden_api_daily_remaining{connection="sf"}"#),
        "{metrics}"
    );
    let ready = reqwest::get(format!("http://{listen}/readyz"))
        .await
        .unwrap();
    assert_eq!(ready.status(), reqwest::StatusCode::OK);
    let openapi: serde_json::Value = reqwest::get(format!("http://{listen}/api/v1/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        openapi["paths"]["/api/v1/as-of"].is_object(),
        "the daemon serves the query API: {openapi}"
    );

    signal(&child, "-TERM");
    let status = wait_for_exit(&mut child, Duration::from_secs(30)).await;
    assert!(
        status.success(),
        "SIGTERM ends the daemon cleanly, got {status}"
    );
    let id = connection_id(&test.store).await;
    assert_store_matches_truth(&test.store, id, &emu).await;
    emu.stop().await.unwrap();
}

async fn sigkill_at_random_points_then_resume_reaches_the_truth(test: TestStore) {
    let emu = start_emulator().await;
    let dir = ConfigDir::new();
    let config = write_config(&dir, &emu, &test.url, "127.0.0.1:0");
    // Slow answers stretch the run so that kills land between and inside pages.
    set_faults(
        &emu,
        json!([{"kind": "slow", "delay_ms": 150, "target": "salesforce"}]),
    )
    .await;
    let mut rng = rand::rng();
    for round in 0..4 {
        if round == 2 {
            // Half-way, simulated weeks pass: the later kills hit an incremental run.
            super::emulator::control(&emu, "/__emulator/clock/advance", json!({"by": "20d"})).await;
        }
        let mut child = spawn(&config, &["sync", "--once"]);
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..2_500))).await;
        signal(&child, "-KILL");
        wait_for_exit(&mut child, Duration::from_secs(10)).await;
    }
    set_faults(&emu, json!([])).await;
    let mut last = spawn(&config, &["sync", "--once"]);
    let status = wait_for_exit(&mut last, Duration::from_secs(120)).await;
    assert!(status.success(), "the resumed run finishes, got {status}");
    let id = connection_id(&test.store).await;
    let runs = test.store.recent_sync_runs(id, 10).await.unwrap();
    // Each killed run's row is closed by the connection's next run.
    let killed = runs
        .iter()
        .filter(|r| {
            r.status == SyncRunStatus::Failed && r.message.as_deref() == Some(ABANDONED_RUN_MESSAGE)
        })
        .count();
    assert!(killed >= 2, "kills landed inside runs: {runs:?}");
    assert!(
        runs.iter().all(|r| r.status != SyncRunStatus::Running),
        "{runs:?}"
    );
    assert_eq!(runs[0].status, SyncRunStatus::Succeeded);
    assert_store_matches_truth(&test.store, id, &emu).await;
    emu.stop().await.unwrap();
}

on_both_backends!(
    sigkill_at_random_points_then_resume_reaches_the_truth,
    sigint_ends_sync_once_without_waiting_for_a_slow_answer
);

/// Waits until the emulator's first fault rule has fired once (a `slow` answer is then held
/// back), at most 30 seconds.
pub(crate) async fn until_the_first_fault_fired(emu: &RunningEmulator) {
    let url = emu.base_url().join("__emulator/faults").unwrap();
    for _ in 0..300 {
        let state: serde_json::Value = reqwest::get(url.clone())
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if state["faults"][0]["fired"] == 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no request met the fault");
}

async fn sigint_ends_sync_once_without_waiting_for_a_slow_answer(test: TestStore) {
    let emu = start_emulator().await;
    let dir = ConfigDir::new();
    let config = write_config(&dir, &emu, &test.url, "127.0.0.1:0");
    sync_to_end(&config).await;
    super::emulator::control(&emu, "/__emulator/clock/advance", json!({"by": "20d"})).await;
    // Far longer than the wait below: a run that sat out the answer would miss it.
    set_faults(
        &emu,
        json!([{"kind": "slow", "delay_ms": 30_000, "target": "salesforce",
                "path_contains": "/query", "next": 1}]),
    )
    .await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_pipewarden"))
        .args(["--config", &config, "sync", "--once"])
        .env("RUST_LOG", "pipewarden=warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    until_the_first_fault_fired(&emu).await;
    signal(&child, "-INT");
    let status = wait_for_exit(&mut child, Duration::from_secs(10)).await;
    let mut printed = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut printed).unwrap();
    assert_eq!(status.code(), Some(1), "{printed}");
    assert!(printed.contains("sf: interrupted"), "{printed}");
    let id = connection_id(&test.store).await;
    let runs = test.store.recent_sync_runs(id, 1).await.unwrap();
    assert_eq!(runs[0].status, SyncRunStatus::Interrupted, "{runs:?}");

    let next = sync_to_end(&config).await;
    assert!(next.contains("sf: succeeded"), "{next}");
    assert_store_matches_truth(&test.store, id, &emu).await;
    emu.stop().await.unwrap();
}

/// Runs `sync --once` to the end and returns its standard output.
async fn sync_to_end(config: &str) -> String {
    let config = config.to_string();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_pipewarden"))
            .args(["--config", &config, "sync", "--once"])
            .env("RUST_LOG", "pipewarden=warn")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_postgres_take_turns_and_a_killed_one_hands_over() {
    let Some((test, emu, _dir, config)) = slow_postgres_setup(300).await else {
        return;
    };
    let mut first = spawn(&config, &["sync", "--once"]);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(
        first.try_wait().unwrap().is_none(),
        "the first replica is still syncing"
    );
    let second = sync_to_end(&config).await;
    assert!(
        second.contains("sf: skipped: connection `sf`: another replica is syncing it"),
        "{second}"
    );

    signal(&first, "-KILL");
    wait_for_exit(&mut first, Duration::from_secs(10)).await;
    set_faults(&emu, json!([])).await;
    let third = sync_to_end(&config).await;
    assert!(
        third.contains("sf: succeeded"),
        "the lease died with the killed replica: {third}"
    );
    let id = connection_id(&test.store).await;
    assert_store_matches_truth(&test.store, id, &emu).await;
    emu.stop().await.unwrap();
}

/// A PostgreSQL store, an emulator whose Salesforce answers each take `delay_ms`, and a config
/// syncing one into the other; `None` where PostgreSQL tests are skipped.
async fn slow_postgres_setup(
    delay_ms: u64,
) -> Option<(TestStore, RunningEmulator, ConfigDir, String)> {
    let test = TestStore::postgres().await?;
    let emu = start_emulator().await;
    let dir = ConfigDir::new();
    let config = write_config(&dir, &emu, &test.url, "127.0.0.1:0");
    set_faults(
        &emu,
        json!([{"kind": "slow", "delay_ms": delay_ms, "target": "salesforce"}]),
    )
    .await;
    Some((test, emu, dir, config))
}

/// Ends the database session holding this test database's sync lease; whether one was held.
async fn cut_lease_session(store_url: &str) -> bool {
    use sqlx::Connection;
    let mut db = sqlx::PgConnection::connect(store_url).await.unwrap();
    let cut: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    db.close().await.ok();
    cut.contains(&true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_lease_session_dies_stops_and_the_next_run_resumes() {
    let Some((test, emu, _dir, config)) = slow_postgres_setup(500).await else {
        return;
    };
    let run = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_pipewarden"))
                .args(["--config", &config, "sync", "--once"])
                .env("RUST_LOG", "pipewarden=error")
                .output()
                .unwrap()
        })
    };
    let mut cut = false;
    for _ in 0..100 {
        if cut_lease_session(&test.url).await {
            cut = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(cut, "the run held a lease");
    let output = run.await.unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        printed.contains("the sync lease was lost with its database session"),
        "{printed}"
    );

    set_faults(&emu, json!([])).await;
    let next = sync_to_end(&config).await;
    assert!(next.contains("sf: succeeded"), "{next}");
    let id = connection_id(&test.store).await;
    assert_store_matches_truth(&test.store, id, &emu).await;
    emu.stop().await.unwrap();
}

/// A released lease is free at once for the next run: runs one after another never find
/// the lease of the one before still held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_lease_is_free_at_once() {
    let Some(test) = TestStore::postgres().await else {
        return;
    };
    for round in 0..200 {
        let lease = test.store.try_lease("sf").await.unwrap();
        let lease =
            lease.unwrap_or_else(|| panic!("round {round}: the lease given back is still held"));
        lease.release().await;
    }
}

#[tokio::test]
async fn a_transaction_under_a_lease_taken_over_is_fenced_off() {
    let Some(test) = TestStore::postgres().await else {
        return;
    };
    let first = test.store.try_lease("sf").await.unwrap().expect("free");
    let stale = first.fence().expect("PostgreSQL leases are fenced");
    // Its session dies (as with a network cut) and another replica takes the lease over.
    first.release().await;
    let second = test
        .store
        .try_lease("sf")
        .await
        .unwrap()
        .expect("free again");
    let current = second.fence().unwrap();
    let mut tx = test.store.begin().await.unwrap();
    assert!(
        !tx.hold_fence(&stale).await.unwrap(),
        "the old holder's transaction sees the takeover"
    );
    assert!(tx.hold_fence(&current).await.unwrap());
    tx.commit().await.unwrap();

    // A takeover waits for a transaction that has passed the check to end.
    let mut holding = test.store.begin().await.unwrap();
    assert!(holding.hold_fence(&current).await.unwrap());
    second.release().await;
    let takeover = tokio::spawn({
        let store = test.store.clone();
        async move { store.try_lease("sf").await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !takeover.is_finished(),
        "the takeover waits for the fenced transaction"
    );
    holding.commit().await.unwrap();
    let third = takeover.await.unwrap();
    assert!(third.is_some(), "then it takes the lease");

    // A transaction that stays open past the takeover's wait (a stalled client) makes the
    // takeover give up rather than hang: the lease is left for later.
    let mut stalled = test.store.begin().await.unwrap();
    assert!(stalled
        .hold_fence(&third.as_ref().unwrap().fence().unwrap())
        .await
        .unwrap());
    third.unwrap().release().await;
    assert!(test.store.try_lease("sf").await.unwrap().is_none());
    stalled.commit().await.unwrap();
    assert!(test.store.try_lease("sf").await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_on_one_sqlite_store_is_refused_with_the_reason() {
    let emu = start_emulator().await;
    let test = TestStore::sqlite().await;
    let dir = ConfigDir::new();
    let listen = format!("127.0.0.1:{}", free_port());
    let config = write_config(&dir, &emu, &test.url, &listen);
    let mut daemon = spawn(&config, &["run"]);
    poll_until(&format!("http://{listen}/healthz"), |b| b == "ok\n").await;
    let config_path = config.clone();
    let refused = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_pipewarden"))
            .args(["--config", &config_path, "sync", "--once"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("SQLite serves one replica"), "{stderr}");
    signal(&daemon, "-TERM");
    assert!(wait_for_exit(&mut daemon, Duration::from_secs(30))
        .await
        .success());
    emu.stop().await.unwrap();
}
