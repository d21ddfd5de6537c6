//! Who syncs a connection: one process at a time.
//!
//! On PostgreSQL several replicas share the store; each run takes a session-level advisory
//! lock named after its connection on a connection of its own. The lock lives exactly as
//! long as that database session, so a replica that dies (crash, SIGKILL, lost network)
//! releases it with its session and another replica takes over at its next interval.
//!
//! A lock alone cannot stop a run whose session died from committing the transaction it is
//! in while another replica has taken over, so leases are also fenced: taking one raises its
//! epoch in `lease_fences`, and [`StoreTx::hold_fence`] checks the epoch inside a transaction,
//! holding a shared lock on it that makes a takeover wait for that transaction to end.
//!
//! SQLite is for one replica. A process that syncs claims the store with an exclusive lock
//! on a file beside it, and a second one is refused with a message that says why.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::PathBuf;

use sha2::{Digest, Sha256};
use sqlx::pool::PoolConnection;
use sqlx::Postgres;

use super::{Backend, QueryContext, Store, StoreError, StoreTx};
use crate::config::settings::StoreUrl;

/// The right to sync one connection, held until dropped.
#[derive(Debug)]
pub struct SyncLease {
    /// The PostgreSQL session holding the advisory lock; SQLite needs none.
    session: Option<sqlx::PgConnection>,
    /// The lease's epoch when this replica took it (PostgreSQL only).
    fence: Option<Fence>,
}

/// A lease's name and the epoch its holder took it at: a transaction that finds a newer
/// epoch belongs to a run whose lease was taken over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    name: String,
    epoch: i64,
}

/// The claim of a process on a SQLite store, held until dropped.
#[derive(Debug)]
pub struct SoleReplica {
    _lock_file: Option<File>,
}

impl Store {
    /// Takes the lease on `connection`, or `None` when another replica holds it.
    pub async fn try_lease(&self, connection: &str) -> Result<Option<SyncLease>, StoreError> {
        let Backend::Postgres(pool) = self.pool() else {
            return Ok(Some(SyncLease {
                session: None,
                fence: None,
            }));
        };
        let pooled: PoolConnection<Postgres> = pool.acquire().await.during("take a lease")?;
        // Out of the pool: a pooled session would keep the lock after the lease is dropped.
        let mut session = pooled.detach();
        let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(lock_key(connection))
            .fetch_one(&mut session)
            .await
            .during("take a lease")?;
        if !taken {
            return Ok(None);
        }
        let Some(epoch) = raise_epoch(&mut session, connection).await? else {
            // The previous holder's transaction is still open: leave the lease to it for now.
            let _ = sqlx::Connection::close(session).await;
            return Ok(None);
        };
        Ok(Some(SyncLease {
            session: Some(session),
            fence: Some(Fence {
                name: connection.to_string(),
                epoch,
            }),
        }))
    }

    /// Claims a SQLite store for this process; refuses when another process holds it.
    /// PostgreSQL stores need no claim (their replicas coordinate through leases).
    pub fn claim_sole_replica(&self, url: &StoreUrl) -> Result<SoleReplica, StoreError> {
        let Some(path) = sqlite_file(url) else {
            return Ok(SoleReplica { _lock_file: None });
        };
        let lock_path = PathBuf::from(format!("{}.replica-lock", path.display()));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|err| {
                StoreError::Conflict(format!("cannot open {}: {err}", lock_path.display()))
            })?;
        match file.try_lock() {
            Ok(()) => Ok(SoleReplica {
                _lock_file: Some(file),
            }),
            Err(TryLockError::WouldBlock) => Err(StoreError::Conflict(format!(
                "another pipewarden process is syncing into the SQLite store {}; SQLite serves one replica \
                 (use a PostgreSQL store to run several)",
                path.display()
            ))),
            Err(TryLockError::Error(err)) => Err(StoreError::Conflict(format!(
                "cannot lock {}: {err}",
                lock_path.display()
            ))),
        }
    }
}

impl SyncLease {
    /// What transactions under this lease check; `None` on SQLite, which has one replica.
    pub fn fence(&self) -> Option<Fence> {
        self.fence.clone()
    }

    /// Whether the lease is still held: a PostgreSQL session that dropped (idle timeout, a
    /// server restart) took its advisory lock with it, and another replica may hold it now.
    pub async fn is_held(&mut self) -> bool {
        match &mut self.session {
            Some(session) => sqlx::Connection::ping(session).await.is_ok(),
            None => true,
        }
    }

    /// Gives the lease back at once (dropping it does too, when its session closes).
    pub async fn release(self) {
        let (Some(mut session), Some(fence)) = (self.session, self.fence) else {
            return;
        };
        // Closing the session releases its locks only once the server has ended the backend,
        // a moment after the client is done: the next run could find the lease still held.
        // Unlocking first gives it back before this returns; a failed unlock leaves it to
        // the close.
        let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(lock_key(&fence.name))
            .execute(&mut session)
            .await;
        let _ = sqlx::Connection::close(session).await;
    }
}

impl StoreTx {
    /// Whether `fence` is still the lease's newest epoch. The shared lock on the epoch's row
    /// lasts until this transaction ends, so a replica taking the lease over waits for it;
    /// `false` means the lease was taken over and nothing here may be committed.
    pub async fn hold_fence(&mut self, fence: &Fence) -> Result<bool, StoreError> {
        let Backend::Postgres(tx) = self.inner() else {
            return Ok(true);
        };
        let epoch: Option<i64> =
            sqlx::query_scalar("SELECT epoch FROM lease_fences WHERE name = $1 FOR SHARE")
                .bind(&fence.name)
                .fetch_optional(&mut **tx)
                .await
                .during("check the lease's epoch")?;
        Ok(epoch == Some(fence.epoch))
    }
}

/// How long a takeover waits for a transaction of the previous holder that passed the fence.
const TAKEOVER_WAIT: &str = "5s";

/// Raises the lease's epoch on the session that holds its lock; `None` when a transaction of
/// the previous holder keeps the epoch locked past [`TAKEOVER_WAIT`] (a stalled client), so a
/// takeover never hangs on it.
async fn raise_epoch(
    session: &mut sqlx::PgConnection,
    name: &str,
) -> Result<Option<i64>, StoreError> {
    let mut tx = sqlx::Connection::begin(&mut *session)
        .await
        .during("raise the lease's epoch")?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SET LOCAL lock_timeout = '{TAKEOVER_WAIT}'"
    )))
    .execute(&mut *tx)
    .await
    .during("raise the lease's epoch")?;
    let raised = sqlx::query_scalar(
        "INSERT INTO lease_fences (name, epoch) VALUES ($1, 1) \
         ON CONFLICT (name) DO UPDATE SET epoch = lease_fences.epoch + 1 RETURNING epoch",
    )
    .bind(name)
    .fetch_one(&mut *tx)
    .await;
    match raised {
        Ok(epoch) => {
            tx.commit().await.during("raise the lease's epoch")?;
            Ok(Some(epoch))
        }
        // lock_not_available: the lock timeout ran out.
        Err(sqlx::Error::Database(err)) if err.code().as_deref() == Some("55P03") => Ok(None),
        Err(err) => Err(err).during("raise the lease's epoch"),
    }
}

/// The advisory lock key of a connection: the first eight bytes of a hash of its name.
fn lock_key(connection: &str) -> i64 {
    let digest = Sha256::digest(format!("pipewarden sync {connection}"));
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(bytes)
}

/// The file of a SQLite URL, unless it is in memory.
fn sqlite_file(url: &StoreUrl) -> Option<PathBuf> {
    let StoreUrl::Sqlite(url) = url else {
        return None;
    };
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty() && !path.contains(":memory:")).then(|| PathBuf::from(path))
}
