//! The HubSpot CRM API as the sync needs it: pipelines, owners, property definitions,
//! object listings, batch reads with property history, and search.
//!
//! Paths follow the connection's `api_version`: the date-versioned API (`/crm/objects/2026-03/…`)
//! by default, `/crm/v3/…` when `v3` is configured. Long property lists only ever travel in
//! POST bodies (batch read, search), never in a URL, so no request can meet HubSpot's 414.

use std::time::Duration;

use reqwest::Method;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::http::{ApiClient, ApiRequest, Reply};
use super::CrmError;
use crate::record::Millis;

/// Records a batch read may name when it asks for property history (HubSpot answers 400 above).
pub const HISTORY_BATCH_MAX: usize = 50;
/// Records a list page may hold.
pub const LIST_PAGE_MAX: u32 = 100;
/// Records a search page may hold.
pub const SEARCH_PAGE_MAX: u32 = 200;
/// Search allows five requests per second per portal and answers without rate headers, so
/// the shared pacing cannot see it; one search every 250 ms stays under it with room for
/// other apps of the portal.
const SEARCH_SPACING: Duration = Duration::from_millis(250);
/// Owners asked for per page (HubSpot allows up to 500).
const OWNERS_PAGE: u32 = 500;

/// A HubSpot portal, reached through one connection.
pub struct HubspotClient<'a> {
    api: &'a ApiClient,
    version: String,
    last_search: Mutex<Option<Instant>>,
}

/// One stage of a deal pipeline.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PipelineStage {
    /// Stage id (what `dealstage` holds).
    pub id: String,
    /// Label shown in the UI.
    pub label: String,
    /// Position in the pipeline.
    #[serde(default)]
    pub display_order: i64,
    /// Archived stages stay in old deals' history.
    #[serde(default)]
    pub archived: bool,
    /// `isClosed` and `probability`, as strings.
    #[serde(default)]
    pub metadata: Map<String, Value>,
}

/// A deal pipeline and its stages.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pipeline {
    /// Pipeline id (what `pipeline` holds).
    pub id: String,
    /// Label shown in the UI.
    pub label: String,
    /// Archived pipelines stay in old deals' history.
    #[serde(default)]
    pub archived: bool,
    /// Its stages.
    pub stages: Vec<PipelineStage>,
}

#[derive(Deserialize)]
struct Results<T> {
    results: Vec<T>,
    #[serde(default)]
    paging: Option<Paging>,
    /// How many records a search matched in all (searches only).
    #[serde(default)]
    total: Option<u64>,
}

#[derive(Deserialize)]
struct Paging {
    next: Option<NextPage>,
}

#[derive(Deserialize)]
struct NextPage {
    after: String,
}

/// A team an owner belongs to.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct OwnerTeam {
    /// Team id.
    pub id: String,
    /// Team name.
    pub name: String,
}

/// `GET /account-info/v3/details`, the parts pipewarden reads.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccountDetails {
    /// The portal (hub) id.
    pub portal_id: u64,
    /// Host of the portal's UI (`app.hubspot.com`, `app-eu1.hubspot.com`).
    #[serde(default)]
    pub ui_domain: Option<String>,
}

impl AccountDetails {
    /// Where the portal's records open: `https://{uiDomain}/contacts/{portalId}`.
    pub fn record_url_base(&self) -> String {
        let domain = self.ui_domain.as_deref().unwrap_or("app.hubspot.com");
        format!("https://{domain}/contacts/{}", self.portal_id)
    }
}

/// A record owner (`hubspot_owner_id` holds its `id`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Owner {
    /// Owner id.
    pub id: String,
    /// `PERSON` or `QUEUE`.
    #[serde(rename = "type", default)]
    pub owner_type: Option<String>,
    /// First name.
    #[serde(default)]
    pub first_name: Option<String>,
    /// Last name.
    #[serde(default)]
    pub last_name: Option<String>,
    /// Email.
    #[serde(default)]
    pub email: Option<String>,
    /// Teams.
    #[serde(default)]
    pub teams: Vec<OwnerTeam>,
    /// Deactivated owners are archived.
    #[serde(default)]
    pub archived: bool,
}

/// One property definition, as far as the sync reads it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PropertyInfo {
    /// API name.
    pub name: String,
    /// Label shown in the UI.
    #[serde(default)]
    pub label: String,
    /// HubSpot's type name (`string`, `number`, `enumeration`, `datetime`, …).
    #[serde(rename = "type", default)]
    pub data_type: String,
    /// Defined by HubSpot rather than the portal (false for custom properties).
    #[serde(default)]
    pub hubspot_defined: bool,
    /// Enumeration options (lifecycle stages, lead statuses), in display order.
    #[serde(default)]
    pub options: Vec<PropertyOption>,
}

/// One option of an enumeration property.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PropertyOption {
    /// Stored value.
    pub value: String,
    /// Label shown in the UI.
    #[serde(default)]
    pub label: String,
    /// Position among the options.
    #[serde(default)]
    pub display_order: i64,
}

/// A page of records as HubSpot sent them, each still raw so that one malformed record can
/// be set aside without losing its page.
#[derive(Debug)]
pub struct ObjectPage {
    /// The records.
    pub records: Vec<Map<String, Value>>,
    /// The cursor of the next page, while there is one.
    pub next_after: Option<String>,
    /// The portal's clock when it answered.
    pub server_time: Option<Millis>,
}

/// A listing request: which page, which records, what to include.
#[derive(Debug, Clone, Default)]
pub struct ListQuery<'q> {
    /// Cursor from the previous page.
    pub after: Option<&'q str>,
    /// Records per page (at most 100).
    pub limit: u32,
    /// Only archived records instead of only live ones.
    pub archived: bool,
    /// A few property names; keep this short, it goes into the URL.
    pub properties: &'q [&'q str],
    /// Object types whose associated ids to include.
    pub associations: &'q [&'q str],
}

impl<'a> HubspotClient<'a> {
    /// A client over `api` for API version `version` (`2026-03` or `v3`).
    pub fn new(api: &'a ApiClient, version: &str) -> HubspotClient<'a> {
        HubspotClient {
            api,
            version: version.to_string(),
            last_search: Mutex::new(None),
        }
    }

    /// `/crm/{family}/{version}` (date-versioned) or `/crm/v3/{family}`.
    fn base(&self, family: &str) -> String {
        if self.version == "v3" {
            format!("/crm/v3/{family}")
        } else {
            format!("/crm/{family}/{}", self.version)
        }
    }

    /// The deal pipelines with their stages.
    pub async fn deal_pipelines(&self) -> Result<(Vec<Pipeline>, Option<Millis>), CrmError> {
        let request = ApiRequest::get(format!("{}/deals", self.base("pipelines")));
        let reply = self
            .api
            .send(&request, read_json::<Results<Pipeline>>)
            .await?;
        Ok((reply.value.results, reply.server_time))
    }

    /// The portal's id and UI domain, which record links in HubSpot's UI need.
    pub async fn account_details(&self) -> Result<AccountDetails, CrmError> {
        let request = ApiRequest::get("/account-info/v3/details");
        let reply = self.api.send(&request, read_json::<AccountDetails>).await?;
        Ok(reply.value)
    }

    /// The property definitions of an object type.
    pub async fn properties(&self, object: &str) -> Result<Vec<PropertyInfo>, CrmError> {
        let request = ApiRequest::get(format!("{}/{object}", self.base("properties")));
        let reply = self
            .api
            .send(&request, read_json::<Results<PropertyInfo>>)
            .await?;
        Ok(reply.value.results)
    }

    /// Every owner, active and archived. The owners API keeps its `v3` path whatever the
    /// connection's version: it is the one path every portal serves.
    pub async fn owners(&self) -> Result<Vec<Owner>, CrmError> {
        let mut owners = Vec::new();
        for archived in [false, true] {
            let mut after: Option<String> = None;
            loop {
                let mut request = ApiRequest::get("/crm/v3/owners/")
                    .param("limit", OWNERS_PAGE.to_string())
                    .param("archived", archived.to_string());
                if let Some(after) = &after {
                    request = request.param("after", after.clone());
                }
                let reply = self.api.send(&request, read_json::<Results<Owner>>).await?;
                owners.extend(reply.value.results);
                after = next_after(reply.value.paging);
                if after.is_none() {
                    break;
                }
            }
        }
        Ok(owners)
    }

    /// One page of an object listing, in id order.
    pub async fn list(&self, object: &str, query: &ListQuery<'_>) -> Result<ObjectPage, CrmError> {
        let mut request = ApiRequest::get(format!("{}/{object}", self.base("objects")))
            .param("limit", query.limit.clamp(1, LIST_PAGE_MAX).to_string())
            .param("archived", query.archived.to_string());
        if !query.properties.is_empty() {
            request = request.param("properties", query.properties.join(","));
        }
        if !query.associations.is_empty() {
            request = request.param("associations", query.associations.join(","));
        }
        if let Some(after) = query.after {
            request = request.param("after", after);
        }
        let reply = self
            .api
            .send(&request, read_json::<Results<Map<String, Value>>>)
            .await?;
        Ok(object_page(reply))
    }

    /// One live record with the ids of its associated records of the given types, or `None`
    /// when it is not there (archived or purged since it was found).
    pub async fn read_with_associations(
        &self,
        object: &str,
        id: &str,
        associations: &[&str],
    ) -> Result<Option<Map<String, Value>>, CrmError> {
        let request = ApiRequest::get(format!("{}/{object}/{id}", self.base("objects")))
            .param("properties", "hs_object_id")
            .param("associations", associations.join(","));
        match self
            .api
            .send(&request, read_json::<Map<String, Value>>)
            .await
        {
            Ok(reply) => Ok(Some(reply.value)),
            Err(CrmError::Api { status: 404, .. }) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// The named records with `properties` and the full history of `with_history`, in
    /// batches of 50 (the limit with history). Records that no longer exist in the asked
    /// state (archived, restored, purged since they were found) are simply absent.
    pub async fn batch_read(
        &self,
        object: &str,
        ids: &[String],
        properties: &[String],
        with_history: &[&str],
        archived: bool,
    ) -> Result<Vec<Map<String, Value>>, CrmError> {
        let path = format!("{}/{object}/batch/read", self.base("objects"));
        let mut records = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(HISTORY_BATCH_MAX) {
            let inputs: Vec<Value> = chunk.iter().map(|id| json!({ "id": id })).collect();
            let body = json!({
                "inputs": inputs,
                "properties": properties,
                "propertiesWithHistory": with_history,
            });
            let request = ApiRequest::with_json(Method::POST, path.clone(), body)
                .reads_only()
                .param("archived", archived.to_string());
            let reply = self
                .api
                .send(&request, read_json::<Results<Map<String, Value>>>)
                .await?;
            records.extend(reply.value.results);
        }
        Ok(records)
    }

    /// One search request (`body` as the search API takes it), paced under the search limit.
    pub async fn search(&self, object: &str, body: Value) -> Result<ObjectPage, CrmError> {
        self.wait_for_search_slot().await;
        let path = format!("{}/{object}/search", self.base("objects"));
        let request = ApiRequest::with_json(Method::POST, path, body).reads_only();
        let reply = self
            .api
            .send(&request, read_json::<Results<Map<String, Value>>>)
            .await?;
        Ok(object_page(reply))
    }

    /// How many live records of `object` there are: a search without filters for one record,
    /// whose `total` counts them all.
    pub async fn count(&self, object: &str) -> Result<u64, CrmError> {
        self.wait_for_search_slot().await;
        let path = format!("{}/{object}/search", self.base("objects"));
        let body =
            serde_json::json!({ "filterGroups": [], "properties": ["hs_object_id"], "limit": 1 });
        let request = ApiRequest::with_json(Method::POST, path, body).reads_only();
        let reply = self
            .api
            .send(&request, read_json::<Results<Map<String, Value>>>)
            .await?;
        Ok(reply.value.total.unwrap_or(0))
    }

    /// Waits until a search may be sent; searches of one run go one at a time.
    async fn wait_for_search_slot(&self) {
        let mut last = self.last_search.lock().await;
        if let Some(at) = *last {
            tokio::time::sleep_until(at + SEARCH_SPACING).await;
        }
        *last = Some(Instant::now());
    }
}

fn next_after(paging: Option<Paging>) -> Option<String> {
    paging.and_then(|paging| paging.next).map(|next| next.after)
}

fn object_page(reply: Reply<Results<Map<String, Value>>>) -> ObjectPage {
    ObjectPage {
        server_time: reply.server_time,
        next_after: next_after(reply.value.paging),
        records: reply.value.results,
    }
}

fn read_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|err| err.to_string())
}
