//! Write-back: CRM writes decided by pipewarden, delivered from the `writeback_outbox`.
//!
//! A write is decided and stored in the outbox in the same transaction as the decision (a
//! recycle action); this module delivers it later, in batches, through the connection's
//! rate-limited client, and records what the CRM answered. A row is claimed (`in_flight`,
//! attempts + 1) before its call and settled (`applied` or `failed`) after it, so a process
//! killed in between leaves `in_flight` rows that the next run delivers again in a way that
//! cannot apply them twice: field updates compare the CRM's current values first, a
//! duplicate campaign membership counts as done, and a task is looked for before it is
//! created again.

pub mod audit;
mod hubspot;
mod outbox;
mod salesforce;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use outbox::{deliver_pending, DeliveryReport, SettledWrite};

use crate::crm::CrmError;

/// One CRM write, as stored in the outbox's `payload`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum WriteOp {
    /// Set fields (Salesforce) or properties (HubSpot) of one record.
    Update {
        /// `Lead`, `Contact`, `contacts`, …
        object: String,
        /// The record's CRM id.
        id: String,
        /// Field values to write.
        fields: Map<String, Value>,
        /// Salesforce: send `Sforce-Auto-Assign: TRUE` so the org's assignment rules pick
        /// the owner.
        #[serde(default)]
        auto_assign: bool,
        /// HubSpot: properties to clear before writing (a lifecycle stage moving backward).
        #[serde(default)]
        clear_first: Vec<String>,
        /// Write only while the CRM still holds these values (a revert of a deal that
        /// moved on meanwhile is not written).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        only_if: Option<Precondition>,
    },
    /// Create a record (Salesforce CampaignMember or Task, HubSpot task).
    Create {
        /// `CampaignMember`, `Task`, `tasks`.
        object: String,
        /// Its field values.
        fields: Map<String, Value>,
        /// A `DUPLICATE_VALUE` answer means it exists already: done.
        #[serde(default)]
        duplicate_ok: bool,
        /// Before creating again after an interrupted attempt, look for a record with these
        /// field values created at or after `created_after_ms`.
        #[serde(default)]
        find_first: Option<Map<String, Value>>,
        /// See `find_first`.
        #[serde(default)]
        created_after_ms: Option<i64>,
        /// HubSpot: the record the new one is associated with (a task with its deal); an
        /// interrupted create is looked for among that record's associations.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        associate_with: Option<Association>,
        /// Create only while the CRM holds these values (a task about a revert only once
        /// the revert is in).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        only_if: Option<Precondition>,
    },
    /// Add a contact to a HubSpot static list.
    ListAdd {
        /// The list id.
        list: String,
        /// The contact's id.
        id: String,
    },
}

/// A HubSpot association made with a create: the record at the other end and the type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Association {
    /// The other record's object (`deals`).
    pub object: String,
    /// Its id.
    pub id: String,
    /// The HubSpot-defined association type (216: task to deal).
    pub type_id: u64,
}

/// Values one CRM record must hold at delivery for a write to go ahead; otherwise the write
/// is settled `failed` with the code [`PRECONDITION_FAILED`] and the values found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Precondition {
    /// `Opportunity`, `deals`, …
    pub object: String,
    /// The record's CRM id.
    pub id: String,
    /// Field values it must hold.
    pub fields: Map<String, Value>,
}

/// The error code of a write whose [`Precondition`] did not hold.
pub const PRECONDITION_FAILED: &str = "PRECONDITION_FAILED";

impl WriteOp {
    /// The precondition of the write, if any.
    pub fn only_if(&self) -> Option<&Precondition> {
        match self {
            WriteOp::Update { only_if, .. } | WriteOp::Create { only_if, .. } => only_if.as_ref(),
            WriteOp::ListAdd { .. } => None,
        }
    }

    /// The CRM object the write touches.
    pub fn object(&self) -> &str {
        match self {
            WriteOp::Update { object, .. } | WriteOp::Create { object, .. } => object,
            WriteOp::ListAdd { .. } => "lists",
        }
    }

    /// The id of the record written, when it exists before the write.
    pub fn record_id(&self) -> Option<&str> {
        match self {
            WriteOp::Update { id, .. } | WriteOp::ListAdd { id, .. } => Some(id),
            WriteOp::Create { .. } => None,
        }
    }

    /// The outbox `operation` column.
    pub fn operation(&self) -> &'static str {
        match self {
            WriteOp::Update { .. } => "update",
            WriteOp::Create { .. } => "create",
            WriteOp::ListAdd { .. } => "list_add",
        }
    }
}

/// What became of one write.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteOutcome {
    /// The CRM holds the write (now or already); the CRM's answer for the audit.
    Applied(Value),
    /// The CRM refused this record's write; retrying will not change that.
    Refused {
        /// The CRM's error code (`FIELD_CUSTOM_VALIDATION_EXCEPTION`, `VALIDATION_ERROR`, …).
        code: String,
        /// The CRM's message.
        message: String,
    },
    /// The call got no usable answer (outage, rate limit, budget); try again later.
    Retry(String),
}

impl WriteOutcome {
    /// The outcome every write of a failed call gets.
    fn from_call_error(err: &CrmError) -> WriteOutcome {
        match err {
            CrmError::Api { code, message, .. } => WriteOutcome::Refused {
                code: code.clone(),
                message: message.clone(),
            },
            other => WriteOutcome::Retry(other.to_string()),
        }
    }
}

/// One write to deliver: its place in the caller's list, the write, and whether an earlier
/// attempt may already have reached the CRM.
pub(super) struct Pending<'a> {
    pub index: usize,
    pub op: &'a WriteOp,
    pub retried: bool,
}

/// Settles every write of a call that failed for all of them with the same outcome.
fn settle_all(
    writes: &[&Pending<'_>],
    outcome: &WriteOutcome,
    outcomes: &mut BTreeMap<usize, WriteOutcome>,
) {
    for w in writes {
        outcomes.insert(w.index, outcome.clone());
    }
}

/// Creates an earlier attempt may have delivered are looked for before they are sent again:
/// `find` answers `None` for a write it cannot look for, else the id of the record the earlier
/// attempt made, if there is one. Found ones are settled applied; the others are returned.
async fn skip_found_creates<'p>(
    creates: Vec<&'p Pending<'p>>,
    outcomes: &mut BTreeMap<usize, WriteOutcome>,
    mut find: impl AsyncFnMut(&'p WriteOp) -> Option<Result<Option<String>, CrmError>>,
) -> Vec<&'p Pending<'p>> {
    let mut left = Vec::new();
    for w in creates {
        let found = if w.retried { find(w.op).await } else { None };
        match found {
            None | Some(Ok(None)) => left.push(w),
            Some(Ok(Some(id))) => {
                let answer = serde_json::json!({ "id": id, "already_existed": true });
                outcomes.insert(w.index, WriteOutcome::Applied(answer));
            }
            Some(Err(err)) => {
                outcomes.insert(w.index, WriteOutcome::from_call_error(&err));
            }
        }
    }
    left
}

/// The outcome of a write whose precondition does not hold, naming what the CRM holds.
fn precondition_failed(condition: &Precondition, current: Option<&Value>) -> WriteOutcome {
    let found = |name: &str| {
        current
            .and_then(|record| record.get(name))
            .map(Value::to_string)
            .unwrap_or_else(|| "(missing)".into())
    };
    let differences: Vec<String> = condition
        .fields
        .iter()
        .filter(|(name, wanted)| current.and_then(|record| record.get(*name)) != Some(*wanted))
        .map(|(name, wanted)| format!("{name} is {}, not {wanted}", found(name)))
        .collect();
    WriteOutcome::Refused {
        code: PRECONDITION_FAILED.into(),
        message: format!(
            "{} {}: {}; not written",
            condition.object,
            condition.id,
            differences.join(", ")
        ),
    }
}

/// Whether `current` holds every value of `condition`.
fn precondition_holds(condition: &Precondition, current: Option<&Value>) -> bool {
    holds(current, &condition.fields)
}

/// Whether `current` holds every value of `fields`.
fn holds(current: Option<&Value>, fields: &Map<String, Value>) -> bool {
    current.is_some_and(|record| {
        fields
            .iter()
            .all(|(name, wanted)| record.get(name) == Some(wanted))
    })
}

/// Reads a JSON answer body (an empty body reads as null).
fn read_value(body: &[u8]) -> Result<Value, String> {
    if body.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(body).map_err(|err| err.to_string())
}
