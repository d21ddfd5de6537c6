//! Client writes: creates, updates and deletes layered over the generated org.
//!
//! The generated funnel is immutable, so what clients change is kept here as dated writes per
//! record and applied when a record is read. A record's generated life stops at its first
//! client write (from then on it changes only through clients and scripted changes), which
//! keeps every read as of any instant consistent: generated state up to the freeze, then the
//! writes made up to that instant. Writes produce the history rows a real org would keep.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use super::ids::{looks_like_id, parse_sf_id, sf_id};
use super::records::{set_stage_fields, stage_ordinal, OrgView, LEAD_STATUSES, STAGES};
use super::schema::{FieldDef, FieldType, ObjectDef, SfRecord, SfValue, EPOCH_DAYS_FROM_CE};
use crate::emulator::funnel::Funnel;
use crate::record::Millis;

/// Numbers of records clients create start here, far above generated ones.
pub(crate) const CREATED_BASE: u64 = 1 << 36;

/// One client write to one record.
#[derive(Debug, Clone)]
pub(crate) struct Write {
    /// When, simulated epoch ms.
    pub at: Millis,
    /// The user who made it.
    pub by: String,
    /// Field positions and their new values.
    pub values: Vec<(usize, SfValue)>,
    /// A delete: soft (recycle bin) unless the object is hard-deleted.
    pub delete: bool,
    /// Its place among all writes of the org, given when recorded: a query cursor reads only
    /// the writes older than itself, even those made in the same simulated millisecond.
    pub seq: u64,
}

/// What clients did to one record.
#[derive(Debug, Clone, Default)]
pub(crate) struct Entry {
    /// For records clients created: the record as created.
    pub created: Option<SfRecord>,
    /// Updates and deletes, in time order.
    pub writes: Vec<Write>,
    /// For records clients created: the sequence number of the creation.
    pub created_seq: u64,
}

impl Entry {
    /// When generated activity stops for this record: its first write among those up to
    /// sequence number `upto_seq`.
    pub fn freeze_at(&self, upto_seq: u64) -> Option<Millis> {
        self.writes
            .iter()
            .find(|write| write.seq <= upto_seq)
            .map(|write| write.at)
    }
}

/// Every client write of the org.
#[derive(Debug, Default, Clone)]
pub(crate) struct Overlay {
    entries: HashMap<(&'static str, u64), Entry>,
    created: HashMap<&'static str, Vec<u64>>,
    /// (campaign id, lead or contact id) pairs that are members through client writes.
    memberships: HashSet<(String, String)>,
    /// Sequence number of the latest write or creation.
    seq: u64,
}

impl Overlay {
    /// The writes to one record, if any.
    pub fn entry(&self, object: &str, number: u64) -> Option<&Entry> {
        self.entries.get(&(object_key(object)?, number))
    }

    /// Sequence number of the latest write: what a cursor opened now may see.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Numbers of the records of `object` clients created, in creation order.
    pub fn created(&self, object: &str) -> &[u64] {
        self.created.get(object).map_or(&[], Vec::as_slice)
    }

    fn record_write(&mut self, object: &'static ObjectDef, number: u64, mut write: Write) {
        self.seq += 1;
        write.seq = self.seq;
        self.entries
            .entry((object.name, number))
            .or_default()
            .writes
            .push(write);
    }

    fn record_create(&mut self, object: &'static ObjectDef, record: SfRecord) -> u64 {
        let numbers = self.created.entry(object.name).or_default();
        let number = CREATED_BASE + numbers.len() as u64;
        numbers.push(number);
        let mut record = record;
        record.set("Id", SfValue::Text(sf_id(object.key_prefix, number)));
        self.seq += 1;
        self.entries.insert(
            (object.name, number),
            Entry {
                created: Some(record),
                writes: Vec::new(),
                created_seq: self.seq,
            },
        );
        number
    }
}

fn object_key(name: &str) -> Option<&'static str> {
    super::schema::object(name).map(|object| object.name)
}

/// Applies one write to a record: values, audit fields and what Salesforce derives from them.
pub(crate) fn apply(record: &mut SfRecord, write: &Write) {
    for (index, value) in &write.values {
        record.values[*index] = value.clone();
    }
    record.set("LastModifiedDate", SfValue::DateTime(write.at));
    record.set("LastModifiedById", SfValue::Text(write.by.clone()));
    record.set("SystemModstamp", SfValue::DateTime(write.at));
    if write.delete {
        record.set("IsDeleted", SfValue::Bool(true));
    }
    derive(record, write);
}

/// Fields Salesforce computes from others: stage defaults, expected revenue, full names.
fn derive(record: &mut SfRecord, write: &Write) {
    let wrote = |name: &str| {
        record
            .object
            .field_index(name)
            .is_some_and(|index| write.values.iter().any(|(written, _)| *written == index))
    };
    match record.object.name {
        "Opportunity" => {
            let given = match record.get("Probability") {
                SfValue::Number(probability) if wrote("Probability") => Some(*probability),
                _ => None,
            };
            let ordinal = match record.get("StageName") {
                SfValue::Text(name) => stage_ordinal(name),
                _ => None,
            };
            if let Some(ordinal) = ordinal {
                set_stage_fields(record, ordinal, given);
            }
        }
        "Lead" | "Contact" => {
            let name = [record.get("FirstName"), record.get("LastName")]
                .iter()
                .filter_map(|value| match value {
                    SfValue::Text(text) => Some(text.as_str()),
                    _ => None,
                })
                .collect::<Vec<_>>()
                .join(" ");
            record.set("Name", SfValue::Text(name));
        }
        "Task" => {
            let closed =
                matches!(record.get("Status"), SfValue::Text(status) if status == "Completed");
            record.set("IsClosed", SfValue::Bool(closed));
        }
        _ => {}
    }
}

/// Fields whose changes field-history tracking records, per object.
pub(crate) fn tracked_fields(object: &str) -> &'static [&'static str] {
    match object {
        "Opportunity" => &[
            "StageName",
            "Amount",
            "CloseDate",
            "OwnerId",
            "NextStep",
            "Budget__c",
            "Authority__c",
            "Need__c",
            "Timeline__c",
            "Competitor__c",
            "Decision_Process__c",
            "Loss_Reason__c",
        ],
        "Lead" => &[
            "Status",
            "OwnerId",
            "Disqualification_Reason__c",
            "Title",
            "Company",
        ],
        _ => &[],
    }
}

/// A Salesforce error for one record: HTTP status, code, message and the fields at fault.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RecordError {
    /// HTTP status on single-record calls.
    pub status: u16,
    /// `errorCode` / `statusCode`.
    pub code: &'static str,
    /// Message.
    pub message: String,
    /// Fields at fault (may be empty).
    pub fields: Vec<String>,
}

impl RecordError {
    /// A 400 error.
    pub fn bad(code: &'static str, message: impl Into<String>, fields: &[&str]) -> RecordError {
        RecordError {
            status: 400,
            code,
            message: message.into(),
            fields: fields.iter().map(|field| field.to_string()).collect(),
        }
    }

    /// `NOT_FOUND`, as Salesforce answers for an id that names nothing.
    pub fn not_found() -> RecordError {
        RecordError {
            status: 404,
            code: "NOT_FOUND",
            message: "The requested resource does not exist".into(),
            fields: Vec::new(),
        }
    }

    /// `ENTITY_IS_DELETED` for a record in the recycle bin.
    pub fn deleted() -> RecordError {
        RecordError {
            status: 404,
            code: "ENTITY_IS_DELETED",
            message: "entity is deleted".into(),
            fields: Vec::new(),
        }
    }
}

/// A validation rule of the org: `field` must be filled when `when_field` equals `equals`.
#[derive(Debug, Clone)]
pub struct ValidationRule {
    /// Object it applies to (`Opportunity`).
    pub object: String,
    /// The field that must not be empty.
    pub field: String,
    /// The field whose value triggers the rule.
    pub when_field: String,
    /// The value that triggers it.
    pub equals: String,
    /// The message users see (and the API returns).
    pub message: String,
}

impl ValidationRule {
    /// The rule most sales orgs have: a closed-lost deal needs a loss reason.
    pub fn loss_reason_required() -> ValidationRule {
        ValidationRule {
            object: "Opportunity".into(),
            field: "Loss_Reason__c".into(),
            when_field: "StageName".into(),
            equals: "Closed Lost".into(),
            message: "Please give a loss reason before closing this opportunity as lost.".into(),
        }
    }

    fn violated_by(&self, record: &SfRecord) -> bool {
        record.object.name.eq_ignore_ascii_case(&self.object)
            && matches!(record.get(&self.when_field), SfValue::Text(value) if value.eq_ignore_ascii_case(&self.equals))
            && record.get(&self.field).is_null()
    }
}

/// Fields each object needs on create.
fn required_on_create(object: &str) -> &'static [&'static str] {
    match object {
        "Lead" => &["LastName", "Company"],
        "Contact" => &["LastName"],
        "Account" | "Campaign" => &["Name"],
        "Opportunity" => &["Name", "StageName", "CloseDate"],
        "CampaignMember" => &["CampaignId"],
        _ => &[],
    }
}

/// Reads a JSON body's fields into positions and values, refusing unknown and read-only fields
/// and values of the wrong type as Salesforce does.
pub(crate) fn parse_values(
    object: &'static ObjectDef,
    body: &serde_json::Map<String, Value>,
) -> Result<Vec<(usize, SfValue)>, RecordError> {
    let mut values = Vec::new();
    let mut read_only = Vec::new();
    for (name, raw) in body {
        if name == "attributes" || name.eq_ignore_ascii_case("id") {
            continue;
        }
        let Some(index) = object.field_index(name) else {
            return Err(RecordError::bad(
                "INVALID_FIELD",
                format!("No such column '{name}' on sobject of type {}", object.name),
                &[],
            ));
        };
        let field = &object.fields[index];
        if !field.writable {
            read_only.push(field.name);
            continue;
        }
        values.push((index, parse_value(field, raw)?));
    }
    if !read_only.is_empty() {
        return Err(RecordError::bad(
            "INVALID_FIELD_FOR_INSERT_UPDATE",
            format!(
                "Unable to create/update fields: {}. Please check the security settings of this field and verify that it is read/write for your profile or permission set.",
                read_only.join(", ")
            ),
            &read_only,
        ));
    }
    Ok(values)
}

fn parse_value(field: &FieldDef, raw: &Value) -> Result<SfValue, RecordError> {
    let mismatch = || {
        RecordError::bad(
            "JSON_PARSER_ERROR",
            format!(
                "Cannot deserialize instance of {} from {} value {raw} or request may be missing a required field",
                field.kind.describe_name(),
                json_token(raw)
            ),
            &[],
        )
    };
    let value = match (field.kind, raw) {
        (_, Value::Null) => SfValue::Null,
        (FieldType::Boolean, Value::Bool(flag)) => SfValue::Bool(*flag),
        (FieldType::Currency | FieldType::Percent | FieldType::Int, Value::Number(number)) => {
            SfValue::Number(number.as_f64().ok_or_else(mismatch)?)
        }
        (FieldType::Date, Value::String(text)) => {
            SfValue::Date(parse_day(text).ok_or_else(mismatch)?)
        }
        (FieldType::DateTime, Value::String(text)) => {
            let at = chrono::DateTime::parse_from_rfc3339(text)
                .or_else(|_| chrono::DateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f%z"))
                .map_err(|_| mismatch())?;
            SfValue::DateTime(at.timestamp_millis())
        }
        (
            FieldType::String
            | FieldType::Picklist
            | FieldType::Email
            | FieldType::TextArea
            | FieldType::Reference
            | FieldType::Id,
            Value::String(text),
        ) => SfValue::Text(text.clone()),
        _ => return Err(mismatch()),
    };
    Ok(value)
}

fn json_token(raw: &Value) -> &'static str {
    match raw {
        Value::String(_) => "VALUE_STRING",
        Value::Number(_) => "VALUE_NUMBER_INT",
        Value::Bool(_) => "VALUE_TRUE",
        Value::Array(_) => "START_ARRAY",
        Value::Object(_) => "START_OBJECT",
        Value::Null => "VALUE_NULL",
    }
}

fn parse_day(text: &str) -> Option<i32> {
    let date = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()?;
    use chrono::Datelike;
    Some(date.num_days_from_ce() - EPOCH_DAYS_FROM_CE)
}

/// Checks a record as it would be after a write: picklists, lookups, required fields and the
/// org's validation rules.
pub(crate) fn validate(
    view: &OrgView<'_>,
    after: &SfRecord,
    written: &[(usize, SfValue)],
    creating: bool,
    rules: &[ValidationRule],
) -> Result<(), RecordError> {
    let object = after.object;
    if creating {
        let missing: Vec<&str> = required_on_create(object.name)
            .iter()
            .copied()
            .filter(|name| after.get(name).is_null())
            .collect();
        if !missing.is_empty() {
            return Err(RecordError::bad(
                "REQUIRED_FIELD_MISSING",
                format!("Required fields are missing: [{}]", missing.join(", ")),
                &missing,
            ));
        }
    }
    for (index, value) in written {
        check_restricted_picklist(&object.fields[*index], value)?;
        check_reference(view, &object.fields[*index], value)?;
    }
    match rules.iter().find(|rule| rule.violated_by(after)) {
        Some(rule) => Err(RecordError::bad(
            "FIELD_CUSTOM_VALIDATION_EXCEPTION",
            rule.message.clone(),
            &[rule.field.as_str()],
        )),
        None => Ok(()),
    }
}

fn check_restricted_picklist(field: &FieldDef, value: &SfValue) -> Result<(), RecordError> {
    let allowed: Vec<&str> = match field.name {
        "StageName" => STAGES.iter().map(|stage| stage.name).collect(),
        "Status" if field.kind == FieldType::Picklist => {
            LEAD_STATUSES.iter().map(|(label, _)| *label).collect()
        }
        _ => return Ok(()),
    };
    match value {
        SfValue::Text(text) if allowed.contains(&text.as_str()) => Ok(()),
        SfValue::Text(text) if field.name == "Status" && allowed_campaign_or_task_status(text) => {
            Ok(())
        }
        other => Err(RecordError::bad(
            "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
            format!(
                "{}: bad value for restricted picklist field: {}",
                field.name,
                match other {
                    SfValue::Text(text) => text.as_str(),
                    _ => "",
                }
            ),
            &[field.name],
        )),
    }
}

/// Campaign members and tasks have a `Status` of their own, outside the lead statuses.
fn allowed_campaign_or_task_status(text: &str) -> bool {
    matches!(
        text,
        "Sent" | "Responded" | "Nurture" | "Not Started" | "In Progress" | "Completed"
    )
}

fn check_reference(
    view: &OrgView<'_>,
    field: &FieldDef,
    value: &SfValue,
) -> Result<(), RecordError> {
    if field.kind != FieldType::Reference {
        return Ok(());
    }
    let SfValue::Text(id) = value else {
        return Ok(());
    };
    if !looks_like_id(id) || parse_sf_id(id).is_none() {
        return Err(RecordError::bad(
            "MALFORMED_ID",
            format!("{}: id value of incorrect type: {id}", field.name),
            &[field.name],
        ));
    }
    match view.by_id(id, field.reference_to) {
        Some(_) => Ok(()),
        None => Err(RecordError::bad(
            "INVALID_CROSS_REFERENCE_KEY",
            "invalid cross reference id",
            &[field.name],
        )),
    }
}

/// Numbers the record behind `id` in `object`, or says why it cannot be written.
pub(crate) fn locate(
    view: &OrgView<'_>,
    object: &'static ObjectDef,
    id: &str,
) -> Result<(u64, SfRecord), RecordError> {
    if !looks_like_id(id) {
        return Err(RecordError::bad(
            "MALFORMED_ID",
            format!("Record ID: id value of incorrect type: {id}"),
            &["Id"],
        ));
    }
    let number = match parse_sf_id(id) {
        Some((prefix, number)) if prefix == object.key_prefix => number,
        _ => return Err(RecordError::not_found()),
    };
    let record = view
        .record(object, number)
        .ok_or_else(RecordError::not_found)?;
    if matches!(record.get("IsDeleted"), SfValue::Bool(true)) {
        return Err(RecordError::deleted());
    }
    Ok((number, record))
}

/// The writes of one request, made on a working copy of the overlay that the caller keeps
/// (or, for `allOrNone` with a failure, throws away).
pub(crate) struct Batch<'f> {
    funnel: &'f Funnel,
    /// The overlay with this request's writes so far.
    pub overlay: Overlay,
    at: Millis,
    by: String,
}

impl<'f> Batch<'f> {
    /// A batch writing at `at` as user `by`, starting from `overlay`.
    pub fn new(funnel: &'f Funnel, overlay: Overlay, at: Millis, by: String) -> Batch<'f> {
        Batch {
            funnel,
            overlay,
            at,
            by,
        }
    }

    /// Makes the following writes as user `by` (scripted changes by reps and automations).
    pub fn act_as(&mut self, by: String) {
        self.by = by;
    }

    /// The org as this batch sees it: earlier writes of the same request included.
    pub fn view(&self) -> OrgView<'_> {
        OrgView::over(self.funnel, self.at, &self.overlay)
    }

    /// Updates an existing record.
    pub fn update(
        &mut self,
        object: &'static ObjectDef,
        id: &str,
        body: &serde_json::Map<String, Value>,
        rules: &[ValidationRule],
    ) -> Result<String, RecordError> {
        if !object.writable {
            return Err(not_writable(object));
        }
        let view = self.view();
        let (number, before) = locate(&view, object, id)?;
        if object.name == "Lead" && matches!(before.get("IsConverted"), SfValue::Bool(true)) {
            return Err(RecordError::bad(
                "CANNOT_UPDATE_CONVERTED_LEAD",
                "cannot reference converted lead",
                &[],
            ));
        }
        let values = parse_values(object, body)?;
        let write = Write {
            at: self.at,
            by: self.by.clone(),
            values,
            delete: false,
            seq: 0,
        };
        let mut after = before.clone();
        apply(&mut after, &write);
        validate(&view, &after, &write.values, false, rules)?;
        let id = before.id().to_string();
        self.overlay.record_write(object, number, write);
        Ok(id)
    }

    /// Converts a lead into an existing opportunity, as the conversion wizard would: the lead
    /// gets the converted status and the converted fields, which clients cannot write.
    pub fn convert_lead(&mut self, id: &str, opportunity: &str) -> Result<String, RecordError> {
        let lead = &super::schema::LEAD;
        let view = self.view();
        let (number, before) = locate(&view, lead, id)?;
        if matches!(before.get("IsConverted"), SfValue::Bool(true)) {
            return Err(RecordError::bad(
                "CANNOT_UPDATE_CONVERTED_LEAD",
                "cannot reference converted lead",
                &[],
            ));
        }
        let (_, deal) = locate(&view, &super::schema::OPPORTUNITY, opportunity)?;
        let converted = LEAD_STATUSES
            .iter()
            .find(|(_, is_converted)| *is_converted)
            .map_or("Closed - Converted", |(label, _)| label);
        let field = |name: &str| {
            lead.field_index(name)
                .expect("Lead defines the converted fields")
        };
        let write = Write {
            at: self.at,
            by: self.by.clone(),
            values: vec![
                (field("Status"), SfValue::Text(converted.into())),
                (field("IsConverted"), SfValue::Bool(true)),
                (
                    field("ConvertedDate"),
                    SfValue::Date(super::schema::day_of(self.at)),
                ),
                (
                    field("ConvertedOpportunityId"),
                    SfValue::Text(deal.id().to_string()),
                ),
            ],
            delete: false,
            seq: 0,
        };
        let id = before.id().to_string();
        self.overlay.record_write(lead, number, write);
        Ok(id)
    }

    /// Creates a record and returns its id.
    pub fn create(
        &mut self,
        object: &'static ObjectDef,
        body: &serde_json::Map<String, Value>,
        rules: &[ValidationRule],
    ) -> Result<String, RecordError> {
        if !object.writable {
            return Err(not_writable(object));
        }
        let values = parse_values(object, body)?;
        let mut record = SfRecord::empty(object);
        record.set("IsDeleted", SfValue::Bool(false));
        record.set("CreatedDate", SfValue::DateTime(self.at));
        record.set("CreatedById", SfValue::Text(self.by.clone()));
        if object.name == "Opportunity" || object.name == "Lead" {
            record.set("OwnerId", SfValue::Text(self.by.clone()));
        }
        if object.name == "Lead" {
            record.set("Status", SfValue::Text(LEAD_STATUSES[0].0.into()));
            record.set("IsConverted", SfValue::Bool(false));
        }
        let write = Write {
            at: self.at,
            by: self.by.clone(),
            values,
            delete: false,
            seq: 0,
        };
        apply(&mut record, &write);
        validate(&self.view(), &record, &write.values, true, rules)?;
        if object.name == "CampaignMember" {
            self.add_membership(&mut record)?;
        }
        let number = self.overlay.record_create(object, record);
        Ok(sf_id(object.key_prefix, number))
    }

    /// Campaign membership: unique per campaign and person, with the derived member fields.
    fn add_membership(&mut self, record: &mut SfRecord) -> Result<(), RecordError> {
        let person = [record.get("LeadId"), record.get("ContactId")]
            .into_iter()
            .find_map(|value| match value {
                SfValue::Text(id) => Some(id.clone()),
                _ => None,
            })
            .ok_or_else(|| {
                RecordError::bad(
                    "REQUIRED_FIELD_MISSING",
                    "Required fields are missing: [LeadId, ContactId]",
                    &["LeadId", "ContactId"],
                )
            })?;
        let SfValue::Text(campaign) = record.get("CampaignId").clone() else {
            return Err(RecordError::bad(
                "REQUIRED_FIELD_MISSING",
                "Required fields are missing: [CampaignId]",
                &["CampaignId"],
            ));
        };
        let key = (campaign[..15].to_string(), person[..15].to_string());
        let view = self.view();
        if self.overlay.memberships.contains(&key) || view.is_generated_member(&campaign, &person) {
            return Err(RecordError::bad(
                "DUPLICATE_VALUE",
                "Already a campaign member.",
                &[],
            ));
        }
        let owner = view
            .by_id(&person, &["Lead", "Contact"])
            .map_or(SfValue::Null, |person| person.get("OwnerId").clone());
        self.overlay.memberships.insert(key);
        record.set("LeadOrContactId", SfValue::Text(person));
        record.set("LeadOrContactOwnerId", owner);
        let responded =
            matches!(record.get("Status"), SfValue::Text(status) if status == "Responded");
        record.set("HasResponded", SfValue::Bool(responded));
        if record.get("Status").is_null() {
            record.set("Status", SfValue::Text("Sent".into()));
        }
        Ok(())
    }

    /// Deletes a record: into the recycle bin, or for good where Salesforce hard-deletes.
    pub fn delete(&mut self, object: &'static ObjectDef, id: &str) -> Result<String, RecordError> {
        if !object.writable {
            return Err(not_writable(object));
        }
        let (number, before) = locate(&self.view(), object, id)?;
        if object.name == "CampaignMember" {
            let person = before.get("LeadOrContactId").clone();
            let campaign = before.get("CampaignId").clone();
            if let (SfValue::Text(campaign), SfValue::Text(person)) = (campaign, person) {
                self.overlay
                    .memberships
                    .remove(&(campaign[..15].to_string(), person[..15].to_string()));
            }
        }
        let write = Write {
            at: self.at,
            by: self.by.clone(),
            values: Vec::new(),
            delete: true,
            seq: 0,
        };
        self.overlay.record_write(object, number, write);
        Ok(before.id().to_string())
    }
}

impl Batch<'_> {
    /// Merges `losers` into `master`, as the merge wizard does: each loser goes to the
    /// recycle bin carrying `MasterRecordId`.
    pub fn merge(
        &mut self,
        object: &'static ObjectDef,
        master: &str,
        losers: &[String],
    ) -> Result<String, RecordError> {
        let master_record = locate(&self.view(), object, master)?.1;
        let master_field = object.field_index("MasterRecordId").ok_or_else(|| {
            RecordError::bad(
                "INVALID_TYPE_FOR_OPERATION",
                format!("entity type {} does not support merge", object.name),
                &[],
            )
        })?;
        for loser in losers {
            let (number, _) = locate(&self.view(), object, loser)?;
            let write = Write {
                at: self.at,
                by: self.by.clone(),
                values: vec![(master_field, SfValue::Text(master_record.id().to_string()))],
                delete: true,
                seq: 0,
            };
            self.overlay.record_write(object, number, write);
        }
        Ok(master_record.id().to_string())
    }
}

fn not_writable(object: &ObjectDef) -> RecordError {
    RecordError::bad(
        "INVALID_TYPE_FOR_OPERATION",
        format!(
            "entity type {} does not support this operation",
            object.name
        ),
        &[],
    )
}
