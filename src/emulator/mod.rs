//! The CRM emulator: Salesforce and HubSpot APIs on localhost, for tests, benchmarks and the demo.
//!
//! No development or CI machine can reach a real CRM, so pipewarden is exercised against this
//! emulator, which reproduces the vendors' paths, JSON shapes, error bodies and limits (see
//! `crm-api-facts.md`). Both CRMs are served at the root of one port; their paths do not
//! overlap. Time is simulated ([`SimClock`]) and moved through the control API under
//! `/__emulator/`, which answers loopback clients only.
//!
//! A Slack stand-in (incoming webhook and `chat.postMessage`) is served beside them, so that
//! alert delivery can be tested and shown without Slack.
//!
//! What is served so far: Salesforce OAuth token grants (refresh token with optional
//! rotation, client credentials), session expiry by simulated inactivity, the rolling
//! daily API allocation with `Sforce-Limit-Info`, the versions, resources and `limits`
//! endpoints, and the clock and fault switches of the control API.

mod clock;
mod control;
mod faults;
pub mod funnel;
mod hubspot;
mod parallel;
mod salesforce;
mod slack;
mod timefmt;
mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use url::Url;

pub use clock::{SimClock, DEFAULT_START_MS};
pub use faults::{FaultKind, FaultRule, FaultTarget};
pub use funnel::{Funnel, Scale};
pub use hubspot::HubspotOptions;
pub use salesforce::{SalesforceOptions, ValidationRule};
pub use slack::BOT_TOKEN as SLACK_BOT_TOKEN;
pub use tls::TlsError;

/// How an emulator instance behaves.
#[derive(Debug, Clone)]
pub struct EmulatorOptions {
    /// Seed of everything generated; the same seed gives the same tokens and data.
    pub seed: u64,
    /// Simulated time at start, UTC epoch milliseconds.
    pub start_ms: i64,
    /// How much funnel history there is at start.
    pub scale: Scale,
    /// Serve HTTPS with a certificate from a CA made at start (see
    /// [`RunningEmulator::ca_certificate_pem`]).
    pub tls: bool,
    /// The emulated Salesforce org.
    pub salesforce: SalesforceOptions,
    /// The emulated HubSpot portal.
    pub hubspot: HubspotOptions,
}

impl Default for EmulatorOptions {
    fn default() -> Self {
        EmulatorOptions {
            seed: 1,
            start_ms: DEFAULT_START_MS,
            scale: Scale::Tiny,
            tls: false,
            salesforce: SalesforceOptions::default(),
            hubspot: HubspotOptions::default(),
        }
    }
}

/// State shared by every handler of one emulator instance.
pub(crate) struct Shared {
    pub base_url: Url,
    pub clock: SimClock,
    pub funnel: Funnel,
    pub faults: faults::Faults,
    pub salesforce: salesforce::OrgState,
    pub hubspot: hubspot::PortalState,
    pub slack: slack::SlackState,
}

/// An emulator serving in the background; [`RunningEmulator::stop`] shuts it down.
pub struct RunningEmulator {
    base_url: Url,
    shared: Arc<Shared>,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
    ca_pem: Option<String>,
}

impl RunningEmulator {
    /// The URL both CRMs are served at (and the Salesforce `instance_url`), ending in `/`.
    pub fn base_url(&self) -> &Url {
        &self.base_url
    }

    /// PEM of the CA that signed the emulator's certificate, when it serves HTTPS.
    pub fn ca_certificate_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// The emulator's simulated clock.
    pub fn clock(&self) -> &SimClock {
        &self.shared.clock
    }

    /// Stops accepting requests, lets those in flight finish, and waits for the server to end.
    pub async fn stop(self) -> std::io::Result<()> {
        // The server may already have ended; then there is nobody to tell.
        let _ = self.shutdown.send(());
        self.task.await.map_err(std::io::Error::other)?
    }
}

/// Binds `listen` (port 0 picks a free port) and serves in the background.
pub async fn start(
    listen: SocketAddr,
    options: EmulatorOptions,
) -> std::io::Result<RunningEmulator> {
    let listener = TcpListener::bind(listen).await?;
    let local = listener.local_addr()?;
    let tls = if options.tls {
        Some(tls::generate().map_err(std::io::Error::other)?)
    } else {
        None
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let base_url = Url::parse(&format!("{scheme}://{local}/")).map_err(std::io::Error::other)?;
    let shared = Arc::new(Shared {
        base_url: base_url.clone(),
        clock: SimClock::starting_at(options.start_ms),
        funnel: Funnel::new(options.seed, options.scale.shape(), options.start_ms),
        faults: faults::Faults::new(options.seed),
        salesforce: salesforce::OrgState::new(options.seed, options.salesforce),
        hubspot: hubspot::PortalState::new(options.seed, options.hubspot),
        slack: slack::SlackState::default(),
    });
    let (shutdown, stopped) = oneshot::channel::<()>();
    let stopped = async {
        let _ = stopped.await;
    };
    let task = match &tls {
        Some(material) => serve(
            tls::TlsListener::new(listener, material),
            shared.clone(),
            stopped,
        ),
        None => serve(listener, shared.clone(), stopped),
    };
    tracing::info!(url = %base_url, "CRM emulator listening");
    Ok(RunningEmulator {
        base_url,
        shared,
        shutdown,
        task,
        ca_pem: tls.map(|material| material.ca_pem),
    })
}

/// The client's address, which the control API's loopback check reads; one type for plain and
/// TLS listeners alike.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer(pub SocketAddr);

impl Connected<IncomingStream<'_, TcpListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Self {
        Peer(*stream.remote_addr())
    }
}

impl Connected<IncomingStream<'_, tls::TlsListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, tls::TlsListener>) -> Self {
        Peer(*stream.remote_addr())
    }
}

/// Serves the emulator on `listener` until `stopped` resolves.
fn serve<L>(
    listener: L,
    shared: Arc<Shared>,
    stopped: impl std::future::Future<Output = ()> + Send + 'static,
) -> JoinHandle<std::io::Result<()>>
where
    L: axum::serve::Listener<Addr = SocketAddr>,
    Peer: for<'a> Connected<IncomingStream<'a, L>>,
{
    let app = router(shared).into_make_service_with_connect_info::<Peer>();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(stopped)
            .await
    })
}

fn router(shared: Arc<Shared>) -> Router {
    // Faults sit in front of both CRMs but never of the control API that sets them.
    let crms = Router::new()
        .merge(salesforce::routes(shared.clone()))
        .merge(hubspot::routes(shared.clone()))
        // A fallback before the layer, so faults can target any path, served or not.
        .fallback(|| async { axum::http::StatusCode::NOT_FOUND })
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            faults::inject,
        ));
    crms.merge(control::routes())
        .merge(slack::routes())
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            simulated_date,
        ))
        .with_state(shared)
}

/// Stamps every answer's `Date` with the simulated clock, as a real CRM's clock would read;
/// clients that take the server's time from it then agree with the records' own stamps.
async fn simulated_date(
    axum::extract::State(shared): axum::extract::State<Arc<Shared>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let mut response = next.run(request).await;
    let now = chrono::DateTime::from_timestamp_millis(shared.clock.now_ms()).unwrap_or_default();
    let date = now.format("%a, %d %b %Y %H:%M:%S GMT").to_string();
    if let Ok(value) = axum::http::HeaderValue::from_str(&date) {
        response
            .headers_mut()
            .insert(axum::http::header::DATE, value);
    }
    response
}
