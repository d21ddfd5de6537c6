//! The command line: argument definitions and the function behind each subcommand.
//!
//! `main.rs` only parses arguments, sets up logging and maps the result of [`run`] to an
//! exit status; everything a command does lives here or in the modules it calls.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio::task::JoinHandle;

use crate::config::{self, ConfigError, Settings};
use crate::daemon::{self, DaemonError};
use crate::demo::{self, DemoError, DemoOptions};
use crate::emulator::{self, EmulatorOptions};
use crate::query::{self, Format, QueryError, Report};
use crate::recycle::{self, RecycleError, RecycleOptions};
use crate::rules::{self, RulesError, Severity, WaiveError};
use crate::stop::{StopHandle, StopSignal};
use crate::store::{Store, StoreError, SyncRunStatus};
use crate::sync::{self, SyncError, SyncOptions};
use crate::telemetry::LogFormat;
use crate::writeback;

/// pipewarden: CRM pipeline snapshots, stage gates, lead recycling and pipeline history.
#[derive(Debug, Parser)]
#[command(name = "pipewarden", version, about, propagate_version = true)]
pub struct Cli {
    /// Configuration file (TOML). Without it, built-in defaults and PIPEWARDEN__… variables apply.
    #[arg(long, global = true, env = "PIPEWARDEN_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Work with the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Bring the store's schema up to date, then exit.
    Migrate,
    /// Serve the built-in CRM emulator until interrupted (Ctrl-C or SIGTERM).
    Emulate(EmulateArgs),
    /// Sync the configured connections into the store.
    Sync(SyncArgs),
    /// Run the daemon: sync every connection on its schedule and serve /healthz, /readyz and
    /// /metrics, until SIGTERM or Ctrl-C.
    Run,
    /// Serve the built-in CRM emulator where the configuration points (config/demo.toml), sync
    /// it, let simulated months pass while syncing, and print what was stored.
    Demo(DemoArgs),
    /// Answer a question about the pipeline's past from the store (the CRM is not called).
    #[command(subcommand)]
    Query(QueryCommand),
    /// Check stage-gate rules against the stored CRM metadata, or replay them over history.
    #[command(subcommand)]
    Rules(RulesCommand),
    /// Work with stage-gate violations.
    #[command(subcommand)]
    Violations(ViolationsCommand),
    /// Put stale, unworked, lost and disqualified leads back into nurture.
    #[command(subcommand)]
    Recycle(RecycleCommand),
    /// List the CRM writes pipewarden decided (stage reverts, recycle actions), newest first,
    /// with the values written, the precondition, and what the CRM answered: the audit of
    /// the write-back outbox. Dry runs write nothing and are not listed.
    Writes(WritesArgs),
}

/// `pipewarden writes …`
#[derive(Debug, clap::Args)]
pub struct WritesArgs {
    /// Only this connection (by name).
    #[arg(long, value_name = "NAME")]
    pub connection: Option<String>,
    /// Only writes of this origin.
    #[arg(long, value_enum)]
    pub origin: Option<WriteOrigin>,
    /// Only writes in this state.
    #[arg(long, value_enum)]
    pub status: Option<WriteStatus>,
    /// Only writes decided from this day (YYYY-MM-DD, UTC) or instant (RFC 3339) on.
    #[arg(long, value_name = "DATE", value_parser = parse_since)]
    pub since: Option<i64>,
    /// At most this many.
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

/// Why pipewarden wrote to the CRM.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum WriteOrigin {
    /// A stage-gate rule in revert mode.
    Revert,
    /// A recycle policy.
    Recycle,
}

/// Where a write stands.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum WriteStatus {
    /// Waiting for delivery (or a retry).
    Pending,
    /// Being delivered, or left mid-call by a process that stopped.
    #[value(name = "in_flight")]
    InFlight,
    /// The CRM holds it.
    Applied,
    /// Refused by the CRM or by its precondition, or given up after retries.
    Failed,
}

impl WriteOrigin {
    /// The name the store uses.
    fn as_str(self) -> &'static str {
        match self {
            WriteOrigin::Revert => "revert",
            WriteOrigin::Recycle => "recycle",
        }
    }
}

impl WriteStatus {
    /// The name the store uses.
    fn as_str(self) -> &'static str {
        match self {
            WriteStatus::Pending => "pending",
            WriteStatus::InFlight => "in_flight",
            WriteStatus::Applied => "applied",
            WriteStatus::Failed => "failed",
        }
    }
}

/// `pipewarden recycle …`
#[derive(Debug, Subcommand)]
pub enum RecycleCommand {
    /// Show what each policy would change per record, and why; nothing is written.
    Plan(RecycleArgs),
    /// Record the plan and write it to the CRM through the write-back outbox (policies with
    /// dry_run = true, the default, are only recorded).
    Apply(RecycleArgs),
}

/// `pipewarden recycle plan|apply …`
#[derive(Debug, clap::Args)]
pub struct RecycleArgs {
    /// Only this policy (by name).
    #[arg(long, value_name = "NAME")]
    pub policy: Option<String>,
    /// Judge ages as of this day (YYYY-MM-DD, UTC) or instant (RFC 3339) instead of now: for
    /// replays, and for a CRM whose clock is not ours (the emulator's simulated time).
    #[arg(long, value_name = "INSTANT", value_parser = parse_since)]
    pub as_of: Option<i64>,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

/// `pipewarden query …`: one subcommand per question, each also served at `/api/v1/…`.
#[derive(Debug, Subcommand)]
pub enum QueryCommand {
    /// Every open deal as it was at an instant, with totals by stage.
    AsOf(QueryArgs<query::as_of::AsOfParams>),
    /// Every version, stage move, milestone, violation and recycle action of one record.
    History(QueryArgs<query::history::HistoryParams>),
    /// Deals created, won, lost, removed, moved, re-priced or re-dated between two instants.
    PipelineDiff(QueryArgs<query::pipeline_diff::PipelineDiffParams>),
    /// Per stage: entries, conversion to the next stage and to won, dwell times, stuck deals.
    Funnel(QueryArgs<query::funnel::FunnelParams>),
    /// Records by the period of a start event, and when they reached an outcome.
    Cohort(QueryArgs<query::cohort::CohortParams>),
    /// Per campaign: members, responses, the deals and wins they led to, against the average.
    Campaigns(QueryArgs<query::campaigns::CampaignsParams>),
    /// Records recycled in a window, how many returned and after how long, by policy.
    Recycled(QueryArgs<query::recycled::RecycledParams>),
}

/// A query's own parameters and the output format.
#[derive(Debug, clap::Args)]
pub struct QueryArgs<P: clap::Args> {
    /// The query's parameters.
    #[command(flatten)]
    pub params: P,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

/// `pipewarden rules …`
#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Validate each rule's pipeline, stages and fields against what the last sync stored.
    Check,
    /// Evaluate the rules over the stage changes already stored, and report what would have
    /// fired; nothing is stored or sent.
    Backtest(BacktestArgs),
}

/// `pipewarden rules backtest …`
#[derive(Debug, clap::Args)]
pub struct BacktestArgs {
    /// Judge stage changes from this day on (YYYY-MM-DD, UTC) or this instant (RFC 3339).
    #[arg(long, value_name = "DATE", value_parser = parse_since)]
    pub since: i64,
    /// Only this rule (by name).
    #[arg(long, value_name = "NAME")]
    pub rule: Option<String>,
}

/// `pipewarden violations …`
#[derive(Debug, Subcommand)]
pub enum ViolationsCommand {
    /// Waive an open violation, with a reason that is kept with it.
    Waive(WaiveArgs),
}

/// `pipewarden violations waive …`
#[derive(Debug, clap::Args)]
pub struct WaiveArgs {
    /// The violation's id.
    pub id: i64,
    /// Why it is waived.
    #[arg(long)]
    pub reason: String,
    /// Who waives it (default: $USER).
    #[arg(long, env = "USER", default_value = "cli")]
    pub by: String,
}

/// A date or instant as the queries read them, as epoch milliseconds.
fn parse_since(text: &str) -> Result<i64, String> {
    crate::query::parse_instant("since", text).map_err(|err| err.to_string())
}

/// `pipewarden demo …`
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Seed of the emulated data.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Size of the emulated funnel.
    #[arg(long, value_enum, default_value = "tiny")]
    pub scale: emulator::Scale,
    /// Simulated months to let pass, syncing after each.
    #[arg(long, default_value_t = 3)]
    pub months: u32,
}

/// `pipewarden sync …`
#[derive(Debug, clap::Args)]
pub struct SyncArgs {
    /// Sync each connection once, from its last checkpoint to now, then exit (for cron).
    #[arg(long, required = true)]
    pub once: bool,
    /// Only this connection (by name).
    #[arg(long, value_name = "NAME")]
    pub connection: Option<String>,
}

/// `pipewarden emulate …`
#[derive(Debug, clap::Args)]
pub struct EmulateArgs {
    /// Seed of generated tokens and data; the same seed gives the same emulator.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// How much generated funnel history to serve.
    #[arg(long, value_enum, default_value = "small")]
    pub scale: emulator::Scale,
    /// Address to listen on (the demo configuration expects 127.0.0.1:8787).
    #[arg(long, default_value = "127.0.0.1:8787")]
    pub listen: std::net::SocketAddr,
    /// Serve HTTPS with a certificate signed by a CA made at start.
    #[arg(long)]
    pub tls: bool,
    /// Where to write that CA's certificate (PEM), for clients to trust.
    #[arg(long, requires = "tls", value_name = "FILE")]
    pub ca_out: Option<std::path::PathBuf>,
}

/// `pipewarden config …`
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration and print the effective settings, secrets redacted.
    Check,
}

/// Why a command failed; each kind has its own exit status.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The configuration is missing or invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The emulator could not listen or failed while serving.
    #[error("emulator: {0}")]
    Emulator(std::io::Error),
    /// The emulator's CA certificate could not be written where asked.
    #[error("writing the emulator's CA certificate to {path}: {source}")]
    CaCertificate {
        /// The `--ca-out` path.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `--rule` names no configured rule.
    #[error("no rule named `{0}` in the configuration")]
    UnknownRule(String),
    /// `--connection` names no configured connection.
    #[error("no connection named `{0}` in the configuration")]
    UnknownConnection(String),
    /// At least one connection failed to sync; each failure was reported.
    #[error("{failed} of {total} connection(s) failed to sync")]
    SyncFailed {
        /// Connections that failed.
        failed: usize,
        /// Connections attempted.
        total: usize,
    },
    /// A stop (Ctrl-C, SIGTERM) ended `sync --once` before every connection was synced.
    #[error("stopped on request before every connection was synced; the next run resumes from the last checkpoints")]
    Stopped,
    /// The demo failed.
    #[error(transparent)]
    Demo(DemoError),
    /// A query could not be answered (a bad parameter, or the store failed).
    #[error(transparent)]
    Query(#[from] QueryError),
    /// Rules could not be evaluated.
    #[error(transparent)]
    Rules(#[from] RulesError),
    /// `rules check` found rules naming what the CRM does not have.
    #[error("{0} rule problem(s) found; see above")]
    RuleProblems(usize),
    /// A waiver was refused.
    #[error(transparent)]
    Waive(#[from] WaiveError),
    /// The daemon failed.
    #[error(transparent)]
    Daemon(DaemonError),
    /// Recycling failed.
    #[error(transparent)]
    Recycle(#[from] RecycleError),
    /// Writing the command's output failed.
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
    /// The effective settings could not be rendered.
    #[error("cannot render settings: {0}")]
    Render(#[from] toml::ser::Error),
}

impl CliError {
    /// 3 for configuration errors (fix the file), 1 for everything else; clap uses 2 for usage.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            CliError::Config(_) => ExitCode::from(3),
            CliError::Query(QueryError::BadParameter { .. }) => ExitCode::from(2),
            _ => ExitCode::FAILURE,
        }
    }
}

/// Runs the parsed command.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Config(ConfigCommand::Check) => config_check(cli.config),
        Command::Migrate => migrate(cli.config).await,
        Command::Emulate(args) => emulate(args).await,
        Command::Sync(args) => sync_once(cli.config, args).await,
        Command::Run => run_daemon(cli.config).await,
        Command::Demo(args) => demo(cli.config, args).await,
        Command::Query(command) => run_query(cli.config, command).await,
        Command::Rules(RulesCommand::Check) => rules_check(cli.config).await,
        Command::Rules(RulesCommand::Backtest(args)) => rules_backtest(cli.config, args).await,
        Command::Violations(ViolationsCommand::Waive(args)) => waive(cli.config, args).await,
        Command::Recycle(command) => run_recycle(cli.config, command).await,
        Command::Writes(args) => list_writes(cli.config, args).await,
    }
}

async fn list_writes(path: Option<PathBuf>, args: WritesArgs) -> Result<(), CliError> {
    let settings = load_settings(path)?;
    let store = Store::open_migrated(&settings.store).await?;
    let listed = async {
        if let Some(name) = &args.connection {
            if !settings.connections.iter().any(|c| &c.name == name) {
                return Err(CliError::UnknownConnection(name.clone()));
            }
        }
        let filter = writeback::audit::WriteFilter {
            connection: args.connection.clone(),
            origin: args.origin.map(|o| o.as_str().to_string()),
            status: args.status.map(|s| s.as_str().to_string()),
            since_ms: args.since,
            limit: i64::from(args.limit),
        };
        let audit = writeback::audit::list(&store, &filter).await?;
        print_report(&audit, args.format)
    }
    .await;
    store.close().await;
    listed
}

async fn run_recycle(path: Option<PathBuf>, command: RecycleCommand) -> Result<(), CliError> {
    let settings = load_settings(path)?;
    let store = Store::open_migrated(&settings.store).await?;
    let now = crate::record::wall_clock();
    let result = match command {
        RecycleCommand::Plan(args) => {
            let options = RecycleOptions {
                policy: args.policy,
                as_of: args.as_of.unwrap_or(now),
            };
            // Returns found since the last run are stored before planning, as apply does.
            let planned = async {
                recycle::outcomes::evaluate(&store, now).await?;
                recycle::plan(&store, &settings, &options).await
            }
            .await;
            planned
                .map_err(CliError::from)
                .and_then(|plan| print_report(&plan, args.format))
        }
        RecycleCommand::Apply(args) => {
            let options = RecycleOptions {
                policy: args.policy,
                as_of: args.as_of.unwrap_or(now),
            };
            let applied = match store.claim_sole_replica(&settings.store.url) {
                Ok(_sole) => recycle::apply(&store, &settings, &options, &Default::default()).await,
                Err(err) => Err(err.into()),
            };
            applied
                .map_err(CliError::from)
                .and_then(|report| print_report(&report, args.format))
        }
    };
    store.close().await;
    result
}

async fn run_query(path: Option<PathBuf>, command: QueryCommand) -> Result<(), CliError> {
    let settings = load_settings(path)?;
    let store = Store::open_migrated(&settings.store).await?;
    let answered = answer_query(&store, &settings, command).await;
    store.close().await;
    answered
}

async fn answer_query(
    store: &Store,
    settings: &Settings,
    command: QueryCommand,
) -> Result<(), CliError> {
    match command {
        QueryCommand::AsOf(args) => {
            print_report(&query::as_of::run(store, &args.params).await?, args.format)
        }
        QueryCommand::History(args) => print_report(
            &query::history::run(store, &args.params).await?,
            args.format,
        ),
        QueryCommand::PipelineDiff(args) => print_report(
            &query::pipeline_diff::run(store, &args.params).await?,
            args.format,
        ),
        QueryCommand::Funnel(args) => print_report(
            &query::funnel::run(store, settings, &args.params).await?,
            args.format,
        ),
        QueryCommand::Cohort(args) => {
            print_report(&query::cohort::run(store, &args.params).await?, args.format)
        }
        QueryCommand::Campaigns(args) => print_report(
            &query::campaigns::run(store, &args.params).await?,
            args.format,
        ),
        QueryCommand::Recycled(args) => print_report(
            &query::recycled::run(store, &args.params).await?,
            args.format,
        ),
    }
}

fn print_report(report: &impl Report, format: Format) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    query::render(report, format, &mut out)?;
    out.flush()?;
    Ok(())
}

fn load_settings(path: Option<PathBuf>) -> Result<Settings, ConfigError> {
    config::load(path.as_deref())
}

fn config_check(path: Option<PathBuf>) -> Result<(), CliError> {
    let settings = load_settings(path)?;
    let source = settings.source_file.as_ref().map_or_else(
        || "built-in defaults".to_string(),
        |p| p.display().to_string(),
    );
    let rendered = toml::to_string_pretty(&settings)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "# configuration OK: {source}")?;
    writeln!(
        out,
        "# effective settings (secrets show only where they are read from):"
    )?;
    out.write_all(rendered.as_bytes())?;
    Ok(())
}

async fn migrate(path: Option<PathBuf>) -> Result<(), CliError> {
    let settings = load_settings(path)?;
    let store = Store::connect(&settings.store).await?;
    let report = store.migrate().await?;
    store.close().await;
    tracing::info!(
        backend = report.backend.as_str(),
        applied = report.applied.len(),
        schema_version = report.current,
        "store migrated"
    );
    let mut out = std::io::stdout().lock();
    match (report.applied.as_slice(), report.current) {
        ([], Some(current)) => writeln!(
            out,
            "{} store {} is up to date (schema version {current})",
            report.backend.as_str(),
            settings.store.url
        )?,
        (applied, current) => writeln!(
            out,
            "{} store {}: applied {} migration(s), schema version {}",
            report.backend.as_str(),
            settings.store.url,
            applied.len(),
            current.map_or("none".to_string(), |v| v.to_string())
        )?,
    }
    Ok(())
}

async fn sync_once(path: Option<PathBuf>, args: SyncArgs) -> Result<(), CliError> {
    let settings = load_settings(path)?;
    let connections: Vec<_> = match &args.connection {
        Some(name) => vec![settings
            .connections
            .iter()
            .find(|c| &c.name == name)
            .ok_or_else(|| CliError::UnknownConnection(name.clone()))?],
        None => settings.connections.iter().collect(),
    };
    let store = Store::open_migrated(&settings.store).await?;
    let _sole = store.claim_sole_replica(&settings.store.url)?;
    let options = SyncOptions::default();
    let (stopper, stop) = StopSignal::new();
    let signals = stop_on_shutdown_signals(stopper, "ending the run at its last checkpoint");
    let mut failed = 0;
    let mut cut_short = false;
    for connection in &connections {
        if stop.is_set() {
            println!("{}: not started: a stop was asked for", connection.name);
            cut_short = true;
            continue;
        }
        match sync::sync_once(&store, connection, &options, &stop).await {
            Ok(report) => {
                println!(
                    "{}: {}",
                    connection.name,
                    sync::describe_run(&report.summary)
                );
                if report.summary.status == SyncRunStatus::Interrupted {
                    cut_short = true;
                    continue;
                }
                for evaluation in rules::evaluate_after_sync(&store, &settings, connection).await {
                    println!("  {}", rules::describe_evaluation(&evaluation));
                }
                let now = crate::record::wall_clock();
                let returned = recycle::outcomes::evaluate_after_sync(&store, now).await;
                if returned > 0 {
                    println!("  {returned} recycled record(s) returned");
                }
            }
            Err(err @ SyncError::LeaseHeld(_)) => println!("{}: skipped: {err}", connection.name),
            Err(err) => {
                failed += 1;
                tracing::error!(connection = %connection.name, error = %err, "sync failed");
                eprintln!("{}: sync failed: {err}", connection.name);
            }
        }
    }
    signals.abort();
    store.close().await;
    if failed > 0 {
        return Err(CliError::SyncFailed {
            failed,
            total: connections.len(),
        });
    }
    if cut_short {
        return Err(CliError::Stopped);
    }
    Ok(())
}

async fn run_daemon(path: Option<PathBuf>) -> Result<(), CliError> {
    let settings = load_settings(path)?;
    let (stopper, stop) = StopSignal::new();
    let signals = stop_on_shutdown_signals(stopper, "ending each run at its last checkpoint");
    let result = daemon::run(settings, stop).await;
    signals.abort();
    result.map_err(CliError::Daemon)
}

async fn demo(path: Option<PathBuf>, args: DemoArgs) -> Result<(), CliError> {
    let settings = load_settings(path)?;
    let options = DemoOptions {
        seed: args.seed,
        scale: args.scale,
        months: args.months,
    };
    let mut out = std::io::stdout();
    demo::run(&settings, &options, &mut out)
        .await
        .map_err(CliError::Demo)
}

async fn emulate(args: EmulateArgs) -> Result<(), CliError> {
    let options = EmulatorOptions {
        seed: args.seed,
        scale: args.scale,
        tls: args.tls,
        ..EmulatorOptions::default()
    };
    let running = emulator::start(args.listen, options)
        .await
        .map_err(CliError::Emulator)?;
    if let (Some(path), Some(pem)) = (&args.ca_out, running.ca_certificate_pem()) {
        std::fs::write(path, pem).map_err(|err| CliError::CaCertificate {
            path: path.clone(),
            source: err,
        })?;
        println!("CA certificate written to {}", path.display());
    }
    println!("CRM emulator listening at {}", running.base_url());
    shutdown_signal().await;
    running.stop().await.map_err(CliError::Emulator)
}

/// Turns the first shutdown signal into a stop request, logged with what stopping means for
/// the command, and a second one into an exit at once: every committed page is safe already,
/// so only the page in flight is lost, and the next run reads it again.
fn stop_on_shutdown_signals(stopper: StopHandle, meaning: &'static str) -> JoinHandle<()> {
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("stop requested; {meaning} (a second Ctrl-C or SIGTERM exits at once)");
        stopper.stop();
        let status = shutdown_signal().await;
        tracing::warn!("second stop request: exiting without waiting");
        std::process::exit(status);
    })
}

/// Resolves on Ctrl-C or, on Unix, SIGTERM (what `docker stop` and systemd send), with the
/// exit status a shell gives a process ended by that signal (128 + its number).
async fn shutdown_signal() -> i32 {
    const SIGINT_STATUS: i32 = 130;
    const SIGTERM_STATUS: i32 = 143;
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => SIGINT_STATUS,
        () = terminate => SIGTERM_STATUS,
    }
}

async fn rules_check(path: Option<PathBuf>) -> Result<(), CliError> {
    let settings = load_settings(path)?;
    let store = Store::open_migrated(&settings.store).await?;
    let checks = rules::check(&store, &settings).await;
    store.close().await;
    let mut errors = 0;
    let mut out = std::io::stdout().lock();
    for check in checks? {
        if check.problems.is_empty() {
            writeln!(out, "rule {}: OK", check.rule)?;
        }
        for problem in &check.problems {
            let label = match problem.severity {
                Severity::Error => {
                    errors += 1;
                    "error"
                }
                Severity::Warning => "warning",
            };
            writeln!(out, "rule {}: {label}: {}", check.rule, problem.message)?;
        }
    }
    if errors > 0 {
        return Err(CliError::RuleProblems(errors));
    }
    Ok(())
}

async fn rules_backtest(path: Option<PathBuf>, args: BacktestArgs) -> Result<(), CliError> {
    let settings = load_settings(path)?;
    if let Some(name) = &args.rule {
        if !settings.rules.iter().any(|rule| &rule.name == name) {
            return Err(CliError::UnknownRule(name.clone()));
        }
    }
    let store = Store::open_migrated(&settings.store).await?;
    let reports = rules::backtest(&store, &settings, args.since, args.rule.as_deref()).await;
    store.close().await;
    let mut out = std::io::stdout().lock();
    for report in reports? {
        let counts = &report.counts;
        writeln!(
            out,
            "rule {}: {} stage changes judged ({} before the oldest stored state, {} exempt); {} would have fired",
            counts.rule, counts.judged, counts.unjudged, counts.exempt, report.would_fire
        )?;
        let listing = |map: &std::collections::BTreeMap<String, u64>| {
            map.iter()
                .map(|(key, count)| format!("{key} {count}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if report.would_fire > 0 {
            writeln!(out, "  by kind:  {}", listing(&report.by_kind))?;
            writeln!(out, "  by actor: {}", listing(&report.by_actor))?;
            writeln!(out, "  missing:  {}", listing(&report.by_field))?;
            for line in &report.examples {
                writeln!(out, "  {line}")?;
            }
        }
    }
    Ok(())
}

async fn waive(path: Option<PathBuf>, args: WaiveArgs) -> Result<(), CliError> {
    let settings = load_settings(path)?;
    let store = Store::open_migrated(&settings.store).await?;
    let now = crate::record::wall_clock();
    let result = rules::waive(&store, &settings, args.id, &args.by, &args.reason, now).await;
    store.close().await;
    result?;
    println!("violation {} waived by {}", args.id, args.by);
    Ok(())
}
