//! The store side of recycling: runs, planned actions and their outbox rows, tallies.

use serde_json::Value;
use sqlx::types::Json;
use sqlx::QueryBuilder;

use super::{ApplyReport, FailedAction, PolicyPlan};
use crate::record::Millis;
use crate::store::{dispatch, QueryContext, Store, StoreError};

/// Writes still waiting in the outbox (pending, or claimed by a process that died).
pub(super) async fn waiting_writes(store: &Store) -> Result<i64, StoreError> {
    dispatch!(store.pool(), pool => sqlx::query_scalar(
        "SELECT COUNT(*) FROM writeback_outbox WHERE status IN ('pending', 'in_flight')",
    )
    .fetch_one(pool)
    .await)
    .during("count waiting writes")
}

/// Cancels the connection's writes still pending whose policy is not among `live` (turned to
/// a dry run, or gone from the configuration): a dry run must stop writes already queued, not
/// only new ones. Writes claimed by a process that died stay: they may have reached the CRM,
/// and recovery must settle them. Returns how many were cancelled.
pub(super) async fn cancel_writes_not_of(
    store: &Store,
    connection_id: i64,
    live: &[&str],
) -> Result<u64, StoreError> {
    let mut tx = store.begin().await?;
    let ids: Vec<i64> = dispatch!(tx.inner(), tx => {
        let mut query = QueryBuilder::new(
            "SELECT o.recycle_action_id FROM writeback_outbox o JOIN recycle_actions a ON a.id = o.recycle_action_id \
             WHERE o.origin = 'recycle' AND o.status = 'pending' AND o.connection_id = ",
        );
        query.push_bind(connection_id);
        if !live.is_empty() {
            query.push(" AND a.policy NOT IN (");
            let mut names = query.separated(", ");
            for policy in live {
                names.push_bind(*policy);
            }
            query.push(")");
        }
        query.build_query_scalar().fetch_all(&mut **tx).await
    })
    .during("find writes of dry-run policies")?;
    for id in &ids {
        dispatch!(tx.inner(), tx => sqlx::query(
            "UPDATE writeback_outbox SET status = 'failed', error_code = 'CANCELLED', \
             error_message = 'its policy is a dry run now, or no longer configured' \
             WHERE recycle_action_id = $1 AND status = 'pending'",
        )
        .bind(id)
        .execute(&mut **tx)
        .await
        .map(drop))
        .during("cancel a write")?;
        dispatch!(tx.inner(), tx => sqlx::query(
            "UPDATE recycle_actions SET status = 'skipped', error_code = 'CANCELLED', \
             error_message = 'its policy is a dry run now, or no longer configured' WHERE id = $1",
        )
        .bind(id)
        .execute(&mut **tx)
        .await
        .map(drop))
        .during("cancel a recycle action")?;
    }
    tx.commit().await?;
    Ok(ids.len() as u64)
}

/// Writes still waiting for one connection.
pub(super) async fn waiting_writes_of(
    store: &Store,
    connection_id: i64,
) -> Result<i64, StoreError> {
    dispatch!(store.pool(), pool => sqlx::query_scalar(
        "SELECT COUNT(*) FROM writeback_outbox WHERE connection_id = $1 AND status IN ('pending', 'in_flight')",
    )
    .bind(connection_id)
    .fetch_one(pool)
    .await)
    .during("count waiting writes")
}

/// Opens a run.
pub(super) async fn start_run(
    store: &Store,
    as_of: Millis,
    now: Millis,
) -> Result<i64, StoreError> {
    dispatch!(store.pool(), pool => sqlx::query_scalar(
        "INSERT INTO recycle_runs (as_of_ms, started_at_ms) VALUES ($1, $2) RETURNING id",
    )
    .bind(as_of)
    .bind(now)
    .fetch_one(pool)
    .await)
    .during("start recycle run")
}

/// Closes a run with its report.
pub(super) async fn finish_run(
    store: &Store,
    run_id: i64,
    report: &ApplyReport,
    now: Millis,
) -> Result<(), StoreError> {
    let summary = serde_json::to_value(report).unwrap_or(Value::Null);
    dispatch!(store.pool(), pool => sqlx::query(
        "UPDATE recycle_runs SET finished_at_ms = $2, summary = $3 WHERE id = $1",
    )
    .bind(run_id)
    .bind(now)
    .bind(Json(&summary))
    .execute(pool)
    .await
    .map(drop))
    .during("finish recycle run")
}

/// Records one policy's plan: every action as a `recycle_actions` row and, unless the
/// policy is a dry run, its write in the outbox, all in one transaction.
pub(super) async fn record_plan(
    store: &Store,
    run_id: i64,
    plan: &PolicyPlan,
    as_of: Millis,
    now: Millis,
) -> Result<(), StoreError> {
    if plan.records.is_empty() {
        return Ok(());
    }
    let connection_id = store
        .connection_id(&plan.connection)
        .await?
        .ok_or_else(|| {
            StoreError::Conflict(format!("connection `{}` vanished", plan.connection))
        })?;
    let mut tx = store.begin().await?;
    for record in &plan.records {
        let candidate = &record.candidate;
        for action in &record.actions {
            let plan_key = if plan.dry_run {
                format!(
                    "dry-run/{run_id}/{}/{}/{}",
                    plan.policy, candidate.record_id, action.action
                )
            } else {
                format!(
                    "{}/{}/{}/run-{run_id}",
                    plan.policy, candidate.record_id, action.action
                )
            };
            let params = serde_json::to_value(&action.write).unwrap_or(Value::Null);
            let status = if plan.dry_run { "skipped" } else { "planned" };
            let action_id: Option<i64> = dispatch!(tx.inner(), tx => sqlx::query_scalar(
                "INSERT INTO recycle_actions (plan_key, policy, connection_id, record_id, action, params, reason, \
                 status, dry_run, planned_at_ms, before_values, after_values, run_id, recycled_at_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
                 ON CONFLICT (plan_key) DO NOTHING RETURNING id",
            )
            .bind(&plan_key)
            .bind(&plan.policy)
            .bind(connection_id)
            .bind(candidate.record_id)
            .bind(action.action)
            .bind(Json(&params))
            .bind(&record.reason)
            .bind(status)
            .bind(plan.dry_run)
            .bind(now)
            .bind(Json(&action.before))
            .bind(Json(&action.after))
            .bind(run_id)
            .bind(as_of)
            .fetch_optional(&mut **tx)
            .await)
            .during("record recycle action")?;
            let (Some(action_id), false) = (action_id, plan.dry_run) else {
                continue;
            };
            dispatch!(tx.inner(), tx => sqlx::query(
                "INSERT INTO writeback_outbox (idempotency_key, connection_id, origin, recycle_action_id, crm_object, \
                 crm_id, operation, payload, status, attempts, next_attempt_at_ms, created_at_ms) \
                 VALUES ($1, $2, 'recycle', $3, $4, $5, $6, $7, 'pending', 0, $8, $8) \
                 ON CONFLICT (idempotency_key) DO NOTHING",
            )
            .bind(&plan_key)
            .bind(connection_id)
            .bind(action_id)
            .bind(action.write.object())
            .bind(action.write.record_id())
            .bind(action.write.operation())
            .bind(Json(&params))
            .bind(now)
            .execute(&mut **tx)
            .await
            .map(drop))
            .during("queue recycle write")?;
        }
    }
    tx.commit().await
}

/// policy, record CRM id, action, error code, error message.
type FailureRow = (String, String, String, Option<String>, Option<String>);

/// Fills the per-policy counts and the failures of a run from what the store holds.
pub(super) async fn tally_run(
    store: &Store,
    run_id: i64,
    report: &mut ApplyReport,
) -> Result<(), StoreError> {
    let counts: Vec<(String, String, i64)> = dispatch!(store.pool(), pool => sqlx::query_as(
        "SELECT policy, status, COUNT(*) FROM recycle_actions WHERE run_id = $1 GROUP BY policy, status",
    )
    .bind(run_id)
    .fetch_all(pool)
    .await)
    .during("tally recycle run")?;
    for (policy, status, count) in counts {
        let Some(outcome) = report.policies.iter_mut().find(|p| p.policy == policy) else {
            continue;
        };
        let count = count.max(0) as u64;
        match status.as_str() {
            "applied" | "returned" => outcome.applied += count,
            "failed" => outcome.failed += count,
            "planned" => outcome.waiting += count,
            _ => {}
        }
    }
    let failures: Vec<FailureRow> =
        dispatch!(store.pool(), pool => sqlx::query_as(
            "SELECT a.policy, r.crm_id, a.action, a.error_code, a.error_message FROM recycle_actions a \
             JOIN records r ON r.id = a.record_id WHERE a.run_id = $1 AND a.status = 'failed' ORDER BY a.id",
        )
        .bind(run_id)
        .fetch_all(pool)
        .await)
        .during("read failed recycle actions")?;
    report.failures = failures
        .into_iter()
        .map(
            |(policy, crm_id, action, error_code, error_message)| FailedAction {
                policy,
                crm_id,
                action,
                error_code,
                error_message,
            },
        )
        .collect();
    let earlier: i64 = dispatch!(store.pool(), pool => sqlx::query_scalar(
        "SELECT COUNT(*) FROM recycle_actions a JOIN recycle_runs run ON run.id = $1 \
         WHERE (a.run_id IS NULL OR a.run_id <> $1) AND a.applied_at_ms >= run.started_at_ms",
    )
    .bind(run_id)
    .fetch_one(pool)
    .await)
    .during("count earlier writes delivered")?;
    report.earlier_writes_delivered = earlier.max(0) as u64;
    Ok(())
}
