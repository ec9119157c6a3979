//! The native jobs API (`/v1/jobs`). Handlers are thin: extract, call the `JobService`, map.
//! Errors use the `/v1` shape `{"error": {"code", "message"}}`.
use std::{convert::Infallible, time::Duration};

use axum::{
    Extension, Json, Router,
    body::Body,
    extract::{Path, Query, State, rejection::QueryRejection},
    http::{HeaderMap, StatusCode, header},
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
    routing::{get, post},
};
use futures::Stream;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::broadcast;

use super::{
    error::{ApiError, V1Error},
    read_body,
};
use crate::{
    batching::Submission,
    error::ErrorChain,
    jobs::{
        hub::JobEvent,
        service::{ArizeRun, JobInput, JobRequest, JobService},
        view::{self, Accepted, JobView},
    },
    middleware::auth::Caller,
    state::{AppState, EventStreamSlot},
    store::{JobRecord, ListQuery, StoredEvent},
    types::{JobKind, JobState, Origin},
    upstream::arize::{self, RunSpec},
};

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/jobs", post(submit).get(list))
        .route("/v1/jobs/{id}", get(status))
        .route("/v1/jobs/{id}/result", get(result))
        .route("/v1/jobs/{id}/cancel", post(cancel))
        .route("/v1/jobs/{id}/events", get(events))
}

/// `POST /v1/jobs` body.
#[expect(
    dead_code,
    reason = "the OpenAPI schema of the body; it is parsed without copying as `SubmitJobRef`"
)]
#[derive(Debug, utoipa::ToSchema)]
pub(super) struct SubmitJob {
    pub kind: JobKind,
    /// The items, forwarded byte for byte (the Valiqor kinds; required there).
    #[schema(value_type = Option<Vec<Object>>)]
    pub dataset: Option<Box<RawValue>>,
    /// Upstream fields of that kind (`feature_kind`, `run_eval`, `buckets`, `metrics`, `categories`, `project_name`, ...);
    /// for `arize_task_run`, the `TriggerTaskRunRequest` fields (`data_start_time`, `max_spans`, `experiment_name`, ...).
    #[schema(value_type = Option<Object>)]
    pub options: Option<Box<RawValue>>,
    /// `arize_task_run`: the id of the task to trigger one run of.
    pub task: Option<String>,
    /// `arize_task_run`: the id of a run the caller triggered itself, to watch instead.
    pub run_id: Option<String>,
    /// `{"url", "secret", "events"}`; stored now, delivered when webhooks are enabled.
    #[schema(value_type = Option<Object>)]
    pub webhook: Option<Box<RawValue>>,
}

/// The same request, parsed without copying: the dataset stays a slice of the body, so items are
/// forwarded byte for byte and a 100 MB dataset is never held twice.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitJobRef<'a> {
    kind: JobKind,
    #[serde(borrow, default)]
    dataset: Option<&'a RawValue>,
    #[serde(borrow, default)]
    options: Option<&'a RawValue>,
    #[serde(borrow, default)]
    webhook: Option<&'a RawValue>,
    #[serde(default)]
    task: Option<String>,
    #[serde(default)]
    run_id: Option<String>,
}

/// What a job request works on: a dataset of a Valiqor kind, or one Arize task run.
fn job_input(body: &bytes::Bytes, parsed: &SubmitJobRef<'_>) -> Result<JobInput, ApiError> {
    let bad = |message: &str| ApiError::BadRequest(message.to_owned());
    let options = parsed.options.filter(|o| o.get() != "null");
    if parsed.kind != JobKind::ArizeTaskRun {
        if parsed.task.is_some() || parsed.run_id.is_some() {
            return Err(bad("`task` and `run_id` apply only to kind arize_task_run"));
        }
        let dataset = parsed
            .dataset
            .ok_or_else(|| bad("`dataset` is required: a JSON array of items"))?;
        let submission = Submission::from_parts(body.clone(), dataset, options)
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        return Ok(JobInput::Dataset {
            kind: parsed.kind,
            submission,
            upstream_max_items: None,
        });
    }
    if parsed.dataset.is_some() {
        return Err(bad(
            "an arize_task_run has no `dataset`: give `task` (or `run_id`)",
        ));
    }
    let checked = |field: &str, id: &str| {
        arize::path_segment(id)
            .map(|_| id.to_owned())
            .map_err(|reason| ApiError::BadRequest(format!("`{field}`: {reason}")))
    };
    let run = match (&parsed.task, &parsed.run_id) {
        (Some(task), None) => {
            if options.is_some_and(|o| !o.get().trim_start().starts_with('{')) {
                return Err(bad(
                    "`options` must be a JSON object of TriggerTaskRunRequest fields",
                ));
            }
            ArizeRun::Trigger(RunSpec {
                task: checked("task", task)?,
                options: options.map(ToOwned::to_owned),
            })
        }
        (None, Some(run_id)) if options.is_none() => ArizeRun::Watch {
            run_id: checked("run_id", run_id)?,
        },
        (None, Some(_)) => {
            return Err(bad(
                "`options` apply to a trigger (`task`), not to a watched `run_id`",
            ));
        }
        _ => {
            return Err(bad(
                "an arize_task_run needs exactly one of `task` (to trigger a run) and `run_id` (to watch one)",
            ));
        }
    };
    Ok(JobInput::ArizeRun(run))
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(super) struct ErrorDetail {
    pub code: String,
    pub message: String,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(super) struct ErrorEnvelope {
    pub error: ErrorDetail,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(super) struct JobList {
    pub jobs: Vec<JobView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// SHA-256 of a request body, hex: what an Idempotency-Key is bound to.
fn body_hash(body: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(body)
        .iter()
        .fold(String::with_capacity(64), |mut out, b| {
            use std::fmt::Write;
            let _ = write!(out, "{b:02x}");
            out
        })
}

const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Submit a dataset as a managed job. The body may be as large as `server.max_body_bytes`.
#[utoipa::path(post, path = "/v1/jobs", request_body = SubmitJob,
    params(("Idempotency-Key" = Option<String>, Header, description = "Same key + same body within the window returns the same job; a different body is 409")),
    responses((status = 202, body = Accepted), (status = 200, body = Accepted, description = "Idempotent replay"),
        (status = 400, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope), (status = 413, body = ErrorEnvelope), (status = 503, body = ErrorEnvelope)))]
pub(super) async fn submit(
    State(jobs): State<JobService>,
    State(state): State<AppState>,
    Extension(Caller(tenant)): Extension<Caller>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, V1Error> {
    let body = read_body(body, state.config.server.max_body_bytes).await?;
    let idempotency = match headers.get(IDEMPOTENCY_KEY) {
        None => None,
        Some(value) => {
            let key = value
                .to_str()
                .ok()
                .filter(|k| !k.is_empty() && k.len() <= 255)
                .ok_or_else(|| {
                    ApiError::BadRequest(
                        "Idempotency-Key must be 1-255 visible characters".to_owned(),
                    )
                })?;
            Some((key.to_owned(), body_hash(&body)))
        }
    };
    let parsed: SubmitJobRef<'_> = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("invalid job request: {e}")))?;
    let input = job_input(&body, &parsed)?;
    let webhook = parsed
        .webhook
        .filter(|w| w.get() != "null")
        .map(|w| jobs.validate_webhook(w.get()))
        .transpose()
        .map_err(ApiError::from)?;
    let request = JobRequest {
        tenant,
        input,
        webhook,
        idempotency,
        origin: Origin::Native,
    };
    let (record, fresh) = jobs.submit(request).await.map_err(ApiError::from)?;
    let accepted = Accepted {
        job_id: record.id.to_string(),
        status: record.state,
        total_items: record.total_items,
        batches: record.batches.len(),
        run_id: (record.kind == JobKind::ArizeTaskRun)
            .then(|| {
                record
                    .batches
                    .first()
                    .and_then(|b| b.upstream_job_id.clone())
            })
            .flatten(),
        error: record.error.clone(),
        links: view::links(record.id.as_str()),
    };
    let status = if fresh {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    let mut response = (status, Json(accepted)).into_response();
    if let Ok(location) = header::HeaderValue::try_from(format!("/v1/jobs/{}", record.id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

#[derive(Debug, Deserialize)]
pub(super) struct WaitQuery {
    wait: Option<String>,
}

/// `30s`, `1m`, or a bare number of seconds.
fn parse_wait(raw: &str) -> Result<Duration, ApiError> {
    raw.parse::<u64>()
        .map(Duration::from_secs)
        .or_else(|_| humantime::parse_duration(raw))
        .map_err(|_| ApiError::BadRequest(format!("wait={raw:?} is not a duration like 30s")))
}

/// Job status with aggregated progress; `?wait=30s` long-polls until terminal or timeout.
#[utoipa::path(get, path = "/v1/jobs/{id}", params(("id" = String, Path), ("wait" = Option<String>, Query, description = "Long-poll up to this long (capped by jobs.max_wait)")),
    responses((status = 200, body = JobView), (status = 400, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope), (status = 503, body = ErrorEnvelope)))]
pub(super) async fn status(
    State(jobs): State<JobService>,
    Extension(Caller(tenant)): Extension<Caller>,
    Path(id): Path<String>,
    query: Result<Query<WaitQuery>, QueryRejection>,
) -> Result<Json<JobView>, V1Error> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let wait = query
        .wait
        .as_deref()
        .map(parse_wait)
        .transpose()?
        .unwrap_or(Duration::ZERO);
    let record = jobs
        .wait(&id, &tenant.name, wait)
        .await
        .map_err(ApiError::from)?;
    Ok(Json(view::view(&record)))
}

/// The merged result in the upstream's own shape plus an `evalgate` section; 409 until finished.
#[utoipa::path(get, path = "/v1/jobs/{id}/result", params(("id" = String, Path)),
    responses((status = 200, description = "FARunResult / EvaluationResult / SecurityAuditResult + evalgate"), (status = 404, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope), (status = 503, body = ErrorEnvelope)))]
pub(super) async fn result(
    State(jobs): State<JobService>,
    Extension(Caller(tenant)): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, V1Error> {
    let (_, bytes) = jobs
        .result(&id, &tenant.name)
        .await
        .map_err(ApiError::from)?;
    Ok(([(header::CONTENT_TYPE, "application/json")], bytes).into_response())
}

/// Cancels every unfinished batch upstream.
#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", params(("id" = String, Path)),
    responses((status = 200, body = JobView), (status = 404, body = ErrorEnvelope), (status = 503, body = ErrorEnvelope)))]
pub(super) async fn cancel(
    State(jobs): State<JobService>,
    Extension(Caller(tenant)): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<JobView>, V1Error> {
    let record = jobs
        .cancel(&id, &tenant.name)
        .await
        .map_err(ApiError::from)?;
    Ok(Json(view::view(&record)))
}

#[derive(Debug, Deserialize)]
pub(super) struct ListParams {
    status: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

/// Jobs, oldest first, with cursor pagination.
#[utoipa::path(get, path = "/v1/jobs", params(("status" = Option<String>, Query), ("limit" = Option<usize>, Query, description = "1-100, default 20"), ("cursor" = Option<String>, Query)),
    responses((status = 200, body = JobList), (status = 400, body = ErrorEnvelope), (status = 503, body = ErrorEnvelope)))]
pub(super) async fn list(
    State(jobs): State<JobService>,
    Extension(Caller(tenant)): Extension<Caller>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<JobList>, V1Error> {
    let Query(params) = params.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let status = params
        .status
        .as_deref()
        .map(|s| {
            JobState::parse(s).ok_or_else(|| ApiError::BadRequest(format!("unknown status {s:?}")))
        })
        .transpose()?;
    let limit = params.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::BadRequest("limit must be between 1 and 100".to_owned()).into());
    }
    let records = jobs
        .list(ListQuery {
            tenant: &tenant.name,
            state: status,
            limit: limit + 1,
            after: params.cursor.as_deref(),
        })
        .await
        .map_err(ApiError::from)?;
    let more = records.len() > limit;
    let jobs: Vec<JobView> = records.iter().take(limit).map(view::view).collect();
    let next_cursor = more
        .then(|| jobs.last().map(|j| j.job_id.clone()))
        .flatten();
    Ok(Json(JobList { jobs, next_cursor }))
}

/// Server-Sent Events: `progress`, `batch`, then one of `completed|failed|cancelled`.
/// Reconnect with `Last-Event-ID` to replay the `batch` and final events after that id.
#[utoipa::path(get, path = "/v1/jobs/{id}/events", params(("id" = String, Path), ("Last-Event-ID" = Option<i64>, Header)),
    responses((status = 200, description = "text/event-stream"), (status = 404, body = ErrorEnvelope), (status = 503, body = ErrorEnvelope)))]
pub(super) async fn events(
    State(jobs): State<JobService>,
    State(state): State<AppState>,
    Extension(Caller(tenant)): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, V1Error> {
    // Streams are long-lived: they have their own bound besides max_in_flight.
    let slot = state.admit_event_stream()?;
    let last = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok());
    // Subscribe before reading, so nothing that happens in between is missed.
    let live = jobs.subscribe();
    let record = jobs.get(&id, &tenant.name).await.map_err(ApiError::from)?;
    Ok(Sse::new(event_stream(jobs, record, live, last, slot))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// The stream of a job already read. A store error mid-stream ends the stream (logged once); the
/// client reconnects with `Last-Event-ID` and resumes where it was.
fn event_stream(
    jobs: JobService,
    record: JobRecord,
    mut live: broadcast::Receiver<JobEvent>,
    last: Option<i64>,
    slot: EventStreamSlot,
) -> impl Stream<Item = Result<Event, Infallible>> {
    /// Durable events after `seen`, or the end of the stream on a store error.
    macro_rules! stored_after {
        ($seen:expr) => {
            match jobs.events_after(&record.id, $seen).await {
                Ok(stored) => stored,
                Err(error) => {
                    tracing::warn!(job_id = %record.id, error = %ErrorChain(&error), "event stream ended: the store failed");
                    return;
                }
            }
        };
    }
    fn durable(event: StoredEvent) -> (bool, Event) {
        let terminal = matches!(event.name.as_str(), "completed" | "failed" | "cancelled");
        (
            terminal,
            Event::default()
                .id(event.seq.to_string())
                .event(event.name)
                .data(event.data),
        )
    }
    fn progress(record: &JobRecord) -> Event {
        // Progress snapshots carry no id: only durable events move Last-Event-ID.
        let snapshot = serde_json::to_string(&view::view(record)).unwrap_or_default();
        Event::default().event("progress").data(snapshot)
    }
    async_stream::stream! {
        // Held for as long as the stream is open.
        let _slot = slot;
        // Without Last-Event-ID the whole history is replayed; with it, what came after.
        let mut seen = last.unwrap_or(0);
        if record.state.is_terminal() {
            // A finished job: where it ended, then the history, the final event last.
            yield Ok(progress(&record));
            for event in stored_after!(seen) {
                yield Ok(durable(event).1);
            }
            return;
        }
        for event in stored_after!(seen) {
            seen = event.seq;
            let (terminal, event) = durable(event);
            yield Ok(event);
            if terminal {
                return;
            }
        }
        yield Ok(progress(&record));
        loop {
            let event = match live.recv().await {
                Ok(event) if event.job_id != record.id => continue,
                Ok(event) => Some(event),
                Err(broadcast::error::RecvError::Lagged(_)) => None,
                Err(broadcast::error::RecvError::Closed) => return,
            };
            // Durable events (batch, final) come from the store, in order, with their ids.
            for stored in stored_after!(seen) {
                seen = stored.seq;
                let (terminal, event) = durable(stored);
                yield Ok(event);
                if terminal {
                    return;
                }
            }
            if event.as_ref().is_none_or(|e| e.name == "progress") {
                match jobs.get(record.id.as_str(), &record.tenant).await {
                    Ok(current) => yield Ok(progress(&current)),
                    Err(error) => {
                        tracing::warn!(job_id = %record.id, error = %ErrorChain(&error), "event stream ended: the store failed");
                        return;
                    }
                }
            }
        }
    }
}
