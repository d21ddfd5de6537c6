//! The canonical record model: what both CRMs' objects become before they are stored.
//!
//! Connectors map Salesforce and HubSpot objects onto these types; the store versions them;
//! rules, recycling and queries read them back. Times are UTC epoch milliseconds, money is
//! integer cents and probabilities are basis points, so that every backend computes the
//! same sums.

use serde::Serialize;
use sha2::{Digest, Sha256};

/// UTC epoch milliseconds.
pub type Millis = i64;

/// One day in milliseconds (UTC days have no leap seconds in epoch time).
pub const DAY_MS: Millis = 86_400_000;

/// This host's clock, in Unix milliseconds: when pipewarden itself did something.
pub fn wall_clock() -> Millis {
    chrono::Utc::now().timestamp_millis()
}

/// The kind of business object, whatever the CRM calls it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectKind {
    /// Salesforce Opportunity, HubSpot deal.
    Deal,
    /// Salesforce Lead (HubSpot has contacts in a lifecycle instead).
    Lead,
    /// Salesforce Contact, HubSpot contact.
    Contact,
    /// Salesforce Account, HubSpot company.
    Account,
    /// Salesforce Campaign.
    Campaign,
    /// Salesforce CampaignMember.
    CampaignMember,
}

impl ObjectKind {
    /// Every kind, for parsing and listings.
    pub const ALL: [ObjectKind; 6] = [
        ObjectKind::Deal,
        ObjectKind::Lead,
        ObjectKind::Contact,
        ObjectKind::Account,
        ObjectKind::Campaign,
        ObjectKind::CampaignMember,
    ];

    /// The name stored in the database and shown to users.
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Deal => "deal",
            ObjectKind::Lead => "lead",
            ObjectKind::Contact => "contact",
            ObjectKind::Account => "account",
            ObjectKind::Campaign => "campaign",
            ObjectKind::CampaignMember => "campaign_member",
        }
    }

    /// Parses a stored or user-given name.
    pub fn parse(text: &str) -> Option<ObjectKind> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == text)
    }
}

/// The canonical columns of a record at one moment, plus its tracked CRM fields.
///
/// `fields` holds the CRM's own field values (custom fields included) and is what rules read
/// for required fields. Connectors leave out fields that change on every write without
/// meaning anything (modification stamps), so that a new version means a real change.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RecordState {
    /// Deal, lead or contact name.
    pub name: Option<String>,
    /// Pipeline id (HubSpot) or `default` / sales process (Salesforce).
    pub pipeline: Option<String>,
    /// Deal stage (name in Salesforce, id in HubSpot).
    pub stage: Option<String>,
    /// Lead status (Salesforce Lead Status, HubSpot `hs_lead_status`).
    pub status: Option<String>,
    /// HubSpot lifecycle stage, or the equivalent derived for Salesforce leads.
    pub lifecycle_stage: Option<String>,
    /// Amount in cents.
    pub amount_cents: Option<i64>,
    /// Win probability in basis points (0–10000).
    pub probability_bp: Option<i64>,
    /// Expected close date, `YYYY-MM-DD`.
    pub close_date: Option<String>,
    /// Owner: user, queue or HubSpot owner id.
    pub owner_id: Option<String>,
    /// Lead source / original source.
    pub source: Option<String>,
    /// Primary campaign id.
    pub campaign_id: Option<String>,
    /// The deal is closed (won or lost).
    pub is_closed: bool,
    /// The deal is closed won.
    pub is_won: bool,
    /// When the CRM created the record.
    pub crm_created_at: Option<Millis>,
    /// Last sales activity (call, email, meeting) the CRM knows of.
    pub last_activity_at: Option<Millis>,
    /// Tracked CRM field values by API name.
    pub fields: serde_json::Map<String, serde_json::Value>,
}

/// One look at one record, as a connector hands it to the store.
#[derive(Debug, Clone)]
pub struct RecordObservation {
    /// The connection it came from.
    pub connection_id: i64,
    /// What kind of object it is.
    pub kind: ObjectKind,
    /// The CRM's object name (`Opportunity`, `deals`, …).
    pub crm_object: String,
    /// The CRM's id of the record.
    pub crm_id: String,
    /// Its state as seen.
    pub state: RecordState,
    /// The record is deleted (Salesforce `IsDeleted`, HubSpot archived).
    pub deleted: bool,
    /// The CRM's modification time of this state (`SystemModstamp`, `hs_lastmodifieddate`).
    pub modified_at: Millis,
    /// When pipewarden saw it.
    pub observed_at: Millis,
    /// The sync run that saw it.
    pub sync_run_id: Option<i64>,
}

impl RecordObservation {
    /// Hash of everything a version tracks; equal hashes mean nothing tracked changed.
    pub fn content_hash(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Hashed<'a> {
            state: &'a RecordState,
            deleted: bool,
        }
        let hashed = Hashed {
            state: &self.state,
            deleted: self.deleted,
        };
        // serde_json maps are ordered by key, so equal content always serializes equally.
        let bytes = serde_json::to_vec(&hashed).expect("record state always serializes");
        Sha256::digest(bytes).to_vec()
    }
}

/// Who or what made a change, as far as the CRM's history tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActorKind {
    /// A person in the CRM's UI or app.
    Person,
    /// An integration user or connected app.
    Integration,
    /// A plain API call.
    Api,
    /// An import.
    Import,
    /// A workflow, flow or automation.
    Workflow,
    /// The CRM itself (calculated values, migrations).
    System,
    /// Not recorded.
    Unknown,
}

impl ActorKind {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            ActorKind::Person => "person",
            ActorKind::Integration => "integration",
            ActorKind::Api => "api",
            ActorKind::Import => "import",
            ActorKind::Workflow => "workflow",
            ActorKind::System => "system",
            ActorKind::Unknown => "unknown",
        }
    }

    /// Parses a stored name.
    pub fn parse(text: &str) -> Option<ActorKind> {
        [
            ActorKind::Person,
            ActorKind::Integration,
            ActorKind::Api,
            ActorKind::Import,
            ActorKind::Workflow,
            ActorKind::System,
            ActorKind::Unknown,
        ]
        .into_iter()
        .find(|kind| kind.as_str() == text)
    }
}

/// Where a stored fact comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// The CRM's own history (OpportunityHistory, property history).
    CrmHistory,
    /// A date field the CRM maintains (`hs_lifecyclestage_*_date`, `ConvertedDate`).
    CrmField,
    /// A difference between two states pipewarden observed.
    ObservedDiff,
    /// Something pipewarden itself did (recycling).
    Pipewarden,
}

impl Origin {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::CrmHistory => "crm_history",
            Origin::CrmField => "crm_field",
            Origin::ObservedDiff => "observed_diff",
            Origin::Pipewarden => "pipewarden",
        }
    }
}

/// Milestones in a lead's, contact's or deal's life that cohorts and recycling count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LifecycleEvent {
    /// The record was created.
    Created,
    /// First sales touch.
    FirstContacted,
    /// Marketing-qualified.
    Mql,
    /// Sales-qualified.
    Sql,
    /// A meeting was booked.
    MeetingBooked,
    /// An opportunity or deal was created from it.
    OpportunityCreated,
    /// Closed won.
    Won,
    /// Closed lost.
    Lost,
    /// Disqualified.
    Disqualified,
    /// Put back into nurture by pipewarden.
    Recycled,
    /// Reached a qualifying milestone after being recycled.
    Returned,
}

impl LifecycleEvent {
    /// Every event, for parsing and listings.
    pub const ALL: [LifecycleEvent; 11] = [
        LifecycleEvent::Created,
        LifecycleEvent::FirstContacted,
        LifecycleEvent::Mql,
        LifecycleEvent::Sql,
        LifecycleEvent::MeetingBooked,
        LifecycleEvent::OpportunityCreated,
        LifecycleEvent::Won,
        LifecycleEvent::Lost,
        LifecycleEvent::Disqualified,
        LifecycleEvent::Recycled,
        LifecycleEvent::Returned,
    ];

    /// The name stored in the database and accepted on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            LifecycleEvent::Created => "created",
            LifecycleEvent::FirstContacted => "first_contacted",
            LifecycleEvent::Mql => "mql",
            LifecycleEvent::Sql => "sql",
            LifecycleEvent::MeetingBooked => "meeting_booked",
            LifecycleEvent::OpportunityCreated => "opportunity_created",
            LifecycleEvent::Won => "won",
            LifecycleEvent::Lost => "lost",
            LifecycleEvent::Disqualified => "disqualified",
            LifecycleEvent::Recycled => "recycled",
            LifecycleEvent::Returned => "returned",
        }
    }

    /// Parses a stored or user-given name.
    pub fn parse(text: &str) -> Option<LifecycleEvent> {
        Self::ALL.into_iter().find(|event| event.as_str() == text)
    }
}
