//! Operations: probes, metrics, graceful drain on shutdown.
mod common;

use std::time::Duration;

use common::{TestApp, emulator_config, eventually};
use http::StatusCode;
use valiqor_emulator::{EmulatorConfig, Faults};

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
        "evalgate_http_requests_total{route=\"/v2/failure-analysis/runs/{id}/status\",method=\"GET\",status=\"404\"} 2",
        "evalgate_http_requests_total{route=\"unmatched\",method=\"GET\",status=\"404\"} 1",
        "evalgate_overhead_seconds_bucket{route=\"/v2/failure-analysis/runs/{id}/status\"",
        "evalgate_upstream_request_duration_seconds_count{route=\"/v2/failure-analysis/runs/{id}/status\"} 2",
        "evalgate_http_request_duration_seconds_count",
        "evalgate_http_errors_total{code=\"unknown_route\"} 1",
        "evalgate_upstream_requests_total{outcome=\"response\"} 2",
        "evalgate_http_in_flight",
    ] {
        assert!(metrics.contains(needle), "{needle} missing from\n{metrics}");
    }
    assert!(!metrics.contains("/abc/"), "ids never become labels");
}

#[tokio::test]
async fn shutdown_turns_readiness_off_and_finishes_in_flight_requests() {
    let app = TestApp::spawn_with(
        EmulatorConfig {
            faults: Faults {
                latency: Duration::from_millis(1500),
                ..Faults::default()
            },
            ..emulator_config()
        },
        |c| c.server.shutdown_grace_period = Duration::from_secs(10),
    )
    .await;
    let slow = app.get("/v2/failure-analysis/projects").send();
    let during = async {
        // Wait until the slow request is in flight upstream, then ask for shutdown.
        eventually(Duration::from_secs(5), || async {
            !app.emulator().requests().is_empty()
        })
        .await;
        app.begin_shutdown();
        eventually(Duration::from_secs(5), || async {
            app.client
                .get(format!("{}/readyz", app.admin))
                .send()
                .await
                .is_ok_and(|r| r.status() == StatusCode::SERVICE_UNAVAILABLE)
        })
        .await;
    };
    let (slow, ()) = tokio::join!(slow, during);
    assert_eq!(
        slow.unwrap().status(),
        StatusCode::OK,
        "the in-flight request was not cut off"
    );
    app.stop()
        .await
        .expect("run returns Ok after a clean drain");
}

#[tokio::test]
async fn drain_is_bounded_by_the_grace_period() {
    let app = TestApp::spawn_with(
        EmulatorConfig {
            faults: Faults {
                latency: Duration::from_secs(20),
                ..Faults::default()
            },
            ..emulator_config()
        },
        |c| c.server.shutdown_grace_period = Duration::from_millis(300),
    )
    .await;
    let client = app.client.clone();
    let url = format!("{}/v2/failure-analysis/projects", app.api);
    let mut slow = tokio::task::JoinSet::new();
    slow.spawn(async move { client.get(url).send().await.map(|r| r.status()) });
    eventually(Duration::from_secs(5), || async {
        !app.emulator().requests().is_empty()
    })
    .await;
    let started = std::time::Instant::now();
    app.stop().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stopped within the grace period"
    );
    let cut = slow.join_next().await.unwrap().unwrap().unwrap();
    assert_eq!(
        cut,
        StatusCode::BAD_GATEWAY,
        "the over-long request was answered at the deadline"
    );
}
