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
//! ```
//!
//! `run` is the whole service: it builds the state, serves both ports, and shuts down in order
//! (readiness 503 → drain the API port within the grace period → stop the admin port).
pub mod batching;
pub mod cache;
pub mod cli;
pub mod config;
pub mod error;
pub mod http;
pub mod jobs;
pub mod middleware;
pub mod retry;
pub mod shutdown;
pub mod state;
pub mod store;
pub mod submit;
pub mod telemetry;
pub mod types;
pub mod upstream;
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
    #[error("invalid webhook target policy: {0}")]
    Webhooks(String),
}

/// `run` ended with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Startup(#[from] StartupError),
    #[error("{task} stopped unexpectedly: {reason}")]
    TaskFailed { task: &'static str, reason: String },
}

/// The two bound listeners. Binding is separate from `run` so callers (tests, `--demo`) can learn
/// the ports before serving starts.
#[derive(Debug)]
pub struct Listeners {
    pub api: TcpListener,
    pub admin: TcpListener,
}

impl Listeners {
    pub async fn bind(config: &config::ServerConfig) -> Result<Self, StartupError> {
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartupError::Bind { addr, source })
        };
        Ok(Self {
            api: bind(config.listen).await?,
            admin: bind(config.admin_listen).await?,
        })
    }

    pub fn api_addr(&self) -> io::Result<SocketAddr> {
        self.api.local_addr()
    }

    pub fn admin_addr(&self) -> io::Result<SocketAddr> {
        self.admin.local_addr()
    }
}

/// How long the admin port may take to stop once the API port drained.
const ADMIN_STOP: Duration = Duration::from_secs(1);

/// Serves until `shutdown` is cancelled (or a task fails), then drains and returns.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let grace = config.server.shutdown_grace_period;
    let (state, workers) = AppState::build(config).await?;
    let admin_stop = CancellationToken::new();
    let engine_stop = CancellationToken::new();
    let mut api_tasks = Supervisor::new(shutdown.clone());
    let mut admin_tasks = Supervisor::new(admin_stop.clone());
    let mut engine_tasks = Supervisor::new(engine_stop.clone());
    engine_tasks.spawn("job-engine", workers.engine.run(engine_stop.clone()));
    engine_tasks.spawn(
        "webhook-dispatcher",
        workers.dispatcher.run(engine_stop.clone()),
    );

    let api = axum::serve(listeners.api, http::api_router(state.clone()))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned());
    api_tasks.spawn("api-server", async move { api.await });
    let admin = axum::serve(listeners.admin, http::admin::router(state.clone()))
        .with_graceful_shutdown(admin_stop.clone().cancelled_owned());
    admin_tasks.spawn("admin-server", async move { admin.await });
    state.readiness.set_serving();
    tracing::info!(
        upstream = %state.config.valiqor.base_url,
        byok = ?state.config.valiqor.byok,
        byok_key_configured = state.config.valiqor.openai_api_key.is_some(),
        "evalgate ready"
    );

    // Until shutdown is requested, any task ending is a failure that stops the process.
    let early = tokio::select! {
        biased;
        () = shutdown.cancelled() => None,
        ended = api_tasks.next() => ended,
        ended = admin_tasks.next() => ended,
        ended = engine_tasks.next() => ended,
    };
    // The API server also watches `shutdown` and can finish its (empty) drain in the same
    // instant: a clean end once shutdown was requested is not a failure.
    let mut failure = early.and_then(|(task, result)| match result {
        Err(reason) => Some((task, reason)),
        Ok(()) if shutdown.is_cancelled() => None,
        Ok(()) => Some((task, "ended before shutdown was requested".to_owned())),
    });
    state.readiness.start_draining();
    shutdown.cancel();
    tracing::info!(grace_period = ?grace, "draining: readiness is 503, finishing in-flight requests");

    let drained = tokio::time::timeout(grace, async {
        while let Some((task, result)) = api_tasks.next().await {
            if let Err(reason) = result {
                failure.get_or_insert((task, reason));
            }
        }
    })
    .await;
    if drained.is_err() {
        let aborted = api_tasks.abort_all();
        tracing::warn!(
            aborted,
            "grace period over; in-flight requests were cut off"
        );
    }
    // The engine stops after the API: in-flight upstream calls finish or resume from the store.
    engine_stop.cancel();
    while let Some((task, result)) = engine_tasks.next().await {
        if let Err(reason) = result {
            failure.get_or_insert((task, reason));
        }
    }
    // The admin port answered 503 on /readyz throughout the drain; now it stops too.
    admin_stop.cancel();
    if tokio::time::timeout(ADMIN_STOP, admin_tasks.next())
        .await
        .is_err()
    {
        admin_tasks.abort_all();
    }
    tracing::info!("evalgate stopped");
    match failure {
        Some((task, reason)) => Err(RunError::TaskFailed { task, reason }),
        None => Ok(()),
    }
}
