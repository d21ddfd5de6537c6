//! The emulated HubSpot portal over real HTTP.

use std::collections::HashSet;
use std::time::Duration;

use pipewarden::emulator::{self, EmulatorOptions, HubspotOptions, RunningEmulator};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const TOKEN: &str = "pat-na1-emulator-demo-token";
const HISTORY_BATCH_MESSAGE: &str = "The maximum number of inputs supported in a batch request for property histories is 50. Please reduce the number of items and try again";
const SOURCE_TYPES: &[&str] = &[
    "CRM_UI",
    "INTEGRATION",
    "AUTOMATION",
    "IMPORT",
    "CALCULATED",
];

async fn start(hubspot: HubspotOptions) -> RunningEmulator {
    let options = EmulatorOptions {
        hubspot,
        ..EmulatorOptions::default()
    };
    emulator::start("127.0.0.1:0".parse().unwrap(), options)
        .await
        .expect("emulator starts")
}

/// A portal whose burst limit no functional test reaches.
fn roomy() -> HubspotOptions {
    HubspotOptions {
        burst_per_ten_seconds: 100_000,
        ..HubspotOptions::default()
    }
}

fn url(emu: &RunningEmulator, path: &str) -> String {
    emu.base_url()
        .join(path.trim_start_matches('/'))
        .unwrap()
        .to_string()
}

/// `path` with query pairs appended (reqwest here has no `.query()`).
fn with_query(emu: &RunningEmulator, path: &str, pairs: &[(&str, &str)]) -> String {
    let mut url = url::Url::parse(&url(emu, path)).unwrap();
    {
        let mut query = url.query_pairs_mut();
        for (name, value) in pairs {
            query.append_pair(name, value);
        }
    }
    url.to_string()
}

async fn call(
    method: Method,
    target: String,
    bearer: &str,
    body: Option<Value>,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let mut request = reqwest::Client::new()
        .request(method, target)
        .bearer_auth(bearer);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    (status, headers, body)
}

async fn get(emu: &RunningEmulator, path: &str, pairs: &[(&str, &str)]) -> (StatusCode, Value) {
    let (status, _, body) = call(Method::GET, with_query(emu, path, pairs), TOKEN, None).await;
    (status, body)
}

async fn send(
    emu: &RunningEmulator,
    method: Method,
    path: &str,
    body: Value,
) -> (StatusCode, Value) {
    let (status, _, body) = call(method, url(emu, path), TOKEN, Some(body)).await;
    (status, body)
}

/// Searches, waiting out the five-per-second search limit when a test hits it.
async fn search(emu: &RunningEmulator, object: &str, body: Value) -> (StatusCode, Value) {
    let path = format!("/crm/v3/objects/{object}/search");
    loop {
        let (status, body) = send(emu, Method::POST, &path, body.clone()).await;
        if status != StatusCode::TOO_MANY_REQUESTS {
            return (status, body);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn control(emu: &RunningEmulator, path: &str, body: Value) -> Value {
    let response = reqwest::Client::new()
        .post(url(emu, path))
        .json(&body)
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

async fn advance(emu: &RunningEmulator, by: &str) {
    control(emu, "/__emulator/clock/advance", json!({ "by": by })).await;
}

fn ids(body: &Value) -> Vec<String> {
    body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|record| record["id"].as_str().unwrap().to_string())
        .collect()
}

/// Every record of a listing, following `paging.next.after` to the end.
async fn list_all(
    emu: &RunningEmulator,
    object: &str,
    limit: usize,
    extra: &[(&str, &str)],
) -> Vec<Value> {
    let limit = limit.to_string();
    let mut after: Option<String> = None;
    let mut all = Vec::new();
    loop {
        let mut pairs: Vec<(&str, &str)> = vec![("limit", &limit)];
        pairs.extend_from_slice(extra);
        if let Some(after) = &after {
            pairs.push(("after", after));
        }
        let (status, body) = get(emu, &format!("/crm/v3/objects/{object}"), &pairs).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        all.extend(body["results"].as_array().unwrap().iter().cloned());
        match body["paging"]["next"]["after"].as_str() {
            Some(next) => {
                assert!(body["paging"]["next"]["link"]
                    .as_str()
                    .unwrap()
                    .contains("after="));
                after = Some(next.to_string());
            }
            None => {
                assert!(
                    body.get("paging").is_none(),
                    "last page has no paging: {body}"
                );
                return all;
            }
        }
    }
}

fn assert_simple_public_object(record: &Value) {
    for key in ["id", "properties", "createdAt", "updatedAt", "archived"] {
        assert!(record.get(key).is_some(), "{key} missing in {record}");
    }
    for (name, value) in record["properties"].as_object().unwrap() {
        assert!(value.is_string() || value.is_null(), "{name} = {value}");
    }
}

#[tokio::test]
async fn unknown_and_missing_tokens_get_hubspots_401() {
    let emu = start(roomy()).await;
    for bearer in ["pat-na1-wrong", ""] {
        let (status, headers, body) = call(
            Method::GET,
            url(&emu, "/crm/v3/objects/contacts"),
            bearer,
            None,
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(headers["x-hubspot-auth-failure"], "401 Unauthorized");
        assert_eq!(body["status"], "error");
        assert_eq!(body["category"], "INVALID_AUTHENTICATION");
        assert!(body["message"]
            .as_str()
            .unwrap()
            .starts_with("Authentication credentials not found."));
        assert!(body["correlationId"].is_string());
    }
    let (status, _) = get(&emu, "/crm/v3/objects/contacts", &[]).await;
    assert_eq!(status, StatusCode::OK);
    emu.stop().await.unwrap();
}

async fn refresh(emu: &RunningEmulator, path: &str, refresh_token: &str) -> (StatusCode, Value) {
    let options = HubspotOptions::default();
    let response = reqwest::Client::new()
        .post(url(emu, path))
        .form(&[
            ("grant_type", "refresh_token"),
            ("client_id", options.client_id.as_str()),
            ("client_secret", options.client_secret.as_str()),
            ("refresh_token", refresh_token),
        ])
        .send()
        .await
        .unwrap();
    (response.status(), response.json().await.unwrap())
}

#[tokio::test]
async fn oauth_tokens_refresh_everywhere_and_expire_after_thirty_simulated_minutes() {
    let emu = start(roomy()).await;
    let refresh_token = HubspotOptions::default().refresh_token;
    let mut access = String::new();
    for path in ["/oauth/v1/token", "/oauth/v3/token", "/oauth/2026-03/token"] {
        let (status, body) = refresh(&emu, path, &refresh_token).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        assert_eq!(body["token_type"], "bearer");
        assert_eq!(body["expires_in"], 1800);
        assert_eq!(body["refresh_token"], refresh_token.as_str());
        access = body["access_token"].as_str().unwrap().to_string();
        assert!(access.len() > 100);
    }
    let target = url(&emu, "/crm/v3/objects/deals");
    let (status, headers, _) = call(Method::GET, target.clone(), &access, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers.get("x-hubspot-ratelimit-daily").is_none(),
        "OAuth calls carry no daily figures"
    );
    assert_eq!(headers["x-hubspot-ratelimit-max"], "110");

    advance(&emu, "31m").await;
    let (status, headers, body) = call(Method::GET, target, &access, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers["x-hubspot-auth-failure"], "401 Unauthorized");
    assert_eq!(body["category"], "EXPIRED_AUTHENTICATION");
    assert_eq!(
        body["message"],
        "The OAuth token used to make this call expired 60 second(s) ago."
    );
    assert!(body["context"]["expire time"][0]
        .as_str()
        .unwrap()
        .ends_with('Z'));

    let (status, body) = refresh(&emu, "/oauth/v1/token", "not-a-token").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["status"], "BAD_REFRESH_TOKEN");
    assert_eq!(body["message"], "missing or unknown refresh token");
    let (_, body) = refresh(&emu, "/oauth/2026-03/token", "not-a-token").await;
    assert_eq!(body["error"], "invalid_grant");
    emu.stop().await.unwrap();
}

#[tokio::test]
async fn rotation_revokes_the_presented_refresh_token() {
    let emu = start(HubspotOptions {
        rotate_refresh_tokens: true,
        ..roomy()
    })
    .await;
    let first = HubspotOptions::default().refresh_token;
    let (status, body) = refresh(&emu, "/oauth/2026-03/token", &first).await;
    assert_eq!(status, StatusCode::OK);
    let second = body["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(second, first);
    let (status, body) = refresh(&emu, "/oauth/2026-03/token", &first).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["status"], "BAD_REFRESH_TOKEN");
    let (status, _) = refresh(&emu, "/oauth/2026-03/token", &second).await;
    assert_eq!(status, StatusCode::OK);
    emu.stop().await.unwrap();
}

#[tokio::test]
async fn listing_pages_cover_every_record_once_whatever_the_page_size() {
    let emu = start(roomy()).await;
    for object in ["contacts", "deals", "companies"] {
        let big: Vec<String> = list_all(&emu, object, 100, &[])
            .await
            .iter()
            .map(|record| {
                assert_simple_public_object(record);
                record["id"].as_str().unwrap().to_string()
            })
            .collect();
        let small: Vec<String> = list_all(&emu, object, 37, &[])
            .await
            .iter()
            .map(|record| record["id"].as_str().unwrap().to_string())
            .collect();
        assert!(big.len() > 20, "{object}: only {}", big.len());
        assert_eq!(big, small, "{object}");
        let unique: HashSet<&String> = big.iter().collect();
        assert_eq!(unique.len(), big.len(), "{object} has duplicates");
    }
    let (status, body) = get(&emu, "/crm/v3/objects/contacts", &[("limit", "101")]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["category"], "VALIDATION_ERROR");
    let (_, body) = get(&emu, "/crm/v3/objects/contacts", &[]).await;
    assert_eq!(
        body["results"].as_array().unwrap().len(),
        10,
        "default limit"
    );
    emu.stop().await.unwrap();
}

#[tokio::test]
async fn object_types_are_accepted_by_name_singular_and_id_under_both_prefixes() {
    let emu = start(roomy()).await;
    let (_, reference) = get(&emu, "/crm/v3/objects/deals", &[]).await;
    for path in [
        "/crm/v3/objects/deal",
        "/crm/v3/objects/0-3",
        "/crm/objects/2026-03/deals",
        "/crm/objects/2026-03/0-3",
    ] {
        let (status, body) = get(&emu, path, &[]).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert_eq!(ids(&body), ids(&reference), "{path}");
    }
    let (status, body) = get(&emu, "/crm/v3/objects/widgets", &[]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["message"], "Unable to infer object type from: widgets");
    emu.stop().await.unwrap();
}

#[tokio::test]
async fn default_named_and_repeated_properties() {
    let emu = start(roomy()).await;
    let (_, body) = get(&emu, "/crm/v3/objects/deals", &[("limit", "1")]).await;
    let keys: HashSet<&str> = body["results"][0]["properties"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let expected: HashSet<&str> = [
        "amount",
        "closedate",
        "createdate",
        "dealname",
        "dealstage",
        "hs_lastmodifieddate",
        "hs_object_id",
        "pipeline",
    ]
    .into();
    assert_eq!(keys, expected);

    let comma = get(
        &emu,
        "/crm/v3/objects/contacts",
        &[(
            "properties",
            "lifecyclestage,hs_lead_status,no_such_property",
        )],
    )
    .await
    .1;
    let repeated = get(
        &emu,
        "/crm/v3/objects/contacts",
        &[
            ("properties", "lifecyclestage"),
            ("properties", "hs_lead_status"),
            ("properties", "no_such_property"),
        ],
    )
    .await
    .1;
    assert_eq!(comma["results"], repeated["results"]);
    let properties = comma["results"][0]["properties"].as_object().unwrap();
    assert!(properties.contains_key("lifecyclestage"));
    assert!(properties.contains_key("hs_lead_status"));
    assert!(
        !properties.contains_key("no_such_property"),
        "unknown names are ignored"
    );
    assert!(
        !properties.contains_key("email"),
        "named properties replace the default set"
    );
    emu.stop().await.unwrap();
}

/// Names asked twice, or an association type under two of its names, are answered once, as
/// keys of a JSON map are: counted in the response text, since a parsed map would hide a
/// repeated key.
#[tokio::test]
async fn names_asked_twice_are_answered_once() {
    let emu = start(roomy()).await;
    let target = with_query(
        &emu,
        "/crm/v3/objects/deals",
        &[
            ("limit", "50"),
            ("properties", "dealname,dealname,amount"),
            ("associations", "contacts,contact,0-1"),
            ("propertiesWithHistory", "no_such_property"),
        ],
    );
    let text = reqwest::Client::new()
        .get(target)
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let body: Value = serde_json::from_str(&text).unwrap();
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 50, "{text}");
    assert_eq!(text.matches("\"dealname\":").count(), results.len());
    let linked = results
        .iter()
        .filter(|deal| deal["associations"]["contacts"].is_object())
        .count();
    assert!(linked > 0, "some deal of the first 50 has a contact");
    assert_eq!(text.matches("\"contacts\":{").count(), linked);
    for deal in results {
        assert_eq!(
            deal["propertiesWithHistory"],
            json!({}),
            "history asked of unknown names only is an empty map"
        );
    }
    emu.stop().await.unwrap();
}

#[tokio::test]
async fn history_is_newest_first_with_real_source_types_and_capped_at_fifty() {
    let emu = start(roomy()).await;
    let (status, body) = get(
        &emu,
        "/crm/v3/objects/deals",
        &[("limit", "51"), ("propertiesWithHistory", "dealstage")],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["category"], "VALIDATION_ERROR");

    let deals = list_all(
        &emu,
        "deals",
        50,
        &[("propertiesWithHistory", "dealstage,amount")],
    )
    .await;
    let mut seen_rep = false;
    let mut multi = 0;
    for deal in &deals {
        let history = deal["propertiesWithHistory"]["dealstage"]
            .as_array()
            .unwrap();
        assert!(!history.is_empty());
        assert_eq!(
            history[0]["value"], deal["properties"]["dealstage"],
            "newest first"
        );
        let times: Vec<&str> = history
            .iter()
            .map(|v| v["timestamp"].as_str().unwrap())
            .collect();
        let mut sorted = times.clone();
        sorted.sort_by(|a, b| b.cmp(a));
        assert_eq!(times.len(), sorted.len());
        for version in history {
            for key in ["value", "timestamp", "sourceType"] {
                assert!(version.get(key).is_some(), "{key} missing in {version}");
            }
            assert!(version["timestamp"].as_str().unwrap().ends_with('Z'));
            let source = version["sourceType"].as_str().unwrap();
            assert!(SOURCE_TYPES.contains(&source), "{source}");
            if source == "CRM_UI" {
                seen_rep = true;
                let user = version["updatedByUserId"].as_u64().unwrap();
                assert_eq!(version["sourceId"], format!("userId:{user}"));
            }
        }
        let parse = |t: &str| chrono::DateTime::parse_from_rfc3339(t).unwrap();
        assert!(
            times.windows(2).all(|w| parse(w[0]) >= parse(w[1])),
            "{times:?}"
        );
        if history.len() > 1 {
            multi += 1;
        }
    }
    assert!(
        seen_rep && multi > 5,
        "stage moves by reps appear in history"
    );
    emu.stop().await.unwrap();
}

#[tokio::test]
async fn reading_one_record_and_the_404_body() {
    let emu = start(roomy()).await;
    let (_, page) = get(&emu, "/crm/v3/objects/contacts", &[("limit", "1")]).await;
    let id = ids(&page)[0].clone();
    let (status, body) = get(&emu, &format!("/crm/v3/objects/contacts/{id}"), &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["id"], id.as_str());
    assert_eq!(body["properties"]["hs_object_id"], id.as_str());
    assert_simple_public_object(&body);
    let (status, body) = get(&emu, "/crm/v3/objects/contacts/999999999", &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    for key in ["message", "category", "correlationId"] {
        assert!(body[key].is_string(), "{key} in {body}");
    }
    assert_eq!(body["category"], "OBJECT_NOT_FOUND");
    emu.stop().await.unwrap();
}

#[tokio::test]
async fn deals_link_back_to_their_converted_contacts() {
    let emu = start(roomy()).await;
    let deals = list_all(
        &emu,
        "deals",
        100,
        &[("associations", "contacts,companies")],
    )
    .await;
    let deal = deals
        .iter()
        .find(|deal| {
            deal.get("associations")
                .is_some_and(|a| a.get("contacts").is_some())
        })
        .expect("a converted deal has its lead's contact");
    let link = &deal["associations"]["contacts"]["results"][0];
    assert_eq!(link["type"], "deal_to_contact");
    assert!(deal["associations"]["companies"]["results"][0]["id"].is_string());
    let contact = link["id"].as_str().unwrap();
    let (status, body) = get(
        &emu,
        &format!("/crm/v3/objects/contacts/{contact}"),
        &[("associations", "deals"), ("properties", "lifecyclestage")],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["associations"]["deals"]["results"][0]["id"],
        deal["id"]
    );
    let stage = body["properties"]["lifecyclestage"].as_str().unwrap();
    assert!(["opportunity", "customer"].contains(&stage), "{stage}");
    emu.stop().await.unwrap();
}

#[tokio::test]
async fn stage_timing_properties_come_only_when_named() {
    let emu = start(roomy()).await;
    let named = "hs_v2_date_entered_appointmentscheduled,hs_v2_date_exited_appointmentscheduled,hs_v2_latest_time_in_appointmentscheduled,dealstage";
    let deals = list_all(&emu, "deals", 100, &[("properties", named)]).await;
    let moved_on = deals
        .iter()
        .find(|deal| deal["properties"]["hs_v2_date_exited_appointmentscheduled"].is_string())
        .expect("some deal left the first stage");
    let entered = chrono::DateTime::parse_from_rfc3339(
        moved_on["properties"]["hs_v2_date_entered_appointmentscheduled"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let exited = chrono::DateTime::parse_from_rfc3339(
        moved_on["properties"]["hs_v2_date_exited_appointmentscheduled"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let time_in: i64 = moved_on["properties"]["hs_v2_latest_time_in_appointmentscheduled"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(time_in, (exited - entered).num_milliseconds());
    let (_, body) = get(&emu, "/crm/v3/properties/deals", &[]).await;
    let names: Vec<&str> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(names.iter().all(|name| !name.starts_with("hs_v2_")));
    for custom in [
        "budget",
        "authority",
        "need",
        "timeline",
        "competitor",
        "decision_process",
    ] {
        assert!(names.contains(&custom), "{custom}");
    }
    emu.stop().await.unwrap();
}

#[tokio::test]
async fn batch_read_limits_and_partial_results() {
    let emu = start(roomy()).await;
    let (_, page) = get(&emu, "/crm/v3/objects/deals", &[("limit", "3")]).await;
    let known = ids(&page);
    let inputs = |n: usize| -> Value {
        json!((0..n)
            .map(|i| json!({"id": known[i % known.len()]}))
            .collect::<Vec<_>>())
    };
    let path = "/crm/v3/objects/deals/batch/read";
    let (status, body) = send(
        &emu,
        Method::POST,
        path,
        json!({"inputs": inputs(51), "properties": ["dealstage"], "propertiesWithHistory": ["dealstage"]}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["message"], HISTORY_BATCH_MESSAGE);
    assert_eq!(body["category"], "VALIDATION_ERROR");
    let (status, _) = send(
        &emu,
        Method::POST,
        path,
        json!({"inputs": inputs(101), "properties": []}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, body) = send(
        &emu,
        Method::POST,
        path,
        json!({"inputs": inputs(50), "properties": ["dealstage"], "propertiesWithHistory": ["dealstage"]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "COMPLETE");
    for key in ["results", "startedAt", "completedAt"] {
        assert!(body.get(key).is_some(), "{key}");
    }

    let mut partial: Vec<Value> = known.iter().map(|id| json!({ "id": id })).collect();
    partial.push(json!({"id": "999999999"}));
    let (status, body) = send(
        &emu,
        Method::POST,
        path,
        json!({"inputs": partial, "properties": ["amount"]}),
    )
    .await;
    assert_eq!(status, StatusCode::MULTI_STATUS);
    assert_eq!(body["numErrors"], 1);
    assert_eq!(body["results"].as_array().unwrap().len(), known.len());
    assert_eq!(body["errors"][0]["category"], "OBJECT_NOT_FOUND");
    assert_eq!(body["errors"][0]["context"]["ids"][0], "999999999");
    emu.stop().await.unwrap();
}

fn filter(property: &str, operator: &str, value: Value) -> Value {
    let mut filter = json!({ "propertyName": property, "operator": operator });
    match value {
        Value::Array(values) => filter["values"] = Value::Array(values),
        Value::Null => {}
        value => filter["value"] = value,
    }
    filter
}

async fn search_total(emu: &RunningEmulator, groups: Value) -> (u64, Vec<Value>) {
    let (status, body) = search(
        emu,
        "deals",
        json!({"filterGroups": groups, "properties": ["dealstage", "amount", "closed_lost_reason", "dealname"], "limit": 200}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    (
        body["total"].as_u64().unwrap(),
        body["results"].as_array().unwrap().clone(),
    )
}

#[tokio::test]
async fn search_operators_filter_groups_and_sorts() {
    let emu = start(roomy()).await;
    let (all, _) = search_total(&emu, json!([])).await;
    let one = |f: Value| json!([{ "filters": [f] }]);
    let (won, rows) = search_total(&emu, one(filter("dealstage", "EQ", json!("closedwon")))).await;
    assert!(
        won > 0
            && rows
                .iter()
                .all(|r| r["properties"]["dealstage"] == "closedwon")
    );
    let (lost, _) = search_total(&emu, one(filter("dealstage", "EQ", json!("closedlost")))).await;
    let (closed_in, _) = search_total(
        &emu,
        one(filter(
            "dealstage",
            "IN",
            json!(["closedwon", "closedlost"]),
        )),
    )
    .await;
    let (closed_or, _) = search_total(
        &emu,
        json!([
            { "filters": [filter("dealstage", "EQ", json!("closedwon"))] },
            { "filters": [filter("dealstage", "EQ", json!("closedlost"))] }
        ]),
    )
    .await;
    assert_eq!(closed_in, won + lost);
    assert_eq!(closed_or, won + lost);
    let (not_in, _) = search_total(
        &emu,
        one(filter(
            "dealstage",
            "NOT_IN",
            json!(["closedwon", "closedlost"]),
        )),
    )
    .await;
    assert_eq!(not_in + won + lost, all);
    let (neq, _) = search_total(&emu, one(filter("dealstage", "NEQ", json!("closedwon")))).await;
    assert_eq!(neq + won, all);

    let (big, rows) = search_total(&emu, one(filter("amount", "GTE", json!("100000")))).await;
    assert!(rows.iter().all(|r| r["properties"]["amount"]
        .as_str()
        .unwrap()
        .parse::<f64>()
        .unwrap()
        >= 100_000.0));
    let (small, _) = search_total(&emu, one(filter("amount", "LT", json!(100000)))).await;
    assert_eq!(big + small, all);
    let (between, rows) = search_total(
        &emu,
        one(json!({"propertyName": "amount", "operator": "BETWEEN", "value": "50000", "highValue": "80000"})),
    )
    .await;
    assert!(between < all);
    assert!(rows.iter().all(|r| {
        let amount: f64 = r["properties"]["amount"].as_str().unwrap().parse().unwrap();
        (50_000.0..=80_000.0).contains(&amount)
    }));

    let (with_reason, rows) = search_total(
        &emu,
        one(filter("closed_lost_reason", "HAS_PROPERTY", Value::Null)),
    )
    .await;
    assert!(rows
        .iter()
        .all(|r| r["properties"]["closed_lost_reason"].is_string()));
    let (without_reason, _) = search_total(
        &emu,
        one(filter(
            "closed_lost_reason",
            "NOT_HAS_PROPERTY",
            Value::Null,
        )),
    )
    .await;
    assert_eq!(with_reason + without_reason, all);
    assert_eq!(with_reason, lost, "every lost deal says why");

    let (renewals, rows) = search_total(
        &emu,
        one(filter("dealname", "CONTAINS_TOKEN", json!("renewal"))),
    )
    .await;
    assert!(
        renewals > 0
            && rows.iter().all(|r| r["properties"]["dealname"]
                .as_str()
                .unwrap()
                .contains("Renewal"))
    );

    let (status, body) = search(
        &emu,
        "deals",
        json!({"sorts": [{"propertyName": "amount", "direction": "DESCENDING"}], "properties": ["amount"], "limit": 50}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let amounts: Vec<f64> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["properties"]["amount"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(amounts.windows(2).all(|w| w[0] >= w[1]), "{amounts:?}");
    emu.stop().await.unwrap();
}

#[tokio::test]
async fn search_pages_by_offset_up_to_ten_thousand() {
    let emu = start(roomy()).await;
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let total = loop {
        let mut request = json!({"limit": 40, "sorts": ["createdate"]});
        if let Some(after) = &after {
            request["after"] = json!(after);
        }
        let (status, body) = search(&emu, "contacts", request).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body["paging"]["next"].get("link").is_none());
        seen.extend(ids(&body));
        match body["paging"]["next"]["after"].as_str() {
            Some(next) => after = Some(next.to_string()),
            None => break body["total"].as_u64().unwrap(),
        }
    };
    assert_eq!(seen.len() as u64, total);
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), seen.len());

    let (status, body) = search(&emu, "contacts", json!({"after": "10000", "limit": 10})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["category"], "VALIDATION_ERROR");
    let (status, _) = search(&emu, "contacts", json!({"limit": 201})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    emu.stop().await.unwrap();
}

#[tokio::test]
async fn search_has_its_own_limit_and_no_rate_headers() {
    let emu = start(roomy()).await;
    let target = url(&emu, "/crm/v3/objects/deals/search");
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let (status, headers, body) =
            call(Method::POST, target.clone(), TOKEN, Some(json!({}))).await;
        assert!(
            headers
                .keys()
                .all(|name| !name.as_str().starts_with("x-hubspot-ratelimit")),
            "{headers:?}"
        );
        if status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(body["message"], "You have reached your secondly limit.");
            assert_eq!(body["errorType"], "RATE_LIMIT");
        }
        statuses.push(status);
    }
    assert_eq!(statuses[..5], [StatusCode::OK; 5]);
    assert_eq!(statuses[5], StatusCode::TOO_MANY_REQUESTS);
    emu.stop().await.unwrap();
}

#[tokio::test]
async fn search_lags_behind_writes_and_never_shows_archived_records() {
    let emu = start(roomy()).await;
    let (_, page) = get(&emu, "/crm/v3/objects/deals", &[("limit", "2")]).await;
    let [edited, archived] = [ids(&page)[0].clone(), ids(&page)[1].clone()];
    advance(&emu, "1m").await;
    let by_id = |id: &str| json!({"filterGroups": [{"filters": [filter("hs_object_id", "EQ", json!(id))]}]});
    let (_, body) = search(&emu, "deals", by_id(&edited)).await;
    assert_eq!(body["total"], 1, "visible before the edit");

    let (status, _) = send(
        &emu,
        Method::PATCH,
        &format!("/crm/v3/objects/deals/{edited}"),
        json!({"properties": {"competitor": "Gong"}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let gong = json!({
        "filterGroups": [{"filters": [
            filter("hs_object_id", "EQ", json!(edited)),
            filter("competitor", "EQ", json!("Gong")),
        ]}],
        "properties": ["competitor"],
    });
    let (_, body) = search(&emu, "deals", gong.clone()).await;
    assert_eq!(body["total"], 0, "the new value is not indexed yet");
    let mut stale = by_id(&edited);
    stale["properties"] = json!(["competitor"]);
    let (_, body) = search(&emu, "deals", stale).await;
    assert_eq!(
        body["total"], 1,
        "the record stays findable by what was indexed"
    );
    assert_ne!(
        body["results"][0]["properties"]["competitor"], "Gong",
        "{body}"
    );
    advance(&emu, "11s").await;
    let (_, body) = search(&emu, "deals", gong).await;
    assert_eq!(body["total"], 1, "indexed after the lag");

    let (status, _) = send(
        &emu,
        Method::DELETE,
        &format!("/crm/v3/objects/deals/{archived}"),
        json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    advance(&emu, "1h").await;
    let (_, body) = search(&emu, "deals", by_id(&archived)).await;
    assert_eq!(body["total"], 0);
    emu.stop().await.unwrap();
}

#[tokio::test]
async fn pipelines_and_owners_have_the_client_library_keys() {
    let emu = start(roomy()).await;
    for path in ["/crm/v3/pipelines/deals", "/crm/pipelines/2026-03/deals"] {
        let (status, body) = get(&emu, path, &[]).await;
        assert_eq!(status, StatusCode::OK);
        let pipeline = &body["results"][0];
        for key in [
            "id",
            "label",
            "displayOrder",
            "stages",
            "archived",
            "createdAt",
            "updatedAt",
        ] {
            assert!(pipeline.get(key).is_some(), "{key}");
        }
        let stages = pipeline["stages"].as_array().unwrap();
        assert_eq!(stages.len(), 7);
        for stage in stages {
            for key in [
                "id",
                "label",
                "displayOrder",
                "archived",
                "createdAt",
                "updatedAt",
                "metadata",
            ] {
                assert!(stage.get(key).is_some(), "{key}");
            }
            assert!(stage["metadata"]["probability"].is_string());
        }
        assert_eq!(stages[5]["id"], "closedwon");
        assert_eq!(stages[5]["metadata"]["isClosed"], "true");
    }
    let (_, stages) = get(&emu, "/crm/v3/pipelines/deals/default/stages", &[]).await;
    assert_eq!(stages["results"].as_array().unwrap().len(), 7);
    let (status, _) = get(&emu, "/crm/v3/pipelines/deals/nope", &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, owners) = get(&emu, "/crm/v3/owners/", &[]).await;
    assert_eq!(status, StatusCode::OK);
    let owner_ids: HashSet<String> = ids(&owners).into_iter().collect();
    for owner in owners["results"].as_array().unwrap() {
        for key in ["id", "type", "archived", "createdAt", "updatedAt"] {
            assert!(owner.get(key).is_some(), "{key}");
        }
        assert_eq!(owner["type"], "PERSON");
        assert_eq!(owner["teams"][0]["primary"], true);
    }
    let (_, deals) = get(
        &emu,
        "/crm/v3/objects/deals",
        &[("properties", "hubspot_owner_id"), ("limit", "100")],
    )
    .await;
    for deal in deals["results"].as_array().unwrap() {
        let owner = deal["properties"]["hubspot_owner_id"].as_str().unwrap();
        assert!(owner_ids.contains(owner), "{owner}");
    }
    emu.stop().await.unwrap();
}

#[tokio::test]
async fn rate_limit_headers_and_the_ten_second_burst() {
    let emu = start(HubspotOptions::default()).await;
    let target = url(&emu, "/crm/v3/objects/contacts?limit=1");
    let (_, headers, _) = call(Method::GET, target.clone(), TOKEN, None).await;
    assert_eq!(headers["x-hubspot-ratelimit-daily"], "250000");
    assert_eq!(headers["x-hubspot-ratelimit-daily-remaining"], "249999");
    assert_eq!(
        headers["x-hubspot-ratelimit-interval-milliseconds"],
        "10000"
    );
    assert_eq!(headers["x-hubspot-ratelimit-max"], "100");
    assert_eq!(headers["x-hubspot-ratelimit-remaining"], "99");
    assert!(headers.contains_key("x-hubspot-correlation-id"));
    for _ in 1..100 {
        let (status, _, _) = call(Method::GET, target.clone(), TOKEN, None).await;
        assert_eq!(status, StatusCode::OK);
    }
    let (status, headers, body) = call(Method::GET, target, TOKEN, None).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers["x-hubspot-ratelimit-remaining"], "0");
    assert_eq!(body["status"], "error");
    assert_eq!(
        body["message"],
        "You have reached your ten_secondly_rolling limit."
    );
    assert_eq!(body["errorType"], "RATE_LIMIT");
    assert_eq!(body["policyName"], "TEN_SECONDLY_ROLLING");
    assert!(body["groupName"]
        .as_str()
        .unwrap()
        .starts_with("publicapi:private_app-api-calls-ten-secondly:"));
    emu.stop().await.unwrap();
}

#[tokio::test]
async fn the_daily_limit_refuses_until_the_next_simulated_day() {
    let emu = start(roomy().enterprise()).await;
    control(
        &emu,
        "/__emulator/hubspot/daily-usage",
        json!({"used": 1_000_000}),
    )
    .await;
    let target = url(&emu, "/crm/v3/objects/deals");
    let (status, headers, body) = call(Method::GET, target.clone(), TOKEN, None).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body["policyName"], "DAILY");
    assert_eq!(body["message"], "You have reached your daily limit.");
    assert_eq!(headers["x-hubspot-ratelimit-daily"], "1000000");
    assert_eq!(headers["x-hubspot-ratelimit-daily-remaining"], "0");
    advance(&emu, "24h").await;
    let (status, _, _) = call(Method::GET, target, TOKEN, None).await;
    assert_eq!(status, StatusCode::OK);
    emu.stop().await.unwrap();
}

#[tokio::test]
async fn over_long_urls_get_414() {
    let emu = start(roomy()).await;
    let many: Vec<String> = (0..1_500).map(|i| format!("custom_property_{i}")).collect();
    let (status, _) = get(
        &emu,
        "/crm/v3/objects/deals",
        &[("properties", &many.join(","))],
    )
    .await;
    assert_eq!(status, StatusCode::URI_TOO_LONG);
    let (status, _) = get(
        &emu,
        "/crm/v3/objects/deals",
        &[("properties", &many[..100].join(","))],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    emu.stop().await.unwrap();
}

#[tokio::test]
async fn updates_are_validated_and_recorded_as_integration_history() {
    let emu = start(roomy()).await;
    let (_, page) = get(&emu, "/crm/v3/objects/contacts", &[("limit", "1")]).await;
    let id = ids(&page)[0].clone();
    let path = format!("/crm/v3/objects/contacts/{id}");
    let (status, body) = send(
        &emu,
        Method::PATCH,
        &path,
        json!({"properties": {"favourite_colour": "blue", "hs_lead_status": "MAYBE", "hs_object_id": "1"}}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["category"], "VALIDATION_ERROR");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.starts_with("Property values were not valid: "),
        "{message}"
    );
    for code in ["PROPERTY_DOESNT_EXIST", "INVALID_OPTION", "READ_ONLY_VALUE"] {
        assert!(message.contains(code), "{code} in {message}");
    }

    advance(&emu, "5m").await;
    let (status, body) = send(
        &emu,
        Method::PATCH,
        &path,
        json!({"properties": {"hs_lead_status": "BAD_TIMING"}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["properties"]["hs_lead_status"], "BAD_TIMING");
    assert_simple_public_object(&body);
    let (_, read) = get(
        &emu,
        &path,
        &[
            ("propertiesWithHistory", "hs_lead_status"),
            ("properties", "lastmodifieddate"),
        ],
    )
    .await;
    let history = read["propertiesWithHistory"]["hs_lead_status"]
        .as_array()
        .unwrap();
    assert_eq!(history[0]["value"], "BAD_TIMING");
    assert_eq!(history[0]["sourceType"], "INTEGRATION");
    assert_eq!(
        history[0]["sourceId"],
        HubspotOptions::default().private_app_id.to_string()
    );
    assert!(history.len() >= 2);
    assert_eq!(
        read["properties"]["lastmodifieddate"],
        history[0]["timestamp"]
    );
    assert_eq!(read["updatedAt"], history[0]["timestamp"]);
    let (status, _) = send(
        &emu,
        Method::PATCH,
        "/crm/v3/objects/contacts/999999999",
        json!({"properties": {}}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    emu.stop().await.unwrap();
}

#[tokio::test]
async fn lifecycle_stage_moves_back_only_after_being_cleared() {
    let emu = start(roomy()).await;
    let contacts = list_all(&emu, "contacts", 100, &[("properties", "lifecyclestage")]).await;
    let advanced = contacts
        .iter()
        .find(|c| c["properties"]["lifecyclestage"] == "salesqualifiedlead")
        .expect("some contact is sales qualified");
    let path = format!(
        "/crm/v3/objects/contacts/{}",
        advanced["id"].as_str().unwrap()
    );
    let patch = |stage: &str| json!({"properties": {"lifecyclestage": stage}});
    let (status, body) = send(&emu, Method::PATCH, &path, patch("lead")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["properties"]["lifecyclestage"], "salesqualifiedlead",
        "backward move ignored"
    );
    let (_, body) = send(&emu, Method::PATCH, &path, patch("")).await;
    assert_eq!(body["properties"]["lifecyclestage"], "");
    let (_, body) = send(&emu, Method::PATCH, &path, patch("lead")).await;
    assert_eq!(body["properties"]["lifecyclestage"], "lead");
    let (_, body) = send(&emu, Method::PATCH, &path, patch("customer")).await;
    assert_eq!(
        body["properties"]["lifecyclestage"], "customer",
        "forward moves apply"
    );
    emu.stop().await.unwrap();
}

#[tokio::test]
async fn batch_update_reports_missing_ids_as_207() {
    let emu = start(roomy()).await;
    let (_, page) = get(&emu, "/crm/v3/objects/deals", &[("limit", "2")]).await;
    let known = ids(&page);
    let inputs: Vec<Value> = known
        .iter()
        .chain(std::iter::once(&"999999999".to_string()))
        .map(|id| json!({"id": id, "properties": {"need": "Forecast accuracy", "amount": 12345}}))
        .collect();
    let (status, body) = send(
        &emu,
        Method::POST,
        "/crm/v3/objects/deals/batch/update",
        json!({"inputs": inputs}),
    )
    .await;
    assert_eq!(status, StatusCode::MULTI_STATUS, "{body}");
    assert_eq!(body["numErrors"], 1);
    assert_eq!(body["results"].as_array().unwrap().len(), 2);
    assert_eq!(body["results"][0]["properties"]["amount"], "12345");
    let (_, read) = get(
        &emu,
        &format!("/crm/v3/objects/deals/{}", known[1]),
        &[("properties", "need")],
    )
    .await;
    assert_eq!(read["properties"]["need"], "Forecast accuracy");
    let too_many: Vec<Value> = (0..101)
        .map(|_| json!({"id": known[0], "properties": {}}))
        .collect();
    let (status, _) = send(
        &emu,
        Method::POST,
        "/crm/v3/objects/deals/batch/update",
        json!({"inputs": too_many}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    emu.stop().await.unwrap();
}

#[tokio::test]
async fn list_memberships_use_hubspots_key_spelling() {
    let emu = start(roomy()).await;
    let (_, page) = get(&emu, "/crm/v3/objects/contacts", &[("limit", "2")]).await;
    let known = ids(&page);
    let add = "/crm/v3/lists/101/memberships/add";
    let (status, body) = send(
        &emu,
        Method::PUT,
        add,
        json!([known[0], known[1], "999999999"]),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["recordsIdsAdded"], json!([known[0], known[1]]));
    assert_eq!(body["recordIdsMissing"], json!(["999999999"]));
    assert_eq!(body["recordIdsRemoved"], json!([]));
    let (_, again) = send(&emu, Method::PUT, add, json!([known[0]])).await;
    assert_eq!(
        again["recordsIdsAdded"],
        json!([]),
        "members are not added twice"
    );

    let (_, removed) = send(
        &emu,
        Method::PUT,
        "/crm/lists/2026-03/101/memberships/remove",
        json!([known[0]]),
    )
    .await;
    assert_eq!(removed["recordIdsRemoved"], json!([known[0]]));
    let (_, members) = get(&emu, "/crm/v3/lists/101/memberships", &[]).await;
    assert_eq!(members["results"][0]["recordId"], known[1].as_str());
    assert_eq!(members["total"], 1);

    let (status, _) = send(
        &emu,
        Method::PUT,
        "/crm/v3/lists/103/memberships/add",
        json!([known[0]]),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "dynamic lists refuse manual changes"
    );
    let (status, _) = send(
        &emu,
        Method::PUT,
        "/crm/v3/lists/999/memberships/add",
        json!([known[0]]),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    emu.stop().await.unwrap();
}

#[tokio::test]
async fn archiving_keeps_the_modified_date_and_purges_after_ninety_days() {
    let emu = start(roomy()).await;
    let (_, page) = get(&emu, "/crm/v3/objects/deals", &[("limit", "1")]).await;
    let deal = &page["results"][0];
    let id = deal["id"].as_str().unwrap();
    let modified = deal["properties"]["hs_lastmodifieddate"].clone();
    let path = format!("/crm/v3/objects/deals/{id}");
    advance(&emu, "1h").await;
    let (status, _) = send(&emu, Method::DELETE, &path, json!({})).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = get(&emu, &path, &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let live = list_all(&emu, "deals", 100, &[]).await;
    assert!(live.iter().all(|d| d["id"] != id));

    let archived = list_all(&emu, "deals", 100, &[("archived", "true")]).await;
    let found = archived
        .iter()
        .find(|d| d["id"] == id)
        .expect("listed as archived");
    assert!(archived.iter().all(|d| d["archived"] == true));
    assert!(found["archivedAt"].is_string());
    assert_eq!(found["properties"]["hs_lastmodifieddate"], modified);
    let (status, _) = get(&emu, &path, &[("archived", "true")]).await;
    assert_eq!(status, StatusCode::OK);

    advance(&emu, "2161h").await;
    let archived = list_all(&emu, "deals", 100, &[("archived", "true")]).await;
    assert!(
        archived.iter().all(|d| d["id"] != id),
        "purged after 90 days"
    );
    emu.stop().await.unwrap();
}

#[tokio::test]
async fn ground_truth_is_the_api_history_oldest_first_and_tokens_can_be_expired() {
    let emu = start(roomy()).await;
    let (_, page) = get(
        &emu,
        "/crm/v3/objects/deals",
        &[("limit", "1"), ("propertiesWithHistory", "dealstage")],
    )
    .await;
    let deal = &page["results"][0];
    let id = deal["id"].as_str().unwrap();
    let response = reqwest::get(url(
        &emu,
        &format!("/__emulator/hubspot/records/deals/{id}"),
    ))
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let truth: Value = response.json().await.unwrap();
    let mut oldest_first = deal["propertiesWithHistory"]["dealstage"]
        .as_array()
        .unwrap()
        .clone();
    oldest_first.reverse();
    let values = |versions: &[Value]| -> Vec<Value> {
        versions.iter().map(|v| v["value"].clone()).collect()
    };
    assert_eq!(
        values(truth["properties"]["dealstage"].as_array().unwrap()),
        values(&oldest_first)
    );

    let (_, token) = refresh(
        &emu,
        "/oauth/v1/token",
        &HubspotOptions::default().refresh_token,
    )
    .await;
    let access = token["access_token"].as_str().unwrap();
    let expired = control(&emu, "/__emulator/hubspot/expire-tokens", json!({})).await;
    assert_eq!(expired["expired"], 1);
    let (status, _, body) = call(Method::GET, url(&emu, "/crm/v3/owners/"), access, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["category"], "EXPIRED_AUTHENTICATION");
    emu.stop().await.unwrap();
}

#[tokio::test]
async fn membership_paging_survives_removals_between_pages() {
    let emu = start(roomy()).await;
    let (_, contacts) = get(&emu, "/crm/v3/objects/contacts", &[("limit", "6")]).await;
    let members = ids(&contacts);
    let (status, _) = send(
        &emu,
        Method::PUT,
        "/crm/v3/lists/102/memberships/add",
        json!(members),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let path = "/crm/v3/lists/102/memberships";
    let (_, first) = get(&emu, path, &[("limit", "2")]).await;
    let mut seen: Vec<String> = first["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|member| member["recordId"].as_str().unwrap().to_string())
        .collect();
    // Removing a member already read must not shift the next page.
    let (status, _) = send(
        &emu,
        Method::PUT,
        "/crm/v3/lists/102/memberships/remove",
        json!([seen[0]]),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let mut after = first["paging"]["next"]["after"]
        .as_str()
        .map(str::to_string);
    for _ in 0..10 {
        let Some(cursor) = after.take() else { break };
        let (_, page) = get(&emu, path, &[("limit", "2"), ("after", &cursor)]).await;
        seen.extend(
            page["results"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["recordId"].as_str().unwrap().to_string()),
        );
        after = page["paging"]["next"]["after"].as_str().map(str::to_string);
    }
    let mut expected = members.clone();
    expected.sort();
    seen.sort();
    assert_eq!(seen, expected, "every member once, none skipped");
    emu.stop().await.unwrap();
}
