//! The Salesforce REST API as the sync needs it: describe, and SOQL query pages.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::http::{ApiClient, ApiRequest, Reply};
use super::CrmError;
use crate::record::Millis;

/// A Salesforce org, reached through one connection.
pub struct SalesforceClient<'a> {
    api: &'a ApiClient,
    version: String,
}

/// One field as `describe` lists it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FieldInfo {
    /// API name.
    pub name: String,
    /// Label shown in the UI.
    #[serde(default)]
    pub label: String,
    /// Salesforce field type (`string`, `currency`, `reference`, …).
    #[serde(rename = "type")]
    pub data_type: String,
    /// Usable in WHERE.
    #[serde(default)]
    pub filterable: bool,
    /// A custom field (`__c`).
    #[serde(default)]
    pub custom: bool,
    /// A formula or roll-up: its value changes without the record's modification stamp.
    #[serde(default)]
    pub calculated: bool,
}

#[derive(Deserialize)]
struct Describe {
    fields: Vec<FieldInfo>,
}

/// One page of a SOQL query.
#[derive(Debug)]
pub struct QueryPage {
    /// The rows, as Salesforce sent them (`attributes` included).
    pub records: Vec<Map<String, Value>>,
    /// Rows the whole query matches.
    pub total_size: u64,
    /// Where the next page is, while there is one.
    pub next_records_url: Option<String>,
    /// The token the query's locator belongs to.
    pub token_generation: u64,
    /// The org's clock when it answered.
    pub server_time: Option<Millis>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct QueryBody {
    total_size: u64,
    done: bool,
    #[serde(default)]
    next_records_url: Option<String>,
    records: Vec<Map<String, Value>>,
}

/// What went wrong fetching the next page of a query.
#[derive(Debug)]
pub enum NextPageError {
    /// The locator is gone (token renewed, expired, released): run the query again from the
    /// last checkpoint.
    LocatorLost,
    /// Any other failure.
    Failed(CrmError),
}

impl<'a> SalesforceClient<'a> {
    /// A client over `api` for REST version `version` (`v62.0`).
    pub fn new(api: &'a ApiClient, version: &str) -> SalesforceClient<'a> {
        SalesforceClient {
            api,
            version: version.to_string(),
        }
    }

    /// The fields of an object, from `describe`.
    pub async fn describe(&self, object: &str) -> Result<Vec<FieldInfo>, CrmError> {
        let request = ApiRequest::get(format!(
            "/services/data/{}/sobjects/{object}/describe",
            self.version
        ));
        let reply = self.api.send(&request, read_json::<Describe>).await?;
        Ok(reply.value.fields)
    }

    /// Runs a SOQL query (`query_all` includes deleted and archived rows) and returns its
    /// first page.
    pub async fn query(
        &self,
        soql: &str,
        query_all: bool,
        batch_size: u32,
    ) -> Result<QueryPage, CrmError> {
        let resource = if query_all { "queryAll" } else { "query" };
        let request = ApiRequest::get(format!("/services/data/{}/{resource}", self.version))
            .param("q", soql)
            .header("Sforce-Query-Options", format!("batchSize={batch_size}"));
        let reply = self.api.send(&request, read_json::<QueryBody>).await?;
        Ok(page_from(reply))
    }

    /// The number of rows a `SELECT COUNT() FROM …` query counts (`query_all`: deleted ones
    /// too).
    pub async fn count(&self, soql: &str, query_all: bool) -> Result<u64, CrmError> {
        Ok(self.query(soql, query_all, 2_000).await?.total_size)
    }

    /// The page after `previous`; a locator is usable only with the token that opened it.
    pub async fn next_page(
        &self,
        previous: &QueryPage,
    ) -> Result<Option<QueryPage>, NextPageError> {
        let Some(next) = &previous.next_records_url else {
            return Ok(None);
        };
        let current = self
            .api
            .token_generation()
            .await
            .map_err(NextPageError::Failed)?;
        if current != previous.token_generation {
            return Err(NextPageError::LocatorLost);
        }
        match self
            .api
            .send(&ApiRequest::get(next.clone()), read_json::<QueryBody>)
            .await
        {
            Ok(reply) if reply.token_generation == previous.token_generation => {
                Ok(Some(page_from(reply)))
            }
            // The token was renewed during the call: the locator belonged to the old session.
            Ok(_) => Err(NextPageError::LocatorLost),
            Err(err) if locator_lost(&err) => Err(NextPageError::LocatorLost),
            Err(err) => Err(NextPageError::Failed(err)),
        }
    }
}

/// A locator dies with its session, so a 401 on the next page (even one whose body was cut
/// short) means the query must start again; if the credentials themselves are refused, the
/// restarted query says so.
fn locator_lost(err: &CrmError) -> bool {
    matches!(err, CrmError::Auth { .. }) || err.code() == Some("INVALID_QUERY_LOCATOR")
}

fn page_from(reply: Reply<QueryBody>) -> QueryPage {
    let body = reply.value;
    QueryPage {
        records: body.records,
        total_size: body.total_size,
        next_records_url: if body.done {
            None
        } else {
            body.next_records_url
        },
        token_generation: reply.token_generation,
        server_time: reply.server_time,
    }
}

fn read_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|err| err.to_string())
}

/// Formats epoch milliseconds as a SOQL datetime literal.
pub fn soql_datetime(at: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(at)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}
