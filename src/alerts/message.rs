//! Slack messages (Block Kit) for violations, their resolutions and daily digests.
//!
//! Messages are built when the violation is decided and stored in the outbox as they will be
//! sent, so that what Slack shows is what was true at the move, whenever delivery succeeds.

use serde_json::{json, Value};

/// What a violation alert shows.
#[derive(Debug, Clone)]
pub struct ViolationAlert<'a> {
    /// Rule name.
    pub rule: &'a str,
    /// Connection name.
    pub connection: &'a str,
    /// Deal name at the move.
    pub deal_name: Option<&'a str>,
    /// The deal's CRM id.
    pub crm_id: &'a str,
    /// Owner's display name, or id when the name is unknown.
    pub owner: Option<&'a str>,
    /// Amount at the move, cents.
    pub amount_cents: Option<i64>,
    /// Stage left.
    pub from_stage: Option<&'a str>,
    /// Stage entered.
    pub to_stage: &'a str,
    /// Who or what moved it, and what kind of actor that is.
    pub moved_by: String,
    /// Required fields that were empty, as (stage, field).
    pub missing: Vec<(&'a str, &'a str)>,
    /// Stages jumped over.
    pub skipped: Vec<&'a str>,
    /// The record in the CRM, when a link can be made.
    pub link: Option<String>,
    /// The CRM's name, for the link text.
    pub crm_label: &'a str,
}

/// The Block Kit message for a violation.
pub fn violation_message(alert: &ViolationAlert<'_>) -> Value {
    let deal = alert.deal_name.unwrap_or(alert.crm_id);
    let from = alert.from_stage.unwrap_or("(created)");
    // The fallback is rendered as mrkdwn too: a deal named `<!channel>` must not ping anyone.
    let fallback = format!(
        "Stage gate breached: {} moved {} → {}",
        escape(deal),
        escape(from),
        escape(alert.to_stage)
    );
    let mut problems = Vec::new();
    if !alert.missing.is_empty() {
        let fields: Vec<String> = alert
            .missing
            .iter()
            .map(|(stage, field)| format!("`{}` ({})", escape(field), escape(stage)))
            .collect();
        problems.push(format!("*Missing:* {}", fields.join(", ")));
    }
    if !alert.skipped.is_empty() {
        let stages: Vec<String> = alert.skipped.iter().map(|s| escape(s)).collect();
        problems.push(format!("*Skipped:* {}", stages.join(", ")));
    }
    let mut context = format!(
        "Rule `{}` · connection `{}`",
        escape(alert.rule),
        escape(alert.connection)
    );
    if let Some(link) = &alert.link {
        context.push_str(&format!(" · <{link}|Open in {}>", alert.crm_label));
    }
    json!({
        "text": fallback,
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": truncate(&format!("Stage gate breached: {deal}"), 150)}},
            {"type": "section", "fields": [
                {"type": "mrkdwn", "text": format!("*Owner*\n{}", escape(alert.owner.unwrap_or("(none)")))},
                {"type": "mrkdwn", "text": format!("*Amount*\n{}", alert.amount_cents.map_or("(none)".to_string(), amount))},
                {"type": "mrkdwn", "text": format!("*Move*\n{} → {}", escape(from), escape(alert.to_stage))},
                {"type": "mrkdwn", "text": format!("*Moved by*\n{}", escape(&alert.moved_by))}
            ]},
            {"type": "section", "text": {"type": "mrkdwn", "text": section_text(&problems.join("\n"))}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": context}]}
        ]
    })
}

/// The thread reply when a violation stops being open.
pub fn resolution_message(status: &str, delay_ms: Option<i64>, note: Option<&str>) -> Value {
    let text = match status {
        "resolved_late" => format!(
            "Resolved late: the missing fields were filled {} after the move.",
            delay_ms.map_or("some time".to_string(), human_delay)
        ),
        "superseded" => "Superseded: the deal moved back.".to_string(),
        "waived" => format!(
            "Waived: {}",
            truncate(&escape(note.unwrap_or("(no reason given)")), 2_900)
        ),
        other => format!("Status changed to {other}."),
    };
    // The reason is escaped above; the rest is fixed text.
    json!({
        "text": text,
        "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]
    })
}

/// One message listing the fallback texts of several alerts (the daily digest). Those texts
/// are mrkdwn already escaped (see [`violation_message`]), so they are listed as they are.
pub fn digest_message(items: &[Value]) -> Value {
    const SHOWN: usize = 40;
    let lines: Vec<String> = items
        .iter()
        .take(SHOWN)
        .map(|item| format!("• {}", item["text"].as_str().unwrap_or("(alert)")))
        .collect();
    let mut body = lines.join("\n");
    if items.len() > SHOWN {
        body.push_str(&format!("\n… and {} more", items.len() - SHOWN));
    }
    let title = format!(
        "Stage gates: {} violation(s) since the last digest",
        items.len()
    );
    json!({
        "text": title,
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": title}},
            {"type": "section", "text": {"type": "mrkdwn", "text": section_text(&body)}}
        ]
    })
}

/// Escapes the three characters Slack's mrkdwn treats as control characters.
pub(crate) fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Cuts `text` to Slack's limit for a section's text (3,000 characters), marking the cut.
pub(crate) fn section_text(text: &str) -> String {
    truncate(text, 3000)
}

fn truncate(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(max_chars - 1).collect();
    cut.push('…');
    cut
}

/// Cents as `12,345.67`.
fn amount(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let cents = cents.unsigned_abs();
    let units = (cents / 100).to_string();
    let mut grouped = String::new();
    for (index, digit) in units.chars().enumerate() {
        if index > 0 && (units.len() - index).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    format!("{sign}{grouped}.{:02}", cents % 100)
}

/// A delay in days, hours or minutes, whichever reads best.
pub fn human_delay(ms: i64) -> String {
    let minutes = ms / 60_000;
    match minutes {
        m if m >= 2 * 1440 => format!("{} days", m / 1440),
        m if m >= 120 => format!("{} hours", m / 60),
        m => format!("{m} minutes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_group_thousands() {
        assert_eq!(amount(123_456_789), "1,234,567.89");
        assert_eq!(amount(5), "0.05");
        assert_eq!(amount(-100_000), "-1,000.00");
    }

    #[test]
    fn text_is_escaped_for_mrkdwn() {
        assert_eq!(escape("a<b>&c"), "a&lt;b&gt;&amp;c");
    }

    #[test]
    fn a_waiver_reason_is_escaped_once() {
        let reply = resolution_message("waived", None, Some("R&D <signed>"));
        let expected = "Waived: R&amp;D &lt;signed&gt;";
        assert_eq!(reply["text"], expected);
        assert_eq!(reply["blocks"][0]["text"]["text"], expected);
    }

    #[test]
    fn a_digest_lists_alert_texts_escaped_once() {
        let alert = violation_message(&ViolationAlert {
            rule: "gates",
            connection: "sf",
            deal_name: Some("R&D <pilot>"),
            crm_id: "006000000000001",
            owner: None,
            amount_cents: None,
            from_stage: Some("Prospecting"),
            to_stage: "Closed Won",
            moved_by: "api".into(),
            missing: Vec::new(),
            skipped: vec!["Proposal"],
            link: None,
            crm_label: "Salesforce",
        });
        let digest = digest_message(&[alert]);
        let body = digest["blocks"][1]["text"]["text"].as_str().unwrap();
        assert!(body.contains("R&amp;D &lt;pilot&gt;"), "{body}");
        assert!(!body.contains("&amp;amp;"), "{body}");
    }
}
