//! `JobEngine`: the single scheduler that drives every batch of every job.
//!
//! One `DelayQueue` holds each unfinished batch exactly once, keyed by (job, batch): a batch is
//! either waiting in the queue or being worked on, never both, so there is exactly one upstream
//! call in flight per batch however many callers watch. Work runs in a `JoinSet` owned by the
//! engine and bounded by `jobs.concurrency`; every state change is committed to the store before
//! the next step. On start the engine rebuilds its queue from the store: batches with an
//! upstream id are polled, never resubmitted; a batch whose submit was in flight at a crash is
//! submitted again (the upstream has no idempotency key, so that one batch may run twice).
use std::{
    collections::{HashMap, HashSet},
    num::NonZeroU32,
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde_json::json;
use tokio::{sync::mpsc, task::JoinSet};
use tokio_util::{sync::CancellationToken, time::DelayQueue};

use super::{
    finish::{Ending, Finisher},
    hub::{JobEvent, JobHub},
    limits::LearnedLimits,
    merge, transition,
    view::evalgate_section,
};
use crate::{
    batching::{BatchLimits, Submission},
    config::Config,
    error::ErrorChain,
    retry::{Backoff, eta_from_progress},
    store::{BatchUpdate, JobStore, NewBatch},
    types::{BatchState, JobId, JobKind, now_millis},
    upstream::{
        UpstreamClient,
        jobs::{Failure, PollOutcome, SubmitOutcome},
    },
};

/// Commands from the API to the engine.
#[derive(Debug)]
pub enum Command {
    /// A job was created: schedule its pending batches.
    Start(JobId),
    /// A job ended outside the engine (cancelled): drop its queued work.
    Forget(JobId),
}

/// The API's handle on the engine.
#[derive(Debug, Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Command>,
}

impl EngineHandle {
    /// Queues a command; `false` when the engine's queue is full or it has stopped.
    pub fn send(&self, command: Command) -> bool {
        self.tx.try_send(command).is_ok()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Submit,
    /// `since`: when the upstream accepted the batch (wall clock), for progress-based ETAs.
    Poll {
        polls: u32,
        since: i64,
    },
}

#[derive(Debug, Clone)]
struct Work {
    job: JobId,
    idx: u32,
    action: Action,
}

type Key = (JobId, u32);

/// What finished work asks for next.
#[derive(Debug, Default)]
struct Next {
    schedule: Vec<(Work, Duration)>,
    finalize: Option<JobId>,
}

/// Everything a unit of work needs; cheap to clone into tasks.
#[derive(Debug, Clone)]
struct Ctx {
    store: Arc<dyn JobStore>,
    upstream: UpstreamClient,
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
}

/// Commands buffered between the API and the engine.
const COMMAND_CAPACITY: usize = 1024;
/// How often finished jobs past their retention are deleted.
const REAP_EVERY: Duration = Duration::from_secs(600);

impl JobEngine {
    pub(crate) fn new(
        store: Arc<dyn JobStore>,
        upstream: UpstreamClient,
        hub: JobHub,
        config: Arc<Config>,
        learned: Arc<LearnedLimits>,
        finisher: Finisher,
    ) -> (Self, EngineHandle) {
        let (tx, commands) = mpsc::channel(COMMAND_CAPACITY);
        let limiter = NonZeroU32::new(config.jobs.upstream_per_second)
            .map(|rate| Arc::new(RateLimiter::direct(Quota::per_second(rate))));
        let backoff = Backoff {
            initial: config.jobs.poll_initial_interval,
            max: config.jobs.poll_max_interval,
        };
        let engine = Self {
            ctx: Ctx {
                store,
                upstream,
                hub,
                config,
                limiter,
                backoff,
                learned,
                finisher,
            },
            commands,
        };
        (engine, EngineHandle { tx })
    }

    /// Runs until `shutdown`; work in flight is given the remaining grace to finish and is
    /// otherwise picked up from the store on the next start.
    #[expect(
        clippy::too_many_lines,
        reason = "the scheduler loop reads best as one select"
    )]
    pub async fn run(
        mut self,
        shutdown: CancellationToken,
    ) -> Result<(), crate::store::StoreError> {
        let mut queue: DelayQueue<Work> = DelayQueue::new();
        let mut queued: HashMap<Key, tokio_util::time::delay_queue::Key> = HashMap::new();
        let mut busy: HashSet<Key> = HashSet::new();
        let mut tasks: JoinSet<(Key, Next)> = JoinSet::new();
        let concurrency = self.ctx.config.jobs.concurrency;

        // Recovery: rebuild the queue from the store.
        for (job, idx, state) in self.ctx.store.unfinished_batches().await? {
            let action = if state == BatchState::Running {
                Action::Poll {
                    polls: 0,
                    since: now_millis(),
                }
            } else {
                Action::Submit
            };
            schedule(
                &mut queue,
                &mut queued,
                &busy,
                Work { job, idx, action },
                Duration::ZERO,
            );
        }
        for job in self.ctx.store.jobs_to_finalize().await? {
            let ctx = self.ctx.clone();
            tasks.spawn(async move {
                ctx.finalize(&job).await;
                ((job, u32::MAX), Next::default())
            });
        }
        let mut reap = tokio::time::interval(REAP_EVERY);
        reap.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                Some(command) = self.commands.recv() => match command {
                    Command::Start(job) => match self.ctx.store.job(&job).await {
                        Ok(Some(record)) => {
                            for batch in record.batches.iter().filter(|b| b.state == BatchState::Pending) {
                                let work = Work { job: job.clone(), idx: batch.idx, action: Action::Submit };
                                schedule(&mut queue, &mut queued, &busy, work, Duration::ZERO);
                            }
                        }
                        Ok(None) => {}
                        Err(error) => tracing::warn!(error = %ErrorChain(&error), job_id = %job, "cannot read a new job; it starts on the next restart"),
                    },
                    Command::Forget(job) => {
                        queued.retain(|(j, _), key| {
                            if *j == job {
                                queue.remove(key);
                                false
                            } else {
                                true
                            }
                        });
                    }
                },
                Some(expired) = std::future::poll_fn(|cx| queue.poll_expired(cx)), if tasks.len() < concurrency => {
                    let work = expired.into_inner();
                    let key = (work.job.clone(), work.idx);
                    queued.remove(&key);
                    busy.insert(key.clone());
                    let ctx = self.ctx.clone();
                    tasks.spawn(async move {
                        let next = ctx.process(work).await;
                        (key, next)
                    });
                }
                Some(done) = tasks.join_next() => {
                    let (key, next) = match done {
                        Ok(done) => done,
                        Err(error) => {
                            tracing::error!(%error, "a job task failed; its batch is retried on the next restart");
                            continue;
                        }
                    };
                    busy.remove(&key);
                    for (work, delay) in next.schedule {
                        schedule(&mut queue, &mut queued, &busy, work, delay);
                    }
                    if let Some(job) = next.finalize {
                        let ctx = self.ctx.clone();
                        tasks.spawn(async move {
                            ctx.finalize(&job).await;
                            ((job, u32::MAX), Next::default())
                        });
                    }
                }
                _ = reap.tick() => {
                    let retention = i64::try_from(self.ctx.config.jobs.retention.as_millis()).unwrap_or(i64::MAX);
                    match self.ctx.store.reap(now_millis().saturating_sub(retention)).await {
                        Ok(0) => {}
                        Ok(reaped) => tracing::info!(reaped, "finished jobs past retention deleted"),
                        Err(error) => tracing::warn!(error = %ErrorChain(&error), "reaping old jobs failed"),
                    }
                }
            }
        }
        let grace = self.ctx.config.server.shutdown_grace_period;
        if tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} })
            .await
            .is_err()
        {
            tracing::warn!(
                left = tasks.len(),
                "job work still running at shutdown; it resumes from the store on restart"
            );
            tasks.abort_all();
        }
        Ok(())
    }
}

fn schedule(
    queue: &mut DelayQueue<Work>,
    queued: &mut HashMap<Key, tokio_util::time::delay_queue::Key>,
    busy: &HashSet<Key>,
    work: Work,
    delay: Duration,
) {
    let key = (work.job.clone(), work.idx);
    // One place per batch: never queue a batch that is queued or being worked on.
    if queued.contains_key(&key) || busy.contains(&key) {
        return;
    }
    let entry = queue.insert(work, delay);
    queued.insert(key, entry);
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

    fn update(job: &JobId, idx: u32, from: &[BatchState], to: BatchState) -> BatchUpdate {
        BatchUpdate {
            job_id: job.clone(),
            idx,
            from: from.to_vec(),
            to,
            upstream_job_id: None,
            attempts: None,
            count_submit: false,
            progress: None,
            error: None,
            result: None,
            event: None,
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

    fn publish(&self, job: &JobId, name: &'static str, data: String) {
        self.hub.publish(JobEvent {
            job_id: job.clone(),
            name,
            data,
        });
    }

    #[expect(clippy::too_many_lines, reason = "one match over every submit outcome")]
    async fn submit(&self, work: &Work) -> Result<Next, crate::store::StoreError> {
        let Some(batch) = self.ctx_batch(work).await? else {
            return Ok(Next::default());
        };
        if !matches!(batch.state, BatchState::Pending | BatchState::Submitting) {
            return Ok(Next::default());
        }
        let items = batch.item_end - batch.item_start;
        // A limit learned from an earlier `dataset_too_large` applies before asking again.
        if let Some(limit) = self.learned.get(batch.kind)
            && items > limit
        {
            return self.resplit(work, &batch, limit).await;
        }
        self.throttle().await;
        let mut mark = Self::update(
            &work.job,
            work.idx,
            &[BatchState::Pending, BatchState::Submitting],
            BatchState::Submitting,
        );
        mark.count_submit = true;
        if !self.store.update_batch(mark).await? {
            return Ok(Next::default());
        }
        let body = Submission::batch_body(&batch.members, &batch.payload);
        let outcome = self
            .upstream
            .submit_batch(batch.kind, body, work.job.as_str())
            .await;
        match outcome {
            SubmitOutcome::Accepted { upstream_job_id } => {
                let mut update = Self::update(
                    &work.job,
                    work.idx,
                    &[BatchState::Submitting],
                    BatchState::Running,
                );
                update.upstream_job_id = Some(upstream_job_id.clone());
                update.attempts = Some(0);
                update.event = Some(Self::batch_event(
                    &work.job,
                    work.idx,
                    BatchState::Running,
                    (batch.item_start, batch.item_end),
                    json!({"upstream_job_id": upstream_job_id}),
                ));
                if self.store.update_batch(update.clone()).await? {
                    self.publish(&work.job, "batch", update.event.unwrap_or_default());
                    let delay = self.backoff.next_poll(0, None, None, &mut rand::rng());
                    return Ok(Next {
                        schedule: vec![(
                            Work {
                                action: Action::Poll {
                                    polls: 0,
                                    since: now_millis(),
                                },
                                ..work.clone()
                            },
                            delay,
                        )],
                        finalize: None,
                    });
                }
                // The job was cancelled while the submit was in flight: cancel what it started.
                if let Err(failure) = self
                    .upstream
                    .cancel_batch(batch.kind, &upstream_job_id, work.job.as_str())
                    .await
                {
                    tracing::warn!(
                        ?failure,
                        upstream_job_id,
                        "could not cancel a batch accepted after its job was cancelled"
                    );
                }
                Ok(Next::default())
            }
            SubmitOutcome::Inline(result) => self.complete_batch(work, &batch, result).await,
            SubmitOutcome::TooLarge { max_allowed } => {
                let limit = max_allowed
                    .unwrap_or(items / 2)
                    .clamp(1, items.saturating_sub(1).max(1));
                if items <= 1 {
                    return self
                        .fail_batch(
                            work,
                            &batch,
                            "upstream rejects even a single item as too large".to_owned(),
                        )
                        .await;
                }
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
            SubmitOutcome::Failure(failure) => {
                self.retry_or_fail(
                    work,
                    &batch,
                    failure,
                    BatchState::Submitting,
                    BatchState::Pending,
                    Action::Submit,
                )
                .await
            }
        }
    }

    async fn ctx_batch(
        &self,
        work: &Work,
    ) -> Result<Option<crate::store::BatchWork>, crate::store::StoreError> {
        self.store.batch_work(&work.job, work.idx).await
    }

    async fn resplit(
        &self,
        work: &Work,
        batch: &crate::store::BatchWork,
        limit: usize,
    ) -> Result<Next, crate::store::StoreError> {
        let parsed = match Submission::parse(Submission::batch_body(b"", &batch.payload)) {
            Ok(parsed) => parsed,
            Err(error) => {
                return self
                    .fail_batch(work, batch, format!("batch payload unreadable: {error}"))
                    .await;
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

    #[expect(clippy::too_many_lines, reason = "one match over every poll outcome")]
    async fn poll(
        &self,
        work: &Work,
        polls: u32,
        since: i64,
    ) -> Result<Next, crate::store::StoreError> {
        let Some(batch) = self.ctx_batch(work).await? else {
            return Ok(Next::default());
        };
        let (BatchState::Running, Some(upstream_id)) = (batch.state, batch.upstream_job_id.clone())
        else {
            return Ok(Next::default());
        };
        self.throttle().await;
        match self
            .upstream
            .poll_batch(batch.kind, &upstream_id, work.job.as_str())
            .await
        {
            PollOutcome::Pending {
                progress_percent,
                current_item,
                eta,
                retry_after,
                ..
            } => {
                let mut update = Self::update(
                    &work.job,
                    work.idx,
                    &[BatchState::Running],
                    BatchState::Running,
                );
                update.progress = Some((progress_percent, current_item));
                update.attempts = Some(0);
                if !self.store.update_batch(update).await? {
                    return Ok(Next::default());
                }
                self.publish(&work.job, "progress", String::new());
                let running_for = Duration::from_millis(
                    u64::try_from(now_millis().saturating_sub(since)).unwrap_or(0),
                );
                let eta = eta.or_else(|| eta_from_progress(running_for, progress_percent));
                let delay = self
                    .backoff
                    .next_poll(polls + 1, retry_after, eta, &mut rand::rng());
                Ok(Next {
                    schedule: vec![(
                        Work {
                            action: Action::Poll {
                                polls: polls + 1,
                                since,
                            },
                            ..work.clone()
                        },
                        delay,
                    )],
                    finalize: None,
                })
            }
            PollOutcome::Completed => match self
                .upstream
                .fetch_result(batch.kind, &upstream_id, work.job.as_str())
                .await
            {
                Ok(result) => self.complete_batch(work, &batch, result).await,
                Err(failure) => {
                    self.retry_or_fail(
                        work,
                        &batch,
                        failure,
                        BatchState::Running,
                        BatchState::Running,
                        Action::Poll { polls, since },
                    )
                    .await
                }
            },
            PollOutcome::Failed(error) => {
                self.fail_batch(work, &batch, format!("upstream job failed: {error}"))
                    .await
            }
            PollOutcome::Cancelled => {
                self.end_batch(
                    work,
                    &batch,
                    &[BatchState::Running],
                    BatchState::Cancelled,
                    json!({}),
                    |u| {
                        u.error = Some("cancelled upstream".to_owned());
                    },
                )
                .await
            }
            PollOutcome::Failure(failure) => {
                self.retry_or_fail(
                    work,
                    &batch,
                    failure,
                    BatchState::Running,
                    BatchState::Running,
                    Action::Poll { polls, since },
                )
                .await
            }
        }
    }

    async fn complete_batch(
        &self,
        work: &Work,
        batch: &crate::store::BatchWork,
        result: Bytes,
    ) -> Result<Next, crate::store::StoreError> {
        let items = batch.item_end - batch.item_start;
        let from = [BatchState::Submitting, BatchState::Running];
        self.end_batch(work, batch, &from, BatchState::Completed, json!({}), |u| {
            u.progress = Some((100.0, items));
            u.result = Some(result);
        })
        .await
    }

    async fn fail_batch(
        &self,
        work: &Work,
        batch: &crate::store::BatchWork,
        error: String,
    ) -> Result<Next, crate::store::StoreError> {
        tracing::warn!(error, "batch failed");
        let from = [
            BatchState::Pending,
            BatchState::Submitting,
            BatchState::Running,
        ];
        let detail = json!({"error": error});
        self.end_batch(work, batch, &from, BatchState::Failed, detail, |u| {
            u.error = Some(error);
        })
        .await
    }

    /// Moves a batch (while in `from`) to the terminal state `to`, committing its `batch` event
    /// with it, publishes the event, and asks for the job to be finalized.
    async fn end_batch(
        &self,
        work: &Work,
        batch: &crate::store::BatchWork,
        from: &[BatchState],
        to: BatchState,
        detail: serde_json::Value,
        edit: impl FnOnce(&mut BatchUpdate),
    ) -> Result<Next, crate::store::StoreError> {
        let mut update = Self::update(&work.job, work.idx, from, to);
        let items = (batch.item_start, batch.item_end);
        update.event = Some(Self::batch_event(&work.job, work.idx, to, items, detail));
        edit(&mut update);
        let event = update.event.clone().unwrap_or_default();
        let applied = self.store.update_batch(update).await?;
        if applied {
            self.publish(&work.job, "batch", event);
        }
        Ok(Next {
            schedule: Vec::new(),
            finalize: applied.then(|| work.job.clone()),
        })
    }

    async fn retry_or_fail(
        &self,
        work: &Work,
        batch: &crate::store::BatchWork,
        failure: Failure,
        from: BatchState,
        back_to: BatchState,
        action: Action,
    ) -> Result<Next, crate::store::StoreError> {
        match failure {
            Failure::Permanent(reason) => self.fail_batch(work, batch, reason).await,
            Failure::Transient {
                reason,
                retry_after,
            } => {
                let attempts = batch.attempts + 1;
                if attempts >= self.config.jobs.max_attempts {
                    return self
                        .fail_batch(
                            work,
                            batch,
                            format!("gave up after {attempts} attempts: {reason}"),
                        )
                        .await;
                }
                tracing::warn!(attempts, reason, "transient upstream failure; retrying");
                let mut update = Self::update(&work.job, work.idx, &[from], back_to);
                update.attempts = Some(attempts);
                update.error = Some(reason);
                if !self.store.update_batch(update).await? {
                    return Ok(Next::default());
                }
                let delay = self.backoff.retry(attempts, retry_after, &mut rand::rng());
                Ok(Next {
                    schedule: vec![(
                        Work {
                            action,
                            ..work.clone()
                        },
                        delay,
                    )],
                    finalize: None,
                })
            }
        }
    }

    /// Ends a job whose batches are all terminal: merge, then commit state + result + event.
    #[tracing::instrument(skip_all, fields(job_id = %job))]
    pub(super) async fn finalize(&self, job: &JobId) {
        if let Err(error) = self.try_finalize(job).await {
            tracing::warn!(error = %ErrorChain(&error), "finalizing failed; retried on the next batch event or restart");
        }
    }

    async fn try_finalize(&self, job: &JobId) -> Result<(), crate::store::StoreError> {
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
            for batch in record
                .batches
                .iter()
                .filter(|b| b.state == BatchState::Running)
            {
                if let Some(id) = &batch.upstream_job_id
                    && let Err(failure) = self
                        .upstream
                        .cancel_batch(record.kind, id, job.as_str())
                        .await
                {
                    tracing::warn!(
                        ?failure,
                        upstream_job_id = id,
                        "fail-fast: could not cancel a batch"
                    );
                }
            }
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
