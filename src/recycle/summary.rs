//! The Slack summary of a run: counts per policy and the failures, through the alert outbox
//! (so it is delivered, retried and rate-limited like every other Slack message).

use serde_json::{json, Value};

use super::{ApplyReport, Candidate};
use crate::alerts::message::{escape, section_text};
use crate::config::settings::{PolicyKind, PolicySettings, StageAction};
use crate::config::Settings;
use crate::record::Millis;
use crate::record::DAY_MS;
use crate::store::{NewAlert, Store, StoreError};

/// Failures listed by name; the rest are counted.
const FAILURES_SHOWN: usize = 10;

/// Puts the run's summary in the alert outbox when `recycle.summary_channel` and `[slack]`
/// are configured and the run planned or settled anything.
pub(super) async fn enqueue(
    store: &Store,
    settings: &Settings,
    report: &ApplyReport,
    now: Millis,
) -> Result<(), StoreError> {
    let (Some(channel), Some(_)) = (&settings.recycle.summary_channel, &settings.slack) else {
        return Ok(());
    };
    let busy = report
        .policies
        .iter()
        .any(|p| p.planned > 0 || p.warned > 0)
        || report.earlier_writes_delivered > 0;
    if !busy {
        return Ok(());
    }
    let payload = message(report);
    let dedupe_key = format!("recycle-run/{}", report.run_id);
    let mut tx = store.begin().await?;
    tx.enqueue_alert(&NewAlert {
        dedupe_key: &dedupe_key,
        kind: "recycle_summary",
        channel: Some(channel),
        payload: &payload,
        violation_id: None,
        thread_of_id: None,
        not_before: now,
        created_at: now,
    })
    .await?;
    tx.commit().await
}

/// Puts one warning per record in the alert outbox (a record is warned once per age, so a
/// rerun sends nothing twice); returns how many were new.
pub(super) async fn enqueue_warnings(
    store: &Store,
    settings: &Settings,
    policy: &PolicySettings,
    warnings: &[(&Candidate, String)],
    now: Millis,
) -> Result<u64, StoreError> {
    if warnings.is_empty() {
        return Ok(0);
    }
    let channel = settings.recycle.summary_channel.clone().or_else(|| {
        settings
            .slack
            .as_ref()
            .and_then(|slack| slack.default_channel.clone())
    });
    // A stalled deal's age counts from the end of its stage's max dwell.
    let recycle_day = |candidate: &Candidate| {
        let at = candidate.since_ms
            + candidate.max_dwell_ms.unwrap_or(0)
            + i64::from(super::select::action_age_days(policy)) * DAY_MS;
        chrono::DateTime::from_timestamp_millis(at)
            .map(|t| t.format("%Y-%m-%d").to_string())
            .unwrap_or_default()
    };
    let mut new = 0;
    let mut tx = store.begin().await?;
    for (candidate, reason) in warnings {
        let day = recycle_day(candidate);
        let consequence = match (policy.kind, policy.actions.stage_action) {
            (PolicyKind::Stalled, Some(StageAction::MoveBack)) => {
                format!("It will be moved back a stage on {day} unless it moves on before then.")
            }
            (PolicyKind::Stalled, Some(StageAction::CloseLost)) => {
                format!("It will be closed lost on {day} unless it moves on before then.")
            }
            (PolicyKind::Stalled, None) => "It is past its stage's max dwell.".to_string(),
            _ => format!("It will be recycled on {day} unless it is worked before then."),
        };
        let text = format!(
            "*{}*: {} {} ({}), owner {}: {}. {consequence}",
            escape(&policy.name),
            candidate.object_kind,
            escape(candidate.name.as_deref().unwrap_or("(no name)")),
            escape(&candidate.crm_id),
            escape(candidate.owner_id.as_deref().unwrap_or("(none)")),
            escape(reason),
        );
        let payload = json!({
            "text": text,
            "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]
        });
        let dedupe_key = format!(
            "recycle-warning/{}/{}/{}",
            policy.name, candidate.record_id, candidate.since_ms
        );
        let queued = tx
            .enqueue_alert(&NewAlert {
                dedupe_key: &dedupe_key,
                kind: "recycle_warning",
                channel: channel.as_deref(),
                payload: &payload,
                violation_id: None,
                thread_of_id: None,
                not_before: now,
                created_at: now,
            })
            .await?;
        new += u64::from(queued.is_some());
    }
    tx.commit().await?;
    Ok(new)
}

/// The Block Kit message of a run.
pub(super) fn message(report: &ApplyReport) -> Value {
    let mut lines = vec![format!(
        "*Lead recycling run {}* (as of {})",
        report.run_id, report.as_of
    )];
    for p in &report.policies {
        let mode = if p.dry_run { " (dry run)" } else { "" };
        lines.push(format!(
            "• {}{mode}: {} records, {} actions planned, {} applied, {} failed, {} waiting, {} owners warned",
            escape(&p.policy),
            p.records,
            p.planned,
            p.applied,
            p.failed,
            p.waiting,
            p.warned
        ));
    }
    if report.returned > 0 {
        lines.push(format!(
            "{} recycled record(s) returned since the last run",
            report.returned
        ));
    }
    for f in report.failures.iter().take(FAILURES_SHOWN) {
        lines.push(format!(
            "✗ {} {} {}: {} {}",
            escape(&f.policy),
            escape(&f.crm_id),
            f.action,
            escape(f.error_code.as_deref().unwrap_or("?")),
            escape(f.error_message.as_deref().unwrap_or(""))
        ));
    }
    if report.failures.len() > FAILURES_SHOWN {
        lines.push(format!(
            "… and {} more failures",
            report.failures.len() - FAILURES_SHOWN
        ));
    }
    // Slack refuses a section over 3,000 characters for good: long CRM errors must not cost
    // the whole summary.
    let text = section_text(&lines.join("\n"));
    json!({
        "text": text,
        "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]
    })
}
