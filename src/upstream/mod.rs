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
    types::Secret,
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
            credential: CredentialId(hasher.finish()),
        })
    }

    /// Applies the BYOK judge key to a submit body (validating it as a JSON object).
    fn with_judge_key(&self, body: Bytes) -> Result<Bytes, byok::ByokError> {
        let key = self.judge.key.as_ref().map(|k| k.expose().as_str());
        byok::apply(body, self.judge.mode, key)
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
