//! `pipewarden demo`: the whole sync path against the built-in emulator, in one command.
//!
//! It serves the emulator where the configuration's connections expect it (`config/demo.toml`:
//! 127.0.0.1:8787), syncs every connection, lets simulated months pass with a sync after each,
//! and prints what the store now holds.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use url::Url;

use crate::alerts::{Deliverer, DeliveryOptions};
use crate::config::settings::{ConnectionSettings, Endpoints};
use crate::config::Settings;
use crate::emulator::{self, EmulatorOptions, Scale};
use crate::record::Millis;
use crate::rules::{describe_evaluation, evaluate_after_sync};
use crate::stop::StopSignal;
use crate::store::{ConnectionTotals, Store, StoreError};
use crate::sync::{describe_run, sync_once, SyncError, SyncOptions};

/// What the demo generates and how long it lets time run.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Emulator seed.
    pub seed: u64,
    /// Emulated funnel size.
    pub scale: Scale,
    /// Simulated months to let pass, syncing after each.
    pub months: u32,
}

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The configuration's connections do not all point at one loopback address.
    #[error("the demo serves the emulator where the connections point; {0}")]
    Endpoints(String),
    /// The emulator could not start there.
    #[error("cannot start the emulator on {address}: {source}")]
    Emulator {
        /// Where it was to listen.
        address: SocketAddr,
        /// Why it could not.
        source: std::io::Error,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A sync failed.
    #[error(transparent)]
    Sync(#[from] SyncError),
    /// Printing failed.
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
    /// No HTTP client for Slack could be built.
    #[error("cannot build the Slack client: {0}")]
    SlackClient(reqwest::Error),
}

const MONTH: Duration = Duration::from_secs(30 * 86_400);

/// Runs the demo and prints its account to `out`.
pub async fn run(
    settings: &Settings,
    options: &DemoOptions,
    out: &mut dyn Write,
) -> Result<(), DemoError> {
    let address = emulator_address(&settings.connections)?;
    let emulator_options = EmulatorOptions {
        seed: options.seed,
        scale: options.scale,
        ..EmulatorOptions::default()
    };
    let emu = emulator::start(address, emulator_options)
        .await
        .map_err(|source| DemoError::Emulator { address, source })?;
    writeln!(
        out,
        "CRM emulator serving at {} (seed {}, {:?} funnel)",
        emu.base_url(),
        options.seed,
        options.scale
    )?;
    let store = Store::open_migrated(&settings.store).await?;
    let _sole = store.claim_sole_replica(&settings.store.url)?;
    writeln!(out, "storing into {}", settings.store.url)?;
    if holds_earlier_runs(&store, settings).await? {
        writeln!(out, "note: the store already holds an earlier demo run; syncs resume from its checkpoints (delete the store file for a fresh start)")?;
    }
    let outcome = sync_months(&store, settings, options, &emu, out).await;
    let stopped = emu.stop().await;
    outcome?;
    stopped.map_err(|source| DemoError::Emulator { address, source })?;
    for connection in &settings.connections {
        let id = store
            .ensure_connection(&connection.name, connection.kind, 0)
            .await?;
        print_totals(out, &connection.name, &store.connection_totals(id).await?)?;
    }
    store.close().await;
    Ok(())
}

async fn holds_earlier_runs(store: &Store, settings: &Settings) -> Result<bool, StoreError> {
    for connection in &settings.connections {
        let id = store
            .ensure_connection(&connection.name, connection.kind, 0)
            .await?;
        if store.connection_totals(id).await?.versions > 0 {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Syncs every connection, then `months` times lets a month pass and syncs again.
async fn sync_months(
    store: &Store,
    settings: &Settings,
    options: &DemoOptions,
    emu: &emulator::RunningEmulator,
    out: &mut dyn Write,
) -> Result<(), DemoError> {
    let sync_options = SyncOptions {
        triggered_by: "demo".into(),
        ..SyncOptions::default()
    };
    for month in 0..=options.months {
        if month > 0 {
            emu.clock().advance(MONTH);
        }
        writeln!(out, "\n{} (simulated)", day(emu.clock().now_ms()))?;
        for connection in &settings.connections {
            match sync_once(store, connection, &sync_options, &StopSignal::never()).await {
                Ok(report) => {
                    writeln!(
                        out,
                        "  {}: {}",
                        connection.name,
                        describe_run(&report.summary)
                    )?;
                    for evaluation in evaluate_after_sync(store, settings, connection).await {
                        writeln!(out, "    {}", describe_evaluation(&evaluation))?;
                    }
                }
                Err(err) => return Err(err.into()),
            }
        }
        if let Some(slack) = &settings.slack {
            let delivered = Deliverer::new(store.clone(), slack, DeliveryOptions::default())
                .map_err(DemoError::SlackClient)?
                .deliver_due()
                .await?;
            writeln!(
                out,
                "  slack: {} alert(s) delivered, {} to retry, {} failed",
                delivered.delivered, delivered.retried, delivered.failed
            )?;
        }
    }
    Ok(())
}

/// The one loopback address every connection points at.
fn emulator_address(connections: &[ConnectionSettings]) -> Result<SocketAddr, DemoError> {
    let mut found: Option<SocketAddr> = None;
    for connection in connections {
        let url: &Url = match &connection.endpoints {
            Endpoints::Salesforce { login_url, .. } => login_url,
            Endpoints::Hubspot { api_base_url, .. } => api_base_url,
        };
        let address = url
            .socket_addrs(|| None)
            .ok()
            .and_then(|addrs| addrs.into_iter().find(|a| a.ip().is_loopback()))
            .ok_or_else(|| {
                DemoError::Endpoints(format!(
                    "connection `{}` points at {url}, which is not a loopback address",
                    connection.name
                ))
            })?;
        if found.is_some_and(|first| first != address) {
            return Err(DemoError::Endpoints(format!(
                "connection `{}` points at {address}, another at {}",
                connection.name,
                found.unwrap_or(address)
            )));
        }
        found = Some(address);
    }
    found.ok_or_else(|| DemoError::Endpoints("the configuration has no connections".into()))
}

fn print_totals(out: &mut dyn Write, name: &str, totals: &ConnectionTotals) -> std::io::Result<()> {
    writeln!(out, "\nstored for {name}:")?;
    for (kind, count, deleted) in &totals.records {
        writeln!(out, "  {kind:<16} {count:>9} records ({deleted} deleted)")?;
    }
    writeln!(out, "  {:<16} {:>9}", "versions", totals.versions)?;
    writeln!(out, "  {:<16} {:>9}", "stage changes", totals.transitions)?;
    writeln!(out, "  {:<16} {:>9}", "milestones", totals.lifecycle_events)?;
    writeln!(out, "  {:<16} {:>9}", "field changes", totals.field_changes)?;
    writeln!(out, "  {:<16} {:>9}", "quarantined", totals.quarantined)
}

fn day(at: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(at)
        .map(|at| at.format("%Y-%m-%d").to_string())
        .unwrap_or_default()
}
