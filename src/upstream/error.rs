//! `UpstreamError`: why a request to the upstream produced no response, and whether replaying it is safe.
use std::error::Error as _;

/// A request that got no HTTP response from the upstream. (An upstream that answers, even with
/// a 5xx, is not an error here: its answer is passed through unchanged.)
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    /// The connection was never established: nothing reached the upstream.
    #[error("could not connect to the upstream")]
    Connect(#[source] reqwest::Error),
    /// The upstream did not answer within `valiqor.timeout`.
    #[error("the upstream did not answer in time")]
    Timeout(#[source] reqwest::Error),
    /// The connection failed after the request may have reached the upstream.
    #[error("the connection to the upstream failed")]
    Transport(#[source] reqwest::Error),
    /// The upstream's answer broke off or was larger than evalgate buffers.
    #[error("the upstream's answer could not be read completely")]
    Incomplete,
    /// A submit body that is not a JSON object: refused before anything was sent.
    #[error("{0}")]
    NotAJsonObject(#[source] super::byok::ByokError),
    /// The caller's streamed body went over `server.max_body_bytes`.
    #[error("request body is larger than {limit} bytes")]
    BodyTooLarge { limit: usize },
    /// The failure of one upstream call that several requests shared (single-flight).
    #[error(transparent)]
    Shared(std::sync::Arc<UpstreamError>),
}

// === impl UpstreamError ===

impl UpstreamError {
    /// Classifies a reqwest failure. `body_limit` is the limit the streamed request body was held to.
    pub(crate) fn from_reqwest(error: reqwest::Error, body_limit: usize) -> Self {
        let mut source = error.source();
        while let Some(cause) = source {
            if cause.is::<http_body_util::LengthLimitError>() {
                return Self::BodyTooLarge { limit: body_limit };
            }
            source = cause.source();
        }
        // A connect timeout is still "never reached": check connect first.
        if error.is_connect() {
            Self::Connect(error)
        } else if error.is_timeout() {
            Self::Timeout(error)
        } else {
            Self::Transport(error)
        }
    }

    /// The failure itself, through any sharing.
    pub(crate) fn root(&self) -> &Self {
        match self {
            Self::Shared(inner) => inner.root(),
            other => other,
        }
    }

    /// Low-cardinality label for metrics.
    pub(crate) fn outcome(&self) -> &'static str {
        match self {
            Self::Shared(inner) => inner.outcome(),
            Self::Connect(_) => "connect_error",
            Self::Timeout(_) => "timeout",
            Self::Transport(_) => "transport_error",
            Self::Incomplete => "incomplete",
            Self::BodyTooLarge { .. } => "body_too_large",
            Self::NotAJsonObject(_) => "invalid_body",
        }
    }
}
