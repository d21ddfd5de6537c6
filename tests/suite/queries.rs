//! Historical queries against stores synced from the emulator. Every expected answer is
//! computed here from the emulator's ground truth (its record versions and history rows),
//! never from the store or the query's SQL.

use std::collections::{BTreeMap, BTreeSet};

use pipewarden::config::Settings;
use pipewarden::emulator::{self, EmulatorOptions, RunningEmulator, Scale};
use pipewarden::query::as_of::AsOfParams;
use pipewarden::query::cohort::{CohortParams, Period};
use pipewarden::query::funnel::FunnelParams;
use pipewarden::query::pipeline_diff::{ChangeKind, PipelineDiffParams};
use pipewarden::query::{self, format_instant, QueryError};
use pipewarden::record::{LifecycleEvent, Millis, ObjectKind, Origin};
use pipewarden::stop::StopSignal;
use pipewarden::store::NewLifecycleEvent;
use pipewarden::sync;
use serde_json::{json, Value};

use super::emulator::control;
use super::sync::{execute, millis, quick_options, start_emulator, truth, write_config};
use crate::support::{on_both_backends, ConfigDir, TestStore};

const DAY: Millis = 86_400_000;

/// Salesforce stages in pipeline order, as the emulated org defines them.
const STAGES: &[&str] = &[
    "Prospecting",
    "Qualification",
    "Needs Analysis",
    "Value Proposition",
    "Id. Decision Makers",
    "Perception Analysis",
    "Proposal/Price Quote",
    "Negotiation/Review",
    "Closed Won",
    "Closed Lost",
];

/// Stage gates whose `max_dwell` the funnel reads.
const RULES: &str = r#"
[[rules]]
name = "gates"
connection = "sf"
pipeline = "default"

[[rules.stages]]
stage = "Qualification"
max_dwell = "30d"

[[rules.stages]]
stage = "Proposal/Price Quote"
max_dwell = "20d"
"#;

/// An emulator, the settings pointing at it and at the test's store, and the instants at
/// which the store was synced.
pub(crate) struct World {
    pub emu: RunningEmulator,
    pub settings: Settings,
    pub syncs: Vec<Millis>,
    _dir: ConfigDir,
}

pub(crate) fn settings_for(dir: &ConfigDir, emu: &RunningEmulator, store_url: &str) -> Settings {
    let path = write_config(dir, emu, store_url, "127.0.0.1:0");
    let text = std::fs::read_to_string(&path).unwrap() + RULES;
    std::fs::write(&path, text).unwrap();
    pipewarden::config::load(Some(path.as_ref())).expect("test config loads")
}

pub(crate) async fn sync_now(test: &TestStore, settings: &Settings) {
    let run = sync::sync_once(
        &test.store,
        &settings.connections[0],
        &quick_options(),
        &StopSignal::never(),
    )
    .await
    .unwrap();
    assert_eq!(
        run.summary.status.as_str(),
        "succeeded",
        "{:?}",
        run.summary.message
    );
}

/// Syncs the tiny emulator three times, 25 simulated days apart.
pub(crate) async fn synced_world(test: &TestStore) -> World {
    let emu = start_emulator().await;
    let dir = ConfigDir::new();
    let settings = settings_for(&dir, &emu, &test.url);
    let mut syncs = Vec::new();
    for round in 0..3 {
        if round > 0 {
            control(&emu, "/__emulator/clock/advance", json!({"by": "25d"})).await;
        }
        sync_now(test, &settings).await;
        syncs.push(emu.clock().now_ms());
    }
    World {
        emu,
        settings,
        syncs,
        _dir: dir,
    }
}

/// A record's state (the `record` of its version) at `at`, and whether it was deleted then.
fn state_at(record: &Value, at: Millis) -> Option<(&Value, bool)> {
    record["versions"]
        .as_array()
        .unwrap()
        .iter()
        .take_while(|v| millis(v["at"].as_str().unwrap()) <= at)
        .last()
        .map(|v| (&v["record"], v["deleted"].as_bool().unwrap()))
}

fn cents(record: &Value) -> Option<i64> {
    record["Amount"]
        .as_f64()
        .map(|a| (a * 100.0).round() as i64)
}

fn rank(stage: &str) -> usize {
    STAGES.iter().position(|s| *s == stage).unwrap()
}

/// Each opportunity's stage moves `(at, stage)` from OpportunityHistory, repeats dropped.
async fn truth_moves(emu: &RunningEmulator) -> BTreeMap<String, Vec<(Millis, String)>> {
    let mut rows: Vec<(Millis, String, String, String)> = truth(emu, "OpportunityHistory")
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
    let mut moves: BTreeMap<String, Vec<(Millis, String)>> = BTreeMap::new();
    for (at, _, deal, stage) in rows {
        let list = moves.entry(deal).or_default();
        if list.last().map(|(_, last)| last) != Some(&stage) {
            list.push((at, stage));
        }
    }
    moves
}

async fn as_of_matches_the_truth_at_each_sync(test: TestStore) {
    let world = synced_world(&test).await;
    let deals = truth(&world.emu, "Opportunity").await;
    for &at in &world.syncs {
        let mut expected: Vec<(String, String, Option<i64>)> = deals
            .iter()
            .filter_map(|record| state_at(record, at))
            .filter(|(state, deleted)| !deleted && state["IsClosed"] == json!(false))
            .map(|(state, _)| {
                (
                    state["Id"].as_str().unwrap().to_string(),
                    state["StageName"].as_str().unwrap().to_string(),
                    cents(state),
                )
            })
            .collect();
        expected.sort();
        assert!(expected.len() > 5, "the scenario has open deals");
        let params = AsOfParams {
            at: format_instant(at),
            ..AsOfParams::default()
        };
        // Instants are printed to the second; the syncs happen on whole simulated seconds.
        assert_eq!(query::parse_instant("at", &params.at).unwrap(), at);
        let report = query::as_of::run(&test.store, &params).await.unwrap();
        let mut got: Vec<(String, String, Option<i64>)> = report
            .deals
            .iter()
            .map(|d| (d.crm_id.clone(), d.stage.clone().unwrap(), d.amount_cents))
            .collect();
        got.sort();
        assert_eq!(got, expected, "open deals at {}", report.at);
        let mut by_stage: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
        for (_, stage, amount) in &expected {
            let total = by_stage.entry(stage).or_default();
            total.0 += 1;
            total.1 += amount.unwrap_or(0);
        }
        for total in &report.stages {
            let stage = total.stage.as_deref().unwrap();
            assert_eq!(
                (total.count, total.amount_cents),
                by_stage[stage],
                "totals of {stage}"
            );
        }
        assert_eq!(report.stages.len(), by_stage.len());
        assert_eq!(report.total.count, expected.len() as i64);
        // Counted in the store, the totals are the same, weighted sums included.
        let counted = query::as_of::run(
            &test.store,
            &AsOfParams {
                totals_only: true,
                ..params.clone()
            },
        )
        .await
        .unwrap();
        assert_eq!(
            (&counted.stages, &counted.total),
            (&report.stages, &report.total)
        );
        assert!(counted.deals.is_empty());
    }
    // Filters narrow the same answer.
    let stage = "Needs Analysis";
    let filtered = query::as_of::run(
        &test.store,
        &AsOfParams {
            at: format_instant(world.syncs[1]),
            stage: Some(stage.into()),
            ..AsOfParams::default()
        },
    )
    .await
    .unwrap();
    assert!(filtered
        .deals
        .iter()
        .all(|d| d.stage.as_deref() == Some(stage)));
    world.emu.stop().await.unwrap();
}

async fn pipeline_diff_matches_the_truth(test: TestStore) {
    let world = synced_world(&test).await;
    let (from, to) = (world.syncs[0], world.syncs[2]);
    let deals = truth(&world.emu, "Opportunity").await;
    let mut expected: BTreeMap<ChangeKind, BTreeSet<String>> = BTreeMap::new();
    for record in &deals {
        let alive = |at| {
            state_at(record, at)
                .filter(|(_, deleted)| !deleted)
                .map(|(s, _)| s)
        };
        let (before, after) = (alive(from), alive(to));
        let mut add = |kind| {
            let id = after.or(before).unwrap()["Id"]
                .as_str()
                .unwrap()
                .to_string();
            expected.entry(kind).or_default().insert(id);
        };
        let Some(after) = after else {
            if before.is_some() {
                add(ChangeKind::Removed);
            }
            continue;
        };
        let created = millis(after["CreatedDate"].as_str().unwrap());
        let created_in_window = (from..to).contains(&created);
        if before.is_none() && !created_in_window {
            continue;
        }
        if before.is_none() {
            add(ChangeKind::Created);
        }
        let closed =
            |s: &Value, won: bool| s["IsClosed"] == json!(true) && s["IsWon"] == json!(won);
        if closed(after, true) && !before.is_some_and(|b| closed(b, true)) {
            add(ChangeKind::Won);
        }
        if closed(after, false) && !before.is_some_and(|b| closed(b, false)) {
            add(ChangeKind::Lost);
        }
        let Some(before) = before else { continue };
        let open = |s: &Value| s["IsClosed"] == json!(false);
        if open(before) && open(after) {
            let stage = |s: &Value| rank(s["StageName"].as_str().unwrap());
            match stage(after).cmp(&stage(before)) {
                std::cmp::Ordering::Greater => add(ChangeKind::MovedForward),
                std::cmp::Ordering::Less => add(ChangeKind::MovedBack),
                std::cmp::Ordering::Equal => {}
            }
        }
        if cents(before) != cents(after) {
            add(ChangeKind::AmountChanged);
        }
        if before["CloseDate"] != after["CloseDate"] {
            add(ChangeKind::CloseDateChanged);
        }
    }
    assert!(
        expected
            .get(&ChangeKind::Won)
            .is_some_and(|w| !w.is_empty())
            && expected
                .get(&ChangeKind::Created)
                .is_some_and(|c| !c.is_empty()),
        "the window has created and won deals: {expected:?}"
    );
    let report = query::pipeline_diff::run(
        &test.store,
        &PipelineDiffParams {
            from: format_instant(from),
            to: format_instant(to),
            ..PipelineDiffParams::default()
        },
    )
    .await
    .unwrap();
    let mut got: BTreeMap<ChangeKind, BTreeSet<String>> = BTreeMap::new();
    for change in &report.changes {
        got.entry(change.change)
            .or_default()
            .insert(change.crm_id.clone());
    }
    assert_eq!(got, expected);
    for total in &report.totals {
        assert_eq!(
            total.count,
            got.get(&total.change).map_or(0, |ids| ids.len() as i64)
        );
    }
    world.emu.stop().await.unwrap();
}

async fn funnel_matches_the_truth(test: TestStore) {
    let world = synced_world(&test).await;
    let (from, to) = (world.syncs[0] - 60 * DAY, world.syncs[2]);
    let moves = truth_moves(&world.emu).await;
    let deals = truth(&world.emu, "Opportunity").await;
    let deleted_by_to: BTreeSet<String> = deals
        .iter()
        .filter_map(|record| state_at(record, to - 1))
        .filter(|(_, deleted)| *deleted)
        .map(|(state, _)| state["Id"].as_str().unwrap().to_string())
        .collect();
    let limits = BTreeMap::from([
        ("Qualification", 30 * DAY),
        ("Proposal/Price Quote", 20 * DAY),
    ]);
    // stage -> (entered, moved on, won, dwells, stuck)
    let mut expected: BTreeMap<String, (i64, i64, i64, Vec<i64>, i64)> = BTreeMap::new();
    for (deal, list) in &moves {
        let in_window: Vec<&(Millis, String)> = list
            .iter()
            .filter(|(at, _)| (from..to).contains(at))
            .collect();
        for (index, (at, stage)) in in_window.iter().enumerate() {
            let tally = expected.entry(stage.clone()).or_default();
            tally.0 += 1;
            let later = &in_window[index + 1..];
            match later.first() {
                Some((next_at, next)) => {
                    tally.3.push(next_at - at);
                    if rank(next) > rank(stage) && next != "Closed Lost" {
                        tally.1 += 1;
                    }
                }
                None => {
                    let closed = stage.starts_with("Closed");
                    let over = limits
                        .get(stage.as_str())
                        .is_some_and(|limit| to - at > *limit);
                    if !closed && over && !deleted_by_to.contains(deal) {
                        tally.4 += 1;
                    }
                }
            }
            if later.iter().any(|(_, s)| s == "Closed Won") {
                tally.2 += 1;
            }
        }
    }
    let report = query::funnel::run(
        &test.store,
        &world.settings,
        &FunnelParams {
            from: format_instant(from),
            to: format_instant(to),
            ..FunnelParams::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(report.stages.len(), expected.len());
    let stage_order: Vec<&str> = report.stages.iter().map(|s| s.stage.as_str()).collect();
    let mut sorted = stage_order.clone();
    sorted.sort_by_key(|s| rank(s));
    assert_eq!(stage_order, sorted, "stages come in pipeline order");
    for row in &report.stages {
        let (entered, moved_on, won, dwells, stuck) = expected[&row.stage].clone();
        let mut dwells = dwells;
        dwells.sort_unstable();
        let nearest_rank = |q: f64| {
            (!dwells.is_empty())
                .then(|| dwells[((q * dwells.len() as f64).ceil() as usize).max(1) - 1])
        };
        assert_eq!(
            (row.entered, row.moved_on, row.won, row.stuck),
            (entered, moved_on, won, stuck),
            "stage {}",
            row.stage
        );
        assert_eq!(
            row.dwell_median_ms,
            nearest_rank(0.5),
            "median dwell in {}",
            row.stage
        );
        assert_eq!(
            row.dwell_p90_ms,
            nearest_rank(0.9),
            "p90 dwell in {}",
            row.stage
        );
    }
    let qualification = report
        .stages
        .iter()
        .find(|s| s.stage == "Qualification")
        .unwrap();
    assert_eq!(qualification.max_dwell_ms, Some(30 * DAY));
    assert!(report.stages.iter().map(|s| s.entered).sum::<i64>() > 20);
    // Salesforce has one pipeline: naming it changes nothing.
    let in_pipeline = query::funnel::run(
        &test.store,
        &world.settings,
        &FunnelParams {
            from: format_instant(from),
            to: format_instant(to),
            pipeline: Some("default".into()),
            ..FunnelParams::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(in_pipeline.stages, report.stages);
    // By owner, each deal's entries count under the owner it had at the last sync.
    let owner_now: BTreeMap<&str, &str> = deals
        .iter()
        .filter_map(|record| state_at(record, world.syncs[2]))
        .filter_map(|(state, _)| Some((state["Id"].as_str()?, state["OwnerId"].as_str()?)))
        .collect();
    let mut expected_by_owner: BTreeMap<(Option<String>, String), i64> = BTreeMap::new();
    for (deal, list) in &moves {
        for (_, stage) in list.iter().filter(|(at, _)| (from..to).contains(at)) {
            let owner = owner_now.get(deal.as_str()).map(|o| o.to_string());
            *expected_by_owner.entry((owner, stage.clone())).or_default() += 1;
        }
    }
    let by_owner = query::funnel::run(
        &test.store,
        &world.settings,
        &FunnelParams {
            from: format_instant(from),
            to: format_instant(to),
            by: Some(query::funnel::FunnelBy::Owner),
            ..FunnelParams::default()
        },
    )
    .await
    .unwrap();
    let got_by_owner: BTreeMap<(Option<String>, String), i64> = by_owner
        .stages
        .iter()
        .map(|s| ((s.group.clone(), s.stage.clone()), s.entered))
        .collect();
    let owners: BTreeSet<&str> = owner_now.values().copied().collect();
    assert!(owners.len() > 1, "deals have several owners: {owners:?}");
    assert_eq!(got_by_owner, expected_by_owner);
    world.emu.stop().await.unwrap();
}

/// Month index of an instant, computed apart from the query module.
fn month_of(at: Millis) -> i64 {
    use chrono::Datelike;
    let date = chrono::DateTime::from_timestamp_millis(at).unwrap();
    i64::from(date.year()) * 12 + i64::from(date.month0())
}

async fn cohorts_match_the_truth(test: TestStore) {
    let world = synced_world(&test).await;
    let leads = truth(&world.emu, "Lead").await;
    let mut meetings: BTreeMap<String, Vec<Millis>> = BTreeMap::new();
    for row in truth(&world.emu, "LeadHistory").await {
        let row = &row["versions"].as_array().unwrap().last().unwrap()["record"];
        if row["Field"] == json!("Status") && row["NewValue"] == json!("Meeting Booked") {
            meetings
                .entry(row["LeadId"].as_str().unwrap().to_string())
                .or_default()
                .push(millis(row["CreatedDate"].as_str().unwrap()));
        }
    }
    let wins: BTreeMap<String, Millis> = truth_moves(&world.emu)
        .await
        .into_iter()
        .filter_map(|(deal, list)| {
            list.iter()
                .find(|(_, stage)| stage == "Closed Won")
                .map(|(at, _)| (deal, *at))
        })
        .collect();
    let horizon = 6;
    // cohort month -> (size, meetings per offset, wins per offset)
    let mut expected: BTreeMap<i64, (i64, Vec<i64>, Vec<i64>)> = BTreeMap::new();
    for lead in &leads {
        let latest = &lead["versions"].as_array().unwrap().last().unwrap()["record"];
        let id = latest["Id"].as_str().unwrap();
        let created = millis(latest["CreatedDate"].as_str().unwrap());
        let cohort = expected
            .entry(month_of(created))
            .or_insert_with(|| (0, vec![0; horizon + 1], vec![0; horizon + 1]));
        cohort.0 += 1;
        let meeting = meetings
            .get(id)
            .and_then(|ats| ats.iter().filter(|at| **at >= created).min());
        if let Some(at) = meeting {
            let offset = (month_of(*at) - month_of(created)) as usize;
            if offset <= horizon {
                cohort.1[offset] += 1;
            }
        }
        let won = latest["ConvertedOpportunityId"]
            .as_str()
            .and_then(|deal| wins.get(deal))
            .filter(|at| **at >= created);
        if let Some(at) = won {
            let offset = (month_of(*at) - month_of(created)) as usize;
            if offset <= horizon {
                cohort.2[offset] += 1;
            }
        }
    }
    for (outcome, pick) in [("meeting_booked", 1), ("won", 2)] {
        let report = query::cohort::run(
            &test.store,
            &CohortParams {
                period: "month".into(),
                start: "created".into(),
                outcome: outcome.into(),
                horizon: Some(horizon as u32),
                kind: Some("lead".into()),
                ..CohortParams::default()
            },
        )
        .await
        .unwrap();
        let got: BTreeMap<String, (i64, Vec<i64>)> = report
            .cohorts
            .iter()
            .map(|c| {
                (
                    c.period.clone(),
                    (c.size, c.columns.iter().map(|col| col.reached).collect()),
                )
            })
            .collect();
        let want: BTreeMap<String, (i64, Vec<i64>)> = expected
            .iter()
            .map(|(month, (size, meetings, wins))| {
                let reached = if pick == 1 {
                    meetings.clone()
                } else {
                    wins.clone()
                };
                (Period::Month.label(*month), (*size, reached))
            })
            .collect();
        assert_eq!(got, want, "cohorts reaching {outcome}");
        let reached: i64 = got.values().flat_map(|(_, r)| r).sum();
        assert!(reached > 0, "some leads reach {outcome}");
    }
    cohorts_within_a_window_match_the_truth(&test, &leads).await;
    cohorts_of_every_kind_match_the_events(&test).await;
    world.emu.stop().await.unwrap();
}

/// A window that starts and ends inside a month cuts its cohorts to the leads created within.
async fn cohorts_within_a_window_match_the_truth(test: &TestStore, leads: &[Value]) {
    let mut created: Vec<Millis> = leads
        .iter()
        .map(|lead| {
            let latest = &lead["versions"].as_array().unwrap().last().unwrap()["record"];
            millis(latest["CreatedDate"].as_str().unwrap())
        })
        .collect();
    created.sort_unstable();
    // Whole seconds, as the parameters carry them.
    let from = (created[created.len() / 3] / 1000 + 1) * 1000;
    let to = from + 45 * 86_400_000;
    let mut want: BTreeMap<String, i64> = BTreeMap::new();
    for at in created.iter().filter(|at| (from..to).contains(*at)) {
        *want.entry(Period::Month.label(month_of(*at))).or_default() += 1;
    }
    assert!(want.len() >= 2, "the window spans months: {want:?}");
    let report = query::cohort::run(
        &test.store,
        &CohortParams {
            period: "month".into(),
            start: "created".into(),
            outcome: "won".into(),
            kind: Some("lead".into()),
            from: Some(format_instant(from)),
            to: Some(format_instant(to)),
            ..CohortParams::default()
        },
    )
    .await
    .unwrap();
    let got: BTreeMap<String, i64> = report
        .cohorts
        .iter()
        .map(|c| (c.period.clone(), c.size))
        .collect();
    assert_eq!(got, want, "lead cohorts created in [{from}, {to})");
}

/// Without `--kind` a cohort holds the records of every kind created in its period, as the
/// store's own events say.
async fn cohorts_of_every_kind_match_the_events(test: &TestStore) {
    let quarter_of = |at: Millis| month_of(at).div_euclid(3);
    let mut want: BTreeMap<String, i64> = BTreeMap::new();
    let mut kinds = BTreeSet::new();
    for (_, event, _, kind, at) in rows_of::<FirstRow>(&test.url, FIRSTS_FROM_EVENTS).await {
        if event == "created" {
            kinds.insert(kind);
            *want
                .entry(Period::Quarter.label(quarter_of(at)))
                .or_default() += 1;
        }
    }
    assert!(
        kinds.len() >= 3,
        "records of several kinds start: {kinds:?}"
    );
    let report = query::cohort::run(
        &test.store,
        &CohortParams {
            period: "quarter".into(),
            start: "created".into(),
            outcome: "won".into(),
            ..CohortParams::default()
        },
    )
    .await
    .unwrap();
    let got: BTreeMap<String, i64> = report
        .cohorts
        .into_iter()
        .map(|c| (c.period, c.size))
        .collect();
    assert_eq!(got, want);
}

/// Simulated time at which the scenario starts: Friday 2026-04-10 09:00 UTC.
const APRIL_10: Millis = 1_775_811_600_000;

async fn advance_to(emu: &RunningEmulator, at: Millis) {
    let by = at - emu.clock().now_ms();
    assert!(by > 0);
    control(
        emu,
        "/__emulator/clock/advance",
        json!({"by": format!("{by}ms")}),
    )
    .await;
}

async fn change(emu: &RunningEmulator, change: Value) -> String {
    let answer = control(
        emu,
        "/__emulator/salesforce/changes",
        json!({ "changes": [change] }),
    )
    .await;
    answer["ids"][0].as_str().unwrap().to_string()
}

/// A lead created in April books a meeting in May; its deal is won in August.
async fn april_lead_counts_in_may_and_august_columns(test: TestStore) {
    let emu = emulator::start(
        "127.0.0.1:0".parse().unwrap(),
        EmulatorOptions {
            scale: Scale::Tiny,
            start_ms: APRIL_10,
            ..EmulatorOptions::default()
        },
    )
    .await
    .unwrap();
    let dir = ConfigDir::new();
    let settings = settings_for(&dir, &emu, &test.url);
    let by = json!({"kind": "rep", "number": 1});
    let lead = change(
        &emu,
        json!({"object": "Lead", "create": {"LastName": "Okafor", "Company": "Scenario Labs", "LeadSource": "Scenario"}, "by": by}),
    )
    .await;
    sync_now(&test, &settings).await;
    advance_to(&emu, APRIL_10 + 32 * DAY).await; // 12 May
    change(
        &emu,
        json!({"object": "Lead", "id": lead, "set": {"Status": "Meeting Booked"}, "by": by}),
    )
    .await;
    sync_now(&test, &settings).await;
    advance_to(&emu, APRIL_10 + 66 * DAY).await; // 15 June
    let deal = change(
        &emu,
        json!({"object": "Opportunity", "create": {"Name": "Scenario Labs - New Business", "StageName": "Prospecting", "CloseDate": "2026-08-31", "Amount": 12000}, "by": by}),
    )
    .await;
    change(
        &emu,
        json!({"object": "Lead", "id": lead, "convert_to": deal, "by": by}),
    )
    .await;
    advance_to(&emu, APRIL_10 + 130 * DAY).await; // 18 August
    change(
        &emu,
        json!({"object": "Opportunity", "id": deal, "set": {"StageName": "Closed Won"}, "by": by}),
    )
    .await;
    // The sync reads history rows older than its start; let the win be older.
    control(&emu, "/__emulator/clock/advance", json!({"by": "1h"})).await;
    sync_now(&test, &settings).await;

    let cohort = |period: &str, outcome: &str| CohortParams {
        period: period.into(),
        start: "created".into(),
        outcome: outcome.into(),
        horizon: Some(5),
        by: Some(pipewarden::query::cohort::CohortBy::Source),
        kind: Some("lead".into()),
        ..CohortParams::default()
    };
    // (period, outcome) -> (cohort, column of the outcome)
    let cases = [
        ("month", "meeting_booked", "2026-04", "2026-05", 1),
        ("month", "won", "2026-04", "2026-08", 4),
        ("quarter", "meeting_booked", "2026-Q2", "2026-Q2", 0),
        ("quarter", "won", "2026-Q2", "2026-Q3", 1),
        ("year", "meeting_booked", "2026", "2026", 0),
        ("year", "won", "2026", "2026", 0),
    ];
    for (period, outcome, start, column, offset) in cases {
        let report = query::cohort::run(&test.store, &cohort(period, outcome))
            .await
            .unwrap();
        let ours: Vec<_> = report
            .cohorts
            .iter()
            .filter(|c| c.group.as_deref() == Some("Scenario"))
            .collect();
        assert_eq!(ours.len(), 1, "{period}/{outcome}: one Scenario cohort");
        let ours = ours[0];
        assert_eq!(
            (ours.period.as_str(), ours.size),
            (start, 1),
            "{period}/{outcome}"
        );
        let reached: Vec<(u32, &str)> = ours
            .columns
            .iter()
            .filter(|c| c.reached > 0)
            .map(|c| (c.offset, c.period.as_str()))
            .collect();
        assert_eq!(reached, vec![(offset, column)], "{period}/{outcome}");
        let last = ours.columns.last().unwrap();
        assert_eq!((last.cumulative, last.cumulative_bp), (1, 10_000));
    }
    emu.stop().await.unwrap();
}

async fn bad_parameters_are_named(test: TestStore) {
    let world = synced_world(&test).await;
    let (parameter, message) = bad(query::as_of::run(
        &test.store,
        &AsOfParams {
            at: "2026-02-30".into(),
            ..AsOfParams::default()
        },
    )
    .await);
    assert_eq!(parameter, "at");
    assert!(message.contains("2026-02-30"), "{message}");
    let (parameter, message) = bad(query::as_of::run(
        &test.store,
        &AsOfParams {
            at: "2026-02-01".into(),
            stage: Some("Closed Maybe".into()),
            ..AsOfParams::default()
        },
    )
    .await);
    assert_eq!(parameter, "stage");
    assert!(
        message.contains("Closed Maybe") && message.contains("Prospecting"),
        "{message}"
    );
    let (parameter, message) = bad(query::as_of::run(
        &test.store,
        &AsOfParams {
            at: "2026-02-01".into(),
            connection: Some("nope".into()),
            ..AsOfParams::default()
        },
    )
    .await);
    assert_eq!(parameter, "connection");
    assert!(message.contains("`sf`"), "{message}");
    let (parameter, _) = bad(query::pipeline_diff::run(
        &test.store,
        &PipelineDiffParams {
            from: "2026-03-01".into(),
            to: "2026-02-01".into(),
            ..PipelineDiffParams::default()
        },
    )
    .await);
    assert_eq!(parameter, "from");
    let (parameter, message) = bad(query::cohort::run(
        &test.store,
        &CohortParams {
            period: "month".into(),
            start: "created".into(),
            outcome: "signed".into(),
            ..CohortParams::default()
        },
    )
    .await);
    assert_eq!(parameter, "outcome");
    assert!(message.contains("meeting_booked"), "{message}");
    let (parameter, _) = bad(query::cohort::run(
        &test.store,
        &CohortParams {
            period: "week".into(),
            start: "created".into(),
            outcome: "won".into(),
            ..CohortParams::default()
        },
    )
    .await);
    assert_eq!(parameter, "period");
    world.emu.stop().await.unwrap();
}

fn bad<T>(result: Result<T, QueryError>) -> (&'static str, String) {
    match result {
        Err(QueryError::BadParameter { parameter, message }) => (parameter, message),
        Err(other) => panic!("expected a bad parameter, got {other}"),
        Ok(_) => panic!("expected a bad parameter, got an answer"),
    }
}

on_both_backends!(
    as_of_matches_the_truth_at_each_sync,
    pipeline_diff_matches_the_truth,
    funnel_matches_the_truth,
    cohorts_match_the_truth,
    april_lead_counts_in_may_and_august_columns,
    bad_parameters_are_named,
    campaigns_match_the_truth,
    first_events_are_filled_in_by_the_migration_and_kept_by_later_syncs,
    link_ends_are_filled_in_by_the_migration_and_kept_by_later_syncs,
);

/// Each (connection, event, record) with its earliest time, as `lifecycle_firsts` should hold
/// it, computed from the events themselves.
const FIRSTS_FROM_EVENTS: &str = "SELECT connection_id, event, record_id, MIN(object_kind), \
     MIN(occurred_at_ms) FROM lifecycle_events GROUP BY connection_id, event, record_id \
     ORDER BY connection_id, event, record_id";
const FIRSTS_STORED: &str = "SELECT connection_id, event, record_id, object_kind, occurred_at_ms \
     FROM lifecycle_firsts ORDER BY connection_id, event, record_id";

type FirstRow = (i64, String, i64, String, i64);

async fn rows_of<T>(url: &str, sql: &'static str) -> Vec<T>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>
        + for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow>
        + Send
        + Unpin,
{
    use sqlx::Connection;
    if url.starts_with("postgres") {
        let mut db = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::query_as(sql).fetch_all(&mut db).await.unwrap()
    } else {
        let mut db = sqlx::SqliteConnection::connect(url).await.unwrap();
        sqlx::query_as(sql).fetch_all(&mut db).await.unwrap()
    }
}

/// Takes the store back to before migration 11 (no table of first events, no trigger).
async fn undo_first_events_migration(url: &str) {
    let sql = if url.starts_with("postgres") {
        "DROP TRIGGER lifecycle_firsts_kept ON lifecycle_events; \
         DROP FUNCTION keep_lifecycle_first(); DROP TABLE lifecycle_firsts; \
         DELETE FROM _sqlx_migrations WHERE version = 11"
    } else {
        "DROP TRIGGER lifecycle_firsts_kept; DROP TABLE lifecycle_firsts; \
         DELETE FROM _sqlx_migrations WHERE version = 11"
    };
    execute(url, sql).await;
}

/// A store synced before `lifecycle_firsts` existed gets it filled in by the migration, and
/// the trigger keeps it equal to the events' earliest times as later syncs add events.
async fn first_events_are_filled_in_by_the_migration_and_kept_by_later_syncs(test: TestStore) {
    undo_first_events_migration(&test.url).await;
    let emu = start_emulator().await;
    let dir = ConfigDir::new();
    let settings = settings_for(&dir, &emu, &test.url);
    sync_now(&test, &settings).await;

    let report = test.store.migrate().await.unwrap();
    assert_eq!(report.applied, vec![11], "{report:?}");
    let expected = rows_of::<FirstRow>(&test.url, FIRSTS_FROM_EVENTS).await;
    assert!(
        expected.len() > 100,
        "the sync stored events: {}",
        expected.len()
    );
    assert_eq!(
        rows_of::<FirstRow>(&test.url, FIRSTS_STORED).await,
        expected
    );

    control(&emu, "/__emulator/clock/advance", json!({"by": "40d"})).await;
    sync_now(&test, &settings).await;
    let later = rows_of::<FirstRow>(&test.url, FIRSTS_FROM_EVENTS).await;
    assert!(later.len() > expected.len(), "the second sync added events");
    assert_eq!(rows_of::<FirstRow>(&test.url, FIRSTS_STORED).await, later);

    // A milestone met again later leaves the first in place; one found to be earlier (CRM
    // history read after an observed change) replaces it.
    let (connection_id, _, record_id, kind, first) = later
        .iter()
        .find(|row| row.1 == "mql")
        .cloned()
        .expect("a lead reached MQL");
    let mut tx = test.store.begin().await.unwrap();
    let events: Vec<NewLifecycleEvent> = [first + DAY, first - DAY]
        .into_iter()
        .map(|occurred_at| NewLifecycleEvent {
            record_id,
            connection_id,
            kind: ObjectKind::parse(&kind).unwrap(),
            event: LifecycleEvent::Mql,
            occurred_at,
            origin: Origin::CrmHistory,
            detail: None,
            observed_at: occurred_at,
        })
        .collect();
    tx.record_lifecycle_events(&events).await.unwrap();
    tx.commit().await.unwrap();
    let stored = rows_of::<FirstRow>(&test.url, FIRSTS_STORED).await;
    assert_eq!(
        stored,
        rows_of::<FirstRow>(&test.url, FIRSTS_FROM_EVENTS).await
    );
    assert!(stored.contains(&(connection_id, "mql".into(), record_id, kind, first - DAY)));
    emu.stop().await.unwrap();
}

/// Each link with the store ids of its ends as the records table gives them by CRM id, and as
/// the link holds them.
const LINK_ENDS_BY_CRM_ID: &str = "SELECT k.from_kind || ':' || k.from_crm_id, k.relation, \
     k.to_kind || ':' || k.to_crm_id, a.id, b.id FROM record_links k \
     LEFT JOIN records a ON a.connection_id = k.connection_id AND a.object_kind = k.from_kind \
     AND a.crm_id = k.from_crm_id \
     LEFT JOIN records b ON b.connection_id = k.connection_id AND b.object_kind = k.to_kind \
     AND b.crm_id = k.to_crm_id ORDER BY 1, 2, 3";
const LINK_ENDS_STORED: &str = "SELECT k.from_kind || ':' || k.from_crm_id, k.relation, \
     k.to_kind || ':' || k.to_crm_id, k.from_record_id, k.to_record_id FROM record_links k \
     ORDER BY 1, 2, 3";

type LinkRow = (String, String, String, Option<i64>, Option<i64>);

/// Takes the store back to before migration 12 (links without their ends' store ids).
async fn undo_link_ends_migration(url: &str) {
    let sql = if url.starts_with("postgres") {
        "DROP TRIGGER records_end_links ON records; DROP FUNCTION end_links(); \
         DROP TRIGGER record_links_find_ends ON record_links; DROP FUNCTION find_link_ends(); "
    } else {
        "DROP TRIGGER records_end_links; DROP TRIGGER record_links_find_ends; "
    };
    execute(
        url,
        &format!(
            "{sql} DROP INDEX record_links_by_from_record; DROP INDEX record_links_by_to_record; \
             ALTER TABLE record_links DROP COLUMN from_record_id; \
             ALTER TABLE record_links DROP COLUMN to_record_id; \
             DELETE FROM _sqlx_migrations WHERE version = 12"
        ),
    )
    .await;
}

/// A store synced before links held their ends' store ids gets them from the migration, and
/// later syncs keep them, whether a link or the record it names is stored first.
async fn link_ends_are_filled_in_by_the_migration_and_kept_by_later_syncs(test: TestStore) {
    undo_link_ends_migration(&test.url).await;
    let emu = start_emulator().await;
    let dir = ConfigDir::new();
    let settings = settings_for(&dir, &emu, &test.url);
    sync_now(&test, &settings).await;

    let report = test.store.migrate().await.unwrap();
    assert_eq!(report.applied, vec![12], "{report:?}");
    let expected: Vec<LinkRow> = rows_of(&test.url, LINK_ENDS_BY_CRM_ID).await;
    let resolved = |rows: &[LinkRow]| {
        rows.iter()
            .filter(|row| row.3.is_some() && row.4.is_some())
            .count()
    };
    assert!(
        resolved(&expected) > 10,
        "the sync stored links: {expected:?}"
    );
    assert_eq!(
        rows_of::<LinkRow>(&test.url, LINK_ENDS_STORED).await,
        expected
    );

    control(&emu, "/__emulator/clock/advance", json!({"by": "40d"})).await;
    sync_now(&test, &settings).await;
    let later: Vec<LinkRow> = rows_of(&test.url, LINK_ENDS_BY_CRM_ID).await;
    assert!(
        resolved(&later) > resolved(&expected),
        "the second sync added links"
    );
    assert_eq!(rows_of::<LinkRow>(&test.url, LINK_ENDS_STORED).await, later);
    emu.stop().await.unwrap();
}

async fn campaigns_match_the_truth(test: TestStore) {
    let world = synced_world(&test).await;
    let (from, to) = (world.syncs[0] - 120 * DAY, world.syncs[2]);
    let latest = |record: &Value| {
        record["versions"]
            .as_array()
            .unwrap()
            .last()
            .unwrap()
            .clone()
    };
    let deals: BTreeMap<String, Value> = truth(&world.emu, "Opportunity")
        .await
        .iter()
        .map(latest)
        .filter(|v| v["deleted"] == json!(false))
        .map(|v| {
            (
                v["record"]["Id"].as_str().unwrap().to_string(),
                v["record"].clone(),
            )
        })
        .collect();
    let converted: BTreeMap<String, String> = truth(&world.emu, "Lead")
        .await
        .iter()
        .map(latest)
        .filter_map(|v| {
            let deal = v["record"]["ConvertedOpportunityId"].as_str()?.to_string();
            Some((v["record"]["Id"].as_str().unwrap().to_string(), deal))
        })
        .collect();
    // campaign -> (members, responses, deals)
    let mut expected: BTreeMap<String, (f64, f64, BTreeSet<String>)> = BTreeMap::new();
    for member in truth(&world.emu, "CampaignMember").await.iter().map(latest) {
        let row = &member["record"];
        let created = millis(row["CreatedDate"].as_str().unwrap());
        if member["deleted"] == json!(true) || !(from..to).contains(&created) {
            continue;
        }
        let tally = expected
            .entry(row["CampaignId"].as_str().unwrap().into())
            .or_default();
        tally.0 += 1.0;
        if row["HasResponded"] == json!(true) {
            tally.1 += 1.0;
        }
        let deal = row["LeadId"].as_str().and_then(|lead| converted.get(lead));
        if let Some(deal) = deal.filter(|d| deals.contains_key(*d)) {
            tally.2.insert(deal.clone());
        }
    }
    for (id, deal) in &deals {
        let created = millis(deal["CreatedDate"].as_str().unwrap());
        if let (Some(campaign), true) = (deal["CampaignId"].as_str(), (from..to).contains(&created))
        {
            expected
                .entry(campaign.into())
                .or_default()
                .2
                .insert(id.clone());
        }
    }
    let report = query::campaigns::run(
        &test.store,
        &query::campaigns::CampaignsParams {
            from: format_instant(from),
            to: format_instant(to),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let got: BTreeMap<String, (f64, f64, f64, f64, f64)> = report
        .campaigns
        .iter()
        .map(|c| {
            let f = &c.figures;
            (
                c.campaign_id.clone(),
                (f.members, f.responses, f.opportunities, f.wins, f.won_cents),
            )
        })
        .collect();
    let want: BTreeMap<String, (f64, f64, f64, f64, f64)> = expected
        .iter()
        .map(|(campaign, (members, responses, led_to))| {
            let won: Vec<&Value> = led_to
                .iter()
                .map(|d| &deals[d])
                .filter(|d| d["IsWon"] == json!(true))
                .collect();
            let won_cents: i64 = won.iter().map(|d| cents(d).unwrap_or(0)).sum();
            (
                campaign.clone(),
                (
                    *members,
                    *responses,
                    led_to.len() as f64,
                    won.len() as f64,
                    won_cents as f64,
                ),
            )
        })
        .collect();
    assert_eq!(got, want);
    assert!(want.len() > 2, "several campaigns are active");
    let mean_members = want.values().map(|w| w.0).sum::<f64>() / want.len() as f64;
    assert_eq!(
        report.average.members,
        (mean_members * 100.0).round() / 100.0
    );
    for c in &report.campaigns {
        assert_eq!(
            c.versus_average.members,
            c.figures.members - report.average.members
        );
    }
    world.emu.stop().await.unwrap();
}

/// The same emulator synced into SQLite and PostgreSQL: every query answers alike.
#[tokio::test]
async fn sqlite_and_postgres_answer_alike() {
    let Some(postgres) = TestStore::postgres().await else {
        return;
    };
    let sqlite = TestStore::sqlite().await;
    let emu = start_emulator().await;
    let dir = ConfigDir::new();
    let sqlite_settings = settings_for(&dir, &emu, &sqlite.url);
    let dir_pg = ConfigDir::new();
    let postgres_settings = settings_for(&dir_pg, &emu, &postgres.url);
    let mut syncs = Vec::new();
    for round in 0..2 {
        if round > 0 {
            control(&emu, "/__emulator/clock/advance", json!({"by": "30d"})).await;
        }
        sync_now(&sqlite, &sqlite_settings).await;
        sync_now(&postgres, &postgres_settings).await;
        syncs.push(emu.clock().now_ms());
    }
    let (from, to) = (
        format_instant(syncs[0] - 150 * DAY),
        format_instant(syncs[1]),
    );
    let some_deal = truth(&emu, "Opportunity").await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let answers = |test: &TestStore, settings: Settings| {
        let (store, from, to, deal) = (
            test.store.clone(),
            from.clone(),
            to.clone(),
            some_deal.clone(),
        );
        async move {
            let mut all: Vec<Value> = Vec::new();
            let value = |v: &dyn erased::Answer| v.json();
            all.push(value(
                &query::as_of::run(
                    &store,
                    &AsOfParams {
                        at: to.clone(),
                        ..Default::default()
                    },
                )
                .await
                .unwrap(),
            ));
            all.push(value(
                &query::history::run(
                    &store,
                    &query::history::HistoryParams {
                        id: deal,
                        ..Default::default()
                    },
                )
                .await
                .unwrap(),
            ));
            all.push(value(
                &query::pipeline_diff::run(
                    &store,
                    &PipelineDiffParams {
                        from: from.clone(),
                        to: to.clone(),
                        ..Default::default()
                    },
                )
                .await
                .unwrap(),
            ));
            for by in [None, Some(query::funnel::FunnelBy::Owner)] {
                all.push(value(
                    &query::funnel::run(
                        &store,
                        &settings,
                        &FunnelParams {
                            from: from.clone(),
                            to: to.clone(),
                            by,
                            ..Default::default()
                        },
                    )
                    .await
                    .unwrap(),
                ));
            }
            for (period, by) in [
                ("month", None),
                ("quarter", Some(query::cohort::CohortBy::Campaign)),
                ("year", Some(query::cohort::CohortBy::Source)),
            ] {
                for outcome in ["meeting_booked", "won"] {
                    all.push(value(
                        &query::cohort::run(
                            &store,
                            &CohortParams {
                                period: period.into(),
                                start: "created".into(),
                                outcome: outcome.into(),
                                by,
                                ..Default::default()
                            },
                        )
                        .await
                        .unwrap(),
                    ));
                }
            }
            all.push(value(
                &query::campaigns::run(
                    &store,
                    &query::campaigns::CampaignsParams {
                        from,
                        to,
                        ..Default::default()
                    },
                )
                .await
                .unwrap(),
            ));
            all
        }
    };
    let on_sqlite = answers(&sqlite, sqlite_settings).await;
    let on_postgres = answers(&postgres, postgres_settings).await;
    assert_eq!(on_sqlite.len(), on_postgres.len());
    for (a, b) in on_sqlite.iter().zip(&on_postgres) {
        assert_eq!(a, b);
    }
    emu.stop().await.unwrap();
}

/// Any answer as JSON, whatever its type.
mod erased {
    pub trait Answer {
        fn json(&self) -> serde_json::Value;
    }
    impl<T: serde::Serialize> Answer for T {
        fn json(&self) -> serde_json::Value {
            serde_json::to_value(self).unwrap()
        }
    }
}
