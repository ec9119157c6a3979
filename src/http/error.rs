//! `ApiError`: evalgate's own errors on the API port, rendered in the Valiqor error shape.
//!
//! The Valiqor SDK maps errors by status and by the top-level `detail` field (reference §6), so every
//! body is `{"detail": "<message>", "code": "<stable code>"}`; the SDK ignores `code`, operators and
//! other clients use it. Upstream answers, errors included, are never rewritten: they pass through.
use std::time::Duration;

use axum::{
    Json,
    response::{IntoResponse, Response},
};
use http::{HeaderValue, StatusCode, header::RETRY_AFTER};
use serde::Serialize;

use crate::{
    error::ErrorChain, jobs::error::JobsError, tenants::AuthError, upstream::UpstreamError,
};

#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    /// The request cannot be served as sent (not JSON where JSON is required, and so on).
    #[error("{0}")]
    BadRequest(String),
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("no such route: evalgate serves only the platform API paths it lists")]
    UnknownRoute,
    /// The request's Host is not one of `server.allowed_hosts`.
    #[error("this host name is not served here")]
    HostNotAllowed,
    /// A POST, PUT or PATCH body that is not declared JSON.
    #[error("request bodies must be application/json")]
    UnsupportedMediaType,
    /// A path segment that is `.`/`..` in any spelling, or holds NUL or a backslash.
    #[error("the path has a segment evalgate does not forward (a dot segment, NUL or a backslash)")]
    BadPath,
    #[error("method not allowed on this path")]
    MethodNotAllowed,
    /// `auth.mode = "tokens"` and the request has no known token.
    #[error("{0}")]
    Unauthenticated(#[from] AuthError),
    /// A local rate limit (upstream-wide or playground) said no.
    #[error("rate limit exceeded: {limit}; retry after {} s", retry_after_secs(*.retry_after))]
    RateLimited {
        limit: &'static str,
        retry_after: Duration,
    },
    /// Too many requests in flight: shed before anything was forwarded.
    #[error("evalgate is at capacity; retry shortly")]
    Overloaded { retry_after: Duration },
    /// The request took longer than `server.request_timeout`.
    #[error("request timed out in evalgate")]
    RequestTimeout,
    #[error("{0}")]
    Upstream(#[from] UpstreamError),
    /// A job (or other resource) that does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the resource's state (result not ready, idempotency key reuse).
    #[error("{0}")]
    Conflict(String),
    /// The shutdown grace period ended while this request was still running.
    #[error("evalgate is shutting down; the request was cut off and may have reached the upstream")]
    ShuttingDown,
    /// What the jobs service answered instead of a result.
    #[error(transparent)]
    Jobs(#[from] JobsError),
}

#[derive(Debug, Serialize)]
struct ErrorBody<'a> {
    detail: &'a str,
    code: &'static str,
}

/// The stable error code, attached to responses so the metrics layer can count it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ErrorCode(pub &'static str);

/// The public message of an error answered by evalgate itself (for surfaces that render errors
/// in their platform's shape, such as the Arize listener's problem documents).
#[derive(Debug, Clone)]
pub(crate) struct PublicMessage(pub String);

/// `Retry-After` seconds: whole, at least 1, at most 30 (the SDK sleeps at most 30 s).
fn retry_after_secs(d: Duration) -> u64 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.clamp(1, 30)
}

/// The status of an upstream failure (its root, when it was shared by several requests).
fn upstream_status(error: &UpstreamError) -> StatusCode {
    match error {
        UpstreamError::NotAJsonObject(_) => StatusCode::BAD_REQUEST,
        UpstreamError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        UpstreamError::Connect(_) => StatusCode::SERVICE_UNAVAILABLE,
        UpstreamError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        UpstreamError::Transport(_) | UpstreamError::Incomplete | UpstreamError::Shared(_) => {
            StatusCode::BAD_GATEWAY
        }
    }
}

fn upstream_code(error: &UpstreamError) -> &'static str {
    match error {
        UpstreamError::NotAJsonObject(_) => "bad_request",
        UpstreamError::BodyTooLarge { .. } => "payload_too_large",
        UpstreamError::Connect(_) => "upstream_unavailable",
        UpstreamError::Timeout(_) => "upstream_timeout",
        UpstreamError::Transport(_) | UpstreamError::Incomplete | UpstreamError::Shared(_) => {
            "upstream_failed"
        }
    }
}

// === impl ApiError ===

impl ApiError {
    /// Exhaustive on purpose: a new variant must choose its status. This and `code` are the one
    /// mapping of every error (evalgate's own, the upstream's, the jobs service's) to HTTP.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_)
            | Self::BadPath
            | Self::HostNotAllowed
            | Self::Jobs(JobsError::Invalid(_)) => StatusCode::BAD_REQUEST,
            Self::Upstream(error) => upstream_status(error.root()),
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnknownRoute | Self::NotFound(_) | Self::Jobs(JobsError::NotFound(_)) => {
                StatusCode::NOT_FOUND
            }
            Self::Conflict(_)
            | Self::Jobs(JobsError::NotReady { .. } | JobsError::IdempotencyConflict(_)) => {
                StatusCode::CONFLICT
            }
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::RateLimited { .. } | Self::Jobs(JobsError::TenantAtCapacity(_)) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Self::Overloaded { .. }
            | Self::Jobs(JobsError::AtCapacity(..) | JobsError::StoreUnavailable(..)) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::RequestTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::ShuttingDown => StatusCode::BAD_GATEWAY,
            Self::Jobs(
                JobsError::Store(_) | JobsError::Finish(_) | JobsError::CorruptResult { .. },
            ) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Stable, documented, low-cardinality: used in bodies and as a metric label.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            Self::BadRequest(_) | Self::Jobs(JobsError::Invalid(_)) => "bad_request",
            Self::Upstream(error) => upstream_code(error.root()),
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::UnknownRoute => "unknown_route",
            Self::BadPath => "bad_path",
            Self::HostNotAllowed => "host_not_allowed",
            Self::NotFound(_) | Self::Jobs(JobsError::NotFound(_)) => "not_found",
            Self::Conflict(_)
            | Self::Jobs(JobsError::NotReady { .. } | JobsError::IdempotencyConflict(_)) => {
                "conflict"
            }
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Unauthenticated(_) => "unauthenticated",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::RateLimited { .. } => "rate_limited",
            Self::Jobs(JobsError::TenantAtCapacity(_)) => "too_many_active_jobs",
            Self::Overloaded { .. } | Self::Jobs(JobsError::AtCapacity(..)) => "overloaded",
            Self::RequestTimeout => "request_timeout",
            Self::ShuttingDown => "shutting_down",
            Self::Jobs(JobsError::StoreUnavailable(..)) => "store_unavailable",
            Self::Jobs(
                JobsError::Store(_) | JobsError::Finish(_) | JobsError::CorruptResult { .. },
            ) => "internal",
        }
    }

    /// Seconds for `Retry-After`, only where a replay is safe or a wait is the answer.
    fn retry_after(&self) -> Option<u64> {
        match self {
            Self::RateLimited { retry_after, .. }
            | Self::Overloaded { retry_after }
            | Self::Jobs(
                JobsError::AtCapacity(_, retry_after)
                | JobsError::StoreUnavailable(_, retry_after)
                | JobsError::TenantAtCapacity(retry_after),
            ) => Some(retry_after_secs(*retry_after)),
            // Nothing reached the upstream, so the SDK's single 503 replay is safe.
            Self::Upstream(error) if matches!(error.root(), UpstreamError::Connect(_)) => Some(2),
            _ => None,
        }
    }

    /// The public message: 5xx bodies carry a fixed text, never internals.
    fn public_message(&self) -> String {
        match self {
            Self::Upstream(error) => match error.root() {
                UpstreamError::Connect(_) => "upstream unavailable: evalgate could not connect to the evaluation platform".to_owned(),
                UpstreamError::Timeout(_) => "upstream timeout: the evaluation platform did not answer in time".to_owned(),
                UpstreamError::Transport(_) | UpstreamError::Incomplete | UpstreamError::Shared(_) => "upstream failed: the connection to the evaluation platform broke; the request may have been processed".to_owned(),
                other @ (UpstreamError::NotAJsonObject(_) | UpstreamError::BodyTooLarge { .. }) => other.to_string(),
            },
            Self::Jobs(JobsError::StoreUnavailable(..)) => {
                "the job store is unavailable; retry shortly".to_owned()
            }
            Self::Jobs(
                JobsError::Store(_) | JobsError::Finish(_) | JobsError::CorruptResult { .. },
            ) => {
                "internal error in evalgate".to_owned()
            }
            other => other.to_string(),
        }
    }
}

impl ApiError {
    /// The one place an error answered to a caller is logged: server errors with their whole
    /// source chain, caller errors at debug.
    fn log(&self) {
        let code = self.code();
        if self.status().is_server_error() {
            tracing::warn!(error = %ErrorChain(self), code, "request failed");
        } else {
            tracing::debug!(error = %self, code, "request rejected");
        }
    }

    /// Headers and extensions every error answer carries; `message` is its `public_message`,
    /// computed once by the caller for the body.
    fn finish(&self, mut response: Response, message: String) -> Response {
        if let Some(secs) = self.retry_after() {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Self::Unauthenticated(_) = self {
            response.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer"),
            );
        }
        response.extensions_mut().insert(ErrorCode(self.code()));
        response.extensions_mut().insert(PublicMessage(message));
        response
    }
}

impl ApiError {
    /// The error in the shape of the API `path` belongs to: the `/v1` shape on the native API,
    /// the Valiqor shape everywhere else (for middleware that answers before routing).
    pub(crate) fn response_for_path(self, path: &str) -> Response {
        if path == "/v1" || path.starts_with("/v1/") {
            V1Error(self).into_response()
        } else {
            self.into_response()
        }
    }
}

/// The native `/v1` API's error shape: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug)]
pub(crate) struct V1Error(pub ApiError);

impl From<ApiError> for V1Error {
    fn from(error: ApiError) -> Self {
        Self(error)
    }
}

impl IntoResponse for V1Error {
    fn into_response(self) -> Response {
        self.0.log();
        let message = self.0.public_message();
        let body = serde_json::json!({"error": {"code": self.0.code(), "message": &message}});
        let response = (self.0.status(), Json(body)).into_response();
        self.0.finish(response, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.log();
        let status = self.status();
        let code = self.code();
        let message = self.public_message();
        let response = (
            status,
            Json(ErrorBody {
                detail: &message,
                code,
            }),
        )
            .into_response();
        self.finish(response, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_whole_seconds_within_the_sdk_cap() {
        assert_eq!(retry_after_secs(Duration::from_millis(10)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1500)), 2);
        assert_eq!(retry_after_secs(Duration::from_hours(1)), 30);
    }

    #[test]
    fn rate_limited_answers_429_with_retry_after_and_detail() {
        let response = ApiError::RateLimited {
            limit: "playground_per_minute",
            retry_after: Duration::from_millis(2500),
        }
        .into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[RETRY_AFTER], "3");
    }

    fn busy() -> crate::store::StoreError {
        crate::store::StoreError::Sqlite(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            None,
        ))
    }

    fn corrupt() -> crate::store::StoreError {
        crate::store::StoreError::Corrupt("state 'x'".to_owned())
    }

    #[test]
    fn a_store_that_fails_for_a_moment_is_503_with_retry_after_never_404() {
        let error = ApiError::from(JobsError::store(busy(), Duration::from_secs(2)));
        assert_eq!(error.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(error.code(), "store_unavailable");
        let response = error.into_response();
        assert_eq!(response.headers()[RETRY_AFTER], "2");
    }

    #[test]
    fn a_store_that_fails_for_good_is_500_and_keeps_its_source() {
        let error = ApiError::from(JobsError::store(corrupt(), Duration::from_secs(2)));
        assert_eq!(error.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(error.code(), "internal");
        // The log line shows the cause; the public message does not.
        let chain = ErrorChain(&error).to_string();
        assert!(chain.contains("state 'x'"), "{chain}");
        assert!(!error.public_message().contains("state 'x'"));
        assert!(error.retry_after().is_none());
    }

    #[test]
    fn jobs_errors_map_to_their_statuses() {
        let id = crate::types::JobId::generate();
        let cases = [
            (
                JobsError::Invalid("bad".to_owned()),
                StatusCode::BAD_REQUEST,
            ),
            (
                JobsError::NotFound("egj_x".to_owned()),
                StatusCode::NOT_FOUND,
            ),
            (
                JobsError::NotReady {
                    id: id.clone(),
                    state: "running",
                },
                StatusCode::CONFLICT,
            ),
            (JobsError::IdempotencyConflict(id), StatusCode::CONFLICT),
            (
                JobsError::AtCapacity("jobs.max_active_jobs", Duration::from_secs(1)),
                StatusCode::SERVICE_UNAVAILABLE,
            ),
        ];
        for (error, status) in cases {
            assert_eq!(ApiError::from(error).status(), status);
        }
    }
}
