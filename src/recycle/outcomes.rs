//! Outcomes: a recycled record that later reaches a qualifying milestone has returned.
//!
//! Milestones come from the sync (lead status and lifecycle history), so outcomes are
//! evaluated after each sync and before each recycle run. A return is stored twice: on the
//! record's recycle actions (`status = returned`, when and by which milestone) and as a
//! `returned` lifecycle event at the milestone's own time, which is what cohorts count.

use serde_json::json;
use sqlx::types::Json;

use crate::record::Millis;
use crate::store::{dispatch, QueryContext, Store, StoreError};

/// Milestones that count as a return.
pub const QUALIFYING_MILESTONES: &[&str] = &["mql", "sql", "meeting_booked", "opportunity_created"];

/// Recycle episodes (a record and the instant it was recycled) with their first qualifying
/// milestone after that instant.
const RETURNS: &str = "SELECT x.record_id, x.connection_id, x.object_kind, x.recycled_at_ms, x.policy, \
     (SELECT e.event FROM lifecycle_events e WHERE e.record_id = x.record_id \
      AND e.event IN ('mql', 'sql', 'meeting_booked', 'opportunity_created') \
      AND e.occurred_at_ms > x.recycled_at_ms ORDER BY e.occurred_at_ms, e.id LIMIT 1), \
     (SELECT MIN(e.occurred_at_ms) FROM lifecycle_events e WHERE e.record_id = x.record_id \
      AND e.event IN ('mql', 'sql', 'meeting_booked', 'opportunity_created') \
      AND e.occurred_at_ms > x.recycled_at_ms) \
     FROM (SELECT a.record_id, a.connection_id, r.object_kind, a.recycled_at_ms, MIN(a.policy) AS policy \
           FROM recycle_actions a JOIN records r ON r.id = a.record_id \
           WHERE a.status = 'applied' AND a.recycled_at_ms IS NOT NULL \
           GROUP BY a.record_id, a.connection_id, r.object_kind, a.recycled_at_ms) x";

type ReturnRow = (i64, i64, String, i64, String, Option<String>, Option<i64>);

/// Marks every recycled record that has reached a qualifying milestone since as returned;
/// returns how many records it marked.
pub async fn evaluate(store: &Store, now: Millis) -> Result<u64, StoreError> {
    let rows: Vec<ReturnRow> = dispatch!(store.pool(), pool => sqlx::query_as(RETURNS)
        .fetch_all(pool)
        .await)
    .during("find returned records")?;
    let mut marked = 0;
    let mut tx = store.begin().await?;
    for (record_id, connection_id, kind, recycled_at, policy, event, at) in rows {
        let (Some(event), Some(at)) = (event, at) else {
            continue;
        };
        dispatch!(tx.inner(), tx => sqlx::query(
            "UPDATE recycle_actions SET status = 'returned', returned_at_ms = $3, returned_event = $4 \
             WHERE record_id = $1 AND recycled_at_ms = $2 AND status = 'applied'",
        )
        .bind(record_id)
        .bind(recycled_at)
        .bind(at)
        .bind(&event)
        .execute(&mut **tx)
        .await
        .map(drop))
        .during("mark recycle actions returned")?;
        let detail = json!({
            "policy": policy,
            "milestone": event,
            "recycled_at_ms": recycled_at,
            "delay_ms": at - recycled_at,
        });
        dispatch!(tx.inner(), tx => sqlx::query(
            "INSERT INTO lifecycle_events (record_id, connection_id, object_kind, event, occurred_at_ms, origin, \
             detail, observed_at_ms) VALUES ($1, $2, $3, 'returned', $4, 'pipewarden', $5, $6) \
             ON CONFLICT (record_id, event, occurred_at_ms) DO NOTHING",
        )
        .bind(record_id)
        .bind(connection_id)
        .bind(&kind)
        .bind(at)
        .bind(Json(&detail))
        .bind(now)
        .execute(&mut **tx)
        .await
        .map(drop))
        .during("record returned milestone")?;
        marked += 1;
    }
    tx.commit().await?;
    Ok(marked)
}

/// Evaluates outcomes after a sync: a failure is logged and left for the next sync, which
/// finds the same returns (evaluation is idempotent), so it never fails the sync.
pub async fn evaluate_after_sync(store: &Store, now: Millis) -> u64 {
    match evaluate(store, now).await {
        Ok(returned) => {
            if returned > 0 {
                tracing::info!(returned, "recycled records returned");
            }
            returned
        }
        Err(err) => {
            tracing::error!(error = %err, "evaluating recycle outcomes failed");
            0
        }
    }
}
