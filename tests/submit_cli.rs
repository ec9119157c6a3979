//! Black-box tests of `evalgate submit`: the real binary against a real evalgate (in process) in
//! front of the emulator: JSON and JSONL input, `--wait`, `--output`, exit codes, bad input,
//! and resuming a dropped event stream with `Last-Event-ID`.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions fail fast by design"
)]

mod common;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::{Output, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{body::Body, extract::State};
use bytes::Bytes;
use common::{TestApp, dataset, emulator_config};
use evalgate::config::{Config, FailurePolicy};
use futures::{FutureExt, StreamExt};
use http::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::{io::AsyncWriteExt, net::TcpListener, process::Command, task::JoinSet};
use valiqor_emulator::EmulatorConfig;

const BIN: &str = env!("CARGO_BIN_EXE_evalgate");

/// Small batches and fast polls, so jobs finish in well under a second.
fn fast(c: &mut Config) {
    c.batching.failure_analysis.max_items = 10;
    c.batching.evaluation.max_items = 10;
    c.batching.security_audit.max_items = 10;
    c.jobs.poll_initial_interval = Duration::from_millis(50);
    c.jobs.poll_max_interval = Duration::from_millis(200);
}

fn async_emulator() -> EmulatorConfig {
    EmulatorConfig {
        inline_max_items: 4,
        job_duration: Duration::from_millis(300),
        ..emulator_config()
    }
}

/// `evalgate submit ARGS` with a clean environment; `stdin` is piped in when given.
async fn submit(args: &[&str], stdin: Option<&[u8]>) -> Output {
    submit_within(args, stdin, Duration::from_mins(1)).await
}

/// `submit`, failing the test when it takes longer than `limit`.
async fn submit_within(args: &[&str], stdin: Option<&[u8]>, limit: Duration) -> Output {
    let mut command = Command::new(BIN);
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        if key.starts_with("EVALGATE") || key == "RUST_LOG" || key == "VALIQOR_API_KEY" {
            command.env_remove(key);
        }
    }
    command
        .arg("submit")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().expect("evalgate starts");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(input).await.unwrap();
        drop(pipe);
    }
    tokio::time::timeout(limit, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("evalgate submit finishes within {limit:?}"))
        .expect("evalgate submit ran")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout_json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            stderr(out)
        )
    })
}

fn write(dir: &Path, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

fn jsonl(items: &Value) -> String {
    let lines: Vec<String> = items
        .as_array()
        .unwrap()
        .iter()
        .map(Value::to_string)
        .collect();
    lines.join("\n") + "\n"
}

fn item_indexes(result: &Value) -> Vec<u64> {
    result["inputs"]
        .as_array()
        .unwrap_or_else(|| panic!("no inputs in {result}"))
        .iter()
        .map(|i| i["item_index"].as_u64().unwrap())
        .collect()
}

async fn get_json(app: &TestApp, path: &str) -> Value {
    let response = app.get(path).send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|_| panic!("{status}: {text}"))
}

#[tokio::test]
async fn a_json_array_with_wait_prints_the_merged_result_in_order() {
    let app = TestApp::spawn_with(async_emulator(), fast).await;
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "data.json", dataset(25).to_string());
    let out = submit(
        &[
            file.to_str().unwrap(),
            "--kind",
            "failure_analysis",
            "--wait",
            "--url",
            &app.api,
            "--options",
            r#"{"run_eval": true, "project_name": "p"}"#,
        ],
        None,
    )
    .await;
    let log = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{log}");
    let result = stdout_json(&out);
    assert_eq!(result["summary"]["total_items"], 25, "{result}");
    assert_eq!(item_indexes(&result), (0..25).collect::<Vec<u64>>());
    let job_id = result["run_id"].as_str().unwrap_or_default();
    assert!(
        log.contains("egj_") && (job_id.is_empty() || log.contains(job_id)),
        "{log}"
    );
    // stderr is not a terminal: no bar, one line per batch event instead.
    for batch in [
        "batch 0 items 0..10",
        "batch 1 items 10..20",
        "batch 2 items 20..25",
    ] {
        assert!(log.contains(&format!("{batch} completed")), "{log}");
    }
    assert!(log.contains("completed"), "{log}");

    // The options reached every upstream batch.
    let submits = app
        .emulator()
        .requests_to(&Method::POST, "/v2/failure-analysis/analyze");
    assert_eq!(submits.len(), 3);
    for request in &submits {
        let body = request.body_json().unwrap();
        assert_eq!(body["project_name"], "p");
        assert_eq!(body["run_eval"], true);
    }
}

#[tokio::test]
async fn jsonl_with_output_writes_the_file_and_forwards_items_byte_for_byte() {
    let app = TestApp::spawn_with(async_emulator(), fast).await;
    let dir = tempfile::tempdir().unwrap();
    // An item spelled the way a re-serialiser would change: escapes, spacing, a number format.
    let odd = r#"{"input": "caf\u00e9 \"q\"",   "output": "fail Lyon", "context": ["Paris"], "weight": 1.0e0}"#;
    let mut text = String::from("\r\n");
    text.push_str(&jsonl(&dataset(11)).replace('\n', "\r\n\r\n"));
    text.push_str(odd);
    text.push('\n');
    let file = write(dir.path(), "data.jsonl", text);
    let result_file = dir.path().join("result.json");
    let options = write(dir.path(), "options.json", r#"{"run_eval": false}"#);
    let out = submit(
        &[
            file.to_str().unwrap(),
            "--kind",
            "failure_analysis",
            "--wait",
            "--url",
            &app.api,
            "--options-file",
            options.to_str().unwrap(),
            "--output",
            result_file.to_str().unwrap(),
        ],
        None,
    )
    .await;
    let log = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(out.stdout.is_empty(), "the result goes to --output only");
    assert!(log.contains("result written to"), "{log}");
    let result: Value = serde_json::from_slice(&std::fs::read(&result_file).unwrap()).unwrap();
    assert_eq!(result["summary"]["total_items"], 12, "{result}");
    assert_eq!(item_indexes(&result), (0..12).collect::<Vec<u64>>());

    let submits = app
        .emulator()
        .requests_to(&Method::POST, "/v2/failure-analysis/analyze");
    assert_eq!(submits.len(), 2);
    let forwarded = submits
        .iter()
        .filter(|r| {
            r.body
                .windows(odd.len())
                .any(|window| window == odd.as_bytes())
        })
        .count();
    assert_eq!(forwarded, 1, "the odd item reached the upstream as written");
    assert!(
        submits
            .iter()
            .all(|r| r.body_json().unwrap()["run_eval"] == false)
    );
}

#[tokio::test]
async fn without_wait_stdin_is_read_and_the_accepted_answer_printed() {
    let app = TestApp::spawn_with(async_emulator(), fast).await;
    let input = jsonl(&dataset(14));
    let args = [
        "-",
        "--kind",
        "failure_analysis",
        "--url",
        &app.api,
        "--idempotency-key",
        "cli-key-1",
    ];
    let out = submit(&args, Some(input.as_bytes())).await;
    let log = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{log}");
    let accepted = stdout_json(&out);
    let id = accepted["job_id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("egj_"), "{accepted}");
    assert_eq!(accepted["total_items"], 14);
    assert_eq!(accepted["batches"], 2);
    assert!(log.contains(&id), "the job id is on stderr: {log}");

    // The same key and bytes again: the same job, announced as such.
    let again = submit(&args, Some(input.as_bytes())).await;
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    assert_eq!(stdout_json(&again)["job_id"], id.as_str());
    assert!(
        stderr(&again).contains("already exists"),
        "{}",
        stderr(&again)
    );

    // The job was real: it finishes with every item.
    let status = get_json(&app, &format!("/v1/jobs/{id}?wait=20s")).await;
    assert_eq!(status["status"], "completed", "{status}");
    assert_eq!(status["total_items"], 14);
}

#[tokio::test]
async fn a_failed_batch_exits_2_and_a_failed_job_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "data.json", dataset(25).to_string());
    let file = file.to_str().unwrap();

    // failure_policy = continue: one batch fails for good, the job completes with errors.
    let app = TestApp::spawn_with(async_emulator(), fast).await;
    app.emulator()
        .fail_next(1, StatusCode::UNPROCESSABLE_ENTITY);
    let out = submit(
        &[
            file,
            "--kind",
            "failure_analysis",
            "--wait",
            "--url",
            &app.api,
        ],
        None,
    )
    .await;
    let log = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{log}");
    assert!(log.contains("completed_with_errors"), "{log}");
    assert!(log.contains("failed: "), "the failed batch is named: {log}");
    let result = stdout_json(&out);
    assert_eq!(
        result["evalgate"]["batches"].as_array().map(Vec::len),
        Some(3),
        "{result}"
    );

    // failure_policy = fail-fast: the job fails.
    let app = TestApp::spawn_with(async_emulator(), |c| {
        fast(c);
        c.jobs.failure_policy = FailurePolicy::FailFast;
    })
    .await;
    app.emulator()
        .fail_next(1, StatusCode::UNPROCESSABLE_ENTITY);
    let out = submit(
        &[
            file,
            "--kind",
            "failure_analysis",
            "--wait",
            "--url",
            &app.api,
        ],
        None,
    )
    .await;
    let log = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(log.contains(" failed"), "{log}");
}

#[tokio::test]
async fn server_errors_are_shown_with_their_code_and_exit_1() {
    let app = TestApp::spawn_with(async_emulator(), fast).await;
    let dir = tempfile::tempdir().unwrap();
    let first = write(dir.path(), "a.json", dataset(3).to_string());
    let second = write(dir.path(), "b.json", dataset(4).to_string());
    let run = |file: PathBuf| {
        let api = app.api.clone();
        async move {
            submit(
                &[
                    file.to_str().unwrap(),
                    "--kind",
                    "evaluation",
                    "--url",
                    &api,
                    "--idempotency-key",
                    "same",
                ],
                None,
            )
            .await
        }
    };
    assert_eq!(run(first).await.status.code(), Some(0));
    let conflict = run(second).await;
    let log = stderr(&conflict);
    assert_eq!(conflict.status.code(), Some(1), "{log}");
    assert!(log.contains("409") && log.contains("conflict: "), "{log}");

    // Nothing listens: a clear transport error, exit 1.
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let file = write(dir.path(), "c.json", dataset(1).to_string());
    let out = submit(
        &[
            file.to_str().unwrap(),
            "--kind",
            "evaluation",
            "--url",
            &dead_url,
        ],
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot reach evalgate"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn bad_input_exits_64_before_anything_is_sent() {
    let app = TestApp::spawn_with(async_emulator(), fast).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let good = write(d, "good.json", dataset(2).to_string());
    let bad_line = write(
        d,
        "bad.jsonl",
        "{\"input\": \"a\"}\n{\"input\": \"b\"}\n{\"input\": oops}\n",
    );
    let bad_array = write(d, "bad.json", "[\n  {\"input\": \"a\"},\n  {input}\n]\n");
    let empty = write(d, "empty.jsonl", "\n  \n");
    let empty_array = write(d, "empty.json", " [ ] ");
    let bad_options = write(d, "options.json", "[1]");
    let good = good.to_str().unwrap();
    let missing = d.join("missing.json");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![missing.to_str().unwrap(), "--kind", "evaluation"],
            "cannot read",
        ),
        (
            vec![bad_line.to_str().unwrap(), "--kind", "evaluation"],
            "line 3, column",
        ),
        (
            vec![bad_array.to_str().unwrap(), "--kind", "evaluation"],
            "line 3",
        ),
        (
            vec![empty.to_str().unwrap(), "--kind", "evaluation"],
            "no items",
        ),
        (
            vec![empty_array.to_str().unwrap(), "--kind", "evaluation"],
            "no items",
        ),
        (vec![good, "--kind", "nope"], "nope"),
        (vec![good], "--kind"),
        (
            vec![good, "--kind", "evaluation", "--options", "[1]"],
            "--options",
        ),
        (
            vec![
                good,
                "--kind",
                "evaluation",
                "--options-file",
                bad_options.to_str().unwrap(),
            ],
            "options.json",
        ),
        (
            vec![
                good,
                "--kind",
                "evaluation",
                "--options",
                r#"{"dataset": []}"#,
            ],
            "dataset",
        ),
        (
            vec![good, "--kind", "evaluation", "--output", "x.json"],
            "--wait",
        ),
        (
            vec![good, "--kind", "evaluation", "--idempotency-key", ""],
            "idempotency",
        ),
    ];
    // A listener nobody should connect to: after each run, nothing may be waiting on it.
    let sentinel = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sentinel_url = format!("http://{}", sentinel.local_addr().unwrap());
    for (args, expected) in &cases {
        for url in [app.api.as_str(), sentinel_url.as_str()] {
            let mut all = args.clone();
            all.extend(["--url", url]);
            let out = submit(&all, None).await;
            let log = stderr(&out);
            assert_eq!(out.status.code(), Some(64), "{all:?}: {log}");
            assert!(log.contains(expected), "{all:?}: {expected:?} not in {log}");
            assert!(out.stdout.is_empty(), "{all:?}");
            assert!(
                sentinel.accept().now_or_never().is_none(),
                "{all:?} connected to the server"
            );
        }
    }
    let bad_url = submit(&[good, "--kind", "evaluation", "--url", "nonsense"], None).await;
    assert_eq!(bad_url.status.code(), Some(64), "{}", stderr(&bad_url));

    assert!(app.emulator().requests().is_empty());
    let jobs = get_json(&app, "/v1/jobs").await;
    assert_eq!(jobs["jobs"], json!([]), "no job was created");
}

/// A proxy in front of evalgate that cuts the first event stream right after its first `batch`
/// event and records the `Last-Event-ID` of every event-stream request.
#[derive(Clone)]
struct CuttingProxy {
    target: String,
    client: reqwest::Client,
    last_event_ids: Arc<Mutex<Vec<Option<String>>>>,
}

async fn proxy(
    State(proxy): State<CuttingProxy>,
    request: axum::extract::Request,
) -> axum::response::Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut forward = proxy
        .client
        .request(parts.method.clone(), format!("{}{path}", proxy.target))
        .body(body);
    for (name, value) in &parts.headers {
        if name != http::header::HOST {
            forward = forward.header(name, value);
        }
    }
    let answer = forward.send().await.unwrap();
    let mut response = axum::response::Response::builder().status(answer.status());
    for (name, value) in answer.headers() {
        response = response.header(name, value);
    }
    let body = if parts.uri.path().ends_with("/events") {
        let first = {
            let mut seen = proxy.last_event_ids.lock().unwrap();
            seen.push(
                parts
                    .headers
                    .get("last-event-id")
                    .map(|v| v.to_str().unwrap().to_owned()),
            );
            seen.len() == 1
        };
        if first {
            Body::from_stream(cut_after_first_batch_event(answer.bytes_stream()))
        } else {
            Body::from_stream(answer.bytes_stream())
        }
    } else {
        Body::from_stream(answer.bytes_stream())
    };
    response.body(body).unwrap()
}

/// Passes the stream through up to the end of its first `batch` event, then ends it.
fn cut_after_first_batch_event(
    stream: impl futures::Stream<Item = reqwest::Result<Bytes>> + Send + Unpin + 'static,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    futures::stream::unfold(Some((stream, String::new())), |state| async move {
        let (mut stream, mut seen) = state?;
        let chunk = match stream.next().await? {
            Ok(chunk) => chunk,
            Err(error) => return Some((Err(std::io::Error::other(error)), None)),
        };
        let start = seen.len();
        seen.push_str(std::str::from_utf8(&chunk).unwrap());
        match first_batch_event_end(&seen) {
            Some(end) => Some((Ok(chunk.slice(..end - start)), None)),
            None => Some((Ok(chunk), Some((stream, seen)))),
        }
    })
}

/// Where the first complete `batch` event of an event-stream text ends.
fn first_batch_event_end(text: &str) -> Option<usize> {
    let mut event_start = 0;
    for (at, separator) in text.match_indices("\n\n") {
        let end = at + separator.len();
        let is_batch = text[event_start..at]
            .lines()
            .any(|line| line.strip_prefix("event:").map(str::trim) == Some("batch"));
        if is_batch {
            return Some(end);
        }
        event_start = end;
    }
    None
}

#[tokio::test]
async fn a_dropped_event_stream_is_resumed_with_last_event_id() {
    let app = TestApp::spawn_with(async_emulator(), fast).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_url = format!("http://{}", listener.local_addr().unwrap());
    let state = CuttingProxy {
        target: app.api.clone(),
        client: reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .unwrap(),
        last_event_ids: Arc::default(),
    };
    let router = axum::Router::new()
        .fallback(proxy)
        .with_state(state.clone());
    let mut server = JoinSet::new();
    server.spawn(async move { axum::serve(listener, router).await });

    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "data.json", dataset(25).to_string());
    let out = submit(
        &[
            file.to_str().unwrap(),
            "--kind",
            "failure_analysis",
            "--wait",
            "--url",
            &proxy_url,
        ],
        None,
    )
    .await;
    let log = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(log.contains("reconnecting"), "{log}");
    let result = stdout_json(&out);
    assert_eq!(item_indexes(&result), (0..25).collect::<Vec<u64>>());

    let ids = state.last_event_ids.lock().unwrap().clone();
    assert!(ids.len() >= 2, "{ids:?}");
    assert_eq!(
        ids[0].as_deref(),
        Some("0"),
        "the first connection replays everything"
    );
    let resumed: i64 = ids[1].as_deref().unwrap().parse().unwrap();
    assert!(resumed > 0, "resumed after the cut event: {ids:?}");
    // Resuming replays nothing twice: each batch transition is shown once.
    let mut lines: HashMap<&str, usize> = HashMap::new();
    for line in log.lines().filter(|l| l.starts_with("batch ")) {
        *lines.entry(line).or_default() += 1;
    }
    assert!(lines.values().all(|&n| n == 1), "{lines:#?}");
    for batch in [
        "batch 0 items 0..10",
        "batch 1 items 10..20",
        "batch 2 items 20..25",
    ] {
        assert!(log.contains(&format!("{batch} completed")), "{log}");
    }
}

#[tokio::test]
async fn a_fifty_megabyte_jsonl_file_goes_through_end_to_end() {
    let app = TestApp::spawn_with(async_emulator(), |c| {
        c.jobs.poll_initial_interval = Duration::from_millis(50);
        c.jobs.poll_max_interval = Duration::from_millis(200);
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let pad = "x".repeat(100 * 1024);
    let items: Vec<String> = (0..500)
        .map(|i| {
            json!({"input": format!("question {i} {pad}"), "output": format!("answer {i}"), "context": ["c"]})
                .to_string()
        })
        .collect();
    let text = items.join("\n") + "\n";
    assert!(text.len() > 50_000_000, "{}", text.len());
    let file = write(dir.path(), "big.jsonl", text);
    let result_file = dir.path().join("result.json");
    let out = submit_within(
        &[
            file.to_str().unwrap(),
            "--kind",
            "failure_analysis",
            "--wait",
            "--url",
            &app.api,
            "--output",
            result_file.to_str().unwrap(),
        ],
        None,
        Duration::from_mins(3),
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let result: Value = serde_json::from_slice(&std::fs::read(&result_file).unwrap()).unwrap();
    assert_eq!(
        result["summary"]["total_items"], 500,
        "{}",
        result["summary"]
    );
    assert_eq!(item_indexes(&result), (0..500).collect::<Vec<u64>>());
    // Split by the byte limit: no upstream batch is over it.
    let limit = Config::for_tests("http://127.0.0.1:1", "k", |_| {})
        .batching
        .failure_analysis
        .max_bytes;
    let submits = app
        .emulator()
        .requests_to(&Method::POST, "/v2/failure-analysis/analyze");
    assert!(submits.len() >= 50_000_000 / limit, "{}", submits.len());
    for request in &submits {
        assert!(request.body.len() <= limit + 4096, "{}", request.body.len());
    }
}
