//! Managed jobs against a faulty upstream: random 5xx, 429 bursts with `Retry-After`, latency,
//! permanent 4xx under both failure policies, and retries running out.
#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions fail fast by design"
)]

mod common;

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use common::{TestApp, dataset, emulator_config};
use evalgate::config::{Config, FailurePolicy};
use http::{Method, StatusCode};
use serde_json::{Value, json};
use valiqor_emulator::{EmulatorConfig, EmulatorHandle, Faults};

const SUBMIT: &str = "/v2/failure-analysis/analyze";
/// Every bounded wait in this file.
const LIMIT: Duration = Duration::from_secs(20);

/// Batches of 10, fast polls, generous retries (so random faults cannot exhaust them).
fn fast(c: &mut Config) {
    c.batching.failure_analysis.max_items = 10;
    c.jobs.poll_initial_interval = Duration::from_millis(20);
    c.jobs.poll_max_interval = Duration::from_millis(150);
    c.jobs.max_attempts = 40;
}

/// Every batch of 10 becomes an upstream job (202) that takes 300 ms.
fn async_emulator() -> EmulatorConfig {
    EmulatorConfig {
        inline_max_items: 4,
        job_duration: Duration::from_millis(300),
        ..emulator_config()
    }
}

async fn json(response: reqwest::Response) -> Value {
    let status = response.status();
    let text = response.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|_| panic!("{status}: {text}"))
}

/// Submits `n` items as a failure-analysis job; returns its id.
async fn submit(app: &TestApp, n: usize) -> String {
    let response = app
        .post("/v1/jobs")
        .json(&json!({"kind": "failure_analysis", "dataset": dataset(n), "options": {"run_eval": true}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    json(response).await["job_id"].as_str().unwrap().to_owned()
}

fn is_terminal(status: &Value) -> bool {
    ["completed", "completed_with_errors", "failed", "cancelled"]
        .contains(&status["status"].as_str().unwrap_or_default())
}

/// Long-polls the job until it is terminal (bounded by `LIMIT`).
async fn finished(app: &TestApp, id: &str) -> Value {
    let deadline = Instant::now() + LIMIT;
    loop {
        let status = json(
            app.get(&format!("/v1/jobs/{id}?wait=20s"))
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
            "job not finished in time: {status}"
        );
    }
}

async fn result(app: &TestApp, id: &str) -> Value {
    let response = app
        .get(&format!("/v1/jobs/{id}/result"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    json(response).await
}

/// The `(item_index, input_text)` of every merged input, in result order.
fn merged_inputs(result: &Value) -> Vec<(u64, String)> {
    result["inputs"]
        .as_array()
        .unwrap_or_else(|| panic!("no inputs in the result: {result}"))
        .iter()
        .map(|i| {
            (
                i["item_index"].as_u64().unwrap(),
                i["input_text"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// What a result listing exactly the items `indexes`, in order, looks like.
fn expected_inputs(indexes: impl IntoIterator<Item = usize>) -> Vec<(u64, String)> {
    indexes
        .into_iter()
        .map(|i| (i as u64, format!("question {i}")))
        .collect()
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

/// How many submits carried exactly the items of each batch, keyed by the batch's `[start, end)`.
fn submits_per_batch(status: &Value, emulator: &EmulatorHandle) -> BTreeMap<(usize, usize), usize> {
    let submits = submitted_items(emulator);
    batches(status)
        .iter()
        .map(|b| {
            let range = items(b);
            let wanted: Vec<usize> = (range.0..range.1).collect();
            (range, submits.iter().filter(|s| **s == wanted).count())
        })
        .collect()
}

fn batches(status: &Value) -> &Vec<Value> {
    status["batches"].as_array().unwrap()
}

fn items(batch: &Value) -> (usize, usize) {
    let n = |i: usize| usize::try_from(batch["items"][i].as_u64().unwrap()).unwrap();
    (n(0), n(1))
}

#[tokio::test]
async fn thirty_percent_5xx_on_every_call_still_completes_in_order() {
    const N: usize = 55;
    let app = TestApp::spawn_with(
        EmulatorConfig {
            faults: Faults {
                error_rate: 0.3,
                ..Faults::default()
            },
            ..async_emulator()
        },
        fast,
    )
    .await;
    // On top of the random faults, the first three calls (submits: nothing else can be in
    // flight before a submit succeeds) fail for sure, so retries are guaranteed to happen.
    app.emulator()
        .fail_next(3, StatusCode::INTERNAL_SERVER_ERROR);
    let id = submit(&app, N).await;

    // Watch the job while it runs: a transient failure shows as `attempts > 0` on its batch
    // until the retry succeeds (at least the 50 ms retry delay).
    let mut max_attempts: BTreeMap<u64, u64> = BTreeMap::new();
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        let status = json(app.get(&format!("/v1/jobs/{id}")).send().await.unwrap()).await;
        for batch in batches(&status) {
            let seen = max_attempts
                .entry(batch["index"].as_u64().unwrap())
                .or_default();
            *seen = (*seen).max(batch["attempts"].as_u64().unwrap());
        }
        if is_terminal(&status) {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "job not finished in time: {status}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };

    assert_eq!(status["status"], "completed", "{status}");
    assert_eq!(batches(&status).len(), 6, "{status}");
    assert!(
        max_attempts.values().any(|&a| a > 0),
        "no batch ever showed a retry: {max_attempts:?}"
    );
    let submits = submitted_items(&app.emulator());
    assert!(
        submits.len() >= 6 + 3,
        "the three scripted 500s were retried: {} submits",
        submits.len()
    );
    let result = result(&app, &id).await;
    assert_eq!(merged_inputs(&result), expected_inputs(0..N));
    assert_eq!(result["summary"]["total_items"], N, "{result}");
    assert!(
        result["evalgate"]["failed_batches"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn a_429_burst_is_retried_no_sooner_than_retry_after() {
    const N: usize = 55;
    let app = TestApp::spawn_with(
        EmulatorConfig {
            faults: Faults {
                retry_after_secs: 1,
                ..Faults::default()
            },
            ..async_emulator()
        },
        fast,
    )
    .await;
    // The six first submits (one per batch) are all answered 429 + `Retry-After: 1`.
    app.emulator().fail_next(6, StatusCode::TOO_MANY_REQUESTS);
    let emulator = app.emulator();
    let started = Instant::now();
    let id = submit(&app, N).await;

    // The last moment at which no retry had reached the upstream yet: taken before each look,
    // so the first retry arrived after it.
    let mut before_any_retry = started;
    let deadline = Instant::now() + LIMIT;
    loop {
        let now = Instant::now();
        if emulator.requests_to(&Method::POST, SUBMIT).len() > 6 {
            break;
        }
        before_any_retry = now;
        assert!(Instant::now() < deadline, "no submit was ever retried");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let status = finished(&app, &id).await;
    let elapsed = started.elapsed();

    assert_eq!(status["status"], "completed", "{status}");
    // Retry-After is 1 s; allow some slack for the sampling above, far above the 50 ms a
    // retry takes when Retry-After is ignored.
    let quiet = before_any_retry - started;
    assert!(
        quiet >= Duration::from_millis(800),
        "a 429 was retried after only {quiet:?}"
    );
    assert!(elapsed >= Duration::from_secs(1), "{elapsed:?}");
    // Exactly one 429 and one accepted submit per batch.
    let per_batch = submits_per_batch(&status, &emulator);
    assert!(per_batch.values().all(|&n| n == 2), "{per_batch:?}");
    assert_eq!(emulator.requests_to(&Method::POST, SUBMIT).len(), 12);
    let result = result(&app, &id).await;
    assert_eq!(merged_inputs(&result), expected_inputs(0..N));
}

#[tokio::test]
async fn latency_on_every_call_still_completes() {
    const N: usize = 56;
    let app = TestApp::spawn_with(
        EmulatorConfig {
            faults: Faults {
                latency: Duration::from_millis(100),
                ..Faults::default()
            },
            ..async_emulator()
        },
        fast,
    )
    .await;
    let started = Instant::now();
    let id = submit(&app, N).await;
    let status = finished(&app, &id).await;
    assert_eq!(status["status"], "completed", "{status}");
    // The upstream job starts when the submit gets through (100 ms late), runs 300 ms, and its
    // result can be fetched only after that (another 100 ms): the latency really applied.
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert!(
        batches(&status)
            .iter()
            .all(|b| b["status"] == "completed" && b["upstream_job_id"].is_string()),
        "{status}"
    );
    let per_batch = submits_per_batch(&status, &app.emulator());
    assert!(per_batch.values().all(|&n| n == 1), "{per_batch:?}");
    assert_eq!(
        merged_inputs(&result(&app, &id).await),
        expected_inputs(0..N)
    );
}

#[tokio::test]
async fn a_permanent_4xx_on_one_submit_completes_with_errors_and_lists_the_batch() {
    const N: usize = 55;
    let app = TestApp::spawn_with(async_emulator(), fast).await;
    // The first upstream call is one of the six submits; which batch gets it is up to timing.
    app.emulator()
        .fail_next(1, StatusCode::UNPROCESSABLE_ENTITY);
    let id = submit(&app, N).await;
    let status = finished(&app, &id).await;

    assert_eq!(status["status"], "completed_with_errors", "{status}");
    let failed: Vec<&Value> = batches(&status)
        .iter()
        .filter(|b| b["status"] == "failed")
        .collect();
    assert_eq!(failed.len(), 1, "{status}");
    let failed = failed[0];
    assert!(
        failed["error"].as_str().unwrap().contains("422"),
        "{failed}"
    );
    assert!(
        batches(&status)
            .iter()
            .filter(|b| b["index"] != failed["index"])
            .all(|b| b["status"] == "completed"),
        "{status}"
    );
    assert!(
        status["error"].as_str().unwrap().contains("1 of 6"),
        "{status}"
    );
    // A permanent failure is not retried.
    let per_batch = submits_per_batch(&status, &app.emulator());
    assert!(per_batch.values().all(|&n| n == 1), "{per_batch:?}");

    let result = result(&app, &id).await;
    let listed = result["evalgate"]["failed_batches"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{result}");
    assert_eq!(listed[0]["index"], failed["index"]);
    assert_eq!(listed[0]["items"], failed["items"]);
    assert_eq!(listed[0]["status"], "failed");
    assert!(listed[0]["error"].as_str().unwrap().contains("422"));
    // The batches that did complete are merged, in order, without the failed batch's items.
    let (start, end) = items(failed);
    assert_eq!(
        merged_inputs(&result),
        expected_inputs((0..N).filter(|i| !(start..end).contains(i))),
        "{result}"
    );
}

#[tokio::test]
async fn fail_fast_fails_the_job_on_a_permanent_submit_error_and_submits_nothing_more() {
    let app = TestApp::spawn_with(async_emulator(), |c| {
        fast(c);
        c.jobs.failure_policy = FailurePolicy::FailFast;
        // One call at a time: the failing submit is the first and only one before the job ends.
        c.jobs.concurrency = 1;
    })
    .await;
    app.emulator()
        .fail_next(1, StatusCode::UNPROCESSABLE_ENTITY);
    let id = submit(&app, 35).await;
    let status = finished(&app, &id).await;

    assert_eq!(status["status"], "failed", "{status}");
    assert!(
        status["error"].as_str().unwrap().contains("422"),
        "{status}"
    );
    let failed = batches(&status)
        .iter()
        .filter(|b| b["status"] == "failed")
        .count();
    assert_eq!(failed, 1, "{status}");
    assert_eq!(
        app.emulator().requests_to(&Method::POST, SUBMIT).len(),
        1,
        "nothing is submitted after the job failed"
    );
    // A failed job has no batch left to run: the others are cancelled with it.
    for batch in batches(&status) {
        assert!(
            ["failed", "cancelled"].contains(&batch["status"].as_str().unwrap()),
            "batch left {} in a failed job: {status}",
            batch["status"]
        );
    }
    let result = result(&app, &id).await;
    assert_eq!(
        result["evalgate"]["failed_batches"]
            .as_array()
            .unwrap()
            .len(),
        4,
        "every batch that did not complete is listed: {result}"
    );
}

#[tokio::test]
async fn fail_fast_cancels_the_running_batches_upstream() {
    let app = TestApp::spawn_with(
        EmulatorConfig {
            job_duration: Duration::from_mins(1),
            ..async_emulator()
        },
        |c| {
            fast(c);
            c.jobs.failure_policy = FailurePolicy::FailFast;
        },
    )
    .await;
    let id = submit(&app, 35).await;
    common::eventually(LIMIT, || async {
        let status = json(app.get(&format!("/v1/jobs/{id}")).send().await.unwrap()).await;
        batches(&status).iter().all(|b| b["status"] == "running")
    })
    .await;
    // Every batch is running upstream: the next call is a poll, and it fails for good.
    app.emulator()
        .fail_next(1, StatusCode::UNPROCESSABLE_ENTITY);
    let status = finished(&app, &id).await;

    assert_eq!(status["status"], "failed", "{status}");
    let failed: Vec<&Value> = batches(&status)
        .iter()
        .filter(|b| b["status"] == "failed")
        .collect();
    assert_eq!(failed.len(), 1, "{status}");
    assert!(failed[0]["error"].as_str().unwrap().contains("422"));
    let cancel_paths = || -> Vec<String> {
        app.emulator()
            .requests()
            .into_iter()
            .filter(|r| r.method == Method::POST && r.path.ends_with("/cancel"))
            .map(|r| r.path)
            .collect()
    };
    // The job commits as failed first; the upstream cancels follow from the same finalization.
    common::eventually(LIMIT, || async { cancel_paths().len() >= 3 }).await;
    let cancels = cancel_paths();
    for batch in batches(&status)
        .iter()
        .filter(|b| b["index"] != failed[0]["index"])
    {
        let upstream = batch["upstream_job_id"].as_str().unwrap();
        assert_eq!(
            cancels
                .iter()
                .filter(|p| p.contains(&format!("/{upstream}/")))
                .count(),
            1,
            "batch {} cancelled upstream once: {cancels:?}",
            batch["index"]
        );
        assert_eq!(
            batch["status"], "cancelled",
            "a batch cancelled by fail-fast still shows as running: {status}"
        );
    }
    assert_eq!(cancels.len(), 3, "{cancels:?}");
}

#[tokio::test]
async fn exhausted_attempts_fail_the_batch_and_say_so() {
    let app = TestApp::spawn_with(
        EmulatorConfig {
            faults: Faults {
                error_rate: 1.0,
                ..Faults::default()
            },
            ..async_emulator()
        },
        |c| {
            fast(c);
            c.jobs.max_attempts = 3;
        },
    )
    .await;
    let id = submit(&app, 15).await;
    let status = finished(&app, &id).await;

    assert_eq!(status["status"], "failed", "{status}");
    assert_eq!(batches(&status).len(), 2);
    for batch in batches(&status) {
        assert_eq!(batch["status"], "failed", "{status}");
        assert!(batch["upstream_job_id"].is_null());
        let error = batch["error"].as_str().unwrap();
        assert!(error.contains("3 attempts"), "{error}");
        assert!(error.contains("500"), "{error}");
    }
    // max_attempts counts every try: three submits per batch, then nothing more.
    let per_batch = submits_per_batch(&status, &app.emulator());
    assert!(per_batch.values().all(|&n| n == 3), "{per_batch:?}");
    assert_eq!(app.emulator().requests().len(), 6);
    let result = result(&app, &id).await;
    let listed = result["evalgate"]["failed_batches"].as_array().unwrap();
    assert_eq!(listed.len(), 2, "{result}");
    assert!(
        listed
            .iter()
            .all(|b| b["error"].as_str().unwrap().contains("3 attempts"))
    );
}

#[tokio::test]
async fn an_unmergeable_batch_result_fails_the_job_with_the_reason_never_completes_it() {
    // Inline results: each batch of 10 is answered 200 with its result at once.
    let app = TestApp::spawn_with(
        EmulatorConfig {
            inline_max_items: 100,
            ..emulator_config()
        },
        fast,
    )
    .await;
    // The first batch's answer is cut short mid-JSON; the second is whole.
    app.emulator().garble_next(1);
    let id = submit(&app, 15).await;
    let status = finished(&app, &id).await;

    assert_eq!(status["status"], "failed", "{status}");
    let error = status["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("merging the batch results failed"),
        "{status}"
    );
    // Both batches completed upstream: the failure is the merge's, and it says so.
    assert!(
        batches(&status).iter().all(|b| b["status"] == "completed"),
        "{status}"
    );
    // The result is not a placeholder success: it is the failed job's status and batches.
    let result = json(
        app.get(&format!("/v1/jobs/{id}/result"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(result["status"], "failed", "{result}");
    assert_eq!(
        result["evalgate"]["batches"].as_array().map(Vec::len),
        Some(2)
    );
}
