//! Turns the layered figment into a validated `Config`, collecting every problem before failing.
use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::Arc,
};

use figment::Figment;
use serde::de::DeserializeOwned;
use url::Url;

use super::{
    AllowedHost, ArizeConfig, BatchLimitsConfig, BatchingConfig, ByokMode, Config, ConfigError,
    ENGINE_COMMAND_CAPACITY, EnvLookup, FailurePolicy, JobsConfig, LogFormat, PostgresConfig,
    RateLimitConfig, ServerConfig, StoreConfig, StorePath, TaxonomyCacheConfig, TelemetryConfig,
    ValiqorConfig, WEBHOOK_EVENTS, WebhookEndpoint, WebhooksConfig, parse_cidr,
    raw::{
        self, RawArize, RawAuth, RawBatchLimits, RawBatching, RawJobs, RawRateLimit, RawServer,
        RawStore, RawTaxonomyCache, RawTelemetry, RawTenant, RawValiqor, RawWebhooks,
    },
    tenants,
};
use crate::types::{Secret, WebhookSecretKey};

/// Collected problems, each naming the key it is about.
#[derive(Default)]
pub(super) struct Problems(pub(super) Vec<String>);

impl Problems {
    pub(super) fn push(&mut self, key: &str, message: impl std::fmt::Display) {
        self.0.push(format!("{key}: {message}"));
    }

    /// Extracts one section; a failure is recorded and yields `None`.
    fn section<T: DeserializeOwned>(&mut self, figment: &Figment, name: &str) -> Option<T> {
        match figment.extract_inner::<T>(name) {
            Ok(value) => Some(value),
            Err(errors) => {
                for error in errors {
                    self.0.push(describe(name, &error));
                }
                None
            }
        }
    }
}

/// A figment error as one line that names the full key and where it was set.
fn describe(section: &str, error: &figment::Error) -> String {
    let mut key = section.to_owned();
    for part in &error.path {
        if !key.ends_with(part.as_str()) {
            key.push('.');
            key.push_str(part);
        }
    }
    let source = error
        .metadata
        .as_ref()
        .map(|m| match &m.source {
            Some(source) => format!(" (from {} {source})", m.name),
            None => format!(" (from {})", m.name),
        })
        .unwrap_or_default();
    format!("{key}: {}{source}", error.kind)
}

pub(super) fn from_figment(
    figment: &Figment,
    shared_env: &Arc<dyn EnvLookup + Send + Sync>,
) -> Result<Config, ConfigError> {
    let env = shared_env.as_ref();
    let mut problems = Problems::default();

    unknown_sections(figment, &mut problems);

    let server = problems
        .section::<RawServer>(figment, "server")
        .and_then(|raw| server(&raw, env, &mut problems));
    let valiqor = problems
        .section::<RawValiqor>(figment, "valiqor")
        .and_then(|raw| valiqor(&raw, env, &mut problems));
    let arize = problems
        .section::<RawArize>(figment, "arize")
        .and_then(|raw| arize(&raw, env, &mut problems));
    let store = problems
        .section::<RawStore>(figment, "store")
        .and_then(|raw| store(&raw, env, &mut problems));
    let taxonomy_cache = problems
        .section::<RawTaxonomyCache>(figment, "taxonomy_cache")
        .and_then(|raw| taxonomy_cache(&raw, &mut problems));
    let rate_limit = problems
        .section::<RawRateLimit>(figment, "rate_limit")
        .and_then(|raw| rate_limit(&raw, &mut problems));
    let telemetry = problems
        .section::<RawTelemetry>(figment, "telemetry")
        .and_then(|raw| telemetry(&raw, &mut problems));

    let batching = problems
        .section::<RawBatching>(figment, "batching")
        .and_then(|raw| batching(&raw, &mut problems));
    let jobs = problems
        .section::<RawJobs>(figment, "jobs")
        .and_then(|raw| jobs(&raw, &mut problems));
    let webhooks = problems
        .section::<RawWebhooks>(figment, "webhooks")
        .and_then(|raw| webhooks(&raw, env, &mut problems));
    let listeners_are_loopback = listeners(server.as_ref(), arize.as_ref(), &mut problems);
    let auth = auth(
        figment,
        listeners_are_loopback,
        arize
            .as_ref()
            .and_then(|a| a.listen.is_some().then_some(())),
        shared_env,
        &mut problems,
    );
    if let (Some(server), Some(batching)) = (&server, &batching) {
        for (kind, limits) in [
            ("failure_analysis", batching.failure_analysis),
            ("evaluation", batching.evaluation),
            ("security_audit", batching.security_audit),
        ] {
            if limits.max_bytes > server.max_body_bytes {
                problems.push(
                    &format!("batching.{kind}.max_bytes"),
                    "must not exceed server.max_body_bytes",
                );
            }
        }
    }

    match (
        server,
        valiqor,
        arize,
        store,
        taxonomy_cache,
        rate_limit,
        telemetry,
        batching,
        jobs,
        webhooks,
        auth,
    ) {
        (
            Some(server),
            Some(valiqor),
            Some(arize),
            Some(store),
            Some(taxonomy_cache),
            Some(rate_limit),
            Some(telemetry),
            Some(batching),
            Some(jobs),
            Some(webhooks),
            Some(auth),
        ) if problems.0.is_empty() => Ok(Config {
            server,
            valiqor,
            arize,
            store,
            taxonomy_cache,
            rate_limit,
            telemetry,
            batching,
            jobs,
            webhooks,
            auth,
        }),
        _ => Err(ConfigError {
            problems: problems.0,
        }),
    }
}

/// Whether every API listener is loopback (what `auth.mode = "none"` needs unless opted in);
/// the Arize listener must not share a port with the others.
fn listeners(
    server: Option<&ServerConfig>,
    arize: Option<&ArizeConfig>,
    problems: &mut Problems,
) -> Option<bool> {
    let (server, arize) = server.zip(arize)?;
    if let Some(listen) = arize.listen
        && listen.port() != 0
        && (listen == server.listen || listen == server.admin_listen)
    {
        problems.push(
            "arize.listen",
            "must differ from server.listen and server.admin_listen",
        );
    }
    Some(server.listen.ip().is_loopback() && arize.listen.is_none_or(|l| l.ip().is_loopback()))
}

/// Every top-level key that is not a known section is a problem.
fn unknown_sections(figment: &Figment, problems: &mut Problems) {
    match figment.extract::<figment::value::Dict>() {
        Ok(top) => {
            for key in top.keys() {
                if !raw::SECTIONS.contains(&key.as_str()) {
                    problems.push(
                        key,
                        format!(
                            "unknown section (expected one of: {})",
                            raw::SECTIONS.join(", ")
                        ),
                    );
                }
            }
        }
        Err(error) => problems.push("(root)", error),
    }
}

/// `[auth]` and the inline `[[tenants]]`; the default keys come from `[valiqor]` as written.
fn auth(
    figment: &Figment,
    listen_is_loopback: Option<bool>,
    arize_on: Option<()>,
    env: &Arc<dyn EnvLookup + Send + Sync>,
    problems: &mut Problems,
) -> Option<crate::config::AuthConfig> {
    let inline_tenants = if figment.contains("tenants") {
        problems
            .section::<Vec<RawTenant>>(figment, "tenants")
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    let raw_valiqor = figment.extract_inner::<RawValiqor>("valiqor").ok()?;
    // The default Arize key is a reference only while Arize is on (it is resolved on reloads).
    let raw_arize_key = match arize_on {
        Some(()) => Some(figment.extract_inner::<RawArize>("arize").ok()?.api_key),
        None => None,
    };
    let raw = problems.section::<RawAuth>(figment, "auth")?;
    tenants::auth(
        &raw,
        inline_tenants,
        tenants::DefaultKeyRefs {
            valiqor: raw_valiqor.api_key,
            openai: raw_valiqor.openai_api_key,
            arize: raw_arize_key,
        },
        listen_is_loopback,
        env,
        problems,
    )
}

fn webhooks(
    raw: &RawWebhooks,
    env: &dyn EnvLookup,
    problems: &mut Problems,
) -> Option<WebhooksConfig> {
    let concurrency = positive_usize("webhooks.concurrency", raw.concurrency, problems);
    let max_pending = positive_usize("webhooks.max_pending", raw.max_pending, problems);
    let max_inline = usize::try_from(raw.max_inline_result_bytes).ok();
    if raw.timeout.is_zero() {
        problems.push("webhooks.timeout", "must be greater than 0");
    }
    let mut schedule = Vec::new();
    for (i, step) in raw.retry_schedule.iter().enumerate() {
        match humantime::parse_duration(step) {
            Ok(d) => schedule.push(d),
            Err(e) => problems.push(
                &format!("webhooks.retry_schedule[{i}]"),
                format!("{step:?}: {e}"),
            ),
        }
    }
    if raw.retry_schedule.is_empty() {
        problems.push("webhooks.retry_schedule", "must list at least one delay");
    }
    let mut allowed_cidrs = Vec::new();
    for (i, entry) in raw.allowed_cidrs.iter().enumerate() {
        match parse_cidr(entry) {
            Ok(net) => allowed_cidrs.push(net),
            Err(reason) => problems.push(
                &format!("webhooks.allowed_cidrs[{i}]"),
                format!("{entry:?} is not a CIDR: {reason}"),
            ),
        }
    }
    let mut allowed_hosts = Vec::new();
    for (i, entry) in raw.allowed_hosts.iter().enumerate() {
        match entry.parse::<AllowedHost>() {
            Ok(host) => allowed_hosts.push(host),
            Err(reason) => problems.push(
                &format!("webhooks.allowed_hosts[{i}]"),
                format!("{entry:?} is not a host name: {reason}"),
            ),
        }
    }
    if !raw.public_base_url.is_empty() && Url::parse(&raw.public_base_url).is_err() {
        problems.push("webhooks.public_base_url", "is not a URL");
    }
    let mut endpoints = Vec::new();
    for (i, endpoint) in raw.endpoints.iter().enumerate() {
        let key = format!("webhooks.endpoints[{i}]");
        if !matches!(
            Url::parse(&endpoint.url)
                .map(|u| u.scheme().to_owned())
                .as_deref(),
            Ok("http" | "https")
        ) {
            problems.push(&format!("{key}.url"), "must be an http or https URL");
        }
        let mut secrets = Vec::new();
        for (j, reference) in endpoint.secrets.iter().enumerate() {
            let secret_key = format!("{key}.secrets[{j}]");
            if let Some(secret) = secret(&secret_key, reference, env, problems) {
                if let Err(error) = WebhookSecretKey::parse(secret.expose()) {
                    problems.push(
                        &secret_key,
                        format!("is not a whsec_ base64 secret: {error}"),
                    );
                }
                secrets.push(secret);
            }
        }
        if endpoint.secrets.is_empty() {
            problems.push(&format!("{key}.secrets"), "must list at least one secret");
        }
        let events = endpoint
            .events
            .clone()
            .unwrap_or_else(|| WEBHOOK_EVENTS.iter().map(|e| (*e).to_owned()).collect());
        for event in &events {
            if !WEBHOOK_EVENTS.contains(&event.as_str()) {
                problems.push(
                    &format!("{key}.events"),
                    format!("{event:?} is not one of {WEBHOOK_EVENTS:?}"),
                );
            }
        }
        endpoints.push(WebhookEndpoint {
            url: endpoint.url.clone(),
            secrets,
            events,
        });
    }
    Some(WebhooksConfig {
        concurrency: concurrency?,
        timeout: raw.timeout,
        retry_schedule: schedule,
        max_retry_after: raw.max_retry_after,
        max_inline_result_bytes: max_inline?,
        public_base_url: raw.public_base_url.trim_end_matches('/').to_owned(),
        allowed_cidrs,
        allowed_hosts,
        max_pending: max_pending?,
        endpoints,
    })
}

fn batch_limits(
    kind: &str,
    raw: &RawBatchLimits,
    problems: &mut Problems,
) -> Option<BatchLimitsConfig> {
    let max_items = positive_usize(
        &format!("batching.{kind}.max_items"),
        raw.max_items,
        problems,
    );
    let max_bytes = positive_usize(
        &format!("batching.{kind}.max_bytes"),
        raw.max_bytes,
        problems,
    );
    Some(BatchLimitsConfig {
        max_items: max_items?,
        max_bytes: max_bytes?,
    })
}

fn batching(raw: &RawBatching, problems: &mut Problems) -> Option<BatchingConfig> {
    let failure_analysis = batch_limits("failure_analysis", &raw.failure_analysis, problems);
    let evaluation = batch_limits("evaluation", &raw.evaluation, problems);
    let security_audit = batch_limits("security_audit", &raw.security_audit, problems);
    Some(BatchingConfig {
        failure_analysis: failure_analysis?,
        evaluation: evaluation?,
        security_audit: security_audit?,
    })
}

fn jobs(raw: &RawJobs, problems: &mut Problems) -> Option<JobsConfig> {
    let concurrency = positive_usize("jobs.concurrency", raw.concurrency, problems);
    let upstream_per_second = small_u32(
        "jobs.upstream_per_second",
        raw.upstream_per_second,
        problems,
    );
    let max_attempts = match small_u32("jobs.max_attempts", raw.max_attempts, problems) {
        Some(0) => {
            problems.push("jobs.max_attempts", "must be greater than 0");
            None
        }
        other => other,
    };
    let max_active_jobs = positive_usize("jobs.max_active_jobs", raw.max_active_jobs, problems);
    if raw.poll_initial_interval.is_zero() {
        problems.push("jobs.poll_initial_interval", "must be greater than 0");
    }
    if raw.rescan_interval.is_zero() {
        problems.push("jobs.rescan_interval", "must be greater than 0");
    }
    if raw.poll_initial_interval > raw.poll_max_interval {
        problems.push(
            "jobs.poll_max_interval",
            "must not be below jobs.poll_initial_interval",
        );
    }
    let failure_policy = match raw.failure_policy.as_str() {
        "continue" => Some(FailurePolicy::Continue),
        "fail-fast" => Some(FailurePolicy::FailFast),
        other => {
            problems.push(
                "jobs.failure_policy",
                format!("{other:?} is not \"continue\" or \"fail-fast\""),
            );
            None
        }
    };
    Some(JobsConfig {
        concurrency: concurrency?,
        upstream_per_second: upstream_per_second?,
        poll_initial_interval: raw.poll_initial_interval,
        poll_max_interval: raw.poll_max_interval,
        max_attempts: max_attempts?,
        failure_policy: failure_policy?,
        max_active_jobs: max_active_jobs?,
        retention: raw.retention,
        idempotency_window: raw.idempotency_window,
        max_wait: raw.max_wait,
        rescan_interval: raw.rescan_interval,
        command_capacity: ENGINE_COMMAND_CAPACITY,
    })
}

fn socket_addr(key: &str, value: &str, problems: &mut Problems) -> Option<SocketAddr> {
    if let Ok(addr) = value.parse() {
        Some(addr)
    } else {
        problems.push(key, format!("{value:?} is not an IP:port address"));
        None
    }
}

fn positive_usize(key: &str, value: u64, problems: &mut Problems) -> Option<usize> {
    match usize::try_from(value) {
        Ok(0) => {
            problems.push(key, "must be greater than 0");
            None
        }
        Ok(n) => Some(n),
        Err(_) => {
            problems.push(key, "is too large");
            None
        }
    }
}

fn small_u32(key: &str, value: u64, problems: &mut Problems) -> Option<u32> {
    if let Ok(n) = u32::try_from(value) {
        Some(n)
    } else {
        problems.push(key, "is too large");
        None
    }
}

fn server(raw: &RawServer, env: &dyn EnvLookup, problems: &mut Problems) -> Option<ServerConfig> {
    let listen = socket_addr("server.listen", &raw.listen, problems);
    let admin_listen = socket_addr("server.admin_listen", &raw.admin_listen, problems);
    if let (Some(a), Some(b)) = (listen, admin_listen)
        && a == b
        && a.port() != 0
    {
        problems.push("server.admin_listen", "must differ from server.listen");
    }
    let max_body_bytes = positive_usize("server.max_body_bytes", raw.max_body_bytes, problems);
    let max_in_flight = positive_usize("server.max_in_flight", raw.max_in_flight, problems);
    let max_event_streams =
        positive_usize("server.max_event_streams", raw.max_event_streams, problems);
    if raw.request_timeout.is_zero() {
        problems.push("server.request_timeout", "must be greater than 0");
    }
    let retry_after_secs = if let n @ 1..=30 = raw.retry_after_secs {
        u32::try_from(n).ok()
    } else {
        problems.push(
            "server.retry_after_secs",
            "must be between 1 and 30 (the SDK waits at most 30 s)",
        );
        None
    };
    let admin_token = if raw.admin_token.is_empty() {
        Some(None)
    } else {
        secret("server.admin_token", &raw.admin_token, env, problems).map(Some)
    };
    let mut allowed_hosts = Vec::new();
    for (i, host) in raw.allowed_hosts.iter().enumerate() {
        let host = host.trim().to_ascii_lowercase();
        let bracketed_v6 = host.starts_with('[') && host.ends_with(']');
        if host.is_empty()
            || host.contains(['/', '@', ' ', '?', '#'])
            || (host.contains(':') && !bracketed_v6)
        {
            problems.push(
                &format!("server.allowed_hosts[{i}]"),
                "write a bare host name or address, no scheme, port or path",
            );
        } else {
            allowed_hosts.push(host);
        }
    }
    Some(ServerConfig {
        listen: listen?,
        admin_listen: admin_listen?,
        admin_token: admin_token?,
        allowed_hosts,
        max_body_bytes: max_body_bytes?,
        request_timeout: raw.request_timeout,
        max_in_flight: max_in_flight?,
        max_event_streams: max_event_streams?,
        retry_after_secs: retry_after_secs?,
        shutdown_grace_period: raw.shutdown_grace_period,
    })
}

/// Resolves a secret reference: a literal, `env:NAME` or `file:/path`.
pub(super) fn secret(
    key: &str,
    value: &str,
    env: &dyn EnvLookup,
    problems: &mut Problems,
) -> Option<Secret<String>> {
    if let Some(name) = value.strip_prefix("env:") {
        if let Some(v) = env.get(name) {
            return Some(Secret::new(v));
        }
        problems.push(key, format!("environment variable {name} is not set"));
        return None;
    }
    if let Some(path) = value.strip_prefix("file:") {
        return match std::fs::read_to_string(path) {
            Ok(v) => {
                let v = v.strip_suffix('\n').unwrap_or(&v);
                let v = v.strip_suffix('\r').unwrap_or(v);
                Some(Secret::new(v.to_owned()))
            }
            Err(error) => {
                problems.push(key, format!("cannot read secret file {path}: {error}"));
                None
            }
        };
    }
    Some(Secret::new(value.to_owned()))
}

/// An upstream API key: a secret reference that must resolve to a non-empty header-safe value.
pub(super) fn upstream_key(
    key: &str,
    value: &str,
    env: &dyn EnvLookup,
    problems: &mut Problems,
) -> Option<Secret<String>> {
    let resolved = secret(key, value, env, problems)?;
    if resolved.is_empty() {
        problems.push(key, "must not be empty");
        None
    } else if resolved
        .expose()
        .bytes()
        .any(|b| b.is_ascii_control() || b == b' ' || !b.is_ascii())
    {
        problems.push(key, "contains whitespace, control or non-ASCII characters");
        None
    } else {
        Some(resolved)
    }
}

/// An optional secret reference: empty (or resolving to empty) is `Some(None)`; `None` on a problem.
#[expect(
    clippy::option_option,
    reason = "the outer None means a problem was recorded, as everywhere in this module"
)]
pub(super) fn optional_secret(
    key: &str,
    value: &str,
    env: &dyn EnvLookup,
    problems: &mut Problems,
) -> Option<Option<Secret<String>>> {
    if value.is_empty() {
        return Some(None);
    }
    secret(key, value, env, problems).map(|resolved| (!resolved.is_empty()).then_some(resolved))
}

pub(super) fn is_loopback_host(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => {
            d.eq_ignore_ascii_case("localhost")
                || d.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
        }
        None => false,
    }
}

/// An upstream base URL (`<section>.base_url`): http(s), no query or fragment, and plain http
/// only for loopback hosts unless `<section>.allow_insecure_upstream`.
fn base_url(
    section: &str,
    raw: &str,
    allow_insecure: bool,
    problems: &mut Problems,
) -> Option<Url> {
    let key = format!("{section}.base_url");
    match Url::parse(raw) {
        Ok(url) if !matches!(url.scheme(), "http" | "https") => {
            problems.push(&key, "must be an http or https URL");
            None
        }
        Ok(url) if url.query().is_some() || url.fragment().is_some() => {
            problems.push(&key, "must not carry a query or fragment");
            None
        }
        Ok(url) if url.scheme() == "http" && !allow_insecure && !is_loopback_host(&url) => {
            problems.push(
                &key,
                format!("plain http is only allowed for loopback hosts; use https or set {section}.allow_insecure_upstream = true"),
            );
            None
        }
        Ok(url) => Some(url),
        Err(error) => {
            problems.push(&key, format!("{raw:?} is not a URL: {error}"));
            None
        }
    }
}

fn valiqor(
    raw: &RawValiqor,
    env: &dyn EnvLookup,
    problems: &mut Problems,
) -> Option<ValiqorConfig> {
    let base_url = base_url(
        "valiqor",
        &raw.base_url,
        raw.allow_insecure_upstream,
        problems,
    );
    let api_key = upstream_key("valiqor.api_key", &raw.api_key, env, problems);
    let openai_api_key =
        optional_secret("valiqor.openai_api_key", &raw.openai_api_key, env, problems);
    let byok = match raw.byok.as_str() {
        "caller-first" => Some(ByokMode::CallerFirst),
        "force" => Some(ByokMode::Force),
        "off" => Some(ByokMode::Off),
        other => {
            problems.push(
                "valiqor.byok",
                format!("{other:?} is not one of \"caller-first\", \"force\", \"off\""),
            );
            None
        }
    };
    for (key, value) in [
        ("valiqor.connect_timeout", raw.connect_timeout),
        ("valiqor.timeout", raw.timeout),
    ] {
        if value.is_zero() {
            problems.push(key, "must be greater than 0");
        }
    }
    let pool_max_idle_per_host = usize::try_from(raw.pool_max_idle_per_host).ok();
    Some(ValiqorConfig {
        base_url: base_url?,
        api_key: api_key?,
        openai_api_key: openai_api_key?,
        byok: byok?,
        connect_timeout: raw.connect_timeout,
        timeout: raw.timeout,
        pool_max_idle_per_host: pool_max_idle_per_host?,
        pool_idle_timeout: raw.pool_idle_timeout,
    })
}

/// `[arize]`: off when `listen` is empty (then its key is not resolved at all).
fn arize(raw: &RawArize, env: &dyn EnvLookup, problems: &mut Problems) -> Option<ArizeConfig> {
    let listen = if raw.listen.is_empty() {
        Some(None)
    } else {
        socket_addr("arize.listen", &raw.listen, problems).map(Some)
    };
    let base_url = base_url(
        "arize",
        &raw.base_url,
        raw.allow_insecure_upstream,
        problems,
    );
    let api_key = match listen {
        Some(Some(_)) => upstream_key("arize.api_key", &raw.api_key, env, problems).map(Some),
        _ => Some(None),
    };
    for (key, value) in [
        ("arize.connect_timeout", raw.connect_timeout),
        ("arize.timeout", raw.timeout),
        ("arize.run_status_max_age", raw.run_status_max_age),
    ] {
        if value.is_zero() {
            problems.push(key, "must be greater than 0");
        }
    }
    Some(ArizeConfig {
        listen: listen?,
        base_url: base_url?,
        api_key: api_key?,
        connect_timeout: raw.connect_timeout,
        timeout: raw.timeout,
        run_status_max_age: raw.run_status_max_age,
    })
}

fn store(raw: &RawStore, env: &dyn EnvLookup, problems: &mut Problems) -> Option<StoreConfig> {
    let path = match raw.path.as_str() {
        "" => {
            problems.push("store.path", "must not be empty");
            None
        }
        ":memory:" => Some(StorePath::Memory),
        path => Some(StorePath::File(PathBuf::from(path))),
    };
    let read_connections = if let n @ 1..=64 = raw.read_connections {
        usize::try_from(n).ok()
    } else {
        problems.push("store.read_connections", "must be between 1 and 64");
        None
    };
    let postgres = match optional_secret("store.url", &raw.url, env, problems)? {
        None => Some(None),
        Some(url) => postgres(raw, url, problems).map(Some),
    };
    let postgres = postgres?;
    Some(StoreConfig {
        in_force: if postgres.is_some() {
            "postgres"
        } else {
            "sqlite"
        },
        path: path?,
        read_connections: read_connections?,
        postgres,
    })
}

/// `store.url` (resolved) and the pool settings: a `postgres://` or `postgresql://` URL.
fn postgres(
    raw: &RawStore,
    url: Secret<String>,
    problems: &mut Problems,
) -> Option<PostgresConfig> {
    let shown = match Url::parse(url.expose()) {
        Ok(parsed) if matches!(parsed.scheme(), "postgres" | "postgresql") => {
            let mut shown = parsed;
            if shown.password().is_some() {
                // A URL with a password always takes another one.
                let _ = shown.set_password(Some(crate::types::REDACTED));
            }
            Some(shown.to_string())
        }
        // Never echo the value: it may hold a password.
        Ok(_) | Err(_) => {
            problems.push(
                "store.url",
                "must be a postgres:// or postgresql:// URL (the value is not shown: it may hold a password)",
            );
            None
        }
    };
    let pool_size = if let n @ 1..=256 = raw.pool_size {
        usize::try_from(n).ok()
    } else {
        problems.push("store.pool_size", "must be between 1 and 256");
        None
    };
    if raw.statement_timeout.is_zero() {
        problems.push("store.statement_timeout", "must be greater than 0");
    }
    Some(PostgresConfig {
        url: shown?,
        url_secret: url,
        pool_size: pool_size?,
        statement_timeout: raw.statement_timeout,
    })
}

fn taxonomy_cache(raw: &RawTaxonomyCache, problems: &mut Problems) -> Option<TaxonomyCacheConfig> {
    if raw.enabled && raw.ttl.is_zero() {
        problems.push(
            "taxonomy_cache.ttl",
            "must be greater than 0 when the cache is enabled",
        );
    }
    let max_body_bytes = positive_usize(
        "taxonomy_cache.max_body_bytes",
        raw.max_body_bytes,
        problems,
    );
    if raw.enabled && raw.max_entries == 0 {
        problems.push(
            "taxonomy_cache.max_entries",
            "must be greater than 0 when the cache is enabled",
        );
    }
    Some(TaxonomyCacheConfig {
        enabled: raw.enabled,
        max_entries: raw.max_entries,
        ttl: raw.ttl,
        stale_if_error: raw.stale_if_error,
        max_body_bytes: max_body_bytes?,
    })
}

fn rate_limit(raw: &RawRateLimit, problems: &mut Problems) -> Option<RateLimitConfig> {
    let upstream_per_second = small_u32(
        "rate_limit.upstream_per_second",
        raw.upstream_per_second,
        problems,
    );
    let upstream_burst = small_u32("rate_limit.upstream_burst", raw.upstream_burst, problems);
    let playground_per_minute = small_u32(
        "rate_limit.playground_per_minute",
        raw.playground_per_minute,
        problems,
    );
    let playground_per_day = small_u32(
        "rate_limit.playground_per_day",
        raw.playground_per_day,
        problems,
    );
    Some(RateLimitConfig {
        upstream_per_second: upstream_per_second?,
        upstream_burst: upstream_burst?,
        playground_per_minute: playground_per_minute?,
        playground_per_day: playground_per_day?,
    })
}

fn telemetry(raw: &RawTelemetry, problems: &mut Problems) -> Option<TelemetryConfig> {
    let format = match raw.format.as_str() {
        "json" => Some(LogFormat::Json),
        "pretty" => Some(LogFormat::Pretty),
        other => {
            problems.push(
                "telemetry.format",
                format!("{other:?} is not \"json\" or \"pretty\""),
            );
            None
        }
    };
    if let Err(error) = tracing_subscriber::EnvFilter::try_new(&raw.filter) {
        problems.push("telemetry.filter", error);
    }
    Some(TelemetryConfig {
        format: format?,
        filter: raw.filter.clone(),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use figment::providers::{Format, Toml};

    use super::*;
    use crate::config::{AuthMode, DEFAULTS};

    struct FakeEnv(HashMap<&'static str, &'static str>);
    impl EnvLookup for FakeEnv {
        fn get(&self, name: &str) -> Option<String> {
            self.0.get(name).map(|v| (*v).to_owned())
        }
    }

    fn load(extra: &str, env: &[(&'static str, &'static str)]) -> Result<Config, ConfigError> {
        let figment = Figment::from(Toml::string(DEFAULTS)).merge(Toml::string(extra));
        from_figment(
            &figment,
            &(Arc::new(FakeEnv(env.iter().copied().collect())) as Arc<_>),
        )
    }

    #[test]
    fn arize_is_off_by_default_and_its_key_is_needed_only_when_on() {
        let env = [("VALIQOR_API_KEY", "vq_live")];
        let off = load("", &env).unwrap();
        assert!(!off.arize.is_enabled());
        assert!(off.arize.api_key.is_none(), "not resolved while off");
        let on = "[arize]\nlisten = \"127.0.0.1:8081\"\n";
        let missing = load(on, &env).unwrap_err();
        assert!(
            missing
                .problems
                .iter()
                .any(|p| p.starts_with("arize.api_key")),
            "{missing}"
        );
        let env = [("VALIQOR_API_KEY", "vq_live"), ("ARIZE_API_KEY", "ak_live")];
        let config = load(on, &env).unwrap();
        assert_eq!(config.arize.listen.unwrap().port(), 8081);
        assert_eq!(config.arize.api_key.unwrap().expose(), "ak_live");
        assert_eq!(
            config.arize.run_status_max_age,
            std::time::Duration::from_secs(1)
        );
        // A tenant's own Arize key wins over the default; without one, the default applies.
        let tenants = "[arize]\nlisten = \"127.0.0.1:8081\"\n[auth]\nmode = \"tokens\"\n\
            [[tenants]]\nname = \"a\"\ntokens = [\"token-of-tenant-a-0001\"]\narize_api_key = \"ak_team_a\"\n\
            [[tenants]]\nname = \"b\"\ntokens = [\"token-of-tenant-b-0001\"]\n";
        let config = load(tenants, &env).unwrap();
        let defaults = config.auth.source.load().unwrap().defaults;
        let keys: Vec<String> = config
            .auth
            .tenants
            .iter()
            .map(|t| t.keys(&defaults).arize_api_key.unwrap().expose().clone())
            .collect();
        assert_eq!(keys, ["ak_team_a", "ak_live"]);
    }

    #[test]
    fn the_arize_listener_is_checked_like_the_api_listener() {
        let env = [("VALIQOR_API_KEY", "vq_live"), ("ARIZE_API_KEY", "ak_live")];
        for (extra, key) in [
            ("[arize]\nlisten = \"0.0.0.0:8081\"\n", "auth.mode"),
            ("[arize]\nlisten = \"127.0.0.1:8080\"\n", "arize.listen"),
            ("[arize]\nlisten = \"nope\"\n", "arize.listen"),
            (
                "[arize]\nbase_url = \"http://arize.example\"\n",
                "arize.base_url",
            ),
            (
                "[arize]\nrun_status_max_age = \"0s\"\n",
                "arize.run_status_max_age",
            ),
        ] {
            let error = load(extra, &env).unwrap_err();
            assert!(
                error.problems.iter().any(|p| p.starts_with(key)),
                "{extra}: {error}"
            );
        }
        // Non-loopback with an explicit opt-in is fine.
        let trusted = "[arize]\nlisten = \"0.0.0.0:8081\"\n[auth]\nallow_unauthenticated = true\n";
        assert!(load(trusted, &env).is_ok());
    }

    #[test]
    fn defaults_are_valid_once_the_api_key_env_is_set() {
        let config = load("", &[("VALIQOR_API_KEY", "vq_live")]).unwrap();
        assert_eq!(config.valiqor.api_key.expose(), "vq_live");
        assert_eq!(config.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.server.admin_listen.to_string(), "127.0.0.1:9090");
        assert_eq!(config.valiqor.byok, ByokMode::CallerFirst);
        assert!(config.valiqor.openai_api_key.is_none());
        assert_eq!(
            config.store.path,
            StorePath::File("./data/evalgate.db".into())
        );
        assert_eq!(config.store.read_connections, 4);
    }

    #[test]
    fn allowed_hosts_are_bare_names_normalised_to_lower_case() {
        let key = [("VALIQOR_API_KEY", "vq_live")];
        let config = load(
            "[server]\nallowed_hosts = [\"EvalGate.Internal\", \"[::1]\"]\n",
            &key,
        )
        .unwrap();
        assert_eq!(config.server.allowed_hosts, ["evalgate.internal", "[::1]"]);
        for bad in ["https://x", "x:8080", "", "a/b"] {
            let err = load(&format!("[server]\nallowed_hosts = [\"{bad}\"]\n"), &key).unwrap_err();
            assert!(
                err.to_string().contains("server.allowed_hosts[0]"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn unauthenticated_on_a_non_loopback_address_needs_an_explicit_opt_in() {
        let env = [
            ("VALIQOR_API_KEY", "vq_live"),
            ("TEAM_A_TOKEN", "vq_team_a_0123456789"),
        ];
        let error = load("[server]\nlisten = \"0.0.0.0:8080\"\n", &env).unwrap_err();
        assert!(
            error
                .problems
                .iter()
                .any(|p| p.starts_with("auth.mode:") && p.contains("auth.allow_unauthenticated")),
            "{:?}",
            error.problems
        );
        let opted_in = load(
            "[server]\nlisten = \"0.0.0.0:8080\"\n[auth]\nallow_unauthenticated = true\n",
            &env,
        )
        .unwrap();
        assert_eq!(opted_in.auth.mode, AuthMode::None);
        let tokens = load(
            "[server]\nlisten = \"0.0.0.0:8080\"\n[auth]\nmode = \"tokens\"\n[[tenants]]\nname = \"team-a\"\ntokens = [\"env:TEAM_A_TOKEN\"]\nmax_active_jobs = 5\n",
            &env,
        )
        .unwrap();
        assert_eq!(tokens.auth.mode, AuthMode::Tokens);
        let team_a = &tokens.auth.tenants[0];
        assert_eq!(team_a.name.as_str(), "team-a");
        assert_eq!(
            team_a.tokens,
            vec![crate::types::TokenDigest::of("vq_team_a_0123456789")]
        );
        assert_eq!(team_a.max_active_jobs, Some(5));
        // check-config never prints a token.
        assert!(!tokens.to_toml().contains("vq_team_a_0123456789"));
        // Tenants without tokens mode would be silently unused: refused.
        let unused = load(
            "[[tenants]]\nname = \"team-a\"\ntokens = [\"env:TEAM_A_TOKEN\"]\n",
            &env,
        )
        .unwrap_err();
        assert!(
            unused.problems.iter().any(|p| p.contains("never be used")),
            "{:?}",
            unused.problems
        );
        let bad = load(
            "[auth]\nmode = \"open\"\n[[tenants]]\nname = \"x\"\ntokens = []\nburst = 3\n",
            &env,
        )
        .unwrap_err();
        for expected in [
            "auth.mode: \"open\"",
            "tenants[0].tokens: list at least one",
            "tenants[0].burst: needs requests_per_second",
        ] {
            assert!(
                bad.problems.iter().any(|p| p.contains(expected)),
                "{expected}: {:?}",
                bad.problems
            );
        }
    }

    #[test]
    fn a_store_url_puts_postgres_in_force_and_its_password_is_never_shown() {
        let env = [
            ("VALIQOR_API_KEY", "vq_live"),
            (
                "STORE_URL",
                "postgres://evalgate:s3cr3t-pw@db.internal:5432/evalgate",
            ),
        ];
        let sqlite = load("", &env).unwrap();
        assert_eq!(sqlite.store.in_force, "sqlite");
        let config = load("[store]\nurl = \"env:STORE_URL\"\npool_size = 8\n", &env).unwrap();
        assert_eq!(config.store.in_force, "postgres");
        let postgres = config.store.postgres.as_ref().unwrap();
        assert_eq!(postgres.pool_size, 8);
        assert_eq!(
            postgres.url,
            "postgres://evalgate:*****@db.internal:5432/evalgate"
        );
        assert!(postgres.url_secret.expose().contains("s3cr3t-pw"));
        let shown = config.to_toml();
        assert!(shown.contains("in_force = \"postgres\""), "{shown}");
        assert!(!shown.contains("s3cr3t-pw"), "{shown}");
        // Not a PostgreSQL URL: refused without echoing the value.
        let env = [
            ("VALIQOR_API_KEY", "vq_live"),
            ("STORE_URL", "mysql://u:hunter2@h/db"),
        ];
        let error = load("[store]\nurl = \"env:STORE_URL\"\n", &env).unwrap_err();
        assert!(
            error.problems.iter().any(|p| p.starts_with("store.url")),
            "{error}"
        );
        assert!(!error.to_string().contains("hunter2"), "{error}");
        for bad in [
            "pool_size = 0",
            "pool_size = 257",
            "statement_timeout = \"0s\"",
        ] {
            let extra = format!("[store]\nurl = \"postgres://h/db\"\n{bad}\n");
            assert!(
                load(&extra, &[("VALIQOR_API_KEY", "vq_live")]).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn store_read_connections_are_bounded() {
        let key = [("VALIQOR_API_KEY", "vq_live")];
        for bad in [0, 65] {
            let err = load(&format!("[store]\nread_connections = {bad}\n"), &key).unwrap_err();
            assert!(
                err.to_string().contains("store.read_connections"),
                "{bad}: {err}"
            );
        }
        for good in [1, 64] {
            let config = load(&format!("[store]\nread_connections = {good}\n"), &key).unwrap();
            assert_eq!(config.store.read_connections, good);
        }
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let err = load(
            r#"
            [server]
            listen = "nope"
            typo_key = 1
            [valiqor]
            byok = "sometimes"
            [rate_limit]
            upstream_per_second = "fast"
            [bogus]
            x = 1
            "#,
            &[],
        )
        .unwrap_err();
        let text = err.to_string();
        for needle in [
            "server",
            "typo_key",
            "valiqor.byok",
            "VALIQOR_API_KEY",
            "rate_limit.upstream_per_second",
            "bogus: unknown section",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
        }
    }

    #[test]
    fn secrets_resolve_from_env_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("byok");
        std::fs::write(&path, "sk-from-file\n").unwrap();
        let config = load(
            &format!(
                "[valiqor]\napi_key = \"env:K\"\nopenai_api_key = \"file:{}\"\n",
                path.display()
            ),
            &[("K", "vq_env")],
        )
        .unwrap();
        assert_eq!(config.valiqor.api_key.expose(), "vq_env");
        assert_eq!(
            config.valiqor.openai_api_key.unwrap().expose(),
            "sk-from-file"
        );
        let printed = load("[valiqor]\napi_key = \"vq_literal_canary\"\n", &[])
            .unwrap()
            .to_toml();
        assert!(!printed.contains("vq_literal_canary"));
        assert!(printed.contains("*****"));
    }

    #[test]
    fn plain_http_upstream_needs_loopback_or_opt_in() {
        let remote = "[valiqor]\napi_key = \"vq_x\"\nbase_url = \"http://example.com\"\n";
        assert!(
            load(remote, &[])
                .unwrap_err()
                .to_string()
                .contains("valiqor.base_url")
        );
        let opted = format!("{remote}allow_insecure_upstream = true\n");
        assert!(load(&opted, &[]).is_ok());
        assert!(
            load(
                "[valiqor]\napi_key = \"vq_x\"\nbase_url = \"http://127.0.0.1:9\"\n",
                &[]
            )
            .is_ok()
        );
    }

    #[test]
    fn webhook_allowlists_are_parsed_and_every_bad_entry_is_named() {
        let key = [("VALIQOR_API_KEY", "vq_live")];
        let config = load(
            "[webhooks]\nallowed_cidrs = [\"10.0.0.0/8\", \"192.168.1.5\", \"fd00::/8\"]\n\
             allowed_hosts = [\"Hooks.Internal.\", \"*.svc.cluster.local\"]\n",
            &key,
        )
        .unwrap();
        let cidrs: Vec<String> = config
            .webhooks
            .allowed_cidrs
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(cidrs, ["10.0.0.0/8", "192.168.1.5/32", "fd00::/8"]);
        let hosts: Vec<String> = config
            .webhooks
            .allowed_hosts
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(hosts, ["hooks.internal", "*.svc.cluster.local"]);
        let printed = config.to_toml();
        assert!(printed.contains("\"192.168.1.5/32\""), "{printed}");
        assert!(printed.contains("\"*.svc.cluster.local\""), "{printed}");

        let text = load(
            "[webhooks]\nallowed_cidrs = [\"10.0.0.0/8\", \"10.0.0.1/8\", \"nonsense\"]\n\
             allowed_hosts = [\"ok.internal\", \"10.0.0.1\"]\n",
            &key,
        )
        .unwrap_err()
        .to_string();
        for needle in [
            "webhooks.allowed_cidrs[1]: \"10.0.0.1/8\" is not a CIDR: host bits are set",
            "webhooks.allowed_cidrs[2]: \"nonsense\" is not a CIDR: not an IP address",
            "webhooks.allowed_hosts[1]: \"10.0.0.1\" is not a host name: an IP address",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
        }
        assert!(!text.contains("allowed_cidrs[0]"), "{text}");
        assert!(!text.contains("allowed_hosts[0]"), "{text}");
    }

    #[test]
    fn endpoint_secrets_must_be_whsec_keys_of_valid_length() {
        let key = [("VALIQOR_API_KEY", "vq_live")];
        let endpoint = |secret: &str| {
            format!(
                "[[webhooks.endpoints]]\nurl = \"https://hooks.example.com/x\"\nsecrets = [\"{secret}\"]\n"
            )
        };
        let good = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let config = load(&endpoint(good), &key).unwrap();
        assert_eq!(config.webhooks.endpoints[0].secrets[0].expose(), good);
        for (secret, reason) in [
            ("whsec_@@@@canary", "not valid base64"),
            ("whsec_c2hvcnQ=", "key is 5 bytes"),
            ("whsec_", "empty"),
        ] {
            let text = load(&endpoint(secret), &key).unwrap_err().to_string();
            assert!(
                text.contains("webhooks.endpoints[0].secrets[0]: is not a whsec_ base64 secret")
                    && text.contains(reason),
                "{secret}: {text}"
            );
            assert!(!text.contains("canary"), "{text}");
        }
    }
}
