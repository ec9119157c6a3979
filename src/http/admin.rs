//! The admin port: liveness, readiness, Prometheus metrics, cache purge. Keep it off public networks.
use axum::{
    Json, Router,
    extract::State,
    http::StatusCode,
    response::IntoResponse,
    routing::{get, post},
};
use serde_json::json;

use crate::state::AppState;

pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/admin/cache/purge", post(purge_cache))
        .with_state(state)
}

/// The process is up and its runtime answers.
async fn livez() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// 200 only while the listeners serve, the store answers, and no shutdown is under way.
async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    if state.readiness.is_draining() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "draining"})),
        );
    }
    if !state.readiness.is_ready() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "starting"})),
        );
    }
    if let Err(error) = state.store.ping().await {
        tracing::warn!(error = %crate::error::ErrorChain(&error), "store is not answering");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "store_unavailable"})),
        );
    }
    (StatusCode::OK, Json(json!({"status": "ready"})))
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

#[tracing::instrument(skip_all)]
async fn purge_cache(State(state): State<AppState>) -> impl IntoResponse {
    let purged = state.cache.purge().await;
    tracing::info!(purged, "taxonomy cache purged");
    Json(json!({"purged": purged}))
}
