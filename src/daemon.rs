//! `pipewarden run`: a sync loop per connection (each sync followed by the stage-gate
//! evaluation), the Slack delivery worker, and the HTTP listener for probes, metrics and the
//! API (`/api/v1/…`).
//!
//! Each connection syncs at its own interval plus a random share of it (`poll_jitter`), so
//! connections and replicas do not hit the APIs in step. A stop (SIGTERM, SIGINT) ends each
//! run at its last committed page (a CRM call in flight is abandoned), then the loops and the
//! listener end.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use rand::Rng;
use tokio::net::TcpListener;

use crate::alerts::{Deliverer, DeliveryOptions};
use crate::api::{self, ApiState};
use crate::config::settings::ConnectionSettings;
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::rules::evaluate_after_sync;
use crate::stop::StopSignal;
use crate::store::{Store, StoreError, SyncRunStatus};
use crate::sync::{sync_once, SyncError, SyncOptions};

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The HTTP listener could not bind or failed.
    #[error("HTTP listener on {address} (api.listen): {source}")]
    Listener {
        /// The configured address.
        address: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// No HTTP client for Slack could be built.
    #[error("cannot build the Slack client: {0}")]
    SlackClient(reqwest::Error),
}

/// What the HTTP handlers read.
struct AppState {
    store: Store,
    metrics: Arc<Metrics>,
}

/// Runs every connection's sync loop and the HTTP listener until `stop` fires.
pub async fn run(settings: Settings, stop: StopSignal) -> Result<(), DaemonError> {
    let store = Store::open_migrated(&settings.store).await?;
    let _sole = store.claim_sole_replica(&settings.store.url)?;
    let metrics = Arc::new(Metrics::new());
    let address = settings.api.listen;
    let listener = TcpListener::bind(address)
        .await
        .map_err(|source| DaemonError::Listener { address, source })?;
    tracing::info!(%address, connections = settings.connections.len(), "pipewarden running");
    let settings = Arc::new(settings);
    let api = Arc::new(ApiState {
        store: store.clone(),
        settings: settings.as_ref().clone(),
    });
    let app = router(
        AppState {
            store: store.clone(),
            metrics: metrics.clone(),
        },
        api,
    );
    let mut listener_stop = stop.clone();
    let http = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { listener_stop.stopped().await })
            .await
    });
    let alerts = match &settings.slack {
        Some(slack) => {
            let deliverer = Deliverer::new(store.clone(), slack, DeliveryOptions::default())
                .map_err(DaemonError::SlackClient)?;
            Some(tokio::spawn(deliverer.run(stop.clone())))
        }
        None => None,
    };
    // The loops share this task: they spend their time waiting on the network and the clock.
    let loops = settings.connections.iter().map(|connection| {
        sync_loop(
            store.clone(),
            settings.clone(),
            connection,
            metrics.clone(),
            stop.clone(),
        )
    });
    futures_util::future::join_all(loops).await;
    if let Some(alerts) = alerts {
        // The worker ends at the stop signal; a panic in it is already logged by the runtime.
        let _ = alerts.await;
    }
    let served = http.await.map_err(|err| DaemonError::Listener {
        address,
        source: std::io::Error::other(err),
    })?;
    store.close().await;
    tracing::info!("pipewarden stopped");
    served.map_err(|source| DaemonError::Listener { address, source })
}

/// Syncs one connection, then waits its jittered interval, until stopped.
async fn sync_loop(
    store: Store,
    settings: Arc<Settings>,
    connection: &ConnectionSettings,
    metrics: Arc<Metrics>,
    mut stop: StopSignal,
) {
    let options = SyncOptions {
        triggered_by: "scheduler".into(),
        ..SyncOptions::default()
    };
    while !stop.is_set() {
        match sync_once(&store, connection, &options, &stop).await {
            Ok(report) => {
                metrics.record_run(&connection.name, &report);
                let run = &report.summary;
                tracing::info!(connection = %connection.name, status = run.status.as_str(),
                    records = run.records_seen, versions = run.versions_written,
                    transitions = run.transitions_written, api_calls = run.api_calls,
                    daily_used = report.budget.org_used, daily_limit = report.budget.org_limit, "sync run finished");
                if run.status == SyncRunStatus::Interrupted {
                    // Shutting down: what this run stored is judged after the next one.
                    break;
                }
                evaluate_after_sync(&store, &settings, connection).await;
                let now = crate::record::wall_clock();
                crate::recycle::outcomes::evaluate_after_sync(&store, now).await;
            }
            Err(SyncError::LeaseHeld(_)) => {
                tracing::debug!(connection = %connection.name, "another replica is syncing this connection");
            }
            Err(err) => {
                metrics.record_errors(&connection.name, err.kind(), 1);
                tracing::error!(connection = %connection.name, error = %err, "sync run failed");
            }
        }
        let wait = jittered(connection.poll_interval, connection.poll_jitter);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stop.stopped() => {}
        }
    }
}

/// `interval` plus a random share of it up to `jitter`.
fn jittered(interval: Duration, jitter: f64) -> Duration {
    let spread = interval.mul_f64(jitter.clamp(0.0, 0.5) * rand::rng().random::<f64>());
    interval + spread
}

fn router(state: AppState, api: Arc<ApiState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readiness))
        .route("/metrics", get(metrics_text))
        .with_state(Arc::new(state))
        .merge(api::routes(api))
}

/// Ready when the store answers; a replica that cannot reach its store should get no traffic.
async fn readiness(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    match state.store.ping().await {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(err) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("store unavailable: {err}\n"),
        ),
    }
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
