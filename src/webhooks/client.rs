//! `WebhookClient`: the one outbound HTTP client of the webhook dispatcher.
//!
//! Its DNS resolver is the SSRF check: every address a target's name resolves to is checked
//! against the target policy, and the connection goes only to the addresses just checked, so a
//! name that changes its answer between the check and the connection (DNS rebinding) cannot reach
//! a refused address. A literal address is never resolved; `TargetPolicy::check_url` checked it.
//! No proxy is used (a proxy would resolve the name again, out of our sight), redirects are not
//! followed, and connections are pooled across attempts.
use std::{error::Error as _, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http::HeaderMap;
use reqwest::dns::{Addrs, Name, Resolve as ReqwestResolve, Resolving};

use super::ssrf::{CheckedUrl, Refusal, Resolve, SystemResolver, TargetPolicy};

#[derive(Debug, Clone)]
pub(crate) struct WebhookClient {
    http: reqwest::Client,
}

/// Why an attempt got no response.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    /// The name resolved to an address the policy refuses (or did not resolve).
    #[error("target refused: {0}")]
    Refused(Refusal),
    #[error("timed out")]
    Timeout,
    #[error("could not connect")]
    Connect,
    /// Described without the URL, which may carry a token in its query.
    #[error("the connection failed")]
    Transport,
}

/// Resolves with `inner`, then lets through only what the policy allows.
struct CheckingResolver {
    policy: Arc<TargetPolicy>,
    inner: Arc<dyn Resolve>,
}

/// A refusal as the resolver's error, found again in the error's source chain by `classify`.
fn refused(refusal: Refusal) -> Box<dyn std::error::Error + Send + Sync> {
    Box::new(refusal)
}

impl ReqwestResolve for CheckingResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = Arc::clone(&self.policy);
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            let host = name.as_str();
            let addrs = inner
                .resolve(host, 0)
                .await
                .map_err(|e| refused(Refusal::Unresolvable(format!("{host}: {e}"))))?;
            let allowed = policy.check_resolved(host, &addrs).map_err(refused)?;
            let addrs: Addrs = Box::new(
                allowed
                    .into_iter()
                    .map(|addr| SocketAddr::new(addr, 0))
                    .collect::<Vec<_>>()
                    .into_iter(),
            );
            Ok(addrs)
        })
    }
}

impl WebhookClient {
    pub(crate) fn new(
        policy: Arc<TargetPolicy>,
        timeout: Duration,
    ) -> Result<Self, reqwest::Error> {
        Self::with_resolver(policy, Arc::new(SystemResolver), timeout)
    }

    /// A client that resolves names with `resolver` (tests script DNS answers with it).
    pub(crate) fn with_resolver(
        policy: Arc<TargetPolicy>,
        resolver: Arc<dyn Resolve>,
        timeout: Duration,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(Arc::new(CheckingResolver {
                policy,
                inner: resolver,
            }))
            .user_agent(concat!("evalgate-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { http })
    }

    /// POSTs `body` to a target that passed `TargetPolicy::check_url`.
    pub(crate) async fn post(
        &self,
        target: &CheckedUrl,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<reqwest::Response, SendError> {
        self.http
            .post(target.url().clone())
            .headers(headers)
            .body(body)
            .send()
            .await
            .map_err(|error| classify(&error))
    }
}

fn classify(error: &reqwest::Error) -> SendError {
    let mut source = error.source();
    while let Some(cause) = source {
        if let Some(refusal) = cause.downcast_ref::<Refusal>() {
            return SendError::Refused(refusal.clone());
        }
        source = cause.source();
    }
    if error.is_timeout() {
        SendError::Timeout
    } else if error.is_connect() {
        SendError::Connect
    } else {
        SendError::Transport
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use axum::{Router, routing::post};
    use tokio::net::TcpListener;

    use super::*;
    use crate::webhooks::ssrf::StaticResolver;

    /// A receiver on loopback that answers 204 to every POST; returns its port.
    async fn receiver() -> (u16, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = Router::new().route("/hook", post(|| async { http::StatusCode::NO_CONTENT }));
        #[expect(
            clippy::disallowed_methods,
            reason = "a test receiver, aborted on drop"
        )]
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        (port, task)
    }

    fn loopback() -> IpAddr {
        "127.0.0.1".parse().unwrap()
    }

    #[tokio::test]
    async fn a_name_is_connected_to_only_after_its_addresses_pass_the_policy() {
        let (port, task) = receiver().await;
        let resolver = Arc::new(StaticResolver::new().with("hooks.example", &[loopback()]));
        let url = format!("http://hooks.example:{port}/hook");

        // Loopback is refused by default: the connection is never made.
        let strict = Arc::new(TargetPolicy::default());
        let client = WebhookClient::with_resolver(
            Arc::clone(&strict),
            resolver.clone(),
            Duration::from_secs(5),
        )
        .unwrap();
        let checked = strict.check_url(&url).unwrap();
        let error = client
            .post(&checked, HeaderMap::new(), Bytes::from_static(b"{}"))
            .await
            .unwrap_err();
        assert!(
            matches!(
                error,
                SendError::Refused(Refusal::AddressRefused {
                    class: "loopback",
                    ..
                })
            ),
            "{error:?}"
        );

        // Allowed by CIDR: the same name goes through, to the address the resolver gave.
        let allowing = Arc::new(TargetPolicy::new(&["127.0.0.0/8".parse().unwrap()], &[]));
        let client = WebhookClient::with_resolver(
            Arc::clone(&allowing),
            resolver.clone(),
            Duration::from_secs(5),
        )
        .unwrap();
        let checked = allowing.check_url(&url).unwrap();
        let response = client
            .post(&checked, HeaderMap::new(), Bytes::from_static(b"{}"))
            .await
            .unwrap();
        assert_eq!(response.status(), http::StatusCode::NO_CONTENT);
        assert!(resolver.lookups("hooks.example") >= 2);
        task.abort();
    }

    #[tokio::test]
    async fn a_rebinding_answer_is_refused_at_connection_time() {
        let (port, task) = receiver().await;
        // First answer public (what a submit-time lookup would see), then loopback.
        let resolver = Arc::new(StaticResolver::new().with_answers(
            "rebind.example",
            vec![vec!["93.184.216.34".parse().unwrap()], vec![loopback()]],
        ));
        let policy = Arc::new(TargetPolicy::default());
        let checked = policy
            .check_url(&format!("http://rebind.example:{port}/hook"))
            .unwrap();
        // The submit-time style lookup sees the public address.
        assert!(resolver.resolve("rebind.example", port).await.is_ok());
        let client =
            WebhookClient::with_resolver(Arc::clone(&policy), resolver, Duration::from_secs(5))
                .unwrap();
        let error = client
            .post(&checked, HeaderMap::new(), Bytes::from_static(b"{}"))
            .await
            .unwrap_err();
        assert!(matches!(error, SendError::Refused(_)), "{error:?}");
        task.abort();
    }
}
