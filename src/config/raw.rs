//! `Raw*` structs: the serde mirror of `config/default.toml`, exactly as written, before validation.
//!
//! Every struct denies unknown fields so a typo is an error, not a silently ignored key.
//! Values that need checking (addresses, URLs, secret references) stay strings here;
//! `validate.rs` turns them into typed values and collects every problem.
use std::time::Duration;

use serde::Deserialize;

/// The top-level sections, in file order. `load` extracts each one on its own so that
/// a problem in one section does not hide the problems in the others.
pub(crate) const SECTIONS: &[&str] = &[
    "server",
    "valiqor",
    "arize",
    "store",
    "taxonomy_cache",
    "rate_limit",
    "telemetry",
    "batching",
    "jobs",
    "webhooks",
    "auth",
    "tenants",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServer {
    pub listen: String,
    pub admin_listen: String,
    pub admin_token: String,
    pub allowed_hosts: Vec<String>,
    pub max_body_bytes: u64,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    pub max_in_flight: u64,
    pub max_event_streams: u64,
    pub retry_after_secs: u64,
    #[serde(with = "humantime_serde")]
    pub shutdown_grace_period: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawValiqor {
    pub base_url: String,
    pub allow_insecure_upstream: bool,
    pub api_key: String,
    pub openai_api_key: String,
    pub byok: String,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub pool_max_idle_per_host: u64,
    #[serde(with = "humantime_serde")]
    pub pool_idle_timeout: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawArize {
    pub listen: String,
    pub base_url: String,
    pub allow_insecure_upstream: bool,
    pub api_key: String,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub run_status_max_age: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStore {
    pub path: String,
    pub read_connections: u64,
    pub url: String,
    pub pool_size: u64,
    #[serde(with = "humantime_serde")]
    pub statement_timeout: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTaxonomyCache {
    pub enabled: bool,
    pub max_entries: u64,
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub stale_if_error: Duration,
    pub max_body_bytes: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRateLimit {
    pub upstream_per_second: u64,
    pub upstream_burst: u64,
    pub playground_per_minute: u64,
    pub playground_per_day: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTelemetry {
    pub format: String,
    pub filter: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBatchLimits {
    pub max_items: u64,
    pub max_bytes: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBatching {
    pub failure_analysis: RawBatchLimits,
    pub evaluation: RawBatchLimits,
    pub security_audit: RawBatchLimits,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawJobs {
    pub concurrency: u64,
    pub upstream_per_second: u64,
    #[serde(with = "humantime_serde")]
    pub poll_initial_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub poll_max_interval: Duration,
    pub max_attempts: u64,
    pub failure_policy: String,
    pub max_active_jobs: u64,
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    #[serde(with = "humantime_serde")]
    pub idempotency_window: Duration,
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
    #[serde(with = "humantime_serde")]
    pub rescan_interval: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEndpoint {
    pub url: String,
    pub secrets: Vec<String>,
    #[serde(default)]
    pub events: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWebhooks {
    pub concurrency: u64,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub retry_schedule: Vec<String>,
    #[serde(with = "humantime_serde")]
    pub max_retry_after: Duration,
    pub max_inline_result_bytes: u64,
    pub public_base_url: String,
    pub allowed_cidrs: Vec<String>,
    pub allowed_hosts: Vec<String>,
    pub max_pending: u64,
    pub endpoints: Vec<RawEndpoint>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAuth {
    pub mode: String,
    pub tenants_file: String,
    pub allow_unauthenticated: bool,
}

/// One `[[tenants]]` entry, inline or in the tenants file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTenant {
    pub name: String,
    pub tokens: Vec<String>,
    #[serde(default)]
    pub valiqor_api_key: Option<String>,
    #[serde(default)]
    pub openai_api_key: Option<String>,
    #[serde(default)]
    pub arize_api_key: Option<String>,
    #[serde(default)]
    pub requests_per_second: Option<u64>,
    #[serde(default)]
    pub burst: Option<u64>,
    #[serde(default)]
    pub max_active_jobs: Option<u64>,
}

/// The tenants file: `[[tenants]]` entries and nothing else.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTenantsFile {
    #[serde(default)]
    pub tenants: Vec<RawTenant>,
}
