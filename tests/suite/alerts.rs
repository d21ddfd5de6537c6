//! Slack delivery from the alert outbox, against the emulator's Slack stand-in: retries through
//! server errors and rate limits, one message per alert in order, at most one per second per
//! channel, thread replies on resolution, permanent errors that fail one channel only, and
//! sends whose answer was lost (or whose sender was killed) found in Slack, not sent twice.

use std::time::Duration;

use pipewarden::alerts::{Deliverer, DeliveryOptions};
use pipewarden::config::Settings;
use pipewarden::emulator::{RunningEmulator, SLACK_BOT_TOKEN};
use pipewarden::rules;
use pipewarden::stop::StopSignal;
use pipewarden::store::{NewAlert, Store, StoreTx, StoredAlert};
use pipewarden::sync::{self, SyncOptions};
use serde_json::{json, Value};

use super::daemon::{signal, spawn, wait_for_exit};
use super::emulator::control;
use super::rules::{
    advance, salesforce_changes, salesforce_settings, sync_and_evaluate, SALESFORCE_RULE,
};
use super::sync::start_emulator;
use crate::support::{on_both_backends, ConfigDir, TestStore};

fn quick() -> DeliveryOptions {
    DeliveryOptions {
        base_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(40),
        poll_interval: Duration::from_millis(10),
    }
}

/// Delivers until nothing is pending (bounded: fails after 300 passes).
async fn deliver_all(store: &Store, settings: &Settings) -> Vec<StoredAlert> {
    let deliverer =
        Deliverer::new(store.clone(), settings.slack.as_ref().unwrap(), quick()).unwrap();
    for _ in 0..300 {
        deliverer.deliver_due().await.unwrap();
        let alerts = store.alerts().await.unwrap();
        if alerts.iter().all(|a| a.status != "pending") {
            return alerts;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("alerts still pending: {:?}", store.alerts().await.unwrap());
}

async fn received(emu: &RunningEmulator) -> Vec<Value> {
    let url = emu.base_url().join("__emulator/slack/messages").unwrap();
    let body: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
    body["messages"].as_array().unwrap().clone()
}

async fn script(emu: &RunningEmulator, answers: Value) {
    control(
        emu,
        "/__emulator/slack/answers",
        json!({ "answers": answers }),
    )
    .await;
}

fn deal(name: &str) -> Value {
    json!({"object": "Opportunity", "create": {"Name": name, "StageName": "Prospecting", "CloseDate": "2027-01-31", "Amount": 125000},
        "by": {"kind": "rep", "number": 0}})
}

fn jump(id: &str) -> Value {
    json!({"object": "Opportunity", "id": id, "set": {"StageName": "Value Proposition"}, "by": {"kind": "rep", "number": 1}})
}

/// Three deals jump stages after the baseline; returns their ids in creation order.
pub(crate) async fn three_jumps(
    emu: &RunningEmulator,
    store: &Store,
    settings: &Settings,
) -> Vec<String> {
    let baseline = sync_and_evaluate(store, settings).await;
    assert!(
        baseline.iter().all(|r| r.alerts == 0),
        "the baseline alerts nothing"
    );
    advance(emu, "1h").await;
    let ids = salesforce_changes(
        emu,
        json!([deal("Deal one"), deal("Deal two"), deal("Deal three")]),
    )
    .await;
    sync_and_evaluate(store, settings).await;
    advance(emu, "1h").await;
    salesforce_changes(
        emu,
        json!(ids.iter().map(|id| jump(id)).collect::<Vec<_>>()),
    )
    .await;
    sync_and_evaluate(store, settings).await;
    ids
}

/// A day later the deal's missing gate fields are filled, and the store synced and judged.
async fn fill_gate_fields(emu: &RunningEmulator, store: &Store, settings: &Settings, id: &str) {
    advance(emu, "1d").await;
    salesforce_changes(
        emu,
        json!([{"object": "Opportunity", "id": id, "set": {"Budget__c": 5, "Need__c": "x", "Authority__c": "y"}}]),
    )
    .await;
    sync_and_evaluate(store, settings).await;
}

async fn bot_token_alerts_arrive_once_in_order_with_thread_replies(test: TestStore) {
    let emu = start_emulator().await;
    let dir = ConfigDir::new();
    let slack = bot_token_slack(&dir, &emu);
    let rules = format!(
        "{}\n[[rules]]\nname = \"gone\"\nconnection = \"sf\"\nmode = \"alert\"\nchannel = \"#gone\"\nforbid_skipping = true\n",
        SALESFORCE_RULE.replace(
            "forbid_skipping = true",
            "forbid_skipping = true\nmode = \"alert\"\nchannel = \"#deal-desk\""
        )
    );
    let settings = salesforce_settings(&dir, &emu, &test.url, &rules, &slack);
    let ids = three_jumps(&emu, &test.store, &settings).await;

    // Slack fails for a while: two server errors, then a rate limit; #gone does not exist.
    script(
        &emu,
        json!([
            {"channel": "#gone", "error": "channel_not_found", "always": true},
            {"status": 500}, {"status": 500}, {"status": 429, "retry_after": 1}
        ]),
    )
    .await;
    let alerts = deliver_all(&test.store, &settings).await;
    let desk: Vec<&StoredAlert> = alerts
        .iter()
        .filter(|a| a.channel.as_deref() == Some("#deal-desk"))
        .collect();
    let gone: Vec<&StoredAlert> = alerts
        .iter()
        .filter(|a| a.channel.as_deref() == Some("#gone"))
        .collect();
    assert_eq!((desk.len(), gone.len()), (3, 3), "{alerts:?}");
    assert!(desk.iter().all(|a| a.status == "delivered"), "{desk:?}");
    assert!(
        desk.iter().any(|a| a.attempts > 1),
        "some were retried: {desk:?}"
    );
    for failed in &gone {
        assert_eq!(failed.status, "failed");
        let reason = failed.last_error.as_deref().unwrap();
        assert!(reason.contains("channel_not_found"), "{reason}");
        assert!(!reason.contains(SLACK_BOT_TOKEN));
    }

    // Each alert arrived exactly once, in the order the deals moved, one second apart at least.
    let messages = received(&emu).await;
    assert_eq!(messages.len(), 3, "{messages:?}");
    for (message, name) in messages.iter().zip(["Deal one", "Deal two", "Deal three"]) {
        assert_eq!(message["channel"], json!("#deal-desk"));
        let text = message["text"].as_str().unwrap();
        assert!(
            text.contains(name) && text.contains("Prospecting → Value Proposition"),
            "{text}"
        );
        let blocks = message["blocks"].to_string();
        assert!(
            blocks.contains("Budget__c") && blocks.contains("Skipped"),
            "{blocks}"
        );
        assert!(
            blocks.contains("lightning/r/Opportunity/"),
            "a link to the deal: {blocks}"
        );
        assert!(blocks.contains("*Amount*\\n125,000.00"), "{blocks}");
        assert!(
            blocks.contains("*Owner*\\n") && !blocks.contains("*Owner*\\n(none)"),
            "the owner is named: {blocks}"
        );
    }
    for pair in messages.windows(2) {
        let gap = pair[1]["received_at_ms"].as_i64().unwrap()
            - pair[0]["received_at_ms"].as_i64().unwrap();
        assert!(gap >= 990, "messages to one channel {gap} ms apart");
    }

    // Another pass sends nothing more.
    deliver_all(&test.store, &settings).await;
    assert_eq!(received(&emu).await.len(), 3);

    // Deal one's fields are filled: the resolution goes into its alert's thread.
    fill_gate_fields(&emu, &test.store, &settings, &ids[0]).await;
    deliver_all(&test.store, &settings).await;
    let messages = received(&emu).await;
    assert_eq!(messages.len(), 4, "{messages:?}");
    assert_eq!(messages[3]["thread_ts"], messages[0]["ts"]);
    assert!(messages[3]["text"]
        .as_str()
        .unwrap()
        .starts_with("Resolved late"));
    emu.stop().await.unwrap();
}

async fn a_revoked_webhook_fails_clearly_without_leaking_its_url(test: TestStore) {
    let emu = start_emulator().await;
    let dir = ConfigDir::new();
    let hook = format!("{}slack/services/T000/B000/SECRETpart", emu.base_url());
    dir.write("slack-webhook", &format!("{hook}\n"));
    let slack = "[slack]\nwebhook_url = { file = \"slack-webhook\" }\n";
    let rules = SALESFORCE_RULE.replace(
        "forbid_skipping = true",
        "forbid_skipping = true\nmode = \"alert\"",
    );
    let settings = salesforce_settings(&dir, &emu, &test.url, &rules, slack);
    three_jumps(&emu, &test.store, &settings).await;

    script(
        &emu,
        json!([{"status": 500}, {"status": 404, "error": "no_service", "always": true}]),
    )
    .await;
    let alerts = deliver_all(&test.store, &settings).await;
    assert_eq!(alerts.len(), 3);
    for alert in &alerts {
        assert_eq!(alert.status, "failed");
        let reason = alert.last_error.as_deref().unwrap();
        assert!(
            reason.contains("404") && reason.contains("no_service") && reason.contains("revoked"),
            "{reason}"
        );
        assert!(
            !reason.contains("SECRETpart"),
            "the webhook URL leaked: {reason}"
        );
    }
    assert!(received(&emu).await.is_empty());

    // Once the webhook works again, new alerts go through (failed ones stay failed, reported).
    script(&emu, json!([])).await;
    advance(&emu, "1h").await;
    let more = salesforce_changes(&emu, json!([deal("Deal four")])).await;
    sync_and_evaluate(&test.store, &settings).await;
    advance(&emu, "1h").await;
    salesforce_changes(&emu, json!([jump(&more[0])])).await;
    sync_and_evaluate(&test.store, &settings).await;
    deliver_all(&test.store, &settings).await;
    let messages = received(&emu).await;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0]["via"], json!("webhook"));
    assert!(messages[0]["text"].as_str().unwrap().contains("Deal four"));
    emu.stop().await.unwrap();
}

async fn a_daily_digest_sends_one_message_per_channel(test: TestStore) {
    let emu = start_emulator().await;
    let dir = ConfigDir::new();
    dir.write("slack-token", &format!("{SLACK_BOT_TOKEN}\n"));
    let slack = format!(
        "[slack]\nbot_token = {{ file = \"slack-token\" }}\napi_base_url = \"{}slack/api\"\ndefault_channel = \"#revops\"\ndigest_at = \"09:00\"\n",
        emu.base_url()
    );
    let rules = SALESFORCE_RULE.replace(
        "forbid_skipping = true",
        "forbid_skipping = true\nmode = \"alert\"",
    );
    let settings = salesforce_settings(&dir, &emu, &test.url, &rules, &slack);
    sync_and_evaluate(&test.store, &settings).await;
    advance(&emu, "1h").await;
    let ids = salesforce_changes(
        &emu,
        json!([deal("Deal one"), deal("Deal two"), deal("Deal three")]),
    )
    .await;
    sync_and_evaluate(&test.store, &settings).await;
    advance(&emu, "1h").await;
    salesforce_changes(
        &emu,
        json!(ids.iter().map(|id| jump(id)).collect::<Vec<_>>()),
    )
    .await;

    // Evaluated as if two days ago: the digest time since then has passed, so it is due now.
    let connection = &settings.connections[0];
    sync::sync_once(
        &test.store,
        connection,
        &SyncOptions::default(),
        &StopSignal::never(),
    )
    .await
    .unwrap();
    let two_days_ago = chrono::Utc::now().timestamp_millis() - 2 * 86_400_000;
    let report = rules::evaluate_connection(&test.store, &settings, connection, two_days_ago)
        .await
        .unwrap();
    assert_eq!(report[0].alerts, 3);
    let alerts = deliver_all(&test.store, &settings).await;
    assert!(alerts
        .iter()
        .all(|a| a.kind == "digest_item" && a.status == "delivered"));
    let messages = received(&emu).await;
    assert_eq!(messages.len(), 1, "one digest for #revops: {messages:?}");
    assert_eq!(messages[0]["channel"], json!("#revops"));
    let body = messages[0]["blocks"].to_string();
    for name in ["Deal one", "Deal two", "Deal three"] {
        assert!(body.contains(name), "{body}");
    }
    assert!(alerts
        .iter()
        .all(|a| a.slack_ts.as_deref() == messages[0]["ts"].as_str()));
    emu.stop().await.unwrap();
}

/// A rule that names no channel alerts to its connection's channel, ahead of the default.
async fn a_connection_channel_takes_the_alerts_of_rules_that_name_none(test: TestStore) {
    let emu = start_emulator().await;
    let dir = ConfigDir::new();
    let mut settings = bot_token_settings(&dir, &emu, &test.url);
    assert_eq!(settings.rules[0].channel, None);
    settings.connections[0].slack_channel = Some("#sales-emea".into());
    three_jumps(&emu, &test.store, &settings).await;
    deliver_all(&test.store, &settings).await;
    let messages = received(&emu).await;
    assert_eq!(messages.len(), 3, "{messages:?}");
    assert!(
        messages.iter().all(|m| m["channel"] == "#sales-emea"),
        "{messages:?}"
    );
    emu.stop().await.unwrap();
}

/// Puts a message for #revops in the outbox, as evaluation would.
async fn queue_for_revops(tx: &mut StoreTx, key: &str, kind: &str, text: &str, not_before: i64) {
    tx.enqueue_alert(&NewAlert {
        dedupe_key: key,
        kind,
        channel: Some("#revops"),
        payload: &json!({ "text": text }),
        violation_id: None,
        thread_of_id: None,
        not_before,
        created_at: not_before,
    })
    .await
    .unwrap();
}

/// A 429 holds the message back for as long as its `Retry-After` says, not for the (much
/// shorter) backoff of other failures.
async fn a_rate_limit_waits_as_long_as_retry_after_says(test: TestStore) {
    let emu = start_emulator().await;
    let dir = ConfigDir::new();
    let settings = bot_token_settings(&dir, &emu, &test.url);
    let now = chrono::Utc::now().timestamp_millis();
    let mut tx = test.store.begin().await.unwrap();
    queue_for_revops(&mut tx, "limited", "violation", "after the wait", now).await;
    tx.commit().await.unwrap();
    script(&emu, json!([{"status": 429, "retry_after": 2}])).await;

    let started = chrono::Utc::now().timestamp_millis();
    let alerts = deliver_all(&test.store, &settings).await;
    assert_eq!(alerts[0].attempts, 2, "{alerts:?}");
    let messages = received(&emu).await;
    assert_eq!(messages.len(), 1, "{messages:?}");
    let waited = messages[0]["received_at_ms"].as_i64().unwrap() - started;
    assert!(waited >= 2_000, "sent again after {waited} ms");
    emu.stop().await.unwrap();
}

/// More digest items waiting for tomorrow's digest than one delivery pass reads do not hold
/// up a message queued after them.
async fn a_backlog_of_digest_items_does_not_hold_up_other_messages(test: TestStore) {
    let emu = start_emulator().await;
    let dir = ConfigDir::new();
    let settings = bot_token_settings(&dir, &emu, &test.url);
    let now = chrono::Utc::now().timestamp_millis();
    let tomorrow = now + 86_400_000;
    let mut tx = test.store.begin().await.unwrap();
    for n in 0..1_001 {
        let key = format!("digest:{n}");
        queue_for_revops(
            &mut tx,
            &key,
            "digest_item",
            "waits for the digest",
            tomorrow,
        )
        .await;
    }
    queue_for_revops(&mut tx, "urgent", "violation", "sent now", now).await;
    tx.commit().await.unwrap();

    let deliverer = Deliverer::new(
        test.store.clone(),
        settings.slack.as_ref().unwrap(),
        quick(),
    )
    .unwrap();
    let report = deliverer.deliver_due().await.unwrap();
    assert_eq!(report.delivered, 1, "{report:?}");
    let messages = received(&emu).await;
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(messages[0]["text"], "sent now");
    let waiting = test.store.alerts().await.unwrap();
    assert_eq!(
        waiting.iter().filter(|a| a.status == "pending").count(),
        1_001,
        "the digest items wait for their hour"
    );
    emu.stop().await.unwrap();
}

/// A deliverer that starts right after another one delivered (a restart, or a takeover by
/// another replica) still keeps one message per second on the channel.
async fn a_new_deliverer_keeps_the_pace_of_the_last_one(test: TestStore) {
    let emu = start_emulator().await;
    let dir = ConfigDir::new();
    let settings = bot_token_settings(&dir, &emu, &test.url);
    let slack = settings.slack.as_ref().unwrap();
    for n in 0..2 {
        let now = chrono::Utc::now().timestamp_millis();
        let key = format!("paced:{n}");
        let mut tx = test.store.begin().await.unwrap();
        queue_for_revops(&mut tx, &key, "violation", &key, now).await;
        tx.commit().await.unwrap();
        let fresh = Deliverer::new(test.store.clone(), slack, quick()).unwrap();
        assert_eq!(fresh.deliver_due().await.unwrap().delivered, 1);
    }
    let messages = received(&emu).await;
    assert_eq!(messages.len(), 2, "{messages:?}");
    let gap = messages[1]["received_at_ms"].as_i64().unwrap()
        - messages[0]["received_at_ms"].as_i64().unwrap();
    assert!(gap >= 990, "{gap} ms between two messages to #revops");
    emu.stop().await.unwrap();
}

/// A channel can leave the daily digest: its violations go out one by one as they happen,
/// while `digest_at` still holds for the others.
async fn a_channel_can_leave_the_daily_digest(test: TestStore) {
    let emu = start_emulator().await;
    let dir = ConfigDir::new();
    let slack = format!(
        "{}digest_at = \"09:00\"\n[slack.channel_digests]\n\"#revops\" = \"off\"\n\"#later\" = \"17:30\"\n",
        bot_token_slack(&dir, &emu)
    );
    let rules = SALESFORCE_RULE.replace(
        "forbid_skipping = true",
        "forbid_skipping = true\nmode = \"alert\"",
    );
    let settings = salesforce_settings(&dir, &emu, &test.url, &rules, &slack);
    let slack_settings = settings.slack.as_ref().unwrap();
    let later = chrono::NaiveTime::from_hms_opt(17, 30, 0);
    assert_eq!(slack_settings.digest_for(Some("#later")), later);
    assert_eq!(
        slack_settings.digest_for(Some("#elsewhere")),
        chrono::NaiveTime::from_hms_opt(9, 0, 0)
    );
    three_jumps(&emu, &test.store, &settings).await;
    let alerts = deliver_all(&test.store, &settings).await;
    assert_eq!(alerts.len(), 3, "{alerts:?}");
    assert!(
        alerts
            .iter()
            .all(|a| a.kind == "violation" && a.status == "delivered"),
        "{alerts:?}"
    );
    assert_eq!(received(&emu).await.len(), 3, "one message per violation");
    emu.stop().await.unwrap();
}

/// A `[slack]` section with a bot token on the emulator's Slack, default channel #revops.
fn bot_token_slack(dir: &ConfigDir, emu: &RunningEmulator) -> String {
    dir.write("slack-token", &format!("{SLACK_BOT_TOKEN}\n"));
    format!(
        "[slack]\nbot_token = {{ file = \"slack-token\" }}\napi_base_url = \"{}slack/api\"\ndefault_channel = \"#revops\"\n",
        emu.base_url()
    )
}

/// Settings with a bot token on the emulator's Slack and the BANT rule alerting to #revops.
fn bot_token_settings(dir: &ConfigDir, emu: &RunningEmulator, store_url: &str) -> Settings {
    let slack = bot_token_slack(dir, emu);
    let rules = SALESFORCE_RULE.replace(
        "forbid_skipping = true",
        "forbid_skipping = true\nmode = \"alert\"",
    );
    salesforce_settings(dir, emu, store_url, &rules, &slack)
}

async fn an_unanswered_send_is_found_in_slack_and_not_sent_again(test: TestStore) {
    let emu = start_emulator().await;
    let dir = ConfigDir::new();
    let settings = bot_token_settings(&dir, &emu, &test.url);
    let ids = three_jumps(&emu, &test.store, &settings).await;

    // Slack takes the first alert but its answer is lost (a gateway 504).
    script(&emu, json!([{"status": 504, "accept": true}])).await;
    let alerts = deliver_all(&test.store, &settings).await;
    let messages = received(&emu).await;
    assert_eq!(messages.len(), 3, "each alert once: {messages:?}");
    assert!(alerts.iter().all(|a| a.status == "delivered"), "{alerts:?}");
    assert_eq!(alerts[0].attempts, 2, "{alerts:?}");
    assert_eq!(alerts[0].slack_ts.as_deref(), messages[0]["ts"].as_str());
    assert_eq!(
        messages[0]["metadata"]["event_payload"]["outbox_ids"],
        json!(alerts[0].id.to_string())
    );

    // The same for a resolution posted into the alert's thread.
    fill_gate_fields(&emu, &test.store, &settings, &ids[0]).await;
    script(&emu, json!([{"status": 502, "accept": true}])).await;
    let alerts = deliver_all(&test.store, &settings).await;
    let messages = received(&emu).await;
    assert_eq!(messages.len(), 4, "{messages:?}");
    assert_eq!(messages[3]["thread_ts"], messages[0]["ts"]);
    let reply = alerts.iter().find(|a| a.kind == "resolution").unwrap();
    assert_eq!(reply.slack_ts.as_deref(), messages[3]["ts"].as_str());
    emu.stop().await.unwrap();
}

async fn sigkill_while_slack_answers_neither_loses_nor_duplicates(test: TestStore) {
    let emu = start_emulator().await;
    let dir = ConfigDir::new();
    let settings = bot_token_settings(&dir, &emu, &test.url);
    three_jumps(&emu, &test.store, &settings).await;

    // Slack takes the first alert and is slow to answer; the daemon dies meanwhile.
    script(&emu, json!([{"delay_ms": 20_000}])).await;
    let config = dir.path().join("pipewarden.toml");
    let mut daemon = spawn(config.to_str().unwrap(), &["run"]);
    for _ in 0..300 {
        if !received(&emu).await.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        received(&emu).await.len(),
        1,
        "the first alert reached Slack"
    );
    signal(&daemon, "-KILL");
    wait_for_exit(&mut daemon, Duration::from_secs(30)).await;
    let alerts = test.store.alerts().await.unwrap();
    assert_eq!(alerts[0].status, "pending", "its answer never arrived");

    let alerts = deliver_all(&test.store, &settings).await;
    let messages = received(&emu).await;
    assert_eq!(messages.len(), 3, "each alert once: {messages:?}");
    for (message, name) in messages.iter().zip(["Deal one", "Deal two", "Deal three"]) {
        assert!(
            message["text"].as_str().unwrap().contains(name),
            "{message}"
        );
    }
    assert!(alerts.iter().all(|a| a.status == "delivered"), "{alerts:?}");
    assert_eq!(alerts[0].slack_ts.as_deref(), messages[0]["ts"].as_str());
    emu.stop().await.unwrap();
}

on_both_backends!(
    an_unanswered_send_is_found_in_slack_and_not_sent_again,
    sigkill_while_slack_answers_neither_loses_nor_duplicates,
    a_daily_digest_sends_one_message_per_channel,
    bot_token_alerts_arrive_once_in_order_with_thread_replies,
    a_revoked_webhook_fails_clearly_without_leaking_its_url,
    a_backlog_of_digest_items_does_not_hold_up_other_messages,
    a_connection_channel_takes_the_alerts_of_rules_that_name_none,
    a_rate_limit_waits_as_long_as_retry_after_says,
    a_channel_can_leave_the_daily_digest,
    a_new_deliverer_keeps_the_pace_of_the_last_one,
);

/// Replicas on one PostgreSQL store take turns delivering: each alert still arrives once.
#[tokio::test]
async fn two_replicas_on_postgres_deliver_each_alert_once() {
    let Some(test) = TestStore::postgres().await else {
        return;
    };
    let emu = start_emulator().await;
    let dir = ConfigDir::new();
    let settings = bot_token_settings(&dir, &emu, &test.url);
    three_jumps(&emu, &test.store, &settings).await;

    let (stopper, stop) = StopSignal::new();
    let slack_settings = settings.slack.as_ref().unwrap();
    let replicas: Vec<_> = (0..2)
        .map(|_| {
            tokio::spawn(
                Deliverer::new(test.store.clone(), slack_settings, quick())
                    .unwrap()
                    .run(stop.clone()),
            )
        })
        .collect();
    let mut delivered = false;
    for _ in 0..500 {
        let alerts = test.store.alerts().await.unwrap();
        if alerts.iter().all(|a| a.status == "delivered") {
            delivered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stopper.stop();
    for replica in replicas {
        replica.await.unwrap();
    }
    assert!(delivered, "{:?}", test.store.alerts().await.unwrap());
    assert_eq!(received(&emu).await.len(), 3);
    emu.stop().await.unwrap();
}
