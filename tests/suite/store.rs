//! The store's behaviour, identical on SQLite and PostgreSQL.

use pipewarden::config::settings::CrmKind;
use pipewarden::query::{self, as_of::AsOfParams, format_instant};
use pipewarden::record::{
    ActorKind, LifecycleEvent, ObjectKind, Origin, RecordObservation, RecordState,
};
use pipewarden::store::{
    FieldChange, NewLifecycleEvent, NewStageTransition, ObservationOutcome, QuarantineEntry,
    StoreError, SyncRunStatus, SyncRunSummary, ValidFromBasis,
};
use serde_json::json;

use crate::support::{on_both_backends, TestStore};

const T0: i64 = 1_775_000_000_000; // 2026-03-31T23:33:20Z

on_both_backends!(
    migrating_twice_applies_nothing_the_second_time,
    first_sighting_creates_the_record_and_its_first_version,
    an_unchanged_record_writes_no_version_but_is_marked_seen,
    a_change_closes_the_previous_version_and_as_of_reads_each_state,
    as_of_finds_open_deals_of_every_pipeline_and_stage_named_or_not,
    content_changed_without_a_new_modstamp_starts_at_the_observation,
    an_observation_older_than_the_stored_state_is_ignored,
    a_deletion_is_a_version_and_marks_the_record_deleted,
    replayed_history_is_stored_once,
    an_uncommitted_page_leaves_neither_records_nor_cursor,
    a_connection_name_cannot_change_crm,
    quarantine_counts_repeats_and_release_resolves_it,
    sync_runs_are_audited_with_their_counters,
    planner_statistics_can_be_refreshed,
);

async fn connection(t: &TestStore) -> i64 {
    t.store
        .ensure_connection("acme", CrmKind::Salesforce, T0)
        .await
        .unwrap()
}

fn deal(connection_id: i64, stage: &str, amount: i64, modified_at: i64) -> RecordObservation {
    let mut fields = serde_json::Map::new();
    fields.insert("Budget__c".into(), json!(null));
    fields.insert("StageName".into(), json!(stage));
    RecordObservation {
        connection_id,
        kind: ObjectKind::Deal,
        crm_object: "Opportunity".into(),
        crm_id: "006000000000001AAA".into(),
        state: RecordState {
            name: Some("Acme renewal".into()),
            pipeline: Some("default".into()),
            stage: Some(stage.into()),
            amount_cents: Some(amount),
            probability_bp: Some(2_000),
            close_date: Some("2026-06-30".into()),
            owner_id: Some("005000000000001AAA".into()),
            crm_created_at: Some(T0 - 1_000),
            fields,
            ..RecordState::default()
        },
        deleted: false,
        modified_at,
        observed_at: modified_at + 500,
        sync_run_id: None,
    }
}

async fn observe(t: &TestStore, obs: &RecordObservation) -> ObservationOutcome {
    let mut tx = t.store.begin().await.unwrap();
    let outcome = tx.apply_observation(obs).await.unwrap();
    tx.commit().await.unwrap();
    outcome
}

async fn migrating_twice_applies_nothing_the_second_time(t: TestStore) {
    let report = t.store.migrate().await.unwrap();
    assert!(
        report.applied.is_empty(),
        "already migrated by the fixture: {report:?}"
    );
    assert_eq!(report.current, Some(14));
    t.store.ping().await.unwrap();
}

async fn first_sighting_creates_the_record_and_its_first_version(t: TestStore) {
    let conn = connection(&t).await;
    let obs = deal(conn, "Prospecting", 500_000, T0);
    let ObservationOutcome::Created { record_id } = observe(&t, &obs).await else {
        panic!("expected a new record")
    };
    let record = t
        .store
        .record(conn, ObjectKind::Deal, &obs.crm_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.id, record_id);
    assert_eq!(record.state, obs.state, "current row round-trips the state");
    assert_eq!(record.crm_modified_at, T0);
    assert_eq!(record.first_seen_at, T0 + 500);
    let versions = t.store.versions(record_id).await.unwrap();
    assert_eq!(versions.len(), 1);
    assert_eq!(versions[0].valid_from, T0);
    assert_eq!(versions[0].valid_to, None);
    assert_eq!(versions[0].valid_from_basis, ValidFromBasis::CrmModified);
    assert_eq!(versions[0].state, obs.state);
}

async fn an_unchanged_record_writes_no_version_but_is_marked_seen(t: TestStore) {
    let conn = connection(&t).await;
    let first = deal(conn, "Prospecting", 500_000, T0);
    observe(&t, &first).await;
    let mut again = first.clone();
    again.observed_at = T0 + 60_000;
    let outcome = observe(&t, &again).await;
    assert!(
        matches!(outcome, ObservationOutcome::Unchanged { .. }),
        "{outcome:?}"
    );
    assert!(!outcome.wrote_version());
    let record = t
        .store
        .record(conn, ObjectKind::Deal, &first.crm_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.last_seen_at, T0 + 60_000);
    assert_eq!(t.store.versions(record.id).await.unwrap().len(), 1);
}

async fn a_change_closes_the_previous_version_and_as_of_reads_each_state(t: TestStore) {
    let conn = connection(&t).await;
    let t1 = T0;
    let t2 = T0 + 86_400_000;
    let ObservationOutcome::Created { record_id } =
        observe(&t, &deal(conn, "Prospecting", 500_000, t1)).await
    else {
        panic!("expected a new record")
    };
    let outcome = observe(&t, &deal(conn, "Qualification", 750_000, t2)).await;
    let ObservationOutcome::Changed { previous, .. } = outcome else {
        panic!("expected a change, got {outcome:?}")
    };
    assert_eq!(previous.state.stage.as_deref(), Some("Prospecting"));
    assert_eq!(
        previous.valid_to,
        Some(t2),
        "previous version closes where the next begins"
    );

    assert_eq!(
        t.store.version_as_of(record_id, t1 - 1).await.unwrap(),
        None,
        "did not exist yet"
    );
    for (at, stage) in [
        (t1, "Prospecting"),
        (t2 - 1, "Prospecting"),
        (t2, "Qualification"),
        (t2 + 365 * 86_400_000, "Qualification"),
    ] {
        let version = t.store.version_as_of(record_id, at).await.unwrap().unwrap();
        assert_eq!(version.state.stage.as_deref(), Some(stage), "as of {at}");
    }
    let record = t
        .store
        .record(conn, ObjectKind::Deal, "006000000000001AAA")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.state.amount_cents, Some(750_000));
}

async fn as_of_finds_open_deals_of_every_pipeline_and_stage_named_or_not(t: TestStore) {
    let conn = connection(&t).await;
    // Groups in SQLite's index order and beyond: nulls, empty names, a stage and a pipeline
    // the stage metadata does not know.
    let groups = [
        (None, Some("Prospecting")),
        (None, None),
        (Some(""), Some("")),
        (Some("default"), None),
        (Some("default"), Some("Prospecting")),
        (Some("default"), Some("Qualification")),
        (Some("default"), Some("Qualification")),
        (Some("zz-partner"), Some("Prospecting")),
    ];
    for (number, (pipeline, stage)) in groups.iter().enumerate() {
        let mut obs = deal(conn, "unused", 100_000, T0);
        obs.crm_id = format!("006{number:015}");
        obs.state.pipeline = pipeline.map(str::to_string);
        obs.state.stage = stage.map(str::to_string);
        observe(&t, &obs).await;
    }
    let params = AsOfParams {
        at: format_instant(T0 + 1_000),
        ..AsOfParams::default()
    };
    let listed = query::as_of::run(&t.store, &params).await.unwrap();
    assert_eq!(listed.deals.len(), groups.len());
    let counted = query::as_of::run(
        &t.store,
        &AsOfParams {
            totals_only: true,
            ..params.clone()
        },
    )
    .await
    .unwrap();
    assert_eq!(counted.total.count, groups.len() as i64);
    assert_eq!(counted.total.amount_cents, 100_000 * groups.len() as i64);
    assert_eq!(counted.stages, listed.stages);
    assert_eq!(
        counted.stages.len(),
        groups.len() - 1,
        "{:?}",
        counted.stages
    );
    let qualification = counted
        .stages
        .iter()
        .find(|s| s.stage.as_deref() == Some("Qualification"))
        .unwrap();
    assert_eq!(qualification.count, 2);
}

async fn content_changed_without_a_new_modstamp_starts_at_the_observation(t: TestStore) {
    let conn = connection(&t).await;
    let first = deal(conn, "Prospecting", 500_000, T0);
    let record_id = observe(&t, &first).await.record_id();
    // A formula field recomputed: new content, same SystemModstamp, seen an hour later.
    let mut recomputed = first.clone();
    recomputed.state.fields.insert("Score__c".into(), json!(87));
    recomputed.observed_at = T0 + 3_600_000;
    assert!(observe(&t, &recomputed).await.wrote_version());
    let versions = t.store.versions(record_id).await.unwrap();
    assert_eq!(versions.len(), 2);
    assert_eq!(versions[1].valid_from, T0 + 3_600_000);
    assert_eq!(versions[1].valid_from_basis, ValidFromBasis::Observed);
    assert_eq!(versions[0].valid_to, Some(T0 + 3_600_000));
}

async fn an_observation_older_than_the_stored_state_is_ignored(t: TestStore) {
    let conn = connection(&t).await;
    let record_id = observe(&t, &deal(conn, "Qualification", 500_000, T0 + 10_000))
        .await
        .record_id();
    let outcome = observe(&t, &deal(conn, "Prospecting", 500_000, T0)).await;
    assert!(
        matches!(outcome, ObservationOutcome::Stale { .. }),
        "{outcome:?}"
    );
    let versions = t.store.versions(record_id).await.unwrap();
    assert_eq!(versions.len(), 1);
    assert_eq!(versions[0].state.stage.as_deref(), Some("Qualification"));
}

async fn a_deletion_is_a_version_and_marks_the_record_deleted(t: TestStore) {
    let conn = connection(&t).await;
    let record_id = observe(&t, &deal(conn, "Prospecting", 500_000, T0))
        .await
        .record_id();
    let mut deleted = deal(conn, "Prospecting", 500_000, T0 + 1_000);
    deleted.deleted = true;
    assert!(observe(&t, &deleted).await.wrote_version());
    let record = t
        .store
        .record(conn, ObjectKind::Deal, &deleted.crm_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.deleted_at, Some(T0 + 1_000));
    let before = t
        .store
        .version_as_of(record_id, T0 + 999)
        .await
        .unwrap()
        .unwrap();
    assert!(!before.deleted);
    assert!(
        t.store
            .version_as_of(record_id, T0 + 1_000)
            .await
            .unwrap()
            .unwrap()
            .deleted
    );
    // Restored from the recycle bin: a live version again.
    let restored = deal(conn, "Prospecting", 500_000, T0 + 2_000);
    assert!(observe(&t, &restored).await.wrote_version());
    let record = t
        .store
        .record(conn, ObjectKind::Deal, &restored.crm_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.deleted_at, None);
}

async fn replayed_history_is_stored_once(t: TestStore) {
    let conn = connection(&t).await;
    let record_id = observe(&t, &deal(conn, "Qualification", 500_000, T0))
        .await
        .record_id();
    let transition = NewStageTransition {
        record_id,
        connection_id: conn,
        kind: ObjectKind::Deal,
        pipeline: Some("default"),
        from_stage: Some("Prospecting"),
        to_stage: "Qualification",
        changed_at: T0,
        changed_by: Some("005000000000009AAA"),
        actor: ActorKind::Integration,
        change_source: Some("OpportunityHistory"),
        origin: Origin::CrmHistory,
        crm_history_id: Some("008000000000001AAA"),
        amount_cents: Some(500_000),
        observed_at: T0 + 500,
    };
    let detail = json!({"campaign": "701000000000001AAA"});
    let event = NewLifecycleEvent {
        record_id,
        connection_id: conn,
        kind: ObjectKind::Deal,
        event: LifecycleEvent::OpportunityCreated,
        occurred_at: T0 - 1_000,
        origin: Origin::CrmField,
        detail: Some(&detail),
        observed_at: T0 + 500,
    };
    let (old, new) = (json!(12000.5), json!(15000));
    let change = FieldChange {
        record_id,
        field: "Amount",
        old_value: Some(&old),
        new_value: Some(&new),
        changed_at: T0,
        changed_by: Some("005000000000009AAA"),
        change_source: Some("OpportunityFieldHistory"),
        dedupe_key: "017000000000001AAA",
    };
    for round in 0..2 {
        let mut tx = t.store.begin().await.unwrap();
        let inserted = tx.record_stage_transition(&transition).await.unwrap();
        assert_eq!(
            inserted.is_some(),
            round == 0,
            "transition stored on the first round only"
        );
        assert_eq!(tx.record_lifecycle_event(&event).await.unwrap(), round == 0);
        assert_eq!(tx.record_field_change(&change).await.unwrap(), round == 0);
        tx.commit().await.unwrap();
    }
    let transitions = t.store.transitions(record_id).await.unwrap();
    assert_eq!(transitions.len(), 1);
    assert_eq!(transitions[0].from_stage.as_deref(), Some("Prospecting"));
    assert_eq!(transitions[0].actor, ActorKind::Integration);
    assert_eq!(transitions[0].origin, "crm_history");
    let events = t.store.lifecycle_events(record_id).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event, LifecycleEvent::OpportunityCreated);
    assert_eq!(events[0].detail, Some(detail));
    assert_eq!(t.store.field_change_count(record_id).await.unwrap(), 1);
}

async fn an_uncommitted_page_leaves_neither_records_nor_cursor(t: TestStore) {
    let conn = connection(&t).await;
    let obs = deal(conn, "Prospecting", 500_000, T0);
    let cursor = json!({"SystemModstamp": "2026-03-31T23:33:20.000Z", "Id": obs.crm_id});
    {
        let mut tx = t.store.begin().await.unwrap();
        tx.apply_observation(&obs).await.unwrap();
        tx.save_cursor(conn, "Opportunity", "incremental", &cursor, None, T0)
            .await
            .unwrap();
        // Dropped without commit, as when the process dies mid-page.
    }
    assert_eq!(
        t.store
            .record(conn, ObjectKind::Deal, &obs.crm_id)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        t.store
            .cursor(conn, "Opportunity", "incremental")
            .await
            .unwrap(),
        None
    );

    let mut tx = t.store.begin().await.unwrap();
    tx.apply_observation(&obs).await.unwrap();
    tx.save_cursor(conn, "Opportunity", "incremental", &cursor, None, T0)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert!(t
        .store
        .record(conn, ObjectKind::Deal, &obs.crm_id)
        .await
        .unwrap()
        .is_some());
    assert_eq!(
        t.store
            .cursor(conn, "Opportunity", "incremental")
            .await
            .unwrap(),
        Some(cursor)
    );

    let moved = json!({"SystemModstamp": "2026-04-01T00:00:00.000Z", "Id": "006000000000002AAA"});
    let mut tx = t.store.begin().await.unwrap();
    tx.save_cursor(conn, "Opportunity", "incremental", &moved, None, T0 + 1)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        t.store
            .cursor(conn, "Opportunity", "incremental")
            .await
            .unwrap(),
        Some(moved)
    );
}

async fn a_connection_name_cannot_change_crm(t: TestStore) {
    let first = t
        .store
        .ensure_connection("acme", CrmKind::Salesforce, T0)
        .await
        .unwrap();
    let again = t
        .store
        .ensure_connection("acme", CrmKind::Salesforce, T0 + 1)
        .await
        .unwrap();
    assert_eq!(first, again);
    let err = t
        .store
        .ensure_connection("acme", CrmKind::Hubspot, T0)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)));
    assert!(
        err.to_string().contains("`acme` holds salesforce data"),
        "{err}"
    );
}

async fn quarantine_counts_repeats_and_release_resolves_it(t: TestStore) {
    let conn = connection(&t).await;
    let entry = |reason, seen_at| QuarantineEntry {
        connection_id: conn,
        crm_object: "Opportunity",
        crm_id: "006000000000003AAA",
        reason,
        payload: Some("{\"Amount\": \"twelve\""),
        sync_run_id: None,
        seen_at,
    };
    for (reason, at) in [
        ("Amount: `twelve` is not a number", T0),
        ("Amount: `twelve` is not a number", T0 + 5),
    ] {
        let mut tx = t.store.begin().await.unwrap();
        tx.quarantine(&entry(reason, at)).await.unwrap();
        tx.commit().await.unwrap();
    }
    let held = t.store.quarantined(conn).await.unwrap();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].occurrences, 2);
    assert_eq!(held[0].last_seen_at, T0 + 5);
    assert_eq!(held[0].reason, "Amount: `twelve` is not a number");

    let mut tx = t.store.begin().await.unwrap();
    let released = tx
        .release_from_quarantine(
            conn,
            "Opportunity",
            &["006000000000003AAA", "006000000000009AAA"],
            T0 + 9,
        )
        .await
        .unwrap();
    assert_eq!(
        released, 1,
        "only the quarantined one of the two is released"
    );
    tx.commit().await.unwrap();
    assert!(t.store.quarantined(conn).await.unwrap().is_empty());
}

async fn sync_runs_are_audited_with_their_counters(t: TestStore) {
    let conn = connection(&t).await;
    let first = t
        .store
        .start_sync_run(conn, "schedule", "replica-a", T0)
        .await
        .unwrap();
    let second = t
        .store
        .start_sync_run(conn, "once", "replica-a", T0 + 1_000)
        .await
        .unwrap();
    let summary = SyncRunSummary {
        id: first,
        status: SyncRunStatus::BudgetStopped,
        started_at: T0,
        finished_at: Some(T0 + 500),
        records_seen: 4_000,
        versions_written: 3_100,
        transitions_written: 240,
        api_calls: 3,
        errors: 1,
        quarantined: 2,
        message: Some("stopped at 25% of the daily API allocation".into()),
    };
    t.store.finish_sync_run(&summary).await.unwrap();
    let runs = t.store.recent_sync_runs(conn, 10).await.unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0].id, second, "newest first");
    assert_eq!(runs[0].status, SyncRunStatus::Running);
    assert_eq!(runs[1], summary);
}

async fn planner_statistics_can_be_refreshed(t: TestStore) {
    let connection_id = connection(&t).await;
    observe(&t, &deal(connection_id, "Prospecting", 1_000, T0)).await;
    t.store
        .refresh_statistics(pipewarden::store::StatisticsOf::History)
        .await
        .unwrap();
}
