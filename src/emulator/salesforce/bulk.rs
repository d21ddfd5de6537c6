//! Bulk API 2.0 query jobs: create, poll, read CSV results by locator, abort, delete.
//!
//! A job evaluates its query when created (a snapshot, as Salesforce's are) and keeps only
//! the matched record numbers; result chunks are rebuilt as of that instant. Each status poll
//! moves the job one state on (UploadComplete → InProgress → JobComplete), so clients exercise
//! their polling loop without waiting on a clock: the second poll finds it complete. Tests
//! make the next jobs fail (`POST /__emulator/salesforce/bulk/fail-next`): such a job goes
//! from InProgress to Failed with an `errorMessage`, as one whose query Salesforce gave up on.
//! Results must be read through the API version that created the job (else 409, as
//! documented), and jobs count against `DailyBulkV2QueryJobs` in `limits`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query as QueryParams, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error;
use super::ids::sf_id;
use super::query::{evaluate, ViewResolver};
use super::records::OrgView;
use super::schema::{self, FieldType, JsonValue, SfValue};
use super::soql::{self, FieldPath, Selection};
use crate::emulator::parallel::map_runs;
use crate::emulator::Shared;
use crate::record::{Millis, DAY_MS};

/// Records per results chunk unless the client asks for fewer with `maxRecords`.
const DEFAULT_CHUNK: usize = 50_000;
/// Key prefix of bulk jobs.
const JOB_PREFIX: &str = "750";

/// The org's bulk query jobs.
#[derive(Default)]
pub(crate) struct Jobs {
    by_id: HashMap<String, Job>,
    issued: u64,
    /// Error messages of the next jobs to fail, oldest first.
    failures: VecDeque<String>,
    /// When each job was created, for the rolling daily quota; a job's own entry goes when
    /// it is deleted, this one stays.
    created: Vec<Millis>,
}

struct Job {
    id: String,
    operation: &'static str,
    created_at: Millis,
    created_by: String,
    /// The last client write its snapshot saw.
    seq: u64,
    state: &'static str,
    query: Arc<soql::Query>,
    numbers: Arc<Vec<u64>>,
    /// The API version the job was created through (`v62.0`).
    version: String,
    /// The `errorMessage` the job fails with instead of completing.
    fails_with: Option<String>,
}

impl Job {
    fn info(&self) -> Value {
        let done = self.state == "JobComplete";
        let api_version: f64 = self.version.trim_start_matches('v').parse().unwrap_or(62.0);
        let mut info = json!({
            "id": self.id,
            "operation": self.operation,
            "object": self.query.object.name,
            "createdById": self.created_by,
            "createdDate": schema::format_datetime(self.created_at),
            "systemModstamp": schema::format_datetime(self.created_at),
            "state": self.state,
            "concurrencyMode": "Parallel",
            "contentType": "CSV",
            "apiVersion": api_version,
            "jobType": "V2Query",
            "lineEnding": "LF",
            "columnDelimiter": "COMMA",
            "numberRecordsProcessed": if done { self.numbers.len() } else { 0 },
            "retries": 0,
            "totalProcessingTime": if done { 1_000 } else { 0 },
        });
        if self.state == "Failed" {
            info["errorMessage"] = json!(self.fails_with.as_deref().unwrap_or_default());
        }
        info
    }
}

/// Jobs created since `since` (the rolling day of `DailyBulkV2QueryJobs`).
pub(crate) fn jobs_since(jobs: &Mutex<Jobs>, since: Millis) -> u64 {
    lock(jobs).created_since(since)
}

impl Jobs {
    /// Jobs created since `since`, deleted ones included: deleting a job gives back no quota.
    fn created_since(&self, since: Millis) -> u64 {
        self.created.iter().filter(|at| **at > since).count() as u64
    }
}

fn lock(jobs: &Mutex<Jobs>) -> MutexGuard<'_, Jobs> {
    jobs.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The body of `POST …/jobs/query`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CreateJob {
    operation: String,
    query: String,
    #[serde(default)]
    content_type: Option<String>,
    #[serde(default)]
    column_delimiter: Option<String>,
    #[serde(default)]
    line_ending: Option<String>,
}

fn invalid_job(message: &str) -> Response {
    error(StatusCode::BAD_REQUEST, "INVALIDJOB", message)
}

/// `POST …/jobs/query`: evaluates the query and registers the job.
pub(crate) async fn create(
    State(shared): State<Arc<Shared>>,
    Path(version): Path<String>,
    body: Result<Json<CreateJob>, JsonRejection>,
) -> Response {
    let request = match body {
        Ok(Json(request)) => request,
        Err(rejection) => return super::composite::json_parser_error(&rejection.body_text()),
    };
    let operation = match request.operation.as_str() {
        "query" => "query",
        "queryAll" => "queryAll",
        other => return invalid_job(&format!("Invalid operation: {other}")),
    };
    let unsupported = [
        (request.content_type.as_deref(), "CSV", "contentType"),
        (
            request.column_delimiter.as_deref(),
            "COMMA",
            "columnDelimiter",
        ),
        (request.line_ending.as_deref(), "LF", "lineEnding"),
    ];
    for (given, served, name) in unsupported {
        if given.is_some_and(|given| given != served) {
            return invalid_job(&format!(
                "{name} {} is not supported by this org",
                given.unwrap_or_default()
            ));
        }
    }
    let now = shared.clock.now_ms();
    let parsed = match soql::parse(&request.query, now) {
        Ok(parsed) => parsed,
        Err(err) => return error(StatusCode::BAD_REQUEST, err.code, &err.message),
    };
    if matches!(parsed.select, Selection::Count) || parsed.offset.is_some() {
        return invalid_job(
            "Aggregate queries and OFFSET are not supported by Bulk API 2.0 query jobs",
        );
    }
    let (numbers, seq) = {
        let overlay = shared.salesforce.overlay();
        let view = OrgView::over(&shared.funnel, now, &overlay);
        match evaluate(&shared, &view, &parsed, operation == "queryAll") {
            Ok(matched) => (matched, overlay.seq()),
            Err(response) => return *response,
        }
    };
    let mut jobs = lock(&shared.salesforce.jobs);
    let allowed = shared.salesforce.options.daily_bulk_query_jobs;
    if jobs.created_since(now - DAY_MS) >= allowed {
        return error(
            StatusCode::BAD_REQUEST,
            "LIMIT_EXCEEDED",
            &format!("Max bulk v2 query jobs per 24 hrs has been reached ({allowed})"),
        );
    }
    jobs.issued += 1;
    jobs.created.retain(|at| *at > now - DAY_MS);
    jobs.created.push(now);
    let id = sf_id(JOB_PREFIX, jobs.issued);
    let fails_with = jobs.failures.pop_front();
    let job = Job {
        id: id.clone(),
        operation,
        created_at: now,
        created_by: shared.salesforce.user_id.clone(),
        seq,
        state: "UploadComplete",
        query: Arc::new(parsed),
        numbers: Arc::new(numbers),
        version,
        fails_with,
    };
    let info = job.info();
    jobs.by_id.insert(id, job);
    Json(info).into_response()
}

fn job_not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        "The requested resource does not exist",
    )
}

/// `GET …/jobs/query/{id}`: the job's state, one step further than at the last poll.
pub(crate) async fn status(
    State(shared): State<Arc<Shared>>,
    Path((_, id)): Path<(String, String)>,
) -> Response {
    let mut jobs = lock(&shared.salesforce.jobs);
    let Some(job) = jobs.by_id.get_mut(&id) else {
        return job_not_found();
    };
    job.state = match job.state {
        "UploadComplete" => "InProgress",
        "InProgress" if job.fails_with.is_some() => "Failed",
        "InProgress" => "JobComplete",
        settled => settled,
    };
    Json(job.info()).into_response()
}

/// `GET …/jobs/query`: every job.
pub(crate) async fn list(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let jobs = lock(&shared.salesforce.jobs);
    let mut records: Vec<&Job> = jobs.by_id.values().collect();
    records.sort_by(|a, b| a.id.cmp(&b.id));
    let records: Vec<Value> = records.iter().map(|job| job.info()).collect();
    Json(json!({ "done": true, "records": records, "nextRecordsUrl": null }))
}

/// `{"state": "Aborted"}` of a job update.
#[derive(Deserialize)]
pub(crate) struct Abort {
    state: String,
}

/// `PATCH …/jobs/query/{id}`: abort.
pub(crate) async fn abort(
    State(shared): State<Arc<Shared>>,
    Path((_, id)): Path<(String, String)>,
    body: Result<Json<Abort>, JsonRejection>,
) -> Response {
    let Ok(Json(body)) = body else {
        return invalid_job("The only job update is {\"state\": \"Aborted\"}");
    };
    if body.state != "Aborted" {
        return invalid_job(&format!("Invalid state: {}", body.state));
    }
    let mut jobs = lock(&shared.salesforce.jobs);
    let Some(job) = jobs.by_id.get_mut(&id) else {
        return job_not_found();
    };
    if matches!(job.state, "JobComplete" | "Failed" | "Aborted") {
        return invalid_job(&format!("Job is already {}", job.state));
    }
    job.state = "Aborted";
    Json(job.info()).into_response()
}

/// `DELETE …/jobs/query/{id}`.
pub(crate) async fn delete(
    State(shared): State<Arc<Shared>>,
    Path((_, id)): Path<(String, String)>,
) -> Response {
    match lock(&shared.salesforce.jobs).by_id.remove(&id) {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => job_not_found(),
    }
}

/// The body of `POST /__emulator/salesforce/bulk/fail-next`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FailNext {
    /// How many of the next jobs fail (default 1).
    #[serde(default = "one")]
    jobs: u32,
    /// Their `errorMessage`.
    error_message: String,
}

fn one() -> u32 {
    1
}

/// Control routes of bulk jobs; the caller puts them behind the loopback guard.
pub(crate) fn control_routes() -> axum::Router<Arc<Shared>> {
    axum::Router::new().route(
        "/__emulator/salesforce/bulk/fail-next",
        axum::routing::post(fail_next),
    )
}

/// Makes the next `jobs` query jobs fail with `error_message` when their query would have
/// completed.
async fn fail_next(State(shared): State<Arc<Shared>>, Json(body): Json<FailNext>) -> Json<Value> {
    let mut jobs = lock(&shared.salesforce.jobs);
    for _ in 0..body.jobs {
        jobs.failures.push_back(body.error_message.clone());
    }
    Json(json!({ "pending_failures": jobs.failures.len() }))
}

/// `?locator=&maxRecords=` of a results request.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ResultsPage {
    locator: Option<String>,
    max_records: Option<usize>,
}

/// `GET …/jobs/query/{id}/results`: one CSV chunk, `Sforce-Locator` naming the next (or `null`).
pub(crate) async fn results(
    State(shared): State<Arc<Shared>>,
    Path((version, id)): Path<(String, String)>,
    QueryParams(page): QueryParams<ResultsPage>,
) -> Response {
    let (query, numbers, as_of, seq) = {
        let jobs = lock(&shared.salesforce.jobs);
        let Some(job) = jobs.by_id.get(&id) else {
            return job_not_found();
        };
        if job.version != version {
            return error(
                StatusCode::CONFLICT,
                "API_ERROR",
                &format!(
                    "Job {id} was created through API version {}; read its results through the same version",
                    job.version
                ),
            );
        }
        if job.state != "JobComplete" {
            return error(
                StatusCode::BAD_REQUEST,
                "API_ERROR",
                &format!("Job {id} is not complete: its state is {}", job.state),
            );
        }
        (
            job.query.clone(),
            job.numbers.clone(),
            job.created_at,
            job.seq,
        )
    };
    let offset = match page
        .locator
        .as_deref()
        .filter(|l| !l.is_empty() && *l != "null")
    {
        None => 0,
        Some(locator) => match decode_locator(locator) {
            Some(offset) if offset <= numbers.len() => offset,
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_LOCATOR",
                    "Invalid locator",
                )
            }
        },
    };
    let chunk = page
        .max_records
        .unwrap_or(DEFAULT_CHUNK)
        .clamp(1, DEFAULT_CHUNK);
    let end = (offset + chunk).min(numbers.len());
    let overlay = shared.salesforce.overlay();
    let view = OrgView::snapshot(&shared.funnel, as_of, &overlay, seq);
    let Selection::Fields(paths) = &query.select else {
        return invalid_job("Aggregate queries are not supported by Bulk API 2.0 query jobs");
    };
    let (csv, count) = render_csv(&view, &query, paths, &numbers[offset..end]);
    let next = if end < numbers.len() {
        encode_locator(end)
    } else {
        "null".to_string()
    };
    let mut response = (StatusCode::OK, [(header::CONTENT_TYPE, "text/csv")], csv).into_response();
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&next) {
        headers.insert("Sforce-Locator", value);
    }
    headers.insert("Sforce-NumberOfRecords", HeaderValue::from(count));
    response
}

fn encode_locator(offset: usize) -> String {
    base64::engine::general_purpose::STANDARD_NO_PAD.encode(offset.to_string())
}

fn decode_locator(locator: &str) -> Option<usize> {
    let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(locator)
        .ok()?;
    String::from_utf8(bytes).ok()?.parse().ok()
}

/// CSV as Bulk API 2.0 writes it: a header of field paths, every value quoted, empty for null.
/// The records behind `numbers` are built and written in parallel runs joined in order;
/// also returns how many rows there are.
fn render_csv(
    view: &OrgView<'_>,
    query: &soql::Query,
    paths: &[FieldPath],
    numbers: &[u64],
) -> (String, usize) {
    let mut csv = String::new();
    for (column, path) in paths.iter().enumerate() {
        if column > 0 {
            csv.push(',');
        }
        let mut name = path.relationships.join(".");
        if !name.is_empty() {
            name.push('.');
        }
        name.push_str(path.field.name);
        push_quoted(&mut csv, &name);
    }
    csv.push('\n');
    let resolver = ViewResolver(view);
    let runs = map_runs(numbers, |run| {
        let mut out = String::new();
        let mut rows = 0;
        let mut cell = String::new();
        for &number in run {
            let Some(row) = view.record(query.object, number) else {
                continue;
            };
            rows += 1;
            for (column, path) in paths.iter().enumerate() {
                if column > 0 {
                    out.push(',');
                }
                cell.clear();
                if path.steps.is_empty() {
                    write_csv_value(&mut cell, &row.values[path.index], path.field.kind);
                } else {
                    write_csv_value(&mut cell, &path.value(&row, &resolver), path.field.kind);
                }
                push_quoted(&mut out, &cell);
            }
            out.push('\n');
        }
        (out, rows)
    });
    csv.reserve(runs.iter().map(|(run, _)| run.len()).sum());
    let mut count = 0;
    for (run, rows) in &runs {
        csv.push_str(run);
        count += rows;
    }
    (csv, count)
}

/// A value as Bulk results write it, before quoting: JSON's rendering without the quotes of
/// strings, empty for null.
fn write_csv_value(out: &mut String, value: &SfValue, kind: FieldType) {
    match value {
        SfValue::Null => {}
        // Bulk results write datetimes with a `Z`, unlike the REST API's `+0000`.
        SfValue::DateTime(ms) => schema::push_datetime(out, *ms, "Z"),
        SfValue::Text(text) => out.push_str(text),
        SfValue::Date(days) => out.push_str(&schema::format_date(*days)),
        SfValue::Bool(flag) => out.push_str(if *flag { "true" } else { "false" }),
        // A number always serializes; JSON spells it (integers of `int` fields, `null` for
        // what JSON cannot hold).
        SfValue::Number(_) => {
            out.push_str(&serde_json::to_string(&JsonValue { value, kind }).unwrap_or_default())
        }
    }
}

/// Appends `text` in double quotes, doubling the quotes inside.
fn push_quoted(out: &mut String, text: &str) {
    if !text.contains('"') {
        out.push('"');
        out.push_str(text);
        out.push('"');
        return;
    }
    out.push('"');
    for (index, part) in text.split('"').enumerate() {
        if index > 0 {
            out.push_str("\"\"");
        }
        out.push_str(part);
    }
    out.push('"');
}
