//! `AppState`: cheap-to-clone handles, built once from a validated `Config`. Every fallible setup
//! step happens in `AppState::build`; a failure stops startup instead of degrading silently.
use std::{ops::Deref, sync::Arc, time::Duration};

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use axum::extract::FromRef;

use crate::{
    StartupError,
    cache::TaxonomyCache,
    config::Config,
    http::{
        error::ApiError,
        routes::{self, RouteTable},
    },
    jobs::{
        engine::JobEngine,
        finish::Finisher,
        hub::JobHub,
        limits::LearnedLimits,
        service::{self, JobService},
    },
    middleware::rate_limit::Limiters,
    shutdown::Readiness,
    store::{Exclusive, JobStore, PostgresStore, SqliteStore},
    telemetry,
    tenants::{BaseClients, Tenants},
    upstream::{UpstreamClient, arize::ArizeClient},
    webhooks::{
        dispatcher::{WebhookDispatcher, WebhookWaker},
        ssrf::TargetPolicy,
    },
};

#[derive(Debug, Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub(crate) config: Config,
    /// Callers: who a request is, with which keys and limits.
    pub(crate) tenants: Tenants,
    /// The Valiqor API's paths (the API listener).
    pub(crate) routes: RouteTable,
    /// The Arize tasks API's paths (the Arize listener).
    pub(crate) arize_routes: RouteTable,
    pub(crate) cache: TaxonomyCache,
    pub(crate) limiters: Limiters,
    pub(crate) readiness: Readiness,
    pub(crate) store: Arc<dyn JobStore>,
    pub(crate) metrics: PrometheusHandle,
    /// Managed jobs: what the `/v1/jobs` handlers and the SDK's follow-up paths call.
    pub(crate) jobs: JobService,
    /// Wakes the webhook dispatcher after outbox rows commit.
    pub(crate) webhooks: WebhookWaker,
    /// Fired by `run` when the shutdown grace period is over: requests still running are answered
    /// 502 `shutting_down` at once (`middleware::hard_stop`), the workers abort what runs.
    pub(crate) hard_stop: CancellationToken,
    in_flight: Arc<Semaphore>,
    event_streams: Arc<Semaphore>,
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
    pub(crate) dispatcher: WebhookDispatcher,
    /// On `PostgreSQL`: this evalgate's claim on the database, held while it runs.
    pub(crate) exclusive: Option<Exclusive>,
}

/// One open event stream; dropping it frees the slot.
#[derive(Debug)]
pub struct EventStreamSlot {
    _permit: OwnedSemaphorePermit,
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
        let valiqor = UpstreamClient::new(&config.valiqor)?;
        let arize = ArizeClient::new(&config.arize, valiqor.redactor().clone())?;
        let tenants = Tenants::new(&config, BaseClients { valiqor, arize })?;
        // One evalgate per PostgreSQL database (until leases): claimed before anything runs.
        let (store, exclusive): (Arc<dyn JobStore>, _) = match &config.store.postgres {
            Some(postgres) => {
                let exclusive = Exclusive::acquire(postgres).await?;
                (
                    Arc::new(PostgresStore::connect(postgres).await?),
                    Some(exclusive),
                )
            }
            None => (Arc::new(SqliteStore::open(&config.store).await?), None),
        };
        let hub = JobHub::new();
        let learned = Arc::new(LearnedLimits::load(store.as_ref()).await?);
        let shared_config = Arc::new(config.clone());
        let webhook_policy = Arc::new(TargetPolicy::new(
            &config.webhooks.allowed_cidrs,
            &config.webhooks.allowed_hosts,
        ));
        let waker = WebhookWaker::default();
        let finisher = Finisher {
            store: Arc::clone(&store),
            hub: hub.clone(),
            webhooks: Arc::new(config.webhooks.clone()),
            waker: waker.clone(),
        };
        let (engine, handle) = JobEngine::new(
            Arc::clone(&store),
            tenants.clone(),
            hub.clone(),
            Arc::clone(&shared_config),
            Arc::clone(&learned),
            finisher.clone(),
        );
        let dispatcher = WebhookDispatcher::new(
            Arc::clone(&store),
            Arc::clone(&shared_config),
            Arc::clone(&webhook_policy),
            waker.clone(),
        )
        .map_err(StartupError::WebhookClient)?;
        let jobs = JobService::new(service::Parts {
            config: shared_config,
            store: Arc::clone(&store),
            engine: handle,
            hub,
            learned,
            tenants: tenants.clone(),
            finisher,
            webhook_policy,
        });
        let state = Self(Arc::new(Inner {
            tenants,
            jobs,
            webhooks: waker,
            routes: RouteTable::new(routes::VALIQOR),
            arize_routes: RouteTable::new(routes::ARIZE),
            cache: TaxonomyCache::new(&config.taxonomy_cache),
            limiters: Limiters::new(&config.rate_limit),
            readiness: Readiness::default(),
            store,
            metrics: telemetry::metrics_handle(),
            hard_stop: CancellationToken::new(),
            in_flight: Arc::new(Semaphore::new(config.server.max_in_flight)),
            event_streams: Arc::new(Semaphore::new(config.server.max_event_streams)),
            config,
        }));
        Ok((
            state,
            Workers {
                engine,
                dispatcher,
                exclusive,
            },
        ))
    }

    /// Admits one request or sheds it with 503 + Retry-After when `server.max_in_flight` are running.
    pub(crate) fn admit(&self) -> Result<InFlight, ApiError> {
        if let Ok(permit) = Arc::clone(&self.in_flight).try_acquire_owned() {
            metrics::gauge!(telemetry::IN_FLIGHT).increment(1.0);
            Ok(InFlight { _permit: permit })
        } else {
            metrics::counter!(telemetry::SHED).increment(1);
            Err(self.overloaded())
        }
    }

    /// Admits one event stream or sheds it with 503 + Retry-After when
    /// `server.max_event_streams` are open.
    pub(crate) fn admit_event_stream(&self) -> Result<EventStreamSlot, ApiError> {
        if let Ok(permit) = Arc::clone(&self.event_streams).try_acquire_owned() {
            Ok(EventStreamSlot { _permit: permit })
        } else {
            metrics::counter!(telemetry::SHED, "limit" => "max_event_streams").increment(1);
            Err(self.overloaded())
        }
    }

    /// Shed before anything was forwarded: 503 with `server.retry_after_secs`.
    fn overloaded(&self) -> ApiError {
        ApiError::Overloaded {
            retry_after: Duration::from_secs(u64::from(self.config.server.retry_after_secs)),
        }
    }
}

impl Deref for AppState {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl FromRef<AppState> for JobService {
    fn from_ref(state: &AppState) -> Self {
        state.jobs.clone()
    }
}
