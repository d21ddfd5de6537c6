//! Salesforce rows → canonical records, stage changes and lifecycle milestones.

use serde_json::{Map, Value};

use crate::record::{ActorKind, LifecycleEvent, Millis, ObjectKind, RecordState};
use crate::store::{CrmOwner, RecordLink};

/// Fields that change on every save without meaning anything: left out of the tracked
/// content so that a new version means a real change.
pub(crate) const VOLATILE_FIELDS: &[&str] = &[
    "SystemModstamp",
    "LastModifiedDate",
    "LastModifiedById",
    "LastViewedDate",
    "LastReferencedDate",
];

/// The canonical kind of a Salesforce record object, if it is one pipewarden versions.
pub(crate) fn record_kind(object: &str) -> Option<ObjectKind> {
    Some(match object {
        "Opportunity" => ObjectKind::Deal,
        "Lead" => ObjectKind::Lead,
        "Contact" => ObjectKind::Contact,
        "Account" => ObjectKind::Account,
        "Campaign" => ObjectKind::Campaign,
        "CampaignMember" => ObjectKind::CampaignMember,
        _ => return None,
    })
}

/// What a converted lead became, as links: the opportunity and the contact its conversion
/// made (`ConvertedOpportunityId`, `ConvertedContactId`). Cohorts follow these to count a
/// deal's outcome for the lead it started as.
pub(crate) fn conversion_links(crm_id: &str, state: &RecordState) -> Vec<RecordLink> {
    [
        ("ConvertedOpportunityId", ObjectKind::Deal),
        ("ConvertedContactId", ObjectKind::Contact),
    ]
    .into_iter()
    .filter_map(|(field, to_kind)| {
        let to_crm_id = state.fields.get(field)?.as_str()?;
        Some(RecordLink {
            from_kind: ObjectKind::Lead,
            from_crm_id: crm_id.to_string(),
            relation: "converted_to".into(),
            to_kind,
            to_crm_id: to_crm_id.to_string(),
        })
    })
    .collect()
}

/// A row that could not be read, with the field at fault.
#[derive(Debug)]
pub(crate) struct BadRow {
    /// The row's id, or a stand-in when even that is unreadable.
    pub crm_id: String,
    /// What is wrong.
    pub reason: String,
}

/// A record row, read.
#[derive(Debug)]
pub(crate) struct RecordRow {
    pub crm_id: String,
    pub state: RecordState,
    pub deleted: bool,
    pub modified_at: Millis,
}

/// Reads one record row of `object`; `stamp_field` is its modification stamp.
pub(crate) fn record_row(
    object: &str,
    stamp_field: &str,
    row: &Map<String, Value>,
) -> Result<RecordRow, BadRow> {
    let crm_id = row_id(object, row)?;
    let bad = |field: &str, why: &str| BadRow {
        crm_id: crm_id.clone(),
        reason: format!("{object} {crm_id}: field {field} {why}"),
    };
    let modified_at = datetime(row, stamp_field)
        .map_err(|why| bad(stamp_field, &why))?
        .ok_or_else(|| bad(stamp_field, "is empty"))?;
    let amount_cents = number(row, "Amount")
        .map_err(|why| bad("Amount", &why))?
        .map(|amount| (amount * 100.0).round() as i64);
    let probability_bp = number(row, "Probability")
        .map_err(|why| bad("Probability", &why))?
        .map(|percent| (percent * 100.0).round() as i64);
    let crm_created_at = datetime(row, "CreatedDate").map_err(|why| bad("CreatedDate", &why))?;
    let last_activity_at =
        date_start(row, "LastActivityDate").map_err(|why| bad("LastActivityDate", &why))?;
    let fields: Map<String, Value> = row
        .iter()
        .filter(|(name, _)| *name != "attributes" && !VOLATILE_FIELDS.contains(&name.as_str()))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    let state = RecordState {
        name: text(row, "Name"),
        pipeline: (object == "Opportunity").then(|| "default".to_string()),
        stage: text(row, "StageName"),
        status: text(row, "Status"),
        lifecycle_stage: None,
        amount_cents,
        probability_bp,
        close_date: text(row, "CloseDate"),
        owner_id: text(row, "OwnerId"),
        source: text(row, "LeadSource"),
        campaign_id: text(row, "CampaignId"),
        is_closed: flag(row, "IsClosed"),
        is_won: flag(row, "IsWon"),
        crm_created_at,
        last_activity_at,
        fields,
    };
    Ok(RecordRow {
        crm_id,
        state,
        deleted: flag(row, "IsDeleted"),
        modified_at,
    })
}

/// One stage or status change the CRM recorded in its history.
#[derive(Debug)]
pub(crate) struct HistoryChange {
    pub history_id: String,
    pub parent_id: String,
    pub changed_at: Millis,
    pub changed_by: Option<String>,
    /// Field changed (`StageName` for OpportunityHistory rows).
    pub field: String,
    pub old_value: Option<Value>,
    pub new_value: Option<Value>,
    /// Deal amount at the change (OpportunityHistory only).
    pub amount_cents: Option<i64>,
}

/// Reads a history row: OpportunityHistory (a stage snapshot) or a field-history row
/// (`Field`, `OldValue`, `NewValue`).
pub(crate) fn history_row(
    object: &str,
    parent_field: &str,
    row: &Map<String, Value>,
) -> Result<HistoryChange, BadRow> {
    let history_id = row_id(object, row)?;
    let bad = |field: &str, why: &str| BadRow {
        crm_id: history_id.clone(),
        reason: format!("{object} {history_id}: field {field} {why}"),
    };
    let parent_id = text(row, parent_field).ok_or_else(|| bad(parent_field, "is empty"))?;
    let changed_at = datetime(row, "CreatedDate")
        .map_err(|why| bad("CreatedDate", &why))?
        .ok_or_else(|| bad("CreatedDate", "is empty"))?;
    let (field, old_value, new_value, amount_cents) = if object == "OpportunityHistory" {
        let stage = text(row, "StageName").ok_or_else(|| bad("StageName", "is empty"))?;
        let amount = number(row, "Amount").map_err(|why| bad("Amount", &why))?;
        (
            "StageName".to_string(),
            None,
            Some(Value::String(stage)),
            amount.map(|a| (a * 100.0).round() as i64),
        )
    } else {
        let field = text(row, "Field").ok_or_else(|| bad("Field", "is empty"))?;
        let value = |name: &str| row.get(name).filter(|v| !v.is_null()).cloned();
        (field, value("OldValue"), value("NewValue"), None)
    };
    Ok(HistoryChange {
        history_id,
        parent_id,
        changed_at,
        changed_by: text(row, "CreatedById"),
        field,
        old_value,
        new_value,
        amount_cents,
    })
}

/// A User row as an owner, and the kind of actor its changes are: the Automated Process user
/// (`UserType` `AutomatedProcess`) is the org's flows and workflow rules; the user the
/// session acts as is the integration; anyone else is a person. Department stands in for the
/// team, which Salesforce users do not have.
pub(crate) fn user_owner(
    row: &Map<String, Value>,
    session_user: Option<&str>,
) -> Option<(CrmOwner, ActorKind)> {
    let id = text(row, "Id")?;
    let (kind, actor) = match text(row, "UserType").as_deref() {
        Some("AutomatedProcess") => ("integration", ActorKind::Workflow),
        _ if session_user == Some(id.as_str()) => ("integration", ActorKind::Integration),
        _ => ("person", ActorKind::Person),
    };
    let teams: Vec<String> = text(row, "Department").into_iter().collect();
    let owner = CrmOwner {
        crm_id: id,
        kind: kind.into(),
        name: text(row, "Name"),
        email: text(row, "Email"),
        teams: serde_json::json!(teams),
        is_active: row.get("IsActive").and_then(Value::as_bool).unwrap_or(true),
    };
    Some((owner, actor))
}

/// The milestone a lead reaches by entering a status, for the standard statuses and the
/// common additions (marketing qualified, meeting booked).
pub(crate) fn lead_status_event(status: &str) -> Option<LifecycleEvent> {
    Some(match status {
        "Working - Contacted" => LifecycleEvent::FirstContacted,
        "Marketing Qualified" => LifecycleEvent::Mql,
        "Meeting Booked" => LifecycleEvent::MeetingBooked,
        "Closed - Converted" => LifecycleEvent::OpportunityCreated,
        "Closed - Not Converted" => LifecycleEvent::Disqualified,
        _ => return None,
    })
}

/// A row's `Id`; a row without one is named by its first characters.
fn row_id(object: &str, row: &Map<String, Value>) -> Result<String, BadRow> {
    text(row, "Id").ok_or_else(|| BadRow {
        crm_id: format!("(row without Id: {})", short(row)),
        reason: format!("{object} row has no Id"),
    })
}

fn text(row: &Map<String, Value>, field: &str) -> Option<String> {
    match row.get(field)? {
        Value::String(text) => Some(text.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

fn flag(row: &Map<String, Value>, field: &str) -> bool {
    matches!(row.get(field), Some(Value::Bool(true)))
}

fn number(row: &Map<String, Value>, field: &str) -> Result<Option<f64>, String> {
    match row.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(other) => Err(format!("is not a number: {other}")),
    }
}

/// A Salesforce datetime (`2026-01-05T09:00:00.000+0000`) as epoch milliseconds.
fn datetime(row: &Map<String, Value>, field: &str) -> Result<Option<Millis>, String> {
    let Some(text) = text(row, field) else {
        return Ok(None);
    };
    parse_datetime(&text)
        .map(Some)
        .ok_or_else(|| format!("is not a datetime: {text:?}"))
}

/// Parses the datetime forms Salesforce writes.
pub(crate) fn parse_datetime(text: &str) -> Option<Millis> {
    chrono::DateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f%z")
        .or_else(|_| chrono::DateTime::parse_from_rfc3339(text))
        .ok()
        .map(|at| at.timestamp_millis())
}

/// A date field as the start of that day, UTC.
fn date_start(row: &Map<String, Value>, field: &str) -> Result<Option<Millis>, String> {
    let Some(text) = text(row, field) else {
        return Ok(None);
    };
    chrono::NaiveDate::parse_from_str(&text, "%Y-%m-%d")
        .map(|day| {
            Some(
                day.and_time(chrono::NaiveTime::MIN)
                    .and_utc()
                    .timestamp_millis(),
            )
        })
        .map_err(|_| format!("is not a date: {text:?}"))
}

/// A row's start, for naming one that has no id.
fn short(row: &Map<String, Value>) -> String {
    let text = Value::Object(row.clone()).to_string();
    text.chars().take(120).collect()
}
