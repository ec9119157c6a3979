//! The Arize tasks API (arize-tasks-api.md): the client behind the Arize listener and behind
//! managed task runs.
//!
//! - `ArizeClient` is one caller's client (its Arize key); clones share the connection pool, the
//!   key redactor and the run-status cache.
//! - `run_status`: `GET /v2/task-runs/{id}` is single-flight per (credential, run): concurrent
//!   and repeated polls within `arize.run_status_max_age` share one upstream call, a terminal run
//!   is answered from memory, and a 429/503 with `Retry-After` is held until it passes, so that no
//!   watcher polls the upstream before the upstream said it may. Managed runs poll through the
//!   same cache, so the SDK's `wait_for_run` and a managed job on one run cost one upstream poll.
//! - `trigger`: what a managed run's "submit" is. The task is read first (as the SDK does, to
//!   learn its type); a trigger is never retried blindly: after an earlier attempt whose outcome
//!   is unknown, the task's `PENDING` and `RUNNING` runs are listed and a run created since the
//!   job's first attempt is adopted instead of triggering again.
use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header::ACCEPT};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{
    BuildError, CredentialId, Credentials, Endpoint, Platform, Redactor, RequestBody,
    UpstreamClient, UpstreamError, UpstreamRequest,
    jobs::{Answer, Failure, PollOutcome, SubmitOutcome, retry_after},
};
use crate::{
    config::ArizeConfig,
    types::{Millis, REQUEST_ID, Secret},
};

/// How long a terminal run's answer is kept: it no longer changes.
const TERMINAL_HOLD: Duration = Duration::from_secs(600);
/// The longest a 429/503 `Retry-After` holds a run's polls.
const MAX_RETRY_HOLD: Duration = Duration::from_secs(60);
/// Run-status answers kept at most (each at most `RUN_BODY_CAP`).
const RUN_CACHE_ENTRIES: u64 = 10_000;
/// A run-status answer larger than this is not kept (a `TaskRun` is well under 1 KiB).
const RUN_BODY_CAP: usize = 256 * 1024;
/// A run created this long before the job's first trigger attempt still counts as the job's
/// (clock skew between evalgate and Arize).
const RECONCILE_SKEW: Duration = Duration::from_secs(60);
/// Pages of one status read while reconciling (100 runs each).
const RECONCILE_PAGES: usize = 10;
/// Idle keep-alive connections kept toward Arize, and for how long (a task API sees far less
/// traffic than the Valiqor submit path; the `[valiqor]` pool settings are not reused).
const POOL_MAX_IDLE: usize = 16;
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Python's `quote(id, safe='')`, as the SDK encodes path parameters: everything but
/// `A-Za-z0-9-._~` is percent-encoded (`/` → `%2F`, `+` → `%2B`, `=` → `%3D`).
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The terminal run statuses (uppercase on the wire).
const TERMINAL: [&str; 3] = ["COMPLETED", "FAILED", "CANCELLED"];

/// An id as one path segment, or why it cannot be one.
pub(crate) fn path_segment(id: &str) -> Result<String, String> {
    if id.is_empty()
        || id == "."
        || id == ".."
        || id.len() > 1024
        || id.chars().any(char::is_control)
    {
        Err(format!("{id:?} is not a usable Arize id"))
    } else {
        Ok(utf8_percent_encode(id, PATH_SEGMENT).to_string())
    }
}

/// What a managed task run starts from: a task to trigger (with the trigger request's fields),
/// stored as the job's one batch payload.
#[derive(Debug, Clone, serde::Serialize, Deserialize)]
pub(crate) struct RunSpec {
    pub task: String,
    /// `TriggerTaskRunRequest` fields, forwarded as given (`{}` when absent).
    #[serde(default)]
    pub options: Option<Box<RawValue>>,
}

impl RunSpec {
    pub(crate) fn to_payload(&self) -> Bytes {
        // A struct of a string and a raw JSON value always serializes.
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }
}

/// One `GET /v2/task-runs/{id}` answer, read whole, as every watcher of the run is served it.
#[derive(Debug)]
pub(crate) struct RunAnswer {
    pub status: StatusCode,
    /// The upstream's headers as received (the HTTP layer cleans them for callers).
    pub headers: HeaderMap,
    /// A success as sent; an error answer scrubbed of every configured key.
    pub body: Bytes,
    pub fetched_at: Instant,
    pub upstream_elapsed: Duration,
    /// How long it answers for this run: `run_status_max_age`, longer once the run is terminal,
    /// until a `Retry-After` passes, or not at all (other errors).
    hold: Duration,
}

impl RunAnswer {
    /// What is left of a held 429/503's `Retry-After`.
    pub(crate) fn retry_after_left(&self) -> Option<Duration> {
        matches!(
            self.status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        )
        .then(|| self.hold.saturating_sub(self.fetched_at.elapsed()))
        .filter(|left| !left.is_zero())
    }
}

/// How a run-status poll was answered.
#[derive(Debug)]
pub(crate) struct RunServed {
    pub answer: Arc<RunAnswer>,
    /// `true`: this poll went upstream; `false`: it shared another's answer.
    pub fetched: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct RunKey {
    credential: CredentialId,
    run_id: String,
}

struct HoldExpiry;

impl moka::Expiry<RunKey, Arc<RunAnswer>> for HoldExpiry {
    fn expire_after_create(
        &self,
        _key: &RunKey,
        value: &Arc<RunAnswer>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(value.hold)
    }
}

/// The run-status cache every client of one upstream shares.
#[derive(Clone)]
struct RunPolls {
    cache: moka::future::Cache<RunKey, Arc<RunAnswer>>,
    max_age: Duration,
}

impl std::fmt::Debug for RunPolls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunPolls")
            .field("entries", &self.cache.entry_count())
            .field("max_age", &self.max_age)
            .finish()
    }
}

/// One caller's Arize client.
#[derive(Debug, Clone)]
pub(crate) struct ArizeClient {
    transport: UpstreamClient,
    runs: RunPolls,
}

#[derive(Deserialize)]
struct TaskType {
    #[serde(rename = "type")]
    kind: Option<String>,
}

#[derive(Deserialize)]
struct RunStatus {
    id: Option<String>,
    status: Option<String>,
    failure_reason: Option<String>,
    created_at: Option<String>,
}

#[derive(Deserialize)]
struct RunPage {
    #[serde(default)]
    task_runs: Vec<RunStatus>,
    pagination: Option<Pagination>,
}

#[derive(Deserialize)]
struct Pagination {
    #[serde(default)]
    has_more: bool,
    next_cursor: Option<String>,
}

/// Fields of a trigger request that only a `RUN_EXPERIMENT` task takes.
const EXPERIMENT_ONLY: [&str; 6] = [
    "experiment_name",
    "dataset_version_id",
    "example_ids",
    "max_examples",
    "tracing_metadata",
    "evaluation_task_ids",
];

// === impl ArizeClient ===

impl ArizeClient {
    /// The client with the default key of `[arize]`; `None` while Arize is off.
    pub(crate) fn new(
        config: &ArizeConfig,
        redactor: Redactor,
    ) -> Result<Option<Self>, BuildError> {
        let Some(api_key) = &config.api_key else {
            return Ok(None);
        };
        let endpoint = Endpoint {
            platform: Platform::Arize,
            base_url: &config.base_url,
            connect_timeout: config.connect_timeout,
            timeout: config.timeout,
            pool_max_idle_per_host: POOL_MAX_IDLE,
            pool_idle_timeout: POOL_IDLE_TIMEOUT,
        };
        let transport =
            UpstreamClient::build(endpoint, Credentials::platform_key(api_key)?, redactor)?;
        let cache = moka::future::Cache::builder()
            .max_capacity(RUN_CACHE_ENTRIES)
            .expire_after(HoldExpiry)
            .build();
        Ok(Some(Self {
            transport,
            runs: RunPolls {
                cache,
                max_age: config.run_status_max_age,
            },
        }))
    }

    /// The same client (pool, cache, redactor) with another caller's key.
    pub(crate) fn with_key(&self, api_key: &Secret<String>) -> Result<Self, BuildError> {
        Ok(Self {
            transport: self
                .transport
                .with_credentials(Credentials::platform_key(api_key)?),
            runs: self.runs.clone(),
        })
    }

    /// The transport (pool, base URL, this caller's key) the pass-through forwards with.
    pub(crate) fn transport(&self) -> &UpstreamClient {
        &self.transport
    }

    /// The status of run `run_id` (decoded), single-flight. `path` is the upstream path the
    /// poll is sent to if this call is the one that goes upstream (a caller's exact encoding).
    pub(crate) async fn run_status(
        &self,
        run_id: &str,
        path: String,
        request_id: &str,
    ) -> Result<RunServed, Arc<UpstreamError>> {
        let key = RunKey {
            credential: self.transport.credential(),
            run_id: run_id.to_owned(),
        };
        let entry = self
            .runs
            .cache
            .entry(key)
            .or_try_insert_with(async { self.fetch_run(path, request_id).await.map(Arc::new) })
            .await?;
        Ok(RunServed {
            fetched: entry.is_fresh(),
            answer: entry.into_value(),
        })
    }

    /// Forgets what is known of a run (after a cancel went through), so the next poll asks.
    pub(crate) async fn forget_run(&self, run_id: &str) {
        let key = RunKey {
            credential: self.transport.credential(),
            run_id: run_id.to_owned(),
        };
        self.runs.cache.invalidate(&key).await;
    }

    async fn fetch_run(&self, path: String, request_id: &str) -> Result<RunAnswer, UpstreamError> {
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        if let Ok(id) = HeaderValue::try_from(request_id) {
            headers.insert(REQUEST_ID, id);
        }
        let request = UpstreamRequest {
            method: Method::GET,
            path,
            query: None,
            headers,
            body: RequestBody::Empty,
            body_limit: 0,
        };
        let started = Instant::now();
        let response = self.transport.send(request).await;
        let upstream_elapsed = started.elapsed();
        let response = response?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = read_capped(response, RUN_BODY_CAP).await?;
        let hold = self.hold_for(status, &headers, &body);
        let body = self.transport.scrub_error(status, body);
        Ok(RunAnswer {
            status,
            headers,
            body,
            fetched_at: Instant::now(),
            upstream_elapsed,
            hold,
        })
    }

    fn hold_for(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Duration {
        match status {
            StatusCode::OK => {
                let terminal = serde_json::from_slice::<RunStatus>(body)
                    .ok()
                    .and_then(|run| run.status)
                    .is_some_and(|s| TERMINAL.contains(&s.as_str()));
                if terminal {
                    TERMINAL_HOLD
                } else {
                    self.runs.max_age
                }
            }
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                retry_after(headers).map_or(Duration::ZERO, |wait| wait.min(MAX_RETRY_HOLD))
            }
            _ => Duration::ZERO,
        }
    }

    /// A managed run's poll, through the shared run-status cache.
    pub(crate) async fn poll_run(&self, run_id: &str, request_id: &str) -> PollOutcome {
        let path = match path_segment(run_id) {
            Ok(segment) => format!("/v2/task-runs/{segment}"),
            Err(reason) => return PollOutcome::Failure(Failure::Permanent(reason)),
        };
        let served = match self.run_status(run_id, path, request_id).await {
            Ok(served) => served,
            Err(error) => {
                return PollOutcome::Failure(Failure::Transient {
                    reason: error.to_string(),
                    retry_after: None,
                });
            }
        };
        let answer = &served.answer;
        if answer.status != StatusCode::OK {
            return PollOutcome::Failure(match answer.retry_after_left() {
                Some(left) => Failure::Transient {
                    reason: format!("Arize answered {}", answer.status),
                    retry_after: Some(left),
                },
                None => Failure::from_status(answer.status, &answer.headers, &answer.body),
            });
        }
        poll_outcome(&answer.body)
    }

    /// A managed run's "submit": read the task, check the trigger fits its type, reconcile when
    /// an earlier attempt may have triggered already (`first_attempt_at`), then trigger.
    pub(crate) async fn trigger(
        &self,
        payload: &[u8],
        first_attempt_at: Option<Millis>,
        request_id: &str,
    ) -> SubmitOutcome {
        match self
            .try_trigger(payload, first_attempt_at, request_id)
            .await
        {
            Ok(outcome) | Err(outcome) => outcome,
        }
    }

    async fn try_trigger(
        &self,
        payload: &[u8],
        first_attempt_at: Option<Millis>,
        request_id: &str,
    ) -> Result<SubmitOutcome, SubmitOutcome> {
        let fail = |reason: String| SubmitOutcome::Failure(Failure::Permanent(reason));
        let spec: RunSpec = serde_json::from_slice(payload)
            .map_err(|e| fail(format!("stored task run request unreadable: {e}")))?;
        let task = path_segment(&spec.task).map_err(fail)?;
        let options = spec.options.as_ref().map_or("{}", |raw| raw.get());
        // The task's type decides which trigger fields apply (the SDK reads it first too).
        let answer = self
            .transport
            .call(
                Method::GET,
                format!("/v2/tasks/{task}"),
                None,
                None,
                request_id,
            )
            .await
            .and_then(Answer::ok)
            .map_err(SubmitOutcome::Failure)?;
        let kind = serde_json::from_slice::<TaskType>(&answer.body)
            .ok()
            .and_then(|t| t.kind)
            .unwrap_or_default();
        check_options(&kind, options).map_err(fail)?;
        if let Some(since) = first_attempt_at
            && let Some(run_id) = self.reconcile(&task, since, request_id).await?
        {
            tracing::info!(
                run_id,
                "an earlier trigger's outcome was unknown; adopted the run it created instead of triggering again"
            );
            return Ok(SubmitOutcome::Accepted {
                upstream_job_id: run_id,
            });
        }
        let answer = self
            .transport
            .call(
                Method::POST,
                format!("/v2/tasks/{task}/trigger"),
                None,
                Some(Bytes::copy_from_slice(options.as_bytes())),
                request_id,
            )
            .await
            .map_err(SubmitOutcome::Failure)?;
        // Exactly 201 (reference §10.2): any other 2xx carries no run the SDK would accept.
        if answer.status != StatusCode::CREATED {
            return Err(SubmitOutcome::Failure(if answer.status.is_success() {
                Failure::Permanent(format!(
                    "Arize answered {} to a trigger instead of 201",
                    answer.status
                ))
            } else {
                Failure::from_status(answer.status, &answer.headers, &answer.body)
            }));
        }
        match serde_json::from_slice::<RunStatus>(&answer.body)
            .ok()
            .and_then(|run| run.id)
            .filter(|id| path_segment(id).is_ok())
        {
            Some(upstream_job_id) => Ok(SubmitOutcome::Accepted { upstream_job_id }),
            None => Err(fail(
                "Arize answered 201 to a trigger without a usable run id".to_owned(),
            )),
        }
    }

    /// The oldest `PENDING` or `RUNNING` run of `task` created since `since` (less the skew):
    /// the run an earlier, unanswered trigger created.
    async fn reconcile(
        &self,
        task: &str,
        since: Millis,
        request_id: &str,
    ) -> Result<Option<String>, SubmitOutcome> {
        let since_ms = u64::try_from(since).unwrap_or(0);
        let since = SystemTime::UNIX_EPOCH + Duration::from_millis(since_ms);
        let cutoff = since
            .checked_sub(RECONCILE_SKEW)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let mut found: Option<(SystemTime, String)> = None;
        for status in ["PENDING", "RUNNING"] {
            let mut cursor: Option<String> = None;
            for _ in 0..RECONCILE_PAGES {
                let mut query = format!("status={status}&limit=100");
                if let Some(cursor) = &cursor {
                    query.push_str("&cursor=");
                    query.push_str(&utf8_percent_encode(cursor, PATH_SEGMENT).to_string());
                }
                let answer = self
                    .transport
                    .call(
                        Method::GET,
                        format!("/v2/tasks/{task}/runs"),
                        Some(&query),
                        None,
                        request_id,
                    )
                    .await
                    .and_then(Answer::ok)
                    .map_err(SubmitOutcome::Failure)?;
                let page: RunPage = serde_json::from_slice(&answer.body).map_err(|e| {
                    SubmitOutcome::Failure(Failure::Transient {
                        reason: format!("Arize's run list is unreadable: {e}"),
                        retry_after: None,
                    })
                })?;
                for run in page.task_runs {
                    let (Some(id), Some(created)) =
                        (run.id, run.created_at.as_deref().and_then(parse_timestamp))
                    else {
                        continue;
                    };
                    if created >= cutoff && found.as_ref().is_none_or(|(at, _)| created < *at) {
                        found = Some((created, id));
                    }
                }
                match page.pagination {
                    Some(Pagination {
                        has_more: true,
                        next_cursor: Some(next),
                    }) => cursor = Some(next),
                    _ => break,
                }
            }
        }
        Ok(found.map(|(_, id)| id))
    }

    /// Cancels a run (best effort; a run that already ended is not an error).
    pub(crate) async fn cancel_run(&self, run_id: &str, request_id: &str) -> Result<(), Failure> {
        let segment = path_segment(run_id).map_err(Failure::Permanent)?;
        let answer = self
            .transport
            .call(
                Method::POST,
                format!("/v2/task-runs/{segment}/cancel"),
                None,
                None,
                request_id,
            )
            .await?;
        self.forget_run(run_id).await;
        // 400: the run is no longer pending or running (the spec's only rule for cancel).
        if answer.status.is_success()
            || answer.status == StatusCode::BAD_REQUEST
            || answer.status == StatusCode::CONFLICT
        {
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

/// A trigger request's fields against the task's type: what the SDK checks client-side, so
/// that a managed run fails at once with a clear reason instead of a 400 from upstream.
fn check_options(task_type: &str, options: &str) -> Result<(), String> {
    let fields: serde_json::Map<String, serde_json::Value> = serde_json::from_str(options)
        .map_err(|_| "options must be a JSON object of TriggerTaskRunRequest fields".to_owned())?;
    if task_type == "RUN_EXPERIMENT" {
        if !fields.contains_key("experiment_name") {
            return Err("a RUN_EXPERIMENT task run needs options.experiment_name".to_owned());
        }
    } else if let Some(field) = EXPERIMENT_ONLY.iter().find(|f| fields.contains_key(**f)) {
        return Err(format!(
            "options.{field} applies only to RUN_EXPERIMENT tasks; this task is {task_type}"
        ));
    }
    Ok(())
}

/// A `TaskRun` answer as a poll outcome: the final answer is the result, whatever the status.
fn poll_outcome(body: &Bytes) -> PollOutcome {
    let Ok(run) = serde_json::from_slice::<RunStatus>(body) else {
        return PollOutcome::Failure(Failure::Transient {
            reason: "Arize's task run answer is not JSON".to_owned(),
            retry_after: None,
        });
    };
    match run.status.as_deref() {
        // No status yet is not terminal (as in the SDK's `wait_for_run`).
        None | Some("PENDING" | "RUNNING") => PollOutcome::Pending {
            progress_percent: 0.0,
            current_item: 0,
            eta: None,
            retry_after: None,
        },
        Some("COMPLETED") => PollOutcome::Completed {
            result: Some(body.clone()),
        },
        Some("FAILED") => PollOutcome::Failed {
            error: run
                .failure_reason
                .unwrap_or_else(|| "the task run failed".to_owned()),
            result: Some(body.clone()),
        },
        Some("CANCELLED") => PollOutcome::Cancelled {
            result: Some(body.clone()),
        },
        Some(other) => PollOutcome::Failure(Failure::Transient {
            reason: format!("Arize answered an unknown run status {other:?}"),
            retry_after: None,
        }),
    }
}

/// Reads a whole answer, at most `cap` bytes.
async fn read_capped(response: reqwest::Response, cap: usize) -> Result<Bytes, UpstreamError> {
    use http_body_util::{BodyExt, Limited};
    Limited::new(http::Response::from(response).into_body(), cap)
        .collect()
        .await
        .map(http_body_util::Collected::to_bytes)
        .map_err(|_| UpstreamError::Incomplete)
}

/// An ISO-8601 timestamp as Arize writes them (`…Z`, `…+00:00`, or no offset = UTC).
fn parse_timestamp(text: &str) -> Option<SystemTime> {
    let text = text.trim();
    let (local, offset_secs) = match text
        .char_indices()
        .skip(19)
        .find(|(_, c)| matches!(c, '+' | '-' | 'Z' | 'z'))
    {
        None => (text, 0_i64),
        Some((at, 'Z' | 'z')) => (&text[..at], 0),
        Some((at, sign)) => {
            let offset = &text[at + 1..];
            let (h, m) = offset
                .split_once(':')
                .unwrap_or((offset.get(..2)?, offset.get(2..)?));
            let secs = h.parse::<i64>().ok()? * 3600 + m.parse::<i64>().ok()? * 60;
            (&text[..at], if sign == '-' { -secs } else { secs })
        }
    };
    let local = humantime::parse_rfc3339_weak(local).ok()?;
    let offset = Duration::from_secs(offset_secs.unsigned_abs());
    if offset_secs >= 0 {
        local.checked_sub(offset)
    } else {
        local.checked_add(offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_encoded_as_the_sdk_encodes_them_and_dot_segments_refused() {
        assert_eq!(
            path_segment("VGFza1J1bjoxOvv/vg==").unwrap(),
            "VGFza1J1bjoxOvv%2Fvg%3D%3D"
        );
        assert_eq!(path_segment("a+b c").unwrap(), "a%2Bb%20c");
        assert_eq!(path_segment("run-1_x.y~").unwrap(), "run-1_x.y~");
        for bad in ["", ".", "..", "a\nb"] {
            assert!(path_segment(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn timestamps_with_any_offset_are_read_as_utc() {
        let utc = parse_timestamp("2026-11-22T13:03:04Z").unwrap();
        assert_eq!(parse_timestamp("2026-11-22T13:03:04+00:00"), Some(utc));
        assert_eq!(parse_timestamp("2026-11-22T14:03:04+01:00"), Some(utc));
        assert_eq!(parse_timestamp("2026-11-22T12:03:04-01:00"), Some(utc));
        assert_eq!(parse_timestamp("2026-11-22T13:03:04"), Some(utc));
        let frac = parse_timestamp("2026-11-22T13:03:04.500000+00:00").unwrap();
        assert_eq!(
            frac.duration_since(utc).unwrap(),
            Duration::from_millis(500)
        );
        assert_eq!(parse_timestamp("yesterday"), None);
    }

    #[test]
    fn trigger_fields_must_fit_the_task_type() {
        assert!(check_options("TEMPLATE_EVALUATION", "{}").is_ok());
        assert!(check_options("CODE_EVALUATION", r#"{"max_spans": 5}"#).is_ok());
        let err = check_options("TEMPLATE_EVALUATION", r#"{"experiment_name": "x"}"#).unwrap_err();
        assert!(err.contains("experiment_name"), "{err}");
        assert!(check_options("RUN_EXPERIMENT", "{}").is_err());
        assert!(check_options("RUN_EXPERIMENT", r#"{"experiment_name": "e"}"#).is_ok());
        assert!(check_options("RUN_EXPERIMENT", "[1]").is_err());
    }

    #[test]
    fn every_status_maps_and_the_final_answer_is_the_result() {
        let run = |status: &str| {
            Bytes::from(format!(
                r#"{{"id": "r", "status": "{status}", "failure_reason": "why"}}"#
            ))
        };
        assert!(matches!(
            poll_outcome(&run("PENDING")),
            PollOutcome::Pending { .. }
        ));
        assert!(matches!(
            poll_outcome(&run("RUNNING")),
            PollOutcome::Pending { .. }
        ));
        assert!(matches!(
            poll_outcome(&Bytes::from_static(b"{}")),
            PollOutcome::Pending { .. }
        ));
        let completed = run("COMPLETED");
        assert!(
            matches!(poll_outcome(&completed), PollOutcome::Completed { result: Some(r) } if r == completed)
        );
        assert!(
            matches!(poll_outcome(&run("FAILED")), PollOutcome::Failed { error, result: Some(_) } if error == "why")
        );
        assert!(matches!(
            poll_outcome(&run("CANCELLED")),
            PollOutcome::Cancelled { result: Some(_) }
        ));
        assert!(matches!(
            poll_outcome(&run("completed")),
            PollOutcome::Failure(Failure::Transient { .. })
        ));
    }
}
