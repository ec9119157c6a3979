//! An upstream error answer that echoes the request (a FastAPI-style 422 quoting the body) never
//! carries a configured key back: not to a pass-through caller, not into a stored batch error.

mod common;

use std::time::Duration;

use common::{TestApp, UPSTREAM_KEY, dataset, emulator_config};
use evalgate::types::Secret;
use http::StatusCode;
use serde_json::{Value, json};

const JUDGE_KEY: &str = "sk-canary-judge-4242";

async fn app() -> TestApp {
    TestApp::spawn_with(emulator_config(), |c| {
        c.valiqor.openai_api_key = Some(Secret::new(JUDGE_KEY.to_owned()));
        c.batching.failure_analysis.max_items = 10;
        c.jobs.poll_initial_interval = Duration::from_millis(20);
        c.jobs.poll_max_interval = Duration::from_millis(100);
    })
    .await
}

#[tokio::test]
async fn a_validation_error_echoing_the_body_comes_back_without_the_judge_key() {
    let app = app().await;
    app.emulator().echo_next(1);
    let response = app
        .post("/v2/failure-analysis/analyze")
        .json(&json!({"dataset": dataset(2), "run_eval": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let text = response.text().await.unwrap();
    // The upstream did receive the key (it is what BYOK is for) and echoed it ...
    let sent = app.emulator().requests();
    assert!(String::from_utf8_lossy(&sent[0].body).contains(JUDGE_KEY));
    // ... but the caller gets the echo scrubbed, the rest of it intact.
    assert!(!text.contains(JUDGE_KEY), "{text}");
    assert!(!text.contains(UPSTREAM_KEY), "{text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        body["detail"][0]["input"]["openai_api_key"], "*****",
        "{body}"
    );
    assert_eq!(body["detail"][0]["input"]["run_eval"], true, "{body}");
}

#[tokio::test]
async fn a_batch_failed_by_an_echoing_error_stores_no_key() {
    let app = app().await;
    app.emulator().echo_next(1);
    let accepted: Value = app
        .post("/v1/jobs")
        // One small item: the stored error (cut at 300 characters) reaches the echoed key.
        .json(&json!({"kind": "failure_analysis", "dataset": dataset(1)}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = accepted["job_id"].as_str().unwrap().to_owned();
    // Long-polls until the job ends (bounded by the server's max wait).
    let status: Value = app
        .get(&format!("/v1/jobs/{id}?wait=20s"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        status["status"] == "failed" && status["batches"][0]["error"].is_string(),
        "{status}"
    );
    let text = status.to_string();
    assert!(text.contains("422"), "{text}");
    assert!(!text.contains(JUDGE_KEY), "{text}");
    let result = app
        .get(&format!("/v1/jobs/{id}/result"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!result.contains(JUDGE_KEY), "{result}");
}
