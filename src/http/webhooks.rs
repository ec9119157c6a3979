//! The webhook deliveries API: inspect the outbox and replay deliveries. Never shows a secret;
//! target URLs are shown with their query string masked.
use axum::{
    Extension, Json, Router,
    extract::{Path, Query, State, rejection::QueryRejection},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::error::{ApiError, V1Error};
use crate::{
    jobs::error::JobsError,
    middleware::auth::Caller,
    state::AppState,
    store::{AttemptRecord, DeliveryRecord, DeliveryState, ReplayOutcome, StoreError},
    types::{JobId, rfc3339},
};

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/webhooks/deliveries", get(list))
        .route("/v1/webhooks/deliveries/{id}/replay", post(replay))
        .route("/v1/jobs/{id}/webhooks/replay", post(replay_job))
}

fn labelled(result: Result<Response, ApiError>) -> Response {
    result.unwrap_or_else(|e| V1Error(e).into_response())
}

/// A store error as the caller sees it: transient ones are a 503 with `Retry-After`.
fn store_error(state: &AppState) -> impl Fn(StoreError) -> ApiError {
    let retry_after =
        std::time::Duration::from_secs(u64::from(state.config.server.retry_after_secs));
    move |error| ApiError::from(JobsError::store(error, retry_after))
}

/// `GET /v1/webhooks/deliveries` body.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct DeliveryList {
    deliveries: Vec<DeliveryView>,
}

/// A delivery as the API shows it: times in RFC 3339, the URL's query string masked.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct DeliveryView {
    /// `msg_…`: the `webhook-id`, stable across retries.
    id: String,
    job_id: String,
    event: String,
    /// The target URL with any query string masked (it may carry a token).
    url: String,
    /// pending | delivered | dead | disabled
    status: &'static str,
    attempts: Vec<AttemptView>,
    /// Only while pending.
    next_attempt_at: Option<String>,
    created_at: String,
    delivered_at: Option<String>,
}

/// One attempt of a delivery.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct AttemptView {
    n: u32,
    at: String,
    /// The receiver's status code; null when no response came.
    status: Option<u16>,
    latency_ms: u64,
    error: Option<String>,
}

impl From<&DeliveryRecord> for DeliveryView {
    fn from(record: &DeliveryRecord) -> Self {
        Self {
            id: record.id.clone(),
            job_id: record.job_id.as_str().to_owned(),
            event: record.event.clone(),
            url: mask_target(&record.url),
            status: record.state.as_str(),
            attempts: record.attempts.iter().map(AttemptView::from).collect(),
            next_attempt_at: record.next_attempt_at.map(rfc3339),
            created_at: rfc3339(record.created_at),
            delivered_at: record.delivered_at.map(rfc3339),
        }
    }
}

impl From<&AttemptRecord> for AttemptView {
    fn from(record: &AttemptRecord) -> Self {
        Self {
            n: record.n,
            at: rfc3339(record.at),
            status: record.status,
            latency_ms: record.latency_ms,
            error: record.error.clone(),
        }
    }
}

/// A URL with its query string masked: webhook URLs often carry a token there.
/// A target URL as the API shows it: `scheme://host[:port]`, then `/…` for any path and `?…`
/// for any query. Both often carry the secret (a Slack-style `/services/T…/B…/<token>` path, a
/// `?token=` query), the origin does not.
fn mask_target(url: &str) -> String {
    let Ok(parsed) = url::Url::parse(url) else {
        return "…".to_owned();
    };
    let host = parsed.host_str().unwrap_or_default();
    let port = parsed.port().map(|p| format!(":{p}")).unwrap_or_default();
    let path = if matches!(parsed.path(), "" | "/") {
        "/"
    } else {
        "/…"
    };
    let query = if parsed.query().is_some() { "?…" } else { "" };
    format!("{}://{host}{port}{path}{query}", parsed.scheme())
}

#[derive(Debug, Deserialize)]
pub(super) struct ListParams {
    job_id: Option<String>,
    status: Option<String>,
    limit: Option<usize>,
}

/// Deliveries with every attempt (status code, latency, error), oldest first.
#[utoipa::path(get, path = "/v1/webhooks/deliveries", params(("job_id" = Option<String>, Query), ("status" = Option<String>, Query, description = "pending | delivered | dead | disabled"), ("limit" = Option<usize>, Query, description = "1-1000, default 100")),
    responses((status = 200, body = DeliveryList), (status = 400)))]
pub(super) async fn list(
    State(state): State<AppState>,
    Extension(Caller(tenant)): Extension<Caller>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Response {
    let run = async {
        let Query(params) = params.map_err(|e| ApiError::BadRequest(e.body_text()))?;
        let status = params
            .status
            .as_deref()
            .map(|s| {
                DeliveryState::parse(s)
                    .ok_or_else(|| ApiError::BadRequest(format!("unknown status {s:?}")))
            })
            .transpose()?;
        let limit = params.limit.unwrap_or(100);
        if !(1..=1000).contains(&limit) {
            return Err(ApiError::BadRequest(
                "limit must be between 1 and 1000".to_owned(),
            ));
        }
        // An id that is not a job id matches no delivery.
        let deliveries = match params.job_id.as_deref().map(JobId::parse) {
            Some(None) => Vec::new(),
            job => state
                .store
                .list_deliveries(&tenant.name, job.flatten(), status, limit)
                .await
                .map_err(store_error(&state))?,
        };
        Ok(Json(DeliveryList {
            deliveries: deliveries.iter().map(DeliveryView::from).collect(),
        })
        .into_response())
    };
    labelled(run.await)
}

/// Sends a delivery again (same `webhook-id`), whatever its state; its schedule restarts.
#[utoipa::path(post, path = "/v1/webhooks/deliveries/{id}/replay", params(("id" = String, Path)),
    responses((status = 202), (status = 404), (status = 409, description = "already pending")))]
pub(super) async fn replay(
    State(state): State<AppState>,
    Extension(Caller(tenant)): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    let run = async {
        match state
            .store
            .replay_delivery(&tenant.name, &id)
            .await
            .map_err(store_error(&state))?
        {
            ReplayOutcome::Replayed => {}
            ReplayOutcome::AlreadyPending => {
                return Err(ApiError::Conflict(format!(
                    "delivery {id} is already pending"
                )));
            }
            ReplayOutcome::NotFound => {
                return Err(ApiError::NotFound(format!("delivery {id} not found")));
            }
        }
        state.webhooks.wake();
        Ok((
            StatusCode::ACCEPTED,
            Json(json!({"id": id, "status": "pending"})),
        )
            .into_response())
    };
    labelled(run.await)
}

/// Replays every dead-lettered delivery of a job.
#[utoipa::path(post, path = "/v1/jobs/{id}/webhooks/replay", params(("id" = String, Path)),
    responses((status = 202), (status = 404)))]
pub(super) async fn replay_job(
    State(state): State<AppState>,
    Extension(Caller(tenant)): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    let run = async {
        let not_found = || ApiError::NotFound(format!("job {id} not found"));
        let job = JobId::parse(&id).ok_or_else(not_found)?;
        let replayed = state
            .store
            .replay_dead(&tenant.name, &job)
            .await
            .map_err(store_error(&state))?
            .ok_or_else(not_found)?;
        if replayed > 0 {
            state.webhooks.wake();
        }
        Ok((
            StatusCode::ACCEPTED,
            Json(json!({"job_id": id, "replayed": replayed})),
        )
            .into_response())
    };
    labelled(run.await)
}

#[cfg(test)]
mod tests {
    use super::mask_target;

    #[test]
    fn targets_show_their_origin_only() {
        assert_eq!(
            mask_target("https://hooks.slack.com/services/T000/B000/XXXXsecret"),
            "https://hooks.slack.com/…"
        );
        assert_eq!(
            mask_target("http://10.0.0.7:8080/hook?token=t0k3n"),
            "http://10.0.0.7:8080/…?…"
        );
        assert_eq!(mask_target("https://example.com"), "https://example.com/");
        assert_eq!(mask_target("https://[::1]:9/"), "https://[::1]:9/");
        assert_eq!(mask_target("not a url"), "…");
    }
}
