//! Salesforce backfills through Bulk API 2.0 query jobs against the emulator: the store ends
//! up exactly as a REST backfill leaves it, later changes come through REST, a failed job is
//! named and the next run recovers, and a run cut off between chunks resumes the same job at
//! its locator.

use pipewarden::config::settings::ConnectionSettings;
use pipewarden::crm::RetryPolicy;
use pipewarden::emulator::{self, EmulatorOptions, RunningEmulator, SalesforceOptions, Scale};
use pipewarden::record::ObjectKind;
use pipewarden::stop::StopSignal;
use pipewarden::store::{BackendKind, Store, SyncRunStatus};
use pipewarden::sync::{self, SyncError, SyncOptions, SyncReport};
use serde_json::{json, Value};

use super::emulator::{access_token, control, url};
use super::emulator_faults::set_faults;
use super::sync::{
    assert_store_matches_truth, connection_id, quick_options, salesforce_connection,
    start_emulator, truth,
};
use crate::support::{on_both_backends, ConfigDir, TestStore};

const RECORD_OBJECTS: &[(&str, ObjectKind)] = &[
    ("Account", ObjectKind::Account),
    ("Campaign", ObjectKind::Campaign),
    ("Contact", ObjectKind::Contact),
    ("Lead", ObjectKind::Lead),
    ("Opportunity", ObjectKind::Deal),
    ("CampaignMember", ObjectKind::CampaignMember),
];

/// Another empty store on the same backend as `test`.
async fn second_store(test: &TestStore) -> TestStore {
    match test.store.backend() {
        BackendKind::Sqlite => TestStore::sqlite().await,
        BackendKind::Postgres => TestStore::postgres()
            .await
            .expect("the first store was on PostgreSQL"),
    }
}

async fn sync_with(
    store: &Store,
    connection: &ConnectionSettings,
    options: &SyncOptions,
) -> Result<SyncReport, SyncError> {
    sync::sync_once(store, connection, options, &StopSignal::never()).await
}

/// The org's Bulk API 2.0 query jobs, as `GET …/jobs/query` lists them.
async fn bulk_jobs(emu: &RunningEmulator) -> Vec<Value> {
    let token = access_token(emu).await;
    let body: Value = reqwest::Client::new()
        .get(url(emu, "/services/data/v62.0/jobs/query"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["records"].as_array().unwrap().clone()
}

/// Everything the store keeps of one record, without the store's own ids and observation
/// times (which differ between any two runs).
async fn record_contents(store: &Store, connection: i64, kind: ObjectKind, id: &str) -> Value {
    let Some(record) = store.record(connection, kind, id).await.unwrap() else {
        return Value::Null;
    };
    let versions: Vec<Value> = store
        .versions(record.id)
        .await
        .unwrap()
        .into_iter()
        .map(|v| {
            json!({
                "valid_from": v.valid_from,
                "valid_to": v.valid_to,
                "basis": format!("{:?}", v.valid_from_basis),
                "deleted": v.deleted,
                "state": v.state,
            })
        })
        .collect();
    let transitions: Vec<Value> = store
        .transitions(record.id)
        .await
        .unwrap()
        .into_iter()
        .map(|t| {
            json!([
                t.from_stage,
                t.to_stage,
                t.changed_at,
                t.changed_by,
                t.origin
            ])
        })
        .collect();
    let events: Vec<Value> = store
        .lifecycle_events(record.id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| json!([format!("{:?}", e.event), e.occurred_at, e.origin]))
        .collect();
    json!({
        "crm_modified_at": record.crm_modified_at,
        "deleted_at": record.deleted_at,
        "state": record.state,
        "versions": versions,
        "transitions": transitions,
        "events": events,
    })
}

/// Every record of the org is kept alike by both stores.
async fn assert_same_contents(emu: &RunningEmulator, rest: &Store, bulk: &Store) {
    let (rest_id, bulk_id) = (connection_id(rest).await, connection_id(bulk).await);
    for (object, kind) in RECORD_OBJECTS {
        let records = truth(emu, object).await;
        assert!(!records.is_empty(), "the emulator has {object} records");
        for record in &records {
            let id = record["versions"].as_array().unwrap().last().unwrap()["record"]["Id"]
                .as_str()
                .unwrap();
            let through_rest = record_contents(rest, rest_id, *kind, id).await;
            assert_ne!(through_rest, Value::Null, "{object} {id} is stored");
            let through_bulk = record_contents(bulk, bulk_id, *kind, id).await;
            assert_eq!(through_bulk, through_rest, "{object} {id}");
        }
    }
}

async fn stamp(store: &Store, object: &str) -> Option<Value> {
    store
        .cursor(connection_id(store).await, object, "records")
        .await
        .unwrap()
        .map(|position| position["stamp"].clone())
}

/// Only `objects`, with bulk jobs as `threshold` says.
fn bulk_connection(
    emu: &RunningEmulator,
    dir: &ConfigDir,
    threshold: Option<u64>,
) -> ConnectionSettings {
    ConnectionSettings {
        bulk_threshold: threshold,
        ..salesforce_connection(emu, dir)
    }
}

async fn a_bulk_backfill_stores_what_rest_stores_and_later_changes_come_by_rest(test: TestStore) {
    let emu = start_emulator().await;
    let dir = ConfigDir::new();
    let options = quick_options();
    let rest_store = second_store(&test).await;
    let bulk_store = &test.store;

    let rest = sync_with(
        &rest_store.store,
        &bulk_connection(&emu, &dir, None),
        &options,
    )
    .await
    .unwrap();
    assert_eq!(rest.summary.status, SyncRunStatus::Succeeded);
    assert!(
        bulk_jobs(&emu).await.is_empty(),
        "bulk_threshold off: REST only"
    );

    let bulk = sync_with(bulk_store, &bulk_connection(&emu, &dir, Some(0)), &options)
        .await
        .unwrap();
    assert_eq!(
        bulk.summary.status,
        SyncRunStatus::Succeeded,
        "{:?}",
        bulk.summary.message
    );
    let jobs = bulk_jobs(&emu).await;
    let mut objects: Vec<&str> = jobs.iter().map(|j| j["object"].as_str().unwrap()).collect();
    objects.sort();
    let mut expected: Vec<&str> = RECORD_OBJECTS.iter().map(|(o, _)| *o).collect();
    expected.sort();
    assert_eq!(
        objects, expected,
        "one job per record object, none for history"
    );
    assert!(jobs.iter().all(|j| j["operation"] == "queryAll"));
    // Each job costs a create, polls and at least one chunk, all counted and reported.
    assert_eq!(bulk.summary.api_calls, bulk.api.calls as i64);
    assert!(
        bulk.summary.api_calls >= 4 * jobs.len() as i64,
        "{} API calls for {} jobs",
        bulk.summary.api_calls,
        jobs.len()
    );
    assert_eq!(bulk.summary.records_seen, rest.summary.records_seen);
    assert_eq!(bulk.summary.versions_written, rest.summary.versions_written);
    assert_eq!(
        bulk.summary.transitions_written,
        rest.summary.transitions_written
    );
    assert_same_contents(&emu, &rest_store.store, bulk_store).await;
    for (object, _) in RECORD_OBJECTS {
        let left = stamp(bulk_store, object).await;
        assert!(
            left.as_ref().is_some_and(Value::is_i64),
            "{object}: {left:?}"
        );
        assert_eq!(
            left,
            stamp(&rest_store.store, object).await,
            "{object} cursor"
        );
    }

    // A rep moves a deal; below the threshold the next run reads it through REST pages.
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
    let incremental = sync_with(
        bulk_store,
        &bulk_connection(&emu, &dir, Some(50_000)),
        &options,
    )
    .await
    .unwrap();
    assert_eq!(incremental.summary.status, SyncRunStatus::Succeeded);
    assert_eq!(bulk_jobs(&emu).await.len(), jobs.len(), "no new job");
    assert!(incremental.summary.records_seen < bulk.summary.records_seen / 4);
    let id = connection_id(bulk_store).await;
    let stored = bulk_store
        .record(id, ObjectKind::Deal, &deal)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.state.stage.as_deref(), Some("Negotiation/Review"));
    assert_store_matches_truth(bulk_store, id, &emu).await;
    emu.stop().await.unwrap();
}

async fn a_failed_bulk_job_is_named_and_the_next_run_recovers(test: TestStore) {
    let emu = start_emulator().await;
    let dir = ConfigDir::new();
    let connection = bulk_connection(&emu, &dir, Some(0));
    let options = quick_options();
    let message = "Failed to process query: the query was retried more than 15 times";
    control(
        &emu,
        "/__emulator/salesforce/bulk/fail-next",
        json!({"error_message": message}),
    )
    .await;
    let err = sync_with(&test.store, &connection, &options)
        .await
        .expect_err("the job failed");
    let failed = bulk_jobs(&emu).await;
    assert_eq!(failed.len(), 1, "the run stopped at the failed job");
    let job = failed[0]["id"].as_str().unwrap();
    assert_eq!(failed[0]["state"], "Failed");
    assert_eq!(failed[0]["errorMessage"], message);
    assert!(matches!(err, SyncError::BulkJob { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains(job) && text.contains(message) && text.contains("Account"),
        "the error names the job, its object and its errorMessage: {text}"
    );
    let runs = test
        .store
        .recent_sync_runs(connection_id(&test.store).await, 1)
        .await
        .unwrap();
    assert_eq!(runs[0].status, SyncRunStatus::Failed);
    assert!(runs[0].message.as_deref().unwrap().contains(job));

    let next = sync_with(&test.store, &connection, &options).await.unwrap();
    assert_eq!(
        next.summary.status,
        SyncRunStatus::Succeeded,
        "{:?}",
        next.summary.message
    );
    let id = connection_id(&test.store).await;
    assert_store_matches_truth(&test.store, id, &emu).await;
    emu.stop().await.unwrap();
}

async fn a_run_cut_off_between_chunks_resumes_the_same_job_at_its_locator(test: TestStore) {
    let emu = start_emulator().await;
    let dir = ConfigDir::new();
    let connection = ConnectionSettings {
        objects: vec!["Lead".into(), "LeadHistory".into()],
        bulk_chunk_size: 100,
        page_size: 200,
        ..bulk_connection(&emu, &dir, Some(0))
    };
    // No retries, and every second results call fails: the run dies after its first chunk.
    let fragile = SyncOptions {
        retry: RetryPolicy {
            max_attempts: 1,
            ..quick_options().retry
        },
        ..quick_options()
    };
    set_faults(
        &emu,
        json!([{"kind": "server_error", "path_contains": "/results", "every": 2}]),
    )
    .await;
    let first = sync_with(&test.store, &connection, &fragile).await;
    assert!(first.is_err(), "the second chunk failed");
    // A rule that never fires counts the results calls of the next run.
    set_faults(
        &emu,
        json!([{"kind": "server_error", "path_contains": "/results", "probability": 0.0}]),
    )
    .await;
    let id = connection_id(&test.store).await;
    let position = test
        .store
        .cursor(id, "Lead", "records")
        .await
        .unwrap()
        .expect("the first chunk left a checkpoint");
    let job = position["bulk"]["job"].as_str().unwrap().to_string();
    assert!(
        position["bulk"]["locator"].is_string(),
        "the checkpoint names the next chunk: {position}"
    );
    assert!(
        position["stamp"].is_null(),
        "no stamp before the job is read"
    );
    let runs = test.store.recent_sync_runs(id, 1).await.unwrap();
    assert_eq!(runs[0].records_seen, 100, "one chunk was stored");

    // Meanwhile a rep adds a lead and works it: its status change is a LeadHistory row newer
    // than the job's snapshot, whose parent the resumed job cannot have.
    control(&emu, "/__emulator/clock/advance", json!({"by": "1h"})).await;
    let by = json!({"kind": "rep", "number": 1});
    let created = control(
        &emu,
        "/__emulator/salesforce/changes",
        json!({"changes": [{"object": "Lead", "create": {"LastName": "Okafor", "Company": "Resume Labs"}, "by": by}]}),
    )
    .await;
    let new_lead = created["ids"][0].as_str().unwrap().to_string();
    control(
        &emu,
        "/__emulator/salesforce/changes",
        json!({"changes": [{"object": "Lead", "id": new_lead, "set": {"Status": "Working - Contacted"}, "by": by}]}),
    )
    .await;
    control(&emu, "/__emulator/clock/advance", json!({"by": "1m"})).await;

    let second = sync_with(&test.store, &connection, &quick_options())
        .await
        .unwrap();
    assert_eq!(
        second.summary.status,
        SyncRunStatus::Succeeded,
        "{:?}",
        second.summary.message
    );
    let jobs = bulk_jobs(&emu).await;
    assert_eq!(jobs.len(), 1, "the same job was read on");
    assert_eq!(jobs[0]["id"], job);
    let processed = jobs[0]["numberRecordsProcessed"].as_i64().unwrap();
    assert!(processed > 100, "the job spans several chunks");
    let results_calls = reqwest::get(url(&emu, "/__emulator/faults"))
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()["faults"][0]["matched"]
        .as_i64()
        .unwrap();
    assert_eq!(
        results_calls,
        (processed - 100 + 99) / 100,
        "the second run read only the chunks the first did not"
    );
    let position = test
        .store
        .cursor(id, "Lead", "records")
        .await
        .unwrap()
        .unwrap();
    assert!(
        position.get("bulk").is_none(),
        "the job is read: {position}"
    );
    assert!(position["stamp"].is_i64());
    assert!(
        test.store.quarantined(id).await.unwrap().is_empty(),
        "history is read no further than the resumed job's snapshot"
    );

    // The next run reads what changed since the snapshot, the new lead's history included.
    control(&emu, "/__emulator/clock/advance", json!({"by": "1m"})).await;
    let third = sync_with(&test.store, &connection, &quick_options())
        .await
        .unwrap();
    assert_eq!(third.summary.status, SyncRunStatus::Succeeded);
    assert!(test.store.quarantined(id).await.unwrap().is_empty());
    let stored = test
        .store
        .record(id, ObjectKind::Lead, &new_lead)
        .await
        .unwrap()
        .expect("the new lead is stored");
    let moves: Vec<String> = test
        .store
        .transitions(stored.id)
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.to_stage)
        .collect();
    assert!(
        moves.contains(&"Working - Contacted".to_string()),
        "its status change came from LeadHistory: {moves:?}"
    );
    for record in truth(&emu, "Lead").await {
        let latest = record["versions"].as_array().unwrap().last().unwrap();
        let lead = latest["record"]["Id"].as_str().unwrap();
        let stored = test
            .store
            .record(id, ObjectKind::Lead, lead)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("Lead {lead} is stored"));
        assert_eq!(
            stored.state.status.as_deref(),
            latest["record"]["Status"].as_str()
        );
    }
    emu.stop().await.unwrap();
}

/// Chunks cut in half, 503s and sessions ending in the middle of a job: the chunks are read
/// again, the same job goes on under the new token, and nothing is lost.
async fn faults_during_bulk_reads_lose_nothing(test: TestStore) {
    let emu = start_emulator().await;
    let dir = ConfigDir::new();
    let connection = ConnectionSettings {
        bulk_chunk_size: 100,
        ..bulk_connection(&emu, &dir, Some(0))
    };
    set_faults(
        &emu,
        json!([
            {"kind": "truncated_json", "path_contains": "/results", "every": 3},
            {"kind": "unavailable", "path_contains": "/jobs/query", "probability": 0.1},
            {"kind": "expire_session", "path_contains": "/jobs/query/", "every": 5}
        ]),
    )
    .await;
    let run = sync_with(&test.store, &connection, &quick_options())
        .await
        .unwrap();
    assert_eq!(
        run.summary.status,
        SyncRunStatus::Succeeded,
        "{:?}",
        run.summary.message
    );
    assert!(run.summary.errors > 0, "faults were met and retried");
    assert!(run.api.token_renewals > 1, "sessions ended mid-job");
    set_faults(&emu, json!([])).await;
    assert_eq!(
        bulk_jobs(&emu).await.len(),
        RECORD_OBJECTS.len(),
        "one job per object despite the faults"
    );
    let id = connection_id(&test.store).await;
    assert_store_matches_truth(&test.store, id, &emu).await;
    emu.stop().await.unwrap();
}

/// An org whose daily quota of query jobs is spent refuses new ones: the objects it refuses
/// are read by REST pages instead, and the store ends up as complete.
async fn objects_refused_a_bulk_job_are_read_by_rest(test: TestStore) {
    let emu = emulator::start(
        "127.0.0.1:0".parse().unwrap(),
        EmulatorOptions {
            scale: Scale::Tiny,
            salesforce: SalesforceOptions {
                daily_bulk_query_jobs: 2,
                ..SalesforceOptions::default()
            },
            ..EmulatorOptions::default()
        },
    )
    .await
    .expect("emulator starts");
    let dir = ConfigDir::new();
    let report = sync_with(
        &test.store,
        &bulk_connection(&emu, &dir, Some(0)),
        &quick_options(),
    )
    .await
    .unwrap();
    assert_eq!(
        report.summary.status,
        SyncRunStatus::Succeeded,
        "{:?}",
        report.summary.message
    );
    assert_eq!(
        bulk_jobs(&emu).await.len(),
        2,
        "two objects went by bulk jobs, the rest by REST"
    );
    let id = connection_id(&test.store).await;
    assert_store_matches_truth(&test.store, id, &emu).await;
    for (object, kind) in RECORD_OBJECTS {
        for record in truth(&emu, object).await {
            let crm_id = record["versions"].as_array().unwrap().last().unwrap()["record"]["Id"]
                .as_str()
                .unwrap()
                .to_string();
            let stored = record_contents(&test.store, id, *kind, &crm_id).await;
            assert_ne!(stored, Value::Null, "{object} {crm_id} is stored");
        }
    }
    emu.stop().await.unwrap();
}

on_both_backends!(
    objects_refused_a_bulk_job_are_read_by_rest,
    faults_during_bulk_reads_lose_nothing,
    a_bulk_backfill_stores_what_rest_stores_and_later_changes_come_by_rest,
    a_failed_bulk_job_is_named_and_the_next_run_recovers,
    a_run_cut_off_between_chunks_resumes_the_same_job_at_its_locator,
);
