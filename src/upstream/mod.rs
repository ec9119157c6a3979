//! `UpstreamClient`: the one HTTP client toward the evaluation platform, with the platform key injected.
//!
//! It knows the base URL, timeouts, pooling and the credential; it does not know which caller asked.
pub(crate) mod byok;
pub(crate) mod error;
pub(crate) mod jobs;

use std::{
    hash::{DefaultHasher, Hash, Hasher},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, header::AUTHORIZATION};
use url::Url;

pub(crate) use self::error::UpstreamError;
use crate::{
    config::{ByokMode, ValiqorConfig},
    types::{REDACTED, Secret},
};

/// Opaque identity of the credential evalgate uses upstream (a hash, never the key), so that
/// caches keep answers of different credentials apart once several keys exist.
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

#[derive(Debug, Clone)]
pub(crate) struct UpstreamClient {
    http: reqwest::Client,
    judge: Judge,
    /// Base URL as a string without a trailing slash; paths are appended as-is.
    base: String,
    authorization: HeaderValue,
    /// The platform key itself, only to scrub it out of error answers.
    api_key: Secret<String>,
    credential: CredentialId,
}

/// The upstream client could not be built at startup.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("the upstream API key is not a valid header value")]
    InvalidKey,
    #[error("could not build the HTTP client")]
    Client(#[source] reqwest::Error),
}

// === impl UpstreamClient ===

impl UpstreamClient {
    pub(crate) fn new(config: &ValiqorConfig) -> Result<Self, BuildError> {
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.timeout)
            .pool_max_idle_per_host(config.pool_max_idle_per_host)
            .pool_idle_timeout(config.pool_idle_timeout)
            .tcp_keepalive(Duration::from_secs(30))
            .tcp_nodelay(true)
            // Redirects are answered to the caller, not followed with our key attached.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("evalgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(BuildError::Client)?;
        let mut authorization =
            HeaderValue::try_from(format!("Bearer {}", config.api_key.expose()))
                .map_err(|_| BuildError::InvalidKey)?;
        authorization.set_sensitive(true);
        let mut hasher = DefaultHasher::new();
        config.api_key.expose().hash(&mut hasher);
        let key = config.openai_api_key.clone();
        let judge = Judge {
            mode: if key.is_some() {
                config.byok
            } else {
                ByokMode::Off
            },
            key,
        };
        Ok(Self {
            http,
            judge,
            base: base_string(&config.base_url),
            authorization,
            api_key: config.api_key.clone(),
            credential: CredentialId(hasher.finish()),
        })
    }

    /// Applies the BYOK judge key to a submit body (validating it as a JSON object).
    fn with_judge_key(&self, body: Bytes) -> Result<Bytes, byok::ByokError> {
        let key = self.judge.key.as_ref().map(|k| k.expose().as_str());
        byok::apply(body, self.judge.mode, key)
    }

    /// `body` with every configured key (the platform key, the BYOK judge key) replaced by
    /// `*****`: for upstream error answers, which may echo what they were sent (a validation
    /// error quoting the request body), before they are returned or stored.
    pub(crate) fn scrub(&self, body: Bytes) -> Bytes {
        let mut secrets = vec![self.api_key.expose().as_bytes()];
        if let Some(key) = &self.judge.key {
            secrets.push(key.expose().as_bytes());
        }
        match redact(&body, &secrets) {
            Some(redacted) => Bytes::from(redacted),
            None => body,
        }
    }

    pub(crate) fn credential(&self) -> CredentialId {
        self.credential
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
        headers.insert(AUTHORIZATION, self.authorization.clone());
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
        builder
            .send()
            .await
            .map_err(|error| UpstreamError::from_reqwest(error, request.body_limit))
    }
}

/// `haystack` with every occurrence of each secret replaced by the redaction mark; `None` when
/// none occurs (nothing copied). Secrets shorter than 4 bytes are not looked for.
fn redact(haystack: &[u8], secrets: &[&[u8]]) -> Option<Vec<u8>> {
    fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
        haystack.windows(needle.len()).position(|w| w == needle)
    }
    let mut out: Option<Vec<u8>> = None;
    for secret in secrets.iter().filter(|s| s.len() >= 4) {
        let current = out.as_deref().unwrap_or(haystack);
        if find(current, secret).is_none() {
            continue;
        }
        let mut next = Vec::with_capacity(current.len());
        let mut rest = current;
        while let Some(at) = find(rest, secret) {
            next.extend_from_slice(&rest[..at]);
            next.extend_from_slice(REDACTED.as_bytes());
            rest = &rest[at + secret.len()..];
        }
        next.extend_from_slice(rest);
        out = Some(next);
    }
    out
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
        let redacted = redact(body, &[b"vq_plat_9", b"sk-judge-123"]).unwrap();
        let text = String::from_utf8(redacted).unwrap();
        assert_eq!(
            text,
            r#"{"input": {"openai_api_key": "*****", "again": "*****"}, "auth": "Bearer *****"}"#
        );
        // Nothing to hide: no copy; too-short secrets are not searched for.
        assert!(redact(b"plain answer", &[b"vq_plat_9"]).is_none());
        assert!(redact(b"abc", &[b"ab"]).is_none());
    }

    #[test]
    fn base_url_prefix_is_kept_and_query_is_byte_for_byte() {
        let url = Url::parse("https://api.example.com/prefix/").unwrap();
        let base = base_string(&url);
        assert_eq!(base, "https://api.example.com/prefix");
        let client = UpstreamClient {
            http: reqwest::Client::builder().build().unwrap(),
            judge: Judge {
                mode: ByokMode::Off,
                key: None,
            },
            base,
            authorization: HeaderValue::from_static("Bearer x"),
            api_key: Secret::new("x".to_owned()),
            credential: CredentialId(0),
        };
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
