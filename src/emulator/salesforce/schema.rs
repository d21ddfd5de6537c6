//! The emulated org's objects and fields: what `describe` reports and SOQL checks names against.
//!
//! Field lists follow the standard API names (facts section 4) plus the custom qualification
//! fields a RevOps team typically adds (`Budget__c`, `Loss_Reason__c`, ...). A [`SfRecord`]
//! holds one value per field of its object, in the order listed here.

use chrono::{DateTime, NaiveDate};
use serde::{Serialize, Serializer};
use serde_json::Value;

use crate::emulator::timefmt::{four_digit_year, push_date, Civil};
use crate::record::Millis;

/// A field value as the emulated org holds it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum SfValue {
    /// An empty field; always sent as JSON `null`, never omitted.
    Null,
    /// A checkbox.
    Bool(bool),
    /// Currency, percent, double and int fields.
    Number(f64),
    /// Ids, strings, picklists, emails and text areas.
    Text(String),
    /// A date field, days since 1970-01-01.
    Date(i32),
    /// A datetime field, UTC epoch milliseconds.
    DateTime(Millis),
}

impl SfValue {
    /// Text value, or `Null` for `None`.
    pub fn text(value: Option<&str>) -> SfValue {
        value.map_or(SfValue::Null, |text| SfValue::Text(text.to_string()))
    }

    /// Whether the field is empty.
    pub fn is_null(&self) -> bool {
        matches!(self, SfValue::Null)
    }

    /// The value as Salesforce writes it in JSON for a field of type `kind`.
    pub fn to_json(&self, kind: FieldType) -> Value {
        match self {
            SfValue::Null => Value::Null,
            SfValue::Bool(flag) => Value::Bool(*flag),
            SfValue::Number(number) if kind == FieldType::Int => Value::from(number.round() as i64),
            SfValue::Number(number) => Value::from(*number),
            SfValue::Text(text) => Value::String(text.clone()),
            SfValue::Date(days) => Value::String(format_date(*days)),
            SfValue::DateTime(ms) => Value::String(format_datetime(*ms)),
        }
    }
}

/// A value written straight into a serializer as [`SfValue::to_json`] would give it, without
/// building a `Value` first: pages serialize tens of thousands of them.
pub(crate) struct JsonValue<'a> {
    /// The value.
    pub value: &'a SfValue,
    /// The type of its field, which decides how numbers are written.
    pub kind: FieldType,
}

impl Serialize for JsonValue<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.value {
            SfValue::Null => serializer.serialize_unit(),
            SfValue::Bool(flag) => serializer.serialize_bool(*flag),
            SfValue::Number(number) if self.kind == FieldType::Int => {
                serializer.serialize_i64(number.round() as i64)
            }
            SfValue::Number(number) => serializer.serialize_f64(*number),
            SfValue::Text(text) => serializer.serialize_str(text),
            SfValue::Date(days) => serializer.serialize_str(&format_date(*days)),
            SfValue::DateTime(ms) => serializer.serialize_str(&format_datetime(*ms)),
        }
    }
}

/// `2024-01-31`.
pub(crate) fn format_date(days: i32) -> String {
    let Some(date) = NaiveDate::from_num_days_from_ce_opt(days + EPOCH_DAYS_FROM_CE) else {
        return String::new();
    };
    match four_digit_year(date) {
        Some(date) => {
            let mut text = String::with_capacity(10);
            push_date(&mut text, date);
            text
        }
        None => date.format("%Y-%m-%d").to_string(),
    }
}

/// `2024-01-31T09:15:00.000+0000`: always UTC, milliseconds, no colon in the offset.
pub(crate) fn format_datetime(ms: Millis) -> String {
    let mut text = String::with_capacity(28);
    push_datetime(&mut text, ms, "+0000");
    text
}

/// Appends `2024-01-31T09:15:00.000` and `zone` (`+0000` in JSON, `Z` in Bulk CSV); nothing
/// for an instant chrono cannot represent.
pub(crate) fn push_datetime(out: &mut String, ms: Millis, zone: &str) {
    let Some(at) = DateTime::from_timestamp_millis(ms) else {
        return;
    };
    match Civil::of(&at) {
        Some(civil) => {
            civil.push_date_time(out);
            civil.push_millis(out);
        }
        None => out.push_str(&at.format("%Y-%m-%dT%H:%M:%S%.3f").to_string()),
    }
    out.push_str(zone);
}

/// Days from 0001-01-01 (chrono's day 1) to 1970-01-01.
pub(crate) const EPOCH_DAYS_FROM_CE: i32 = 719_163;

/// Day number (since 1970-01-01) of an instant.
pub(crate) fn day_of(ms: Millis) -> i32 {
    ms.div_euclid(86_400_000) as i32
}

/// Salesforce field types, as `describe` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FieldType {
    Id,
    Reference,
    String,
    Picklist,
    Email,
    TextArea,
    Currency,
    Percent,
    Int,
    Boolean,
    Date,
    DateTime,
    AnyType,
}

impl FieldType {
    /// The `type` value in a describe result.
    pub fn describe_name(self) -> &'static str {
        match self {
            FieldType::Id => "id",
            FieldType::Reference => "reference",
            FieldType::String => "string",
            FieldType::Picklist => "picklist",
            FieldType::Email => "email",
            FieldType::TextArea => "textarea",
            FieldType::Currency => "currency",
            FieldType::Percent => "percent",
            FieldType::Int => "int",
            FieldType::Boolean => "boolean",
            FieldType::Date => "date",
            FieldType::DateTime => "datetime",
            FieldType::AnyType => "anyType",
        }
    }
}

/// One field of an object.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FieldDef {
    /// API name (`StageName`).
    pub name: &'static str,
    /// Its type.
    pub kind: FieldType,
    /// Whether the API lets clients set it (false for system, formula and roll-up fields).
    pub writable: bool,
    /// Whether it may appear in a WHERE clause (anyType values cannot).
    pub filterable: bool,
    /// A formula: its value can change without the record's `SystemModstamp` moving.
    pub calculated: bool,
    /// For references: the objects it may point at (two or more: polymorphic).
    pub reference_to: &'static [&'static str],
    /// For references: the name used in SOQL paths (`Owner` for `OwnerId`).
    pub relationship: Option<&'static str>,
}

/// One object type (`Opportunity`).
#[derive(Debug)]
pub(crate) struct ObjectDef {
    /// API name.
    pub name: &'static str,
    /// First three characters of its record ids.
    pub key_prefix: &'static str,
    /// Whether `query` may name it (false for the polymorphic `Name` pseudo-object).
    pub queryable: bool,
    /// Whether the REST API may create and update its records.
    pub writable: bool,
    /// Its fields, in record order.
    pub fields: &'static [FieldDef],
}

impl ObjectDef {
    /// Position of a field, matching names case-insensitively as SOQL does.
    pub fn field_index(&self, name: &str) -> Option<usize> {
        // Record builders name fields exactly, thousands of times a page: try that first.
        self.fields
            .iter()
            .position(|field| field.name == name)
            .or_else(|| {
                self.fields
                    .iter()
                    .position(|field| field.name.eq_ignore_ascii_case(name))
            })
    }

    /// A field by name, case-insensitively.
    pub fn field(&self, name: &str) -> Option<&'static FieldDef> {
        self.field_index(name).map(|index| &self.fields[index])
    }

    /// The reference field whose relationship name is `relationship` (`Owner` → `OwnerId`).
    pub fn relationship_field(&self, relationship: &str) -> Option<usize> {
        self.fields.iter().position(|field| {
            field
                .relationship
                .is_some_and(|name| name.eq_ignore_ascii_case(relationship))
        })
    }
}

/// One record of the org: its object and one value per field of it.
#[derive(Debug, Clone)]
pub(crate) struct SfRecord {
    /// What it is.
    pub object: &'static ObjectDef,
    /// Values in the order of `object.fields`.
    pub values: Vec<SfValue>,
}

impl SfRecord {
    /// An empty record of `object`.
    pub fn empty(object: &'static ObjectDef) -> SfRecord {
        SfRecord {
            object,
            values: vec![SfValue::Null; object.fields.len()],
        }
    }

    /// A field's value by name (`Null` when the object has no such field).
    pub fn get(&self, name: &str) -> &SfValue {
        const NULL: &SfValue = &SfValue::Null;
        self.object
            .field_index(name)
            .map_or(NULL, |index| &self.values[index])
    }

    /// Sets a field by name; names the object does not have are ignored by design, so
    /// builders can share code across objects.
    pub fn set(&mut self, name: &str, value: SfValue) {
        if let Some(index) = self.object.field_index(name) {
            self.values[index] = value;
        }
    }

    /// The record id.
    pub fn id(&self) -> &str {
        match self.get("Id") {
            SfValue::Text(id) => id,
            _ => "",
        }
    }
}

/// A field with the flags most fields share: writable, filterable, not a formula.
const fn field(name: &'static str, kind: FieldType) -> FieldDef {
    FieldDef {
        name,
        kind,
        writable: true,
        filterable: true,
        calculated: false,
        reference_to: &[],
        relationship: None,
    }
}

/// A field the API computes or stamps; clients cannot write it.
const fn system(name: &'static str, kind: FieldType) -> FieldDef {
    FieldDef {
        writable: false,
        ..field(name, kind)
    }
}

/// A formula field: read-only, and it changes without touching `SystemModstamp`.
const fn formula(name: &'static str, kind: FieldType) -> FieldDef {
    FieldDef {
        calculated: true,
        ..system(name, kind)
    }
}

/// A lookup to `targets` through relationship `relationship`.
const fn lookup(
    name: &'static str,
    targets: &'static [&'static str],
    relationship: &'static str,
) -> FieldDef {
    FieldDef {
        reference_to: targets,
        relationship: Some(relationship),
        ..field(name, FieldType::Reference)
    }
}

/// A lookup the API sets itself.
const fn system_lookup(
    name: &'static str,
    targets: &'static [&'static str],
    relationship: &'static str,
) -> FieldDef {
    FieldDef {
        writable: false,
        ..lookup(name, targets, relationship)
    }
}

/// A history value: anyType, which SOQL cannot filter on.
const fn any_value(name: &'static str) -> FieldDef {
    FieldDef {
        filterable: false,
        ..system(name, FieldType::AnyType)
    }
}

use FieldType as T;

const USER: &[&str] = &["User"];
const OWNER: &[&str] = &["Group", "User"];

/// The audit fields every object carries, after its own.
macro_rules! audit_fields {
    () => {
        [
            system("IsDeleted", T::Boolean),
            system("CreatedDate", T::DateTime),
            system_lookup("CreatedById", USER, "CreatedBy"),
            system("LastModifiedDate", T::DateTime),
            system_lookup("LastModifiedById", USER, "LastModifiedBy"),
            system("SystemModstamp", T::DateTime),
        ]
    };
}

/// Concatenates an object's own fields with the audit fields.
macro_rules! fields {
    ($($field:expr),* $(,)?) => {{
        const OWN: &[FieldDef] = &[$($field),*];
        const AUDIT: [FieldDef; 6] = audit_fields!();
        const ALL: [FieldDef; OWN.len() + 6] = {
            let mut all = [field("", T::String); OWN.len() + 6];
            let mut index = 0;
            while index < OWN.len() {
                all[index] = OWN[index];
                index += 1;
            }
            let mut audit = 0;
            while audit < 6 {
                all[OWN.len() + audit] = AUDIT[audit];
                audit += 1;
            }
            all
        };
        &ALL
    }};
}

/// Opportunity with the qualification fields (BANT + competitor + decision process).
pub(crate) static OPPORTUNITY: ObjectDef = ObjectDef {
    name: "Opportunity",
    key_prefix: "006",
    queryable: true,
    writable: true,
    fields: fields![
        system("Id", T::Id),
        lookup("AccountId", &["Account"], "Account"),
        field("Name", T::String),
        field("StageName", T::Picklist),
        field("Amount", T::Currency),
        field("Probability", T::Percent),
        formula("ExpectedRevenue", T::Currency),
        field("CloseDate", T::Date),
        field("Type", T::Picklist),
        field("NextStep", T::String),
        field("LeadSource", T::Picklist),
        system("IsClosed", T::Boolean),
        system("IsWon", T::Boolean),
        field("ForecastCategoryName", T::Picklist),
        system("ForecastCategory", T::Picklist),
        lookup("CampaignId", &["Campaign"], "Campaign"),
        system("HasOpenActivity", T::Boolean),
        lookup("OwnerId", USER, "Owner"),
        system("LastActivityDate", T::Date),
        system("FiscalQuarter", T::Int),
        system("FiscalYear", T::Int),
        field("Budget__c", T::Currency),
        field("Authority__c", T::String),
        field("Need__c", T::TextArea),
        field("Timeline__c", T::Date),
        field("Competitor__c", T::String),
        field("Decision_Process__c", T::TextArea),
        field("Loss_Reason__c", T::Picklist),
        formula("Account_Segment__c", T::String),
    ],
};

/// One row per change of stage, amount, probability or close date, and one at creation.
pub(crate) static OPPORTUNITY_HISTORY: ObjectDef = ObjectDef {
    name: "OpportunityHistory",
    key_prefix: "008",
    queryable: true,
    writable: false,
    fields: &[
        system("Id", T::Id),
        system_lookup("OpportunityId", &["Opportunity"], "Opportunity"),
        system_lookup("CreatedById", USER, "CreatedBy"),
        system("CreatedDate", T::DateTime),
        system("StageName", T::Picklist),
        system("Amount", T::Currency),
        system("ExpectedRevenue", T::Currency),
        system("CloseDate", T::Date),
        system("Probability", T::Percent),
        system("ForecastCategory", T::Picklist),
        system("PrevAmount", T::Currency),
        system("PrevCloseDate", T::Date),
        system("SystemModstamp", T::DateTime),
        system("IsDeleted", T::Boolean),
    ],
};

/// Field-history tracking rows for Opportunity.
pub(crate) static OPPORTUNITY_FIELD_HISTORY: ObjectDef = ObjectDef {
    name: "OpportunityFieldHistory",
    key_prefix: "017",
    queryable: true,
    writable: false,
    fields: &[
        system("Id", T::Id),
        system("IsDeleted", T::Boolean),
        system_lookup("OpportunityId", &["Opportunity"], "Opportunity"),
        system_lookup("CreatedById", USER, "CreatedBy"),
        system("CreatedDate", T::DateTime),
        system("Field", T::Picklist),
        system("DataType", T::Picklist),
        any_value("OldValue"),
        any_value("NewValue"),
    ],
};

/// Field-history tracking rows for Lead.
pub(crate) static LEAD_HISTORY: ObjectDef = ObjectDef {
    name: "LeadHistory",
    key_prefix: "017",
    queryable: true,
    writable: false,
    fields: &[
        system("Id", T::Id),
        system("IsDeleted", T::Boolean),
        system_lookup("LeadId", &["Lead"], "Lead"),
        system_lookup("CreatedById", USER, "CreatedBy"),
        system("CreatedDate", T::DateTime),
        system("Field", T::Picklist),
        system("DataType", T::Picklist),
        any_value("OldValue"),
        any_value("NewValue"),
    ],
};

/// Leads; `OwnerId` may be a user or a queue.
pub(crate) static LEAD: ObjectDef = ObjectDef {
    name: "Lead",
    key_prefix: "00Q",
    queryable: true,
    writable: true,
    fields: fields![
        system("Id", T::Id),
        system_lookup("MasterRecordId", &["Lead"], "MasterRecord"),
        field("LastName", T::String),
        field("FirstName", T::String),
        formula("Name", T::String),
        field("Title", T::String),
        field("Company", T::String),
        field("Email", T::Email),
        field("Industry", T::Picklist),
        field("LeadSource", T::Picklist),
        field("Status", T::Picklist),
        lookup("OwnerId", OWNER, "Owner"),
        system("IsConverted", T::Boolean),
        system("ConvertedDate", T::Date),
        system_lookup("ConvertedAccountId", &["Account"], "ConvertedAccount"),
        system_lookup("ConvertedContactId", &["Contact"], "ConvertedContact"),
        system_lookup(
            "ConvertedOpportunityId",
            &["Opportunity"],
            "ConvertedOpportunity"
        ),
        field("IsUnreadByOwner", T::Boolean),
        field("HasOptedOutOfEmail", T::Boolean),
        system("LastActivityDate", T::Date),
        field("Disqualification_Reason__c", T::Picklist),
    ],
};

/// Contacts.
pub(crate) static CONTACT: ObjectDef = ObjectDef {
    name: "Contact",
    key_prefix: "003",
    queryable: true,
    writable: true,
    fields: fields![
        system("Id", T::Id),
        system_lookup("MasterRecordId", &["Contact"], "MasterRecord"),
        lookup("AccountId", &["Account"], "Account"),
        field("LastName", T::String),
        field("FirstName", T::String),
        formula("Name", T::String),
        field("Title", T::String),
        field("Email", T::Email),
        field("LeadSource", T::Picklist),
        lookup("OwnerId", USER, "Owner"),
        field("HasOptedOutOfEmail", T::Boolean),
        system("LastActivityDate", T::Date),
    ],
};

/// Accounts.
pub(crate) static ACCOUNT: ObjectDef = ObjectDef {
    name: "Account",
    key_prefix: "001",
    queryable: true,
    writable: true,
    fields: fields![
        system("Id", T::Id),
        system_lookup("MasterRecordId", &["Account"], "MasterRecord"),
        field("Name", T::String),
        field("Type", T::Picklist),
        field("Industry", T::Picklist),
        field("AnnualRevenue", T::Currency),
        field("NumberOfEmployees", T::Int),
        lookup("OwnerId", USER, "Owner"),
        field("Segment__c", T::Picklist),
    ],
};

/// Campaigns.
pub(crate) static CAMPAIGN: ObjectDef = ObjectDef {
    name: "Campaign",
    key_prefix: "701",
    queryable: true,
    writable: true,
    fields: fields![
        system("Id", T::Id),
        field("Name", T::String),
        lookup("ParentId", &["Campaign"], "Parent"),
        field("Type", T::Picklist),
        field("Status", T::Picklist),
        field("StartDate", T::Date),
        field("EndDate", T::Date),
        field("IsActive", T::Boolean),
        field("BudgetedCost", T::Currency),
        field("ActualCost", T::Currency),
        lookup("OwnerId", USER, "Owner"),
    ],
};

/// Campaign memberships; deleting one is a hard delete.
pub(crate) static CAMPAIGN_MEMBER: ObjectDef = ObjectDef {
    name: "CampaignMember",
    key_prefix: "00v",
    queryable: true,
    writable: true,
    fields: fields![
        system("Id", T::Id),
        lookup("CampaignId", &["Campaign"], "Campaign"),
        lookup("LeadId", &["Lead"], "Lead"),
        lookup("ContactId", &["Contact"], "Contact"),
        field("Status", T::Picklist),
        system("HasResponded", T::Boolean),
        system("FirstRespondedDate", T::Date),
        system("LeadOrContactId", T::Reference),
        system("LeadOrContactOwnerId", T::Reference),
    ],
};

/// Tasks (calls, follow-ups) for leads, contacts or deals; clients create them.
pub(crate) static TASK: ObjectDef = ObjectDef {
    name: "Task",
    key_prefix: "00T",
    queryable: true,
    writable: true,
    fields: fields![
        system("Id", T::Id),
        lookup("WhoId", &["Contact", "Lead"], "Who"),
        lookup("WhatId", &["Account", "Opportunity"], "What"),
        field("Subject", T::String),
        field("Status", T::Picklist),
        field("Priority", T::Picklist),
        field("ActivityDate", T::Date),
        field("Description", T::TextArea),
        lookup("OwnerId", USER, "Owner"),
        system("IsClosed", T::Boolean),
    ],
};

/// Opportunity stage metadata of the default sales process.
pub(crate) static OPPORTUNITY_STAGE: ObjectDef = ObjectDef {
    name: "OpportunityStage",
    key_prefix: "01J",
    queryable: true,
    writable: false,
    fields: fields![
        system("Id", T::Id),
        system("MasterLabel", T::String),
        system("ApiName", T::String),
        system("IsActive", T::Boolean),
        system("SortOrder", T::Int),
        system("IsClosed", T::Boolean),
        system("IsWon", T::Boolean),
        system("ForecastCategory", T::Picklist),
        system("ForecastCategoryName", T::Picklist),
        system("DefaultProbability", T::Percent),
        system("Description", T::String),
    ],
};

/// Lead status metadata.
pub(crate) static LEAD_STATUS: ObjectDef = ObjectDef {
    name: "LeadStatus",
    key_prefix: "01J",
    queryable: true,
    writable: false,
    fields: fields![
        system("Id", T::Id),
        system("MasterLabel", T::String),
        system("ApiName", T::String),
        system("SortOrder", T::Int),
        system("IsDefault", T::Boolean),
        system("IsConverted", T::Boolean),
    ],
};

/// Users (sales reps, managers, the integration user).
pub(crate) static USER_OBJECT: ObjectDef = ObjectDef {
    name: "User",
    key_prefix: "005",
    queryable: true,
    writable: false,
    fields: fields![
        system("Id", T::Id),
        system("Username", T::String),
        system("LastName", T::String),
        system("FirstName", T::String),
        system("Name", T::String),
        system("Alias", T::String),
        system("Email", T::Email),
        system("IsActive", T::Boolean),
        system("Department", T::String),
        system("Title", T::String),
        system("UserType", T::Picklist),
    ],
};

/// Groups; queues are groups with `Type = 'Queue'`.
pub(crate) static GROUP: ObjectDef = ObjectDef {
    name: "Group",
    key_prefix: "00G",
    queryable: true,
    writable: false,
    fields: fields![
        system("Id", T::Id),
        system("Name", T::String),
        system("DeveloperName", T::String),
        system("Type", T::Picklist),
        system("Email", T::Email),
    ],
};

/// What a polymorphic lookup (a Lead's `Owner`: user or queue) exposes in SOQL paths.
pub(crate) static NAME: ObjectDef = ObjectDef {
    name: "Name",
    key_prefix: "000",
    queryable: false,
    writable: false,
    fields: &[
        system("Id", T::Id),
        system("Name", T::String),
        system("Type", T::Picklist),
        system("Alias", T::String),
        system("Email", T::Email),
        system("FirstName", T::String),
        system("LastName", T::String),
        system("IsActive", T::Boolean),
        system("Title", T::String),
        system("Username", T::String),
    ],
};

/// Every object the org knows, in global-describe order.
pub(crate) static OBJECTS: &[&ObjectDef] = &[
    &ACCOUNT,
    &CAMPAIGN,
    &CAMPAIGN_MEMBER,
    &CONTACT,
    &GROUP,
    &LEAD,
    &LEAD_HISTORY,
    &LEAD_STATUS,
    &NAME,
    &OPPORTUNITY,
    &OPPORTUNITY_FIELD_HISTORY,
    &OPPORTUNITY_HISTORY,
    &OPPORTUNITY_STAGE,
    &TASK,
    &USER_OBJECT,
];

/// An object by API name, case-insensitively as the API matches them.
pub(crate) fn object(name: &str) -> Option<&'static ObjectDef> {
    OBJECTS
        .iter()
        .copied()
        .find(|object| object.name.eq_ignore_ascii_case(name))
}

/// The object whose ids start with `prefix` among those `targets` allows.
pub(crate) fn object_for_id(id: &str, targets: &[&str]) -> Option<&'static ObjectDef> {
    let prefix = id.get(..3)?;
    targets
        .iter()
        .filter_map(|name| object(name))
        .find(|object| object.key_prefix == prefix)
}
