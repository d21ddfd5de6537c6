//! Sync: fetch what changed in a CRM since the last checkpoint and store it.
//!
//! A run goes object by object. Every page of records is stored in one transaction together
//! with the cursor that follows it, so a run that dies anywhere resumes at its last page and
//! neither loses nor duplicates anything. Each run leaves an audit row (`sync_runs`).

mod hubspot;
mod hubspot_map;
mod progress;
mod salesforce;
mod salesforce_csv;
mod salesforce_map;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::settings::{ConnectionSettings, CrmKind};
use crate::crm::{ApiClient, ApiStats, BudgetUse, CrmError, RetryPolicy};
use crate::record::wall_clock;
use crate::record::Millis;
use crate::stop::StopSignal;
use crate::store::{
    BackendKind, Fence, StatisticsOf, StatisticsSchedule, Store, StoreError, StoreTx,
    StoredRefreshTokens, SyncLease, SyncRunStatus, SyncRunSummary,
};

/// Versions written in one run past which the store's planner statistics are refreshed: a
/// backfill, or a burst large enough to change the shape of the history tables.
const RESTATISTICS_AFTER_VERSIONS: i64 = 10_000;

/// How often a run checks that its lease's database session is alive.
const LEASE_CHECK_EVERY: Duration = Duration::from_secs(2);

/// How a run behaves, beyond the connection's settings.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// Retries of failed CRM calls.
    pub retry: RetryPolicy,
    /// What started the run (`cli`, `scheduler`), for the audit row.
    pub triggered_by: String,
    /// Which process ran it, for the audit row.
    pub replica: String,
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            retry: RetryPolicy::default(),
            triggered_by: "cli".into(),
            replica: hostname(),
        }
    }
}

fn hostname() -> String {
    std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into())
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The CRM failed in a way retries did not mend.
    #[error(transparent)]
    Crm(CrmError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Another replica is syncing this connection right now.
    #[error("connection `{0}`: another replica is syncing it")]
    LeaseHeld(String),
    /// The database session holding the run's lease died: another replica may sync now.
    #[error("connection `{0}`: the sync lease was lost with its database session; stopped at the last checkpoint for the replica that takes over")]
    LeaseLost(String),
    /// A stop was asked for; the run ended at its last committed page.
    #[error("stopped at the last checkpoint on request")]
    Interrupted,
    /// A Salesforce Bulk API 2.0 query job failed, was aborted, or outlasted the run's wait.
    #[error("connection `{connection}`: Bulk API query job {job} ({object}) {outcome}: {message}")]
    BulkJob {
        /// Connection name.
        connection: String,
        /// The job id (`750…`).
        job: String,
        /// The object it queried.
        object: String,
        /// `ended Failed`, `ended Aborted`, `is still InProgress`, …
        outcome: String,
        /// The job's `errorMessage`, or what the run did about it.
        message: String,
    },
}

impl From<CrmError> for SyncError {
    /// A call abandoned for a stop ends the run like a stop seen between pages.
    fn from(err: CrmError) -> Self {
        match err {
            CrmError::Interrupted { .. } => SyncError::Interrupted,
            other => SyncError::Crm(other),
        }
    }
}

impl SyncError {
    /// A short name of the kind of failure, for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            SyncError::Crm(CrmError::Unavailable { .. }) => "crm_unavailable",
            SyncError::Crm(CrmError::Api { .. }) => "crm_api",
            SyncError::Crm(CrmError::Auth { .. }) => "crm_auth",
            SyncError::Crm(CrmError::Budget { .. }) => "crm_budget",
            SyncError::Crm(CrmError::Decode { .. }) => "crm_decode",
            SyncError::Crm(CrmError::Setup { .. }) => "setup",
            // `From<CrmError>` turns an interrupted call into `SyncError::Interrupted`.
            SyncError::Crm(CrmError::Interrupted { .. }) | SyncError::Interrupted => "interrupted",
            SyncError::Store(_) => "store",
            SyncError::LeaseHeld(_) => "lease_held",
            SyncError::LeaseLost(_) => "lease_lost",
            SyncError::BulkJob { .. } => "crm_bulk_job",
        }
    }
}

/// What a finished run did and what it cost.
#[derive(Debug, Clone)]
pub struct SyncReport {
    /// The run's audit row.
    pub summary: SyncRunSummary,
    /// Its calls to the CRM.
    pub api: ApiStats,
    /// The CRM's daily allocation as last reported.
    pub budget: BudgetUse,
}

/// What a run has done so far.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RunCounters {
    pub records_seen: i64,
    pub versions_written: i64,
    pub transitions_written: i64,
    pub quarantined: i64,
}

/// What a CRM-specific run shares: where to store, what to call, what it has done.
pub(crate) struct RunContext<'a> {
    pub store: &'a Store,
    pub settings: &'a ConnectionSettings,
    pub api: &'a ApiClient,
    pub connection_id: i64,
    pub run_id: i64,
    pub counters: RunCounters,
    stop: &'a StopSignal,
    lease_lost: &'a AtomicBool,
    /// The run's lease epoch, checked by every transaction it commits (PostgreSQL).
    fence: Option<Fence>,
    /// When PostgreSQL's planner statistics are next refreshed, by versions this run wrote
    /// (see [`RunContext::refresh_statistics_when_grown`]).
    statistics: StatisticsSchedule,
}

impl RunContext<'_> {
    /// Starts a transaction of this run; it fails with [`SyncError::LeaseLost`] when another
    /// replica has taken the lease over, so a run whose lease session died (which the watcher
    /// may not have noticed yet) writes nothing more.
    pub async fn begin(&self) -> Result<StoreTx, SyncError> {
        self.refresh_statistics_when_grown().await;
        let mut tx = self.store.begin().await?;
        if let Some(fence) = &self.fence {
            if !tx.hold_fence(fence).await? {
                self.lease_lost.store(true, Ordering::Relaxed);
                return Err(SyncError::LeaseLost(self.settings.name.clone()));
            }
        }
        Ok(tx)
    }

    /// On PostgreSQL, refreshes the planner statistics when the versions this run wrote reach
    /// [`RESTATISTICS_AFTER_VERSIONS`] and each time they double. A backfill into empty tables
    /// otherwise runs on statistics of empty tables: the lookup of a page's records by CRM id
    /// scanned the whole records table, 300 ms a page, and held a `small` backfill to 1,400
    /// records/s. SQLite's planner favours the indexes without statistics, and gets them after
    /// the run (see `after_run_upkeep`).
    async fn refresh_statistics_when_grown(&self) {
        let written = u64::try_from(self.counters.versions_written).unwrap_or(0);
        if self.store.backend() != BackendKind::Postgres || !self.statistics.due(written) {
            return;
        }
        // Only speed is at stake: a failed refresh must not stop the run.
        if let Err(err) = self.store.refresh_statistics(StatisticsOf::History).await {
            tracing::warn!(error = %err, "cannot refresh the store's planner statistics");
        }
    }

    /// Ends the run (after the page just committed) when a stop was asked for, or when its
    /// lease was lost and another replica may be syncing the connection.
    pub fn check_stop(&self) -> Result<(), SyncError> {
        if self.lease_lost.load(Ordering::Relaxed) {
            return Err(SyncError::LeaseLost(self.settings.name.clone()));
        }
        if self.stop.is_set() {
            return Err(SyncError::Interrupted);
        }
        Ok(())
    }

    /// Waits `wait` (between polls of a Bulk API job) unless the run should end first.
    pub async fn pause(&self, wait: Duration) -> Result<(), SyncError> {
        self.check_stop()?;
        self.stop
            .unless_stopped(tokio::time::sleep(wait))
            .await
            .ok_or(SyncError::Interrupted)
    }
}

/// A run's lease, watched in the background: a PostgreSQL session can die mid-run (server
/// restart, network cut), and with it the advisory lock that kept other replicas away.
struct WatchedLease {
    lost: Arc<AtomicBool>,
    finished: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl WatchedLease {
    fn start(mut lease: SyncLease, connection: String) -> WatchedLease {
        let lost = Arc::new(AtomicBool::new(false));
        let (finished, mut done) = oneshot::channel();
        let flag = lost.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = &mut done => break,
                    () = tokio::time::sleep(LEASE_CHECK_EVERY) => {
                        // A half-open TCP session can leave a ping waiting for many minutes.
                        let held = tokio::time::timeout(LEASE_CHECK_EVERY, lease.is_held()).await;
                        if !held.unwrap_or(false) {
                            tracing::error!(%connection, "the sync lease's database session died; the run stops at its next checkpoint");
                            flag.store(true, Ordering::Relaxed);
                            break;
                        }
                    }
                }
            }
            lease.release().await;
        });
        WatchedLease {
            lost,
            finished,
            task,
        }
    }

    /// Ends the watch and gives the lease back (a session that does not close in time is
    /// dropped, which releases its lock on the server).
    async fn release(self) {
        let _ = self.finished.send(());
        let abort = self.task.abort_handle();
        if tokio::time::timeout(LEASE_CHECK_EVERY * 2, self.task)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
}

/// Syncs one connection once: from its checkpoints to now, or until its API budget for the
/// run is spent or `stop` fires (then it stops at the last committed page, and the next run
/// resumes there).
pub async fn sync_once(
    store: &Store,
    settings: &ConnectionSettings,
    options: &SyncOptions,
    stop: &StopSignal,
) -> Result<SyncReport, SyncError> {
    let Some(lease) = store.try_lease(&settings.name).await? else {
        return Err(SyncError::LeaseHeld(settings.name.clone()));
    };
    let started_at = wall_clock();
    let connection_id = store
        .ensure_connection(&settings.name, settings.kind, started_at)
        .await?;
    // Before the run's audit row: a connection whose settings cannot work leaves none.
    let api = ApiClient::new(settings, options.retry)?
        .keep_refresh_tokens(StoredRefreshTokens::for_connection(
            store,
            connection_id,
            settings,
        ))
        .stop_on(stop.clone());
    let abandoned = store.close_abandoned_sync_runs(connection_id).await?;
    if abandoned > 0 {
        tracing::warn!(connection = %settings.name, runs = abandoned,
            "earlier runs ended without closing their audit row; resuming from their last checkpoint");
    }
    let run_id = store
        .start_sync_run(
            connection_id,
            &options.triggered_by,
            &options.replica,
            started_at,
        )
        .await?;
    let fence = lease.fence();
    let lease = WatchedLease::start(lease, settings.name.clone());
    let mut ctx = RunContext {
        store,
        settings,
        api: &api,
        connection_id,
        run_id,
        counters: RunCounters::default(),
        stop,
        lease_lost: &lease.lost,
        fence,
        statistics: StatisticsSchedule::starting_at(RESTATISTICS_AFTER_VERSIONS as u64),
    };
    let outcome = match settings.kind {
        CrmKind::Salesforce => salesforce::sync(&mut ctx).await,
        CrmKind::Hubspot => hubspot::sync(&mut ctx).await,
    };
    let summary = run_summary(&ctx, started_at, &outcome);
    store.finish_sync_run(&summary).await?;
    if outcome.is_ok() {
        after_run_upkeep(store, &api, settings, connection_id, &ctx.counters).await;
    }
    lease.release().await;
    match outcome {
        Ok(()) | Err(SyncError::Interrupted) | Err(SyncError::Crm(CrmError::Budget { .. })) => {
            Ok(SyncReport {
                summary,
                api: api.stats(),
                budget: api.budget_use(),
            })
        }
        Err(err) => Err(err),
    }
}

/// What a successful run leaves for later readers; best effort, since the run's data is
/// already stored: the org's instance URL from the session's token (no API call), where
/// Salesforce records open and which moves when the org does, and after a large run fresh
/// planner statistics.
async fn after_run_upkeep(
    store: &Store,
    api: &ApiClient,
    settings: &ConnectionSettings,
    connection_id: i64,
    counters: &RunCounters,
) {
    if settings.kind == CrmKind::Salesforce {
        let stored = match api.instance_url().await {
            Ok(Some(url)) => store
                .set_record_url_base(connection_id, url.as_str().trim_end_matches('/'))
                .await
                .map_err(|err| err.to_string()),
            Ok(None) => Ok(()),
            Err(err) => Err(err.to_string()),
        };
        if let Err(err) = stored {
            tracing::warn!(connection = %settings.name, error = %err, "cannot store where the org's records open; alerts keep the last known link");
        }
    }
    if counters.versions_written >= RESTATISTICS_AFTER_VERSIONS {
        if let Err(err) = store.refresh_statistics(StatisticsOf::History).await {
            tracing::warn!(error = %err, "cannot refresh the store's planner statistics");
        }
    }
}

/// The audit row of a finished run, with its API use logged.
fn run_summary(
    ctx: &RunContext<'_>,
    started_at: Millis,
    outcome: &Result<(), SyncError>,
) -> SyncRunSummary {
    let stats = ctx.api.stats();
    let budget = ctx.api.budget_use();
    tracing::debug!(connection = %ctx.settings.name, api_calls = stats.calls, retries = stats.retries,
        rate_limited = stats.rate_limited, org_used = budget.org_used, org_limit = budget.org_limit,
        "API use of the run");
    let (status, message) = match outcome {
        Ok(()) => (SyncRunStatus::Succeeded, None),
        Err(SyncError::Interrupted) => (SyncRunStatus::Interrupted, None),
        Err(SyncError::Crm(err @ CrmError::Budget { .. })) => {
            (SyncRunStatus::BudgetStopped, Some(err.to_string()))
        }
        Err(err) => (SyncRunStatus::Failed, Some(err.to_string())),
    };
    let counters = ctx.counters;
    SyncRunSummary {
        id: ctx.run_id,
        status,
        started_at,
        finished_at: Some(wall_clock()),
        records_seen: counters.records_seen,
        versions_written: counters.versions_written,
        transitions_written: counters.transitions_written,
        api_calls: stats.calls as i64,
        errors: stats.failures as i64,
        quarantined: counters.quarantined,
        message,
    }
}

/// One line about a finished run, as `sync --once` and the demo print it.
pub fn describe_run(run: &SyncRunSummary) -> String {
    let mut line = format!(
        "{} — {} records read, {} new versions, {} stage changes, {} quarantined, {} API calls",
        run.status.as_str(),
        run.records_seen,
        run.versions_written,
        run.transitions_written,
        run.quarantined,
        run.api_calls
    );
    if let Some(message) = &run.message {
        line.push_str(&format!(" ({message})"));
    }
    line
}
