//! Integration tests of the Arize tasks API emulator: real HTTP on 127.0.0.1:0 through reqwest, with ids
//! percent-encoded in paths the way the SDK sends them.

mod common;

use std::time::Duration;

use common::{Client, TestResult};
use http::{Method, StatusCode, header::RETRY_AFTER};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use valiqor_emulator::{ArizeConfig, ArizeEmulator, ArizeTaskType, Faults, RunningArizeEmulator};

const KEY: &str = "ak_emulator_test";
/// Upper bound for any run to reach a terminal status in these tests.
const DEADLINE: Duration = Duration::from_secs(10);
const FAST_RUN: Duration = Duration::from_millis(300);
const SLOW_RUN: Duration = Duration::from_secs(600);
const TERMINAL: [&str; 3] = ["COMPLETED", "FAILED", "CANCELLED"];

/// Percent-encodes everything but unreserved characters, as the SDK's `quote(v, safe='')` does.
fn quote(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The id of a task run body.
fn id_of(run: &Value) -> TestResult<&str> {
    Ok(run["id"]
        .as_str()
        .ok_or_else(|| format!("no id in {run}"))?)
}

/// `/v2/task-runs/{id}` of a run body, id percent-encoded.
fn run_path(run: &Value) -> TestResult<String> {
    Ok(format!("/v2/task-runs/{}", quote(id_of(run)?)))
}

fn trigger_path(task_id: &str) -> String {
    format!("/v2/tasks/{}/trigger", quote(task_id))
}

type Api = common::Api<RunningArizeEmulator>;

impl Api {
    async fn start(run_duration: Duration) -> TestResult<Self> {
        Self::with(ArizeConfig {
            run_duration,
            ..ArizeConfig::default()
        })
        .await
    }

    async fn with(config: ArizeConfig) -> TestResult<Self> {
        let emu = ArizeEmulator::spawn(config).await?;
        let base_url = emu.base_url();
        Self::new(emu, base_url, KEY)
    }

    /// Creates a task (201 expected) and returns it.
    async fn create(&self, body: &Value) -> TestResult<Value> {
        let (status, task) = self.post("/v2/tasks", body).await?;
        assert_eq!(status, StatusCode::CREATED, "{task}");
        Ok(task)
    }

    /// Triggers a run (201 expected) and returns it.
    async fn trigger(&self, task_id: &str, body: &Value) -> TestResult<Value> {
        let (status, run) = self.post(&trigger_path(task_id), body).await?;
        assert_eq!(status, StatusCode::CREATED, "{run}");
        Ok(run)
    }

    /// Polls a run until it is terminal (bounded by `DEADLINE`); returns every body seen.
    async fn wait_terminal(&self, run: &Value) -> TestResult<Vec<Value>> {
        self.poll_until(&run_path(run)?, &TERMINAL, DEADLINE).await
    }

    /// The run as it ends: the last body `wait_terminal` sees.
    async fn finished(&self, run: &Value) -> TestResult<Value> {
        Ok(self
            .wait_terminal(run)
            .await?
            .pop()
            .ok_or("a poll returns at least one body")?)
    }

    /// Triggers a run (201 expected) and waits for it to end; returns its terminal body.
    async fn trigger_to_end(&self, task_id: &str, body: &Value) -> TestResult<Value> {
        let run = self.trigger(task_id, body).await?;
        self.finished(&run).await
    }
}

fn eval_task(api: &Api, name: &str) -> Value {
    json!({
        "name": name,
        "project_id": api.emu.project_id(),
        "sampling_rate": 1.0,
        "is_continuous": false,
        "evaluators": [{
            "evaluator_id": api.emu.evaluator_id(),
            "column_mappings": {"input": "attributes.input.value", "output": "attributes.output.value"},
        }],
        "type": "TEMPLATE_EVALUATION",
    })
}

fn run_experiment_task(api: &Api, name: &str) -> Value {
    json!({
        "name": name,
        "type": "RUN_EXPERIMENT",
        "dataset_id": api.emu.dataset_id(),
        "run_configuration": {
            "experiment_type": "LLM_GENERATION",
            "ai_integration_id": "QUlJbnRlZ3JhdGlvbjoxOmVtdWw=",
            "model_name": "gpt-4o",
            "messages": [{"role": "SYSTEM", "content": "You are terse."}, {"role": "USER", "content": "{question}"}],
            "input_variable_format": "F_STRING",
            "invocation_parameters": {"temperature": 0.0},
        },
    })
}

fn statuses(seen: &[Value]) -> Vec<&str> {
    let mut out: Vec<&str> = seen.iter().filter_map(|r| r["status"].as_str()).collect();
    out.dedup();
    out
}

fn assert_problem(body: &Value, status: StatusCode, error_code: &str) {
    assert_eq!(body["status"], status.as_u16(), "{body}");
    assert_eq!(body["error_code"], error_code, "{body}");
    assert!(
        body["type"]
            .as_str()
            .is_some_and(|t| t.starts_with("https://")),
        "{body}"
    );
    assert!(
        body["title"].is_string() && body["detail"].is_string(),
        "{body}"
    );
    assert!(
        body["instance"]
            .as_str()
            .is_some_and(|i| i.starts_with("/v2/")),
        "{body}"
    );
}

#[tokio::test]
async fn a_run_goes_pending_running_completed_with_counts() -> TestResult {
    let api = Api::start(Duration::from_secs(1)).await?;
    let task = api.create(&eval_task(&api, "state-machine")).await?;
    let id = task["id"].as_str().unwrap();
    let run = api.trigger(id, &json!({})).await?;
    assert_eq!(run["status"], "PENDING");
    assert_eq!(run["task_id"], id);
    assert!(run["run_started_at"].is_null() && run["experiment_id"].is_null());

    let mut seen = vec![run.clone()];
    seen.extend(api.wait_terminal(&run).await?);
    assert_eq!(statuses(&seen), ["PENDING", "RUNNING", "COMPLETED"]);
    let done = seen.last().unwrap();
    let counts = ["num_successes", "num_errors", "num_skipped"].map(|k| done[k].as_u64().unwrap());
    assert_eq!(counts, [17, 2, 1]);
    assert!(done["run_started_at"].is_string() && done["run_finished_at"].is_string());
    assert!(done["data_start_time"].is_string() && done["data_end_time"].is_string());
    assert!(done["failure_reason"].is_null());
    assert!(api.get(&format!("/v2/tasks/{}", quote(id))).await?.1["last_run_at"].is_string());
    Ok(())
}

#[tokio::test]
async fn name_hooks_end_runs_failed_or_cancelled_and_override_completes() -> TestResult {
    let api = Api::start(FAST_RUN).await?;
    let failing = api
        .emu
        .seed_task("nightly EMULATOR_RUN_FAIL", ArizeTaskType::CodeEvaluation);
    let failed = api.trigger_to_end(&failing, &json!({})).await?;
    assert_eq!(failed["status"], "FAILED");
    assert!(
        failed["failure_reason"]
            .as_str()
            .is_some_and(|r| !r.is_empty())
    );

    let nothing = api.emu.seed_task(
        "EMULATOR_RUN_CANCEL-eval",
        ArizeTaskType::TemplateEvaluation,
    );
    let cancelled = api.trigger_to_end(&nothing, &json!({})).await?;
    assert_eq!(cancelled["status"], "CANCELLED");
    assert_eq!(cancelled["num_successes"], 0);
    assert_eq!(cancelled["num_errors"], 0);
    assert_eq!(cancelled["num_skipped"], 0);
    assert!(
        cancelled["failure_reason"]
            .as_str()
            .is_some_and(|r| r.contains("override_evaluations"))
    );

    let done = api
        .trigger_to_end(&nothing, &json!({"override_evaluations": true}))
        .await?;
    assert_eq!(done["status"], "COMPLETED");
    assert_eq!(api.emu.runs(&nothing).len(), 2);
    Ok(())
}

#[tokio::test]
async fn cancel_stops_a_pending_run_and_a_terminal_run_cannot_be_cancelled() -> TestResult {
    let api = Api::start(SLOW_RUN).await?;
    let task = api
        .emu
        .seed_task("to-cancel", ArizeTaskType::TemplateEvaluation);
    let first = api.trigger(&task, &json!({})).await?;
    let second = api.trigger(&task, &json!({})).await?; // concurrent runs are fine
    let cancel = format!("{}/cancel", run_path(&first)?);
    let (status, _, run) = api.send(Method::POST, &cancel, None).await?;
    assert_eq!(status, StatusCode::OK, "{run}");
    assert_eq!(run["status"], "CANCELLED");
    assert!(run["run_finished_at"].is_string());
    let (status, _, problem) = api.send(Method::POST, &cancel, None).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_problem(&problem, StatusCode::BAD_REQUEST, "RUN_NOT_CANCELLABLE");
    assert_eq!(problem["instance"], cancel);

    let runs = api.emu.runs(&task);
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0]["id"], second["id"], "newest first");
    assert_eq!(runs[0]["status"], "PENDING");
    assert_eq!(runs[1]["status"], "CANCELLED");
    Ok(())
}

#[tokio::test]
async fn percent_encoded_ids_round_trip_and_raw_paths_are_recorded() -> TestResult {
    let api = Api::start(SLOW_RUN).await?;
    let task = api.create(&eval_task(&api, "encoded")).await?;
    let id = task["id"].as_str().unwrap().to_owned();
    assert!(id.contains('/') && id.ends_with('='), "{id}");
    let path = format!("/v2/tasks/{}", quote(&id));
    assert!(path.contains("%2F") && path.ends_with("%3D"), "{path}");
    let (status, got) = api.get(&path).await?;
    assert_eq!(
        (status, got["id"].as_str()),
        (StatusCode::OK, Some(id.as_str()))
    );
    assert_eq!(api.emu.requests_to(&Method::GET, &path).len(), 1);

    let run = api.trigger(&id, &json!({})).await?;
    let run_id = id_of(&run)?;
    assert!(run_id.contains('/') && run_id.contains('='), "{run_id}");
    let run_path = run_path(&run)?;
    assert_eq!(api.get(&run_path).await?.1["id"], run_id);
    assert_eq!(api.emu.requests_to(&Method::GET, &run_path).len(), 1);

    // The second task and run carry '+': %2B must not become a space.
    let plus = api.emu.seed_task("plus", ArizeTaskType::TemplateEvaluation);
    assert!(plus.contains('+'), "{plus}");
    assert_eq!(
        api.get(&format!("/v2/tasks/{}", quote(&plus))).await?.1["id"],
        plus
    );
    let plus_run = api.trigger(&plus, &json!({})).await?;
    assert!(plus_run["id"].as_str().unwrap().contains('+'));

    // An unencoded '/' splits the segment: no such route.
    let (status, problem) = api.get(&format!("/v2/tasks/{id}")).await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_problem(&problem, StatusCode::NOT_FOUND, "NOT_FOUND");
    Ok(())
}

#[tokio::test]
async fn tasks_and_runs_page_with_opaque_cursors() -> TestResult {
    let api = Api::start(SLOW_RUN).await?;
    let ids: Vec<String> = (0..5)
        .map(|i| {
            api.emu
                .seed_task(&format!("page-{i}"), ArizeTaskType::TemplateEvaluation)
        })
        .collect();
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10 {
        let query = cursor
            .as_deref()
            .map_or(String::new(), |c| format!("&cursor={}", quote(c)));
        let (status, page) = api.get(&format!("/v2/tasks?limit=2{query}")).await?;
        assert_eq!(status, StatusCode::OK, "{page}");
        seen.extend(
            page["tasks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["id"].clone()),
        );
        if page["pagination"]["has_more"] == true {
            cursor = Some(
                page["pagination"]["next_cursor"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            );
        } else {
            assert!(page["pagination"].get("next_cursor").is_none(), "{page}");
            break;
        }
    }
    assert_eq!(seen, ids.iter().map(|i| json!(i)).collect::<Vec<_>>());

    let task = &ids[0];
    let runs: Vec<Value> = [0, 1, 2].iter().map(|_| json!({})).collect();
    let mut triggered = Vec::new();
    for body in &runs {
        triggered.push(api.trigger(task, body).await?);
    }
    let run_ids: Vec<Value> = triggered.iter().map(|r| r["id"].clone()).collect();
    let cancel = format!("{}/cancel", run_path(&triggered[1])?);
    assert_eq!(
        api.send(Method::POST, &cancel, None).await?.0,
        StatusCode::OK
    );
    let runs_path = format!("/v2/tasks/{}/runs", quote(task));
    let (_, first) = api.get(&format!("{runs_path}?limit=2")).await?;
    assert_eq!(first["task_runs"][0]["id"], run_ids[2], "newest first");
    assert_eq!(first["task_runs"][1]["id"], run_ids[1]);
    let next = first["pagination"]["next_cursor"].as_str().unwrap();
    let (_, second) = api
        .get(&format!("{runs_path}?limit=2&cursor={}", quote(next)))
        .await?;
    assert_eq!(second["task_runs"].as_array().unwrap().len(), 1);
    assert_eq!(second["task_runs"][0]["id"], run_ids[0]);
    assert_eq!(second["pagination"], json!({"has_more": false}));

    let (_, cancelled) = api
        .get(&format!("{runs_path}?status=CANCELLED&limit=50"))
        .await?;
    assert_eq!(cancelled["task_runs"].as_array().unwrap().len(), 1);
    assert_eq!(cancelled["task_runs"][0]["id"], run_ids[1]);
    let (status, problem) = api.get(&format!("{runs_path}?status=completed")).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_problem(&problem, StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
    let (status, _) = api
        .get(&format!("{runs_path}?cursor={}", quote("bm9wZQ==")))
        .await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    Ok(())
}

#[tokio::test]
async fn name_filters_serve_the_sdk_resolver() -> TestResult {
    let api = Api::start(SLOW_RUN).await?;
    let space = api.emu.space_id();
    let (status, spaces) = api.get("/v2/spaces?name=demo-space&limit=100").await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(spaces["spaces"][0]["id"], space);
    assert_eq!(spaces["spaces"][0]["name"], "demo-space");
    assert_eq!(spaces["pagination"], json!({"has_more": false}));
    assert_eq!(
        api.get("/v2/spaces?name=nope").await?.1["spaces"],
        json!([])
    );

    let (_, projects) = api
        .get(&format!(
            "/v2/projects?space_id={}&name=DEMO&limit=100",
            quote(&space)
        ))
        .await?;
    assert_eq!(projects["projects"][0]["id"], api.emu.project_id());
    assert_eq!(projects["projects"][0]["space_id"], space);
    let (_, datasets) = api
        .get("/v2/datasets?space_name=demo&name=demo-dataset&limit=100")
        .await?;
    assert_eq!(datasets["datasets"][0]["id"], api.emu.dataset_id());
    assert_eq!(
        api.get("/v2/datasets?space_name=other").await?.1["datasets"],
        json!([])
    );

    api.emu
        .seed_task("Alpha Eval", ArizeTaskType::TemplateEvaluation);
    api.emu
        .seed_task("beta eval", ArizeTaskType::CodeEvaluation);
    api.emu.seed_task("alphabet", ArizeTaskType::RunExperiment);
    let (_, tasks) = api
        .get(&format!(
            "/v2/tasks?space_id={}&name=alpha&limit=100",
            quote(&space)
        ))
        .await?;
    let names: Vec<&str> = tasks["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(names, ["Alpha Eval", "alphabet"]);
    let (_, typed) = api
        .get("/v2/tasks?space_name=demo-space&type=CODE_EVALUATION&limit=50")
        .await?;
    assert_eq!(typed["tasks"][0]["name"], "beta eval");
    assert_eq!(typed["tasks"].as_array().unwrap().len(), 1);
    let (_, by_dataset) = api
        .get(&format!(
            "/v2/tasks?dataset_id={}",
            quote(&api.emu.dataset_id())
        ))
        .await?;
    assert_eq!(by_dataset["tasks"][0]["name"], "alphabet");

    let (status, problem) = api
        .get("/v2/tasks?space_id=U3BhY2U6OTk6ZW11bA%3D%3D")
        .await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_problem(&problem, StatusCode::NOT_FOUND, "NOT_FOUND");
    Ok(())
}

#[tokio::test]
async fn errors_are_problem_json_with_401_404_405_400() -> TestResult {
    let mut api = Api::with(ArizeConfig {
        api_key: Some(KEY.to_owned()),
        ..ArizeConfig::default()
    })
    .await?;
    api.key = None;
    let (status, headers, problem) = api.send(Method::GET, "/v2/tasks", None).await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers["content-type"], "application/problem+json");
    assert_problem(&problem, StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    api.key = Some("ak_wrong".to_owned());
    assert_eq!(api.get("/v2/tasks").await?.0, StatusCode::UNAUTHORIZED);
    api.key = Some(KEY.to_owned());
    assert_eq!(api.emu.seen_bearer_keys(), ["ak_wrong"]);

    let unknown = "/v2/tasks/T25saW5lVGFzazo5OTplbXVs";
    let (status, headers, problem) = api.send(Method::GET, unknown, None).await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(headers["content-type"], "application/problem+json");
    assert_problem(&problem, StatusCode::NOT_FOUND, "NOT_FOUND");
    assert_eq!(problem["instance"], unknown);
    assert_eq!(
        api.get("/v2/task-runs/VGFza1J1bjo5OTplbXVs").await?.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(api.get("/v2/nothing-here").await?.0, StatusCode::NOT_FOUND);
    let (status, _, problem) = api.send(Method::PUT, "/v2/tasks", None).await?;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_problem(
        &problem,
        StatusCode::METHOD_NOT_ALLOWED,
        "METHOD_NOT_ALLOWED",
    );

    for query in [
        "limit=0",
        "limit=101",
        "limit=x",
        "type=template_evaluation",
    ] {
        let (status, problem) = api.get(&format!("/v2/tasks?{query}")).await?;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
        assert_problem(&problem, StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
    }
    let mut both = eval_task(&api, "both");
    both["dataset_id"] = json!(api.emu.dataset_id());
    let mut misfit = eval_task(&api, "misfit");
    misfit["run_configuration"] = run_experiment_task(&api, "x")["run_configuration"].clone();
    let mut no_evaluators = eval_task(&api, "none");
    no_evaluators["evaluators"] = json!([]);
    let mut mixed = eval_task(&api, "mixed");
    mixed["query_filters"] = json!({"filters": [{"id": "A", "filter": "x"}]});
    let mut unknown_field = eval_task(&api, "unknown");
    unknown_field["colour"] = json!("blue");
    for body in [
        both,
        misfit,
        no_evaluators,
        mixed,
        unknown_field,
        json!({"name": "t"}),
        json!([]),
    ] {
        let (status, problem) = api.post("/v2/tasks", &body).await?;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} -> {problem}");
        assert_problem(&problem, StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
    }
    let mut missing_project = eval_task(&api, "missing");
    missing_project["project_id"] = json!("TW9kZWw6OTk6ZW11bA==");
    assert_eq!(
        api.post("/v2/tasks", &missing_project).await?.0,
        StatusCode::NOT_FOUND
    );
    api.create(&eval_task(&api, "dup")).await?;
    let (status, problem) = api.post("/v2/tasks", &eval_task(&api, "dup")).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_problem(&problem, StatusCode::BAD_REQUEST, "DUPLICATE_NAME");
    Ok(())
}

#[tokio::test]
async fn trigger_bodies_are_checked_against_the_task_type() -> TestResult {
    let api = Api::start(FAST_RUN).await?;
    let eval = api.emu.seed_task("eval", ArizeTaskType::TemplateEvaluation);
    let trigger = trigger_path(&eval);
    for body in [
        json!({"data_start_time": "2025-01-01T00:00:00+00:00", "data_end_time": "2025-03-01T00:00:00+00:00"}),
        json!({"data_start_time": "2025-01-02T00:00:00Z", "data_end_time": "2025-01-01T00:00:00Z"}),
        json!({"data_start_time": "yesterday"}),
        json!({"experiment_name": "exp"}),
        json!({"experiment_ids": ["RXhwZXJpbWVudDoxOmVtdWw="]}),
        json!({"max_spans": 0}),
    ] {
        let (status, problem) = api.post(&trigger, &body).await?;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} -> {problem}");
        assert_problem(&problem, StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
    }
    let run = api
        .trigger(&eval, &json!({"data_start_time": "2026-11-22T13:03:04+00:00", "data_end_time": "2026-11-22T14:03:04+00:00", "max_spans": 5, "override_evaluations": true}))
        .await?;
    assert_eq!(run["data_start_time"], "2026-11-22T13:03:04.000Z");
    assert_eq!(run["data_end_time"], "2026-11-22T14:03:04.000Z");

    let rx = api.create(&run_experiment_task(&api, "rx")).await?;
    let rx_id = rx["id"].as_str().unwrap();
    assert_eq!(rx["run_configuration"]["experiment_type"], "LLM_GENERATION");
    assert_eq!(rx["evaluators"], json!([]));
    let rx_trigger = trigger_path(rx_id);
    let (status, problem) = api.post(&rx_trigger, &json!({})).await?;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_problem(
        &problem,
        StatusCode::UNPROCESSABLE_ENTITY,
        "EXPERIMENT_NAME_REQUIRED",
    );
    let (status, _) = api
        .post(
            &rx_trigger,
            &json!({"experiment_name": "a", "max_spans": 3}),
        )
        .await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = api
        .post(&rx_trigger, &json!({"experiment_name": "a", "max_examples": 2, "example_ids": ["RXhhbXBsZToxOmVtdWw="]}))
        .await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let run = api.trigger(rx_id, &json!({"experiment_name": "exp A", "max_examples": 5, "tracing_metadata": {"team": "x"}})).await?;
    assert!(
        run["experiment_id"].is_null(),
        "no experiment while PENDING"
    );
    let (status, problem) = api
        .post(&rx_trigger, &json!({"experiment_name": "exp A"}))
        .await?;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_problem(&problem, StatusCode::CONFLICT, "EXPERIMENT_NAME_TAKEN");
    let done = api.finished(&run).await?;
    assert_eq!(done["status"], "COMPLETED");
    assert!(
        done["experiment_id"]
            .as_str()
            .is_some_and(|e| !e.is_empty())
    );
    assert!(done["data_start_time"].is_null());
    assert_eq!(
        done["num_successes"].as_u64().unwrap() + done["num_errors"].as_u64().unwrap(),
        5
    );
    Ok(())
}

#[tokio::test]
async fn update_delete_and_the_synthesized_expression() -> TestResult {
    let api = Api::start(SLOW_RUN).await?;
    let trace = api
        .create(&json!({
            "name": "trace-1", "project_id": api.emu.project_id(), "sampling_rate": 0.5, "is_continuous": true,
            "query_filters": {"filters": [{"id": "A", "filter": "span_kind = 'LLM'"}]},
            "evaluators": [{"evaluator_id": "RXZhbHVhdG9yOjI6ZW11bA==", "query_mappings": [
                {"variable_name": "input", "query_ids": ["A"], "attribute_path": "attributes.input.value"}]}],
            "type": "CODE_EVALUATION",
        }))
        .await?;
    let id = trace["id"].as_str().unwrap();
    let path = format!("/v2/tasks/{}", quote(id));
    let (_, got) = api.get(&path).await?;
    assert_eq!(got["query_filters"]["expression"], "A");
    assert_eq!(got["evaluators"][0]["evaluator_name"], "Evaluator-2-emul");
    assert!(got["evaluators"][0]["column_mappings"].is_null());

    let (status, _, renamed) = api
        .send(
            Method::PATCH,
            &path,
            Some(&json!({"name": "trace-1-renamed", "sampling_rate": 0.25})),
        )
        .await?;
    assert_eq!(status, StatusCode::OK, "{renamed}");
    assert_eq!(
        (renamed["name"].as_str(), renamed["sampling_rate"].as_f64()),
        (Some("trace-1-renamed"), Some(0.25))
    );
    for body in [
        json!({}),
        json!({"run_configuration": {"experiment_type": "AGENT_CALL"}}),
        json!({"query_filter": "x = 1"}),
    ] {
        let (status, _, problem) = api.send(Method::PATCH, &path, Some(&body)).await?;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} -> {problem}");
    }

    let run = api.trigger(id, &json!({})).await?;
    let (status, _, body) = api.send(Method::DELETE, &path, None).await?;
    assert_eq!((status, body), (StatusCode::NO_CONTENT, Value::Null));
    assert_eq!(api.get(&path).await?.0, StatusCode::NOT_FOUND);
    assert_eq!(
        api.get(&format!("{path}/runs")).await?.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.send(Method::DELETE, &path, None).await?.0,
        StatusCode::NOT_FOUND
    );
    // EMULATOR CHOICE: the runs of a deleted task stay readable.
    let (status, kept) = api.get(&run_path(&run)?).await?;
    assert_eq!(
        (status, kept["task_id"].as_str()),
        (StatusCode::OK, Some(id))
    );
    assert_eq!(api.emu.runs(id).len(), 1);
    Ok(())
}

#[tokio::test]
async fn a_dropped_trigger_still_creates_its_run() -> TestResult {
    let api = Api::start(SLOW_RUN).await?;
    let task = api
        .emu
        .seed_task("ambiguous", ArizeTaskType::TemplateEvaluation);
    let trigger = trigger_path(&task);
    api.emu.drop_next_after_processing(1);
    let err = api
        .send(Method::POST, &trigger, Some(&json!({})))
        .await
        .expect_err("a dropped connection is not a response");
    assert!(err.status().is_none(), "{err:?}");
    let runs = api.emu.runs(&task);
    assert_eq!(runs.len(), 1, "the run was created before the drop");
    assert_eq!(runs[0]["status"], "PENDING");
    assert_eq!(api.emu.requests_to(&Method::POST, &trigger).len(), 1);

    // Reconciling through the list finds it; the next request is answered normally.
    let (status, listed) = api
        .get(&format!("/v2/tasks/{}/runs?status=PENDING", quote(&task)))
        .await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed["task_runs"][0]["id"], runs[0]["id"]);
    Ok(())
}

#[tokio::test]
async fn fail_next_answers_problems_with_retry_after_then_recovers() -> TestResult {
    let api = Api::with(ArizeConfig {
        faults: Faults {
            retry_after_secs: 2,
            ..Faults::default()
        },
        ..ArizeConfig::default()
    })
    .await?;
    let task = api
        .emu
        .seed_task("flaky", ArizeTaskType::TemplateEvaluation);
    api.emu.fail_next(1, StatusCode::TOO_MANY_REQUESTS);
    api.emu.fail_next(1, StatusCode::SERVICE_UNAVAILABLE);
    api.emu.fail_next(1, StatusCode::INTERNAL_SERVER_ERROR);
    let trigger = trigger_path(&task);
    for (expected, code) in [
        (StatusCode::TOO_MANY_REQUESTS, "TOO_MANY_REQUESTS"),
        (StatusCode::SERVICE_UNAVAILABLE, "SERVICE_UNAVAILABLE"),
        (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_SERVER_ERROR"),
    ] {
        let (status, headers, problem) = api.send(Method::POST, &trigger, Some(&json!({}))).await?;
        assert_eq!(status, expected);
        assert_eq!(headers["content-type"], "application/problem+json");
        assert_problem(&problem, expected, code);
        assert_eq!(
            headers.get(RETRY_AFTER).is_some(),
            expected != StatusCode::INTERNAL_SERVER_ERROR
        );
        if let Some(retry) = headers.get(RETRY_AFTER) {
            assert_eq!(retry, "2");
        }
    }
    assert!(
        api.emu.runs(&task).is_empty(),
        "failed requests take no effect"
    );
    api.trigger(&task, &json!({})).await?;
    assert_eq!(api.emu.runs(&task).len(), 1);
    assert_eq!(api.emu.requests_to(&Method::POST, &trigger).len(), 4);
    api.emu.clear_requests();
    assert!(api.emu.requests().is_empty());
    Ok(())
}

#[tokio::test]
async fn run_serves_a_caller_bound_listener_until_cancelled() -> TestResult {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let emulator = ArizeEmulator::from_std(ArizeConfig::default(), listener)?;
    let handle = emulator.handle();
    let token = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(emulator.run(token.clone()));
    let client = Client::new(handle.base_url(), Some("anything"))?;
    assert_eq!(client.get("/v2/spaces").await?.0, StatusCode::OK);
    token.cancel();
    let joined = tokio::time::timeout(DEADLINE, tasks.join_next()).await?;
    joined.unwrap()??;

    let spawned = ArizeEmulator::spawn(ArizeConfig::default()).await?;
    assert!(spawned.base_url().starts_with("http://127.0.0.1:"));
    spawned.shutdown().await?;
    Ok(())
}
