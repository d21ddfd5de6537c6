//! Lead recycling against the emulator: which records each policy selects (computed from the
//! emulator's ground truth, not from the planner's SQL), exactly which writes the CRM shows
//! afterwards, dry runs, caps, repeated and interrupted applies, validation failures, and a
//! recycled lead returning months later.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::Duration;

use pipewarden::config::Settings;
use pipewarden::crm::RetryPolicy;
use pipewarden::emulator::{
    self, EmulatorOptions, HubspotOptions, RunningEmulator, SalesforceOptions, Scale,
    ValidationRule,
};
use pipewarden::query;
use pipewarden::recycle::{self, ApplyOptions, ApplyReport, Plan, RecycleOptions};
use pipewarden::stop::StopSignal;
use pipewarden::store::Store;
use pipewarden::sync;
use serde_json::{json, Value};

use super::emulator::control;
use super::emulator_faults::set_faults;
use super::sync::{quick_options, truth};
use crate::support::{on_both_backends, ConfigDir, TestStore};

const DAY_MS: i64 = 86_400_000;
const SUBJECT: &str = "Recycled to nurture: check before calling";

/// What the test policy looks like.
struct PolicySpec {
    dry_run: bool,
    cap: u32,
    exclude_owner: Option<String>,
}

/// The org's ids a policy refers to.
struct OrgIds {
    queue: String,
    campaign: String,
}

async fn start(salesforce: SalesforceOptions) -> RunningEmulator {
    let options = EmulatorOptions {
        scale: Scale::Tiny,
        salesforce,
        hubspot: HubspotOptions {
            burst_per_ten_seconds: 100_000,
            ..HubspotOptions::default()
        },
        ..EmulatorOptions::default()
    };
    emulator::start("127.0.0.1:0".parse().unwrap(), options)
        .await
        .expect("emulator starts")
}

/// The latest state of every record of `object`, by id (deleted ones left out).
async fn latest(emu: &RunningEmulator, object: &str) -> BTreeMap<String, Value> {
    truth(emu, object)
        .await
        .into_iter()
        .filter_map(|record| {
            let version = record["versions"].as_array()?.last()?.clone();
            if version["deleted"] == json!(true) {
                return None;
            }
            let id = version["record"]["Id"].as_str()?.to_string();
            Some((id, version["record"].clone()))
        })
        .collect()
}

async fn org_ids(emu: &RunningEmulator) -> OrgIds {
    let groups = latest(emu, "Group").await;
    let queue = groups
        .iter()
        .find(|(_, g)| g["Name"] == "Recycled Leads")
        .map(|(id, _)| id.clone())
        .expect("the org has a Recycled Leads queue");
    let campaign = latest(emu, "Campaign")
        .await
        .into_keys()
        .next()
        .expect("the org has campaigns");
    OrgIds { queue, campaign }
}

fn millis(text: &str) -> i64 {
    super::sync::millis(text)
}

fn day_start(text: &str) -> i64 {
    chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .unwrap()
        .and_time(chrono::NaiveTime::MIN)
        .and_utc()
        .timestamp_millis()
}

/// The leads a 30-day stale policy must select, read from the ground truth: open, not in
/// nurture already, not opted out, not of the excluded owner, no activity for 30 days.
fn expected_stale(
    leads: &BTreeMap<String, Value>,
    as_of: i64,
    excluded: Option<&str>,
) -> BTreeSet<String> {
    leads
        .iter()
        .filter(|(_, lead)| {
            let status = lead["Status"].as_str().unwrap_or_default();
            let since = lead["LastActivityDate"]
                .as_str()
                .map(day_start)
                .unwrap_or_else(|| millis(lead["CreatedDate"].as_str().unwrap()));
            lead["IsConverted"] != json!(true)
                && !["Closed - Converted", "Closed - Not Converted", "Nurture"].contains(&status)
                && lead["HasOptedOutOfEmail"] != json!(true)
                && lead["OwnerId"].as_str() != excluded
                && since < as_of - 30 * DAY_MS
        })
        .map(|(id, _)| id.clone())
        .collect()
}

fn write_config(
    dir: &ConfigDir,
    emu: &RunningEmulator,
    store_url: &str,
    ids: &OrgIds,
    spec: &PolicySpec,
) -> String {
    dir.write("refresh-token", "emulator-demo-refresh-token\n");
    dir.write("slack-token", "xoxb-recycle-test\n");
    let exclude = spec
        .exclude_owner
        .as_ref()
        .map(|owner| format!("exclude_owners = [\"{owner}\"]"))
        .unwrap_or_default();
    let config = format!(
        r##"
[store]
url = "{store_url}"

[[connections]]
name = "sf"
kind = "salesforce"
login_url = "{base}"

[connections.auth]
kind = "refresh_token"
client_id = "pipewarden-demo"
refresh_token = {{ file = "refresh-token" }}

[connections.limits]
requests_per_second = 200
burst = 200

[slack]
bot_token = {{ file = "slack-token" }}
api_base_url = "{base}slack/api"
default_channel = "#revops"

[recycle]
max_actions_per_run = {cap}
summary_channel = "#recycling"

[[recycle.policies]]
name = "stale-leads"
connection = "sf"
kind = "stale"
after_days = 30
dry_run = {dry}
max_actions_per_run = {cap}
{exclude}

[recycle.policies.actions]
set_status = "Nurture"
set_owner = "{queue}"
add_to_campaign = "{campaign}"
create_task = "{SUBJECT}"
"##,
        base = emu.base_url(),
        cap = spec.cap,
        dry = spec.dry_run,
        queue = ids.queue,
        campaign = ids.campaign,
    );
    dir.write("pipewarden.toml", &config).display().to_string()
}

fn load(path: &str) -> Settings {
    pipewarden::config::load(Some(path.as_ref())).expect("test config loads")
}

async fn sync_all(store: &Store, settings: &Settings) {
    for connection in &settings.connections {
        sync::sync_once(store, connection, &quick_options(), &StopSignal::never())
            .await
            .expect("sync succeeds");
    }
}

fn options(emu: &RunningEmulator) -> RecycleOptions {
    RecycleOptions {
        policy: None,
        as_of: emu.clock().now_ms(),
    }
}

fn quick_apply() -> ApplyOptions {
    ApplyOptions {
        retry: RetryPolicy {
            max_attempts: 6,
            base_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(50),
        },
    }
}

fn planned_ids(plan: &Plan) -> BTreeSet<String> {
    plan.policies
        .iter()
        .flat_map(|p| p.records.iter().map(|r| r.candidate.crm_id.clone()))
        .collect()
}

/// New records of `object` since `before`, as (person id, count) from `field`.
fn new_per_person(
    before: &BTreeMap<String, Value>,
    after: &BTreeMap<String, Value>,
    field: &str,
) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for (id, record) in after {
        if !before.contains_key(id) {
            let who = record[field].as_str().unwrap_or("(none)").to_string();
            *counts.entry(who).or_insert(0) += 1;
        }
    }
    counts
}

/// Everything the CRM shows of the writes: per lead its status and owner, and the campaign
/// members and tasks created.
struct Observed {
    leads: BTreeMap<String, Value>,
    members: BTreeMap<String, Value>,
    tasks: BTreeMap<String, Value>,
}

async fn observe(emu: &RunningEmulator) -> Observed {
    Observed {
        leads: latest(emu, "Lead").await,
        members: latest(emu, "CampaignMember").await,
        tasks: latest(emu, "Task").await,
    }
}

/// The CRM shows exactly the expected writes for `recycled`, once each, and nothing else.
fn assert_exactly_recycled(
    before: &Observed,
    after: &Observed,
    recycled: &BTreeSet<String>,
    ids: &OrgIds,
) {
    for (id, lead) in &after.leads {
        if recycled.contains(id) {
            assert_eq!(lead["Status"], "Nurture", "lead {id}");
            assert_eq!(
                lead["OwnerId"].as_str(),
                Some(ids.queue.as_str()),
                "lead {id}"
            );
        } else {
            assert_eq!(
                Some(lead),
                before.leads.get(id),
                "lead {id} was not to be touched"
            );
        }
    }
    let members = new_per_person(&before.members, &after.members, "LeadId");
    let tasks = new_per_person(&before.tasks, &after.tasks, "WhoId");
    let once: BTreeMap<String, usize> = recycled.iter().map(|id| (id.clone(), 1)).collect();
    // A lead already in the nurture campaign keeps its membership (DUPLICATE_VALUE is done).
    let already: BTreeSet<String> = before
        .members
        .values()
        .filter(|m| m["CampaignId"].as_str() == Some(ids.campaign.as_str()))
        .filter_map(|m| m["LeadId"].as_str().map(str::to_string))
        .collect();
    let joined: BTreeMap<String, usize> = once
        .iter()
        .filter(|(id, _)| !already.contains(*id))
        .map(|(id, n)| (id.clone(), *n))
        .collect();
    assert_eq!(
        members, joined,
        "one nurture membership per recycled lead, none other"
    );
    assert_eq!(tasks, once, "one task per recycled lead, none other");
    for (id, member) in &after.members {
        if !before.members.contains_key(id) {
            assert_eq!(member["CampaignId"].as_str(), Some(ids.campaign.as_str()));
        }
    }
}

async fn stale_leads_are_selected_and_written_exactly_once(t: TestStore) {
    let emu = start(SalesforceOptions::default()).await;
    let ids = org_ids(&emu).await;
    let dir = ConfigDir::new();
    let spec = PolicySpec {
        dry_run: false,
        cap: 1_000,
        exclude_owner: None,
    };
    let settings = load(&write_config(&dir, &emu, &t.url, &ids, &spec));
    sync_all(&t.store, &settings).await;
    let before = observe(&emu).await;
    let as_of = emu.clock().now_ms();
    // Exclude the owner of the oldest stale lead, so the exclusion has something to do.
    let all_stale = expected_stale(&before.leads, as_of, None);
    let excluded = before.leads[all_stale.iter().next().expect("the funnel has stale leads")]
        ["OwnerId"]
        .as_str()
        .unwrap()
        .to_string();
    let spec = PolicySpec {
        exclude_owner: Some(excluded.clone()),
        ..spec
    };
    let settings = load(&write_config(&dir, &emu, &t.url, &ids, &spec));
    let expected = expected_stale(&before.leads, as_of, Some(&excluded));
    assert!(!expected.is_empty() && expected.len() < all_stale.len());

    let plan = recycle::plan(&t.store, &settings, &options(&emu))
        .await
        .unwrap();
    assert_eq!(
        planned_ids(&plan),
        expected,
        "the plan selects exactly the stale leads"
    );
    let first = &plan.policies[0].records[0];
    assert_eq!(first.actions.len(), 4, "{first:?}");
    assert!(
        first.reason.contains("no activity since"),
        "{}",
        first.reason
    );
    assert_eq!(
        latest(&emu, "Lead").await,
        before.leads,
        "planning writes nothing"
    );

    let report = recycle::apply(&t.store, &settings, &options(&emu), &quick_apply())
        .await
        .unwrap();
    let outcome = &report.policies[0];
    assert_eq!(outcome.planned as usize, expected.len() * 4, "{report:?}");
    assert_eq!(outcome.applied, outcome.planned, "{report:?}");
    assert_eq!(outcome.failed, 0, "{report:?}");
    let after = observe(&emu).await;
    assert_exactly_recycled(&before, &after, &expected, &ids);

    // Planning again, before and after the next sync, finds nothing; applying writes nothing.
    let again = recycle::plan(&t.store, &settings, &options(&emu))
        .await
        .unwrap();
    assert!(planned_ids(&again).is_empty(), "{:?}", planned_ids(&again));
    sync_all(&t.store, &settings).await;
    let again = recycle::plan(&t.store, &settings, &options(&emu))
        .await
        .unwrap();
    assert!(planned_ids(&again).is_empty(), "{:?}", planned_ids(&again));
    let second = recycle::apply(&t.store, &settings, &options(&emu), &quick_apply())
        .await
        .unwrap();
    assert_eq!(second.policies[0].planned, 0, "{second:?}");
    let after_second = observe(&emu).await;
    assert_eq!(
        after_second.leads, after.leads,
        "a second apply writes nothing"
    );
    assert_eq!(after_second.members.len(), after.members.len());
    assert_eq!(after_second.tasks.len(), after.tasks.len());
    emu.stop().await.unwrap();
}

async fn a_dry_run_records_the_plan_and_writes_nothing(t: TestStore) {
    let emu = start(SalesforceOptions::default()).await;
    let ids = org_ids(&emu).await;
    let dir = ConfigDir::new();
    let spec = PolicySpec {
        dry_run: true,
        cap: 1_000,
        exclude_owner: None,
    };
    let settings = load(&write_config(&dir, &emu, &t.url, &ids, &spec));
    sync_all(&t.store, &settings).await;
    let before = observe(&emu).await;
    let expected = expected_stale(&before.leads, emu.clock().now_ms(), None);
    let report = recycle::apply(&t.store, &settings, &options(&emu), &quick_apply())
        .await
        .unwrap();
    assert!(report.policies[0].dry_run);
    assert_eq!(report.policies[0].records as usize, expected.len());
    assert_eq!(report.policies[0].applied, 0);
    let after = observe(&emu).await;
    assert_eq!(after.leads, before.leads, "a dry run writes nothing");
    assert_eq!(after.members.len(), before.members.len());
    assert_eq!(after.tasks.len(), before.tasks.len());
    // The dry run is recorded, and does not stop the same records from being planned.
    let plan = recycle::plan(&t.store, &settings, &options(&emu))
        .await
        .unwrap();
    assert_eq!(planned_ids(&plan), expected);
    emu.stop().await.unwrap();
}

async fn turning_a_policy_into_a_dry_run_cancels_its_queued_writes(t: TestStore) {
    let emu = start(SalesforceOptions::default()).await;
    let ids = org_ids(&emu).await;
    let dir = ConfigDir::new();
    let live = PolicySpec {
        dry_run: false,
        cap: 1_000,
        exclude_owner: None,
    };
    let settings = load(&write_config(&dir, &emu, &t.url, &ids, &live));
    sync_all(&t.store, &settings).await;
    let before = observe(&emu).await;
    // The org refuses every write for now: the run queues its writes and delivers none.
    set_faults(
        &emu,
        json!([{"kind": "unavailable", "path_contains": "composite", "next": 100_000}]),
    )
    .await;
    recycle::apply(&t.store, &settings, &options(&emu), &quick_apply())
        .await
        .unwrap();
    let queued = recycle::plan(&t.store, &settings, &options(&emu))
        .await
        .unwrap()
        .waiting_in_outbox;
    assert!(queued > 0, "writes wait in the outbox");
    set_faults(&emu, json!([])).await;

    // RevOps stops the policy: its queued writes must not reach the CRM either.
    let stopped = PolicySpec {
        dry_run: true,
        ..live
    };
    let settings = load(&write_config(&dir, &emu, &t.url, &ids, &stopped));
    recycle::apply(&t.store, &settings, &options(&emu), &quick_apply())
        .await
        .unwrap();
    let after = observe(&emu).await;
    assert_eq!(after.leads, before.leads, "nothing was written");
    assert_eq!(after.members.len(), before.members.len());
    assert_eq!(after.tasks.len(), before.tasks.len());
    let left = recycle::plan(&t.store, &settings, &options(&emu))
        .await
        .unwrap()
        .waiting_in_outbox;
    assert_eq!(left, 0, "the queued writes were cancelled");
    emu.stop().await.unwrap();
}

async fn the_cap_holds_and_the_next_run_continues(t: TestStore) {
    let emu = start(SalesforceOptions::default()).await;
    let ids = org_ids(&emu).await;
    let dir = ConfigDir::new();
    // Four actions per lead: a cap of 10 lets two leads through.
    let spec = PolicySpec {
        dry_run: false,
        cap: 10,
        exclude_owner: None,
    };
    let settings = load(&write_config(&dir, &emu, &t.url, &ids, &spec));
    sync_all(&t.store, &settings).await;
    let before = observe(&emu).await;
    let expected = expected_stale(&before.leads, emu.clock().now_ms(), None);
    assert!(expected.len() > 4);
    let report = recycle::apply(&t.store, &settings, &options(&emu), &quick_apply())
        .await
        .unwrap();
    assert_eq!(report.policies[0].planned, 8, "{report:?}");
    assert_eq!(report.policies[0].applied, 8, "{report:?}");
    let after = observe(&emu).await;
    let changed: BTreeSet<String> = after
        .leads
        .iter()
        .filter(|(id, lead)| before.leads.get(*id) != Some(lead))
        .map(|(id, _)| id.clone())
        .collect();
    assert_eq!(changed.len(), 2, "{changed:?}");
    assert!(changed.is_subset(&expected));
    assert_exactly_recycled(&before, &after, &changed, &ids);
    let next = recycle::apply(&t.store, &settings, &options(&emu), &quick_apply())
        .await
        .unwrap();
    assert_eq!(next.policies[0].applied, 8, "{next:?}");
    emu.stop().await.unwrap();
}

async fn a_record_failing_validation_leaves_the_others_applied(t: TestStore) {
    // The org insists that a lead in nurture has an industry; one stale lead has none.
    let rule = ValidationRule {
        object: "Lead".into(),
        field: "Industry".into(),
        when_field: "Status".into(),
        equals: "Nurture".into(),
        message: "Nurture leads need an industry.".into(),
    };
    let emu = start(SalesforceOptions {
        validation_rules: vec![rule],
        ..SalesforceOptions::default()
    })
    .await;
    let ids = org_ids(&emu).await;
    let leads = latest(&emu, "Lead").await;
    let expected = expected_stale(&leads, emu.clock().now_ms(), None);
    let victim = expected.iter().next().unwrap().clone();
    control(
        &emu,
        "/__emulator/salesforce/changes",
        json!({"changes": [{"object": "Lead", "id": victim, "set": {"Industry": null}, "by": {"kind": "import"}}]}),
    )
    .await;
    let dir = ConfigDir::new();
    let spec = PolicySpec {
        dry_run: false,
        cap: 1_000,
        exclude_owner: None,
    };
    let settings = load(&write_config(&dir, &emu, &t.url, &ids, &spec));
    sync_all(&t.store, &settings).await;
    let report: ApplyReport = recycle::apply(&t.store, &settings, &options(&emu), &quick_apply())
        .await
        .unwrap();
    let failed: BTreeSet<(String, String)> = report
        .failures
        .iter()
        .map(|f| (f.crm_id.clone(), f.error_code.clone().unwrap_or_default()))
        .collect();
    // Status and owner go in one update of that lead, which the rule refuses.
    assert_eq!(
        failed,
        BTreeSet::from([(
            victim.clone(),
            "FIELD_CUSTOM_VALIDATION_EXCEPTION".to_string()
        )]),
        "{report:?}"
    );
    assert_eq!(report.policies[0].failed, 2, "{report:?}");
    // The run's Slack summary waits in the alert outbox for the delivery worker.
    let summaries: Vec<_> = t
        .store
        .alerts()
        .await
        .unwrap()
        .into_iter()
        .filter(|a| a.kind == "recycle_summary")
        .collect();
    assert_eq!(summaries.len(), 1, "{summaries:?}");
    assert_eq!(summaries[0].channel.as_deref(), Some("#recycling"));
    assert_eq!(
        summaries[0].dedupe_key,
        format!("recycle-run/{}", report.run_id)
    );
    let after = latest(&emu, "Lead").await;
    assert_ne!(after[&victim]["Status"], "Nurture");
    for id in expected.iter().filter(|id| **id != victim) {
        assert_eq!(after[id]["Status"], "Nurture", "lead {id}");
    }
    // The failure is final: the next run does not try again within the cooldown.
    let again = recycle::plan(&t.store, &settings, &options(&emu))
        .await
        .unwrap();
    assert!(planned_ids(&again).is_empty());
    emu.stop().await.unwrap();
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

async fn an_apply_killed_mid_run_then_run_again_applies_every_action_once(t: TestStore) {
    let emu = start(SalesforceOptions::default()).await;
    let ids = org_ids(&emu).await;
    let dir = ConfigDir::new();
    let spec = PolicySpec {
        dry_run: false,
        cap: 1_000,
        exclude_owner: None,
    };
    let path = write_config(&dir, &emu, &t.url, &ids, &spec);
    let settings = load(&path);
    sync_all(&t.store, &settings).await;
    let before = observe(&emu).await;
    let expected = expected_stale(&before.leads, emu.clock().now_ms(), None);
    let as_of = rfc3339(emu.clock().now_ms());
    // Slow answers: the org applies each collections call at once and answers late, so the
    // kill lands after writes reached the CRM and before the run learned of them.
    set_faults(
        &emu,
        json!([{"kind": "slow_answer", "delay_ms": 600, "path_contains": "composite"}]),
    )
    .await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_pipewarden"))
        .args(["--config", &path, "recycle", "apply", "--as-of", &as_of])
        .env("RUST_LOG", "pipewarden=warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("pipewarden starts");
    // Kill once the run has queued its writes, while the slow calls deliver them.
    let mut queued = 0;
    for _ in 0..400 {
        queued = recycle::plan(&t.store, &settings, &options(&emu))
            .await
            .unwrap()
            .waiting_in_outbox;
        if queued > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(queued > 0, "the run queued its writes");
    // The first round's updates are answered after 600 ms; its creates are then applied and
    // wait for their answer when the kill comes.
    tokio::time::sleep(Duration::from_millis(900)).await;
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
    set_faults(&emu, json!([])).await;
    crate::support::until_lease_free(
        &t.store,
        &format!("recycle:{}", settings.connections[0].name),
    )
    .await;
    let midway = recycle::plan(&t.store, &settings, &options(&emu))
        .await
        .unwrap();
    assert!(
        midway.waiting_in_outbox > 0,
        "the kill landed before the run finished"
    );
    // The emulator serves from this test's runtime: wait for the process off that thread.
    let status = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_pipewarden"))
            .args(["--config", &path, "recycle", "apply", "--as-of", &as_of])
            .env("RUST_LOG", "pipewarden=warn")
            .stdout(Stdio::null())
            .status()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(status.success());
    let after = observe(&emu).await;
    assert_exactly_recycled(&before, &after, &expected, &ids);
    // Each lead's status changed once: LeadHistory has one move into nurture per lead.
    let history = truth(&emu, "LeadHistory").await;
    let mut moves: BTreeMap<String, usize> = BTreeMap::new();
    for row in history {
        let record = &row["versions"].as_array().unwrap().last().unwrap()["record"];
        if record["Field"] == "Status" && record["NewValue"] == "Nurture" {
            *moves
                .entry(record["LeadId"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
    }
    let once: BTreeMap<String, usize> = expected.iter().map(|id| (id.clone(), 1)).collect();
    assert_eq!(moves, once);
    emu.stop().await.unwrap();
}

async fn a_recycled_lead_that_books_a_meeting_later_has_returned(t: TestStore) {
    let emu = start(SalesforceOptions::default()).await;
    let ids = org_ids(&emu).await;
    let dir = ConfigDir::new();
    let spec = PolicySpec {
        dry_run: false,
        cap: 1_000,
        exclude_owner: None,
    };
    let settings = load(&write_config(&dir, &emu, &t.url, &ids, &spec));
    sync_all(&t.store, &settings).await;
    let recycled_at = emu.clock().now_ms();
    let report = recycle::apply(&t.store, &settings, &options(&emu), &quick_apply())
        .await
        .unwrap();
    assert!(report.policies[0].applied > 0);
    let lead = latest(&emu, "Lead")
        .await
        .into_iter()
        .find(|(_, l)| l["Status"] == "Nurture")
        .map(|(id, _)| id)
        .unwrap();
    control(&emu, "/__emulator/clock/advance", json!({"by": "60days"})).await;
    control(
        &emu,
        "/__emulator/salesforce/changes",
        json!({"changes": [{"object": "Lead", "id": lead, "set": {"Status": "Meeting Booked"}, "by": {"kind": "rep", "number": 1}}]}),
    )
    .await;
    let met_at = emu.clock().now_ms();
    // The sync reads history up to (not including) the CRM's now: let a minute pass.
    control(&emu, "/__emulator/clock/advance", json!({"by": "1m"})).await;
    sync_all(&t.store, &settings).await;
    let connection = t.store.connection_id("sf").await.unwrap().unwrap();
    let record = t
        .store
        .record(connection, pipewarden::record::ObjectKind::Lead, &lead)
        .await
        .unwrap()
        .unwrap();
    let returned = recycle::outcomes::evaluate(&t.store, met_at).await.unwrap();
    let events = t.store.lifecycle_events(record.id).await.unwrap();
    let moves = t.store.transitions(record.id).await.unwrap();
    assert_eq!(returned, 1, "{events:?} {moves:?}");
    let returned_event = events
        .iter()
        .find(|e| e.event == pipewarden::record::LifecycleEvent::Returned)
        .expect("a returned milestone");
    assert_eq!(returned_event.occurred_at, met_at);
    assert_eq!(
        returned_event.detail.as_ref().unwrap()["delay_ms"],
        json!(met_at - recycled_at)
    );
    assert!(events
        .iter()
        .any(|e| e.event == pipewarden::record::LifecycleEvent::Recycled
            && e.occurred_at == recycled_at));
    // Evaluating again marks nothing twice.
    assert_eq!(
        recycle::outcomes::evaluate(&t.store, met_at).await.unwrap(),
        0
    );

    // query recycled: every recycled lead once, one returned, after the delay.
    let yields = query::recycled::run(&t.store, &query::recycled::RecycledParams::default())
        .await
        .unwrap();
    assert_eq!(yields.total.recycled, report.policies[0].records);
    assert_eq!(yields.total.returned, 1);
    assert_eq!(yields.total.median_return_ms, Some(met_at - recycled_at));
    let row = yields.records.iter().find(|r| r.crm_id == lead).unwrap();
    assert_eq!(row.returned_with.as_deref(), Some("meeting_booked"));
    assert_eq!(row.times_recycled, 1);
    // In cohorts, the lead belongs to the month it was recycled (January) and its return
    // counts two months later (March).
    let cohort = query::cohort::run(
        &t.store,
        &query::cohort::CohortParams {
            period: "month".into(),
            start: "recycled".into(),
            outcome: "returned".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let january = cohort
        .cohorts
        .iter()
        .find(|c| c.period == "2026-01")
        .expect("a January recycled cohort");
    assert_eq!(january.size as u64, yields.total.recycled);
    let march = january
        .columns
        .iter()
        .find(|c| c.period == "2026-03")
        .unwrap();
    assert_eq!((march.offset, march.reached), (2, 1));
    let reached: i64 = january.columns.iter().map(|c| c.reached).sum();
    assert_eq!(reached, 1);
    emu.stop().await.unwrap();
}

on_both_backends!(
    stale_leads_are_selected_and_written_exactly_once,
    a_dry_run_records_the_plan_and_writes_nothing,
    the_cap_holds_and_the_next_run_continues,
    turning_a_policy_into_a_dry_run_cancels_its_queued_writes,
    a_record_failing_validation_leaves_the_others_applied,
    an_apply_killed_mid_run_then_run_again_applies_every_action_once,
    a_recycled_lead_that_books_a_meeting_later_has_returned,
    hubspot_stale_contacts_are_recycled_with_lifecycle_cleared_first,
    unworked_disqualified_and_lost_policies_select_what_the_org_says,
    assignment_rules_pick_the_owner_when_the_policy_asks_for_them,
    stalled_opportunities_move_back_a_stage_once,
    a_dry_run_stalled_policy_writes_nothing,
    stalled_deal_owners_are_warned_once_during_the_grace_period,
    stalled_hubspot_deals_are_closed_lost_once,
);

const HS_TOKEN: &str = "pat-na1-emulator-demo-token";

async fn hubspot_get(emu: &RunningEmulator, path: &str) -> Value {
    let url = emu.base_url().join(path.trim_start_matches('/')).unwrap();
    let response = reqwest::Client::new()
        .get(url)
        .bearer_auth(HS_TOKEN)
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{path}: {}",
        response.status()
    );
    response.json().await.unwrap()
}

/// Every page of a HubSpot listing.
async fn hubspot_all(emu: &RunningEmulator, path: &str) -> Vec<Value> {
    let mut results = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..1_000 {
        let page_path = match &after {
            Some(after) => format!("{path}&after={after}"),
            None => path.to_string(),
        };
        let page = hubspot_get(emu, &page_path).await;
        results.extend(page["results"].as_array().unwrap().iter().cloned());
        after = page["paging"]["next"]["after"].as_str().map(str::to_string);
        if after.is_none() {
            return results;
        }
    }
    panic!("{path}: paging does not end");
}

const CONTACT_PROPERTIES: &str =
    "lifecyclestage,hs_lead_status,notes_last_contacted,createdate,hs_email_optout,hubspot_owner_id";

async fn hubspot_contacts(emu: &RunningEmulator) -> BTreeMap<String, Value> {
    hubspot_all(
        emu,
        &format!("/crm/v3/objects/contacts?limit=100&properties={CONTACT_PROPERTIES}"),
    )
    .await
    .into_iter()
    .map(|c| {
        (
            c["id"].as_str().unwrap().to_string(),
            c["properties"].clone(),
        )
    })
    .collect()
}

fn hs_instant(value: &Value) -> Option<i64> {
    let text = value.as_str().filter(|t| !t.is_empty())?;
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_millis())
        .ok()
        .or_else(|| text.parse().ok())
}

async fn hubspot_stale_contacts_are_recycled_with_lifecycle_cleared_first(t: TestStore) {
    let emu = start(SalesforceOptions::default()).await;
    let owner = hubspot_get(&emu, "/crm/v3/owners/?limit=1").await["results"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let dir = ConfigDir::new();
    dir.write("hubspot-token", &format!("{HS_TOKEN}\n"));
    let config = format!(
        r#"
[store]
url = "{store}"

[[connections]]
name = "hs"
kind = "hubspot"
api_base_url = "{base}"

[connections.auth]
kind = "private_app"
token = {{ file = "hubspot-token" }}

[connections.limits]
requests_per_second = 200
burst = 200

[recycle]
max_actions_per_run = 5000

[[recycle.policies]]
name = "stale-contacts"
connection = "hs"
kind = "stale"
after_days = 30
dry_run = false

[recycle.policies.actions]
set_lifecycle_stage = "lead"
set_status = "BAD_TIMING"
set_owner = "{owner}"
add_to_list = "101"
"#,
        store = t.url,
        base = emu.base_url(),
    );
    let settings = load(&dir.write("pipewarden.toml", &config).display().to_string());
    sync_all(&t.store, &settings).await;
    let before = hubspot_contacts(&emu).await;
    let as_of = emu.clock().now_ms();
    // Contacts of open deals are left alone.
    let deals = hubspot_all(
        &emu,
        "/crm/v3/objects/deals?limit=100&properties=hs_is_closed&associations=contacts",
    )
    .await;
    let with_open_deal: BTreeSet<String> = deals
        .iter()
        .filter(|d| d["properties"]["hs_is_closed"] != "true")
        .flat_map(|d| {
            d["associations"]["contacts"]["results"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|c| c["id"].as_str().map(str::to_string))
        .collect();
    let expected: BTreeSet<String> = before
        .iter()
        .filter(|(id, c)| {
            let stage = c["lifecyclestage"].as_str().unwrap_or_default();
            let since = hs_instant(&c["notes_last_contacted"])
                .or_else(|| hs_instant(&c["createdate"]))
                .unwrap();
            !["opportunity", "customer", "evangelist", "other"].contains(&stage)
                && !["UNQUALIFIED", "BAD_TIMING"]
                    .contains(&c["hs_lead_status"].as_str().unwrap_or_default())
                && c["hs_email_optout"] != "true"
                && !with_open_deal.contains(*id)
                && since < as_of - 30 * DAY_MS
        })
        .map(|(id, _)| id.clone())
        .collect();
    assert!(!expected.is_empty());
    let plan = recycle::plan(&t.store, &settings, &options(&emu))
        .await
        .unwrap();
    assert_eq!(planned_ids(&plan), expected);

    let report = recycle::apply(&t.store, &settings, &options(&emu), &quick_apply())
        .await
        .unwrap();
    assert_eq!(report.policies[0].failed, 0, "{report:?}");
    assert_eq!(report.policies[0].applied, report.policies[0].planned);
    let after = hubspot_contacts(&emu).await;
    for (id, contact) in &after {
        if expected.contains(id) {
            assert_eq!(contact["lifecyclestage"], "lead", "contact {id}");
            assert_eq!(contact["hs_lead_status"], "BAD_TIMING", "contact {id}");
            assert_eq!(contact["hubspot_owner_id"].as_str(), Some(owner.as_str()));
        } else {
            assert_eq!(
                Some(contact),
                before.get(id),
                "contact {id} was not to be touched"
            );
        }
    }
    let members: BTreeSet<String> = hubspot_all(&emu, "/crm/v3/lists/101/memberships?limit=100")
        .await
        .iter()
        .filter_map(|m| m["recordId"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        members, expected,
        "the nurture list holds exactly the recycled contacts"
    );
    // A contact that was further along was cleared first, then set: HubSpot keeps both.
    let moved_back = expected
        .iter()
        .find(|id| {
            matches!(
                before[*id]["lifecyclestage"].as_str(),
                Some("marketingqualifiedlead" | "salesqualifiedlead")
            )
        })
        .expect("some stale contact was past lead");
    let truth = hubspot_get(
        &emu,
        &format!("/__emulator/hubspot/records/contacts/{moved_back}"),
    )
    .await;
    let values: Vec<&str> = truth["properties"]["lifecyclestage"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["value"].as_str())
        .collect();
    assert_eq!(&values[values.len() - 2..], ["", "lead"], "{values:?}");
    let again = recycle::plan(&t.store, &settings, &options(&emu))
        .await
        .unwrap();
    assert!(planned_ids(&again).is_empty());
    emu.stop().await.unwrap();
}

/// The last row of each history record, as (parent id, field or stage, new value, at).
async fn history_rows(emu: &RunningEmulator, object: &str) -> Vec<Value> {
    truth(emu, object)
        .await
        .into_iter()
        .filter_map(|row| Some(row["versions"].as_array()?.last()?["record"].clone()))
        .collect()
}

async fn unworked_disqualified_and_lost_policies_select_what_the_org_says(t: TestStore) {
    let emu = start(SalesforceOptions::default()).await;
    let ids = org_ids(&emu).await;
    let dir = ConfigDir::new();
    dir.write("refresh-token", "emulator-demo-refresh-token\n");
    let config = format!(
        r##"
[store]
url = "{store}"

[[connections]]
name = "sf"
kind = "salesforce"
login_url = "{base}"

[connections.auth]
kind = "refresh_token"
client_id = "pipewarden-demo"
refresh_token = {{ file = "refresh-token" }}

[connections.limits]
requests_per_second = 200
burst = 200

[slack]
bot_token = {{ file = "slack-token" }}
api_base_url = "{base}slack/api"
default_channel = "#revops"

[recycle]
max_actions_per_run = 1000

# Alert-first by default: acts after after_days + grace_days (2 + 20).
[[recycle.policies]]
name = "unworked"
connection = "sf"
kind = "unworked"
after_days = 2
grace_days = 20
[recycle.policies.actions]
set_owner = "{queue}"

[[recycle.policies]]
name = "disqualified-fit"
connection = "sf"
kind = "disqualified"
after_days = 30
persona_industries = ["technology", "Finance"]
[recycle.policies.actions]
set_status = "Nurture"

[[recycle.policies]]
name = "lost-timing"
connection = "sf"
kind = "lost"
after_days = 30
loss_reasons = ["Timing", "Budget", "No Decision"]
[recycle.policies.actions]
add_to_campaign = "{campaign}"
"##,
        store = t.url,
        base = emu.base_url(),
        queue = ids.queue,
        campaign = ids.campaign,
    );
    dir.write("slack-token", "xoxb-recycle-test\n");
    let settings = load(&dir.write("pipewarden.toml", &config).display().to_string());
    sync_all(&t.store, &settings).await;
    let as_of = emu.clock().now_ms();
    let leads = latest(&emu, "Lead").await;
    let contacts = latest(&emu, "Contact").await;
    let deals = latest(&emu, "Opportunity").await;
    let lead_history = history_rows(&emu, "LeadHistory").await;
    let deal_history = history_rows(&emu, "OpportunityHistory").await;
    let opted_out = |record: &Value| record["HasOptedOutOfEmail"] == json!(true);

    let unworked: BTreeSet<String> = leads
        .iter()
        .filter(|(_, l)| {
            l["IsConverted"] != json!(true)
                && l["Status"] == "Open - Not Contacted"
                && l["LastActivityDate"].is_null()
                && millis(l["CreatedDate"].as_str().unwrap()) < as_of - 22 * DAY_MS
                && !opted_out(l)
                && l["OwnerId"].as_str() != Some(ids.queue.as_str())
        })
        .map(|(id, _)| id.clone())
        .collect();

    let disqualified_at = |id: &str| {
        lead_history
            .iter()
            .filter(|h| {
                h["LeadId"] == id
                    && h["Field"] == "Status"
                    && h["NewValue"] == "Closed - Not Converted"
            })
            .map(|h| millis(h["CreatedDate"].as_str().unwrap()))
            .max()
    };
    let disqualified: BTreeSet<String> = leads
        .iter()
        .filter(|(id, l)| {
            let since = disqualified_at(id)
                .unwrap_or_else(|| millis(l["SystemModstamp"].as_str().unwrap()));
            l["Status"] == "Closed - Not Converted"
                && ["Technology", "Finance"].contains(&l["Industry"].as_str().unwrap_or_default())
                && !opted_out(l)
                && since < as_of - 30 * DAY_MS
        })
        .map(|(id, _)| id.clone())
        .collect();

    let lost_at = |id: &str, stage: &str| {
        deal_history
            .iter()
            .filter(|h| h["OpportunityId"] == id && h["StageName"] == stage)
            .map(|h| millis(h["CreatedDate"].as_str().unwrap()))
            .max()
    };
    let recoverable: BTreeSet<&String> = deals
        .iter()
        .filter(|(id, d)| {
            let stage = d["StageName"].as_str().unwrap();
            let since =
                lost_at(id, stage).unwrap_or_else(|| millis(d["SystemModstamp"].as_str().unwrap()));
            d["IsClosed"] == json!(true)
                && d["IsWon"] == json!(false)
                && ["Timing", "Budget", "No Decision"]
                    .contains(&d["Loss_Reason__c"].as_str().unwrap_or_default())
                && since < as_of - 30 * DAY_MS
        })
        .map(|(id, _)| id)
        .collect();
    let lost: BTreeSet<String> = leads
        .values()
        .filter(|l| {
            l["ConvertedOpportunityId"]
                .as_str()
                .is_some_and(|deal| recoverable.contains(&deal.to_string()))
        })
        .filter_map(|l| l["ConvertedContactId"].as_str())
        .filter(|contact| contacts.get(*contact).is_some_and(|c| !opted_out(c)))
        .map(str::to_string)
        .collect();

    let plan = recycle::plan(&t.store, &settings, &options(&emu))
        .await
        .unwrap();
    let selected = |name: &str| -> BTreeSet<String> {
        plan.policies
            .iter()
            .find(|p| p.policy == name)
            .unwrap()
            .records
            .iter()
            .map(|r| r.candidate.crm_id.clone())
            .collect()
    };
    assert!(!unworked.is_empty() && !disqualified.is_empty() && !lost.is_empty());
    assert_eq!(selected("unworked"), unworked);
    assert_eq!(selected("disqualified-fit"), disqualified);
    assert_eq!(selected("lost-timing"), lost);
    let lost_plan = plan
        .policies
        .iter()
        .find(|p| p.policy == "lost-timing")
        .unwrap();
    let first = &lost_plan.records[0];
    assert_eq!(first.candidate.object_kind, "contact");
    assert!(first.reason.contains("lost"), "{}", first.reason);
    assert_eq!(
        first.actions.len(),
        1,
        "contacts have no Lead Status to set"
    );

    // Alert first: leads unworked for 2 to 22 days are not acted on yet; their owners are
    // warned once (the policies are dry runs, so apply only records and warns).
    let in_grace = leads
        .values()
        .filter(|l| {
            let created = millis(l["CreatedDate"].as_str().unwrap());
            l["IsConverted"] != json!(true)
                && l["Status"] == "Open - Not Contacted"
                && l["LastActivityDate"].is_null()
                && created < as_of - 2 * DAY_MS
                && created >= as_of - 22 * DAY_MS
                && !opted_out(l)
                && l["OwnerId"].as_str() != Some(ids.queue.as_str())
        })
        .count();
    assert!(in_grace > 0, "the funnel has recently unworked leads");
    let report = recycle::apply(&t.store, &settings, &options(&emu), &quick_apply())
        .await
        .unwrap();
    let unworked_outcome = report
        .policies
        .iter()
        .find(|p| p.policy == "unworked")
        .unwrap();
    assert_eq!(unworked_outcome.warned as usize, in_grace, "{report:?}");
    assert_eq!(unworked_outcome.applied, 0, "a dry run applies nothing");
    let warnings = t
        .store
        .alerts()
        .await
        .unwrap()
        .into_iter()
        .filter(|a| a.kind == "recycle_warning")
        .count();
    assert_eq!(warnings, in_grace);
    let again = recycle::apply(&t.store, &settings, &options(&emu), &quick_apply())
        .await
        .unwrap();
    assert_eq!(again.policies[0].warned, 0, "an owner is warned once");
    emu.stop().await.unwrap();
}

async fn assignment_rules_pick_the_owner_when_the_policy_asks_for_them(t: TestStore) {
    let emu = start(SalesforceOptions {
        lead_assignment_queue: Some("Nurture".into()),
        ..SalesforceOptions::default()
    })
    .await;
    let nurture_queue = latest(&emu, "Group")
        .await
        .into_iter()
        .find(|(_, g)| g["Name"] == "Nurture")
        .map(|(id, _)| id)
        .unwrap();
    let dir = ConfigDir::new();
    dir.write("refresh-token", "emulator-demo-refresh-token\n");
    let config = format!(
        r#"
[store]
url = "{store}"

[[connections]]
name = "sf"
kind = "salesforce"
login_url = "{base}"

[connections.auth]
kind = "refresh_token"
client_id = "pipewarden-demo"
refresh_token = {{ file = "refresh-token" }}

[recycle]
max_actions_per_run = 1000

[[recycle.policies]]
name = "stale-leads"
connection = "sf"
kind = "stale"
after_days = 30
dry_run = false

[recycle.policies.actions]
set_status = "Nurture"
use_assignment_rules = true
"#,
        store = t.url,
        base = emu.base_url(),
    );
    let settings = load(&dir.write("pipewarden.toml", &config).display().to_string());
    sync_all(&t.store, &settings).await;
    let before = latest(&emu, "Lead").await;
    let expected = expected_stale(&before, emu.clock().now_ms(), None);
    let report = recycle::apply(&t.store, &settings, &options(&emu), &quick_apply())
        .await
        .unwrap();
    assert_eq!(report.policies[0].failed, 0, "{report:?}");
    let after = latest(&emu, "Lead").await;
    for (id, lead) in &after {
        if expected.contains(id) {
            assert_eq!(lead["Status"], "Nurture", "lead {id}");
            assert_eq!(
                lead["OwnerId"].as_str(),
                Some(nurture_queue.as_str()),
                "the org's assignment rule owns lead {id} now"
            );
        } else {
            assert_eq!(
                Some(lead),
                before.get(id),
                "lead {id} was not to be touched"
            );
        }
    }
    emu.stop().await.unwrap();
}

/// Gated Salesforce stages: name, `max_dwell` in days, the open stage before it (the
/// first stage has none, so its stalled deals cannot move back and are left alone).
const SF_GATES: &[(&str, i64, Option<&str>)] = &[
    ("Prospecting", 3, None),
    ("Qualification", 3, Some("Prospecting")),
    ("Needs Analysis", 3, Some("Qualification")),
    ("Value Proposition", 3, Some("Needs Analysis")),
    ("Negotiation/Review", 10, Some("Proposal/Price Quote")),
];
/// Gated HubSpot stages of the default pipeline: id and `max_dwell` in days.
const HS_GATES: &[(&str, i64)] = &[("qualifiedtobuy", 20), ("presentationscheduled", 15)];
/// Days a stalled deal's owner has after the warning.
const STALLED_GRACE_DAYS: i64 = 5;

/// Stage gates with `max_dwell` and one `stalled` policy on `connection`.
fn stalled_config(connection: &str, gates: &[(&str, i64)], dry_run: bool, actions: &str) -> String {
    let mut config = format!(
        "\n[[rules]]\nname = \"gates\"\nconnection = \"{connection}\"\npipeline = \"default\"\n"
    );
    for (stage, days) in gates {
        config.push_str(&format!(
            "\n[[rules.stages]]\nstage = \"{stage}\"\nmax_dwell = \"{days}d\"\n"
        ));
    }
    config.push_str(&format!(
        r#"
[recycle]
max_actions_per_run = 1000

[[recycle.policies]]
name = "stalled-deals"
connection = "{connection}"
kind = "stalled"
after_days = 0
grace_days = {STALLED_GRACE_DAYS}
dry_run = {dry_run}

[recycle.policies.actions]
{actions}
"#
    ));
    config
}

fn salesforce_stalled_settings(
    dir: &ConfigDir,
    emu: &RunningEmulator,
    store_url: &str,
    dry_run: bool,
) -> Settings {
    let config = salesforce_stalled_text(dir, emu, store_url, dry_run);
    load(&dir.write("pipewarden.toml", &config).display().to_string())
}

fn salesforce_stalled_text(
    dir: &ConfigDir,
    emu: &RunningEmulator,
    store_url: &str,
    dry_run: bool,
) -> String {
    dir.write("refresh-token", "emulator-demo-refresh-token\n");
    let gates: Vec<(&str, i64)> = SF_GATES.iter().map(|(s, d, _)| (*s, *d)).collect();
    let config = format!(
        r#"
[store]
url = "{store_url}"

[[connections]]
name = "sf"
kind = "salesforce"
login_url = "{base}"

[connections.auth]
kind = "refresh_token"
client_id = "pipewarden-demo"
refresh_token = {{ file = "refresh-token" }}

[connections.limits]
requests_per_second = 200
burst = 200
{policy}"#,
        base = emu.base_url(),
        policy = stalled_config("sf", &gates, dry_run, "stage_action = \"move_back\""),
    );
    config
}

/// The open opportunities in a gated stage longer than its `max_dwell` plus the grace
/// period, read from the ground truth (the last OpportunityHistory row into the current
/// stage, else creation), with the stage each must move back to.
async fn expected_stalled_opportunities(
    emu: &RunningEmulator,
    as_of: i64,
) -> BTreeMap<String, String> {
    let deals = latest(emu, "Opportunity").await;
    let history = history_rows(emu, "OpportunityHistory").await;
    deals
        .iter()
        .filter(|(_, d)| d["IsClosed"] != json!(true))
        .filter_map(|(id, d)| {
            let stage = d["StageName"].as_str()?;
            let (_, dwell, previous) = SF_GATES.iter().find(|(s, _, _)| *s == stage)?;
            let previous = (*previous)?;
            let entered = history
                .iter()
                .filter(|h| h["OpportunityId"] == id.as_str() && h["StageName"] == stage)
                .map(|h| millis(h["CreatedDate"].as_str().unwrap()))
                .max()
                .unwrap_or_else(|| millis(d["CreatedDate"].as_str().unwrap()));
            (entered < as_of - (dwell + STALLED_GRACE_DAYS) * DAY_MS)
                .then(|| (id.clone(), previous.to_string()))
        })
        .collect()
}

/// How many versions the ground truth holds of each record of `object`.
async fn version_counts(emu: &RunningEmulator, object: &str) -> BTreeMap<String, usize> {
    truth(emu, object)
        .await
        .into_iter()
        .filter_map(|record| {
            let versions = record["versions"].as_array()?;
            let id = versions.last()?["record"]["Id"].as_str()?.to_string();
            Some((id, versions.len()))
        })
        .collect()
}

async fn stalled_opportunities_move_back_a_stage_once(t: TestStore) {
    let emu = start(SalesforceOptions::default()).await;
    let dir = ConfigDir::new();
    let settings = salesforce_stalled_settings(&dir, &emu, &t.url, false);
    sync_all(&t.store, &settings).await;
    let as_of = emu.clock().now_ms();
    let expected = expected_stalled_opportunities(&emu, as_of).await;
    assert!(!expected.is_empty(), "the org has stalled opportunities");

    let plan = recycle::plan(&t.store, &settings, &options(&emu))
        .await
        .unwrap();
    let wanted: BTreeSet<String> = expected.keys().cloned().collect();
    assert_eq!(planned_ids(&plan), wanted);
    for record in &plan.policies[0].records {
        let id = &record.candidate.crm_id;
        assert_eq!(record.actions.len(), 1, "deal {id}");
        assert_eq!(record.actions[0].action, "move_back");
        assert_eq!(
            record.actions[0].after,
            json!({ "StageName": expected[id] }),
            "deal {id}"
        );
        assert!(record.reason.contains("max dwell"), "{}", record.reason);
    }

    let before = latest(&emu, "Opportunity").await;
    let versions_before = version_counts(&emu, "Opportunity").await;
    let report = recycle::apply(&t.store, &settings, &options(&emu), &quick_apply())
        .await
        .unwrap();
    assert_eq!(report.policies[0].failed, 0, "{report:?}");
    assert_eq!(report.policies[0].applied as usize, expected.len());
    let again = recycle::apply(&t.store, &settings, &options(&emu), &quick_apply())
        .await
        .unwrap();
    assert_eq!(again.policies[0].planned, 0, "{again:?}");

    let after = latest(&emu, "Opportunity").await;
    let versions_after = version_counts(&emu, "Opportunity").await;
    for (id, deal) in &after {
        match expected.get(id) {
            Some(previous) => {
                assert_eq!(deal["StageName"].as_str(), Some(previous.as_str()), "{id}");
                assert_eq!(
                    versions_after[id],
                    versions_before[id] + 1,
                    "deal {id} written once"
                );
            }
            None => {
                assert_eq!(
                    Some(deal),
                    before.get(id),
                    "deal {id} was not to be touched"
                );
                assert_eq!(versions_after.get(id), versions_before.get(id), "{id}");
            }
        }
    }
    emu.stop().await.unwrap();
}

async fn a_dry_run_stalled_policy_writes_nothing(t: TestStore) {
    let emu = start(SalesforceOptions::default()).await;
    let dir = ConfigDir::new();
    let settings = salesforce_stalled_settings(&dir, &emu, &t.url, true);
    sync_all(&t.store, &settings).await;
    let expected = expected_stalled_opportunities(&emu, emu.clock().now_ms()).await;
    assert!(!expected.is_empty());
    let versions_before = version_counts(&emu, "Opportunity").await;
    let report = recycle::apply(&t.store, &settings, &options(&emu), &quick_apply())
        .await
        .unwrap();
    let outcome = &report.policies[0];
    assert!(outcome.dry_run);
    assert_eq!(outcome.planned as usize, expected.len(), "{report:?}");
    assert_eq!(outcome.applied, 0);
    assert_eq!(version_counts(&emu, "Opportunity").await, versions_before);
    emu.stop().await.unwrap();
}

/// When a HubSpot deal entered its current stage: the last `dealstage` version with that
/// value in the ground truth.
async fn hubspot_stage_entered(emu: &RunningEmulator, id: &str, stage: &str) -> Option<i64> {
    let truth = hubspot_get(emu, &format!("/__emulator/hubspot/records/deals/{id}")).await;
    truth["properties"]["dealstage"]
        .as_array()?
        .iter()
        .filter(|v| v["value"] == stage)
        .filter_map(|v| hs_instant(&v["timestamp"]))
        .max()
}

/// How many times the ground truth shows `stage` written to a deal.
async fn hubspot_stage_writes(emu: &RunningEmulator, id: &str, stage: &str) -> usize {
    let truth = hubspot_get(emu, &format!("/__emulator/hubspot/records/deals/{id}")).await;
    truth["properties"]["dealstage"]
        .as_array()
        .map(|versions| versions.iter().filter(|v| v["value"] == stage).count())
        .unwrap_or(0)
}

const DEAL_LISTING: &str =
    "/crm/v3/objects/deals?limit=100&properties=dealstage,pipeline,createdate,hs_is_closed&associations=contacts";

/// The contact ids a deal of the listing is associated with.
fn associated_contacts(deal: &Value) -> BTreeSet<String> {
    deal["associations"]["contacts"]["results"]
        .as_array()
        .map(|results| {
            results
                .iter()
                .filter_map(|c| c["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

async fn hubspot_deals(emu: &RunningEmulator) -> BTreeMap<String, Value> {
    hubspot_all(emu, DEAL_LISTING)
        .await
        .into_iter()
        .map(|d| {
            let mut properties = d["properties"].clone();
            properties["contacts"] = json!(associated_contacts(&d));
            (d["id"].as_str().unwrap().to_string(), properties)
        })
        .collect()
}

async fn stalled_hubspot_deals_are_closed_lost_once(t: TestStore) {
    let emu = start(SalesforceOptions::default()).await;
    let dir = ConfigDir::new();
    dir.write("hubspot-token", &format!("{HS_TOKEN}\n"));
    let config = format!(
        r#"
[store]
url = "{store}"

[[connections]]
name = "hs"
kind = "hubspot"
api_base_url = "{base}"

[connections.auth]
kind = "private_app"
token = {{ file = "hubspot-token" }}

[connections.limits]
requests_per_second = 200
burst = 200
{policy}"#,
        store = t.url,
        base = emu.base_url(),
        policy = stalled_config(
            "hs",
            HS_GATES,
            false,
            "stage_action = \"close_lost\"\nset_status = \"BAD_TIMING\"\nadd_to_list = \"101\"",
        ),
    );
    let settings = load(&dir.write("pipewarden.toml", &config).display().to_string());
    sync_all(&t.store, &settings).await;
    let as_of = emu.clock().now_ms();
    let before = hubspot_deals(&emu).await;
    let mut expected = BTreeSet::new();
    for (id, deal) in &before {
        let stage = deal["dealstage"].as_str().unwrap_or_default();
        let Some((_, dwell)) = HS_GATES.iter().find(|(s, _)| *s == stage) else {
            continue;
        };
        if deal["hs_is_closed"] == "true" || deal["pipeline"] != "default" {
            continue;
        }
        let entered = match hubspot_stage_entered(&emu, id, stage).await {
            Some(at) => at,
            None => hs_instant(&deal["createdate"]).unwrap(),
        };
        if entered < as_of - (dwell + STALLED_GRACE_DAYS) * DAY_MS {
            expected.insert(id.clone());
        }
    }
    assert!(!expected.is_empty(), "the portal has stalled deals");
    // Their contacts go to nurture, unless opted out or in another open deal.
    let contacts = hubspot_contacts(&emu).await;
    let open_deals_of = |contact: &str| -> BTreeSet<&String> {
        before
            .iter()
            .filter(|(_, d)| d["hs_is_closed"] != "true")
            .filter(|(_, d)| {
                d["contacts"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|c| c == contact)
            })
            .map(|(id, _)| id)
            .collect()
    };
    let mut expected_contacts = BTreeSet::new();
    for deal in &expected {
        for contact in before[deal]["contacts"].as_array().unwrap() {
            let contact = contact.as_str().unwrap();
            let others = open_deals_of(contact)
                .into_iter()
                .filter(|d| *d != deal)
                .count();
            if others == 0 && contacts[contact]["hs_email_optout"] != "true" {
                expected_contacts.insert(contact.to_string());
            }
        }
    }
    assert!(!expected_contacts.is_empty(), "stalled deals have contacts");
    let plan = recycle::plan(&t.store, &settings, &options(&emu))
        .await
        .unwrap();
    let everything: BTreeSet<String> = expected.union(&expected_contacts).cloned().collect();
    assert_eq!(planned_ids(&plan), everything);

    let report = recycle::apply(&t.store, &settings, &options(&emu), &quick_apply())
        .await
        .unwrap();
    assert_eq!(report.policies[0].failed, 0, "{report:?}");
    assert_eq!(report.policies[0].applied, report.policies[0].planned);
    let again = recycle::apply(&t.store, &settings, &options(&emu), &quick_apply())
        .await
        .unwrap();
    assert_eq!(again.policies[0].planned, 0, "{again:?}");

    let members: BTreeSet<String> = hubspot_all(&emu, "/crm/v3/lists/101/memberships?limit=100")
        .await
        .iter()
        .filter_map(|m| m["recordId"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        members, expected_contacts,
        "the closed deals' contacts are in nurture"
    );
    let after_contacts = hubspot_contacts(&emu).await;
    for id in &expected_contacts {
        assert_eq!(
            after_contacts[id]["hs_lead_status"], "BAD_TIMING",
            "contact {id}"
        );
    }
    let after = hubspot_deals(&emu).await;
    for (id, deal) in &after {
        if expected.contains(id) {
            assert_eq!(deal["dealstage"], "closedlost", "deal {id}");
            assert_eq!(
                hubspot_stage_writes(&emu, id, "closedlost").await,
                1,
                "deal {id} closed once"
            );
        } else {
            assert_eq!(
                Some(deal),
                before.get(id),
                "deal {id} was not to be touched"
            );
        }
    }
    emu.stop().await.unwrap();
}

async fn stalled_deal_owners_are_warned_once_during_the_grace_period(t: TestStore) {
    let emu = start(SalesforceOptions::default()).await;
    let dir = ConfigDir::new();
    dir.write("slack-token", "xoxb-recycle-test\n");
    // A long grace period, so that some stalled deals are past their max_dwell but not yet
    // acted on: their owners are warned instead.
    let grace_days = 30;
    let config = salesforce_stalled_text(&dir, &emu, &t.url, true).replace(
        &format!("grace_days = {STALLED_GRACE_DAYS}"),
        &format!("grace_days = {grace_days}"),
    ) + &format!(
        r##"
[slack]
bot_token = {{ file = "slack-token" }}
api_base_url = "{base}slack/api"
default_channel = "#revops"
"##,
        base = emu.base_url()
    );
    let settings = load(&dir.write("pipewarden.toml", &config).display().to_string());
    sync_all(&t.store, &settings).await;
    let as_of = emu.clock().now_ms();
    let deals = latest(&emu, "Opportunity").await;
    let history = history_rows(&emu, "OpportunityHistory").await;
    let in_grace = deals
        .iter()
        .filter(|(_, d)| d["IsClosed"] != json!(true))
        .filter(|(id, d)| {
            let stage = d["StageName"].as_str().unwrap();
            let Some((_, dwell, Some(_))) = SF_GATES.iter().find(|(s, _, _)| *s == stage) else {
                return false;
            };
            let entered = history
                .iter()
                .filter(|h| h["OpportunityId"] == id.as_str() && h["StageName"] == stage)
                .map(|h| millis(h["CreatedDate"].as_str().unwrap()))
                .max()
                .unwrap_or_else(|| millis(d["CreatedDate"].as_str().unwrap()));
            entered < as_of - dwell * DAY_MS && entered >= as_of - (dwell + grace_days) * DAY_MS
        })
        .count();
    assert!(in_grace > 0, "some deals are within their grace period");
    let report = recycle::apply(&t.store, &settings, &options(&emu), &quick_apply())
        .await
        .unwrap();
    assert_eq!(report.policies[0].warned as usize, in_grace, "{report:?}");
    let warnings = t
        .store
        .alerts()
        .await
        .unwrap()
        .into_iter()
        .filter(|a| a.kind == "recycle_warning")
        .count();
    assert_eq!(warnings, in_grace);
    let texts: Vec<String> = t
        .store
        .pending_alerts(chrono::Utc::now().timestamp_millis(), 1_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|a| a.kind == "recycle_warning")
        .map(|a| a.payload.0["text"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(texts.len(), in_grace);
    assert!(
        texts
            .iter()
            .all(|t| t.contains("will be moved back a stage on")),
        "{texts:?}"
    );
    let again = recycle::apply(&t.store, &settings, &options(&emu), &quick_apply())
        .await
        .unwrap();
    assert_eq!(
        again.policies[0].warned, 0,
        "an owner is warned once per stalled deal"
    );
    emu.stop().await.unwrap();
}
