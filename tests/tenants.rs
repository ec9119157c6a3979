//! Callers and tenants against the real server: 401 with nothing forwarded, each tenant's keys
//! upstream, isolation (another tenant's jobs and deliveries are 404), per-tenant limits, and a
//! tenants file swapped the way Kubernetes swaps a mount, taking effect without a restart.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] functions fail fast by design"
)]

mod common;
#[path = "common/webhook_sink.rs"]
#[expect(dead_code, reason = "this test uses only part of the sink")]
mod webhook_sink;

use std::{path::Path, time::Duration};

use common::{TestApp, UPSTREAM_KEY, dataset, emulator_config, eventually};
use evalgate::{config::Config, types::Secret};
use http::{Method, StatusCode};
use serde_json::{Value, json};
use valiqor_emulator::EmulatorConfig;

const TOKEN_A: &str = "vq_team_a_token_0001";
const TOKEN_B: &str = "vq_team_b_token_0001";
const KEY_A: &str = "vq_platform_key_of_team_a";
const JUDGE_A: &str = "sk-judge-of-team-a-777";
const JUDGE_DEFAULT: &str = "sk-judge-default-555";

fn two_tenants(extra_a: &str) -> String {
    format!(
        r#"
        [auth]
        mode = "tokens"
        [[tenants]]
        name = "team-a"
        tokens = ["{TOKEN_A}"]
        valiqor_api_key = "{KEY_A}"
        openai_api_key = "{JUDGE_A}"
        {extra_a}
        [[tenants]]
        name = "team-b"
        tokens = ["{TOKEN_B}"]
        "#
    )
}

/// Any `vq_` key is accepted upstream, so the emulator records which key each request carried.
fn open_emulator() -> EmulatorConfig {
    EmulatorConfig {
        api_key: None,
        inline_max_items: 4,
        job_duration: Duration::from_millis(200),
        ..emulator_config()
    }
}

fn fast(c: &mut Config) {
    c.valiqor.openai_api_key = Some(Secret::new(JUDGE_DEFAULT.to_owned()));
    c.batching.failure_analysis.max_items = 10;
    c.jobs.poll_initial_interval = Duration::from_millis(20);
    c.jobs.poll_max_interval = Duration::from_millis(100);
}

async fn tenants_app(extra_a: &str) -> TestApp {
    TestApp::spawn_toml(open_emulator(), &two_tenants(extra_a), fast).await
}

fn call(app: &TestApp, method: Method, path: &str, token: Option<&str>) -> reqwest::RequestBuilder {
    let request = app.client.request(method, format!("{}{path}", app.api));
    match token {
        Some(token) => request.bearer_auth(token),
        None => request,
    }
}

/// The bearer key of every request the upstream received since the last clear, in order.
fn bearers(app: &TestApp) -> Vec<String> {
    app.emulator()
        .requests()
        .iter()
        .map(|r| r.bearer().unwrap_or_default().to_owned())
        .collect()
}

/// The `openai_api_key` of every submit body the upstream received since the last clear.
fn judges(app: &TestApp) -> Vec<String> {
    app.emulator()
        .requests()
        .iter()
        .filter_map(|r| {
            r.body_json()?
                .get("openai_api_key")?
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

/// Sends a body-less request and reads its JSON answer.
async fn send(
    app: &TestApp,
    method: Method,
    path: &str,
    token: Option<&str>,
) -> (StatusCode, Value) {
    json(call(app, method, path, token).send().await.unwrap()).await
}

async fn json(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.unwrap();
    // Not JSON: the text itself, which the caller's assertion then shows.
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}

#[tokio::test]
async fn unknown_or_missing_tokens_get_401_and_nothing_reaches_the_upstream() {
    let app = tenants_app("").await;
    for token in [
        None,
        Some("vq_not_a_known_token_at_all"),
        Some(UPSTREAM_KEY),
    ] {
        for (method, path, body) in [
            (Method::GET, "/v2/auth/usage", None),
            (
                Method::POST,
                "/v2/admin/projects",
                Some(json!({"name": "p"})),
            ),
            (
                Method::POST,
                "/v2/failure-analysis/analyze",
                Some(json!({"dataset": dataset(2)})),
            ),
            (Method::GET, "/v2/failure-analysis/taxonomy", None),
        ] {
            let mut request = call(&app, method, path, token);
            if let Some(body) = body {
                request = request.json(&body);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.headers()["www-authenticate"], "Bearer", "{path}");
            let (status, body) = json(response).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{path} {token:?}");
            // The Valiqor shape: the SDK raises AuthenticationError from `detail`.
            assert_eq!(body["code"], "unauthenticated", "{body}");
            assert!(body["detail"].is_string(), "{body}");
        }
        // The native API answers in its own shape.
        let (status, body) = send(&app, Method::GET, "/v1/jobs", token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body["error"]["code"], "unauthenticated", "{body}");
    }
    assert!(
        app.emulator().requests().is_empty(),
        "{:?}",
        app.emulator().requests()
    );
    // The API description stays public.
    let response = call(&app, Method::GET, "/openapi.json", None)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("evalgate_auth_failures_total{reason=\"missing\"}"),
        "{metrics}"
    );
    // A configured tenant name labels its requests; tokens never appear.
    assert!(!metrics.contains(TOKEN_A) && !metrics.contains("vq_not_a_known"));
}

#[tokio::test]
async fn each_tenant_reaches_the_upstream_with_its_own_keys() {
    let app = tenants_app("").await;
    let emulator = app.emulator();
    // Pass-through and a submit with BYOK: team-a's keys ...
    let response = call(&app, Method::GET, "/v2/projects", Some(TOKEN_A))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let response = call(
        &app,
        Method::POST,
        "/v2/failure-analysis/analyze",
        Some(TOKEN_A),
    )
    .json(&json!({"dataset": dataset(2)}))
    .send()
    .await
    .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    assert_eq!(bearers(&app), [KEY_A, KEY_A]);
    assert_eq!(judges(&app), [JUDGE_A]);
    emulator.clear_requests();
    // ... team-b has none of its own: the defaults.
    call(&app, Method::GET, "/v2/projects", Some(TOKEN_B))
        .send()
        .await
        .unwrap();
    call(
        &app,
        Method::POST,
        "/v2/failure-analysis/analyze",
        Some(TOKEN_B),
    )
    .json(&json!({"dataset": dataset(2)}))
    .send()
    .await
    .unwrap();
    assert_eq!(bearers(&app), [UPSTREAM_KEY, UPSTREAM_KEY]);
    assert_eq!(judges(&app), [JUDGE_DEFAULT]);
    emulator.clear_requests();

    // The taxonomy cache keeps the two credentials apart: one upstream call each.
    for token in [TOKEN_A, TOKEN_B, TOKEN_A, TOKEN_B] {
        let response = call(
            &app,
            Method::GET,
            "/v2/failure-analysis/taxonomy",
            Some(token),
        )
        .send()
        .await
        .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_eq!(bearers(&app), [KEY_A, UPSTREAM_KEY]);
    // The upstream never saw a caller token.
    let seen = app.emulator().seen_bearer_keys();
    assert!(
        !seen.iter().any(|k| k == TOKEN_A || k == TOKEN_B),
        "{seen:?}"
    );
    emulator.clear_requests();

    // A managed job: every batch submit and every poll carries team-a's key.
    let (status, accepted) = json(
        call(&app, Method::POST, "/v1/jobs", Some(TOKEN_A))
            .json(&json!({"kind": "failure_analysis", "dataset": dataset(25)}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    let id = accepted["job_id"].as_str().unwrap();
    let (_, done) = send(
        &app,
        Method::GET,
        &format!("/v1/jobs/{id}?wait=20s"),
        Some(TOKEN_A),
    )
    .await;
    assert_eq!(done["status"], "completed", "{done}");
    let keys = bearers(&app);
    assert!(keys.len() >= 6, "3 submits and their polls: {keys:?}");
    assert!(keys.iter().all(|k| k == KEY_A), "{keys:?}");
    assert_eq!(judges(&app), [JUDGE_A, JUDGE_A, JUDGE_A]);
}

/// The same Idempotency-Key with another body is a new job for team-b, never a conflict naming
/// team-a's job `id`, which stays as it was.
async fn assert_idempotency_keys_are_per_tenant(app: &TestApp, id: &str) {
    // Idempotency keys are per tenant: the same key with another body is a new job for team-b,
    // never a conflict naming team-a's job.
    let (status, other) = json(
        call(app, Method::POST, "/v1/jobs", Some(TOKEN_B))
            .header("idempotency-key", "shared-key")
            .json(&json!({"kind": "failure_analysis", "dataset": dataset(2)}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{other}");
    assert_ne!(other["job_id"], id);
    // team-b cannot cancel team-a's job and team-a's job is untouched.
    let (_, still) = send(app, Method::GET, &format!("/v1/jobs/{id}"), Some(TOKEN_A)).await;
    assert_eq!(still["status"], "completed");
}

/// Every route that names `id` answers team-b 404, in the shape of its surface.
async fn assert_every_route_is_not_found(app: &TestApp, id: &str) {
    let native = [
        (Method::GET, format!("/v1/jobs/{id}")),
        (Method::GET, format!("/v1/jobs/{id}/result")),
        (Method::GET, format!("/v1/jobs/{id}/events")),
        (Method::POST, format!("/v1/jobs/{id}/cancel")),
        (Method::POST, format!("/v1/jobs/{id}/webhooks/replay")),
    ];
    for (method, path) in native {
        let (status, body) = send(app, method, &path, Some(TOKEN_B)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
        assert_eq!(body["error"]["code"], "not_found", "{path}");
    }
    let sdk = [
        (
            Method::GET,
            format!("/v2/failure-analysis/runs/{id}/status"),
        ),
        (Method::GET, format!("/v2/failure-analysis/runs/{id}")),
        (
            Method::GET,
            format!("/v2/failure-analysis/runs/{id}/inputs"),
        ),
        (Method::GET, format!("/v2/failure-analysis/runs/{id}/tags")),
        (
            Method::POST,
            format!("/v2/failure-analysis/runs/{id}/cancel"),
        ),
    ];
    for (method, path) in sdk {
        let (status, body) = send(app, method, &path, Some(TOKEN_B)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
        assert!(body["detail"].is_string(), "{path}: {body}");
    }
}

#[tokio::test]
async fn another_tenants_jobs_and_deliveries_are_not_found() {
    let mut sink = webhook_sink::WebhookSink::start().await;
    let app = TestApp::spawn_toml(open_emulator(), &two_tenants(""), |c| {
        fast(c);
        c.webhooks.allowed_cidrs = vec!["127.0.0.0/8".parse().unwrap()];
    })
    .await;
    let (_, secret) = evalgate::webhooks::signing::SigningSecret::generate();
    let webhook = json!({"url": sink.url, "secret": secret});
    let (status, accepted) = json(
        call(&app, Method::POST, "/v1/jobs", Some(TOKEN_A))
            .header("idempotency-key", "shared-key")
            .json(&json!({"kind": "failure_analysis", "dataset": dataset(3), "webhook": webhook}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    let id = accepted["job_id"].as_str().unwrap().to_owned();
    let (_, done) = send(
        &app,
        Method::GET,
        &format!("/v1/jobs/{id}?wait=20s"),
        Some(TOKEN_A),
    )
    .await;
    assert_eq!(done["status"], "completed", "{done}");
    sink.next(20).await;

    assert_every_route_is_not_found(&app, &id).await;
    // Lists show only the caller's own.
    let (_, list_b) = send(&app, Method::GET, "/v1/jobs", Some(TOKEN_B)).await;
    assert_eq!(list_b["jobs"], json!([]), "{list_b}");
    let (_, list_a) = send(&app, Method::GET, "/v1/jobs", Some(TOKEN_A)).await;
    assert_eq!(list_a["jobs"][0]["job_id"], id.as_str(), "{list_a}");
    let (_, deliveries_b) = send(&app, Method::GET, "/v1/webhooks/deliveries", Some(TOKEN_B)).await;
    assert_eq!(deliveries_b["deliveries"], json!([]), "{deliveries_b}");
    let (_, deliveries_a) = send(&app, Method::GET, "/v1/webhooks/deliveries", Some(TOKEN_A)).await;
    let delivery = deliveries_a["deliveries"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _) = send(
        &app,
        Method::POST,
        &format!("/v1/webhooks/deliveries/{delivery}/replay"),
        Some(TOKEN_B),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // team-a itself can replay it.
    let response = call(
        &app,
        Method::POST,
        &format!("/v1/webhooks/deliveries/{delivery}/replay"),
        Some(TOKEN_A),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);

    assert_idempotency_keys_are_per_tenant(&app, &id).await;
}

#[tokio::test]
async fn a_tenant_over_its_limits_gets_429_and_the_others_are_untouched() {
    let app = tenants_app("requests_per_second = 1\nburst = 2\nmax_active_jobs = 1").await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let response = call(&app, Method::GET, "/v2/projects", Some(TOKEN_A))
            .send()
            .await
            .unwrap();
        statuses.push(response.status());
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            assert!(response.headers().contains_key("retry-after"));
        }
    }
    assert_eq!(&statuses[..2], [StatusCode::OK, StatusCode::OK]);
    assert!(
        statuses[2..].contains(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    // team-b's budget is its own.
    for _ in 0..4 {
        let response = call(&app, Method::GET, "/v2/projects", Some(TOKEN_B))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    // max_active_jobs: team-b (no cap) can run two at once.
    app.emulator().set_job_duration(Duration::from_secs(30));
    for _ in 0..2 {
        let response = call(&app, Method::POST, "/v1/jobs", Some(TOKEN_B))
            .json(&json!({"kind": "failure_analysis", "dataset": dataset(5)}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
    }
}

#[tokio::test]
async fn a_tenant_at_its_max_active_jobs_gets_429_too_many_active_jobs() {
    let app = tenants_app("max_active_jobs = 1").await;
    app.emulator().set_job_duration(Duration::from_secs(30));
    let first = call(&app, Method::POST, "/v1/jobs", Some(TOKEN_A))
        .json(&json!({"kind": "failure_analysis", "dataset": dataset(5)}))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let second = call(&app, Method::POST, "/v1/jobs", Some(TOKEN_A))
        .json(&json!({"kind": "failure_analysis", "dataset": dataset(5)}))
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(second.headers().contains_key("retry-after"));
    let (_, body) = json(second).await;
    assert_eq!(body["error"]["code"], "too_many_active_jobs", "{body}");
    let other = call(&app, Method::POST, "/v1/jobs", Some(TOKEN_B))
        .json(&json!({"kind": "failure_analysis", "dataset": dataset(5)}))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::ACCEPTED);
}

/// Writes a Kubernetes-style mount as the chart lays it out (the file in a subdirectory of the
/// mount): `dir/tenants -> ..data/tenants`, `..data -> ..<version>`. A new version is swapped in
/// by renaming a new `..data` link over the old one, then the old version is deleted, as the
/// kubelet does.
fn k8s_mount(dir: &Path, version: &str, previous: Option<&str>, tenants: &str) {
    let versioned = dir.join(format!("..{version}"));
    std::fs::create_dir_all(versioned.join("tenants")).unwrap();
    std::fs::write(versioned.join("tenants/tenants.toml"), tenants).unwrap();
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(format!("..{version}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    let link = dir.join("tenants");
    if std::fs::symlink_metadata(&link).is_err() {
        std::os::unix::fs::symlink("..data/tenants", &link).unwrap();
    }
    if let Some(previous) = previous {
        std::fs::remove_dir_all(dir.join(format!("..{previous}"))).unwrap();
    }
}

#[tokio::test]
async fn a_symlink_swapped_tenants_file_takes_effect_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let tenant = |token: &str| format!("[[tenants]]\nname = \"team-a\"\ntokens = [\"{token}\"]\n");
    k8s_mount(dir.path(), "v1", None, &tenant(TOKEN_A));
    let file = dir.path().join("tenants/tenants.toml");
    let app = TestApp::spawn_toml(
        open_emulator(),
        &format!(
            "[auth]\nmode = \"tokens\"\ntenants_file = \"{}\"\n",
            file.display()
        ),
        fast,
    )
    .await;
    let status = |token: &'static str| {
        let request = call(&app, Method::GET, "/v2/projects", Some(token));
        async move { request.send().await.unwrap().status() }
    };
    assert_eq!(status(TOKEN_A).await, StatusCode::OK);
    assert_eq!(status(TOKEN_B).await, StatusCode::UNAUTHORIZED);

    // Rotation: the new token in, the old one out, by one atomic swap.
    // The old version is kept until the new one is in force: only the `..data` swap at the
    // mount's root announces the change (the file's own directory sees nothing).
    k8s_mount(dir.path(), "v2", None, &tenant(TOKEN_B));
    eventually(Duration::from_secs(10), || async {
        status(TOKEN_B).await == StatusCode::OK
    })
    .await;
    assert_eq!(status(TOKEN_A).await, StatusCode::UNAUTHORIZED);
    std::fs::remove_dir_all(dir.path().join("..v1")).unwrap();

    // A broken version is rejected: the set in force stays, and the reload is counted.
    k8s_mount(
        dir.path(),
        "v3",
        Some("v2"),
        "[[tenants]]\nname = \"Team A\"\n",
    );
    eventually(Duration::from_secs(10), || async {
        app.metrics()
            .await
            .contains("evalgate_tenant_reloads_total{outcome=\"rejected\"}")
    })
    .await;
    assert_eq!(status(TOKEN_B).await, StatusCode::OK);
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("evalgate_tenant_reloads_total{outcome=\"applied\"} 1"),
        "{metrics}"
    );
    // A second rotation after the failed one is still seen (the watches follow the swaps).
    k8s_mount(dir.path(), "v4", Some("v3"), &tenant(TOKEN_A));
    eventually(Duration::from_secs(10), || async {
        status(TOKEN_A).await == StatusCode::OK
    })
    .await;
    assert_eq!(status(TOKEN_B).await, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_tenants_keys_never_come_back_in_an_echoed_error_nor_in_metrics() {
    let app = tenants_app("").await;
    app.emulator().echo_next(1);
    let response = call(
        &app,
        Method::POST,
        "/v2/failure-analysis/analyze",
        Some(TOKEN_A),
    )
    .json(&json!({"dataset": dataset(2)}))
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let text = response.text().await.unwrap();
    // The upstream received team-a's judge key and echoed the body; the caller sees it scrubbed.
    let sent = app.emulator().requests();
    assert!(String::from_utf8_lossy(&sent[0].body).contains(JUDGE_A));
    assert!(text.contains("*****"), "{text}");
    for secret in [JUDGE_A, KEY_A, JUDGE_DEFAULT, UPSTREAM_KEY, TOKEN_A] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("tenant=\"team-a\""),
        "requests are labelled by tenant: {metrics}"
    );
    for secret in [JUDGE_A, KEY_A, TOKEN_A, TOKEN_B] {
        assert!(!metrics.contains(secret), "{secret} in the metrics");
    }
}

#[tokio::test]
async fn event_streams_beyond_server_max_event_streams_are_shed_with_503() {
    let app = TestApp::spawn_toml(open_emulator(), &two_tenants(""), |c| {
        fast(c);
        c.server.max_event_streams = 1;
    })
    .await;
    app.emulator().set_job_duration(Duration::from_secs(30));
    let (_, accepted) = json(
        call(&app, Method::POST, "/v1/jobs", Some(TOKEN_A))
            .json(&json!({"kind": "failure_analysis", "dataset": dataset(5)}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let events = format!("/v1/jobs/{}/events", accepted["job_id"].as_str().unwrap());
    let open = call(&app, Method::GET, &events, Some(TOKEN_A))
        .send()
        .await
        .unwrap();
    assert_eq!(open.status(), StatusCode::OK);
    let shed = call(&app, Method::GET, &events, Some(TOKEN_A))
        .send()
        .await
        .unwrap();
    assert_eq!(shed.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(shed.headers().contains_key("retry-after"));
    // Closing the first stream frees its slot.
    drop(open);
    eventually(Duration::from_secs(10), || async {
        call(&app, Method::GET, &events, Some(TOKEN_A))
            .send()
            .await
            .is_ok_and(|r| r.status() == StatusCode::OK)
    })
    .await;
}
