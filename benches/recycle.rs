//! Lead recycling: planning over a large store, and apply throughput against the write rate
//! the connection's limit allows.
//!
//! `cargo bench --bench recycle -- [LEADS] [APPLY_LEADS]` (defaults 1,000,000 and 4,000).
//!
//! 1. Planning: a SQLite store is filled with LEADS leads (one in ten stale, some opted out,
//!    some of an excluded owner, some already recycled), and a stale policy capped at 1,000
//!    actions is planned over it, as `recycle plan` does. Target: ≤ 5 s for 1M leads.
//! 2. Apply: the emulator (`small` scale) is synced (leads only), then a stale policy setting
//!    Lead Status is applied for up to APPLY_LEADS leads through a connection paced at
//!    2 requests/s; with collections of 200 records that allows 400 writes/s. Prints the
//!    delivery rate and its share of that allowance (target ≥ 90%).

use std::time::Instant;

use pipewarden::config::settings::CrmKind;
use pipewarden::emulator::{self, EmulatorOptions, Scale};
use pipewarden::recycle::{self, ApplyOptions, RecycleOptions};
use pipewarden::stop::StopSignal;
use pipewarden::store::Store;
use pipewarden::sync::{self, SyncOptions};
use sqlx::Connection;

const DAY_MS: i64 = 86_400_000;
const AS_OF: i64 = 1_767_603_600_000;
const REQUESTS_PER_SECOND: u32 = 2;
const COLLECTION: u32 = 200;

fn main() {
    let mut numbers = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .map(|a| a.parse::<i64>().expect("LEADS and APPLY_LEADS are numbers"));
    let leads = numbers.next().unwrap_or(1_000_000);
    let apply_leads = numbers.next().unwrap_or(4_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(err) = runtime.block_on(async {
        plan_bench(leads).await?;
        apply_bench(apply_leads).await
    }) {
        eprintln!("benchmark failed: {err}");
        std::process::exit(1);
    }
}

fn config(store_url: &str, login_url: &str, cap: i64, extra: &str) -> String {
    format!(
        r#"
[store]
url = "{store_url}"

[[connections]]
name = "bench"
kind = "salesforce"
login_url = "{login_url}"
objects = ["Lead"]

[connections.auth]
kind = "refresh_token"
client_id = "pipewarden-demo"
refresh_token = {{ file = "token" }}

[connections.limits]
requests_per_second = {REQUESTS_PER_SECOND}
burst = {REQUESTS_PER_SECOND}

[recycle]
max_actions_per_run = {cap}

[[recycle.policies]]
name = "stale-leads"
connection = "bench"
kind = "stale"
after_days = 30
dry_run = false
max_actions_per_run = {cap}
{extra}

[recycle.policies.actions]
set_status = "Nurture"
"#
    )
}

async fn plan_bench(leads: i64) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    std::fs::write(dir.path().join("token"), "unused\n").map_err(|e| e.to_string())?;
    let path = dir.path().join("pipewarden.toml");
    std::fs::write(
        &path,
        config(
            &url,
            "http://127.0.0.1:9",
            1_000,
            "exclude_owners = [\"005EXCLUDED\"]",
        ),
    )
    .map_err(|e| e.to_string())?;
    let settings = pipewarden::config::load(Some(&path)).map_err(|e| e.to_string())?;
    let store = Store::open_migrated(&settings.store)
        .await
        .map_err(|e| e.to_string())?;
    let connection_id = store
        .ensure_connection("bench", CrmKind::Salesforce, 0)
        .await
        .map_err(|e| e.to_string())?;
    let filled = Instant::now();
    fill(&url, connection_id, leads).await?;
    println!(
        "stored {leads} leads in {:.1}s",
        filled.elapsed().as_secs_f64()
    );
    let options = RecycleOptions {
        policy: None,
        as_of: AS_OF,
    };
    for round in 1..=2 {
        let started = Instant::now();
        let plan = recycle::plan(&store, &settings, &options)
            .await
            .map_err(|e| e.to_string())?;
        println!(
            "plan {round} over {leads} leads: {} records, {} actions (cap 1,000; more held back: {}) in {:.2}s (target ≤ 5 s for 1M)",
            plan.policies[0].records.len(),
            plan.policies[0].action_count(),
            plan.policies[0].held_back,
            started.elapsed().as_secs_f64()
        );
    }
    store.close().await;
    Ok(())
}

/// Leads: one in ten inactive for 60 days (stale), the rest active yesterday; every 25th
/// opted out, every 40th of the excluded owner, every 13th converted, every 97th already
/// recycled last week.
async fn fill(url: &str, connection_id: i64, leads: i64) -> Result<(), String> {
    let mut db = sqlx::SqliteConnection::connect(url)
        .await
        .map_err(|e| e.to_string())?;
    let statements = [
        "PRAGMA journal_mode = WAL".to_string(),
        "PRAGMA synchronous = OFF".to_string(),
        format!(
            "INSERT INTO records (id, connection_id, object_kind, crm_object, crm_id, name, status, owner_id, \
             crm_created_at_ms, crm_modified_at_ms, last_activity_at_ms, fields, content_hash, first_seen_at_ms, \
             last_seen_at_ms) \
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {leads}) \
             SELECT i, {connection_id}, 'lead', 'Lead', 'L' || i, 'Lead ' || i, \
             CASE WHEN i % 13 = 0 THEN 'Closed - Converted' ELSE 'Working - Contacted' END, \
             CASE WHEN i % 40 = 0 THEN '005EXCLUDED' ELSE '005REP' || (i % 50) END, \
             {AS_OF} - 200 * {DAY_MS}, {AS_OF} - {DAY_MS}, \
             CASE WHEN i % 10 = 0 THEN {AS_OF} - 60 * {DAY_MS} - i ELSE {AS_OF} - {DAY_MS} END, \
             '{{\"IsConverted\":' || CASE WHEN i % 13 = 0 THEN 'true' ELSE 'false' END || \
             ',\"HasOptedOutOfEmail\":' || CASE WHEN i % 25 = 0 THEN 'true' ELSE 'false' END || '}}', \
             x'00', 0, 0 FROM n"
        ),
        "INSERT INTO recycle_runs (id, as_of_ms, started_at_ms) VALUES (1, 0, 0)".to_string(),
        format!(
            "INSERT INTO recycle_actions (plan_key, policy, connection_id, record_id, action, params, reason, status, \
             dry_run, planned_at_ms, run_id, recycled_at_ms) \
             SELECT 'bench/' || id, 'stale-leads', {connection_id}, id, 'set_status', '{{}}', 'bench', 'applied', 0, \
             {AS_OF} - 7 * {DAY_MS}, 1, {AS_OF} - 7 * {DAY_MS} FROM records WHERE id % 97 = 0"
        ),
        "ANALYZE".to_string(),
    ];
    for statement in statements {
        sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
            .execute(&mut db)
            .await
            .map_err(|e| e.to_string())?;
    }
    db.close().await.map_err(|e| e.to_string())
}

async fn apply_bench(apply_leads: i64) -> Result<(), String> {
    let emu = emulator::start(
        "127.0.0.1:0".parse().expect("address"),
        EmulatorOptions {
            scale: Scale::Small,
            ..EmulatorOptions::default()
        },
    )
    .await
    .map_err(|e| e.to_string())?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let url = format!("sqlite://{}", dir.path().join("apply.db").display());
    std::fs::write(dir.path().join("token"), "emulator-demo-refresh-token\n")
        .map_err(|e| e.to_string())?;
    let path = dir.path().join("pipewarden.toml");
    // The sync runs unpaced; the limit applies to the apply below.
    std::fs::write(
        &path,
        config(&url, emu.base_url().as_str(), apply_leads, "").replace(
            &format!("requests_per_second = {REQUESTS_PER_SECOND}\nburst = {REQUESTS_PER_SECOND}"),
            "requests_per_second = 500\nburst = 500",
        ),
    )
    .map_err(|e| e.to_string())?;
    let settings = pipewarden::config::load(Some(&path)).map_err(|e| e.to_string())?;
    let store = Store::open_migrated(&settings.store)
        .await
        .map_err(|e| e.to_string())?;
    let synced = Instant::now();
    sync::sync_once(
        &store,
        &settings.connections[0],
        &SyncOptions::default(),
        &StopSignal::never(),
    )
    .await
    .map_err(|e| e.to_string())?;
    println!(
        "synced the small emulator's leads in {:.1}s",
        synced.elapsed().as_secs_f64()
    );
    std::fs::write(
        &path,
        config(&url, emu.base_url().as_str(), apply_leads, ""),
    )
    .map_err(|e| e.to_string())?;
    let settings = pipewarden::config::load(Some(&path)).map_err(|e| e.to_string())?;
    let options = RecycleOptions {
        policy: None,
        as_of: emu.clock().now_ms(),
    };
    let planning = Instant::now();
    let plan = recycle::plan(&store, &settings, &options)
        .await
        .map_err(|e| e.to_string())?;
    let plan_secs = planning.elapsed().as_secs_f64();
    let started = Instant::now();
    let report = recycle::apply(&store, &settings, &options, &ApplyOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let total = started.elapsed().as_secs_f64();
    let applied = report.policies[0].applied as f64;
    // Apply plans again before it writes; the delivery is what is left.
    let delivery = (total - plan_secs).max(f64::EPSILON);
    let allowed = f64::from(REQUESTS_PER_SECOND * COLLECTION);
    let rate = applied / delivery;
    println!(
        "apply: {} leads planned ({} failed), {applied} writes in {total:.1}s (planning about {plan_secs:.2}s); \
         delivery {rate:.0} writes/s against {allowed:.0} allowed ({REQUESTS_PER_SECOND} calls/s × {COLLECTION}) = {:.0}% (target ≥ 90%)",
        plan.policies[0].records.len(),
        report.policies[0].failed,
        100.0 * rate / allowed
    );
    store.close().await;
    emu.stop().await.map_err(|e| e.to_string())
}
