//! Large backfills of record objects through Bulk API 2.0 query jobs.
//!
//! When the rows a record stream has to read (its window from the checkpoint, as one
//! `SELECT COUNT()` finds them) number at least the connection's `bulk_threshold`, the stream
//! runs one query job over that window instead of REST query pages: create the job, poll it
//! (backing off, bounded) until it completes, then read its CSV results chunk by chunk through
//! `Sforce-Locator`. Each chunk is typed from `describe` and stored in page-sized transactions
//! through the very path REST pages take, so the store holds the same versions either way.
//!
//! The job id and the locator of the next chunk are the stream's checkpoint while a job is
//! being read: a run that dies (or stops) between chunks resumes reading the same job at the
//! same chunk, for as long as the org keeps the job, instead of starting over. Job results
//! come in no order, so the `stamp` cursor moves only once the whole job is read, to the
//! newest stamp among its rows: where REST paging would have left it, and never later than
//! the job's own snapshot.
//!
//! A job the org refuses to create (its daily `DailyBulkV2QueryJobs` quota spent, Bulk API
//! off for the org or the user, an object it does not serve) is no reason to stop: the stream
//! is read by REST pages instead.
//!
//! History objects stay on REST: Bulk API 2.0 can query them, but without `ORDER BY` (which
//! turns off its chunking) rows come in any order, and stage moves are derived from history
//! rows in time order; field-history `OldValue`/`NewValue` (anyType) would also lose their
//! JSON type in CSV.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::{stream_window, Rows, Run, Stream};
use crate::crm::salesforce_bulk::{BulkQueries, JobInfo, ResultChunk};
use crate::crm::CrmError;
use crate::record::{Millis, ObjectKind};
use crate::store::{QuarantineEntry, StoreTx};
use crate::sync::progress::Progress;
use crate::sync::salesforce_csv::CsvColumns;
use crate::sync::salesforce_map::parse_datetime;
use crate::sync::SyncError;

/// First wait between two polls of a job's state; it doubles up to [`LONGEST_POLL_WAIT`].
const FIRST_POLL_WAIT: Duration = Duration::from_millis(250);
/// The longest wait between two polls.
const LONGEST_POLL_WAIT: Duration = Duration::from_secs(30);
/// How long one run waits for a job to complete; past it the run ends with an error and the
/// next run goes on polling the same job.
const LONGEST_JOB_WAIT: Duration = Duration::from_secs(2 * 3600);

/// A job being read, as the stream's cursor keeps it (under `bulk`, beside `stamp`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct BulkCheckpoint {
    /// The job id.
    job: String,
    /// The chunk to read next; none before the first.
    locator: Option<String>,
    /// The newest stamp among the rows stored so far.
    newest: Option<Millis>,
    /// When the job was created, by the org's clock: its snapshot holds nothing newer.
    created_at: Millis,
}

impl Run<'_, '_> {
    /// Reads `stream` through a bulk job when one is being read (a run stopped mid-job) or
    /// when the window is large enough; returns false when the stream is for REST pages.
    pub(super) async fn run_bulk_stream(
        &mut self,
        stream: &Stream,
        position: &Option<Value>,
        from: Option<Millis>,
        until: Option<Millis>,
    ) -> Result<bool, SyncError> {
        if !matches!(stream.rows, Rows::Records(_)) {
            return Ok(false);
        }
        let stamp = position
            .as_ref()
            .and_then(|p| p.get("stamp"))
            .and_then(Value::as_i64);
        let saved = position
            .as_ref()
            .and_then(|p| p.get("bulk"))
            .and_then(|b| serde_json::from_value::<BulkCheckpoint>(b.clone()).ok());
        if let Some(checkpoint) = saved {
            match self.bulk().info(&checkpoint.job).await? {
                Some(info) => {
                    tracing::info!(connection = %self.ctx.settings.name, object = stream.object,
                        job = %checkpoint.job, locator = ?checkpoint.locator,
                        "resuming the bulk query job an earlier run was reading");
                    let snapshot = checkpoint.created_at;
                    self.oldest_snapshot =
                        Some(self.oldest_snapshot.map_or(snapshot, |s| s.min(snapshot)));
                    self.read_job(stream, checkpoint, info, stamp).await?;
                    return Ok(true);
                }
                None => {
                    tracing::warn!(connection = %self.ctx.settings.name, object = stream.object,
                        job = %checkpoint.job,
                        "the bulk query job an earlier run was reading is gone; reading the window again");
                }
            }
        }
        if !self.bulk_pays(stream, from, until).await? {
            return Ok(false);
        }
        let soql = bulk_soql(stream, from, until);
        let info = match self.bulk().create(&soql, stream.query_all).await {
            Ok(info) => info,
            Err(CrmError::Api {
                status: 400 | 403,
                code,
                message,
                ..
            }) => {
                // The org's daily quota of query jobs is spent, Bulk API is off for the org
                // or the user, or the object is not served by it: REST pages read the same
                // rows, only with more calls.
                tracing::warn!(connection = %self.ctx.settings.name, object = stream.object,
                    %code, %message, "the org refused a Bulk API 2.0 query job; reading by REST query pages instead");
                return Ok(false);
            }
            Err(err) => return Err(err.into()),
        };
        let created_at = self.now();
        tracing::info!(connection = %self.ctx.settings.name, object = stream.object, job = %info.id,
            "reading through a Bulk API 2.0 query job");
        let checkpoint = BulkCheckpoint {
            job: info.id.clone(),
            locator: None,
            newest: None,
            created_at,
        };
        let mut tx = self.ctx.begin().await?;
        let position = json!({ "stamp": stamp, "bulk": &checkpoint });
        self.save_bulk_cursor(&mut tx, stream, &position).await?;
        tx.commit().await?;
        self.read_job(stream, checkpoint, info, stamp).await?;
        Ok(true)
    }

    fn bulk(&self) -> BulkQueries<'_> {
        BulkQueries::new(self.ctx.api, &self.version, &self.ctx.settings.name)
    }

    /// Whether the window holds at least `bulk_threshold` rows (0: always; none: never).
    async fn bulk_pays(
        &mut self,
        stream: &Stream,
        from: Option<Millis>,
        until: Option<Millis>,
    ) -> Result<bool, SyncError> {
        let Some(threshold) = self.ctx.settings.bulk_threshold else {
            return Ok(false);
        };
        if threshold == 0 {
            return Ok(true);
        }
        // Incremental windows go by REST, as the checkpoint's lookback keeps them small; this
        // also spares a COUNT() per object on every run.
        if from.is_some() {
            return Ok(false);
        }
        let soql = format!(
            "SELECT COUNT() FROM {}{}",
            stream.object,
            stream_window(stream, from, until)
        );
        match self.client.count(&soql, stream.query_all).await {
            Ok(rows) => Ok(rows >= threshold),
            // Too many rows to count in time is the very case bulk jobs are for.
            Err(err) if err.code() == Some("QUERY_TIMEOUT") => {
                tracing::info!(connection = %self.ctx.settings.name, object = stream.object,
                    "counting the backfill timed out; reading it through a bulk job");
                Ok(true)
            }
            Err(err) => Err(err.into()),
        }
    }

    /// Waits for the job, then stores its chunks from the checkpoint's locator on.
    async fn read_job(
        &mut self,
        stream: &Stream,
        mut checkpoint: BulkCheckpoint,
        info: JobInfo,
        stamp: Option<Millis>,
    ) -> Result<(), SyncError> {
        let info = self.wait_for_job(stream, &checkpoint, info, stamp).await?;
        if let Some(created) = self.job_created_at(&info) {
            checkpoint.created_at = checkpoint.created_at.min(created);
        }
        let connection = self.ctx.settings.name.clone();
        let mut progress = Progress::new(
            &connection,
            stream.object,
            info.number_records_processed.unwrap_or(0),
        );
        loop {
            let chunk = self
                .bulk()
                .results(
                    &checkpoint.job,
                    checkpoint.locator.as_deref(),
                    self.ctx.settings.bulk_chunk_size,
                )
                .await?;
            self.server_now = chunk.server_time.or(self.server_now);
            checkpoint.locator = chunk.next_locator.clone();
            self.store_chunk(stream, &chunk, &mut checkpoint, stamp, &mut progress)
                .await?;
            if checkpoint.locator.is_none() {
                return Ok(());
            }
            self.ctx.check_stop()?;
        }
    }

    /// The job's creation time as it reports it.
    fn job_created_at(&self, info: &JobInfo) -> Option<Millis> {
        info.created_date.as_deref().and_then(parse_datetime)
    }

    /// Polls until the job completes, waiting longer each time; a job that failed or was
    /// aborted is dropped from the checkpoint (the next run reads the window again) and named
    /// in the error.
    async fn wait_for_job(
        &mut self,
        stream: &Stream,
        checkpoint: &BulkCheckpoint,
        mut info: JobInfo,
        stamp: Option<Millis>,
    ) -> Result<JobInfo, SyncError> {
        let started = Instant::now();
        let mut wait = Duration::ZERO;
        loop {
            match info.state.as_str() {
                "JobComplete" => return Ok(info),
                "Failed" | "Aborted" => {
                    self.drop_job(stream, stamp).await?;
                    return Err(self.job_error(
                        stream,
                        &info,
                        format!("ended {}", info.state),
                        info.error_message
                            .clone()
                            .unwrap_or_else(|| "no errorMessage given".into()),
                    ));
                }
                _ if started.elapsed() >= LONGEST_JOB_WAIT => {
                    return Err(self.job_error(
                        stream,
                        &info,
                        format!("is still {}", info.state),
                        format!(
                            "waited {}; the next run goes on with the same job",
                            humantime::format_duration(LONGEST_JOB_WAIT)
                        ),
                    ));
                }
                _ => {}
            }
            self.ctx.pause(wait).await?;
            wait = (wait * 2).clamp(FIRST_POLL_WAIT, LONGEST_POLL_WAIT);
            info = match self.bulk().info(&checkpoint.job).await? {
                Some(info) => info,
                None => {
                    self.drop_job(stream, stamp).await?;
                    return Err(self.job_error(
                        stream,
                        &info,
                        "vanished".into(),
                        "the org no longer has the job; the next run reads the window again".into(),
                    ));
                }
            };
        }
    }

    fn job_error(
        &self,
        stream: &Stream,
        info: &JobInfo,
        outcome: String,
        message: String,
    ) -> SyncError {
        SyncError::BulkJob {
            connection: self.ctx.settings.name.clone(),
            job: info.id.clone(),
            object: stream.object.to_string(),
            outcome,
            message,
        }
    }

    /// Stores a chunk in page-sized transactions; the last one also moves the checkpoint to
    /// the next chunk, or, after the job's last chunk, the `stamp` cursor past the job.
    async fn store_chunk(
        &mut self,
        stream: &Stream,
        chunk: &ResultChunk,
        checkpoint: &mut BulkCheckpoint,
        stamp: Option<Millis>,
        progress: &mut Progress<'_>,
    ) -> Result<(), SyncError> {
        let Rows::Records(kind) = stream.rows else {
            unreachable!("only record streams are read through bulk jobs")
        };
        let observed_at = chunk.server_time.unwrap_or_else(|| self.now());
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .from_reader(chunk.csv.as_slice());
        let header = reader
            .headers()
            .map_err(|err| self.csv_error(checkpoint, err))?;
        let columns = CsvColumns::new(header.iter(), &stream.field_types);
        let header = header.clone();
        let batch_size = self.ctx.settings.page_size.max(1) as usize;
        let mut records = reader.records().peekable();
        let mut batch: Vec<csv::StringRecord> = Vec::with_capacity(batch_size);
        loop {
            batch.clear();
            while batch.len() < batch_size {
                match records.next() {
                    Some(record) => {
                        batch.push(record.map_err(|err| self.csv_error(checkpoint, err))?)
                    }
                    None => break,
                }
            }
            let ends_chunk = records.peek().is_none();
            let rows = Batch {
                columns: &columns,
                header: &header,
                records: &batch,
                observed_at,
            };
            self.store_batch(stream, kind, rows, checkpoint, stamp, ends_chunk)
                .await?;
            progress.advance(batch.len());
            if ends_chunk {
                return Ok(());
            }
        }
    }

    fn csv_error(&self, checkpoint: &BulkCheckpoint, err: csv::Error) -> SyncError {
        SyncError::Crm(crate::crm::CrmError::Decode {
            connection: self.ctx.settings.name.clone(),
            request: format!("results of bulk query job {}", checkpoint.job),
            detail: format!("the CSV does not read: {err}"),
        })
    }

    /// One transaction: a batch of CSV rows as observations (a row that does not read is
    /// quarantined), and the checkpoint when the batch ends the chunk.
    async fn store_batch(
        &mut self,
        stream: &Stream,
        kind: ObjectKind,
        batch: Batch<'_>,
        checkpoint: &mut BulkCheckpoint,
        stamp: Option<Millis>,
        ends_chunk: bool,
    ) -> Result<(), SyncError> {
        let Batch {
            columns,
            header,
            records: batch,
            observed_at,
        } = batch;
        let mut tx = self.ctx.begin().await?;
        let mut rows = Vec::with_capacity(batch.len());
        for record in batch {
            match columns.row(record.iter()) {
                Ok(row) => rows.push(row),
                Err(bad) => {
                    let raw: Map<String, Value> = header
                        .iter()
                        .zip(record.iter())
                        .map(|(name, cell)| (name.to_string(), Value::String(cell.to_string())))
                        .collect();
                    let crm_id = raw
                        .get("Id")
                        .and_then(Value::as_str)
                        .unwrap_or("(row without Id)")
                        .to_string();
                    let reason = format!(
                        "{} {crm_id}: field {} {}",
                        stream.object, bad.column, bad.reason
                    );
                    tracing::warn!(connection = %self.ctx.settings.name, object = stream.object,
                        id = %crm_id, reason = %reason, "record quarantined");
                    let payload = Value::Object(raw).to_string();
                    tx.quarantine(&QuarantineEntry {
                        connection_id: self.ctx.connection_id,
                        crm_object: stream.object,
                        crm_id: &crm_id,
                        reason: &reason,
                        payload: Some(&payload),
                        sync_run_id: Some(self.ctx.run_id),
                        seen_at: observed_at,
                    })
                    .await?;
                    self.ctx.counters.quarantined += 1;
                }
            }
        }
        let newest = self
            .store_records(&mut tx, stream, kind, &rows, observed_at)
            .await?;
        checkpoint.newest = checkpoint.newest.max(newest);
        if ends_chunk {
            let position = match &checkpoint.locator {
                Some(_) => json!({ "stamp": stamp, "bulk": &*checkpoint }),
                None => json!({ "stamp": stamp_after(checkpoint, stamp) }),
            };
            self.save_bulk_cursor(&mut tx, stream, &position).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Moves the stream's cursor in `tx`.
    async fn save_bulk_cursor(
        &mut self,
        tx: &mut StoreTx,
        stream: &Stream,
        position: &Value,
    ) -> Result<(), SyncError> {
        tx.save_cursor(
            self.ctx.connection_id,
            stream.object,
            stream.cursor,
            position,
            Some(self.ctx.run_id),
            self.now(),
        )
        .await?;
        Ok(())
    }

    /// Forgets the job being read: the stream's `stamp` stays where it was.
    async fn drop_job(&mut self, stream: &Stream, stamp: Option<Millis>) -> Result<(), SyncError> {
        let mut tx = self.ctx.begin().await?;
        self.save_bulk_cursor(&mut tx, stream, &json!({ "stamp": stamp }))
            .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// The rows of one transaction, with what reading them needs.
struct Batch<'b> {
    columns: &'b CsvColumns,
    header: &'b csv::StringRecord,
    records: &'b [csv::StringRecord],
    observed_at: Millis,
}

/// The `stamp` cursor once a job is read: its newest row's stamp, which is where REST paging
/// ordered by stamp would have stopped, capped at the job's snapshot; the old stamp if the job
/// read nothing.
fn stamp_after(checkpoint: &BulkCheckpoint, stamp: Option<Millis>) -> Option<Millis> {
    checkpoint
        .newest
        .map(|newest| newest.min(checkpoint.created_at))
        .or(stamp)
}

/// `SELECT … FROM object WHERE window`, without `ORDER BY`: it would turn off the job's
/// chunking, and results come unordered anyway.
fn bulk_soql(stream: &Stream, from: Option<Millis>, until: Option<Millis>) -> String {
    format!(
        "SELECT {} FROM {}{}",
        stream.select,
        stream.object,
        stream_window(stream, from, until)
    )
}
