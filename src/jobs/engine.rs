//! `JobEngine`: the single scheduler that drives every batch of every job.
//!
//! One `DelayQueue` holds each unfinished batch exactly once, keyed by (job, batch): a batch is
//! either waiting in the queue or being worked on, never both, so there is exactly one upstream
//! call in flight per batch however many callers watch. Work runs in tasks owned by the engine
//! and bounded by `jobs.concurrency`; every state change is committed to the store before the
//! next step. The store is the truth: on start, every `jobs.rescan_interval`, after a command
//! was dropped (full queue) and after a task panicked, the engine scans it for runnable work and
//! takes on whatever is neither queued nor busy. Batches with an upstream id are polled, never
//! resubmitted; a batch whose submit was in flight at a crash is submitted again (the upstream
//! has no idempotency key, so that one batch may run twice). The loop itself is in
//! `scheduler.rs`; this module is the engine's handle, its construction and its unit of work.
use std::{num::NonZeroU32, sync::Arc, time::Duration};

use bytes::Bytes;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde_json::json;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::{
    finish::{Ending, FinishError, Finisher, cancel_running_upstream},
    hub::{JobEvent, JobHub},
    limits::LearnedLimits,
    merge,
    scheduler::{Runnable, Tuning, Worker, drive},
    transition,
    view::evalgate_section,
};
use crate::{
    batching::{BatchLimits, Submission},
    config::Config,
    error::ErrorChain,
    retry::Backoff,
    store::{BatchUpdate, BatchWork, JobStore, NewBatch, StoreError},
    tenants::Tenants,
    types::{BatchState, JobId, JobKind, TenantName, now_millis},
    upstream::jobs::{Failure, JobUpstream, PollOutcome, SubmitOutcome},
};

/// Commands from the API to the engine.
#[derive(Debug)]
pub(crate) enum Command {
    /// A job was created: schedule its pending batches.
    Start(JobId),
    /// A job ended outside the engine (cancelled): drop its queued work.
    Forget(JobId),
}

/// The API's handle on the engine.
#[derive(Debug, Clone)]
pub(crate) struct EngineHandle {
    pub(super) tx: mpsc::Sender<Command>,
    /// Woken when a command could not be queued: the engine then rescans the store.
    pub(super) missed: Arc<Notify>,
}

impl EngineHandle {
    /// Queues a command without waiting. `false` when it was not queued: when the queue is full
    /// the engine rescans the store as soon as it has caught up, so a committed job still starts
    /// (and a dropped `Forget` only leaves work that finds its job ended); when the engine has
    /// stopped, the next start reads the store.
    pub(crate) fn send(&self, command: Command) -> bool {
        match self.tx.try_send(command) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.missed.notify_one();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Action {
    Submit,
    /// `since`: when the upstream accepted the batch (wall clock), for progress-based ETAs.
    Poll {
        polls: u32,
        since: i64,
    },
}

#[derive(Debug, Clone)]
pub(super) struct Work {
    pub(super) job: JobId,
    pub(super) idx: u32,
    pub(super) action: Action,
}

pub(super) type Key = (JobId, u32);

/// The work key of a job's finalization (batch indexes never reach it).
pub(super) const FINALIZE: u32 = u32::MAX;

/// What finished work asks for next.
#[derive(Debug, Default)]
pub(super) struct Next {
    pub(super) schedule: Vec<(Work, Duration)>,
    pub(super) finalize: Option<JobId>,
}

/// Everything a unit of work needs; cheap to clone into tasks.
#[derive(Debug, Clone)]
struct Ctx {
    store: Arc<dyn JobStore>,
    /// Each job's upstream calls use its tenant's keys.
    tenants: Tenants,
    hub: JobHub,
    config: Arc<Config>,
    limiter: Option<Arc<DefaultDirectRateLimiter>>,
    backoff: Backoff,
    learned: Arc<LearnedLimits>,
    finisher: Finisher,
}

#[derive(Debug)]
pub struct JobEngine {
    ctx: Ctx,
    commands: mpsc::Receiver<Command>,
    missed: Arc<Notify>,
}

/// How often finished jobs past their retention are deleted.
const REAP_EVERY: Duration = Duration::from_secs(600);

impl JobEngine {
    pub(crate) fn new(
        store: Arc<dyn JobStore>,
        tenants: Tenants,
        hub: JobHub,
        config: Arc<Config>,
        learned: Arc<LearnedLimits>,
        finisher: Finisher,
    ) -> (Self, EngineHandle) {
        let (tx, commands) = mpsc::channel(config.jobs.command_capacity.max(1));
        let missed = Arc::new(Notify::new());
        let limiter = NonZeroU32::new(config.jobs.upstream_per_second)
            .map(|rate| Arc::new(RateLimiter::direct(Quota::per_second(rate))));
        let backoff = Backoff {
            initial: config.jobs.poll_initial_interval,
            max: config.jobs.poll_max_interval,
        };
        let engine = Self {
            ctx: Ctx {
                store,
                tenants,
                hub,
                config,
                limiter,
                backoff,
                learned,
                finisher,
            },
            commands,
            missed: Arc::clone(&missed),
        };
        (engine, EngineHandle { tx, missed })
    }

    /// Runs until `shutdown`, then takes no new work: what runs may finish until `hard_stop`
    /// (the end of the shutdown grace period), the rest is aborted and resumes from the store on
    /// the next start.
    pub async fn run(
        self,
        shutdown: CancellationToken,
        hard_stop: CancellationToken,
    ) -> Result<(), StoreError> {
        let jobs = &self.ctx.config.jobs;
        let tuning = Tuning {
            concurrency: jobs.concurrency,
            rescan_every: jobs.rescan_interval,
            // The same wait as after a store error: a panic is a bug, retrying it fast helps no one.
            after_panic: jobs.poll_max_interval,
            reap_every: REAP_EVERY,
        };
        let Self {
            ctx,
            mut commands,
            missed,
        } = self;
        drive(ctx, tuning, &mut commands, &missed, &shutdown, &hard_stop).await
    }
}

// === impl Worker for Ctx ===

impl Worker for Ctx {
    async fn process_work(&self, work: Work) -> Next {
        self.process(work).await
    }

    async fn finalize_job(&self, job: JobId) {
        self.finalize(&job).await;
    }

    async fn scan(&self) -> Result<Runnable, StoreError> {
        Ok(Runnable {
            batches: self.store.unfinished_batches().await?,
            finalize: self.store.jobs_to_finalize().await?,
        })
    }

    async fn new_batches(&self, job: &JobId) -> Result<Vec<(u32, BatchState)>, StoreError> {
        let record = self.store.job(job).await?;
        Ok(record
            .map(|record| {
                record
                    .batches
                    .iter()
                    .filter(|b| matches!(b.state, BatchState::Pending | BatchState::Running))
                    .map(|b| (b.idx, b.state))
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn reap(&self) {
        let retention = i64::try_from(self.config.jobs.retention.as_millis()).unwrap_or(i64::MAX);
        match self
            .store
            .reap(now_millis().saturating_sub(retention))
            .await
        {
            Ok(0) => {}
            Ok(reaped) => tracing::info!(reaped, "finished jobs past retention deleted"),
            Err(error) => {
                tracing::warn!(error = %ErrorChain(&error), "reaping old jobs failed");
            }
        }
    }
}

// === impl Ctx ===

impl Ctx {
    async fn throttle(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.until_ready().await;
        }
    }

    fn limits(&self, kind: JobKind) -> BatchLimits {
        let limits = self.config.batching.for_kind(kind);
        BatchLimits {
            max_items: limits.max_items,
            max_bytes: limits.max_bytes,
        }
    }

    #[tracing::instrument(skip_all, fields(job_id = %work.job, batch = work.idx, action = ?work.action))]
    async fn process(&self, work: Work) -> Next {
        let result = match work.action {
            Action::Submit => self.submit(&work).await,
            Action::Poll { polls, since } => self.poll(&work, polls, since).await,
        };
        match result {
            Ok(next) => next,
            Err(error) => {
                // The store failed: try the same step again later; nothing was lost.
                tracing::warn!(error = %ErrorChain(&error), "store error; retrying the step");
                Next {
                    schedule: vec![(work, self.backoff.max)],
                    finalize: None,
                }
            }
        }
    }

    fn batch_event(
        job: &JobId,
        idx: u32,
        state: BatchState,
        items: (usize, usize),
        extra: serde_json::Value,
    ) -> String {
        let mut data = json!({"job_id": job.as_str(), "index": idx, "status": state.as_str(), "items": [items.0, items.1]});
        if let (Some(obj), serde_json::Value::Object(more)) = (data.as_object_mut(), extra) {
            obj.extend(more);
        }
        data.to_string()
    }

    fn publish(&self, job: &JobId, name: &'static str) {
        self.hub.publish(JobEvent {
            job_id: job.clone(),
            name,
        });
    }

    /// The upstream client with the keys of the work's tenant. A tenant that is no longer
    /// configured (a reload removed it) is a transient failure: the batch is retried on the usual
    /// schedule, resumes if the tenant comes back, and fails after `jobs.max_attempts`. Another
    /// tenant's (or the default) keys are never used instead.
    fn upstream_for(&self, tenant: &TenantName, kind: JobKind) -> Result<JobUpstream, Failure> {
        self.tenants
            .by_name(tenant)
            .ok_or_else(|| Failure::Transient {
                reason: format!("tenant {tenant} is not configured (removed from the tenants?)"),
                retry_after: None,
            })?
            .job_upstream(kind)
    }

    /// The batch as the pure steps see it.
    fn seen(batch: &BatchWork) -> transition::Batch {
        transition::Batch {
            item_start: batch.item_start,
            item_end: batch.item_end,
            attempts: batch.attempts,
        }
    }

    async fn submit(&self, work: &Work) -> Result<Next, StoreError> {
        let Some(batch) = self.store.batch_work(&work.job, work.idx).await? else {
            return Ok(Next::default());
        };
        let items = batch.item_end - batch.item_start;
        match transition::before_submit(batch.state, items, self.learned.get(batch.kind)) {
            transition::BeforeSubmit::Skip => return Ok(Next::default()),
            transition::BeforeSubmit::Resplit { limit } => {
                return self.resplit(work, &batch, limit).await;
            }
            transition::BeforeSubmit::Submit => {}
        }
        self.throttle().await;
        let mark = BatchUpdate {
            count_submit: true,
            ..BatchUpdate::new(
                &work.job,
                work.idx,
                &[BatchState::Pending, BatchState::Submitting],
                BatchState::Submitting,
            )
        };
        if !self.store.update_batch(mark).await? {
            return Ok(Next::default());
        }
        let body = match batch.kind {
            // The run spec as stored; the client reads it.
            JobKind::ArizeTaskRun => batch.payload.clone(),
            _ => Submission::batch_body(&batch.members, &batch.payload),
        };
        // An earlier submit may have reached the upstream: a trigger reconciles first.
        let first_attempt_at = (batch.submits > 0).then_some(batch.created_at);
        let outcome = match self.upstream_for(&batch.tenant, batch.kind) {
            Ok(upstream) => {
                upstream
                    .submit(batch.kind, body, first_attempt_at, work.job.as_str())
                    .await
            }
            Err(failure) => SubmitOutcome::Failure(failure),
        };
        let step =
            transition::after_submit(Self::seen(&batch), outcome, self.config.jobs.max_attempts);
        match step {
            transition::Step::Commit(commit) => self.commit(work, &batch, *commit).await,
            transition::Step::Resplit { limit } => {
                let limit = self
                    .learned
                    .learn(self.store.as_ref(), batch.kind, limit)
                    .await?;
                tracing::info!(
                    kind = batch.kind.as_str(),
                    limit,
                    "learned the upstream's dataset limit"
                );
                self.resplit(work, &batch, limit).await
            }
        }
    }

    async fn resplit(
        &self,
        work: &Work,
        batch: &BatchWork,
        limit: usize,
    ) -> Result<Next, StoreError> {
        let parsed = match Submission::parse(Submission::batch_body(b"", &batch.payload)) {
            Ok(parsed) => parsed,
            Err(error) => {
                let reason = format!("batch payload unreadable: {error}");
                return self.commit(work, batch, transition::fail(reason)).await;
            }
        };
        let mut limits = self.limits(batch.kind);
        limits.max_items = limits.max_items.min(limit);
        let parts: Vec<NewBatch> = parsed
            .split(limits)
            .into_iter()
            .map(|range| NewBatch {
                idx: 0,
                item_start: batch.item_start + range.start,
                item_end: batch.item_start + range.end,
                payload: parsed.payload(range),
                upstream_job_id: None,
            })
            .collect();
        let count = parts.len();
        let new = self.store.split_batch(&work.job, work.idx, parts).await?;
        tracing::info!(
            parts = count,
            limit,
            "batch re-split after dataset_too_large"
        );
        Ok(Next {
            schedule: new
                .into_iter()
                .map(|idx| {
                    (
                        Work {
                            job: work.job.clone(),
                            idx,
                            action: Action::Submit,
                        },
                        Duration::ZERO,
                    )
                })
                .collect(),
            finalize: None,
        })
    }

    async fn poll(&self, work: &Work, polls: u32, since: i64) -> Result<Next, StoreError> {
        let Some(batch) = self.store.batch_work(&work.job, work.idx).await? else {
            return Ok(Next::default());
        };
        let (BatchState::Running, Some(upstream_id)) = (batch.state, batch.upstream_job_id.clone())
        else {
            return Ok(Next::default());
        };
        self.throttle().await;
        let upstream = match self.upstream_for(&batch.tenant, batch.kind) {
            Ok(upstream) => upstream,
            Err(failure) => {
                let commit = match transition::after_poll(
                    Self::seen(&batch),
                    PollOutcome::Failure(failure),
                    polls,
                    Duration::ZERO,
                    self.config.jobs.max_attempts,
                ) {
                    transition::AfterPoll::Commit(commit) => *commit,
                    transition::AfterPoll::FetchResult => {
                        // A failed poll never asks for the result; keep the batch as it is.
                        return Ok(Next::default());
                    }
                };
                return self.commit(work, &batch, commit).await;
            }
        };
        let outcome = upstream
            .poll(batch.kind, &upstream_id, work.job.as_str())
            .await;
        let running_for =
            Duration::from_millis(u64::try_from(now_millis().saturating_sub(since)).unwrap_or(0));
        let max_attempts = self.config.jobs.max_attempts;
        let commit = match transition::after_poll(
            Self::seen(&batch),
            outcome,
            polls,
            running_for,
            max_attempts,
        ) {
            transition::AfterPoll::Commit(commit) => *commit,
            transition::AfterPoll::FetchResult => {
                let fetched = upstream
                    .fetch_result(batch.kind, &upstream_id, work.job.as_str())
                    .await;
                transition::after_fetch(Self::seen(&batch), fetched, max_attempts)
            }
        };
        self.commit(work, &batch, commit).await
    }

    /// Executes a pure step's commit: the conditional batch change (with its `batch` event), then,
    /// once it applied, the publication and what comes next. A change that did not apply means
    /// the batch moved on (its job ended): only an upstream job started meanwhile is cancelled.
    async fn commit(
        &self,
        work: &Work,
        batch: &BatchWork,
        commit: transition::Commit,
    ) -> Result<Next, StoreError> {
        let transition::Commit {
            change,
            publish,
            then,
            cancel_if_stale,
        } = commit;
        if change.to == BatchState::Failed {
            tracing::warn!(error = change.error.as_deref(), "batch failed");
        }
        if let transition::Then::Retry { attempts, .. } = then {
            tracing::warn!(
                attempts,
                reason = change.error.as_deref(),
                "transient upstream failure; retrying"
            );
        }
        let items = (batch.item_start, batch.item_end);
        let update = BatchUpdate {
            upstream_job_id: change.upstream_job_id,
            attempts: change.attempts,
            progress: change.progress,
            error: change.error,
            result: change.result,
            event: change
                .event
                .map(|detail| Self::batch_event(&work.job, work.idx, change.to, items, detail)),
            ..BatchUpdate::new(&work.job, work.idx, change.from, change.to)
        };
        if !self.store.update_batch(update).await? {
            if let Some(upstream_job_id) = cancel_if_stale {
                // The job was cancelled while the submit was in flight: cancel what it started.
                let cancelled = match self.upstream_for(&batch.tenant, batch.kind) {
                    Ok(upstream) => {
                        upstream
                            .cancel(batch.kind, &upstream_job_id, work.job.as_str())
                            .await
                    }
                    Err(failure) => Err(failure),
                };
                if let Err(failure) = cancelled {
                    tracing::warn!(
                        ?failure,
                        upstream_job_id,
                        "could not cancel a batch accepted after its job was cancelled"
                    );
                }
            }
            return Ok(Next::default());
        }
        if let Some(name) = publish {
            self.publish(&work.job, name);
        }
        let mut rng = rand::rng();
        let next = match then {
            transition::Then::Poll {
                polls,
                eta,
                retry_after,
            } => {
                let since = match work.action {
                    Action::Poll { since, .. } => since,
                    Action::Submit => now_millis(),
                };
                let delay = self.backoff.next_poll(polls, retry_after, eta, &mut rng);
                Next {
                    schedule: vec![(
                        Work {
                            action: Action::Poll { polls, since },
                            ..work.clone()
                        },
                        delay,
                    )],
                    finalize: None,
                }
            }
            transition::Then::Retry {
                attempts,
                retry_after,
            } => Next {
                schedule: vec![(
                    work.clone(),
                    self.backoff.retry(attempts, retry_after, &mut rng),
                )],
                finalize: None,
            },
            transition::Then::Finalize => Next {
                schedule: Vec::new(),
                finalize: Some(work.job.clone()),
            },
        };
        Ok(next)
    }

    /// Ends a job whose batches are all terminal: merge, then commit state + result + event.
    #[tracing::instrument(skip_all, fields(job_id = %job))]
    pub(super) async fn finalize(&self, job: &JobId) {
        if let Err(error) = self.try_finalize(job).await {
            tracing::warn!(error = %ErrorChain(&error), "finalizing failed; retried on the next batch event or restart");
        }
    }

    async fn try_finalize(&self, job: &JobId) -> Result<(), FinishError> {
        let Some(record) = self.store.job(job).await? else {
            return Ok(());
        };
        if record.state.is_terminal() {
            return Ok(());
        }
        let batches: Vec<_> = record
            .batches
            .iter()
            .map(|b| (b.state, b.error.as_deref()))
            .collect();
        let Some(end) = transition::end_of(&batches, self.config.jobs.failure_policy) else {
            return Ok(());
        };
        let results = self.store.batch_results(job).await?;
        let (end, merged) = if results.is_empty() {
            (end, None)
        } else {
            match self.merge(&record, results).await? {
                Ok(bytes) => (end, Some(bytes)),
                Err(reason) => {
                    tracing::error!(reason, "merging the batch results failed; the job fails");
                    (transition::merge_failed(end, &reason), None)
                }
            }
        };
        let cancel_running = end.cancel_running;
        let state = end.state;
        let ending = Ending {
            state,
            error: end.error,
            result: merged,
        };
        if !self.finisher.finish(&record, ending).await? {
            return Ok(());
        }
        if cancel_running {
            // Only the finalization that ended the job cancels what still runs upstream; the
            // store already marked those batches cancelled with the job.
            cancel_running_upstream(&self.tenants, &record).await;
        }
        tracing::info!(
            state = state.as_str(),
            batches = record.batches.len(),
            "job finished"
        );
        Ok(())
    }

    /// Merges the completed batches' results off the async workers. `Ok(Err(reason))`: the merge
    /// failed (unreadable results, or a bug that panicked): the job cannot have a result.
    async fn merge(
        &self,
        record: &crate::store::JobRecord,
        results: Vec<crate::store::CompletedBatch>,
    ) -> Result<Result<Bytes, String>, crate::store::StoreError> {
        let duration_ms = u64::try_from(
            now_millis().saturating_sub(record.started_at.unwrap_or(record.created_at)),
        )
        .unwrap_or(0);
        let section = evalgate_section(record);
        let kind = record.kind;
        let id = record.id.as_str().to_owned();
        let merged = tokio::task::spawn_blocking(move || {
            let batches: Vec<merge::BatchResult<'_>> = results
                .iter()
                .map(|(start, count, result)| merge::BatchResult {
                    item_start: *start,
                    item_count: *count,
                    result,
                })
                .collect();
            let ctx = merge::MergeContext {
                job_id: &id,
                // What was merged: failed batches are listed in the `evalgate` section instead.
                total_items: results.iter().map(|(_, count, _)| count).sum(),
                duration_ms,
            };
            merge::merge_with_section(kind, &batches, &ctx, Some(("evalgate", &section)))
        })
        .await;
        match merged {
            Ok(Ok(bytes)) => Ok(Ok(bytes)),
            Ok(Err(error)) => Ok(Err(ErrorChain(&error).to_string())),
            Err(join) if join.is_panic() => Ok(Err("the merge panicked".to_owned())),
            // Cancelled at shutdown: finalized again on the next start.
            Err(join) => Err(join.into()),
        }
    }
}
