//! The native jobs API (`/v1/jobs`) and its `OpenAPI` document. Handlers are thin: extract, call
//! `jobs::service`, map. Errors use the `/v1` shape `{"error": {"code", "message"}}`.
use std::{convert::Infallible, time::Duration};

use axum::{
    Json, Router,
    body::Bytes,
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
use utoipa::OpenApi;

use crate::{
    batching::Submission,
    error::{ApiError, V1Error},
    jobs::{
        JobKind, JobState,
        service::{self, Accepted, JobRequest, JobView},
    },
    middleware::metrics::RouteLabel,
    state::AppState,
    store::{ListQuery, Origin},
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/jobs", post(submit).get(list))
        .route("/v1/jobs/{id}", get(status))
        .route("/v1/jobs/{id}/result", get(result))
        .route("/v1/jobs/{id}/cancel", post(cancel))
        .route("/v1/jobs/{id}/events", get(events))
        .route("/openapi.json", get(openapi))
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "evalgate native jobs API",
        description = "Managed jobs: split, submit, poll, merge."
    ),
    paths(
        submit,
        status,
        result,
        cancel,
        list,
        events,
        super::webhooks::list,
        super::webhooks::replay,
        super::webhooks::replay_job
    ),
    components(schemas(
        SubmitJob,
        Accepted,
        JobView,
        JobList,
        JobKind,
        JobState,
        crate::jobs::BatchState,
        service::BatchView,
        service::Links,
        ErrorEnvelope,
        ErrorDetail
    ))
)]
#[derive(Debug)]
pub struct ApiDoc;

async fn openapi() -> impl IntoResponse {
    Json(ApiDoc::openapi())
}

/// `POST /v1/jobs` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitJob {
    pub kind: JobKind,
    /// The items, forwarded byte for byte.
    #[schema(value_type = Vec<Object>)]
    pub dataset: Box<RawValue>,
    /// Upstream fields of that kind (`feature_kind`, `run_eval`, `buckets`, `metrics`, `categories`, `project_name`, ...).
    #[schema(value_type = Option<Object>)]
    pub options: Option<Box<RawValue>>,
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
    #[serde(borrow)]
    dataset: &'a RawValue,
    #[serde(borrow, default)]
    options: Option<&'a RawValue>,
    #[serde(borrow, default)]
    webhook: Option<&'a RawValue>,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorEnvelope {
    pub error: ErrorDetail,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct JobList {
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

/// Tags a response with its route template for the metrics layer.
pub(super) fn labelled(mut response: Response, route: &'static str) -> Response {
    response.extensions_mut().insert(RouteLabel(route));
    response
}

const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Submit a dataset as a managed job.
#[utoipa::path(post, path = "/v1/jobs", request_body = SubmitJob,
    params(("Idempotency-Key" = Option<String>, Header, description = "Same key + same body within the window returns the same job; a different body is 409")),
    responses((status = 202, body = Accepted), (status = 200, body = Accepted, description = "Idempotent replay"),
        (status = 400, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope), (status = 413, body = ErrorEnvelope), (status = 503, body = ErrorEnvelope)))]
async fn submit(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let route = "/v1/jobs";
    labelled(
        submit_inner(&state, &headers, body)
            .await
            .unwrap_or_else(|e| V1Error(e).into_response()),
        route,
    )
}

async fn submit_inner(
    state: &AppState,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
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
    let submission = Submission::from_parts(body.clone(), parsed.dataset, parsed.options)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let webhook = parsed
        .webhook
        .filter(|w| w.get() != "null")
        .map(|w| crate::webhooks::outbox::validate(w.get(), &state.webhook_policy))
        .transpose()
        .map_err(ApiError::BadRequest)?;
    let request = JobRequest {
        kind: parsed.kind,
        submission,
        webhook,
        idempotency,
        origin: Origin::Native,
        upstream_max_items: None,
    };
    let (record, fresh) = service::submit(state, request).await?;
    let accepted = Accepted {
        job_id: record.id.to_string(),
        status: record.state,
        total_items: record.total_items,
        batches: record.batches.len(),
        links: service::links(record.id.as_str()),
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
struct WaitQuery {
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
    responses((status = 200, body = JobView), (status = 404, body = ErrorEnvelope)))]
async fn status(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<WaitQuery>, QueryRejection>,
) -> Response {
    let run = async {
        let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
        let wait = query
            .wait
            .as_deref()
            .map(parse_wait)
            .transpose()?
            .unwrap_or(Duration::ZERO);
        let record = service::wait(&state, &id, wait).await?;
        Ok::<_, ApiError>(Json(service::view(&record)).into_response())
    };
    labelled(
        run.await.unwrap_or_else(|e| V1Error(e).into_response()),
        "/v1/jobs/{id}",
    )
}

/// The merged result in the upstream's own shape plus an `evalgate` section; 409 until finished.
#[utoipa::path(get, path = "/v1/jobs/{id}/result", params(("id" = String, Path)),
    responses((status = 200, description = "FARunResult / EvaluationResult / SecurityAuditResult + evalgate"), (status = 404, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope)))]
async fn result(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let response = match service::result(&state, &id).await {
        Ok((_, bytes)) => ([(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        Err(error) => V1Error(error).into_response(),
    };
    labelled(response, "/v1/jobs/{id}/result")
}

/// Cancels every unfinished batch upstream.
#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", params(("id" = String, Path)),
    responses((status = 200, body = JobView), (status = 404, body = ErrorEnvelope)))]
async fn cancel(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let response = match service::cancel(&state, &id).await {
        Ok(record) => Json(service::view(&record)).into_response(),
        Err(error) => V1Error(error).into_response(),
    };
    labelled(response, "/v1/jobs/{id}/cancel")
}

#[derive(Debug, Deserialize)]
struct ListParams {
    status: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

/// Jobs, oldest first, with cursor pagination.
#[utoipa::path(get, path = "/v1/jobs", params(("status" = Option<String>, Query), ("limit" = Option<usize>, Query, description = "1-100, default 20"), ("cursor" = Option<String>, Query)),
    responses((status = 200, body = JobList), (status = 400, body = ErrorEnvelope)))]
async fn list(
    State(state): State<AppState>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Response {
    let run = async {
        let Query(params) = params.map_err(|e| ApiError::BadRequest(e.body_text()))?;
        let status = params
            .status
            .as_deref()
            .map(|s| {
                JobState::parse(s)
                    .ok_or_else(|| ApiError::BadRequest(format!("unknown status {s:?}")))
            })
            .transpose()?;
        let limit = params.limit.unwrap_or(20);
        if !(1..=100).contains(&limit) {
            return Err(ApiError::BadRequest(
                "limit must be between 1 and 100".to_owned(),
            ));
        }
        let records = state
            .store
            .list_jobs(ListQuery {
                state: status,
                limit: limit + 1,
                after: params.cursor.as_deref(),
            })
            .await
            .map_err(service::store_error)?;
        let more = records.len() > limit;
        let jobs: Vec<JobView> = records.iter().take(limit).map(service::view).collect();
        let next_cursor = more
            .then(|| jobs.last().map(|j| j.job_id.clone()))
            .flatten();
        Ok(Json(JobList { jobs, next_cursor }).into_response())
    };
    labelled(
        run.await
            .unwrap_or_else(|e: ApiError| V1Error(e).into_response()),
        "/v1/jobs",
    )
}

/// Server-Sent Events: `progress`, `batch`, then one of `completed|failed|cancelled`.
/// Reconnect with `Last-Event-ID` to replay the `batch` and final events after that id.
#[utoipa::path(get, path = "/v1/jobs/{id}/events", params(("id" = String, Path), ("Last-Event-ID" = Option<i64>, Header)),
    responses((status = 200, description = "text/event-stream"), (status = 404, body = ErrorEnvelope)))]
async fn events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let last = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok());
    let response = match service::get(&state, &id).await {
        Ok(_) => Sse::new(event_stream(state, id, last))
            .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
            .into_response(),
        Err(error) => V1Error(error).into_response(),
    };
    labelled(response, "/v1/jobs/{id}/events")
}

fn event_stream(
    state: AppState,
    id: String,
    last: Option<i64>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    async_stream::stream! {
        // Subscribe before reading, so nothing that happens in between is missed.
        let mut live = state.hub.subscribe();
        // Without Last-Event-ID the whole history is replayed; with it, what came after.
        let mut seen = last.unwrap_or(0);
        let Ok(record) = service::get(&state, &id).await else { return };
        // Progress snapshots carry no id: only durable events move Last-Event-ID.
        let snapshot = serde_json::to_string(&service::view(&record)).unwrap_or_default();
        if record.state.is_terminal() {
            // A finished job: where it ended, then the history, the final event last.
            yield Ok(Event::default().event("progress").data(snapshot));
            if let Ok(stored) = state.store.events_after(&record.id, seen).await {
                for event in stored {
                    yield Ok(Event::default().id(event.seq.to_string()).event(event.name).data(event.data));
                }
            }
            return;
        }
        if let Ok(stored) = state.store.events_after(&record.id, seen).await {
            for event in stored {
                seen = event.seq;
                let terminal = matches!(event.name.as_str(), "completed" | "failed" | "cancelled");
                yield Ok(Event::default().id(event.seq.to_string()).event(event.name).data(event.data));
                if terminal {
                    return;
                }
            }
        }
        yield Ok(Event::default().event("progress").data(snapshot));
        loop {
            let event = match live.recv().await {
                Ok(event) if event.job_id != record.id => continue,
                Ok(event) => Some(event),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => None,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            // Durable events (batch, final) come from the store, in order, with their ids.
            if let Ok(stored) = state.store.events_after(&record.id, seen).await {
                for stored in stored {
                    seen = stored.seq;
                    let terminal = matches!(stored.name.as_str(), "completed" | "failed" | "cancelled");
                    yield Ok(Event::default().id(stored.seq.to_string()).event(stored.name).data(stored.data));
                    if terminal {
                        return;
                    }
                }
            }
            if event.as_ref().is_none_or(|e| e.name == "progress")
                && let Ok(current) = service::get(&state, &id).await
            {
                let data = serde_json::to_string(&service::view(&current)).unwrap_or_default();
                yield Ok(Event::default().event("progress").data(data));
            }
        }
    }
}
