//! Lists v3 (segments): a few predefined contact lists and their memberships.
//!
//! Only `MANUAL` and `SNAPSHOT` lists take membership changes; the response key
//! `recordsIdsAdded` is misspelt in HubSpot's own API and kept so.

use std::collections::BTreeMap;
use std::ops::Bound::{Excluded, Unbounded};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde_json::{json, Value};

use super::objects::with_view;
use super::records::PortalView;
use super::schema::ObjectType;
use super::{error, iso, validation_error, Refusal};
use crate::emulator::Shared;
use crate::record::Millis;

const PREFIXES: &[&str] = &["/crm/v3/lists", "/crm/lists/2026-03"];
const MEMBERSHIP_PAGE_DEFAULT: usize = 100;
const MEMBERSHIP_PAGE_MAX: usize = 250;

/// A predefined contact list.
pub(crate) struct ListDef {
    pub id: u64,
    pub name: &'static str,
    pub processing_type: &'static str,
}

/// The portal's lists: the two static ones pipewarden's lead recycling fills, and a
/// dynamic one whose membership only its filters decide.
pub(crate) const LISTS: &[ListDef] = &[
    ListDef {
        id: 101,
        name: "Nurture",
        processing_type: "MANUAL",
    },
    ListDef {
        id: 102,
        name: "Recycled Leads",
        processing_type: "MANUAL",
    },
    ListDef {
        id: 103,
        name: "All Marketing Qualified Leads",
        processing_type: "DYNAMIC",
    },
];

pub(crate) fn routes() -> Router<Arc<Shared>> {
    let mut router = Router::new();
    for prefix in PREFIXES {
        router = router
            .route(&format!("{prefix}/{{list}}"), get(list))
            .route(&format!("{prefix}/{{list}}/memberships"), get(memberships))
            .route(&format!("{prefix}/{{list}}/memberships/add"), put(add))
            .route(
                &format!("{prefix}/{{list}}/memberships/remove"),
                put(remove),
            )
            .route(
                &format!("{prefix}/{{list}}/memberships/add-and-remove"),
                put(add_and_remove),
            );
    }
    router
}

fn find_list(id: &str) -> Result<&'static ListDef, Refusal> {
    id.parse::<u64>()
        .ok()
        .and_then(|id| LISTS.iter().find(|list| list.id == id))
        .ok_or_else(|| {
            error(
                StatusCode::NOT_FOUND,
                "OBJECT_NOT_FOUND",
                &format!("List does not exist with ID {id}."),
            )
            .into()
        })
}

async fn list(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let list = match find_list(&id) {
        Ok(list) => list,
        Err(refused) => return refused.into_response(),
    };
    let size = shared
        .hubspot
        .lock()
        .memberships
        .get(&list.id)
        .map_or(0, |members| members.len());
    let origin = iso(shared.funnel.origin());
    Json(json!({
        "list": {
            "listId": list.id.to_string(),
            "name": list.name,
            "objectTypeId": ObjectType::Contacts.type_id(),
            "processingType": list.processing_type,
            "processingStatus": "COMPLETE",
            "listVersion": 1,
            "size": size,
            "createdAt": origin,
            "updatedAt": origin,
        }
    }))
    .into_response()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Change {
    Add,
    Remove,
    AddAndRemove,
}

fn ids_of(value: &Value) -> Vec<String> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|id| match id {
            Value::String(id) => Some(id.clone()),
            Value::Number(id) => Some(id.to_string()),
            _ => None,
        })
        .collect()
}

/// Live contacts among `ids`, with the ids that are not one.
fn split_existing(view: &PortalView, ids: &[String]) -> (Vec<(String, u64)>, Vec<String>) {
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for id in ids {
        match ObjectType::Contacts
            .number(id)
            .filter(|&number| view.live(ObjectType::Contacts, number).is_some())
        {
            Some(number) => found.push((id.clone(), number)),
            None => missing.push(id.clone()),
        }
    }
    (found, missing)
}

/// `PUT .../memberships/add` with a JSON array of record ids.
async fn add(shared: State<Arc<Shared>>, id: Path<String>, body: Bytes) -> Response {
    change(shared, id, body, Change::Add).await
}

/// `PUT .../memberships/remove` with a JSON array of record ids.
async fn remove(shared: State<Arc<Shared>>, id: Path<String>, body: Bytes) -> Response {
    change(shared, id, body, Change::Remove).await
}

/// `PUT .../memberships/add-and-remove` with `{recordIdsToAdd, recordIdsToRemove}`.
async fn add_and_remove(shared: State<Arc<Shared>>, id: Path<String>, body: Bytes) -> Response {
    change(shared, id, body, Change::AddAndRemove).await
}

async fn change(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: Bytes,
    change: Change,
) -> Response {
    let list = match find_list(&id) {
        Ok(list) => list,
        Err(refused) => return refused.into_response(),
    };
    if list.processing_type == "DYNAMIC" {
        return validation_error(&format!(
            "List {} has processing type DYNAMIC; memberships can only be changed on MANUAL or SNAPSHOT lists.",
            list.id
        ));
    }
    let body: Value = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(err) => return validation_error(&format!("Invalid input JSON: {err}")),
    };
    let (to_add, to_remove) = match change {
        Change::Add => (ids_of(&body), Vec::new()),
        Change::Remove => (Vec::new(), ids_of(&body)),
        Change::AddAndRemove => (
            ids_of(&body["recordIdsToAdd"]),
            ids_of(&body["recordIdsToRemove"]),
        ),
    };
    let now = shared.clock.now_ms();
    let answer = with_view(&shared, |view, inner| {
        let (adding, mut missing) = split_existing(view, &to_add);
        let (removing, missing_removed) = split_existing(view, &to_remove);
        missing.extend(missing_removed);
        let members = inner.memberships.entry(list.id).or_default();
        let removed: Vec<String> = removing
            .into_iter()
            .filter(|(_, number)| members.remove(number).is_some())
            .map(|(id, _)| id)
            .collect();
        let added: Vec<String> = adding
            .into_iter()
            .filter(|(_, number)| members.insert(*number, now).is_none())
            .map(|(id, _)| id)
            .collect();
        json!({
            "recordIdsRemoved": removed,
            "recordsIdsAdded": added,
            "recordIdsMissing": missing,
        })
    });
    Json(answer).into_response()
}

/// `GET .../memberships`: members in record id order. The `after` cursor is the last member
/// returned, not an offset, so adding or removing members between pages skips or repeats none.
async fn memberships(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    uri: Uri,
) -> Response {
    let list = match find_list(&id) {
        Ok(list) => list,
        Err(refused) => return refused.into_response(),
    };
    let pairs: Vec<(String, String)> =
        url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let param = |key: &str| {
        pairs
            .iter()
            .find(|(name, _)| name == key)
            .and_then(|(_, value)| value.parse::<u64>().ok())
    };
    let limit = param("limit")
        .map_or(MEMBERSHIP_PAGE_DEFAULT, |limit| {
            usize::try_from(limit).unwrap_or(usize::MAX)
        })
        .clamp(1, MEMBERSHIP_PAGE_MAX);
    let after = param("after");
    let inner = shared.hubspot.lock();
    let empty = BTreeMap::new();
    let members = inner.memberships.get(&list.id).unwrap_or(&empty);
    let following = match after {
        Some(after) => members.range((Excluded(after), Unbounded)),
        None => members.range(..),
    };
    let page: Vec<(u64, Millis)> = following.take(limit + 1).map(|(n, at)| (*n, *at)).collect();
    let results: Vec<Value> = page
        .iter()
        .take(limit)
        .map(|(number, at)| {
            json!({ "recordId": ObjectType::Contacts.id(*number), "membershipTimestamp": iso(*at) })
        })
        .collect();
    let mut body = json!({ "results": results, "total": members.len() });
    if page.len() > limit {
        let last = page[limit - 1].0;
        body["paging"] = json!({ "next": { "after": last.to_string() } });
    }
    Json(body).into_response()
}
