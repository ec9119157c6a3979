//! Crash and restart of the real binary in the middle of a managed job: after SIGKILL every batch
//! the upstream had accepted is polled, never resubmitted, and the job completes with every item
//! exactly once; after SIGTERM the drain is visible on `/readyz` and the job completes too.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions fail fast by design"
)]

mod common;
#[path = "common/webhook_sink.rs"]
mod webhook_sink;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use common::{CALLER_KEY, UPSTREAM_KEY, dataset, emulator_config};
use http::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    sync::mpsc,
    task::JoinSet,
};
use valiqor_emulator::{Emulator, EmulatorConfig, EmulatorHandle, Faults, RunningEmulator};

const BIN: &str = env!("CARGO_BIN_EXE_evalgate");
const SUBMIT: &str = "/v2/failure-analysis/analyze";
/// Every bounded wait in this file.
const LIMIT: Duration = Duration::from_secs(20);
/// 55 items in batches of 10: six batches, the last one of 5 (still above `inline_max_items`).
const ITEMS: usize = 55;

/// A running `evalgate` process and its log lines.
struct Gate {
    child: Child,
    api: String,
    admin: String,
    client: reqwest::Client,
    lines: mpsc::UnboundedReceiver<String>,
    log: Vec<String>,
    _readers: JoinSet<()>,
}

impl Gate {
    /// Starts the binary on `store`, in front of `upstream`, with `extra` settings; returns once
    /// it listens and `/readyz` answers 200.
    async fn start(store: &Path, upstream: &EmulatorHandle, extra: &[(&str, &str)]) -> Self {
        let mut command = Command::new(BIN);
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy().into_owned();
            if key.starts_with("EVALGATE") || key == "RUST_LOG" || key == "VALIQOR_API_KEY" {
                command.env_remove(key);
            }
        }
        command
            .env("EVALGATE__SERVER__LISTEN", "127.0.0.1:0")
            .env("EVALGATE__SERVER__ADMIN_LISTEN", "127.0.0.1:0")
            .env("EVALGATE__VALIQOR__BASE_URL", upstream.base_url())
            .env("EVALGATE__VALIQOR__API_KEY", UPSTREAM_KEY)
            .env("EVALGATE__STORE__PATH", store)
            .env("EVALGATE__BATCHING__FAILURE_ANALYSIS__MAX_ITEMS", "10")
            .env("EVALGATE__JOBS__POLL_INITIAL_INTERVAL", "50ms")
            .env("EVALGATE__JOBS__POLL_MAX_INTERVAL", "200ms")
            .envs(extra.iter().copied())
            .kill_on_drop(true)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("evalgate starts");
        let (tx, lines) = mpsc::unbounded_channel();
        let mut readers = JoinSet::new();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            let mut reader = BufReader::new(stream).lines();
            readers.spawn(async move {
                while let Ok(Some(line)) = reader.next_line().await {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let mut gate = Self {
            child,
            api: String::new(),
            admin: String::new(),
            client,
            lines,
            log: Vec::new(),
            _readers: readers,
        };
        let listening = gate.wait_for_log("listening").await;
        gate.api = format!("http://{}", listening["listen"].as_str().unwrap());
        gate.admin = format!("http://{}", listening["admin_listen"].as_str().unwrap());
        let (client, admin) = (gate.client.clone(), gate.admin.clone());
        common::eventually(LIMIT, || async {
            client
                .get(format!("{admin}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == StatusCode::OK)
        })
        .await;
        gate
    }

    /// Reads log lines until a JSON one has `message == wanted`.
    async fn wait_for_log(&mut self, wanted: &str) -> Value {
        let deadline = tokio::time::Instant::now() + LIMIT;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.recv())
                .await
                .unwrap_or_else(|_| panic!("no {wanted:?} log line; saw:\n{}", self.log()))
                .unwrap_or_else(|| panic!("evalgate exited; log:\n{}", self.log()));
            self.log.push(line.clone());
            if let Ok(value) = serde_json::from_str::<Value>(&line)
                && value["message"] == wanted
            {
                return value;
            }
        }
    }

    /// Everything logged so far (for failure messages).
    fn log(&mut self) -> String {
        while let Ok(line) = self.lines.try_recv() {
            self.log.push(line);
        }
        self.log.join("\n")
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.client
            .get(format!("{}{path}", self.api))
            .bearer_auth(CALLER_KEY)
    }

    async fn submit(&self, n: usize) -> String {
        let response = self
            .client
            .post(format!("{}/v1/jobs", self.api))
            .bearer_auth(CALLER_KEY)
            .json(&json!({"kind": "failure_analysis", "dataset": dataset(n), "options": {"run_eval": true}}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        json(response).await["job_id"].as_str().unwrap().to_owned()
    }

    async fn status(&self, id: &str) -> Value {
        json(self.get(&format!("/v1/jobs/{id}")).send().await.unwrap()).await
    }

    /// Polls the status until `done` holds for it (bounded).
    async fn status_until(&mut self, id: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + LIMIT;
        loop {
            let status = self.status(id).await;
            if done(&status) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "condition not met in time: {status}\nlog:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Long-polls the job until it is terminal (bounded).
    async fn finished(&mut self, id: &str) -> Value {
        let deadline = Instant::now() + LIMIT;
        loop {
            let status = json(
                self.get(&format!("/v1/jobs/{id}?wait=20s"))
                    .send()
                    .await
                    .unwrap(),
            )
            .await;
            if is_terminal(&status) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "job not finished in time: {status}\nlog:\n{}",
                self.log()
            );
        }
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("still running").to_string();
        let sent = std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap();
        assert!(sent.success(), "kill {signal} {pid}");
    }

    /// Waits (bounded) for the process to exit; its exit code, `None` when killed by a signal.
    async fn exited(&mut self) -> Option<i32> {
        tokio::time::timeout(LIMIT, self.child.wait())
            .await
            .expect("evalgate exits in time")
            .unwrap()
            .code()
    }
}

async fn json(response: reqwest::Response) -> Value {
    let status = response.status();
    let text = response.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|_| panic!("{status}: {text}"))
}

fn is_terminal(status: &Value) -> bool {
    ["completed", "completed_with_errors", "failed", "cancelled"]
        .contains(&status["status"].as_str().unwrap_or_default())
}

fn batches(status: &Value) -> &Vec<Value> {
    status["batches"].as_array().unwrap()
}

/// One batch as the store holds it.
#[derive(Debug, Clone)]
struct StoredBatch {
    items: (usize, usize),
    state: String,
    upstream_job_id: Option<String>,
}

/// The job's state and its batches by index, read from the `SQLite` file of a stopped process.
fn read_store(path: &Path, job: &str) -> (String, BTreeMap<u32, StoredBatch>) {
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let state: String = conn
        .query_row("SELECT state FROM jobs WHERE id = ?1", [job], |row| {
            row.get(0)
        })
        .unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT idx, item_start, item_end, state, upstream_job_id FROM batches
             WHERE job_id = ?1 ORDER BY idx",
        )
        .unwrap();
    let batches = stmt
        .query_map([job], |row| {
            Ok((
                row.get::<_, u32>(0)?,
                StoredBatch {
                    items: (
                        usize::try_from(row.get::<_, i64>(1)?).unwrap(),
                        usize::try_from(row.get::<_, i64>(2)?).unwrap(),
                    ),
                    state: row.get(3)?,
                    upstream_job_id: row.get(4)?,
                },
            ))
        })
        .unwrap()
        .collect::<Result<BTreeMap<_, _>, _>>()
        .unwrap();
    (state, batches)
}

/// The dataset items (by their number in "question N") of every submit the emulator received.
fn submitted_items(emulator: &EmulatorHandle) -> Vec<Vec<usize>> {
    emulator
        .requests_to(&Method::POST, SUBMIT)
        .iter()
        .map(|r| {
            r.body_json().unwrap()["dataset"]
                .as_array()
                .unwrap()
                .iter()
                .map(|item| {
                    item["input"]
                        .as_str()
                        .unwrap()
                        .strip_prefix("question ")
                        .unwrap()
                        .parse()
                        .unwrap()
                })
                .collect()
        })
        .collect()
}

/// How many submits carried exactly the items `start..end`.
fn submits_of(submits: &[Vec<usize>], (start, end): (usize, usize)) -> usize {
    let wanted: Vec<usize> = (start..end).collect();
    submits.iter().filter(|s| **s == wanted).count()
}

/// The merged result holds every item exactly once, in dataset order.
async fn assert_complete_result(gate: &Gate, id: &str) {
    let response = gate
        .get(&format!("/v1/jobs/{id}/result"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let result = json(response).await;
    let inputs: Vec<(u64, String)> = result["inputs"]
        .as_array()
        .unwrap_or_else(|| panic!("no inputs in the result: {result}"))
        .iter()
        .map(|i| {
            (
                i["item_index"].as_u64().unwrap(),
                i["input_text"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let expected: Vec<(u64, String)> = (0..ITEMS)
        .map(|i| (i as u64, format!("question {i}")))
        .collect();
    assert_eq!(inputs, expected);
    assert_eq!(result["summary"]["total_items"], ITEMS, "{result}");
}

/// Upstream jobs take 2 s (so a job is mid-flight for a while); each batch of 10 is async.
async fn emulator(job_duration: Duration, faults: Faults) -> RunningEmulator {
    Emulator::spawn(EmulatorConfig {
        inline_max_items: 4,
        job_duration,
        faults,
        ..emulator_config()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn sigkill_mid_job_then_restart_polls_accepted_batches_and_never_resubmits_them() {
    // 100 ms per upstream call and two calls at a time: when the first batch is accepted the
    // others are still being submitted or waiting, so the crash leaves every kind of batch.
    let upstream = emulator(
        Duration::from_secs(2),
        Faults {
            latency: Duration::from_millis(100),
            ..Faults::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let store: PathBuf = dir.path().join("evalgate.db");
    let mut first = Gate::start(&store, &upstream, &[("EVALGATE__JOBS__CONCURRENCY", "2")]).await;
    let id = first.submit(ITEMS).await;
    let before = first
        .status_until(&id, |s| {
            batches(s).iter().any(|b| b["upstream_job_id"].is_string())
        })
        .await;
    assert!(!is_terminal(&before), "{before}");
    first.signal("-KILL");
    assert_eq!(first.exited().await, None, "killed by SIGKILL");

    // What the crash left behind, straight from the store file.
    let (state, stored) = read_store(&store, &id);
    assert!(
        ["queued", "running"].contains(&state.as_str()),
        "job {state} at the crash"
    );
    assert_eq!(stored.len(), 6, "{stored:?}");
    let accepted: BTreeMap<u32, StoredBatch> = stored
        .iter()
        .filter(|(_, b)| b.upstream_job_id.is_some())
        .map(|(idx, b)| (*idx, b.clone()))
        .collect();
    assert!(!accepted.is_empty(), "{stored:?}");
    for (idx, batch) in &accepted {
        assert_eq!(batch.state, "running", "batch {idx}: {stored:?}");
    }
    let submits_before = submitted_items(&upstream);

    upstream.set_faults(Faults::default());
    let mut second = Gate::start(&store, &upstream, &[]).await;
    let status = second.finished(&id).await;
    assert_eq!(status["status"], "completed", "{status}\n{}", second.log());

    let submits = submitted_items(&upstream);
    for (idx, batch) in &accepted {
        assert_eq!(
            submits_of(&submits, batch.items),
            1,
            "batch {idx} ({:?}) had upstream job {:?} before the crash and was submitted again; \
             submits before the crash: {submits_before:?}, after: {submits:?}",
            batch.items,
            batch.upstream_job_id
        );
        let now = batches(&status)
            .iter()
            .find(|b| b["index"] == *idx)
            .unwrap_or_else(|| panic!("batch {idx} is gone: {status}"));
        assert_eq!(
            now["upstream_job_id"].as_str(),
            batch.upstream_job_id.as_deref(),
            "batch {idx} kept its upstream job"
        );
    }
    for batch in stored.values() {
        assert!(
            submits_of(&submits, batch.items) >= 1,
            "{:?} never submitted: {submits:?}",
            batch.items
        );
    }
    assert_complete_result(&second, &id).await;
}

#[tokio::test]
async fn sigterm_mid_job_drains_then_restart_completes_without_resubmitting() {
    let upstream = emulator(Duration::from_secs(4), Faults::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let store: PathBuf = dir.path().join("evalgate.db");
    let settings = [("EVALGATE__SERVER__SHUTDOWN_GRACE_PERIOD", "500ms")];
    let mut first = Gate::start(&store, &upstream, &settings).await;
    let id = first.submit(ITEMS).await;
    let before = first
        .status_until(&id, |s| {
            batches(s).iter().any(|b| b["upstream_job_id"].is_string())
        })
        .await;
    assert!(!is_terminal(&before), "{before}");

    // An open event stream keeps the API draining for the whole grace period.
    let mut stream = first
        .get(&format!("/v1/jobs/{id}/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    let first_chunk = tokio::time::timeout(LIMIT, stream.chunk())
        .await
        .expect("the event stream starts")
        .unwrap();
    assert!(first_chunk.is_some());

    first.signal("-TERM");
    let (client, admin) = (first.client.clone(), first.admin.clone());
    let mut draining = None;
    let deadline = Instant::now() + LIMIT;
    while draining.is_none() && Instant::now() < deadline {
        match client.get(format!("{admin}/readyz")).send().await {
            Ok(r) if r.status() == StatusCode::SERVICE_UNAVAILABLE => {
                draining = Some(json(r).await);
            }
            Ok(r) => assert_eq!(r.status(), StatusCode::OK),
            Err(error) => panic!("the admin port went away before /readyz said 503: {error}"),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let draining = draining.expect("/readyz turned 503 after SIGTERM");
    assert_eq!(draining["status"], "draining");
    assert_eq!(
        first.exited().await,
        Some(0),
        "clean exit:\n{}",
        first.log()
    );
    drop(stream);

    let (state, stored) = read_store(&store, &id);
    assert!(
        ["queued", "running"].contains(&state.as_str()),
        "the 4 s job was still running at the stop, not {state}"
    );
    assert!(
        stored.values().all(|b| b.state != "submitting"),
        "a graceful stop finishes the submits in flight: {stored:?}"
    );

    let mut second = Gate::start(&store, &upstream, &[]).await;
    let status = second.finished(&id).await;
    assert_eq!(status["status"], "completed", "{status}\n{}", second.log());
    let submits = submitted_items(&upstream);
    assert_eq!(submits.len(), 6, "every batch submitted once: {submits:?}");
    for batch in stored.values() {
        assert_eq!(submits_of(&submits, batch.items), 1, "{:?}", batch.items);
    }
    for (idx, batch) in &stored {
        if let Some(upstream_id) = &batch.upstream_job_id {
            let now = batches(&status)
                .iter()
                .find(|b| b["index"] == *idx)
                .unwrap();
            assert_eq!(now["upstream_job_id"].as_str(), Some(upstream_id.as_str()));
        }
    }
    assert_complete_result(&second, &id).await;
}

/// A webhook still undelivered when the process gets `SIGKILL` (the receiver failed its first
/// attempt) stays in the outbox and is delivered after the restart, with the same `webhook-id`.
#[tokio::test]
async fn a_pending_webhook_survives_sigkill_and_is_delivered_after_restart() {
    let upstream = emulator(Duration::from_millis(300), Faults::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let store: PathBuf = dir.path().join("evalgate.db");
    let mut sink = webhook_sink::WebhookSink::start().await;
    sink.answer_next(&[StatusCode::INTERNAL_SERVER_ERROR]);
    let (secret, secret_text) = evalgate::webhooks::signing::SigningSecret::generate();
    let settings = [
        ("EVALGATE__WEBHOOKS__ALLOWED_CIDRS", "[\"127.0.0.0/8\"]"),
        ("EVALGATE__WEBHOOKS__RETRY_SCHEDULE", "[\"2s\"]"),
    ];
    let mut gate = Gate::start(&store, &upstream.handle(), &settings).await;
    let response = gate
        .client
        .post(format!("{}/v1/jobs", gate.api))
        .json(&json!({"kind": "failure_analysis", "dataset": dataset(12), "webhook": {"url": sink.url, "secret": secret_text}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let id = json(response).await["job_id"].as_str().unwrap().to_owned();
    // The first attempt fails (500); the retry is due in about 2 s: kill before it.
    let first = sink.next(20).await;
    gate.signal("-KILL");
    assert_eq!(gate.exited().await, None, "killed by the signal");

    sink.answer_always(StatusCode::OK);
    let gate = Gate::start(&store, &upstream.handle(), &settings).await;
    let second = sink.next(20).await;
    assert_eq!(
        second.headers["webhook-id"], first.headers["webhook-id"],
        "the same message, resumed from the outbox"
    );
    let timestamp: i64 = second.headers["webhook-timestamp"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(evalgate::webhooks::signing::verify(
        &secret,
        second.headers["webhook-id"].to_str().unwrap(),
        timestamp,
        &second.body,
        second.headers["webhook-signature"].to_str().unwrap(),
    ));
    let body: Value = serde_json::from_slice(&second.body).unwrap();
    assert_eq!(body["data"]["job_id"], id);
    assert!(
        sink.quiet_for(500).await,
        "delivered once: nothing after the 2xx"
    );
    drop(gate);
}

/// A managed Arize task run: the run id is committed before the 202, so a SIGKILL right after it
/// and a restart poll the same run and never trigger the task again.
#[tokio::test]
async fn sigkill_after_an_arize_trigger_then_restart_polls_the_same_run_without_triggering_again() {
    const ARIZE_KEY: &str = "ak_restart_platform_key";
    let upstream = emulator(Duration::from_secs(1), Faults::default()).await;
    let arize = valiqor_emulator::ArizeEmulator::spawn(valiqor_emulator::ArizeConfig {
        api_key: Some(ARIZE_KEY.to_owned()),
        run_duration: Duration::from_secs(2),
        ..valiqor_emulator::ArizeConfig::default()
    })
    .await
    .unwrap();
    let task = arize.seed_task("restart", valiqor_emulator::ArizeTaskType::CodeEvaluation);
    let base = arize.base_url();
    let extra = [
        ("EVALGATE__ARIZE__LISTEN", "127.0.0.1:0"),
        ("EVALGATE__ARIZE__BASE_URL", base.as_str()),
        ("EVALGATE__ARIZE__API_KEY", ARIZE_KEY),
        ("EVALGATE__ARIZE__RUN_STATUS_MAX_AGE", "100ms"),
    ];
    let dir = tempfile::tempdir().unwrap();
    let store: PathBuf = dir.path().join("evalgate.db");
    let mut first = Gate::start(&store, &upstream, &extra).await;
    let response = first
        .client
        .post(format!("{}/v1/jobs", first.api))
        .bearer_auth(CALLER_KEY)
        .json(&json!({"kind": "arize_task_run", "task": task}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let accepted = json(response).await;
    let id = accepted["job_id"].as_str().unwrap().to_owned();
    let run_id = accepted["run_id"].as_str().expect("run id").to_owned();
    first.signal("-KILL");
    assert_eq!(first.exited().await, None, "killed by SIGKILL");
    let (_, stored) = read_store(&store, &id);
    assert_eq!(
        stored[&0].upstream_job_id.as_deref(),
        Some(run_id.as_str()),
        "the run id was committed before the 202"
    );

    let mut second = Gate::start(&store, &upstream, &extra).await;
    let status = second.finished(&id).await;
    assert_eq!(status["status"], "completed", "{status}\n{}", second.log());
    assert_eq!(batches(&status)[0]["upstream_job_id"], run_id.as_str());
    let runs = arize.runs(&task);
    assert_eq!(runs.len(), 1, "triggered once: {runs:?}");
    let triggers = arize
        .requests()
        .into_iter()
        .filter(|r| r.method == Method::POST && r.path.ends_with("/trigger"))
        .count();
    assert_eq!(triggers, 1);
}
