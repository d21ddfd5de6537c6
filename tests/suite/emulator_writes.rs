//! Writes to the emulated Salesforce org: single records, collections, composite, deletes,
//! validation errors, and the history rows writes leave.

use pipewarden::emulator::{self, EmulatorOptions, RunningEmulator, Scale};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use super::emulator::{access_token, control, url};

const V: &str = "/services/data/v62.0";

struct Org {
    emu: RunningEmulator,
    token: String,
}

impl Org {
    async fn start() -> Org {
        let options = EmulatorOptions {
            scale: Scale::Tiny,
            ..EmulatorOptions::default()
        };
        let emu = emulator::start("127.0.0.1:0".parse().unwrap(), options)
            .await
            .expect("emulator starts");
        let token = access_token(&emu).await;
        Org { emu, token }
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut request = reqwest::Client::new()
            .request(method, url(&self.emu, path))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap()
        };
        (status, body)
    }

    async fn query(&self, resource: &str, soql: &str) -> Value {
        let mut address = url::Url::parse(&url(&self.emu, &format!("{V}/{resource}"))).unwrap();
        address.query_pairs_mut().append_pair("q", soql);
        let response = reqwest::Client::new()
            .get(address)
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.unwrap()
    }

    async fn ids(&self, soql: &str) -> Vec<String> {
        let body = self.query("query", soql).await;
        body["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|record| record["Id"].as_str().unwrap().to_string())
            .collect()
    }

    async fn patch(&self, object: &str, id: &str, body: Value) -> (StatusCode, Value) {
        self.call(
            Method::PATCH,
            &format!("{V}/sobjects/{object}/{id}"),
            Some(body),
        )
        .await
    }

    async fn get(&self, object: &str, id: &str) -> (StatusCode, Value) {
        self.call(Method::GET, &format!("{V}/sobjects/{object}/{id}"), None)
            .await
    }

    async fn open_leads(&self, count: usize) -> Vec<String> {
        self.ids(&format!(
            "SELECT Id FROM Lead WHERE IsConverted = false ORDER BY Id LIMIT {count}"
        ))
        .await
    }

    async fn open_opportunity(&self) -> String {
        self.ids("SELECT Id FROM Opportunity WHERE IsClosed = false ORDER BY Id LIMIT 1")
            .await
            .remove(0)
    }
}

fn error_code(body: &Value) -> &str {
    body[0]["errorCode"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn a_lead_update_answers_204_and_leaves_a_history_row() {
    let org = Org::start().await;
    let lead = org.open_leads(1).await.remove(0);
    let (status, body) = org.patch("Lead", &lead, json!({"Status": "Nurture"})).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert_eq!(body, Value::Null, "an update answers with no body");
    let (_, record) = org.get("Lead", &lead).await;
    assert_eq!(record["Status"], "Nurture");
    let now = org.emu.clock().now_ms();
    let stamp = chrono::DateTime::parse_from_str(
        record["SystemModstamp"].as_str().unwrap(),
        "%Y-%m-%dT%H:%M:%S%.3f%z",
    )
    .unwrap();
    assert_eq!(
        stamp.timestamp_millis(),
        now,
        "the write moved SystemModstamp"
    );
    let history = org
        .query(
            "query",
            &format!("SELECT Field, OldValue, NewValue, CreatedById FROM LeadHistory WHERE LeadId = '{lead}' AND Field = 'Status' ORDER BY CreatedDate DESC LIMIT 1"),
        )
        .await;
    let row = &history["records"][0];
    assert_eq!(row["NewValue"], "Nurture", "{history}");
    assert!(row["OldValue"].is_string());
    org.emu.stop().await.unwrap();
}

#[tokio::test]
async fn validation_rules_and_field_checks_answer_with_the_real_codes() {
    let org = Org::start().await;
    let opportunity = org.open_opportunity().await;
    let (status, body) = org
        .patch(
            "Opportunity",
            &opportunity,
            json!({"StageName": "Closed Lost"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&body), "FIELD_CUSTOM_VALIDATION_EXCEPTION");
    assert_eq!(body[0]["fields"], json!(["Loss_Reason__c"]));
    let lead = org.open_leads(1).await.remove(0);
    let converted = org
        .ids("SELECT Id FROM Lead WHERE IsConverted = true LIMIT 1")
        .await
        .remove(0);
    let cases = [
        (
            "Opportunity",
            opportunity.as_str(),
            json!({"IsWon": true}),
            "INVALID_FIELD_FOR_INSERT_UPDATE",
        ),
        (
            "Opportunity",
            opportunity.as_str(),
            json!({"Colour__c": "red"}),
            "INVALID_FIELD",
        ),
        (
            "Opportunity",
            opportunity.as_str(),
            json!({"StageName": "Dreaming"}),
            "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
        ),
        (
            "Opportunity",
            opportunity.as_str(),
            json!({"Amount": "lots"}),
            "JSON_PARSER_ERROR",
        ),
        (
            "Lead",
            lead.as_str(),
            json!({"OwnerId": "not-an-id"}),
            "MALFORMED_ID",
        ),
        (
            "Lead",
            converted.as_str(),
            json!({"Status": "Nurture"}),
            "CANNOT_UPDATE_CONVERTED_LEAD",
        ),
    ];
    for (object, id, body, code) in cases {
        let (status, answer) = org.patch(object, id, body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        assert_eq!(error_code(&answer), code, "{body}: {answer}");
    }
    let missing = format!("{}AAAAAAAAA", &lead[..9]);
    let (status, answer) = org
        .patch("Lead", &missing, json!({"Status": "Nurture"}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
    let (_, unchanged) = org.get("Opportunity", &opportunity).await;
    assert_ne!(
        unchanged["StageName"], "Closed Lost",
        "refused writes change nothing"
    );
    org.emu.stop().await.unwrap();
}

#[tokio::test]
async fn closing_a_deal_derives_its_flags_and_writes_opportunity_history() {
    let org = Org::start().await;
    let opportunity = org.open_opportunity().await;
    let (_, before) = org.get("Opportunity", &opportunity).await;
    let (status, body) = org
        .patch(
            "Opportunity",
            &opportunity,
            json!({"StageName": "Closed Lost", "Loss_Reason__c": "Budget"}),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (_, after) = org.get("Opportunity", &opportunity).await;
    assert_eq!(after["IsClosed"], json!(true));
    assert_eq!(after["IsWon"], json!(false));
    assert_eq!(after["Probability"], json!(0.0));
    assert_eq!(after["ForecastCategory"], "Omitted");
    let history = org
        .query(
            "query",
            &format!("SELECT StageName, PrevAmount FROM OpportunityHistory WHERE OpportunityId = '{opportunity}' ORDER BY CreatedDate DESC LIMIT 1"),
        )
        .await;
    assert_eq!(
        history["records"][0]["StageName"], "Closed Lost",
        "{history}"
    );
    assert_eq!(history["records"][0]["PrevAmount"], before["Amount"]);
    let tracked = org
        .query(
            "query",
            &format!("SELECT Field, NewValue FROM OpportunityFieldHistory WHERE OpportunityId = '{opportunity}' AND Field = 'Loss_Reason__c'"),
        )
        .await;
    assert_eq!(tracked["records"][0]["NewValue"], "Budget", "{tracked}");
    org.emu.stop().await.unwrap();
}

#[tokio::test]
async fn a_written_record_stops_its_generated_life() {
    let org = Org::start().await;
    let lead = org.ids("SELECT Id FROM Lead WHERE Status = 'Open - Not Contacted' ORDER BY CreatedDate DESC LIMIT 1").await.remove(0);
    org.patch("Lead", &lead, json!({"Status": "Nurture"})).await;
    control(
        &org.emu,
        "/__emulator/clock/advance",
        json!({"by": "120days"}),
    )
    .await;
    let token = access_token(&org.emu).await;
    let org = Org { token, ..org };
    let (_, record) = org.get("Lead", &lead).await;
    assert_eq!(
        record["Status"], "Nurture",
        "generated activity no longer moves it"
    );
    org.emu.stop().await.unwrap();
}

#[tokio::test]
async fn creates_check_required_fields_and_campaign_membership_is_unique() {
    let org = Org::start().await;
    let (status, body) = org
        .call(
            Method::POST,
            &format!("{V}/sobjects/Lead"),
            Some(json!({"LastName": "Nguyen"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&body), "REQUIRED_FIELD_MISSING");
    assert_eq!(body[0]["message"], "Required fields are missing: [Company]");
    let (status, created) = org
        .call(
            Method::POST,
            &format!("{V}/sobjects/Lead/"),
            Some(json!({"LastName": "Nguyen", "Company": "Harbor Foods"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["success"], json!(true));
    let lead = created["id"].as_str().unwrap().to_string();
    assert!(lead.starts_with("00Q") && lead.len() == 18);
    let found = org
        .ids(&format!("SELECT Id FROM Lead WHERE Id = '{lead}'"))
        .await;
    assert_eq!(found, vec![lead.clone()], "a created record is queryable");
    let campaign = org.ids("SELECT Id FROM Campaign LIMIT 1").await.remove(0);
    let member = json!({"CampaignId": campaign, "LeadId": lead, "Status": "Sent"});
    let (status, _) = org
        .call(
            Method::POST,
            &format!("{V}/sobjects/CampaignMember"),
            Some(member.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, again) = org
        .call(
            Method::POST,
            &format!("{V}/sobjects/CampaignMember"),
            Some(member),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&again), "DUPLICATE_VALUE");
    assert_eq!(again[0]["message"], "Already a campaign member.");
    org.emu.stop().await.unwrap();
}

#[tokio::test]
async fn collections_report_per_record_and_all_or_none_rolls_back() {
    let org = Org::start().await;
    let leads = org.open_leads(3).await;
    let records = |status_of_third: &str| {
        json!([
            {"attributes": {"type": "Lead"}, "id": leads[0], "Status": "Nurture"},
            {"attributes": {"type": "Lead"}, "id": leads[1], "Status": "Nurture"},
            {"attributes": {"type": "Lead"}, "id": leads[2], "Status": status_of_third},
        ])
    };
    let (status, results) = org
        .call(
            Method::PATCH,
            &format!("{V}/composite/sobjects"),
            Some(json!({"allOrNone": true, "records": records("Sleeping")})),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "collections answer 200 even when items fail"
    );
    assert_eq!(
        results[0]["errors"][0]["statusCode"],
        "ALL_OR_NONE_OPERATION_ROLLED_BACK"
    );
    assert_eq!(
        results[2]["errors"][0]["statusCode"],
        "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"
    );
    let (_, first) = org.get("Lead", &leads[0]).await;
    assert_ne!(first["Status"], "Nurture", "rolled back");
    let (_, results) = org
        .call(
            Method::PATCH,
            &format!("{V}/composite/sobjects"),
            Some(json!({"allOrNone": false, "records": records("Sleeping")})),
        )
        .await;
    let outcomes: Vec<bool> = results
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["success"] == json!(true))
        .collect();
    assert_eq!(outcomes, [true, true, false]);
    assert_eq!(results[0]["id"], json!(leads[0]));
    let (_, first) = org.get("Lead", &leads[0]).await;
    assert_eq!(first["Status"], "Nurture");
    let too_many: Vec<Value> = (0..201)
        .map(|_| json!({"attributes": {"type": "Lead"}, "id": leads[0]}))
        .collect();
    let (status, body) = org
        .call(
            Method::PATCH,
            &format!("{V}/composite/sobjects"),
            Some(json!({"records": too_many})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&body), "EXCEEDED_ID_LIMIT");
    org.emu.stop().await.unwrap();
}

#[tokio::test]
async fn composite_resolves_references_and_halts_on_failure() {
    let org = Org::start().await;
    let request = |company: Option<&str>| {
        let mut lead = json!({"LastName": "Okafor"});
        if let Some(company) = company {
            lead["Company"] = json!(company);
        }
        json!({"allOrNone": true, "compositeRequest": [
            {"method": "POST", "url": format!("{V}/sobjects/Lead"), "referenceId": "newLead", "body": lead},
            {"method": "POST", "url": format!("{V}/sobjects/Task"), "referenceId": "followUp",
             "body": {"WhoId": "@{newLead.id}", "Subject": "Call back", "Status": "Not Started"}},
        ]})
    };
    let (status, body) = org
        .call(
            Method::POST,
            &format!("{V}/composite"),
            Some(request(Some("Iris Labs"))),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let responses = body["compositeResponse"].as_array().unwrap();
    assert_eq!(responses[0]["httpStatusCode"], 201, "{body}");
    assert_eq!(responses[1]["httpStatusCode"], 201, "{body}");
    let lead = responses[0]["body"]["id"].as_str().unwrap();
    let tasks = org
        .query(
            "query",
            &format!("SELECT Id, Subject FROM Task WHERE WhoId = '{lead}'"),
        )
        .await;
    assert_eq!(
        tasks["totalSize"], 1,
        "the reference resolved to the new lead"
    );
    let (_, body) = org
        .call(Method::POST, &format!("{V}/composite"), Some(request(None)))
        .await;
    let responses = body["compositeResponse"].as_array().unwrap();
    assert_eq!(responses[0]["httpStatusCode"], 400);
    assert_eq!(responses[1]["body"][0]["errorCode"], "PROCESSING_HALTED");
    org.emu.stop().await.unwrap();
}

#[tokio::test]
async fn deletes_go_to_the_recycle_bin_except_campaign_members() {
    let org = Org::start().await;
    let lead = org.open_leads(1).await.remove(0);
    let (status, _) = org
        .call(Method::DELETE, &format!("{V}/sobjects/Lead/{lead}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = org.get("Lead", &lead).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body), "ENTITY_IS_DELETED");
    let soql = format!("SELECT Id, IsDeleted FROM Lead WHERE Id = '{lead}'");
    assert_eq!(org.query("query", &soql).await["totalSize"], 0);
    let all = org.query("queryAll", &soql).await;
    assert_eq!(all["records"][0]["IsDeleted"], json!(true));
    let member = org
        .ids("SELECT Id FROM CampaignMember LIMIT 1")
        .await
        .remove(0);
    let (status, _) = org
        .call(
            Method::DELETE,
            &format!("{V}/sobjects/CampaignMember/{member}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let soql = format!("SELECT Id FROM CampaignMember WHERE Id = '{member}'");
    assert_eq!(
        org.query("queryAll", &soql).await["totalSize"],
        0,
        "hard-deleted: not even queryAll sees it"
    );
    org.emu.stop().await.unwrap();
}

#[tokio::test]
async fn replication_endpoints_list_updated_and_deleted_ids_in_a_window() {
    let org = Org::start().await;
    let leads = org.open_leads(2).await;
    org.patch("Lead", &leads[0], json!({"Status": "Nurture"}))
        .await;
    org.call(
        Method::DELETE,
        &format!("{V}/sobjects/Lead/{}", leads[1]),
        None,
    )
    .await;
    // The current minute is not covered yet: a later call starting at latestDateCovered is.
    control(&org.emu, "/__emulator/clock/advance", json!({"by": "2m"})).await;
    let now = chrono::DateTime::from_timestamp_millis(org.emu.clock().now_ms()).unwrap();
    let iso = |at: chrono::DateTime<chrono::Utc>| at.format("%Y-%m-%dT%H:%M:%S%:z").to_string();
    let window = |path: &str, days_back: i64| {
        let mut address =
            url::Url::parse(&url(&org.emu, &format!("{V}/sobjects/Lead/{path}/"))).unwrap();
        address
            .query_pairs_mut()
            .append_pair("start", &iso(now - chrono::Duration::days(days_back)))
            .append_pair("end", &iso(now + chrono::Duration::minutes(5)));
        address.to_string()
    };
    let fetch = |address: String| {
        let token = org.token.clone();
        async move {
            let response = reqwest::Client::new()
                .get(address)
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            (response.status(), response.json::<Value>().await.unwrap())
        }
    };
    let (status, updated) = fetch(window("updated", 1)).await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    let ids: Vec<&str> = updated["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap())
        .collect();
    assert!(ids.contains(&leads[0].as_str()), "{updated}");
    assert!(
        !ids.contains(&leads[1].as_str()),
        "deleted ids are not updated ids"
    );
    assert!(
        updated["latestDateCovered"]
            .as_str()
            .unwrap()
            .ends_with(":00.000+0000"),
        "whole minutes"
    );
    let (status, deleted) = fetch(window("deleted", 1)).await;
    assert_eq!(status, StatusCode::OK, "{deleted}");
    let records = deleted["deletedRecords"].as_array().unwrap();
    assert!(
        records
            .iter()
            .any(|r| r["id"] == json!(leads[1]) && r["deletedDate"].is_string()),
        "{deleted}"
    );
    let (status, refused) = fetch(window("deleted", 20)).await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "deleted reaches back 15 days only"
    );
    assert_eq!(error_code(&refused), "INVALID_REPLICATION_DATE");
    org.emu.stop().await.unwrap();
}

async fn script(org: &Org, changes: Value) -> (StatusCode, Value) {
    let response = reqwest::Client::new()
        .post(url(&org.emu, "/__emulator/salesforce/changes"))
        .json(&json!({ "changes": changes }))
        .send()
        .await
        .unwrap();
    (response.status(), response.json().await.unwrap())
}

async fn truth(org: &Org, path: &str) -> Value {
    reqwest::get(url(
        &org.emu,
        &format!("/__emulator/salesforce/truth/{path}"),
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap()
}

#[tokio::test]
async fn scripted_changes_act_as_reps_and_ground_truth_lists_every_version() {
    let org = Org::start().await;
    let opportunity = org.open_opportunity().await;
    let users = org.ids("SELECT Id FROM User ORDER BY Id").await;
    let rep_two = &users[3 + 2];
    let (status, body) = script(
        &org,
        json!([{"object": "Opportunity", "id": opportunity, "set": {"StageName": "Closed Lost"}, "by": {"kind": "rep", "number": 2}}]),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a rep's move skips API validation rules: {body}"
    );
    assert_eq!(body["ids"], json!([opportunity]));
    let (_, record) = org.get("Opportunity", &opportunity).await;
    assert_eq!(record["LastModifiedById"], json!(rep_two));
    let history = org
        .query("query", &format!("SELECT CreatedById FROM OpportunityHistory WHERE OpportunityId = '{opportunity}' ORDER BY CreatedDate DESC LIMIT 1"))
        .await;
    assert_eq!(history["records"][0]["CreatedById"], json!(rep_two));

    let truth = truth(&org, &format!("Opportunity/{opportunity}")).await;
    let versions = truth["versions"].as_array().unwrap();
    assert!(versions.len() >= 2, "{truth}");
    assert_eq!(versions[0]["at"], versions[0]["record"]["CreatedDate"]);
    assert_eq!(
        versions.last().unwrap()["record"]["StageName"],
        "Closed Lost"
    );
    let stamps: Vec<&str> = versions.iter().map(|v| v["at"].as_str().unwrap()).collect();
    assert!(
        stamps.windows(2).all(|pair| pair[0] < pair[1]),
        "{stamps:?}"
    );
    org.emu.stop().await.unwrap();
}

#[tokio::test]
async fn scripted_merges_leave_the_loser_in_the_bin_and_bad_scripts_change_nothing() {
    let org = Org::start().await;
    let leads = org.open_leads(2).await;
    let (status, body) = script(
        &org,
        json!([{"object": "Lead", "id": leads[1], "merge_into": leads[0]}]),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let loser = org
        .query(
            "queryAll",
            &format!(
                "SELECT IsDeleted, MasterRecordId FROM Lead WHERE Id = '{}'",
                leads[1]
            ),
        )
        .await;
    assert_eq!(loser["records"][0]["IsDeleted"], json!(true));
    assert_eq!(loser["records"][0]["MasterRecordId"], json!(leads[0]));

    let (status, body) = script(
        &org,
        json!([
            {"object": "Lead", "id": leads[0], "set": {"Status": "Nurture"}},
            {"object": "Lead", "id": leads[0], "set": {"Shoe_Size__c": 44}},
        ]),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("change 1: INVALID_FIELD"),
        "{body}"
    );
    let (_, master) = org.get("Lead", &leads[0]).await;
    assert_ne!(
        master["Status"], "Nurture",
        "a failing script applies nothing"
    );
    org.emu.stop().await.unwrap();
}

#[tokio::test]
async fn object_ground_truth_covers_every_record_query_all_sees() {
    let org = Org::start().await;
    let truth = truth(&org, "Opportunity").await;
    let all = org
        .query("queryAll", "SELECT COUNT() FROM Opportunity")
        .await;
    let records = truth["records"].as_array().unwrap();
    assert_eq!(records.len() as u64, all["totalSize"].as_u64().unwrap());
    assert!(records
        .iter()
        .all(|r| !r["versions"].as_array().unwrap().is_empty()));
    org.emu.stop().await.unwrap();
}

#[tokio::test]
async fn history_ground_truth_has_one_version_per_row() {
    let org = Org::start().await;
    let truth = truth(&org, "OpportunityHistory").await;
    let rows = truth["records"].as_array().unwrap();
    let all = org
        .query("queryAll", "SELECT COUNT() FROM OpportunityHistory")
        .await;
    assert_eq!(rows.len() as u64, all["totalSize"].as_u64().unwrap());
    assert!(rows
        .iter()
        .all(|row| row["versions"].as_array().unwrap().len() == 1 && row["id"].is_string()));
    org.emu.stop().await.unwrap();
}

#[tokio::test]
async fn review_regressions_ids_members_limits_and_scripts() {
    let org = Org::start().await;
    // Every id a query returns reads back, metadata included.
    let status_id = org.ids("SELECT Id FROM LeadStatus LIMIT 1").await.remove(0);
    let (status, body) = org.get("LeadStatus", &status_id).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["Id"], json!(status_id));
    // An id far past the generated funnel is simply not found.
    let (status, _) = org.get("Opportunity", "0065e0zzzzzzzzz").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // A deleted generated membership can be made again.
    let member = &org
        .query(
            "query",
            "SELECT Id, CampaignId, LeadId FROM CampaignMember LIMIT 1",
        )
        .await["records"][0];
    let id = member["Id"].as_str().unwrap();
    org.call(
        Method::DELETE,
        &format!("{V}/sobjects/CampaignMember/{id}"),
        None,
    )
    .await;
    let again = json!({"CampaignId": member["CampaignId"], "LeadId": member["LeadId"]});
    let (status, body) = org
        .call(
            Method::POST,
            &format!("{V}/sobjects/CampaignMember"),
            Some(again),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // Bulk API clients read their batch allocation from limits.
    let (_, limits) = org.call(Method::GET, &format!("{V}/limits"), None).await;
    assert_eq!(limits["DailyBulkApiBatches"]["Max"], 15_000);
    // A script naming a rep that does not exist is refused.
    let lead = org.open_leads(1).await.remove(0);
    let (status, body) = script(
        &org,
        json!([{"object": "Lead", "id": lead, "set": {"Status": "Nurture"}, "by": {"kind": "rep", "number": 999}}]),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"].as_str().unwrap().contains("no rep 999"),
        "{body}"
    );
    org.emu.stop().await.unwrap();
}

#[tokio::test]
async fn an_owner_change_leaves_an_id_row_and_a_name_row_like_generated_history() {
    let org = Org::start().await;
    let lead = org.open_leads(1).await.remove(0);
    let queue = org
        .ids("SELECT Id FROM Group WHERE Name = 'Nurture'")
        .await
        .remove(0);
    let (status, body) = org.patch("Lead", &lead, json!({"OwnerId": queue})).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let rows = org
        .query(
            "query",
            &format!("SELECT DataType, NewValue FROM LeadHistory WHERE LeadId = '{lead}' AND Field = 'Owner' ORDER BY CreatedDate DESC LIMIT 2"),
        )
        .await;
    let mut pairs: Vec<(String, String)> = rows["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            (
                row["DataType"].as_str().unwrap().to_string(),
                row["NewValue"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    pairs.sort();
    assert_eq!(
        pairs,
        [
            ("EntityId".to_string(), queue.clone()),
            ("Text".to_string(), "Nurture".to_string())
        ]
    );
    org.emu.stop().await.unwrap();
}

#[tokio::test]
async fn a_query_cursor_reads_its_later_pages_from_the_snapshot_it_opened() {
    let org = Org::start().await;
    let soql = "SELECT Id, Status FROM Lead WHERE IsConverted = false ORDER BY Id";
    let on_page_two = &org
        .query("query", &format!("{soql} LIMIT 1 OFFSET 200"))
        .await["records"][0];
    let target = on_page_two["Id"].as_str().unwrap().to_string();
    let mut address = url::Url::parse(&url(&org.emu, &format!("{V}/query"))).unwrap();
    address.query_pairs_mut().append_pair("q", soql);
    let first: Value = reqwest::Client::new()
        .get(address)
        .bearer_auth(&org.token)
        .header("Sforce-Query-Options", "batchSize=200")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // Written in the same simulated millisecond the query ran in, after it opened.
    org.patch("Lead", &target, json!({"Status": "Nurture"}))
        .await;
    let next = first["nextRecordsUrl"].as_str().unwrap().to_string();
    let (_, second) = org.call(Method::GET, &next, None).await;
    assert_eq!(second["records"][0]["Id"], json!(target));
    assert_eq!(
        second["records"][0]["Status"], on_page_two["Status"],
        "the cursor's snapshot holds"
    );
    let (_, now) = org.get("Lead", &target).await;
    assert_eq!(now["Status"], "Nurture");
    org.emu.stop().await.unwrap();
}
