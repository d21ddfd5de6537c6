//! Revert mode: a new violation of a `mode = "revert"` rule writes the deal's previous stage
//! back to the CRM and, on Salesforce, leaves a Task for the owner naming what is missing.
//!
//! The writes are decided in the evaluation's transaction, next to the violation they
//! answer, and stored in the `writeback_outbox` keyed on that violation, so a violation is
//! reverted at most once however often evaluation or delivery runs. Each write carries a
//! precondition: the stage is written back only while the deal is still in the violating
//! stage, and the task only once the deal is back in the previous stage, so a deal a rep
//! moved on meanwhile is left alone (its write is settled `failed` with
//! `PRECONDITION_FAILED` and what the CRM held). The outbox row is the audit: the values
//! before (the precondition) and after (the write), the CRM's answer, when. A dry-run rule
//! records the revert it would make as a `revert_planned` violation event and writes
//! nothing. HubSpot gets the stage write only: the emulator this project tests against
//! serves no notes endpoint, so no note is left there.

use serde_json::{json, Map, Value};
use sqlx::types::Json;

use super::gate::Finding;
use crate::config::settings::{ConnectionSettings, CrmKind, RuleSettings};
use crate::config::Settings;
use crate::crm::{CrmError, RetryPolicy};
use crate::record::Millis;
use crate::record::DAY_MS;
use crate::store::{dispatch, MoveAtVersion, QueryContext, Store, StoreError, StoreTx};
use crate::writeback::{self, Precondition, WriteOp};

/// Longest Task subject Salesforce stores.
const SUBJECT_MAX: usize = 255;
/// How far the CRM's clock may lag the move's timestamp when looking for a task created by
/// an interrupted delivery.
const CLOCK_SKEW_MS: Millis = 300_000;

/// One new violation to revert.
pub(super) struct Revert<'a> {
    /// The violation's id.
    pub violation_id: i64,
    /// The move that violated.
    pub m: &'a MoveAtVersion,
    /// What was missing or skipped.
    pub finding: &'a Finding,
}

/// The stage field of a deal.
fn stage_field(crm: CrmKind) -> &'static str {
    match crm {
        CrmKind::Salesforce => "StageName",
        CrmKind::Hubspot => "dealstage",
    }
}

/// The CRM object of deals.
fn deal_object(crm: CrmKind) -> &'static str {
    match crm {
        CrmKind::Salesforce => "Opportunity",
        CrmKind::Hubspot => "deals",
    }
}

fn one_field(name: &str, value: &str) -> Map<String, Value> {
    let mut fields = Map::new();
    fields.insert(name.to_string(), json!(value));
    fields
}

/// The task's subject: where the deal went back to and what to fill first.
fn task_subject(from: &str, to: &str, finding: &Finding) -> String {
    let mut what: Vec<String> = finding.missing.iter().map(|m| m.field.clone()).collect();
    what.dedup();
    let needs = if what.is_empty() {
        format!(
            "move through the skipped stages ({})",
            finding.skipped.join(", ")
        )
    } else {
        format!("fill {}", what.join(", "))
    };
    let subject = format!("Moved back to {from} by pipewarden: {needs} before {to}");
    if subject.chars().count() <= SUBJECT_MAX {
        return subject;
    }
    let cut: String = subject.chars().take(SUBJECT_MAX - 1).collect();
    format!("{cut}…")
}

/// The writes reverting one violation: the stage back, then (Salesforce) the owner's task.
fn revert_writes(crm: CrmKind, revert: &Revert<'_>, from: &str) -> Vec<(&'static str, WriteOp)> {
    let m = revert.m;
    let object = deal_object(crm);
    let field = stage_field(crm);
    let mut writes = vec![(
        "stage",
        WriteOp::Update {
            object: object.to_string(),
            id: m.crm_id.clone(),
            fields: one_field(field, from),
            auto_assign: false,
            clear_first: Vec::new(),
            only_if: Some(Precondition {
                object: object.to_string(),
                id: m.crm_id.clone(),
                fields: one_field(field, &m.to_stage),
            }),
        },
    )];
    if crm == CrmKind::Salesforce {
        let subject = task_subject(from, &m.to_stage, revert.finding);
        let due = chrono::DateTime::from_timestamp_millis(m.changed_at_ms + DAY_MS)
            .unwrap_or_default()
            .format("%Y-%m-%d")
            .to_string();
        let mut fields = Map::new();
        fields.insert("WhatId".into(), json!(m.crm_id));
        fields.insert("Subject".into(), json!(subject));
        fields.insert("ActivityDate".into(), json!(due));
        fields.insert("Status".into(), json!("Not Started"));
        fields.insert("Priority".into(), json!("High"));
        // A queue cannot own a task; the org then gives it to the running user.
        if let Some(owner) = m.owner_id.as_deref().filter(|o| o.starts_with("005")) {
            fields.insert("OwnerId".into(), json!(owner));
        }
        let mut find = Map::new();
        find.insert("WhatId".into(), json!(m.crm_id));
        find.insert("Subject".into(), json!(subject));
        writes.push((
            "task",
            WriteOp::Create {
                object: "Task".into(),
                fields,
                duplicate_ok: false,
                find_first: Some(find),
                created_after_ms: Some(m.changed_at_ms - CLOCK_SKEW_MS),
                // Only once the deal is back where the revert puts it.
                only_if: Some(Precondition {
                    object: object.to_string(),
                    id: m.crm_id.clone(),
                    fields: one_field(field, from),
                }),
            },
        ));
    }
    writes
}

/// Plans the reverts of a rule's new violations in the evaluation's transaction, at most
/// `left` of them (the rule's cap for this evaluation); returns how many were planned.
/// Violations without a previous stage (a deal created in a gated stage) cannot be reverted.
pub(super) async fn plan(
    tx: &mut StoreTx,
    connection: &ConnectionSettings,
    connection_id: i64,
    rule: &RuleSettings,
    reverts: &[Revert<'_>],
    left: u64,
    now: Millis,
) -> Result<u64, StoreError> {
    let mut planned = 0;
    for revert in reverts {
        let Some(from) = revert.m.from_stage.as_deref() else {
            continue;
        };
        if planned >= left {
            break;
        }
        planned += 1;
        let writes = revert_writes(connection.kind, revert, from);
        let field = stage_field(connection.kind);
        let note = json!({
            "dry_run": rule.dry_run,
            "before": { field: revert.m.to_stage },
            "after": { field: from },
            "writes": writes.iter().map(|(part, _)| *part).collect::<Vec<_>>(),
        });
        record_event(tx, revert.violation_id, &note, now).await?;
        if rule.dry_run {
            continue;
        }
        for (part, write) in &writes {
            queue(tx, connection_id, revert.violation_id, part, write, now).await?;
        }
    }
    Ok(planned)
}

async fn record_event(
    tx: &mut StoreTx,
    violation_id: i64,
    note: &Value,
    now: Millis,
) -> Result<(), StoreError> {
    dispatch!(tx.inner(), tx => sqlx::query(
        "INSERT INTO violation_events (violation_id, status, at_ms, actor, note) \
         VALUES ($1, 'revert_planned', $2, 'pipewarden', $3)",
    )
    .bind(violation_id)
    .bind(now)
    .bind(note.to_string())
    .execute(&mut **tx)
    .await
    .map(drop))
    .during("record planned revert")
}

async fn queue(
    tx: &mut StoreTx,
    connection_id: i64,
    violation_id: i64,
    part: &str,
    write: &WriteOp,
    now: Millis,
) -> Result<(), StoreError> {
    let payload = serde_json::to_value(write).unwrap_or(Value::Null);
    dispatch!(tx.inner(), tx => sqlx::query(
        "INSERT INTO writeback_outbox (idempotency_key, connection_id, origin, violation_id, crm_object, \
         crm_id, operation, payload, status, attempts, next_attempt_at_ms, created_at_ms) \
         VALUES ($1, $2, 'revert', $3, $4, $5, $6, $7, 'pending', 0, $8, $8) \
         ON CONFLICT (idempotency_key) DO NOTHING",
    )
    .bind(format!("revert/{violation_id}/{part}"))
    .bind(connection_id)
    .bind(violation_id)
    .bind(write.object())
    .bind(write.record_id())
    .bind(write.operation())
    .bind(Json(&payload))
    .bind(now)
    .execute(&mut **tx)
    .await
    .map(drop))
    .during("queue revert write")
}

/// Why reverts could not be delivered.
#[derive(Debug, thiserror::Error)]
pub enum RevertError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The connection's client could not be set up.
    #[error(transparent)]
    Crm(#[from] CrmError),
}

/// Delivers the connection's waiting write-backs (reverts, and recycle writes queued by an
/// earlier `recycle apply`) when one of its rules reverts, under the connection's write
/// lease (shared with `recycle apply`, so two processes never deliver at once).
pub async fn deliver(
    store: &Store,
    settings: &Settings,
    connection: &ConnectionSettings,
    retry: RetryPolicy,
) -> Result<writeback::DeliveryReport, RevertError> {
    let reverts = settings.rules.iter().any(|rule| {
        rule.connection == connection.name
            && rule.mode == crate::config::settings::RuleMode::Revert
            && !rule.dry_run
    });
    if !reverts {
        return Ok(writeback::DeliveryReport::default());
    }
    let Some(connection_id) = store.connection_id(&connection.name).await? else {
        return Ok(writeback::DeliveryReport::default());
    };
    let Some(_lease) = store
        .try_lease(&format!("recycle:{}", connection.name))
        .await?
    else {
        return Ok(writeback::DeliveryReport::default());
    };
    crate::recycle::cancel_writes_of_stopped_policies(store, settings, &connection.name).await?;
    writeback::deliver_pending(store, connection, connection_id, retry).await
}

#[cfg(test)]
mod tests {
    use super::task_subject;
    use crate::rules::gate::{Finding, MissingField, ViolationKind};

    #[test]
    fn the_task_names_the_missing_fields_and_fits_salesforce() {
        let finding = Finding {
            kind: ViolationKind::Skip,
            missing: vec![MissingField {
                stage: "Qualification".into(),
                field: "Budget__c".into(),
            }],
            skipped: vec!["Qualification".into()],
        };
        let subject = task_subject("Prospecting", "Needs Analysis", &finding);
        assert_eq!(
            subject,
            "Moved back to Prospecting by pipewarden: fill Budget__c before Needs Analysis"
        );
        let long = Finding {
            missing: (0..40)
                .map(|i| MissingField {
                    stage: "S".into(),
                    field: format!("Field_{i}__c"),
                })
                .collect(),
            ..finding
        };
        assert_eq!(task_subject("A", "B", &long).chars().count(), 255);
    }
}
