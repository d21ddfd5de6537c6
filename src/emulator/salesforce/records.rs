//! The generated funnel seen as Salesforce records, at any simulated instant.
//!
//! Record numbers map to ids ([`ids::sf_id`]) so any record can be rebuilt from its id alone:
//! a query keeps only the numbers it matched and rebuilds each page as of the query's time,
//! which gives cursors the snapshot behaviour of real query locators.

use super::ids::{parse_sf_id, sf_id};
use super::schema::{
    self, day_of, FieldType, ObjectDef, SfRecord, SfValue, ACCOUNT, CAMPAIGN, CAMPAIGN_MEMBER,
    CONTACT, GROUP, LEAD, LEAD_HISTORY, LEAD_STATUS, NAME, OPPORTUNITY, OPPORTUNITY_STAGE,
    USER_OBJECT,
};
use super::writes::{self, Entry, Overlay, Write, CREATED_BASE};
use crate::emulator::funnel::{
    Actor, DealChange, DealLife, Funnel, LeadChange, LeadLife, LeadStatus as Lifecycle, Owner,
    QualField, QualValue, Step, CONVERSION_EVERY, QUEUES, WON,
};
use crate::record::Millis;

/// Deleted records stay visible to `queryAll` this long, then leave the recycle bin.
const RECYCLE_BIN_MS: Millis = 15 * 86_400_000;
/// History rows per deal or lead; a life never has more steps than this.
const HISTORY_SLOTS: u64 = 64;
/// LeadHistory shares key prefix 017 with OpportunityFieldHistory; its numbers start here.
const LEAD_HISTORY_BASE: u64 = 1 << 50;
/// Users before the reps: the integration user (pipewarden's own), the automated process and
/// the admin who runs imports.
const SYSTEM_USERS: &[(&str, &str, &str)] = &[
    ("Integration", "User", "Integration"),
    ("Automated", "Process", "System"),
    ("Dana", "Admin", "Operations"),
];

/// Username of the integration user pipewarden's sessions run as (user number 0).
pub(crate) const INTEGRATION_USERNAME: &str = "integration.user0@pipewarden-demo.example.com";

/// One stage of the default sales process.
pub(crate) struct StageDef {
    /// API name and label.
    pub name: &'static str,
    /// Default probability, percent.
    pub probability: f64,
    /// `ForecastCategory` API value.
    pub forecast: &'static str,
    /// `ForecastCategoryName` label.
    pub forecast_name: &'static str,
}

const fn stage(
    name: &'static str,
    probability: f64,
    forecast: &'static str,
    forecast_name: &'static str,
) -> StageDef {
    StageDef {
        name,
        probability,
        forecast,
        forecast_name,
    }
}

/// Stages by funnel ordinal: eight open, then Closed Won and Closed Lost.
pub(crate) const STAGES: &[StageDef] = &[
    stage("Prospecting", 10.0, "Pipeline", "Pipeline"),
    stage("Qualification", 10.0, "Pipeline", "Pipeline"),
    stage("Needs Analysis", 20.0, "Pipeline", "Pipeline"),
    stage("Value Proposition", 50.0, "Pipeline", "Pipeline"),
    stage("Id. Decision Makers", 60.0, "BestCase", "Best Case"),
    stage("Perception Analysis", 70.0, "BestCase", "Best Case"),
    stage("Proposal/Price Quote", 75.0, "Forecast", "Commit"),
    stage("Negotiation/Review", 90.0, "Forecast", "Commit"),
    stage("Closed Won", 100.0, "Closed", "Closed"),
    stage("Closed Lost", 0.0, "Omitted", "Omitted"),
];

/// Lead statuses: label and whether it is the converted one.
pub(crate) const LEAD_STATUSES: &[(&str, bool)] = &[
    ("Open - Not Contacted", false),
    ("Working - Contacted", false),
    ("Marketing Qualified", false),
    ("Meeting Booked", false),
    ("Nurture", false),
    ("Closed - Converted", true),
    ("Closed - Not Converted", false),
];

fn status_label(status: Lifecycle) -> &'static str {
    let index = match status {
        Lifecycle::New => 0,
        Lifecycle::Working => 1,
        Lifecycle::Qualified => 2,
        Lifecycle::Meeting => 3,
        Lifecycle::Converted => 5,
        Lifecycle::Disqualified => 6,
    };
    LEAD_STATUSES[index].0
}

/// Sets the stage and what Salesforce derives from it on an opportunity (or an
/// OpportunityHistory row, which lacks some of these fields): probability (unless the client
/// gave one), expected revenue from the amount, closed and won flags, forecast category.
pub(crate) fn set_stage_fields(record: &mut SfRecord, ordinal: usize, probability: Option<f64>) {
    let stage = &STAGES[ordinal];
    let probability = probability.unwrap_or(stage.probability);
    record.set("StageName", text(stage.name));
    record.set("Probability", decimal(probability));
    if let SfValue::Number(amount) = record.get("Amount").clone() {
        record.set("ExpectedRevenue", decimal(amount * probability / 100.0));
    }
    record.set("IsClosed", SfValue::Bool(ordinal >= WON));
    record.set("IsWon", SfValue::Bool(ordinal == WON));
    record.set("ForecastCategory", text(stage.forecast));
    record.set("ForecastCategoryName", text(stage.forecast_name));
}

/// The funnel ordinal of a stage name.
pub(crate) fn stage_ordinal(name: &str) -> Option<usize> {
    STAGES.iter().position(|stage| stage.name == name)
}

/// The emulated org's data at one instant.
pub(crate) struct OrgView<'a> {
    /// The generated funnel.
    pub funnel: &'a Funnel,
    /// The instant records are seen at.
    pub now: Millis,
    /// Client writes layered over the funnel (none for the generated org alone).
    pub overlay: Option<&'a Overlay>,
    /// Writes after this sequence number are not seen (a cursor's snapshot).
    pub upto_seq: u64,
}

fn text(value: &str) -> SfValue {
    SfValue::Text(value.to_string())
}

/// A text value from a string made for it, moved in rather than copied: ids and names are
/// built for every record of a page.
fn owned(value: String) -> SfValue {
    SfValue::Text(value)
}

fn decimal(value: f64) -> SfValue {
    SfValue::Number(value)
}

fn datetime(ms: Millis) -> SfValue {
    SfValue::DateTime(ms)
}

/// The user id behind an actor.
pub(crate) fn user_id(actor: Actor) -> String {
    let number = match actor {
        Actor::Integration => 0,
        Actor::Workflow => 1,
        Actor::Import => 2,
        Actor::Rep(rep) => u64::from(rep) + SYSTEM_USERS.len() as u64,
    };
    sf_id(USER_OBJECT.key_prefix, number)
}

fn rep_id(rep: u32) -> String {
    user_id(Actor::Rep(rep))
}

fn owner_id(owner: Owner) -> String {
    match owner {
        Owner::Rep(rep) => rep_id(rep),
        Owner::Queue(queue) => sf_id(GROUP.key_prefix, u64::from(queue)),
    }
}

/// Sets the audit fields from creation and the steps seen so far.
fn stamp_audit<C>(record: &mut SfRecord, created_at: Millis, created_by: Actor, seen: &[Step<C>]) {
    record.set("IsDeleted", SfValue::Bool(false));
    record.set("CreatedDate", datetime(created_at));
    record.set("CreatedById", owned(user_id(created_by)));
    // Automated processes bump SystemModstamp only; everyone else LastModifiedDate as well.
    let last_user = seen.iter().rev().find(|step| step.by != Actor::Workflow);
    let (modified_at, modified_by) =
        last_user.map_or((created_at, created_by), |step| (step.at, step.by));
    record.set("LastModifiedDate", datetime(modified_at));
    record.set("LastModifiedById", owned(user_id(modified_by)));
    let modstamp = seen
        .last()
        .map_or(created_at, |step| step.at)
        .max(modified_at);
    record.set("SystemModstamp", datetime(modstamp));
}

/// Whether a record deleted at `deleted_at` has left the recycle bin by `now`.
fn purged(deleted_at: Option<Millis>, now: Millis) -> bool {
    deleted_at.is_some_and(|at| now - at > RECYCLE_BIN_MS)
}

/// What a query's `WHERE` clause bounds `CreatedDate` to (see `soql::Query::created_from` and
/// `created_by`): history scans skip the parents that cannot have rows inside.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CreatedWindow {
    /// No row created before it matches.
    pub from: Option<Millis>,
    /// No row created after it matches.
    pub by: Option<Millis>,
}

impl<'a> OrgView<'a> {
    /// The org at `now`: the funnel with the client writes in `overlay`.
    pub fn over(funnel: &'a Funnel, now: Millis, overlay: &'a Overlay) -> OrgView<'a> {
        OrgView::snapshot(funnel, now, overlay, u64::MAX)
    }

    /// The org at `now` with only the client writes up to sequence number `upto_seq`: what a
    /// query cursor opened at that point sees on every page.
    pub fn snapshot(
        funnel: &'a Funnel,
        now: Millis,
        overlay: &'a Overlay,
        upto_seq: u64,
    ) -> OrgView<'a> {
        OrgView {
            funnel,
            now,
            overlay: Some(overlay),
            upto_seq,
        }
    }

    fn seen<'s, C>(&self, steps: &'s [Step<C>]) -> &'s [Step<C>] {
        let visible = steps.partition_point(|step| step.at <= self.now);
        &steps[..visible]
    }

    /// Record numbers of `object` that may exist now, generated ones first, then those clients
    /// created.
    pub fn numbers(&self, object: &ObjectDef) -> Box<dyn Iterator<Item = u64> + '_> {
        let created = self.created(object.name).iter().copied();
        Box::new(self.generated_numbers(object).chain(created))
    }

    /// Whether lead `number` may have history rows created at or after `from`: a generated
    /// lead's rows are its creation and its life's steps, so a lead whose last step came
    /// before `from` has none, which its life (far cheaper than its rows) tells. Leads a client
    /// created or changed are always looked at.
    fn lead_active_since(&self, number: u64, from: Millis) -> bool {
        // A client-created lead has an entry too.
        if self.entry(LEAD.name, number).is_some() {
            return true;
        }
        let life = self.funnel.lead(number);
        life.steps.last().map_or(life.created_at, |step| step.at) >= from
    }

    /// Numbers of the deals or leads whose history rows may have been created by `created_by`:
    /// a history row is never older than its parent, and generated parents are numbered in the
    /// order they are created, so those created later are skipped without building them.
    fn parents(
        &self,
        object: &ObjectDef,
        created_by: Option<Millis>,
    ) -> Box<dyn Iterator<Item = u64> + '_> {
        let Some(by) = created_by.filter(|by| *by < self.now) else {
            return self.numbers(object);
        };
        let generated = match object.name {
            "Opportunity" => self.funnel.deal_bound(by),
            _ => self.funnel.lead_bound(by),
        };
        let created = self.created(object.name).iter().copied();
        Box::new((0..generated).chain(created))
    }

    fn created(&self, object: &str) -> &[u64] {
        self.overlay.map_or(&[], |overlay| overlay.created(object))
    }

    fn generated_numbers(&self, object: &ObjectDef) -> Box<dyn Iterator<Item = u64> + '_> {
        let funnel = self.funnel;
        let now = self.now;
        match object.name {
            "Opportunity" => Box::new(0..funnel.deal_bound(now)),
            "Lead" | "CampaignMember" => Box::new(0..funnel.lead_bound(now)),
            "Account" | "Contact" => Box::new(0..funnel.account_bound(now)),
            "Campaign" => Box::new(0..funnel.campaign_bound(now)),
            "User" => Box::new(0..SYSTEM_USERS.len() as u64 + u64::from(funnel.shape().reps)),
            "Group" => Box::new(0..QUEUES.len() as u64),
            "OpportunityStage" => Box::new(0..STAGES.len() as u64),
            "LeadStatus" => {
                Box::new(STAGES.len() as u64..(STAGES.len() + LEAD_STATUSES.len()) as u64)
            }
            "OpportunityHistory" | "OpportunityFieldHistory" => {
                Box::new((0..funnel.deal_bound(now)).flat_map(|deal| {
                    (0..HISTORY_SLOTS).map(move |slot| deal * HISTORY_SLOTS + slot)
                }))
            }
            "LeadHistory" => Box::new((0..funnel.lead_bound(now)).flat_map(|lead| {
                (0..HISTORY_SLOTS).map(move |slot| LEAD_HISTORY_BASE + lead * HISTORY_SLOTS + slot)
            })),
            _ => Box::new(std::iter::empty()),
        }
    }

    /// Every record of `object` visible now (deleted ones included: callers filter them for
    /// `query`), in id order. History objects are expanded one parent at a time, leaving out
    /// the parents that cannot have rows inside `created` (the query's `CreatedDate` bounds).
    pub fn scan<'s>(
        &'s self,
        object: &'static ObjectDef,
        created: CreatedWindow,
    ) -> Box<dyn Iterator<Item = (u64, SfRecord)> + 's> {
        let CreatedWindow {
            from,
            by: created_by,
        } = created;
        match object.name {
            "OpportunityHistory" | "OpportunityFieldHistory" => {
                self.history_rows(object, self.parents(&OPPORTUNITY, created_by), 0)
            }
            "LeadHistory" => self.history_rows(
                object,
                self.parents(&LEAD, created_by).filter(move |&lead| {
                    from.is_none_or(|from| self.lead_active_since(lead, from))
                }),
                LEAD_HISTORY_BASE,
            ),
            _ => Box::new(
                self.numbers(object)
                    .filter_map(move |number| self.record(object, number).map(|row| (number, row))),
            ),
        }
    }

    /// The history rows of `parents`, numbered from `base` in `HISTORY_SLOTS` per parent.
    fn history_rows<'s>(
        &'s self,
        object: &'static ObjectDef,
        parents: impl Iterator<Item = u64> + 's,
        base: u64,
    ) -> Box<dyn Iterator<Item = (u64, SfRecord)> + 's> {
        Box::new(parents.flat_map(move |parent| {
            self.history(object, parent)
                .into_iter()
                .enumerate()
                .map(move |(slot, row)| (base + parent * HISTORY_SLOTS + slot as u64, row))
        }))
    }

    /// Record `number` of `object`, if it exists now.
    pub fn record(&self, object: &'static ObjectDef, number: u64) -> Option<SfRecord> {
        match object.name {
            "OpportunityHistory" | "OpportunityFieldHistory" => {
                let rows = self.history(object, number / HISTORY_SLOTS);
                rows.into_iter().nth((number % HISTORY_SLOTS) as usize)
            }
            "LeadHistory" => {
                let local = number.checked_sub(LEAD_HISTORY_BASE)?;
                let rows = self.history(object, local / HISTORY_SLOTS);
                rows.into_iter().nth((local % HISTORY_SLOTS) as usize)
            }
            _ => {
                let mut record = match self.entry(object.name, number) {
                    Some(entry) => self
                        .overlaid(object, number, entry)
                        .map(|(record, _)| record),
                    None => self.generated_record(object, number),
                }?;
                self.refresh_formulas(&mut record);
                Some(record)
            }
        }
    }

    /// Whether record `number` of `object` exists now, and if so whether it is deleted: what a
    /// scan without filter or order needs. Generated opportunities and leads answer from their
    /// life alone, far cheaper than building them; every other record is built.
    pub fn presence(&self, object: &'static ObjectDef, number: u64) -> Option<bool> {
        let generated = self.entry(object.name, number).is_none();
        match object.name {
            "Opportunity" if generated => self
                .deal(number)
                .map(|(_, _, deleted_at)| deleted_at.is_some()),
            "Lead" if generated => self
                .lead_life(number)
                .map(|(_, _, deleted_at)| deleted_at.is_some()),
            _ => self
                .record(object, number)
                .map(|record| matches!(record.get("IsDeleted"), SfValue::Bool(true))),
        }
    }

    /// Formulas read their inputs when the record is read, so they follow a parent's change
    /// (generated or written) without the record's `SystemModstamp` moving.
    fn refresh_formulas(&self, record: &mut SfRecord) {
        if record.object.name != OPPORTUNITY.name {
            return;
        }
        let SfValue::Text(account) = record.get("AccountId") else {
            record.set("Account_Segment__c", SfValue::Null);
            return;
        };
        let segment = match parse_sf_id(account) {
            // A generated account nobody wrote to: read its segment off its life, which is far
            // cheaper than building the whole account.
            Some((_, number))
                if number < CREATED_BASE && self.entry(ACCOUNT.name, number).is_none() =>
            {
                text(self.funnel.account_segment_at(number, self.now))
            }
            _ => self
                .by_id(account, &[ACCOUNT.name])
                .map_or(SfValue::Null, |account| account.get("Segment__c").clone()),
        };
        record.set("Account_Segment__c", segment);
    }

    fn entry(&self, object: &str, number: u64) -> Option<&Entry> {
        self.overlay?.entry(object, number)
    }

    /// The generated org alone, as it was at `at`.
    fn generated_at(&self, at: Millis) -> OrgView<'_> {
        OrgView {
            funnel: self.funnel,
            now: at,
            overlay: None,
            upto_seq: u64::MAX,
        }
    }

    /// A record clients wrote to: its generated (or created) state frozen at the first write,
    /// then the writes made by now. Also returns each applied write with the record before and
    /// after it, for history rows. `None` once it is gone (hard-deleted or purged).
    fn overlaid<'e>(
        &self,
        object: &'static ObjectDef,
        number: u64,
        entry: &'e Entry,
    ) -> Option<(SfRecord, Vec<AppliedWrite<'e>>)> {
        let mut record = match &entry.created {
            Some(created) => {
                let SfValue::DateTime(created_at) = created.get("CreatedDate") else {
                    return None;
                };
                if *created_at > self.now || entry.created_seq > self.upto_seq {
                    return None;
                }
                created.clone()
            }
            None => {
                let cut = entry
                    .freeze_at(self.upto_seq)
                    .map_or(self.now, |at| self.now.min(at - 1));
                self.generated_at(cut).generated_record(object, number)?
            }
        };
        let mut applied = Vec::new();
        let seen = entry
            .writes
            .iter()
            .filter(|write| write.at <= self.now && write.seq <= self.upto_seq);
        for write in seen {
            let before = record.clone();
            writes::apply(&mut record, write);
            if write.delete
                && (object.name == "CampaignMember" || self.now - write.at > RECYCLE_BIN_MS)
            {
                return None;
            }
            applied.push(AppliedWrite {
                write,
                before,
                after: record.clone(),
            });
        }
        Some((record, applied))
    }

    /// History rows of one opportunity or lead: what the generated life recorded up to the
    /// first client write, then a row per tracked change clients made.
    fn history(&self, history: &'static ObjectDef, parent: u64) -> Vec<SfRecord> {
        let parent_object = if history.name == "LeadHistory" {
            &LEAD
        } else {
            &OPPORTUNITY
        };
        let Some(entry) = self.entry(parent_object.name, parent) else {
            return self.generated_history(history, parent);
        };
        let Some((_, applied)) = self.overlaid(parent_object, parent, entry) else {
            return Vec::new();
        };
        let mut rows = match &entry.created {
            Some(created) => vec![creation_row(history, created)],
            None => {
                let cut = entry
                    .freeze_at(self.upto_seq)
                    .map_or(self.now, |at| self.now.min(at - 1));
                self.generated_at(cut).generated_history(history, parent)
            }
        };
        for applied in &applied {
            rows.extend(write_rows(history, applied, |id| self.owner_name_of(id)));
        }
        rows.truncate(HISTORY_SLOTS as usize);
        let slot_base = match history.name {
            "LeadHistory" => LEAD_HISTORY_BASE + parent * HISTORY_SLOTS,
            _ => parent * HISTORY_SLOTS,
        };
        for (slot, row) in rows.iter_mut().enumerate() {
            row.set(
                "Id",
                owned(sf_id(history.key_prefix, slot_base + slot as u64)),
            );
        }
        rows
    }

    /// The instants record `number` changed at up to now: creation, each generated step before
    /// its first client write, then each write. Ground truth reads a version at each.
    pub fn change_times(&self, object: &'static ObjectDef, number: u64) -> Vec<Millis> {
        let entry = self.entry(object.name, number);
        let freeze = entry
            .and_then(|entry| entry.freeze_at(self.upto_seq))
            .unwrap_or(Millis::MAX);
        let mut times: Vec<Millis> = match entry.and_then(|entry| entry.created.as_ref()) {
            Some(created) => match created.get("CreatedDate") {
                SfValue::DateTime(at) => vec![*at],
                _ => Vec::new(),
            },
            None => self.generated_change_times(object, number),
        };
        times.retain(|at| *at < freeze && *at <= self.now);
        if let Some(entry) = entry {
            times.extend(
                entry
                    .writes
                    .iter()
                    .filter(|write| write.at <= self.now && write.seq <= self.upto_seq)
                    .map(|write| write.at),
            );
        }
        times.sort_unstable();
        times.dedup();
        times
    }

    fn generated_change_times(&self, object: &'static ObjectDef, number: u64) -> Vec<Millis> {
        match object.name {
            "Opportunity" => self.funnel.deal(number).map_or_else(Vec::new, |deal| {
                std::iter::once(deal.created_at)
                    .chain(deal.steps.iter().map(|step| step.at))
                    .collect()
            }),
            "Lead" | "CampaignMember" => {
                let lead = self.funnel.lead(number);
                std::iter::once(lead.created_at)
                    .chain(lead.steps.iter().map(|step| step.at))
                    .collect()
            }
            "Account" | "Contact" => {
                let account = self.funnel.account(number);
                std::iter::once(account.created_at)
                    .chain(account.resegmented.map(|(at, _)| at))
                    .collect()
            }
            "OpportunityHistory" | "OpportunityFieldHistory" | "LeadHistory" => {
                self.history_row_change_times(object, number)
            }
            _ => self
                .generated_record_created(object, number)
                .into_iter()
                .collect(),
        }
    }

    /// A history row never changes, except that it goes to the recycle bin with its parent:
    /// its versions are its creation and, if the parent is deleted, the deletion.
    fn history_row_change_times(&self, object: &'static ObjectDef, number: u64) -> Vec<Millis> {
        let Some(row) = self.record(object, number) else {
            return Vec::new();
        };
        let mut times: Vec<Millis> = match row.get("CreatedDate") {
            SfValue::DateTime(at) => vec![*at],
            _ => Vec::new(),
        };
        if matches!(row.get("IsDeleted"), SfValue::Bool(true)) {
            let (parent_field, parent_object) = if object.name == "LeadHistory" {
                ("LeadId", LEAD.name)
            } else {
                ("OpportunityId", OPPORTUNITY.name)
            };
            let deleted_at = match row.get(parent_field) {
                SfValue::Text(parent) => self.by_id(parent, &[parent_object]).and_then(|parent| {
                    match parent.get("SystemModstamp") {
                        SfValue::DateTime(at) => Some(*at),
                        _ => None,
                    }
                }),
                _ => None,
            };
            times.extend(deleted_at);
        }
        times
    }

    /// When a record without a generated life of its own was created (metadata, users,
    /// campaigns, history rows: each has one version).
    fn generated_record_created(&self, object: &'static ObjectDef, number: u64) -> Option<Millis> {
        match self.record(object, number)?.get("CreatedDate") {
            SfValue::DateTime(at) => Some(*at),
            _ => None,
        }
    }

    /// Whether the generated campaign membership of a lead links these two ids.
    pub fn is_generated_member(&self, campaign_id: &str, person_id: &str) -> bool {
        let (Some((_, campaign)), Some((prefix, lead))) =
            (parse_sf_id(campaign_id), parse_sf_id(person_id))
        else {
            return false;
        };
        prefix == LEAD.key_prefix
            && lead < CREATED_BASE
            && self.record(&CAMPAIGN_MEMBER, lead).is_some()
            && self.funnel.lead(lead).campaign == Some(campaign)
    }

    fn generated_history(&self, history: &'static ObjectDef, parent: u64) -> Vec<SfRecord> {
        match history.name {
            "LeadHistory" => self.lead_history(parent),
            _ => self.deal_history(history, parent),
        }
    }

    fn generated_record(&self, object: &'static ObjectDef, number: u64) -> Option<SfRecord> {
        match object.name {
            "Opportunity" => self.opportunity(number),
            "Lead" => self.lead(number),
            "Account" => self.account(number),
            "Contact" => self.contact(number),
            "Campaign" => self.campaign(number),
            "CampaignMember" => self.campaign_member(number),
            "User" => self.user(number),
            "Group" => self.group(number),
            "OpportunityStage" => self.opportunity_stage(number),
            "LeadStatus" => self.lead_status(number),
            _ => None,
        }
    }

    /// The record with this id among objects `targets`, if it exists now.
    pub fn by_id(&self, id: &str, targets: &[&str]) -> Option<SfRecord> {
        let object = schema::object_for_id(id, targets)?;
        let (_, number) = parse_sf_id(id)?;
        self.record(object, number)
    }

    /// What a polymorphic lookup shows of the user or queue behind `id`.
    pub fn name_record(&self, id: &str) -> Option<SfRecord> {
        let target = self.by_id(id, &["User", "Group"])?;
        let mut name = SfRecord::empty(&NAME);
        for field in [
            "Id",
            "Name",
            "Alias",
            "Email",
            "FirstName",
            "LastName",
            "IsActive",
            "Title",
            "Username",
        ] {
            name.set(field, target.get(field).clone());
        }
        let kind = match target.object.name {
            "Group" => "Queue",
            other => other,
        };
        name.set("Type", text(kind));
        Some(name)
    }

    /// How much of a life is visible now: the number of steps taken and when it was deleted,
    /// if it was. `None` before its creation and once it has left the recycle bin.
    fn visible<C: PartialEq>(
        &self,
        created_at: Millis,
        steps: &[Step<C>],
        deleted: &C,
    ) -> Option<(usize, Option<Millis>)> {
        if created_at > self.now {
            return None;
        }
        let visible = self.seen(steps).len();
        let deleted_at = steps[..visible]
            .iter()
            .find(|step| step.change == *deleted)
            .map(|step| step.at);
        if purged(deleted_at, self.now) {
            return None;
        }
        Some((visible, deleted_at))
    }

    fn deal(&self, number: u64) -> Option<(DealLife, usize, Option<Millis>)> {
        let deal = self.funnel.deal(number)?;
        let (visible, deleted_at) =
            self.visible(deal.created_at, &deal.steps, &DealChange::Deleted)?;
        Some((deal, visible, deleted_at))
    }

    fn opportunity(&self, number: u64) -> Option<SfRecord> {
        let (deal, visible, deleted_at) = self.deal(number)?;
        let state = DealState::replay(&deal, &deal.steps[..visible]);
        let mut record = SfRecord::empty(&OPPORTUNITY);
        record.set("Id", owned(sf_id(OPPORTUNITY.key_prefix, number)));
        record.set("AccountId", owned(sf_id(ACCOUNT.key_prefix, deal.account)));
        record.set("Name", text(&deal.name));
        record.set("Amount", number_of(state.amount));
        record.set("CloseDate", SfValue::Date(state.close_date));
        record.set("Type", text(deal.kind));
        record.set("LeadSource", text(deal.source));
        set_stage_fields(&mut record, state.stage, None);
        record.set(
            "CampaignId",
            SfValue::text(
                deal.campaign
                    .map(|c| sf_id(CAMPAIGN.key_prefix, c))
                    .as_deref(),
            ),
        );
        record.set("HasOpenActivity", SfValue::Bool(state.stage < WON));
        record.set("OwnerId", owned(rep_id(deal.owner)));
        record.set(
            "LastActivityDate",
            SfValue::Date(day_of(state.last_activity)),
        );
        let (year, quarter) = fiscal(state.close_date);
        record.set("FiscalYear", decimal(f64::from(year)));
        record.set("FiscalQuarter", decimal(f64::from(quarter)));
        for (field, value) in &state.qualification {
            record.set(qualification_field(*field), qualification_value(value));
        }
        record.set("Loss_Reason__c", SfValue::text(state.loss_reason));
        stamp_audit(
            &mut record,
            deal.created_at,
            deal.created_by,
            &deal.steps[..visible],
        );
        record.set("IsDeleted", SfValue::Bool(deleted_at.is_some()));
        Some(record)
    }

    /// OpportunityHistory rows (one at creation and one per change of stage, amount or close
    /// date) or OpportunityFieldHistory rows (`created`, then one per tracked field change).
    fn deal_history(&self, object: &'static ObjectDef, number: u64) -> Vec<SfRecord> {
        let Some((deal, visible, deleted_at)) = self.deal(number) else {
            return Vec::new();
        };
        let steps = &deal.steps[..visible];
        let mut rows = Vec::new();
        let mut state = DealState::replay(&deal, &[]);
        let opportunity_id = sf_id(OPPORTUNITY.key_prefix, number);
        let field_history = object.name == "OpportunityFieldHistory";
        let push =
            |rows: &mut Vec<SfRecord>, at: Millis, by: Actor, fill: &dyn Fn(&mut SfRecord)| {
                let mut row = SfRecord::empty(object);
                let slot = number * HISTORY_SLOTS + rows.len() as u64;
                row.set("Id", owned(sf_id(object.key_prefix, slot)));
                row.set("OpportunityId", text(&opportunity_id));
                row.set("CreatedById", owned(user_id(by)));
                row.set("CreatedDate", datetime(at));
                row.set("SystemModstamp", datetime(at));
                row.set("IsDeleted", SfValue::Bool(deleted_at.is_some()));
                fill(&mut row);
                rows.push(row);
            };
        if field_history {
            push(&mut rows, deal.created_at, deal.created_by, &|row| {
                row.set("Field", text("created"))
            });
        } else {
            let snapshot = state.clone();
            push(&mut rows, deal.created_at, deal.created_by, &|row| {
                snapshot.fill_history(row, None)
            });
        }
        for step in steps {
            let before = state.clone();
            state.apply(&step.change, step.at);
            if step.at <= deal.created_at || rows.len() as u64 >= HISTORY_SLOTS {
                continue;
            }
            if field_history {
                if let Some((field, kind, old, new)) = tracked_change(&before, &state, &step.change)
                {
                    push(&mut rows, step.at, step.by, &|row| {
                        row.set("Field", text(field));
                        row.set("DataType", text(kind));
                        row.set("OldValue", old.clone());
                        row.set("NewValue", new.clone());
                    });
                }
            } else if matches!(
                step.change,
                DealChange::Stage(_) | DealChange::Amount(_) | DealChange::CloseDate(_)
            ) {
                let snapshot = state.clone();
                push(&mut rows, step.at, step.by, &|row| {
                    snapshot.fill_history(row, Some(&before))
                });
            }
        }
        rows
    }

    fn lead_life(&self, number: u64) -> Option<(LeadLife, usize, Option<Millis>)> {
        let lead = self.funnel.lead(number);
        let (visible, deleted_at) =
            self.visible(lead.created_at, &lead.steps, &LeadChange::Deleted)?;
        Some((lead, visible, deleted_at))
    }

    fn lead(&self, number: u64) -> Option<SfRecord> {
        let (lead, visible, deleted_at) = self.lead_life(number)?;
        let steps = &lead.steps[..visible];
        let mut record = SfRecord::empty(&LEAD);
        record.set("Id", owned(sf_id(LEAD.key_prefix, number)));
        record.set("FirstName", text(lead.first_name));
        record.set("LastName", text(lead.last_name));
        record.set(
            "Name",
            owned(format!("{} {}", lead.first_name, lead.last_name)),
        );
        record.set("Title", text(lead.title));
        record.set("Company", text(&lead.company));
        record.set("Email", owned(lead.email()));
        record.set("Industry", text(lead.industry));
        record.set("LeadSource", text(lead.source));
        record.set("HasOptedOutOfEmail", SfValue::Bool(lead.opted_out));
        record.set("IsConverted", SfValue::Bool(false));
        let mut status = Lifecycle::New;
        let mut owner = lead.owner;
        let mut unread = true;
        for step in steps {
            match &step.change {
                LeadChange::Status(next) => {
                    status = *next;
                    unread = false;
                    record.set("LastActivityDate", SfValue::Date(day_of(step.at)));
                }
                LeadChange::Activity => {
                    record.set("LastActivityDate", SfValue::Date(day_of(step.at)))
                }
                LeadChange::Owner(next) => {
                    owner = *next;
                    unread = true;
                }
                LeadChange::Disqualified(reason) => {
                    status = Lifecycle::Disqualified;
                    record.set("Disqualification_Reason__c", text(reason));
                }
                LeadChange::Converted => {
                    status = Lifecycle::Converted;
                    let conversion = lead.conversion().unwrap_or_default();
                    record.set("IsConverted", SfValue::Bool(true));
                    record.set("ConvertedDate", SfValue::Date(day_of(step.at)));
                    record.set(
                        "ConvertedAccountId",
                        owned(sf_id(ACCOUNT.key_prefix, 2 * conversion)),
                    );
                    record.set(
                        "ConvertedContactId",
                        owned(sf_id(CONTACT.key_prefix, 2 * conversion)),
                    );
                    record.set(
                        "ConvertedOpportunityId",
                        owned(sf_id(OPPORTUNITY.key_prefix, 2 * conversion)),
                    );
                }
                LeadChange::Deleted => {}
            }
        }
        record.set("Status", text(status_label(status)));
        record.set("OwnerId", owned(owner_id(owner)));
        record.set("IsUnreadByOwner", SfValue::Bool(unread));
        stamp_audit(&mut record, lead.created_at, lead.created_by, steps);
        record.set("IsDeleted", SfValue::Bool(deleted_at.is_some()));
        Some(record)
    }

    /// LeadHistory: `created`, status and owner changes (owner as two rows, ids then names,
    /// as orgs record lookups), disqualification reasons and `leadConverted`.
    fn lead_history(&self, number: u64) -> Vec<SfRecord> {
        let Some((lead, visible, deleted_at)) = self.lead_life(number) else {
            return Vec::new();
        };
        let lead_id = sf_id(LEAD.key_prefix, number);
        let mut rows: Vec<SfRecord> = Vec::new();
        let add = |rows: &mut Vec<SfRecord>,
                   at: Millis,
                   by: Actor,
                   field: &str,
                   kind: &str,
                   old: SfValue,
                   new: SfValue| {
            if rows.len() as u64 >= HISTORY_SLOTS {
                return;
            }
            let mut row = SfRecord::empty(&LEAD_HISTORY);
            let slot = LEAD_HISTORY_BASE + number * HISTORY_SLOTS + rows.len() as u64;
            row.set("Id", owned(sf_id(LEAD_HISTORY.key_prefix, slot)));
            row.set("LeadId", text(&lead_id));
            row.set("CreatedById", owned(user_id(by)));
            row.set("CreatedDate", datetime(at));
            row.set("IsDeleted", SfValue::Bool(deleted_at.is_some()));
            row.set("Field", text(field));
            row.set("DataType", text(kind));
            row.set("OldValue", old);
            row.set("NewValue", new);
            rows.push(row);
        };
        add(
            &mut rows,
            lead.created_at,
            lead.created_by,
            "created",
            "Text",
            SfValue::Null,
            SfValue::Null,
        );
        let mut status = Lifecycle::New;
        let mut owner = lead.owner;
        for step in &lead.steps[..visible] {
            let (at, by) = (step.at, step.by);
            match &step.change {
                LeadChange::Status(next) => {
                    add(
                        &mut rows,
                        at,
                        by,
                        "Status",
                        "Picklist",
                        text(status_label(status)),
                        text(status_label(*next)),
                    );
                    status = *next;
                }
                LeadChange::Owner(next) => {
                    add(
                        &mut rows,
                        at,
                        by,
                        "Owner",
                        "EntityId",
                        owned(owner_id(owner)),
                        owned(owner_id(*next)),
                    );
                    let old_name = self.owner_name(owner);
                    let new_name = self.owner_name(*next);
                    add(&mut rows, at, by, "Owner", "Text", old_name, new_name);
                    owner = *next;
                }
                LeadChange::Disqualified(reason) => {
                    let closed = Lifecycle::Disqualified;
                    add(
                        &mut rows,
                        at,
                        by,
                        "Status",
                        "Picklist",
                        text(status_label(status)),
                        text(status_label(closed)),
                    );
                    add(
                        &mut rows,
                        at,
                        by,
                        "Disqualification_Reason__c",
                        "Picklist",
                        SfValue::Null,
                        text(reason),
                    );
                    status = closed;
                }
                LeadChange::Converted => {
                    add(
                        &mut rows,
                        at,
                        by,
                        "leadConverted",
                        "Text",
                        SfValue::Null,
                        SfValue::Null,
                    );
                    add(
                        &mut rows,
                        at,
                        by,
                        "Status",
                        "Picklist",
                        text(status_label(status)),
                        text(status_label(Lifecycle::Converted)),
                    );
                    status = Lifecycle::Converted;
                }
                LeadChange::Activity | LeadChange::Deleted => {}
            }
        }
        rows
    }

    /// The name of the user or queue behind an owner id.
    fn owner_name_of(&self, id: &SfValue) -> SfValue {
        match id {
            SfValue::Text(id) => self
                .name_record(id)
                .map_or(SfValue::Null, |owner| owner.get("Name").clone()),
            _ => SfValue::Null,
        }
    }

    fn owner_name(&self, owner: Owner) -> SfValue {
        match owner {
            Owner::Queue(queue) => text(QUEUES[queue as usize]),
            Owner::Rep(rep) => self
                .user(u64::from(rep) + SYSTEM_USERS.len() as u64)
                .map_or(SfValue::Null, |user| user.get("Name").clone()),
        }
    }

    fn account(&self, number: u64) -> Option<SfRecord> {
        let account = self.funnel.account(number);
        if account.created_at > self.now || !self.account_in_use(number) {
            return None;
        }
        let mut record = SfRecord::empty(&ACCOUNT);
        record.set("Id", owned(sf_id(ACCOUNT.key_prefix, number)));
        record.set("Name", text(&account.name));
        record.set(
            "Type",
            text(if number.is_multiple_of(2) {
                "Prospect"
            } else {
                "Customer"
            }),
        );
        record.set("Industry", text(account.industry));
        record.set("NumberOfEmployees", number_of(i64::from(account.employees)));
        record.set(
            "AnnualRevenue",
            number_of(i64::from(account.employees) * 150_000),
        );
        record.set("OwnerId", owned(rep_id(account.owner)));
        record.set("Segment__c", text(account.segment_at(self.now)));
        let changes: Vec<Step<()>> = account
            .resegmented
            .filter(|(at, _)| *at <= self.now)
            .map(|(at, _)| Step {
                at,
                by: Actor::Rep(account.owner),
                change: (),
            })
            .into_iter()
            .collect();
        stamp_audit(
            &mut record,
            account.created_at,
            Actor::Rep(account.owner),
            &changes,
        );
        Some(record)
    }

    /// Converted accounts exist once their lead converted; direct ones once their first deal
    /// is near.
    fn account_in_use(&self, number: u64) -> bool {
        if number % 2 == 1 {
            return true;
        }
        let lead = self
            .funnel
            .lead((number / 2).saturating_mul(CONVERSION_EVERY));
        lead.steps
            .iter()
            .any(|step| step.change == LeadChange::Converted && step.at <= self.now)
    }

    fn contact(&self, number: u64) -> Option<SfRecord> {
        let account = self.account(number)?;
        let mut record = SfRecord::empty(&CONTACT);
        let (first, last, title, email, source, opted_out) = if number.is_multiple_of(2) {
            let lead = self
                .funnel
                .lead((number / 2).saturating_mul(CONVERSION_EVERY));
            (
                lead.first_name,
                lead.last_name,
                lead.title,
                lead.email(),
                lead.source,
                lead.opted_out,
            )
        } else {
            let first = Funnel::contact_first_name(number);
            let last = Funnel::contact_last_name(number);
            let email = format!(
                "{}.{}{}@customer.example.com",
                first.to_lowercase(),
                last.to_lowercase(),
                number
            );
            (
                first,
                last,
                "Director of Operations",
                email,
                "Existing Customer",
                false,
            )
        };
        record.set("Id", owned(sf_id(CONTACT.key_prefix, number)));
        record.set("AccountId", account.get("Id").clone());
        record.set("FirstName", text(first));
        record.set("LastName", text(last));
        record.set("Name", owned(format!("{first} {last}")));
        record.set("Title", text(title));
        record.set("Email", text(&email));
        record.set("LeadSource", text(source));
        record.set("OwnerId", account.get("OwnerId").clone());
        record.set("HasOptedOutOfEmail", SfValue::Bool(opted_out));
        for field in [
            "IsDeleted",
            "CreatedDate",
            "CreatedById",
            "LastModifiedDate",
            "LastModifiedById",
            "SystemModstamp",
        ] {
            record.set(field, account.get(field).clone());
        }
        Some(record)
    }

    fn campaign(&self, number: u64) -> Option<SfRecord> {
        let campaign = self.funnel.campaign(number);
        if campaign.created_at > self.now {
            return None;
        }
        let start = day_of(campaign.created_at);
        let end = start + campaign.days;
        let today = day_of(self.now);
        let status = if today > end {
            "Completed"
        } else {
            "In Progress"
        };
        let mut record = SfRecord::empty(&CAMPAIGN);
        record.set("Id", owned(sf_id(CAMPAIGN.key_prefix, number)));
        record.set("Name", text(&campaign.name));
        record.set("Type", text(campaign.kind));
        record.set("Status", text(status));
        record.set("StartDate", SfValue::Date(start));
        record.set("EndDate", SfValue::Date(end));
        record.set("IsActive", SfValue::Bool(today <= end));
        record.set("BudgetedCost", number_of(campaign.budget));
        record.set("ActualCost", number_of(campaign.budget * 9 / 10));
        record.set("OwnerId", owned(user_id(Actor::Import)));
        stamp_audit::<()>(&mut record, campaign.created_at, Actor::Import, &[]);
        Some(record)
    }

    /// The membership lead `number` got in its campaign; hard-deleted with the lead.
    fn campaign_member(&self, number: u64) -> Option<SfRecord> {
        let (lead, visible, deleted_at) = self.lead_life(number)?;
        let campaign = lead.campaign?;
        if deleted_at.is_some() {
            return None;
        }
        let responded = lead.steps[..visible]
            .iter()
            .find(|step| matches!(step.change, LeadChange::Status(_)));
        let lead_id = sf_id(LEAD.key_prefix, number);
        let mut record = SfRecord::empty(&CAMPAIGN_MEMBER);
        record.set("Id", owned(sf_id(CAMPAIGN_MEMBER.key_prefix, number)));
        record.set("CampaignId", owned(sf_id(CAMPAIGN.key_prefix, campaign)));
        record.set("LeadId", text(&lead_id));
        record.set(
            "Status",
            text(if responded.is_some() {
                "Responded"
            } else {
                "Sent"
            }),
        );
        record.set("HasResponded", SfValue::Bool(responded.is_some()));
        record.set(
            "FirstRespondedDate",
            responded.map_or(SfValue::Null, |step| SfValue::Date(day_of(step.at))),
        );
        record.set("LeadOrContactId", text(&lead_id));
        record.set("LeadOrContactOwnerId", owned(owner_id(lead.owner)));
        let touched: Vec<&Step<LeadChange>> = responded.into_iter().collect();
        let changes: Vec<Step<()>> = touched
            .iter()
            .map(|step| Step {
                at: step.at,
                by: Actor::Integration,
                change: (),
            })
            .collect();
        stamp_audit(&mut record, lead.created_at, Actor::Integration, &changes);
        Some(record)
    }

    fn user(&self, number: u64) -> Option<SfRecord> {
        let system = SYSTEM_USERS.len() as u64;
        let (first, last, department, title) = match SYSTEM_USERS.get(number as usize) {
            Some((first, last, department)) => (*first, *last, *department, "System"),
            None => {
                let rep = self.funnel.reps().nth((number - system) as usize)?;
                (rep.first_name, rep.last_name, rep.team, "Account Executive")
            }
        };
        let mut record = SfRecord::empty(&USER_OBJECT);
        let alias: String = first.chars().take(1).chain(last.chars().take(4)).collect();
        let username = format!(
            "{}.{}{}@pipewarden-demo.example.com",
            first.to_lowercase(),
            last.to_lowercase(),
            number
        );
        record.set("Id", owned(sf_id(USER_OBJECT.key_prefix, number)));
        record.set("Username", text(&username));
        record.set("FirstName", text(first));
        record.set("LastName", text(last));
        record.set("Name", owned(format!("{first} {last}")));
        record.set("Alias", owned(alias.to_lowercase()));
        record.set("Email", text(&username));
        record.set("IsActive", SfValue::Bool(true));
        record.set("Department", text(department));
        record.set("Title", text(title));
        // The Automated Process user is how Salesforce attributes what flows and workflow
        // rules change.
        let user_type = if number == 1 {
            "AutomatedProcess"
        } else {
            "Standard"
        };
        record.set("UserType", text(user_type));
        stamp_audit::<()>(&mut record, self.funnel.origin(), Actor::Import, &[]);
        Some(record)
    }

    fn group(&self, number: u64) -> Option<SfRecord> {
        let name = QUEUES.get(number as usize)?;
        let mut record = SfRecord::empty(&GROUP);
        record.set("Id", owned(sf_id(GROUP.key_prefix, number)));
        record.set("Name", text(name));
        record.set("DeveloperName", owned(name.replace(' ', "_")));
        record.set("Type", text("Queue"));
        stamp_audit::<()>(&mut record, self.funnel.origin(), Actor::Import, &[]);
        Some(record)
    }

    fn opportunity_stage(&self, number: u64) -> Option<SfRecord> {
        let stage = STAGES.get(number as usize)?;
        let mut record = SfRecord::empty(&OPPORTUNITY_STAGE);
        record.set("Id", owned(sf_id(OPPORTUNITY_STAGE.key_prefix, number)));
        record.set("MasterLabel", text(stage.name));
        record.set("ApiName", text(stage.name));
        record.set("IsActive", SfValue::Bool(true));
        record.set("SortOrder", number_of(number as i64 + 1));
        record.set("IsClosed", SfValue::Bool(number as usize >= WON));
        record.set("IsWon", SfValue::Bool(number as usize == WON));
        record.set("ForecastCategory", text(stage.forecast));
        record.set("ForecastCategoryName", text(stage.forecast_name));
        record.set("DefaultProbability", decimal(stage.probability));
        stamp_audit::<()>(&mut record, self.funnel.origin(), Actor::Import, &[]);
        Some(record)
    }

    /// Stage and status metadata share key prefix 01J, so statuses are numbered after stages.
    fn lead_status(&self, number: u64) -> Option<SfRecord> {
        let index = usize::try_from(number).ok()?.checked_sub(STAGES.len())?;
        let (label, converted) = LEAD_STATUSES.get(index)?;
        let mut record = SfRecord::empty(&LEAD_STATUS);
        record.set("Id", owned(sf_id(LEAD_STATUS.key_prefix, number)));
        record.set("MasterLabel", text(label));
        record.set("ApiName", text(label));
        record.set("SortOrder", number_of(index as i64 + 1));
        record.set("IsDefault", SfValue::Bool(index == 0));
        record.set("IsConverted", SfValue::Bool(*converted));
        stamp_audit::<()>(&mut record, self.funnel.origin(), Actor::Import, &[]);
        Some(record)
    }
}

fn number_of(value: i64) -> SfValue {
    SfValue::Number(value as f64)
}

/// Fiscal year and quarter of a close date (calendar fiscal year, the org default).
fn fiscal(close_date: i32) -> (i32, u32) {
    use chrono::Datelike;
    let date =
        chrono::NaiveDate::from_num_days_from_ce_opt(close_date + schema::EPOCH_DAYS_FROM_CE)
            .unwrap_or_default();
    (date.year(), (date.month() - 1) / 3 + 1)
}

fn qualification_field(field: QualField) -> &'static str {
    match field {
        QualField::Budget => "Budget__c",
        QualField::Authority => "Authority__c",
        QualField::Need => "Need__c",
        QualField::Timeline => "Timeline__c",
        QualField::Competitor => "Competitor__c",
        QualField::DecisionProcess => "Decision_Process__c",
    }
}

fn qualification_value(value: &QualValue) -> SfValue {
    match value {
        QualValue::Amount(amount) => number_of(*amount),
        QualValue::Text(text) => SfValue::Text(text.clone()),
        QualValue::Day(day) => SfValue::Date(*day),
    }
}

/// A deal's visible fields after some of its steps.
#[derive(Clone)]
struct DealState {
    stage: usize,
    amount: i64,
    close_date: i32,
    loss_reason: Option<&'static str>,
    qualification: Vec<(QualField, QualValue)>,
    last_activity: Millis,
}

impl DealState {
    fn replay(deal: &DealLife, steps: &[Step<DealChange>]) -> DealState {
        let mut state = DealState {
            stage: deal.stage,
            amount: deal.amount,
            close_date: deal.close_date,
            loss_reason: None,
            qualification: Vec::new(),
            last_activity: deal.created_at,
        };
        for step in steps {
            state.apply(&step.change, step.at);
        }
        state
    }

    fn apply(&mut self, change: &DealChange, at: Millis) {
        match change {
            DealChange::Stage(stage) => {
                self.stage = *stage;
                self.last_activity = at;
            }
            DealChange::Amount(amount) => self.amount = *amount,
            DealChange::CloseDate(day) => self.close_date = *day,
            DealChange::Qualification(field, value) => {
                self.qualification.retain(|(known, _)| known != field);
                self.qualification.push((*field, value.clone()));
            }
            DealChange::LossReason(reason) => self.loss_reason = Some(reason),
            DealChange::SystemTouch | DealChange::Deleted => {}
        }
    }

    /// Fills an OpportunityHistory row with this state (and the previous one's amount and
    /// close date).
    fn fill_history(&self, row: &mut SfRecord, previous: Option<&DealState>) {
        row.set("Amount", number_of(self.amount));
        row.set("CloseDate", SfValue::Date(self.close_date));
        set_stage_fields(row, self.stage, None);
        if let Some(previous) = previous {
            row.set("PrevAmount", number_of(previous.amount));
            row.set("PrevCloseDate", SfValue::Date(previous.close_date));
        }
    }
}

/// The OpportunityFieldHistory row a change writes: field, data type, old and new value.
fn tracked_change(
    before: &DealState,
    after: &DealState,
    change: &DealChange,
) -> Option<(&'static str, &'static str, SfValue, SfValue)> {
    match change {
        DealChange::Stage(_) => Some((
            "StageName",
            "DynamicEnum",
            text(STAGES[before.stage].name),
            text(STAGES[after.stage].name),
        )),
        DealChange::Amount(_) => Some((
            "Amount",
            "Currency",
            number_of(before.amount),
            number_of(after.amount),
        )),
        DealChange::CloseDate(_) => Some((
            "CloseDate",
            "Date",
            SfValue::Date(before.close_date),
            SfValue::Date(after.close_date),
        )),
        DealChange::Qualification(field, value) => {
            let old = before
                .qualification
                .iter()
                .find(|(known, _)| known == field)
                .map_or(SfValue::Null, |(_, value)| qualification_value(value));
            let kind = match value {
                QualValue::Amount(_) => "Currency",
                QualValue::Text(_) => "Text",
                QualValue::Day(_) => "Date",
            };
            Some((
                qualification_field(*field),
                kind,
                old,
                qualification_value(value),
            ))
        }
        DealChange::LossReason(reason) => {
            Some(("Loss_Reason__c", "Picklist", SfValue::Null, text(reason)))
        }
        DealChange::SystemTouch | DealChange::Deleted => None,
    }
}

/// The first history row of a record clients created.
fn creation_row(history: &'static ObjectDef, created: &SfRecord) -> SfRecord {
    let mut row = history_row(
        history,
        created,
        created.get("CreatedDate").clone(),
        created.get("CreatedById").clone(),
    );
    if history.name == "OpportunityHistory" {
        copy_history_snapshot(&mut row, created, None);
    } else {
        row.set("Field", text("created"));
    }
    row
}

/// A history row of `parent` without its own fields yet.
fn history_row(
    history: &'static ObjectDef,
    parent: &SfRecord,
    at: SfValue,
    by: SfValue,
) -> SfRecord {
    let mut row = SfRecord::empty(history);
    let parent_field = if history.name == "LeadHistory" {
        "LeadId"
    } else {
        "OpportunityId"
    };
    row.set(parent_field, text(parent.id()));
    row.set("CreatedById", by);
    row.set("CreatedDate", at.clone());
    row.set("SystemModstamp", at);
    row.set("IsDeleted", parent.get("IsDeleted").clone());
    row
}

/// OpportunityHistory's copy of the stage, amount, probability and close date.
fn copy_history_snapshot(row: &mut SfRecord, after: &SfRecord, before: Option<&SfRecord>) {
    for field in [
        "StageName",
        "Amount",
        "ExpectedRevenue",
        "CloseDate",
        "Probability",
        "ForecastCategory",
    ] {
        row.set(field, after.get(field).clone());
    }
    if let Some(before) = before {
        row.set("PrevAmount", before.get("Amount").clone());
        row.set("PrevCloseDate", before.get("CloseDate").clone());
    }
}

/// A client write with the record just before and just after it.
struct AppliedWrite<'e> {
    write: &'e Write,
    before: SfRecord,
    after: SfRecord,
}

/// The history rows one client write leaves.
/// Owner changes leave two rows, ids then names, as orgs record lookups; `owner_name` gives
/// the name behind an owner id.
fn write_rows(
    history: &'static ObjectDef,
    applied: &AppliedWrite<'_>,
    owner_name: impl Fn(&SfValue) -> SfValue,
) -> Vec<SfRecord> {
    let AppliedWrite {
        write,
        before,
        after,
    } = applied;
    let at = SfValue::DateTime(write.at);
    let by = SfValue::Text(write.by.clone());
    if history.name == "OpportunityHistory" {
        let moved = ["StageName", "Amount", "CloseDate", "Probability"]
            .iter()
            .any(|field| before.get(field) != after.get(field));
        if !moved {
            return Vec::new();
        }
        let mut row = history_row(history, after, at, by);
        copy_history_snapshot(&mut row, after, Some(before));
        return vec![row];
    }
    let mut rows = Vec::new();
    let changed = writes::tracked_fields(after.object.name)
        .iter()
        .filter(|field| before.get(field) != after.get(field));
    for field in changed {
        let mut row = history_row(history, after, at.clone(), by.clone());
        let kind = after
            .object
            .field(field)
            .map_or(FieldType::String, |def| def.kind);
        let (name, data_type) = match (*field, kind) {
            ("OwnerId", _) => ("Owner", "EntityId"),
            ("StageName", _) => ("StageName", "DynamicEnum"),
            (_, FieldType::Picklist) => (*field, "Picklist"),
            (_, FieldType::Currency) => (*field, "Currency"),
            (_, FieldType::Date) => (*field, "Date"),
            _ => (*field, "Text"),
        };
        row.set("Field", text(name));
        row.set("DataType", text(data_type));
        row.set("OldValue", before.get(field).clone());
        row.set("NewValue", after.get(field).clone());
        rows.push(row);
        if *field == "OwnerId" {
            let mut names = history_row(history, after, at.clone(), by.clone());
            names.set("Field", text("Owner"));
            names.set("DataType", text("Text"));
            names.set("OldValue", owner_name(before.get(field)));
            names.set("NewValue", owner_name(after.get(field)));
            rows.push(names);
        }
    }
    rows
}
