//! Checked settings: what the rest of pipewarden reads.
//!
//! Built from the raw file by `validate`; every value here has been parsed and checked
//! (durations, URLs, shares, cross-references between sections), secrets have been read,
//! and defaults are filled in. `Serialize` exists for `config check`, which prints the
//! effective configuration; secrets serialize as their origin only.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Serialize, Serializer};
use url::Url;

use super::secret::Secret;

/// The effective configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// The file the settings were read from, if any.
    #[serde(skip)]
    pub source_file: Option<PathBuf>,
    /// Where snapshots are stored.
    pub store: StoreSettings,
    /// The CRM connections to sync.
    pub connections: Vec<ConnectionSettings>,
    /// Slack delivery, if alerts are wanted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slack: Option<SlackSettings>,
    /// Stage-gate rules.
    pub rules: Vec<RuleSettings>,
    /// Lead-recycling policies and their limits.
    pub recycle: RecycleSettings,
    /// The HTTP API listener.
    pub api: ApiSettings,
}

/// `[store]`: the snapshot database.
#[derive(Debug, Clone, Serialize)]
pub struct StoreSettings {
    /// SQLite file or PostgreSQL server.
    pub url: StoreUrl,
    /// Upper bound of the connection pool.
    pub max_connections: u32,
    /// How long SQLite waits for a lock before giving up.
    #[serde(serialize_with = "serialize_duration")]
    pub busy_timeout: Duration,
    /// How much of a SQLite store is read through a memory map, MiB (0: none).
    pub sqlite_mmap_mib: u32,
}

/// A store location, chosen by URL scheme. Its `Display` hides any password.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// `sqlite://path` (relative to the working directory) or `sqlite::memory:`.
    Sqlite(String),
    /// `postgres://` or `postgresql://` URL.
    Postgres(Url),
}

impl StoreUrl {
    /// The URL to hand to the driver, password included.
    pub fn connect_string(&self) -> String {
        match self {
            StoreUrl::Sqlite(url) => url.clone(),
            StoreUrl::Postgres(url) => url.to_string(),
        }
    }
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreUrl::Sqlite(url) => f.write_str(url),
            StoreUrl::Postgres(url) => {
                let mut shown = url.clone();
                if shown.password().is_some() {
                    // set_password only fails for URLs that cannot have one, which a postgres URL can.
                    let _ = shown.set_password(Some("**redacted**"));
                }
                f.write_str(shown.as_str())
            }
        }
    }
}

impl fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreUrl({self})")
    }
}

impl Serialize for StoreUrl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Which CRM a connection talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CrmKind {
    /// Salesforce REST and Bulk API 2.0.
    Salesforce,
    /// HubSpot CRM API.
    Hubspot,
}

impl CrmKind {
    /// The name used in config files and in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            CrmKind::Salesforce => "salesforce",
            CrmKind::Hubspot => "hubspot",
        }
    }
}

/// One `[[connections]]` entry: a CRM org or portal to sync.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionSettings {
    /// Unique name; it keys everything the store holds for this connection.
    pub name: String,
    /// Salesforce or HubSpot.
    pub kind: CrmKind,
    /// Where API calls and token requests go.
    pub endpoints: Endpoints,
    /// How to authenticate.
    pub auth: AuthSettings,
    /// CRM objects to sync, by their API names.
    pub objects: Vec<String>,
    /// Extra fields to fetch, as `Object.Field`.
    pub custom_fields: Vec<String>,
    /// Time between the starts of two syncs.
    #[serde(serialize_with = "serialize_duration")]
    pub poll_interval: Duration,
    /// Random spread added to each interval, as a share of it (0.0–0.5).
    pub poll_jitter: f64,
    /// Time limit for one HTTP request.
    #[serde(serialize_with = "serialize_duration")]
    pub request_timeout: Duration,
    /// Rows asked for per page (Salesforce query batch size 200–2,000; HubSpot search page 1–200,
    /// list pages capped at 100).
    pub page_size: u32,
    /// How far before the last checkpoint an incremental run starts again, for changes that
    /// became visible late (transactions committing after their stamp, search index lag).
    #[serde(serialize_with = "serialize_duration")]
    pub lookback: Duration,
    /// Salesforce: an object whose rows to read (from the checkpoint, as a `COUNT()` query
    /// finds them) number at least this many is read through a Bulk API 2.0 query job rather
    /// than REST query pages; `Some(0)` always, `None` never.
    pub bulk_threshold: Option<u64>,
    /// Salesforce: records per Bulk API 2.0 results chunk (`maxRecords`).
    pub bulk_chunk_size: u32,
    /// Salesforce: history rows a first history backfill of a large org aims to read per query
    /// time window, so that windows seldom run into `QUERY_TIMEOUT`.
    pub history_window_rows: u64,
    /// Salesforce: how often every live row of an object with formula or roll-up fields is
    /// read again, since their values change without the row's stamp moving; `None` never.
    #[serde(serialize_with = "serialize_optional_duration")]
    pub formula_refresh_interval: Option<Duration>,
    /// Salesforce: how often every id of each record object is read, to find records deleted
    /// for good (CampaignMember deletes; other deletes once out of the Recycle Bin) that
    /// `queryAll` no longer shows; `None` never.
    #[serde(serialize_with = "serialize_optional_duration")]
    pub id_sweep_interval: Option<Duration>,
    /// Extra CA certificate (PEM) to trust, e.g. behind a TLS-inspecting proxy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extra_ca_file: Option<PathBuf>,
    /// Slack channel for the alerts of this connection's rules that name no channel of their
    /// own, before `slack.default_channel` (bot token only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slack_channel: Option<String>,
    /// API allocation limits.
    pub limits: LimitSettings,
}

/// Base URLs of one connection.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "crm", rename_all = "snake_case")]
pub enum Endpoints {
    /// Salesforce hosts.
    Salesforce {
        /// Token host: login.salesforce.com, test.salesforce.com or the org's My Domain.
        login_url: Url,
        /// Overrides the `instance_url` of the token response (rarely needed).
        #[serde(skip_serializing_if = "Option::is_none")]
        instance_url: Option<Url>,
        /// REST API version, e.g. `v62.0`.
        api_version: String,
    },
    /// HubSpot host.
    Hubspot {
        /// API host, normally https://api.hubapi.com.
        api_base_url: Url,
        /// `2026-03` (date-versioned paths) or `v3`.
        api_version: String,
    },
}

/// How a connection authenticates.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AuthSettings {
    /// Salesforce OAuth 2.0 JWT bearer flow (server-to-server, no stored refresh token).
    JwtBearer {
        /// Connected app consumer key (the JWT `iss`).
        client_id: String,
        /// Salesforce username to act as (the JWT `sub`).
        username: String,
        /// JWT `aud`: the login host.
        audience: String,
        /// RSA private key (PEM) that signs the assertion.
        private_key: Secret,
    },
    /// Salesforce OAuth 2.0 refresh-token flow.
    RefreshToken {
        /// Connected app consumer key.
        client_id: String,
        /// Consumer secret, if the app requires it.
        #[serde(skip_serializing_if = "Option::is_none")]
        client_secret: Option<Secret>,
        /// The refresh token granted to pipewarden.
        refresh_token: Secret,
    },
    /// Salesforce OAuth 2.0 client-credentials flow (runs as the app's integration user).
    ClientCredentials {
        /// Connected app consumer key.
        client_id: String,
        /// Consumer secret.
        client_secret: Secret,
    },
    /// HubSpot private-app (static) access token.
    PrivateApp {
        /// The `pat-…` token.
        token: Secret,
    },
    /// HubSpot OAuth app with a refresh token.
    Oauth {
        /// App client id.
        client_id: String,
        /// App client secret.
        client_secret: Secret,
        /// The refresh token granted to pipewarden.
        refresh_token: Secret,
    },
}

/// API allocation limits of one connection.
#[derive(Debug, Clone, Serialize)]
pub struct LimitSettings {
    /// Steady request rate; tightened at run time from the CRM's own rate headers.
    pub requests_per_second: u32,
    /// Requests allowed at once above the steady rate.
    pub burst: u32,
    /// Requests in flight at the same time.
    pub max_concurrent_requests: u32,
    /// Share of the daily allocation one run may use before it checkpoints and stops.
    pub daily_budget_share: f64,
    /// Share of the org-wide daily allocation past which no run starts or continues.
    pub org_ceiling_share: f64,
    /// HubSpot account tier, which sets the 10-second and daily limits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hubspot_tier: Option<HubspotTier>,
}

/// HubSpot API limit tiers (private apps).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HubspotTier {
    /// Free and Starter: 100 per 10 s, 250,000 per day.
    Starter,
    /// Professional: 190 per 10 s, 650,000 per day.
    Professional,
    /// Enterprise: 190 per 10 s, 1,000,000 per day.
    Enterprise,
    /// With the API limit increase pack: 250 per 10 s, +1,000,000 per day.
    ApiAddOn,
}

impl HubspotTier {
    /// Requests allowed per rolling 10 seconds.
    pub fn ten_second_limit(self) -> u32 {
        match self {
            HubspotTier::Starter => 100,
            HubspotTier::Professional | HubspotTier::Enterprise => 190,
            HubspotTier::ApiAddOn => 250,
        }
    }

    /// Requests allowed per day, account-wide.
    pub fn daily_limit(self) -> u64 {
        match self {
            HubspotTier::Starter => 250_000,
            HubspotTier::Professional => 650_000,
            HubspotTier::Enterprise => 1_000_000,
            HubspotTier::ApiAddOn => 2_000_000,
        }
    }
}

/// `[slack]`: how alerts reach Slack.
#[derive(Debug, Clone, Serialize)]
pub struct SlackSettings {
    /// Incoming webhook or bot token.
    pub delivery: SlackDelivery,
    /// Channel used when a rule names none (bot token only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_channel: Option<String>,
    /// Slack's own bound is about one message per second per channel.
    pub messages_per_second_per_channel: u32,
    /// When set, violations are sent as one daily digest per channel at this UTC time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest_at: Option<chrono::NaiveTime>,
    /// Channels whose digest differs from `digest_at`: their own UTC time, or `None` for one
    /// message per violation (bot token only).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub channel_digests: BTreeMap<String, Option<chrono::NaiveTime>>,
}

impl SlackSettings {
    /// When the violations bound for `channel` go out as a daily digest (`None`: one message
    /// each, as they happen); `None` as the channel is the webhook's own.
    pub fn digest_for(&self, channel: Option<&str>) -> Option<chrono::NaiveTime> {
        channel
            .and_then(|channel| self.channel_digests.get(channel).copied())
            .unwrap_or(self.digest_at)
    }
}

/// The two ways of posting to Slack.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SlackDelivery {
    /// An incoming webhook: one fixed channel, no thread replies.
    Webhook {
        /// The webhook URL (a secret: it is the credential).
        url: Secret,
    },
    /// A bot token for `chat.postMessage`: any channel the bot is in, thread replies.
    BotToken {
        /// The `xoxb-…` token.
        token: Secret,
        /// Web API base, normally https://slack.com/api.
        api_base_url: Url,
    },
}

/// What a stage-gate rule does when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleMode {
    /// Store the violation only.
    Record,
    /// Store it and alert in Slack.
    Alert,
    /// Alert and write the previous stage back to the CRM.
    Revert,
}

/// One `[[rules]]` entry: stage gates for one pipeline of one connection.
#[derive(Debug, Clone, Serialize)]
pub struct RuleSettings {
    /// Unique rule name; violations are keyed by it.
    pub name: String,
    /// The connection whose deals it judges.
    pub connection: String,
    /// Pipeline id (HubSpot), or `default` (Salesforce: its stages are one list, whatever the
    /// sales process).
    pub pipeline: String,
    /// Record, alert or revert.
    pub mode: RuleMode,
    /// Revert mode: plan and record the reverts only, write nothing to the CRM.
    pub dry_run: bool,
    /// Revert mode: most violations one evaluation reverts.
    pub max_reverts_per_run: u32,
    /// Slack channel for this rule's alerts (bot token only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// A move that jumps over stages violates by itself.
    pub forbid_skipping: bool,
    /// Fields required when a deal is closed lost (e.g. a loss reason).
    pub closed_lost_requires: Vec<String>,
    /// Fields required when a deal moves back a stage.
    pub backward_requires: Vec<String>,
    /// Owner ids whose deals the rule ignores.
    pub exempt_owners: Vec<String>,
    /// Team names whose members' deals the rule ignores.
    pub exempt_teams: Vec<String>,
    /// Per-stage requirements.
    pub stages: Vec<StageGate>,
}

/// Fields required to be in one stage, and how long a deal may sit there.
#[derive(Debug, Clone, Serialize)]
pub struct StageGate {
    /// Stage name (Salesforce) or stage id (HubSpot).
    pub stage: String,
    /// Fields that must be filled for a deal to count as in this stage.
    pub required: Vec<String>,
    /// Longest healthy dwell in this stage; longer counts as stuck.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_opt_duration"
    )]
    pub max_dwell: Option<Duration>,
}

/// `[recycle]`: lead-recycling policies.
#[derive(Debug, Clone, Serialize)]
pub struct RecycleSettings {
    /// Hard cap on CRM writes in one recycle run, across policies.
    pub max_actions_per_run: u32,
    /// Slack channel for the per-run summary.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary_channel: Option<String>,
    /// The policies.
    pub policies: Vec<PolicySettings>,
}

/// Which records a recycle policy looks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyKind {
    /// Open lead or contact with no activity for `after_days`.
    Stale,
    /// New lead not contacted within the speed-to-lead window of `after_days`.
    Unworked,
    /// Deal in one stage longer than that stage's `max_dwell`.
    Stalled,
    /// Deal closed lost with a recoverable reason, `after_days` ago.
    Lost,
    /// Disqualified lead that fits the target persona, `after_days` ago.
    Disqualified,
}

/// The CRM object a policy selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyObject {
    /// Salesforce Lead.
    Lead,
    /// Salesforce Contact or HubSpot contact.
    Contact,
    /// Opportunity or deal.
    Deal,
}

/// What happens to a stalled deal after its grace period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StageAction {
    /// Move it back one stage.
    MoveBack,
    /// Close it lost and recycle its contacts.
    CloseLost,
}

/// One `[[recycle.policies]]` entry.
#[derive(Debug, Clone, Serialize)]
pub struct PolicySettings {
    /// Unique policy name; actions and outcomes are keyed by it.
    pub name: String,
    /// The connection it acts on.
    pub connection: String,
    /// What it selects.
    pub kind: PolicyKind,
    /// Which object it selects.
    pub object: PolicyObject,
    /// Age threshold in days (meaning depends on `kind`).
    pub after_days: u32,
    /// Plan and report only; nothing is written to the CRM.
    pub dry_run: bool,
    /// Cap for this policy within the run-wide cap.
    pub max_actions_per_run: u32,
    /// Alert the owner first and act only after `grace_days`.
    pub alert_first: bool,
    /// Days between the alert and the action.
    pub grace_days: u32,
    /// Loss reasons that count as recoverable (`lost` only).
    pub loss_reasons: Vec<String>,
    /// Job titles that match the target persona (`disqualified` only).
    pub persona_titles: Vec<String>,
    /// Industries that match the target persona (`disqualified` only).
    pub persona_industries: Vec<String>,
    /// Owner ids whose records are never touched.
    pub exclude_owners: Vec<String>,
    /// Skip records that have an open deal.
    pub exclude_open_deals: bool,
    /// Skip records flagged do-not-contact or opted out.
    pub exclude_do_not_contact: bool,
    /// Skip records recycled within this many days.
    pub cooldown_days: u32,
    /// The writes it plans.
    pub actions: RecycleActions,
}

/// The CRM writes a policy plans for each selected record.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RecycleActions {
    /// Lead Status (Salesforce) or `hs_lead_status` (HubSpot).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub set_status: Option<String>,
    /// HubSpot `lifecyclestage` (cleared first when moving back).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub set_lifecycle_stage: Option<String>,
    /// New owner: a Salesforce queue or user id, or a HubSpot owner id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub set_owner: Option<String>,
    /// Let Salesforce assignment rules pick the owner (`Sforce-Auto-Assign`).
    pub use_assignment_rules: bool,
    /// Salesforce nurture campaign to add the lead or contact to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub add_to_campaign: Option<String>,
    /// CampaignMember status for that campaign.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub campaign_member_status: Option<String>,
    /// HubSpot static list to add the contact to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub add_to_list: Option<String>,
    /// Subject of a follow-up task for the owner.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub create_task: Option<String>,
    /// Days until that task is due.
    pub task_due_in_days: u32,
    /// What to do with a stalled deal (`stalled` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage_action: Option<StageAction>,
}

/// `[api]`: the HTTP listener.
#[derive(Debug, Clone, Serialize)]
pub struct ApiSettings {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Bearer token the query API requires; mandatory off loopback.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bearer_token: Option<Secret>,
}

fn serialize_duration<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format_duration(*value))
}

/// Writes an optional duration as [`serialize_duration`] does, and `None` as `"off"`.
fn serialize_optional_duration<S: Serializer>(
    value: &Option<Duration>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(value) => serialize_duration(value, serializer),
        None => serializer.serialize_str("off"),
    }
}

/// Writes a duration in the largest unit that divides it exactly ("45d", "90m", "1500ms"),
/// in the same notation the config file accepts.
pub fn format_duration(value: Duration) -> String {
    const UNITS: [(u128, &str); 4] = [
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
        (1_000, "s"),
    ];
    let millis = value.as_millis();
    UNITS
        .iter()
        .find(|(size, _)| millis > 0 && millis.is_multiple_of(*size))
        .map_or_else(
            || format!("{millis}ms"),
            |(size, unit)| format!("{}{unit}", millis / size),
        )
}

fn serialize_opt_duration<S: Serializer>(
    value: &Option<Duration>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(duration) => serialize_duration(duration, serializer),
        None => serializer.serialize_none(),
    }
}
