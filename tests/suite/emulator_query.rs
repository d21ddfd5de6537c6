//! The emulated Salesforce org's data over real HTTP: SOQL, paging, locators, describe.

use std::collections::HashSet;

use pipewarden::emulator::{self, EmulatorOptions, RunningEmulator, SalesforceOptions, Scale};
use reqwest::StatusCode;
use serde_json::{json, Value};

use super::emulator::{access_token, control, get, url};

const V: &str = "/services/data/v62.0";

async fn start(scale: Scale, salesforce: SalesforceOptions) -> RunningEmulator {
    let options = EmulatorOptions {
        scale,
        salesforce,
        ..EmulatorOptions::default()
    };
    emulator::start("127.0.0.1:0".parse().unwrap(), options)
        .await
        .expect("emulator starts")
}

/// Runs `resource` (`query` or `queryAll`) and returns status and body.
async fn soql(
    emu: &RunningEmulator,
    token: &str,
    resource: &str,
    text: &str,
    batch: Option<usize>,
) -> (StatusCode, Value) {
    let mut address = url::Url::parse(&url(emu, &format!("{V}/{resource}"))).unwrap();
    address.query_pairs_mut().append_pair("q", text);
    let mut request = reqwest::Client::new().get(address).bearer_auth(token);
    if let Some(size) = batch {
        request = request.header("Sforce-Query-Options", format!("batchSize={size}"));
    }
    let response = request.send().await.unwrap();
    (response.status(), response.json().await.unwrap())
}

async fn json_get(emu: &RunningEmulator, path: &str, token: &str) -> (StatusCode, Value) {
    let response = get(emu, path, token).await;
    (response.status(), response.json().await.unwrap())
}

/// Follows `nextRecordsUrl` to the end; returns every record and the size of each page.
async fn drain(emu: &RunningEmulator, token: &str, first: Value) -> (Vec<Value>, Vec<usize>) {
    let mut records = Vec::new();
    let mut pages = Vec::new();
    let mut body = first;
    loop {
        let page = body["records"].as_array().unwrap().clone();
        pages.push(page.len());
        records.extend(page);
        if body["done"] == json!(true) {
            assert!(
                body.get("nextRecordsUrl").is_none(),
                "done pages have no next url"
            );
            return (records, pages);
        }
        let next = body["nextRecordsUrl"].as_str().unwrap().to_string();
        assert!(
            next.starts_with(&format!("{V}/query/")),
            "relative locator url: {next}"
        );
        let (status, next_body) = json_get(emu, &next, token).await;
        assert_eq!(status, StatusCode::OK, "{next_body}");
        body = next_body;
    }
}

fn error_code(body: &Value) -> &str {
    body[0]["errorCode"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn paging_splits_at_two_thousand_records_and_loses_none() {
    let emu = start(Scale::Small, SalesforceOptions::default()).await;
    let token = access_token(&emu).await;
    for (limit, expected_pages) in [
        (0, vec![0]),
        (1, vec![1]),
        (2000, vec![2000]),
        (2001, vec![2000, 1]),
        (4500, vec![2000, 2000, 500]),
    ] {
        let text = if limit == 0 {
            "SELECT Id FROM Lead WHERE Email = 'nobody@example.com'".to_string()
        } else {
            format!("SELECT Id FROM Lead ORDER BY Id LIMIT {limit}")
        };
        let (status, body) = soql(&emu, &token, "query", &text, None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(
            body["totalSize"],
            json!(limit),
            "totalSize on the first page"
        );
        let (records, pages) = drain(&emu, &token, body).await;
        assert_eq!(pages, expected_pages, "LIMIT {limit}");
        let ids: HashSet<&str> = records.iter().map(|r| r["Id"].as_str().unwrap()).collect();
        assert_eq!(ids.len(), limit, "every record once");
    }
    emu.stop().await.unwrap();
}

#[tokio::test]
async fn batch_size_header_is_honoured_within_salesforce_bounds() {
    let emu = start(Scale::Small, SalesforceOptions::default()).await;
    let token = access_token(&emu).await;
    let text = "SELECT Id, Name FROM Lead ORDER BY Id LIMIT 1100";
    let (_, body) = soql(&emu, &token, "query", text, Some(500)).await;
    let (_, pages) = drain(&emu, &token, body).await;
    assert_eq!(pages, vec![500, 500, 100]);
    let (_, body) = soql(&emu, &token, "query", text, Some(50)).await;
    let (_, pages) = drain(&emu, &token, body).await;
    assert_eq!(pages[0], 200, "batchSize below 200 is raised to 200");
    emu.stop().await.unwrap();
}

#[tokio::test]
async fn deleted_rows_appear_only_through_query_all() {
    let emu = start(Scale::Small, SalesforceOptions::default()).await;
    let token = access_token(&emu).await;
    let deleted = "SELECT Id, IsDeleted FROM Lead WHERE IsDeleted = true";
    let (_, live) = soql(&emu, &token, "query", deleted, None).await;
    let (_, all) = soql(&emu, &token, "queryAll", deleted, None).await;
    assert_eq!(
        live["totalSize"],
        json!(0),
        "query never returns deleted rows"
    );
    let in_bin = all["totalSize"].as_u64().unwrap();
    assert!(
        in_bin > 0,
        "the recycle bin holds recently deleted leads: {all}"
    );
    assert!(all["records"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["IsDeleted"] == json!(true)));
    let (_, count_live) = soql(&emu, &token, "query", "SELECT COUNT() FROM Lead", None).await;
    let (_, count_all) = soql(&emu, &token, "queryAll", "SELECT COUNT() FROM Lead", None).await;
    assert_eq!(
        count_all["totalSize"].as_u64().unwrap(),
        count_live["totalSize"].as_u64().unwrap() + in_bin
    );
    emu.stop().await.unwrap();
}

#[tokio::test]
async fn a_locator_belongs_to_the_session_that_opened_it() {
    let emu = start(Scale::Small, SalesforceOptions::default()).await;
    let first_token = access_token(&emu).await;
    let (_, body) = soql(&emu, &first_token, "query", "SELECT Id FROM Lead", None).await;
    let next = body["nextRecordsUrl"].as_str().unwrap().to_string();
    let second_token = access_token(&emu).await;
    let (status, refused) = json_get(&emu, &next, &second_token).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(&refused), "INVALID_SESSION_ID");
    let (status, page) = json_get(&emu, &next, &first_token).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    emu.stop().await.unwrap();
}

#[tokio::test]
async fn an_eleventh_open_locator_releases_the_oldest_and_idle_ones_expire() {
    let emu = start(Scale::Small, SalesforceOptions::default()).await;
    let token = access_token(&emu).await;
    let mut nexts = Vec::new();
    for _ in 0..11 {
        let (_, body) = soql(
            &emu,
            &token,
            "query",
            "SELECT Id FROM Lead LIMIT 2500",
            None,
        )
        .await;
        nexts.push(body["nextRecordsUrl"].as_str().unwrap().to_string());
    }
    let (status, body) = json_get(&emu, &nexts[0], &token).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&body), "INVALID_QUERY_LOCATOR");
    let (status, _) = json_get(&emu, &nexts[1], &token).await;
    assert_eq!(status, StatusCode::OK, "the second oldest is still open");
    control(&emu, "/__emulator/clock/advance", json!({"by": "16m"})).await;
    let (status, body) = json_get(&emu, &nexts[10], &token).await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "15 idle minutes end a locator"
    );
    assert_eq!(error_code(&body), "INVALID_QUERY_LOCATOR");
    emu.stop().await.unwrap();
}

#[tokio::test]
async fn wide_history_queries_time_out_and_narrow_windows_succeed() {
    let options = SalesforceOptions {
        query_timeout_rows: 50,
        ..SalesforceOptions::default()
    };
    let emu = start(Scale::Tiny, options).await;
    let token = access_token(&emu).await;
    let wide = "SELECT Id, StageName FROM OpportunityHistory";
    let (status, body) = soql(&emu, &token, "queryAll", wide, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&body), "QUERY_TIMEOUT");
    assert_eq!(
        body[0]["message"],
        "Your query request was running for too long."
    );
    let narrow = "SELECT Id FROM OpportunityHistory WHERE CreatedDate >= 2025-12-20T00:00:00Z";
    let (status, body) = soql(&emu, &token, "queryAll", narrow, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    emu.stop().await.unwrap();
}

/// A history query bounded by `CreatedDate <` / `<=` answers exactly the rows of the whole
/// history in its window, for generated parents and for parents a client created and changed
/// (the scan skips parents created after the window without building them).
#[tokio::test]
async fn history_windows_answer_exactly_the_rows_of_the_whole_history_in_them() {
    let emu = start(Scale::Tiny, SalesforceOptions::default()).await;
    let token = access_token(&emu).await;
    let create = json!({"object": "Lead", "by": {"kind": "rep", "number": 0},
        "create": {"LastName": "Late", "Company": "Late Co", "Status": "Open - Not Contacted"}});
    let ids = control(
        &emu,
        "/__emulator/salesforce/changes",
        json!({ "changes": [create] }),
    )
    .await;
    let lead = ids["ids"][0].as_str().unwrap().to_string();
    let change = json!({"object": "Lead", "id": lead, "by": {"kind": "rep", "number": 0},
        "set": {"Status": "Working - Contacted"}});
    control(
        &emu,
        "/__emulator/salesforce/changes",
        json!({ "changes": [change] }),
    )
    .await;
    let rows_of = |records: &[Value]| -> Vec<(String, String)> {
        records
            .iter()
            .map(|r| {
                (
                    r["CreatedDate"].as_str().unwrap().to_string(),
                    r["Id"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    for object in ["LeadHistory", "OpportunityHistory"] {
        let all = format!("SELECT Id, CreatedDate FROM {object} ORDER BY CreatedDate, Id");
        let (status, body) = soql(&emu, &token, "queryAll", &all, None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (every, _) = drain(&emu, &token, body).await;
        let every = rows_of(&every);
        assert!(every.len() > 100, "{object}: {}", every.len());
        // Windows in turn over the whole history, each bounded on both sides; the last ends
        // with the client's lead, changed last.
        let eighth = every.len() / 8;
        for k in 0..8 {
            let end = ((k + 1) * eighth).min(every.len() - 1);
            let (from, to) = (&every[k * eighth].0, &every[end].0);
            let literal = |at: &str| at.replace("+0000", "Z");
            for (op, inclusive) in [("<", false), ("<=", true)] {
                let window = format!(
                    "SELECT Id, CreatedDate FROM {object} WHERE CreatedDate >= {} AND CreatedDate {op} {} \
                     ORDER BY CreatedDate, Id",
                    literal(from),
                    literal(to)
                );
                let (status, body) = soql(&emu, &token, "queryAll", &window, None).await;
                assert_eq!(status, StatusCode::OK, "{body}");
                let (rows, _) = drain(&emu, &token, body).await;
                let expected: Vec<_> = every
                    .iter()
                    .filter(|(at, _)| at >= from && if inclusive { at <= to } else { at < to })
                    .cloned()
                    .collect();
                assert_eq!(rows_of(&rows), expected, "{object} {op} window {k}");
            }
        }
    }
    // The client's lead has its rows in the whole history.
    let (_, body) = soql(
        &emu,
        &token,
        "queryAll",
        &format!("SELECT Id FROM LeadHistory WHERE LeadId = '{lead}'"),
        None,
    )
    .await;
    assert!(body["totalSize"].as_u64().unwrap() >= 1, "{body}");
    emu.stop().await.unwrap();
}

#[tokio::test]
async fn soql_errors_carry_the_real_codes() {
    let emu = start(Scale::Tiny, SalesforceOptions::default()).await;
    let token = access_token(&emu).await;
    for (text, code) in [
        ("SELECT Id, Foo FROM Opportunity", "INVALID_FIELD"),
        ("SELECT Id FROM Widget__c", "INVALID_TYPE"),
        ("SELECT Id FRM Opportunity", "MALFORMED_QUERY"),
        (
            "SELECT Id FROM OpportunityFieldHistory WHERE OldValue = 'x'",
            "INVALID_FIELD",
        ),
    ] {
        let (status, body) = soql(&emu, &token, "query", text, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
        assert_eq!(error_code(&body), code, "{text}: {body}");
    }
    let (_, body) = soql(
        &emu,
        &token,
        "query",
        "SELECT Id, Foo FROM Opportunity",
        None,
    )
    .await;
    let message = body[0]["message"].as_str().unwrap();
    assert!(message.contains("ERROR at Row:1:Column:12"), "{message}");
    assert!(message.contains("No such column 'Foo' on entity 'Opportunity'"));
    emu.stop().await.unwrap();
}

#[tokio::test]
async fn parent_fields_nest_and_polymorphic_owners_say_name() {
    let emu = start(Scale::Tiny, SalesforceOptions::default()).await;
    let token = access_token(&emu).await;
    let text = "SELECT Id, Owner.Name, Account.Name, Account.Owner.Name FROM Opportunity LIMIT 5";
    let (status, body) = soql(&emu, &token, "query", text, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let first = &body["records"][0];
    let keys: Vec<&String> = first.as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        ["attributes", "Id", "Owner", "Account"],
        "select order kept"
    );
    assert_eq!(first["Owner"]["attributes"]["type"], "User");
    assert!(first["Owner"]["Name"].is_string());
    assert!(first["Account"]["Owner"]["Name"].is_string(), "{first}");
    let (_, leads) = soql(
        &emu,
        &token,
        "query",
        "SELECT Id, Owner.Name FROM Lead LIMIT 1",
        None,
    )
    .await;
    let owner = &leads["records"][0]["Owner"];
    assert_eq!(owner["attributes"]["type"], "Name", "{owner}");
    emu.stop().await.unwrap();
}

#[tokio::test]
async fn history_agrees_with_the_records_it_describes() {
    let emu = start(Scale::Tiny, SalesforceOptions::default()).await;
    let token = access_token(&emu).await;
    let (_, opportunities) = soql(
        &emu,
        &token,
        "query",
        "SELECT Id, StageName, Amount FROM Opportunity",
        None,
    )
    .await;
    let (_, history) = soql(
        &emu,
        &token,
        "query",
        "SELECT OpportunityId, StageName, Amount, CreatedDate FROM OpportunityHistory ORDER BY CreatedDate ASC",
        None,
    )
    .await;
    let records = opportunities["records"].as_array().unwrap();
    assert!(records.len() > 50, "tiny has about a hundred deals");
    let rows = history["records"].as_array().unwrap();
    for opportunity in records {
        let latest = rows
            .iter()
            .rfind(|row| row["OpportunityId"] == opportunity["Id"])
            .expect("every opportunity has a creation row");
        assert_eq!(
            latest["StageName"], opportunity["StageName"],
            "{opportunity}"
        );
        assert_eq!(latest["Amount"], opportunity["Amount"], "{opportunity}");
    }
    emu.stop().await.unwrap();
}

#[tokio::test]
async fn advancing_time_reveals_new_activity_and_bulk_jobs_share_a_modstamp() {
    let emu = start(Scale::Small, SalesforceOptions::default()).await;
    let token = access_token(&emu).await;
    let shared_stamp =
        "SELECT COUNT() FROM Opportunity WHERE SystemModstamp = 2026-01-01T02:00:00Z";
    let (_, body) = soql(&emu, &token, "query", shared_stamp, None).await;
    assert!(
        body["totalSize"].as_u64().unwrap() > 100,
        "a bulk job touched many rows: {body}"
    );
    let count = "SELECT COUNT() FROM Opportunity";
    let (_, before) = soql(&emu, &token, "query", count, None).await;
    control(&emu, "/__emulator/clock/advance", json!({"by": "30days"})).await;
    let token = access_token(&emu).await;
    let (_, after) = soql(&emu, &token, "query", count, None).await;
    assert!(
        after["totalSize"].as_u64() > before["totalSize"].as_u64(),
        "{before} → {after}"
    );
    let recent = "SELECT COUNT() FROM Opportunity WHERE SystemModstamp > 2026-01-05T09:00:00Z";
    let (_, changed) = soql(&emu, &token, "query", recent, None).await;
    assert!(changed["totalSize"].as_u64().unwrap() > 0);
    emu.stop().await.unwrap();
}

#[tokio::test]
async fn the_same_seed_serves_the_same_data() {
    let text = "SELECT Id, Name, StageName, Amount, CloseDate, SystemModstamp FROM Opportunity ORDER BY Id LIMIT 50";
    let mut answers = Vec::new();
    for _ in 0..2 {
        let emu = start(Scale::Tiny, SalesforceOptions::default()).await;
        let token = access_token(&emu).await;
        answers.push(soql(&emu, &token, "query", text, None).await.1);
        emu.stop().await.unwrap();
    }
    assert_eq!(answers[0], answers[1]);
}

#[tokio::test]
async fn describe_and_record_reads_follow_the_schema() {
    let emu = start(Scale::Tiny, SalesforceOptions::default()).await;
    let token = access_token(&emu).await;
    let (status, global) = json_get(&emu, &format!("{V}/sobjects"), &token).await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = global["sobjects"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["queryable"] == json!(true))
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"OpportunityHistory") && names.contains(&"LeadStatus"),
        "{names:?}"
    );
    let (_, describe) = json_get(
        &emu,
        &format!("{V}/sobjects/OpportunityFieldHistory/describe"),
        &token,
    )
    .await;
    let old_value = describe["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "OldValue")
        .unwrap();
    assert_eq!(old_value["filterable"], json!(false));
    assert_eq!(old_value["type"], "anyType");
    let (_, opportunities) = soql(
        &emu,
        &token,
        "query",
        "SELECT Id, Name FROM Opportunity LIMIT 1",
        None,
    )
    .await;
    let id = opportunities["records"][0]["Id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, by_long_id) =
        json_get(&emu, &format!("{V}/sobjects/Opportunity/{id}"), &token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(by_long_id["Name"], opportunities["records"][0]["Name"]);
    assert!(
        by_long_id.get("Budget__c").is_some(),
        "custom fields are read too"
    );
    let (status, by_short_id) = json_get(
        &emu,
        &format!("{V}/sobjects/Opportunity/{}", &id[..15]),
        &token,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        by_short_id["Id"],
        json!(id),
        "the API answers with 18-character ids"
    );
    let (status, body) =
        json_get(&emu, &format!("{V}/sobjects/Opportunity/nonsense"), &token).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body), "NOT_FOUND");
    emu.stop().await.unwrap();
}

async fn bulk(
    emu: &RunningEmulator,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .request(method, url(emu, &format!("{V}/jobs/query{path}")))
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn bulk_query_jobs_poll_to_completion_and_page_csv_by_locator() {
    use reqwest::Method;
    let emu = start(Scale::Small, SalesforceOptions::default()).await;
    let token = access_token(&emu).await;
    let text = "SELECT Id, Name, StageName, Owner.Name FROM Opportunity";
    let created: Value = bulk(
        &emu,
        &token,
        Method::POST,
        "",
        Some(json!({"operation": "queryAll", "query": text})),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(created["state"], "UploadComplete", "{created}");
    assert_eq!(created["object"], "Opportunity");
    let job = created["id"].as_str().unwrap().to_string();
    assert!(job.starts_with("750"));
    let early = bulk(&emu, &token, Method::GET, &format!("/{job}/results"), None).await;
    assert_eq!(
        early.status(),
        StatusCode::BAD_REQUEST,
        "no results before the job completes"
    );
    let mut states = Vec::new();
    for _ in 0..2 {
        let info: Value = bulk(&emu, &token, Method::GET, &format!("/{job}"), None)
            .await
            .json()
            .await
            .unwrap();
        states.push(info["state"].as_str().unwrap().to_string());
    }
    assert_eq!(states, ["InProgress", "JobComplete"]);

    let mut locator: Option<String> = None;
    let mut rows = 0;
    let mut chunks = 0;
    loop {
        let query = match &locator {
            Some(locator) => format!("/{job}/results?maxRecords=2000&locator={locator}"),
            None => format!("/{job}/results?maxRecords=2000"),
        };
        let response = bulk(&emu, &token, Method::GET, &query, None).await;
        assert_eq!(response.status(), StatusCode::OK);
        let next = response.headers()["Sforce-Locator"]
            .to_str()
            .unwrap()
            .to_string();
        let count: usize = response.headers()["Sforce-NumberOfRecords"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let csv = response.text().await.unwrap();
        let mut lines = csv.lines();
        assert_eq!(
            lines.next(),
            Some("\"Id\",\"Name\",\"StageName\",\"Owner.Name\"")
        );
        assert_eq!(lines.count(), count);
        rows += count;
        chunks += 1;
        if next == "null" {
            break;
        }
        locator = Some(next);
    }
    let (_, all) = soql(
        &emu,
        &token,
        "queryAll",
        "SELECT COUNT() FROM Opportunity",
        None,
    )
    .await;
    assert_eq!(
        rows as u64,
        all["totalSize"].as_u64().unwrap(),
        "a queryAll job holds every row"
    );
    assert!(chunks > 1, "small has more than 2,000 opportunities");

    let deleted = bulk(&emu, &token, Method::DELETE, &format!("/{job}"), None).await;
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    let gone = bulk(&emu, &token, Method::GET, &format!("/{job}"), None).await;
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);
    let refused: Value = bulk(
        &emu,
        &token,
        Method::POST,
        "",
        Some(json!({"operation": "query", "query": "SELECT COUNT() FROM Lead"})),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(error_code(&refused), "INVALIDJOB");
    emu.stop().await.unwrap();
}

async fn create_lead_job(emu: &RunningEmulator, token: &str) -> String {
    let created: Value = bulk(
        emu,
        token,
        reqwest::Method::POST,
        "",
        Some(json!({"operation": "query", "query": "SELECT Id FROM Lead"})),
    )
    .await
    .json()
    .await
    .unwrap();
    created["id"].as_str().unwrap().to_string()
}

async fn job_info(emu: &RunningEmulator, token: &str, job: &str) -> Value {
    bulk(emu, token, reqwest::Method::GET, &format!("/{job}"), None)
        .await
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_bulk_job_told_to_fail_ends_failed_with_its_message_and_results_need_its_version() {
    use reqwest::Method;
    let emu = start(Scale::Tiny, SalesforceOptions::default()).await;
    let token = access_token(&emu).await;
    let message = "Failed to process query: the query was retried more than 15 times";
    control(
        &emu,
        "/__emulator/salesforce/bulk/fail-next",
        json!({"error_message": message}),
    )
    .await;
    let failing = create_lead_job(&emu, &token).await;
    let mut states = Vec::new();
    let mut info = Value::Null;
    for _ in 0..3 {
        info = job_info(&emu, &token, &failing).await;
        states.push(info["state"].as_str().unwrap().to_string());
    }
    assert_eq!(states, ["InProgress", "Failed", "Failed"]);
    assert_eq!(info["errorMessage"], message);
    let results = bulk(
        &emu,
        &token,
        Method::GET,
        &format!("/{failing}/results"),
        None,
    )
    .await;
    assert_eq!(
        results.status(),
        StatusCode::BAD_REQUEST,
        "a failed job has no results"
    );

    let next = create_lead_job(&emu, &token).await;
    job_info(&emu, &token, &next).await;
    let done = job_info(&emu, &token, &next).await;
    assert_eq!(done["state"], "JobComplete", "only the next job fails");
    assert_eq!(done["apiVersion"], 62.0);
    let other_version = reqwest::Client::new()
        .get(url(
            &emu,
            &format!("/services/data/v61.0/jobs/query/{next}/results"),
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(other_version.status(), StatusCode::CONFLICT);
    let same_version = bulk(&emu, &token, Method::GET, &format!("/{next}/results"), None).await;
    assert_eq!(same_version.status(), StatusCode::OK);

    let limits: Value = reqwest::Client::new()
        .get(url(&emu, &format!("{V}/limits")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(limits["DailyBulkV2QueryJobs"]["Max"], 10_000);
    assert_eq!(limits["DailyBulkV2QueryJobs"]["Remaining"], 10_000 - 2);
    emu.stop().await.unwrap();
}
