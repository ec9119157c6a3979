//! `evalgate submit`: the command-line client of the native jobs API (`/v1/jobs`).
//!
//! ```text
//! FILE | stdin ── parse_json_lines (JSON array or JSONL → array, items byte for byte)
//!   └► POST /v1/jobs {"kind", "dataset", "options"} ─► 202 {"job_id", ...}  (job id on stderr)
//!        without --wait: the answer on stdout, exit 0
//!        --wait: GET /v1/jobs/{id}/events (SSE) ─► progress bar / one line per batch event
//!                (dropped: reconnect with Last-Event-ID, bounded retries with backoff)
//!                final event ─► GET /v1/jobs/{id}/result ─► stdout | --output
//! ```
//!
//! Exit codes: 0 accepted / `completed`, 2 `completed_with_errors`, 1 `failed`, `cancelled` or
//! any error talking to evalgate, 64 (`EX_USAGE`) for bad input, found before anything is sent.
//! The request body is assembled from the file's bytes: the dataset is never re-serialised.
use std::{
    io::{IsTerminal, Write},
    path::Path,
    process::ExitCode,
    time::{Duration, SystemTime},
};

use bytes::{BufMut, Bytes, BytesMut};
use eventsource_stream::{Event, Eventsource};
use futures::{Stream, StreamExt};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use reqwest::{StatusCode, header};
use serde::Deserialize;
use tokio::io::AsyncReadExt;
use url::Url;

use crate::{
    batching::{self, DatasetError},
    cli::{EX_USAGE, SubmitArgs},
    error::ErrorChain,
    retry::{self, Backoff},
    types::{JobId, JobKind, JobState},
};

/// Exit code of a job that finished `completed_with_errors`.
const EX_COMPLETED_WITH_ERRORS: u8 = 2;
/// Connecting to evalgate.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A whole submit or result request (the server's own request deadline is 310 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(330);
/// Until the event stream answers with its headers.
const STREAM_OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// Silence on an open event stream after which it counts as dropped (the server sends a
/// keep-alive comment every 15 s).
const STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(45);
/// Event-stream attempts in a row that deliver no event before giving up.
const STREAM_ATTEMPTS: u32 = 8;
/// Result downloads before giving up (transport errors and 5xx only).
const RESULT_ATTEMPTS: u32 = 4;
/// Delay between reconnects and result retries: doubling from 250 ms to 5 s, full jitter.
const BACKOFF: Backoff = Backoff {
    initial: Duration::from_millis(250),
    max: Duration::from_secs(5),
};

/// Why `evalgate submit` failed. The first group is bad input (exit 64, nothing was sent).
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {problem}")]
    Dataset { path: String, problem: String },
    #[error("{what}: {problem}")]
    Options { what: String, problem: String },
    #[error("--url {url:?}: {problem}")]
    Url { url: String, problem: String },
    #[error("--idempotency-key must be 1-255 visible ASCII characters")]
    IdempotencyKey,
    #[error("{0}")]
    Usage(&'static str),

    #[error("cannot build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    #[error("{action}: cannot reach evalgate: {reason}")]
    Transport { action: String, reason: String },
    #[error("{action}: evalgate answered {status}: {message}")]
    Server {
        action: String,
        status: StatusCode,
        message: String,
    },
    #[error("{action}: unexpected answer from evalgate: {reason}")]
    Protocol { action: String, reason: String },
    #[error(
        "lost the event stream of job {job_id} after {attempts} attempts ({reason}); the job goes on: GET {status_url}"
    )]
    Stream {
        job_id: String,
        attempts: u32,
        reason: String,
        status_url: String,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl SubmitError {
    /// 64 for bad input, 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Read { .. }
            | Self::Dataset { .. }
            | Self::Options { .. }
            | Self::Url { .. }
            | Self::IdempotencyKey
            | Self::Usage(_) => EX_USAGE,
            Self::Client(_)
            | Self::Transport { .. }
            | Self::Server { .. }
            | Self::Protocol { .. }
            | Self::Stream { .. }
            | Self::Write { .. } => 1,
        }
    }
}

/// Runs `evalgate submit`; every outcome is reported on stderr and mapped to an exit code.
pub async fn run(args: &SubmitArgs) -> ExitCode {
    match submit(args).await {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            say(&format!("evalgate submit: {}", ErrorChain(&error)));
            ExitCode::from(error.exit_code())
        }
    }
}

/// Everything checked before contacting the server.
#[derive(Debug)]
struct Prepared {
    base: String,
    body: Bytes,
    idempotency_key: Option<header::HeaderValue>,
}

async fn prepare(args: &SubmitArgs) -> Result<Prepared, SubmitError> {
    let base = api_base(&args.url)?;
    let idempotency_key = args
        .idempotency_key
        .as_deref()
        .map(|key| {
            header::HeaderValue::from_str(key)
                .ok()
                .filter(|_| (1..=255).contains(&key.len()))
                .ok_or(SubmitError::IdempotencyKey)
        })
        .transpose()?;
    let options = match (&args.options, &args.options_file) {
        (Some(text), _) => Some(check_options("--options", text.as_bytes())?),
        (None, Some(path)) => {
            let raw = read_input(path).await?;
            Some(check_options(&display_path(path), &raw)?)
        }
        (None, None) => None,
    };
    let kind = JobKind::from(args.kind);
    let body = match (kind, &args.file, &args.task, &args.run_id) {
        (JobKind::ArizeTaskRun, None, task, run_id) => {
            run_body(task.as_ref(), run_id.as_ref(), options.as_deref())?
        }
        (JobKind::ArizeTaskRun, Some(_), ..) => {
            return Err(SubmitError::Usage(
                "--kind arize_task_run takes --task or --run-id, not a dataset FILE",
            ));
        }
        (_, Some(file), None, None) => {
            let raw = read_input(file).await?;
            let dataset =
                batching::parse_json_lines(&raw).map_err(|error| SubmitError::Dataset {
                    path: display_path(file),
                    problem: dataset_problem(error),
                })?;
            drop(raw);
            request_body(kind, &dataset, options.as_deref())
        }
        (_, None, ..) => return Err(SubmitError::Usage("give the dataset FILE (or - for stdin)")),
        (_, Some(_), ..) => {
            return Err(SubmitError::Usage(
                "--task and --run-id go with --kind arize_task_run",
            ));
        }
    };
    Ok(Prepared {
        base,
        body,
        idempotency_key,
    })
}

/// `{"kind": "arize_task_run", "task": ..., "options": ...}` or `{..., "run_id": ...}`.
fn run_body(
    task: Option<&String>,
    run_id: Option<&String>,
    options: Option<&[u8]>,
) -> Result<Bytes, SubmitError> {
    let options = options
        .map(serde_json::from_slice::<serde_json::Value>)
        .transpose()
        .map_err(|e| SubmitError::Options {
            what: "--options".to_owned(),
            problem: e.to_string(),
        })?;
    let body = match (task, run_id, options) {
        (Some(task), None, options) => {
            serde_json::json!({"kind": "arize_task_run", "task": task, "options": options})
        }
        (None, Some(run_id), None) => {
            serde_json::json!({"kind": "arize_task_run", "run_id": run_id})
        }
        (None, Some(_), Some(_)) => {
            return Err(SubmitError::Usage(
                "--options go with --task (a trigger), not with --run-id",
            ));
        }
        _ => {
            return Err(SubmitError::Usage(
                "--kind arize_task_run needs --task ID (trigger a run) or --run-id ID (watch one)",
            ));
        }
    };
    Ok(Bytes::from(body.to_string()))
}

/// `--url` without a trailing slash, so paths can be appended.
fn api_base(url: &str) -> Result<String, SubmitError> {
    let problem = |problem: &str| SubmitError::Url {
        url: url.to_owned(),
        problem: problem.to_owned(),
    };
    let parsed = Url::parse(url).map_err(|e| problem(&e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
        return Err(problem("expected http://HOST:PORT or https://HOST:PORT"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(problem("must not have a query or a fragment"));
    }
    Ok(parsed.as_str().trim_end_matches('/').to_owned())
}

fn display_path(path: &Path) -> String {
    if path == Path::new("-") {
        "stdin".to_owned()
    } else {
        path.display().to_string()
    }
}

async fn read_input(path: &Path) -> Result<Vec<u8>, SubmitError> {
    let read = if path == Path::new("-") {
        let mut buffer = Vec::new();
        tokio::io::stdin()
            .read_to_end(&mut buffer)
            .await
            .map(|_| buffer)
    } else {
        tokio::fs::read(path).await
    };
    read.map_err(|source| SubmitError::Read {
        path: display_path(path),
        source,
    })
}

/// The dataset errors, worded for a file rather than a request body.
fn dataset_problem(error: DatasetError) -> String {
    match error {
        DatasetError::Empty => {
            "no items: the file is empty or holds an empty array; send at least one item".to_owned()
        }
        DatasetError::NotJson(message) => format!("not a valid JSON array: {message}"),
        other => other.to_string(),
    }
}

/// The options as given (trimmed), after checking they are one JSON object without `dataset`.
fn check_options(what: &str, raw: &[u8]) -> Result<Vec<u8>, SubmitError> {
    let problem = |problem: String| SubmitError::Options {
        what: what.to_owned(),
        problem,
    };
    let object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(raw).map_err(|e| problem(format!("must be a JSON object: {e}")))?;
    if object.contains_key(batching::DATASET) {
        return Err(problem(
            "must not contain `dataset`; the dataset is the FILE argument".to_owned(),
        ));
    }
    Ok(raw.trim_ascii().to_vec())
}

/// `{"kind": "...", "dataset": <dataset>, "options": <options>}` from raw bytes.
fn request_body(kind: JobKind, dataset: &[u8], options: Option<&[u8]>) -> Bytes {
    let options_len = options.map_or(0, |o| o.len() + 14);
    let mut out = BytesMut::with_capacity(dataset.len() + options_len + 48);
    out.put_slice(br#"{"kind": ""#);
    out.put_slice(kind.as_str().as_bytes());
    out.put_slice(br#"", "dataset": "#);
    out.put_slice(dataset);
    if let Some(options) = options {
        out.put_slice(br#", "options": "#);
        out.put_slice(options);
    }
    out.put_u8(b'}');
    out.freeze()
}

/// The `202` (or idempotent `200`) answer of `POST /v1/jobs`.
#[derive(Debug, Deserialize)]
struct Accepted {
    job_id: String,
    #[serde(default)]
    total_items: Option<u64>,
    #[serde(default)]
    batches: Option<u64>,
}

/// `{"error": {"code", "message"}}`.
#[derive(Debug, Deserialize)]
struct ErrorEnvelope {
    error: ErrorDetail,
}

#[derive(Debug, Deserialize)]
struct ErrorDetail {
    code: String,
    message: String,
}

async fn submit(args: &SubmitArgs) -> Result<u8, SubmitError> {
    let prepared = prepare(args).await?;
    let client = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .user_agent(concat!("evalgate-submit/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(SubmitError::Client)?;

    let action = "submitting the job";
    let mut request = client
        .post(format!("{}/v1/jobs", prepared.base))
        .timeout(REQUEST_TIMEOUT)
        .header(header::CONTENT_TYPE, "application/json")
        .body(prepared.body);
    if let Some(key) = prepared.idempotency_key {
        request = request.header("idempotency-key", key);
    }
    let response = request.send().await.map_err(|e| transport(action, &e))?;
    let status = response.status();
    let answer = response.bytes().await.map_err(|e| transport(action, &e))?;
    if !status.is_success() {
        return Err(server_error(action, status, &answer));
    }
    let accepted: Accepted = serde_json::from_slice(&answer).map_err(|e| protocol(action, &e))?;
    let job_id = JobId::parse(&accepted.job_id).ok_or_else(|| SubmitError::Protocol {
        action: action.to_owned(),
        reason: format!("{:?} is not an evalgate job id", accepted.job_id),
    })?;
    say(&format!(
        "evalgate submit: job {job_id} {} ({} items, {} batches)",
        if status == StatusCode::OK {
            "already exists (same idempotency key and body)"
        } else {
            "accepted"
        },
        accepted.total_items.unwrap_or_default(),
        accepted.batches.unwrap_or_default(),
    ));
    if !args.wait {
        write_stdout(&answer)?;
        return Ok(0);
    }

    let jobs = format!("{}/v1/jobs/{job_id}", prepared.base);
    let finish = follow(
        &client,
        &jobs,
        job_id.as_str(),
        accepted.total_items.unwrap_or_default(),
    )
    .await?;
    let result = fetch_result(&client, &jobs).await?;
    match &args.output {
        Some(path) => {
            tokio::fs::write(path, &result)
                .await
                .map_err(|source| SubmitError::Write {
                    path: path.display().to_string(),
                    source,
                })?;
            say(&format!(
                "evalgate submit: result written to {}",
                path.display()
            ));
        }
        None => write_stdout(&result)?,
    }
    let error = finish.error.map(|e| format!(": {e}")).unwrap_or_default();
    say(&format!(
        "evalgate submit: job {job_id} {}{error}",
        finish.state.as_str()
    ));
    Ok(match finish.state {
        JobState::Completed => 0,
        JobState::CompletedWithErrors => EX_COMPLETED_WITH_ERRORS,
        JobState::Queued | JobState::Running | JobState::Failed | JobState::Cancelled => 1,
    })
}

fn transport(action: &str, error: &reqwest::Error) -> SubmitError {
    SubmitError::Transport {
        action: action.to_owned(),
        reason: ErrorChain(error).to_string(),
    }
}

fn protocol(action: &str, error: &serde_json::Error) -> SubmitError {
    SubmitError::Protocol {
        action: action.to_owned(),
        reason: error.to_string(),
    }
}

/// The server's `{"error": {"code", "message"}}`, or the start of whatever it sent instead.
fn server_error(action: &str, status: StatusCode, body: &[u8]) -> SubmitError {
    let message = if let Ok(ErrorEnvelope { error }) = serde_json::from_slice(body) {
        format!("{}: {}", error.code, error.message)
    } else {
        let excerpt: String = String::from_utf8_lossy(body).chars().take(300).collect();
        if excerpt.trim().is_empty() {
            "(no body)".to_owned()
        } else {
            excerpt
        }
    };
    SubmitError::Server {
        action: action.to_owned(),
        status,
        message,
    }
}

/// Writes `bytes` and a newline to stdout.
fn write_stdout(bytes: &[u8]) -> Result<(), SubmitError> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush())
        .map_err(|source| SubmitError::Write {
            path: "stdout".to_owned(),
            source,
        })
}

/// One line on stderr; there is nowhere else to report a failure to write it.
fn say(line: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{line}");
}

/// How the job ended.
#[derive(Debug)]
struct Finish {
    state: JobState,
    error: Option<String>,
}

/// `data` of a `progress` event: the job status (`GET /v1/jobs/{id}`), the fields shown.
#[derive(Debug, Deserialize)]
struct ProgressData {
    status: String,
    #[serde(default)]
    progress_percent: f64,
    #[serde(default)]
    current_item: u64,
    #[serde(default)]
    total_items: u64,
}

/// `data` of a `batch` event.
#[derive(Debug, Deserialize)]
struct BatchData {
    index: u64,
    status: String,
    #[serde(default)]
    items: Option<[u64; 2]>,
    #[serde(default)]
    error: Option<String>,
}

/// `data` of the final `completed|failed|cancelled` event.
#[derive(Debug, Deserialize)]
struct FinalData {
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

/// The progress bar on a terminal; otherwise one stderr line per batch event.
#[derive(Debug)]
struct Display {
    bar: ProgressBar,
}

impl Display {
    fn new(total_items: u64) -> Self {
        if !std::io::stderr().is_terminal() {
            return Self {
                bar: ProgressBar::hidden(),
            };
        }
        let bar = ProgressBar::with_draw_target(Some(total_items), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} items {msg}",
        ) {
            bar.set_style(style);
        }
        bar.enable_steady_tick(Duration::from_millis(200));
        Self { bar }
    }

    fn progress(&self, data: &ProgressData) {
        self.bar.set_length(data.total_items);
        self.bar
            .set_position(data.current_item.min(data.total_items));
        self.bar
            .set_message(format!("{:.1}% {}", data.progress_percent, data.status));
    }

    fn line(&self, line: &str) {
        if self.bar.is_hidden() {
            say(line);
        } else {
            self.bar.println(line);
        }
    }
}

impl Drop for Display {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}

/// What one connection to the event stream came to.
#[derive(Debug)]
enum Attempt {
    Finished(Finish),
    /// Ended or broke before the final event.
    Dropped {
        reason: String,
        delivered: bool,
        retry_after: Option<Duration>,
    },
}

/// Follows `GET {jobs}/events` until the final event, reconnecting with `Last-Event-ID`.
async fn follow(
    client: &reqwest::Client,
    jobs: &str,
    job_id: &str,
    total_items: u64,
) -> Result<Finish, SubmitError> {
    let display = Display::new(total_items);
    // `0` replays every stored event of the job, so batches that moved before we connected are
    // shown too; afterwards, the id of the last event seen.
    let mut last_id = "0".to_owned();
    let mut last_status = None;
    let mut failures = 0;
    loop {
        match stream_once(client, jobs, &mut last_id, &mut last_status, &display).await? {
            Attempt::Finished(finish) => return Ok(finish),
            Attempt::Dropped {
                reason,
                delivered,
                retry_after,
            } => {
                // The server closes the stream of a job that was already over after its snapshot.
                if let Some(state) = last_status.filter(|s: &JobState| s.is_terminal()) {
                    return Ok(Finish { state, error: None });
                }
                failures = if delivered { 1 } else { failures + 1 };
                if failures >= STREAM_ATTEMPTS {
                    return Err(SubmitError::Stream {
                        job_id: job_id.to_owned(),
                        attempts: failures,
                        reason,
                        status_url: jobs.to_owned(),
                    });
                }
                let delay = BACKOFF.retry(failures, retry_after, &mut rand::rng());
                display.line(&format!(
                    "event stream dropped ({reason}); reconnecting in {} ms",
                    delay.as_millis()
                ));
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// One connection: open the stream, apply every event, report how it ended.
async fn stream_once(
    client: &reqwest::Client,
    jobs: &str,
    last_id: &mut String,
    last_status: &mut Option<JobState>,
    display: &Display,
) -> Result<Attempt, SubmitError> {
    let action = "following the job";
    let dropped = |reason: String, delivered: bool| Attempt::Dropped {
        reason,
        delivered,
        retry_after: None,
    };
    let request = client
        .get(format!("{jobs}/events"))
        .header(header::ACCEPT, "text/event-stream")
        .header("last-event-id", last_id.as_str())
        .send();
    let response = match tokio::time::timeout(STREAM_OPEN_TIMEOUT, request).await {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => return Ok(dropped(ErrorChain(&error).to_string(), false)),
        Err(_) => return Ok(dropped("no answer".to_owned(), false)),
    };
    let status = response.status();
    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| retry::parse_retry_after(v, SystemTime::now()));
        return Ok(Attempt::Dropped {
            reason: format!("evalgate answered {status}"),
            delivered: false,
            retry_after,
        });
    }
    if !status.is_success() {
        let body = response.bytes().await.unwrap_or_default();
        return Err(server_error(action, status, &body));
    }

    let mut events = std::pin::pin!(idle_limited(response).eventsource());
    let mut delivered = false;
    loop {
        let event = match events.next().await {
            None => return Ok(dropped("the stream ended".to_owned(), delivered)),
            Some(Err(error)) => return Ok(dropped(error.to_string(), delivered)),
            Some(Ok(event)) => event,
        };
        delivered = true;
        if !event.id.is_empty() {
            last_id.clone_from(&event.id);
        }
        if let Some(finish) = apply(&event, last_status, display) {
            return Ok(Attempt::Finished(finish));
        }
    }
}

/// Applies one event to the display; the final event ends the job.
fn apply(event: &Event, last_status: &mut Option<JobState>, display: &Display) -> Option<Finish> {
    match event.event.as_str() {
        "progress" => {
            if let Ok(data) = serde_json::from_str::<ProgressData>(&event.data) {
                display.progress(&data);
                *last_status = JobState::parse(&data.status);
            }
            None
        }
        "batch" => {
            if let Ok(data) = serde_json::from_str::<BatchData>(&event.data) {
                display.line(&batch_line(&data));
            }
            None
        }
        name @ ("completed" | "failed" | "cancelled") => {
            let data = serde_json::from_str::<FinalData>(&event.data).ok();
            let by_name = match name {
                "failed" => JobState::Failed,
                "cancelled" => JobState::Cancelled,
                _ => JobState::Completed,
            };
            let state = data
                .as_ref()
                .and_then(|d| d.status.as_deref())
                .and_then(JobState::parse)
                .filter(|s| s.is_terminal())
                .unwrap_or(by_name);
            Some(Finish {
                state,
                error: data.and_then(|d| d.error),
            })
        }
        _ => None,
    }
}

fn batch_line(data: &BatchData) -> String {
    let items = data
        .items
        .map(|[start, end]| format!(" items {start}..{end}"))
        .unwrap_or_default();
    let error = data
        .error
        .as_deref()
        .map(|e| format!(": {e}"))
        .unwrap_or_default();
    format!("batch {}{items} {}{error}", data.index, data.status)
}

/// A chunk-level read failure of the event stream.
#[derive(Debug, thiserror::Error)]
enum ChunkError {
    #[error("nothing received for {0:?}")]
    Idle(Duration),
    #[error("{0}")]
    Transport(String),
}

/// The response body, failing once nothing (not even a keep-alive comment) arrives for
/// `STREAM_IDLE_TIMEOUT`.
fn idle_limited(response: reqwest::Response) -> impl Stream<Item = Result<Bytes, ChunkError>> {
    futures::stream::unfold(Some(response.bytes_stream()), |body| async move {
        let mut body = body?;
        match tokio::time::timeout(STREAM_IDLE_TIMEOUT, body.next()).await {
            Ok(Some(Ok(chunk))) => Some((Ok(chunk), Some(body))),
            Ok(Some(Err(error))) => Some((
                Err(ChunkError::Transport(ErrorChain(&error).to_string())),
                None,
            )),
            Ok(None) => None,
            Err(_) => Some((Err(ChunkError::Idle(STREAM_IDLE_TIMEOUT)), None)),
        }
    })
}

/// `GET {jobs}/result`, retrying transport errors and 5xx a few times.
async fn fetch_result(client: &reqwest::Client, jobs: &str) -> Result<Bytes, SubmitError> {
    let action = "fetching the result";
    let mut attempt = 0;
    loop {
        attempt += 1;
        let error = match client
            .get(format!("{jobs}/result"))
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
        {
            Ok(response) => {
                let status = response.status();
                match response.bytes().await {
                    Ok(body) if status.is_success() => return Ok(body),
                    Ok(body) => server_error(action, status, &body),
                    Err(error) => transport(action, &error),
                }
            }
            Err(error) => transport(action, &error),
        };
        let retryable = match &error {
            SubmitError::Server { status, .. } => status.is_server_error(),
            SubmitError::Transport { .. } => true,
            _ => false,
        };
        if !retryable || attempt >= RESULT_ATTEMPTS {
            return Err(error);
        }
        tokio::time::sleep(BACKOFF.retry(attempt, None, &mut rand::rng())).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_wraps_the_dataset_and_options_byte_for_byte() {
        let dataset = br#"[{"input": "caf\u00e9",  "n": 1.0e0}]"#;
        let body = request_body(
            JobKind::Evaluation,
            dataset,
            Some(br#"{"metrics": ["coherence"]}"#),
        );
        assert_eq!(
            &body[..],
            br#"{"kind": "evaluation", "dataset": [{"input": "caf\u00e9",  "n": 1.0e0}], "options": {"metrics": ["coherence"]}}"#
        );
        let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        assert_eq!(parsed["kind"], "evaluation");
        let bare = request_body(JobKind::FailureAnalysis, b"[1]", None);
        assert_eq!(
            &bare[..],
            br#"{"kind": "failure_analysis", "dataset": [1]}"#
        );
    }

    #[test]
    fn options_must_be_an_object_without_a_dataset() {
        assert_eq!(
            check_options("--options", b" {\"run_eval\": true}\n").ok(),
            Some(b"{\"run_eval\": true}".to_vec())
        );
        for bad in [&b"[1]"[..], b"true", b"{", b"{\"dataset\": []}"] {
            let error = check_options("--options", bad).err();
            assert_eq!(error.map(|e| e.exit_code()), Some(EX_USAGE));
        }
    }

    #[test]
    fn the_url_is_checked_and_loses_its_trailing_slash() {
        assert_eq!(
            api_base("http://127.0.0.1:8080/").ok().as_deref(),
            Some("http://127.0.0.1:8080")
        );
        assert_eq!(
            api_base("https://gw.example/evalgate/").ok().as_deref(),
            Some("https://gw.example/evalgate")
        );
        for bad in ["127.0.0.1:8080", "ftp://x", "http://x/?q=1", "nonsense"] {
            assert!(api_base(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_final_event_decides_the_state() {
        let display = Display {
            bar: ProgressBar::hidden(),
        };
        let mut status = None;
        let event = |name: &str, data: &str| Event {
            event: name.to_owned(),
            data: data.to_owned(),
            id: "7".to_owned(),
            retry: None,
        };
        let progress = event(
            "progress",
            r#"{"status": "running", "progress_percent": 40.0, "current_item": 10, "total_items": 25}"#,
        );
        assert!(apply(&progress, &mut status, &display).is_none());
        assert_eq!(status, Some(JobState::Running));
        let partial = event(
            "completed",
            r#"{"job_id": "egj_x", "status": "completed_with_errors", "error": "1 of 3 batches failed"}"#,
        );
        let finish = apply(&partial, &mut status, &display);
        assert_eq!(
            finish.as_ref().map(|f| f.state),
            Some(JobState::CompletedWithErrors)
        );
        assert_eq!(
            finish.and_then(|f| f.error).as_deref(),
            Some("1 of 3 batches failed")
        );
        let failed = apply(&event("failed", "not json"), &mut status, &display);
        assert_eq!(failed.map(|f| f.state), Some(JobState::Failed));
    }

    #[test]
    fn batch_lines_name_the_items_and_the_error() {
        let line = batch_line(&BatchData {
            index: 2,
            status: "failed".to_owned(),
            items: Some([20, 25]),
            error: Some("upstream answered 422".to_owned()),
        });
        assert_eq!(line, "batch 2 items 20..25 failed: upstream answered 422");
    }
}
