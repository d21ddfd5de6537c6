//! Configuration loading: every error names the key (and file, and line where it can).

use pipewarden::config::settings::{AuthSettings, StoreUrl};
use pipewarden::config::{load_with_env, ConfigError};

use crate::support::{env, ConfigDir};

const SALESFORCE: &str = r#"
[[connections]]
name = "acme"
kind = "salesforce"
[connections.auth]
kind = "refresh_token"
client_id = "3MVG9-test"
refresh_token = { env = "SF_REFRESH" }
"#;

/// `SALESFORCE` with `keys` added to its connection.
fn salesforce_with(keys: &str) -> String {
    SALESFORCE.replace(
        "kind = \"salesforce\"",
        &format!("kind = \"salesforce\"\n{keys}"),
    )
}

/// A HubSpot connection (token from `HS_TOKEN`) with `keys` added.
fn hubspot_with(keys: &str) -> String {
    format!(
        r#"
[[connections]]
name = "hs"
kind = "hubspot"
{keys}
[connections.auth]
kind = "private_app"
token = {{ env = "HS_TOKEN" }}
"#
    )
}

fn load(
    dir: &ConfigDir,
    text: &str,
    vars: &[(&str, &str)],
) -> Result<pipewarden::config::Settings, ConfigError> {
    let path = dir.write("pipewarden.toml", text);
    load_with_env(Some(&path), &env(vars))
}

fn problem_keys(err: &ConfigError) -> Vec<String> {
    err.problems().iter().map(|p| p.key.clone()).collect()
}

#[test]
fn a_missing_file_is_named() {
    let dir = ConfigDir::new();
    let path = dir.path().join("nope.toml");
    let err = load_with_env(Some(&path), &env(&[])).unwrap_err();
    assert!(matches!(err, ConfigError::Missing { .. }));
    assert_eq!(
        err.to_string(),
        format!("config file {} does not exist", path.display())
    );
}

#[test]
fn bad_toml_reports_file_and_line() {
    let dir = ConfigDir::new();
    let err = load(
        &dir,
        "[store]\nurl = \"sqlite://x.db\"\nmax_connections = = 3\n",
        &[],
    )
    .unwrap_err();
    let ConfigError::Syntax { line, ref path, .. } = err else {
        panic!("expected a syntax error, got {err}")
    };
    assert_eq!(line, 3);
    assert!(path.ends_with("pipewarden.toml"));
    assert!(err.to_string().contains("pipewarden.toml:3:"), "{err}");
}

#[test]
fn an_unknown_key_is_an_error_naming_key_file_and_line() {
    let dir = ConfigDir::new();
    let err = load(
        &dir,
        "[store]\nurl = \"sqlite://x.db\"\npool_size = 3\n",
        &[],
    )
    .unwrap_err();
    let message = err.to_string();
    assert!(message.contains("pipewarden.toml"), "{message}");
    assert!(message.contains("unknown field `pool_size`"), "{message}");
    assert!(message.contains("line 3"), "{message}");
    assert!(problem_keys(&err)[0].starts_with("store"), "{message}");
}

#[test]
fn a_wrong_type_names_the_key_and_line() {
    let dir = ConfigDir::new();
    let err = load(&dir, "[store]\nmax_connections = \"many\"\n", &[]).unwrap_err();
    assert_eq!(problem_keys(&err), vec!["store.max_connections"]);
    assert!(err.to_string().contains("line 2"), "{err}");
}

#[test]
fn a_memory_map_larger_than_sqlite_maps_is_refused() {
    let dir = ConfigDir::new();
    let err = load(&dir, "[store]\nsqlite_mmap_mib = 2000000\n", &[]).unwrap_err();
    assert_eq!(problem_keys(&err), vec!["store.sqlite_mmap_mib"]);
    assert!(err.to_string().contains("1048576 MiB"), "{err}");
    let fits = load(&dir, "[store]\nsqlite_mmap_mib = 1048576\n", &[]).unwrap();
    assert_eq!(fits.store.sqlite_mmap_mib, 1 << 20);
}

#[test]
fn a_missing_secret_variable_names_the_key_and_the_variable() {
    let dir = ConfigDir::new();
    let err = load(&dir, SALESFORCE, &[]).unwrap_err();
    assert_eq!(
        problem_keys(&err),
        vec!["connections[0].auth.refresh_token"]
    );
    assert!(
        err.to_string()
            .contains("environment variable SF_REFRESH is not set"),
        "{err}"
    );
}

#[test]
fn an_invalid_url_names_the_key() {
    let dir = ConfigDir::new();
    let text = salesforce_with("login_url = \"not a url\"");
    let err = load(&dir, &text, &[("SF_REFRESH", "x")]).unwrap_err();
    assert_eq!(problem_keys(&err), vec!["connections[0].login_url"]);
    assert!(err.to_string().contains("is not a valid URL"), "{err}");
}

#[test]
fn page_size_and_lookback_are_checked_per_crm() {
    let dir = ConfigDir::new();
    let text = salesforce_with("page_size = 100\nlookback = \"2d\"");
    let err = load(&dir, &text, &[("SF_REFRESH", "x")]).unwrap_err();
    assert_eq!(
        problem_keys(&err),
        vec!["connections[0].page_size", "connections[0].lookback"]
    );
    assert!(
        err.to_string()
            .contains("must be between 200 and 2000 for salesforce"),
        "{err}"
    );
    let text = salesforce_with("page_size = 500\nlookback = \"10m\"");
    let settings = load(&dir, &text, &[("SF_REFRESH", "x")]).unwrap();
    assert_eq!(settings.connections[0].page_size, 500);
    assert_eq!(
        settings.connections[0].lookback,
        std::time::Duration::from_secs(600)
    );
}

#[test]
fn bulk_threshold_is_a_count_or_off_and_salesforce_only() {
    let dir = ConfigDir::new();
    let defaults = load(&dir, SALESFORCE, &[("SF_REFRESH", "x")]).unwrap();
    assert_eq!(defaults.connections[0].bulk_threshold, Some(50_000));
    assert_eq!(defaults.connections[0].bulk_chunk_size, 20_000);
    let always = load(
        &dir,
        &salesforce_with("bulk_threshold = 0"),
        &[("SF_REFRESH", "x")],
    )
    .unwrap();
    assert_eq!(always.connections[0].bulk_threshold, Some(0));
    let never = load(
        &dir,
        &salesforce_with("bulk_threshold = \"off\"\nbulk_chunk_size = 5000"),
        &[("SF_REFRESH", "x")],
    )
    .unwrap();
    assert_eq!(never.connections[0].bulk_threshold, None);
    assert_eq!(never.connections[0].bulk_chunk_size, 5_000);
    let err = load(
        &dir,
        &salesforce_with("bulk_threshold = \"sometimes\"\nbulk_chunk_size = 10"),
        &[("SF_REFRESH", "x")],
    )
    .unwrap_err();
    assert_eq!(
        problem_keys(&err),
        vec![
            "connections[0].bulk_threshold",
            "connections[0].bulk_chunk_size"
        ]
    );
    assert!(err.to_string().contains("`sometimes` is neither"), "{err}");
    let err = load(
        &dir,
        &hubspot_with("bulk_threshold = 0"),
        &[("HS_TOKEN", "pat-x")],
    )
    .unwrap_err();
    assert_eq!(problem_keys(&err), vec!["connections[0].bulk_threshold"]);
}

#[test]
fn history_window_rows_is_positive_and_salesforce_only() {
    let dir = ConfigDir::new();
    let defaults = load(&dir, SALESFORCE, &[("SF_REFRESH", "x")]).unwrap();
    assert_eq!(defaults.connections[0].history_window_rows, 200_000);
    let lowered = load(
        &dir,
        &salesforce_with("history_window_rows = 50000"),
        &[("SF_REFRESH", "x")],
    )
    .unwrap();
    assert_eq!(lowered.connections[0].history_window_rows, 50_000);
    let err = load(
        &dir,
        &salesforce_with("history_window_rows = 0"),
        &[("SF_REFRESH", "x")],
    )
    .unwrap_err();
    assert_eq!(
        problem_keys(&err),
        vec!["connections[0].history_window_rows"]
    );
    assert!(err.to_string().contains("must be at least 1"), "{err}");
    let err = load(
        &dir,
        &hubspot_with("history_window_rows = 1000"),
        &[("HS_TOKEN", "pat-x")],
    )
    .unwrap_err();
    assert_eq!(
        problem_keys(&err),
        vec!["connections[0].history_window_rows"]
    );
}

#[test]
fn plain_http_is_refused_off_loopback_and_allowed_on_it() {
    let dir = ConfigDir::new();
    let remote = salesforce_with("login_url = \"http://login.salesforce.com\"");
    let err = load(&dir, &remote, &[("SF_REFRESH", "x")]).unwrap_err();
    assert!(err.to_string().contains("must use https"), "{err}");
    let local = salesforce_with("login_url = \"http://127.0.0.1:8787\"");
    load(&dir, &local, &[("SF_REFRESH", "x")]).expect("the emulator on loopback may use http");
}

#[test]
fn a_duplicate_connection_name_names_the_second_entry() {
    let dir = ConfigDir::new();
    let err = load(
        &dir,
        &format!("{SALESFORCE}{SALESFORCE}"),
        &[("SF_REFRESH", "x")],
    )
    .unwrap_err();
    assert_eq!(problem_keys(&err), vec!["connections[1].name"]);
    assert!(
        err.to_string().contains("`acme` is used by another entry"),
        "{err}"
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let dir = ConfigDir::new();
    let text = format!(
        "[store]\nurl = \"mysql://db\"\n[api]\nlisten = \"0.0.0.0:8080\"\n{}\n[[rules]]\nname = \"r\"\nconnection = \"nobody\"\nmode = \"shout\"\n",
        SALESFORCE.replace("kind = \"refresh_token\"", "kind = \"private_app\"")
    );
    let err = load(&dir, &text, &[]).unwrap_err();
    let keys = problem_keys(&err);
    for expected in [
        "store.url",
        "connections[0].auth.kind",
        "rules[0].connection",
        "rules[0].mode",
        "api.bearer_token",
    ] {
        assert!(
            keys.iter().any(|k| k == expected),
            "{expected} missing from {keys:?}"
        );
    }
}

#[test]
fn rules_naming_an_invalid_connection_are_not_blamed_for_it() {
    let dir = ConfigDir::new();
    let text = format!("{SALESFORCE}\n[[rules]]\nname = \"r\"\nconnection = \"acme\"\n");
    let err = load(&dir, &text, &[]).unwrap_err();
    assert_eq!(
        problem_keys(&err),
        vec!["connections[0].auth.refresh_token"]
    );
}

#[test]
fn client_credentials_must_use_my_domain() {
    let dir = ConfigDir::new();
    let text = SALESFORCE
        .replace("kind = \"refresh_token\"", "kind = \"client_credentials\"")
        .replace(
            "refresh_token = { env = \"SF_REFRESH\" }",
            "client_secret = { env = \"SF_SECRET\" }",
        );
    let err = load(&dir, &text, &[("SF_SECRET", "s")]).unwrap_err();
    assert_eq!(problem_keys(&err), vec!["connections[0].login_url"]);
    let my_domain = text.replace(
        "kind = \"salesforce\"",
        "kind = \"salesforce\"\nlogin_url = \"https://acme.my.salesforce.com\"",
    );
    load(&dir, &my_domain, &[("SF_SECRET", "s")]).expect("My Domain is accepted");
}

#[test]
fn environment_overrides_replace_file_values() {
    let dir = ConfigDir::new();
    let settings = load(
        &dir,
        "[store]\nurl = \"sqlite://file.db\"\n",
        &[
            (
                "PIPEWARDEN__STORE__URL",
                "postgres://pw@db.internal/pipewarden",
            ),
            ("PIPEWARDEN__STORE__MAX_CONNECTIONS", "20"),
        ],
    )
    .unwrap();
    assert!(matches!(settings.store.url, StoreUrl::Postgres(_)));
    assert_eq!(settings.store.max_connections, 20);
}

#[test]
fn a_bad_override_is_blamed_on_its_variable() {
    let dir = ConfigDir::new();
    let err = load(&dir, "", &[("PIPEWARDEN__STORE__POOL", "3")]).unwrap_err();
    assert!(
        err.to_string()
            .contains("set by environment variable PIPEWARDEN__STORE__POOL"),
        "{err}"
    );
    let err = load(&dir, "", &[("PIPEWARDEN__API__LISTEN", "everywhere")]).unwrap_err();
    assert_eq!(problem_keys(&err), vec!["api.listen"]);
    assert!(
        err.to_string()
            .contains("overrides PIPEWARDEN__API__LISTEN"),
        "{err}"
    );
}

#[test]
fn secret_files_are_read_relative_to_the_config_file() {
    let dir = ConfigDir::new();
    dir.write("secrets/refresh", "from-a-file\n");
    let text = SALESFORCE.replace("{ env = \"SF_REFRESH\" }", "{ file = \"secrets/refresh\" }");
    let settings = load(&dir, &text, &[]).unwrap();
    let AuthSettings::RefreshToken { refresh_token, .. } = &settings.connections[0].auth else {
        panic!("refresh_token auth")
    };
    assert_eq!(
        refresh_token.expose(),
        "from-a-file",
        "trailing newline dropped"
    );
}

#[test]
fn the_shipped_example_and_demo_configs_load() {
    let dir = ConfigDir::new();
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/pipewarden.example.toml"
    ))
    .unwrap();
    dir.write(
        "secrets/salesforce-jwt.key",
        "-----BEGIN PRIVATE KEY-----\nfake\n-----END PRIVATE KEY-----\n",
    );
    let settings =
        load(&dir, &example, &[("SLACK_BOT_TOKEN", "xoxb-test")]).expect("example loads");
    assert_eq!(settings.connections[0].name, "acme-sf");
    assert_eq!(settings.rules[0].stages.len(), 2);
    assert!(
        settings.recycle.policies[0].dry_run,
        "the example is a dry run"
    );

    let demo = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/config/demo.toml"));
    let settings =
        load_with_env(Some(demo), &env(&[])).expect("demo loads with no environment at all");
    assert_eq!(settings.connections.len(), 2);
}

#[test]
fn a_hubspot_recycle_policy_cannot_create_tasks() {
    let dir = ConfigDir::new();
    let text = r#"
[[connections]]
name = "hs"
kind = "hubspot"
[connections.auth]
kind = "private_app"
token = { env = "HS_TOKEN" }

[[recycle.policies]]
name = "stale"
connection = "hs"
kind = "stale"
after_days = 30
[recycle.policies.actions]
set_status = "BAD_TIMING"
create_task = "Call them"
"#;
    let err = load(&dir, text, &[("HS_TOKEN", "pat-na1-x")]).unwrap_err();
    assert_eq!(
        problem_keys(&err),
        ["recycle.policies[0].actions.create_task"],
        "{err}"
    );
}

#[test]
fn a_stalled_policy_writes_contacts_only_when_it_closes_deals_lost() {
    let dir = ConfigDir::new();
    let policy = |stage_action: &str| {
        format!(
            r#"{SALESFORCE}
[[rules]]
name = "gates"
connection = "acme"
[[rules.stages]]
stage = "Qualification"
max_dwell = "30d"

[[recycle.policies]]
name = "stalled"
connection = "acme"
kind = "stalled"
after_days = 0
[recycle.policies.actions]
stage_action = "{stage_action}"
add_to_campaign = "701000000000001AAA"
"#
        )
    };
    let vars = [("SF_REFRESH", "token")];
    let err = load(&dir, &policy("move_back"), &vars).unwrap_err();
    assert_eq!(problem_keys(&err), ["recycle.policies[0].actions"], "{err}");
    assert!(err.to_string().contains("close_lost"), "{err}");
    let settings = load(&dir, &policy("close_lost"), &vars).expect("close_lost recycles contacts");
    assert_eq!(settings.recycle.policies.len(), 1);
}

#[test]
fn a_connection_channel_routes_alerts_with_a_bot_token_only() {
    let dir = ConfigDir::new();
    let connection = SALESFORCE.replace(
        "kind = \"salesforce\"\n",
        "kind = \"salesforce\"\nslack_channel = \"#sales-emea\"\n",
    );
    let config = |slack: &str| {
        format!(
            "{connection}{slack}\n[[rules]]\nname = \"gates\"\nconnection = \"acme\"\nmode = \"alert\"\n"
        )
    };
    let vars = [
        ("SF_REFRESH", "token"),
        ("SLACK", "xoxb-1"),
        ("HOOK", "https://hooks.slack.com/services/T/B/x"),
    ];
    let settings = load(
        &dir,
        &config("[slack]\nbot_token = { env = \"SLACK\" }"),
        &vars,
    )
    .expect("the connection's channel stands in for slack.default_channel");
    assert_eq!(
        settings.connections[0].slack_channel.as_deref(),
        Some("#sales-emea")
    );
    let err = load(
        &dir,
        &config("[slack]\nwebhook_url = { env = \"HOOK\" }"),
        &vars,
    )
    .unwrap_err();
    assert_eq!(
        problem_keys(&err),
        ["connections[0].slack_channel"],
        "{err}"
    );
    assert!(err.to_string().contains("bot_token"), "{err}");
    let err = load(&dir, &config(""), &vars).unwrap_err();
    assert_eq!(
        problem_keys(&err),
        ["connections[0].slack_channel", "rules[0].mode"],
        "{err}"
    );
}

#[test]
fn channel_digests_need_a_bot_token_and_a_time_or_off() {
    let dir = ConfigDir::new();
    let vars = [
        ("SF_REFRESH", "token"),
        ("SLACK", "xoxb-1"),
        ("HOOK", "https://hooks.slack.com/services/T/B/x"),
    ];
    let bot = format!(
        "{SALESFORCE}[slack]\nbot_token = {{ env = \"SLACK\" }}\n[slack.channel_digests]\n\"#a\" = \"off\"\n\"#b\" = \"25:00\"\n"
    );
    let err = load(&dir, &bot, &vars).unwrap_err();
    assert_eq!(
        problem_keys(&err),
        ["slack.channel_digests.\"#b\""],
        "{err}"
    );
    assert!(err.to_string().contains("`25:00`"), "{err}");
    let hook = format!(
        "{SALESFORCE}[slack]\nwebhook_url = {{ env = \"HOOK\" }}\n[slack.channel_digests]\n\"#a\" = \"off\"\n"
    );
    let err = load(&dir, &hook, &vars).unwrap_err();
    assert_eq!(
        problem_keys(&err),
        ["slack.channel_digests.\"#a\""],
        "{err}"
    );
}
