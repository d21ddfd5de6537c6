//! The snapshot store: SQLite (embedded default) or PostgreSQL, chosen by URL scheme.
//!
//! Each backend has its own migrations (`migrations/sqlite`, `migrations/postgres`), embedded
//! in the binary and applied at start-up. The SQL in this module is written once where both
//! databases accept it (`$n` parameters, `ON CONFLICT`, `RETURNING`) and type-checked against
//! both drivers through [`dispatch!`]; the shared test suite runs every operation on both.
//!
//! Writes that must land together (a page of records, its history and the cursor after it)
//! go through a [`StoreTx`]; a crash before `commit` leaves none of them.

mod history;
mod lease;
mod links;
mod metadata;
mod records;
mod scan;
mod sync_state;
mod tokens;
mod violations;

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, Postgres, Sqlite, SqlitePool, Transaction};

use crate::config::settings::{StoreSettings, StoreUrl};

pub use history::{
    FieldChange, InsertedTransition, NewLifecycleEvent, NewStageTransition, StageTransition,
    StoredLifecycleEvent,
};
pub use lease::{Fence, SoleReplica, SyncLease};
pub use links::RecordLink;
pub use metadata::{CrmOwner, FieldDefinition, StageDefinition};
pub use records::{CreatedSpan, ObservationOutcome, RecordVersion, StoredRecord, ValidFromBasis};
pub(crate) use scan::{fetch_all_sqlite, scan_sqlite};
pub use sync_state::{
    ConnectionTotals, QuarantineEntry, QuarantinedRecord, SyncRunStatus, SyncRunSummary,
    ABANDONED_RUN_MESSAGE,
};
pub use tokens::StoredRefreshTokens;
pub use violations::{
    Ending, LaterMove, LaterVersion, MoveAtVersion, MoveIds, MovePages, NewAlert, NewViolation,
    OpenViolation, OpenViolations, PendingAlert, StoredAlert, Violation, ViolationFilter,
};

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Runs the same code against whichever backend a value holds; the body is compiled once per
/// backend, so a query that one driver cannot take fails to build rather than at run time.
macro_rules! dispatch {
    ($value:expr, $conn:ident => $body:expr) => {
        match $value {
            $crate::store::Backend::Sqlite($conn) => $body,
            $crate::store::Backend::Postgres($conn) => $body,
        }
    };
}
pub(crate) use dispatch;

/// Most rows one multi-row statement carries. A version row binds 25 values, so 500 rows stay
/// well inside SQLite's 32,766 and PostgreSQL's 65,535 bound parameters per statement.
pub(crate) const ROWS_PER_STATEMENT: usize = 500;

/// Which tables [`Store::refresh_statistics`] refreshes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatisticsOf {
    /// The history a sync writes (records, versions, moves, events, links, field history).
    History,
    /// Violations and their status changes, which an evaluation writes.
    Violations,
}

/// When the planner statistics of tables a long run keeps filling are due again: once the rows
/// it wrote reach a first mark, then each time they double, so a run refreshes them a handful
/// of times however far it grows the tables. Shared behind `&self`, hence atomic.
#[derive(Debug)]
pub struct StatisticsSchedule {
    next: AtomicU64,
}

impl StatisticsSchedule {
    /// A schedule whose first refresh is due at `first` rows written.
    pub fn starting_at(first: u64) -> StatisticsSchedule {
        StatisticsSchedule {
            next: AtomicU64::new(first),
        }
    }

    /// Whether `written` rows make a refresh due; when they do, the next is due at twice as many.
    pub fn due(&self, written: u64) -> bool {
        if written < self.next.load(Ordering::Relaxed) {
            return false;
        }
        self.next
            .store(written.saturating_mul(2), Ordering::Relaxed);
        true
    }
}

/// One value per backend: a pool, a transaction.
#[derive(Debug, Clone)]
pub(crate) enum Backend<S, P> {
    Sqlite(S),
    Postgres(P),
}

/// Which database a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// Embedded SQLite file.
    Sqlite,
    /// PostgreSQL server.
    Postgres,
}

impl BackendKind {
    /// A short name for logs and `migrate` output.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Sqlite => "sqlite",
            BackendKind::Postgres => "postgres",
        }
    }
}

/// Why a store operation failed. Messages name the operation, never a connection password.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened or reached.
    #[error("cannot open the {backend} store: {source}")]
    Connect {
        /// Which backend.
        backend: &'static str,
        /// The driver's error.
        source: sqlx::Error,
    },
    /// Migrations failed.
    #[error("cannot migrate the {backend} store: {source}")]
    Migrate {
        /// Which backend.
        backend: &'static str,
        /// The migrator's error.
        source: sqlx::migrate::MigrateError,
    },
    /// A statement failed.
    #[error("store operation `{operation}` failed: {source}")]
    Query {
        /// What was being done.
        operation: &'static str,
        /// The driver's error.
        source: sqlx::Error,
    },
    /// A statement read through SQLite's C API (see `scan_sqlite`) failed.
    #[error("store operation `{operation}` failed: {source}")]
    Scan {
        /// What was being done.
        operation: &'static str,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// The stored data contradicts the request (e.g. a connection re-used for another CRM).
    #[error("{0}")]
    Conflict(String),
    /// A kept refresh token could not be sealed for the store.
    #[error("cannot seal a kept refresh token: {0}")]
    Sealing(&'static str),
}

/// Attaches the operation's name to a driver error.
pub(crate) trait QueryContext<T> {
    fn during(self, operation: &'static str) -> Result<T, StoreError>;
}

impl<T> QueryContext<T> for Result<T, sqlx::Error> {
    fn during(self, operation: &'static str) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Query { operation, source })
    }
}

/// A handle to the store; cheap to clone (it holds a pool).
#[derive(Debug, Clone)]
pub struct Store {
    pool: Backend<SqlitePool, PgPool>,
}

/// What `migrate` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// The backend migrated.
    pub backend: BackendKind,
    /// Versions applied by this call.
    pub applied: Vec<i64>,
    /// Highest version now in place.
    pub current: Option<i64>,
}

impl Store {
    /// Opens a pool on the configured database (the file is created if missing).
    pub async fn connect(settings: &StoreSettings) -> Result<Store, StoreError> {
        let pool = match &settings.url {
            StoreUrl::Sqlite(url) => Backend::Sqlite(open_sqlite(url, settings).await?),
            StoreUrl::Postgres(url) => {
                Backend::Postgres(open_postgres(url.as_str(), settings).await?)
            }
        };
        Ok(Store { pool })
    }

    /// Opens the store and brings its schema up to date, as every command that reads it does.
    pub async fn open_migrated(settings: &StoreSettings) -> Result<Store, StoreError> {
        let store = Store::connect(settings).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Which database this store runs on.
    pub fn backend(&self) -> BackendKind {
        match self.pool {
            Backend::Sqlite(_) => BackendKind::Sqlite,
            Backend::Postgres(_) => BackendKind::Postgres,
        }
    }

    /// Applies the migrations that are not yet in place.
    pub async fn migrate(&self) -> Result<MigrationReport, StoreError> {
        let backend = self.backend();
        let before = self.applied_migrations().await?;
        let result = match &self.pool {
            Backend::Sqlite(pool) => SQLITE_MIGRATIONS.run(pool).await,
            Backend::Postgres(pool) => POSTGRES_MIGRATIONS.run(pool).await,
        };
        result.map_err(|source| StoreError::Migrate {
            backend: backend.as_str(),
            source,
        })?;
        let after = self.applied_migrations().await?;
        Ok(MigrationReport {
            backend,
            applied: after
                .iter()
                .copied()
                .filter(|v| !before.contains(v))
                .collect(),
            current: after.last().copied(),
        })
    }

    async fn applied_migrations(&self) -> Result<Vec<i64>, StoreError> {
        // Before the first migration the bookkeeping table does not exist yet.
        let exists_sql = match self.backend() {
            BackendKind::Sqlite => {
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'"
            }
            BackendKind::Postgres => "SELECT COUNT(*) FROM pg_tables WHERE tablename = '_sqlx_migrations' AND schemaname = current_schema()",
        };
        let exists: i64 =
            dispatch!(&self.pool, pool => sqlx::query_scalar(exists_sql).fetch_one(pool).await)
                .during("read migration state")?;
        if exists == 0 {
            return Ok(Vec::new());
        }
        dispatch!(&self.pool, pool => sqlx::query_scalar(
            "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version"
        ).fetch_all(pool).await)
        .during("read migration state")
    }

    /// Checks that the database answers (readiness probes use this).
    pub async fn ping(&self) -> Result<(), StoreError> {
        dispatch!(&self.pool, pool => sqlx::query("SELECT 1").execute(pool).await.map(|done| done.rows_affected()))
            .during("ping")
            .map(drop)
    }

    /// Refreshes the planner's statistics of `tables`. After a backfill, or a rule's first
    /// evaluation over a long history, they are far from the data (PostgreSQL's autovacuum
    /// analyzes later, SQLite only when asked), and statements planned on them can be orders of
    /// magnitude slower.
    pub async fn refresh_statistics(&self, tables: StatisticsOf) -> Result<(), StoreError> {
        let sql = match (self.backend(), tables) {
            (BackendKind::Sqlite, StatisticsOf::History) => "PRAGMA optimize = 0x10002",
            // SQLite checks a foreign key through the parent key's index whatever its
            // statistics say.
            (BackendKind::Sqlite, StatisticsOf::Violations) => return Ok(()),
            (BackendKind::Postgres, StatisticsOf::History) => {
                "ANALYZE records, record_versions, stage_transitions, lifecycle_events, lifecycle_firsts, \
                 record_links, field_history, violations"
            }
            // PostgreSQL checks each violation event's reference to its violation with a plan
            // cached per connection from the statistics of the time: made while the table was
            // nearly empty, it scans the table, once per event. New statistics renew the plans.
            (BackendKind::Postgres, StatisticsOf::Violations) => {
                "ANALYZE violations, violation_events"
            }
        };
        dispatch!(&self.pool, pool => sqlx::query(sql).execute(pool).await.map(drop))
            .during("refresh planner statistics")
    }

    /// Starts a write transaction.
    pub async fn begin(&self) -> Result<StoreTx, StoreError> {
        let tx = match &self.pool {
            // IMMEDIATE takes the write lock up front; a deferred transaction that later tries to
            // upgrade can fail at once with SQLITE_BUSY instead of waiting out the busy timeout.
            Backend::Sqlite(pool) => {
                Backend::Sqlite(pool.begin_with("BEGIN IMMEDIATE").await.during("begin")?)
            }
            Backend::Postgres(pool) => Backend::Postgres(pool.begin().await.during("begin")?),
        };
        Ok(StoreTx { tx })
    }

    /// Closes the pool, waiting for connections in use to be returned.
    pub async fn close(&self) {
        dispatch!(&self.pool, pool => pool.close().await);
    }

    pub(crate) fn pool(&self) -> &Backend<SqlitePool, PgPool> {
        &self.pool
    }
}

/// A write transaction; dropped without [`StoreTx::commit`], it rolls back.
#[derive(Debug)]
pub struct StoreTx {
    tx: Backend<Transaction<'static, Sqlite>, Transaction<'static, Postgres>>,
}

impl StoreTx {
    /// Makes every write of this transaction durable at once.
    pub async fn commit(self) -> Result<(), StoreError> {
        dispatch!(self.tx, tx => tx.commit().await).during("commit")
    }

    pub(crate) fn inner(
        &mut self,
    ) -> &mut Backend<Transaction<'static, Sqlite>, Transaction<'static, Postgres>> {
        &mut self.tx
    }
}

/// Prepared statements each SQLite connection keeps. A multi-row statement of a few hundred
/// rows is a large program that also keeps a copy of the values last bound to it, and every
/// row count of a page's last chunk is a statement of its own: sqlx's default of 100 let a
/// `large` history backfill grow to 156 MB, against 108 MB (and no slower) with 24.
const SQLITE_STATEMENTS_KEPT: usize = 24;

async fn open_sqlite(url: &str, settings: &StoreSettings) -> Result<SqlitePool, StoreError> {
    let connect = |source| StoreError::Connect {
        backend: "sqlite",
        source,
    };
    let mmap_bytes = u64::from(settings.sqlite_mmap_mib) << 20;
    // Each connection to `:memory:` would be a separate empty database.
    let in_memory = url.contains(":memory:");
    let options = SqliteConnectOptions::from_str(url)
        .map_err(connect)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .foreign_keys(true)
        .busy_timeout(settings.busy_timeout)
        .pragma("mmap_size", mmap_bytes.to_string())
        .statement_cache_capacity(SQLITE_STATEMENTS_KEPT);
    let max_connections = if in_memory {
        1
    } else {
        settings.max_connections
    };
    let pool = SqlitePoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(options)
        .await
        .map_err(connect)?;
    if !in_memory {
        warn_if_the_map_was_cut(&pool, mmap_bytes).await;
    }
    Ok(pool)
}

/// SQLite cuts a map larger than it was built to allow down without an error: a binary built
/// without `.cargo/config.toml` (a `cargo install` from elsewhere, say) maps 2 GiB at most.
async fn warn_if_the_map_was_cut(pool: &SqlitePool, configured: u64) {
    match sqlx::query_scalar::<_, i64>("PRAGMA mmap_size")
        .fetch_one(pool)
        .await
    {
        Ok(mapped) if (mapped as u64) < configured => tracing::warn!(
            configured_mib = configured >> 20,
            mapped_mib = mapped >> 20,
            "store.sqlite_mmap_mib is more than this build of SQLite maps; \
             build pipewarden with the repository's .cargo/config.toml"
        ),
        Ok(_) => {}
        Err(err) => tracing::warn!(error = %err, "could not read SQLite's mmap_size"),
    }
}

async fn open_postgres(url: &str, settings: &StoreSettings) -> Result<PgPool, StoreError> {
    let connect = |source| StoreError::Connect {
        backend: "postgres",
        source,
    };
    let mut options = PgConnectOptions::from_str(url).map_err(connect)?;
    // JIT compiles the wide query plans again in every session, which costs more than it
    // saves at these row counts (campaigns over 109,000 deals: 2.0-2.3 s with it, about 1 s
    // without); a URL that sets jit itself (options=-c jit=on) keeps its choice.
    if !url.contains("jit") {
        options = options.options([("jit", "off")]);
    }
    PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(options)
        .await
        .map_err(connect)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{Backend, Store};
    use crate::config::settings::{StoreSettings, StoreUrl};

    /// The `jit` setting of a session of a store opened at `url`.
    async fn jit_of(url: &str) -> String {
        let settings = StoreSettings {
            url: StoreUrl::Postgres(url.parse().expect("a PostgreSQL URL")),
            max_connections: 1,
            busy_timeout: Duration::from_secs(5),
            sqlite_mmap_mib: 0,
        };
        let store = Store::connect(&settings)
            .await
            .expect("PostgreSQL is reachable");
        let Backend::Postgres(pool) = store.pool() else {
            unreachable!("a postgres:// URL opens PostgreSQL")
        };
        let jit: String = sqlx::query_scalar("SHOW jit")
            .fetch_one(pool)
            .await
            .unwrap();
        store.close().await;
        jit
    }

    #[tokio::test]
    async fn postgres_sessions_run_without_jit_unless_the_url_asks_for_it() {
        let Ok(url) = std::env::var("PIPEWARDEN_TEST_POSTGRES_URL") else {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI runs the PostgreSQL tests"
            );
            return;
        };
        assert_eq!(jit_of(&url).await, "off");
        let separator = if url.contains('?') { '&' } else { '?' };
        let asked = format!("{url}{separator}options=-c%20jit%3Don");
        assert_eq!(jit_of(&asked).await, "on");
    }

    /// The configured map size reaches SQLite whole: past the 2 GiB that SQLite allows unless
    /// built with a higher ceiling (`.cargo/config.toml`), it would be cut down silently.
    #[tokio::test]
    async fn sqlite_connections_read_through_a_memory_map_of_the_configured_size() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("store.db").display());
        let settings = StoreSettings {
            url: crate::config::parse_store_url(&url).expect("a SQLite URL"),
            max_connections: 1,
            busy_timeout: Duration::from_secs(5),
            sqlite_mmap_mib: 4096,
        };
        let store = Store::connect(&settings).await.expect("the store opens");
        let Backend::Sqlite(pool) = store.pool() else {
            unreachable!("a sqlite:// URL opens SQLite")
        };
        let mapped: i64 = sqlx::query_scalar("PRAGMA mmap_size")
            .fetch_one(pool)
            .await
            .unwrap();
        store.close().await;
        assert_eq!(mapped, 4096 << 20);
    }
}
