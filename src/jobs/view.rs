//! How a job looks from outside: the status view (`/v1` and webhook payloads), its progress, and
//! the `evalgate` section added to merged results. Pure functions of a `JobRecord`.
use serde::Serialize;
use serde_json::{Value, json};

use crate::{
    store::JobRecord,
    types::{BatchState, JobKind, JobState, now_millis, rfc3339},
};

/// What `POST /v1/jobs` answers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Accepted {
    pub job_id: String,
    pub status: JobState,
    pub total_items: usize,
    pub batches: usize,
    /// `arize_task_run`: the Arize run id, once the trigger went through.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// Why the job already ended (an Arize trigger refused at once).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub links: Links,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Links {
    #[serde(rename = "self")]
    pub self_: String,
    pub result: String,
    pub events: String,
}

/// One batch as the status shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct BatchView {
    pub index: u32,
    /// `[start, end)` in the original dataset.
    pub items: [usize; 2],
    pub status: BatchState,
    pub upstream_job_id: Option<String>,
    /// Failed attempts of the current step (reset when the batch moves on).
    pub attempts: u32,
    /// How many times the batch was submitted upstream: more than 1 only after a crash while a
    /// submit was in flight (the upstream has no idempotency key).
    pub submits: u32,
    pub error: Option<String>,
}

/// `GET /v1/jobs/{id}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct JobView {
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

pub(crate) fn links(id: &str) -> Links {
    Links {
        self_: format!("/v1/jobs/{id}"),
        result: format!("/v1/jobs/{id}/result"),
        events: format!("/v1/jobs/{id}/events"),
    }
}

/// Progress over all batches: completed batches count fully, running ones by their progress.
pub(crate) fn progress(record: &JobRecord) -> (f64, usize) {
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

pub(crate) fn view(record: &JobRecord) -> JobView {
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
                submits: b.submits,
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

/// The job's status view as it stands once it ends in `state` (what a webhook carries).
pub(crate) fn final_status(record: &JobRecord, state: JobState, error: Option<&str>) -> Value {
    let mut view = serde_json::to_value(view(record)).unwrap_or(Value::Null);
    if let Some(obj) = view.as_object_mut() {
        obj.insert(
            "status".to_owned(),
            Value::String(state.as_str().to_owned()),
        );
        obj.insert("progress_percent".to_owned(), Value::from(100.0));
        obj.insert(
            "finished_at".to_owned(),
            Value::String(rfc3339(now_millis())),
        );
        obj.insert(
            "error".to_owned(),
            error.map_or(Value::Null, |e| Value::String(e.to_owned())),
        );
    }
    view
}

/// The `evalgate` object added to every merged result: the batches and any failed ones.
pub(crate) fn evalgate_section(record: &JobRecord) -> serde_json::Value {
    let batches: Vec<_> = record
        .batches
        .iter()
        .map(|b| json!({"index": b.idx, "items": [b.item_start, b.item_end], "status": b.state.as_str(), "upstream_job_id": b.upstream_job_id, "error": b.error}))
        .collect();
    let failed: Vec<_> = record
        .batches
        .iter()
        .filter(|b| matches!(b.state, BatchState::Failed | BatchState::Cancelled))
        .map(|b| json!({"index": b.idx, "items": [b.item_start, b.item_end], "status": b.state.as_str(), "error": b.error}))
        .collect();
    json!({"job_id": record.id.as_str(), "total_items": record.total_items, "batches": batches, "failed_batches": failed})
}
