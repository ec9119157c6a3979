//! Caller identity: every API request is a tenant. In `auth.mode = "tokens"` the tenant comes
//! from `Authorization: Bearer <token>`; a missing or unknown token is answered 401 here, before
//! any handler runs, so nothing reaches the upstream. The tenant's own request rate is checked
//! here too (429 + Retry-After without touching other tenants' budgets).
//!
//! Handlers find the tenant as the `Caller` request extension; the response carries a
//! `TenantLabel` for the metrics layer. Logs name the tenant, never the token.
use std::sync::Arc;

use axum::{
    extract::{Request, State},
    middleware::Next,
    response::Response,
};

use crate::{
    http::error::ApiError,
    state::AppState,
    telemetry,
    tenants::{AuthError, Tenant},
    types::TenantName,
};

/// The tenant a request was authenticated as.
#[derive(Debug, Clone)]
pub(crate) struct Caller(pub Arc<Tenant>);

/// The tenant a response was produced for (a metric label); absent on 401s.
#[derive(Debug, Clone)]
pub(crate) struct TenantLabel(pub TenantName);

/// Paths served to anyone: the API description.
fn is_public(path: &str) -> bool {
    path == "/openapi.json"
}

pub(crate) async fn layer(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    if is_public(request.uri().path()) {
        return next.run(request).await;
    }
    let tenant = match state.tenants.authenticate(request.headers()) {
        Ok(tenant) => tenant,
        Err(error) => {
            let reason = match error {
                AuthError::Missing => "missing",
                AuthError::Unknown => "unknown",
            };
            metrics::counter!(telemetry::AUTH_FAILURES, "reason" => reason).increment(1);
            return ApiError::Unauthenticated(error).response_for_path(request.uri().path());
        }
    };
    let label = TenantLabel(tenant.name.clone());
    let mut response = match tenant.check_rate() {
        Ok(()) => {
            request.extensions_mut().insert(Caller(tenant));
            next.run(request).await
        }
        Err(retry_after) => {
            metrics::counter!(telemetry::RATE_LIMITED, "limit" => "tenant_requests_per_second")
                .increment(1);
            tracing::debug!(tenant = %tenant.name, "tenant over its request rate");
            ApiError::RateLimited {
                limit: "tenant requests_per_second",
                retry_after,
            }
            .response_for_path(request.uri().path())
        }
    };
    response.extensions_mut().insert(label);
    response
}
