//! Turns raw settings into checked [`Settings`], collecting every problem.
//!
//! Each problem names the key path as written in the file (`connections[1].auth.token`), so
//! an operator can fix them all in one pass instead of one per run.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use url::Url;

use super::raw::{
    RawActions, RawApi, RawAuth, RawBulkThreshold, RawConnection, RawLimits, RawPolicy, RawRecycle,
    RawRule, RawSettings, RawSlack, RawStore,
};
use super::secret::{Secret, SecretSource};
use super::settings::{
    ApiSettings, AuthSettings, ConnectionSettings, CrmKind, Endpoints, HubspotTier, LimitSettings,
    PolicyKind, PolicyObject, PolicySettings, RecycleActions, RecycleSettings, RuleMode,
    RuleSettings, Settings, SlackDelivery, SlackSettings, StageAction, StageGate, StoreSettings,
    StoreUrl,
};
use super::Problem;

/// The store used when none is configured: a SQLite file in the working directory.
const DEFAULT_STORE_URL: &str = "sqlite://pipewarden.db";
const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
const SALESFORCE_LOGIN_URL: &str = "https://login.salesforce.com";
const SALESFORCE_API_VERSION: &str = "v62.0";
const HUBSPOT_API_BASE_URL: &str = "https://api.hubapi.com";
const HUBSPOT_API_VERSION: &str = "2026-03";
const SLACK_API_BASE_URL: &str = "https://slack.com/api";

/// Salesforce objects pipewarden knows how to sync. Stage and status metadata, users and
/// queues are always synced and need not be listed.
const SALESFORCE_OBJECTS: &[&str] = &[
    "Opportunity",
    "OpportunityHistory",
    "OpportunityFieldHistory",
    "Lead",
    "LeadHistory",
    "Contact",
    "Account",
    "Campaign",
    "CampaignMember",
];
/// Synced only when listed: it needs field history tracking switched on in the org.
const SALESFORCE_OPT_IN_OBJECTS: &[&str] = &["OpportunityFieldHistory"];
/// HubSpot objects pipewarden knows how to sync. Pipelines and owners are always synced.
const HUBSPOT_OBJECTS: &[&str] = &["deals", "contacts", "companies"];

/// Collects problems while converting; each helper returns `None` after recording one.
struct Checker<'a> {
    problems: Vec<Problem>,
    env: &'a HashMap<String, String>,
    base_dir: PathBuf,
}

impl Checker<'_> {
    fn fail(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            key: key.into(),
            message: message.into(),
        });
    }

    fn duration(&mut self, key: &str, value: Option<&str>, default: Duration) -> Duration {
        let Some(text) = value else { return default };
        match humantime::parse_duration(text) {
            Ok(duration) => duration,
            Err(err) => {
                self.fail(
                    key,
                    format!("`{text}` is not a duration like \"90s\", \"15m\" or \"2h\" ({err})"),
                );
                default
            }
        }
    }

    fn url(&mut self, key: &str, value: Option<&str>, default: &str) -> Option<Url> {
        let text = value.unwrap_or(default);
        match parse_service_url(text) {
            Ok(url) => Some(url),
            Err(message) => {
                self.fail(key, message);
                None
            }
        }
    }

    fn secret(&mut self, key: &str, source: Option<&SecretSource>) -> Option<Secret> {
        let Some(source) = source else {
            self.fail(key, "is required");
            return None;
        };
        match source.resolve(self.env, &self.base_dir) {
            Ok(secret) => Some(secret),
            Err(message) => {
                self.fail(key, message);
                None
            }
        }
    }

    fn optional_secret(&mut self, key: &str, source: Option<&SecretSource>) -> Option<Secret> {
        source.and_then(|source| self.secret(key, Some(source)))
    }

    fn choice<T: Copy>(&mut self, key: &str, value: &str, options: &[(&str, T)]) -> Option<T> {
        if let Some((_, found)) = options.iter().find(|(name, _)| *name == value) {
            return Some(*found);
        }
        let names: Vec<&str> = options.iter().map(|(name, _)| *name).collect();
        self.fail(
            key,
            format!("`{value}` is not one of: {}", names.join(", ")),
        );
        None
    }

    fn share(&mut self, key: &str, value: Option<f64>, default: f64) -> f64 {
        let share = value.unwrap_or(default);
        if !(share > 0.0 && share <= 1.0) {
            self.fail(
                key,
                format!("must be a share above 0 and at most 1, not {share}"),
            );
            return default;
        }
        share
    }

    fn field_names(&mut self, key: &str, names: &[String]) {
        for (index, name) in names.iter().enumerate() {
            if !is_field_name(name) {
                self.fail(
                    format!("{key}[{index}]"),
                    format!("`{name}` is not a CRM field API name (letters, digits and _)"),
                );
            }
        }
    }

    fn not_for(&mut self, key: &str, present: bool, why: &str) {
        if present {
            self.fail(key, format!("is not used {why}"));
        }
    }

    fn require_unique<'n>(&mut self, section: &str, names: impl Iterator<Item = &'n str>) {
        let mut seen = HashSet::new();
        for (index, name) in names.enumerate() {
            if !seen.insert(name) {
                self.fail(
                    format!("{section}[{index}].name"),
                    format!("`{name}` is used by another entry of {section}"),
                );
            }
        }
    }
}

/// A connection as declared in the file, possibly invalid.
struct Declared<'a> {
    name: &'a str,
    kind: Option<CrmKind>,
    slack_channel: Option<&'a str>,
}

/// The Slack section as far as rules are concerned.
enum SlackRoute<'a> {
    Absent,
    /// Present but invalid; its own problems are reported, rules are not blamed for it.
    Invalid,
    Valid(&'a SlackSettings),
}

/// Checks raw settings read from `source_file` (if any) and fills in defaults.
pub(crate) fn validate(
    raw: RawSettings,
    env: &HashMap<String, String>,
    source_file: Option<&Path>,
) -> Result<Settings, Vec<Problem>> {
    let base_dir = source_file
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let mut check = Checker {
        problems: Vec::new(),
        env,
        base_dir,
    };

    let store = store_settings(&mut check, &raw.store);
    let connections = connection_settings(&mut check, &raw.connections);
    // Later sections are checked against the connections as written, so that one bad
    // connection does not also make every rule that names it "unknown".
    let declared: Vec<Declared> = raw
        .connections
        .iter()
        .map(|c| Declared {
            name: c.name.as_str(),
            kind: match c.kind.as_str() {
                "salesforce" => Some(CrmKind::Salesforce),
                "hubspot" => Some(CrmKind::Hubspot),
                _ => None,
            },
            slack_channel: c.slack_channel.as_deref(),
        })
        .collect();
    let slack = raw
        .slack
        .as_ref()
        .and_then(|slack| slack_settings(&mut check, slack));
    let slack_route = match (&raw.slack, &slack) {
        (None, _) => SlackRoute::Absent,
        (Some(_), None) => SlackRoute::Invalid,
        (Some(_), Some(settings)) => SlackRoute::Valid(settings),
    };
    connection_channels(&mut check, &declared, &slack_route);
    let rules = rule_settings(&mut check, &raw.rules, &declared, &slack_route);
    let recycle = recycle_settings(&mut check, &raw.recycle, &declared, &rules);
    let api = api_settings(&mut check, &raw.api);

    if !check.problems.is_empty() {
        return Err(check.problems);
    }
    Ok(Settings {
        source_file: source_file.map(Path::to_path_buf),
        store,
        connections,
        slack,
        rules,
        recycle,
        api: api.expect("api settings exist when no problem was recorded"),
    })
}

fn store_settings(check: &mut Checker, raw: &RawStore) -> StoreSettings {
    let text = raw.url.as_deref().unwrap_or(DEFAULT_STORE_URL);
    let url = match parse_store_url(text) {
        Ok(url) => url,
        Err(message) => {
            check.fail("store.url", message);
            StoreUrl::Sqlite(DEFAULT_STORE_URL.to_string())
        }
    };
    let max_connections = raw.max_connections.unwrap_or(8);
    if max_connections == 0 {
        check.fail("store.max_connections", "must be at least 1");
    }
    StoreSettings {
        url,
        max_connections: max_connections.max(1),
        busy_timeout: check.duration(
            "store.busy_timeout",
            raw.busy_timeout.as_deref(),
            Duration::from_secs(5),
        ),
        sqlite_mmap_mib: sqlite_mmap_mib(check, raw.sqlite_mmap_mib),
    }
}

/// `store.sqlite_mmap_mib`, refused above what SQLite is built to map (it would cut the size
/// down without a word).
fn sqlite_mmap_mib(check: &mut Checker, value: Option<u32>) -> u32 {
    let mib = value.unwrap_or(DEFAULT_SQLITE_MMAP_MIB);
    if mib > MAX_SQLITE_MMAP_MIB {
        check.fail(
            "store.sqlite_mmap_mib",
            format!("{mib} is more than SQLite maps ({MAX_SQLITE_MMAP_MIB} MiB, 1 TiB)"),
        );
        return MAX_SQLITE_MMAP_MIB;
    }
    mib
}

/// 64 GiB, more than years of history fill. It is address space, not memory: the pages read
/// come from the same page cache as without the map, minus a system call and a copy each.
const DEFAULT_SQLITE_MMAP_MIB: u32 = 64 * 1024;

/// The ceiling `.cargo/config.toml` builds SQLite with (`SQLITE_MAX_MMAP_SIZE`), in MiB.
const MAX_SQLITE_MMAP_MIB: u32 = 1 << 20;

/// Parses a store URL; the message never repeats the URL, which may hold a password.
pub fn parse_store_url(text: &str) -> Result<StoreUrl, String> {
    if let Some(rest) = text.strip_prefix("sqlite:") {
        if rest.trim_start_matches('/').is_empty() {
            return Err("a sqlite URL needs a file path, as in sqlite://pipewarden.db".into());
        }
        return Ok(StoreUrl::Sqlite(text.to_string()));
    }
    if text.starts_with("postgres://") || text.starts_with("postgresql://") {
        let url =
            Url::parse(text).map_err(|err| format!("is not a valid PostgreSQL URL ({err})"))?;
        if url.host_str().is_none_or(str::is_empty) {
            return Err("a PostgreSQL URL needs a host, as in postgres://user@host/db".into());
        }
        return Ok(StoreUrl::Postgres(url));
    }
    Err("must start with sqlite:// or postgres:// (the scheme chooses the database)".into())
}

fn connection_settings(check: &mut Checker, raw: &[RawConnection]) -> Vec<ConnectionSettings> {
    check.require_unique("connections", raw.iter().map(|c| c.name.as_str()));
    raw.iter()
        .enumerate()
        .filter_map(|(index, connection)| {
            one_connection(check, &format!("connections[{index}]"), connection)
        })
        .collect()
}

fn one_connection(
    check: &mut Checker,
    key: &str,
    raw: &RawConnection,
) -> Option<ConnectionSettings> {
    if !is_connection_name(&raw.name) {
        check.fail(
            format!("{key}.name"),
            format!(
                "`{}` must be 1–63 lowercase letters, digits, - or _, starting with a letter or digit",
                raw.name
            ),
        );
    }
    let kind = check.choice(
        &format!("{key}.kind"),
        &raw.kind,
        &[
            ("salesforce", CrmKind::Salesforce),
            ("hubspot", CrmKind::Hubspot),
        ],
    )?;
    let endpoints = endpoints(check, key, kind, raw);
    let auth = auth_settings(
        check,
        &format!("{key}.auth"),
        kind,
        &raw.auth,
        endpoints.as_ref(),
    );
    let objects = objects(check, key, kind, raw.objects.as_deref());
    custom_fields(check, key, &raw.custom_fields, &objects);
    let poll_interval = check.duration(
        &format!("{key}.poll_interval"),
        raw.poll_interval.as_deref(),
        Duration::from_secs(15 * 60),
    );
    if poll_interval < Duration::from_secs(60) {
        check.fail(format!("{key}.poll_interval"), "must be at least 1m");
    }
    let poll_jitter = raw.poll_jitter.unwrap_or(0.1);
    if !(0.0..=0.5).contains(&poll_jitter) {
        check.fail(format!("{key}.poll_jitter"), "must be between 0.0 and 0.5");
    }
    let request_timeout = check.duration(
        &format!("{key}.request_timeout"),
        raw.request_timeout.as_deref(),
        Duration::from_secs(300),
    );
    let page_size = page_size(check, key, kind, raw.page_size);
    let lookback = check.duration(
        &format!("{key}.lookback"),
        raw.lookback.as_deref(),
        Duration::from_secs(5 * 60),
    );
    if lookback > Duration::from_secs(24 * 3600) {
        check.fail(format!("{key}.lookback"), "must be at most 1d");
    }
    let (bulk_threshold, bulk_chunk_size) = bulk_settings(check, key, kind, raw);
    let history_window_rows = history_window_rows(check, key, kind, raw.history_window_rows);
    let formula_refresh_interval = salesforce_interval(
        check,
        &format!("{key}.formula_refresh_interval"),
        kind,
        raw.formula_refresh_interval.as_deref(),
        "it reads Salesforce formula fields again",
    );
    let id_sweep_interval = salesforce_interval(
        check,
        &format!("{key}.id_sweep_interval"),
        kind,
        raw.id_sweep_interval.as_deref(),
        "HubSpot deletes are found by the archived sweep",
    );
    let extra_ca_file = raw
        .extra_ca_file
        .as_ref()
        .map(|path| check.base_dir.join(path));
    if let Some(path) = &extra_ca_file {
        if !path.is_file() {
            check.fail(
                format!("{key}.extra_ca_file"),
                format!("{} does not exist or is not a file", path.display()),
            );
        }
    }
    let limits = limit_settings(check, &format!("{key}.limits"), kind, &raw.limits);
    Some(ConnectionSettings {
        name: raw.name.clone(),
        kind,
        endpoints: endpoints?,
        auth: auth?,
        objects,
        custom_fields: raw.custom_fields.clone(),
        poll_interval,
        poll_jitter,
        request_timeout,
        page_size,
        lookback,
        bulk_threshold,
        bulk_chunk_size,
        history_window_rows,
        formula_refresh_interval,
        id_sweep_interval,
        extra_ca_file,
        slack_channel: raw.slack_channel.clone(),
        limits,
    })
}

/// `formula_refresh_interval` or `id_sweep_interval`: a duration of at least an hour, or
/// `"off"` (Salesforce only; default a day, as each pass reads every row or id again).
fn salesforce_interval(
    check: &mut Checker,
    field: &str,
    kind: CrmKind,
    value: Option<&str>,
    why_salesforce_only: &str,
) -> Option<Duration> {
    if kind != CrmKind::Salesforce {
        check.not_for(
            field,
            value.is_some(),
            &format!("by hubspot connections ({why_salesforce_only})"),
        );
        return None;
    }
    match value.map(str::trim) {
        Some("off") => None,
        text => {
            let every = check.duration(field, text, Duration::from_secs(24 * 3600));
            if every < Duration::from_secs(3600) {
                check.fail(field, "must be at least 1h, or \"off\"");
            }
            Some(every)
        }
    }
}

/// Default `bulk_threshold`: below about 50,000 rows REST pages cost as few calls as a job's
/// create, polls and chunks do and start at once; above it a job is cheaper and resumable.
const DEFAULT_BULK_THRESHOLD: u64 = 50_000;
/// Default `bulk_chunk_size`: ten REST pages, a CSV chunk of a few megabytes.
const DEFAULT_BULK_CHUNK_SIZE: u32 = 20_000;

/// `bulk_threshold` (a count or `"off"`) and `bulk_chunk_size` (100–500,000), Salesforce only.
fn bulk_settings(
    check: &mut Checker,
    key: &str,
    kind: CrmKind,
    raw: &RawConnection,
) -> (Option<u64>, u32) {
    if kind != CrmKind::Salesforce {
        let why = "by hubspot connections (Bulk API 2.0 is Salesforce's)";
        check.not_for(
            &format!("{key}.bulk_threshold"),
            raw.bulk_threshold.is_some(),
            why,
        );
        check.not_for(
            &format!("{key}.bulk_chunk_size"),
            raw.bulk_chunk_size.is_some(),
            why,
        );
    }
    let threshold = match &raw.bulk_threshold {
        None => Some(DEFAULT_BULK_THRESHOLD),
        Some(RawBulkThreshold::Count(count)) => Some(*count),
        Some(RawBulkThreshold::Word(word)) if word.trim() == "off" => None,
        Some(RawBulkThreshold::Word(word)) => match word.trim().parse::<u64>() {
            Ok(count) => Some(count),
            Err(_) => {
                check.fail(
                    format!("{key}.bulk_threshold"),
                    format!("`{word}` is neither a record count (0 = always) nor \"off\""),
                );
                Some(DEFAULT_BULK_THRESHOLD)
            }
        },
    };
    let chunk = raw.bulk_chunk_size.unwrap_or(DEFAULT_BULK_CHUNK_SIZE);
    if !(100..=500_000).contains(&chunk) {
        check.fail(
            format!("{key}.bulk_chunk_size"),
            "must be between 100 and 500000",
        );
    }
    (threshold, chunk)
}

/// Default `history_window_rows`: 100 REST pages, well below the rows a history query reads
/// before it times out, and enough that window edges add few calls.
const DEFAULT_HISTORY_WINDOW_ROWS: u64 = 200_000;

/// `history_window_rows` (at least 1), Salesforce only.
fn history_window_rows(check: &mut Checker, key: &str, kind: CrmKind, value: Option<u32>) -> u64 {
    if kind != CrmKind::Salesforce {
        check.not_for(
            &format!("{key}.history_window_rows"),
            value.is_some(),
            "by hubspot connections (HubSpot history comes with its records)",
        );
    }
    let rows = value.map_or(DEFAULT_HISTORY_WINDOW_ROWS, u64::from);
    if rows == 0 {
        check.fail(format!("{key}.history_window_rows"), "must be at least 1");
    }
    rows.max(1)
}

/// The page size: Salesforce accepts query batch sizes of 200–2,000; HubSpot search pages of up
/// to 200 (its list pages stop at 100 whatever is asked).
fn page_size(check: &mut Checker, key: &str, kind: CrmKind, value: Option<u32>) -> u32 {
    let (range, default) = match kind {
        CrmKind::Salesforce => (200..=2_000, 2_000),
        CrmKind::Hubspot => (1..=200, 200),
    };
    let size = value.unwrap_or(default);
    if !range.contains(&size) {
        check.fail(
            format!("{key}.page_size"),
            format!(
                "must be between {} and {} for {}",
                range.start(),
                range.end(),
                kind.as_str()
            ),
        );
    }
    size
}

fn endpoints(
    check: &mut Checker,
    key: &str,
    kind: CrmKind,
    raw: &RawConnection,
) -> Option<Endpoints> {
    match kind {
        CrmKind::Salesforce => {
            check.not_for(
                &format!("{key}.api_base_url"),
                raw.api_base_url.is_some(),
                "by salesforce connections (use login_url)",
            );
            let login_url = check.url(
                &format!("{key}.login_url"),
                raw.login_url.as_deref(),
                SALESFORCE_LOGIN_URL,
            );
            let instance_url = match raw.instance_url.as_deref() {
                Some(text) => Some(check.url(&format!("{key}.instance_url"), Some(text), "")?),
                None => None,
            };
            let api_version = raw.api_version.as_deref().unwrap_or(SALESFORCE_API_VERSION);
            if !is_salesforce_version(api_version) {
                check.fail(
                    format!("{key}.api_version"),
                    format!("`{api_version}` is not a Salesforce API version like v62.0"),
                );
            }
            Some(Endpoints::Salesforce {
                login_url: login_url?,
                instance_url,
                api_version: api_version.to_string(),
            })
        }
        CrmKind::Hubspot => {
            let why = "by hubspot connections (use api_base_url)";
            check.not_for(&format!("{key}.login_url"), raw.login_url.is_some(), why);
            check.not_for(
                &format!("{key}.instance_url"),
                raw.instance_url.is_some(),
                why,
            );
            let api_base_url = check.url(
                &format!("{key}.api_base_url"),
                raw.api_base_url.as_deref(),
                HUBSPOT_API_BASE_URL,
            );
            let api_version = raw.api_version.as_deref().unwrap_or(HUBSPOT_API_VERSION);
            if !matches!(api_version, "2026-03" | "v3") {
                check.fail(
                    format!("{key}.api_version"),
                    format!("`{api_version}` is not one of: 2026-03, v3"),
                );
            }
            Some(Endpoints::Hubspot {
                api_base_url: api_base_url?,
                api_version: api_version.to_string(),
            })
        }
    }
}

#[derive(Clone, Copy)]
enum AuthKind {
    JwtBearer,
    RefreshToken,
    ClientCredentials,
    PrivateApp,
    Oauth,
}

fn auth_settings(
    check: &mut Checker,
    key: &str,
    kind: CrmKind,
    raw: &RawAuth,
    endpoints: Option<&Endpoints>,
) -> Option<AuthSettings> {
    let options: &[(&str, AuthKind)] = match kind {
        CrmKind::Salesforce => &[
            ("jwt_bearer", AuthKind::JwtBearer),
            ("refresh_token", AuthKind::RefreshToken),
            ("client_credentials", AuthKind::ClientCredentials),
        ],
        CrmKind::Hubspot => &[
            ("private_app", AuthKind::PrivateApp),
            ("oauth", AuthKind::Oauth),
        ],
    };
    let auth_kind = check.choice(&format!("{key}.kind"), &raw.kind, options)?;
    let field = |name: &str| format!("{key}.{name}");
    let why = format!("by auth kind {}", raw.kind);
    let allowed: &[&str] = match auth_kind {
        AuthKind::JwtBearer => &["client_id", "username", "audience", "private_key"],
        AuthKind::RefreshToken => &["client_id", "client_secret", "refresh_token"],
        AuthKind::ClientCredentials => &["client_id", "client_secret"],
        AuthKind::PrivateApp => &["token"],
        AuthKind::Oauth => &["client_id", "client_secret", "refresh_token"],
    };
    let present = [
        ("client_id", raw.client_id.is_some()),
        ("username", raw.username.is_some()),
        ("audience", raw.audience.is_some()),
        ("client_secret", raw.client_secret.is_some()),
        ("refresh_token", raw.refresh_token.is_some()),
        ("private_key", raw.private_key.is_some()),
        ("token", raw.token.is_some()),
    ];
    for (name, is_present) in present {
        check.not_for(&field(name), is_present && !allowed.contains(&name), &why);
    }
    let required_text = |check: &mut Checker, name: &str, value: &Option<String>| match value
        .as_deref()
        .map(str::trim)
    {
        Some(text) if !text.is_empty() => Some(text.to_string()),
        _ => {
            check.fail(field(name), format!("is required {why}"));
            None
        }
    };
    match auth_kind {
        AuthKind::JwtBearer => {
            let client_id = required_text(check, "client_id", &raw.client_id);
            let username = required_text(check, "username", &raw.username);
            let private_key = check.secret(&field("private_key"), raw.private_key.as_ref());
            let audience = raw
                .audience
                .clone()
                .unwrap_or_else(|| default_jwt_audience(endpoints));
            Some(AuthSettings::JwtBearer {
                client_id: client_id?,
                username: username?,
                audience,
                private_key: private_key?,
            })
        }
        AuthKind::RefreshToken => {
            let client_id = required_text(check, "client_id", &raw.client_id);
            let client_secret =
                check.optional_secret(&field("client_secret"), raw.client_secret.as_ref());
            let refresh_token = check.secret(&field("refresh_token"), raw.refresh_token.as_ref());
            Some(AuthSettings::RefreshToken {
                client_id: client_id?,
                client_secret,
                refresh_token: refresh_token?,
            })
        }
        AuthKind::ClientCredentials => {
            if let Some(Endpoints::Salesforce { login_url, .. }) = endpoints {
                if is_generic_salesforce_login(login_url) {
                    check.fail(
                        format!("{}.login_url", key.trim_end_matches(".auth")),
                        "the client_credentials flow must use the org's My Domain \
                         (https://NAME.my.salesforce.com); login/test.salesforce.com refuse it",
                    );
                }
            }
            let client_id = required_text(check, "client_id", &raw.client_id);
            let client_secret = check.secret(&field("client_secret"), raw.client_secret.as_ref());
            Some(AuthSettings::ClientCredentials {
                client_id: client_id?,
                client_secret: client_secret?,
            })
        }
        AuthKind::PrivateApp => Some(AuthSettings::PrivateApp {
            token: check.secret(&field("token"), raw.token.as_ref())?,
        }),
        AuthKind::Oauth => {
            let client_id = required_text(check, "client_id", &raw.client_id);
            let client_secret = check.secret(&field("client_secret"), raw.client_secret.as_ref());
            let refresh_token = check.secret(&field("refresh_token"), raw.refresh_token.as_ref());
            Some(AuthSettings::Oauth {
                client_id: client_id?,
                client_secret: client_secret?,
                refresh_token: refresh_token?,
            })
        }
    }
}

/// Sandboxes sign JWTs for test.salesforce.com; everything else for login.salesforce.com.
fn default_jwt_audience(endpoints: Option<&Endpoints>) -> String {
    let sandbox = matches!(endpoints, Some(Endpoints::Salesforce { login_url, .. })
        if login_url.host_str().is_some_and(|host| host == "test.salesforce.com" || host.ends_with(".sandbox.my.salesforce.com")));
    if sandbox {
        "https://test.salesforce.com".to_string()
    } else {
        SALESFORCE_LOGIN_URL.to_string()
    }
}

fn is_generic_salesforce_login(url: &Url) -> bool {
    matches!(
        url.host_str(),
        Some("login.salesforce.com" | "test.salesforce.com")
    )
}

fn objects(check: &mut Checker, key: &str, kind: CrmKind, raw: Option<&[String]>) -> Vec<String> {
    let known = match kind {
        CrmKind::Salesforce => SALESFORCE_OBJECTS,
        CrmKind::Hubspot => HUBSPOT_OBJECTS,
    };
    let Some(listed) = raw else {
        return known
            .iter()
            .filter(|name| !SALESFORCE_OPT_IN_OBJECTS.contains(name))
            .map(|name| name.to_string())
            .collect();
    };
    if listed.is_empty() {
        check.fail(format!("{key}.objects"), "must list at least one object");
    }
    for (index, name) in listed.iter().enumerate() {
        if !known.contains(&name.as_str()) {
            check.fail(
                format!("{key}.objects[{index}]"),
                format!(
                    "`{name}` is not a {} object pipewarden syncs ({})",
                    kind.as_str(),
                    known.join(", ")
                ),
            );
        }
    }
    listed.to_vec()
}

fn custom_fields(check: &mut Checker, key: &str, fields: &[String], objects: &[String]) {
    for (index, entry) in fields.iter().enumerate() {
        let entry_key = format!("{key}.custom_fields[{index}]");
        match entry.split_once('.') {
            Some((object, field)) if is_field_name(field) => {
                if !objects.iter().any(|name| name == object) {
                    check.fail(
                        entry_key,
                        format!("object `{object}` is not in this connection's objects"),
                    );
                }
            }
            _ => check.fail(
                entry_key,
                format!("`{entry}` must be written Object.Field, as in Opportunity.Budget__c"),
            ),
        }
    }
}

fn limit_settings(check: &mut Checker, key: &str, kind: CrmKind, raw: &RawLimits) -> LimitSettings {
    let hubspot_tier = match (kind, raw.hubspot_tier.as_deref()) {
        (CrmKind::Salesforce, Some(_)) => {
            check.fail(
                format!("{key}.hubspot_tier"),
                "is not used by salesforce connections",
            );
            None
        }
        (CrmKind::Salesforce, None) => None,
        (CrmKind::Hubspot, tier) => check.choice(
            &format!("{key}.hubspot_tier"),
            tier.unwrap_or("professional"),
            &[
                ("starter", HubspotTier::Starter),
                ("professional", HubspotTier::Professional),
                ("enterprise", HubspotTier::Enterprise),
                ("api_add_on", HubspotTier::ApiAddOn),
            ],
        ),
    };
    // HubSpot's budget is per rolling 10 s; a steady tenth of it per second never trips it.
    let default_rate = hubspot_tier.map_or(10, |tier| tier.ten_second_limit() / 10);
    let requests_per_second = raw.requests_per_second.unwrap_or(default_rate);
    if requests_per_second == 0 {
        check.fail(format!("{key}.requests_per_second"), "must be at least 1");
    }
    let daily_budget_share = check.share(
        &format!("{key}.daily_budget_share"),
        raw.daily_budget_share,
        0.25,
    );
    let org_ceiling_share = check.share(
        &format!("{key}.org_ceiling_share"),
        raw.org_ceiling_share,
        0.8,
    );
    if daily_budget_share > org_ceiling_share {
        check.fail(
            format!("{key}.daily_budget_share"),
            format!("{daily_budget_share} is above org_ceiling_share {org_ceiling_share}"),
        );
    }
    LimitSettings {
        requests_per_second: requests_per_second.max(1),
        burst: raw.burst.unwrap_or(requests_per_second).max(1),
        max_concurrent_requests: raw.max_concurrent_requests.unwrap_or(4).max(1),
        daily_budget_share,
        org_ceiling_share,
        hubspot_tier,
    }
}

fn slack_settings(check: &mut Checker, raw: &RawSlack) -> Option<SlackSettings> {
    let delivery = match (&raw.webhook_url, &raw.bot_token) {
        (Some(source), None) => {
            check.not_for(
                "slack.api_base_url",
                raw.api_base_url.is_some(),
                "with webhook_url",
            );
            check.not_for(
                "slack.default_channel",
                raw.default_channel.is_some(),
                "with webhook_url (the webhook fixes the channel)",
            );
            let url = check.secret("slack.webhook_url", Some(source))?;
            if let Err(message) = parse_service_url(url.expose()) {
                // The URL is the credential: say what is wrong without echoing it.
                check.fail(
                    "slack.webhook_url",
                    message.replace(url.expose(), "the webhook URL"),
                );
                return None;
            }
            SlackDelivery::Webhook { url }
        }
        (None, Some(source)) => {
            let token = check.secret("slack.bot_token", Some(source));
            let api_base_url = check.url(
                "slack.api_base_url",
                raw.api_base_url.as_deref(),
                SLACK_API_BASE_URL,
            );
            SlackDelivery::BotToken {
                token: token?,
                api_base_url: api_base_url?,
            }
        }
        _ => {
            check.fail("slack", "give exactly one of webhook_url or bot_token");
            return None;
        }
    };
    let messages_per_second_per_channel = raw.messages_per_second_per_channel.unwrap_or(1);
    if !(1..=5).contains(&messages_per_second_per_channel) {
        check.fail(
            "slack.messages_per_second_per_channel",
            "must be between 1 and 5 (Slack allows about 1)",
        );
    }
    let digest_at = raw
        .digest_at
        .as_deref()
        .and_then(|text| digest_time(check, "slack.digest_at", text));
    let webhook = matches!(delivery, SlackDelivery::Webhook { .. });
    let channel_digests = raw
        .channel_digests
        .iter()
        .filter_map(|(channel, text)| {
            let key = format!("slack.channel_digests.\"{channel}\"");
            if webhook {
                check.fail(
                    key,
                    "needs slack.bot_token; a webhook posts to one channel, set slack.digest_at",
                );
                return None;
            }
            if text == "off" {
                return Some((channel.clone(), None));
            }
            digest_time(check, &key, text).map(|at| (channel.clone(), Some(at)))
        })
        .collect();
    Some(SlackSettings {
        delivery,
        default_channel: raw.default_channel.clone(),
        messages_per_second_per_channel,
        digest_at,
        channel_digests,
    })
}

/// A digest's UTC time of day (`HH:MM`), or an error at `key`.
fn digest_time(check: &mut Checker, key: &str, text: &str) -> Option<chrono::NaiveTime> {
    chrono::NaiveTime::parse_from_str(text, "%H:%M")
        .map_err(|_| {
            check.fail(
                key,
                format!("`{text}` is not a UTC time like \"09:00\" (or \"off\" for a channel)"),
            )
        })
        .ok()
}

/// Violations a revert-mode rule reverts per evaluation unless `max_reverts_per_run` says.
const DEFAULT_REVERTS_PER_RUN: u32 = 25;

fn rule_settings(
    check: &mut Checker,
    raw: &[RawRule],
    connections: &[Declared],
    slack: &SlackRoute,
) -> Vec<RuleSettings> {
    check.require_unique("rules", raw.iter().map(|r| r.name.as_str()));
    raw.iter()
        .enumerate()
        .filter_map(|(index, rule)| {
            one_rule(check, &format!("rules[{index}]"), rule, connections, slack)
        })
        .collect()
}

fn one_rule(
    check: &mut Checker,
    key: &str,
    raw: &RawRule,
    connections: &[Declared],
    slack: &SlackRoute,
) -> Option<RuleSettings> {
    require_connection(
        check,
        &format!("{key}.connection"),
        &raw.connection,
        connections,
    );
    let mode = check.choice(
        &format!("{key}.mode"),
        raw.mode.as_deref().unwrap_or("record"),
        &[
            ("record", RuleMode::Record),
            ("alert", RuleMode::Alert),
            ("revert", RuleMode::Revert),
        ],
    )?;
    let revert = mode == RuleMode::Revert;
    check.not_for(
        &format!("{key}.dry_run"),
        !revert && raw.dry_run.is_some(),
        "by rules whose mode is not revert",
    );
    check.not_for(
        &format!("{key}.max_reverts_per_run"),
        !revert && raw.max_reverts_per_run.is_some(),
        "by rules whose mode is not revert",
    );
    let max_reverts_per_run = raw.max_reverts_per_run.unwrap_or(DEFAULT_REVERTS_PER_RUN);
    if max_reverts_per_run == 0 {
        check.fail(format!("{key}.max_reverts_per_run"), "must be at least 1");
    }
    if mode != RuleMode::Record {
        let connection_channel = connections
            .iter()
            .find(|c| c.name == raw.connection)
            .and_then(|c| c.slack_channel);
        check_alert_route(
            check,
            key,
            raw.channel.as_deref(),
            connection_channel,
            slack,
        );
    }
    check.field_names(
        &format!("{key}.closed_lost_requires"),
        &raw.closed_lost_requires,
    );
    check.field_names(&format!("{key}.backward_requires"), &raw.backward_requires);
    let mut seen = HashSet::new();
    let stages = raw
        .stages
        .iter()
        .enumerate()
        .map(|(index, gate)| {
            let gate_key = format!("{key}.stages[{index}]");
            if gate.stage.trim().is_empty() {
                check.fail(format!("{gate_key}.stage"), "must name a stage");
            } else if !seen.insert(gate.stage.as_str()) {
                check.fail(
                    format!("{gate_key}.stage"),
                    format!("`{}` appears twice in this rule", gate.stage),
                );
            }
            check.field_names(&format!("{gate_key}.required"), &gate.required);
            let max_dwell = gate.max_dwell.as_deref().map(|text| {
                check.duration(&format!("{gate_key}.max_dwell"), Some(text), Duration::ZERO)
            });
            StageGate {
                stage: gate.stage.clone(),
                required: gate.required.clone(),
                max_dwell,
            }
        })
        .collect();
    Some(RuleSettings {
        name: raw.name.clone(),
        connection: raw.connection.clone(),
        pipeline: raw
            .pipeline
            .clone()
            .unwrap_or_else(|| "default".to_string()),
        mode,
        dry_run: raw.dry_run.unwrap_or(true),
        max_reverts_per_run,
        channel: raw.channel.clone(),
        forbid_skipping: raw.forbid_skipping,
        closed_lost_requires: raw.closed_lost_requires.clone(),
        backward_requires: raw.backward_requires.clone(),
        exempt_owners: raw.exempt_owners.clone(),
        exempt_teams: raw.exempt_teams.clone(),
        stages,
    })
}

/// A connection's `slack_channel` needs a bot token: a webhook posts to its own channel.
fn connection_channels(check: &mut Checker, connections: &[Declared], slack: &SlackRoute) {
    for (index, connection) in connections.iter().enumerate() {
        let Some(channel) = connection.slack_channel else {
            continue;
        };
        let key = format!("connections[{index}].slack_channel");
        if channel.trim().is_empty() {
            check.fail(key, "must name a channel, as in \"#revops-emea\"");
            continue;
        }
        match slack {
            SlackRoute::Absent => check.fail(key, "needs a [slack] section with bot_token"),
            SlackRoute::Valid(slack) if matches!(slack.delivery, SlackDelivery::Webhook { .. }) => {
                check.fail(
                    key,
                    "needs slack.bot_token; a webhook always posts to its own channel",
                )
            }
            _ => {}
        }
    }
}

/// An alerting rule needs a Slack route: a webhook, or a bot token plus a channel (the
/// rule's, its connection's or the default one).
fn check_alert_route(
    check: &mut Checker,
    key: &str,
    channel: Option<&str>,
    connection_channel: Option<&str>,
    slack: &SlackRoute,
) {
    let slack = match slack {
        SlackRoute::Absent => {
            check.fail(format!("{key}.mode"), "alerts need a [slack] section");
            return;
        }
        SlackRoute::Invalid => return,
        SlackRoute::Valid(slack) => slack,
    };
    match (&slack.delivery, slack.default_channel.is_some()) {
        (SlackDelivery::Webhook { .. }, _) if channel.is_some() => check.fail(
            format!("{key}.channel"),
            "a per-rule channel needs slack.bot_token; a webhook always posts to its own channel",
        ),
        (SlackDelivery::BotToken { .. }, false)
            if channel.is_none() && connection_channel.is_none() =>
        {
            check.fail(
                format!("{key}.channel"),
                "is required when neither slack.default_channel nor the connection's slack_channel is set",
            )
        }
        _ => {}
    }
}

fn recycle_settings(
    check: &mut Checker,
    raw: &RawRecycle,
    connections: &[Declared],
    rules: &[RuleSettings],
) -> RecycleSettings {
    let max_actions_per_run = raw.max_actions_per_run.unwrap_or(100);
    if max_actions_per_run == 0 {
        check.fail("recycle.max_actions_per_run", "must be at least 1");
    }
    check.require_unique(
        "recycle.policies",
        raw.policies.iter().map(|p| p.name.as_str()),
    );
    let policies = raw
        .policies
        .iter()
        .enumerate()
        .filter_map(|(index, policy)| {
            let key = format!("recycle.policies[{index}]");
            one_policy(check, &key, policy, max_actions_per_run, connections, rules)
        })
        .collect();
    RecycleSettings {
        max_actions_per_run,
        summary_channel: raw.summary_channel.clone(),
        policies,
    }
}

fn one_policy(
    check: &mut Checker,
    key: &str,
    raw: &RawPolicy,
    run_cap: u32,
    connections: &[Declared],
    rules: &[RuleSettings],
) -> Option<PolicySettings> {
    let crm = require_connection(
        check,
        &format!("{key}.connection"),
        &raw.connection,
        connections,
    );
    let kind = check.choice(
        &format!("{key}.kind"),
        &raw.kind,
        &[
            ("stale", PolicyKind::Stale),
            ("unworked", PolicyKind::Unworked),
            ("stalled", PolicyKind::Stalled),
            ("lost", PolicyKind::Lost),
            ("disqualified", PolicyKind::Disqualified),
        ],
    )?;
    let object = policy_object(check, key, kind, crm, raw.object.as_deref())?;
    check_policy_thresholds(check, key, kind, raw, rules);
    let max_actions_per_run = raw.max_actions_per_run.unwrap_or(run_cap);
    if max_actions_per_run == 0 || max_actions_per_run > run_cap {
        check.fail(
            format!("{key}.max_actions_per_run"),
            format!("must be between 1 and recycle.max_actions_per_run ({run_cap})"),
        );
    }
    let actions = recycle_actions(check, &format!("{key}.actions"), kind, crm, &raw.actions);
    Some(PolicySettings {
        name: raw.name.clone(),
        connection: raw.connection.clone(),
        kind,
        object,
        after_days: raw.after_days,
        dry_run: raw.dry_run.unwrap_or(true),
        max_actions_per_run,
        alert_first: raw
            .alert_first
            .unwrap_or(matches!(kind, PolicyKind::Unworked | PolicyKind::Stalled)),
        grace_days: raw.grace_days.unwrap_or(3),
        loss_reasons: raw.loss_reasons.clone(),
        persona_titles: raw.persona_titles.clone(),
        persona_industries: raw.persona_industries.clone(),
        exclude_owners: raw.exclude_owners.clone(),
        exclude_open_deals: raw.exclude_open_deals.unwrap_or(true),
        exclude_do_not_contact: raw.exclude_do_not_contact.unwrap_or(true),
        cooldown_days: raw.cooldown_days.unwrap_or(90),
        actions,
    })
}

fn policy_object(
    check: &mut Checker,
    key: &str,
    kind: PolicyKind,
    crm: Option<CrmKind>,
    raw: Option<&str>,
) -> Option<PolicyObject> {
    let person_default = if crm == Some(CrmKind::Hubspot) {
        "contact"
    } else {
        "lead"
    };
    let default = match kind {
        PolicyKind::Stalled | PolicyKind::Lost => "deal",
        _ => person_default,
    };
    let object = check.choice(
        &format!("{key}.object"),
        raw.unwrap_or(default),
        &[
            ("lead", PolicyObject::Lead),
            ("contact", PolicyObject::Contact),
            ("deal", PolicyObject::Deal),
        ],
    )?;
    let deal_policy = matches!(kind, PolicyKind::Stalled | PolicyKind::Lost);
    if deal_policy != (object == PolicyObject::Deal) {
        let wanted = if deal_policy {
            "deal"
        } else {
            "lead or contact"
        };
        check.fail(
            format!("{key}.object"),
            format!("a {kind:?} policy selects a {wanted}").to_lowercase(),
        );
    }
    if crm == Some(CrmKind::Hubspot) && object == PolicyObject::Lead {
        check.fail(
            format!("{key}.object"),
            "hubspot connections recycle contacts, not leads",
        );
    }
    Some(object)
}

/// Each kind reads some of the tuning keys and must not be given the others.
fn check_policy_thresholds(
    check: &mut Checker,
    key: &str,
    kind: PolicyKind,
    raw: &RawPolicy,
    rules: &[RuleSettings],
) {
    let why = format!("by {} policies", raw.kind);
    if kind == PolicyKind::Stalled {
        let has_dwell = rules.iter().any(|rule| {
            rule.connection == raw.connection
                && rule.stages.iter().any(|gate| gate.max_dwell.is_some())
        });
        if !has_dwell {
            check.fail(
                format!("{key}.kind"),
                "stalled policies need a max_dwell on some [[rules.stages]] of this connection",
            );
        }
    } else if raw.after_days == 0 {
        check.fail(format!("{key}.after_days"), "must be at least 1");
    }
    let lost = kind == PolicyKind::Lost;
    if lost && raw.loss_reasons.is_empty() {
        check.fail(
            format!("{key}.loss_reasons"),
            "must list the recoverable loss reasons",
        );
    }
    check.not_for(
        &format!("{key}.loss_reasons"),
        !lost && !raw.loss_reasons.is_empty(),
        &why,
    );
    let persona = !raw.persona_titles.is_empty() || !raw.persona_industries.is_empty();
    let disqualified = kind == PolicyKind::Disqualified;
    if disqualified && !persona {
        check.fail(
            format!("{key}.persona_titles"),
            "disqualified policies need persona_titles or persona_industries",
        );
    }
    check.not_for(
        &format!("{key}.persona_titles"),
        !disqualified && persona,
        &why,
    );
}

fn recycle_actions(
    check: &mut Checker,
    key: &str,
    kind: PolicyKind,
    crm: Option<CrmKind>,
    raw: &RawActions,
) -> RecycleActions {
    let field = |name: &str| format!("{key}.{name}");
    match crm {
        Some(CrmKind::Salesforce) => {
            let why = "on salesforce connections";
            check.not_for(
                &field("set_lifecycle_stage"),
                raw.set_lifecycle_stage.is_some(),
                why,
            );
            check.not_for(&field("add_to_list"), raw.add_to_list.is_some(), why);
        }
        Some(CrmKind::Hubspot) => {
            let why = "on hubspot connections";
            check.not_for(
                &field("use_assignment_rules"),
                raw.use_assignment_rules.is_some(),
                why,
            );
            check.not_for(
                &field("add_to_campaign"),
                raw.add_to_campaign.is_some(),
                why,
            );
            // Recycling writes HubSpot contacts and lists; it creates no HubSpot tasks.
            check.not_for(&field("create_task"), raw.create_task.is_some(), why);
        }
        None => {}
    }
    let assignment_rules = raw.use_assignment_rules.unwrap_or(false);
    if assignment_rules && raw.set_owner.is_some() {
        check.fail(
            field("set_owner"),
            "cannot be combined with use_assignment_rules",
        );
    }
    check.not_for(
        &field("campaign_member_status"),
        raw.campaign_member_status.is_some() && raw.add_to_campaign.is_none(),
        "without add_to_campaign",
    );
    let stage_action = raw.stage_action.as_deref().and_then(|text| {
        check.choice(
            &field("stage_action"),
            text,
            &[
                ("move_back", StageAction::MoveBack),
                ("close_lost", StageAction::CloseLost),
            ],
        )
    });
    check.not_for(
        &field("stage_action"),
        raw.stage_action.is_some() && kind != PolicyKind::Stalled,
        "by policies other than stalled",
    );
    let writes_contacts = raw.set_status.is_some()
        || raw.set_lifecycle_stage.is_some()
        || raw.set_owner.is_some()
        || assignment_rules
        || raw.add_to_campaign.is_some()
        || raw.add_to_list.is_some()
        || raw.create_task.is_some();
    if kind == PolicyKind::Stalled
        && writes_contacts
        && stage_action != Some(StageAction::CloseLost)
    {
        // A stalled deal itself only changes stage; lead and contact writes are for the
        // contacts of the deals it closes lost.
        check.fail(
            key,
            "a stalled policy writes contacts (set_status, set_owner, add_to_campaign, …) only \
             with stage_action = \"close_lost\"",
        );
    }
    let writes_something = raw.set_status.is_some()
        || raw.set_lifecycle_stage.is_some()
        || raw.set_owner.is_some()
        || assignment_rules
        || raw.add_to_campaign.is_some()
        || raw.add_to_list.is_some()
        || raw.create_task.is_some()
        || raw.stage_action.is_some();
    if !writes_something && kind != PolicyKind::Stalled {
        check.fail(
            key,
            "must name at least one action (set_status, set_owner, add_to_campaign, …)",
        );
    }
    RecycleActions {
        set_status: raw.set_status.clone(),
        set_lifecycle_stage: raw.set_lifecycle_stage.clone(),
        set_owner: raw.set_owner.clone(),
        use_assignment_rules: assignment_rules,
        add_to_campaign: raw.add_to_campaign.clone(),
        campaign_member_status: raw.add_to_campaign.as_ref().map(|_| {
            raw.campaign_member_status
                .clone()
                .unwrap_or_else(|| "Sent".to_string())
        }),
        add_to_list: raw.add_to_list.clone(),
        create_task: raw.create_task.clone(),
        task_due_in_days: raw.task_due_in_days.unwrap_or(3),
        stage_action,
    }
}

fn api_settings(check: &mut Checker, raw: &RawApi) -> Option<ApiSettings> {
    let text = raw.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
    let listen: SocketAddr = match text.parse() {
        Ok(addr) => addr,
        Err(_) => {
            check.fail(
                "api.listen",
                format!("`{text}` is not an address like 127.0.0.1:8080"),
            );
            return None;
        }
    };
    let bearer_token = check.optional_secret("api.bearer_token", raw.bearer_token.as_ref());
    if !listen.ip().is_loopback() && raw.bearer_token.is_none() {
        check.fail(
            "api.bearer_token",
            format!("is required when the API listens beyond loopback ({listen})"),
        );
    }
    Some(ApiSettings {
        listen,
        bearer_token,
    })
}

fn require_connection(
    check: &mut Checker,
    key: &str,
    name: &str,
    connections: &[Declared],
) -> Option<CrmKind> {
    match connections.iter().find(|c| c.name == name) {
        Some(declared) => declared.kind,
        None => {
            check.fail(key, format!("no connection is named `{name}`"));
            None
        }
    }
}

/// Parses the URL of a remote service; plain http is allowed only on loopback (the emulator,
/// a local Slack receiver), because credentials travel over it.
fn parse_service_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|err| format!("`{text}` is not a valid URL ({err})"))?;
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_loopback_host(&url) => Ok(url),
        "http" => Err(format!(
            "`{text}` must use https (plain http is only allowed on loopback)"
        )),
        other => Err(format!("`{text}` has scheme `{other}`; use https")),
    }
}

fn is_loopback_host(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(name)) => name == "localhost",
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

fn is_connection_name(name: &str) -> bool {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    first_ok
        && name.len() <= 63
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

fn is_field_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_salesforce_version(text: &str) -> bool {
    text.strip_prefix('v')
        .and_then(|rest| rest.split_once('.'))
        .is_some_and(|(major, minor)| {
            !major.is_empty() && major.chars().all(|c| c.is_ascii_digit()) && minor == "0"
        })
}
