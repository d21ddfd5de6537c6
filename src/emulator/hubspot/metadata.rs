//! Portal metadata: deal pipelines, property definitions and owners.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::records::{owner_id, user_id};
use super::schema::{ObjectType, PropDef, Stage, STAGES};
use super::{error, iso, validation_error, Refusal};
use crate::emulator::Shared;

const PIPELINE_PREFIXES: &[&str] = &["/crm/v3/pipelines", "/crm/pipelines/2026-03"];
const PROPERTY_PREFIXES: &[&str] = &["/crm/v3/properties", "/crm/properties/2026-03"];
const OWNERS_DEFAULT_LIMIT: usize = 100;
const OWNERS_MAX_LIMIT: usize = 500;

pub(crate) fn routes() -> Router<Arc<Shared>> {
    let mut router = Router::new();
    for prefix in PIPELINE_PREFIXES {
        router = router
            .route(&format!("{prefix}/{{object}}"), get(pipelines))
            .route(&format!("{prefix}/{{object}}/{{pipeline}}"), get(pipeline))
            .route(
                &format!("{prefix}/{{object}}/{{pipeline}}/stages"),
                get(stages),
            );
    }
    for prefix in PROPERTY_PREFIXES {
        router = router
            .route(&format!("{prefix}/{{object}}"), get(properties))
            .route(&format!("{prefix}/{{object}}/{{name}}"), get(property));
    }
    router
        .route("/crm/v3/owners", get(owners))
        .route("/crm/v3/owners/", get(owners))
        .route("/crm/v3/owners/{owner}", get(owner))
        .route("/account-info/v3/details", get(account_details))
}

/// `GET /account-info/v3/details`: the portal's id and where its UI lives (record links).
async fn account_details(State(shared): State<Arc<Shared>>) -> Json<Value> {
    Json(json!({
        "portalId": shared.hubspot.options.portal_id,
        "accountType": "STANDARD",
        "timeZone": "US/Eastern",
        "companyCurrency": "USD",
        "additionalCurrencies": [],
        "utcOffset": "-05:00",
        "utcOffsetMilliseconds": -18_000_000,
        "uiDomain": "app.hubspot.com",
        "dataHostingLocation": "na1",
    }))
}

/// Default pipelines and stages were created at the epoch; the portal set them up at origin.
fn stage_json(stage: &Stage, display_order: usize, updated_at: &str) -> Value {
    json!({
        "id": stage.id,
        "label": stage.label,
        "displayOrder": display_order,
        "metadata": { "isClosed": stage.closed.to_string(), "probability": stage.probability },
        "createdAt": iso(0),
        "updatedAt": updated_at,
        "archived": false,
        "writePermissions": "CRM_PERMISSIONS_ENFORCEMENT",
    })
}

fn pipeline_json(shared: &Shared) -> Value {
    let updated_at = iso(shared.funnel.origin());
    let stages: Vec<Value> = STAGES
        .iter()
        .enumerate()
        .map(|(order, stage)| stage_json(stage, order, &updated_at))
        .collect();
    json!({
        "id": "default",
        "label": "Sales Pipeline",
        "displayOrder": 0,
        "stages": stages,
        "createdAt": iso(0),
        "updatedAt": updated_at,
        "archived": false,
    })
}

/// Only deals have pipelines in this portal.
fn deal_pipelines(object: &str) -> Result<(), Refusal> {
    match ObjectType::parse(object) {
        Some(ObjectType::Deals) => Ok(()),
        _ => Err(validation_error(&format!("Unable to infer object type from: {object}")).into()),
    }
}

fn pipeline_not_found(id: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "OBJECT_NOT_FOUND",
        &format!("Unable to find pipeline with id {id}"),
    )
}

async fn pipelines(State(shared): State<Arc<Shared>>, Path(object): Path<String>) -> Response {
    if let Err(refused) = deal_pipelines(&object) {
        return refused.into_response();
    }
    Json(json!({ "results": [pipeline_json(&shared)] })).into_response()
}

async fn pipeline(
    State(shared): State<Arc<Shared>>,
    Path((object, id)): Path<(String, String)>,
) -> Response {
    if let Err(refused) = deal_pipelines(&object) {
        return refused.into_response();
    }
    if id != "default" {
        return pipeline_not_found(&id);
    }
    Json(pipeline_json(&shared)).into_response()
}

async fn stages(
    State(shared): State<Arc<Shared>>,
    Path((object, id)): Path<(String, String)>,
) -> Response {
    if let Err(refused) = deal_pipelines(&object) {
        return refused.into_response();
    }
    if id != "default" {
        return pipeline_not_found(&id);
    }
    Json(json!({ "results": pipeline_json(&shared)["stages"].clone() })).into_response()
}

fn property_json(object: ObjectType, def: &PropDef, order: usize, origin: &str) -> Value {
    let options: Vec<Value> = def
        .options
        .iter()
        .enumerate()
        .map(|(index, (value, label))| {
            json!({ "label": label, "value": value, "displayOrder": index, "hidden": false })
        })
        .collect();
    let created_at = if def.custom {
        origin.to_string()
    } else {
        iso(0)
    };
    json!({
        "updatedAt": origin,
        "createdAt": created_at,
        "name": def.name,
        "label": def.label,
        "type": def.kind.type_name(),
        "fieldType": def.kind.field_type(),
        "description": "",
        "groupName": def.group,
        "options": options,
        "displayOrder": if def.custom { order as i64 } else { -1 },
        "calculated": def.read_only,
        "externalOptions": def.name == "hubspot_owner_id",
        "hasUniqueValue": def.name == "hs_object_id",
        "hidden": false,
        "hubspotDefined": !def.custom,
        "modificationMetadata": {
            "archivable": def.custom,
            "readOnlyDefinition": !def.custom,
            "readOnlyValue": def.read_only,
        },
        "formField": !def.read_only && object == ObjectType::Contacts,
        "archived": false,
    })
}

/// `GET /crm/v3/properties/{type}`: the stage-calculated `hs_v2_*` properties are not listed.
async fn properties(State(shared): State<Arc<Shared>>, Path(object): Path<String>) -> Response {
    let Some(object) = ObjectType::parse(&object) else {
        return validation_error(&format!("Unable to infer object type from: {object}"));
    };
    let origin = iso(shared.funnel.origin());
    let results: Vec<Value> = object
        .properties()
        .iter()
        .enumerate()
        .map(|(order, def)| property_json(object, def, order, &origin))
        .collect();
    Json(json!({ "results": results })).into_response()
}

async fn property(
    State(shared): State<Arc<Shared>>,
    Path((object, name)): Path<(String, String)>,
) -> Response {
    let Some(object) = ObjectType::parse(&object) else {
        return validation_error(&format!("Unable to infer object type from: {object}"));
    };
    let origin = iso(shared.funnel.origin());
    match object
        .properties()
        .iter()
        .enumerate()
        .find(|(_, def)| def.name == name)
    {
        Some((order, def)) => Json(property_json(object, def, order, &origin)).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "OBJECT_NOT_FOUND",
            &format!(
                "Unable to find property {name} on object type {}",
                object.type_id()
            ),
        ),
    }
}

fn owner_json(shared: &Shared, rep: &crate::emulator::funnel::Rep) -> Value {
    let team = crate::emulator::funnel::TEAMS
        .iter()
        .position(|name| *name == rep.team)
        .unwrap_or(0);
    let origin = iso(shared.funnel.origin());
    json!({
        "id": owner_id(rep.index).to_string(),
        "email": format!(
            "{}.{}@pipewarden-demo.example.com",
            rep.first_name.to_lowercase(),
            rep.last_name.to_lowercase()
        ),
        "type": "PERSON",
        "firstName": rep.first_name,
        "lastName": rep.last_name,
        "userId": user_id(rep.index),
        "userIdIncludingInactive": user_id(rep.index),
        "createdAt": origin,
        "updatedAt": origin,
        "archived": false,
        "teams": [{ "id": (team + 1).to_string(), "name": rep.team, "primary": true }],
    })
}

/// `GET /crm/v3/owners/`: reps, paged by offset, filterable by `email`; nobody is archived.
async fn owners(State(shared): State<Arc<Shared>>, uri: Uri) -> Response {
    let pairs: Vec<(String, String)> =
        url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let param = |key: &str| {
        pairs
            .iter()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value.clone())
    };
    let limit = match param("limit").map(|text| text.parse::<usize>()) {
        None => OWNERS_DEFAULT_LIMIT,
        Some(Ok(limit)) if (1..=OWNERS_MAX_LIMIT).contains(&limit) => limit,
        Some(_) => {
            return validation_error(&format!("limit must be between 1 and {OWNERS_MAX_LIMIT}"))
        }
    };
    let start = param("after")
        .and_then(|after| after.parse::<usize>().ok())
        .unwrap_or(0);
    if param("archived").is_some_and(|flag| flag == "true") {
        return Json(json!({ "results": [] })).into_response();
    }
    let all: Vec<Value> = shared
        .funnel
        .reps()
        .map(|rep| owner_json(&shared, &rep))
        .filter(|owner| {
            param("email").is_none_or(|email| owner["email"].as_str() == Some(email.as_str()))
        })
        .collect();
    let page: Vec<Value> = all.iter().skip(start).take(limit).cloned().collect();
    let mut body = json!({ "results": page });
    if start.saturating_add(limit) < all.len() {
        let after = (start.saturating_add(limit)).to_string();
        let link = shared
            .base_url
            .join(&format!("crm/v3/owners/?limit={limit}&after={after}"))
            .map(|url| url.to_string())
            .unwrap_or_default();
        body["paging"] = json!({ "next": { "after": after, "link": link } });
    }
    Json(body).into_response()
}

async fn owner(State(shared): State<Arc<Shared>>, Path(owner): Path<String>) -> Response {
    let found = shared
        .funnel
        .reps()
        .find(|rep| owner_id(rep.index).to_string() == owner);
    match found {
        Some(rep) => Json(owner_json(&shared, &rep)).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "OBJECT_NOT_FOUND",
            &format!("Owner with id {owner} not found"),
        ),
    }
}
