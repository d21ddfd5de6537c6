//! Latency of the historical queries on a store synced from the emulated Salesforce org.
//!
//! `cargo bench --bench queries -- small [tiny|large] [--postgres] [--months M] [--runs N]
//! [--store URL] [--only NAME]`.
//! The emulator and the sync run in this process; the store is synced once, then M times
//! (default 4) a simulated month passes and it is synced again, so deals have several versions
//! and the pipeline's ends differ; each query then runs N times (default 20) and p50/p95 are
//! printed next to the issue's targets. PostgreSQL
//! runs use `PIPEWARDEN_TEST_POSTGRES_URL` (default the local server) and create a database of
//! their own. `--store URL` skips the emulator and the sync and queries a store synced before
//! (the `large` one a `sync` benchmark left, say: its backfill takes most of an hour), as of its
//! latest observation; the store connection is named `sf`. `--replicate N` copies the synced
//! data N times over before timing (see `replicate`), and `--keep PATH` leaves that SQLite
//! store at PATH (with `--postgres`: a database named PATH) for later `--store` runs.
//! `--only NAME` times only the queries whose name contains NAME (to profile one of them).

#[path = "support/postgres.rs"]
mod postgres;

use std::cell::Cell;
use std::future::Future;
use std::time::{Duration, Instant};

use pipewarden::config::Settings;
use pipewarden::emulator::{self, EmulatorOptions, Scale};
use pipewarden::query::{self, format_instant};
use pipewarden::stop::StopSignal;
use pipewarden::store::{StatisticsOf, Store};
use pipewarden::sync::{self, SyncOptions};
use sqlx::Connection;

const DAY_MS: i64 = 86_400_000;
/// The simulated month that passes between two syncs of the store.
const MONTH: Duration = Duration::from_millis(30 * DAY_MS as u64);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let postgres = args.iter().any(|a| a == "--postgres");
    let value_of = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let timing = Timing {
        runs: value_of("--runs")
            .and_then(|n| n.parse().ok())
            .unwrap_or(20),
        only: value_of("--only"),
        timed: Cell::new(0),
    };
    if args.iter().any(|a| a == "--only") && timing.only.is_none() {
        eprintln!("--only needs the name of a query");
        std::process::exit(2);
    }
    let store = value_of("--store");
    let copies: u32 = value_of("--replicate")
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    let keep = value_of("--keep");
    let months: u32 = value_of("--months")
        .and_then(|n| n.parse().ok())
        .unwrap_or(4);
    let scale = match args
        .iter()
        .find(|a| {
            !a.starts_with('-')
                && a.parse::<usize>().is_err()
                && Some(*a) != store.as_ref()
                && Some(*a) != keep.as_ref()
                && Some(*a) != timing.only.as_ref()
                && Some(*a) != value_of("--months").as_ref()
        })
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
    let outcome = match store {
        Some(url) => runtime.block_on(bench_stored(&url, &timing)),
        None => runtime.block_on(bench(
            Load {
                scale,
                postgres,
                months,
                copies,
                keep,
            },
            &timing,
        )),
    };
    if let Err(err) = outcome {
        eprintln!("benchmark failed: {err}");
        std::process::exit(1);
    }
}

/// How the queries are timed.
struct Timing {
    /// Runs of each query.
    runs: usize,
    /// Only the queries whose name contains this.
    only: Option<String>,
    /// How many queries were timed.
    timed: Cell<usize>,
}

impl Timing {
    fn selects(&self, name: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| name.contains(only.as_str()))
    }
}

/// What store the benchmark builds before it times the queries.
struct Load {
    scale: Scale,
    postgres: bool,
    /// Simulated months synced one by one after the first sync.
    months: u32,
    /// How many copies of the synced data the store holds (1: just the sync).
    copies: u32,
    /// Where to leave the store for later `--store` runs: a SQLite path, or a PostgreSQL
    /// database name.
    keep: Option<String>,
}

async fn bench(load: Load, timing: &Timing) -> Result<(), String> {
    let Load {
        scale,
        postgres,
        months,
        copies,
        ref keep,
    } = load;
    let emu = emulator::start(
        "127.0.0.1:0".parse().unwrap(),
        EmulatorOptions {
            scale,
            ..EmulatorOptions::default()
        },
    )
    .await
    .map_err(|e| e.to_string())?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let store_url = match (postgres, keep) {
        (true, keep) => {
            let name = keep
                .clone()
                .unwrap_or_else(|| format!("pw_query_bench_{}", std::process::id()));
            postgres::create_database(&name).await?
        }
        (false, Some(path)) => format!("sqlite://{path}?mode=rwc"),
        (false, None) => format!("sqlite://{}", dir.path().join("bench.db").display()),
    };
    let settings = settings(dir.path(), emu.base_url().as_str(), &store_url)?;
    let store = Store::open_migrated(&settings.store)
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "query benchmark: {scale:?} funnel, store {}, {} runs per query, {} CPU(s)",
        if postgres { "PostgreSQL" } else { "SQLite" },
        timing.runs,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    for month in 0..=months {
        if month > 0 {
            emu.clock().advance(MONTH);
        }
        let started = Instant::now();
        let report = sync::sync_once(
            &store,
            &settings.connections[0],
            &SyncOptions::default(),
            &StopSignal::never(),
        )
        .await
        .map_err(|e| e.to_string())?;
        println!(
            "{} {}: synced {} records, {} versions, {} stage changes in {:.1}s",
            if month == 0 { "backfill" } else { "month" },
            format_instant(emu.clock().now_ms()),
            report.summary.records_seen,
            report.summary.versions_written,
            report.summary.transitions_written,
            started.elapsed().as_secs_f64()
        );
    }
    if copies > 1 {
        let started = Instant::now();
        replicate(&store_url, copies).await?;
        println!(
            "copied the synced data {copies} times over in {:.1}s",
            started.elapsed().as_secs_f64()
        );
    }
    settle(&store, &store_url).await?;
    let now = emu.clock().now_ms();
    time_queries(&store, &settings, now, timing).await?;
    store.close().await;
    if postgres && keep.is_none() {
        postgres::drop_database(&store_url).await?;
    }
    emu.stop().await.map_err(|e| e.to_string())
}

/// Brings the store to the state a store in use reaches by itself before it is timed:
/// statistics of the data as it now is (the sync's own refresh saw one copy of it, and
/// PostgreSQL picks nested loops over the whole store without any) and, on PostgreSQL, the
/// visibility map autovacuum keeps, without which index-only scans read the table too (as-of
/// totals took 1.3 s instead of 52 ms on the 180× store).
async fn settle(store: &Store, store_url: &str) -> Result<(), String> {
    if !store_url.starts_with("postgres") {
        return store
            .refresh_statistics(StatisticsOf::History)
            .await
            .map_err(|e| e.to_string());
    }
    let mut connection = sqlx::PgConnection::connect(store_url)
        .await
        .map_err(|e| e.to_string())?;
    let tables = DATA_TABLES.join(", ");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("VACUUM (ANALYZE) {tables}")))
        .execute(&mut connection)
        .await
        .map(drop)
        .map_err(|e| format!("vacuum the store: {e}"))
}

/// Tables whose rows make up the synced data; `replicate` copies them.
const DATA_TABLES: &[&str] = &[
    "records",
    "record_versions",
    "field_history",
    "stage_transitions",
    "lifecycle_events",
    "lifecycle_firsts",
    "record_links",
];

/// Data tables keyed by CRM ids or by records, with no `id` of their own to offset.
const TABLES_WITHOUT_ID: &[&str] = &["lifecycle_firsts", "record_links"];

/// Grows a synced store to `copies` times its size without a backfill of the `large` org
/// (which takes well over an hour): copy k of every row gets its ids offset, its CRM ids
/// suffixed `~k` and its times moved k × (a year / copies) into the past, so the copies
/// spread over a year before the synced data and each query meets `copies` times the rows
/// in the same shapes. Each table's secondary indexes are dropped for its copy and built
/// again after it, which is several times quicker than keeping them up to date row by row.
/// Its triggers are suspended too: `lifecycle_firsts`, which a trigger keeps from
/// `lifecycle_events` row by row (most of an hour at 180 copies), is copied as a table of its
/// own, which gives the same rows since each copy's firsts are the original's moved in time.
/// Each table is copied in one transaction, so a copy that fails leaves the table with its
/// rows, indexes and triggers as they were (the error drops the connection, which rolls the
/// transaction back).
/// A SQLite store's write-ahead log is folded back into the database at the end, so reads
/// are timed against the database file alone.
async fn replicate(store_url: &str, copies: u32) -> Result<(), String> {
    let shift = 365 * DAY_MS / i64::from(copies);
    let postgres = store_url.starts_with("postgres");
    let mut sqlite = None;
    let mut pg = None;
    if postgres {
        pg = Some(
            sqlx::PgConnection::connect(store_url)
                .await
                .map_err(|e| e.to_string())?,
        );
    } else {
        sqlite = Some(
            sqlx::SqliteConnection::connect(store_url)
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    macro_rules! on {
        ($conn:ident => $body:expr) => {
            match (&mut sqlite, &mut pg) {
                (Some($conn), _) => $body,
                (_, Some($conn)) => $body,
                _ => unreachable!("one connection is open"),
            }
        };
    }
    macro_rules! run_each {
        ($statements:expr) => {
            for statement in $statements {
                on!(conn => sqlx::raw_sql(sqlx::AssertSqlSafe(statement.to_string()))
                    .execute(&mut *conn)
                    .await
                    .map(drop)
                    .map_err(|e| format!("{statement}: {e}"))?);
            }
        };
    }
    let mut offset: i64 = 1;
    for table in DATA_TABLES
        .iter()
        .filter(|t| !TABLES_WITHOUT_ID.contains(t))
    {
        let max: Option<i64> = on!(conn => sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT MAX(id) FROM {table}"
        )))
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| e.to_string())?);
        while offset <= max.unwrap_or(0) {
            offset *= 10;
        }
    }
    for table in DATA_TABLES {
        let columns: Vec<String> = on!(conn => sqlx::query_scalar(match postgres {
            true => "SELECT column_name::text FROM information_schema.columns \
                     WHERE table_name = $1 AND table_schema = current_schema() ORDER BY ordinal_position",
            false => "SELECT name FROM pragma_table_info($1) ORDER BY cid",
        })
        .bind(*table)
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| e.to_string())?);
        let copied: Vec<String> = columns
            .iter()
            .map(|column| match column.as_str() {
                "id" | "record_id" | "from_record_id" | "to_record_id" => {
                    format!("{column} + copies.k * {offset}")
                }
                "crm_id" | "from_crm_id" | "to_crm_id" => {
                    format!("{column} || '~' || CAST(copies.k AS TEXT)")
                }
                c if c.ends_with("_ms") => format!("{column} - copies.k * {shift}"),
                _ => column.clone(),
            })
            .collect();
        let sql = format!(
            "INSERT INTO {table} ({}) {} \
             WITH RECURSIVE copies(k) AS (SELECT CAST(1 AS BIGINT) UNION ALL SELECT k + 1 FROM copies WHERE k < {}) \
             SELECT {} FROM {table} CROSS JOIN copies",
            columns.join(", "),
            if postgres { "OVERRIDING SYSTEM VALUE" } else { "" },
            copies - 1,
            copied.join(", ")
        );
        let indexes: Vec<(String, String)> = on!(conn => sqlx::query_as(match postgres {
            // Indexes behind constraints (the primary key, unique keys) cannot be dropped alone.
            true => "SELECT indexname::text, indexdef FROM pg_indexes WHERE tablename = $1 \
                     AND schemaname = current_schema() \
                     AND indexname NOT IN (SELECT conname FROM pg_constraint)",
            false => "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = $1 \
                      AND sql IS NOT NULL",
        })
        .bind(*table)
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| e.to_string())?);
        // A table's copy commits whole, its indexes and triggers back in place, or not at all.
        run_each!(["BEGIN"]);
        for (name, _) in &indexes {
            on!(conn => sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP INDEX {name}")))
                .execute(&mut *conn)
                .await
                .map(drop)
                .map_err(|e| format!("drop index {name}: {e}"))?);
        }
        let triggers: Vec<(String, String)> = match &mut sqlite {
            Some(conn) => sqlx::query_as(
                "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = $1",
            )
            .bind(*table)
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| e.to_string())?,
            None => Vec::new(),
        };
        let suspend = match postgres {
            // USER leaves alone the triggers behind foreign keys.
            true => vec![format!("ALTER TABLE {table} DISABLE TRIGGER USER")],
            false => triggers
                .iter()
                .map(|(name, _)| format!("DROP TRIGGER {name}"))
                .collect(),
        };
        let resume = match postgres {
            true => vec![format!("ALTER TABLE {table} ENABLE TRIGGER USER")],
            false => triggers.into_iter().map(|(_, sql)| sql).collect(),
        };
        run_each!(suspend);
        let started = Instant::now();
        let inserted = on!(conn => sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut *conn)
            .await
            .map_err(|e| format!("copy {table}: {e}"))?
            .rows_affected());
        let copied_in = started.elapsed();
        run_each!(resume);
        for (name, definition) in &indexes {
            on!(conn => sqlx::raw_sql(sqlx::AssertSqlSafe(definition.clone()))
                .execute(&mut *conn)
                .await
                .map(drop)
                .map_err(|e| format!("rebuild index {name}: {e}"))?);
        }
        println!(
            "  {table}: {inserted} rows copied in {:.1}s, {} indexes rebuilt in {:.1}s",
            copied_in.as_secs_f64(),
            indexes.len(),
            (started.elapsed() - copied_in).as_secs_f64()
        );
        if postgres && !TABLES_WITHOUT_ID.contains(table) {
            // Rows copied with their ids leave the identity behind; a later sync into a kept
            // database would collide with them.
            on!(conn => sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT MAX(id) FROM {table}))"
            )))
            .execute(&mut *conn)
            .await
            .map(drop)
            .map_err(|e| format!("advance the ids of {table}: {e}"))?);
        }
        run_each!(["COMMIT"]);
    }
    if let Some(conn) = &mut sqlite {
        sqlx::raw_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(conn)
            .await
            .map_err(|e| format!("checkpoint the copies: {e}"))?;
    }
    Ok(())
}

/// Times the queries over a store synced before, as of its latest observation.
async fn bench_stored(store_url: &str, timing: &Timing) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let settings = settings(dir.path(), "http://127.0.0.1:9/", store_url)?;
    let store = Store::open_migrated(&settings.store)
        .await
        .map_err(|e| e.to_string())?;
    let now = latest_observation(store_url).await?;
    println!(
        "query benchmark: store {store_url} as of {}, {} runs per query, {} CPU(s)",
        format_instant(now),
        timing.runs,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let result = time_queries(&store, &settings, now, timing).await;
    store.close().await;
    result
}

/// When the store last saw a record: the stored world's "now".
async fn latest_observation(store_url: &str) -> Result<i64, String> {
    const SQL: &str = "SELECT MAX(last_seen_at_ms) FROM records";
    let latest: Option<i64> = if store_url.starts_with("postgres") {
        let mut conn = sqlx::PgConnection::connect(store_url)
            .await
            .map_err(|e| e.to_string())?;
        sqlx::query_scalar(SQL).fetch_one(&mut conn).await
    } else {
        let mut conn = sqlx::SqliteConnection::connect(store_url)
            .await
            .map_err(|e| e.to_string())?;
        sqlx::query_scalar(SQL).fetch_one(&mut conn).await
    }
    .map_err(|e| e.to_string())?;
    latest.ok_or_else(|| format!("{store_url} holds no records"))
}

/// Runs each query as of `now` and prints p50/p95.
async fn time_queries(
    store: &Store,
    settings: &Settings,
    now: i64,
    timing: &Timing,
) -> Result<(), String> {
    let at = |days_ago: i64| format_instant(now - days_ago * DAY_MS);

    let as_of = query::as_of::AsOfParams {
        at: at(40),
        ..Default::default()
    };
    let totals = query::as_of::AsOfParams {
        totals_only: true,
        ..as_of.clone()
    };
    time("as-of totals (quarter end)", Some(100), timing, || {
        query::as_of::run(store, &totals)
    })
    .await?;
    time("as-of with every deal", None, timing, || {
        query::as_of::run(store, &as_of)
    })
    .await?;
    // Finding a deal reads every open one, seconds on a large store: only when it is timed.
    const HISTORY: &str = "history (one deal)";
    if timing.selects(HISTORY) {
        let history = query::history::HistoryParams {
            id: some_deal(store, now).await?,
            ..Default::default()
        };
        time(HISTORY, None, timing, || {
            query::history::run(store, &history)
        })
        .await?;
    }
    let diff = query::pipeline_diff::PipelineDiffParams {
        from: at(91),
        to: at(0),
        ..Default::default()
    };
    time("pipeline-diff (a quarter)", Some(500), timing, || {
        query::pipeline_diff::run(store, &diff)
    })
    .await?;
    let funnel = query::funnel::FunnelParams {
        from: at(365),
        to: at(0),
        ..Default::default()
    };
    time("funnel (a year)", Some(1_000), timing, || {
        query::funnel::run(store, settings, &funnel)
    })
    .await?;
    let funnel_by_owner = query::funnel::FunnelParams {
        by: Some(query::funnel::FunnelBy::Owner),
        ..funnel.clone()
    };
    time("funnel by owner (a year)", None, timing, || {
        query::funnel::run(store, settings, &funnel_by_owner)
    })
    .await?;
    let cohort = query::cohort::CohortParams {
        period: "month".into(),
        start: "created".into(),
        outcome: "won".into(),
        horizon: Some(24),
        kind: Some("lead".into()),
        from: Some(at(730)),
        ..Default::default()
    };
    time("cohort (24 months, won)", Some(1_000), timing, || {
        query::cohort::run(store, &cohort)
    })
    .await?;
    let campaigns = query::campaigns::CampaignsParams {
        from: at(91),
        to: at(0),
        ..Default::default()
    };
    time("campaigns (a quarter)", None, timing, || {
        query::campaigns::run(store, &campaigns)
    })
    .await?;
    match &timing.only {
        Some(only) if timing.timed.get() == 0 => Err(format!("--only {only:?} names no query")),
        _ => Ok(()),
    }
}

/// Runs `query` as often as `timing` says and prints p50/p95 (and the target, in
/// milliseconds), unless `timing` leaves it out.
async fn time<F, Fut, T>(
    name: &str,
    target_ms: Option<u64>,
    timing: &Timing,
    query: F,
) -> Result<(), String>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, query::QueryError>>,
{
    if !timing.selects(name) {
        return Ok(());
    }
    timing.timed.set(timing.timed.get() + 1);
    let runs = timing.runs;
    let mut took: Vec<Duration> = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        query().await.map_err(|e| format!("{name}: {e}"))?;
        took.push(started.elapsed());
    }
    took.sort();
    let pick = |q: f64| took[((q * runs as f64).ceil() as usize).clamp(1, runs) - 1];
    let (p50, p95) = (pick(0.5), pick(0.95));
    let verdict = match target_ms {
        Some(target) if p95 <= Duration::from_millis(target) => {
            format!("(target p95 ≤ {target} ms: met)")
        }
        Some(target) => format!("(target p95 ≤ {target} ms: MISSED)"),
        None => String::new(),
    };
    println!(
        "{name:<28} p50 {:>9.1} ms   p95 {:>9.1} ms   {verdict}",
        p50.as_secs_f64() * 1e3,
        p95.as_secs_f64() * 1e3
    );
    Ok(())
}

async fn some_deal(store: &Store, now: i64) -> Result<String, String> {
    let report = query::as_of::run(
        store,
        &query::as_of::AsOfParams {
            at: format_instant(now),
            ..Default::default()
        },
    )
    .await
    .map_err(|e| e.to_string())?;
    report
        .deals
        .first()
        .map(|d| d.crm_id.clone())
        .ok_or_else(|| "no open deal to read the history of".to_string())
}

fn settings(dir: &std::path::Path, base_url: &str, store_url: &str) -> Result<Settings, String> {
    std::fs::write(dir.join("refresh-token"), "emulator-demo-refresh-token\n")
        .map_err(|e| e.to_string())?;
    let config = format!(
        r#"
[store]
url = "{store_url}"

[[connections]]
name = "sf"
kind = "salesforce"
login_url = "{base_url}"

[connections.auth]
kind = "refresh_token"
client_id = "pipewarden-demo"
refresh_token = {{ file = "refresh-token" }}

[connections.limits]
requests_per_second = 1000
burst = 1000

[[rules]]
name = "gates"
connection = "sf"

[[rules.stages]]
stage = "Qualification"
max_dwell = "30d"
"#
    );
    let path = dir.join("pipewarden.toml");
    std::fs::write(&path, config).map_err(|e| e.to_string())?;
    pipewarden::config::load(Some(&path)).map_err(|e| e.to_string())
}
