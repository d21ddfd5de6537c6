//! Stage gates over scripted emulator scenarios: each move is judged against the deal as it
//! was at the move; violations resolve late, are superseded or waived; replays add nothing;
//! `rules check` names rules that do not fit the CRM's metadata.

use std::collections::{HashMap, HashSet};

use pipewarden::alerts::{Deliverer, DeliveryOptions};
use pipewarden::config::Settings;
use pipewarden::emulator::RunningEmulator;
use pipewarden::record::ObjectKind;
use pipewarden::rules::{self, EvaluationReport, Severity};
use pipewarden::stop::StopSignal;
use pipewarden::store::{MoveIds, Store, Violation, ViolationFilter};
use pipewarden::sync::{self, SyncOptions};
use serde_json::{json, Value};

use super::emulator::control;
use super::sync::start_emulator;
use crate::support::{on_both_backends, ConfigDir, TestStore};

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

/// A config with one Salesforce connection `sf` to `emu`, the rules in `rules`, and `extra`
/// sections (e.g. `[slack]`).
pub(crate) fn salesforce_settings(
    dir: &ConfigDir,
    emu: &RunningEmulator,
    store_url: &str,
    rules: &str,
    extra: &str,
) -> Settings {
    dir.write("refresh-token", "emulator-demo-refresh-token\n");
    let config = format!(
        r#"
[store]
url = "{store_url}"
{api}
[[connections]]
name = "sf"
kind = "salesforce"
login_url = "{}"
custom_fields = ["Opportunity.Budget__c", "Opportunity.Need__c", "Opportunity.Authority__c", "Opportunity.Loss_Reason__c"]

[connections.auth]
kind = "refresh_token"
client_id = "pipewarden-demo"
refresh_token = {{ file = "refresh-token" }}

[connections.limits]
requests_per_second = 200
burst = 200
{extra}
{rules}
"#,
        emu.base_url(),
        api = if extra.contains("[api]") {
            ""
        } else {
            "[api]\nlisten = \"127.0.0.1:0\"\n"
        }
    );
    let path = dir.write("pipewarden.toml", &config);
    pipewarden::config::load(Some(&path)).expect("test config loads")
}

/// BANT-style gates on the emulator's default sales process.
pub(crate) const SALESFORCE_RULE: &str = r#"
[[rules]]
name = "sf-bant"
connection = "sf"
forbid_skipping = true
closed_lost_requires = ["Loss_Reason__c"]
backward_requires = ["NextStep"]

[[rules.stages]]
stage = "Qualification"
required = ["Budget__c"]

[[rules.stages]]
stage = "Needs Analysis"
required = ["Need__c"]

[[rules.stages]]
stage = "Value Proposition"
required = ["Authority__c"]
"#;

/// Syncs every connection once, then evaluates its rules.
pub(crate) async fn sync_and_evaluate(store: &Store, settings: &Settings) -> Vec<EvaluationReport> {
    let mut reports = Vec::new();
    for connection in &settings.connections {
        let run = sync::sync_once(
            store,
            connection,
            &SyncOptions::default(),
            &StopSignal::never(),
        )
        .await
        .expect("sync runs");
        assert!(run.summary.message.is_none(), "{:?}", run.summary.message);
        let now = chrono::Utc::now().timestamp_millis();
        reports.extend(
            rules::evaluate_connection(store, settings, connection, now)
                .await
                .expect("rules evaluate"),
        );
    }
    reports
}

/// Applies scripted Salesforce changes at the emulator's now; returns the ids touched.
pub(crate) async fn salesforce_changes(emu: &RunningEmulator, changes: Value) -> Vec<String> {
    let answer = control(
        emu,
        "/__emulator/salesforce/changes",
        json!({ "changes": changes }),
    )
    .await;
    // History rows stamped at exactly the sync's start are read by the next run: let a
    // minute pass, as it would between a change and the next sync.
    advance(emu, "1m").await;
    answer["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap().to_string())
        .collect()
}

pub(crate) async fn advance(emu: &RunningEmulator, by: &str) {
    control(emu, "/__emulator/clock/advance", json!({ "by": by })).await;
}

fn opportunity(name: &str, stage: &str, extra: Value, by_rep: u32) -> Value {
    let mut fields =
        json!({"Name": name, "StageName": stage, "CloseDate": "2027-06-30", "Amount": 120000});
    for (key, value) in extra.as_object().unwrap() {
        fields[key] = value.clone();
    }
    json!({"object": "Opportunity", "create": fields, "by": {"kind": "rep", "number": by_rep}})
}

fn set(id: &str, fields: Value) -> Value {
    json!({"object": "Opportunity", "id": id, "set": fields, "by": {"kind": "rep", "number": 0}})
}

/// The violations of one deal, oldest move first.
pub(crate) async fn violations_of(store: &Store, crm_id: &str) -> Vec<Violation> {
    let mut all = store
        .violations(&ViolationFilter {
            limit: 100_000,
            ..ViolationFilter::default()
        })
        .await
        .unwrap();
    all.retain(|v| v.crm_id == crm_id);
    all.sort_by_key(|v| (v.changed_at_ms, v.id));
    all
}

fn fields_of(violation: &Violation) -> Vec<(String, String)> {
    violation
        .missing_fields
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["stage"].as_str().unwrap().to_string(),
                m["field"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

async fn salesforce_gates_judge_each_move_at_its_time(test: TestStore) {
    let emu = start_emulator().await;
    let dir = ConfigDir::new();
    let typo_rule = r#"
[[rules]]
name = "sf-typo"
connection = "sf"

[[rules.stages]]
stage = "Qualifcation"
required = ["Bogus__c", "budget"]
"#;
    let mut settings = salesforce_settings(
        &dir,
        &emu,
        &test.url,
        &format!("{SALESFORCE_RULE}{typo_rule}"),
        "",
    );

    // Before any sync the rules cannot be checked: warnings, no errors.
    let checks = rules::check(&test.store, &settings).await.unwrap();
    assert!(checks
        .iter()
        .all(|c| c.problems.iter().all(|p| p.severity == Severity::Warning)));
    assert!(checks.iter().all(|c| !c.problems.is_empty()));

    // The first evaluation is a baseline over the backfilled history: nothing is alerted.
    let baseline = sync_and_evaluate(&test.store, &settings).await;
    assert!(baseline.iter().all(|r| r.alerts == 0));
    // Once the metadata is stored, a rule naming what it lacks is not evaluated at all: a
    // misspelt field would make every move into its stage a violation.
    let typo_run = baseline.iter().find(|r| r.rule == "sf-typo").unwrap();
    assert_eq!(typo_run.judged, 0, "{typo_run:?}");
    assert_eq!(typo_run.not_evaluated.len(), 3, "{typo_run:?}");
    assert!(
        rules::describe_evaluation(typo_run).contains("not evaluated: rules[1].stages[0].stage"),
        "{typo_run:?}"
    );
    assert!(
        baseline
            .iter()
            .find(|r| r.rule == "sf-bant")
            .unwrap()
            .judged
            > 0
    );

    let checks = rules::check(&test.store, &settings).await.unwrap();
    let by_rule: HashMap<&str, &Vec<_>> = checks
        .iter()
        .map(|c| (c.rule.as_str(), &c.problems))
        .collect();
    assert!(by_rule["sf-bant"].is_empty(), "{:?}", by_rule["sf-bant"]);
    let typo: Vec<&str> = by_rule["sf-typo"]
        .iter()
        .map(|p| p.message.as_str())
        .collect();
    assert_eq!(typo.len(), 3, "{typo:?}");
    assert!(typo[0].contains("rules[1].stages[0].stage") && typo[0].contains("`Qualifcation`"));
    assert!(typo[1].contains("rules[1].stages[0].required") && typo[1].contains("`Bogus__c`"));
    assert!(
        typo[2].contains("`budget`") && typo[2].contains("did you mean `Budget__c`"),
        "the field the CRM's metadata lists under a near name is suggested: {typo:?}"
    );
    settings.rules.retain(|rule| rule.name == "sf-bant");

    // Five deals, created at stage 1 (C at stage 3 with its fields).
    advance(&emu, "1h").await;
    let ids = salesforce_changes(
        &emu,
        json!([
            opportunity("A filled", "Prospecting", json!({"Budget__c": 50000}), 0),
            opportunity("B jumps", "Prospecting", json!({}), 0),
            opportunity(
                "C lost",
                "Needs Analysis",
                json!({"Budget__c": 1, "Need__c": "CRM"}),
                0
            ),
            opportunity("D exempt", "Prospecting", json!({}), 2),
            opportunity("E back", "Prospecting", json!({}), 0),
        ]),
    )
    .await;
    let [a, b, c, d, e] = <[String; 5]>::try_from(ids).unwrap();
    let created = sync_and_evaluate(&test.store, &settings).await;
    assert_eq!(
        created[0].violations, 0,
        "creations at stage 1 or with fields pass"
    );
    let connection_id = test.store.connection_id("sf").await.unwrap().unwrap();
    let d_owner = test
        .store
        .record(connection_id, ObjectKind::Deal, &d)
        .await
        .unwrap()
        .unwrap()
        .state
        .owner_id
        .unwrap();
    settings.rules[0].exempt_owners.push(d_owner);

    advance(&emu, "1h").await;
    let moved_at = emu.clock().now_ms();
    salesforce_changes(
        &emu,
        json!([
            json!({"object": "Opportunity", "id": a, "set": {"StageName": "Qualification"}, "by": {"kind": "integration"}}),
            set(&b, json!({"StageName": "Value Proposition"})),
            json!({"object": "Opportunity", "id": c, "set": {"StageName": "Closed Lost"}, "by": {"kind": "workflow"}}),
            set(&d, json!({"StageName": "Value Proposition"})),
            set(&e, json!({"StageName": "Value Proposition"})),
        ]),
    )
    .await;
    sync_and_evaluate(&test.store, &settings).await;

    assert!(
        violations_of(&test.store, &a).await.is_empty(),
        "filled fields pass"
    );
    assert!(
        violations_of(&test.store, &d).await.is_empty(),
        "exempt owner"
    );
    let jump = &violations_of(&test.store, &b).await[0];
    assert_eq!((jump.kind.as_str(), jump.status.as_str()), ("skip", "open"));
    assert_eq!(
        (jump.from_stage.as_deref(), jump.to_stage.as_str()),
        (Some("Prospecting"), "Value Proposition")
    );
    assert_eq!(jump.changed_at_ms, moved_at);
    assert_eq!(
        fields_of(jump),
        pairs(&[
            ("Qualification", "Budget__c"),
            ("Needs Analysis", "Need__c"),
            ("Value Proposition", "Authority__c")
        ])
    );
    assert_eq!(
        jump.skipped_stages,
        json!(["Qualification", "Needs Analysis"])
    );
    assert!(
        jump.changed_by
            .as_deref()
            .is_some_and(|by| by.starts_with("005")),
        "{:?}",
        jump.changed_by
    );
    assert_eq!(jump.actor_kind, "person", "a rep moved it");
    let lost = violations_of(&test.store, &c).await;
    assert_eq!(lost.len(), 1);
    assert_eq!(lost[0].kind, "closed_lost");
    assert_eq!(lost[0].actor_kind, "workflow", "a flow closed it");
    let a_record = test
        .store
        .record(connection_id, ObjectKind::Deal, &a)
        .await
        .unwrap()
        .unwrap();
    let a_move = test
        .store
        .transitions(a_record.id)
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(
        a_move.actor,
        pipewarden::record::ActorKind::Integration,
        "the session's own user"
    );
    assert_eq!(
        fields_of(&lost[0]),
        pairs(&[("Closed Lost", "Loss_Reason__c")])
    );

    // Two days later B's fields are filled and E moves back.
    advance(&emu, "2d").await;
    let later = emu.clock().now_ms();
    salesforce_changes(
        &emu,
        json!([
            set(
                &b,
                json!({"Budget__c": 10, "Need__c": "pipeline", "Authority__c": "VP Sales"})
            ),
            set(&e, json!({"StageName": "Prospecting"})),
        ]),
    )
    .await;
    let reports = sync_and_evaluate(&test.store, &settings).await;
    assert!(
        reports[0].resolved_late >= 1 && reports[0].superseded >= 1,
        "{reports:?}"
    );

    let jump = &violations_of(&test.store, &b).await[0];
    assert_eq!(
        jump.status, "resolved_late",
        "the fields still violated at the move"
    );
    assert_eq!(jump.delay_ms(), Some(later - moved_at));
    assert!(jump.delay_ms().unwrap() > 2 * DAY_MS);
    let events: Vec<String> = test
        .store
        .violation_events(jump.id)
        .await
        .unwrap()
        .into_iter()
        .map(|(status, ..)| status)
        .collect();
    assert_eq!(events, vec!["open", "resolved_late"]);

    let e_violations = violations_of(&test.store, &e).await;
    assert_eq!(e_violations.len(), 2, "{e_violations:?}");
    assert_eq!(
        (
            e_violations[0].kind.as_str(),
            e_violations[0].status.as_str()
        ),
        ("skip", "superseded")
    );
    assert_eq!(e_violations[0].resolved_at_ms, Some(later));
    assert_eq!(
        (
            e_violations[1].kind.as_str(),
            e_violations[1].status.as_str()
        ),
        ("backward", "open")
    );
    assert_eq!(
        fields_of(&e_violations[1]),
        pairs(&[("Prospecting", "NextStep")])
    );

    // A person waives the backward move; a second waiver is refused.
    rules::waive(
        &test.store,
        &settings,
        e_violations[1].id,
        "revops",
        "agreed in pipeline review",
        later,
    )
    .await
    .unwrap();
    let waived = test
        .store
        .violation(e_violations[1].id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (waived.status.as_str(), waived.waived_by.as_deref()),
        ("waived", Some("revops"))
    );
    let again = rules::waive(
        &test.store,
        &settings,
        e_violations[1].id,
        "revops",
        "again",
        later,
    )
    .await;
    assert!(again
        .unwrap_err()
        .to_string()
        .contains("is waived, not open"));

    // Replaying the sync and the evaluation changes nothing.
    let before = test
        .store
        .violations(&ViolationFilter {
            limit: 100_000,
            ..ViolationFilter::default()
        })
        .await
        .unwrap();
    let replay = sync_and_evaluate(&test.store, &settings).await;
    assert_eq!(replay[0].violations, 0);
    let now = chrono::Utc::now().timestamp_millis();
    let again = rules::evaluate_connection(&test.store, &settings, &settings.connections[0], now)
        .await
        .unwrap();
    assert_eq!((again[0].violations, again[0].judged), (0, 0));
    let after = test
        .store
        .violations(&ViolationFilter {
            limit: 100_000,
            ..ViolationFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(before, after);

    // The backtest over the same history reports the jump without storing anything.
    let backtest = rules::backtest(&test.store, &settings, moved_at, Some("sf-bant"))
        .await
        .unwrap();
    assert!(backtest[0].would_fire >= 3, "{:?}", backtest[0]);
    assert!(backtest[0]
        .examples
        .iter()
        .any(|line| line.contains(&b) && line.contains("skipped Qualification, Needs Analysis")));
    let unchanged = test
        .store
        .violations(&ViolationFilter {
            limit: 100_000,
            ..ViolationFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(after, unchanged);
    emu.stop().await.unwrap();
}

const HUBSPOT_TOKEN: &str = "pat-na1-emulator-demo-token";

fn hubspot_settings(dir: &ConfigDir, emu: &RunningEmulator, store_url: &str) -> Settings {
    dir.write("hubspot-token", &format!("{HUBSPOT_TOKEN}\n"));
    dir.write(
        "slack-webhook",
        &format!("{}slack/services/T0/B0/hook\n", emu.base_url()),
    );
    let config = format!(
        r#"
[store]
url = "{store_url}"

[[connections]]
name = "hs"
kind = "hubspot"
api_base_url = "{}"

[connections.auth]
kind = "private_app"
token = {{ file = "hubspot-token" }}

[connections.limits]
requests_per_second = 200
burst = 200

[slack]
webhook_url = {{ file = "slack-webhook" }}

[[rules]]
name = "hs-bant"
connection = "hs"
mode = "alert"
forbid_skipping = true
closed_lost_requires = ["closed_lost_reason"]

[[rules.stages]]
stage = "qualifiedtobuy"
required = ["budget"]

[[rules.stages]]
stage = "presentationscheduled"
required = ["need"]

[[rules.stages]]
stage = "decisionmakerboughtin"
required = ["authority"]
"#,
        emu.base_url()
    );
    let path = dir.write("pipewarden.toml", &config);
    pipewarden::config::load(Some(&path)).expect("test config loads")
}

/// A HubSpot API call as the private app; returns the JSON answer.
async fn hubspot(emu: &RunningEmulator, method: reqwest::Method, path: &str, body: Value) -> Value {
    let url = emu.base_url().join(path.trim_start_matches('/')).unwrap();
    let response = reqwest::Client::new()
        .request(method, url)
        .bearer_auth(HUBSPOT_TOKEN);
    let response = if body.is_null() {
        response
    } else {
        response.json(&body)
    };
    let response = response.send().await.unwrap();
    assert!(
        response.status().is_success(),
        "{path}: {}",
        response.status()
    );
    response.json().await.unwrap()
}

/// Deals whose funnel has ended (closed ones), which nothing but the test will touch again.
async fn closed_deals(emu: &RunningEmulator, count: usize) -> Vec<String> {
    let page = hubspot(
        emu,
        reqwest::Method::GET,
        "/crm/v3/objects/deals?limit=100&properties=dealstage",
        Value::Null,
    )
    .await;
    let ids: Vec<String> = page["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|deal| {
            matches!(
                deal["properties"]["dealstage"].as_str(),
                Some("closedwon" | "closedlost")
            )
        })
        .map(|deal| deal["id"].as_str().unwrap().to_string())
        .take(count)
        .collect();
    assert_eq!(ids.len(), count, "enough closed deals on the first page");
    ids
}

async fn update_deal(emu: &RunningEmulator, id: &str, properties: Value) {
    let path = format!("/crm/v3/objects/deals/{id}");
    hubspot(
        emu,
        reqwest::Method::PATCH,
        &path,
        json!({ "properties": properties }),
    )
    .await;
}

async fn hubspot_gates_judge_each_move_at_its_time(test: TestStore) {
    let emu = super::sync::start_emulator().await;
    let dir = ConfigDir::new();
    let mut settings = hubspot_settings(&dir, &emu, &test.url);
    sync_and_evaluate(&test.store, &settings).await;
    let checks = rules::check(&test.store, &settings).await.unwrap();
    assert!(checks[0].problems.is_empty(), "{:?}", checks[0].problems);
    let connection_id = test.store.connection_id("hs").await.unwrap().unwrap();
    let owners = test.store.owners(connection_id).await.unwrap();
    let exempt = owners
        .iter()
        .find(|o| o.teams[0]["name"].is_string())
        .expect("an owner with a team");
    settings.rules[0]
        .exempt_teams
        .push(exempt.teams[0]["name"].as_str().unwrap().to_string());

    // Four finished deals are reopened at the first stage with the gate fields empty.
    let [filled, jumper, lost, team_deal] =
        <[String; 4]>::try_from(closed_deals(&emu, 4).await).unwrap();
    advance(&emu, "1h").await;
    let empty = json!({"dealstage": "appointmentscheduled", "budget": "", "need": "", "authority": "", "closed_lost_reason": ""});
    for deal in [&filled, &jumper, &lost, &team_deal] {
        update_deal(&emu, deal, empty.clone()).await;
    }
    update_deal(&emu, &filled, json!({"budget": "10000"})).await;
    update_deal(&emu, &team_deal, json!({"hubspot_owner_id": exempt.crm_id})).await;
    advance(&emu, "1m").await;
    sync_and_evaluate(&test.store, &settings).await;

    advance(&emu, "1h").await;
    let moved_at = emu.clock().now_ms();
    update_deal(&emu, &filled, json!({"dealstage": "qualifiedtobuy"})).await;
    update_deal(&emu, &jumper, json!({"dealstage": "decisionmakerboughtin"})).await;
    update_deal(&emu, &lost, json!({"dealstage": "closedlost"})).await;
    update_deal(
        &emu,
        &team_deal,
        json!({"dealstage": "decisionmakerboughtin"}),
    )
    .await;
    advance(&emu, "1m").await;
    sync_and_evaluate(&test.store, &settings).await;

    assert!(
        violations_of(&test.store, &filled).await.is_empty(),
        "filled fields pass"
    );
    assert!(
        violations_of(&test.store, &team_deal).await.is_empty(),
        "exempt team"
    );
    let jump = &violations_of(&test.store, &jumper).await[0];
    assert_eq!(
        (jump.kind.as_str(), jump.to_stage.as_str()),
        ("skip", "decisionmakerboughtin")
    );
    assert_eq!(
        fields_of(jump),
        pairs(&[
            ("qualifiedtobuy", "budget"),
            ("presentationscheduled", "need"),
            ("decisionmakerboughtin", "authority")
        ])
    );
    assert_eq!(
        jump.skipped_stages,
        json!(["qualifiedtobuy", "presentationscheduled"])
    );
    // The private app made the move, as HubSpot's history says.
    assert_eq!(
        (jump.actor_kind.as_str(), jump.changed_by.as_deref()),
        ("integration", Some("3141592"))
    );
    assert_eq!(jump.changed_at_ms, moved_at);
    let closed = &violations_of(&test.store, &lost).await[0];
    assert_eq!(
        fields_of(closed),
        pairs(&[("closedlost", "closed_lost_reason")])
    );

    // Alerts link to the deal in the portal's UI, found from the account details.
    assert_eq!(
        test.store
            .record_url_base(connection_id)
            .await
            .unwrap()
            .as_deref(),
        Some("https://app.hubspot.com/contacts/26892217")
    );
    let slack = settings.slack.as_ref().unwrap();
    Deliverer::new(test.store.clone(), slack, DeliveryOptions::default())
        .unwrap()
        .deliver_due()
        .await
        .unwrap();
    let url = emu.base_url().join("__emulator/slack/messages").unwrap();
    let sent: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
    let link = format!("https://app.hubspot.com/contacts/26892217/record/0-3/{jumper}");
    assert!(
        sent["messages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["blocks"].to_string().contains(&link)),
        "{sent}"
    );

    advance(&emu, "3d").await;
    let later = emu.clock().now_ms();
    update_deal(
        &emu,
        &jumper,
        json!({"budget": "1", "need": "forecasting", "authority": "CRO"}),
    )
    .await;
    update_deal(
        &emu,
        &lost,
        json!({"closed_lost_reason": "went with a competitor"}),
    )
    .await;
    advance(&emu, "1m").await;
    sync_and_evaluate(&test.store, &settings).await;
    for deal in [&jumper, &lost] {
        let resolved = &violations_of(&test.store, deal).await[0];
        assert_eq!(resolved.status, "resolved_late", "{resolved:?}");
        assert_eq!(resolved.delay_ms(), Some(later - moved_at));
    }
    emu.stop().await.unwrap();
}

/// With field history synced, a field filled just before a move counts at the move even when
/// the deal changed again before the next sync, so no version shows it filled in the old
/// stage; a deal moved without it still breaches.
async fn field_history_gives_the_fields_at_the_move_between_two_syncs(test: TestStore) {
    let emu = start_emulator().await;
    let dir = ConfigDir::new();
    let mut settings = salesforce_settings(&dir, &emu, &test.url, SALESFORCE_RULE, "");
    settings.connections[0]
        .objects
        .push("OpportunityFieldHistory".into());
    sync_and_evaluate(&test.store, &settings).await;
    advance(&emu, "1h").await;
    let ids = salesforce_changes(
        &emu,
        json!([
            opportunity("Filled in time", "Prospecting", json!({}), 0),
            opportunity("Never filled", "Prospecting", json!({}), 0),
        ]),
    )
    .await;
    let [filled, unfilled] = <[String; 2]>::try_from(ids).unwrap();
    sync_and_evaluate(&test.store, &settings).await;

    // Between two syncs: the budget, then the move, then another edit.
    advance(&emu, "1h").await;
    salesforce_changes(&emu, json!([set(&filled, json!({"Budget__c": 50000}))])).await;
    advance(&emu, "1m").await;
    salesforce_changes(
        &emu,
        json!([
            set(&filled, json!({"StageName": "Qualification"})),
            set(&unfilled, json!({"StageName": "Qualification"})),
        ]),
    )
    .await;
    advance(&emu, "1m").await;
    salesforce_changes(
        &emu,
        json!([set(&filled, json!({"NextStep": "Call the CFO"}))]),
    )
    .await;
    advance(&emu, "1m").await;
    let judged = sync_and_evaluate(&test.store, &settings).await;
    assert_eq!(judged[0].judged, 2, "{judged:?}");
    assert!(
        violations_of(&test.store, &filled).await.is_empty(),
        "the budget was filled before the move"
    );
    let missing = &violations_of(&test.store, &unfilled).await[0];
    assert_eq!(fields_of(missing), pairs(&[("Qualification", "Budget__c")]));
    emu.stop().await.unwrap();
}

/// HubSpot as Salesforce: a backward move that lacks what `backward_requires` names is a
/// violation that a later move on supersedes, an exempt owner's jump passes, and `rules check`
/// names a property the portal does not have and suggests the near one.
async fn hubspot_backward_moves_exempt_owners_and_unknown_properties(test: TestStore) {
    let emu = super::sync::start_emulator().await;
    let dir = ConfigDir::new();
    let mut settings = hubspot_settings(&dir, &emu, &test.url);
    settings.rules[0].backward_requires = vec!["closed_lost_reason".into()];
    sync_and_evaluate(&test.store, &settings).await;

    let mut typo = settings.clone();
    typo.rules[0].stages[0].required.push("bugdet".into());
    let checks = rules::check(&test.store, &typo).await.unwrap();
    let problems: Vec<&str> = checks[0]
        .problems
        .iter()
        .map(|p| p.message.as_str())
        .collect();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("rules[0].stages[0].required")
            && problems[0].contains("`bugdet`")
            && problems[0].contains("did you mean `budget`"),
        "{problems:?}"
    );

    let [back, exempt] = <[String; 2]>::try_from(closed_deals(&emu, 2).await).unwrap();
    let connection_id = test.store.connection_id("hs").await.unwrap().unwrap();
    let owners = test.store.owners(connection_id).await.unwrap();
    let [judged_owner, exempt_owner] = [&owners[0].crm_id, &owners[1].crm_id];
    settings.rules[0].exempt_owners = vec![exempt_owner.clone()];
    advance(&emu, "1h").await;
    let filled = json!({"dealstage": "decisionmakerboughtin", "budget": "1", "need": "x",
        "authority": "CRO", "closed_lost_reason": "", "hubspot_owner_id": judged_owner});
    update_deal(&emu, &back, filled).await;
    let empty = json!({"dealstage": "appointmentscheduled", "budget": "", "need": "",
        "authority": "", "hubspot_owner_id": exempt_owner});
    update_deal(&emu, &exempt, empty).await;
    advance(&emu, "1m").await;
    sync_and_evaluate(&test.store, &settings).await;

    advance(&emu, "1h").await;
    update_deal(&emu, &back, json!({"dealstage": "qualifiedtobuy"})).await;
    update_deal(&emu, &exempt, json!({"dealstage": "decisionmakerboughtin"})).await;
    advance(&emu, "1m").await;
    let judged = sync_and_evaluate(&test.store, &settings).await;
    assert_eq!(judged[0].exempt, 1, "{judged:?}");
    assert!(
        violations_of(&test.store, &exempt).await.is_empty(),
        "exempt owner"
    );
    // Reopening the closed deal was a backward move too; the one into qualifiedtobuy is next.
    let moved_back = |violations: Vec<Violation>| {
        violations
            .into_iter()
            .find(|v| v.to_stage == "qualifiedtobuy")
            .expect("a violation for the move back to qualifiedtobuy")
    };
    let backward = moved_back(violations_of(&test.store, &back).await);
    assert_eq!(backward.kind, "backward");
    assert_eq!(
        fields_of(&backward),
        pairs(&[("qualifiedtobuy", "closed_lost_reason")])
    );

    advance(&emu, "1h").await;
    update_deal(&emu, &back, json!({"dealstage": "presentationscheduled"})).await;
    advance(&emu, "1m").await;
    sync_and_evaluate(&test.store, &settings).await;
    let moved_on = moved_back(violations_of(&test.store, &back).await);
    assert_eq!(moved_on.status, "superseded", "{moved_on:?}");
    emu.stop().await.unwrap();
}

on_both_backends!(
    salesforce_gates_judge_each_move_at_its_time,
    hubspot_gates_judge_each_move_at_its_time,
    hubspot_backward_moves_exempt_owners_and_unknown_properties,
    field_history_gives_the_fields_at_the_move_between_two_syncs,
    a_skip_in_revert_mode_moves_the_deal_back_and_leaves_the_owner_a_task_once,
    a_hubspot_skip_in_revert_mode_moves_the_deal_back_unless_it_moved_on,
    reverts_past_the_cap_wait_for_the_next_evaluation,
    a_task_create_killed_before_its_answer_is_not_made_twice,
    a_dry_run_revert_rule_records_the_revert_and_queues_no_write,
    pages_of_moves_hold_every_move_once_in_order,
);

/// Evaluation reads moves in pages, several at once: small pages, with and without a start
/// time, give exactly the moves (and versions at the moves) that one read of them all gives.
async fn pages_of_moves_hold_every_move_once_in_order(test: TestStore) {
    let emu = start_emulator().await;
    let dir = ConfigDir::new();
    let settings = salesforce_settings(&dir, &emu, &test.url, SALESFORCE_RULE, "");
    sync_and_evaluate(&test.store, &settings).await;
    let connection_id = test.store.connection_id("sf").await.unwrap().unwrap();
    let fields: HashSet<String> = ["Budget__c", "Need__c", "NextStep"]
        .map(String::from)
        .into();
    let everything = MoveIds {
        after: 0,
        through: None,
    };
    let all = test
        .store
        .moves_at_version(connection_id, everything, None, i64::MAX, &fields)
        .await
        .unwrap();
    assert!(all.len() > 50, "the tiny org has many moves: {}", all.len());
    let read_fields: Vec<&String> = all
        .iter()
        .filter_map(|m| m.fields.as_ref())
        .flat_map(|values| values.0.keys())
        .collect();
    assert!(
        read_fields.contains(&&"NextStep".to_string()),
        "{read_fields:?}"
    );
    assert!(
        read_fields.iter().all(|name| fields.contains(*name)),
        "only the wanted fields: {read_fields:?}"
    );
    // Each column where it belongs: the version is the one valid at the move, and ids have
    // their object's prefix.
    for m in &all {
        assert!(m.crm_id.starts_with("006"), "{m:?}");
        assert!(
            m.owner_id
                .as_deref()
                .is_none_or(|owner| owner.starts_with("005")),
            "{m:?}"
        );
        if m.version_id.is_some() {
            assert!(
                m.valid_from_ms.is_some_and(|from| from <= m.changed_at_ms),
                "{m:?}"
            );
            assert!(m.valid_to_ms.is_none_or(|to| to > m.changed_at_ms), "{m:?}");
            assert!(m.name.is_some(), "{m:?}");
        }
    }
    let middle = all[all.len() / 2].changed_at_ms;
    for since in [None, Some(middle)] {
        let mut pages =
            test.store
                .moves_at_version_pages(connection_id, 0, since, 7, fields.clone());
        let mut read = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.unwrap();
            assert!(!page.is_empty() && page.len() <= 7, "{}", page.len());
            read.extend(page);
        }
        let expected: Vec<_> = all
            .iter()
            .filter(|m| since.is_none_or(|since| m.changed_at_ms >= since))
            .map(|m| (m.transition_id, m.version_id, m.fields.clone().map(|f| f.0)))
            .collect();
        let got: Vec<_> = read
            .iter()
            .map(|m| (m.transition_id, m.version_id, m.fields.clone().map(|f| f.0)))
            .collect();
        assert_eq!(got, expected, "since {since:?}");
    }
    emu.stop().await.unwrap();
}

/// The latest state of every record of a Salesforce object in the emulator, by id.
async fn salesforce_latest(emu: &RunningEmulator, object: &str) -> HashMap<String, Value> {
    super::sync::truth(emu, object)
        .await
        .into_iter()
        .filter_map(|record| {
            let version = record["versions"].as_array()?.last()?.clone();
            let id = version["record"]["Id"].as_str()?.to_string();
            Some((id, version["record"].clone()))
        })
        .collect()
}

/// How many versions of one record the emulator holds with `StageName` = `stage`.
async fn stage_versions(emu: &RunningEmulator, id: &str, stage: &str) -> usize {
    super::sync::truth(emu, "Opportunity")
        .await
        .into_iter()
        .filter(|record| record["versions"][0]["record"]["Id"] == id)
        .flat_map(|record| record["versions"].as_array().cloned().unwrap_or_default())
        .filter(|version| version["record"]["StageName"] == stage)
        .count()
}

async fn a_skip_in_revert_mode_moves_the_deal_back_and_leaves_the_owner_a_task_once(
    test: TestStore,
) {
    let emu = start_emulator().await;
    let dir = ConfigDir::new();
    dir.write("slack-token", "xoxb-revert-test\n");
    let rule = r#"
[[rules]]
name = "sf-revert"
connection = "sf"
mode = "revert"
dry_run = false
max_reverts_per_run = 5
forbid_skipping = true
# The revert itself moves B back without a budget: it must not count as a backward breach.
backward_requires = ["Budget__c"]

[[rules.stages]]
stage = "Qualification"
required = ["Budget__c"]

[[rules.stages]]
stage = "Needs Analysis"
required = ["Need__c"]
"#;
    let slack = format!(
        "[slack]\nbot_token = {{ file = \"slack-token\" }}\napi_base_url = \"{}slack/api\"\ndefault_channel = \"#revops\"\n",
        emu.base_url()
    );
    let settings = salesforce_settings(&dir, &emu, &test.url, rule, &slack);
    let connection = &settings.connections[0];
    let baseline = sync_and_evaluate(&test.store, &settings).await;
    assert_eq!(baseline[0].reverts, 0, "the baseline reverts nothing");

    advance(&emu, "1h").await;
    let ids = salesforce_changes(
        &emu,
        json!([
            opportunity("B jumps", "Prospecting", json!({}), 0),
            opportunity("F moves on", "Prospecting", json!({}), 0),
        ]),
    )
    .await;
    let [b, f] = <[String; 2]>::try_from(ids).unwrap();
    sync_and_evaluate(&test.store, &settings).await;
    advance(&emu, "1h").await;
    salesforce_changes(
        &emu,
        json!([
            set(&b, json!({"StageName": "Needs Analysis"})),
            set(&f, json!({"StageName": "Needs Analysis"})),
        ]),
    )
    .await;
    let judged = sync_and_evaluate(&test.store, &settings).await;
    assert_eq!(judged[0].reverts, 2, "{judged:?}");
    // F moves on before the reverts are delivered: it must not be moved back.
    salesforce_changes(
        &emu,
        json!([set(
            &f,
            json!({"StageName": "Value Proposition", "Budget__c": 1, "Need__c": "x"})
        )]),
    )
    .await;
    let tasks_before = salesforce_latest(&emu, "Task").await;
    let quick = pipewarden::crm::RetryPolicy {
        max_attempts: 3,
        base_delay: std::time::Duration::from_millis(5),
        max_delay: std::time::Duration::from_millis(20),
    };
    let delivered = rules::revert::deliver(&test.store, &settings, connection, quick)
        .await
        .unwrap();
    assert_eq!(
        (delivered.applied, delivered.failed),
        (2, 2),
        "{delivered:?}"
    );
    assert!(delivered
        .settled
        .iter()
        .filter(|s| s.status == "failed")
        .all(|s| s.error_code.as_deref() == Some("PRECONDITION_FAILED")));

    let deals = salesforce_latest(&emu, "Opportunity").await;
    assert_eq!(deals[&b]["StageName"], "Prospecting", "B is moved back");
    assert_eq!(
        deals[&f]["StageName"], "Value Proposition",
        "F moved on and stays"
    );
    let new_tasks: Vec<Value> = salesforce_latest(&emu, "Task")
        .await
        .into_iter()
        .filter(|(id, _)| !tasks_before.contains_key(id))
        .map(|(_, task)| task)
        .collect();
    assert_eq!(new_tasks.len(), 1, "{new_tasks:?}");
    let task = &new_tasks[0];
    assert_eq!(task["WhatId"].as_str(), Some(b.as_str()));
    assert_eq!(
        task["OwnerId"], deals[&b]["OwnerId"],
        "the task is the owner's"
    );
    let subject = task["Subject"].as_str().unwrap();
    assert!(
        subject.contains("Budget__c") && subject.contains("Need__c"),
        "{subject}"
    );

    // Evaluating and delivering again reverts nothing more and creates no second task.
    advance(&emu, "1m").await;
    let after = sync_and_evaluate(&test.store, &settings).await;
    assert_eq!(
        (
            after[0].own_reverts,
            after[0].violations,
            after[0].superseded
        ),
        (1, 0, 1),
        "B's move back is the revert's own, not a backward breach: {after:?}"
    );
    let again = rules::revert::deliver(&test.store, &settings, connection, quick)
        .await
        .unwrap();
    assert_eq!(again.applied + again.failed, 0, "{again:?}");
    let tasks_after = salesforce_latest(&emu, "Task").await;
    assert_eq!(tasks_after.len(), tasks_before.len() + 1);
    assert_eq!(stage_versions(&emu, &b, "Needs Analysis").await, 1);
    let violation = &violations_of(&test.store, &b).await[0];
    let events = test.store.violation_events(violation.id).await.unwrap();
    assert!(
        events.iter().any(|e| e.0 == "revert_planned"),
        "the revert is audited on the violation"
    );
    assert_writes_are_listed(&dir, &b, &f);
    emu.stop().await.unwrap();
}

/// `pipewarden writes` lists the four revert writes: B's stage and task applied, F's both
/// refused by their precondition.
fn assert_writes_are_listed(dir: &ConfigDir, b: &str, f: &str) {
    let config = dir.path().join("pipewarden.toml");
    // The command reads the store only, so it can block this test's runtime.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_pipewarden"))
        .arg("--config")
        .arg(&config)
        .args(["writes", "--origin", "revert", "--format", "json"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let listed: Value = serde_json::from_slice(&output.stdout).unwrap();
    let mut writes: Vec<(String, String, String, Option<String>)> = listed["writes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            let deal = w["payload"]["only_if"]["id"].as_str().unwrap().to_string();
            let code = w["error_code"].as_str().map(str::to_string);
            let operation = w["operation"].as_str().unwrap().to_string();
            (
                deal,
                operation,
                w["status"].as_str().unwrap().to_string(),
                code,
            )
        })
        .collect();
    writes.sort();
    let refused = Some("PRECONDITION_FAILED".to_string());
    let mut expected = vec![
        (b.to_string(), "create".into(), "applied".into(), None),
        (b.to_string(), "update".into(), "applied".into(), None),
        (
            f.to_string(),
            "create".into(),
            "failed".into(),
            refused.clone(),
        ),
        (f.to_string(), "update".into(), "failed".into(), refused),
    ];
    expected.sort();
    assert_eq!(writes, expected);
    let failed = std::process::Command::new(env!("CARGO_BIN_EXE_pipewarden"))
        .arg("--config")
        .arg(&config)
        .args(["writes", "--status", "failed", "--connection", "sf"])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&failed.stdout);
    assert!(table.contains("CRM writes, newest first (2)"), "{table}");
    assert!(
        table.contains("PRECONDITION_FAILED: Opportunity"),
        "{table}"
    );
}

#[test]
fn revert_settings_belong_to_revert_rules() {
    let dir = ConfigDir::new();
    dir.write("token", "t\n");
    let path = dir.write(
        "pipewarden.toml",
        "[[connections]]\nname = \"sf\"\nkind = \"salesforce\"\n[connections.auth]\nkind = \"refresh_token\"\n\
         client_id = \"c\"\nrefresh_token = { file = \"token\" }\n\n[[rules]]\nname = \"r\"\nconnection = \"sf\"\ndry_run = false\n",
    );
    let err = pipewarden::config::load(Some(&path))
        .unwrap_err()
        .to_string();
    assert!(err.contains("rules[0].dry_run"), "{err}");
}

/// Retries fast enough for tests.
const QUICK: pipewarden::crm::RetryPolicy = pipewarden::crm::RetryPolicy {
    max_attempts: 3,
    base_delay: std::time::Duration::from_millis(5),
    max_delay: std::time::Duration::from_millis(20),
};

/// Settings of the HubSpot gates with revert mode on and writes allowed.
fn hubspot_revert_settings(dir: &ConfigDir, emu: &RunningEmulator, store_url: &str) -> Settings {
    let mut settings = hubspot_settings(dir, emu, store_url);
    settings.rules[0].mode = pipewarden::config::settings::RuleMode::Revert;
    settings.rules[0].dry_run = false;
    settings
}

/// Empties the deals' qualification fields in the first stage, then makes them jump to
/// decision maker bought in: a skip with fields missing, which a revert moves back.
async fn make_deals_jump(
    test: &TestStore,
    emu: &RunningEmulator,
    settings: &Settings,
    deals: &[&String],
) -> Vec<rules::EvaluationReport> {
    advance(emu, "1h").await;
    let empty =
        json!({"dealstage": "appointmentscheduled", "budget": "", "need": "", "authority": ""});
    for deal in deals {
        update_deal(emu, deal, empty.clone()).await;
    }
    advance(emu, "1m").await;
    sync_and_evaluate(&test.store, settings).await;
    advance(emu, "1h").await;
    for deal in deals {
        update_deal(emu, deal, json!({"dealstage": "decisionmakerboughtin"})).await;
    }
    advance(emu, "1m").await;
    sync_and_evaluate(&test.store, settings).await
}

/// A HubSpot deal's stage.
async fn hubspot_stage(emu: &RunningEmulator, id: &str) -> String {
    let path = format!("/crm/v3/objects/deals/{id}?properties=dealstage");
    let deal = hubspot(emu, reqwest::Method::GET, &path, Value::Null).await;
    deal["properties"]["dealstage"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The tasks associated with a HubSpot deal, with their properties.
async fn hubspot_tasks_of(emu: &RunningEmulator, deal: &str) -> Vec<Value> {
    let path = format!("/crm/v4/objects/deals/{deal}/associations/tasks");
    let associated = hubspot(emu, reqwest::Method::GET, &path, Value::Null).await;
    let inputs: Vec<Value> = associated["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| json!({ "id": a["toObjectId"].to_string() }))
        .collect();
    if inputs.is_empty() {
        return Vec::new();
    }
    let properties = ["hs_task_subject", "hs_task_status", "hubspot_owner_id"];
    let body = json!({ "inputs": inputs, "properties": properties });
    let read = hubspot(
        emu,
        reqwest::Method::POST,
        "/crm/v3/objects/tasks/batch/read",
        body,
    )
    .await;
    read["results"].as_array().unwrap().clone()
}

async fn a_hubspot_skip_in_revert_mode_moves_the_deal_back_unless_it_moved_on(test: TestStore) {
    let emu = super::sync::start_emulator().await;
    let dir = ConfigDir::new();
    let settings = hubspot_revert_settings(&dir, &emu, &test.url);
    let connection = settings.connections[0].clone();
    sync_and_evaluate(&test.store, &settings).await;

    let [jumper, mover] = <[String; 2]>::try_from(closed_deals(&emu, 2).await).unwrap();
    let judged = make_deals_jump(&test, &emu, &settings, &[&jumper, &mover]).await;
    assert_eq!(judged[0].reverts, 2, "{judged:?}");
    update_deal(&emu, &mover, json!({"dealstage": "contractsent"})).await;

    let delivered = rules::revert::deliver(&test.store, &settings, &connection, QUICK)
        .await
        .unwrap();
    assert_eq!(
        (delivered.applied, delivered.failed),
        (2, 2),
        "the jumper's stage and task are written, neither of the mover's: {delivered:?}"
    );
    assert_eq!(
        hubspot_stage(&emu, &jumper).await,
        "appointmentscheduled",
        "moved back"
    );
    assert_eq!(
        hubspot_stage(&emu, &mover).await,
        "contractsent",
        "moved on, left alone"
    );
    assert!(hubspot_tasks_of(&emu, &mover).await.is_empty());
    let tasks = hubspot_tasks_of(&emu, &jumper).await;
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    let task = &tasks[0]["properties"];
    let subject = task["hs_task_subject"].as_str().unwrap();
    assert!(
        subject.contains("budget") && subject.contains("appointmentscheduled"),
        "{subject}"
    );
    assert_eq!(task["hs_task_status"], "NOT_STARTED");
    let path = format!("/crm/v3/objects/deals/{jumper}?properties=hubspot_owner_id");
    let deal = hubspot(&emu, reqwest::Method::GET, &path, Value::Null).await;
    assert_eq!(
        task["hubspot_owner_id"], deal["properties"]["hubspot_owner_id"],
        "the task is the owner's"
    );

    sync_and_evaluate(&test.store, &settings).await;
    let again = rules::revert::deliver(&test.store, &settings, &connection, QUICK)
        .await
        .unwrap();
    assert_eq!(again.applied + again.failed, 0, "{again:?}");
    assert_eq!(hubspot_tasks_of(&emu, &jumper).await.len(), 1);
    emu.stop().await.unwrap();
}

async fn a_task_create_killed_before_its_answer_is_not_made_twice(test: TestStore) {
    let emu = super::sync::start_emulator().await;
    let dir = ConfigDir::new();
    hubspot_settings(&dir, &emu, &test.url);
    let config = dir.path().join("pipewarden.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let reverting = text.replace("mode = \"alert\"", "mode = \"revert\"\ndry_run = false");
    let path = dir.write("pipewarden.toml", &reverting);
    let settings = pipewarden::config::load(Some(&path)).unwrap();
    let connection = settings.connections[0].clone();
    sync_and_evaluate(&test.store, &settings).await;
    let [jumper] = <[String; 1]>::try_from(closed_deals(&emu, 1).await).unwrap();
    let judged = make_deals_jump(&test, &emu, &settings, &[&jumper]).await;
    assert_eq!(judged[0].reverts, 1, "{judged:?}");

    // HubSpot creates the task at once and answers late; the process dies before the answer.
    super::emulator_faults::set_faults(
        &emu,
        json!([{"kind": "slow_answer", "delay_ms": 5000, "path_contains": "objects/2026-03/tasks"}]),
    )
    .await;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pipewarden"))
        .arg("--config")
        .arg(&path)
        .args(["sync", "--once"])
        .env("RUST_LOG", "pipewarden=warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("pipewarden starts");
    let mut created = false;
    for _ in 0..300 {
        if !hubspot_tasks_of(&emu, &jumper).await.is_empty() {
            created = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
    assert!(created, "the run created the task before it was killed");
    super::emulator_faults::set_faults(&emu, json!([])).await;
    crate::support::until_lease_free(&test.store, &format!("recycle:{}", connection.name)).await;

    let delivered = rules::revert::deliver(&test.store, &settings, &connection, QUICK)
        .await
        .unwrap();
    // What the killed run left in flight (the task, and the stage if its answer was not
    // recorded either) is found done, neither refused nor made again.
    assert_eq!(delivered.failed, 0, "{delivered:?}");
    assert!(delivered.applied >= 1, "{delivered:?}");
    assert_eq!(hubspot_tasks_of(&emu, &jumper).await.len(), 1);
    assert_eq!(hubspot_stage(&emu, &jumper).await, "appointmentscheduled");
    emu.stop().await.unwrap();
}

async fn reverts_past_the_cap_wait_for_the_next_evaluation(test: TestStore) {
    let emu = super::sync::start_emulator().await;
    let dir = ConfigDir::new();
    let mut settings = hubspot_revert_settings(&dir, &emu, &test.url);
    settings.rules[0].max_reverts_per_run = 1;
    let connection = settings.connections[0].clone();
    sync_and_evaluate(&test.store, &settings).await;

    let deals = closed_deals(&emu, 3).await;
    let [first, second, resolved] =
        <[&String; 3]>::try_from(deals.iter().collect::<Vec<_>>()).unwrap();
    let judged = make_deals_jump(&test, &emu, &settings, &[first, second, resolved]).await;
    assert_eq!(
        (judged[0].reverts, judged[0].reverts_deferred),
        (1, 2),
        "{judged:?}"
    );
    // The third deal's fields are filled before the next evaluation: it needs no revert.
    update_deal(
        &emu,
        resolved,
        json!({"budget": "1", "need": "forecasting", "authority": "CRO"}),
    )
    .await;
    advance(&emu, "1m").await;
    let next = sync_and_evaluate(&test.store, &settings).await;
    assert_eq!(
        (
            next[0].reverts,
            next[0].reverts_deferred,
            next[0].resolved_late
        ),
        (1, 0, 1),
        "the deferred revert that still applies is planned: {next:?}"
    );
    let delivered = rules::revert::deliver(&test.store, &settings, &connection, QUICK)
        .await
        .unwrap();
    assert_eq!(delivered.applied, 4, "two stages, two tasks: {delivered:?}");
    for deal in [first, second] {
        assert_eq!(hubspot_stage(&emu, deal).await, "appointmentscheduled");
    }
    assert_eq!(hubspot_stage(&emu, resolved).await, "decisionmakerboughtin");

    let after = sync_and_evaluate(&test.store, &settings).await;
    assert_eq!(
        (after[0].reverts, after[0].reverts_deferred),
        (0, 0),
        "{after:?}"
    );
    emu.stop().await.unwrap();
}

/// Two replicas may evaluate one connection at the same time (each evaluates after its own
/// sync, outside the sync lease): each due revert is still planned once, with one audit event
/// and one set of writes.
#[tokio::test]
async fn two_replicas_evaluating_at_once_plan_each_revert_once() {
    let Some(test) = TestStore::postgres().await else {
        return;
    };
    let emu = super::sync::start_emulator().await;
    let dir = ConfigDir::new();
    let settings = hubspot_revert_settings(&dir, &emu, &test.url);
    let connection = settings.connections[0].clone();
    sync_and_evaluate(&test.store, &settings).await;
    let deals = closed_deals(&emu, 3).await;
    advance(&emu, "1h").await;
    for deal in &deals {
        update_deal(
            &emu,
            deal,
            json!({"dealstage": "appointmentscheduled", "budget": "", "need": "", "authority": ""}),
        )
        .await;
    }
    advance(&emu, "1m").await;
    sync_and_evaluate(&test.store, &settings).await;
    advance(&emu, "1h").await;
    for deal in &deals {
        update_deal(&emu, deal, json!({"dealstage": "decisionmakerboughtin"})).await;
    }
    advance(&emu, "1m").await;
    sync::sync_once(
        &test.store,
        &connection,
        &SyncOptions::default(),
        &StopSignal::never(),
    )
    .await
    .expect("sync runs");

    let other = Store::open_migrated(&settings.store).await.unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    let (first, second) = tokio::join!(
        rules::evaluate_connection(&test.store, &settings, &connection, now),
        rules::evaluate_connection(&other, &settings, &connection, now),
    );
    let planned = first.unwrap()[0].reverts + second.unwrap()[0].reverts;
    assert_eq!(
        planned, 3,
        "the two evaluations together plan each revert once"
    );
    for deal in &deals {
        let violations = violations_of(&test.store, deal).await;
        assert_eq!(violations.len(), 1, "{violations:?}");
        let events = test.store.violation_events(violations[0].id).await.unwrap();
        let plans = events.iter().filter(|e| e.0 == "revert_planned").count();
        assert_eq!(plans, 1, "{events:?}");
    }
    let delivered = rules::revert::deliver(&test.store, &settings, &connection, QUICK)
        .await
        .unwrap();
    assert_eq!(
        delivered.applied, 6,
        "a stage and a task per deal: {delivered:?}"
    );
    for deal in &deals {
        assert_eq!(hubspot_tasks_of(&emu, deal).await.len(), 1);
    }
    other.close().await;
    emu.stop().await.unwrap();
}

async fn a_dry_run_revert_rule_records_the_revert_and_queues_no_write(test: TestStore) {
    let emu = super::sync::start_emulator().await;
    let dir = ConfigDir::new();
    let mut settings = hubspot_settings(&dir, &emu, &test.url);
    settings.rules[0].mode = pipewarden::config::settings::RuleMode::Revert;
    assert!(
        settings.rules[0].dry_run,
        "revert rules are dry runs by default"
    );
    let connection = settings.connections[0].clone();
    sync_and_evaluate(&test.store, &settings).await;
    let [jumper] = <[String; 1]>::try_from(closed_deals(&emu, 1).await).unwrap();
    advance(&emu, "1h").await;
    update_deal(
        &emu,
        &jumper,
        json!({"dealstage": "appointmentscheduled", "budget": "", "need": "", "authority": ""}),
    )
    .await;
    advance(&emu, "1m").await;
    sync_and_evaluate(&test.store, &settings).await;
    advance(&emu, "1h").await;
    update_deal(&emu, &jumper, json!({"dealstage": "decisionmakerboughtin"})).await;
    advance(&emu, "1m").await;
    let judged = sync_and_evaluate(&test.store, &settings).await;
    assert_eq!(judged[0].reverts, 1, "{judged:?}");
    let violation = &violations_of(&test.store, &jumper).await[0];
    let events = test.store.violation_events(violation.id).await.unwrap();
    let planned = events
        .iter()
        .find(|e| e.0 == "revert_planned")
        .expect("the dry run records the revert it would make");
    let note: Value = serde_json::from_str(planned.3.as_deref().unwrap()).unwrap();
    assert_eq!(note["dry_run"], true);
    assert_eq!(note["before"]["dealstage"], "decisionmakerboughtin");
    assert_eq!(note["after"]["dealstage"], "appointmentscheduled");

    // Nothing was queued: even with writes allowed now, there is nothing to deliver.
    settings.rules[0].dry_run = false;
    let quick = pipewarden::crm::RetryPolicy {
        max_attempts: 3,
        base_delay: std::time::Duration::from_millis(5),
        max_delay: std::time::Duration::from_millis(20),
    };
    let delivered = rules::revert::deliver(&test.store, &settings, &connection, quick)
        .await
        .unwrap();
    assert_eq!(delivered.applied + delivered.failed, 0, "{delivered:?}");
    let path = format!("/crm/v3/objects/deals/{jumper}?properties=dealstage");
    let deal = hubspot(&emu, reqwest::Method::GET, &path, Value::Null).await;
    assert_eq!(deal["properties"]["dealstage"], "decisionmakerboughtin");
    emu.stop().await.unwrap();
}
