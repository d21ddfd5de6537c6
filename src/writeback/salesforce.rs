//! Salesforce writes through sObject Collections: up to 200 records per call, `allOrNone`
//! false so one record's validation error leaves the others applied.

use std::collections::BTreeMap;

use reqwest::Method;
use serde_json::{json, Value};

use super::{
    precondition_failed, precondition_holds, read_value, settle_all, skip_found_creates, Pending,
    WriteOp, WriteOutcome,
};
use crate::crm::salesforce::soql_datetime;
use crate::crm::{ApiClient, ApiRequest, CrmError};

/// Records one collections call may carry.
const COLLECTION_MAX: usize = 200;
/// Ids one recovery query names (a SOQL statement stays far below its length limit).
const IDS_PER_QUERY: usize = 200;

/// Delivers `writes`; the answer has one outcome per write, by `index`. Creates go through
/// `single_shot`, a client that never repeats a call by itself: a create whose answer was
/// lost must be looked for before it is sent again, which only the outbox's next attempt does.
pub(super) async fn deliver(
    api: &ApiClient,
    single_shot: &ApiClient,
    version: &str,
    writes: &[Pending<'_>],
) -> BTreeMap<usize, WriteOutcome> {
    let mut outcomes = BTreeMap::new();
    let (updates, creates): (Vec<&Pending>, Vec<&Pending>) = writes
        .iter()
        .filter(|w| !matches!(w.op, WriteOp::ListAdd { .. }))
        .partition(|w| matches!(w.op, WriteOp::Update { .. }));
    for w in writes {
        if matches!(w.op, WriteOp::ListAdd { .. }) {
            outcomes.insert(
                w.index,
                WriteOutcome::Refused {
                    code: "UNSUPPORTED".into(),
                    message: "static lists are a HubSpot action".into(),
                },
            );
        }
    }
    let updates = skip_already_written(api, version, updates, &mut outcomes).await;
    let updates = hold_unless_preconditions(api, version, updates, &mut outcomes).await;
    for auto_assign in [false, true] {
        let group: Vec<&Pending> = updates
            .iter()
            .copied()
            .filter(|w| matches!(w.op, WriteOp::Update { auto_assign: a, .. } if *a == auto_assign))
            .collect();
        // A call that runs assignment rules is made once: repeating it could reassign.
        let client = if auto_assign { single_shot } else { api };
        for chunk in group.chunks(COLLECTION_MAX) {
            update_collection(client, version, chunk, auto_assign, &mut outcomes).await;
        }
    }
    let creates = skip_found_creates(creates, &mut outcomes, async |op| {
        created_record(api, version, op).await
    })
    .await;
    let creates = hold_unless_preconditions(api, version, creates, &mut outcomes).await;
    for chunk in creates.chunks(COLLECTION_MAX) {
        create_collection(single_shot, version, chunk, &mut outcomes).await;
    }
    outcomes
}

/// `PATCH composite/sobjects`: one record per write, results in request order.
async fn update_collection(
    api: &ApiClient,
    version: &str,
    chunk: &[&Pending<'_>],
    auto_assign: bool,
    outcomes: &mut BTreeMap<usize, WriteOutcome>,
) {
    let records: Vec<Value> = chunk
        .iter()
        .map(|w| {
            let WriteOp::Update {
                object, id, fields, ..
            } = w.op
            else {
                unreachable!("only updates are grouped here")
            };
            let mut record = fields.clone();
            record.insert("attributes".into(), json!({ "type": object }));
            record.insert("id".into(), json!(id));
            Value::Object(record)
        })
        .collect();
    let mut request = ApiRequest::with_json(
        Method::PATCH,
        format!("/services/data/{version}/composite/sobjects"),
        json!({ "allOrNone": false, "records": records }),
    );
    // Assignment rules run on an API update only when the header asks for them.
    request = request.header(
        "Sforce-Auto-Assign",
        if auto_assign { "TRUE" } else { "FALSE" },
    );
    settle_collection(api, &request, chunk, false, outcomes).await;
}

/// `POST composite/sobjects`: creates, results in request order.
async fn create_collection(
    api: &ApiClient,
    version: &str,
    chunk: &[&Pending<'_>],
    outcomes: &mut BTreeMap<usize, WriteOutcome>,
) {
    let records: Vec<Value> = chunk
        .iter()
        .map(|w| {
            let WriteOp::Create { object, fields, .. } = w.op else {
                unreachable!("only creates are grouped here")
            };
            let mut record = fields.clone();
            record.insert("attributes".into(), json!({ "type": object }));
            Value::Object(record)
        })
        .collect();
    let request = ApiRequest::with_json(
        Method::POST,
        format!("/services/data/{version}/composite/sobjects"),
        json!({ "allOrNone": false, "records": records }),
    )
    .header("Sforce-Auto-Assign", "FALSE");
    settle_collection(api, &request, chunk, true, outcomes).await;
}

/// Sends a collections call and gives each write its result.
async fn settle_collection(
    api: &ApiClient,
    request: &ApiRequest,
    chunk: &[&Pending<'_>],
    creating: bool,
    outcomes: &mut BTreeMap<usize, WriteOutcome>,
) {
    let results = match api.send(request, read_value).await {
        Ok(reply) => reply.value,
        Err(err) => {
            settle_all(chunk, &WriteOutcome::from_call_error(&err), outcomes);
            return;
        }
    };
    let results = results.as_array().cloned().unwrap_or_default();
    for (position, w) in chunk.iter().enumerate() {
        let outcome = match results.get(position) {
            Some(result) if result["success"] == Value::Bool(true) => {
                WriteOutcome::Applied(result.clone())
            }
            Some(result) => item_error(result, creating && duplicate_ok(w.op)),
            None => WriteOutcome::Retry(format!(
                "{} answered {} results for {} records",
                request.describe(),
                results.len(),
                chunk.len()
            )),
        };
        outcomes.insert(w.index, outcome);
    }
}

fn duplicate_ok(op: &WriteOp) -> bool {
    matches!(
        op,
        WriteOp::Create {
            duplicate_ok: true,
            ..
        }
    )
}

/// A collections item error (`statusCode`, not `errorCode` as elsewhere).
fn item_error(result: &Value, duplicate_ok: bool) -> WriteOutcome {
    let error = &result["errors"][0];
    let code = error["statusCode"]
        .as_str()
        .or_else(|| error["errorCode"].as_str())
        .unwrap_or("UNKNOWN_ERROR")
        .to_string();
    let message = error["message"].as_str().unwrap_or_default().to_string();
    if duplicate_ok && code == "DUPLICATE_VALUE" {
        return WriteOutcome::Applied(
            json!({ "success": true, "already_existed": true, "message": message }),
        );
    }
    if code == "UNABLE_TO_LOCK_ROW" {
        return WriteOutcome::Retry(format!("{code}: {message}"));
    }
    WriteOutcome::Refused { code, message }
}

/// Updates an earlier attempt may have delivered are compared with the CRM first; those
/// already holding their values are done without writing again.
async fn skip_already_written<'p>(
    api: &ApiClient,
    version: &str,
    updates: Vec<&'p Pending<'p>>,
    outcomes: &mut BTreeMap<usize, WriteOutcome>,
) -> Vec<&'p Pending<'p>> {
    let mut by_object: BTreeMap<(&str, Vec<&str>), Vec<&Pending>> = BTreeMap::new();
    let mut fresh = Vec::new();
    for w in updates {
        match w.op {
            WriteOp::Update {
                fields,
                auto_assign: true,
                ..
            } if w.retried && fields.is_empty() => {
                // Nothing shows whether the lost call ran the rules; running them again could
                // hand the record to another owner, so a person decides.
                outcomes.insert(
                    w.index,
                    WriteOutcome::Refused {
                        code: "UNCONFIRMED_ASSIGNMENT".into(),
                        message: "the answer to the assignment-rule update was lost; the rules \
                                  are not run twice (check the record's owner)"
                            .into(),
                    },
                );
            }
            WriteOp::Update { object, fields, .. } if w.retried && !fields.is_empty() => {
                let names: Vec<&str> = fields.keys().map(String::as_str).collect();
                by_object
                    .entry((object.as_str(), names))
                    .or_default()
                    .push(w);
            }
            _ => fresh.push(w),
        }
    }
    for ((object, names), group) in by_object {
        for chunk in group.chunks(IDS_PER_QUERY) {
            let ids: Vec<String> = chunk
                .iter()
                .filter_map(|w| w.op.record_id())
                .map(soql_string)
                .collect();
            let current = match current_values(api, version, object, &names, &ids).await {
                Ok(rows) => rows,
                Err(err) => {
                    settle_all(chunk, &WriteOutcome::from_call_error(&err), outcomes);
                    continue;
                }
            };
            for w in chunk {
                let WriteOp::Update { id, fields, .. } = w.op else {
                    continue;
                };
                let row = current
                    .iter()
                    .find(|row| row["Id"].as_str().is_some_and(|found| same_id(found, id)));
                let done = row.is_some_and(|row| {
                    fields
                        .iter()
                        .all(|(name, value)| row.get(name) == Some(value))
                });
                if done {
                    outcomes.insert(
                        w.index,
                        WriteOutcome::Applied(
                            json!({ "id": id, "success": true, "already_applied": true }),
                        ),
                    );
                } else {
                    fresh.push(w);
                }
            }
        }
    }
    fresh.sort_by_key(|w| w.index);
    fresh
}

/// The current values of `names` on the records `ids` (SOQL literals) of `object`.
async fn current_values(
    api: &ApiClient,
    version: &str,
    object: &str,
    names: &[&str],
    ids: &[String],
) -> Result<Vec<Value>, CrmError> {
    let soql = format!(
        "SELECT Id, {} FROM {object} WHERE Id IN ({})",
        names.join(", "),
        ids.join(", ")
    );
    query_rows(api, version, &soql).await
}

/// Writes with a precondition go ahead only if the record still holds its values (one query
/// per object and field list); the others are refused with what the CRM holds.
async fn hold_unless_preconditions<'p>(
    api: &ApiClient,
    version: &str,
    writes: Vec<&'p Pending<'p>>,
    outcomes: &mut BTreeMap<usize, WriteOutcome>,
) -> Vec<&'p Pending<'p>> {
    let mut by_object: BTreeMap<(&str, Vec<&str>), Vec<&Pending>> = BTreeMap::new();
    let mut ready = Vec::new();
    for w in writes {
        match w.op.only_if() {
            Some(condition) => {
                let names: Vec<&str> = condition.fields.keys().map(String::as_str).collect();
                by_object
                    .entry((condition.object.as_str(), names))
                    .or_default()
                    .push(w);
            }
            None => ready.push(w),
        }
    }
    for ((object, names), group) in by_object {
        for chunk in group.chunks(IDS_PER_QUERY) {
            let ids: Vec<String> = chunk
                .iter()
                .filter_map(|w| w.op.only_if().map(|c| soql_string(&c.id)))
                .collect();
            let current = match current_values(api, version, object, &names, &ids).await {
                Ok(rows) => rows,
                Err(err) => {
                    settle_all(chunk, &WriteOutcome::from_call_error(&err), outcomes);
                    continue;
                }
            };
            for w in chunk {
                let Some(condition) = w.op.only_if() else {
                    continue;
                };
                let row = current.iter().find(|row| {
                    row["Id"]
                        .as_str()
                        .is_some_and(|found| same_id(found, &condition.id))
                });
                if precondition_holds(condition, row) {
                    ready.push(w);
                } else {
                    outcomes.insert(w.index, precondition_failed(condition, row));
                }
            }
        }
    }
    ready.sort_by_key(|w| w.index);
    ready
}

/// The Task or CampaignMember an earlier attempt at `op` created: one with the `find_first`
/// values created at or after `created_after_ms`; `None` for a write that cannot be looked for.
async fn created_record(
    api: &ApiClient,
    version: &str,
    op: &WriteOp,
) -> Option<Result<Option<String>, CrmError>> {
    let WriteOp::Create {
        object,
        find_first: Some(find),
        created_after_ms,
        ..
    } = op
    else {
        return None;
    };
    let mut conditions: Vec<String> = find
        .iter()
        .map(|(name, value)| {
            let text = match value {
                Value::String(text) => soql_string(text),
                other => other.to_string(),
            };
            format!("{name} = {text}")
        })
        .collect();
    if let Some(after) = created_after_ms {
        conditions.push(format!("CreatedDate >= {}", soql_datetime(*after)));
    }
    let soql = format!(
        "SELECT Id FROM {object} WHERE {} ORDER BY CreatedDate LIMIT 1",
        conditions.join(" AND ")
    );
    Some(query_rows(api, version, &soql).await.map(|rows| {
        rows.first()
            .and_then(|row| row["Id"].as_str())
            .map(str::to_string)
    }))
}

async fn query_rows(api: &ApiClient, version: &str, soql: &str) -> Result<Vec<Value>, CrmError> {
    let request = ApiRequest::get(format!("/services/data/{version}/query")).param("q", soql);
    let reply = api.send(&request, read_value).await?;
    Ok(reply.value["records"]
        .as_array()
        .cloned()
        .unwrap_or_default())
}

/// A SOQL string literal: backslashes and quotes escaped.
fn soql_string(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// 15- and 18-character ids of one record compare equal.
fn same_id(a: &str, b: &str) -> bool {
    a.get(..15) == b.get(..15)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soql_literals_escape_quotes() {
        assert_eq!(soql_string("O'Brien \\ co"), "'O\\'Brien \\\\ co'");
    }

    #[test]
    fn a_duplicate_membership_is_done_but_a_validation_error_is_not() {
        let duplicate = json!({"success": false, "errors": [{"statusCode": "DUPLICATE_VALUE", "message": "Already a campaign member."}]});
        assert!(matches!(
            item_error(&duplicate, true),
            WriteOutcome::Applied(_)
        ));
        assert!(matches!(
            item_error(&duplicate, false),
            WriteOutcome::Refused { .. }
        ));
        let invalid = json!({"success": false, "errors": [{"statusCode": "FIELD_CUSTOM_VALIDATION_EXCEPTION", "message": "no"}]});
        assert_eq!(
            item_error(&invalid, true),
            WriteOutcome::Refused {
                code: "FIELD_CUSTOM_VALIDATION_EXCEPTION".into(),
                message: "no".into()
            }
        );
    }
}
