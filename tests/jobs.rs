//! Managed jobs end to end: split, submit, poll, merge, through both the native API and the
//! unmodified SDK's paths, against the emulator.
#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions fail fast by design"
)]

mod common;

use std::time::Duration;

use common::{TestApp, dataset, emulator_config, eventually};
use evalgate::config::Config;
use http::{Method, StatusCode};
use serde_json::{Value, json};
use valiqor_emulator::EmulatorConfig;

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

async fn json(response: reqwest::Response) -> Value {
    let status = response.status();
    let text = response.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|_| panic!("{status}: {text}"))
}

#[tokio::test]
async fn native_job_is_split_polled_and_merged_in_order() {
    let app = TestApp::spawn_with(async_emulator(), fast).await;
    let response = app
        .post("/v1/jobs")
        .json(&json!({"kind": "failure_analysis", "dataset": dataset(25), "options": {"run_eval": true, "project_name": "p"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let accepted = json(response).await;
    assert_eq!(accepted["total_items"], 25);
    assert_eq!(accepted["batches"], 3);
    let id = accepted["job_id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("egj_"));

    let status = json(
        app.get(&format!("/v1/jobs/{id}?wait=20s"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status["status"], "completed", "{status}");
    assert_eq!(status["progress_percent"], 100.0);
    let items: Vec<_> = status["batches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["items"].clone())
        .collect();
    assert_eq!(items, [json!([0, 10]), json!([10, 20]), json!([20, 25])]);

    let result = json(
        app.get(&format!("/v1/jobs/{id}/result"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(result["summary"]["total_items"], 25, "{result}");
    let indexes: Vec<u64> = result["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["item_index"].as_u64().unwrap())
        .collect();
    assert_eq!(indexes, (0..25).collect::<Vec<u64>>());
    assert_eq!(result["evalgate"]["batches"].as_array().unwrap().len(), 3);

    // Each batch went upstream once, with the options and only its own items, byte for byte.
    let submits = app
        .emulator()
        .requests_to(&Method::POST, "/v2/failure-analysis/analyze");
    assert_eq!(submits.len(), 3);
    let sizes: Vec<usize> = submits
        .iter()
        .map(|r| {
            serde_json::from_slice::<Value>(&r.body).unwrap()["dataset"]
                .as_array()
                .unwrap()
                .len()
        })
        .collect();
    let mut sorted = sizes.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, [5, 10, 10]);
    for submit in &submits {
        let body: Value = serde_json::from_slice(&submit.body).unwrap();
        assert_eq!(body["project_name"], "p");
        assert_eq!(body["run_eval"], true);
    }
}

#[tokio::test]
async fn the_sdk_paths_serve_an_oversize_run_as_an_evalgate_job() {
    let app = TestApp::spawn_with(async_emulator(), fast).await;
    let accepted = app
        .post("/v2/failure-analysis/analyze")
        .json(&json!({"run_eval": true, "run_security": true, "run_scan": true, "dataset": dataset(23)}))
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    let accepted = json(accepted).await;
    let id = accepted["job_id"].as_str().unwrap().to_owned();
    assert_eq!(accepted["run_id"], id);
    assert_eq!(accepted["total_items"], 23);

    eventually(Duration::from_secs(20), || async {
        let last = json(
            app.get(&format!("/v2/failure-analysis/runs/{id}/status"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert!(
            ["queued", "running", "completed"].contains(&last["status"].as_str().unwrap()),
            "{last}"
        );
        last["status"] == "completed"
    })
    .await;
    let run = json(
        app.get(&format!("/v2/failure-analysis/runs/{id}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(run["run_id"], id);
    assert_eq!(run["summary"]["total_items"], 23);
    let inputs = json(
        app.get(&format!("/v2/failure-analysis/runs/{id}/inputs"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(inputs["inputs"].as_array().unwrap().len(), 23);
    let fails = json(
        app.get(&format!(
            "/v2/failure-analysis/runs/{id}/tags?decision=fail"
        ))
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert!(
        fails["tags"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["decision"] == "fail")
    );
    // Nothing with an evalgate id ever reaches the upstream.
    assert!(
        app.emulator()
            .requests()
            .iter()
            .all(|r| !r.path.contains("egj_"))
    );
}

#[tokio::test]
async fn small_datasets_still_go_straight_through() {
    let app = TestApp::spawn_with(async_emulator(), fast).await;
    let response = app
        .post("/v2/failure-analysis/analyze")
        .json(&json!({"run_eval": true, "dataset": dataset(3)}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        !json(response).await["run_id"]
            .as_str()
            .unwrap()
            .starts_with("egj_")
    );
}

#[tokio::test]
async fn an_upstream_dataset_too_large_becomes_a_batched_job_and_the_limit_is_learned() {
    let app = TestApp::spawn_with(
        EmulatorConfig {
            max_dataset_items: 6,
            ..async_emulator()
        },
        |c| {
            fast(c);
            c.batching.evaluation.max_items = 100;
        },
    )
    .await;
    let accepted = app
        .post("/v2/evaluate/")
        .json(&json!({"project_name": "p", "dataset": dataset(20), "metrics": ["coherence"], "run_name": null, "metadata": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    let id = json(accepted).await["job_id"].as_str().unwrap().to_owned();
    let status = json(
        app.get(&format!("/v1/jobs/{id}?wait=20s"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status["status"], "completed", "{status}");
    let batches = status["batches"].as_array().unwrap();
    assert!(
        batches
            .iter()
            .all(|b| b["items"][1].as_u64().unwrap() - b["items"][0].as_u64().unwrap() <= 6)
    );
    let result = json(
        app.get(&format!("/v2/evaluate/runs/{id}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(result["total_items"], 20, "{result}");
}

#[tokio::test]
async fn cancel_stops_every_running_batch_upstream() {
    let app = TestApp::spawn_with(
        EmulatorConfig {
            job_duration: Duration::from_secs(30),
            ..async_emulator()
        },
        fast,
    )
    .await;
    let accepted = json(
        app.post("/v1/jobs")
            .json(&json!({"kind": "failure_analysis", "dataset": dataset(30)}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let id = accepted["job_id"].as_str().unwrap().to_owned();
    eventually(Duration::from_secs(10), || async {
        let status = json(app.get(&format!("/v1/jobs/{id}")).send().await.unwrap()).await;
        status["batches"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["status"] == "running")
    })
    .await;
    let cancelled = json(
        app.post(&format!("/v1/jobs/{id}/cancel"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(cancelled["status"], "cancelled");
    let cancels: Vec<_> = app
        .emulator()
        .requests()
        .into_iter()
        .filter(|r| r.method == Method::POST && r.path.ends_with("/cancel"))
        .collect();
    assert_eq!(cancels.len(), 3, "every running batch cancelled upstream");
    let result = app
        .get(&format!("/v1/jobs/{id}/result"))
        .send()
        .await
        .unwrap();
    assert_eq!(result.status(), StatusCode::OK);
}

#[tokio::test]
async fn idempotency_key_returns_the_same_job_and_refuses_a_different_body() {
    let app = TestApp::spawn_with(async_emulator(), fast).await;
    let body = json!({"kind": "evaluation", "dataset": dataset(12), "options": {"metrics": ["coherence"], "project_name": "p"}});
    let first = app
        .post("/v1/jobs")
        .header("idempotency-key", "k-1")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let first = json(first).await;
    let again = app
        .post("/v1/jobs")
        .header("idempotency-key", "k-1")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(json(again).await["job_id"], first["job_id"]);
    let other = json!({"kind": "evaluation", "dataset": dataset(13), "options": {"metrics": ["coherence"]}});
    let conflict = app
        .post("/v1/jobs")
        .header("idempotency-key", "k-1")
        .json(&other)
        .send()
        .await
        .unwrap();
    assert_eq!(conflict.status(), StatusCode::CONFLICT);
    assert_eq!(json(conflict).await["error"]["code"], "conflict");
}

#[tokio::test]
async fn result_is_409_until_finished_and_bad_requests_are_400() {
    let app = TestApp::spawn_with(
        EmulatorConfig {
            job_duration: Duration::from_secs(30),
            ..async_emulator()
        },
        fast,
    )
    .await;
    let accepted = json(app.post("/v1/jobs").json(&json!({"kind": "security_audit", "dataset": [{"user_input": "a", "assistant_response": "b"}]})).send().await.unwrap()).await;
    let id = accepted["job_id"].as_str().unwrap();
    let early = app
        .get(&format!("/v1/jobs/{id}/result"))
        .send()
        .await
        .unwrap();
    assert_eq!(early.status(), StatusCode::CONFLICT);
    for bad in [
        json!({"kind": "nope", "dataset": []}),
        json!({"kind": "evaluation", "dataset": []}),
        json!({"kind": "evaluation"}),
        json!({"kind": "evaluation", "dataset": {}}),
    ] {
        let response = app.post("/v1/jobs").json(&bad).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
        assert!(json(response).await["error"]["message"].is_string());
    }
    let missing = app
        .get("/v1/jobs/egj_00000000000000000000000000000000")
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn openapi_document_lists_the_jobs_api() {
    let app = TestApp::spawn().await;
    let doc = json(app.get("/openapi.json").send().await.unwrap()).await;
    for path in [
        "/v1/jobs",
        "/v1/jobs/{id}",
        "/v1/jobs/{id}/result",
        "/v1/jobs/{id}/cancel",
        "/v1/jobs/{id}/events",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path}");
    }
}
