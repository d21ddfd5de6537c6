//! HubSpot writes: batch updates of up to 100 records, static-list membership additions,
//! and tasks created with their association.
//!
//! A batch update fails as a whole when one input is invalid; the batch is then sent again
//! record by record, so the invalid record is refused with its own error and the others
//! are applied. A lifecycle stage that moves backward is cleared first, as HubSpot requires.
//! Creates go after the updates (a revert's task waits for the stage written back), one call
//! each through a client that never repeats a call by itself; a create that may have reached
//! HubSpot before is looked for among its record's associations first, which, unlike
//! search, are read consistently at once.

use std::collections::BTreeMap;

use reqwest::Method;
use serde_json::{json, Map, Value};

use super::{
    holds, precondition_failed, precondition_holds, read_value, settle_all, skip_found_creates,
    Association, Pending, WriteOp, WriteOutcome,
};
use crate::crm::{ApiClient, ApiRequest, CrmError};

/// Inputs one batch update may carry.
const BATCH_MAX: usize = 100;
/// Record ids one list-membership call carries.
const LIST_IDS_MAX: usize = 100;

/// Delivers `writes`; the answer has one outcome per write, by `index`. Creates go through
/// `single_shot`, which makes each call once.
pub(super) async fn deliver(
    api: &ApiClient,
    single_shot: &ApiClient,
    version: &str,
    writes: &[Pending<'_>],
) -> BTreeMap<usize, WriteOutcome> {
    let mut outcomes = BTreeMap::new();
    let mut updates: BTreeMap<&str, Vec<&Pending>> = BTreeMap::new();
    let mut lists: BTreeMap<&str, Vec<&Pending>> = BTreeMap::new();
    let mut creates: Vec<&Pending> = Vec::new();
    for w in writes {
        match w.op {
            WriteOp::Update { object, .. } => updates.entry(object).or_default().push(w),
            WriteOp::ListAdd { list, .. } => lists.entry(list).or_default().push(w),
            WriteOp::Create { .. } => creates.push(w),
        }
    }
    for (object, group) in updates {
        let group = hold_unless_preconditions(api, version, group, &mut outcomes).await;
        for chunk in group.chunks(BATCH_MAX) {
            update_batch(api, version, object, chunk, &mut outcomes).await;
        }
    }
    for (list, group) in lists {
        for chunk in group.chunks(LIST_IDS_MAX) {
            add_to_list(api, version, list, chunk, &mut outcomes).await;
        }
    }
    let creates = skip_found_creates(creates, &mut outcomes, async |op| {
        created_record(api, version, op).await
    })
    .await;
    for w in hold_unless_preconditions(api, version, creates, &mut outcomes).await {
        let outcome = create_one(single_shot, version, w.op).await;
        outcomes.insert(w.index, outcome);
    }
    outcomes
}

/// Writes with a precondition go ahead only if the record still holds its values (read one
/// record at a time: conditional writes are few, capped reverts); the others are refused
/// with what HubSpot holds, unless an earlier attempt at the same update already wrote its
/// values (a process killed before it recorded the answer): that update is done.
async fn hold_unless_preconditions<'p>(
    api: &ApiClient,
    version: &str,
    writes: Vec<&'p Pending<'p>>,
    outcomes: &mut BTreeMap<usize, WriteOutcome>,
) -> Vec<&'p Pending<'p>> {
    let mut ready = Vec::new();
    for w in writes {
        let Some(condition) = w.op.only_if() else {
            ready.push(w);
            continue;
        };
        let written = own_values(w);
        let mut names: Vec<&str> = condition.fields.keys().map(String::as_str).collect();
        names.extend(written.iter().flat_map(|f| f.keys().map(String::as_str)));
        names.sort_unstable();
        names.dedup();
        let path = format!(
            "{}/{}/{}?properties={}",
            base(version, "objects"),
            condition.object,
            condition.id,
            names.join(",")
        );
        let request = ApiRequest::get(path);
        match api.send(&request, read_value).await {
            Ok(reply) => {
                let current = reply.value.get("properties");
                if precondition_holds(condition, current) {
                    ready.push(w);
                } else if written.is_some_and(|fields| holds(current, fields)) {
                    let answer = json!({ "id": condition.id, "already_written": true });
                    outcomes.insert(w.index, WriteOutcome::Applied(answer));
                } else {
                    outcomes.insert(w.index, precondition_failed(condition, current));
                }
            }
            Err(err) => {
                outcomes.insert(w.index, WriteOutcome::from_call_error(&err));
            }
        }
    }
    ready
}

/// The values a retried update writes to the record its precondition reads, if it is one.
fn own_values<'p>(w: &'p Pending<'p>) -> Option<&'p Map<String, Value>> {
    match (w.op, w.op.only_if()) {
        (
            WriteOp::Update {
                object, id, fields, ..
            },
            Some(condition),
        ) if w.retried && *object == condition.object && *id == condition.id => Some(fields),
        _ => None,
    }
}

fn base(version: &str, family: &str) -> String {
    if version == "v3" {
        format!("/crm/v3/{family}")
    } else {
        format!("/crm/{family}/{version}")
    }
}

/// Clears what must be cleared, then writes every record's properties in one batch (or one
/// by one when the batch is refused). A record whose clear fails is not written; one whose
/// write fails after its clear says so in its outcome, since it is left without the value.
async fn update_batch(
    api: &ApiClient,
    version: &str,
    object: &str,
    chunk: &[&Pending<'_>],
    outcomes: &mut BTreeMap<usize, WriteOutcome>,
) {
    let path = format!("{}/{object}/batch/update", base(version, "objects"));
    let clearing: Vec<&Pending> = chunk
        .iter()
        .copied()
        .filter(|w| matches!(w.op, WriteOp::Update { clear_first, .. } if !clear_first.is_empty()))
        .collect();
    if !clearing.is_empty() {
        let inputs: Vec<Value> = clearing.iter().map(|w| clear_input(w.op)).collect();
        let request =
            ApiRequest::with_json(Method::POST, path.clone(), json!({ "inputs": inputs }));
        match api.send(&request, read_value).await {
            Ok(_) => {}
            Err(CrmError::Api { .. }) if clearing.len() > 1 => {
                // One bad record must not hold back the others: clear them one by one.
                for w in &clearing {
                    let cleared = patch_one(api, version, object, w.op, clear_input(w.op)).await;
                    if !matches!(cleared, WriteOutcome::Applied(_)) {
                        outcomes.insert(w.index, cleared);
                    }
                }
            }
            Err(err) => {
                settle_all(&clearing, &WriteOutcome::from_call_error(&err), outcomes);
            }
        }
    }
    let writing: Vec<&Pending> = chunk
        .iter()
        .copied()
        .filter(|w| !outcomes.contains_key(&w.index))
        .collect();
    if writing.is_empty() {
        return;
    }
    let inputs: Vec<Value> = writing.iter().map(|w| input(w.op)).collect();
    let request = ApiRequest::with_json(Method::POST, path, json!({ "inputs": inputs }));
    match api.send(&request, read_value).await {
        Ok(reply) => settle_batch(&reply.value, &writing, outcomes),
        Err(CrmError::Api { .. }) if writing.len() > 1 => {
            for w in &writing {
                let outcome = patch_one(api, version, object, w.op, input(w.op)).await;
                outcomes.insert(w.index, outcome);
            }
        }
        Err(err) => {
            settle_all(&writing, &WriteOutcome::from_call_error(&err), outcomes);
        }
    }
    for w in &writing {
        if let (WriteOp::Update { clear_first, .. }, Some(WriteOutcome::Refused { message, .. })) =
            (w.op, outcomes.get_mut(&w.index))
        {
            if !clear_first.is_empty() {
                message.push_str(&format!(
                    " ({} was cleared first and is now empty)",
                    clear_first.join(", ")
                ));
            }
        }
    }
}

/// The batch input that empties a record's `clear_first` properties.
fn clear_input(op: &WriteOp) -> Value {
    match op {
        WriteOp::Update {
            id, clear_first, ..
        } => {
            let properties: Map<String, Value> = clear_first
                .iter()
                .map(|name| (name.clone(), json!("")))
                .collect();
            json!({ "id": id, "properties": properties })
        }
        _ => Value::Null,
    }
}

fn input(op: &WriteOp) -> Value {
    match op {
        WriteOp::Update { id, fields, .. } => json!({ "id": id, "properties": fields }),
        _ => Value::Null,
    }
}

/// A 200 (or 207) batch answer: records in `results` are applied; ids named by an error
/// are refused with its category.
fn settle_batch(
    answer: &Value,
    chunk: &[&Pending<'_>],
    outcomes: &mut BTreeMap<usize, WriteOutcome>,
) {
    let results = answer["results"].as_array().cloned().unwrap_or_default();
    let errors = answer["errors"].as_array().cloned().unwrap_or_default();
    for w in chunk {
        let Some(id) = w.op.record_id() else { continue };
        let applied = results
            .iter()
            .find(|result| result["id"].as_str() == Some(id));
        let outcome = if let Some(result) = applied {
            WriteOutcome::Applied(result.clone())
        } else if let Some(error) = errors.iter().find(|error| names_id(error, id)) {
            WriteOutcome::Refused {
                code: error["category"]
                    .as_str()
                    .unwrap_or("UNKNOWN_ERROR")
                    .to_string(),
                message: error["message"].as_str().unwrap_or_default().to_string(),
            }
        } else {
            WriteOutcome::Refused {
                code: "OBJECT_NOT_FOUND".into(),
                message: format!("the batch answer does not mention record {id}"),
            }
        };
        outcomes.insert(w.index, outcome);
    }
}

fn names_id(error: &Value, id: &str) -> bool {
    error["context"]["ids"]
        .as_array()
        .is_some_and(|ids| ids.iter().any(|found| found.as_str() == Some(id)))
}

/// `PATCH /objects/{type}/{id}` with one batch input's properties: one record, its own error.
async fn patch_one(
    api: &ApiClient,
    version: &str,
    object: &str,
    op: &WriteOp,
    input: Value,
) -> WriteOutcome {
    let Some(id) = op.record_id() else {
        return WriteOutcome::Refused {
            code: "UNSUPPORTED".into(),
            message: "not an update".into(),
        };
    };
    let request = ApiRequest::with_json(
        Method::PATCH,
        format!("{}/{object}/{id}", base(version, "objects")),
        json!({ "properties": input["properties"] }),
    );
    match api.send(&request, read_value).await {
        Ok(reply) => WriteOutcome::Applied(reply.value),
        Err(err) => WriteOutcome::from_call_error(&err),
    }
}

/// `PUT /lists/{id}/memberships/add` with the record ids; ids the list already holds are
/// fine, ids HubSpot does not know are refused.
async fn add_to_list(
    api: &ApiClient,
    version: &str,
    list: &str,
    chunk: &[&Pending<'_>],
    outcomes: &mut BTreeMap<usize, WriteOutcome>,
) {
    let ids: Vec<&str> = chunk.iter().filter_map(|w| w.op.record_id()).collect();
    let request = ApiRequest::with_json(
        Method::PUT,
        format!("{}/{list}/memberships/add", base(version, "lists")),
        json!(ids),
    );
    let answer = match api.send(&request, read_value).await {
        Ok(reply) => reply.value,
        Err(err) => {
            settle_all(chunk, &WriteOutcome::from_call_error(&err), outcomes);
            return;
        }
    };
    let missing: Vec<&str> = answer["recordIdsMissing"]
        .as_array()
        .map(|ids| ids.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for w in chunk {
        let id = w.op.record_id().unwrap_or_default();
        let outcome = if missing.contains(&id) {
            WriteOutcome::Refused {
                code: "OBJECT_NOT_FOUND".into(),
                message: format!("list {list}: record {id} does not exist"),
            }
        } else {
            WriteOutcome::Applied(json!({ "listId": list, "recordId": id }))
        };
        outcomes.insert(w.index, outcome);
    }
}

/// `POST /objects/{type}` with the properties and the association: one record, its answer.
async fn create_one(api: &ApiClient, version: &str, op: &WriteOp) -> WriteOutcome {
    let WriteOp::Create {
        object,
        fields,
        associate_with,
        ..
    } = op
    else {
        return WriteOutcome::Refused {
            code: "UNSUPPORTED".into(),
            message: "not a create".into(),
        };
    };
    let associations: Vec<Value> = associate_with
        .iter()
        .map(|with| {
            json!({
                "to": { "id": with.id },
                "types": [{ "associationCategory": "HUBSPOT_DEFINED", "associationTypeId": with.type_id }],
            })
        })
        .collect();
    let request = ApiRequest::with_json(
        Method::POST,
        format!("{}/{object}", base(version, "objects")),
        json!({ "properties": fields, "associations": associations }),
    );
    match api.send(&request, read_value).await {
        Ok(reply) => WriteOutcome::Applied(reply.value),
        Err(err) => WriteOutcome::from_call_error(&err),
    }
}

/// The record an earlier attempt at `op` created, looked for among the associations of the
/// record it was made for: one with the `find_first` values created at or after
/// `created_after_ms`; `None` for a write that cannot be looked for.
async fn created_record(
    api: &ApiClient,
    version: &str,
    op: &WriteOp,
) -> Option<Result<Option<String>, CrmError>> {
    let WriteOp::Create {
        object,
        find_first: Some(find),
        created_after_ms,
        associate_with: Some(with),
        ..
    } = op
    else {
        return None;
    };
    Some(created_before(api, version, object, with, find, *created_after_ms).await)
}

/// The id of an `object` record associated with `with` that holds the `find` values and was
/// created at or after `after`, if there is one.
async fn created_before(
    api: &ApiClient,
    version: &str,
    object: &str,
    with: &Association,
    find: &Map<String, Value>,
    after: Option<i64>,
) -> Result<Option<String>, CrmError> {
    let ids = associated_ids(api, with, object).await?;
    let mut names: Vec<&str> = find.keys().map(String::as_str).collect();
    names.push("hs_createdate");
    for chunk in ids.chunks(BATCH_MAX) {
        let inputs: Vec<Value> = chunk.iter().map(|id| json!({ "id": id })).collect();
        let request = ApiRequest::with_json(
            Method::POST,
            format!("{}/{object}/batch/read", base(version, "objects")),
            json!({ "inputs": inputs, "properties": names }),
        );
        let reply = api.send(&request, read_value).await?;
        let results = reply.value["results"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let found = results.iter().find(|record| {
            let properties = &record["properties"];
            let created = properties["hs_createdate"]
                .as_str()
                .and_then(|text| chrono::DateTime::parse_from_rfc3339(text).ok())
                .map(|at| at.timestamp_millis());
            find.iter().all(|(name, value)| &properties[name] == value)
                && after.is_none_or(|after| created.is_some_and(|created| created >= after))
        });
        if let Some(record) = found {
            return Ok(record["id"].as_str().map(str::to_string));
        }
    }
    Ok(None)
}

/// Ids of the `object` records associated with `with`, through the v4 associations API
/// (every page: it answers up to 500 at a time).
async fn associated_ids(
    api: &ApiClient,
    with: &Association,
    object: &str,
) -> Result<Vec<String>, CrmError> {
    let path = format!(
        "/crm/v4/objects/{}/{}/associations/{object}",
        with.object, with.id
    );
    let mut ids = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut request = ApiRequest::get(path.clone()).param("limit", "500");
        if let Some(after) = &after {
            request = request.param("after", after);
        }
        let reply = api.send(&request, read_value).await?;
        for result in reply.value["results"].as_array().into_iter().flatten() {
            match &result["toObjectId"] {
                Value::Number(id) => ids.push(id.to_string()),
                Value::String(id) => ids.push(id.clone()),
                _ => {}
            }
        }
        after = reply.value["paging"]["next"]["after"]
            .as_str()
            .map(str::to_string);
        if after.is_none() {
            return Ok(ids);
        }
    }
}
