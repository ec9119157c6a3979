//! `JobService`: what the HTTP surfaces call. Submitting (native and transparent), reading status
//! and results, waiting, listing, cancelling. Handlers stay thin; this is where the rules live.
//! Built from its parts (store, engine handle, hub, limits, config), never from the app state.
use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use serde_json::json;
use tokio::sync::broadcast;

use super::{
    engine::{Command, EngineHandle},
    error::JobsError,
    finish::{Ending, FinishError, Finisher, cancel_running_upstream},
    hub::{JobEvent, JobHub},
    limits::LearnedLimits,
    view::evalgate_section,
};
use crate::{
    batching::{BatchLimits, Submission},
    config::Config,
    store::{Created, JobRecord, JobStore, ListQuery, NewBatch, NewJob, StoreError, StoredEvent},
    tenants::{Tenant, Tenants},
    types::{JobId, JobKind, JobState, Origin, TenantName, now_millis},
    upstream::arize::RunSpec,
    webhooks::{outbox, ssrf::TargetPolicy},
};

/// A new job's request, whichever surface it came through.
#[derive(Debug)]
pub(crate) struct JobRequest {
    /// The caller: the job's owner, and its limits.
    pub tenant: Arc<Tenant>,
    pub input: JobInput,
    /// The webhook target as `JobService::validate_webhook` returned it.
    pub webhook: Option<String>,
    /// (Idempotency-Key, body hash).
    pub idempotency: Option<(String, String)>,
    pub origin: Origin,
}

/// What a job works on.
#[derive(Debug)]
pub(crate) enum JobInput {
    /// A Valiqor dataset of `kind`, split into batches.
    Dataset {
        kind: JobKind,
        submission: Submission,
        /// A limit the upstream just told us (`dataset_too_large`), tighter than the configured one.
        upstream_max_items: Option<usize>,
    },
    /// One Arize task run.
    ArizeRun(ArizeRun),
}

/// An Arize task run to manage.
#[derive(Debug)]
pub(crate) enum ArizeRun {
    /// Trigger a run of a task (with the trigger request's fields).
    Trigger(RunSpec),
    /// Watch a run the caller triggered itself.
    Watch { run_id: String },
}

impl JobInput {
    pub(crate) fn kind(&self) -> JobKind {
        match self {
            Self::Dataset { kind, .. } => *kind,
            Self::ArizeRun(_) => JobKind::ArizeTaskRun,
        }
    }
}

/// The jobs service. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct JobService(Arc<Parts>);

/// What the service is built from.
#[derive(Debug)]
pub(crate) struct Parts {
    pub config: Arc<Config>,
    pub store: Arc<dyn JobStore>,
    pub engine: EngineHandle,
    pub hub: JobHub,
    pub learned: Arc<LearnedLimits>,
    pub tenants: Tenants,
    pub finisher: Finisher,
    pub webhook_policy: Arc<TargetPolicy>,
}

impl JobService {
    pub(crate) fn new(parts: Parts) -> Self {
        Self(Arc::new(parts))
    }

    fn retry_after(&self) -> Duration {
        Duration::from_secs(u64::from(self.0.config.server.retry_after_secs))
    }

    /// A store error as the caller sees it: transient ones are "come back later".
    fn store_error(&self, error: StoreError) -> JobsError {
        JobsError::store(error, self.retry_after())
    }

    /// The limits a new job of `kind` is split by: configured, tightened by what the upstream taught us.
    fn limits(&self, kind: JobKind, upstream_max_items: Option<usize>) -> BatchLimits {
        let configured = self.0.config.batching.for_kind(kind);
        let learned = self.0.learned.get(kind);
        let max_items = [Some(configured.max_items), learned, upstream_max_items]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(configured.max_items)
            .max(1);
        BatchLimits {
            max_items,
            max_bytes: configured.max_bytes,
        }
    }

    /// Whether a submit body of `kind` must become a managed job (over the batch limits).
    pub(crate) fn exceeds_limits(&self, kind: JobKind, submission: &Submission) -> bool {
        let limits = self.limits(kind, None);
        let payload = submission
            .items
            .first()
            .zip(submission.items.last())
            .map_or(0, |(a, b)| b.end - a.start);
        submission.len() > limits.max_items || payload > limits.max_bytes
    }

    /// Validates a webhook target given on submit; returns what `JobRequest::webhook` stores.
    pub(crate) fn validate_webhook(&self, raw: &str) -> Result<String, JobsError> {
        outbox::validate(raw, &self.0.webhook_policy).map_err(JobsError::Invalid)
    }

    /// Creates a managed job: split, persist (committed before answering), hand to the engine.
    /// `(record, true)` for a new job, `(record, false)` for an idempotent replay. A task run to
    /// trigger is answered once its run id is committed (or its first attempt failed), bounded
    /// by `arize.timeout`.
    #[tracing::instrument(skip_all, fields(kind = request.input.kind().as_str()))]
    pub(crate) async fn submit(&self, request: JobRequest) -> Result<(JobRecord, bool), JobsError> {
        let config = &self.0.config;
        let store = &self.0.store;
        if matches!(request.input, JobInput::ArizeRun(_)) && request.tenant.arize.is_none() {
            return Err(JobsError::Invalid(
                "Arize task runs are off here: set arize.listen to enable Arize".to_owned(),
            ));
        }
        let active = store
            .count_active(None)
            .await
            .map_err(|e| self.store_error(e))?;
        if active >= config.jobs.max_active_jobs {
            return Err(JobsError::AtCapacity(
                "jobs.max_active_jobs",
                self.retry_after(),
            ));
        }
        // The tenant's own cap: its backlog never takes the whole engine from the others.
        if let Some(cap) = request.tenant.max_active_jobs {
            let own = store
                .count_active(Some(&request.tenant.name))
                .await
                .map_err(|e| self.store_error(e))?;
            if own >= cap {
                return Err(JobsError::TenantAtCapacity(self.retry_after()));
            }
        }
        // Bounded outbox: a job that will produce deliveries is refused while the outbox is full.
        if request.webhook.is_some() || !config.webhooks.endpoints.is_empty() {
            let pending = store
                .count_pending_deliveries()
                .await
                .map_err(|e| self.store_error(e))?;
            if pending >= config.webhooks.max_pending {
                return Err(JobsError::AtCapacity(
                    "webhooks.max_pending",
                    self.retry_after(),
                ));
            }
        }
        let kind = request.input.kind();
        let (total_items, members, batches) = self.batches(&request.input);
        let triggers = matches!(request.input, JobInput::ArizeRun(ArizeRun::Trigger(_)));
        let id = JobId::generate();
        let job = NewJob {
            id: id.clone(),
            tenant: request.tenant.name.clone(),
            kind,
            origin: request.origin,
            total_items,
            members,
            webhook: request.webhook,
            idempotency: request.idempotency,
            batches,
            created_at: now_millis(),
        };
        let window = i64::try_from(config.jobs.idempotency_window.as_millis()).unwrap_or(i64::MAX);
        // Subscribed before the job exists: the engine may take it up (a store scan) before the
        // Start command, and the first attempt's outcome must not be missed.
        let events = triggers.then(|| self.0.hub.subscribe());
        let created = store
            .create_job(job, now_millis().saturating_sub(window))
            .await
            .map_err(|e| self.store_error(e))?;
        let (id, fresh) = match created {
            Created::New => (id, true),
            Created::Existing(existing) => (existing, false),
            Created::Conflict(existing) => return Err(JobsError::IdempotencyConflict(existing)),
        };
        if fresh && !self.0.engine.send(Command::Start(id.clone())) {
            // The job is committed: the engine scans the store once it has caught up (or on
            // its next start when it is stopping) and starts it then.
            tracing::warn!(job_id = %id, "engine queue full; the job starts at the engine's next store scan");
        }
        if let Some(events) = events.filter(|_| fresh) {
            self.first_attempt(&id, events).await;
        }
        let record = self.read(&id, &request.tenant.name).await?;
        if fresh {
            tracing::info!(job_id = %id, tenant = %record.tenant, batches = record.batches.len(), "job accepted");
        }
        Ok((record, fresh))
    }

    /// The job's items and members, and its batches: a dataset split by the limits, or one
    /// task run (already running when the caller triggered it itself).
    fn batches(&self, input: &JobInput) -> (usize, Bytes, Vec<NewBatch>) {
        match input {
            JobInput::Dataset {
                kind,
                submission,
                upstream_max_items,
            } => {
                let limits = self.limits(*kind, *upstream_max_items);
                let batches = submission
                    .split(limits)
                    .into_iter()
                    .enumerate()
                    .map(|(idx, range)| NewBatch {
                        idx: u32::try_from(idx).unwrap_or(u32::MAX),
                        item_start: range.start,
                        item_end: range.end,
                        payload: submission.payload(range),
                        upstream_job_id: None,
                    })
                    .collect();
                (submission.len(), submission.members.clone(), batches)
            }
            JobInput::ArizeRun(run) => {
                let (payload, upstream_job_id) = match run {
                    ArizeRun::Trigger(spec) => (spec.to_payload(), None),
                    ArizeRun::Watch { run_id } => (Bytes::new(), Some(run_id.clone())),
                };
                let batch = NewBatch {
                    idx: 0,
                    item_start: 0,
                    item_end: 1,
                    payload,
                    upstream_job_id,
                };
                (1, Bytes::new(), vec![batch])
            }
        }
    }

    /// Waits (bounded by the Arize timeouts) until a task run's first trigger attempt committed
    /// something: its run id (`batch`), a retry (`progress`) or its end. A retried attempt is
    /// not waited for: the job is answered as it is, the engine goes on.
    async fn first_attempt(&self, id: &JobId, mut events: broadcast::Receiver<JobEvent>) {
        let arize = &self.0.config.arize;
        let deadline = tokio::time::Instant::now() + arize.connect_timeout + arize.timeout * 2;
        loop {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Ok(event)) if event.job_id == *id => return,
                Ok(Ok(_)) => {}
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => {
                    let started = self
                        .0
                        .store
                        .job(id)
                        .await
                        .ok()
                        .flatten()
                        .is_none_or(|record| {
                            record.state.is_terminal()
                                || record.batches.iter().any(|b| b.upstream_job_id.is_some())
                        });
                    if started {
                        return;
                    }
                }
                Err(_) | Ok(Err(broadcast::error::RecvError::Closed)) => {
                    tracing::info!(job_id = %id, "no run id within the Arize timeouts; answering the job as it is");
                    return;
                }
            }
        }
    }

    /// A job of `owner` by id. Ids that are not evalgate's, and other tenants' jobs, are simply
    /// not found (never "forbidden": another tenant's ids are not even confirmed to exist).
    pub(crate) async fn get(&self, id: &str, owner: &TenantName) -> Result<JobRecord, JobsError> {
        let id = JobId::parse(id).ok_or_else(|| JobsError::NotFound(id.to_owned()))?;
        self.read(&id, owner).await
    }

    async fn read(&self, id: &JobId, owner: &TenantName) -> Result<JobRecord, JobsError> {
        self.0
            .store
            .job(id)
            .await
            .map_err(|e| self.store_error(e))?
            .filter(|record| record.tenant == *owner)
            .ok_or_else(|| JobsError::NotFound(id.to_string()))
    }

    /// Waits (bounded by `jobs.max_wait`) until the job is terminal, then returns its latest record.
    pub(crate) async fn wait(
        &self,
        id: &str,
        owner: &TenantName,
        wait: Duration,
    ) -> Result<JobRecord, JobsError> {
        let mut events = self.0.hub.subscribe();
        let record = self.get(id, owner).await?;
        if record.state.is_terminal() || wait.is_zero() {
            return Ok(record);
        }
        let deadline = tokio::time::Instant::now() + wait.min(self.0.config.jobs.max_wait);
        loop {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Err(_) | Ok(Err(broadcast::error::RecvError::Closed)) => break,
                Ok(Ok(event)) if event.job_id == record.id && event.is_terminal() => break,
                Ok(Ok(_)) => {}
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => {
                    if self.read(&record.id, owner).await?.state.is_terminal() {
                        break;
                    }
                }
            }
        }
        self.read(&record.id, owner).await
    }

    /// A page of the tenant's jobs, oldest first.
    pub(crate) async fn list(&self, query: ListQuery<'_>) -> Result<Vec<JobRecord>, JobsError> {
        self.0
            .store
            .list_jobs(query)
            .await
            .map_err(|e| self.store_error(e))
    }

    /// Live job events; subscribe before reading the store so nothing in between is missed.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<JobEvent> {
        self.0.hub.subscribe()
    }

    /// A job's durable events after `after` (SSE replay).
    pub(crate) async fn events_after(
        &self,
        id: &JobId,
        after: i64,
    ) -> Result<Vec<StoredEvent>, JobsError> {
        self.0
            .store
            .events_after(id, after)
            .await
            .map_err(|e| self.store_error(e))
    }

    /// The merged result, with the `evalgate` section; `NotReady` while the job runs.
    pub(crate) async fn result(
        &self,
        id: &str,
        owner: &TenantName,
    ) -> Result<(JobRecord, Bytes), JobsError> {
        let record = self.get(id, owner).await?;
        self.result_of(record).await
    }

    /// The result of a job already read.
    pub(crate) async fn result_of(
        &self,
        record: JobRecord,
    ) -> Result<(JobRecord, Bytes), JobsError> {
        if !record.state.is_terminal() {
            return Err(JobsError::NotReady {
                id: record.id,
                state: record.state.as_str(),
            });
        }
        let bytes = self
            .0
            .store
            .job_result(&record.id)
            .await
            .map_err(|e| self.store_error(e))?;
        let bytes = bytes.unwrap_or_else(|| {
            // No batch completed: an empty result that still lists the batches and their errors.
            Bytes::from(
                json!({"status": record.state.sdk_status(), "evalgate": evalgate_section(&record)})
                    .to_string(),
            )
        });
        Ok((record, bytes))
    }

    /// Cancels a job: committed first (so no new submit or poll can start), then every batch
    /// still running upstream is cancelled there.
    #[tracing::instrument(skip_all, fields(job_id = id))]
    pub(crate) async fn cancel(
        &self,
        id: &str,
        owner: &TenantName,
    ) -> Result<JobRecord, JobsError> {
        let record = self.get(id, owner).await?;
        if record.state.is_terminal() {
            return Ok(record);
        }
        let ending = Ending {
            state: JobState::Cancelled,
            error: Some("cancelled by request".to_owned()),
            result: None,
        };
        let ended = self
            .0
            .finisher
            .finish(&record, ending)
            .await
            .map_err(|error| match error {
                FinishError::Store(e) => self.store_error(e),
                other @ FinishError::Payload(_) => JobsError::Finish(other),
            })?;
        if ended {
            self.0.engine.send(Command::Forget(record.id.clone()));
            cancel_running_upstream(&self.0.tenants, &record).await;
            tracing::info!("job cancelled");
        }
        self.read(&record.id, owner).await
    }
}
