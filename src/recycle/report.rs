//! How plans and runs read: the reason per record, and tables for `--format table`.

use super::{ApplyReport, Plan};
use crate::config::settings::{PolicyKind, PolicySettings};
use crate::query::{Report, Table};
use crate::record::Millis;
use crate::record::DAY_MS;

use super::select::Candidate;

fn day(at: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(at)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

/// Why `policy` selected `candidate`, in words.
pub(super) fn reason(policy: &PolicySettings, candidate: &Candidate, as_of: Millis) -> String {
    let days = (as_of - candidate.since_ms).max(0) / DAY_MS;
    let since = day(candidate.since_ms);
    match policy.kind {
        PolicyKind::Stale => format!(
            "no activity since {since} ({days} days; policy waits {} days)",
            policy.after_days
        ),
        PolicyKind::Unworked => format!(
            "created {since} and never contacted ({days} days; speed-to-lead window {} days)",
            policy.after_days
        ),
        PolicyKind::Disqualified => {
            format!("disqualified {since} ({days} days ago) and fits the target persona")
        }
        PolicyKind::Lost => format!(
            "contact of deal {} lost {since} ({days} days ago) for \"{}\"",
            candidate.via_deal.as_deref().unwrap_or("?"),
            candidate.loss_reason.as_deref().unwrap_or("?")
        ),
        PolicyKind::Stalled => format!(
            "in stage {} since {since} ({days} days; max dwell {} days)",
            candidate.stage.as_deref().unwrap_or("?"),
            candidate.max_dwell_ms.unwrap_or(0) / DAY_MS
        ),
    }
}

fn values(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Object(map) => map
            .iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(text) => format!("{k}={text}"),
                serde_json::Value::Null => format!("{k}=(none)"),
                other => format!("{k}={other}"),
            })
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_string(),
    }
}

impl Report for Plan {
    fn tables(&self) -> Vec<Table> {
        let mut policies = Table::new(
            format!(
                "Recycle plan as of {} ({} write(s) still waiting in the outbox)",
                self.as_of, self.waiting_in_outbox
            ),
            &[
                "policy",
                "connection",
                "kind",
                "mode",
                "records",
                "actions",
                "cap",
                "note",
            ],
        );
        let mut actions = Table::new(
            "Planned actions",
            &[
                "policy", "record", "name", "action", "before", "after", "why",
            ],
        );
        for plan in &self.policies {
            let note = match (&plan.note, plan.held_back) {
                (Some(note), _) => note.clone(),
                (None, true) => "more records qualify than the cap lets through".into(),
                (None, false) => String::new(),
            };
            policies.push(vec![
                plan.policy.clone(),
                plan.connection.clone(),
                plan.kind.clone(),
                if plan.dry_run { "dry run" } else { "apply" }.into(),
                plan.records.len().to_string(),
                plan.action_count().to_string(),
                plan.cap.to_string(),
                note,
            ]);
            for record in &plan.records {
                for action in &record.actions {
                    actions.push(vec![
                        plan.policy.clone(),
                        record.candidate.crm_id.clone(),
                        record.candidate.name.clone().unwrap_or_default(),
                        action.action.to_string(),
                        values(&action.before),
                        values(&action.after),
                        record.reason.clone(),
                    ]);
                }
            }
        }
        vec![policies, actions]
    }
}

impl Report for ApplyReport {
    fn tables(&self) -> Vec<Table> {
        let mut policies = Table::new(
            format!(
                "Recycle run {} as of {} ({} returned since the last run, {} earlier write(s) delivered)",
                self.run_id, self.as_of, self.returned, self.earlier_writes_delivered
            ),
            &[
                "policy", "mode", "records", "planned", "applied", "failed", "waiting", "warned",
                "note",
            ],
        );
        for p in &self.policies {
            policies.push(vec![
                p.policy.clone(),
                if p.dry_run { "dry run" } else { "apply" }.into(),
                p.records.to_string(),
                p.planned.to_string(),
                p.applied.to_string(),
                p.failed.to_string(),
                p.waiting.to_string(),
                p.warned.to_string(),
                p.note.clone().unwrap_or_default(),
            ]);
        }
        let mut failures = Table::new(
            "Failed actions",
            &["policy", "record", "action", "error code", "message"],
        );
        for f in &self.failures {
            failures.push(vec![
                f.policy.clone(),
                f.crm_id.clone(),
                f.action.clone(),
                f.error_code.clone().unwrap_or_default(),
                f.error_message.clone().unwrap_or_default(),
            ]);
        }
        let mut tables = vec![policies, failures];
        if !self.undelivered.is_empty() {
            let mut undelivered = Table::new("Not delivered in this run", &["why"]);
            for line in &self.undelivered {
                undelivered.push(vec![line.clone()]);
            }
            tables.push(undelivered);
        }
        tables
    }
}
