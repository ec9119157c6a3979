//! Configuration: load (embedded defaults < `--config` file < `EVALGATE__*` env), validate, resolve secrets.
//!
//! `Config` holds parsed, typed values only; building it is the last fallible step before startup.
//! This module is the only place that reads the environment.
mod allowlist;
mod raw;
mod tenants;
mod validate;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use serde::Serialize;
use url::Url;

pub use self::{
    allowlist::{AllowedHost, parse_cidr},
    tenants::{
        AuthConfig, AuthMode, MIN_TOKEN_LEN, TenantConfig, TenantRate, TenantSource, TenantsConfig,
        UpstreamKeys,
    },
};
use crate::types::Secret;

/// The documented defaults, compiled in. `config/default.toml` is the reference for every key.
pub const DEFAULTS: &str = include_str!("../../config/default.toml");

/// Prefix of environment overrides: `EVALGATE__SECTION__KEY`.
pub const ENV_PREFIX: &str = "EVALGATE__";

/// The validated configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub server: ServerConfig,
    pub valiqor: ValiqorConfig,
    pub arize: ArizeConfig,
    pub store: StoreConfig,
    pub taxonomy_cache: TaxonomyCacheConfig,
    pub rate_limit: RateLimitConfig,
    pub telemetry: TelemetryConfig,
    pub batching: BatchingConfig,
    pub jobs: JobsConfig,
    pub webhooks: WebhooksConfig,
    pub auth: AuthConfig,
}

/// The webhook events a target can subscribe to.
pub const WEBHOOK_EVENTS: [&str; 3] = ["job.completed", "job.failed", "job.cancelled"];

/// A configured endpoint that receives every job's events.
#[derive(Debug, Clone, Serialize)]
pub struct WebhookEndpoint {
    pub url: String,
    /// Several = rotation: one signature per secret.
    pub secrets: Vec<Secret<String>>,
    pub events: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct WebhooksConfig {
    pub concurrency: usize,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(serialize_with = "durations")]
    pub retry_schedule: Vec<Duration>,
    #[serde(with = "humantime_serde")]
    pub max_retry_after: Duration,
    pub max_inline_result_bytes: usize,
    pub public_base_url: String,
    /// Networks whose addresses webhook targets may use although their class is refused.
    pub allowed_cidrs: Vec<ipnet::IpNet>,
    /// Host names whose addresses are all let through.
    pub allowed_hosts: Vec<AllowedHost>,
    pub max_pending: usize,
    pub endpoints: Vec<WebhookEndpoint>,
}

fn durations<S: serde::Serializer>(values: &[Duration], serializer: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    let mut seq = serializer.serialize_seq(Some(values.len()))?;
    for value in values {
        seq.serialize_element(&humantime::format_duration(*value).to_string())?;
    }
    seq.end()
}

/// Batch limits of one kind.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct BatchLimitsConfig {
    pub max_items: usize,
    pub max_bytes: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct BatchingConfig {
    pub failure_analysis: BatchLimitsConfig,
    pub evaluation: BatchLimitsConfig,
    pub security_audit: BatchLimitsConfig,
}

impl BatchingConfig {
    pub fn for_kind(&self, kind: crate::types::JobKind) -> BatchLimitsConfig {
        match kind {
            crate::types::JobKind::FailureAnalysis => self.failure_analysis,
            crate::types::JobKind::Evaluation => self.evaluation,
            crate::types::JobKind::SecurityAudit => self.security_audit,
            // One run, never split.
            crate::types::JobKind::ArizeTaskRun => BatchLimitsConfig {
                max_items: 1,
                max_bytes: usize::MAX,
            },
        }
    }
}

/// What a batch that fails for good does to its job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailurePolicy {
    /// Finish the other batches; the job ends `completed_with_errors`.
    Continue,
    /// Cancel the other batches; the job ends `failed`.
    FailFast,
}

#[derive(Debug, Clone, Serialize)]
pub struct JobsConfig {
    pub concurrency: usize,
    pub upstream_per_second: u32,
    #[serde(with = "humantime_serde")]
    pub poll_initial_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub poll_max_interval: Duration,
    pub max_attempts: u32,
    pub failure_policy: FailurePolicy,
    pub max_active_jobs: usize,
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    #[serde(with = "humantime_serde")]
    pub idempotency_window: Duration,
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
    /// How often the engine scans the store for runnable work it does not hold (work whose
    /// command was dropped or whose task panicked); the scan also runs at start and at once
    /// after a dropped command.
    #[serde(with = "humantime_serde")]
    pub rescan_interval: Duration,
    /// Commands buffered between the API and the job engine. Not a file key: a full buffer only
    /// defers a new job to the engine's next store scan; tests shrink it to prove that.
    #[serde(skip)]
    pub command_capacity: usize,
}

/// Commands buffered between the API and the job engine, unless a test says otherwise.
pub const ENGINE_COMMAND_CAPACITY: usize = 1024;

#[derive(Debug, Clone, Serialize)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// Bearer token of the admin actions; `None`: served only on a loopback `admin_listen`.
    pub admin_token: Option<Secret<String>>,
    /// Host names the API port answers to (lower case, no port); empty: any.
    pub allowed_hosts: Vec<String>,
    pub max_body_bytes: usize,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    pub max_in_flight: usize,
    /// SSE event streams held open at once (they also count toward `max_in_flight`).
    pub max_event_streams: usize,
    pub retry_after_secs: u32,
    #[serde(with = "humantime_serde")]
    pub shutdown_grace_period: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct ValiqorConfig {
    pub base_url: Url,
    pub api_key: Secret<String>,
    /// `None` when no BYOK key is configured.
    pub openai_api_key: Option<Secret<String>>,
    pub byok: ByokMode,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub pool_max_idle_per_host: usize,
    #[serde(with = "humantime_serde")]
    pub pool_idle_timeout: Duration,
}

/// `[arize]`: the Arize tasks API on its own listener.
#[derive(Debug, Clone, Serialize)]
pub struct ArizeConfig {
    /// `None`: Arize is off (no listener, no managed task runs).
    pub listen: Option<SocketAddr>,
    pub base_url: Url,
    /// The default platform key; resolved (and `Some`) exactly when `listen` is set.
    pub api_key: Option<Secret<String>>,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Polls of one task run within this age share one upstream call.
    #[serde(with = "humantime_serde")]
    pub run_status_max_age: Duration,
}

impl ArizeConfig {
    pub fn is_enabled(&self) -> bool {
        self.listen.is_some()
    }
}

/// How the configured BYOK key meets a caller-supplied `openai_api_key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ByokMode {
    /// The caller's key wins; ours is inserted where the body has none (or `null`).
    CallerFirst,
    /// Ours always wins.
    Force,
    /// Bodies are never touched.
    Off,
}

#[derive(Debug, Clone, Serialize)]
pub struct StoreConfig {
    /// Which store is in force: `"postgres"` when `postgres` is set, else `"sqlite"`.
    pub in_force: &'static str,
    pub path: StorePath,
    /// Read-only connections beside the one writer (1-64); unused by a `:memory:` store.
    pub read_connections: usize,
    /// `store.url` set: the `PostgreSQL` store, and `path` is ignored.
    pub postgres: Option<PostgresConfig>,
}

/// The `PostgreSQL` store's connection.
#[derive(Debug, Clone, Serialize)]
pub struct PostgresConfig {
    /// The URL as `check-config` shows it: the password masked.
    pub url: String,
    /// The URL itself (it holds the password).
    #[serde(skip)]
    pub url_secret: Secret<String>,
    pub pool_size: usize,
    #[serde(with = "humantime_serde")]
    pub statement_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum StorePath {
    /// `":memory:"`: nothing survives the process (tests only).
    Memory,
    File(PathBuf),
}

#[derive(Debug, Clone, Serialize)]
pub struct TaxonomyCacheConfig {
    pub enabled: bool,
    pub max_entries: u64,
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub stale_if_error: Duration,
    pub max_body_bytes: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct RateLimitConfig {
    /// 0 = off.
    pub upstream_per_second: u32,
    pub upstream_burst: u32,
    /// 0 = off.
    pub playground_per_minute: u32,
    /// 0 = off.
    pub playground_per_day: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct TelemetryConfig {
    pub format: LogFormat,
    pub filter: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Pretty,
}

/// Every problem found while loading, reported together.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .problems.join("\n  - "))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

/// Where configuration comes from, besides the embedded defaults.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    /// An explicit file; it must exist.
    pub file: Option<PathBuf>,
    /// Read `EVALGATE__*` overrides from the process environment.
    pub env: bool,
    /// Final overrides as (dotted key, value), e.g. set by `--demo`; they win over everything.
    pub overrides: Vec<(String, String)>,
    /// TOML merged after the file and before the environment (tests: tables such as `[[tenants]]`).
    pub toml: Option<String>,
}

// === impl Config ===

impl Config {
    /// Loads and validates configuration from the given sources.
    pub fn load(sources: &Sources) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Toml::string(DEFAULTS));
        if let Some(path) = &sources.file {
            if !path.is_file() {
                return Err(ConfigError {
                    problems: vec![format!("config file {} does not exist", path.display())],
                });
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        if let Some(text) = &sources.toml {
            figment = figment.merge(Toml::string(text));
        }
        if sources.env {
            figment = figment.merge(Env::prefixed(ENV_PREFIX).split("__"));
        }
        for (key, value) in &sources.overrides {
            figment = figment.merge(Serialized::default(key, value));
        }
        validate::from_figment(&figment, &(Arc::new(ProcessEnv) as Arc<_>))
    }

    /// A valid configuration for tests: loopback port 0 everywhere, an in-memory store, the given
    /// upstream and key, no environment. `edit` adjusts the validated values.
    pub fn for_tests(base_url: &str, api_key: &str, edit: impl FnOnce(&mut Config)) -> Self {
        Self::for_tests_with(base_url, api_key, "", edit)
    }

    /// `for_tests` with more TOML merged in (e.g. `[auth]` and `[[tenants]]`).
    pub fn for_tests_with(
        base_url: &str,
        api_key: &str,
        toml: &str,
        edit: impl FnOnce(&mut Config),
    ) -> Self {
        let overrides = [
            ("server.listen", "127.0.0.1:0"),
            ("server.admin_listen", "127.0.0.1:0"),
            ("valiqor.base_url", base_url),
            ("valiqor.api_key", api_key),
            ("store.path", ":memory:"),
        ];
        let sources = Sources {
            file: None,
            env: false,
            toml: Some(toml.to_owned()),
            overrides: overrides
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        let mut config = match Self::load(&sources) {
            Ok(config) => config,
            Err(error) => unreachable!("test defaults are valid: {error}"),
        };
        edit(&mut config);
        config
    }

    /// The effective configuration as TOML, secrets redacted.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|error| format!("# not printable: {error}\n"))
    }
}

/// Reads environment variables for `env:NAME` secret references.
pub(crate) trait EnvLookup {
    fn get(&self, name: &str) -> Option<String>;
}

/// The real process environment.
struct ProcessEnv;

impl EnvLookup for ProcessEnv {
    #[expect(
        clippy::disallowed_methods,
        reason = "config/ is the one module that reads the environment"
    )]
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}
