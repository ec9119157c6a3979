//! The Arize tasks API through evalgate's Arize listener, against the Arize emulator over real
//! HTTP: the pass-through (key replaced, ids as encoded, problem documents), single-flight run
//! polls, and managed task runs (every status, cancel, reconcile after an ambiguous trigger,
//! restart resume, signed webhook).
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "integration tests fail fast"
)]

mod common;
#[path = "common/webhook_sink.rs"]
#[expect(dead_code, reason = "only the recording side of the sink is used here")]
mod webhook_sink;

use std::time::Duration;

use common::{TestApp, emulator_config};
use evalgate::{
    config::Config,
    webhooks::signing::{SigningSecret, verify},
};
use http::{Method, StatusCode};
use serde_json::{Value, json};
use valiqor_emulator::{ArizeConfig, ArizeHandle, ArizeTaskType, RunningArizeEmulator};
use webhook_sink::WebhookSink;

/// The Arize key evalgate is configured with and the emulator accepts.
const ARIZE_KEY: &str = "ak_platform_arize_key_0001";
/// What a caller sends: thrown away.
const CALLER_KEY: &str = "ak_caller_placeholder";

async fn arize_emulator(run_duration: Duration) -> RunningArizeEmulator {
    valiqor_emulator::ArizeEmulator::spawn(ArizeConfig {
        api_key: Some(ARIZE_KEY.to_owned()),
        run_duration,
        ..ArizeConfig::default()
    })
    .await
    .expect("arize emulator starts")
}

fn arize_toml(emu: &ArizeHandle, max_age: &str) -> String {
    format!(
        "[arize]\nlisten = \"127.0.0.1:0\"\nbase_url = \"{}\"\napi_key = \"{ARIZE_KEY}\"\nrun_status_max_age = \"{max_age}\"\n",
        emu.base_url()
    )
}

fn fast(c: &mut Config) {
    c.jobs.poll_initial_interval = Duration::from_millis(30);
    c.jobs.poll_max_interval = Duration::from_millis(150);
    c.webhooks.allowed_cidrs = vec!["127.0.0.0/8".parse().unwrap()];
}

async fn spawn(emu: &ArizeHandle, max_age: &str) -> TestApp {
    TestApp::spawn_toml(emulator_config(), &arize_toml(emu, max_age), fast).await
}

fn arize_url(app: &TestApp, path: &str) -> String {
    format!(
        "{}{path}",
        app.arize.as_deref().expect("the Arize listener is on")
    )
}

/// A GET on evalgate's Arize listener, with `token` as the bearer when given.
async fn arize_get(app: &TestApp, path: &str, token: Option<&str>) -> reqwest::Response {
    let request = app.client.get(arize_url(app, path));
    let request = match token {
        Some(token) => request.bearer_auth(token),
        None => request,
    };
    request.send().await.unwrap()
}

/// The answer is a problem document with `status`.
fn assert_problem(response: &reqwest::Response, status: StatusCode) {
    assert_eq!(response.status(), status);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
}

async fn json_of(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// `quote(id, safe='')`, as the SDK encodes path parameters.
fn encoded(id: &str) -> String {
    id.replace('/', "%2F")
        .replace('+', "%2B")
        .replace('=', "%3D")
}

/// Triggers a run of `task` through evalgate's Arize listener with `token`; the run, and the
/// path its polls go to (the id encoded as the SDK encodes it).
async fn trigger_through(app: &TestApp, task: &str, token: &str) -> (Value, String) {
    let (status, run) = json_of(
        app.client
            .post(arize_url(
                app,
                &format!("/v2/tasks/{}/trigger", encoded(task)),
            ))
            .bearer_auth(token)
            .json(&json!({}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{run}");
    let path = format!("/v2/task-runs/{}", encoded(run["id"].as_str().unwrap()));
    (run, path)
}

async fn submit(app: &TestApp, body: Value) -> (StatusCode, Value) {
    json_of(app.post("/v1/jobs").json(&body).send().await.unwrap()).await
}

/// A native GET that must answer 200; its JSON.
async fn get_ok(app: &TestApp, path: &str) -> Value {
    let (status, body) = json_of(app.get(path).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{path}: {body}");
    body
}

async fn wait_job(app: &TestApp, job: &str) -> Value {
    get_ok(app, &format!("/v1/jobs/{job}?wait=20s")).await
}

async fn result_of(app: &TestApp, job: &str) -> Value {
    get_ok(app, &format!("/v1/jobs/{job}/result")).await
}

#[tokio::test]
async fn the_pass_through_replaces_the_key_keeps_encoded_ids_and_answers_problems() {
    let emu = arize_emulator(Duration::from_secs(3)).await;
    let app = spawn(&emu, "1s").await;
    let client = app.client.clone();
    // Create through evalgate: 201 and the Task as Arize sent it.
    let create = json!({"name": "pass-through", "project_id": emu.project_id(), "evaluators": [{"evaluator_id": emu.evaluator_id()}], "type": "TEMPLATE_EVALUATION"});
    let (status, task) = json_of(
        client
            .post(arize_url(&app, "/v2/tasks"))
            .bearer_auth(CALLER_KEY)
            .json(&create)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{task}");
    let id = task["id"].as_str().unwrap();
    let path = format!("/v2/tasks/{}", encoded(id));
    assert!(
        path.contains("%3D"),
        "the id exercises percent-encoding: {path}"
    );
    let (status, got) = json_of(arize_get(&app, &path, Some(CALLER_KEY)).await).await;
    assert_eq!((status, got["id"].as_str()), (StatusCode::OK, Some(id)));
    // The id reached Arize exactly as encoded, with the platform key and never the caller's.
    assert_eq!(emu.requests_to(&Method::GET, &path).len(), 1);
    assert_eq!(emu.seen_bearer_keys(), vec![ARIZE_KEY.to_owned()]);
    // Arize's own errors pass through unchanged (problem+json).
    let unknown = "/v2/tasks/VW5rbm93bjo5OTk6ZW11bA%3D%3D";
    let response = arize_get(&app, unknown, Some(CALLER_KEY)).await;
    assert_problem(&response, StatusCode::NOT_FOUND);
    // A path outside the table is evalgate's 404, as a problem document, and never forwarded.
    let before = emu.requests().len();
    let response = arize_get(&app, "/v2/webhooks", Some(CALLER_KEY)).await;
    assert_problem(&response, StatusCode::NOT_FOUND);
    let (_, problem) = json_of(response).await;
    assert_eq!(problem["status"], 404);
    assert_eq!(problem["error_code"], "unknown_route");
    assert_eq!(problem["instance"], "/v2/webhooks");
    assert_eq!(emu.requests().len(), before, "nothing reached Arize");
    // Delete answers 204, exactly.
    let response = client
        .delete(arize_url(&app, &path))
        .bearer_auth(CALLER_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("upstream=\"arize\""),
        "requests are labelled by upstream"
    );
    assert!(!metrics.contains(ARIZE_KEY));
}

#[tokio::test]
async fn a_hundred_concurrent_watchers_of_one_run_cost_one_upstream_poll() {
    let emu = arize_emulator(Duration::from_secs(30)).await;
    // A long max age: every poll of this test shares the first one's answer.
    let app = spawn(&emu, "30s").await;
    let task = emu.seed_task("watched", ArizeTaskType::TemplateEvaluation);
    let client = app.client.clone();
    let (_, path) = trigger_through(&app, &task, CALLER_KEY).await;
    let mut watchers = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let client = client.clone();
        let url = arize_url(&app, &path);
        watchers.spawn(async move {
            let response = client
                .get(url)
                .bearer_auth(CALLER_KEY)
                .send()
                .await
                .unwrap();
            let cache = response.headers()["x-evalgate-cache"]
                .to_str()
                .unwrap()
                .to_owned();
            let (status, body) = json_of(response).await;
            (status, body["status"].as_str().map(str::to_owned), cache)
        });
    }
    let mut misses = 0;
    while let Some(joined) = watchers.join_next().await {
        let (status, run_status, cache) = joined.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert!(matches!(run_status.as_deref(), Some("PENDING" | "RUNNING")));
        misses += usize::from(cache == "miss");
    }
    assert_eq!(
        emu.requests_to(&Method::GET, &path).len(),
        1,
        "one upstream poll"
    );
    assert!(
        emu.overlapping_polls().is_empty(),
        "never two polls of the run at once"
    );
    assert_eq!(misses, 1, "exactly one watcher's poll went upstream");
}

#[tokio::test]
async fn a_managed_run_completes_with_the_task_run_as_its_result_and_a_signed_webhook() {
    let mut sink = WebhookSink::start().await;
    let emu = arize_emulator(Duration::from_millis(400)).await;
    let app = spawn(&emu, "100ms").await;
    let task = emu.seed_task("managed", ArizeTaskType::TemplateEvaluation);
    let (secret, secret_text) = SigningSecret::generate();
    let (status, accepted) = submit(
        &app,
        json!({"kind": "arize_task_run", "task": task, "options": {"max_spans": 5},
               "webhook": {"url": sink.url, "secret": secret_text}}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    // The run id is known (and committed) when the job is answered.
    let run_id = accepted["run_id"].as_str().expect("the run id").to_owned();
    let runs = emu.runs(&task);
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["id"], run_id.as_str());
    // The SDK's GET of the task came first, then one trigger with the options as given.
    let trigger = format!("/v2/tasks/{}/trigger", encoded(&task));
    let sent = emu.requests_to(&Method::POST, &trigger);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].body_json().unwrap(), json!({"max_spans": 5}));
    let job = accepted["job_id"].as_str().unwrap();
    let view = wait_job(&app, job).await;
    assert_eq!(view["status"], "completed", "{view}");
    assert_eq!(view["kind"], "arize_task_run");
    let result = result_of(&app, job).await;
    assert_eq!(result["id"], run_id.as_str());
    assert_eq!(result["status"], "COMPLETED");
    assert!(result["num_successes"].as_u64().unwrap() > 0, "{result}");
    let received = sink.next(20).await;
    let header = |name: &str| received.headers[name].to_str().unwrap().to_owned();
    assert!(verify(
        &secret,
        &header("webhook-id"),
        header("webhook-timestamp").parse().unwrap(),
        &received.body,
        &header("webhook-signature"),
    ));
    let body: Value = serde_json::from_slice(&received.body).unwrap();
    assert_eq!(body["type"], "job.completed");
    assert_eq!(body["data"]["result"]["status"], "COMPLETED");
}

#[tokio::test]
async fn failed_and_cancelled_runs_map_to_their_job_states_with_the_run_as_result() {
    let emu = arize_emulator(Duration::from_millis(300)).await;
    let app = spawn(&emu, "100ms").await;
    for (name, state, run_status) in [
        ("nightly EMULATOR_RUN_FAIL", "failed", "FAILED"),
        ("nightly EMULATOR_RUN_CANCEL", "cancelled", "CANCELLED"),
    ] {
        let task = emu.seed_task(name, ArizeTaskType::TemplateEvaluation);
        let (status, accepted) =
            submit(&app, json!({"kind": "arize_task_run", "task": task})).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
        let job = accepted["job_id"].as_str().unwrap();
        let view = wait_job(&app, job).await;
        assert_eq!(view["status"], state, "{view}");
        let result = result_of(&app, job).await;
        assert_eq!(result["status"], run_status, "{result}");
        let reason = result["failure_reason"].as_str().expect("a failure reason");
        if state == "failed" {
            assert!(view["error"].as_str().unwrap().contains(reason), "{view}");
        }
    }
}

#[tokio::test]
async fn cancelling_a_managed_run_cancels_it_upstream_and_a_watched_run_is_polled() {
    let emu = arize_emulator(Duration::from_secs(30)).await;
    let app = spawn(&emu, "100ms").await;
    let task = emu.seed_task("long", ArizeTaskType::TemplateEvaluation);
    let (_, accepted) = submit(&app, json!({"kind": "arize_task_run", "task": task})).await;
    let job = accepted["job_id"].as_str().unwrap();
    let run_id = accepted["run_id"].as_str().unwrap();
    let (status, cancelled) = json_of(
        app.post(&format!("/v1/jobs/{job}/cancel"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    assert_eq!(cancelled["status"], "cancelled");
    let cancel = format!("/v2/task-runs/{}/cancel", encoded(run_id));
    assert_eq!(emu.requests_to(&Method::POST, &cancel).len(), 1);
    assert_eq!(emu.runs(&task)[0]["status"], "CANCELLED");

    // A run the caller triggered itself: watched, never triggered again.
    let quick = arize_emulator(Duration::from_millis(300)).await;
    let app = spawn(&quick, "100ms").await;
    let task = quick.seed_task("own", ArizeTaskType::TemplateEvaluation);
    let (run, _) = trigger_through(&app, &task, CALLER_KEY).await;
    let (status, accepted) =
        submit(&app, json!({"kind": "arize_task_run", "run_id": run["id"]})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    let view = wait_job(&app, accepted["job_id"].as_str().unwrap()).await;
    assert_eq!(view["status"], "completed", "{view}");
    assert_eq!(view["batches"][0]["submits"], 0, "never triggered");
    assert_eq!(quick.runs(&task).len(), 1);
    // Requests that do not make sense are 400s in the /v1 shape.
    for bad in [
        json!({"kind": "arize_task_run"}),
        json!({"kind": "arize_task_run", "task": task, "run_id": "x"}),
        json!({"kind": "arize_task_run", "task": task, "dataset": [{}]}),
        json!({"kind": "arize_task_run", "task": "..", "options": {}}),
        json!({"kind": "arize_task_run", "task": task, "options": [1]}),
        json!({"kind": "evaluation", "task": task, "dataset": [{}]}),
    ] {
        let (status, body) = submit(&app, bad.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad} -> {body}");
        assert_eq!(body["error"]["code"], "bad_request");
    }
}

#[tokio::test]
async fn an_ambiguous_trigger_is_reconciled_instead_of_triggered_again() {
    let emu = arize_emulator(Duration::from_millis(800)).await;
    let app = spawn(&emu, "100ms").await;
    let task = emu.seed_task("ambiguous", ArizeTaskType::TemplateEvaluation);
    // The trigger reaches Arize and creates its run, but its answer never comes back.
    emu.drop_next_post_after_processing(1);
    let (status, accepted) = submit(&app, json!({"kind": "arize_task_run", "task": task})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    let job = accepted["job_id"].as_str().unwrap();
    let view = wait_job(&app, job).await;
    assert_eq!(view["status"], "completed", "{view}");
    // One run only: the retry listed the task's active runs and adopted the one it had made.
    let runs = emu.runs(&task);
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(view["batches"][0]["upstream_job_id"], runs[0]["id"]);
    let trigger = format!("/v2/tasks/{}/trigger", encoded(&task));
    assert_eq!(emu.requests_to(&Method::POST, &trigger).len(), 1);
    let listed = emu
        .requests()
        .into_iter()
        .filter(|r| {
            r.path.ends_with("/runs")
                && r.query
                    .as_deref()
                    .is_some_and(|q| q.contains("status=PENDING"))
        })
        .count();
    assert!(listed >= 1, "the retry reconciled first");
}

#[tokio::test]
async fn each_tenant_uses_its_own_arize_key_and_never_sees_another_keys_run_answers() {
    const TEAM_A_KEY: &str = "ak_team_a_own_key_0001";
    const TOKEN_A: &str = "token-of-team-a-000001";
    const TOKEN_B: &str = "token-of-team-b-000001";
    // Any key is accepted upstream, so only what evalgate sends decides which key is used.
    let emu = valiqor_emulator::ArizeEmulator::spawn(ArizeConfig {
        api_key: None,
        run_duration: Duration::from_secs(30),
        ..ArizeConfig::default()
    })
    .await
    .unwrap();
    let toml = format!(
        "{}[auth]\nmode = \"tokens\"\n[[tenants]]\nname = \"team-a\"\ntokens = [\"{TOKEN_A}\"]\narize_api_key = \"{TEAM_A_KEY}\"\n[[tenants]]\nname = \"team-b\"\ntokens = [\"{TOKEN_B}\"]\n",
        arize_toml(&emu, "30s")
    );
    let app = TestApp::spawn_toml(emulator_config(), &toml, fast).await;
    let task = emu.seed_task("shared", ArizeTaskType::TemplateEvaluation);
    let (_, path) = trigger_through(&app, &task, TOKEN_A).await;
    let trigger = format!("/v2/tasks/{}/trigger", encoded(&task));
    assert_eq!(
        emu.requests_to(&Method::POST, &trigger)[0].bearer(),
        Some(TEAM_A_KEY)
    );
    for token in [TOKEN_A, TOKEN_B, TOKEN_A, TOKEN_B] {
        let polled = arize_get(&app, &path, Some(token)).await;
        assert_eq!(polled.status(), StatusCode::OK);
    }
    // One upstream poll per key: a tenant is never answered from another key's poll.
    let polls = emu.requests_to(&Method::GET, &path);
    let mut keys: Vec<&str> = polls.iter().filter_map(|r| r.bearer()).collect();
    keys.sort_unstable();
    assert_eq!(keys, [ARIZE_KEY, TEAM_A_KEY]);
    // Without a token: 401 as a problem document, and nothing reaches Arize.
    let before = emu.requests().len();
    let response = arize_get(&app, &path, None).await;
    assert_problem(&response, StatusCode::UNAUTHORIZED);
    assert_eq!(emu.requests().len(), before);
    for key in emu.seen_bearer_keys() {
        assert!(key == ARIZE_KEY || key == TEAM_A_KEY, "{key} reached Arize");
    }
}

#[tokio::test]
async fn a_429_with_retry_after_holds_a_runs_polls_until_it_passes() {
    let emu = arize_emulator(Duration::from_secs(30)).await;
    let app = spawn(&emu, "100ms").await;
    let task = emu.seed_task("throttled", ArizeTaskType::TemplateEvaluation);
    let (_, path) = trigger_through(&app, &task, CALLER_KEY).await;
    emu.set_faults(valiqor_emulator::Faults {
        retry_after_secs: 30,
        ..valiqor_emulator::Faults::default()
    });
    emu.fail_next(1, StatusCode::TOO_MANY_REQUESTS);
    let first = arize_get(&app, &path, Some(CALLER_KEY)).await;
    assert_eq!(first.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(first.headers()["x-evalgate-cache"], "miss");
    // Well past run_status_max_age, the upstream's Retry-After still holds: answered from
    // memory with what is left of it, and Arize is not asked again.
    let second = arize_get(&app, &path, Some(CALLER_KEY)).await;
    assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(second.headers()["x-evalgate-cache"], "hit");
    let left: u64 = second.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=30).contains(&left), "{left}");
    assert_eq!(emu.requests_to(&Method::GET, &path).len(), 1);
}
