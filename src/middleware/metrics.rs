//! Request metrics: counts by route template and status, total duration, and evalgate's own
//! overhead (total minus the time spent waiting on the upstream).
use std::time::{Duration, Instant};

use axum::{
    extract::{Request, State},
    middleware::Next,
    response::Response,
};

use super::auth::TenantLabel;
use crate::{http::error::ErrorCode, telemetry, upstream::Platform};

/// The route template a response was produced for (a metric label): set by the Valiqor handler
/// from its route table, and from the matched path on the native routes.
#[derive(Debug, Clone)]
pub(crate) struct RouteLabel(pub metrics::SharedString);

/// Time spent waiting for the upstream's response headers (set by the handler when it called upstream).
#[derive(Debug, Clone, Copy)]
pub(crate) struct UpstreamElapsed(pub Duration);

/// Counts and times every request of a listener; `platform` is its `upstream` label.
pub(crate) async fn layer(
    State(platform): State<Platform>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let response = next.run(request).await;
    let total = started.elapsed();
    let route = response
        .extensions()
        .get::<RouteLabel>()
        .map_or(metrics::SharedString::const_str("unmatched"), |r| {
            r.0.clone()
        });
    let status = status_label(response.status());
    // Configured tenant names only; "-" when the request had none (refused before auth).
    let tenant = response
        .extensions()
        .get::<TenantLabel>()
        .map_or(metrics::SharedString::const_str("-"), |t| {
            metrics::SharedString::from(t.0.to_shared())
        });
    let upstream = platform.as_str();
    metrics::counter!(telemetry::HTTP_REQUESTS, "route" => route.clone(), "method" => method, "status" => status, "tenant" => tenant, "upstream" => upstream)
        .increment(1);
    metrics::histogram!(telemetry::HTTP_DURATION, "route" => route.clone(), "upstream" => upstream)
        .record(total.as_secs_f64());
    if let Some(UpstreamElapsed(waited)) = response.extensions().get::<UpstreamElapsed>() {
        metrics::histogram!(telemetry::UPSTREAM_DURATION, "route" => route.clone(), "upstream" => upstream)
            .record(waited.as_secs_f64());
        metrics::histogram!(telemetry::OVERHEAD, "route" => route, "upstream" => upstream)
            .record(total.saturating_sub(*waited).as_secs_f64());
    }
    if let Some(ErrorCode(code)) = response.extensions().get::<ErrorCode>() {
        metrics::counter!(telemetry::HTTP_ERRORS, "code" => *code).increment(1);
    }
    response
}

/// The method as a static label (no allocation per request); anything unusual is `other`.
fn method_label(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PATCH => "PATCH",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// The status as a label; the common ones without an allocation.
fn status_label(status: http::StatusCode) -> metrics::SharedString {
    match status.as_u16() {
        200 => "200".into(),
        202 => "202".into(),
        400 => "400".into(),
        404 => "404".into(),
        429 => "429".into(),
        502 => "502".into(),
        503 => "503".into(),
        other => other.to_string().into(),
    }
}
