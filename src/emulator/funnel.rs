//! A seeded, believable B2B funnel, generated lazily one record at a time.
//!
//! Every lead, deal, account and campaign is a pure function of (seed, index): its whole life
//! (creation, contact, qualification, stage moves, field fills, close, delete) is drawn from
//! its own random stream, and its state at any simulated instant is that life cut at the
//! instant. Nothing is stored, so the `large` scale (over a million deals and leads) costs no
//! memory until it is served, and advancing the clock "generates" the activity of the
//! elapsed time by revealing more of each life. The same seed gives the same data.
//!
//! The funnel is CRM-neutral; the Salesforce and HubSpot fronts map it to their own objects.

use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, LogNormal};
use rand_pcg::Pcg64Mcg;

use crate::record::Millis;

const HOUR_MS: Millis = 3_600_000;
const DAY_MS: Millis = 24 * HOUR_MS;

/// How much data the emulator serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scale {
    /// About 300 leads and 100 deals over 6 months: for tests, generated in milliseconds.
    Tiny,
    /// About 20,000 leads and 6,000 deals over 12 months: for the demo.
    Small,
    /// About 1.5M leads and 1.1M deals over 24 months: for benchmarks.
    Large,
}

/// Sizes and shares that shape the generated funnel.
#[derive(Debug, Clone)]
pub struct FunnelShape {
    /// Months of history before the simulated start.
    pub months: u32,
    /// Leads created over those months.
    pub leads: u64,
    /// Deals created directly (expansion, renewal, partner) over those months, besides the
    /// deals converted leads bring.
    pub direct_deals: u64,
    /// Sales reps owning records.
    pub reps: u32,
    /// Share of stage moves that skip one or more stages.
    pub skip_share: f64,
    /// Share of qualification fields left empty when the deal enters the stage needing them.
    pub missing_field_share: f64,
    /// Share of new leads nobody ever contacts.
    pub unworked_share: f64,
}

impl Scale {
    /// The funnel shape of this scale.
    pub fn shape(self) -> FunnelShape {
        let (months, leads, direct_deals, reps) = match self {
            Scale::Tiny => (6, 300, 40, 5),
            Scale::Small => (12, 20_000, 2_000, 20),
            Scale::Large => (24, 1_500_000, 800_000, 400),
        };
        FunnelShape {
            months,
            leads,
            direct_deals,
            reps,
            skip_share: 0.08,
            missing_field_share: 0.15,
            unworked_share: 0.12,
        }
    }
}

/// One lead in five converts; its deal is numbered after it so either finds the other.
pub const CONVERSION_EVERY: u64 = 5;
/// Queues leads can sit in, by index.
pub const QUEUES: &[&str] = &["Unassigned Leads", "Nurture", "Recycled Leads"];
/// Teams reps belong to, by `rep % TEAMS.len()`.
pub const TEAMS: &[&str] = &["Enterprise", "Mid-Market", "SMB", "EMEA"];
/// Sources leads and deals come from.
pub const SOURCES: &[&str] = &[
    "Web",
    "Webinar",
    "Trade Show",
    "Paid Search",
    "Partner Referral",
    "Employee Referral",
    "Purchased List",
];
/// Why deals are lost; the first three are the recoverable ones lead recycling targets.
pub const LOSS_REASONS: &[&str] = &[
    "Timing",
    "Budget",
    "No Decision",
    "Lost to Competitor",
    "Product Fit",
    "Unresponsive",
];
/// Why leads are disqualified.
pub const DISQUALIFY_REASONS: &[&str] = &["No Budget", "Not a Fit", "Student", "Competitor"];
/// Industries of leads and accounts.
pub const INDUSTRIES: &[&str] = &[
    "Technology",
    "Finance",
    "Healthcare",
    "Manufacturing",
    "Retail",
    "Education",
];
/// Account segments (the formula field on deals mirrors the account's).
pub const SEGMENTS: &[&str] = &["Enterprise", "Mid-Market", "SMB"];
const CAMPAIGN_TYPES: &[&str] = &["Webinar", "Email", "Conference", "Paid Search", "Content"];
const FIRST_NAMES: &[&str] = &[
    "Ada", "Ben", "Chloe", "Dev", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kemi",
    "Liam", "Maya", "Noor", "Owen", "Priya", "Quinn", "Rosa", "Sami", "Tess",
];
const LAST_NAMES: &[&str] = &[
    "Adler", "Brooks", "Castillo", "Dubois", "Eriksen", "Fischer", "Gupta", "Haddad", "Ito",
    "Jansen", "Kowalski", "Lopez", "Moreau", "Nakamura", "Okafor", "Petrov", "Rossi", "Silva",
    "Tanaka", "Weber",
];
const COMPANY_WORDS: &[&str] = &[
    "Acme",
    "Birch",
    "Cobalt",
    "Delta",
    "Ember",
    "Falcon",
    "Granite",
    "Harbor",
    "Iris",
    "Juniper",
    "Keystone",
    "Lumen",
    "Meridian",
    "Northwind",
    "Orbit",
    "Pioneer",
];
const COMPANY_SUFFIXES: &[&str] = &["Labs", "Systems", "Logistics", "Health", "Capital", "Foods"];
const TITLES: &[&str] = &[
    "VP Sales",
    "Head of Revenue Operations",
    "CFO",
    "IT Manager",
    "Marketing Director",
    "Student",
    "Operations Analyst",
];

/// Who made a change: RevOps needs to tell people from automations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    /// A sales rep, by index.
    Rep(u32),
    /// An integration user (marketing automation, enrichment).
    Integration,
    /// A workflow or flow running as the automated process.
    Workflow,
    /// A data import.
    Import,
}

/// Who owns a lead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// A rep, by index.
    Rep(u32),
    /// A queue, by index into [`QUEUES`].
    Queue(u32),
}

/// Where a lead stands in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeadStatus {
    /// Created, nobody reached out yet.
    New,
    /// A rep reached out.
    Working,
    /// Qualified by marketing (MQL).
    Qualified,
    /// A meeting is booked (SQL).
    Meeting,
    /// Converted into an account, contact and deal.
    Converted,
    /// Closed without converting.
    Disqualified,
}

/// One change in a lead's life.
#[derive(Debug, Clone, PartialEq)]
pub enum LeadChange {
    /// Status moved.
    Status(LeadStatus),
    /// An activity (call, email) was logged, without a status change.
    Activity,
    /// Owner changed (round-robin out of a queue).
    Owner(Owner),
    /// Disqualified, with the reason.
    Disqualified(&'static str),
    /// Converted; its deal, account and contact carry the lead's conversion number.
    Converted,
    /// Moved to the recycle bin.
    Deleted,
}

/// A dated change with its author.
#[derive(Debug, Clone, PartialEq)]
pub struct Step<C> {
    /// When, simulated epoch ms.
    pub at: Millis,
    /// Who.
    pub by: Actor,
    /// What.
    pub change: C,
}

/// A lead's whole life.
#[derive(Debug, Clone)]
pub struct LeadLife {
    /// Its number.
    pub index: u64,
    /// When it was created.
    pub created_at: Millis,
    /// Who created it.
    pub created_by: Actor,
    /// First name.
    pub first_name: &'static str,
    /// Last name.
    pub last_name: &'static str,
    /// Company.
    pub company: String,
    /// Job title.
    pub title: &'static str,
    /// Industry.
    pub industry: &'static str,
    /// Lead source.
    pub source: &'static str,
    /// Campaign that brought it, if any.
    pub campaign: Option<u64>,
    /// Owner at creation.
    pub owner: Owner,
    /// Opted out of email (a do-not-contact flag).
    pub opted_out: bool,
    /// Everything that happens to it after creation, in time order.
    pub steps: Vec<Step<LeadChange>>,
}

impl LeadLife {
    /// Email address, unique per lead.
    pub fn email(&self) -> String {
        format!(
            "{}.{}{}@{}.example.com",
            self.first_name.to_lowercase(),
            self.last_name.to_lowercase(),
            self.index,
            self.company
                .split(' ')
                .next()
                .unwrap_or("company")
                .to_lowercase()
        )
    }

    /// The conversion number of the deal this lead becomes, if it is one that converts.
    pub fn conversion(&self) -> Option<u64> {
        self.index
            .is_multiple_of(CONVERSION_EVERY)
            .then_some(self.index / CONVERSION_EVERY)
    }
}

/// Qualification fields a deal should have before advancing (BANT plus competitor and
/// decision process), with the stage ordinal that needs each.
pub const QUALIFICATION: &[(QualField, usize)] = &[
    (QualField::Budget, 1),
    (QualField::Authority, 2),
    (QualField::Need, 2),
    (QualField::Timeline, 3),
    (QualField::Competitor, 4),
    (QualField::DecisionProcess, 5),
];

/// A qualification field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QualField {
    /// Budget (an amount).
    Budget,
    /// Who decides (a name).
    Authority,
    /// The need (text).
    Need,
    /// When they buy (a date).
    Timeline,
    /// Who else they evaluate.
    Competitor,
    /// How they decide (text).
    DecisionProcess,
}

/// The values qualification fields get.
#[derive(Debug, Clone, PartialEq)]
pub enum QualValue {
    /// An amount in whole currency units.
    Amount(i64),
    /// Text.
    Text(String),
    /// A day number since 1970-01-01.
    Day(i32),
}

/// Open pipeline stages, in order; the closed stages follow.
pub const OPEN_STAGES: usize = 8;
/// Stage ordinal of closed won.
pub const WON: usize = 8;
/// Stage ordinal of closed lost.
pub const LOST: usize = 9;

/// One change in a deal's life.
#[derive(Debug, Clone, PartialEq)]
pub enum DealChange {
    /// Moved to the stage with this ordinal (0–7 open, [`WON`], [`LOST`]).
    Stage(usize),
    /// Amount changed (whole currency units).
    Amount(i64),
    /// Close date moved (day number).
    CloseDate(i32),
    /// A qualification field was filled.
    Qualification(QualField, QualValue),
    /// Closed lost for this reason (comes with `Stage(LOST)`).
    LossReason(&'static str),
    /// A system job touched the record: its modstamp moves, nothing visible changes. Many
    /// deals share the same instant, as after a real bulk update.
    SystemTouch,
    /// Moved to the recycle bin.
    Deleted,
}

/// How a deal came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DealOrigin {
    /// From converting lead `CONVERSION_EVERY * n`.
    Converted(u64),
    /// Created directly on an existing account (expansion, renewal, partner).
    Direct(u64),
}

/// A deal's whole life.
#[derive(Debug, Clone)]
pub struct DealLife {
    /// Its number: `2n` for conversion `n`, `2n + 1` for direct deal `n`.
    pub index: u64,
    /// How it came to be.
    pub origin: DealOrigin,
    /// When it was created.
    pub created_at: Millis,
    /// Who created it.
    pub created_by: Actor,
    /// Deal name.
    pub name: String,
    /// Account number.
    pub account: u64,
    /// Primary contact number.
    pub contact: u64,
    /// Owning rep.
    pub owner: u32,
    /// Lead source.
    pub source: &'static str,
    /// Campaign credited, if any.
    pub campaign: Option<u64>,
    /// "New Business", "Existing Business" or "Renewal".
    pub kind: &'static str,
    /// Amount at creation (whole currency units).
    pub amount: i64,
    /// Close date at creation (day number).
    pub close_date: i32,
    /// Stage ordinal at creation.
    pub stage: usize,
    /// Everything after creation, in time order.
    pub steps: Vec<Step<DealChange>>,
}

/// An account's life: created with its first deal, its segment re-rated once in a while.
#[derive(Debug, Clone)]
pub struct AccountLife {
    /// Its number: `2n` for conversion `n`, `2n + 1` for direct account `n`.
    pub index: u64,
    /// When it was created.
    pub created_at: Millis,
    /// Company name.
    pub name: String,
    /// Industry.
    pub industry: &'static str,
    /// Segment at creation.
    pub segment: &'static str,
    /// Segment re-rating: when and to what. Deals show it through a formula field, which
    /// changes without their `SystemModstamp` moving.
    pub resegmented: Option<(Millis, &'static str)>,
    /// Owning rep.
    pub owner: u32,
    /// Employees.
    pub employees: u32,
}

/// A marketing campaign.
#[derive(Debug, Clone)]
pub struct CampaignLife {
    /// Its number.
    pub index: u64,
    /// When it was created (and starts).
    pub created_at: Millis,
    /// Name.
    pub name: String,
    /// Type.
    pub kind: &'static str,
    /// Length in days.
    pub days: i32,
    /// Budget in whole currency units.
    pub budget: i64,
}

/// A sales rep.
#[derive(Debug, Clone)]
pub struct Rep {
    /// Its number.
    pub index: u32,
    /// First name.
    pub first_name: &'static str,
    /// Last name.
    pub last_name: &'static str,
    /// Team.
    pub team: &'static str,
}

/// The funnel of one seed and shape, anchored in simulated time.
#[derive(Debug, Clone)]
pub struct Funnel {
    seed: u64,
    shape: FunnelShape,
    /// When history begins: `months` before the simulated start.
    origin: Millis,
    lead_interval: Millis,
    direct_interval: Millis,
    campaign_interval: Millis,
}

/// Random streams, one per kind of thing, so adding a draw to leads leaves deals unchanged.
#[derive(Clone, Copy)]
enum Stream {
    Lead = 1,
    Deal = 2,
    Account = 3,
    Campaign = 4,
}

impl Funnel {
    /// The funnel for `seed` whose history ends at `start_ms` (and goes on after it).
    pub fn new(seed: u64, shape: FunnelShape, start_ms: Millis) -> Funnel {
        let span = Millis::from(shape.months) * 30 * DAY_MS;
        Funnel {
            seed,
            origin: start_ms - span,
            lead_interval: (span / shape.leads.max(1) as Millis).max(1),
            direct_interval: (span / shape.direct_deals.max(1) as Millis).max(1),
            campaign_interval: 7 * DAY_MS,
            shape,
        }
    }

    /// When generated history begins.
    pub fn origin(&self) -> Millis {
        self.origin
    }

    /// The shape it was generated with.
    pub fn shape(&self) -> &FunnelShape {
        &self.shape
    }

    fn rng(&self, stream: Stream, index: u64) -> Pcg64Mcg {
        // SplitMix64 finaliser spreads neighbouring indexes over unrelated seeds.
        let mut z = self
            .seed
            .wrapping_add((stream as u64) << 56)
            .wrapping_add(index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Pcg64Mcg::seed_from_u64(z ^ (z >> 31))
    }

    /// Lead numbers that may exist at `now` (each still has to check its creation time).
    pub fn lead_bound(&self, now: Millis) -> u64 {
        ((now - self.origin).max(0) / self.lead_interval) as u64 + 1
    }

    /// Deal numbers that may exist at `now`.
    pub fn deal_bound(&self, now: Millis) -> u64 {
        let conversions = self.lead_bound(now) / CONVERSION_EVERY + 1;
        let direct = ((now - self.origin).max(0) / self.direct_interval) as u64 + 1;
        2 * conversions.max(direct)
    }

    /// Account numbers that may exist at `now`.
    pub fn account_bound(&self, now: Millis) -> u64 {
        self.deal_bound(now)
    }

    /// Campaign numbers that may exist at `now`.
    pub fn campaign_bound(&self, now: Millis) -> u64 {
        ((now - self.origin).max(0) / self.campaign_interval) as u64 + 1
    }

    /// The reps.
    pub fn reps(&self) -> impl Iterator<Item = Rep> + '_ {
        (0..self.shape.reps).map(|index| Rep {
            index,
            first_name: FIRST_NAMES[(index as usize * 7 + 3) % FIRST_NAMES.len()],
            last_name: LAST_NAMES[(index as usize * 11 + 5) % LAST_NAMES.len()],
            team: TEAMS[index as usize % TEAMS.len()],
        })
    }

    /// Campaign `index`, whether or not it exists yet.
    pub fn campaign(&self, index: u64) -> CampaignLife {
        let mut rng = self.rng(Stream::Campaign, index);
        let kind = pick(&mut rng, CAMPAIGN_TYPES);
        let created_at = self
            .origin
            .saturating_add(scaled(index, self.campaign_interval));
        let month = chrono::DateTime::from_timestamp_millis(created_at)
            .map(|at| at.format("%Y-%m").to_string())
            .unwrap_or_default();
        CampaignLife {
            index,
            created_at,
            name: format!("{month} {kind} #{index}"),
            kind,
            days: rng.random_range(7..60),
            budget: rng.random_range(5..80) * 1_000,
        }
    }

    /// Lead `index`, whether or not it exists yet.
    pub fn lead(&self, index: u64) -> LeadLife {
        let mut rng = self.rng(Stream::Lead, index);
        let created_at = self
            .origin
            .saturating_add(scaled(index, self.lead_interval))
            + rng.random_range(0..self.lead_interval);
        let source = pick(&mut rng, SOURCES);
        let from_campaign = matches!(source, "Webinar" | "Trade Show" | "Paid Search");
        let campaign = from_campaign.then(|| {
            let latest = ((created_at - self.origin) / self.campaign_interval) as u64;
            latest.saturating_sub(rng.random_range(0..3))
        });
        let queued = rng.random_bool(0.3);
        let owner = if queued {
            Owner::Queue(0)
        } else {
            Owner::Rep(rng.random_range(0..self.shape.reps))
        };
        let title = pick(&mut rng, TITLES);
        let mut life = LeadLife {
            index,
            created_at,
            created_by: if from_campaign {
                Actor::Integration
            } else if source == "Purchased List" {
                Actor::Import
            } else {
                Actor::Workflow
            },
            first_name: pick(&mut rng, FIRST_NAMES),
            last_name: pick(&mut rng, LAST_NAMES),
            company: company_name(&mut rng),
            title,
            industry: pick(&mut rng, INDUSTRIES),
            source,
            campaign,
            owner,
            opted_out: rng.random_bool(0.04),
            steps: Vec::new(),
        };
        life.steps = self.lead_steps(&mut rng, &life);
        life
    }

    fn lead_steps(&self, rng: &mut Pcg64Mcg, lead: &LeadLife) -> Vec<Step<LeadChange>> {
        let mut steps = Vec::new();
        let mut at = lead.created_at;
        let mut rep = match lead.owner {
            Owner::Rep(rep) => rep,
            Owner::Queue(_) => {
                // Round-robin takes queued leads out within hours.
                at += rng.random_range(HOUR_MS..36 * HOUR_MS);
                let rep = rng.random_range(0..self.shape.reps);
                steps.push(step(
                    at,
                    Actor::Workflow,
                    LeadChange::Owner(Owner::Rep(rep)),
                ));
                rep
            }
        };
        let converts = lead.index.is_multiple_of(CONVERSION_EVERY);
        if !converts && rng.random_bool(self.shape.unworked_share) {
            return self.maybe_deleted(rng, steps, at);
        }
        // Delays are long-tailed: many leads are contacted the next day, some weeks later,
        // so outcomes routinely land in a later month than the lead.
        at += days(rng, 1.5, 1.0);
        steps.push(step(
            at,
            Actor::Rep(rep),
            LeadChange::Status(LeadStatus::Working),
        ));
        for _ in 0..rng.random_range(0..3) {
            at += days(rng, 4.0, 0.8);
            steps.push(step(at, Actor::Rep(rep), LeadChange::Activity));
        }
        if !converts && rng.random_bool(0.45) {
            // Left in Working with no more activity: the stale leads recycling looks for.
            return self.maybe_deleted(rng, steps, at);
        }
        at += days(rng, 10.0, 0.8);
        steps.push(step(
            at,
            Actor::Integration,
            LeadChange::Status(LeadStatus::Qualified),
        ));
        if !converts && rng.random_bool(0.5) {
            at += days(rng, 12.0, 0.7);
            let reason = pick(rng, DISQUALIFY_REASONS);
            steps.push(step(at, Actor::Rep(rep), LeadChange::Disqualified(reason)));
            return self.maybe_deleted(rng, steps, at);
        }
        at += days(rng, 14.0, 0.7);
        steps.push(step(
            at,
            Actor::Rep(rep),
            LeadChange::Status(LeadStatus::Meeting),
        ));
        if converts {
            at += days(rng, 6.0, 0.6);
            if rng.random_bool(0.1) {
                rep = rng.random_range(0..self.shape.reps);
                steps.push(step(
                    at,
                    Actor::Rep(rep),
                    LeadChange::Owner(Owner::Rep(rep)),
                ));
            }
            steps.push(step(at, Actor::Rep(rep), LeadChange::Converted));
            return steps;
        }
        at += days(rng, 30.0, 0.6);
        steps.push(step(
            at,
            Actor::Rep(rep),
            LeadChange::Disqualified("Not a Fit"),
        ));
        self.maybe_deleted(rng, steps, at)
    }

    /// One lead in a hundred is deleted a while after its last step.
    fn maybe_deleted(
        &self,
        rng: &mut Pcg64Mcg,
        mut steps: Vec<Step<LeadChange>>,
        last: Millis,
    ) -> Vec<Step<LeadChange>> {
        if rng.random_bool(0.01) {
            let at = last + days(rng, 20.0, 1.0);
            steps.push(step(at, Actor::Rep(0), LeadChange::Deleted));
        }
        steps
    }

    /// When lead `index` converts, if it does.
    fn conversion_time(&self, lead: &LeadLife) -> Option<(Millis, Actor)> {
        lead.steps
            .iter()
            .find(|step| step.change == LeadChange::Converted)
            .map(|step| (step.at, step.by))
    }

    /// Deal `index`, if that number is ever used (conversions of deleted or never-converting
    /// leads leave gaps, as deleted records do in a real org).
    pub fn deal(&self, index: u64) -> Option<DealLife> {
        let mut rng = self.rng(Stream::Deal, index);
        let number = index / 2;
        let base = if index.is_multiple_of(2) {
            let lead = self.lead(number.saturating_mul(CONVERSION_EVERY));
            let (created_at, by) = self.conversion_time(&lead)?;
            let owner = match by {
                Actor::Rep(rep) => rep,
                _ => 0,
            };
            DealLife {
                index,
                origin: DealOrigin::Converted(number),
                created_at,
                created_by: by,
                name: format!("{} - New Business", lead.company),
                account: 2 * number,
                contact: 2 * number,
                owner,
                source: lead.source,
                campaign: lead.campaign,
                kind: "New Business",
                amount: 0,
                close_date: 0,
                stage: 1,
                steps: Vec::new(),
            }
        } else {
            let created_at = self
                .origin
                .saturating_add(scaled(number, self.direct_interval))
                + rng.random_range(0..self.direct_interval);
            let account = self.account(2 * (number / 3) + 1);
            let kind = if rng.random_bool(0.4) {
                "Renewal"
            } else {
                "Existing Business"
            };
            DealLife {
                index,
                origin: DealOrigin::Direct(number),
                created_at,
                created_by: Actor::Rep(account.owner),
                name: format!("{} - {kind} {}", account.name, number % 3 + 1),
                account: account.index,
                contact: account.index,
                owner: account.owner,
                source: if rng.random_bool(0.3) {
                    "Partner Referral"
                } else {
                    "Existing Customer"
                },
                campaign: None,
                kind,
                amount: 0,
                close_date: 0,
                stage: 0,
                steps: Vec::new(),
            }
        };
        Some(self.play_deal(&mut rng, base))
    }

    fn play_deal(&self, rng: &mut Pcg64Mcg, mut deal: DealLife) -> DealLife {
        deal.amount = (rng.random_range(5..400) * 500) as i64;
        deal.close_date = schema_day(deal.created_at) + rng.random_range(30..120);
        let rep = Actor::Rep(deal.owner);
        let mut steps = Vec::new();
        let mut at = deal.created_at;
        let mut stage = deal.stage;
        let mut filled = [false; 6];
        self.fill_qualification(rng, &mut steps, &mut filled, stage, at, rep);
        let stalls = rng.random_bool(0.1);
        let moves = if stalls { rng.random_range(0..3) } else { 12 };
        for _ in 0..moves {
            at += days(rng, 9.0, 0.8);
            if rng.random_bool(0.18) {
                steps.push(step(
                    at,
                    rep,
                    DealChange::LossReason(pick(rng, LOSS_REASONS)),
                ));
                steps.push(step(at, rep, DealChange::Stage(LOST)));
                stage = LOST;
                break;
            }
            let next = if stage > 1 && rng.random_bool(0.03) {
                stage - 1
            } else if rng.random_bool(self.shape.skip_share) {
                stage + rng.random_range(2..4)
            } else {
                stage + 1
            };
            stage = if next >= OPEN_STAGES { WON } else { next };
            if stage != WON {
                self.fill_qualification(rng, &mut steps, &mut filled, stage, at, rep);
            }
            steps.push(step(at, rep, DealChange::Stage(stage)));
            if rng.random_bool(0.15) {
                let amount = deal.amount * rng.random_range(70..140) / 100;
                steps.push(step(at + HOUR_MS, rep, DealChange::Amount(amount)));
            }
            if rng.random_bool(0.2) {
                let day = schema_day(at) + rng.random_range(14..60);
                steps.push(step(at + HOUR_MS, rep, DealChange::CloseDate(day)));
            }
            if stage == WON {
                break;
            }
        }
        if deal.index.is_multiple_of(4) {
            self.add_forecast_job_touches(&mut steps, deal.created_at, stage, at);
        }
        if rng.random_bool(0.005) {
            let deleted_at = at + days(rng, 30.0, 1.0);
            // A deleted deal is no longer open: the forecast job leaves it alone.
            steps.retain(|step| step.change != DealChange::SystemTouch || step.at < deleted_at);
            steps.push(step(deleted_at, rep, DealChange::Deleted));
        }
        // Fields filled "a moment before" the first stage were filled at creation.
        for step in &mut steps {
            step.at = step.at.max(deal.created_at);
        }
        steps.sort_by_key(|step| step.at);
        deal.steps = steps;
        deal
    }

    /// Fills the qualification fields stage `stage` needs, each one a moment before the move,
    /// unless it is one of the share left empty (some of those are filled days later).
    fn fill_qualification(
        &self,
        rng: &mut Pcg64Mcg,
        steps: &mut Vec<Step<DealChange>>,
        filled: &mut [bool; 6],
        stage: usize,
        at: Millis,
        rep: Actor,
    ) {
        for (slot, (field, needed_at)) in QUALIFICATION.iter().enumerate() {
            if filled[slot] || *needed_at > stage {
                continue;
            }
            filled[slot] = true;
            let when = if rng.random_bool(self.shape.missing_field_share) {
                if rng.random_bool(0.5) {
                    continue;
                }
                at + days(rng, 5.0, 0.7)
            } else {
                at - rng.random_range(1..HOUR_MS)
            };
            let value = qualification_value(rng, *field, when);
            steps.push(step(when, rep, DealChange::Qualification(*field, value)));
        }
    }

    /// A forecast-rollup job touches every fourth open deal at 02:00 on the first of each
    /// month: thousands of rows share that `SystemModstamp`.
    fn add_forecast_job_touches(
        &self,
        steps: &mut Vec<Step<DealChange>>,
        from: Millis,
        final_stage: usize,
        last: Millis,
    ) {
        let open_until = if final_stage >= WON {
            last
        } else {
            from + 400 * DAY_MS
        };
        let mut month = next_month_start(from);
        while month < open_until {
            steps.push(step(
                month + 2 * HOUR_MS,
                Actor::Workflow,
                DealChange::SystemTouch,
            ));
            month = next_month_start(month + DAY_MS);
        }
    }

    /// First name of the contact of direct account `index`.
    pub fn contact_first_name(index: u64) -> &'static str {
        FIRST_NAMES[(index as usize * 7 + 1) % FIRST_NAMES.len()]
    }

    /// Last name of the contact of direct account `index`.
    pub fn contact_last_name(index: u64) -> &'static str {
        LAST_NAMES[(index as usize * 13 + 2) % LAST_NAMES.len()]
    }

    /// Account `index`, whether or not it exists yet.
    pub fn account(&self, index: u64) -> AccountLife {
        let mut rng = self.rng(Stream::Account, index);
        let (created_at, name, owner) = if index.is_multiple_of(2) {
            // Created by converting lead CONVERSION_EVERY * n; fall back to its creation time
            // when the lead never converts, since then nothing references the account.
            let lead = self.lead((index / 2).saturating_mul(CONVERSION_EVERY));
            let (at, by) = self
                .conversion_time(&lead)
                .unwrap_or((lead.created_at, Actor::Rep(0)));
            let owner = match by {
                Actor::Rep(rep) => rep,
                _ => 0,
            };
            (at, lead.company.clone(), owner)
        } else {
            let first_deal = (index / 2).saturating_mul(3);
            let at = self
                .origin
                .saturating_add(scaled(first_deal, self.direct_interval))
                - 30 * DAY_MS;
            (
                at,
                company_name(&mut rng),
                rng.random_range(0..self.shape.reps),
            )
        };
        let segment = pick(&mut rng, SEGMENTS);
        let resegmented = rng.random_bool(0.2).then(|| {
            (
                created_at + days(&mut rng, 60.0, 0.5),
                pick(&mut rng, SEGMENTS),
            )
        });
        AccountLife {
            index,
            created_at,
            name,
            industry: pick(&mut rng, INDUSTRIES),
            segment,
            resegmented,
            owner,
            employees: rng.random_range(5..20_000),
        }
    }

    /// [`AccountLife::segment_at`] of account `index`, without generating the lead of a
    /// converted account that was never resegmented (four in five): opportunity formulas
    /// read the segment for every record a page builds. The converted branch of
    /// [`Funnel::account`] takes nothing from the account's stream before the segment, so
    /// the first two draws here are the ones it makes.
    pub fn account_segment_at(&self, index: u64, now: Millis) -> &'static str {
        if index.is_multiple_of(2) {
            let mut rng = self.rng(Stream::Account, index);
            let segment = pick(&mut rng, SEGMENTS);
            if !rng.random_bool(0.2) {
                return segment;
            }
        }
        self.account(index).segment_at(now)
    }
}

impl AccountLife {
    /// The segment at `now`.
    pub fn segment_at(&self, now: Millis) -> &'static str {
        match self.resegmented {
            Some((at, segment)) if at <= now => segment,
            _ => self.segment,
        }
    }
}

/// `index` intervals, capped: record numbers come from client-supplied ids, and a number far
/// past the funnel must read as "not created yet" (the cap leaves room for the delays added to
/// a creation time), never overflow.
fn scaled(index: u64, interval: Millis) -> Millis {
    const FAR_FUTURE: Millis = Millis::MAX / 4;
    Millis::try_from(index)
        .unwrap_or(Millis::MAX)
        .saturating_mul(interval)
        .min(FAR_FUTURE)
}

fn step<C>(at: Millis, by: Actor, change: C) -> Step<C> {
    Step { at, by, change }
}

fn pick<T: Copy>(rng: &mut Pcg64Mcg, items: &[T]) -> T {
    items[rng.random_range(0..items.len())]
}

fn company_name(rng: &mut Pcg64Mcg) -> String {
    format!(
        "{} {}",
        pick(rng, COMPANY_WORDS),
        pick(rng, COMPANY_SUFFIXES)
    )
}

/// A log-normal delay with the given median in days.
fn days(rng: &mut Pcg64Mcg, median_days: f64, sigma: f64) -> Millis {
    let distribution =
        LogNormal::new(median_days.ln(), sigma).expect("a finite median and positive sigma");
    let drawn: f64 = distribution.sample(rng);
    (drawn.min(365.0) * DAY_MS as f64) as Millis + 1
}

fn qualification_value(rng: &mut Pcg64Mcg, field: QualField, at: Millis) -> QualValue {
    match field {
        QualField::Budget => QualValue::Amount(rng.random_range(10..500) * 1_000),
        QualField::Authority => QualValue::Text(format!(
            "{} {}",
            pick(rng, FIRST_NAMES),
            pick(rng, LAST_NAMES)
        )),
        QualField::Need => QualValue::Text(
            pick(
                rng,
                &[
                    "Forecast accuracy",
                    "Pipeline visibility",
                    "Replace spreadsheets",
                ],
            )
            .to_string(),
        ),
        QualField::Timeline => QualValue::Day(schema_day(at) + rng.random_range(30..180)),
        QualField::Competitor => {
            QualValue::Text(pick(rng, &["None", "Clari", "Gong", "In-house"]).to_string())
        }
        QualField::DecisionProcess => QualValue::Text(
            pick(
                rng,
                &[
                    "Security review, then CFO sign-off",
                    "Committee vote",
                    "VP approval",
                ],
            )
            .to_string(),
        ),
    }
}

/// Day number (since 1970-01-01) of an instant.
fn schema_day(ms: Millis) -> i32 {
    ms.div_euclid(DAY_MS) as i32
}

/// 00:00 UTC on the first day of the month after the one holding `ms`.
fn next_month_start(ms: Millis) -> Millis {
    use chrono::{Datelike, NaiveDate};
    let Some(at) = chrono::DateTime::from_timestamp_millis(ms) else {
        return Millis::MAX;
    };
    let (year, month) = if at.month() == 12 {
        (at.year() + 1, 1)
    } else {
        (at.year(), at.month() + 1)
    };
    NaiveDate::from_ymd_opt(year, month, 1)
        .and_then(|day| day.and_hms_opt(0, 0, 0))
        .map_or(Millis::MAX, |start| start.and_utc().timestamp_millis())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulator::DEFAULT_START_MS;

    fn tiny() -> Funnel {
        Funnel::new(7, Scale::Tiny.shape(), DEFAULT_START_MS)
    }

    #[test]
    fn absurd_record_numbers_are_not_created_yet_instead_of_overflowing() {
        let funnel = tiny();
        for number in [u64::MAX, 62u64.pow(9), 1 << 50] {
            assert!(funnel.lead(number).created_at > DEFAULT_START_MS * 1_000);
            assert!(funnel
                .deal(number)
                .is_none_or(|deal| deal.created_at > DEFAULT_START_MS * 1_000));
            assert!(funnel.account(number).created_at > DEFAULT_START_MS * 1_000);
            assert!(funnel.campaign(number).created_at > DEFAULT_START_MS * 1_000);
        }
    }

    #[test]
    fn account_segment_shortcut_agrees_with_the_account_life() {
        let funnel = tiny();
        for index in 0..400 {
            let account = funnel.account(index);
            for now in [
                account.created_at,
                DEFAULT_START_MS,
                DEFAULT_START_MS + 400 * DAY_MS,
            ] {
                assert_eq!(
                    funnel.account_segment_at(index, now),
                    account.segment_at(now),
                    "account {index} at {now}"
                );
            }
        }
    }

    #[test]
    fn same_seed_same_lives() {
        let (a, b) = (tiny(), tiny());
        for index in 0..50 {
            assert_eq!(a.lead(index).steps, b.lead(index).steps);
            assert_eq!(
                a.deal(index).map(|deal| deal.steps),
                b.deal(index).map(|deal| deal.steps)
            );
        }
    }

    #[test]
    fn converted_leads_and_their_deals_agree_on_time() {
        let funnel = tiny();
        let lead = funnel.lead(10);
        let converted = funnel
            .conversion_time(&lead)
            .expect("every fifth lead converts");
        let deal = funnel.deal(4).expect("conversion 2 has a deal");
        assert_eq!(deal.created_at, converted.0);
        assert_eq!(deal.origin, DealOrigin::Converted(2));
    }

    #[test]
    fn steps_are_in_time_order_after_creation() {
        let funnel = tiny();
        for index in 0..200 {
            if let Some(deal) = funnel.deal(index) {
                assert!(deal.steps.windows(2).all(|pair| pair[0].at <= pair[1].at));
                assert!(deal.steps.iter().all(|s| s.at >= deal.created_at));
            }
            let lead = funnel.lead(index);
            assert!(lead.steps.windows(2).all(|pair| pair[0].at <= pair[1].at));
        }
    }

    #[test]
    fn the_funnel_has_skips_losses_and_unworked_leads() {
        let funnel = Funnel::new(3, Scale::Small.shape(), DEFAULT_START_MS);
        let deals: Vec<DealLife> = (0..2_000).filter_map(|index| funnel.deal(index)).collect();
        let lost = deals
            .iter()
            .filter(|deal| {
                deal.steps
                    .iter()
                    .any(|s| s.change == DealChange::Stage(LOST))
            })
            .count();
        let skipped = deals
            .iter()
            .filter(|deal| {
                let mut stage = deal.stage;
                deal.steps.iter().any(|s| match s.change {
                    DealChange::Stage(next) if next < OPEN_STAGES => {
                        let jumped = next > stage + 1;
                        stage = next;
                        jumped
                    }
                    _ => false,
                })
            })
            .count();
        let unworked = (0..2_000)
            .map(|index| funnel.lead(index))
            .filter(|lead| {
                !lead
                    .steps
                    .iter()
                    .any(|s| s.change == LeadChange::Status(LeadStatus::Working))
            })
            .count();
        assert!(lost > deals.len() / 10, "{lost} lost of {}", deals.len());
        assert!(
            skipped > deals.len() / 20,
            "{skipped} skipping of {}",
            deals.len()
        );
        assert!(
            unworked > 100 && unworked < 400,
            "{unworked} unworked of 2000"
        );
    }
}
