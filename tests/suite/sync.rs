//! The Salesforce sync against the emulator: what the store holds after a backfill, after
//! scripted changes and simulated months, and under injected faults, compared with the
//! emulator's ground truth.

use std::collections::BTreeMap;
use std::time::Duration;

use pipewarden::config::settings::{ConnectionSettings, CrmKind};
use pipewarden::crm::RetryPolicy;
use pipewarden::emulator::{self, EmulatorOptions, RunningEmulator, SalesforceOptions, Scale};
use pipewarden::query::format_instant;
use pipewarden::query::history::HistoryParams;
use pipewarden::record::ObjectKind;
use pipewarden::stop::StopSignal;
use pipewarden::store::{Store, SyncRunStatus, SyncRunSummary, ValidFromBasis};
use pipewarden::sync::{self, SyncOptions};
use serde_json::{json, Value};

use super::emulator::{access_token, control, url};
use super::emulator_faults::set_faults;
use crate::support::{on_both_backends, ConfigDir, TestStore};

pub(crate) async fn start_emulator() -> RunningEmulator {
    start_emulator_with(SalesforceOptions::default()).await
}

/// The connection of [`salesforce_connection`], also reading the opt-in
/// OpportunityFieldHistory.
fn connection_with_field_history(emu: &RunningEmulator, dir: &ConfigDir) -> ConnectionSettings {
    let mut connection = salesforce_connection(emu, dir);
    connection
        .objects
        .push("OpportunityFieldHistory".to_string());
    connection
}

/// A tiny org with these Salesforce options.
async fn start_emulator_with(salesforce: SalesforceOptions) -> RunningEmulator {
    let options = EmulatorOptions {
        scale: Scale::Tiny,
        salesforce,
        ..EmulatorOptions::default()
    };
    emulator::start("127.0.0.1:0".parse().unwrap(), options)
        .await
        .expect("emulator starts")
}

/// The tiny org, answering `QUERY_TIMEOUT` to history queries over more than `rows` rows.
async fn start_emulator_timing_out_past(rows: u64) -> RunningEmulator {
    start_emulator_with(SalesforceOptions {
        query_timeout_rows: rows,
        ..SalesforceOptions::default()
    })
    .await
}

/// A config file with one Salesforce connection `sf` to `emu`, storing into `store_url` and
/// listening on `listen`; returns its path.
pub(crate) fn write_config(
    dir: &ConfigDir,
    emu: &RunningEmulator,
    store_url: &str,
    listen: &str,
) -> String {
    dir.write("refresh-token", "emulator-demo-refresh-token\n");
    let config = format!(
        r#"
[store]
url = "{store_url}"

[api]
listen = "{listen}"

[[connections]]
name = "sf"
kind = "salesforce"
login_url = "{}"

[connections.auth]
kind = "refresh_token"
client_id = "pipewarden-demo"
refresh_token = {{ file = "refresh-token" }}

[connections.limits]
requests_per_second = 200
burst = 200
"#,
        emu.base_url()
    );
    dir.write("pipewarden.toml", &config).display().to_string()
}

/// The Salesforce connection of [`write_config`], as the sync reads it.
pub(crate) fn salesforce_connection(emu: &RunningEmulator, dir: &ConfigDir) -> ConnectionSettings {
    let path = write_config(dir, emu, "sqlite::memory:", "127.0.0.1:0");
    let settings = pipewarden::config::load(Some(path.as_ref())).expect("test config loads");
    settings.connections.into_iter().next().unwrap()
}

/// Fast retries, so that fault tests take seconds.
pub(crate) fn quick_options() -> SyncOptions {
    SyncOptions {
        retry: RetryPolicy {
            max_attempts: 12,
            base_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(50),
        },
        ..SyncOptions::default()
    }
}

pub(crate) async fn truth(emu: &RunningEmulator, object: &str) -> Vec<Value> {
    let url = emu
        .base_url()
        .join(&format!("__emulator/salesforce/truth/{object}"))
        .unwrap();
    let body: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
    body["records"].as_array().unwrap().clone()
}

pub(crate) fn millis(text: &str) -> i64 {
    chrono::DateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f%z")
        .unwrap()
        .timestamp_millis()
}

/// Every opportunity and lead in the store is as the emulator last had it, none is missing,
/// and each deal's stage changes are exactly those OpportunityHistory recorded.
pub(crate) async fn assert_store_matches_truth(
    store: &Store,
    connection_id: i64,
    emu: &RunningEmulator,
) {
    for (object, kind) in [
        ("Opportunity", ObjectKind::Deal),
        ("Lead", ObjectKind::Lead),
    ] {
        let records = truth(emu, object).await;
        assert!(!records.is_empty(), "the emulator has {object} records");
        for record in &records {
            let latest = record["versions"].as_array().unwrap().last().unwrap();
            let id = latest["record"]["Id"].as_str().unwrap();
            let stored = store
                .record(connection_id, kind, id)
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("{object} {id} is not in the store"));
            let field = if kind == ObjectKind::Deal {
                "StageName"
            } else {
                "Status"
            };
            let stored_value = if kind == ObjectKind::Deal {
                &stored.state.stage
            } else {
                &stored.state.status
            };
            assert_eq!(
                stored_value.as_deref(),
                latest["record"][field].as_str(),
                "{object} {id}: {field}"
            );
            let amount = latest["record"]["Amount"]
                .as_f64()
                .map(|a| (a * 100.0).round() as i64);
            assert_eq!(stored.state.amount_cents, amount, "{object} {id}: Amount");
            assert_eq!(
                stored.deleted_at.is_some(),
                latest["deleted"].as_bool().unwrap(),
                "{object} {id}: deleted"
            );
        }
    }
    let mut expected: BTreeMap<String, Vec<(String, i64)>> = BTreeMap::new();
    let mut rows: Vec<(i64, String, String, String)> = truth(emu, "OpportunityHistory")
        .await
        .iter()
        .map(|r| &r["versions"].as_array().unwrap().last().unwrap()["record"])
        .map(|row| {
            (
                millis(row["CreatedDate"].as_str().unwrap()),
                row["Id"].as_str().unwrap().to_string(),
                row["OpportunityId"].as_str().unwrap().to_string(),
                row["StageName"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    rows.sort();
    for (at, _, opportunity, stage) in rows {
        let moves = expected.entry(opportunity).or_default();
        if moves.last().map(|(last, _)| last) != Some(&stage) {
            moves.push((stage, at));
        }
    }
    for (opportunity, moves) in &expected {
        let record = store
            .record(connection_id, ObjectKind::Deal, opportunity)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("Opportunity {opportunity} is not in the store"));
        let stored: Vec<(String, i64)> = store
            .transitions(record.id)
            .await
            .unwrap()
            .into_iter()
            .map(|t| (t.to_stage, t.changed_at))
            .collect();
        assert_eq!(&stored, moves, "stage changes of Opportunity {opportunity}");
    }
}

async fn run_once(
    store: &Store,
    connection: &ConnectionSettings,
    options: &SyncOptions,
) -> SyncRunSummary {
    sync::sync_once(store, connection, options, &StopSignal::never())
        .await
        .unwrap()
        .summary
}

/// One run that must succeed; its summary.
async fn run_ok(
    store: &Store,
    connection: &ConnectionSettings,
    options: &SyncOptions,
) -> SyncRunSummary {
    let summary = run_once(store, connection, options).await;
    assert_eq!(
        summary.status,
        SyncRunStatus::Succeeded,
        "{:?}",
        summary.message
    );
    summary
}

pub(crate) async fn connection_id(store: &Store) -> i64 {
    store
        .ensure_connection("sf", CrmKind::Salesforce, 0)
        .await
        .unwrap()
}

async fn backfill_then_changes_then_months_match_the_truth(test: TestStore) {
    let emu = start_emulator().await;
    let dir = ConfigDir::new();
    let connection = salesforce_connection(&emu, &dir);
    let options = quick_options();

    let first = run_ok(&test.store, &connection, &options).await;
    assert!(first.versions_written > 0 && first.transitions_written > 0);
    let id = connection_id(&test.store).await;
    assert_store_matches_truth(&test.store, id, &emu).await;

    // A deal jumps ahead, as a rep would move it; the next run sees only what changed.
    let open = truth(&emu, "Opportunity")
        .await
        .into_iter()
        .map(|r| r["versions"].as_array().unwrap().last().unwrap()["record"].clone())
        .find(|r| r["IsClosed"] == json!(false) && r["IsDeleted"] == json!(false))
        .expect("an open opportunity");
    let deal = open["Id"].as_str().unwrap().to_string();
    control(&emu, "/__emulator/clock/advance", json!({"by": "1h"})).await;
    control(
        &emu,
        "/__emulator/salesforce/changes",
        json!({"changes": [{"object": "Opportunity", "id": deal, "set": {"StageName": "Negotiation/Review"}, "by": {"kind": "rep", "number": 1}}]}),
    )
    .await;
    let second = run_ok(&test.store, &connection, &options).await;
    assert!(
        second.records_seen < first.records_seen / 4,
        "an incremental run reads little: {} after {}",
        second.records_seen,
        first.records_seen
    );
    let stored = test
        .store
        .record(id, ObjectKind::Deal, &deal)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.state.stage.as_deref(), Some("Negotiation/Review"));
    let last_move = test
        .store
        .transitions(stored.id)
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(last_move.to_stage, "Negotiation/Review");
    assert_eq!(last_move.origin, "crm_history");
    assert_store_matches_truth(&test.store, id, &emu).await;

    // Two simulated months of funnel activity, synced in two rounds.
    for _ in 0..2 {
        control(&emu, "/__emulator/clock/advance", json!({"by": "30d"})).await;
        run_ok(&test.store, &connection, &options).await;
    }
    assert_store_matches_truth(&test.store, id, &emu).await;

    // A replayed run stores nothing twice.
    let replay = run_once(&test.store, &connection, &options).await;
    assert_eq!(replay.versions_written, 0);
    assert_eq!(replay.transitions_written, 0);
    emu.stop().await.unwrap();
}

/// Rows 9 and 13 of the failure table: sessions expiring mid-query strand the locator, so
/// the query restarts from its last stored page; with other faults, nothing is lost.
async fn faults_and_lost_locators_lose_nothing(test: TestStore) {
    let emu = start_emulator().await;
    let dir = ConfigDir::new();
    let connection = ConnectionSettings {
        page_size: 200,
        ..salesforce_connection(&emu, &dir)
    };
    let options = quick_options();
    set_faults(
        &emu,
        json!([
            {"kind": "unavailable", "probability": 0.1},
            {"kind": "server_error", "probability": 0.05},
            {"kind": "truncated_json", "probability": 0.05},
            {"kind": "expire_session", "path_contains": "/query/", "every": 4}
        ]),
    )
    .await;
    let run = run_ok(&test.store, &connection, &options).await;
    assert!(run.errors > 0, "faults were met and retried");
    control(&emu, "/__emulator/clock/advance", json!({"by": "20d"})).await;
    run_ok(&test.store, &connection, &options).await;
    set_faults(&emu, json!([])).await;
    let id = connection_id(&test.store).await;
    assert_store_matches_truth(&test.store, id, &emu).await;
    emu.stop().await.unwrap();
}

/// Row 17 of the failure table: campaign members Salesforce deleted for good (queryAll never
/// shows them) are found by the nightly id sweep, and only by it.
async fn hard_deleted_campaign_members_are_found_by_the_nightly_id_sweep(test: TestStore) {
    let emu = start_emulator().await;
    let dir = ConfigDir::new();
    let connection = salesforce_connection(&emu, &dir);
    let options = quick_options();
    run_ok(&test.store, &connection, &options).await;
    let id = connection_id(&test.store).await;
    let token = access_token(&emu).await;
    let members = campaign_member_ids(&emu, &token).await;
    assert!(members.len() >= 3, "the emulator has campaign members");
    for member in &members[..2] {
        delete_record(&emu, &token, "CampaignMember", member).await;
    }
    let is_deleted = |member: String| {
        let store = test.store.clone();
        async move {
            let stored = store
                .record(id, ObjectKind::CampaignMember, &member)
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("CampaignMember {member} is in the store"));
            stored.deleted_at.is_some()
        }
    };

    control(&emu, "/__emulator/clock/advance", json!({"by": "1h"})).await;
    run_once(&test.store, &connection, &options).await;
    assert!(
        !is_deleted(members[0].clone()).await,
        "within a day of the last sweep the ids are not swept again"
    );

    control(&emu, "/__emulator/clock/advance", json!({"by": "1d"})).await;
    run_ok(&test.store, &connection, &options).await;
    assert!(is_deleted(members[0].clone()).await);
    assert!(is_deleted(members[1].clone()).await);
    assert!(
        !is_deleted(members[2].clone()).await,
        "a member the org still has stays live"
    );
    let gone = test
        .store
        .record(id, ObjectKind::CampaignMember, &members[0])
        .await
        .unwrap()
        .unwrap();
    let versions = test.store.versions(gone.id).await.unwrap();
    assert_eq!(versions.len(), 2, "the live version, then the deleted one");
    assert!(versions[1].deleted && !versions[0].deleted);
    assert_eq!(versions[0].valid_to, Some(versions[1].valid_from));
    emu.stop().await.unwrap();
}

/// A lead deleted while pipewarden was stopped for longer than the Recycle Bin keeps it is
/// gone from queryAll too; the id sweep still finds it deleted.
async fn a_delete_purged_from_the_recycle_bin_unseen_is_found_by_the_id_sweep(test: TestStore) {
    let emu = start_emulator().await;
    let dir = ConfigDir::new();
    let connection = salesforce_connection(&emu, &dir);
    let options = quick_options();
    run_ok(&test.store, &connection, &options).await;
    let id = connection_id(&test.store).await;
    let token = access_token(&emu).await;
    let leads = soql_ids(&emu, &token, "SELECT Id FROM Lead ORDER BY Id LIMIT 2").await;
    delete_record(&emu, &token, "Lead", &leads[0]).await;
    control(&emu, "/__emulator/clock/advance", json!({"by": "16days"})).await;
    // The session expired meanwhile.
    let token = access_token(&emu).await;
    let purged = soql_ids(
        &emu,
        &token,
        &format!("SELECT Id FROM Lead WHERE Id = '{}'", leads[0]),
    )
    .await;
    assert!(purged.is_empty(), "the lead is gone from the org");

    run_ok(&test.store, &connection, &options).await;
    let stored = |crm_id: String| {
        let store = test.store.clone();
        async move {
            store
                .record(id, ObjectKind::Lead, &crm_id)
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("Lead {crm_id} is in the store"))
        }
    };
    assert!(stored(leads[0].clone()).await.deleted_at.is_some());
    assert!(
        stored(leads[1].clone()).await.deleted_at.is_none(),
        "a lead the org still has stays live"
    );
    emu.stop().await.unwrap();
}

/// Deletes one Salesforce record through the REST API.
async fn delete_record(emu: &RunningEmulator, token: &str, object: &str, id: &str) {
    let address = url(emu, &format!("/services/data/v62.0/sobjects/{object}/{id}"));
    let response = reqwest::Client::new()
        .delete(address)
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::NO_CONTENT);
}

/// The ids a SOQL query answers with (one page).
async fn soql_ids(emu: &RunningEmulator, token: &str, soql: &str) -> Vec<String> {
    let mut address = url::Url::parse(&url(emu, "/services/data/v62.0/queryAll")).unwrap();
    address.query_pairs_mut().append_pair("q", soql);
    let body: Value = reqwest::Client::new()
        .get(address)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["Id"].as_str().unwrap().to_string())
        .collect()
}

async fn campaign_member_ids(emu: &RunningEmulator, token: &str) -> Vec<String> {
    soql_ids(
        emu,
        token,
        "SELECT Id FROM CampaignMember ORDER BY Id LIMIT 3",
    )
    .await
}

/// An emulator whose org issues a new refresh token on every refresh and revokes the old one.
async fn start_rotating_emulator() -> RunningEmulator {
    emulator::start(
        "127.0.0.1:0".parse().unwrap(),
        EmulatorOptions {
            scale: Scale::Tiny,
            salesforce: SalesforceOptions {
                rotate_refresh_tokens: true,
                ..SalesforceOptions::default()
            },
            ..EmulatorOptions::default()
        },
    )
    .await
    .expect("emulator starts")
}

async fn a_rotated_refresh_token_carries_over_to_later_runs(test: TestStore) {
    let emu = start_rotating_emulator().await;
    let dir = ConfigDir::new();
    let connection = salesforce_connection(&emu, &dir);
    // Each run builds its own client and logs in again, and the org rotates the refresh
    // token every time: only a run that presents the token the run before kept succeeds.
    for round in 0..3 {
        if round > 0 {
            control(&emu, "/__emulator/clock/advance", json!({"by": "1d"})).await;
        }
        run_ok(&test.store, &connection, &quick_options()).await;
    }
    let id = connection_id(&test.store).await;
    assert_store_matches_truth(&test.store, id, &emu).await;

    // The store holds the kept token sealed: its value is no credential the org accepts.
    let stored = stored_refresh_token(&test.url).await;
    assert!(stored.starts_with("sealed-v1:"), "{stored}");
    let (status, body) = super::emulator::token(
        &emu,
        &[
            ("grant_type", "refresh_token"),
            ("client_id", super::emulator::CLIENT_ID),
            ("refresh_token", &stored),
        ],
    )
    .await;
    assert_eq!(status, reqwest::StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "invalid_grant");
    run_ok(&test.store, &connection, &quick_options()).await;
    emu.stop().await.unwrap();
}

/// A refresh token kept in plain text (before tokens were sealed) is still used, and sealed.
async fn a_token_kept_before_sealing_is_used_and_sealed(test: TestStore) {
    use sha2::Digest;
    let emu = start_rotating_emulator().await;
    let dir = ConfigDir::new();
    let connection = salesforce_connection(&emu, &dir);
    // An older pipewarden rotated the configured token and kept the new one as it was.
    let (status, body) = super::emulator::token(
        &emu,
        &[
            ("grant_type", "refresh_token"),
            ("client_id", super::emulator::CLIENT_ID),
            ("refresh_token", super::emulator::REFRESH_TOKEN),
        ],
    )
    .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    let kept = body["refresh_token"].as_str().unwrap().to_string();
    let id = test
        .store
        .ensure_connection(&connection.name, CrmKind::Salesforce, 0)
        .await
        .unwrap();
    let fingerprint: String = sha2::Sha256::digest(super::emulator::REFRESH_TOKEN.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    let insert = format!(
        "INSERT INTO rotated_refresh_tokens (connection_id, configured_sha256, refresh_token, rotated_at_ms) \
         VALUES ({id}, '{fingerprint}', '{kept}', 0)"
    );
    execute(&test.url, &insert).await;

    run_ok(&test.store, &connection, &quick_options()).await;
    let stored = stored_refresh_token(&test.url).await;
    assert!(stored.starts_with("sealed-v1:"), "{stored}");
    emu.stop().await.unwrap();
}

/// Runs statements on the store's database itself.
pub(crate) async fn execute(store_url: &str, sql: &str) {
    use sqlx::Connection;
    let sql = sqlx::AssertSqlSafe(sql.to_string());
    if store_url.starts_with("postgres") {
        let mut db = sqlx::PgConnection::connect(store_url).await.unwrap();
        sqlx::raw_sql(sql).execute(&mut db).await.unwrap();
    } else {
        let mut db = sqlx::SqliteConnection::connect(store_url).await.unwrap();
        sqlx::raw_sql(sql).execute(&mut db).await.unwrap();
    }
}

/// The one kept refresh token's stored value, read from the database itself.
pub(crate) async fn stored_refresh_token(store_url: &str) -> String {
    use sqlx::Connection;
    let sql = "SELECT refresh_token FROM rotated_refresh_tokens";
    if store_url.starts_with("postgres") {
        let mut db = sqlx::PgConnection::connect(store_url).await.unwrap();
        sqlx::query_scalar(sql).fetch_one(&mut db).await.unwrap()
    } else {
        let mut db = sqlx::SqliteConnection::connect(store_url).await.unwrap();
        sqlx::query_scalar(sql).fetch_one(&mut db).await.unwrap()
    }
}

/// Row 11 of the failure table: a formula follows its parent's change while the record's
/// `SystemModstamp` stays put, so only the periodic formula refresh can see it.
async fn a_formula_that_changed_without_the_stamp_is_found_by_the_formula_refresh(test: TestStore) {
    let emu = start_emulator().await;
    let dir = ConfigDir::new();
    let connection = ConnectionSettings {
        formula_refresh_interval: Some(Duration::from_secs(6 * 3600)),
        ..salesforce_connection(&emu, &dir)
    };
    let options = quick_options();
    run_once(&test.store, &connection, &options).await;
    let id = connection_id(&test.store).await;
    let (deal, account) = truth(&emu, "Opportunity")
        .await
        .iter()
        .map(|r| &r["versions"].as_array().unwrap().last().unwrap()["record"])
        .find_map(|r| {
            Some((
                r["Id"].as_str()?.to_string(),
                r["AccountId"].as_str()?.to_string(),
            ))
        })
        .expect("a deal with an account");
    let segment_of = |record: &pipewarden::store::StoredRecord| {
        record.state.fields.get("Account_Segment__c").cloned()
    };
    let stored = test
        .store
        .record(id, ObjectKind::Deal, &deal)
        .await
        .unwrap()
        .unwrap();
    let before = segment_of(&stored);
    let segment = if before == Some(json!("Enterprise")) {
        "SMB"
    } else {
        "Enterprise"
    };
    control(
        &emu,
        "/__emulator/salesforce/changes",
        json!({"changes": [{"object": "Account", "id": account, "set": {"Segment__c": segment}}]}),
    )
    .await;

    control(&emu, "/__emulator/clock/advance", json!({"by": "1h"})).await;
    run_once(&test.store, &connection, &options).await;
    let stored = test
        .store
        .record(id, ObjectKind::Deal, &deal)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        segment_of(&stored),
        before,
        "the incremental run cannot see the formula move, and no refresh is due yet"
    );

    control(&emu, "/__emulator/clock/advance", json!({"by": "6h"})).await;
    let refreshed = run_ok(&test.store, &connection, &options).await;
    let stored = test
        .store
        .record(id, ObjectKind::Deal, &deal)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        segment_of(&stored),
        Some(json!(segment)),
        "the refresh stored the new value"
    );
    let versions = test.store.versions(stored.id).await.unwrap();
    let latest = versions.last().unwrap();
    assert_eq!(
        latest.valid_from_basis,
        ValidFromBasis::Observed,
        "the CRM did not say when"
    );
    assert_eq!(
        versions[versions.len() - 2]
            .state
            .fields
            .get("Account_Segment__c"),
        before.as_ref(),
        "the version before keeps the old value"
    );

    // The refresh is done for the interval: the next run reads no opportunity again.
    control(&emu, "/__emulator/clock/advance", json!({"by": "1h"})).await;
    let next = run_once(&test.store, &connection, &options).await;
    assert!(
        next.records_seen < refreshed.records_seen,
        "{} records read after the refresh, {} during it",
        next.records_seen,
        refreshed.records_seen
    );
    assert_store_matches_truth(&test.store, id, &emu).await;
    emu.stop().await.unwrap();
}

/// Row 15 of the failure table: history queries over a wide window run too long
/// (`QUERY_TIMEOUT`); the sync narrows the window until they answer and stores every row.
async fn timed_out_history_queries_are_narrowed_until_they_answer(test: TestStore) {
    let emu = start_emulator_timing_out_past(50).await;
    let dir = ConfigDir::new();
    let connection = connection_with_field_history(&emu, &dir);
    let options = quick_options();
    run_ok(&test.store, &connection, &options).await;
    let id = connection_id(&test.store).await;
    assert_store_matches_truth(&test.store, id, &emu).await;
    assert_field_history_matches_truth(&test.store, &emu).await;
    emu.stop().await.unwrap();
}

/// An org whose history queries time out past 50 rows, and a connection (with field history)
/// that plans its history windows for 30 rows each.
async fn planned_windows_setup(dir: &ConfigDir) -> (RunningEmulator, ConnectionSettings) {
    let emu = start_emulator_timing_out_past(50).await;
    let mut connection = connection_with_field_history(&emu, dir);
    connection.history_window_rows = 30;
    (emu, connection)
}

/// A first backfill of an org with many records per `history_window_rows` reads its history
/// in CreatedDate windows planned from the stored parents, rather than asking for all of it
/// and narrowing by halves after each timeout: fewer calls, and every row stored.
async fn a_large_history_backfill_reads_planned_windows(test: TestStore) {
    let dir = ConfigDir::new();
    let (emu, connection) = planned_windows_setup(&dir).await;
    let run = run_ok(&test.store, &connection, &quick_options()).await;
    let id = connection_id(&test.store).await;
    assert_store_matches_truth(&test.store, id, &emu).await;
    assert_field_history_matches_truth(&test.store, &emu).await;
    // 109 calls; 143 when each history object is first asked for whole and narrowed by halves.
    assert!(run.api_calls < 130, "{} calls", run.api_calls);
    emu.stop().await.unwrap();
}

/// A planned history backfill cut short by the API budget resumes with the windows it had
/// reached (saved with its checkpoint), not with one query over the rest of the history that
/// times out and is halved again in every run.
async fn a_history_backfill_cut_short_resumes_with_its_windows(test: TestStore) {
    let dir = ConfigDir::new();
    let (emu, mut connection) = planned_windows_setup(&dir).await;
    // 30 of the emulated org's 15,000 daily calls per run.
    connection.limits.daily_budget_share = 0.002;
    let options = quick_options();
    let mut calls = 0;
    let mut windows_resumed = 0;
    let mut finished = false;
    for _ in 0..20 {
        let run = run_once(&test.store, &connection, &options).await;
        calls += run.api_calls;
        let id = connection_id(&test.store).await;
        let history = test
            .store
            .cursor(id, "OpportunityFieldHistory", "history")
            .await
            .unwrap();
        match run.status {
            SyncRunStatus::BudgetStopped => {
                if history.is_some_and(|cursor| cursor["windows"]["width_ms"].is_u64()) {
                    windows_resumed += 1;
                }
            }
            SyncRunStatus::Succeeded => {
                finished = true;
                break;
            }
            other => panic!("run ended {other:?}: {:?}", run.message),
        }
    }
    assert!(finished, "the runs reached the end");
    let id = connection_id(&test.store).await;
    assert_store_matches_truth(&test.store, id, &emu).await;
    assert_field_history_matches_truth(&test.store, &emu).await;
    assert!(windows_resumed >= 1, "some run stopped inside the windows");
    let history = test
        .store
        .cursor(id, "OpportunityFieldHistory", "history")
        .await
        .unwrap()
        .expect("a history checkpoint");
    assert!(
        history.get("windows").is_none(),
        "a read that caught up reads what is new in one query: {history}"
    );
    // 205 calls; 268 when each resumed run starts with one query over the rest and halves it.
    assert!(calls < 230, "{calls} calls in all");
    emu.stop().await.unwrap();
}

/// A dense stretch of history (45 deals created at once, near the 50 rows a history query may
/// match here) narrows the window; the sparser weeks after it are read in windows that widen
/// again, not each at the narrow width.
async fn narrowed_windows_widen_again_after_a_dense_stretch(test: TestStore) {
    let emu = start_emulator_timing_out_past(50).await;
    let dir = ConfigDir::new();
    let connection = salesforce_connection(&emu, &dir);
    let options = quick_options();
    run_ok(&test.store, &connection, &options).await;
    let creates: Vec<Value> = (0..45)
        .map(|i| {
            json!({"object": "Opportunity", "by": {"kind": "rep", "number": 0}, "create": {
                "Name": format!("Imported {i}"), "StageName": "Prospecting", "CloseDate": "2027-06-30"}})
        })
        .collect();
    control(
        &emu,
        "/__emulator/salesforce/changes",
        json!({ "changes": creates }),
    )
    .await;
    control(&emu, "/__emulator/clock/advance", json!({ "by": "45days" })).await;
    let run = run_ok(&test.store, &connection, &options).await;
    let id = connection_id(&test.store).await;
    assert_store_matches_truth(&test.store, id, &emu).await;
    // 48 calls; 74 when every window after the dense stretch stayed as narrow as it.
    assert!(run.api_calls < 60, "{} calls", run.api_calls);
    emu.stop().await.unwrap();
}

/// Three months pass between two syncs. Deals created, moved and deleted in that time took
/// their stage history to the Recycle Bin before any sync read it: it is read all the same
/// (queryAll), so the store's stage changes match the org's.
async fn a_sync_after_a_quarter_without_one_keeps_the_history_of_deals_deleted_meanwhile(
    test: TestStore,
) {
    let emu = start_emulator().await;
    let dir = ConfigDir::new();
    let connection = salesforce_connection(&emu, &dir);
    let options = quick_options();
    run_ok(&test.store, &connection, &options).await;
    control(&emu, "/__emulator/clock/advance", json!({ "by": "90days" })).await;
    run_ok(&test.store, &connection, &options).await;
    let id = connection_id(&test.store).await;
    assert_store_matches_truth(&test.store, id, &emu).await;
    emu.stop().await.unwrap();
}

/// Row 15 of the failure table: when even an hour's window of history times out, the run
/// fails loudly, naming `QUERY_TIMEOUT`, and records itself as failed; it never reports
/// success, and the history checkpoint does not move past rows it never read.
async fn history_that_times_out_at_the_narrowest_window_fails_the_run(test: TestStore) {
    let emu = start_emulator_timing_out_past(0).await;
    let dir = ConfigDir::new();
    let connection = salesforce_connection(&emu, &dir);
    let failed = sync::sync_once(
        &test.store,
        &connection,
        &quick_options(),
        &StopSignal::never(),
    )
    .await
    .expect_err("a history query that always times out fails the run");
    assert!(failed.to_string().contains("QUERY_TIMEOUT"), "{failed}");
    let id = connection_id(&test.store).await;
    let runs = test.store.recent_sync_runs(id, 1).await.unwrap();
    assert_eq!(runs[0].status, SyncRunStatus::Failed, "{:?}", runs[0]);
    assert!(
        runs[0]
            .message
            .as_deref()
            .is_some_and(|m| m.contains("QUERY_TIMEOUT")),
        "{:?}",
        runs[0].message
    );
    let history = test
        .store
        .cursor(id, "OpportunityHistory", "history")
        .await
        .unwrap();
    assert!(
        history.as_ref().is_none_or(|c| c.get("stamp").is_none()),
        "no history checkpoint: {history:?}"
    );
    emu.stop().await.unwrap();
}

/// Row 16 of the failure table: an org at its daily API allocation answers 403
/// `REQUEST_LIMIT_EXCEEDED`, and the run checkpoints and stops at once instead of sleeping;
/// later runs, each held to its configured share of the allocation, resume where the one
/// before stopped until the store matches the truth, with nothing stored twice.
async fn runs_stop_at_the_api_budget_and_the_next_ones_resume(test: TestStore) {
    let emu = start_emulator().await;
    let dir = ConfigDir::new();
    let mut connection = ConnectionSettings {
        page_size: 200,
        ..connection_with_field_history(&emu, &dir)
    };
    let options = quick_options();
    control(
        &emu,
        "/__emulator/salesforce/api-usage",
        json!({"used": 15_000}),
    )
    .await;
    let refused = run_once(&test.store, &connection, &options).await;
    assert_eq!(
        refused.status,
        SyncRunStatus::BudgetStopped,
        "{:?}",
        refused.message
    );
    assert!(
        refused
            .message
            .as_deref()
            .is_some_and(|m| m.contains("REQUEST_LIMIT_EXCEEDED")),
        "{:?}",
        refused.message
    );
    assert_eq!(refused.versions_written, 0);

    // A new day: each run may use 0.13% of the 15,000 calls, 19, before it stops.
    control(&emu, "/__emulator/salesforce/api-usage", json!({"used": 0})).await;
    connection.limits.daily_budget_share = 0.0013;
    let mut stopped = 0;
    let mut finished = None;
    for _ in 0..40 {
        let run = run_once(&test.store, &connection, &options).await;
        assert!(run.api_calls <= 19, "a run keeps to its share: {run:?}");
        match run.status {
            SyncRunStatus::BudgetStopped => stopped += 1,
            SyncRunStatus::Succeeded => {
                finished = Some(run);
                break;
            }
            other => panic!("run ended {other:?}: {:?}", run.message),
        }
    }
    assert!(finished.is_some(), "the runs reached the end");
    assert!(stopped >= 2, "the budget cut runs short {stopped} times");
    let id = connection_id(&test.store).await;
    assert_store_matches_truth(&test.store, id, &emu).await;
    assert_field_history_matches_truth(&test.store, &emu).await;
    connection.limits.daily_budget_share = 0.25;
    let replay = run_ok(&test.store, &connection, &options).await;
    assert_eq!(
        (replay.versions_written, replay.transitions_written),
        (0, 0)
    );
    emu.stop().await.unwrap();
}

/// Every OpportunityFieldHistory row the emulator holds is stored once on its deal, with the
/// old and new values of the type the CRM gave them (numbers, dates and text alike).
async fn assert_field_history_matches_truth(store: &Store, emu: &RunningEmulator) {
    let mut expected: BTreeMap<String, Vec<(String, String, Value, Value)>> = BTreeMap::new();
    let mut rows: Vec<(i64, String, Value)> = truth(emu, "OpportunityFieldHistory")
        .await
        .iter()
        .map(|r| r["versions"].as_array().unwrap().last().unwrap()["record"].clone())
        .map(|row| {
            (
                millis(row["CreatedDate"].as_str().unwrap()),
                row["Id"].as_str().unwrap().to_string(),
                row,
            )
        })
        .collect();
    assert!(!rows.is_empty(), "the emulator has field history");
    rows.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    for (at, _, row) in &rows {
        expected
            .entry(row["OpportunityId"].as_str().unwrap().to_string())
            .or_default()
            .push((
                format_instant(*at),
                row["Field"].as_str().unwrap().to_string(),
                row["OldValue"].clone(),
                row["NewValue"].clone(),
            ));
    }
    for (deal, changes) in &expected {
        let report = pipewarden::query::history::run(
            store,
            &HistoryParams {
                id: deal.clone(),
                connection: Some("sf".to_string()),
                kind: Some("deal".to_string()),
            },
        )
        .await
        .unwrap();
        let stored: Vec<(String, String, Value, Value)> = report
            .field_history
            .into_iter()
            .map(|f| {
                (
                    f.at,
                    f.field,
                    f.old_value.unwrap_or(Value::Null),
                    f.new_value.unwrap_or(Value::Null),
                )
            })
            .collect();
        assert_eq!(&stored, changes, "field history of Opportunity {deal}");
    }
}

/// Row 18 of the failure table: OpportunityFieldHistory's `OldValue` and `NewValue` are
/// anyType; number, date and text values reach the store unchanged, never as nulls, and a
/// second run stores none of them again. Row 19 rides along: these history objects have no
/// filterable `SystemModstamp`, so they are read by `CreatedDate` and the run succeeds.
async fn field_history_values_round_trip_with_their_types(test: TestStore) {
    let emu = start_emulator().await;
    let dir = ConfigDir::new();
    let connection = connection_with_field_history(&emu, &dir);
    let options = quick_options();
    run_ok(&test.store, &connection, &options).await;
    let kinds: std::collections::BTreeSet<&str> = truth(&emu, "OpportunityFieldHistory")
        .await
        .iter()
        .map(|r| {
            let value = &r["versions"].as_array().unwrap().last().unwrap()["record"]["NewValue"];
            match value {
                Value::Number(_) => "number",
                Value::String(text)
                    if chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").is_ok() =>
                {
                    "date"
                }
                Value::String(_) => "text",
                _ => "other",
            }
        })
        .collect();
    assert!(
        ["number", "date", "text"].iter().all(|k| kinds.contains(k)),
        "the org's field history has numbers, dates and text: {kinds:?}"
    );
    assert_field_history_matches_truth(&test.store, &emu).await;
    control(&emu, "/__emulator/clock/advance", json!({"by": "1h"})).await;
    run_ok(&test.store, &connection, &options).await;
    assert_field_history_matches_truth(&test.store, &emu).await;
    emu.stop().await.unwrap();
}

/// Row 20 of the failure table: parallel long queries meet 403 `ConcurrentPerOrgLongTxn`;
/// unlike the daily limit it passes, so the sync retries and loses nothing.
async fn concurrent_long_request_refusals_are_retried(test: TestStore) {
    let emu = start_emulator().await;
    let dir = ConfigDir::new();
    let connection = ConnectionSettings {
        page_size: 200,
        ..connection_with_field_history(&emu, &dir)
    };
    set_faults(
        &emu,
        json!([{"kind": "concurrent_limit", "target": "salesforce", "path_contains": "/query", "every": 3}]),
    )
    .await;
    let run = run_ok(&test.store, &connection, &quick_options()).await;
    assert!(run.errors > 0, "refusals were met and retried");
    set_faults(&emu, json!([])).await;
    let id = connection_id(&test.store).await;
    assert_store_matches_truth(&test.store, id, &emu).await;
    assert_field_history_matches_truth(&test.store, &emu).await;
    emu.stop().await.unwrap();
}

/// Row 14 of the failure table: a query locator left idle for fifteen minutes is gone
/// (`INVALID_QUERY_LOCATOR`); the sync restarts the query at its last stored page and
/// loses nothing. (An eleventh open cursor releasing the oldest ends a locator the same way.)
async fn an_idle_expired_locator_restarts_the_query(test: TestStore) {
    let emu = start_emulator().await;
    let dir = ConfigDir::new();
    let connection = ConnectionSettings {
        page_size: 200,
        ..salesforce_connection(&emu, &dir)
    };
    // The sync's second page is held back while sixteen simulated minutes pass.
    set_faults(
        &emu,
        json!([{"kind": "slow", "target": "salesforce", "path_contains": "/query/", "next": 1, "delay_ms": 400}]),
    )
    .await;
    let options = quick_options();
    let advance_while_held = async {
        for _ in 0..500 {
            if first_rule_matched(&emu).await > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        control(&emu, "/__emulator/clock/advance", json!({"by": "16m"})).await;
    };
    let (run, ()) = tokio::join!(
        run_once(&test.store, &connection, &options),
        advance_while_held
    );
    assert_eq!(run.status, SyncRunStatus::Succeeded, "{:?}", run.message);
    assert!(first_rule_matched(&emu).await > 0, "a page was held back");
    let id = connection_id(&test.store).await;
    control(&emu, "/__emulator/clock/advance", json!({"by": "1h"})).await;
    run_ok(&test.store, &connection, &quick_options()).await;
    assert_store_matches_truth(&test.store, id, &emu).await;
    emu.stop().await.unwrap();
}

/// Requests the first fault rule has matched so far.
async fn first_rule_matched(emu: &RunningEmulator) -> u64 {
    let body: Value = reqwest::get(emu.base_url().join("__emulator/faults").unwrap())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["faults"][0]["matched"].as_u64().unwrap_or(0)
}

/// Row 12 of the failure table: hundreds of leads share one `SystemModstamp` across page
/// boundaries (a mass update); paging with `>=` by (stamp, Id) stores every one of them once.
async fn rows_sharing_one_stamp_across_pages_are_all_stored(test: TestStore) {
    let emu = start_emulator().await;
    let dir = ConfigDir::new();
    let connection = ConnectionSettings {
        page_size: 200,
        ..salesforce_connection(&emu, &dir)
    };
    let options = quick_options();
    run_once(&test.store, &connection, &options).await;
    let id = connection_id(&test.store).await;
    let leads: Vec<String> = truth(&emu, "Lead")
        .await
        .iter()
        .map(|r| r["versions"].as_array().unwrap().last().unwrap())
        .filter(|v| v["deleted"] == json!(false) && v["record"]["IsConverted"] == json!(false))
        .map(|v| v["record"]["Id"].as_str().unwrap().to_string())
        .collect();
    assert!(
        leads.len() > 200,
        "more than a page of leads: {}",
        leads.len()
    );
    control(&emu, "/__emulator/clock/advance", json!({"by": "1h"})).await;
    let changes: Vec<Value> = leads
        .iter()
        .map(|lead| json!({"object": "Lead", "id": lead, "set": {"Title": "Re-rated by a mass update"}, "by": {"kind": "workflow"}}))
        .collect();
    control(
        &emu,
        "/__emulator/salesforce/changes",
        json!({"changes": changes}),
    )
    .await;
    control(&emu, "/__emulator/clock/advance", json!({"by": "1m"})).await;
    let run = run_ok(&test.store, &connection, &options).await;
    assert_eq!(
        run.versions_written,
        leads.len() as i64,
        "one new version per updated lead"
    );
    for lead in &leads {
        let stored = test
            .store
            .record(id, ObjectKind::Lead, lead)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            stored.state.fields.get("Title"),
            Some(&json!("Re-rated by a mass update")),
            "Lead {lead}"
        );
    }
    assert_store_matches_truth(&test.store, id, &emu).await;
    emu.stop().await.unwrap();
}

on_both_backends!(
    a_formula_that_changed_without_the_stamp_is_found_by_the_formula_refresh,
    a_rotated_refresh_token_carries_over_to_later_runs,
    a_token_kept_before_sealing_is_used_and_sealed,
    backfill_then_changes_then_months_match_the_truth,
    faults_and_lost_locators_lose_nothing,
    hard_deleted_campaign_members_are_found_by_the_nightly_id_sweep,
    a_delete_purged_from_the_recycle_bin_unseen_is_found_by_the_id_sweep,
    timed_out_history_queries_are_narrowed_until_they_answer,
    narrowed_windows_widen_again_after_a_dense_stretch,
    a_large_history_backfill_reads_planned_windows,
    a_history_backfill_cut_short_resumes_with_its_windows,
    a_sync_after_a_quarter_without_one_keeps_the_history_of_deals_deleted_meanwhile,
    history_that_times_out_at_the_narrowest_window_fails_the_run,
    runs_stop_at_the_api_budget_and_the_next_ones_resume,
    field_history_values_round_trip_with_their_types,
    concurrent_long_request_refusals_are_retried,
    an_idle_expired_locator_restarts_the_query,
    rows_sharing_one_stamp_across_pages_are_all_stored,
);
