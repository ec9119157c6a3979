//! The upstream's async-job protocol (Valiqor reference §5) for managed jobs: submit a batch,
//! poll its status, fetch its result, cancel it. The engine sees only these outcomes, never URLs.
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header::CONTENT_TYPE};
use serde::Deserialize;

use super::{RequestBody, UpstreamClient, UpstreamError, UpstreamRequest, arize::ArizeClient};
use crate::{
    retry,
    types::{JobKind, Millis},
};

/// The client a managed job's upstream calls go through: Valiqor's for the dataset kinds,
/// Arize's for task runs. The engine sees only the outcomes below, never URLs.
#[derive(Debug, Clone)]
pub(crate) enum JobUpstream {
    Valiqor(UpstreamClient),
    Arize(ArizeClient),
}

impl JobUpstream {
    /// Submits one batch: a Valiqor batch body, or an Arize run spec to trigger.
    /// `first_attempt_at`: when an earlier attempt may have reached the upstream (its job's
    /// creation), so that a trigger reconciles before it triggers again.
    pub(crate) async fn submit(
        &self,
        kind: JobKind,
        body: Bytes,
        first_attempt_at: Option<Millis>,
        request_id: &str,
    ) -> SubmitOutcome {
        match self {
            Self::Valiqor(client) => client.submit_batch(kind, body, request_id).await,
            Self::Arize(client) => client.trigger(&body, first_attempt_at, request_id).await,
        }
    }

    pub(crate) async fn poll(
        &self,
        kind: JobKind,
        upstream_id: &str,
        request_id: &str,
    ) -> PollOutcome {
        match self {
            Self::Valiqor(client) => client.poll_batch(kind, upstream_id, request_id).await,
            Self::Arize(client) => client.poll_run(upstream_id, request_id).await,
        }
    }

    /// The result of a completed upstream job (an Arize run's poll carries it already).
    pub(crate) async fn fetch_result(
        &self,
        kind: JobKind,
        upstream_id: &str,
        request_id: &str,
    ) -> Result<Bytes, Failure> {
        match self {
            Self::Valiqor(client) => client.fetch_result(kind, upstream_id, request_id).await,
            Self::Arize(client) => match client.poll_run(upstream_id, request_id).await {
                PollOutcome::Completed {
                    result: Some(result),
                } => Ok(result),
                PollOutcome::Failure(failure) => Err(failure),
                _ => Err(Failure::Transient {
                    reason: "the task run is no longer completed".to_owned(),
                    retry_after: None,
                }),
            },
        }
    }

    pub(crate) async fn cancel(
        &self,
        kind: JobKind,
        upstream_id: &str,
        request_id: &str,
    ) -> Result<(), Failure> {
        match self {
            Self::Valiqor(client) => client.cancel_batch(kind, upstream_id, request_id).await,
            Self::Arize(client) => client.cancel_run(upstream_id, request_id).await,
        }
    }
}

/// The upstream's answer to a batch submit.
#[derive(Debug)]
pub(crate) enum SubmitOutcome {
    /// 202: an async job to poll.
    Accepted {
        upstream_job_id: String,
    },
    /// Any other 2xx: the result, inline.
    Inline(Bytes),
    /// 400 `dataset_too_large`: re-split to `max_allowed` items.
    TooLarge {
        max_allowed: Option<usize>,
    },
    Failure(Failure),
}

/// The upstream's answer to a status poll.
#[derive(Debug)]
pub(crate) enum PollOutcome {
    Pending {
        progress_percent: f64,
        current_item: usize,
        /// `estimated_remaining_seconds`, when the upstream gives one.
        eta: Option<Duration>,
        /// The status answer's `Retry-After`, which wins over evalgate's own interval.
        retry_after: Option<Duration>,
    },
    /// The upstream job completed; `result` is the final answer when the status answer is the
    /// result itself (an Arize task run), else it is fetched separately.
    Completed {
        result: Option<Bytes>,
    },
    Failed {
        error: String,
        result: Option<Bytes>,
    },
    Cancelled {
        result: Option<Bytes>,
    },
    Failure(Failure),
}

/// A request that did not succeed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Worth retrying: 5xx, 429, timeouts, resets.
    Transient {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// Not worth retrying: other 4xx, or an answer that makes no sense.
    Permanent(String),
}

impl Failure {
    fn from_error(error: &UpstreamError) -> Self {
        match error {
            // The batch body itself is unusable: sending it again cannot help.
            UpstreamError::NotAJsonObject(_) => {
                Self::Permanent(format!("batch body is not valid JSON: {error}"))
            }
            _ => Self::Transient {
                reason: error.to_string(),
                retry_after: None,
            },
        }
    }

    pub(super) fn from_status(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Self {
        let detail = detail_of(body);
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            Self::Transient {
                reason: format!("upstream answered {status}: {detail}"),
                retry_after: retry_after(headers),
            }
        } else {
            Self::Permanent(format!("upstream answered {status}: {detail}"))
        }
    }
}

/// The answer's `Retry-After` (seconds or an HTTP date); the backoff clamps it.
pub(super) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    retry::parse_retry_after(headers.get(http::header::RETRY_AFTER)?, SystemTime::now())
}

/// The error text of a Valiqor error body (`detail` string or `detail.message`), capped.
fn detail_of(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Body {
        detail: Option<serde_json::Value>,
        message: Option<String>,
        error: Option<String>,
    }
    let text = match serde_json::from_slice::<Body>(body) {
        Ok(Body {
            detail: Some(serde_json::Value::String(s)),
            ..
        }) => s,
        Ok(Body {
            detail: Some(d), ..
        }) => d
            .get("message")
            .and_then(serde_json::Value::as_str)
            .map_or_else(|| d.to_string(), str::to_owned),
        Ok(Body {
            message: Some(m), ..
        }) => m,
        Ok(Body { error: Some(e), .. }) => e,
        _ => String::from_utf8_lossy(body).into_owned(),
    };
    let mut text = text;
    if text.len() > 300 {
        let mut cut = 300;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}

struct Paths {
    submit: &'static str,
    /// `{id}` is replaced by the upstream job id.
    status: &'static str,
    result: &'static str,
    cancel: &'static str,
    query: Option<&'static str>,
}

/// The Valiqor paths of `kind`. Arize task runs go through `ArizeClient` (see `JobUpstream`);
/// they have no Valiqor paths, and asking for them is a permanent failure.
fn paths(kind: JobKind) -> Result<Paths, Failure> {
    Ok(match kind {
        JobKind::FailureAnalysis => Paths {
            submit: "/v2/failure-analysis/analyze",
            status: "/v2/failure-analysis/runs/{id}/status",
            result: "/v2/failure-analysis/runs/{id}",
            cancel: "/v2/failure-analysis/runs/{id}/cancel",
            query: None,
        },
        JobKind::Evaluation => Paths {
            submit: "/v2/evaluate/",
            status: "/v2/evaluate/jobs/{id}/status",
            result: "/v2/evaluate/runs/{id}",
            cancel: "/v2/evaluate/jobs/{id}/cancel",
            query: None,
        },
        JobKind::SecurityAudit => Paths {
            submit: "/v2/security/audit",
            status: "/v2/security/jobs/{id}/status",
            result: "/v2/security/audit/batches/{id}",
            cancel: "/v2/security/jobs/{id}/cancel",
            query: Some("job_type=security"),
        },
        JobKind::ArizeTaskRun => {
            return Err(Failure::Permanent(
                "an Arize task run has no Valiqor endpoints".to_owned(),
            ));
        }
    })
}

/// Upstream ids go into URL paths: accept only plain tokens.
fn safe_id(id: &str) -> Result<&str, Failure> {
    if !id.is_empty()
        && id.len() <= 200
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
    {
        Ok(id)
    } else {
        Err(Failure::Permanent(format!(
            "upstream job id {id:?} is not a plain token"
        )))
    }
}

#[derive(Deserialize)]
struct Accepted {
    job_id: Option<String>,
}

#[derive(Deserialize)]
struct TooLarge {
    error: Option<String>,
    max_allowed: Option<u64>,
}

#[derive(Deserialize)]
#[expect(clippy::struct_field_names, reason = "the upstream's own field names")]
struct Status {
    status: Option<String>,
    progress_percent: Option<f64>,
    current_item: Option<u64>,
    estimated_remaining_seconds: Option<f64>,
    error: Option<String>,
}

/// A fully read upstream answer (an error answer scrubbed of every configured key).
pub(super) struct Answer {
    pub(super) status: StatusCode,
    pub(super) headers: HeaderMap,
    pub(super) body: Bytes,
}

impl Answer {
    /// The answer if it is a 200, else the failure its status means.
    pub(super) fn ok(self) -> Result<Self, Failure> {
        if self.status == StatusCode::OK {
            Ok(self)
        } else {
            Err(Failure::from_status(self.status, &self.headers, &self.body))
        }
    }
}

// === impl UpstreamClient (jobs) ===

impl UpstreamClient {
    /// One request with a JSON body (if any) and the job's request id, read whole.
    pub(super) async fn call(
        &self,
        method: Method,
        path: String,
        query: Option<&str>,
        body: Option<Bytes>,
        request_id: &str,
    ) -> Result<Answer, Failure> {
        let mut headers = HeaderMap::new();
        if body.is_some() {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        if let Ok(id) = HeaderValue::try_from(request_id) {
            headers.insert(crate::types::REQUEST_ID, id);
        }
        let request = UpstreamRequest {
            method,
            path,
            query: query.map(str::to_owned),
            headers,
            body: body.map_or(RequestBody::Empty, RequestBody::Submit),
            body_limit: usize::MAX,
        };
        let response = self
            .send(request)
            .await
            .map_err(|e| Failure::from_error(&e))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes().await.map_err(|e| Failure::Transient {
            reason: format!("upstream answer broke off: {e}"),
            retry_after: None,
        })?;
        // An error answer may echo what it was sent; its text ends up in stored batch errors.
        let body = self.scrub_error(status, body);
        Ok(Answer {
            status,
            headers,
            body,
        })
    }

    /// Submits one batch body; the client applies the BYOK judge key to it.
    pub(crate) async fn submit_batch(
        &self,
        kind: JobKind,
        body: Bytes,
        request_id: &str,
    ) -> SubmitOutcome {
        let answer = match self
            .call(
                Method::POST,
                match paths(kind) {
                    Ok(p) => p.submit.to_owned(),
                    Err(failure) => return SubmitOutcome::Failure(failure),
                },
                None,
                Some(body),
                request_id,
            )
            .await
        {
            Ok(answer) => answer,
            Err(failure) => return SubmitOutcome::Failure(failure),
        };
        if answer.status == StatusCode::ACCEPTED {
            return match serde_json::from_slice::<Accepted>(&answer.body) {
                Ok(Accepted { job_id: Some(id) }) if safe_id(&id).is_ok() => {
                    SubmitOutcome::Accepted {
                        upstream_job_id: id,
                    }
                }
                _ => SubmitOutcome::Failure(Failure::Permanent(
                    "upstream answered 202 without a usable job_id".to_owned(),
                )),
            };
        }
        if answer.status.is_success() {
            return SubmitOutcome::Inline(answer.body);
        }
        if answer.status == StatusCode::BAD_REQUEST
            && let Ok(TooLarge {
                error: Some(e),
                max_allowed,
            }) = serde_json::from_slice(&answer.body)
            && e == "dataset_too_large"
        {
            return SubmitOutcome::TooLarge {
                max_allowed: max_allowed.and_then(|m| usize::try_from(m).ok()),
            };
        }
        SubmitOutcome::Failure(Failure::from_status(
            answer.status,
            &answer.headers,
            &answer.body,
        ))
    }

    pub(crate) async fn poll_batch(
        &self,
        kind: JobKind,
        upstream_id: &str,
        request_id: &str,
    ) -> PollOutcome {
        let id = match safe_id(upstream_id) {
            Ok(id) => id,
            Err(failure) => return PollOutcome::Failure(failure),
        };
        let p = match paths(kind) {
            Ok(p) => p,
            Err(failure) => return PollOutcome::Failure(failure),
        };
        let answer = match self
            .call(
                Method::GET,
                p.status.replace("{id}", id),
                p.query,
                None,
                request_id,
            )
            .await
        {
            Ok(answer) => answer,
            Err(failure) => return PollOutcome::Failure(failure),
        };
        if !answer.status.is_success() {
            return PollOutcome::Failure(Failure::from_status(
                answer.status,
                &answer.headers,
                &answer.body,
            ));
        }
        let Ok(status) = serde_json::from_slice::<Status>(&answer.body) else {
            return PollOutcome::Failure(Failure::Transient {
                reason: "upstream status answer is not JSON".to_owned(),
                retry_after: retry_after(&answer.headers),
            });
        };
        match status.status.as_deref() {
            Some("completed") => PollOutcome::Completed { result: None },
            Some("failed") => PollOutcome::Failed {
                error: status
                    .error
                    .unwrap_or_else(|| "upstream job failed".to_owned()),
                result: None,
            },
            Some("cancelled") => PollOutcome::Cancelled { result: None },
            // `queued`, `processing` and unknown values: not finished.
            _ => PollOutcome::Pending {
                progress_percent: status.progress_percent.unwrap_or(0.0).clamp(0.0, 100.0),
                current_item: status
                    .current_item
                    .and_then(|n| usize::try_from(n).ok())
                    .unwrap_or(0),
                eta: status
                    .estimated_remaining_seconds
                    .filter(|s| s.is_finite() && *s >= 0.0)
                    .map(Duration::from_secs_f64),
                retry_after: retry_after(&answer.headers),
            },
        }
    }

    pub(crate) async fn fetch_result(
        &self,
        kind: JobKind,
        upstream_id: &str,
        request_id: &str,
    ) -> Result<Bytes, Failure> {
        let id = safe_id(upstream_id)?;
        let answer = self
            .call(
                Method::GET,
                paths(kind)?.result.replace("{id}", id),
                None,
                None,
                request_id,
            )
            .await?;
        if answer.status.is_success() {
            Ok(answer.body)
        } else {
            Err(Failure::from_status(
                answer.status,
                &answer.headers,
                &answer.body,
            ))
        }
    }

    pub(crate) async fn cancel_batch(
        &self,
        kind: JobKind,
        upstream_id: &str,
        request_id: &str,
    ) -> Result<(), Failure> {
        let id = safe_id(upstream_id)?;
        let p = paths(kind)?;
        let answer = self
            .call(
                Method::POST,
                p.cancel.replace("{id}", id),
                p.query,
                None,
                request_id,
            )
            .await?;
        if answer.status.is_success() || answer.status == StatusCode::CONFLICT {
            Ok(())
        } else {
            Err(Failure::from_status(
                answer.status,
                &answer.headers,
                &answer.body,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn details_are_read_from_every_valiqor_error_shape_and_capped() {
        assert_eq!(detail_of(br#"{"detail": "bad"}"#), "bad");
        assert_eq!(
            detail_of(br#"{"detail": {"error": "x", "message": "nested"}}"#),
            "nested"
        );
        assert_eq!(
            detail_of(br#"{"error": "dataset_too_large"}"#),
            "dataset_too_large"
        );
        assert_eq!(detail_of(b"plain"), "plain");
        assert!(detail_of(&vec![b'a'; 1000]).chars().count() <= 301);
    }

    #[test]
    fn only_plain_ids_reach_a_url() {
        assert!(safe_id("run_123-abc.def:1").is_ok());
        assert!(safe_id("../admin").is_err());
        assert!(safe_id("a/b").is_err());
        assert!(safe_id("").is_err());
    }
}
