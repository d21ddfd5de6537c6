//! Sync: fetch what changed in a CRM since the last checkpoint and store it.
//!
//! A run goes object by object. Every page of records is stored in one transaction together
//! with the cursor that follows it, so a run that dies anywhere resumes at its last page and
//! neither loses nor duplicates anything. Each run leaves an audit row (`sync_runs`).

mod salesforce;
mod salesforce_map;

use std::time::Duration;

use crate::config::settings::{ConnectionSettings, CrmKind};
use crate::crm::{ApiClient, CrmError, RetryPolicy};
use crate::record::Millis;
use crate::store::{Store, StoreError, SyncRunStatus, SyncRunSummary};

/// How a run behaves, beyond the connection's settings.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// Retries of failed CRM calls.
    pub retry: RetryPolicy,
    /// Rows asked for per query page (Salesforce: 200–2,000).
    pub page_size: u32,
    /// How far before the last checkpoint an incremental run starts again, for changes that
    /// became visible late (transactions committing after their stamp, index lag).
    pub lookback: Duration,
    /// What started the run (`cli`, `scheduler`), for the audit row.
    pub triggered_by: String,
    /// Which process ran it, for the audit row.
    pub replica: String,
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            retry: RetryPolicy::default(),
            page_size: 2_000,
            lookback: Duration::from_secs(300),
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
    Crm(#[from] CrmError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The connection's CRM is one this build cannot sync yet.
    #[error("connection `{0}`: syncing HubSpot is not available in this version of pipewarden")]
    Unsupported(String),
}

/// What a run has done so far.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RunCounters {
    pub records_seen: i64,
    pub versions_written: i64,
    pub transitions_written: i64,
    pub quarantined: i64,
}

/// Syncs one connection once: from its checkpoints to now, or until its API budget for the
/// run is spent (then it stops cleanly and the next run resumes).
pub async fn sync_once(
    store: &Store,
    settings: &ConnectionSettings,
    options: &SyncOptions,
) -> Result<SyncRunSummary, SyncError> {
    if settings.kind != CrmKind::Salesforce {
        return Err(SyncError::Unsupported(settings.name.clone()));
    }
    let started_at = wall_clock();
    let connection_id = store
        .ensure_connection(&settings.name, settings.kind, started_at)
        .await?;
    let run_id = store
        .start_sync_run(
            connection_id,
            &options.triggered_by,
            &options.replica,
            started_at,
        )
        .await?;
    let api = ApiClient::new(settings, options.retry)?;
    let mut run = salesforce::Run::new(store, settings, options, connection_id, run_id, api);
    let outcome = run.sync().await;
    let counters = run.counters();
    let stats = run.api_stats();
    let budget = run.budget_use();
    tracing::info!(connection = %settings.name, api_calls = stats.calls, retries = stats.retries,
        rate_limited = stats.rate_limited, org_used = budget.org_used, org_limit = budget.org_limit,
        "API use of the run");
    let (status, message) = match &outcome {
        Ok(()) => (SyncRunStatus::Succeeded, None),
        Err(SyncError::Crm(err @ CrmError::Budget { .. })) => {
            (SyncRunStatus::BudgetStopped, Some(err.to_string()))
        }
        Err(err) => (SyncRunStatus::Failed, Some(err.to_string())),
    };
    let summary = SyncRunSummary {
        id: run_id,
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
    };
    store.finish_sync_run(&summary).await?;
    match outcome {
        Ok(()) | Err(SyncError::Crm(CrmError::Budget { .. })) => Ok(summary),
        Err(err) => Err(err),
    }
}

/// This host's clock, for the audit rows.
fn wall_clock() -> Millis {
    chrono::Utc::now().timestamp_millis()
}
