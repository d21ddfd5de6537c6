//! Which records a policy selects: one SQL statement per policy over the current rows.
//!
//! Everything a policy filters on (kind, age, status, persona, exclusions, cooldown) is a
//! predicate of that statement, so the database does the work on its indexes and planning
//! over a million leads reads only the records that qualify. The statement is built per
//! backend because SQLite and PostgreSQL read JSON fields differently; values always travel
//! as bound parameters.

use serde::Serialize;

use crate::config::settings::{CrmKind, PolicyKind, PolicyObject, PolicySettings, RuleSettings};
use crate::record::Millis;
use crate::record::DAY_MS;
use crate::store::{dispatch, BackendKind, QueryContext, Store, StoreError};

/// Salesforce lead statuses that mean the lead is no longer open.
const SF_CLOSED_STATUSES: &[&str] = &["Closed - Converted", "Closed - Not Converted"];
/// The Salesforce status of a lead nobody has worked yet.
const SF_NEW_STATUS: &str = "Open - Not Contacted";
/// The Salesforce status of a disqualified lead.
const SF_DISQUALIFIED_STATUS: &str = "Closed - Not Converted";
/// HubSpot lead status of a disqualified contact.
const HS_DISQUALIFIED_STATUS: &str = "UNQUALIFIED";
/// HubSpot lead status of a contact nobody has worked yet.
const HS_NEW_STATUS: &str = "NEW";
/// HubSpot lifecycle stages of contacts that are not leads any more.
const HS_CLOSED_LIFECYCLE: &[&str] = &["opportunity", "customer", "evangelist", "other"];

/// A record a policy selected, with what planning needs to know of it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Candidate {
    /// Store id of the record to act on.
    pub record_id: i64,
    /// Its CRM id.
    pub crm_id: String,
    /// `lead` or `contact`.
    pub object_kind: String,
    /// The CRM's object name (`Lead`, `contacts`).
    pub crm_object: String,
    /// Its name.
    pub name: Option<String>,
    /// Current owner.
    pub owner_id: Option<String>,
    /// Current status (Lead Status, `hs_lead_status`).
    pub status: Option<String>,
    /// Current HubSpot lifecycle stage.
    pub lifecycle_stage: Option<String>,
    /// The instant the policy's age counts from (last activity, creation, loss,
    /// disqualification).
    pub since_ms: Millis,
    /// The lost deal that brought the contact in (`lost` policies).
    pub via_deal: Option<String>,
    /// The deal's loss reason (`lost` policies).
    pub loss_reason: Option<String>,
    /// The deal's pipeline (`stalled` policies).
    pub pipeline: Option<String>,
    /// The deal's current stage (`stalled` policies).
    pub stage: Option<String>,
    /// The open stage before it in the pipeline order (`stalled` policies; none for the
    /// first stage).
    pub previous_stage: Option<String>,
    /// The pipeline's closed-lost stage (`stalled` policies).
    pub lost_stage: Option<String>,
    /// The longest healthy dwell in the deal's stage, milliseconds (`stalled` policies).
    pub max_dwell_ms: Option<Millis>,
}

/// The longest healthy dwell in one stage of one pipeline (a stage gate's `max_dwell`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageDwell {
    /// Pipeline id (HubSpot) or `default` / a sales process name (Salesforce).
    pub pipeline: String,
    /// Stage name (Salesforce) or id (HubSpot).
    pub stage: String,
    /// The limit, milliseconds.
    pub max_dwell_ms: Millis,
}

/// The `max_dwell` of every gated stage of `connection`, from its stage-gate rules; where
/// two rules gate the same stage the shorter limit wins.
pub fn stage_dwells(rules: &[RuleSettings], connection: &str) -> Vec<StageDwell> {
    let mut dwells: Vec<StageDwell> = Vec::new();
    for rule in rules.iter().filter(|rule| rule.connection == connection) {
        for gate in &rule.stages {
            let Some(limit) = gate.max_dwell else {
                continue;
            };
            let limit_ms = i64::try_from(limit.as_millis()).unwrap_or(i64::MAX);
            match dwells
                .iter_mut()
                .find(|d| d.pipeline == rule.pipeline && d.stage == gate.stage)
            {
                Some(known) => known.max_dwell_ms = known.max_dwell_ms.min(limit_ms),
                None => dwells.push(StageDwell {
                    pipeline: rule.pipeline.clone(),
                    stage: gate.stage.clone(),
                    max_dwell_ms: limit_ms,
                }),
            }
        }
    }
    dwells
}

/// A bound value of a built statement.
#[derive(Debug, Clone)]
enum Arg {
    Int(i64),
    Text(String),
    Bool(bool),
}

/// A statement under construction: SQL with `$n` placeholders and their values.
#[derive(Debug, Default)]
struct Statement {
    sql: String,
    args: Vec<Arg>,
}

impl Statement {
    fn push(&mut self, sql: &str) -> &mut Self {
        self.sql.push_str(sql);
        self
    }

    fn bind(&mut self, arg: Arg) -> &mut Self {
        self.args.push(arg);
        self.sql.push_str(&format!("${}", self.args.len()));
        self
    }

    fn bind_list(&mut self, values: &[String]) -> &mut Self {
        for (index, value) in values.iter().enumerate() {
            if index > 0 {
                self.push(", ");
            }
            self.bind(Arg::Text(value.clone()));
        }
        self
    }
}

/// How one backend reads a field of the JSON `fields` column as text.
fn json_text(backend: BackendKind, alias: &str, field: &str) -> String {
    debug_assert!(field.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
    match backend {
        BackendKind::Sqlite => format!("CAST(json_extract({alias}.fields, '$.{field}') AS TEXT)"),
        BackendKind::Postgres => format!("({alias}.fields->>'{field}')"),
    }
}

/// A JSON boolean field (Salesforce `true`, HubSpot `"true"`) is set.
fn json_flag(backend: BackendKind, alias: &str, field: &str) -> String {
    match backend {
        // json_extract turns JSON true into 1 and keeps the string "true" as text.
        BackendKind::Sqlite => {
            format!("COALESCE(json_extract({alias}.fields, '$.{field}'), 0) IN (1, 'true')")
        }
        BackendKind::Postgres => format!("COALESCE({alias}.fields->>'{field}', '') = 'true'"),
    }
}

/// The do-not-contact flags of each CRM.
fn do_not_contact_fields(crm: CrmKind) -> &'static [&'static str] {
    match crm {
        CrmKind::Salesforce => &["HasOptedOutOfEmail", "DoNotCall"],
        CrmKind::Hubspot => &["hs_email_optout"],
    }
}

/// The job-title and industry fields of each CRM.
fn persona_fields(crm: CrmKind) -> (&'static str, &'static str) {
    match crm {
        CrmKind::Salesforce => ("Title", "Industry"),
        CrmKind::Hubspot => ("jobtitle", "industry"),
    }
}

/// The loss-reason field of a deal.
fn loss_reason_field(crm: CrmKind) -> &'static str {
    match crm {
        CrmKind::Salesforce => "Loss_Reason__c",
        CrmKind::Hubspot => "closed_lost_reason",
    }
}

/// The person kind a policy acts on: lost deals act on their contacts.
pub fn target_kind(policy: &PolicySettings) -> &'static str {
    match (policy.kind, policy.object) {
        (PolicyKind::Stalled, _) => "deal",
        (_, PolicyObject::Lead) => "lead",
        (_, PolicyObject::Contact | PolicyObject::Deal) => "contact",
    }
}

/// Age at which a policy's records qualify (and alert-first owners are warned). A stalled
/// deal qualifies when it passes its stage's `max_dwell`, so its age counts from there.
pub fn alert_age_days(policy: &PolicySettings) -> u32 {
    if policy.kind == PolicyKind::Stalled {
        0
    } else {
        policy.after_days
    }
}

/// Age a policy waits for before acting: alert-first policies add their grace period.
pub fn action_age_days(policy: &PolicySettings) -> u32 {
    if policy.alert_first {
        alert_age_days(policy) + policy.grace_days
    } else {
        alert_age_days(policy)
    }
}

/// How old the records a selection looks for are.
#[derive(Debug, Clone, Copy)]
pub struct AgeRange {
    /// The age they must have reached, in days.
    pub min_days: u32,
    /// The age they must not have reached, in days (alert-first warnings look at records
    /// past the policy's age but still within its grace period).
    pub below_days: Option<u32>,
}

/// The records `policy` selects on `connection_id` as of `as_of`, oldest first, at most
/// `limit` of them, of an age within `ages`. A `stalled` policy's age is counted beyond
/// the `max_dwell` of the deal's stage (`dwells`).
#[allow(clippy::too_many_arguments)]
pub async fn candidates(
    store: &Store,
    crm: CrmKind,
    connection_id: i64,
    policy: &PolicySettings,
    dwells: &[StageDwell],
    as_of: Millis,
    ages: AgeRange,
    limit: Option<i64>,
) -> Result<Vec<Candidate>, StoreError> {
    let min_age_days = ages.min_days;
    let backend = store.backend();
    let cutoff = as_of - i64::from(min_age_days) * DAY_MS;
    let mut st = Statement::default();
    let (since, via_deal, reason) = match policy.kind {
        PolicyKind::Lost => (
            LOST_SINCE.to_string(),
            "d.crm_id".to_string(),
            json_text(backend, "d", loss_reason_field(crm)),
        ),
        _ => (
            since_expr(policy.kind).to_string(),
            "NULL".to_string(),
            "NULL".to_string(),
        ),
    };
    let deal_stages = if policy.kind == PolicyKind::Stalled {
        format!("r.pipeline, r.stage, {PREVIOUS_STAGE}, {LOST_STAGE}")
    } else {
        "NULL, NULL, NULL, NULL".to_string()
    };
    st.push(&format!(
        "SELECT r.id, r.crm_id, r.object_kind, r.crm_object, r.name, r.owner_id, r.status, \
         r.lifecycle_stage, {since}, {via_deal}, {reason}, {deal_stages} FROM "
    ));
    if policy.kind == PolicyKind::Lost {
        lost_source(&mut st, crm, connection_id);
    } else {
        st.push("records r WHERE r.connection_id = ")
            .bind(Arg::Int(connection_id))
            .push(" AND r.object_kind = ")
            .bind(Arg::Text(target_kind(policy).to_string()));
    }
    st.push(" AND r.deleted_at_ms IS NULL");
    if policy.kind == PolicyKind::Stalled {
        stalled_filter(&mut st, dwells, as_of, ages);
    } else {
        kind_filter(&mut st, backend, crm, policy, cutoff);
    }
    if let (Some(below), false) = (ages.below_days, policy.kind == PolicyKind::Stalled) {
        st.push(&format!(" AND {since} >= "))
            .bind(Arg::Int(as_of - i64::from(below) * DAY_MS));
    }
    exclusions(&mut st, backend, crm, policy, as_of, None);
    st.push(&format!(" ORDER BY {since}, r.id"));
    if let Some(limit) = limit {
        st.push(" LIMIT ").bind(Arg::Int(limit));
    }
    let mut found = fetch(store, st).await?;
    for candidate in &mut found {
        candidate.max_dwell_ms = dwells
            .iter()
            .find(|d| {
                Some(&d.pipeline) == candidate.pipeline.as_ref()
                    && Some(&d.stage) == candidate.stage.as_ref()
            })
            .map(|d| d.max_dwell_ms);
    }
    Ok(found)
}

/// The contacts of a deal a `stalled` policy closes lost, to recycle like a `lost` policy's
/// contacts: the same sources (HubSpot associations, the contacts Salesforce leads converted
/// into the deal became) and the same exclusions, except that the deal being closed does
/// not count as an open deal.
pub async fn deal_contacts(
    store: &Store,
    crm: CrmKind,
    connection_id: i64,
    policy: &PolicySettings,
    deal_record_id: i64,
    as_of: Millis,
) -> Result<Vec<Candidate>, StoreError> {
    let backend = store.backend();
    let mut st = Statement::default();
    st.push(
        "SELECT r.id, r.crm_id, r.object_kind, r.crm_object, r.name, r.owner_id, r.status, \
         r.lifecycle_stage, d.crm_modified_at_ms, d.crm_id, NULL, NULL, NULL, NULL, NULL FROM ",
    );
    lost_source(&mut st, crm, connection_id);
    st.push(" AND d.id = ")
        .bind(Arg::Int(deal_record_id))
        .push(" AND r.deleted_at_ms IS NULL");
    exclusions(&mut st, backend, crm, policy, as_of, Some(deal_record_id));
    st.push(" ORDER BY r.id");
    fetch(store, st).await
}

/// When a deal entered its current stage: its last move into it, else its creation.
const STALLED_SINCE: &str = "COALESCE((SELECT MAX(t.changed_at_ms) FROM stage_transitions t \
     WHERE t.record_id = r.id AND t.to_stage = r.stage), r.crm_created_at_ms, r.crm_modified_at_ms)";

/// The open, active stage just before the deal's stage in its pipeline's order.
const PREVIOUS_STAGE: &str = "(SELECT p.stage FROM stage_definitions p JOIN stage_definitions c \
     ON c.connection_id = p.connection_id AND c.object_kind = p.object_kind AND c.pipeline = p.pipeline \
     AND c.stage = r.stage WHERE p.connection_id = r.connection_id AND p.object_kind = 'deal' \
     AND p.pipeline = r.pipeline AND NOT p.is_closed AND p.is_active AND p.sort_order < c.sort_order \
     ORDER BY p.sort_order DESC LIMIT 1)";

/// The first closed-lost stage of the deal's pipeline.
const LOST_STAGE: &str =
    "(SELECT q.stage FROM stage_definitions q WHERE q.connection_id = r.connection_id \
     AND q.object_kind = 'deal' AND q.pipeline = r.pipeline AND q.is_closed AND NOT q.is_won \
     ORDER BY q.sort_order LIMIT 1)";

/// Open deals in a gated stage longer than its `max_dwell` plus the age asked for (and,
/// for warnings, not yet that plus the upper bound).
fn stalled_filter(st: &mut Statement, dwells: &[StageDwell], as_of: Millis, ages: AgeRange) {
    st.push(" AND NOT r.is_closed AND (");
    if dwells.is_empty() {
        st.push("1 = 0");
    }
    for (index, dwell) in dwells.iter().enumerate() {
        if index > 0 {
            st.push(" OR ");
        }
        let entered_before = as_of - dwell.max_dwell_ms - i64::from(ages.min_days) * DAY_MS;
        st.push("(r.pipeline = ")
            .bind(Arg::Text(dwell.pipeline.clone()))
            .push(" AND r.stage = ")
            .bind(Arg::Text(dwell.stage.clone()))
            .push(&format!(" AND {STALLED_SINCE} < "))
            .bind(Arg::Int(entered_before));
        if let Some(below) = ages.below_days {
            let entered_since = as_of - dwell.max_dwell_ms - i64::from(below) * DAY_MS;
            st.push(&format!(" AND {STALLED_SINCE} >= "))
                .bind(Arg::Int(entered_since));
        }
        st.push(")");
    }
    st.push(")");
}

/// When a lost deal was lost: its last move into its closed stage, else its last change.
const LOST_SINCE: &str = "COALESCE((SELECT MAX(t.changed_at_ms) FROM stage_transitions t \
     WHERE t.record_id = d.id AND t.to_stage = d.stage), d.crm_modified_at_ms)";

/// The instant each kind's age counts from, for leads and contacts.
fn since_expr(kind: PolicyKind) -> &'static str {
    match kind {
        PolicyKind::Stale => {
            "COALESCE(r.last_activity_at_ms, r.crm_created_at_ms, r.crm_modified_at_ms)"
        }
        PolicyKind::Unworked => "COALESCE(r.crm_created_at_ms, r.crm_modified_at_ms)",
        PolicyKind::Disqualified => {
            "COALESCE((SELECT MAX(e.occurred_at_ms) FROM lifecycle_events e \
             WHERE e.record_id = r.id AND e.event = 'disqualified'), r.crm_modified_at_ms)"
        }
        PolicyKind::Stalled => STALLED_SINCE,
        // Lost policies date the deal (LOST_SINCE).
        PolicyKind::Lost => "r.crm_modified_at_ms",
    }
}

/// Contacts of lost deals: HubSpot associations, or for Salesforce the contact each lead
/// converted into the deal became.
fn lost_source(st: &mut Statement, crm: CrmKind, connection_id: i64) {
    match crm {
        CrmKind::Hubspot => {
            st.push(
                "records d JOIN record_links k ON k.connection_id = d.connection_id \
                 AND k.from_kind = 'deal' AND k.from_crm_id = d.crm_id \
                 AND k.relation = 'associated_with' AND k.to_kind = 'contact' AND k.removed_at_ms IS NULL \
                 JOIN records r ON r.connection_id = k.connection_id AND r.object_kind = 'contact' \
                 AND r.crm_id = k.to_crm_id WHERE d.connection_id = ",
            )
            .bind(Arg::Int(connection_id));
        }
        CrmKind::Salesforce => {
            // The lead's two conversion links (kept by the sync) lead to the deal and contact.
            st.push(
                "record_links kd JOIN records d ON d.connection_id = kd.connection_id \
                 AND d.object_kind = 'deal' AND d.crm_id = kd.to_crm_id \
                 JOIN record_links kc ON kc.connection_id = kd.connection_id AND kc.from_kind = 'lead' \
                 AND kc.from_crm_id = kd.from_crm_id AND kc.relation = 'converted_to' AND kc.to_kind = 'contact' \
                 JOIN records r ON r.connection_id = kc.connection_id AND r.object_kind = 'contact' \
                 AND r.crm_id = kc.to_crm_id WHERE kd.connection_id = ",
            )
            .bind(Arg::Int(connection_id))
            .push(
                " AND kd.from_kind = 'lead' AND kd.relation = 'converted_to' AND kd.to_kind = 'deal' \
                 AND kd.removed_at_ms IS NULL AND kc.removed_at_ms IS NULL",
            );
        }
    }
    st.push(" AND d.object_kind = 'deal' AND d.deleted_at_ms IS NULL");
}

/// What makes a record one of the policy's kind, and old enough.
fn kind_filter(
    st: &mut Statement,
    backend: BackendKind,
    crm: CrmKind,
    policy: &PolicySettings,
    cutoff: Millis,
) {
    match policy.kind {
        PolicyKind::Stale => {
            open_person(st, backend, crm);
            st.push(&format!(" AND {} < ", since_expr(PolicyKind::Stale)))
                .bind(Arg::Int(cutoff));
        }
        PolicyKind::Unworked => {
            open_person(st, backend, crm);
            let new_status = match crm {
                CrmKind::Salesforce => SF_NEW_STATUS,
                CrmKind::Hubspot => HS_NEW_STATUS,
            };
            st.push(" AND r.last_activity_at_ms IS NULL AND (r.status IS NULL OR r.status = ")
                .bind(Arg::Text(new_status.to_string()))
                .push(&format!(") AND {} < ", since_expr(PolicyKind::Unworked)))
                .bind(Arg::Int(cutoff));
        }
        PolicyKind::Disqualified => {
            let status = match crm {
                CrmKind::Salesforce => SF_DISQUALIFIED_STATUS,
                CrmKind::Hubspot => HS_DISQUALIFIED_STATUS,
            };
            st.push(" AND r.status = ")
                .bind(Arg::Text(status.to_string()));
            let (title, industry) = persona_fields(crm);
            let lower = |values: &[String]| -> Vec<String> {
                values.iter().map(|v| v.to_lowercase()).collect()
            };
            st.push(" AND (");
            let mut first = true;
            for (field, values) in [
                (title, &policy.persona_titles),
                (industry, &policy.persona_industries),
            ] {
                if values.is_empty() {
                    continue;
                }
                if !first {
                    st.push(" OR ");
                }
                first = false;
                st.push(&format!("LOWER({}) IN (", json_text(backend, "r", field)))
                    .bind_list(&lower(values))
                    .push(")");
            }
            st.push(&format!(
                ") AND {} < ",
                since_expr(PolicyKind::Disqualified)
            ))
            .bind(Arg::Int(cutoff));
        }
        PolicyKind::Lost => {
            st.push(" AND d.is_closed = ")
                .bind(Arg::Bool(true))
                .push(" AND d.is_won = ")
                .bind(Arg::Bool(false))
                .push(&format!(
                    " AND {} IN (",
                    json_text(backend, "d", loss_reason_field(crm))
                ))
                .bind_list(&policy.loss_reasons)
                .push(&format!(") AND {LOST_SINCE} < "))
                .bind(Arg::Int(cutoff));
        }
        // Stalled deals are selected per gated stage by `stalled_filter`; should one get
        // here, it selects nothing rather than records of another kind.
        PolicyKind::Stalled => {
            st.push(" AND 1 = 0");
        }
    }
    // A record already where the policy would put it needs nothing.
    if let Some(status) = &policy.actions.set_status {
        st.push(" AND (r.status IS NULL OR r.status <> ")
            .bind(Arg::Text(status.clone()))
            .push(")");
    }
}

/// An open lead or contact: not converted or disqualified, not a customer.
fn open_person(st: &mut Statement, backend: BackendKind, crm: CrmKind) {
    match crm {
        CrmKind::Salesforce => {
            st.push(&format!(
                " AND NOT ({}) AND (r.status IS NULL OR r.status NOT IN (",
                json_flag(backend, "r", "IsConverted")
            ));
            let closed: Vec<String> = SF_CLOSED_STATUSES.iter().map(|s| s.to_string()).collect();
            st.bind_list(&closed).push("))");
        }
        CrmKind::Hubspot => {
            st.push(" AND (r.status IS NULL OR r.status <> ")
                .bind(Arg::Text(HS_DISQUALIFIED_STATUS.to_string()))
                .push(") AND (r.lifecycle_stage IS NULL OR r.lifecycle_stage NOT IN (");
            let closed: Vec<String> = HS_CLOSED_LIFECYCLE.iter().map(|s| s.to_string()).collect();
            st.bind_list(&closed).push("))");
        }
    }
}

/// Owners, open deals (other than `closing_deal`, which the policy is closing), do-not-contact
/// flags and the cooldown.
fn exclusions(
    st: &mut Statement,
    backend: BackendKind,
    crm: CrmKind,
    policy: &PolicySettings,
    as_of: Millis,
    closing_deal: Option<i64>,
) {
    if !policy.exclude_owners.is_empty() {
        st.push(" AND (r.owner_id IS NULL OR r.owner_id NOT IN (")
            .bind_list(&policy.exclude_owners)
            .push("))");
    }
    if policy.exclude_do_not_contact {
        for field in do_not_contact_fields(crm) {
            st.push(&format!(" AND NOT ({})", json_flag(backend, "r", field)));
        }
    }
    if policy.exclude_open_deals {
        st.push(
            " AND NOT EXISTS (SELECT 1 FROM record_links ok JOIN records od \
             ON od.connection_id = ok.connection_id AND od.object_kind = 'deal' AND od.crm_id = ok.from_crm_id \
             WHERE ok.connection_id = r.connection_id AND ok.to_kind = r.object_kind AND ok.to_crm_id = r.crm_id \
             AND ok.from_kind = 'deal' AND ok.removed_at_ms IS NULL AND od.deleted_at_ms IS NULL AND od.is_closed = ",
        )
        .bind(Arg::Bool(false));
        if let Some(deal) = closing_deal {
            st.push(" AND od.id <> ").bind(Arg::Int(deal));
        }
        st.push(")");
    }
    // Anything recycled (or tried) within the cooldown, by any policy, is left alone; so is a
    // record whose earlier actions still wait in the outbox.
    let cooldown_start = as_of - i64::from(policy.cooldown_days) * DAY_MS;
    st.push(" AND NOT EXISTS (SELECT 1 FROM recycle_actions ra WHERE ra.record_id = r.id AND ra.dry_run = ")
        .bind(Arg::Bool(false))
        .push(" AND (ra.status = 'planned' OR ra.recycled_at_ms >= ")
        .bind(Arg::Int(cooldown_start))
        .push("))");
}

type Row = (
    i64,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    i64,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

async fn fetch(store: &Store, st: Statement) -> Result<Vec<Candidate>, StoreError> {
    let Statement { sql, args } = st;
    let rows: Vec<Row> = dispatch!(store.pool(), pool => {
        let mut query = sqlx::query_as(sqlx::AssertSqlSafe(sql));
        for arg in args {
            query = match arg {
                Arg::Int(value) => query.bind(value),
                Arg::Text(value) => query.bind(value),
                Arg::Bool(value) => query.bind(value),
            };
        }
        query.fetch_all(pool).await
    })
    .during("select recycle candidates")?;
    Ok(rows
        .into_iter()
        .map(|row| Candidate {
            record_id: row.0,
            crm_id: row.1,
            object_kind: row.2,
            crm_object: row.3,
            name: row.4,
            owner_id: row.5,
            status: row.6,
            lifecycle_stage: row.7,
            since_ms: row.8,
            via_deal: row.9,
            loss_reason: row.10,
            pipeline: row.11,
            stage: row.12,
            previous_stage: row.13,
            lost_stage: row.14,
            max_dwell_ms: None,
        })
        .collect())
}
