//! Request metrics: counts by route template and status, total duration, and evalgate's own
//! overhead (total minus the time spent waiting on the upstream).
use std::time::{Duration, Instant};

use axum::{extract::Request, middleware::Next, response::Response};

use crate::{error::ErrorCode, telemetry};

/// The route template a response was produced for (set by the handler; a metric label).
#[derive(Debug, Clone, Copy)]
pub struct RouteLabel(pub &'static str);

/// Time spent waiting for the upstream's response headers (set by the handler when it called upstream).
#[derive(Debug, Clone, Copy)]
pub struct UpstreamElapsed(pub Duration);

pub async fn layer(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_owned();
    let response = next.run(request).await;
    let total = started.elapsed();
    let route = response
        .extensions()
        .get::<RouteLabel>()
        .map_or("unmatched", |r| r.0);
    let status = response.status().as_u16().to_string();
    metrics::counter!(telemetry::HTTP_REQUESTS, "route" => route, "method" => method, "status" => status)
        .increment(1);
    metrics::histogram!(telemetry::HTTP_DURATION, "route" => route).record(total.as_secs_f64());
    if let Some(UpstreamElapsed(upstream)) = response.extensions().get::<UpstreamElapsed>() {
        metrics::histogram!(telemetry::UPSTREAM_DURATION, "route" => route)
            .record(upstream.as_secs_f64());
        metrics::histogram!(telemetry::OVERHEAD, "route" => route)
            .record(total.saturating_sub(*upstream).as_secs_f64());
    }
    if let Some(ErrorCode(code)) = response.extensions().get::<ErrorCode>() {
        metrics::counter!(telemetry::HTTP_ERRORS, "code" => *code).increment(1);
    }
    response
}
