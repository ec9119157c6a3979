//! `/v1/jobs` takes bodies up to `server.max_body_bytes`, streamed, and refuses larger ones with
//! 413 in the `/v1` error shape, whether the size is declared up front or only found streaming.
#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions fail fast by design"
)]

mod common;

use std::time::Duration;

use common::{TestApp, emulator_config};
use evalgate::config::Config;
use futures::stream;
use http::{Method, StatusCode};
use serde_json::{Value, json};
use valiqor_emulator::EmulatorConfig;

/// `n` items of about `size` bytes each: large items, so a few make a large body.
fn big_items(n: usize, size: usize) -> Value {
    Value::Array(
        (0..n)
            .map(|i| {
                json!({
                    "input": format!("question {i} {}", "x".repeat(size)),
                    "output": format!("answer {i}"),
                    "context": [format!("context {i}")],
                })
            })
            .collect(),
    )
}

fn fast(c: &mut Config) {
    c.jobs.poll_initial_interval = Duration::from_millis(50);
    c.jobs.poll_max_interval = Duration::from_millis(200);
}

async fn json(response: reqwest::Response) -> Value {
    let status = response.status();
    let text = response.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|_| panic!("{status}: {text}"))
}

/// Posts a JSON body to `/v1/jobs`, asserts 202 and returns the answer.
async fn submit_accepted(app: &TestApp, body: String) -> Value {
    let response = app
        .post("/v1/jobs")
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    json(response).await
}

fn async_emulator() -> EmulatorConfig {
    EmulatorConfig {
        job_duration: Duration::from_millis(100),
        ..emulator_config()
    }
}

#[tokio::test]
async fn a_three_mebibyte_dataset_becomes_a_job_and_completes() {
    let app = TestApp::spawn_with(async_emulator(), |c| {
        fast(c);
        c.batching.failure_analysis.max_bytes = 1024 * 1024;
    })
    .await;
    let body =
        json!({"kind": "failure_analysis", "dataset": big_items(35, 100 * 1024)}).to_string();
    assert!(body.len() > 3 * 1024 * 1024, "{}", body.len());
    let accepted = submit_accepted(&app, body).await;
    assert_eq!(accepted["total_items"], 35);
    // 1 MiB batches of ~100 KiB items: several batches, none over the byte limit.
    assert!(accepted["batches"].as_u64().unwrap() >= 3, "{accepted}");
    let id = accepted["job_id"].as_str().unwrap();
    let status = json(
        app.get(&format!("/v1/jobs/{id}?wait=30s"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status["status"], "completed", "{status}");
    let result = json(
        app.get(&format!("/v1/jobs/{id}/result"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        result["summary"]["total_items"], 35,
        "{}",
        result["summary"]
    );
    for request in app
        .emulator()
        .requests_to(&Method::POST, "/v2/failure-analysis/analyze")
    {
        assert!(
            request.body.len() <= 1024 * 1024 + 4096,
            "{}",
            request.body.len()
        );
    }
}

#[tokio::test]
async fn a_hundred_megabyte_dataset_is_accepted_in_one_request() {
    let app = TestApp::spawn_with(async_emulator(), |c| {
        fast(c);
        c.server.max_body_bytes = 110 * 1024 * 1024;
    })
    .await;
    let body = json!({"kind": "evaluation", "dataset": big_items(1000, 100 * 1024)}).to_string();
    assert!(body.len() > 100_000_000, "{}", body.len());
    let accepted = submit_accepted(&app, body).await;
    assert_eq!(accepted["total_items"], 1000);
    let id = accepted["job_id"].as_str().unwrap();
    // Accepted is enough here: stop the upstream work.
    let cancelled = json(
        app.post(&format!("/v1/jobs/{id}/cancel"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
}

#[tokio::test]
async fn a_body_over_the_limit_is_413_in_the_v1_shape_declared_or_streamed() {
    let limit = 2 * 1024 * 1024;
    let app = TestApp::spawn_with(emulator_config(), |c| c.server.max_body_bytes = limit).await;
    let body = json!({"kind": "evaluation", "dataset": big_items(30, 100 * 1024)}).to_string();
    assert!(body.len() > limit);

    // Content-Length declared.
    let declared = app
        .post("/v1/jobs")
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(declared.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let error = json(declared).await;
    assert_eq!(error["error"]["code"], "payload_too_large", "{error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&limit.to_string()),
        "{error}"
    );

    // Chunked: the size is only found while streaming.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = body
        .into_bytes()
        .chunks(64 * 1024)
        .map(|c| Ok(c.to_vec()))
        .collect();
    let streamed = app
        .post("/v1/jobs")
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(streamed.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(json(streamed).await["error"]["code"], "payload_too_large");

    // Nothing was created or sent upstream.
    let list = json(app.get("/v1/jobs").send().await.unwrap()).await;
    assert_eq!(list["jobs"], json!([]), "{list}");
    assert!(
        app.emulator()
            .requests_to(&Method::POST, "/v2/evaluate/")
            .is_empty()
    );
}
