//! `[auth]` and the tenants (`[[tenants]]` inline and in `auth.tenants_file`).
//!
//! The tenants and every secret they (and the default keys) refer to are loaded at startup and
//! again on each reload: `TenantSource` keeps the references, not the values, so a reload re-reads
//! the tenants file and every `file:` secret and validates the whole set before it is used.
use std::{
    collections::{HashMap, HashSet},
    num::NonZeroU32,
    path::PathBuf,
    sync::Arc,
};

use serde::{Serialize, Serializer};

use super::{
    ConfigError, EnvLookup,
    raw::{RawAuth, RawTenant, RawTenantsFile},
    validate::{Problems, optional_secret, secret, upstream_key},
};
use crate::types::{REDACTED, Secret, TenantName, TokenDigest};

/// Shortest caller token accepted (a token is a password: guessable ones are refused).
pub const MIN_TOKEN_LEN: usize = 16;

/// `[auth]`, validated, with the tenants as loaded at startup.
#[derive(Debug, Clone, Serialize)]
pub struct AuthConfig {
    pub mode: AuthMode,
    pub tenants_file: Option<PathBuf>,
    pub allow_unauthenticated: bool,
    /// The tenants as of startup (inline and from the tenants file); reloads go through `source`.
    pub tenants: Vec<TenantConfig>,
    /// Every file the startup load read (the tenants file and each `file:` secret).
    #[serde(skip)]
    pub files: Vec<PathBuf>,
    #[serde(skip)]
    pub source: TenantSource,
}

/// Who may call the API port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Every caller is the tenant `default`, with the `[valiqor]` keys.
    None,
    /// Every API request needs `Authorization: Bearer <token>` of a configured tenant.
    Tokens,
}

/// The platform key and the BYOK judge key one caller's requests use upstream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UpstreamKeys {
    pub api_key: Secret<String>,
    pub openai_api_key: Option<Secret<String>>,
    /// The Arize platform key; `None` while Arize is off.
    pub arize_api_key: Option<Secret<String>>,
}

/// One load of the tenants and of the default keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TenantsConfig {
    /// `[valiqor].api_key` and `openai_api_key`, re-read on each load (they may be `file:` refs).
    pub defaults: UpstreamKeys,
    pub tenants: Vec<TenantConfig>,
    /// Every file this load read (the tenants file and each `file:` secret): what is watched.
    #[serde(skip)]
    pub files: Vec<PathBuf>,
}

/// A request rate: a governor quota of `per_second` with bursts of `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TenantRate {
    pub per_second: NonZeroU32,
    pub burst: NonZeroU32,
}

/// One tenant, validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TenantConfig {
    pub name: TenantName,
    #[serde(serialize_with = "redacted_tokens")]
    pub tokens: Vec<TokenDigest>,
    /// `None`: the default key.
    pub valiqor_api_key: Option<Secret<String>>,
    /// `None`: the default BYOK key (if any).
    pub openai_api_key: Option<Secret<String>>,
    /// `None`: the default `[arize].api_key`.
    pub arize_api_key: Option<Secret<String>>,
    pub rate: Option<TenantRate>,
    pub max_active_jobs: Option<usize>,
}

fn redacted_tokens<S: Serializer>(tokens: &[TokenDigest], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(tokens.iter().map(|_| REDACTED))
}

impl TenantConfig {
    /// The keys this tenant's requests use upstream: its own, else the defaults.
    pub fn keys(&self, defaults: &UpstreamKeys) -> UpstreamKeys {
        UpstreamKeys {
            api_key: self
                .valiqor_api_key
                .clone()
                .unwrap_or_else(|| defaults.api_key.clone()),
            openai_api_key: self
                .openai_api_key
                .clone()
                .or_else(|| defaults.openai_api_key.clone()),
            // A tenant's own Arize key applies only while Arize is on.
            arize_api_key: defaults.arize_api_key.as_ref().map(|default| {
                self.arize_api_key
                    .clone()
                    .unwrap_or_else(|| default.clone())
            }),
        }
    }
}

/// The default keys as written (secret references), re-resolved on every load.
#[derive(Debug, Clone)]
pub(super) struct DefaultKeyRefs {
    pub valiqor: String,
    pub openai: String,
    /// `[arize].api_key`; `None` while Arize is off.
    pub arize: Option<String>,
}

/// Where the tenants come from: references only, so that every load reads them afresh.
#[derive(Clone)]
pub struct TenantSource {
    inline: Vec<RawTenant>,
    file: Option<PathBuf>,
    defaults: DefaultKeyRefs,
    env: Arc<dyn EnvLookup + Send + Sync>,
}

impl std::fmt::Debug for TenantSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantSource")
            .field("inline", &self.inline.len())
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

// === impl TenantSource ===

impl TenantSource {
    /// Loads and validates the default keys and the tenants afresh (a reload), reporting every
    /// problem at once.
    pub fn load(&self) -> Result<TenantsConfig, ConfigError> {
        let env = self.env.as_ref();
        let mut problems = Problems::default();
        let refs = &self.defaults;
        let api_key = upstream_key("valiqor.api_key", &refs.valiqor, env, &mut problems);
        let openai_api_key =
            optional_secret("valiqor.openai_api_key", &refs.openai, env, &mut problems);
        let arize_api_key = match &refs.arize {
            Some(value) => upstream_key("arize.api_key", value, env, &mut problems).map(Some),
            None => Some(None),
        };
        let defaults = match (api_key, openai_api_key, arize_api_key) {
            (Some(api_key), Some(openai_api_key), Some(arize_api_key)) => Some(UpstreamKeys {
                api_key,
                openai_api_key,
                arize_api_key,
            }),
            _ => None,
        };
        let (tenants, files) = self.load_tenants(env, &mut problems);
        match defaults {
            Some(defaults) if problems.0.is_empty() => Ok(TenantsConfig {
                defaults,
                tenants,
                files,
            }),
            _ => Err(ConfigError {
                problems: problems.0,
            }),
        }
    }

    /// The tenants, validated, and every file they and the default keys are read from.
    fn load_tenants(
        &self,
        env: &dyn EnvLookup,
        problems: &mut Problems,
    ) -> (Vec<TenantConfig>, Vec<PathBuf>) {
        let mut files = Vec::new();
        let watch = |files: &mut Vec<PathBuf>, value: &str| {
            if let Some(path) = value.strip_prefix("file:") {
                files.push(PathBuf::from(path));
            }
        };
        watch(&mut files, &self.defaults.valiqor);
        watch(&mut files, &self.defaults.openai);
        if let Some(arize) = &self.defaults.arize {
            watch(&mut files, arize);
        }
        let mut raw: Vec<(String, &RawTenant)> = self
            .inline
            .iter()
            .enumerate()
            .map(|(i, t)| (format!("tenants[{i}]"), t))
            .collect();
        let from_file;
        if let Some(path) = &self.file {
            files.push(path.clone());
            from_file = read_tenants_file(path, problems);
            raw.extend(
                from_file
                    .iter()
                    .enumerate()
                    .map(|(i, t)| (format!("{}: tenants[{i}]", path.display()), t)),
            );
        }
        for (_, tenant) in &raw {
            for value in tenant
                .tokens
                .iter()
                .chain(&tenant.valiqor_api_key)
                .chain(&tenant.openai_api_key)
                .chain(&tenant.arize_api_key)
            {
                watch(&mut files, value);
            }
        }
        let mut names = HashSet::new();
        let mut owners: HashMap<TokenDigest, TenantName> = HashMap::new();
        let mut tenants = Vec::with_capacity(raw.len());
        for (key, tenant) in raw {
            let Some(tenant) = one_tenant(&key, tenant, env, problems) else {
                continue;
            };
            if !names.insert(tenant.name.clone()) {
                problems.push(&key, format!("tenant {:?} is defined twice", tenant.name));
                continue;
            }
            for digest in &tenant.tokens {
                if let Some(owner) = owners.insert(*digest, tenant.name.clone())
                    && owner != tenant.name
                {
                    problems.push(
                        &key,
                        format!(
                            "a token of tenant {:?} is also a token of tenant {owner:?}",
                            tenant.name
                        ),
                    );
                }
            }
            tenants.push(tenant);
        }
        files.sort();
        files.dedup();
        (tenants, files)
    }
}

fn read_tenants_file(path: &std::path::Path, problems: &mut Problems) -> Vec<RawTenant> {
    let key = format!("auth.tenants_file ({})", path.display());
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) => {
            problems.push(&key, format!("cannot read: {error}"));
            return Vec::new();
        }
    };
    match toml::from_str::<RawTenantsFile>(&text) {
        Ok(file) => file.tenants,
        Err(error) => {
            problems.push(&key, error.message());
            Vec::new()
        }
    }
}

fn one_tenant(
    key: &str,
    raw: &RawTenant,
    env: &dyn EnvLookup,
    problems: &mut Problems,
) -> Option<TenantConfig> {
    let name = TenantName::parse(&raw.name);
    if name.is_none() {
        problems.push(
            &format!("{key}.name"),
            format!("{:?} is not [a-z0-9-]{{1,63}}", raw.name),
        );
    }
    let mut tokens = Vec::with_capacity(raw.tokens.len());
    if raw.tokens.is_empty() {
        problems.push(&format!("{key}.tokens"), "list at least one token");
    }
    for (i, value) in raw.tokens.iter().enumerate() {
        let key = format!("{key}.tokens[{i}]");
        if let Some(hex) = value.strip_prefix("sha256:") {
            match TokenDigest::from_hex(hex) {
                Some(digest) => tokens.push(digest),
                None => problems.push(&key, "sha256: must be followed by 64 hex digits"),
            }
            continue;
        }
        let Some(token) = secret(&key, value, env, problems) else {
            continue;
        };
        let token = token.expose();
        if token.len() < MIN_TOKEN_LEN {
            problems.push(
                &key,
                format!("a token must be at least {MIN_TOKEN_LEN} characters"),
            );
        } else if !token.bytes().all(|b| b.is_ascii_graphic()) {
            problems.push(&key, "a token must be printable ASCII without spaces");
        } else {
            tokens.push(TokenDigest::of(token));
        }
    }
    let own_key = |field: &str, value: &Option<String>, problems: &mut Problems| match value {
        None => Some(None),
        Some(value) => upstream_key(&format!("{key}.{field}"), value, env, problems).map(Some),
    };
    let valiqor_api_key = own_key("valiqor_api_key", &raw.valiqor_api_key, problems);
    let openai_api_key = own_key("openai_api_key", &raw.openai_api_key, problems);
    let arize_api_key = own_key("arize_api_key", &raw.arize_api_key, problems);
    let rate = match (raw.requests_per_second, raw.burst) {
        (None, None) => Some(None),
        (None, Some(_)) => {
            problems.push(&format!("{key}.burst"), "needs requests_per_second");
            None
        }
        (Some(rate), burst) => {
            let per_second = nonzero(&format!("{key}.requests_per_second"), rate, problems);
            let burst = match burst {
                Some(b) => nonzero(&format!("{key}.burst"), b, problems),
                None => per_second,
            };
            per_second
                .zip(burst)
                .map(|(per_second, burst)| Some(TenantRate { per_second, burst }))
        }
    };
    let max_active_jobs = match raw.max_active_jobs {
        None => Some(None),
        Some(0) => {
            problems.push(&format!("{key}.max_active_jobs"), "must be at least 1");
            None
        }
        Some(n) => usize::try_from(n).ok().map(Some),
    };
    Some(TenantConfig {
        name: name?,
        tokens,
        valiqor_api_key: valiqor_api_key?,
        openai_api_key: openai_api_key?,
        arize_api_key: arize_api_key?,
        rate: rate?,
        max_active_jobs: max_active_jobs?,
    })
}

fn nonzero(key: &str, value: u64, problems: &mut Problems) -> Option<NonZeroU32> {
    let n = u32::try_from(value).ok().and_then(NonZeroU32::new);
    if n.is_none() {
        problems.push(key, "must be between 1 and 4294967295");
    }
    n
}

/// Validates `[auth]` and loads the tenants. `listen_is_loopback`: whether `server.listen` is.
pub(super) fn auth(
    raw: &RawAuth,
    inline: Vec<RawTenant>,
    defaults: DefaultKeyRefs,
    listen_is_loopback: Option<bool>,
    env: &Arc<dyn EnvLookup + Send + Sync>,
    problems: &mut Problems,
) -> Option<AuthConfig> {
    let mode = match raw.mode.as_str() {
        "none" => Some(AuthMode::None),
        "tokens" => Some(AuthMode::Tokens),
        other => {
            problems.push(
                "auth.mode",
                format!("{other:?} is not one of \"none\", \"tokens\""),
            );
            None
        }
    };
    let tenants_file = (!raw.tenants_file.is_empty()).then(|| PathBuf::from(&raw.tenants_file));
    let source = TenantSource {
        inline,
        file: tenants_file.clone(),
        defaults,
        env: Arc::clone(env),
    };
    // The default keys were resolved and checked with `[valiqor]`; here only the tenants.
    let (tenants, files) = source.load_tenants(env.as_ref(), problems);
    if mode == Some(AuthMode::None) {
        if tenants_file.is_some() || !source.inline.is_empty() {
            problems.push(
                "auth.mode",
                "is \"none\", so the configured tenants would never be used; set auth.mode = \"tokens\"",
            );
        }
        if listen_is_loopback == Some(false) && !raw.allow_unauthenticated {
            problems.push(
                "auth.mode",
                "is \"none\" while server.listen (or arize.listen) is not a loopback address: anyone who reaches the port could spend the platform and judge keys; set auth.mode = \"tokens\" with [[tenants]], or auth.allow_unauthenticated = true if the network in front is trusted",
            );
        }
    }
    Some(AuthConfig {
        mode: mode?,
        tenants_file,
        allow_unauthenticated: raw.allow_unauthenticated,
        tenants,
        files,
        source,
    })
}
