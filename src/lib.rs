//! evalgate: an HTTP gateway sidecar in front of AI evaluation platforms.
//!
//! ```text
//! caller (SDK, curl, any language)
//!   │  /v2/... with a placeholder key
//!   ▼
//! evalgate API port ── route table → admit → rate limits → body limit → BYOK → cache ──┐
//!   │                                                                                  │
//!   │  Authorization: Bearer <platform key>                       taxonomy cache (moka) │
//!   ▼                                                                                  │
//! upstream (Valiqor) ◄──────────────────────────────────────────────────────────────────┘
//! evalgate admin port: /livez /readyz /metrics /admin/cache/purge
//! evalgate Arize port (arize.listen): the Arize tasks API → Arize, task-run polls single-flight
//! ```
//!
//! `run` is the whole service: it builds the state, serves both ports, and shuts down within one
//! grace period (readiness 503 → drain the API port and the workers together → at the deadline,
//! 502 `shutting_down` for what still runs → stop the admin port).
pub mod batching;
pub(crate) mod cache;
pub mod cli;
pub mod config;
pub mod error;
pub mod http;
pub mod jobs;
pub(crate) mod middleware;
pub(crate) mod retry;
pub mod serve;
pub mod shutdown;
pub mod state;
pub(crate) mod store;
pub mod submit;
pub(crate) mod tasks;
pub mod telemetry;
pub(crate) mod tenants;
pub mod types;
pub(crate) mod upstream;
pub mod webhooks;

use std::{io, net::SocketAddr, time::Duration};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{config::Config, shutdown::Supervisor, state::AppState};

/// Startup failed before anything was served.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot open the store")]
    Store(#[from] store::StoreError),
    #[error("cannot build the upstream client")]
    Upstream(#[from] upstream::BuildError),
    #[error("cannot build the webhook client")]
    WebhookClient(#[source] reqwest::Error),
}

/// `run` ended with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Startup(#[from] StartupError),
    #[error("{task} stopped unexpectedly: {reason}")]
    TaskFailed { task: &'static str, reason: String },
}

/// The bound listeners. Binding is separate from `run` so callers (tests, `--demo`) can learn
/// the ports before serving starts.
#[derive(Debug)]
pub struct Listeners {
    pub api: TcpListener,
    pub admin: TcpListener,
    /// The Arize tasks API; `None` while Arize is off.
    pub arize: Option<TcpListener>,
}

impl Listeners {
    pub async fn bind(config: &Config) -> Result<Self, StartupError> {
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartupError::Bind { addr, source })
        };
        let arize = match config.arize.listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        Ok(Self {
            api: bind(config.server.listen).await?,
            admin: bind(config.server.admin_listen).await?,
            arize,
        })
    }

    /// The Arize listener's address, while Arize is on.
    pub fn arize_addr(&self) -> Option<io::Result<SocketAddr>> {
        self.arize.as_ref().map(TcpListener::local_addr)
    }

    pub fn api_addr(&self) -> io::Result<SocketAddr> {
        self.api.local_addr()
    }

    pub fn admin_addr(&self) -> io::Result<SocketAddr> {
        self.admin.local_addr()
    }
}

/// After the grace period: how long requests that were cut off have to send their 502.
const CUT_FLUSH: Duration = Duration::from_millis(500);
/// How long the admin port may take to stop once everything else has.
const ADMIN_STOP: Duration = Duration::from_millis(250);

/// The servers: the API and Arize listeners stop with `shutdown`, the admin port with `admin_stop`.
fn serve_listeners(
    listeners: Listeners,
    state: &AppState,
    (tasks, shutdown): (&mut Supervisor, &CancellationToken),
    (admin_tasks, admin_stop): (&mut Supervisor, &CancellationToken),
) {
    tasks.spawn(
        "api-server",
        serve::serve(
            listeners.api,
            http::api_router(state.clone()),
            shutdown.clone(),
        ),
    );
    if let Some(listener) = listeners.arize {
        tasks.spawn(
            "arize-server",
            serve::serve(
                listener,
                http::arize::router(state.clone()),
                shutdown.clone(),
            ),
        );
    }
    admin_tasks.spawn(
        "admin-server",
        serve::serve(
            listeners.admin,
            http::admin::router(state.clone()),
            admin_stop.clone(),
        ),
    );
}

/// Serves until `shutdown` is cancelled (or a task fails), then drains and returns.
///
/// Shutdown has one deadline, `server.shutdown_grace_period` after it starts: readiness turns
/// 503, the API port stops accepting and finishes its requests, the job engine and the webhook
/// dispatcher take no new work and finish what runs, all at the same time. At the deadline
/// `hard_stop` fires: requests still running answer 502 `shutting_down` (flushed for up to
/// `CUT_FLUSH`), the workers abort what runs (it resumes from the store on the next start), then
/// the admin port stops. `run` returns within the grace period plus about 0.75 s.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let grace = config.server.shutdown_grace_period;
    let (state, workers) = AppState::build(config).await?;
    let hard_stop = state.hard_stop.clone();
    let admin_stop = CancellationToken::new();
    // The API server and the workers stop together; the admin port outlives them, so /readyz
    // answers 503 throughout the drain.
    let mut tasks = Supervisor::new();
    let mut admin_tasks = Supervisor::new();
    tasks.spawn(
        "job-engine",
        workers.engine.run(shutdown.clone(), hard_stop.clone()),
    );
    tasks.spawn(
        "webhook-dispatcher",
        workers.dispatcher.run(shutdown.clone(), hard_stop.clone()),
    );
    tasks.spawn(
        "tenant-reloader",
        tenants::watch::run(state.tenants.clone(), shutdown.clone()),
    );
    serve_listeners(
        listeners,
        &state,
        (&mut tasks, &shutdown),
        (&mut admin_tasks, &admin_stop),
    );
    if let Some(exclusive) = workers.exclusive {
        // Held until the workers have stopped (with the admin port); ends early only when the
        // claim is lost, and then the process stops rather than overlap another evalgate.
        let released = admin_stop.clone();
        admin_tasks.spawn("store-claim", async move {
            tokio::select! {
                () = released.cancelled() => Ok(()),
                lost = exclusive.hold() => lost.map_err(|error| error::ErrorChain(&error).to_string()),
            }
        });
    }
    state.readiness.set_serving();
    tracing::info!(
        upstream = %state.config.valiqor.base_url,
        arize = ?state.config.arize.listen.map(|_| state.config.arize.base_url.as_str()),
        byok = ?state.config.valiqor.byok,
        byok_key_configured = state.config.valiqor.openai_api_key.is_some(),
        auth = ?state.tenants.mode(),
        tenants = state.config.auth.tenants.len(),
        "evalgate ready"
    );

    // Until shutdown is requested, any task ending is a failure that stops the process.
    let early = tokio::select! {
        biased;
        () = shutdown.cancelled() => None,
        ended = tasks.next() => ended,
        ended = admin_tasks.next() => ended,
    };
    // The API server also watches `shutdown` and can finish its (empty) drain in the same
    // instant: a clean end once shutdown was requested is not a failure.
    let mut failure = early.and_then(|(task, result)| match result {
        Err(reason) => Some((task, reason)),
        Ok(()) if shutdown.is_cancelled() => None,
        Ok(()) => Some((task, "ended before shutdown was requested".to_owned())),
    });
    let deadline = tokio::time::Instant::now() + grace;
    state.readiness.start_draining();
    shutdown.cancel();
    tracing::info!(
        grace_period = ?grace,
        "draining: readiness is 503; in-flight requests, job work and webhook attempts get the grace period"
    );

    let drained = tokio::time::timeout_at(deadline, tasks.wait_all(&mut failure))
        .await
        .is_ok();
    hard_stop.cancel();
    if !drained {
        tracing::warn!(
            running = tasks.len(),
            "grace period over: requests still running are answered 502 shutting_down; job work and webhook attempts resume from the store on the next start"
        );
        if tokio::time::timeout(CUT_FLUSH, tasks.wait_all(&mut failure))
            .await
            .is_err()
        {
            let aborted = tasks.abort_all().await;
            tracing::warn!(
                aborted,
                "tasks still running after the cut-off were aborted"
            );
        }
    }
    // The admin port answered 503 on /readyz throughout the drain; now it stops too.
    admin_stop.cancel();
    if tokio::time::timeout(ADMIN_STOP, admin_tasks.wait_all(&mut failure))
        .await
        .is_err()
    {
        admin_tasks.abort_all().await;
    }
    tracing::info!("evalgate stopped");
    match failure {
        Some((task, reason)) => Err(RunError::TaskFailed { task, reason }),
        None => Ok(()),
    }
}
