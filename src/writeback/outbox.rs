//! Claiming, delivering and settling outbox rows of one connection.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{json, Map, Value};
use sqlx::types::Json;

use super::Pending;
use super::{hubspot, salesforce, WriteOp, WriteOutcome};
use crate::config::settings::{ConnectionSettings, Endpoints};
use crate::crm::{ApiClient, CrmError, RetryPolicy};
use crate::record::wall_clock;
use crate::record::Millis;
use crate::store::{dispatch, QueryContext, Store, StoreError, StoredRefreshTokens};

/// Rows claimed per round: one full Salesforce collection.
const CLAIM_BATCH: i64 = 200;
/// Attempts before a write that never got an answer is given up (and reported).
const MAX_ATTEMPTS: i64 = 5;
/// Wait before a write whose call failed is tried again.
const RETRY_AFTER_MS: Millis = 60_000;

/// One settled write, for the caller's report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SettledWrite {
    /// Outbox row id.
    pub outbox_id: i64,
    /// The recycle action it carries out.
    pub recycle_action_id: Option<i64>,
    /// `applied`, `failed` or `pending` (to be retried).
    pub status: String,
    /// The CRM's error code when it failed.
    pub error_code: Option<String>,
    /// The CRM's message when it failed.
    pub error_message: Option<String>,
}

/// What one delivery pass did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DeliveryReport {
    /// Writes the CRM holds now.
    pub applied: u64,
    /// Writes the CRM refused (or that were given up).
    pub failed: u64,
    /// Writes left for a later run (the CRM did not answer).
    pub retry_later: u64,
    /// Every settled write.
    pub settled: Vec<SettledWrite>,
}

type ClaimRow = (i64, Option<i64>, Json<Value>, i64);

/// The clients a delivery calls through.
struct WriteClients {
    /// The connection's client, retrying failed calls as configured.
    api: ApiClient,
    /// A client of the same connection that makes each call once: for creates, which must
    /// not be repeated blindly when an answer is lost.
    single_shot: ApiClient,
}

/// Delivers every due row of `connection_id`, oldest first, in batches, until none is left
/// or the CRM stops answering, with `retry` for updates. The caller holds the connection's
/// write lease, so rows still `in_flight` were left by a process that died mid-call and are
/// delivered again (safely: see the module documentation). It fails when the store does, or
/// when no client for the connection can be built.
pub async fn deliver_pending<E: From<StoreError> + From<CrmError>>(
    store: &Store,
    connection: &ConnectionSettings,
    connection_id: i64,
    retry: RetryPolicy,
) -> Result<DeliveryReport, E> {
    let keeper = || StoredRefreshTokens::for_connection(store, connection_id, connection);
    let clients = WriteClients {
        api: ApiClient::new(connection, retry)?.keep_refresh_tokens(keeper()),
        single_shot: ApiClient::new(
            connection,
            RetryPolicy {
                max_attempts: 1,
                ..retry
            },
        )?
        .keep_refresh_tokens(keeper()),
    };
    let mut report = DeliveryReport::default();
    loop {
        let now = wall_clock();
        let rows = claim(store, connection_id, now).await?;
        if rows.is_empty() {
            break;
        }
        let mut ops = Vec::with_capacity(rows.len());
        for (id, _, payload, _) in &rows {
            match serde_json::from_value::<WriteOp>(payload.0.clone()) {
                Ok(op) => ops.push(Some(op)),
                Err(err) => {
                    tracing::error!(outbox_id = id, error = %err, "unreadable write-back payload");
                    ops.push(None);
                }
            }
        }
        let outcomes = deliver_rows(connection, &clients, &rows, &ops).await;
        let settled_at = wall_clock();
        let mut answered = false;
        let mut tx = store.begin().await?;
        for (position, (id, action_id, _, attempts)) in rows.iter().enumerate() {
            let outcome =
                outcomes
                    .get(&position)
                    .cloned()
                    .unwrap_or_else(|| WriteOutcome::Refused {
                        code: "UNREADABLE_PAYLOAD".into(),
                        message: "the stored write could not be read".into(),
                    });
            if !matches!(outcome, WriteOutcome::Retry(_)) {
                answered = true;
            }
            let settled = settle(&mut tx, *id, *action_id, *attempts, &outcome, settled_at).await?;
            match settled.status.as_str() {
                "applied" => report.applied += 1,
                "failed" => report.failed += 1,
                _ => report.retry_later += 1,
            }
            report.settled.push(settled);
        }
        tx.commit().await?;
        if !answered {
            // The CRM answered nothing in this round: leave the rest for the next run.
            break;
        }
    }
    Ok(report)
}

/// Marks the next due rows `in_flight` (attempts + 1) and returns them with the attempts
/// made before this one.
async fn claim(
    store: &Store,
    connection_id: i64,
    now: Millis,
) -> Result<Vec<ClaimRow>, StoreError> {
    let mut tx = store.begin().await?;
    let rows: Vec<ClaimRow> = dispatch!(tx.inner(), tx => sqlx::query_as(
        "SELECT id, recycle_action_id, payload, attempts FROM writeback_outbox \
         WHERE connection_id = $1 AND status IN ('pending', 'in_flight') AND next_attempt_at_ms <= $2 \
         ORDER BY id LIMIT $3",
    )
    .bind(connection_id)
    .bind(now)
    .bind(CLAIM_BATCH)
    .fetch_all(&mut **tx)
    .await)
    .during("claim write-back rows")?;
    for (id, ..) in &rows {
        dispatch!(tx.inner(), tx => sqlx::query(
            "UPDATE writeback_outbox SET status = 'in_flight', attempts = attempts + 1, claimed_at_ms = $2 WHERE id = $1",
        )
        .bind(id)
        .bind(now)
        .execute(&mut **tx)
        .await
        .map(drop))
        .during("claim write-back rows")?;
    }
    tx.commit().await?;
    Ok(rows)
}

/// Merges the field updates of one record into one write (a CRM batch must not name a
/// record twice), delivers, and spreads each merged outcome back over its rows.
async fn deliver_rows(
    connection: &ConnectionSettings,
    clients: &WriteClients,
    rows: &[ClaimRow],
    ops: &[Option<WriteOp>],
) -> BTreeMap<usize, WriteOutcome> {
    let mut merged: Vec<(WriteOp, Vec<usize>, bool)> = Vec::new();
    let mut update_slot: BTreeMap<(String, String, bool, String), usize> = BTreeMap::new();
    for (position, op) in ops.iter().enumerate() {
        let Some(op) = op else { continue };
        let retried = rows[position].3 > 0;
        if let WriteOp::Update {
            object,
            id,
            fields,
            auto_assign,
            clear_first,
            only_if,
        } = op
        {
            // Conditional writes merge only with writes under the same condition.
            let condition = serde_json::to_string(only_if).unwrap_or_default();
            let key = (object.clone(), id.clone(), *auto_assign, condition);
            if let Some(&slot) = update_slot.get(&key) {
                let (existing, positions, any_retried) = &mut merged[slot];
                if let WriteOp::Update {
                    fields: merged_fields,
                    clear_first: merged_clear,
                    ..
                } = existing
                {
                    merged_fields.extend(fields.clone());
                    merged_clear.extend(clear_first.iter().cloned());
                }
                positions.push(position);
                *any_retried |= retried;
                continue;
            }
            update_slot.insert(key, merged.len());
        }
        merged.push((op.clone(), vec![position], retried));
    }
    let pending: Vec<Pending> = merged
        .iter()
        .enumerate()
        .map(|(index, (op, _, retried))| Pending {
            index,
            op,
            retried: *retried,
        })
        .collect();
    let outcomes = match &connection.endpoints {
        Endpoints::Salesforce { api_version, .. } => {
            salesforce::deliver(&clients.api, &clients.single_shot, api_version, &pending).await
        }
        Endpoints::Hubspot { api_version, .. } => {
            hubspot::deliver(&clients.api, &clients.single_shot, api_version, &pending).await
        }
    };
    let mut by_row = BTreeMap::new();
    for (index, (_, positions, _)) in merged.iter().enumerate() {
        let outcome = outcomes
            .get(&index)
            .cloned()
            .unwrap_or_else(|| WriteOutcome::Retry("no answer for this write".into()));
        for position in positions {
            by_row.insert(*position, outcome.clone());
        }
    }
    by_row
}

/// Records one row's outcome, and its recycle action's.
async fn settle(
    tx: &mut crate::store::StoreTx,
    outbox_id: i64,
    action_id: Option<i64>,
    attempts_before: i64,
    outcome: &WriteOutcome,
    now: Millis,
) -> Result<SettledWrite, StoreError> {
    let attempts = attempts_before + 1;
    let (status, code, message, response) = match outcome {
        WriteOutcome::Applied(response) => ("applied", None, None, Some(response.clone())),
        WriteOutcome::Refused { code, message } => {
            ("failed", Some(code.clone()), Some(message.clone()), None)
        }
        WriteOutcome::Retry(message) if attempts >= MAX_ATTEMPTS => (
            "failed",
            Some("NO_ANSWER".to_string()),
            Some(format!("gave up after {attempts} attempts: {message}")),
            None,
        ),
        WriteOutcome::Retry(message) => ("pending", None, Some(message.clone()), None),
    };
    dispatch!(tx.inner(), tx => sqlx::query(
        "UPDATE writeback_outbox SET status = $2, error_code = $3, error_message = $4, crm_response = $5, \
         applied_at_ms = CASE WHEN $2 = 'applied' THEN $6 ELSE applied_at_ms END, \
         next_attempt_at_ms = CASE WHEN $2 = 'pending' THEN $7 ELSE next_attempt_at_ms END WHERE id = $1",
    )
    .bind(outbox_id)
    .bind(status)
    .bind(code.as_deref())
    .bind(message.as_deref())
    .bind(response.as_ref().map(Json))
    .bind(now)
    .bind(now + RETRY_AFTER_MS * attempts)
    .execute(&mut **tx)
    .await
    .map(drop))
    .during("settle write-back row")?;
    if let (Some(action_id), "applied" | "failed") = (action_id, status) {
        dispatch!(tx.inner(), tx => sqlx::query(
            "UPDATE recycle_actions SET status = $2, applied_at_ms = $3, error_code = $4, error_message = $5 \
             WHERE id = $1 AND status = 'planned'",
        )
        .bind(action_id)
        .bind(status)
        .bind(now)
        .bind(code.as_deref())
        .bind(message.as_deref())
        .execute(&mut **tx)
        .await
        .map(drop))
        .during("settle recycle action")?;
        if status == "applied" {
            record_recycled_event(tx, action_id, now).await?;
        }
    }
    Ok(SettledWrite {
        outbox_id,
        recycle_action_id: action_id,
        status: status.to_string(),
        error_code: code,
        error_message: message,
    })
}

/// The record's `recycled` milestone, at the instant its run recycled it (once per run:
/// every action of one run shares that instant).
async fn record_recycled_event(
    tx: &mut crate::store::StoreTx,
    action_id: i64,
    now: Millis,
) -> Result<(), StoreError> {
    let found: Option<(i64, i64, String, Option<i64>, String)> =
        dispatch!(tx.inner(), tx => sqlx::query_as(
        "SELECT a.record_id, a.connection_id, r.object_kind, a.recycled_at_ms, a.policy \
         FROM recycle_actions a JOIN records r ON r.id = a.record_id WHERE a.id = $1",
    )
    .bind(action_id)
    .fetch_optional(&mut **tx)
    .await)
        .during("read recycled record")?;
    let Some((record_id, connection_id, kind, recycled_at, policy)) = found else {
        return Ok(());
    };
    let mut detail = Map::new();
    detail.insert("policy".into(), json!(policy));
    let detail = Value::Object(detail);
    dispatch!(tx.inner(), tx => sqlx::query(
        "INSERT INTO lifecycle_events (record_id, connection_id, object_kind, event, occurred_at_ms, origin, detail, \
         observed_at_ms) VALUES ($1, $2, $3, 'recycled', $4, 'pipewarden', $5, $6) \
         ON CONFLICT (record_id, event, occurred_at_ms) DO NOTHING",
    )
    .bind(record_id)
    .bind(connection_id)
    .bind(kind)
    .bind(recycled_at.unwrap_or(now))
    .bind(Json(&detail))
    .bind(now)
    .execute(&mut **tx)
    .await
    .map(drop))
    .during("record recycled milestone")
}
