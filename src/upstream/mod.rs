//! `UpstreamClient`: the one HTTP client toward the evaluation platform, with the platform key injected.
//!
//! It knows the base URL, timeouts and pooling; each clone carries one caller's credentials
//! (`with_credentials`), and all of them share the redactor that keeps keys out of error answers.
pub(crate) mod arize;
pub(crate) mod byok;
pub(crate) mod error;
pub(crate) mod jobs;

use std::{
    hash::{DefaultHasher, Hash, Hasher},
    sync::Arc,
    time::Duration,
};

use aho_corasick::AhoCorasick;
use arc_swap::ArcSwapOption;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, header::AUTHORIZATION};
use url::Url;

pub(crate) use self::error::UpstreamError;
use crate::{
    config::{ByokMode, UpstreamKeys, ValiqorConfig},
    types::{REDACTED, Secret},
};

/// Which platform a client talks to (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Platform {
    Valiqor,
    Arize,
}

impl Platform {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Valiqor => "valiqor",
            Self::Arize => "arize",
        }
    }
}

/// Where and how a client connects: one per platform.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Endpoint<'a> {
    pub platform: Platform,
    pub base_url: &'a Url,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    pub pool_max_idle_per_host: usize,
    pub pool_idle_timeout: Duration,
}

/// Opaque identity of the credential evalgate uses upstream (a hash, never the key), so that
/// caches keep answers of different credentials apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct CredentialId(u64);

/// A request to send upstream: everything but the credential, which the client adds.
#[derive(Debug)]
pub(crate) struct UpstreamRequest {
    pub method: Method,
    /// Path as the caller sent it, starting with `/`.
    pub path: String,
    /// Raw query string, forwarded byte for byte.
    pub query: Option<String>,
    /// Headers already cleaned of hop-by-hop and credential headers.
    pub headers: HeaderMap,
    pub body: RequestBody,
    /// The limit the body is held to, to classify a body-limit failure.
    pub body_limit: usize,
}

/// What a request carries.
#[derive(Debug)]
pub(crate) enum RequestBody {
    /// No body at all (GETs, body-less POSTs).
    Empty,
    /// Streamed as it arrives, byte for byte.
    Stream(reqwest::Body),
    /// A submit body (a JSON object): the client applies the BYOK judge key before sending, so
    /// no submit path can forget it. A body that is not a JSON object is refused unsent.
    Submit(Bytes),
}

/// The BYOK judge key and how it applies (`Off` when no key is configured).
#[derive(Debug, Clone)]
struct Judge {
    mode: ByokMode,
    key: Option<Secret<String>>,
}

/// One caller's upstream credentials: the platform key (as the `Authorization` header) and the
/// BYOK judge key.
#[derive(Debug)]
pub(crate) struct Credentials {
    authorization: HeaderValue,
    judge: Judge,
    id: CredentialId,
}

/// Replaces every configured key (the defaults and every tenant's) in upstream error answers.
/// Shared by every client; the tenant registry sets the keys on each (re)load.
#[derive(Debug, Clone, Default)]
pub(crate) struct Redactor(Arc<ArcSwapOption<AhoCorasick>>);

/// The one HTTP client toward the upstream, with one caller's credentials. Clones share the
/// connection pool and the redactor; `with_credentials` makes the client of another caller.
#[derive(Debug, Clone)]
pub(crate) struct UpstreamClient {
    platform: Platform,
    http: reqwest::Client,
    /// Base URL as a string without a trailing slash; paths are appended as-is.
    base: Arc<str>,
    credentials: Arc<Credentials>,
    redactor: Redactor,
}

/// The upstream client could not be built at startup.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("an upstream API key is not a valid header value")]
    InvalidKey,
    #[error("could not build the HTTP client")]
    Client(#[source] reqwest::Error),
}

// === impl Credentials ===

impl Credentials {
    /// The Valiqor credentials of `keys`: the platform key and the BYOK judge key.
    pub(crate) fn new(keys: &UpstreamKeys, byok: ByokMode) -> Result<Self, BuildError> {
        let key = keys.openai_api_key.clone();
        Self::build(
            &keys.api_key,
            Judge {
                mode: if key.is_some() { byok } else { ByokMode::Off },
                key,
            },
        )
    }

    /// A platform key alone: bodies are never touched.
    pub(crate) fn platform_key(api_key: &Secret<String>) -> Result<Self, BuildError> {
        Self::build(
            api_key,
            Judge {
                mode: ByokMode::Off,
                key: None,
            },
        )
    }

    fn build(api_key: &Secret<String>, judge: Judge) -> Result<Self, BuildError> {
        let mut authorization = HeaderValue::try_from(format!("Bearer {}", api_key.expose()))
            .map_err(|_| BuildError::InvalidKey)?;
        authorization.set_sensitive(true);
        let mut hasher = DefaultHasher::new();
        api_key.expose().hash(&mut hasher);
        Ok(Self {
            authorization,
            judge,
            id: CredentialId(hasher.finish()),
        })
    }
}

// === impl Redactor ===

impl Redactor {
    /// Sets the secrets to look for (values shorter than 4 bytes are not looked for).
    pub(crate) fn set<'a>(&self, secrets: impl IntoIterator<Item = &'a Secret<String>>) {
        let patterns: Vec<&str> = secrets
            .into_iter()
            .map(|s| s.expose().as_str())
            .filter(|s| s.len() >= 4)
            .collect();
        let automaton = if patterns.is_empty() {
            None
        } else {
            // Leftmost-longest: a key that contains another is replaced whole.
            AhoCorasick::builder()
                .match_kind(aho_corasick::MatchKind::LeftmostLongest)
                .build(&patterns)
                .map_err(|error| tracing::error!(%error, "cannot build the key redactor"))
                .ok()
                .map(Arc::new)
        };
        self.0.store(automaton);
    }

    /// `body` with every occurrence of every key replaced by `*****`.
    pub(crate) fn scrub(&self, body: Bytes) -> Bytes {
        let guard = self.0.load();
        let Some(automaton) = guard.as_deref() else {
            return body;
        };
        match redact(&body, automaton) {
            Some(redacted) => Bytes::from(redacted),
            None => body,
        }
    }
}

// === impl UpstreamClient ===

impl UpstreamClient {
    /// The client with the default keys of `[valiqor]`.
    pub(crate) fn new(config: &ValiqorConfig) -> Result<Self, BuildError> {
        let keys = UpstreamKeys {
            api_key: config.api_key.clone(),
            openai_api_key: config.openai_api_key.clone(),
            arize_api_key: None,
        };
        let redactor = Redactor::default();
        redactor.set([&keys.api_key].into_iter().chain(&keys.openai_api_key));
        let endpoint = Endpoint {
            platform: Platform::Valiqor,
            base_url: &config.base_url,
            connect_timeout: config.connect_timeout,
            timeout: config.timeout,
            pool_max_idle_per_host: config.pool_max_idle_per_host,
            pool_idle_timeout: config.pool_idle_timeout,
        };
        Self::build(endpoint, Credentials::new(&keys, config.byok)?, redactor)
    }

    /// A client of `endpoint` with its own connection pool, sharing `redactor`.
    pub(crate) fn build(
        endpoint: Endpoint<'_>,
        credentials: Credentials,
        redactor: Redactor,
    ) -> Result<Self, BuildError> {
        let http = reqwest::Client::builder()
            .connect_timeout(endpoint.connect_timeout)
            .timeout(endpoint.timeout)
            .pool_max_idle_per_host(endpoint.pool_max_idle_per_host)
            .pool_idle_timeout(endpoint.pool_idle_timeout)
            .tcp_keepalive(Duration::from_secs(30))
            .tcp_nodelay(true)
            // Redirects are answered to the caller, not followed with our key attached.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("evalgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(BuildError::Client)?;
        Ok(Self {
            platform: endpoint.platform,
            http,
            base: Arc::from(base_string(endpoint.base_url)),
            credentials: Arc::new(credentials),
            redactor,
        })
    }

    /// The platform this client talks to.
    pub(crate) fn platform(&self) -> Platform {
        self.platform
    }

    /// The same client (pool, base URL, redactor) with other credentials.
    pub(crate) fn with_credentials(&self, credentials: Credentials) -> Self {
        Self {
            credentials: Arc::new(credentials),
            ..self.clone()
        }
    }

    /// The redactor every clone of this client shares.
    pub(crate) fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    /// Applies the BYOK judge key to a submit body (validating it as a JSON object).
    fn with_judge_key(&self, body: Bytes) -> Result<Bytes, byok::ByokError> {
        let judge = &self.credentials.judge;
        let key = judge.key.as_ref().map(|k| k.expose().as_str());
        byok::apply(body, judge.mode, key)
    }

    /// `body` with every configured key (every platform key, every BYOK judge key) replaced by
    /// `*****`: for upstream error answers, which may echo what they were sent (a validation
    /// error quoting the request body), before they are returned or stored.
    pub(crate) fn scrub(&self, body: Bytes) -> Bytes {
        self.redactor.scrub(body)
    }

    /// An answer's body as it may be kept or relayed: an error answer scrubbed, a success as is.
    pub(crate) fn scrub_error(&self, status: http::StatusCode, body: Bytes) -> Bytes {
        if status.is_success() {
            body
        } else {
            self.scrub(body)
        }
    }

    pub(crate) fn credential(&self) -> CredentialId {
        self.credentials.id
    }

    /// The full upstream URL for a caller path and raw query.
    pub(crate) fn url(&self, path: &str, query: Option<&str>) -> String {
        let mut url =
            String::with_capacity(self.base.len() + path.len() + 1 + query.map_or(0, str::len));
        url.push_str(&self.base);
        url.push_str(path);
        if let Some(query) = query {
            url.push('?');
            url.push_str(query);
        }
        url
    }

    /// Sends one request with the platform credential; no retries (callers decide).
    pub(crate) async fn send(
        &self,
        request: UpstreamRequest,
    ) -> Result<reqwest::Response, UpstreamError> {
        let url = self.url(&request.path, request.query.as_deref());
        let mut headers = request.headers;
        headers.insert(AUTHORIZATION, self.credentials.authorization.clone());
        let mut builder = self.http.request(request.method, url).headers(headers);
        match request.body {
            RequestBody::Empty => {}
            RequestBody::Stream(body) => builder = builder.body(body),
            RequestBody::Submit(body) => {
                builder = builder.body(
                    self.with_judge_key(body)
                        .map_err(UpstreamError::NotAJsonObject)?,
                );
            }
        }
        let result = builder
            .send()
            .await
            .map_err(|error| UpstreamError::from_reqwest(error, request.body_limit));
        // Every upstream call, whoever made it (a forward, a cache fill, the job engine).
        let outcome = match &result {
            Ok(_) => "response",
            Err(error) => error.outcome(),
        };
        metrics::counter!(crate::telemetry::UPSTREAM_REQUESTS, "outcome" => outcome, "upstream" => self.platform.as_str()).increment(1);
        result
    }
}

/// `haystack` with every match of `automaton` replaced by the redaction mark; `None` when none
/// occurs (nothing copied).
fn redact(haystack: &[u8], automaton: &AhoCorasick) -> Option<Vec<u8>> {
    let mut matches = automaton.find_iter(haystack).peekable();
    matches.peek()?;
    let mut out = Vec::with_capacity(haystack.len());
    let mut last = 0;
    for found in matches {
        out.extend_from_slice(&haystack[last..found.start()]);
        out.extend_from_slice(REDACTED.as_bytes());
        last = found.end();
    }
    out.extend_from_slice(&haystack[last..]);
    Some(out)
}

/// `https://h/prefix/` → `https://h/prefix`, so that `base + "/v2/..."` keeps the prefix.
fn base_string(url: &Url) -> String {
    url.as_str().trim_end_matches('/').to_owned()
}

#[cfg(test)]
impl CredentialId {
    pub(crate) fn for_tests(n: u64) -> Self {
        Self(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_occurrence_of_every_secret_is_redacted() {
        let body = br#"{"input": {"openai_api_key": "sk-judge-123", "again": "sk-judge-123"}, "auth": "Bearer vq_plat_9"}"#;
        let redactor = Redactor::default();
        let keys = [
            Secret::new("vq_plat_9".to_owned()),
            Secret::new("sk-judge-123".to_owned()),
            Secret::new("ab".to_owned()),
        ];
        redactor.set(&keys);
        let redacted = redactor.scrub(Bytes::from_static(body));
        let text = String::from_utf8(redacted.to_vec()).unwrap();
        assert_eq!(
            text,
            r#"{"input": {"openai_api_key": "*****", "again": "*****"}, "auth": "Bearer *****"}"#
        );
        // Nothing to hide: the same bytes; too-short secrets are not searched for.
        let plain = Bytes::from_static(b"plain answer abc");
        assert_eq!(redactor.scrub(plain.clone()).as_ptr(), plain.as_ptr());
        // Keys set by a later load replace the earlier ones.
        redactor.set(&[Secret::new("sk-other-456".to_owned())]);
        let text = redactor.scrub(Bytes::from_static(b"sk-judge-123 sk-other-456"));
        assert_eq!(&text[..], b"sk-judge-123 *****");
    }

    #[test]
    fn base_url_prefix_is_kept_and_query_is_byte_for_byte() {
        let url = Url::parse("https://api.example.com/prefix/").unwrap();
        let base = base_string(&url);
        assert_eq!(base, "https://api.example.com/prefix");
        let config =
            crate::config::Config::for_tests("https://api.example.com/prefix/", "k", |_| {});
        let client = UpstreamClient::new(&config.valiqor).unwrap();
        assert_eq!(
            client.url("/v2/evaluate/compare", Some("run_ids=a&run_ids=b%2Cc")),
            "https://api.example.com/prefix/v2/evaluate/compare?run_ids=a&run_ids=b%2Cc"
        );
        assert_eq!(
            client.url("/v2/evaluate/", None),
            "https://api.example.com/prefix/v2/evaluate/"
        );
    }
}
