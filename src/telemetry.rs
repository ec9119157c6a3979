//! Logs (tracing: JSON or human) and metrics (Prometheus, rendered on the admin port).
//!
//! Metric names live here so that the README's list and the code cannot drift apart.
use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::config::{LogFormat, TelemetryConfig};

/// Requests answered on the API port, by `route` template, `method` and `status`.
pub const HTTP_REQUESTS: &str = "evalgate_http_requests_total";
/// evalgate's own errors, by stable `code`.
pub const HTTP_ERRORS: &str = "evalgate_http_errors_total";
/// Arrival to response headers, by `route`.
pub const HTTP_DURATION: &str = "evalgate_http_request_duration_seconds";
/// Waiting on upstream response headers, by `route`.
pub const UPSTREAM_DURATION: &str = "evalgate_upstream_request_duration_seconds";
/// Time evalgate itself added: total minus upstream, by `route`.
pub const OVERHEAD: &str = "evalgate_overhead_seconds";
/// Upstream calls by `outcome` (`response`, `connect_error`, `timeout`, ...).
pub const UPSTREAM_REQUESTS: &str = "evalgate_upstream_requests_total";
/// Taxonomy cache lookups by `result` (`hit`, `miss`, `stale`).
pub const CACHE_LOOKUPS: &str = "evalgate_taxonomy_cache_total";
/// API requests being served now.
pub const IN_FLIGHT: &str = "evalgate_http_in_flight";
/// Requests shed with 503 because `server.max_in_flight` was reached.
pub const SHED: &str = "evalgate_http_shed_total";
/// Webhook attempts by `outcome` (`delivered`, `retry`, `dead_lettered`, `disabled`).
pub const WEBHOOK_DELIVERIES: &str = "evalgate_webhook_deliveries_total";
/// Deliveries in the outbox by `state` (`pending`, `dead`).
pub const WEBHOOK_DEPTH: &str = "evalgate_webhook_outbox";
/// From a job's end to the first attempt of its webhook.
pub const WEBHOOK_FIRST_ATTEMPT: &str = "evalgate_webhook_first_attempt_delay_seconds";
/// One webhook attempt's duration.
pub const WEBHOOK_LATENCY: &str = "evalgate_webhook_attempt_duration_seconds";
/// Requests refused by a local rate limit, by `limit`.
pub const RATE_LIMITED: &str = "evalgate_rate_limited_total";
/// Tenants configured now.
pub const TENANTS: &str = "evalgate_tenants";
/// Reloads of the tenants and `file:` secrets, by `outcome` (`applied`, `unchanged`, `rejected`).
pub const TENANT_RELOADS: &str = "evalgate_tenant_reloads_total";
/// API requests refused with 401, by `reason` (`missing`, `unknown`).
pub const AUTH_FAILURES: &str = "evalgate_auth_failures_total";

/// Installs the global tracing subscriber. `filter_override` (e.g. `RUST_LOG`) wins over config.
pub fn init_logging(
    config: &TelemetryConfig,
    format_override: Option<LogFormat>,
    filter_override: Option<&str>,
) {
    let filter = filter_override
        .and_then(|f| EnvFilter::try_new(f).ok())
        .or_else(|| EnvFilter::try_new(&config.filter).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format_override.unwrap_or(config.format) {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false),
            )
            .try_init(),
        LogFormat::Pretty => registry.with(fmt::layer().with_target(false)).try_init(),
    };
    if result.is_err() {
        tracing::debug!("a tracing subscriber was already installed");
    }
}

/// The process-wide Prometheus recorder. The `metrics` facade is global by design, so the
/// handle is installed once per process and shared by every `run()` in it (tests start several).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_seconds".to_owned()),
                    &[
                        0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
                        0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
                    ],
                )
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics may be empty");
            }
            describe();
            handle
        })
        .clone()
}

fn describe() {
    metrics::describe_counter!(HTTP_REQUESTS, "Requests answered on the API port");
    metrics::describe_counter!(HTTP_ERRORS, "evalgate's own error responses by code");
    metrics::describe_histogram!(
        HTTP_DURATION,
        metrics::Unit::Seconds,
        "Arrival to response headers"
    );
    metrics::describe_histogram!(
        UPSTREAM_DURATION,
        metrics::Unit::Seconds,
        "Waiting on upstream response headers"
    );
    metrics::describe_histogram!(
        OVERHEAD,
        metrics::Unit::Seconds,
        "Time added by evalgate (total - upstream)"
    );
    metrics::describe_counter!(UPSTREAM_REQUESTS, "Upstream calls by outcome");
    metrics::describe_counter!(CACHE_LOOKUPS, "Taxonomy cache lookups by result");
    metrics::describe_gauge!(IN_FLIGHT, "API requests being served");
    metrics::describe_counter!(SHED, "Requests shed at max_in_flight");
    metrics::describe_counter!(RATE_LIMITED, "Requests refused by a local rate limit");
    metrics::describe_gauge!(TENANTS, "Tenants configured");
    metrics::describe_counter!(TENANT_RELOADS, "Tenant and secret reloads by outcome");
    metrics::describe_counter!(AUTH_FAILURES, "API requests refused with 401 by reason");
    metrics::describe_counter!(WEBHOOK_DELIVERIES, "Webhook attempts by outcome");
    metrics::describe_gauge!(WEBHOOK_DEPTH, "Webhook outbox rows by state");
    metrics::describe_histogram!(
        WEBHOOK_FIRST_ATTEMPT,
        metrics::Unit::Seconds,
        "Job end to first webhook attempt"
    );
    metrics::describe_histogram!(
        WEBHOOK_LATENCY,
        metrics::Unit::Seconds,
        "Webhook attempt duration"
    );
}
