//! The generated funnel seen as HubSpot contacts, companies and deals, at any simulated instant.
//!
//! A record is rebuilt from its number each time it is read: the funnel life cut at `now`
//! gives every property version with its time and author, clients' writes from the overlay
//! are merged in, and the calculated properties (modification date, stage flags, stage
//! timing, lifecycle dates) are derived from the result, so they always agree with history.

use std::borrow::Cow;
use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap};

use super::iso;
use super::schema::{self, lifecycle_rank, ObjectType, INDUSTRIES};
use crate::emulator::funnel::{
    Actor, DealChange, DealOrigin, Funnel, LeadChange, LeadLife, LeadStatus, Owner, QualField,
    QualValue, Step, CONVERSION_EVERY, WON,
};
use crate::record::Millis;
use crate::record::DAY_MS;

/// Archived records can be restored this long, then they are purged.
pub(crate) const ARCHIVE_RETENTION_MS: Millis = 90 * DAY_MS;
/// Owner ids of reps start here (`hubspot_owner_id` holds an owner id).
pub(crate) const OWNER_ID_BASE: u64 = 41_629_701;
/// User ids of reps start here (history's `updatedByUserId` holds a user id).
pub(crate) const USER_ID_BASE: u64 = 9_586_501;
/// The admin user who runs imports.
const ADMIN_USER_ID: u64 = 9_586_400;
/// The marketing automation app behind `Actor::Integration` changes.
const MARKETING_APP_ID: &str = "1931140";
/// The workflow behind `Actor::Workflow` changes.
const WORKFLOW_ID: &str = "417220311";
/// The import behind `Actor::Import` changes.
const IMPORT_ID: &str = "58204519";

/// Who wrote a property version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// Someone or something in the generated funnel.
    Actor(Actor),
    /// A client of this emulator, through the private app (or the OAuth app).
    App(u64),
    /// HubSpot itself, recalculating a derived property.
    Calculated,
}

/// One value a property had, from `at` on.
#[derive(Debug, Clone)]
pub(crate) struct Version {
    pub value: String,
    pub at: Millis,
    pub source: Source,
}

/// A client's property write, kept in the overlay.
#[derive(Debug, Clone)]
pub(crate) struct Write {
    pub at: Millis,
    pub property: String,
    pub value: String,
    pub source: Source,
}

/// Everything clients changed on one record.
#[derive(Debug, Clone, Default)]
pub(crate) struct Overlay {
    pub writes: Vec<Write>,
    pub archived_at: Option<Millis>,
}

/// Overlays by object type and record number.
pub(crate) type Overlays = HashMap<(ObjectType, u64), Overlay>;

/// A record as of one instant: every property's versions, oldest first.
#[derive(Debug, Clone)]
pub(crate) struct HsRecord {
    pub object: ObjectType,
    pub number: u64,
    pub created_at: Millis,
    pub modified_at: Millis,
    pub archived_at: Option<Millis>,
    /// Versions by property name; fixed names are borrowed, since records are rebuilt on
    /// every read with dozens of properties each.
    pub props: BTreeMap<Cow<'static, str>, Vec<Version>>,
}

impl HsRecord {
    fn new(object: ObjectType, number: u64, created_at: Millis) -> HsRecord {
        HsRecord {
            object,
            number,
            created_at,
            modified_at: created_at,
            archived_at: None,
            props: BTreeMap::new(),
        }
    }

    pub fn id(&self) -> String {
        self.object.id(self.number)
    }

    /// Adds a version unless the property already holds that value.
    fn set(
        &mut self,
        name: impl Into<Cow<'static, str>>,
        value: impl AsRef<str> + Into<String>,
        at: Millis,
        source: Source,
    ) {
        // One lookup, and the value copied only when it is new: records are rebuilt on every
        // read, with dozens of versions each.
        match self.props.entry(name.into()) {
            Entry::Occupied(mut occupied) => {
                let versions = occupied.get_mut();
                if versions
                    .last()
                    .is_some_and(|last| last.value == value.as_ref())
                {
                    return;
                }
                versions.push(Version {
                    value: value.into(),
                    at,
                    source,
                });
            }
            Entry::Vacant(vacant) => {
                let mut versions = Vec::with_capacity(VERSIONS_AHEAD);
                versions.push(Version {
                    value: value.into(),
                    at,
                    source,
                });
                vacant.insert(versions);
            }
        }
    }

    /// The property's value now, if it ever had one.
    pub fn current(&self, name: &str) -> Option<&str> {
        self.props
            .get(name)
            .and_then(|versions| versions.last())
            .map(|version| version.value.as_str())
    }

    fn advance_lifecycle(&mut self, stage: &'static str, at: Millis, source: Source) {
        let current = self.current("lifecyclestage").and_then(lifecycle_rank);
        if current < lifecycle_rank(stage) {
            self.set("lifecyclestage", stage, at, source);
        }
    }
}

/// Room for versions a property's list starts with, enough for most properties' whole
/// history, so building a record rarely grows one.
const VERSIONS_AHEAD: usize = 4;

/// The owner id a rep's records carry.
pub(crate) fn owner_id(rep: u32) -> u64 {
    OWNER_ID_BASE + u64::from(rep)
}

/// The user id behind a rep.
pub(crate) fn user_id(rep: u32) -> u64 {
    USER_ID_BASE + u64::from(rep)
}

/// `sourceType`, `sourceId` and `updatedByUserId` of a version, as HubSpot reports them.
pub(crate) fn source_fields(source: Source) -> (&'static str, Option<String>, Option<u64>) {
    match source {
        Source::Actor(Actor::Rep(rep)) => (
            "CRM_UI",
            Some(format!("userId:{}", user_id(rep))),
            Some(user_id(rep)),
        ),
        Source::Actor(Actor::Integration) => {
            ("INTEGRATION", Some(MARKETING_APP_ID.to_string()), None)
        }
        Source::Actor(Actor::Workflow) => ("AUTOMATION", Some(WORKFLOW_ID.to_string()), None),
        Source::Actor(Actor::Import) => {
            ("IMPORT", Some(IMPORT_ID.to_string()), Some(ADMIN_USER_ID))
        }
        Source::App(app) => ("INTEGRATION", Some(app.to_string()), None),
        Source::Calculated => ("CALCULATED", None, None),
    }
}

fn seen<C>(steps: &[Step<C>], now: Millis) -> &[Step<C>] {
    &steps[..steps.partition_point(|step| step.at <= now)]
}

/// Day number to the instant HubSpot stores for it: midnight UTC.
fn midnight(day: i32) -> Millis {
    Millis::from(day) * DAY_MS
}

/// Date-only values are written as the calendar date.
fn date_text(day: i32) -> String {
    chrono::DateTime::from_timestamp_millis(midnight(day))
        .map(|at| at.format("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

/// The portal's data at one instant, with clients' changes applied.
pub(crate) struct PortalView<'a> {
    pub funnel: &'a Funnel,
    pub now: Millis,
    pub overlays: &'a Overlays,
}

impl PortalView<'_> {
    /// Record numbers of `object` that may exist now.
    pub fn bound(&self, object: ObjectType) -> u64 {
        match object {
            ObjectType::Contacts => self.funnel.lead_bound(self.now),
            ObjectType::Companies => self.funnel.account_bound(self.now),
            ObjectType::Deals => self.funnel.deal_bound(self.now),
        }
    }

    /// Record `number` as of now, archived or not, unless it does not exist (yet or any more).
    pub fn record(&self, object: ObjectType, number: u64) -> Option<HsRecord> {
        let mut record = match object {
            ObjectType::Contacts => self.contact(number)?,
            ObjectType::Companies => self.company(number)?,
            ObjectType::Deals => self.deal(number)?,
        };
        if let Some(overlay) = self.overlays.get(&(object, number)) {
            apply_overlay(&mut record, overlay, self.now);
        }
        if record
            .archived_at
            .is_some_and(|at| self.now - at > ARCHIVE_RETENTION_MS)
        {
            return None;
        }
        derive(&mut record);
        Some(record)
    }

    /// Record `number` if it exists now and is not archived.
    pub fn live(&self, object: ObjectType, number: u64) -> Option<HsRecord> {
        self.record(object, number)
            .filter(|record| record.archived_at.is_none())
    }

    /// Whether record `number` exists now and is not archived, as [`PortalView::live`] says,
    /// but read off the funnel life without building the record's properties: search and
    /// associations ask it of every candidate.
    pub fn is_live(&self, object: ObjectType, number: u64) -> bool {
        let archived_by_client = self
            .overlays
            .get(&(object, number))
            .and_then(|overlay| overlay.archived_at)
            .is_some_and(|at| at <= self.now);
        if archived_by_client {
            return false;
        }
        match object {
            ObjectType::Contacts => {
                let lead = self.funnel.lead(number);
                lead.created_at <= self.now
                    && !seen(&lead.steps, self.now)
                        .iter()
                        .any(|step| step.change == LeadChange::Deleted)
            }
            ObjectType::Companies => self.company_exists(number),
            ObjectType::Deals => self.funnel.deal(number).is_some_and(|deal| {
                deal.created_at <= self.now
                    && !seen(&deal.steps, self.now)
                        .iter()
                        .any(|step| step.change == DealChange::Deleted)
            }),
        }
    }

    fn contact(&self, number: u64) -> Option<HsRecord> {
        let lead = self.funnel.lead(number);
        if lead.created_at > self.now {
            return None;
        }
        let mut record = HsRecord::new(ObjectType::Contacts, number, lead.created_at);
        let (at, by) = (lead.created_at, Source::Actor(lead.created_by));
        record.set("firstname", lead.first_name, at, by);
        record.set("lastname", lead.last_name, at, by);
        record.set("email", lead.email(), at, by);
        record.set("company", lead.company.as_str(), at, by);
        record.set("jobtitle", lead.title, at, by);
        record.set("createdate", iso(at), at, by);
        // Form and webinar sign-ups arrive as subscribers; everyone else starts as a lead.
        let first_stage = if lead.created_by == Actor::Integration {
            "subscriber"
        } else {
            "lead"
        };
        record.set("lifecyclestage", first_stage, at, by);
        record.set("hs_lead_status", "NEW", at, by);
        if lead.opted_out {
            record.set("hs_email_optout", "true", at, by);
        }
        if let Owner::Rep(rep) = lead.owner {
            record.set("hubspot_owner_id", owner_id(rep).to_string(), at, by);
        }
        let mut end = self.now;
        for step in seen(&lead.steps, self.now) {
            if step.change == LeadChange::Deleted {
                record.archived_at = Some(step.at);
                end = step.at;
                break;
            }
            play_lead_step(&mut record, step);
        }
        if let Some(won_at) = self.won_deal_of(&lead, end) {
            // HubSpot's deal-won automation makes the deal's contact a customer.
            record.advance_lifecycle("customer", won_at, Source::Actor(Actor::Workflow));
        }
        Some(record)
    }

    /// When the deal a converting lead became was won, if it was by `until`.
    fn won_deal_of(&self, lead: &LeadLife, until: Millis) -> Option<Millis> {
        let conversion = lead.conversion()?;
        let deal = self.funnel.deal(2 * conversion)?;
        let mut end = until;
        seen(&deal.steps, until).iter().find_map(|step| {
            if step.change == DealChange::Deleted {
                end = step.at;
            }
            (step.change == DealChange::Stage(WON) && step.at <= end).then_some(step.at)
        })
    }

    /// Converted accounts exist once their lead converted; direct ones from their creation.
    fn company_exists(&self, number: u64) -> bool {
        if self.funnel.account(number).created_at > self.now {
            return false;
        }
        if !number.is_multiple_of(2) {
            return true;
        }
        let lead = self
            .funnel
            .lead((number / 2).saturating_mul(CONVERSION_EVERY));
        seen(&lead.steps, self.now)
            .iter()
            .any(|step| step.change == LeadChange::Converted)
    }

    fn company(&self, number: u64) -> Option<HsRecord> {
        if !self.company_exists(number) {
            return None;
        }
        let account = self.funnel.account(number);
        let mut record = HsRecord::new(ObjectType::Companies, number, account.created_at);
        let (at, by) = (account.created_at, Source::Actor(Actor::Rep(account.owner)));
        record.set("name", account.name.as_str(), at, by);
        let domain = format!(
            "{}.example.com",
            account.name.replace(' ', "").to_lowercase()
        );
        record.set("domain", domain, at, by);
        let industry = crate::emulator::funnel::INDUSTRIES
            .iter()
            .position(|name| *name == account.industry)
            .map_or("COMPUTER_SOFTWARE", |index| INDUSTRIES[index].0);
        record.set("industry", industry, at, by);
        record.set("numberofemployees", account.employees.to_string(), at, by);
        record.set(
            "hubspot_owner_id",
            owner_id(account.owner).to_string(),
            at,
            by,
        );
        record.set("segment", account.segment, at, by);
        record.set("createdate", iso(at), at, by);
        if let Some((when, segment)) = account.resegmented.filter(|(when, _)| *when <= self.now) {
            record.set("segment", segment, when, by);
        }
        Some(record)
    }

    fn deal(&self, number: u64) -> Option<HsRecord> {
        let deal = self.funnel.deal(number)?;
        if deal.created_at > self.now {
            return None;
        }
        let mut record = HsRecord::new(ObjectType::Deals, number, deal.created_at);
        let (at, by) = (deal.created_at, Source::Actor(deal.created_by));
        record.set("dealname", deal.name.as_str(), at, by);
        record.set("pipeline", "default", at, by);
        record.set("dealstage", schema::stage_of(deal.stage).id, at, by);
        record.set("amount", deal.amount.to_string(), at, by);
        record.set("closedate", iso(midnight(deal.close_date)), at, by);
        record.set("createdate", iso(at), at, by);
        record.set("hubspot_owner_id", owner_id(deal.owner).to_string(), at, by);
        let kind = if deal.kind == "New Business" {
            "newbusiness"
        } else {
            "existingbusiness"
        };
        record.set("dealtype", kind, at, by);
        for step in seen(&deal.steps, self.now) {
            let (at, by) = (step.at, Source::Actor(step.by));
            match &step.change {
                DealChange::Stage(ordinal) => {
                    record.set("dealstage", schema::stage_of(*ordinal).id, at, by)
                }
                DealChange::Amount(amount) => record.set("amount", amount.to_string(), at, by),
                DealChange::CloseDate(day) => record.set("closedate", iso(midnight(*day)), at, by),
                DealChange::Qualification(field, value) => record.set(
                    qualification_property(*field),
                    qualification_text(value),
                    at,
                    by,
                ),
                DealChange::LossReason(reason) => record.set("closed_lost_reason", *reason, at, by),
                // A system job that changes no property leaves no trace in HubSpot.
                DealChange::SystemTouch => {}
                DealChange::Deleted => {
                    record.archived_at = Some(at);
                    break;
                }
            }
        }
        Some(record)
    }

    /// Numbers of the live records of `to` associated with record `number` of `from`.
    pub fn associated(&self, from: ObjectType, number: u64, to: ObjectType) -> Vec<u64> {
        let candidates: Vec<u64> = match (from, to) {
            (ObjectType::Deals, ObjectType::Contacts) => match self.deal_origin(number) {
                Some(DealOrigin::Converted(n)) => vec![n.saturating_mul(CONVERSION_EVERY)],
                _ => Vec::new(),
            },
            (ObjectType::Deals, ObjectType::Companies) => match self.deal_origin(number) {
                Some(DealOrigin::Converted(n)) => vec![2 * n],
                Some(DealOrigin::Direct(k)) => vec![2 * (k / 3) + 1],
                None => Vec::new(),
            },
            (ObjectType::Contacts, ObjectType::Companies)
                if number.is_multiple_of(CONVERSION_EVERY) =>
            {
                vec![2 * (number / CONVERSION_EVERY)]
            }
            (ObjectType::Contacts, ObjectType::Deals)
                if number.is_multiple_of(CONVERSION_EVERY) =>
            {
                vec![2 * (number / CONVERSION_EVERY)]
            }
            (ObjectType::Companies, ObjectType::Contacts) if number.is_multiple_of(2) => {
                vec![(number / 2).saturating_mul(CONVERSION_EVERY)]
            }
            (ObjectType::Companies, ObjectType::Deals) if number.is_multiple_of(2) => vec![number],
            (ObjectType::Companies, ObjectType::Deals) => {
                let first = number / 2 * 3;
                (first..first + 3).map(|k| 2 * k + 1).collect()
            }
            _ => Vec::new(),
        };
        candidates
            .into_iter()
            .filter(|&candidate| {
                self.is_live(to, candidate)
                    && (to != ObjectType::Contacts || self.is_live(from, number))
            })
            .collect()
    }

    fn deal_origin(&self, number: u64) -> Option<DealOrigin> {
        self.funnel.deal(number).map(|deal| deal.origin)
    }
}

fn play_lead_step(record: &mut HsRecord, step: &Step<LeadChange>) {
    let (at, by) = (step.at, Source::Actor(step.by));
    match &step.change {
        LeadChange::Status(LeadStatus::New) => record.set("hs_lead_status", "NEW", at, by),
        LeadChange::Status(LeadStatus::Working) => {
            record.set("hs_lead_status", "IN_PROGRESS", at, by);
            record.set("notes_last_contacted", iso(at), at, Source::Calculated);
            record.advance_lifecycle("lead", at, by);
        }
        LeadChange::Status(LeadStatus::Qualified) => {
            record.advance_lifecycle("marketingqualifiedlead", at, by)
        }
        LeadChange::Status(LeadStatus::Meeting) => {
            record.set("hs_lead_status", "CONNECTED", at, by);
            record.set("notes_last_contacted", iso(at), at, Source::Calculated);
            record.advance_lifecycle("salesqualifiedlead", at, by);
        }
        LeadChange::Status(LeadStatus::Converted) | LeadChange::Converted => {
            record.set("hs_lead_status", "OPEN_DEAL", at, by);
            record.advance_lifecycle("opportunity", at, by);
        }
        LeadChange::Status(LeadStatus::Disqualified) | LeadChange::Disqualified(_) => {
            record.set("hs_lead_status", "UNQUALIFIED", at, by)
        }
        LeadChange::Activity => record.set("notes_last_contacted", iso(at), at, Source::Calculated),
        LeadChange::Owner(Owner::Rep(rep)) => {
            record.set("hubspot_owner_id", owner_id(*rep).to_string(), at, by)
        }
        LeadChange::Owner(Owner::Queue(_)) => record.set("hubspot_owner_id", "", at, by),
        LeadChange::Deleted => {}
    }
}

fn qualification_property(field: QualField) -> &'static str {
    match field {
        QualField::Budget => "budget",
        QualField::Authority => "authority",
        QualField::Need => "need",
        QualField::Timeline => "timeline",
        QualField::Competitor => "competitor",
        QualField::DecisionProcess => "decision_process",
    }
}

fn qualification_text(value: &QualValue) -> String {
    match value {
        QualValue::Amount(amount) => amount.to_string(),
        QualValue::Text(text) => text.clone(),
        QualValue::Day(day) => date_text(*day),
    }
}

/// Merges clients' writes into the generated versions, keeping each property in time order.
fn apply_overlay(record: &mut HsRecord, overlay: &Overlay, now: Millis) {
    for write in overlay.writes.iter().filter(|write| write.at <= now) {
        record
            .props
            .entry(Cow::Owned(write.property.clone()))
            .or_default()
            .push(Version {
                value: write.value.clone(),
                at: write.at,
                source: write.source,
            });
    }
    for versions in record.props.values_mut() {
        versions.sort_by_key(|version| version.at);
    }
    if let Some(at) = overlay.archived_at.filter(|&at| at <= now) {
        record.archived_at = Some(record.archived_at.map_or(at, |earlier| earlier.min(at)));
    }
}

/// Computes the calculated properties from the written ones.
fn derive(record: &mut HsRecord) {
    let mut change_times: Vec<Millis> = record
        .props
        .values()
        .flatten()
        .map(|version| version.at)
        .collect();
    change_times.sort_unstable();
    change_times.dedup();
    record.modified_at = change_times
        .last()
        .copied()
        .unwrap_or(record.created_at)
        .max(record.created_at);
    let modified = record.object.modified_property();
    if !change_times.is_empty() {
        // A version per change: one lookup for the run of them rather than one each.
        let versions = record.props.entry(Cow::Borrowed(modified)).or_default();
        for &at in &change_times {
            let value = iso(at);
            if versions.last().is_none_or(|last| last.value != value) {
                versions.push(Version {
                    value,
                    at,
                    source: Source::Calculated,
                });
            }
        }
    }
    let created_at = record.created_at;
    record.set("hs_object_id", record.id(), created_at, Source::Calculated);
    match record.object {
        ObjectType::Deals => derive_stage_properties(record),
        ObjectType::Contacts => derive_lifecycle_dates(record),
        ObjectType::Companies => {}
    }
}

fn derive_lifecycle_dates(record: &mut HsRecord) {
    let entered: Vec<(String, Millis)> = record
        .props
        .get("lifecyclestage")
        .into_iter()
        .flatten()
        .filter(|version| !version.value.is_empty())
        .map(|version| (version.value.clone(), version.at))
        .collect();
    for (stage, at) in entered {
        let name = format!("hs_lifecyclestage_{stage}_date");
        record.set(name, iso(at), at, Source::Calculated);
    }
}

/// A checkbox value as HubSpot writes it.
fn flag(value: bool) -> &'static str {
    if value {
        "true"
    } else {
        "false"
    }
}

/// Stage flags, probability and the `hs_v2_*` stage timing, from the `dealstage` history.
fn derive_stage_properties(record: &mut HsRecord) {
    let stays: Vec<(String, Millis)> = record
        .props
        .get("dealstage")
        .into_iter()
        .flatten()
        .map(|version| (version.value.clone(), version.at))
        .collect();
    // A deal visits a handful of stages: a list beats a hashed map here.
    let mut cumulative: Vec<(&str, Millis)> = Vec::new();
    for (index, (stage_id, entered)) in stays.iter().enumerate() {
        let calc = Source::Calculated;
        if let Some(stage) = schema::stage_by_id(stage_id) {
            record.set("hs_is_closed", flag(stage.closed), *entered, calc);
            let won = stage.closed && stage.probability == "1.0";
            record.set("hs_is_closed_won", flag(won), *entered, calc);
            record.set(
                "hs_deal_stage_probability",
                stage.probability,
                *entered,
                calc,
            );
        }
        record.set(
            format!("hs_v2_date_entered_{stage_id}"),
            iso(*entered),
            *entered,
            calc,
        );
        let Some((_, exited)) = stays.get(index + 1) else {
            continue;
        };
        let stay = exited - entered;
        let total = match cumulative
            .iter_mut()
            .find(|(id, _)| *id == stage_id.as_str())
        {
            Some((_, total)) => {
                *total += stay;
                *total
            }
            None => {
                cumulative.push((stage_id.as_str(), stay));
                stay
            }
        };
        record.set(
            format!("hs_v2_date_exited_{stage_id}"),
            iso(*exited),
            *exited,
            calc,
        );
        record.set(
            format!("hs_v2_latest_time_in_{stage_id}"),
            stay.to_string(),
            *exited,
            calc,
        );
        record.set(
            format!("hs_v2_cumulative_time_in_{stage_id}"),
            total.to_string(),
            *exited,
            calc,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulator::funnel::{Scale, OPEN_STAGES};
    use crate::emulator::DEFAULT_START_MS;

    fn view_at<'a>(funnel: &'a Funnel, overlays: &'a Overlays, now: Millis) -> PortalView<'a> {
        PortalView {
            funnel,
            now,
            overlays,
        }
    }

    fn tiny() -> Funnel {
        Funnel::new(7, Scale::Tiny.shape(), DEFAULT_START_MS)
    }

    #[test]
    fn open_stages_map_monotonically_onto_hubspot_stages() {
        let positions: Vec<usize> = (0..OPEN_STAGES)
            .map(|ordinal| {
                let id = schema::stage_of(ordinal).id;
                STAGES_ORDER.iter().position(|s| *s == id).unwrap()
            })
            .collect();
        assert!(positions.windows(2).all(|pair| pair[0] <= pair[1]));
        assert_eq!(positions.first(), Some(&0));
        assert_eq!(positions.last(), Some(&4));
        assert_eq!(schema::stage_of(WON).id, "closedwon");
    }

    const STAGES_ORDER: &[&str] = &[
        "appointmentscheduled",
        "qualifiedtobuy",
        "presentationscheduled",
        "decisionmakerboughtin",
        "contractsent",
    ];

    #[test]
    fn generated_lifecycle_stages_only_move_forward() {
        let funnel = tiny();
        let overlays = Overlays::new();
        let view = view_at(&funnel, &overlays, DEFAULT_START_MS);
        for number in 0..view.bound(ObjectType::Contacts) {
            let Some(record) = view.record(ObjectType::Contacts, number) else {
                continue;
            };
            let ranks: Vec<usize> = record.props["lifecyclestage"]
                .iter()
                .map(|version| lifecycle_rank(&version.value).unwrap())
                .collect();
            assert!(ranks.windows(2).all(|pair| pair[0] < pair[1]), "{ranks:?}");
        }
    }

    #[test]
    fn modification_time_is_the_latest_version_and_records_are_stable_in_time() {
        let funnel = tiny();
        let overlays = Overlays::new();
        let now = DEFAULT_START_MS;
        let view = view_at(&funnel, &overlays, now);
        let earlier = view_at(&funnel, &overlays, now - 30 * DAY_MS);
        for number in 0..view.bound(ObjectType::Deals) {
            let Some(record) = view.record(ObjectType::Deals, number) else {
                continue;
            };
            let latest = record.props.values().flatten().map(|v| v.at).max().unwrap();
            assert_eq!(record.modified_at, latest);
            if let Some(before) = earlier.record(ObjectType::Deals, number) {
                // The past is a prefix of the present: nothing generated later rewrites it.
                for (name, versions) in &before.props {
                    let now_versions = &record.props[name];
                    assert!(now_versions.len() >= versions.len(), "{name}");
                    for (a, b) in versions.iter().zip(now_versions) {
                        assert_eq!((a.at, &a.value), (b.at, &b.value), "{name}");
                    }
                }
            }
        }
    }

    #[test]
    fn liveness_read_off_lives_agrees_with_built_records() {
        let funnel = tiny();
        let now = DEFAULT_START_MS;
        let mut overlays = Overlays::new();
        for (object, number, at) in [
            (ObjectType::Deals, 3, now - DAY_MS),
            (ObjectType::Contacts, 10, now + DAY_MS),
            (ObjectType::Companies, 1, now),
        ] {
            overlays.insert(
                (object, number),
                Overlay {
                    writes: Vec::new(),
                    archived_at: Some(at),
                },
            );
        }
        for at in [
            now - 90 * DAY_MS,
            now,
            now + 30 * DAY_MS,
            now + 200 * DAY_MS,
        ] {
            let view = view_at(&funnel, &overlays, at);
            for object in [
                ObjectType::Contacts,
                ObjectType::Companies,
                ObjectType::Deals,
            ] {
                for number in 0..view.bound(object) + 5 {
                    assert_eq!(
                        view.is_live(object, number),
                        view.live(object, number).is_some(),
                        "{object:?} {number} at {at}"
                    );
                }
            }
        }
    }

    #[test]
    fn client_writes_merge_in_time_order_and_archive_purges_after_retention() {
        let funnel = tiny();
        let now = DEFAULT_START_MS;
        let mut overlays = Overlays::new();
        overlays.insert(
            (ObjectType::Deals, 0),
            Overlay {
                writes: vec![Write {
                    at: now,
                    property: "competitor".into(),
                    value: "Gong".into(),
                    source: Source::App(1),
                }],
                archived_at: Some(now),
            },
        );
        let view = view_at(&funnel, &overlays, now);
        let record = view.record(ObjectType::Deals, 0).expect("deal 0 exists");
        assert_eq!(record.current("competitor"), Some("Gong"));
        assert_eq!(record.archived_at, Some(now));
        assert!(view.live(ObjectType::Deals, 0).is_none());
        let later = view_at(&funnel, &overlays, now + ARCHIVE_RETENTION_MS + 1);
        assert!(later.record(ObjectType::Deals, 0).is_none());
    }
}
