//! Revert mode: a new violation of a `mode = "revert"` rule writes the deal's previous stage
//! back to the CRM and leaves a task for the owner naming what is missing.
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
//! nothing.
//!
//! A new violation that can be reverted is first marked `revert_due`, with the violation
//! itself; the revert is planned after the evaluation has looked for what resolves
//! violations, so a deal whose fields were filled meanwhile is not moved back. The per-run
//! cap bounds how many are planned per evaluation, oldest move first; the rest stay due
//! for the next evaluations while they stay open.

use serde_json::{json, Map, Value};
use sqlx::types::Json;

use super::deal_object;
use super::gate::MissingField;
use crate::config::settings::{ConnectionSettings, CrmKind, RuleSettings};
use crate::config::Settings;
use crate::crm::{CrmError, RetryPolicy};
use crate::record::Millis;
use crate::record::DAY_MS;
use crate::store::{dispatch, QueryContext, Store, StoreError, StoreTx, ROWS_PER_STATEMENT};
use crate::writeback::{self, Association, Precondition, WriteOp};
use sqlx::QueryBuilder;

/// Longest Task subject Salesforce stores.
const SUBJECT_MAX: usize = 255;
/// HubSpot's association type id for a task associated with a deal.
const TASK_TO_DEAL: u64 = 216;
/// How far the CRM's clock may lag the move's timestamp when looking for a task created by
/// an interrupted delivery.
const CLOCK_SKEW_MS: Millis = 300_000;

/// One violation to revert: the move that violated and what it lacked.
struct Revert<'a> {
    violation_id: i64,
    crm_id: &'a str,
    /// The stage the deal left, which the revert writes back.
    from_stage: &'a str,
    to_stage: &'a str,
    changed_at_ms: Millis,
    /// Its owner at the move.
    owner_id: Option<&'a str>,
    /// Required fields that were empty.
    missing: &'a [MissingField],
    /// Stages jumped over.
    skipped: &'a [String],
}

/// The stage field of a deal.
fn stage_field(crm: CrmKind) -> &'static str {
    match crm {
        CrmKind::Salesforce => "StageName",
        CrmKind::Hubspot => "dealstage",
    }
}

fn one_field(name: &str, value: &str) -> Map<String, Value> {
    let mut fields = Map::new();
    fields.insert(name.to_string(), json!(value));
    fields
}

/// The task's subject: where the deal went back to and what to fill first.
fn task_subject(from: &str, to: &str, missing: &[MissingField], skipped: &[String]) -> String {
    let mut what: Vec<String> = missing.iter().map(|m| m.field.clone()).collect();
    what.dedup();
    let needs = if what.is_empty() {
        format!("move through the skipped stages ({})", skipped.join(", "))
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

/// The writes reverting one violation, planned at `now`: the stage back, then the owner's
/// task, due a day after the plan (a revert deferred past the cap is not born overdue).
fn revert_writes(crm: CrmKind, revert: &Revert<'_>, now: Millis) -> Vec<(&'static str, WriteOp)> {
    let from = revert.from_stage;
    let object = deal_object(crm);
    let field = stage_field(crm);
    let stage = WriteOp::Update {
        object: object.to_string(),
        id: revert.crm_id.to_string(),
        fields: one_field(field, from),
        auto_assign: false,
        clear_first: Vec::new(),
        only_if: Some(Precondition {
            object: object.to_string(),
            id: revert.crm_id.to_string(),
            fields: one_field(field, revert.to_stage),
        }),
    };
    let subject = task_subject(from, revert.to_stage, revert.missing, revert.skipped);
    let (task_object, fields, find, associate_with) = match crm {
        CrmKind::Salesforce => salesforce_task(revert, &subject, now + DAY_MS),
        CrmKind::Hubspot => hubspot_task(revert, &subject, now + DAY_MS),
    };
    let task = WriteOp::Create {
        object: task_object.to_string(),
        fields,
        duplicate_ok: false,
        find_first: Some(find),
        created_after_ms: Some(revert.changed_at_ms - CLOCK_SKEW_MS),
        associate_with,
        // Only once the deal is back where the revert puts it.
        only_if: Some(Precondition {
            object: object.to_string(),
            id: revert.crm_id.to_string(),
            fields: one_field(field, from),
        }),
    };
    vec![("stage", stage), ("task", task)]
}

/// A task's object, its fields, the fields that find it again, and what it is associated with.
type TaskParts = (
    &'static str,
    Map<String, Value>,
    Map<String, Value>,
    Option<Association>,
);

/// A Salesforce Task on the deal (`WhatId`), due on the day of `due`.
fn salesforce_task(revert: &Revert<'_>, subject: &str, due: Millis) -> TaskParts {
    let due = chrono::DateTime::from_timestamp_millis(due)
        .unwrap_or_default()
        .format("%Y-%m-%d")
        .to_string();
    let mut fields = Map::new();
    fields.insert("WhatId".into(), json!(revert.crm_id));
    fields.insert("Subject".into(), json!(subject));
    fields.insert("ActivityDate".into(), json!(due));
    fields.insert("Status".into(), json!("Not Started"));
    fields.insert("Priority".into(), json!("High"));
    // A queue cannot own a task; the org then gives it to the running user.
    if let Some(owner) = revert.owner_id.filter(|o| o.starts_with("005")) {
        fields.insert("OwnerId".into(), json!(owner));
    }
    let mut find = Map::new();
    find.insert("WhatId".into(), json!(revert.crm_id));
    find.insert("Subject".into(), json!(subject));
    ("Task", fields, find, None)
}

/// A HubSpot task associated with the deal, due at `due`.
fn hubspot_task(revert: &Revert<'_>, subject: &str, due: Millis) -> TaskParts {
    let mut fields = Map::new();
    fields.insert("hs_timestamp".into(), json!(due.to_string()));
    fields.insert("hs_task_subject".into(), json!(subject));
    fields.insert("hs_task_status".into(), json!("NOT_STARTED"));
    fields.insert("hs_task_priority".into(), json!("HIGH"));
    fields.insert("hs_task_type".into(), json!("TODO"));
    if let Some(owner) = revert
        .owner_id
        .filter(|o| !o.is_empty() && o.bytes().all(|b| b.is_ascii_digit()))
    {
        fields.insert("hubspot_owner_id".into(), json!(owner));
    }
    let mut find = Map::new();
    find.insert("hs_task_subject".into(), json!(subject));
    let deal = Association {
        object: "deals".into(),
        id: revert.crm_id.to_string(),
        type_id: TASK_TO_DEAL,
    };
    ("tasks", fields, find, Some(deal))
}

/// Marks new violations as due for a revert, in the evaluation's transaction that stores
/// them; [`plan_due`] plans them.
pub(super) async fn mark_due(
    tx: &mut StoreTx,
    violation_ids: &[i64],
    now: Millis,
) -> Result<(), StoreError> {
    for chunk in violation_ids.chunks(ROWS_PER_STATEMENT) {
        dispatch!(tx.inner(), tx => {
            let mut query = QueryBuilder::new(
                "INSERT INTO violation_events (violation_id, status, at_ms, actor) ",
            );
            query.push_values(chunk, |mut row, id| {
                row.push_bind(*id)
                    .push_bind(DUE)
                    .push_bind(now)
                    .push_bind("pipewarden");
            });
            query.build().execute(&mut **tx).await.map(drop)
        })
        .during("mark reverts due")?;
    }
    Ok(())
}

/// The event that marks a violation due for a revert.
const DUE: &str = "revert_due";

/// A violation due for a revert, as stored.
#[derive(sqlx::FromRow)]
struct DueRow {
    violation_id: i64,
    crm_id: String,
    from_stage: String,
    to_stage: String,
    changed_at_ms: Millis,
    owner_id: Option<String>,
    missing_fields: Json<Vec<MissingField>>,
    skipped_stages: Json<Vec<String>>,
}

/// Open violations of the rule due for a revert and not planned yet, oldest move first. A
/// violation resolved, waived or superseded meanwhile needs no revert.
const DUE_ROWS: &str = "SELECT v.id AS violation_id, r.crm_id, v.from_stage, v.to_stage, v.changed_at_ms, \
     v.owner_id, v.missing_fields, v.skipped_stages \
     FROM violations v JOIN records r ON r.id = v.record_id \
     WHERE v.rule_name = $1 AND v.connection_id = $2 AND v.status = 'open' AND v.from_stage IS NOT NULL \
     AND EXISTS (SELECT 1 FROM violation_events e WHERE e.violation_id = v.id AND e.status = 'revert_due') \
     AND NOT EXISTS (SELECT 1 FROM violation_events e WHERE e.violation_id = v.id AND e.status = 'revert_planned') \
     ORDER BY v.changed_at_ms, v.id LIMIT $3";

/// How many reverts one evaluation planned, and how many stay due for later ones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Planned {
    /// Reverts planned (queued, or recorded only by a dry run).
    pub planned: u64,
    /// Reverts still due: past the rule's cap, for the next evaluations.
    pub still_due: u64,
}

/// Plans, in one transaction, the reverts due for the rule, oldest move first, at most
/// `max_reverts_per_run` of them: records each as a `revert_planned` event (the audit of
/// what it will write) and, unless the rule is a dry run, queues its writes.
pub(super) async fn plan_due(
    store: &Store,
    connection: &ConnectionSettings,
    connection_id: i64,
    rule: &RuleSettings,
    now: Millis,
) -> Result<Planned, StoreError> {
    let cap = i64::from(rule.max_reverts_per_run);
    let mut tx = store.begin().await?;
    // One row past the cap tells whether any stay due.
    let rows: Vec<DueRow> = dispatch!(tx.inner(), tx => sqlx::query_as(DUE_ROWS)
        .bind(&rule.name)
        .bind(connection_id)
        .bind(cap + 1)
        .fetch_all(&mut **tx)
        .await)
    .during("read reverts due")?;
    let mut planned = Planned::default();
    for row in &rows {
        if planned.planned >= cap as u64 {
            // Those planned above are no longer due.
            planned.still_due = count_due(&mut tx, &rule.name, connection_id).await?;
            break;
        }
        let revert = Revert {
            violation_id: row.violation_id,
            crm_id: &row.crm_id,
            from_stage: &row.from_stage,
            to_stage: &row.to_stage,
            changed_at_ms: row.changed_at_ms,
            owner_id: row.owner_id.as_deref(),
            missing: &row.missing_fields,
            skipped: &row.skipped_stages,
        };
        if plan_one(&mut tx, connection, connection_id, rule, &revert, now).await? {
            planned.planned += 1;
        }
    }
    tx.commit().await?;
    Ok(planned)
}

/// How many reverts of the rule are due and not planned.
async fn count_due(tx: &mut StoreTx, rule: &str, connection_id: i64) -> Result<u64, StoreError> {
    let sql = format!("SELECT COUNT(*) FROM ({DUE_ROWS}) due");
    let count: i64 = dispatch!(tx.inner(), tx => sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(rule)
        .bind(connection_id)
        .bind(i64::MAX)
        .fetch_one(&mut **tx)
        .await)
    .during("count reverts due")?;
    Ok(count.max(0) as u64)
}

/// Records one revert's plan on its violation and queues its writes (not for a dry run);
/// `false` when another replica's evaluation planned it first.
async fn plan_one(
    tx: &mut StoreTx,
    connection: &ConnectionSettings,
    connection_id: i64,
    rule: &RuleSettings,
    revert: &Revert<'_>,
    now: Millis,
) -> Result<bool, StoreError> {
    let from = revert.from_stage;
    let writes = revert_writes(connection.kind, revert, now);
    let field = stage_field(connection.kind);
    let note = json!({
        "dry_run": rule.dry_run,
        "before": { field: revert.to_stage },
        "after": { field: from },
        "writes": writes.iter().map(|(part, _)| *part).collect::<Vec<_>>(),
    });
    if !record_planned(tx, revert.violation_id, &note, now).await? {
        return Ok(false);
    }
    if !rule.dry_run {
        for (part, write) in &writes {
            queue(tx, connection_id, revert.violation_id, part, write, now).await?;
        }
    }
    Ok(true)
}

/// Records the `revert_planned` event; `false` when the violation already has one (a unique
/// index allows one plan per violation, whichever replica's evaluation gets there first).
async fn record_planned(
    tx: &mut StoreTx,
    violation_id: i64,
    note: &Value,
    now: Millis,
) -> Result<bool, StoreError> {
    dispatch!(tx.inner(), tx => sqlx::query(
        "INSERT INTO violation_events (violation_id, status, at_ms, actor, note) \
         VALUES ($1, 'revert_planned', $2, 'pipewarden', $3) ON CONFLICT DO NOTHING",
    )
    .bind(violation_id)
    .bind(now)
    .bind(note.to_string())
    .execute(&mut **tx)
    .await
    .map(|done| done.rows_affected() == 1))
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
    use crate::rules::gate::MissingField;

    #[test]
    fn the_task_names_the_missing_fields_and_fits_salesforce() {
        let missing = [MissingField {
            stage: "Qualification".into(),
            field: "Budget__c".into(),
        }];
        let skipped = ["Qualification".to_string()];
        let subject = task_subject("Prospecting", "Needs Analysis", &missing, &skipped);
        assert_eq!(
            subject,
            "Moved back to Prospecting by pipewarden: fill Budget__c before Needs Analysis"
        );
        let many: Vec<MissingField> = (0..40)
            .map(|i| MissingField {
                stage: "S".into(),
                field: format!("Field_{i}__c"),
            })
            .collect();
        assert_eq!(task_subject("A", "B", &many, &skipped).chars().count(), 255);
    }
}
