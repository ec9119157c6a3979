//! The jobs service: what the HTTP surfaces call. Submitting (native and transparent), reading
//! status and results, waiting, cancelling. Handlers stay thin; this is where the rules live.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::Serialize;
use serde_json::json;

use super::{
    BatchState, JobId, JobKind, JobState,
    engine::{Command, evalgate_section},
};
use crate::{
    batching::{BatchLimits, Submission},
    error::ApiError,
    state::AppState,
    store::{Created, JobRecord, NewBatch, NewJob, Origin, now_millis},
};

/// A new job's request, whichever surface it came through.
#[derive(Debug)]
pub struct JobRequest {
    pub kind: JobKind,
    pub submission: Submission,
    pub webhook: Option<String>,
    /// (Idempotency-Key, body hash).
    pub idempotency: Option<(String, String)>,
    pub origin: Origin,
    /// A limit the upstream just told us (`dataset_too_large`), tighter than the configured one.
    pub upstream_max_items: Option<usize>,
}

/// What `POST /v1/jobs` answers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Accepted {
    pub job_id: String,
    pub status: JobState,
    pub total_items: usize,
    pub batches: usize,
    pub links: Links,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Links {
    #[serde(rename = "self")]
    pub self_: String,
    pub result: String,
    pub events: String,
}

/// One batch as the status shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BatchView {
    pub index: u32,
    /// `[start, end)` in the original dataset.
    pub items: [usize; 2],
    pub status: BatchState,
    pub upstream_job_id: Option<String>,
    pub attempts: u32,
    pub error: Option<String>,
}

/// `GET /v1/jobs/{id}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JobView {
    pub job_id: String,
    pub kind: JobKind,
    pub status: JobState,
    pub progress_percent: f64,
    pub current_item: usize,
    pub total_items: usize,
    pub batches: Vec<BatchView>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub error: Option<String>,
    pub links: Links,
}

pub fn rfc3339(millis: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(u64::try_from(millis).unwrap_or(0));
    humantime::format_rfc3339_millis(at).to_string()
}

pub fn links(id: &str) -> Links {
    Links {
        self_: format!("/v1/jobs/{id}"),
        result: format!("/v1/jobs/{id}/result"),
        events: format!("/v1/jobs/{id}/events"),
    }
}

/// Progress over all batches: completed batches count fully, running ones by their progress.
pub fn progress(record: &JobRecord) -> (f64, usize) {
    let mut done = 0.0;
    let mut current = 0;
    for batch in &record.batches {
        let items = batch.item_end - batch.item_start;
        #[expect(clippy::cast_precision_loss, reason = "item counts are far below 2^52")]
        let items_f = items as f64;
        match batch.state {
            BatchState::Completed
            | BatchState::Failed
            | BatchState::Cancelled
            | BatchState::Split => {
                done += items_f;
                current += items;
            }
            BatchState::Running => {
                done += items_f * batch.progress / 100.0;
                current += batch.current_item.min(items);
            }
            BatchState::Pending | BatchState::Submitting => {}
        }
    }
    #[expect(clippy::cast_precision_loss, reason = "item counts are far below 2^52")]
    let total = record.total_items.max(1) as f64;
    let percent = if record.state.is_terminal() {
        100.0
    } else {
        (done / total * 100.0).clamp(0.0, 100.0)
    };
    (percent, current.min(record.total_items))
}

pub fn view(record: &JobRecord) -> JobView {
    let (progress_percent, current_item) = progress(record);
    JobView {
        job_id: record.id.to_string(),
        kind: record.kind,
        status: record.state,
        progress_percent: (progress_percent * 10.0).round() / 10.0,
        current_item,
        total_items: record.total_items,
        batches: record
            .batches
            .iter()
            .map(|b| BatchView {
                index: b.idx,
                items: [b.item_start, b.item_end],
                status: b.state,
                upstream_job_id: b.upstream_job_id.clone(),
                attempts: b.attempts,
                error: b.error.clone(),
            })
            .collect(),
        created_at: rfc3339(record.created_at),
        started_at: record.started_at.map(rfc3339),
        finished_at: record.finished_at.map(rfc3339),
        error: record.error.clone(),
        links: links(record.id.as_str()),
    }
}

/// The limits a new job of `kind` is split by: configured, tightened by what the upstream taught us.
fn limits(state: &AppState, kind: JobKind, upstream_max_items: Option<usize>) -> BatchLimits {
    let configured = state.config.batching.for_kind(kind);
    let learned = state.learned.get(kind);
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
pub fn exceeds_limits(state: &AppState, kind: JobKind, submission: &Submission) -> bool {
    let limits = limits(state, kind, None);
    let payload = submission
        .items
        .first()
        .zip(submission.items.last())
        .map_or(0, |(a, b)| b.end - a.start);
    submission.len() > limits.max_items || payload > limits.max_bytes
}

#[expect(
    clippy::needless_pass_by_value,
    reason = "used as map_err(store_error)"
)]
pub fn store_error(error: crate::store::StoreError) -> ApiError {
    tracing::error!(error = %crate::error::ErrorChain(&error), "store failed");
    ApiError::Internal
}

/// Creates a managed job: split, persist (committed before answering), hand to the engine.
#[tracing::instrument(skip_all, fields(kind = request.kind.as_str(), items = request.submission.len()))]
pub async fn submit(state: &AppState, request: JobRequest) -> Result<(JobRecord, bool), ApiError> {
    let active = state.store.count_active().await.map_err(store_error)?;
    if active >= state.config.jobs.max_active_jobs {
        return Err(ApiError::Overloaded {
            retry_after: Duration::from_secs(u64::from(state.config.server.retry_after_secs)),
        });
    }
    // Bounded outbox: a job that will produce deliveries is refused while the outbox is full.
    if request.webhook.is_some() || !state.config.webhooks.endpoints.is_empty() {
        let pending = state
            .store
            .count_pending_deliveries()
            .await
            .map_err(store_error)?;
        if pending >= state.config.webhooks.max_pending {
            return Err(ApiError::Overloaded {
                retry_after: Duration::from_secs(u64::from(state.config.server.retry_after_secs)),
            });
        }
    }
    let limits = limits(state, request.kind, request.upstream_max_items);
    let submission = &request.submission;
    let batches: Vec<NewBatch> = submission
        .split(limits)
        .into_iter()
        .enumerate()
        .map(|(idx, range)| NewBatch {
            idx: u32::try_from(idx).unwrap_or(u32::MAX),
            item_start: range.start,
            item_end: range.end,
            payload: submission.payload(range),
        })
        .collect();
    let id = JobId::generate();
    let job = NewJob {
        id: id.clone(),
        kind: request.kind,
        origin: request.origin,
        total_items: submission.len(),
        members: submission.members.clone(),
        webhook: request.webhook,
        idempotency: request.idempotency,
        batches,
        created_at: now_millis(),
    };
    let window =
        i64::try_from(state.config.jobs.idempotency_window.as_millis()).unwrap_or(i64::MAX);
    let created = state
        .store
        .create_job(job, now_millis().saturating_sub(window))
        .await
        .map_err(store_error)?;
    let (id, fresh) = match created {
        Created::New => (id, true),
        Created::Existing(existing) => (existing, false),
        Created::Conflict(existing) => {
            return Err(ApiError::Conflict(format!(
                "Idempotency-Key was already used for job {existing} with a different body"
            )));
        }
    };
    if fresh && !state.engine.send(Command::Start(id.clone())) {
        // The job is committed: the engine scans the store once it has caught up (or on its next
        // start when it is stopping) and starts it then.
        tracing::warn!(job_id = %id, "engine queue full; the job starts at the engine's next store scan");
    }
    let record = state
        .store
        .job(&id)
        .await
        .map_err(store_error)?
        .ok_or(ApiError::Internal)?;
    if fresh {
        tracing::info!(job_id = %id, batches = record.batches.len(), "job accepted");
    }
    Ok((record, fresh))
}

pub async fn get(state: &AppState, id: &str) -> Result<JobRecord, ApiError> {
    let not_found = || ApiError::NotFound(format!("job {id} not found"));
    let id = JobId::parse(id).ok_or_else(not_found)?;
    state
        .store
        .job(&id)
        .await
        .map_err(store_error)?
        .ok_or_else(not_found)
}

/// Waits (bounded) until the job is terminal, then returns its latest record.
pub async fn wait(state: &AppState, id: &str, wait: Duration) -> Result<JobRecord, ApiError> {
    let mut events = state.hub.subscribe();
    let record = get(state, id).await?;
    if record.state.is_terminal() || wait.is_zero() {
        return Ok(record);
    }
    let deadline = tokio::time::Instant::now() + wait.min(state.config.jobs.max_wait);
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Err(_) | Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => break,
            Ok(Ok(event)) if event.job_id == record.id && event.is_terminal() => break,
            Ok(Ok(_)) => {}
            Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {
                if get(state, id).await?.state.is_terminal() {
                    break;
                }
            }
        }
    }
    get(state, id).await
}

/// The merged result, with the `evalgate` section; a conflict while the job runs.
pub async fn result(state: &AppState, id: &str) -> Result<(JobRecord, Bytes), ApiError> {
    let record = get(state, id).await?;
    if !record.state.is_terminal() {
        return Err(ApiError::Conflict(format!(
            "job {id} is {}; the result is not ready",
            record.state.as_str()
        )));
    }
    let bytes = state
        .store
        .job_result(&record.id)
        .await
        .map_err(store_error)?;
    let bytes = bytes.unwrap_or_else(|| {
        // No batch completed: an empty result that still lists the batches and their errors.
        Bytes::from(
            json!({"status": record.state.sdk_status(), "evalgate": evalgate_section(&record)})
                .to_string(),
        )
    });
    Ok((record, bytes))
}

/// Cancels a job: committed first (so no new submit or poll can start), then every batch still
/// running upstream is cancelled there.
#[tracing::instrument(skip_all, fields(job_id = id))]
pub async fn cancel(state: &AppState, id: &str) -> Result<JobRecord, ApiError> {
    let record = get(state, id).await?;
    if record.state.is_terminal() {
        return Ok(record);
    }
    let event =
        json!({"job_id": record.id.as_str(), "status": "cancelled", "error": null}).to_string();
    let error = Some("cancelled by request".to_owned());
    let status =
        crate::webhooks::outbox::final_status(&record, JobState::Cancelled, error.as_deref());
    let deliveries = crate::webhooks::outbox::deliveries(
        &state.config.webhooks,
        &record,
        JobState::Cancelled,
        &status,
        None,
    );
    let delivering = !deliveries.is_empty();
    let changed = state
        .store
        .finish_job(
            &record.id,
            JobState::Cancelled,
            error,
            None,
            event.clone(),
            deliveries,
        )
        .await
        .map_err(store_error)?;
    if changed {
        if delivering {
            state.webhooks.wake();
        }
        state.engine.send(Command::Forget(record.id.clone()));
        state.hub.publish(super::hub::JobEvent {
            job_id: record.id.clone(),
            name: "cancelled",
            seq: 0,
            data: event,
        });
        for batch in record
            .batches
            .iter()
            .filter(|b| b.state == BatchState::Running)
        {
            if let Some(upstream_id) = &batch.upstream_job_id
                && let Err(failure) = state
                    .upstream
                    .cancel_batch(record.kind, upstream_id, record.id.as_str())
                    .await
            {
                tracing::warn!(
                    ?failure,
                    upstream_job_id = upstream_id,
                    "could not cancel a batch upstream"
                );
            }
        }
        tracing::info!("job cancelled");
    }
    get(state, id).await
}

/// Milliseconds since the epoch → `SystemTime` (for callers that format times).
pub fn system_time(millis: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(millis).unwrap_or(0))
}
