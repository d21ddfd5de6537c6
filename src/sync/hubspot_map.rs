//! HubSpot objects → canonical records, property history entries and lifecycle milestones.
//!
//! HubSpot sends every property value as a string (or null): amounts as decimal text,
//! instants as ISO-8601 (epoch milliseconds are accepted too), booleans as `"true"`. An empty
//! string means the property was cleared.

use serde_json::{Map, Value};

use crate::record::{ActorKind, LifecycleEvent, Millis, ObjectKind, RecordState};

/// Properties HubSpot rewrites on every save without meaning anything by it: left out of the
/// tracked content so that a new version means a real change.
const VOLATILE_PROPERTIES: &[&str] = &[
    "hs_lastmodifieddate",
    "lastmodifieddate",
    "hs_updated_by_user_id",
];

/// The canonical kind of a HubSpot object type pipewarden syncs.
pub(crate) fn object_kind(object: &str) -> Option<ObjectKind> {
    Some(match object {
        "deals" => ObjectKind::Deal,
        "contacts" => ObjectKind::Contact,
        "companies" => ObjectKind::Account,
        _ => return None,
    })
}

/// The property holding an object's modification time: contacts keep it in
/// `lastmodifieddate`, deals and companies in `hs_lastmodifieddate`.
pub(crate) fn modified_property(object: &str) -> &'static str {
    if object == "contacts" {
        "lastmodifieddate"
    } else {
        "hs_lastmodifieddate"
    }
}

/// A record HubSpot sent that cannot be read, naming the property at fault.
#[derive(Debug, thiserror::Error)]
#[error("{object} {crm_id}: {field} {problem}")]
pub(crate) struct BadRecord {
    /// Object type (`deals`, …).
    pub object: String,
    /// The record's id, or a stand-in when even that is unreadable.
    pub crm_id: String,
    /// The property or key at fault.
    pub field: String,
    /// What is wrong with it.
    pub problem: String,
}

/// A record, read.
#[derive(Debug)]
pub(crate) struct RecordRow {
    pub crm_id: String,
    pub state: RecordState,
    pub deleted: bool,
    pub modified_at: Millis,
}

/// One entry of a property's history.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HistoryEntry {
    pub value: String,
    pub at: Millis,
    /// HubSpot's `sourceType` (`CRM_UI`, `API`, `AUTOMATION`, …).
    pub source_type: String,
    /// The user (`updatedByUserId`) or, failing that, the source (`sourceId`) behind it.
    pub changed_by: Option<String>,
}

/// Reads the parts of a record HubSpot sends around its properties.
pub(crate) struct RawRecord<'r> {
    object: &'r str,
    raw: &'r Map<String, Value>,
    pub crm_id: String,
    properties: &'r Map<String, Value>,
}

impl<'r> RawRecord<'r> {
    /// Checks the envelope: an `id` and a `properties` object.
    pub fn new(object: &'r str, raw: &'r Map<String, Value>) -> Result<RawRecord<'r>, BadRecord> {
        let crm_id = match raw.get("id") {
            Some(Value::String(id)) if !id.is_empty() => id.clone(),
            _ => {
                return Err(BadRecord {
                    object: object.to_string(),
                    crm_id: format!("(record without id: {})", short(raw)),
                    field: "id".into(),
                    problem: "is missing".into(),
                })
            }
        };
        let Some(Value::Object(properties)) = raw.get("properties") else {
            return Err(BadRecord {
                object: object.to_string(),
                crm_id,
                field: "properties".into(),
                problem: "is missing or not an object".into(),
            });
        };
        Ok(RawRecord {
            object,
            raw,
            crm_id,
            properties,
        })
    }

    fn bad(&self, field: &str, problem: impl Into<String>) -> BadRecord {
        BadRecord {
            object: self.object.to_string(),
            crm_id: self.crm_id.clone(),
            field: field.to_string(),
            problem: problem.into(),
        }
    }

    /// A property's text; `None` when null, absent or cleared (`""`).
    pub fn text(&self, name: &str) -> Result<Option<String>, BadRecord> {
        match self.properties.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) if text.is_empty() => Ok(None),
            Some(Value::String(text)) => Ok(Some(text.clone())),
            Some(other) => Err(self.bad(name, format!("is not a string: {other}"))),
        }
    }

    fn instant(&self, name: &str) -> Result<Option<Millis>, BadRecord> {
        let Some(text) = self.text(name)? else {
            return Ok(None);
        };
        parse_instant(&text)
            .map(Some)
            .ok_or_else(|| self.bad(name, format!("is not a date or time: {text:?}")))
    }

    fn decimal(&self, name: &str, scale: f64) -> Result<Option<i64>, BadRecord> {
        let Some(text) = self.text(name)? else {
            return Ok(None);
        };
        match text.trim().parse::<f64>() {
            Ok(number) if number.is_finite() => Ok(Some((number * scale).round() as i64)),
            _ => Err(self.bad(name, format!("is not a number: {text:?}"))),
        }
    }

    fn flag(&self, name: &str) -> Result<bool, BadRecord> {
        Ok(self.text(name)?.is_some_and(|text| text == "true"))
    }

    /// A top-level instant of the envelope (`archivedAt`, `updatedAt`).
    fn envelope_instant(&self, key: &str) -> Result<Option<Millis>, BadRecord> {
        match self.raw.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) => parse_instant(text)
                .map(Some)
                .ok_or_else(|| self.bad(key, format!("is not a time: {text:?}"))),
            Some(other) => Err(self.bad(key, format!("is not a time: {other}"))),
        }
    }

    /// The modification time: the object's modified property, else `updatedAt`. An archived
    /// record's is its archive time, since archiving does not touch the modified property.
    fn modified_at(&self) -> Result<(Millis, bool), BadRecord> {
        let field = modified_property(self.object);
        let modified = match self.instant(field)? {
            Some(at) => at,
            None => self
                .envelope_instant("updatedAt")?
                .ok_or_else(|| self.bad(field, "is empty and there is no updatedAt"))?,
        };
        let archived = matches!(self.raw.get("archived"), Some(Value::Bool(true)));
        let archived_at = self.envelope_instant("archivedAt")?;
        match (archived, archived_at) {
            (true, Some(at)) => Ok((modified.max(at), true)),
            (true, None) => Ok((modified, true)),
            (false, _) => Ok((modified, false)),
        }
    }

    /// The full history of a property, oldest first; `None` when HubSpot sent none for it.
    pub fn history(&self, name: &str) -> Result<Option<Vec<HistoryEntry>>, BadRecord> {
        let Some(Value::Object(histories)) = self.raw.get("propertiesWithHistory") else {
            return Ok(None);
        };
        let Some(entries) = histories.get(name) else {
            return Ok(None);
        };
        let field = format!("propertiesWithHistory.{name}");
        let Value::Array(entries) = entries else {
            return Err(self.bad(&field, "is not a list"));
        };
        let mut read = entries
            .iter()
            .map(|entry| self.history_entry(&field, entry))
            .collect::<Result<Vec<_>, _>>()?;
        // HubSpot lists history newest first; equal timestamps keep HubSpot's order reversed.
        read.reverse();
        read.sort_by_key(|entry| entry.at);
        Ok(Some(read))
    }

    fn history_entry(&self, field: &str, entry: &Value) -> Result<HistoryEntry, BadRecord> {
        let text = |key: &str| entry.get(key).and_then(Value::as_str).map(str::to_string);
        let value = text("value").ok_or_else(|| self.bad(field, "has an entry without value"))?;
        let timestamp =
            text("timestamp").ok_or_else(|| self.bad(field, "has an entry without timestamp"))?;
        let at = parse_instant(&timestamp)
            .ok_or_else(|| self.bad(field, format!("has an entry at {timestamp:?}, not a time")))?;
        let changed_by = match entry.get("updatedByUserId") {
            Some(Value::Number(user)) => Some(user.to_string()),
            Some(Value::String(user)) if !user.is_empty() => Some(user.clone()),
            _ => text("sourceId"),
        };
        Ok(HistoryEntry {
            value,
            at,
            source_type: text("sourceType").unwrap_or_else(|| "UNKNOWN".into()),
            changed_by,
        })
    }

    /// Ids of the associated records of one type (list and read answers carry them).
    pub fn associated_ids(&self, to: &str) -> Vec<String> {
        self.raw
            .get("associations")
            .and_then(|associations| associations.get(to))
            .and_then(|to| to.get("results"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|item| match item.get("id") {
                Some(Value::String(id)) => Some(id.clone()),
                Some(Value::Number(id)) => Some(id.to_string()),
                _ => None,
            })
            .collect()
    }

    /// The modification time the search index holds for this record.
    pub fn indexed_modified_at(&self) -> Result<Millis, BadRecord> {
        let field = modified_property(self.object);
        self.instant(field)?
            .ok_or_else(|| self.bad(field, "is empty in the search index"))
    }
}

/// Reads one record of `object` (a batch-read or list result).
pub(crate) fn record_row(object: &str, raw: &Map<String, Value>) -> Result<RecordRow, BadRecord> {
    let record = RawRecord::new(object, raw)?;
    let (modified_at, deleted) = record.modified_at()?;
    let name = match object {
        "deals" => record.text("dealname")?,
        "contacts" => person_name(record.text("firstname")?, record.text("lastname")?),
        _ => record.text("name")?,
    };
    let close_date = record
        .instant("closedate")?
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map(|at| at.format("%Y-%m-%d").to_string());
    let fields: Map<String, Value> = record
        .properties
        .iter()
        .filter(|(name, _)| !VOLATILE_PROPERTIES.contains(&name.as_str()))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    let state = RecordState {
        name,
        pipeline: record.text("pipeline")?,
        stage: record.text("dealstage")?,
        status: record.text("hs_lead_status")?,
        lifecycle_stage: record.text("lifecyclestage")?,
        amount_cents: record.decimal("amount", 100.0)?,
        probability_bp: record.decimal("hs_deal_stage_probability", 10_000.0)?,
        close_date,
        owner_id: record.text("hubspot_owner_id")?,
        source: record.text("hs_analytics_source")?,
        campaign_id: None,
        is_closed: record.flag("hs_is_closed")?,
        is_won: record.flag("hs_is_closed_won")?,
        crm_created_at: record.instant("createdate")?,
        last_activity_at: record.instant("notes_last_contacted")?,
        fields,
    };
    Ok(RecordRow {
        crm_id: record.crm_id,
        state,
        deleted,
        modified_at,
    })
}

fn person_name(first: Option<String>, last: Option<String>) -> Option<String> {
    let joined = [first, last]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ");
    (!joined.is_empty()).then_some(joined)
}

/// What kind of actor a history entry's `sourceType` names.
pub(crate) fn actor_kind(source_type: &str) -> ActorKind {
    match source_type {
        "CRM_UI" | "MOBILE_IOS" | "MOBILE_ANDROID" | "SALES" => ActorKind::Person,
        "API" => ActorKind::Api,
        "INTEGRATION" => ActorKind::Integration,
        "IMPORT" | "BATCH_UPDATE" => ActorKind::Import,
        "AUTOMATION" | "WORKFLOWS" => ActorKind::Workflow,
        "CALCULATED" | "MIGRATION" => ActorKind::System,
        _ => ActorKind::Unknown,
    }
}

/// The milestone a contact reaches by entering a default lifecycle stage.
pub(crate) fn lifecycle_event(stage: &str) -> Option<LifecycleEvent> {
    Some(match stage {
        "marketingqualifiedlead" => LifecycleEvent::Mql,
        "salesqualifiedlead" => LifecycleEvent::Sql,
        "opportunity" => LifecycleEvent::OpportunityCreated,
        "customer" => LifecycleEvent::Won,
        _ => return None,
    })
}

/// The milestone a contact reaches by entering a default lead status; a first touch is only
/// the first of the working statuses, which the caller decides from the history.
pub(crate) fn lead_status_event(status: &str, touched_before: bool) -> Option<LifecycleEvent> {
    match status {
        "ATTEMPTED_TO_CONTACT" | "IN_PROGRESS" | "CONNECTED" if !touched_before => {
            Some(LifecycleEvent::FirstContacted)
        }
        "UNQUALIFIED" => Some(LifecycleEvent::Disqualified),
        _ => None,
    }
}

/// Whether a lead status means someone has worked the contact.
pub(crate) fn is_touched_status(status: &str) -> bool {
    matches!(status, "ATTEMPTED_TO_CONTACT" | "IN_PROGRESS" | "CONNECTED")
}

/// An instant as HubSpot writes one: ISO-8601, epoch milliseconds, or a date (midnight UTC).
pub(crate) fn parse_instant(text: &str) -> Option<Millis> {
    if let Ok(ms) = text.parse::<i64>() {
        return Some(ms);
    }
    if let Ok(at) = chrono::DateTime::parse_from_rfc3339(text) {
        return Some(at.timestamp_millis());
    }
    chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .map(|day| {
            day.and_time(chrono::NaiveTime::MIN)
                .and_utc()
                .timestamp_millis()
        })
}

/// A record's start, for naming one that has no id.
fn short(raw: &Map<String, Value>) -> String {
    Value::Object(raw.clone())
        .to_string()
        .chars()
        .take(120)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn raw(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn a_deal_reads_strings_into_cents_basis_points_and_millis() {
        let deal = raw(json!({
            "id": "512",
            "properties": {
                "dealname": "Acme", "amount": "5000.25", "dealstage": "qualifiedtobuy",
                "pipeline": "default", "hs_deal_stage_probability": "0.4",
                "closedate": "2024-03-01T00:00:00Z", "createdate": "2024-01-02T03:04:05.123Z",
                "hs_lastmodifieddate": "2024-02-01T10:00:00Z", "hs_is_closed": "false"
            },
            "archived": false
        }));
        let row = record_row("deals", &deal).unwrap();
        assert_eq!(row.crm_id, "512");
        assert_eq!(row.state.amount_cents, Some(500_025));
        assert_eq!(row.state.probability_bp, Some(4_000));
        assert_eq!(row.state.close_date.as_deref(), Some("2024-03-01"));
        assert_eq!(row.state.crm_created_at, Some(1_704_164_645_123));
        assert_eq!(row.modified_at, 1_706_781_600_000);
        assert!(!row.deleted);
        assert!(!row.state.fields.contains_key("hs_lastmodifieddate"));
        assert!(row.state.fields.contains_key("dealstage"));
    }

    #[test]
    fn an_archived_record_is_deleted_at_its_archive_time() {
        let deal = raw(json!({
            "id": "7",
            "properties": {"hs_lastmodifieddate": "2024-02-01T10:00:00Z"},
            "archived": true, "archivedAt": "2024-03-01T00:00:00Z"
        }));
        let row = record_row("deals", &deal).unwrap();
        assert!(row.deleted);
        assert_eq!(row.modified_at, 1_709_251_200_000);
    }

    #[test]
    fn a_bad_value_names_the_record_and_the_property() {
        let deal = raw(json!({
            "id": "9",
            "properties": {"amount": "lots", "hs_lastmodifieddate": "2024-02-01T10:00:00Z"}
        }));
        let err = record_row("deals", &deal).unwrap_err();
        assert_eq!((err.crm_id.as_str(), err.field.as_str()), ("9", "amount"));
        assert_eq!(err.to_string(), "deals 9: amount is not a number: \"lots\"");
    }

    #[test]
    fn history_comes_back_oldest_first_with_who_changed_it() {
        let deal = raw(json!({
            "id": "1",
            "properties": {},
            "propertiesWithHistory": {"dealstage": [
                {"value": "b", "timestamp": "2024-01-20T14:30:00.000Z", "sourceType": "CRM_UI",
                 "sourceId": "userId:12345", "updatedByUserId": 12345},
                {"value": "a", "timestamp": "2024-01-02T03:04:05.123Z", "sourceType": "API", "sourceId": "app"}
            ]}
        }));
        let record = RawRecord::new("deals", &deal).unwrap();
        let history = record.history("dealstage").unwrap().unwrap();
        let values: Vec<(&str, Option<&str>)> = history
            .iter()
            .map(|e| (e.value.as_str(), e.changed_by.as_deref()))
            .collect();
        assert_eq!(values, [("a", Some("app")), ("b", Some("12345"))]);
        assert_eq!(record.history("lifecyclestage").unwrap(), None);
    }
}
