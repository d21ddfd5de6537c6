//! The public reliability problems of `crm-api-facts.md` section 15, each reproduced by the
//! emulator. Rows covered elsewhere, by the test that shows them:
//!
//! | row | test |
//! |---|---|
//! | 1 search past 10,000 | `emulator_hubspot::search_pages_by_offset_up_to_ten_thousand` |
//! | 2 `TEN_SECONDLY_ROLLING` 429 | `emulator_hubspot::rate_limit_headers_and_the_ten_second_burst`; `emulator_faults::limit_faults_answer_as_each_crm_does` |
//! | 3 search's own per-second limit | `emulator_hubspot::search_has_its_own_limit_and_no_rate_headers` |
//! | 4 archive without a modified-date bump, purge at 90 days | `emulator_hubspot::archiving_keeps_the_modified_date_and_purges_after_ninety_days` |
//! | 6 search index lag | `emulator_hubspot::search_lags_behind_writes_and_never_shows_archived_records` |
//! | 7 more than 50 with history | `emulator_hubspot::history_is_newest_first_with_real_source_types_and_capped_at_fifty`, `batch_read_limits_and_partial_results` |
//! | 10 414 for long URLs | `emulator_hubspot::over_long_urls_get_414` |
//! | 13 locator dies with a refreshed session | `emulator_query::a_locator_belongs_to_the_session_that_opened_it`, `emulator_faults::a_session_expiring_mid_paging_strands_the_locator` |
//! | 14 eleven cursors, 15 idle minutes | `emulator_query::an_eleventh_open_locator_releases_the_oldest_and_idle_ones_expire` |
//! | 15 `QUERY_TIMEOUT` on wide history queries | `emulator_query::wide_history_queries_time_out_and_narrow_windows_succeed` |
//! | 16 daily `REQUEST_LIMIT_EXCEEDED` | `emulator::every_call_counts_against_the_daily_allocation_until_it_is_refused` |
//! | 17 campaign members hard-deleted | `emulator_writes::deletes_go_to_the_recycle_bin_except_campaign_members` |
//! | 19 unfilterable history fields | `emulator_query::soql_errors_carry_the_real_codes`, `describe_and_record_reads_follow_the_schema` |
//! | 20 `ConcurrentPerOrgLongTxn` | `emulator_faults::limit_faults_answer_as_each_crm_does` |
//!
//! The rows below (5, 8, 9, 11, 12, 18) are shown here.

use std::collections::HashSet;

use pipewarden::emulator::{self, EmulatorOptions, HubspotOptions, RunningEmulator, Scale};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use super::emulator::{access_token, url};

const V: &str = "/services/data/v62.0";
const HUBSPOT_TOKEN: &str = "pat-na1-emulator-demo-token";

async fn start(scale: Scale) -> RunningEmulator {
    let options = EmulatorOptions {
        scale,
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

async fn call(
    emu: &RunningEmulator,
    method: Method,
    path: &str,
    pairs: &[(&str, &str)],
    token: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut address = url::Url::parse(&url(emu, path)).unwrap();
    for (name, value) in pairs {
        address.query_pairs_mut().append_pair(name, value);
    }
    let mut request = reqwest::Client::new()
        .request(method, address)
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn soql(emu: &RunningEmulator, token: &str, text: &str) -> Value {
    let (status, body) = call(
        emu,
        Method::GET,
        &format!("{V}/query"),
        &[("q", text)],
        token,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn control(emu: &RunningEmulator, method: Method, path: &str, body: Value) -> Value {
    let (status, answer) = call(emu, method, path, &[], "", Some(body)).await;
    assert_eq!(status, StatusCode::OK, "{path}: {answer}");
    answer
}

/// Row 5: records modified while a listing pages are neither lost nor repeated.
#[tokio::test]
async fn hubspot_listing_survives_changes_between_pages() {
    let emu = start(Scale::Tiny).await;
    let path = "/crm/v3/objects/deals";
    let (_, first) = call(
        &emu,
        Method::GET,
        path,
        &[("limit", "20")],
        HUBSPOT_TOKEN,
        None,
    )
    .await;
    let mut seen: Vec<String> = first["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|deal| deal["id"].as_str().unwrap().to_string())
        .collect();
    let touched = seen[3].clone();
    let (status, _) = call(
        &emu,
        Method::PATCH,
        &format!("{path}/{touched}"),
        &[],
        HUBSPOT_TOKEN,
        Some(json!({"properties": {"amount": "12345"}})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let mut after = first["paging"]["next"]["after"]
        .as_str()
        .map(str::to_string);
    for _ in 0..100 {
        let Some(cursor) = after.take() else { break };
        let (_, page) = call(
            &emu,
            Method::GET,
            path,
            &[("limit", "20"), ("after", &cursor)],
            HUBSPOT_TOKEN,
            None,
        )
        .await;
        seen.extend(
            page["results"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["id"].as_str().unwrap().to_string()),
        );
        after = page["paging"]["next"]["after"].as_str().map(str::to_string);
    }
    assert!(after.is_none(), "the listing ended");
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no deal twice");
    assert_eq!(seen.iter().filter(|id| **id == touched).count(), 1);
    emu.stop().await.unwrap();
}

/// Row 8: only the `hs_v2_*` stage properties carry values; the sunset names are empty.
#[tokio::test]
async fn only_the_v2_stage_timing_properties_are_populated() {
    let emu = start(Scale::Tiny).await;
    let properties =
        "dealstage,hs_date_entered_appointmentscheduled,hs_v2_date_entered_appointmentscheduled";
    let (status, page) = call(
        &emu,
        Method::GET,
        "/crm/v3/objects/deals",
        &[("limit", "100"), ("properties", properties)],
        HUBSPOT_TOKEN,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let deals = page["results"].as_array().unwrap();
    assert!(deals
        .iter()
        .all(|deal| deal["properties"]["hs_date_entered_appointmentscheduled"].is_null()));
    assert!(
        deals
            .iter()
            .any(|deal| deal["properties"]["hs_v2_date_entered_appointmentscheduled"].is_string()),
        "{page}"
    );
    emu.stop().await.unwrap();
}

/// Row 9: a token that expires after some pages, and a token endpoint that answers 429 once.
#[tokio::test]
async fn hubspot_tokens_expire_mid_listing_and_the_token_endpoint_throttles_once() {
    let emu = start(Scale::Tiny).await;
    let options = HubspotOptions::default();
    let refresh = || async {
        let response = reqwest::Client::new()
            .post(url(&emu, "/oauth/2026-03/token"))
            .form(&[
                ("grant_type", "refresh_token"),
                ("client_id", options.client_id.as_str()),
                ("client_secret", options.client_secret.as_str()),
                ("refresh_token", options.refresh_token.as_str()),
            ])
            .send()
            .await
            .unwrap();
        (response.status(), response.json::<Value>().await.unwrap())
    };
    control(
        &emu,
        Method::PUT,
        "/__emulator/faults",
        json!({"faults": [
            {"kind": "rate_limited", "target": "hubspot", "path_contains": "/oauth/", "next": 1},
            {"kind": "expire_session", "target": "hubspot", "path_contains": "/crm/v3/objects/contacts", "every": 3},
        ]}),
    )
    .await;
    let (status, throttled) = refresh().await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{throttled}");
    let (status, granted) = refresh().await;
    assert_eq!(status, StatusCode::OK, "the second try succeeds: {granted}");
    let token = granted["access_token"].as_str().unwrap().to_string();
    let path = "/crm/v3/objects/contacts";
    let mut statuses = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..3 {
        let mut pairs = vec![("limit", "10")];
        if let Some(cursor) = &after {
            pairs.push(("after", cursor));
        }
        let (status, page) = call(&emu, Method::GET, path, &pairs, &token, None).await;
        statuses.push(status.as_u16());
        if status == StatusCode::UNAUTHORIZED {
            assert_eq!(page["category"], "EXPIRED_AUTHENTICATION", "{page}");
        }
        after = page["paging"]["next"]["after"].as_str().map(str::to_string);
    }
    assert_eq!(
        statuses,
        [200, 200, 401],
        "the token dies on the third page"
    );
    emu.stop().await.unwrap();
}

/// Row 11: a formula follows its parent while the record's `SystemModstamp` stays put.
#[tokio::test]
async fn a_formula_changes_without_moving_system_modstamp() {
    let emu = start(Scale::Tiny).await;
    let token = access_token(&emu).await;
    let opportunity = &soql(&emu, &token, "SELECT Id, AccountId, Account_Segment__c, SystemModstamp FROM Opportunity ORDER BY Id LIMIT 1").await["records"][0];
    let account = opportunity["AccountId"].as_str().unwrap();
    let segment = if opportunity["Account_Segment__c"] == "Enterprise" {
        "SMB"
    } else {
        "Enterprise"
    };
    control(
        &emu,
        Method::POST,
        "/__emulator/salesforce/changes",
        json!({"changes": [{"object": "Account", "id": account, "set": {"Segment__c": segment}}]}),
    )
    .await;
    let id = opportunity["Id"].as_str().unwrap();
    let after = &soql(
        &emu,
        &token,
        &format!("SELECT Account_Segment__c, SystemModstamp FROM Opportunity WHERE Id = '{id}'"),
    )
    .await["records"][0];
    assert_eq!(after["Account_Segment__c"], segment);
    assert_eq!(
        after["SystemModstamp"], opportunity["SystemModstamp"],
        "the formula moved, the stamp did not"
    );
    emu.stop().await.unwrap();
}

/// Row 12: 2,500 rows sharing one `SystemModstamp` across a page boundary.
#[tokio::test]
async fn thousands_of_rows_share_one_system_modstamp_across_pages() {
    let emu = start(Scale::Small).await;
    let token = access_token(&emu).await;
    let mut ids = Vec::new();
    let mut next: Option<String> = None;
    let first = soql(
        &emu,
        &token,
        "SELECT Id FROM Lead WHERE IsConverted = false ORDER BY Id LIMIT 2500",
    )
    .await;
    let mut body = first;
    loop {
        ids.extend(
            body["records"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["Id"].as_str().unwrap().to_string()),
        );
        match body["nextRecordsUrl"].as_str() {
            Some(url) if next.as_deref() != Some(url) => {
                next = Some(url.to_string());
                body = call(&emu, Method::GET, url, &[], &token, None).await.1;
            }
            _ => break,
        }
    }
    assert_eq!(ids.len(), 2500);
    let changes: Vec<Value> = ids
        .iter()
        .map(|id| json!({"object": "Lead", "id": id, "set": {"Title": "Re-rated by a mass update"}, "by": {"kind": "workflow"}}))
        .collect();
    control(
        &emu,
        Method::POST,
        "/__emulator/salesforce/changes",
        json!({"changes": changes}),
    )
    .await;
    let now = chrono::DateTime::from_timestamp_millis(emu.clock().now_ms()).unwrap();
    let stamp = now.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
    let text =
        format!("SELECT Id FROM Lead WHERE SystemModstamp = {stamp} ORDER BY SystemModstamp, Id");
    let page = soql(&emu, &token, &text).await;
    assert_eq!(page["totalSize"], 2500);
    assert_eq!(
        page["records"].as_array().unwrap().len(),
        2000,
        "the tie spans a page boundary"
    );
    let rest = call(
        &emu,
        Method::GET,
        page["nextRecordsUrl"].as_str().unwrap(),
        &[],
        &token,
        None,
    )
    .await
    .1;
    let mut paged: HashSet<String> = HashSet::new();
    for record in page["records"]
        .as_array()
        .unwrap()
        .iter()
        .chain(rest["records"].as_array().unwrap())
    {
        paged.insert(record["Id"].as_str().unwrap().to_string());
    }
    assert_eq!(paged.len(), 2500, "every tied row once");
    emu.stop().await.unwrap();
}

/// Row 18: field-history values keep their JSON types.
#[tokio::test]
async fn field_history_values_keep_their_types() {
    let emu = start(Scale::Tiny).await;
    let token = access_token(&emu).await;
    let rows = soql(&emu, &token, "SELECT Field, DataType, NewValue FROM OpportunityFieldHistory WHERE Field IN ('Amount', 'CloseDate', 'StageName', 'Budget__c')").await;
    let rows = rows["records"].as_array().unwrap();
    let kinds: HashSet<&str> = rows
        .iter()
        .map(|row| row["Field"].as_str().unwrap())
        .collect();
    assert!(
        kinds.len() >= 3,
        "tiny has stage, amount and date changes: {kinds:?}"
    );
    for row in rows {
        let value = &row["NewValue"];
        match row["Field"].as_str().unwrap() {
            "Amount" | "Budget__c" => assert!(value.is_f64(), "{row}"),
            "CloseDate" => {
                let date = value.as_str().unwrap();
                assert!(
                    chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").is_ok(),
                    "{row}"
                );
            }
            _ => assert!(value.is_string(), "{row}"),
        }
    }
    emu.stop().await.unwrap();
}
