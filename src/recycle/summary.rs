//! The Slack summary of a run: counts per policy and the failures, through the alert outbox
//! (so it is delivered, retried and rate-limited like every other Slack message).

use serde_json::{json, Value};

use super::ApplyReport;
use crate::config::Settings;
use crate::record::Millis;
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
    let busy = report.policies.iter().any(|p| p.planned > 0) || report.earlier_writes_delivered > 0;
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

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
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
            "• {}{mode}: {} records, {} actions planned, {} applied, {} failed, {} waiting",
            escape(&p.policy),
            p.records,
            p.planned,
            p.applied,
            p.failed,
            p.waiting
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
    let text = lines.join("\n");
    json!({
        "text": text,
        "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]
    })
}
