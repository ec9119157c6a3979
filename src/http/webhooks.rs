//! The webhook deliveries API: inspect the outbox and replay deliveries. Never shows a secret;
//! target URLs are shown with their query string masked.
use axum::{
    Json, Router,
    extract::{FromRef, Path, Query, State, rejection::QueryRejection},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::Deserialize;
use serde_json::json;

use super::error::{ApiError, V1Error};
use crate::{
    jobs::{error::JobsError, service::JobService},
    state::AppState,
    store::{DeliveryState, StoreError},
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

#[derive(Debug, Deserialize)]
pub(super) struct ListParams {
    job_id: Option<String>,
    status: Option<String>,
    limit: Option<usize>,
}

/// Deliveries with every attempt (status code, latency, error), oldest first.
#[utoipa::path(get, path = "/v1/webhooks/deliveries", params(("job_id" = Option<String>, Query), ("status" = Option<String>, Query, description = "pending | delivered | dead | disabled"), ("limit" = Option<usize>, Query, description = "1-1000, default 100")),
    responses((status = 200, description = "{\"deliveries\": [DeliveryRecord]}"), (status = 400)))]
pub(super) async fn list(
    State(state): State<AppState>,
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
        let deliveries = state
            .store
            .list_deliveries(params.job_id, status, limit)
            .await
            .map_err(store_error(&state))?;
        Ok(Json(json!({"deliveries": deliveries})).into_response())
    };
    labelled(run.await)
}

/// Sends a delivery again (same `webhook-id`), whatever its state; its schedule restarts.
#[utoipa::path(post, path = "/v1/webhooks/deliveries/{id}/replay", params(("id" = String, Path)),
    responses((status = 202), (status = 404), (status = 409, description = "already pending")))]
pub(super) async fn replay(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let run = async {
        let known = state
            .store
            .list_deliveries(None, None, usize::MAX >> 1)
            .await
            .map_err(store_error(&state))?;
        let Some(current) = known.iter().find(|d| d.id == id) else {
            return Err(ApiError::NotFound(format!("delivery {id} not found")));
        };
        if current.status == "pending" {
            return Err(ApiError::Conflict(format!(
                "delivery {id} is already pending"
            )));
        }
        state
            .store
            .replay_delivery(&id)
            .await
            .map_err(store_error(&state))?;
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
pub(super) async fn replay_job(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let run = async {
        let record = JobService::from_ref(&state).get(&id).await?;
        let replayed = state
            .store
            .replay_dead(&record.id)
            .await
            .map_err(store_error(&state))?;
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
