//! Operations: probes, metrics, and shutdown: the drain under load, and the cut at the end of the
//! grace period with the upstream still up.
mod common;

use std::time::{Duration, Instant};

use common::{TestApp, dataset, emulator_config, eventually};
use http::StatusCode;
use serde_json::{Value, json};
use tokio::task::JoinSet;
use valiqor_emulator::{EmulatorConfig, Faults, RecordedRequest};

#[tokio::test]
async fn probes_answer_on_the_admin_port_only() {
    let app = TestApp::spawn().await;
    for path in ["/livez", "/readyz"] {
        let response = app
            .client
            .get(format!("{}{path}", app.admin))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let on_api = app
            .client
            .get(format!("{}{path}", app.api))
            .send()
            .await
            .unwrap();
        assert_eq!(
            on_api.status(),
            StatusCode::NOT_FOUND,
            "{path} is not on the API port"
        );
    }
}

#[tokio::test]
async fn metrics_count_requests_by_route_template_and_record_overhead() {
    let app = TestApp::spawn().await;
    app.get("/v2/failure-analysis/runs/abc/status")
        .send()
        .await
        .unwrap();
    app.get("/v2/failure-analysis/runs/def/status")
        .send()
        .await
        .unwrap();
    app.get("/v2/nope").send().await.unwrap();
    let metrics = app.metrics().await;
    for needle in [
        "evalgate_http_requests_total{route=\"/v2/failure-analysis/runs/{id}/status\",method=\"GET\",status=\"404\",tenant=\"default\",upstream=\"valiqor\"} 2",
        "evalgate_http_requests_total{route=\"unmatched\",method=\"GET\",status=\"404\",tenant=\"default\",upstream=\"valiqor\"} 1",
        "evalgate_overhead_seconds_bucket{route=\"/v2/failure-analysis/runs/{id}/status\",upstream=\"valiqor\"",
        "evalgate_upstream_request_duration_seconds_count{route=\"/v2/failure-analysis/runs/{id}/status\",upstream=\"valiqor\"} 2",
        "evalgate_http_request_duration_seconds_count",
        "evalgate_http_errors_total{code=\"unknown_route\"} 1",
        "evalgate_upstream_requests_total{outcome=\"response\",upstream=\"valiqor\"} 2",
        "evalgate_http_in_flight",
    ] {
        assert!(metrics.contains(needle), "{needle} missing from\n{metrics}");
    }
    assert!(!metrics.contains("/abc/"), "ids never become labels");
}

/// Waits (bounded) until the emulator has received `n` requests matching `matches`.
async fn upstream_received(app: &TestApp, n: usize, matches: impl Fn(&RecordedRequest) -> bool) {
    eventually(Duration::from_secs(10), || async {
        app.emulator()
            .requests()
            .iter()
            .filter(|r| matches(r))
            .count()
            >= n
    })
    .await;
}

#[tokio::test]
async fn shutdown_drains_concurrent_requests_under_load_and_returns_early() {
    const EACH: usize = 8;
    const GRACE: Duration = Duration::from_secs(10);
    let latency = Duration::from_millis(1500);
    let mut app = TestApp::spawn_with(
        EmulatorConfig {
            faults: Faults {
                latency,
                ..Faults::default()
            },
            ..emulator_config()
        },
        |c| c.server.shutdown_grace_period = GRACE,
    )
    .await;
    // Forwarded GETs and submits (body read, BYOK pass), all in flight upstream at once.
    let mut calls = JoinSet::new();
    for i in 0..EACH {
        let get = app.get("/v2/failure-analysis/projects");
        calls.spawn(async move { get.send().await.map(|r| r.status()) });
        let submit = app
            .post("/v2/failure-analysis/analyze")
            .json(&json!({"run_eval": true, "dataset": dataset(1 + i % 3)}));
        calls.spawn(async move { submit.send().await.map(|r| r.status()) });
    }
    upstream_received(&app, 2 * EACH, |_| true).await;
    let started = Instant::now();
    app.begin_shutdown();
    eventually(Duration::from_secs(5), || async {
        app.client
            .get(format!("{}/readyz", app.admin))
            .send()
            .await
            .is_ok_and(|r| r.status() == StatusCode::SERVICE_UNAVAILABLE)
    })
    .await;
    let mut statuses = Vec::new();
    while let Some(call) = calls.join_next().await {
        statuses.push(call.unwrap().expect("answered, not cut"));
    }
    assert_eq!(statuses.len(), 2 * EACH);
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "every in-flight request got its upstream answer: {statuses:?}"
    );
    app.finished()
        .await
        .expect("run returns Ok after a clean drain");
    let took = started.elapsed();
    assert!(
        took < GRACE / 2,
        "run returned when the work was done ({took:?}), not at the deadline"
    );
}

#[tokio::test]
async fn requests_still_running_at_the_deadline_get_502_shutting_down_and_run_returns_in_time() {
    const GRACE: Duration = Duration::from_secs(1);
    let mut app = TestApp::spawn_with(
        EmulatorConfig {
            inline_max_items: 4,
            job_duration: Duration::from_secs(60),
            ..emulator_config()
        },
        |c| {
            c.server.shutdown_grace_period = GRACE;
            c.batching.failure_analysis.max_items = 10;
            c.jobs.poll_initial_interval = Duration::from_millis(50);
            c.jobs.poll_max_interval = Duration::from_millis(100);
        },
    )
    .await;
    // A managed job whose batches run upstream, so its cancel calls the upstream inline.
    let accepted: Value = app
        .post("/v1/jobs")
        .json(&json!({"kind": "failure_analysis", "dataset": dataset(25)}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = accepted["job_id"].as_str().unwrap().to_owned();
    eventually(Duration::from_secs(10), || async {
        let status: Value = app
            .get(&format!("/v1/jobs/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        status["batches"]
            .as_array()
            .is_some_and(|b| b.iter().all(|b| b["status"] == "running"))
    })
    .await;
    // From now on the upstream is far slower than the grace period; the engine's polls hang too.
    app.emulator().set_faults(Faults {
        latency: Duration::from_secs(30),
        ..Faults::default()
    });
    let timed = |request: reqwest::RequestBuilder| async move {
        let response = request.send().await.unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        (status, body, Instant::now())
    };
    let mut forward = JoinSet::new();
    forward.spawn(timed(app.get("/v2/failure-analysis/projects")));
    let mut cancel = JoinSet::new();
    cancel.spawn(timed(app.post(&format!("/v1/jobs/{id}/cancel"))));
    upstream_received(&app, 1, |r| r.path == "/v2/failure-analysis/projects").await;
    upstream_received(&app, 1, |r| r.path.ends_with("/cancel")).await;

    let started = Instant::now();
    app.begin_shutdown();
    app.finished()
        .await
        .expect("a cut-off drain still returns Ok");
    let took = started.elapsed();
    assert!(
        took <= GRACE + Duration::from_secs(1),
        "run returned within grace + 1 s, took {took:?}"
    );

    let (status, body, at) = forward.join_next().await.unwrap().unwrap();
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(body["code"], "shutting_down", "Valiqor shape: {body}");
    assert!(body["detail"].is_string(), "the SDK reads detail: {body}");
    assert!(at - started >= GRACE, "cut at the deadline, not before");

    let (status, body, at) = cancel.join_next().await.unwrap().unwrap();
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(body["error"]["code"], "shutting_down", "/v1 shape: {body}");
    assert!(at - started >= GRACE, "cut at the deadline, not before");
    // The upstream was never taken away: the cut came from evalgate's deadline.
    assert!(!app.emulator().requests().is_empty());
}

#[tokio::test]
async fn admin_actions_need_the_admin_token_when_one_is_configured() {
    let app = TestApp::spawn_with(emulator_config(), |c| {
        c.server.admin_token = Some(evalgate::types::Secret::new("adm1n-t0ken".to_owned()));
    })
    .await;
    let purge = |token: Option<&'static str>| {
        let mut request = app.client.post(format!("{}/admin/cache/purge", app.admin));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    for wrong in [None, Some("nope")] {
        let response = purge(wrong).await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{wrong:?}");
        let body = response.text().await.unwrap();
        assert!(!body.contains("adm1n-t0ken"), "{body}");
    }
    assert_eq!(
        purge(Some("adm1n-t0ken")).await.unwrap().status(),
        StatusCode::OK
    );
    // Probes and metrics stay open.
    for path in ["/livez", "/readyz", "/metrics"] {
        let response = app
            .client
            .get(format!("{}{path}", app.admin))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
}

#[tokio::test]
async fn with_allowed_hosts_set_another_host_is_refused_on_the_api_port() {
    let app = TestApp::spawn_with(emulator_config(), |c| {
        c.server.allowed_hosts = vec!["evalgate.internal".to_owned()];
    })
    .await;
    let port = app.api.rsplit(':').next().unwrap().to_owned();
    // The address itself is not a listed name.
    let refused = app.get("/v1/jobs").send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "host_not_allowed", "{body}");
    let refused = app
        .get("/v2/failure-analysis/taxonomy")
        .header("host", format!("rebound.example:{port}"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    assert!(app.emulator().requests().is_empty());
    // The listed name, any port, any case.
    let served = app
        .get("/v1/jobs")
        .header("host", format!("EvalGate.Internal:{port}"))
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), StatusCode::OK);
    // The admin port does not check Host (probes come by address).
    let ready = app
        .client
        .get(format!("{}/livez", app.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
}
