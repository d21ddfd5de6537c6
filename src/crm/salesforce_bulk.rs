//! Salesforce Bulk API 2.0 query jobs, as the sync needs them: create a job, poll its state,
//! read its CSV results one chunk at a time by `Sforce-Locator`.
//!
//! A job runs its query as a snapshot on the server; its results stay readable, chunk by
//! chunk and any chunk again, for as long as the job exists, whatever happens to the session
//! that created it. That is what makes a backfill through a job resumable from its last
//! locator after a crash or a token renewal, where a REST query locator would be lost.

use reqwest::Method;
use serde::Deserialize;
use serde_json::json;

use super::http::{ApiClient, ApiRequest, Reply};
use super::CrmError;
use crate::record::Millis;

/// The Bulk API 2.0 query resources of one org.
pub struct BulkQueries<'a> {
    api: &'a ApiClient,
    version: String,
    connection: String,
}

/// A query job as `GET …/jobs/query/{id}` describes it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobInfo {
    /// The job id (`750…`).
    pub id: String,
    /// `UploadComplete`, `InProgress`, `JobComplete`, `Failed` or `Aborted`.
    pub state: String,
    /// When the job was created (`2026-01-05T09:00:00.000+0000`).
    #[serde(default)]
    pub created_date: Option<String>,
    /// Why the job failed, when it did.
    #[serde(default)]
    pub error_message: Option<String>,
    /// Records the query matched, once complete.
    #[serde(default)]
    pub number_records_processed: Option<u64>,
}

/// One chunk of a job's results: CSV text, checked whole.
#[derive(Debug)]
pub struct ResultChunk {
    /// The CSV: a header row of field names, then one row per record.
    pub csv: Vec<u8>,
    /// Records in the chunk.
    pub records: u64,
    /// The locator of the next chunk; `None` after the last one.
    pub next_locator: Option<String>,
    /// The org's clock when it answered.
    pub server_time: Option<Millis>,
}

/// Times a chunk whose record count disagrees with `Sforce-NumberOfRecords` is read again
/// before the read counts as failed.
const CHUNK_READS: u32 = 4;

impl<'a> BulkQueries<'a> {
    /// The query jobs of the org behind `api` (the connection named `connection`), through
    /// REST version `version` (`v62.0`).
    pub fn new(api: &'a ApiClient, version: &str, connection: &str) -> BulkQueries<'a> {
        BulkQueries {
            api,
            version: version.to_string(),
            connection: connection.to_string(),
        }
    }

    fn jobs_path(&self) -> String {
        format!("/services/data/{}/jobs/query", self.version)
    }

    /// Creates a job for `soql`; `query_all` includes deleted and archived rows.
    pub async fn create(&self, soql: &str, query_all: bool) -> Result<JobInfo, CrmError> {
        let body = json!({
            "operation": if query_all { "queryAll" } else { "query" },
            "query": soql,
            "contentType": "CSV",
            "columnDelimiter": "COMMA",
            "lineEnding": "LF",
        });
        let request = ApiRequest::with_json(Method::POST, self.jobs_path(), body);
        Ok(self.api.send(&request, read_json::<JobInfo>).await?.value)
    }

    /// The job's state now; `None` when the org no longer has it (deleted, or expired after
    /// its seven days).
    pub async fn info(&self, job_id: &str) -> Result<Option<JobInfo>, CrmError> {
        let request = ApiRequest::get(format!("{}/{job_id}", self.jobs_path()));
        match self.api.send(&request, read_json::<JobInfo>).await {
            Ok(reply) => Ok(Some(reply.value)),
            Err(CrmError::Api { status: 404, .. }) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// One chunk of a complete job's results: the first without a locator, else the one the
    /// locator names. A body that does not read as whole CSV, or holds another number of
    /// records than the header says, was cut short on the way and is read again.
    pub async fn results(
        &self,
        job_id: &str,
        locator: Option<&str>,
        max_records: u32,
    ) -> Result<ResultChunk, CrmError> {
        let mut request = ApiRequest::get(format!("{}/{job_id}/results", self.jobs_path()))
            .param("maxRecords", max_records.to_string())
            .header("Accept", "text/csv");
        if let Some(locator) = locator {
            request = request.param("locator", locator);
        }
        let mut reads = 0;
        loop {
            reads += 1;
            let reply = self.api.send(&request, read_csv).await?;
            match chunk_from(reply) {
                Ok(chunk) => return Ok(chunk),
                Err(detail) if reads < CHUNK_READS => {
                    tracing::warn!(job = job_id, detail = %detail, "bulk result chunk cut short; reading it again");
                }
                Err(detail) => {
                    return Err(CrmError::Decode {
                        connection: self.connection.clone(),
                        request: format!("GET results of bulk query job {job_id}"),
                        detail,
                    })
                }
            }
        }
    }
}

/// A chunk whose record count matches its `Sforce-NumberOfRecords`.
fn chunk_from(reply: Reply<(Vec<u8>, u64)>) -> Result<ResultChunk, String> {
    let header = |name: &str| {
        reply
            .headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_string)
    };
    let (csv, records) = reply.value;
    if let Some(expected) = header("Sforce-NumberOfRecords") {
        let expected: u64 = expected
            .trim()
            .parse()
            .map_err(|_| format!("Sforce-NumberOfRecords is not a number: {expected:?}"))?;
        if expected != records {
            return Err(format!(
                "the chunk holds {records} records where Sforce-NumberOfRecords says {expected}"
            ));
        }
    }
    let next_locator = header("Sforce-Locator").filter(|l| !l.is_empty() && l != "null");
    Ok(ResultChunk {
        csv,
        records,
        next_locator,
        server_time: reply.server_time,
    })
}

/// Checks that a body is whole CSV (every record complete, as many fields as the header) and
/// counts its records, without keeping any of them.
fn read_csv(body: &[u8]) -> Result<(Vec<u8>, u64), String> {
    if !body.is_empty() && !body.ends_with(b"\n") {
        return Err("the CSV does not end with a line ending".into());
    }
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(body);
    reader.headers().map_err(|err| err.to_string())?;
    let mut record = csv::ByteRecord::new();
    let mut records = 0;
    while reader
        .read_byte_record(&mut record)
        .map_err(|err| err.to_string())?
    {
        records += 1;
    }
    Ok((body.to_vec(), records))
}

fn read_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|err| err.to_string())
}

#[cfg(test)]
mod tests {
    use super::read_csv;

    #[test]
    fn whole_csv_is_counted_and_a_cut_one_refused() {
        let body = b"\"Id\",\"Name\"\n\"001\",\"A, Inc.\"\n\"002\",\"B \"\"the\"\" best\"\n";
        assert_eq!(read_csv(body).unwrap().1, 2);
        assert!(read_csv(&body[..body.len() - 5]).is_err(), "cut mid-row");
        assert!(read_csv(&body[..20]).is_err(), "cut in the first row");
    }
}
