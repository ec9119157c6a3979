//! `AppState`: cheap-to-clone handles, built once from a validated `Config`. Every fallible setup
//! step happens in `AppState::build`; a failure stops startup instead of degrading silently.
use std::{ops::Deref, sync::Arc, time::Duration};

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::{
    StartupError,
    cache::TaxonomyCache,
    config::Config,
    error::ApiError,
    http::routes::RouteTable,
    jobs::{
        engine::{EngineHandle, JobEngine},
        hub::JobHub,
        limits::LearnedLimits,
    },
    middleware::rate_limit::Limiters,
    shutdown::Readiness,
    store::{JobStore, SqliteStore},
    telemetry,
    upstream::UpstreamClient,
    webhooks::{
        dispatcher::{WebhookDispatcher, WebhookWaker},
        ssrf::TargetPolicy,
    },
};

#[derive(Debug, Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub config: Config,
    pub upstream: UpstreamClient,
    pub routes: RouteTable,
    pub cache: TaxonomyCache,
    pub limiters: Limiters,
    pub readiness: Readiness,
    pub store: Arc<dyn JobStore>,
    pub metrics: PrometheusHandle,
    pub hub: JobHub,
    pub engine: EngineHandle,
    /// Upstream dataset limits learned from `dataset_too_large`.
    pub learned: Arc<LearnedLimits>,
    /// Wakes the webhook dispatcher after outbox rows commit.
    pub webhooks: WebhookWaker,
    /// Which webhook targets may be reached.
    pub webhook_policy: Arc<TargetPolicy>,
    /// Fired by `run` when the shutdown grace period is over: requests still running are answered
    /// 502 `shutting_down` at once (`middleware::hard_stop`), the workers abort what runs.
    pub hard_stop: CancellationToken,
    in_flight: Arc<Semaphore>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("config", &self.config)
            .field("readiness", &self.readiness)
            .finish_non_exhaustive()
    }
}

/// The background workers `run` supervises beside the servers.
#[derive(Debug)]
pub struct Workers {
    pub engine: JobEngine,
    pub dispatcher: WebhookDispatcher,
}

/// One admitted API request; dropping it frees the slot.
#[derive(Debug)]
pub struct InFlight {
    _permit: OwnedSemaphorePermit,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!(telemetry::IN_FLIGHT).decrement(1.0);
    }
}

// === impl AppState ===

impl AppState {
    /// Builds the state and the workers that run beside it.
    pub async fn build(config: Config) -> Result<(Self, Workers), StartupError> {
        let upstream = UpstreamClient::new(&config.valiqor)?;
        let store: Arc<dyn JobStore> = Arc::new(SqliteStore::open(&config.store.path).await?);
        let hub = JobHub::new();
        let learned = Arc::new(LearnedLimits::load(store.as_ref()).await?);
        let shared_config = Arc::new(config.clone());
        let webhook_policy = Arc::new(
            TargetPolicy::new(
                &config.webhooks.allowed_cidrs,
                &config.webhooks.allowed_hosts,
            )
            .map_err(|e| StartupError::Webhooks(e.to_string()))?,
        );
        let waker = WebhookWaker::default();
        let (engine, handle) = JobEngine::new(
            Arc::clone(&store),
            upstream.clone(),
            hub.clone(),
            Arc::clone(&shared_config),
            Arc::clone(&learned),
            waker.clone(),
        );
        let dispatcher = WebhookDispatcher::new(
            Arc::clone(&store),
            shared_config,
            Arc::clone(&webhook_policy),
            waker.clone(),
        );
        let state = Self(Arc::new(Inner {
            upstream,
            hub,
            engine: handle,
            learned,
            webhooks: waker,
            webhook_policy,
            routes: RouteTable::new(),
            cache: TaxonomyCache::new(&config.taxonomy_cache),
            limiters: Limiters::new(&config.rate_limit),
            readiness: Readiness::default(),
            store,
            metrics: telemetry::metrics_handle(),
            hard_stop: CancellationToken::new(),
            in_flight: Arc::new(Semaphore::new(config.server.max_in_flight)),
            config,
        }));
        Ok((state, Workers { engine, dispatcher }))
    }

    /// Admits one request or sheds it with 503 + Retry-After when `server.max_in_flight` are running.
    pub fn admit(&self) -> Result<InFlight, ApiError> {
        if let Ok(permit) = Arc::clone(&self.in_flight).try_acquire_owned() {
            metrics::gauge!(telemetry::IN_FLIGHT).increment(1.0);
            Ok(InFlight { _permit: permit })
        } else {
            metrics::counter!(telemetry::SHED).increment(1);
            Err(ApiError::Overloaded {
                retry_after: Duration::from_secs(u64::from(self.config.server.retry_after_secs)),
            })
        }
    }
}

impl Deref for AppState {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.0
    }
}
