//! The CRM writes a policy plans for one selected record, with before and after values.

use serde::Serialize;
use serde_json::{json, Map, Value};

use super::select::Candidate;
use crate::config::settings::{CrmKind, PolicyKind, PolicySettings, StageAction};
use crate::record::Millis;
use crate::record::DAY_MS;
use crate::writeback::WriteOp;

/// How far the CRM's clock may lag pipewarden's when looking for a task it created.
const CLOCK_SKEW_MS: Millis = 300_000;

/// HubSpot's default lifecycle stages, earliest first (custom stages are not ranked).
const LIFECYCLE_ORDER: &[&str] = &[
    "subscriber",
    "lead",
    "marketingqualifiedlead",
    "salesqualifiedlead",
    "opportunity",
    "customer",
    "evangelist",
    "other",
];

/// One planned CRM write and what it changes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlannedAction {
    /// `set_status`, `set_owner`, `assign_by_rules`, `add_to_campaign`, `create_task`,
    /// `set_lifecycle_stage`, `add_to_list`, or for stalled deals `move_back` or
    /// `close_lost`.
    pub action: &'static str,
    /// The values before (from the store's current state).
    pub before: Value,
    /// The values after.
    pub after: Value,
    /// The write that does it.
    pub write: WriteOp,
}

/// Every action `policy` plans for `candidate` as of `as_of`; actions that would change
/// nothing are left out.
pub fn plan_actions(
    crm: CrmKind,
    policy: &PolicySettings,
    candidate: &Candidate,
    as_of: Millis,
) -> Vec<PlannedAction> {
    if policy.kind == PolicyKind::Stalled {
        return stage_action(crm, policy, candidate).into_iter().collect();
    }
    person_actions(crm, policy, candidate, as_of)
}

/// The lead or contact writes of `policy` for `candidate` (for a `stalled` policy that
/// closes deals lost, the writes to each closed deal's contacts).
pub fn person_actions(
    crm: CrmKind,
    policy: &PolicySettings,
    candidate: &Candidate,
    as_of: Millis,
) -> Vec<PlannedAction> {
    match crm {
        CrmKind::Salesforce => salesforce_actions(policy, candidate, as_of),
        CrmKind::Hubspot => hubspot_actions(policy, candidate),
    }
}

fn update(object: &str, id: &str, field: &str, value: &str) -> WriteOp {
    let mut fields = Map::new();
    fields.insert(field.to_string(), json!(value));
    WriteOp::Update {
        object: object.to_string(),
        id: id.to_string(),
        fields,
        auto_assign: false,
        clear_first: Vec::new(),
        only_if: None,
    }
}

/// A stalled deal's stage write: back to the previous open stage of its pipeline, or to
/// the pipeline's closed-lost stage. Nothing when the policy only alerts, or when there is
/// no such stage (a deal in the first stage cannot move back).
fn stage_action(
    crm: CrmKind,
    policy: &PolicySettings,
    candidate: &Candidate,
) -> Option<PlannedAction> {
    let (action, target) = match policy.actions.stage_action? {
        StageAction::MoveBack => ("move_back", candidate.previous_stage.as_deref()?),
        StageAction::CloseLost => ("close_lost", candidate.lost_stage.as_deref()?),
    };
    if candidate.stage.as_deref() == Some(target) {
        return None;
    }
    let field = match crm {
        CrmKind::Salesforce => "StageName",
        CrmKind::Hubspot => "dealstage",
    };
    Some(PlannedAction {
        action,
        before: json!({ field: candidate.stage }),
        after: json!({ field: target }),
        write: update(&candidate.crm_object, &candidate.crm_id, field, target),
    })
}

fn salesforce_actions(
    policy: &PolicySettings,
    candidate: &Candidate,
    as_of: Millis,
) -> Vec<PlannedAction> {
    let actions = &policy.actions;
    let object = candidate.crm_object.as_str();
    let id = candidate.crm_id.as_str();
    let is_lead = candidate.object_kind == "lead";
    let mut planned = Vec::new();
    // Contacts have no Lead Status.
    if let (Some(status), true) = (&actions.set_status, is_lead) {
        if candidate.status.as_deref() != Some(status) {
            planned.push(PlannedAction {
                action: "set_status",
                before: json!({ "Status": candidate.status }),
                after: json!({ "Status": status }),
                write: update(object, id, "Status", status),
            });
        }
    }
    if let Some(owner) = &actions.set_owner {
        if candidate.owner_id.as_deref() != Some(owner) {
            planned.push(PlannedAction {
                action: "set_owner",
                before: json!({ "OwnerId": candidate.owner_id }),
                after: json!({ "OwnerId": owner }),
                write: update(object, id, "OwnerId", owner),
            });
        }
    }
    if actions.use_assignment_rules {
        // The assignment rides on the record's other field updates: they merge into one
        // PATCH, and a retried PATCH whose fields already hold is known to have run the rules
        // once. Running them again blindly could hand the lead to the next rep in a rotation.
        let mut carried = Map::new();
        for p in planned.iter_mut() {
            if let WriteOp::Update {
                object: o,
                id: i,
                fields,
                auto_assign,
                ..
            } = &mut p.write
            {
                if o == object && i == id {
                    *auto_assign = true;
                    carried.extend(fields.clone());
                }
            }
        }
        planned.push(PlannedAction {
            action: "assign_by_rules",
            before: json!({ "OwnerId": candidate.owner_id }),
            after: json!({ "OwnerId": "(the org's assignment rules decide)" }),
            write: WriteOp::Update {
                object: object.to_string(),
                id: id.to_string(),
                fields: carried,
                auto_assign: true,
                clear_first: Vec::new(),
                only_if: None,
            },
        });
    }
    if let Some(campaign) = &actions.add_to_campaign {
        let person_field = if is_lead { "LeadId" } else { "ContactId" };
        let status = actions
            .campaign_member_status
            .clone()
            .unwrap_or_else(|| "Sent".to_string());
        let mut fields = Map::new();
        fields.insert("CampaignId".into(), json!(campaign));
        fields.insert(person_field.into(), json!(id));
        fields.insert("Status".into(), json!(status));
        planned.push(PlannedAction {
            action: "add_to_campaign",
            before: json!({ "CampaignMember": null }),
            after: Value::Object(fields.clone()),
            write: WriteOp::Create {
                object: "CampaignMember".into(),
                fields,
                duplicate_ok: true,
                find_first: None,
                created_after_ms: None,
                only_if: None,
                associate_with: None,
            },
        });
    }
    if let Some(subject) = &actions.create_task {
        let due = chrono::DateTime::from_timestamp_millis(
            as_of + i64::from(actions.task_due_in_days) * DAY_MS,
        )
        .unwrap_or_default()
        .format("%Y-%m-%d")
        .to_string();
        let mut fields = Map::new();
        fields.insert("WhoId".into(), json!(id));
        fields.insert("Subject".into(), json!(subject));
        fields.insert("ActivityDate".into(), json!(due));
        fields.insert("Status".into(), json!("Not Started"));
        fields.insert("Priority".into(), json!("Normal"));
        // The task is for the rep who owned the record (a queue cannot own a task).
        if let Some(owner) = candidate
            .owner_id
            .as_deref()
            .filter(|o| o.starts_with("005"))
        {
            fields.insert("OwnerId".into(), json!(owner));
        }
        let mut find = Map::new();
        find.insert("WhoId".into(), json!(id));
        find.insert("Subject".into(), json!(subject));
        planned.push(PlannedAction {
            action: "create_task",
            before: json!({ "Task": null }),
            after: Value::Object(fields.clone()),
            write: WriteOp::Create {
                object: "Task".into(),
                fields,
                duplicate_ok: false,
                find_first: Some(find),
                // Allow for the CRM's clock running a little behind ours.
                created_after_ms: Some(as_of - CLOCK_SKEW_MS),
                only_if: None,
                associate_with: None,
            },
        });
    }
    planned
}

fn hubspot_actions(policy: &PolicySettings, candidate: &Candidate) -> Vec<PlannedAction> {
    let actions = &policy.actions;
    let object = "contacts";
    let id = candidate.crm_id.as_str();
    let mut planned = Vec::new();
    if let Some(stage) = &actions.set_lifecycle_stage {
        if candidate.lifecycle_stage.as_deref() != Some(stage) {
            let mut write = update(object, id, "lifecyclestage", stage);
            if needs_clearing(candidate.lifecycle_stage.as_deref(), stage) {
                if let WriteOp::Update { clear_first, .. } = &mut write {
                    clear_first.push("lifecyclestage".into());
                }
            }
            planned.push(PlannedAction {
                action: "set_lifecycle_stage",
                before: json!({ "lifecyclestage": candidate.lifecycle_stage }),
                after: json!({ "lifecyclestage": stage }),
                write,
            });
        }
    }
    if let Some(status) = &actions.set_status {
        if candidate.status.as_deref() != Some(status) {
            planned.push(PlannedAction {
                action: "set_status",
                before: json!({ "hs_lead_status": candidate.status }),
                after: json!({ "hs_lead_status": status }),
                write: update(object, id, "hs_lead_status", status),
            });
        }
    }
    if let Some(owner) = &actions.set_owner {
        if candidate.owner_id.as_deref() != Some(owner) {
            planned.push(PlannedAction {
                action: "set_owner",
                before: json!({ "hubspot_owner_id": candidate.owner_id }),
                after: json!({ "hubspot_owner_id": owner }),
                write: update(object, id, "hubspot_owner_id", owner),
            });
        }
    }
    if let Some(list) = &actions.add_to_list {
        planned.push(PlannedAction {
            action: "add_to_list",
            before: json!({ "list": null }),
            after: json!({ "list": list }),
            write: WriteOp::ListAdd {
                list: list.clone(),
                id: id.to_string(),
            },
        });
    }
    planned
}

/// HubSpot moves a lifecycle stage only forward through the API; any other move needs the
/// stage cleared first. Unranked (custom) stages are cleared to be safe.
fn needs_clearing(current: Option<&str>, target: &str) -> bool {
    let rank = |stage: &str| LIFECYCLE_ORDER.iter().position(|s| *s == stage);
    match (current.filter(|c| !c.is_empty()), rank(target)) {
        (None, _) => false,
        (Some(current), Some(to)) => rank(current).is_none_or(|from| to < from),
        (Some(_), None) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::needs_clearing;

    #[test]
    fn only_backward_or_unranked_moves_clear_first() {
        assert!(needs_clearing(Some("marketingqualifiedlead"), "lead"));
        assert!(!needs_clearing(Some("subscriber"), "lead"));
        assert!(!needs_clearing(None, "lead"));
        assert!(needs_clearing(Some("1234567"), "lead"));
    }
}
