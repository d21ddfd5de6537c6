//! Stage-gate evaluation over many stored transitions (SQLite).
//!
//! `cargo bench --bench rules -- [DEALS]` (default 100,000 deals × 10 moves = 1,000,000
//! transitions). The store is filled with SQL (deals, a version per move, the moves), then one
//! rule is evaluated over all of it as the first evaluation after a backfill would be: every
//! move judged against the version at the move, violations stored, later versions checked
//! for late resolution. Prints transitions/s for the whole evaluation and a replay.

use std::time::{Duration, Instant};

use pipewarden::config::settings::CrmKind;
use pipewarden::rules;
use pipewarden::store::{Store, ViolationFilter};
use sqlx::Connection;

const MOVES_PER_DEAL: i64 = 10;
const START_MS: i64 = 1_700_000_000_000;

fn main() {
    let deals: i64 = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .map(|a| a.parse().expect("DEALS is a number"))
        .unwrap_or(100_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(err) = runtime.block_on(bench(deals)) {
        eprintln!("benchmark failed: {err}");
        std::process::exit(1);
    }
}

async fn bench(deals: i64) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    std::fs::write(dir.path().join("token"), "unused\n").map_err(|e| e.to_string())?;
    let config = format!(
        r#"
[store]
url = "{url}"

[[connections]]
name = "bench"
kind = "salesforce"
login_url = "http://127.0.0.1:9"

[connections.auth]
kind = "refresh_token"
client_id = "bench"
refresh_token = {{ file = "token" }}

[[rules]]
name = "bench-gates"
connection = "bench"
forbid_skipping = true
closed_lost_requires = ["Loss_Reason__c"]
backward_requires = ["NextStep"]

[[rules.stages]]
stage = "Qualification"
required = ["Budget__c"]

[[rules.stages]]
stage = "Needs Analysis"
required = ["Need__c"]

[[rules.stages]]
stage = "Proposal/Price Quote"
required = ["Budget__c", "Need__c", "NextStep"]
"#
    );
    let path = dir.path().join("pipewarden.toml");
    std::fs::write(&path, config).map_err(|e| e.to_string())?;
    let settings = pipewarden::config::load(Some(&path)).map_err(|e| e.to_string())?;
    let store = Store::open_migrated(&settings.store)
        .await
        .map_err(|e| e.to_string())?;
    let connection_id = store
        .ensure_connection("bench", CrmKind::Salesforce, 0)
        .await
        .map_err(|e| e.to_string())?;

    let filled = Instant::now();
    fill(&url, connection_id, deals).await?;
    let transitions = deals * MOVES_PER_DEAL;
    println!(
        "stored {deals} deals, {transitions} versions and {transitions} transitions in {:.1}s",
        filled.elapsed().as_secs_f64()
    );

    // Reading alone: every move with the version at the move, as evaluation reads them.
    let reading = Instant::now();
    let mut read = 0u64;
    let definitions = store
        .stage_definitions(connection_id, pipewarden::record::ObjectKind::Deal)
        .await
        .map_err(|e| e.to_string())?;
    let fields = rules::CompiledRule::new(&settings.rules[0], &definitions).fields();
    let mut pages = store.moves_at_version_pages(connection_id, 0, None, 5_000, fields);
    while let Some(page) = pages.next().await {
        read += page.map_err(|e| e.to_string())?.len() as u64;
    }
    print_rate("reading moves with their versions", read, reading.elapsed());

    let connection = &settings.connections[0];
    let started = Instant::now();
    let reports = rules::evaluate_connection(&store, &settings, connection, START_MS)
        .await
        .map_err(|e| e.to_string())?;
    let elapsed = started.elapsed();
    let report = &reports[0];
    println!("{}", rules::describe_evaluation(report));
    print_rate("evaluation", report.judged + report.unjudged, elapsed);

    let open = store
        .violations(&ViolationFilter {
            status: Some("open".into()),
            limit: i64::MAX,
            ..ViolationFilter::default()
        })
        .await
        .map_err(|e| e.to_string())?
        .len();
    println!("open violations after the evaluation: {open}");

    let replay = Instant::now();
    let again = rules::evaluate_connection(&store, &settings, connection, START_MS)
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "replay: {} new violations in {:.3}s",
        again[0].violations,
        replay.elapsed().as_secs_f64()
    );
    store.close().await;
    Ok(())
}

fn print_rate(what: &str, transitions: u64, elapsed: Duration) {
    let rate = transitions as f64 / elapsed.as_secs_f64();
    println!(
        "{what}: {transitions} transitions in {:.2}s = {rate:.0} transitions/s (target 100,000/s)",
        elapsed.as_secs_f64()
    );
}

/// Deals move through the open stages in order, one step back and on again. Every
/// 20th deal has no budget until its fifth move (violations that resolve late), every 50th no
/// next step (a backward move that violates), every 7th jumps from stage 2 to stage 4.
async fn fill(url: &str, connection_id: i64, deals: i64) -> Result<(), String> {
    let mut db = sqlx::SqliteConnection::connect(url)
        .await
        .map_err(|e| e.to_string())?;
    let statements = [
        "PRAGMA journal_mode = WAL".to_string(),
        "PRAGMA synchronous = OFF".to_string(),
        "CREATE TEMP TABLE steps (k INTEGER PRIMARY KEY, stage TEXT NOT NULL)".to_string(),
        "INSERT INTO temp.steps VALUES (0, 'Prospecting'), (1, 'Qualification'), (2, 'Needs Analysis'), \
         (3, 'Value Proposition'), (4, 'Id. Decision Makers'), (5, 'Perception Analysis'), \
         (6, 'Proposal/Price Quote'), (7, 'Perception Analysis'), (8, 'Proposal/Price Quote'), \
         (9, 'Negotiation/Review')"
            .to_string(),
        format!(
            "INSERT INTO stage_definitions (connection_id, object_kind, pipeline, stage, label, sort_order, is_closed, \
             is_won, observed_at_ms) VALUES \
             ({c}, 'deal', 'default', 'Prospecting', 'Prospecting', 1, 0, 0, 0), \
             ({c}, 'deal', 'default', 'Qualification', 'Qualification', 2, 0, 0, 0), \
             ({c}, 'deal', 'default', 'Needs Analysis', 'Needs Analysis', 3, 0, 0, 0), \
             ({c}, 'deal', 'default', 'Value Proposition', 'Value Proposition', 4, 0, 0, 0), \
             ({c}, 'deal', 'default', 'Id. Decision Makers', 'Id. Decision Makers', 5, 0, 0, 0), \
             ({c}, 'deal', 'default', 'Perception Analysis', 'Perception Analysis', 6, 0, 0, 0), \
             ({c}, 'deal', 'default', 'Proposal/Price Quote', 'Proposal/Price Quote', 7, 0, 0, 0), \
             ({c}, 'deal', 'default', 'Negotiation/Review', 'Negotiation/Review', 8, 0, 0, 0), \
             ({c}, 'deal', 'default', 'Closed Won', 'Closed Won', 9, 1, 1, 0), \
             ({c}, 'deal', 'default', 'Closed Lost', 'Closed Lost', 10, 1, 0, 0)",
            c = connection_id
        ),
        format!(
            "INSERT INTO records (id, connection_id, object_kind, crm_object, crm_id, name, pipeline, stage, \
             amount_cents, owner_id, is_closed, is_won, crm_modified_at_ms, fields, content_hash, first_seen_at_ms, \
             last_seen_at_ms) \
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {deals}) \
             SELECT i, {connection_id}, 'deal', 'Opportunity', 'D' || i, 'Deal ' || i, 'default', 'Closed Won', \
             100000, 'O' || (i % 50), 1, 1, 0, '{{}}', x'00', 0, 0 FROM n"
        ),
        format!(
            "INSERT INTO record_versions (id, record_id, connection_id, object_kind, valid_from_ms, valid_to_ms, \
             valid_from_basis, observed_at_ms, content_hash, name, pipeline, stage, amount_cents, owner_id, is_closed, \
             is_won, fields) \
             SELECT r.id * {m} + s.k, r.id, {connection_id}, 'deal', {START_MS} + r.id * 60000 + s.k * 86400000, \
             CASE WHEN s.k < {last} THEN {START_MS} + r.id * 60000 + (s.k + 1) * 86400000 END, 'crm_modified', 0, \
             x'00', r.name, 'default', s.stage, 100000, r.owner_id, 0, 0, \
             '{{\"Name\":\"' || r.name || '\",\"Budget__c\":' || \
             CASE WHEN r.id % 20 = 0 AND s.k < 5 THEN 'null' ELSE '50000' END || \
             ',\"Need__c\":\"forecasting\",\"NextStep\":' || \
             CASE WHEN r.id % 50 = 0 THEN 'null' ELSE '\"call\"' END || \
             ',\"Authority__c\":\"CFO\",\"Amount\":1000,\"CloseDate\":\"2026-01-31\",\"LeadSource\":\"Web\"}}' \
             FROM records r CROSS JOIN temp.steps s WHERE r.connection_id = {connection_id}",
            m = MOVES_PER_DEAL,
            last = MOVES_PER_DEAL - 1
        ),
        format!(
            "INSERT INTO stage_transitions (id, record_id, connection_id, object_kind, pipeline, from_stage, to_stage, \
             changed_at_ms, actor_kind, origin, observed_at_ms) \
             SELECT r.id * {m} + s.k, r.id, {connection_id}, 'deal', 'default', p.stage, \
             CASE WHEN r.id % 7 = 0 AND s.k = 2 THEN 'Value Proposition' ELSE s.stage END, \
             {START_MS} + r.id * 60000 + s.k * 86400000, 'unknown', 'crm_history', 0 \
             FROM records r CROSS JOIN temp.steps s LEFT JOIN temp.steps p ON p.k = s.k - 1 \
             WHERE r.connection_id = {connection_id}",
            m = MOVES_PER_DEAL
        ),
    ];
    for statement in statements {
        sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
            .execute(&mut db)
            .await
            .map_err(|e| e.to_string())?;
    }
    db.close().await.map_err(|e| e.to_string())
}
