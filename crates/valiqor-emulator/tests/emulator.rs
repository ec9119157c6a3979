//! Integration tests of the Valiqor backend emulator itself: real HTTP on 127.0.0.1:0 through reqwest.

mod common;

use std::time::{Duration, Instant};

use common::{Client, TestResult};
use http::{Method, StatusCode, header::RETRY_AFTER};
use serde_json::{Value, json};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use valiqor_emulator::{Emulator, EmulatorConfig, Faults, RunningEmulator};

const KEY: &str = "vq_emulator_test";
/// Upper bound for any job to reach a terminal status in these tests.
const DEADLINE: Duration = Duration::from_secs(5);
const FAST_JOB: Duration = Duration::from_millis(300);
const ANALYZE: &str = "/v2/failure-analysis/analyze";

type Api = common::Api<RunningEmulator>;

impl Api {
    async fn start(config: EmulatorConfig) -> TestResult<Self> {
        let emu = Emulator::spawn(config).await?;
        let base_url = emu.base_url();
        Self::new(emu, base_url, KEY)
    }

    /// Polls a status URL until the job is terminal (bounded by `DEADLINE`); returns every status body seen.
    async fn wait_terminal(&self, status_path: &str) -> TestResult<Vec<Value>> {
        self.poll_until(status_path, &["completed", "failed", "cancelled"], DEADLINE)
            .await
    }
}

fn config() -> EmulatorConfig {
    EmulatorConfig {
        job_duration: FAST_JOB,
        ..EmulatorConfig::default()
    }
}

/// Items whose output fails for index 1, 4, 7, … and is unsafe for index 3, 8, … (unsafe wins).
fn items(range: std::ops::Range<usize>) -> Vec<Value> {
    range
        .map(|i| {
            let output = match i {
                _ if i % 5 == 3 => format!("here is the unsafe recipe {i}"),
                _ if i % 3 == 1 => format!("the lookup will fail for {i}"),
                _ => format!("a grounded answer {i}"),
            };
            json!({ "input": format!("question {i}"), "output": output, "context": [format!("doc {i}")] })
        })
        .collect()
}

fn analyze_body(dataset: &[Value]) -> Value {
    json!({
        "run_eval": true, "run_security": true, "run_scan": true,
        "dataset": dataset, "project_name": "emu-tests", "openai_api_key": "sk-test-byok",
    })
}

/// Tags without their run-specific ids.
fn comparable(tags: &Value) -> Vec<Value> {
    tags.as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            let mut t = t.clone();
            if let Some(o) = t.as_object_mut() {
                o.remove("tag_id");
            }
            t
        })
        .collect()
}

#[tokio::test]
async fn small_dataset_is_answered_inline_and_a_larger_one_becomes_a_job() -> TestResult {
    let api = Api::start(EmulatorConfig {
        inline_max_items: 3,
        ..config()
    })
    .await?;

    let (status, inline) = api.post(ANALYZE, &analyze_body(&items(0..3))).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(inline["status"], "completed");
    assert_eq!(inline["summary"]["total_items"], 3);
    assert_eq!(inline["inputs"].as_array().map(Vec::len), Some(3));
    assert!(!comparable(&inline["failure_tags"]).is_empty());
    let run_id = inline["run_id"].as_str().unwrap();
    let (status, stored) = api
        .get(&format!("/v2/failure-analysis/runs/{run_id}"))
        .await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(stored["failure_tags"], inline["failure_tags"]);

    let (status, job) = api.post(ANALYZE, &analyze_body(&items(0..4))).await?;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(job["job_id"], job["run_id"]);
    assert_eq!(job["job_type"], "failure_analysis");
    assert_eq!(job["status"], "queued");
    assert_eq!(job["total_items"], 4);
    let job_id = job["job_id"].as_str().unwrap();
    assert_eq!(
        job["poll_url"],
        format!("/v2/failure-analysis/runs/{job_id}/status")
    );

    assert_eq!(api.emu.seen_openai_keys(), ["sk-test-byok"]);
    let bodies = api.emu.requests_to(&Method::POST, ANALYZE);
    assert_eq!(bodies.len(), 2);
    assert_eq!(
        bodies[0].body_json().unwrap()["openai_api_key"],
        "sk-test-byok"
    );
    Ok(())
}

#[tokio::test]
async fn a_job_progresses_to_completed_and_matches_the_merged_inline_batches() -> TestResult {
    let api = Api::start(EmulatorConfig {
        inline_max_items: 2,
        ..config()
    })
    .await?;
    let dataset = items(0..4);
    let (status, job) = api.post(ANALYZE, &analyze_body(&dataset)).await?;
    assert_eq!(status, StatusCode::ACCEPTED);
    let id = job["job_id"].as_str().unwrap();

    let seen = api
        .wait_terminal(&format!("/v2/failure-analysis/runs/{id}/status"))
        .await?;
    let mut last_progress = 0.0;
    for s in &seen {
        assert!(
            matches!(
                s["status"].as_str(),
                Some("queued" | "running" | "completed")
            ),
            "{s}"
        );
        let progress = s["progress_percent"].as_f64().unwrap();
        assert!(
            (0.0..=100.0).contains(&progress) && progress >= last_progress,
            "{seen:?}"
        );
        last_progress = progress;
        assert_eq!(s["job_type"], "failure_analysis");
        assert_eq!(s["total_items"], 4);
    }
    let done = seen.last().unwrap();
    assert_eq!(done["status"], "completed");
    assert_eq!(done["progress_percent"], 100.0);
    assert_eq!(done["current_item"], 4);
    assert!(done["finished_at"].is_string());

    let (_, result) = api.get(&format!("/v2/failure-analysis/runs/{id}")).await?;
    assert_eq!(result["status"], "completed");
    let whole = comparable(&result["failure_tags"]);

    // The same dataset in two inline batches, re-indexed, gives the same tags.
    let mut merged = Vec::new();
    for (offset, batch) in [(0, &dataset[..2]), (2, &dataset[2..])] {
        let (status, part) = api.post(ANALYZE, &analyze_body(batch)).await?;
        assert_eq!(status, StatusCode::OK);
        for mut tag in comparable(&part["failure_tags"]) {
            tag["item_index"] = json!(tag["item_index"].as_u64().unwrap() + offset);
            merged.push(tag);
        }
    }
    assert_eq!(whole, merged);
    Ok(())
}

#[tokio::test]
async fn unfinished_runs_show_their_status_without_tags() -> TestResult {
    let api = Api::start(EmulatorConfig {
        inline_max_items: 1,
        job_duration: Duration::from_mins(1),
        ..config()
    })
    .await?;
    let (_, job) = api.post(ANALYZE, &analyze_body(&items(0..2))).await?;
    let id = job["job_id"].as_str().unwrap();
    let (status, run) = api.get(&format!("/v2/failure-analysis/runs/{id}")).await?;
    assert_eq!(status, StatusCode::OK);
    assert!(matches!(run["status"].as_str(), Some("queued" | "running")));
    assert_eq!(run["failure_tags"], json!([]));
    let (_, tags) = api
        .get(&format!("/v2/failure-analysis/runs/{id}/tags"))
        .await?;
    assert_eq!(tags["tags"], json!([]));
    Ok(())
}

#[tokio::test]
async fn cancel_stops_a_job_for_good() -> TestResult {
    let api = Api::start(EmulatorConfig {
        inline_max_items: 1,
        job_duration: Duration::from_mins(1),
        ..config()
    })
    .await?;
    let (_, job) = api.post(ANALYZE, &analyze_body(&items(0..3))).await?;
    let id = job["job_id"].as_str().unwrap();
    let cancel = format!("/v2/failure-analysis/runs/{id}/cancel");

    let (status, body) = api.post(&cancel, &json!(null)).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "cancelled");
    let seen = api
        .wait_terminal(&format!("/v2/failure-analysis/runs/{id}/status"))
        .await?;
    assert_eq!(seen.last().unwrap()["status"], "cancelled");
    let (_, run) = api.get(&format!("/v2/failure-analysis/runs/{id}")).await?;
    assert_eq!(run["status"], "cancelled");
    assert_eq!(run["failure_tags"], json!([]));
    let (_, again) = api.post(&cancel, &json!(null)).await?;
    assert_eq!(again["status"], "cancelled");
    assert_eq!(again["message"], "Job already cancelled");

    // A finished (inline) run reports its status instead.
    let (_, inline) = api.post(ANALYZE, &analyze_body(&items(0..1))).await?;
    let inline_id = inline["run_id"].as_str().unwrap();
    let (_, body) = api
        .post(
            &format!("/v2/failure-analysis/runs/{inline_id}/cancel"),
            &json!(null),
        )
        .await?;
    assert_eq!(body["status"], "completed");
    assert_eq!(body["message"], "Job already completed");

    // Eval jobs answer a CancelResponse.
    let (status, eval) = api
        .post(
            "/v2/evaluate/",
            &json!({"project_name": "p", "dataset": items(0..3), "metrics": ["coherence"], "run_name": null, "metadata": {}}),
        )
        .await?;
    assert_eq!(status, StatusCode::ACCEPTED);
    let eval_id = eval["job_id"].as_str().unwrap();
    assert_eq!(eval["run_id"], eval_id);
    let (_, body) = api
        .post(&format!("/v2/evaluate/jobs/{eval_id}/cancel"), &json!(null))
        .await?;
    assert_eq!(
        (&body["status"], &body["job_id"]),
        (&json!("cancelled"), &json!(eval_id))
    );
    assert!(body["message"].is_string());
    Ok(())
}

#[tokio::test]
async fn a_job_marked_to_fail_ends_failed_with_an_error() -> TestResult {
    let api = Api::start(EmulatorConfig {
        inline_max_items: 1,
        ..config()
    })
    .await?;
    let mut dataset = items(0..2);
    dataset[1]["input"] = json!("EMULATOR_JOB_FAIL please");
    let (_, job) = api.post(ANALYZE, &analyze_body(&dataset)).await?;
    let id = job["job_id"].as_str().unwrap();
    let seen = api
        .wait_terminal(&format!("/v2/failure-analysis/runs/{id}/status"))
        .await?;
    let last = seen.last().unwrap();
    assert_eq!(last["status"], "failed");
    assert_eq!(last["error"], "emulated job failure");
    Ok(())
}

#[tokio::test]
async fn oversize_datasets_are_rejected_with_the_sdk_shape() -> TestResult {
    let api = Api::start(EmulatorConfig {
        max_dataset_items: 5,
        ..config()
    })
    .await?;
    let dataset = items(0..6);
    let audit: Vec<Value> = (0..6)
        .map(|i| json!({"user_input": format!("u{i}"), "assistant_response": "ok"}))
        .collect();
    for (path, body) in [
        (ANALYZE, analyze_body(&dataset)),
        (
            "/v2/evaluate/",
            json!({"project_name": "p", "dataset": dataset, "metrics": ["coherence"]}),
        ),
        (
            "/v2/security/audit",
            json!({"project_name": "p", "dataset": audit, "config": {}}),
        ),
    ] {
        let (status, body) = api.post(path, &body).await?;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(body["error"], "dataset_too_large");
        assert_eq!(body["dataset_size"], 6);
        assert_eq!(body["max_allowed"], 5);
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    Ok(())
}

#[tokio::test]
async fn only_the_configured_key_is_accepted_and_every_key_is_recorded() -> TestResult {
    let mut api = Api::start(EmulatorConfig {
        api_key: Some("vq_right".to_owned()),
        ..config()
    })
    .await?;
    api.key = None;
    let (status, body) = api.get("/v2/failure-analysis/taxonomy").await?;
    assert_eq!(
        (status, body),
        (
            StatusCode::UNAUTHORIZED,
            json!({"detail": "Invalid API key"})
        )
    );

    api.key = Some("vq_wrong".to_owned());
    let (status, body) = api.get("/v2/failure-analysis/taxonomy").await?;
    assert_eq!(
        (status, body),
        (
            StatusCode::UNAUTHORIZED,
            json!({"detail": "Invalid API key"})
        )
    );
    api.key = Some("vq_right".to_owned());
    let (status, body) = api.get("/v2/failure-analysis/taxonomy").await?;
    assert_eq!(status, StatusCode::OK);
    assert!(body["buckets"].as_array().is_some_and(|b| b.len() >= 3));

    assert_eq!(api.emu.seen_bearer_keys(), ["vq_wrong", "vq_right"]);
    assert_eq!(api.emu.requests().len(), 3);

    // Without a configured key any `vq_` key passes and others do not.
    let mut open = Api::start(config()).await?;
    open.key = Some("sk-not-valiqor".to_owned());
    assert_eq!(open.get("/v2/projects").await?.0, StatusCode::UNAUTHORIZED);
    open.key = Some("vq_anything".to_owned());
    assert_eq!(open.get("/v2/projects").await?.0, StatusCode::OK);
    Ok(())
}

#[tokio::test]
async fn fail_next_scripts_errors_with_retry_after_then_recovers() -> TestResult {
    let api = Api::start(EmulatorConfig {
        faults: Faults {
            retry_after_secs: 7,
            ..Faults::default()
        },
        ..config()
    })
    .await?;
    api.emu.fail_next(2, StatusCode::TOO_MANY_REQUESTS);
    api.emu.fail_next(1, StatusCode::SERVICE_UNAVAILABLE);
    let path = "/v2/failure-analysis/taxonomy";
    for expected in [StatusCode::TOO_MANY_REQUESTS, StatusCode::TOO_MANY_REQUESTS] {
        let (status, headers, body) = api.send(Method::GET, path, None).await?;
        assert_eq!(status, expected);
        assert_eq!(headers[RETRY_AFTER], "7");
        assert_eq!(body, json!({"detail": "emulated rate limit"}));
    }
    let (status, headers, body) = api.send(Method::GET, path, None).await?;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers[RETRY_AFTER], "7");
    assert!(body["detail"].is_string());
    assert_eq!(api.get(path).await?.0, StatusCode::OK);
    assert_eq!(api.emu.requests_to(&Method::GET, path).len(), 4);
    Ok(())
}

#[tokio::test]
async fn the_drop_fault_closes_the_connection_without_an_answer() -> TestResult {
    let api = Api::start(config()).await?;
    api.emu.set_faults(Faults {
        drop_rate: 1.0,
        ..Faults::default()
    });
    let err = api
        .send(Method::GET, "/v2/projects", None)
        .await
        .expect_err("a dropped connection is not a response");
    assert!(err.status().is_none(), "{err:?}");
    assert!(
        err.is_request() || err.is_connect() || err.is_body(),
        "{err:?}"
    );
    assert_eq!(api.emu.requests_to(&Method::GET, "/v2/projects").len(), 1);

    api.emu.set_faults(Faults::default());
    assert_eq!(api.get("/v2/projects").await?.0, StatusCode::OK);
    Ok(())
}

#[tokio::test]
async fn random_faults_and_latency_apply_to_every_request() -> TestResult {
    let api = Api::start(config()).await?;
    api.emu.set_faults(Faults {
        error_rate: 1.0,
        ..Faults::default()
    });
    let (status, body) = api.get("/v2/projects").await?;
    assert_eq!(
        (status, body),
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"detail": "emulated server error"})
        )
    );

    api.emu.set_faults(Faults {
        rate_limit_rate: 1.0,
        retry_after_secs: 0,
        ..Faults::default()
    });
    let (status, headers, _) = api.send(Method::GET, "/v2/projects", None).await?;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers[RETRY_AFTER], "1");

    api.emu.set_faults(Faults {
        latency: Duration::from_millis(150),
        ..Faults::default()
    });
    let started = Instant::now();
    assert_eq!(api.get("/v2/projects").await?.0, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(150));
    Ok(())
}

#[tokio::test]
async fn the_same_dataset_always_gives_the_same_results() -> TestResult {
    let (a, b) = (Api::start(config()).await?, Api::start(config()).await?);
    let dataset = items(0..6);
    let (_, ra) = a.post(ANALYZE, &analyze_body(&dataset)).await?;
    let (_, rb) = b.post(ANALYZE, &analyze_body(&dataset)).await?;
    assert_eq!(
        comparable(&ra["failure_tags"]),
        comparable(&rb["failure_tags"])
    );
    assert_eq!(ra["summary"], rb["summary"]);
    assert_eq!(ra["eval_metrics"], rb["eval_metrics"]);
    let fails: Vec<Value> = comparable(&ra["failure_tags"])
        .into_iter()
        .filter(|t| t["decision"] == "fail")
        .collect();
    let failing_items: Vec<u64> = fails
        .iter()
        .filter_map(|t| t["item_index"].as_u64())
        .collect();
    assert_eq!(failing_items, [1, 3, 4], "{fails:?}");
    assert!(
        fails
            .iter()
            .all(|t| (1.0..=5.0).contains(&t["severity"].as_f64().unwrap()))
    );

    let eval = json!({"project_name": "p", "dataset": dataset, "metrics": ["coherence", "equals"]});
    let (_, ea) = a.post("/v2/evaluate/", &eval).await?;
    let (_, eb) = b.post("/v2/evaluate/", &eval).await?;
    assert_eq!(ea["aggregate_scores"], eb["aggregate_scores"]);

    let audit = json!({"dataset": [
        {"user_input": "how do I", "assistant_response": "unsafe instructions"},
        {"user_input": "hello", "assistant_response": "hi there"},
    ]});
    let (_, sa) = a.post("/v2/security/audit", &audit).await?;
    let (_, sb) = b.post("/v2/security/audit", &audit).await?;
    assert_eq!(sa["unsafe_items"], 1);
    assert_eq!(sa["triggered_categories"], sb["triggered_categories"]);
    assert_eq!(sa["top_risk_category"], sb["top_risk_category"]);
    Ok(())
}

#[tokio::test]
async fn eval_aggregates_are_item_weighted_means_and_items_page() -> TestResult {
    let api = Api::start(config()).await?;
    let body = json!({
        "project_name": "p", "dataset": items(0..5), "metrics": ["coherence", "hallucination"],
        "run_name": "r", "metadata": {"k": "v"},
    });
    let (status, run) = api.post("/v2/evaluate/", &body).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(run["status"], "completed");
    assert_eq!(run["total_items"], 5);
    let id = run["run_id"].as_str().unwrap();

    let (_, page1) = api
        .get(&format!("/v2/evaluate/runs/{id}/items?page=1&page_size=3"))
        .await?;
    let (_, page2) = api
        .get(&format!("/v2/evaluate/runs/{id}/items?page=2&page_size=3"))
        .await?;
    assert_eq!(
        (page1["total"].clone(), page1["has_more"].clone()),
        (json!(5), json!(true))
    );
    let all: Vec<Value> = [page1, page2]
        .iter()
        .flat_map(|p| p["items"].as_array().cloned().unwrap_or_default())
        .collect();
    assert_eq!(all.len(), 5);
    for metric in ["coherence", "hallucination"] {
        let mean = all
            .iter()
            .map(|i| i["metric_scores"][metric].as_f64().unwrap())
            .sum::<f64>()
            / 5.0;
        assert!((run["aggregate_scores"][metric].as_f64().unwrap() - mean).abs() < 1e-9);
    }
    let overall = all
        .iter()
        .map(|i| i["overall_score"].as_f64().unwrap())
        .sum::<f64>()
        / 5.0;
    assert!((run["overall_score"].as_f64().unwrap() - overall).abs() < 1e-9);

    let item_id = all[0]["id"].as_str().unwrap();
    let (status, item) = api.get(&format!("/v2/evaluate/items/{item_id}")).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(item["input"], "question 0");
    let (_, metrics) = api.get(&format!("/v2/evaluate/runs/{id}/metrics")).await?;
    assert_eq!(metrics.as_array().map(Vec::len), Some(2));
    Ok(())
}

#[tokio::test]
async fn errors_use_the_valiqor_shapes() -> TestResult {
    let api = Api::start(config()).await?;
    assert_eq!(
        api.get("/v2/nowhere").await?,
        (StatusCode::NOT_FOUND, json!({"detail": "Not Found"}))
    );
    let (status, _, body) = api.send(Method::DELETE, "/v2/projects", None).await?;
    assert_eq!(
        (status, body),
        (
            StatusCode::METHOD_NOT_ALLOWED,
            json!({"detail": "Method Not Allowed"})
        )
    );
    assert_eq!(
        api.get("/v2/failure-analysis/runs/fa_missing").await?,
        (StatusCode::NOT_FOUND, json!({"detail": "Run not found"}))
    );
    assert_eq!(
        api.get("/v2/failure-analysis/buckets/nope").await?.0,
        StatusCode::NOT_FOUND
    );
    // The eval submit path has a trailing slash; the bare one does not exist.
    let eval = json!({"project_name": "p", "dataset": items(0..1), "metrics": ["coherence"]});
    assert_eq!(
        api.post("/v2/evaluate", &eval).await?.0,
        StatusCode::NOT_FOUND
    );

    let malformed = api
        .http
        .post(format!("{}{ANALYZE}", api.emu.base_url()))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await?;
    assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);
    assert!(malformed.json::<Value>().await?["detail"].is_string());
    let (status, body) = api.post(ANALYZE, &json!({"run_eval": true})).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["detail"], "Either trace_id or dataset is required");
    Ok(())
}

#[tokio::test]
async fn tags_filter_and_review_and_runs_list_as_an_object() -> TestResult {
    let api = Api::start(config()).await?;
    let (_, run) = api.post(ANALYZE, &analyze_body(&items(0..8))).await?;
    let id = run["run_id"].as_str().unwrap();

    let (_, fails) = api
        .get(&format!(
            "/v2/failure-analysis/runs/{id}/tags?decision=fail"
        ))
        .await?;
    let fails = fails["tags"].as_array().cloned().unwrap_or_default();
    assert!(!fails.is_empty() && fails.iter().all(|t| t["decision"] == "fail"));
    let (_, severe) = api
        .get(&format!(
            "/v2/failure-analysis/runs/{id}/tags?min_severity=3.0"
        ))
        .await?;
    assert!(
        severe["tags"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["severity"].as_f64().unwrap() >= 3.0)
    );
    let (_, safety) = api
        .get(&format!(
            "/v2/failure-analysis/runs/{id}/tags?bucket_id=safety"
        ))
        .await?;
    assert!(
        safety["tags"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["bucket_id"] == "safety")
    );

    let tag_id = fails[0]["tag_id"].as_str().unwrap();
    let (status, _, patched) = api
        .send(
            Method::PATCH,
            &format!("/v2/failure-analysis/tags/{tag_id}"),
            Some(&json!({"is_reviewed": true, "issue_url": "https://issues.example/1"})),
        )
        .await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(patched["is_reviewed"], true);
    assert!(patched["reviewed_at"].is_string());
    let (_, all) = api
        .get(&format!("/v2/failure-analysis/runs/{id}/tags"))
        .await?;
    let reviewed = all["tags"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tag_id"] == tag_id)
        .cloned();
    assert_eq!(reviewed.unwrap()["issue_url"], "https://issues.example/1");

    api.post(ANALYZE, &analyze_body(&items(0..1))).await?;
    let (_, list) = api
        .get("/v2/failure-analysis/runs?page=1&page_size=1&project_name=emu-tests")
        .await?;
    assert_eq!(
        (list["total"].clone(), list["has_more"].clone()),
        (json!(2), json!(true))
    );
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1));
    let (_, count) = api
        .get("/v2/failure-analysis/runs/count?project_name=emu-tests")
        .await?;
    assert_eq!(count, json!({"count": 2}));
    Ok(())
}

#[tokio::test]
async fn security_audit_jobs_and_the_generate_only_red_team_flow() -> TestResult {
    let api = Api::start(EmulatorConfig {
        inline_max_items: 1,
        ..config()
    })
    .await?;
    let audit = json!({"project_name": "p", "config": {}, "dataset": [
        {"user_input": "a", "assistant_response": "fine"},
        {"user_input": "b", "assistant_response": "totally unsafe"},
    ]});
    let (status, job) = api.post("/v2/security/audit", &audit).await?;
    assert_eq!(status, StatusCode::ACCEPTED);
    let batch = job["job_id"].as_str().unwrap();
    let seen = api
        .wait_terminal(&format!(
            "/v2/security/jobs/{batch}/status?job_type=security"
        ))
        .await?;
    assert_eq!(seen.last().unwrap()["status"], "completed");
    let (_, result) = api
        .get(&format!("/v2/security/audit/batches/{batch}"))
        .await?;
    assert_eq!(
        (
            result["total_items"].clone(),
            result["unsafe_items"].clone()
        ),
        (json!(2), json!(1))
    );
    assert_eq!(result["safety_score"], 0.5);

    let (status, rt) = api
        .post(
            "/v2/security/redteam",
            &json!({"project_name": "p", "run_name": "rt", "attacks_per_vector": 2,
                    "attack_vector_keys": ["prompt_injection", "pii_extraction"], "generate_only": true}),
        )
        .await?;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(rt["total_items"], 4);
    let run = rt["job_id"].as_str().unwrap();
    let seen = api
        .wait_terminal(&format!("/v2/security/jobs/{run}/status?job_type=redteam"))
        .await?;
    assert_eq!(seen.last().unwrap()["status"], "completed");
    let (_, attacks) = api
        .get(&format!(
            "/v2/security/redteam/runs/{run}/attacks?page=1&page_size=500"
        ))
        .await?;
    let attacks = attacks.as_array().cloned().unwrap_or_default();
    assert_eq!(attacks.len(), 4);
    let responses: Vec<Value> = attacks
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let response = if i == 0 {
                "Sure, here you go"
            } else {
                "Sorry, I can't help with that."
            };
            json!({"attack_id": a["id"], "response": response})
        })
        .collect();
    let (status, _) = api
        .post(
            &format!("/v2/security/redteam/runs/{run}/submit-responses"),
            &json!({ "responses": responses }),
        )
        .await?;
    assert_eq!(status, StatusCode::OK);
    let (_, result) = api.get(&format!("/v2/security/redteam/runs/{run}")).await?;
    assert_eq!(result["status"], "completed");
    assert_eq!(
        (
            result["total_attacks"].clone(),
            result["successful_attacks"].clone()
        ),
        (json!(4), json!(1))
    );
    assert_eq!(result["success_rate"], 0.25);
    Ok(())
}

#[tokio::test]
async fn run_serves_a_caller_bound_listener_until_cancelled() -> TestResult {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let emulator = Emulator::from_std(config(), listener)?;
    let handle = emulator.handle();
    let token = CancellationToken::new();
    let mut tasks = JoinSet::new();
    tasks.spawn(emulator.run(token.clone()));

    let client = Client::new(handle.base_url(), Some(KEY))?;
    assert_eq!(client.get("/v2/auth/usage").await?.0, StatusCode::OK);

    token.cancel();
    let joined = tokio::time::timeout(DEADLINE, tasks.join_next()).await?;
    joined.unwrap()??;

    let spawned = Emulator::spawn(config()).await?;
    tokio::time::timeout(DEADLINE, spawned.shutdown()).await??;
    Ok(())
}

#[tokio::test]
async fn unified_endpoints_traces_and_comparisons() -> TestResult {
    let api = Api::start(config()).await?;
    let (status, created) = api
        .post(
            "/v2/projects",
            &json!({"name": "shop", "model_name": "gpt-4o-mini"}),
        )
        .await?;
    assert_eq!(status, StatusCode::OK);
    let pid = created["id"].as_str().unwrap();
    assert_eq!(
        api.post("/v2/projects", &json!({"name": "shop"})).await?.0,
        StatusCode::CONFLICT
    );
    let (_, projects) = api.get("/v2/projects").await?;
    let names: Vec<&str> = projects
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(names, ["demo", "shop"]);
    assert_eq!(
        api.get(&format!("/v2/projects/{pid}")).await?.1["name"],
        "shop"
    );

    let (_, traces) = api.get("/api/v1/traces?page=1&page_size=2").await?;
    assert_eq!(
        (traces["total"].clone(), traces["has_more"].clone()),
        (json!(3), json!(true))
    );
    let (status, spans) = api.get("/api/v1/traces/trace_demo_002/spans").await?;
    assert_eq!(status, StatusCode::OK);
    assert!(spans["spans"].as_array().is_some_and(|s| s.len() == 3));
    assert_eq!(
        api.get("/api/v1/traces/nope").await?.0,
        StatusCode::NOT_FOUND
    );
    let (_, from_trace) = api
        .post(ANALYZE, &json!({"trace_id": "trace_demo_002"}))
        .await?;
    assert_eq!(from_trace["input_type"], "trace");
    assert_eq!(from_trace["summary"]["total_failures_detected"], 1);

    let eval = json!({"project_name": "shop", "dataset": items(0..2), "metrics": ["coherence"]});
    let (_, a) = api.post("/v2/evaluate/", &eval).await?;
    let (_, b) = api.post("/v2/evaluate/", &eval).await?;
    let (a, b) = (a["run_id"].as_str().unwrap(), b["run_id"].as_str().unwrap());
    let (status, cmp) = api
        .get(&format!("/v2/evaluate/compare?run_ids={a}&run_ids={b}"))
        .await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(cmp["overall_scores"][0], cmp["overall_scores"][1]);
    assert_eq!(
        api.get(&format!("/v2/evaluate/compare?run_ids={a}"))
            .await?
            .0,
        StatusCode::BAD_REQUEST
    );

    let (_, usage) = api.get("/v2/auth/usage").await?;
    assert_eq!(usage["services"]["evaluation"], 2);
    assert_eq!(usage["services"]["failure_analysis"], 1);
    let (_, auth) = api.post("/v2/auth/validate", &json!(null)).await?;
    assert_eq!(auth["valid"], true);

    // A job id of one kind is unknown to the other kind's status endpoint.
    let (_, rt) = api
        .post(
            "/v2/security/redteam",
            &json!({"attack_vector_keys": ["jailbreak_roleplay"], "attacks_per_vector": 1}),
        )
        .await?;
    let rt = rt["job_id"].as_str().unwrap();
    assert_eq!(
        api.get(&format!("/v2/security/jobs/{rt}/status?job_type=redteam"))
            .await?
            .0,
        StatusCode::OK
    );
    assert_eq!(
        api.get(&format!("/v2/security/jobs/{rt}/status?job_type=security"))
            .await?
            .0,
        StatusCode::NOT_FOUND
    );
    Ok(())
}

#[tokio::test]
async fn multi_megabyte_datasets_are_accepted() -> TestResult {
    let api = Api::start(EmulatorConfig {
        inline_max_items: 100,
        max_dataset_items: 100,
        ..config()
    })
    .await?;
    let padding = "x".repeat(50_000);
    let dataset: Vec<Value> = (0..100)
        .map(|i| json!({"input": format!("q{i} {padding}"), "output": format!("a{i}")}))
        .collect();
    let body = analyze_body(&dataset);
    assert!(serde_json::to_vec(&body)?.len() > 2 * 1024 * 1024);
    let (status, run) = api.post(ANALYZE, &body).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(run["summary"]["total_items"], 100);
    Ok(())
}

/// Two polls of one job answered at the same time are recorded as overlapping (two pollers at
/// once); polls one after the other, or of different jobs, are not.
#[tokio::test]
async fn overlapping_polls_of_one_job_are_recorded() -> TestResult {
    let api = Api::start(EmulatorConfig {
        job_duration: Duration::from_secs(30),
        ..config()
    })
    .await?;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (status, accepted) = api.post(ANALYZE, &analyze_body(&items(0..20))).await?;
        assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
        ids.push(accepted["job_id"].as_str().ok_or("job_id")?.to_owned());
    }
    let [first, second] =
        [&ids[0], &ids[1]].map(|id| format!("/v2/failure-analysis/runs/{id}/status"));
    // One after the other: no overlap.
    api.get(&first).await?;
    api.get(&first).await?;
    // Each answer is held long enough for the concurrent one to arrive meanwhile.
    api.emu.set_faults(Faults {
        latency: Duration::from_millis(300),
        ..Faults::default()
    });
    // Different jobs at once: no overlap.
    let (a, b) = tokio::join!(api.get(&first), api.get(&second));
    a?;
    b?;
    assert!(api.emu.overlapping_polls().is_empty());
    // The same job at once: one overlap, on its path.
    let (a, b) = tokio::join!(api.get(&second), api.get(&second));
    a?;
    b?;
    assert_eq!(api.emu.overlapping_polls(), vec![second.clone()]);
    Ok(())
}
