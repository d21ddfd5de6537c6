//! Stage-gate evaluation over many stored transitions (SQLite, or PostgreSQL with `--postgres`).
//!
//! `cargo bench --bench rules -- [DEALS] [--postgres]` (default 100,000 deals × 10 moves =
//! 1,000,000 transitions). The store is filled with SQL (deals, a version per move, the moves),
//! then one rule is evaluated over all of it as the first evaluation after a backfill would be:
//! every move judged against the version at the move, violations stored, later versions checked
//! for late resolution. Prints transitions/s for the whole evaluation and a replay.
//!
//! `--postgres` runs on a database of its own, created on the server named by
//! `PIPEWARDEN_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`, whose
//! user may create databases) and dropped at the end, whether the run succeeded or not. The
//! same rows are stored on both backends, so both report the same violations.

#[path = "support/postgres.rs"]
mod postgres;

use std::path::Path;
use std::time::{Duration, Instant};

use pipewarden::config::settings::CrmKind;
use pipewarden::rules;
use pipewarden::store::{Store, ViolationFilter};
use sqlx::Connection;

const MOVES_PER_DEAL: i64 = 10;
const START_MS: i64 = 1_700_000_000_000;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let postgres = args.iter().any(|a| a == "--postgres");
    let deals: i64 = args
        .iter()
        .find(|a| !a.starts_with('-'))
        .map(|a| a.parse().expect("DEALS is a number"))
        .unwrap_or(100_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(err) = runtime.block_on(run(deals, postgres)) {
        eprintln!("benchmark failed: {err}");
        std::process::exit(1);
    }
}

/// Runs the benchmark on a fresh store: a SQLite file, or a PostgreSQL database of its own that
/// is dropped afterwards even when the run failed (a failed run's database would otherwise
/// pile up on the server, a few hundred megabytes each).
async fn run(deals: i64, postgres: bool) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    if !postgres {
        let url = format!("sqlite://{}", dir.path().join("bench.db").display());
        return bench(dir.path(), &url, deals).await;
    }
    let url = postgres::create_database(&format!("pw_rules_bench_{}", std::process::id())).await?;
    let outcome = bench(dir.path(), &url, deals).await;
    let dropped = postgres::drop_database(&url).await;
    match (outcome, dropped) {
        (Err(run), Err(drop)) => Err(format!("{run} (and dropping the database failed: {drop})")),
        (outcome, dropped) => outcome.and(dropped),
    }
}

async fn bench(dir: &Path, url: &str, deals: i64) -> Result<(), String> {
    std::fs::write(dir.join("token"), "unused\n").map_err(|e| e.to_string())?;
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
    let path = dir.join("pipewarden.toml");
    std::fs::write(&path, config).map_err(|e| e.to_string())?;
    let settings = pipewarden::config::load(Some(&path)).map_err(|e| e.to_string())?;
    let store = Store::open_migrated(&settings.store)
        .await
        .map_err(|e| e.to_string())?;
    let connection_id = store
        .ensure_connection("bench", CrmKind::Salesforce, 0)
        .await
        .map_err(|e| e.to_string())?;

    println!(
        "rules benchmark: store {}, {} CPU(s)",
        Dialect::of(url).name(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let filled = Instant::now();
    fill(url, connection_id, deals).await?;
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
    let statements = fill_statements(Dialect::of(url), connection_id, deals);
    match Dialect::of(url) {
        Dialect::Sqlite => run_statements::<sqlx::SqliteConnection>(url, statements).await,
        Dialect::Postgres => run_statements::<sqlx::PgConnection>(url, statements).await,
    }
}

/// Runs `statements` in order on a connection of their own.
async fn run_statements<C>(url: &str, statements: Vec<String>) -> Result<(), String>
where
    C: Connection,
    for<'c> &'c mut C: sqlx::Executor<'c>,
{
    let mut db = C::connect(url).await.map_err(|e| e.to_string())?;
    for statement in statements {
        execute(&mut db, statement).await?;
    }
    db.close().await.map_err(|e| e.to_string())
}

async fn execute<'c, E: sqlx::Executor<'c>>(db: E, statement: String) -> Result<(), String> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
        .execute(db)
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

/// The SQL that stores the deals, their versions and moves (see [`fill`]), in `dialect`.
/// Ids are given explicitly so that a version's and a move's id follow from the deal's.
fn fill_statements(dialect: Dialect, connection_id: i64, deals: i64) -> Vec<String> {
    let (yes, no) = (dialect.boolean(true), dialect.boolean(false));
    let (steps, hash, ids) = (dialect.steps(), dialect.hash(), dialect.explicit_ids());
    let mut statements = dialect.setup();
    statements.extend([
        "CREATE TEMP TABLE steps (k INTEGER PRIMARY KEY, stage TEXT NOT NULL)".to_string(),
        format!(
            "INSERT INTO {steps} VALUES (0, 'Prospecting'), (1, 'Qualification'), (2, 'Needs Analysis'), \
             (3, 'Value Proposition'), (4, 'Id. Decision Makers'), (5, 'Perception Analysis'), \
             (6, 'Proposal/Price Quote'), (7, 'Perception Analysis'), (8, 'Proposal/Price Quote'), \
             (9, 'Negotiation/Review')"
        ),
        format!(
            "INSERT INTO stage_definitions (connection_id, object_kind, pipeline, stage, label, sort_order, is_closed, \
             is_won, observed_at_ms) VALUES \
             ({c}, 'deal', 'default', 'Prospecting', 'Prospecting', 1, {no}, {no}, 0), \
             ({c}, 'deal', 'default', 'Qualification', 'Qualification', 2, {no}, {no}, 0), \
             ({c}, 'deal', 'default', 'Needs Analysis', 'Needs Analysis', 3, {no}, {no}, 0), \
             ({c}, 'deal', 'default', 'Value Proposition', 'Value Proposition', 4, {no}, {no}, 0), \
             ({c}, 'deal', 'default', 'Id. Decision Makers', 'Id. Decision Makers', 5, {no}, {no}, 0), \
             ({c}, 'deal', 'default', 'Perception Analysis', 'Perception Analysis', 6, {no}, {no}, 0), \
             ({c}, 'deal', 'default', 'Proposal/Price Quote', 'Proposal/Price Quote', 7, {no}, {no}, 0), \
             ({c}, 'deal', 'default', 'Negotiation/Review', 'Negotiation/Review', 8, {no}, {no}, 0), \
             ({c}, 'deal', 'default', 'Closed Won', 'Closed Won', 9, {yes}, {yes}, 0), \
             ({c}, 'deal', 'default', 'Closed Lost', 'Closed Lost', 10, {yes}, {no}, 0)",
            c = connection_id
        ),
        format!(
            "INSERT INTO records (id, connection_id, object_kind, crm_object, crm_id, name, pipeline, stage, \
             amount_cents, owner_id, is_closed, is_won, crm_modified_at_ms, fields, content_hash, first_seen_at_ms, \
             last_seen_at_ms){ids} \
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {deals}) \
             SELECT i, {connection_id}, 'deal', 'Opportunity', 'D' || i, 'Deal ' || i, 'default', 'Closed Won', \
             100000, 'O' || (i % 50), {yes}, {yes}, 0, {empty}, {hash}, 0, 0 FROM n",
            empty = dialect.json("'{}'")
        ),
        format!(
            "INSERT INTO record_versions (id, record_id, connection_id, object_kind, valid_from_ms, valid_to_ms, \
             valid_from_basis, observed_at_ms, content_hash, name, pipeline, stage, amount_cents, owner_id, is_closed, \
             is_won, fields){ids} \
             SELECT r.id * {m} + s.k, r.id, {connection_id}, 'deal', {START_MS} + r.id * 60000 + s.k * 86400000, \
             CASE WHEN s.k < {last} THEN {START_MS} + r.id * 60000 + (s.k + 1) * 86400000 END, 'crm_modified', 0, \
             {hash}, r.name, 'default', s.stage, 100000, r.owner_id, {no}, {no}, \
             {fields} \
             FROM records r CROSS JOIN {steps} s WHERE r.connection_id = {connection_id}",
            m = MOVES_PER_DEAL,
            last = MOVES_PER_DEAL - 1,
            fields = dialect.json(
                "'{\"Name\":\"' || r.name || '\",\"Budget__c\":' || \
                 CASE WHEN r.id % 20 = 0 AND s.k < 5 THEN 'null' ELSE '50000' END || \
                 ',\"Need__c\":\"forecasting\",\"NextStep\":' || \
                 CASE WHEN r.id % 50 = 0 THEN 'null' ELSE '\"call\"' END || \
                 ',\"Authority__c\":\"CFO\",\"Amount\":1000,\"CloseDate\":\"2026-01-31\",\"LeadSource\":\"Web\"}'"
            )
        ),
        format!(
            "INSERT INTO stage_transitions (id, record_id, connection_id, object_kind, pipeline, from_stage, to_stage, \
             changed_at_ms, actor_kind, origin, observed_at_ms){ids} \
             SELECT r.id * {m} + s.k, r.id, {connection_id}, 'deal', 'default', p.stage, \
             CASE WHEN r.id % 7 = 0 AND s.k = 2 THEN 'Value Proposition' ELSE s.stage END, \
             {START_MS} + r.id * 60000 + s.k * 86400000, 'unknown', 'crm_history', 0 \
             FROM records r CROSS JOIN {steps} s LEFT JOIN {steps} p ON p.k = s.k - 1 \
             WHERE r.connection_id = {connection_id}",
            m = MOVES_PER_DEAL
        ),
    ]);
    statements.extend(dialect.finish());
    statements
}

/// What the SQL of [`fill_statements`] differs in between the backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// The backend a store URL names.
    fn of(url: &str) -> Dialect {
        if url.starts_with("postgres") {
            Dialect::Postgres
        } else {
            Dialect::Sqlite
        }
    }

    /// The backend's name, for the report.
    fn name(self) -> &'static str {
        match self {
            Dialect::Sqlite => "SQLite",
            Dialect::Postgres => "PostgreSQL",
        }
    }

    /// Statements before the rows: SQLite fills faster without syncing every page to disk.
    fn setup(self) -> Vec<String> {
        match self {
            Dialect::Sqlite => vec![
                "PRAGMA journal_mode = WAL".to_string(),
                "PRAGMA synchronous = OFF".to_string(),
            ],
            Dialect::Postgres => Vec::new(),
        }
    }

    /// Statements after the rows. The identity sequences have not seen the explicit ids, so
    /// they are moved past them (the evaluation stores violations, not these rows, but a
    /// store whose next id collides is no store). A freshly loaded database has no planner
    /// statistics until autovacuum gets to it, which a backfilled store would have by the
    /// time it is evaluated, so they are gathered here rather than timed.
    fn finish(self) -> Vec<String> {
        match self {
            Dialect::Sqlite => Vec::new(),
            Dialect::Postgres => ["records", "record_versions", "stage_transitions"]
                .iter()
                .map(|table| {
                    format!(
                        "SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))"
                    )
                })
                .chain(["ANALYZE".to_string()])
                .collect(),
        }
    }

    /// A boolean literal: SQLite stores 0 and 1, PostgreSQL's columns are BOOLEAN.
    fn boolean(self, value: bool) -> &'static str {
        match (self, value) {
            (Dialect::Sqlite, true) => "1",
            (Dialect::Sqlite, false) => "0",
            (Dialect::Postgres, true) => "TRUE",
            (Dialect::Postgres, false) => "FALSE",
        }
    }

    /// The temporary table of steps: SQLite's temporary schema is `temp`, PostgreSQL's
    /// `pg_temp`.
    fn steps(self) -> &'static str {
        match self {
            Dialect::Sqlite => "temp.steps",
            Dialect::Postgres => "pg_temp.steps",
        }
    }

    /// A one-byte content hash (nothing here compares them).
    fn hash(self) -> &'static str {
        match self {
            Dialect::Sqlite => "x'00'",
            Dialect::Postgres => r"'\x00'::bytea",
        }
    }

    /// What lets an INSERT set ids: PostgreSQL's are GENERATED ALWAYS identity columns.
    fn explicit_ids(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => " OVERRIDING SYSTEM VALUE",
        }
    }

    /// A text expression of JSON as the `fields` columns take it: TEXT in SQLite, JSONB in
    /// PostgreSQL.
    fn json(self, text: &str) -> String {
        match self {
            Dialect::Sqlite => text.to_string(),
            Dialect::Postgres => format!("({text})::jsonb"),
        }
    }
}
