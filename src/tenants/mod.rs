//! Callers at run time: which tenant a request is, with which upstream keys and limits.
//!
//! `Tenants` holds the current set behind an `ArcSwap`: a request looks its token up without a
//! lock, and a reload (the tenants file or a `file:` secret changed, or SIGHUP; see `reload`)
//! swaps in a whole new set only once it validated, so no request ever sees half of one.
//! Tokens are looked up by their SHA-256 digest; the token itself is never kept or logged.
pub(crate) mod watch;

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use arc_swap::ArcSwap;
use governor::{
    DefaultDirectRateLimiter, Quota, RateLimiter,
    clock::{Clock, DefaultClock},
};
use http::{HeaderMap, header::AUTHORIZATION};

use crate::{
    config::{
        AuthMode, ByokMode, Config, ConfigError, TenantRate, TenantSource, TenantsConfig,
        UpstreamKeys,
    },
    telemetry,
    types::{JobKind, TenantName, TokenDigest},
    upstream::{
        BuildError, Credentials, UpstreamClient,
        arize::ArizeClient,
        jobs::{Failure, JobUpstream},
    },
};

/// One caller: its name, its upstream client (its keys) and its limits.
#[derive(Debug)]
pub(crate) struct Tenant {
    pub name: TenantName,
    /// The upstream client with this tenant's platform and judge keys.
    pub upstream: UpstreamClient,
    /// The Arize client with this tenant's Arize key; `None` while Arize is off.
    pub arize: Option<ArizeClient>,
    /// At most this many unfinished managed jobs; `None`: only the global `jobs.max_active_jobs`.
    pub max_active_jobs: Option<usize>,
    limiter: Option<(TenantRate, Arc<DefaultDirectRateLimiter>)>,
}

impl Tenant {
    /// The client a managed job of `kind` calls the upstream with, with this tenant's keys.
    pub(crate) fn job_upstream(&self, kind: JobKind) -> Result<JobUpstream, Failure> {
        match kind {
            JobKind::ArizeTaskRun => self.arize.clone().map(JobUpstream::Arize).ok_or_else(|| {
                Failure::Permanent("Arize is off here (arize.listen is empty)".to_owned())
            }),
            JobKind::FailureAnalysis | JobKind::Evaluation | JobKind::SecurityAudit => {
                Ok(JobUpstream::Valiqor(self.upstream.clone()))
            }
        }
    }

    /// Takes one request from the tenant's rate; `Err(wait)` when it is over its limit.
    pub(crate) fn check_rate(&self) -> Result<(), Duration> {
        let Some((_, limiter)) = &self.limiter else {
            return Ok(());
        };
        limiter
            .check()
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

/// Why a request has no tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AuthError {
    #[error("an API token is required: send Authorization: Bearer <token>")]
    Missing,
    #[error("the API token is not valid")]
    Unknown,
}

/// What a reload did.
#[derive(Debug)]
pub(crate) enum ReloadOutcome {
    /// A new set is in force.
    Applied,
    /// Everything read the same as before.
    Unchanged,
    /// The new set did not validate; the previous one stays in force.
    Rejected(ConfigError),
}

impl ReloadOutcome {
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Unchanged => "unchanged",
            Self::Rejected(_) => "rejected",
        }
    }
}

/// One validated set of tenants.
#[derive(Debug)]
struct TenantSet {
    by_token: HashMap<TokenDigest, Arc<Tenant>>,
    by_name: HashMap<TenantName, Arc<Tenant>>,
    /// Every caller in mode `none`; the owner of jobs made before tenants existed.
    default: Arc<Tenant>,
}

#[derive(Debug)]
struct Inner {
    mode: AuthMode,
    byok: ByokMode,
    /// The clients the tenants' clients are made from (shared pools, cache and redactor).
    base: BaseClients,
    source: TenantSource,
    set: ArcSwap<TenantSet>,
    /// The configuration the current set was built from; reloads compare against it and
    /// are serialised by this lock.
    loaded: Mutex<TenantsConfig>,
}

/// The clients every tenant's clients are made from.
#[derive(Debug, Clone)]
pub(crate) struct BaseClients {
    pub valiqor: UpstreamClient,
    /// `None` while Arize is off.
    pub arize: Option<ArizeClient>,
}

/// The tenant registry; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Tenants(Arc<Inner>);

// === impl Tenants ===

impl Tenants {
    /// The registry with the tenants loaded at startup.
    pub(crate) fn new(config: &Config, base: BaseClients) -> Result<Self, BuildError> {
        // At startup the default keys are `[valiqor]`'s, resolved once; a reload reads them again.
        let loaded = TenantsConfig {
            defaults: UpstreamKeys {
                api_key: config.valiqor.api_key.clone(),
                openai_api_key: config.valiqor.openai_api_key.clone(),
                arize_api_key: config.arize.api_key.clone(),
            },
            tenants: config.auth.tenants.clone(),
            files: config.auth.files.clone(),
        };
        let set = build_set(&loaded, config.valiqor.byok, &base, None)?;
        base.valiqor.redactor().set(every_key(&loaded));
        if config.auth.mode == AuthMode::Tokens && loaded.tenants.is_empty() {
            tracing::warn!(
                "auth.mode is \"tokens\" and no tenant is configured: every API request is refused with 401 until tenants are added"
            );
        }
        metrics::gauge!(telemetry::TENANTS).set(count_f64(loaded.tenants.len()));
        Ok(Self(Arc::new(Inner {
            mode: config.auth.mode,
            byok: config.valiqor.byok,
            base,
            source: config.auth.source.clone(),
            set: ArcSwap::from_pointee(set),
            loaded: Mutex::new(loaded),
        })))
    }

    pub(crate) fn mode(&self) -> AuthMode {
        self.0.mode
    }

    /// The tenant a request's `Authorization: Bearer <token>` names; in mode `none`, `default`.
    pub(crate) fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<Tenant>, AuthError> {
        let set = self.0.set.load();
        if self.0.mode == AuthMode::None {
            return Ok(Arc::clone(&set.default));
        }
        let token = bearer(headers).ok_or(AuthError::Missing)?;
        set.by_token
            .get(&TokenDigest::of(token))
            .cloned()
            .ok_or(AuthError::Unknown)
    }

    /// The tenant of that name, for work that outlives a request (managed jobs). `default`
    /// always resolves (to the default keys) so that jobs made before tenants existed finish.
    pub(crate) fn by_name(&self, name: &TenantName) -> Option<Arc<Tenant>> {
        let set = self.0.set.load();
        match set.by_name.get(name) {
            Some(tenant) => Some(Arc::clone(tenant)),
            None if *name == set.default.name => Some(Arc::clone(&set.default)),
            None => None,
        }
    }

    /// Every file the current set was read from (the tenants file, each `file:` secret).
    pub(crate) fn watched_files(&self) -> Vec<PathBuf> {
        self.0
            .loaded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .files
            .clone()
    }

    /// Reads the tenants and every secret again; swaps the new set in only if it validates.
    /// Tenants whose rate did not change keep their limiter state.
    pub(crate) fn reload(&self) -> ReloadOutcome {
        let mut loaded = self.0.loaded.lock().unwrap_or_else(PoisonError::into_inner);
        let outcome = match self.0.source.load() {
            Ok(next) if next == *loaded => ReloadOutcome::Unchanged,
            Ok(next) => {
                let current = self.0.set.load();
                match build_set(&next, self.0.byok, &self.0.base, Some(&current)) {
                    Ok(set) => {
                        self.0.base.valiqor.redactor().set(every_key(&next));
                        self.0.set.store(Arc::new(set));
                        metrics::gauge!(telemetry::TENANTS).set(count_f64(next.tenants.len()));
                        *loaded = next;
                        ReloadOutcome::Applied
                    }
                    Err(error) => ReloadOutcome::Rejected(ConfigError {
                        problems: vec![error.to_string()],
                    }),
                }
            }
            Err(error) => ReloadOutcome::Rejected(error),
        };
        metrics::counter!(telemetry::TENANT_RELOADS, "outcome" => outcome.label()).increment(1);
        match &outcome {
            ReloadOutcome::Applied => tracing::info!(
                tenants = loaded.tenants.len(),
                "tenants and secrets reloaded"
            ),
            ReloadOutcome::Unchanged => tracing::debug!("tenants and secrets unchanged"),
            ReloadOutcome::Rejected(error) => {
                for problem in &error.problems {
                    tracing::error!(
                        problem,
                        "tenant reload rejected; the previous set stays in force"
                    );
                }
            }
        }
        outcome
    }
}

/// The token of `Authorization: Bearer <token>` (scheme case-insensitive).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Every key of a load: the defaults and every tenant's.
fn every_key(loaded: &TenantsConfig) -> impl Iterator<Item = &crate::types::Secret<String>> {
    let defaults = &loaded.defaults;
    [&defaults.api_key]
        .into_iter()
        .chain(&defaults.openai_api_key)
        .chain(&defaults.arize_api_key)
        .chain(loaded.tenants.iter().flat_map(|t| {
            t.valiqor_api_key
                .iter()
                .chain(&t.openai_api_key)
                .chain(&t.arize_api_key)
        }))
}

/// The clients of one caller's keys.
fn clients(
    base: &BaseClients,
    keys: &UpstreamKeys,
    byok: ByokMode,
) -> Result<(UpstreamClient, Option<ArizeClient>), BuildError> {
    let valiqor = base.valiqor.with_credentials(Credentials::new(keys, byok)?);
    let arize = match (&base.arize, &keys.arize_api_key) {
        (Some(arize), Some(key)) => Some(arize.with_key(key)?),
        _ => None,
    };
    Ok((valiqor, arize))
}

fn build_set(
    loaded: &TenantsConfig,
    byok: ByokMode,
    base: &BaseClients,
    previous: Option<&TenantSet>,
) -> Result<TenantSet, BuildError> {
    let (upstream, arize) = clients(base, &loaded.defaults, byok)?;
    let default = Arc::new(Tenant {
        name: TenantName::default_tenant(),
        upstream,
        arize,
        max_active_jobs: None,
        limiter: None,
    });
    let mut by_token = HashMap::new();
    let mut by_name = HashMap::new();
    for config in &loaded.tenants {
        let limiter = config.rate.map(|rate| {
            // A tenant whose rate did not change keeps its bucket across a reload.
            let kept = previous
                .and_then(|set| set.by_name.get(&config.name))
                .and_then(|t| t.limiter.as_ref())
                .filter(|(old, _)| *old == rate)
                .map(|(_, limiter)| Arc::clone(limiter));
            let limiter = kept.unwrap_or_else(|| Arc::new(rate_limiter(rate)));
            (rate, limiter)
        });
        let (upstream, arize) = clients(base, &config.keys(&loaded.defaults), byok)?;
        let tenant = Arc::new(Tenant {
            name: config.name.clone(),
            upstream,
            arize,
            max_active_jobs: config.max_active_jobs,
            limiter,
        });
        for digest in &config.tokens {
            by_token.insert(*digest, Arc::clone(&tenant));
        }
        by_name.insert(config.name.clone(), tenant);
    }
    Ok(TenantSet {
        by_token,
        by_name,
        default,
    })
}

fn rate_limiter(rate: TenantRate) -> DefaultDirectRateLimiter {
    RateLimiter::direct(Quota::per_second(rate.per_second).allow_burst(rate.burst))
}

#[expect(clippy::cast_precision_loss, reason = "a count of tenants")]
fn count_f64(n: usize) -> f64 {
    n as f64
}

#[cfg(test)]
mod tests;
