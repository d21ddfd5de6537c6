//! The portal's object types, property definitions and the default deal pipeline.

use crate::emulator::funnel::{LOST, WON};

/// The CRM object types served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum ObjectType {
    Contacts,
    Companies,
    Deals,
}

impl ObjectType {
    /// Accepts the plural, the singular and the `0-N` type id, as HubSpot does.
    pub fn parse(name: &str) -> Option<ObjectType> {
        match name.to_ascii_lowercase().as_str() {
            "contacts" | "contact" | "0-1" => Some(ObjectType::Contacts),
            "companies" | "company" | "0-2" => Some(ObjectType::Companies),
            "deals" | "deal" | "0-3" => Some(ObjectType::Deals),
            _ => None,
        }
    }

    pub fn plural(self) -> &'static str {
        match self {
            ObjectType::Contacts => "contacts",
            ObjectType::Companies => "companies",
            ObjectType::Deals => "deals",
        }
    }

    pub fn singular(self) -> &'static str {
        match self {
            ObjectType::Contacts => "contact",
            ObjectType::Companies => "company",
            ObjectType::Deals => "deal",
        }
    }

    pub fn type_id(self) -> &'static str {
        match self {
            ObjectType::Contacts => "0-1",
            ObjectType::Companies => "0-2",
            ObjectType::Deals => "0-3",
        }
    }

    /// Ids of each type come from their own range, so a client mixing types up finds nothing.
    fn id_base(self) -> u64 {
        match self {
            ObjectType::Contacts => 1_001,
            ObjectType::Companies => 9_000_001,
            ObjectType::Deals => 20_000_001,
        }
    }

    pub fn id(self, number: u64) -> String {
        (number + self.id_base()).to_string()
    }

    pub fn number(self, id: &str) -> Option<u64> {
        id.trim().parse::<u64>().ok()?.checked_sub(self.id_base())
    }

    /// Contacts keep their modification time in `lastmodifieddate`, the others in
    /// `hs_lastmodifieddate`.
    pub fn modified_property(self) -> &'static str {
        match self {
            ObjectType::Contacts => "lastmodifieddate",
            _ => "hs_lastmodifieddate",
        }
    }

    /// What a read returns when no `properties` are named.
    pub fn default_properties(self) -> &'static [&'static str] {
        match self {
            ObjectType::Contacts => &[
                "createdate",
                "email",
                "firstname",
                "hs_object_id",
                "lastmodifieddate",
                "lastname",
            ],
            ObjectType::Companies => &[
                "createdate",
                "domain",
                "hs_lastmodifieddate",
                "hs_object_id",
                "name",
            ],
            ObjectType::Deals => &[
                "amount",
                "closedate",
                "createdate",
                "dealname",
                "dealstage",
                "hs_lastmodifieddate",
                "hs_object_id",
                "pipeline",
            ],
        }
    }

    pub fn properties(self) -> &'static [PropDef] {
        match self {
            ObjectType::Contacts => CONTACT_PROPERTIES,
            ObjectType::Companies => COMPANY_PROPERTIES,
            ObjectType::Deals => DEAL_PROPERTIES,
        }
    }

    /// The definition of a property clients may read or write by this name.
    pub fn property(self, name: &str) -> Option<&'static PropDef> {
        self.properties()
            .iter()
            .find(|def| def.name == name)
            .or_else(|| (self == ObjectType::Deals).then(|| stage_timing_property(name))?)
    }
}

/// A property's data type, which fixes its `type`/`fieldType` and how values are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Text,
    TextArea,
    Number,
    Select,
    Checkbox,
    Bool,
    DateTime,
    Date,
}

impl Kind {
    pub fn type_name(self) -> &'static str {
        match self {
            Kind::Text | Kind::TextArea => "string",
            Kind::Number => "number",
            Kind::Select | Kind::Checkbox => "enumeration",
            Kind::Bool => "bool",
            Kind::DateTime => "datetime",
            Kind::Date => "date",
        }
    }

    pub fn field_type(self) -> &'static str {
        match self {
            Kind::Text => "text",
            Kind::TextArea => "textarea",
            Kind::Number => "number",
            Kind::Select => "select",
            Kind::Checkbox | Kind::Bool => "booleancheckbox",
            Kind::DateTime | Kind::Date => "date",
        }
    }

    /// Values compare as numbers (instants as epoch ms) rather than as text.
    pub fn is_numeric(self) -> bool {
        matches!(self, Kind::Number | Kind::DateTime | Kind::Date)
    }
}

/// One property definition.
#[derive(Debug)]
pub(crate) struct PropDef {
    pub name: &'static str,
    pub label: &'static str,
    pub kind: Kind,
    pub group: &'static str,
    /// Set by HubSpot itself; writes are refused with `READ_ONLY_VALUE`.
    pub read_only: bool,
    /// Defined by the portal's admins rather than HubSpot.
    pub custom: bool,
    /// Allowed values and labels of enumerations; empty means any (owners are checked apart).
    pub options: &'static [(&'static str, &'static str)],
}

const fn prop(name: &'static str, label: &'static str, kind: Kind, group: &'static str) -> PropDef {
    PropDef {
        name,
        label,
        kind,
        group,
        read_only: false,
        custom: false,
        options: &[],
    }
}

const fn calculated(
    name: &'static str,
    label: &'static str,
    kind: Kind,
    group: &'static str,
) -> PropDef {
    PropDef {
        read_only: true,
        ..prop(name, label, kind, group)
    }
}

const fn choice(
    name: &'static str,
    label: &'static str,
    group: &'static str,
    options: &'static [(&'static str, &'static str)],
) -> PropDef {
    PropDef {
        options,
        ..prop(name, label, Kind::Select, group)
    }
}

const fn custom(name: &'static str, label: &'static str, kind: Kind) -> PropDef {
    PropDef {
        custom: true,
        ..prop(name, label, kind, "qualification")
    }
}

const TRUE_FALSE: &[(&str, &str)] = &[("true", "Yes"), ("false", "No")];

/// Default lifecycle stages in their forward order.
pub(crate) const LIFECYCLE_STAGES: &[(&str, &str)] = &[
    ("subscriber", "Subscriber"),
    ("lead", "Lead"),
    ("marketingqualifiedlead", "Marketing Qualified Lead"),
    ("salesqualifiedlead", "Sales Qualified Lead"),
    ("opportunity", "Opportunity"),
    ("customer", "Customer"),
    ("evangelist", "Evangelist"),
    ("other", "Other"),
];

/// Where a lifecycle stage stands in the forward order.
pub(crate) fn lifecycle_rank(stage: &str) -> Option<usize> {
    LIFECYCLE_STAGES.iter().position(|(id, _)| *id == stage)
}

const LEAD_STATUSES: &[(&str, &str)] = &[
    ("NEW", "New"),
    ("OPEN", "Open"),
    ("IN_PROGRESS", "In Progress"),
    ("OPEN_DEAL", "Open Deal"),
    ("UNQUALIFIED", "Unqualified"),
    ("ATTEMPTED_TO_CONTACT", "Attempted to Contact"),
    ("CONNECTED", "Connected"),
    ("BAD_TIMING", "Bad Timing"),
];

const CONTACT_PROPERTIES: &[PropDef] = &[
    prop("firstname", "First Name", Kind::Text, "contactinformation"),
    prop("lastname", "Last Name", Kind::Text, "contactinformation"),
    prop("email", "Email", Kind::Text, "contactinformation"),
    prop("company", "Company Name", Kind::Text, "contactinformation"),
    prop("jobtitle", "Job Title", Kind::Text, "contactinformation"),
    choice(
        "lifecyclestage",
        "Lifecycle Stage",
        "contactinformation",
        LIFECYCLE_STAGES,
    ),
    choice(
        "hs_lead_status",
        "Lead Status",
        "sales_properties",
        LEAD_STATUSES,
    ),
    prop(
        "hubspot_owner_id",
        "Contact owner",
        Kind::Select,
        "sales_properties",
    ),
    PropDef {
        options: TRUE_FALSE,
        ..prop(
            "hs_email_optout",
            "Unsubscribed from all email",
            Kind::Checkbox,
            "contactinformation",
        )
    },
    prop(
        "createdate",
        "Create Date",
        Kind::DateTime,
        "contactinformation",
    ),
    calculated(
        "lastmodifieddate",
        "Last Modified Date",
        Kind::DateTime,
        "contactinformation",
    ),
    calculated(
        "notes_last_contacted",
        "Last Contacted",
        Kind::DateTime,
        "sales_properties",
    ),
    calculated(
        "hs_object_id",
        "Record ID",
        Kind::Number,
        "contactinformation",
    ),
    calculated(
        "hs_lifecyclestage_subscriber_date",
        "Date entered 'Subscriber (Lifecycle Stage Pipeline)'",
        Kind::DateTime,
        "contactinformation",
    ),
    calculated(
        "hs_lifecyclestage_lead_date",
        "Date entered 'Lead (Lifecycle Stage Pipeline)'",
        Kind::DateTime,
        "contactinformation",
    ),
    calculated(
        "hs_lifecyclestage_marketingqualifiedlead_date",
        "Date entered 'Marketing Qualified Lead (Lifecycle Stage Pipeline)'",
        Kind::DateTime,
        "contactinformation",
    ),
    calculated(
        "hs_lifecyclestage_salesqualifiedlead_date",
        "Date entered 'Sales Qualified Lead (Lifecycle Stage Pipeline)'",
        Kind::DateTime,
        "contactinformation",
    ),
    calculated(
        "hs_lifecyclestage_opportunity_date",
        "Date entered 'Opportunity (Lifecycle Stage Pipeline)'",
        Kind::DateTime,
        "contactinformation",
    ),
    calculated(
        "hs_lifecyclestage_customer_date",
        "Date entered 'Customer (Lifecycle Stage Pipeline)'",
        Kind::DateTime,
        "contactinformation",
    ),
    calculated(
        "hs_lifecyclestage_evangelist_date",
        "Date entered 'Evangelist (Lifecycle Stage Pipeline)'",
        Kind::DateTime,
        "contactinformation",
    ),
    calculated(
        "hs_lifecyclestage_other_date",
        "Date entered 'Other (Lifecycle Stage Pipeline)'",
        Kind::DateTime,
        "contactinformation",
    ),
];

/// HubSpot's industry option values for the funnel's industries.
pub(crate) const INDUSTRIES: &[(&str, &str)] = &[
    ("COMPUTER_SOFTWARE", "Computer Software"),
    ("FINANCIAL_SERVICES", "Financial Services"),
    ("HOSPITAL_HEALTH_CARE", "Hospital & Health Care"),
    ("INDUSTRIAL_AUTOMATION", "Industrial Automation"),
    ("RETAIL", "Retail"),
    ("EDUCATION_MANAGEMENT", "Education Management"),
];

const SEGMENTS: &[(&str, &str)] = &[
    ("Enterprise", "Enterprise"),
    ("Mid-Market", "Mid-Market"),
    ("SMB", "SMB"),
];

const COMPANY_PROPERTIES: &[PropDef] = &[
    prop("name", "Company name", Kind::Text, "companyinformation"),
    prop(
        "domain",
        "Company Domain Name",
        Kind::Text,
        "companyinformation",
    ),
    choice("industry", "Industry", "companyinformation", INDUSTRIES),
    prop(
        "numberofemployees",
        "Number of Employees",
        Kind::Number,
        "companyinformation",
    ),
    prop(
        "hubspot_owner_id",
        "Company owner",
        Kind::Select,
        "companyinformation",
    ),
    PropDef {
        custom: true,
        options: SEGMENTS,
        ..prop("segment", "Segment", Kind::Select, "companyinformation")
    },
    prop(
        "createdate",
        "Create Date",
        Kind::DateTime,
        "companyinformation",
    ),
    calculated(
        "hs_lastmodifieddate",
        "Last Modified Date",
        Kind::DateTime,
        "companyinformation",
    ),
    calculated(
        "hs_object_id",
        "Record ID",
        Kind::Number,
        "companyinformation",
    ),
];

const DEAL_TYPES: &[(&str, &str)] = &[
    ("newbusiness", "New Business"),
    ("existingbusiness", "Existing Business"),
];

const PIPELINES: &[(&str, &str)] = &[("default", "Sales Pipeline")];

const STAGE_OPTIONS: &[(&str, &str)] = &[
    ("appointmentscheduled", "Appointment Scheduled"),
    ("qualifiedtobuy", "Qualified To Buy"),
    ("presentationscheduled", "Presentation Scheduled"),
    ("decisionmakerboughtin", "Decision Maker Bought-In"),
    ("contractsent", "Contract Sent"),
    ("closedwon", "Closed Won"),
    ("closedlost", "Closed Lost"),
];

const DEAL_PROPERTIES: &[PropDef] = &[
    prop("dealname", "Deal Name", Kind::Text, "dealinformation"),
    choice("dealstage", "Deal Stage", "dealinformation", STAGE_OPTIONS),
    choice("pipeline", "Pipeline", "dealinformation", PIPELINES),
    prop("amount", "Amount", Kind::Number, "dealinformation"),
    prop("closedate", "Close Date", Kind::DateTime, "dealinformation"),
    prop(
        "createdate",
        "Create Date",
        Kind::DateTime,
        "dealinformation",
    ),
    prop(
        "hubspot_owner_id",
        "Deal owner",
        Kind::Select,
        "dealinformation",
    ),
    choice("dealtype", "Deal Type", "dealinformation", DEAL_TYPES),
    prop(
        "closed_lost_reason",
        "Closed Lost Reason",
        Kind::TextArea,
        "dealinformation",
    ),
    calculated(
        "hs_lastmodifieddate",
        "Last Modified Date",
        Kind::DateTime,
        "dealinformation",
    ),
    PropDef {
        options: TRUE_FALSE,
        ..calculated(
            "hs_is_closed",
            "Is Deal Closed?",
            Kind::Bool,
            "dealinformation",
        )
    },
    PropDef {
        options: TRUE_FALSE,
        ..calculated(
            "hs_is_closed_won",
            "Is Closed Won",
            Kind::Bool,
            "dealinformation",
        )
    },
    calculated(
        "hs_deal_stage_probability",
        "Deal probability",
        Kind::Number,
        "dealinformation",
    ),
    calculated("hs_object_id", "Record ID", Kind::Number, "dealinformation"),
    custom("budget", "Budget", Kind::Number),
    custom("authority", "Authority", Kind::Text),
    custom("need", "Need", Kind::Text),
    custom("timeline", "Timeline", Kind::Date),
    custom("competitor", "Competitor", Kind::Text),
    custom("decision_process", "Decision Process", Kind::TextArea),
];

/// One stage of the default deal pipeline.
pub(crate) struct Stage {
    pub id: &'static str,
    pub label: &'static str,
    /// Probability as HubSpot writes it in stage metadata.
    pub probability: &'static str,
    pub closed: bool,
}

const fn stage(
    id: &'static str,
    label: &'static str,
    probability: &'static str,
    closed: bool,
) -> Stage {
    Stage {
        id,
        label,
        probability,
        closed,
    }
}

/// The default "Sales Pipeline" stages, in display order.
pub(crate) const STAGES: &[Stage] = &[
    stage(
        "appointmentscheduled",
        "Appointment Scheduled",
        "0.2",
        false,
    ),
    stage("qualifiedtobuy", "Qualified To Buy", "0.4", false),
    stage(
        "presentationscheduled",
        "Presentation Scheduled",
        "0.6",
        false,
    ),
    stage(
        "decisionmakerboughtin",
        "Decision Maker Bought-In",
        "0.8",
        false,
    ),
    stage("contractsent", "Contract Sent", "0.9", false),
    stage("closedwon", "Closed Won", "1.0", true),
    stage("closedlost", "Closed Lost", "0.0", true),
];

/// The funnel's eight open stages land on HubSpot's five, in order: pairs of early stages
/// share one HubSpot stage, so some funnel moves change nothing in HubSpot.
const OPEN_STAGE_MAP: [usize; 8] = [0, 0, 1, 1, 2, 2, 3, 4];

/// The HubSpot stage of a funnel stage ordinal.
pub(crate) fn stage_of(ordinal: usize) -> &'static Stage {
    let index = match ordinal {
        WON => 5,
        LOST => 6,
        open => OPEN_STAGE_MAP[open.min(OPEN_STAGE_MAP.len() - 1)],
    };
    &STAGES[index]
}

pub(crate) fn stage_by_id(id: &str) -> Option<&'static Stage> {
    STAGES.iter().find(|stage| stage.id == id)
}

/// Prefixes of the stage-calculated properties, which exist for every stage of every
/// pipeline but are never listed: clients must build their names from the stage ids.
pub(crate) const STAGE_TIMING_PREFIXES: &[&str] = &[
    "hs_v2_date_entered_",
    "hs_v2_date_exited_",
    "hs_v2_latest_time_in_",
    "hs_v2_cumulative_time_in_",
];

/// The definitions of the `hs_v2_*` stage properties, built per stage.
static STAGE_TIMING: std::sync::LazyLock<Vec<PropDef>> = std::sync::LazyLock::new(|| {
    let mut defs = Vec::new();
    for stage in STAGES {
        for prefix in STAGE_TIMING_PREFIXES {
            let name: &'static str = Box::leak(format!("{prefix}{}", stage.id).into_boxed_str());
            let kind = if prefix.contains("date") {
                Kind::DateTime
            } else {
                Kind::Number
            };
            defs.push(calculated(name, name, kind, "deal_activity"));
        }
    }
    defs
});

fn stage_timing_property(name: &str) -> Option<&'static PropDef> {
    STAGE_TIMING.iter().find(|def| def.name == name)
}
