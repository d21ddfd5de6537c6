//! Lead recycling: policies → selected records → planned actions → CRM writes → outcomes.
//!
//! Planning reads only the store ([`select`] runs one statement per policy over the current
//! rows; [`actions`] turns each selected record into CRM writes with before and after
//! values). [`apply`] records the plan in `recycle_actions` and, for policies that are not
//! dry runs, puts the writes in the `writeback_outbox` in the same transaction; the
//! [`crate::writeback`] module then delivers them in batches. A record with actions still
//! waiting, or recycled within the cooldown, is not selected again, so planning after an
//! apply produces nothing and a crash never plans a write twice. [`outcomes`] marks
//! recycled records that reached a qualifying milestone later as returned.

pub mod actions;
mod ledger;
pub mod outcomes;
mod report;
pub mod select;
mod summary;

use std::collections::HashSet;

use serde::Serialize;

pub use actions::PlannedAction;
pub use select::Candidate;

use crate::config::settings::{
    ConnectionSettings, CrmKind, PolicyKind, PolicySettings, StageAction,
};
use crate::config::Settings;
use crate::crm::{CrmError, RetryPolicy};
use crate::record::wall_clock;
use crate::record::Millis;
use crate::store::{Store, StoreError};
use crate::writeback;

/// Why planning or applying failed.
#[derive(Debug, thiserror::Error)]
pub enum RecycleError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// `--policy` names no configured policy.
    #[error("no recycle policy named `{0}` in the configuration (recycle.policies)")]
    UnknownPolicy(String),
    /// The connection's client could not be set up.
    #[error(transparent)]
    Crm(#[from] CrmError),
}

/// What to plan or apply.
#[derive(Debug, Clone)]
pub struct RecycleOptions {
    /// Only this policy (by name).
    pub policy: Option<String>,
    /// The instant ages are judged at, UTC epoch ms (normally now).
    pub as_of: Millis,
}

/// One record a policy selected and what it would write.
#[derive(Debug, Clone, Serialize)]
pub struct RecordPlan {
    /// The record.
    pub candidate: Candidate,
    /// Why it was selected.
    pub reason: String,
    /// The writes planned for it.
    pub actions: Vec<PlannedAction>,
}

/// What one policy selected.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyPlan {
    /// Policy name.
    pub policy: String,
    /// Its connection.
    pub connection: String,
    /// Its kind (`stale`, `lost`, …).
    pub kind: String,
    /// Plan only: nothing is written to the CRM.
    pub dry_run: bool,
    /// Most actions this policy may plan in this run (its cap, within the run's).
    pub cap: u32,
    /// The records, oldest first.
    pub records: Vec<RecordPlan>,
    /// More records qualified than the cap let through.
    pub held_back: bool,
    /// Why the policy planned nothing, when that is not for lack of records.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl PolicyPlan {
    /// Actions planned.
    pub fn action_count(&self) -> usize {
        self.records.iter().map(|r| r.actions.len()).sum()
    }
}

/// The answer of `recycle plan`.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// The instant ages were judged at (RFC 3339).
    pub as_of: String,
    /// Writes still waiting in the outbox from earlier runs (they count against the run cap).
    pub waiting_in_outbox: i64,
    /// Per policy.
    pub policies: Vec<PolicyPlan>,
}

/// The policies `options` selects, in configuration order.
fn chosen_policies<'s>(
    settings: &'s Settings,
    options: &RecycleOptions,
) -> Result<Vec<&'s PolicySettings>, RecycleError> {
    let policies: Vec<&PolicySettings> = settings
        .recycle
        .policies
        .iter()
        .filter(|p| options.policy.as_deref().is_none_or(|name| p.name == name))
        .collect();
    match (&options.policy, policies.is_empty()) {
        (Some(name), true) => Err(RecycleError::UnknownPolicy(name.clone())),
        _ => Ok(policies),
    }
}

fn connection_of<'s>(settings: &'s Settings, policy: &PolicySettings) -> &'s ConnectionSettings {
    settings
        .connections
        .iter()
        .find(|c| c.name == policy.connection)
        .expect("validation guarantees every policy names a configured connection")
}

fn iso(at: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(at)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// Plans one policy: selects records oldest first and takes whole records while their
/// actions fit `cap`.
async fn plan_policy(
    store: &Store,
    settings: &Settings,
    policy: &PolicySettings,
    cap: u32,
    as_of: Millis,
) -> Result<PolicyPlan, RecycleError> {
    let connection = connection_of(settings, policy);
    let mut plan = PolicyPlan {
        policy: policy.name.clone(),
        connection: policy.connection.clone(),
        kind: format!("{:?}", policy.kind).to_lowercase(),
        dry_run: policy.dry_run,
        cap,
        records: Vec::new(),
        held_back: false,
        note: None,
    };
    let Some(connection_id) = store.connection_id(&policy.connection).await? else {
        plan.note = Some(format!(
            "connection `{}` has not been synced yet",
            policy.connection
        ));
        return Ok(plan);
    };
    if cap == 0 {
        plan.held_back = true;
        plan.note = Some("the run's cap is used up".to_string());
        return Ok(plan);
    }
    // Every selected record plans at least one action, so `cap` records cover the cap; one
    // more tells whether any were held back.
    let candidates = select::candidates(
        store,
        connection.kind,
        connection_id,
        policy,
        &select::stage_dwells(&settings.rules, &policy.connection),
        as_of,
        select::AgeRange {
            min_days: select::action_age_days(policy),
            below_days: None,
        },
        Some(i64::from(cap) + 1),
    )
    .await?;
    let mut used = 0usize;
    let mut seen = HashSet::new();
    for candidate in candidates {
        if !seen.insert(candidate.record_id) {
            continue;
        }
        let planned = actions::plan_actions(connection.kind, policy, &candidate, as_of);
        if planned.is_empty() {
            continue;
        }
        let reason = report::reason(policy, &candidate, as_of);
        let mut records = vec![RecordPlan {
            candidate,
            reason,
            actions: planned,
        }];
        if closes_and_recycles_contacts(policy) {
            let deal = &records[0];
            let contacts =
                contact_plans(store, connection.kind, connection_id, policy, deal, as_of)
                    .await?
                    .into_iter()
                    .filter(|contact| seen.insert(contact.candidate.record_id));
            records.extend(contacts.collect::<Vec<_>>());
        }
        // A deal and its contacts are taken together or not at all.
        let count: usize = records.iter().map(|r| r.actions.len()).sum();
        if used + count > cap as usize {
            plan.held_back = true;
            break;
        }
        used += count;
        plan.records.extend(records);
    }
    Ok(plan)
}

/// A `stalled` policy that closes deals lost and has writes for their contacts.
fn closes_and_recycles_contacts(policy: &PolicySettings) -> bool {
    let actions = &policy.actions;
    policy.kind == PolicyKind::Stalled
        && actions.stage_action == Some(StageAction::CloseLost)
        && (actions.set_status.is_some()
            || actions.set_lifecycle_stage.is_some()
            || actions.set_owner.is_some()
            || actions.use_assignment_rules
            || actions.add_to_campaign.is_some()
            || actions.add_to_list.is_some()
            || actions.create_task.is_some())
}

/// The contacts of a deal being closed lost, each with the policy's contact writes.
async fn contact_plans(
    store: &Store,
    crm: CrmKind,
    connection_id: i64,
    policy: &PolicySettings,
    deal: &RecordPlan,
    as_of: Millis,
) -> Result<Vec<RecordPlan>, RecycleError> {
    let contacts = select::deal_contacts(
        store,
        crm,
        connection_id,
        policy,
        deal.candidate.record_id,
        as_of,
    )
    .await?;
    Ok(contacts
        .into_iter()
        .filter_map(|contact| {
            let actions = actions::person_actions(crm, policy, &contact, as_of);
            if actions.is_empty() {
                return None;
            }
            let reason = format!(
                "contact of deal {} ({}), closed lost by this policy",
                deal.candidate.crm_id, deal.reason
            );
            Some(RecordPlan {
                candidate: contact,
                reason,
                actions,
            })
        })
        .collect())
}

/// Plans every chosen policy as `recycle apply` would, without writing anything.
pub async fn plan(
    store: &Store,
    settings: &Settings,
    options: &RecycleOptions,
) -> Result<Plan, RecycleError> {
    let policies = chosen_policies(settings, options)?;
    let waiting = ledger::waiting_writes(store).await?;
    let mut run_left = i64::from(settings.recycle.max_actions_per_run) - waiting;
    let mut plans = Vec::new();
    for policy in policies {
        let cap = policy_cap(policy, run_left);
        let plan = plan_policy(store, settings, policy, cap, options.as_of).await?;
        if !policy.dry_run {
            run_left -= plan.action_count() as i64;
        }
        plans.push(plan);
    }
    Ok(Plan {
        as_of: iso(options.as_of),
        waiting_in_outbox: waiting,
        policies: plans,
    })
}

/// A policy's cap in this run: its own, within what the run has left (dry runs write
/// nothing, so only their own cap bounds them).
fn policy_cap(policy: &PolicySettings, run_left: i64) -> u32 {
    if policy.dry_run {
        policy.max_actions_per_run
    } else {
        let left = u32::try_from(run_left.max(0)).unwrap_or(u32::MAX);
        policy.max_actions_per_run.min(left)
    }
}

/// A failed action, for the report and the Slack summary.
#[derive(Debug, Clone, Serialize)]
pub struct FailedAction {
    /// Policy.
    pub policy: String,
    /// The record's CRM id.
    pub crm_id: String,
    /// The action.
    pub action: String,
    /// The CRM's error code.
    pub error_code: Option<String>,
    /// The CRM's message.
    pub error_message: Option<String>,
}

/// How one policy fared in a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PolicyOutcome {
    /// Policy.
    pub policy: String,
    /// Dry run: planned and recorded only.
    pub dry_run: bool,
    /// Records planned.
    pub records: u64,
    /// Actions planned.
    pub planned: u64,
    /// Actions the CRM holds.
    pub applied: u64,
    /// Actions the CRM refused.
    pub failed: u64,
    /// Actions left in the outbox for a later run.
    pub waiting: u64,
    /// Owners warned (alert-first policies) about records to be recycled after the grace
    /// period.
    pub warned: u64,
    /// Why nothing was planned, when that is not for lack of records.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The answer of `recycle apply`.
#[derive(Debug, Clone, Serialize)]
pub struct ApplyReport {
    /// The run's id.
    pub run_id: i64,
    /// The instant ages were judged at.
    pub as_of: String,
    /// Recycled records found to have returned before this run planned.
    pub returned: u64,
    /// Writes from earlier runs delivered in this one.
    pub earlier_writes_delivered: u64,
    /// Per policy.
    pub policies: Vec<PolicyOutcome>,
    /// Actions of this run the CRM refused.
    pub failures: Vec<FailedAction>,
    /// Connections whose writes could not be delivered in this run, and why.
    pub undelivered: Vec<String>,
}

/// How `recycle apply` reaches the CRMs.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApplyOptions {
    /// Retry policy of the CRM clients.
    pub retry: RetryPolicy,
}

/// Evaluates outcomes, plans every chosen policy, records the plan (dry runs included),
/// queues the writes of the others and delivers them, connection by connection.
pub async fn apply(
    store: &Store,
    settings: &Settings,
    options: &RecycleOptions,
    apply_options: &ApplyOptions,
) -> Result<ApplyReport, RecycleError> {
    let policies = chosen_policies(settings, options)?;
    let returned = outcomes::evaluate(store, wall_clock()).await?;
    let run_id = ledger::start_run(store, options.as_of, wall_clock()).await?;
    let waiting = ledger::waiting_writes(store).await?;
    let mut run_left = i64::from(settings.recycle.max_actions_per_run) - waiting;
    let mut report = ApplyReport {
        run_id,
        as_of: iso(options.as_of),
        returned,
        earlier_writes_delivered: 0,
        policies: Vec::new(),
        failures: Vec::new(),
        undelivered: Vec::new(),
    };
    let mut connections: Vec<&str> = Vec::new();
    for policy in &policies {
        if !connections.contains(&policy.connection.as_str()) {
            connections.push(&policy.connection);
        }
    }
    for name in connections {
        let Some(_lease) = store.try_lease(&format!("recycle:{name}")).await? else {
            report.undelivered.push(format!(
                "{name}: another replica is applying recycle actions for this connection"
            ));
            continue;
        };
        for policy in policies.iter().filter(|p| p.connection == name) {
            let cap = policy_cap(policy, run_left);
            let plan = plan_policy(store, settings, policy, cap, options.as_of).await?;
            if !policy.dry_run {
                run_left -= plan.action_count() as i64;
            }
            ledger::record_plan(store, run_id, &plan, options.as_of, wall_clock()).await?;
            let warned = warn_owners(store, settings, policy, options.as_of).await?;
            report.policies.push(PolicyOutcome {
                policy: plan.policy.clone(),
                dry_run: plan.dry_run,
                records: plan.records.len() as u64,
                planned: plan.action_count() as u64,
                warned,
                note: plan.note.clone(),
                ..PolicyOutcome::default()
            });
        }
        let connection = settings
            .connections
            .iter()
            .find(|c| c.name == name)
            .expect("policies name configured connections");
        cancel_writes_of_stopped_policies(store, settings, name).await?;
        if let Err(err) = deliver_connection(store, connection, apply_options).await {
            report.undelivered.push(format!("{name}: {err}"));
        }
    }
    ledger::tally_run(store, run_id, &mut report).await?;
    summary::enqueue(store, settings, &report, wall_clock()).await?;
    ledger::finish_run(store, run_id, &report, wall_clock()).await?;
    Ok(report)
}

/// Cancels the queued writes of policies of `connection` that are dry runs now or gone;
/// every delivery of the connection's outbox calls this first.
pub(crate) async fn cancel_writes_of_stopped_policies(
    store: &Store,
    settings: &Settings,
    connection: &str,
) -> Result<(), StoreError> {
    let Some(connection_id) = store.connection_id(connection).await? else {
        return Ok(());
    };
    let live: Vec<&str> = settings
        .recycle
        .policies
        .iter()
        .filter(|p| p.connection == connection && !p.dry_run)
        .map(|p| p.name.as_str())
        .collect();
    let cancelled = ledger::cancel_writes_not_of(store, connection_id, &live).await?;
    if cancelled > 0 {
        tracing::warn!(connection, cancelled, "cancelled queued recycle writes of policies that are dry runs now or no longer configured");
    }
    Ok(())
}

/// Most owner warnings one policy sends per run.
const WARNINGS_PER_RUN: i64 = 500;

/// Alert-first policies warn before they act: each record past the policy's age but still
/// within its grace period gets one Slack message (once per record and age), naming its
/// owner and the day it will be recycled unless it is worked first. A stalled policy
/// without a `stage_action` only warns: every deal past its stage's max dwell, once per
/// stay in that stage.
async fn warn_owners(
    store: &Store,
    settings: &Settings,
    policy: &PolicySettings,
    as_of: Millis,
) -> Result<u64, RecycleError> {
    let alert_only = policy.kind == PolicyKind::Stalled && policy.actions.stage_action.is_none();
    let warns_first = policy.alert_first && policy.grace_days > 0;
    if !(alert_only || warns_first) || settings.slack.is_none() {
        return Ok(0);
    }
    let connection = connection_of(settings, policy);
    let Some(connection_id) = store.connection_id(&policy.connection).await? else {
        return Ok(0);
    };
    let candidates = select::candidates(
        store,
        connection.kind,
        connection_id,
        policy,
        &select::stage_dwells(&settings.rules, &policy.connection),
        as_of,
        select::AgeRange {
            min_days: select::alert_age_days(policy),
            below_days: (!alert_only).then(|| select::action_age_days(policy)),
        },
        Some(WARNINGS_PER_RUN),
    )
    .await?;
    let mut warnings = Vec::new();
    for candidate in &candidates {
        if !alert_only
            && actions::plan_actions(connection.kind, policy, candidate, as_of).is_empty()
        {
            continue;
        }
        let reason = report::reason(policy, candidate, as_of);
        warnings.push((candidate, reason));
    }
    Ok(summary::enqueue_warnings(store, settings, policy, &warnings, wall_clock()).await?)
}

/// Delivers whatever the outbox holds for one connection.
async fn deliver_connection(
    store: &Store,
    connection: &ConnectionSettings,
    options: &ApplyOptions,
) -> Result<writeback::DeliveryReport, RecycleError> {
    let Some(connection_id) = store.connection_id(&connection.name).await? else {
        return Ok(writeback::DeliveryReport::default());
    };
    if ledger::waiting_writes_of(store, connection_id).await? == 0 {
        return Ok(writeback::DeliveryReport::default());
    }
    writeback::deliver_pending(store, connection, connection_id, options.retry).await
}
