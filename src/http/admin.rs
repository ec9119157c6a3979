//! The admin port: liveness, readiness, Prometheus metrics, cache purge. Keep it off public networks.
use std::net::SocketAddr;

use axum::{
    Json, Router,
    extract::{Request, State},
    http::StatusCode,
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::{state::AppState, types::Secret};

pub(crate) fn router(state: AppState) -> Router {
    // Admin actions change state: they need the admin token, or a loopback-only admin port.
    let actions = Router::new()
        .route("/admin/cache/purge", post(purge_cache))
        .route_layer(middleware::from_fn_with_state(state.clone(), admin_only));
    Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(actions)
        .with_state(state)
}

/// Who may use the admin actions.
#[derive(Debug, PartialEq, Eq)]
enum Gate {
    Allowed,
    /// No token was presented, or the wrong one.
    Unauthorized,
    /// No token is configured and the admin port is reachable from other hosts.
    NeedsToken,
}

fn gate(token: Option<&Secret<String>>, admin_listen: SocketAddr, presented: Option<&str>) -> Gate {
    match token {
        // Digests compared, so the comparison's time says nothing about the token.
        Some(token) => {
            let expected = Sha256::digest(token.expose().as_bytes());
            match presented {
                Some(given) if Sha256::digest(given.as_bytes()) == expected => Gate::Allowed,
                _ => Gate::Unauthorized,
            }
        }
        None if admin_listen.ip().is_loopback() => Gate::Allowed,
        None => Gate::NeedsToken,
    }
}

async fn admin_only(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let server = &state.config.server;
    match gate(server.admin_token.as_ref(), server.admin_listen, presented) {
        Gate::Allowed => next.run(request).await,
        Gate::Unauthorized => (
            StatusCode::UNAUTHORIZED,
            [(http::header::WWW_AUTHENTICATE, "Bearer")],
            Json(json!({"detail": "admin actions need Authorization: Bearer <server.admin_token>", "code": "unauthorized"})),
        )
            .into_response(),
        Gate::NeedsToken => (
            StatusCode::FORBIDDEN,
            Json(json!({"detail": "admin actions are served without a token only on a loopback admin_listen; set server.admin_token", "code": "admin_token_required"})),
        )
            .into_response(),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_configured_token_is_required_wherever_the_port_listens() {
        let token = Secret::new("adm1n".to_owned());
        for listen in ["127.0.0.1:9090", "0.0.0.0:9090"] {
            assert_eq!(
                gate(Some(&token), addr(listen), Some("adm1n")),
                Gate::Allowed
            );
            assert_eq!(
                gate(Some(&token), addr(listen), Some("nope")),
                Gate::Unauthorized
            );
            assert_eq!(gate(Some(&token), addr(listen), None), Gate::Unauthorized);
        }
    }

    #[test]
    fn without_a_token_only_a_loopback_port_serves_admin_actions() {
        assert_eq!(gate(None, addr("127.0.0.1:9090"), None), Gate::Allowed);
        assert_eq!(gate(None, addr("[::1]:9090"), None), Gate::Allowed);
        assert_eq!(gate(None, addr("0.0.0.0:9090"), None), Gate::NeedsToken);
        assert_eq!(
            gate(None, addr("10.1.2.3:9090"), Some("x")),
            Gate::NeedsToken
        );
    }
}
