//! Reading millions of rows of one SQLite statement.
//!
//! sqlx hands SQLite rows to Rust one at a time over a channel from its worker thread, which
//! for millions of rows costs several times what the statement itself does. A scan steps the
//! statement through SQLite's C API (by rusqlite) on a blocking thread instead, on a
//! connection borrowed from the pool, so that it keeps the pool's settings (memory map, busy
//! timeout) and sees in-memory stores as well.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rusqlite::types::Value;
use rusqlite::{Connection, Row};
use sqlx::sqlite::LockedSqliteHandle;
use sqlx::SqlitePool;

use super::{QueryContext, StoreError};

/// Runs `sql` with `$1`, `$2`, … bound to `params` (it must use each of them and no other
/// parameter), and folds each row it returns into `state` with `each`, off the async runtime's
/// threads. Returns the state after the last row. If the caller stops waiting (a client gone,
/// a sibling read failed), the scan stops at its next row and gives its connection back.
pub(crate) async fn scan_sqlite<T, F>(
    pool: &SqlitePool,
    operation: &'static str,
    sql: &'static str,
    params: Vec<Value>,
    mut state: T,
    mut each: F,
) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnMut(&mut T, &Row<'_>) -> rusqlite::Result<()> + Send + 'static,
{
    let mut connection = pool.acquire().await.during(operation)?;
    let runtime = tokio::runtime::Handle::current();
    let abandoned = AbandonedOnDrop::default();
    let stop = Arc::clone(&abandoned.0);
    let scanned = tokio::task::spawn_blocking(move || {
        let mut locked = runtime
            .block_on(connection.lock_handle())
            .during(operation)?;
        let folded = through_rusqlite(&mut locked, |sqlite| {
            let mut statement = sqlite.prepare(sql)?;
            let expected = statement.parameter_count();
            if expected != params.len() {
                return Err(rusqlite::Error::InvalidParameterCount(
                    params.len(),
                    expected,
                ));
            }
            for (index, value) in params.into_iter().enumerate() {
                statement.raw_bind_parameter(format!("${}", index + 1).as_str(), value)?;
            }
            let mut rows = statement.raw_query();
            while let Some(row) = rows.next()? {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                each(&mut state, row)?;
            }
            Ok(state)
        });
        folded.map_err(|source| StoreError::Scan { operation, source })
    })
    .await;
    scanned.unwrap_or_else(|failed| match failed.try_into_panic() {
        Ok(panic) => std::panic::resume_unwind(panic),
        Err(cancelled) => panic!("a SQLite scan was cancelled: {cancelled}"),
    })
}

/// Tells a scan its caller stopped waiting for it, when dropped before the scan ended.
#[derive(Default)]
struct AbandonedOnDrop(Arc<AtomicBool>);

impl Drop for AbandonedOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Every row `sql` returns, each made a `T` (see [`scan_sqlite`]).
pub(crate) async fn fetch_all_sqlite<T>(
    pool: &SqlitePool,
    operation: &'static str,
    sql: &'static str,
    params: Vec<Value>,
) -> Result<Vec<T>, StoreError>
where
    T: for<'r> TryFrom<&'r Row<'r>, Error = rusqlite::Error> + Send + 'static,
{
    scan_sqlite(pool, operation, sql, params, Vec::new(), |rows, row| {
        rows.push(T::try_from(row)?);
        Ok(())
    })
    .await
}

/// Runs `work` on a rusqlite view of a connection sqlx opened and the caller has locked.
#[allow(unsafe_code)]
fn through_rusqlite<R>(
    locked: &mut LockedSqliteHandle<'_>,
    work: impl FnOnce(&Connection) -> rusqlite::Result<R>,
) -> rusqlite::Result<R> {
    // SAFETY: sqlx's worker leaves the connection alone while it is locked, and the lock is
    // borrowed for longer than the view lives. The view does not close the connection when
    // dropped, and the statements prepared on it borrow it, so they are finalized before it is
    // dropped: sqlx finds the connection as it left it.
    let view = unsafe { Connection::from_handle(locked.as_raw_handle().as_ptr()) }?;
    work(&view)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn sum_to(pool: &SqlitePool, params: Vec<Value>) -> Result<i64, StoreError> {
        const COUNT_TO: &str = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n \
             WHERE i < $1) SELECT i * $2 FROM n";
        scan_sqlite(pool, "sum", COUNT_TO, params, 0, |sum, row| {
            *sum += row.get::<_, i64>(0)?;
            Ok(())
        })
        .await
    }

    #[tokio::test]
    async fn a_scan_folds_every_row_and_refuses_a_parameter_count_the_statement_does_not_take() {
        let pool = SqlitePool::connect("sqlite::memory:").await.unwrap();
        let sum = sum_to(&pool, vec![Value::Integer(1000), Value::Integer(3)]).await;
        assert_eq!(sum.unwrap(), 3 * 500_500);
        let short = sum_to(&pool, vec![Value::Integer(1000)]).await.unwrap_err();
        assert!(
            short.to_string().contains("`sum`") && short.to_string().contains("parameter"),
            "{short}"
        );
    }

    #[test]
    fn an_abandoned_scan_gives_its_connection_back() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let after = runtime.block_on(async {
            // One connection, as an in-memory store has: a scan that kept it would starve the
            // next query, which then fails when its wait for a connection runs out.
            let pool = sqlx::sqlite::SqlitePoolOptions::new()
                .max_connections(1)
                .acquire_timeout(std::time::Duration::from_secs(10))
                .connect("sqlite::memory:")
                .await
                .unwrap();
            // Ten billion rows, hours of folding: still running when it is dropped.
            let endless = sum_to(
                &pool,
                vec![Value::Integer(10_000_000_000), Value::Integer(0)],
            );
            let waited = tokio::time::timeout(std::time::Duration::from_millis(100), endless).await;
            assert!(waited.is_err(), "the scan cannot have finished");
            sum_to(&pool, vec![Value::Integer(10), Value::Integer(1)]).await
        });
        // A scan that ignored being dropped would hold a blocking thread for hours.
        runtime.shutdown_background();
        assert_eq!(after.unwrap(), 55);
    }
}
