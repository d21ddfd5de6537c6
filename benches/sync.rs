//! Backfill and incremental sync of the emulated Salesforce org, into SQLite and PostgreSQL.
//!
//! `cargo bench --bench sync -- small [tiny|large] [--postgres]`. The emulator runs in this
//! process; the sync runs as a `pipewarden sync --once` child, so the peak RSS printed is the
//! sync's alone (beside it, the most anonymous memory sampled: peak RSS also counts the
//! binary's code and the SQLite store pages read through the memory map). Prints records/s,
//! API calls against the fewest pages the REST API allows, peak RSS, and the time of an
//! incremental run that picks up 1,000 scripted changes; then a second backfill into a fresh
//! store through Bulk API 2.0 query jobs (`bulk_threshold = 0`), with its records/s and API
//! calls against the fewest that jobs allow.
//! PostgreSQL runs use `PIPEWARDEN_TEST_POSTGRES_URL` (default the local server) and create
//! two databases of their own, dropped at the end.

#[path = "support/postgres.rs"]
mod postgres;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pipewarden::emulator::{self, EmulatorOptions, RunningEmulator, Scale};
use serde_json::{json, Value};

const RECORD_OBJECTS: &[&str] = &[
    "Account",
    "Campaign",
    "Contact",
    "Lead",
    "Opportunity",
    "CampaignMember",
];
const HISTORY_OBJECTS: &[&str] = &["OpportunityHistory", "LeadHistory"];
const REST_PAGE: u64 = 2_000;
/// Records per bulk results chunk (the default `bulk_chunk_size`).
const BULK_CHUNK: u64 = 20_000;
/// Calls a bulk job costs besides its chunks: create, and the two polls the emulator's jobs
/// take to complete.
const JOB_CALLS: u64 = 3;
/// Metadata and describe calls a run makes besides paging.
const FIXED_CALLS: u64 = 3 + 6;
const CHANGES: usize = 1_000;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let postgres = args.iter().any(|a| a == "--postgres");
    let scale = match args
        .iter()
        .find(|a| !a.starts_with('-'))
        .map(String::as_str)
    {
        None | Some("small") => Scale::Small,
        Some("tiny") => Scale::Tiny,
        Some("large") => Scale::Large,
        Some(other) => {
            eprintln!("unknown scale {other:?}: expected tiny, small or large");
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(err) = runtime.block_on(bench(scale, postgres)) {
        eprintln!("benchmark failed: {err}");
        std::process::exit(1);
    }
}

/// Runs the benchmark on fresh stores: SQLite files, or two PostgreSQL databases of its own
/// (REST and Bulk backfills) that are dropped afterwards even when the run failed.
async fn bench(scale: Scale, postgres: bool) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    if !postgres {
        let sqlite = |name: &str| format!("sqlite://{}", dir.path().join(name).display());
        return measure(scale, false, [sqlite("rest.db"), sqlite("bulk.db")]).await;
    }
    let rest = postgres::create_database(&format!("pw_bench_rest_{}", std::process::id())).await?;
    let bulk =
        match postgres::create_database(&format!("pw_bench_bulk_{}", std::process::id())).await {
            Ok(bulk) => bulk,
            Err(err) => {
                // The creation error is the one worth reporting; the drop is best effort.
                let _ = postgres::drop_database(&rest).await;
                return Err(err);
            }
        };
    let outcome = measure(scale, true, [rest.clone(), bulk.clone()]).await;
    let dropped = postgres::drop_database(&rest)
        .await
        .and(postgres::drop_database(&bulk).await);
    match (outcome, dropped) {
        (Err(run), Err(drop)) => Err(format!("{run} (and dropping a database failed: {drop})")),
        (outcome, dropped) => outcome.and(dropped),
    }
}

/// The backfill, incremental and Bulk runs into the two stores.
async fn measure(
    scale: Scale,
    postgres: bool,
    [store_url, bulk_store_url]: [String; 2],
) -> Result<(), String> {
    let options = EmulatorOptions {
        scale,
        ..EmulatorOptions::default()
    };
    let emu = emulator::start("127.0.0.1:0".parse().unwrap(), options)
        .await
        .map_err(|e| e.to_string())?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let config = write_config(dir.path(), &emu, &store_url, "\"off\"")?;
    println!(
        "sync benchmark: {scale:?} funnel, store {}, {} CPU(s)",
        if postgres { "PostgreSQL" } else { "SQLite" },
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let (minimum, bulk_minimum) = minimum_calls(&emu).await?;

    let backfill = run_sync(&config)?;
    let records = stored_records(&backfill.output);
    println!(
        "backfill: {records} records in {:.1} s = {:.0} records/s; {} API calls (fewest possible {minimum}, ratio {:.3}); {}",
        backfill.elapsed.as_secs_f64(),
        records as f64 / backfill.elapsed.as_secs_f64(),
        backfill.api_calls(),
        backfill.api_calls() as f64 / minimum as f64,
        backfill.memory()
    );

    apply_changes(&emu).await?;
    let incremental = run_sync(&config)?;
    println!(
        "incremental after {CHANGES} scripted changes: {:.2} s, {} records read, {} API calls, {}",
        incremental.elapsed.as_secs_f64(),
        stored_records(&incremental.output),
        incremental.api_calls(),
        incremental.memory()
    );

    let bulk_dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let bulk_config = write_config(bulk_dir.path(), &emu, &bulk_store_url, "0")?;
    let bulk = run_sync(&bulk_config)?;
    let records = stored_records(&bulk.output);
    println!(
        "bulk backfill (Bulk API 2.0 jobs for record objects, REST for history): {records} records in {:.1} s = {:.0} records/s; {} API calls (fewest possible {bulk_minimum}, ratio {:.3}); {}",
        bulk.elapsed.as_secs_f64(),
        records as f64 / bulk.elapsed.as_secs_f64(),
        bulk.api_calls(),
        bulk.api_calls() as f64 / bulk_minimum as f64,
        bulk.memory()
    );
    emu.stop().await.map_err(|e| e.to_string())
}

struct SyncRun {
    elapsed: Duration,
    peak_rss_kb: u64,
    /// The most anonymous memory seen in the samples (a lower bound of its true peak).
    peak_anon_kb: u64,
    output: String,
}

impl SyncRun {
    fn memory(&self) -> String {
        format!(
            "peak RSS {:.1} MB (anonymous memory, sampled peak {:.1} MB)",
            self.peak_rss_kb as f64 / 1024.0,
            self.peak_anon_kb as f64 / 1024.0
        )
    }

    fn api_calls(&self) -> u64 {
        number_before(&self.output, " API calls")
    }
}

/// Runs `pipewarden sync --once` and samples its peak RSS until it exits.
fn run_sync(config: &Path) -> Result<SyncRun, String> {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pipewarden"))
        .arg("--config")
        .arg(config)
        .args(["sync", "--once"])
        .env("RUST_LOG", "pipewarden=warn")
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let (mut peak_rss_kb, mut peak_anon_kb) = (0, 0);
    let status = loop {
        peak_rss_kb = peak_rss_kb.max(status_kb(child.id(), "VmHWM:"));
        peak_anon_kb = peak_anon_kb.max(status_kb(child.id(), "RssAnon:"));
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed = started.elapsed();
    let mut output = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut output)
        .map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("sync failed ({status}): {output}"));
    }
    Ok(SyncRun {
        elapsed,
        peak_rss_kb,
        peak_anon_kb,
        output,
    })
}

/// A field of a process's `/proc` status (`VmHWM:`, `RssAnon:`), in kB (0 once it is gone).
fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(field))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The number written just before `label` in the run's summary line.
fn number_before(output: &str, label: &str) -> u64 {
    output
        .split(label)
        .next()
        .and_then(|head| head.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn stored_records(output: &str) -> u64 {
    number_before(output, " records read")
}

/// The fewest calls a backfill can make, plus the metadata and describe calls: through REST,
/// one page per 2,000 rows of each object; through bulk jobs, a job's create and polls and
/// one call per chunk of each record object (history objects stay on REST pages).
async fn minimum_calls(emu: &RunningEmulator) -> Result<(u64, u64), String> {
    let token = access_token(emu).await?;
    let mut calls = FIXED_CALLS;
    let mut bulk_calls = FIXED_CALLS;
    for object in RECORD_OBJECTS.iter().chain(HISTORY_OBJECTS) {
        let resource = if HISTORY_OBJECTS.contains(object) {
            "query"
        } else {
            "queryAll"
        };
        let url = soql_url(emu, resource, &format!("SELECT COUNT() FROM {object}"))?;
        let body: Value = reqwest::Client::new()
            .get(url)
            .bearer_auth(&token)
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        let rows = body["totalSize"].as_u64().unwrap_or(0);
        calls += rows.div_ceil(REST_PAGE).max(1);
        bulk_calls += if HISTORY_OBJECTS.contains(object) {
            rows.div_ceil(REST_PAGE).max(1)
        } else {
            JOB_CALLS + rows.div_ceil(BULK_CHUNK).max(1)
        };
    }
    Ok((calls, bulk_calls))
}

fn soql_url(emu: &RunningEmulator, resource: &str, soql: &str) -> Result<url::Url, String> {
    let mut url = emu
        .base_url()
        .join(&format!("services/data/v62.0/{resource}"))
        .map_err(|e| e.to_string())?;
    url.query_pairs_mut().append_pair("q", soql);
    Ok(url)
}

async fn access_token(emu: &RunningEmulator) -> Result<String, String> {
    let url = emu
        .base_url()
        .join("services/oauth2/token")
        .map_err(|e| e.to_string())?;
    let body: Value = reqwest::Client::new()
        .post(url)
        .form(&[
            ("grant_type", "refresh_token"),
            ("client_id", "pipewarden-demo"),
            ("refresh_token", "emulator-demo-refresh-token"),
        ])
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    Ok(body["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_string())
}

/// Moves 1,000 open opportunities one hour later, in batches as a data import would.
async fn apply_changes(emu: &RunningEmulator) -> Result<(), String> {
    let client = reqwest::Client::new();
    let base = emu.base_url();
    client
        .post(
            base.join("__emulator/clock/advance")
                .map_err(|e| e.to_string())?,
        )
        .json(&json!({"by": "1h"}))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let token = access_token(emu).await?;
    let soql = format!("SELECT Id FROM Opportunity WHERE IsClosed = false LIMIT {CHANGES}");
    let ids: Value = client
        .get(soql_url(emu, "query", &soql)?)
        .bearer_auth(&token)
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    let ids: Vec<&str> = ids["records"]
        .as_array()
        .map(|rows| rows.iter().filter_map(|r| r["Id"].as_str()).collect())
        .unwrap_or_default();
    for batch in ids.chunks(200) {
        let changes: Vec<Value> = batch
            .iter()
            .map(|id| json!({"object": "Opportunity", "id": id, "set": {"NextStep": "Benchmark follow-up"}, "by": {"kind": "import"}}))
            .collect();
        let response = client
            .post(
                base.join("__emulator/salesforce/changes")
                    .map_err(|e| e.to_string())?,
            )
            .json(&json!({ "changes": changes }))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!(
                "scripted changes refused: {}",
                response.text().await.unwrap_or_default()
            ));
        }
    }
    Ok(())
}

/// The bench connection; `bulk_threshold` is written as given (`0`, `"off"`).
fn write_config(
    dir: &Path,
    emu: &RunningEmulator,
    store_url: &str,
    bulk_threshold: &str,
) -> Result<std::path::PathBuf, String> {
    std::fs::write(dir.join("refresh-token"), "emulator-demo-refresh-token\n")
        .map_err(|e| e.to_string())?;
    let config = format!(
        r#"
[store]
url = "{store_url}"

[[connections]]
name = "bench"
kind = "salesforce"
login_url = "{}"
bulk_threshold = {bulk_threshold}

[connections.auth]
kind = "refresh_token"
client_id = "pipewarden-demo"
refresh_token = {{ file = "refresh-token" }}

[connections.limits]
requests_per_second = 1000
burst = 1000
daily_budget_share = 0.8
"#,
        emu.base_url()
    );
    let path = dir.join("pipewarden.toml");
    std::fs::write(&path, config).map_err(|e| e.to_string())?;
    Ok(path)
}
