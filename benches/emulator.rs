//! Throughput of the CRM emulator: the funnel generator on its own, then Salesforce REST
//! queries, Bulk API 2.0 query jobs, HubSpot listings (plain and with property history) and
//! HubSpot search served over real HTTP on loopback.
//!
//! `cargo bench --bench emulator -- tiny small large` (default `small`). A plain `main`
//! that prints figures; the emulator and the client share this process, so the peak RSS
//! figures cover both.

use std::collections::HashSet;
use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use pipewarden::emulator::{
    self, EmulatorOptions, Funnel, HubspotOptions, RunningEmulator, SalesforceOptions, Scale,
};
use serde_json::{json, Value};
use url::Url;

const V: &str = "/services/data/v62.0";
const SF_CLIENT_ID: &str = "pipewarden-demo";
const SF_REFRESH_TOKEN: &str = "emulator-demo-refresh-token";
const HUBSPOT_TOKEN: &str = "pat-na1-emulator-demo-token";
const SEED: u64 = 1;
/// Salesforce's default page of `query` and the chunk asked of Bulk API results.
const REST_PAGE: u64 = 2_000;
const BULK_CHUNK: u64 = 50_000;
const HUBSPOT_PAGE: u64 = 100;
/// HubSpot's cap on a page that asks for property history.
const HUBSPOT_HISTORY_PAGE: u64 = 50;
/// HubSpot's largest search page.
const HUBSPOT_SEARCH_PAGE: u64 = 200;
/// Polls of a Bulk job before giving up (the emulator completes on the second).
const MAX_POLLS: u32 = 1_000;

type BenchResult<T> = Result<T, String>;

fn main() {
    let scales: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with('-'))
        .collect();
    let scales = if scales.is_empty() {
        vec!["small".to_string()]
    } else {
        scales
    };
    let parsed: Vec<(String, Scale)> = scales
        .iter()
        .map(|name| match name.as_str() {
            "tiny" => (name.clone(), Scale::Tiny),
            "small" => (name.clone(), Scale::Small),
            "large" => (name.clone(), Scale::Large),
            other => {
                eprintln!("unknown scale {other:?}: expected tiny, small or large");
                std::process::exit(2);
            }
        })
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    println!(
        "emulator benchmark: {} CPU(s) available, tokio multi-thread runtime, client and emulator in one process",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for (name, scale) in parsed {
        println!();
        println!("=== scale {name} ===");
        if let Err(message) = runtime.block_on(bench_scale(scale)) {
            eprintln!("benchmark failed at scale {name}: {message}");
            std::process::exit(1);
        }
    }
}

async fn bench_scale(scale: Scale) -> BenchResult<()> {
    let expected = generator(scale);

    let options = EmulatorOptions {
        seed: SEED,
        start_ms: emulator::DEFAULT_START_MS,
        scale,
        salesforce: SalesforceOptions {
            daily_api_limit: u64::MAX / 2,
            ..SalesforceOptions::default()
        },
        hubspot: HubspotOptions {
            burst_per_ten_seconds: u64::MAX / 2,
            daily_limit: u64::MAX / 2,
            ..HubspotOptions::default()
        },
        ..EmulatorOptions::default()
    };
    let listen: SocketAddr = "127.0.0.1:0".parse().expect("socket address");
    let started = Instant::now();
    let emu = emulator::start(listen, options)
        .await
        .map_err(|err| format!("emulator start: {err}"))?;
    println!(
        "emulator started in {:.1} ms at {}",
        ms(started.elapsed()),
        emu.base_url()
    );
    let client = Client::new(&emu);
    let token = client.salesforce_token().await?;

    let opportunity =
        "SELECT Id, Name, StageName, Amount, CloseDate, OwnerId, SystemModstamp FROM Opportunity";
    let lead =
        "SELECT Id, Name, Company, Email, Status, LeadSource, OwnerId, SystemModstamp FROM Lead";
    // A generous bound: every possible record on its own page, and then some.
    let max_rest_pages = expected.deal_bound.max(expected.lead_bound) / REST_PAGE + 10;
    let max_bulk_pages = expected.deal_bound.max(expected.lead_bound) / BULK_CHUNK + 10;
    let max_hubspot_pages = expected.deal_bound / HUBSPOT_PAGE + 10;

    println!("-- Salesforce REST query, paged by nextRecordsUrl ({REST_PAGE} per page)");
    for (object, text) in [("Opportunity", opportunity), ("Lead", lead)] {
        rest_query(&client, &token, object, text, max_rest_pages).await?;
    }
    println!("-- Salesforce Bulk API 2.0 query job, CSV paged by Sforce-Locator (maxRecords={BULK_CHUNK})");
    for (object, text) in [("Opportunity", opportunity), ("Lead", lead)] {
        bulk_query(&client, &token, object, text, max_bulk_pages).await?;
    }
    println!(
        "-- HubSpot GET /crm/v3/objects/deals?limit={HUBSPOT_PAGE}, paged by paging.next.after"
    );
    println!(
        "   (burst_per_ten_seconds and daily_limit raised to u64::MAX/2 so this measures the emulator,"
    );
    println!(
        "    not the 100-per-10-s Starter burst limit, which would cap a real client at 10 pages/s = 1,000 records/s)"
    );
    hubspot_deals(&client, "deals", HUBSPOT_PAGE, "", max_hubspot_pages).await?;
    println!(
        "-- HubSpot GET /crm/v3/objects/deals?limit={HUBSPOT_HISTORY_PAGE}&propertiesWithHistory=dealstage,amount"
    );
    hubspot_deals(
        &client,
        "history",
        HUBSPOT_HISTORY_PAGE,
        "dealstage,amount",
        max_hubspot_pages * 2,
    )
    .await?;
    println!("-- HubSpot POST /crm/v3/objects/deals/search (limit={HUBSPOT_SEARCH_PAGE}, sorted by amount, paged by offset up to 10,000)");
    hubspot_search(&client, max_hubspot_pages).await?;

    emu.stop()
        .await
        .map_err(|err| format!("emulator stop: {err}"))?;
    let (hwm, rss) = memory();
    println!("peak RSS at end (VmHWM): {hwm} kB; current RSS (VmRSS): {rss} kB");
    Ok(())
}

/// What the generator found, to size the page bounds of the HTTP runs.
struct Generated {
    lead_bound: u64,
    deal_bound: u64,
}

fn generator(scale: Scale) -> Generated {
    let (hwm_before, _) = memory();
    let now = emulator::DEFAULT_START_MS;
    let started = Instant::now();
    let funnel = Funnel::new(SEED, scale.shape(), now);
    let lead_bound = funnel.lead_bound(now);
    let deal_bound = funnel.deal_bound(now);
    let mut leads_existing = 0u64;
    let mut lead_steps = 0usize;
    for index in 0..lead_bound {
        let life = black_box(funnel.lead(index));
        if life.created_at <= now {
            leads_existing += 1;
        }
        lead_steps += life.steps.len();
    }
    let lead_time = started.elapsed();
    let deals_started = Instant::now();
    let mut deals = 0u64;
    let mut deals_existing = 0u64;
    let mut deal_steps = 0usize;
    for index in 0..deal_bound {
        if let Some(life) = black_box(funnel.deal(index)) {
            deals += 1;
            if life.created_at <= now {
                deals_existing += 1;
            }
            deal_steps += life.steps.len();
        }
    }
    let deal_time = deals_started.elapsed();
    let total = started.elapsed();
    let (hwm_after, _) = memory();
    let lives = lead_bound + deals;
    println!("-- Generator (Funnel::lead / Funnel::deal at the start instant, in-process)");
    println!(
        "   leads: {lead_bound} lives ({leads_existing} created by now, {lead_steps} steps) in {:.1} ms = {} lives/s",
        ms(lead_time),
        rate(lead_bound, lead_time)
    );
    println!(
        "   deals: {deal_bound} numbers, {deals} lives ({deals_existing} created by now, {deal_steps} steps) in {:.1} ms = {} lives/s",
        ms(deal_time),
        rate(deals, deal_time)
    );
    println!(
        "   total: {lives} lives in {:.1} ms = {} records/s",
        ms(total),
        rate(lives, total)
    );
    println!("   peak RSS (VmHWM) before: {hwm_before} kB, after: {hwm_after} kB");
    Generated {
        lead_bound,
        deal_bound,
    }
}

/// A reqwest client that counts the requests it sends.
struct Client {
    http: reqwest::Client,
    base: Url,
    requests: std::cell::Cell<u64>,
}

impl Client {
    fn new(emu: &RunningEmulator) -> Client {
        Client {
            http: reqwest::Client::new(),
            base: emu.base_url().clone(),
            requests: std::cell::Cell::new(0),
        }
    }

    fn url(&self, path_and_query: &str) -> BenchResult<Url> {
        self.base
            .join(path_and_query)
            .map_err(|err| format!("bad url {path_and_query}: {err}"))
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> BenchResult<reqwest::Response> {
        self.requests.set(self.requests.get() + 1);
        request
            .send()
            .await
            .map_err(|err| format!("request failed: {err}"))
    }

    async fn salesforce_token(&self) -> BenchResult<String> {
        let request = self.http.post(self.url("/services/oauth2/token")?).form(&[
            ("grant_type", "refresh_token"),
            ("client_id", SF_CLIENT_ID),
            ("refresh_token", SF_REFRESH_TOKEN),
        ]);
        let body = json_ok(self.send(request).await?).await?;
        body["access_token"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("token response without access_token: {body}"))
    }
}

async fn json_ok(response: reqwest::Response) -> BenchResult<Value> {
    let status = response.status();
    let text = response
        .text()
        .await
        .map_err(|err| format!("reading body: {err}"))?;
    if !status.is_success() {
        return Err(format!("HTTP {status}: {}", truncate(&text)));
    }
    serde_json::from_str(&text).map_err(|err| format!("bad JSON ({err}): {}", truncate(&text)))
}

fn truncate(text: &str) -> &str {
    match text.char_indices().nth(500) {
        Some((at, _)) => &text[..at],
        None => text,
    }
}

async fn rest_query(
    client: &Client,
    token: &str,
    object: &str,
    text: &str,
    max_pages: u64,
) -> BenchResult<()> {
    let calls_before = client.requests.get();
    let (hwm_before, _) = memory();
    let started = Instant::now();
    let mut address = client.url(&format!("{V}/query"))?;
    address.query_pairs_mut().append_pair("q", text);
    let mut body = json_ok(
        client
            .send(client.http.get(address).bearer_auth(token))
            .await?,
    )
    .await?;
    let first_page = started.elapsed();
    let total_size = body["totalSize"]
        .as_u64()
        .ok_or_else(|| format!("no totalSize: {}", truncate(&body.to_string())))?;
    let mut records = 0u64;
    let mut pages = 0u64;
    let mut ids = HashSet::new();
    let mut slowest_next = Duration::ZERO;
    loop {
        let page = body["records"]
            .as_array()
            .ok_or_else(|| format!("page without records: {}", truncate(&body.to_string())))?;
        records += page.len() as u64;
        pages += 1;
        for record in page {
            if let Some(id) = record["Id"].as_str() {
                ids.insert(id.to_string());
            }
        }
        if body["done"] == json!(true) {
            break;
        }
        if pages >= max_pages {
            return Err(format!(
                "{object}: still not done after {pages} pages (max {max_pages})"
            ));
        }
        let next = body["nextRecordsUrl"]
            .as_str()
            .ok_or_else(|| "page neither done nor with nextRecordsUrl".to_string())?
            .to_string();
        let page_started = Instant::now();
        body = json_ok(
            client
                .send(client.http.get(client.url(&next)?).bearer_auth(token))
                .await?,
        )
        .await?;
        slowest_next = slowest_next.max(page_started.elapsed());
    }
    let wall = started.elapsed();
    let calls = client.requests.get() - calls_before;
    let (hwm_after, _) = memory();
    if records != total_size || ids.len() as u64 != records {
        return Err(format!(
            "{object}: got {records} records ({} distinct ids), totalSize says {total_size}",
            ids.len()
        ));
    }
    let rest = wall.saturating_sub(first_page);
    println!(
        "   {object:<11} {records:>9} records, {pages:>4} pages, {calls:>4} API calls, wall {:>9.1} ms = {:>9} records/s",
        ms(wall),
        rate(records, wall)
    );
    println!(
        "               first page (parse + evaluate whole query + render {} rows) {:.1} ms; other {} pages {:.1} ms = {} records/s (slowest {:.1} ms); VmHWM {hwm_before} -> {hwm_after} kB",
        records.min(REST_PAGE),
        ms(first_page),
        pages - 1,
        ms(rest),
        rate(records.saturating_sub(REST_PAGE), rest),
        ms(slowest_next)
    );
    Ok(())
}

async fn bulk_query(
    client: &Client,
    token: &str,
    object: &str,
    text: &str,
    max_pages: u64,
) -> BenchResult<()> {
    let calls_before = client.requests.get();
    let (hwm_before, _) = memory();
    let started = Instant::now();
    let jobs = client.url(&format!("{V}/jobs/query"))?;
    let created = json_ok(
        client
            .send(
                client
                    .http
                    .post(jobs.clone())
                    .bearer_auth(token)
                    .json(&json!({"operation": "query", "query": text})),
            )
            .await?,
    )
    .await?;
    let created_in = started.elapsed();
    let job = created["id"]
        .as_str()
        .ok_or_else(|| format!("job without id: {created}"))?
        .to_string();
    let job_url = client.url(&format!("{V}/jobs/query/{job}"))?;
    let mut polls = 0u32;
    loop {
        let info = json_ok(
            client
                .send(client.http.get(job_url.clone()).bearer_auth(token))
                .await?,
        )
        .await?;
        polls += 1;
        match info["state"].as_str() {
            Some("JobComplete") => break,
            Some("UploadComplete" | "InProgress") => {}
            other => return Err(format!("{object}: job {job} in state {other:?}: {info}")),
        }
        if polls >= MAX_POLLS {
            return Err(format!(
                "{object}: job {job} not complete after {polls} polls"
            ));
        }
    }
    let complete_in = started.elapsed();
    let results = client.url(&format!("{V}/jobs/query/{job}/results"))?;
    let mut locator: Option<String> = None;
    let mut records = 0u64;
    let mut pages = 0u64;
    let mut bytes = 0usize;
    let mut first_chunk = None;
    loop {
        if pages >= max_pages {
            return Err(format!(
                "{object}: Bulk results not done after {pages} chunks (max {max_pages})"
            ));
        }
        let mut address = results.clone();
        {
            let mut pairs = address.query_pairs_mut();
            pairs.append_pair("maxRecords", &BULK_CHUNK.to_string());
            if let Some(locator) = &locator {
                pairs.append_pair("locator", locator);
            }
        }
        let chunk_started = Instant::now();
        let response = client
            .send(client.http.get(address).bearer_auth(token))
            .await?;
        let status = response.status();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(str::to_string)
        };
        let next = header("Sforce-Locator");
        let count = header("Sforce-NumberOfRecords");
        let csv = response
            .text()
            .await
            .map_err(|err| format!("reading CSV: {err}"))?;
        if !status.is_success() {
            return Err(format!(
                "{object}: results HTTP {status}: {}",
                truncate(&csv)
            ));
        }
        first_chunk.get_or_insert(chunk_started.elapsed());
        let count: u64 = count
            .and_then(|count| count.parse().ok())
            .ok_or("results without Sforce-NumberOfRecords")?;
        let lines = csv.lines().count().saturating_sub(1) as u64;
        if lines != count {
            return Err(format!(
                "{object}: chunk says {count} records but holds {lines} CSV rows"
            ));
        }
        records += count;
        bytes += csv.len();
        pages += 1;
        match next.as_deref() {
            Some("null") => break,
            Some(next) => locator = Some(next.to_string()),
            None => return Err(format!("{object}: results without Sforce-Locator")),
        }
    }
    let wall = started.elapsed();
    let calls = client.requests.get() - calls_before;
    let deleted = client
        .send(client.http.delete(job_url).bearer_auth(token))
        .await?;
    if !deleted.status().is_success() {
        return Err(format!("{object}: deleting job: HTTP {}", deleted.status()));
    }
    let (hwm_after, _) = memory();
    let download = wall.saturating_sub(complete_in);
    println!(
        "   {object:<11} {records:>9} records, {pages:>4} chunks, {calls:>4} API calls ({polls} polls), wall {:>9.1} ms = {:>9} records/s",
        ms(wall),
        rate(records, wall)
    );
    println!(
        "               create job (parse + evaluate whole query) {:.1} ms; results {:.1} ms = {} records/s, {:.1} MB CSV (first chunk {:.1} ms); VmHWM {hwm_before} -> {hwm_after} kB",
        ms(created_in),
        ms(download),
        rate(records, download),
        bytes as f64 / 1e6,
        ms(first_chunk.unwrap_or_default())
    );
    Ok(())
}

async fn hubspot_deals(
    client: &Client,
    label: &str,
    page_size: u64,
    with_history: &str,
    max_pages: u64,
) -> BenchResult<()> {
    let calls_before = client.requests.get();
    let (hwm_before, _) = memory();
    let started = Instant::now();
    let mut after: Option<String> = None;
    let mut records = 0u64;
    let mut pages = 0u64;
    let mut ids = HashSet::new();
    let mut first_page = None;
    let mut slowest = Duration::ZERO;
    loop {
        if pages >= max_pages {
            return Err(format!(
                "HubSpot deals: not done after {pages} pages (max {max_pages})"
            ));
        }
        let mut address = client.url("/crm/v3/objects/deals")?;
        {
            let mut pairs = address.query_pairs_mut();
            pairs.append_pair("limit", &page_size.to_string());
            if !with_history.is_empty() {
                pairs.append_pair("propertiesWithHistory", with_history);
            }
            if let Some(after) = &after {
                pairs.append_pair("after", after);
            }
        }
        let page_started = Instant::now();
        let body = json_ok(
            client
                .send(client.http.get(address).bearer_auth(HUBSPOT_TOKEN))
                .await?,
        )
        .await?;
        let took = page_started.elapsed();
        first_page.get_or_insert(took);
        slowest = slowest.max(took);
        let results = body["results"]
            .as_array()
            .ok_or_else(|| format!("page without results: {}", truncate(&body.to_string())))?;
        records += results.len() as u64;
        pages += 1;
        for deal in results {
            if let Some(id) = deal["id"].as_str() {
                ids.insert(id.to_string());
            }
        }
        match body["paging"]["next"]["after"].as_str() {
            Some(next) => after = Some(next.to_string()),
            None => break,
        }
    }
    let wall = started.elapsed();
    let calls = client.requests.get() - calls_before;
    let (hwm_after, _) = memory();
    if ids.len() as u64 != records {
        return Err(format!(
            "HubSpot deals: {records} records but {} distinct ids",
            ids.len()
        ));
    }
    println!(
        "   {label:<11} {records:>9} records, {pages:>4} pages, {calls:>4} API calls, wall {:>9.1} ms = {:>9} records/s",
        ms(wall),
        rate(records, wall)
    );
    println!(
        "               first page {:.1} ms, mean page {:.2} ms, slowest page {:.1} ms; VmHWM {hwm_before} -> {hwm_after} kB",
        ms(first_page.unwrap_or_default()),
        ms(wall) / pages.max(1) as f64,
        ms(slowest)
    );
    Ok(())
}

/// Pages through a sorted deal search. Search answers five calls a wall-clock second, so a
/// refused call waits and retries, and the rate counts only the time of answered pages.
async fn hubspot_search(client: &Client, max_pages: u64) -> BenchResult<()> {
    let calls_before = client.requests.get();
    let (hwm_before, _) = memory();
    let mut after: Option<String> = None;
    let mut records = 0u64;
    let mut pages = 0u64;
    let mut throttled = 0u64;
    let mut served = Duration::ZERO;
    let mut first_page = None;
    let total = loop {
        if pages >= max_pages {
            return Err(format!(
                "HubSpot search: not done after {pages} pages (max {max_pages})"
            ));
        }
        let mut request = json!({
            "limit": HUBSPOT_SEARCH_PAGE,
            "sorts": [{"propertyName": "amount", "direction": "DESCENDING"}],
            "properties": ["dealname", "amount", "dealstage", "hs_lastmodifieddate"],
        });
        if let Some(after) = &after {
            request["after"] = json!(after);
        }
        let page_started = Instant::now();
        let response = client
            .send(
                client
                    .http
                    .post(client.url("/crm/v3/objects/deals/search")?)
                    .bearer_auth(HUBSPOT_TOKEN)
                    .json(&request),
            )
            .await?;
        if response.status() == reqwest::StatusCode::TOO_MANY_REQUESTS {
            throttled += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let body = json_ok(response).await?;
        let took = page_started.elapsed();
        served += took;
        first_page.get_or_insert(took);
        let results = body["results"]
            .as_array()
            .ok_or_else(|| format!("page without results: {}", truncate(&body.to_string())))?;
        records += results.len() as u64;
        pages += 1;
        match body["paging"]["next"]["after"].as_str() {
            Some(next) => after = Some(next.to_string()),
            None => break body["total"].as_u64().unwrap_or(0),
        }
    };
    let calls = client.requests.get() - calls_before;
    let (hwm_after, _) = memory();
    println!(
        "   search      {records:>9} records, {pages:>4} pages, {calls:>4} API calls, served {:>7.1} ms = {:>9} records/s",
        ms(served),
        rate(records, served)
    );
    println!(
        "               total {total} matches; first page {:.1} ms, mean page {:.2} ms; {throttled} calls refused by the 5/s search limit; VmHWM {hwm_before} -> {hwm_after} kB",
        ms(first_page.unwrap_or_default()),
        ms(served) / pages.max(1) as f64,
    );
    Ok(())
}

/// (VmHWM, VmRSS) of this process in kB, 0 where unreadable.
fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

fn rate(count: u64, duration: Duration) -> u64 {
    let secs = duration.as_secs_f64();
    if secs > 0.0 {
        (count as f64 / secs) as u64
    } else {
        0
    }
}
