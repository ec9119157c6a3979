//! Bounds and evalgate's own errors: rate limits, load shedding, body limit, timeouts, an
//! unreachable or misbehaving upstream. Every error is in the Valiqor shape the SDK maps.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers outside #[test] functions fail fast by design"
)]

mod common;

use std::time::Duration;

use common::{TestApp, dataset, emulator_config};
use http::StatusCode;
use serde_json::{Value, json};
use valiqor_emulator::{Emulator, EmulatorConfig, Faults};

async fn detail_and_code(response: reqwest::Response) -> (String, String) {
    let body: Value = response.json().await.unwrap();
    (
        body["detail"]
            .as_str()
            .expect("detail is a string")
            .to_owned(),
        body["code"].as_str().expect("code is a string").to_owned(),
    )
}

fn retry_after(response: &reqwest::Response) -> u64 {
    response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .expect("Retry-After is an integer number of seconds")
}

#[tokio::test]
async fn playground_is_limited_before_forwarding() {
    let app = TestApp::spawn_with(emulator_config(), |c| {
        c.rate_limit.playground_per_minute = 2;
    })
    .await;
    let run = || async {
        app.post("/v2/failure-analysis/playground")
            .json(&json!({"input": "q", "output": "a"}))
            .send()
            .await
            .unwrap()
    };
    assert_eq!(run().await.status(), StatusCode::OK);
    assert_eq!(run().await.status(), StatusCode::OK);
    let limited = run().await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait = retry_after(&limited);
    assert!((1..=30).contains(&wait), "{wait}");
    let (detail, code) = detail_and_code(limited).await;
    assert_eq!(code, "rate_limited");
    assert!(detail.contains("playground_per_minute"), "{detail}");
    assert_eq!(
        app.emulator()
            .requests_to(&http::Method::POST, "/v2/failure-analysis/playground")
            .len(),
        2,
        "the limited run never reached the upstream"
    );
    // Other routes are not affected by the playground limit.
    assert_eq!(
        app.get("/v2/failure-analysis/projects")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn upstream_rate_limit_applies_to_all_routes_when_enabled() {
    let app = TestApp::spawn_with(emulator_config(), |c| {
        c.rate_limit.upstream_per_second = 1;
        c.rate_limit.upstream_burst = 2;
    })
    .await;
    let statuses: Vec<StatusCode> = futures::future::join_all((0..4).map(|_| async {
        app.get("/v2/failure-analysis/projects")
            .send()
            .await
            .unwrap()
            .status()
    }))
    .await;
    assert_eq!(
        statuses.iter().filter(|s| **s == StatusCode::OK).count(),
        2,
        "{statuses:?}"
    );
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
            .count(),
        2,
        "{statuses:?}"
    );
    assert_eq!(app.emulator().requests().len(), 2);
}

#[tokio::test]
async fn load_beyond_max_in_flight_is_shed_with_503_and_retry_after() {
    let app = TestApp::spawn_with(
        EmulatorConfig {
            faults: Faults {
                latency: Duration::from_millis(500),
                ..Faults::default()
            },
            ..emulator_config()
        },
        |c| c.server.max_in_flight = 2,
    )
    .await;
    let responses = futures::future::join_all((0..6).map(|_| async {
        app.get("/v2/failure-analysis/projects")
            .send()
            .await
            .unwrap()
    }))
    .await;
    let ok = responses
        .iter()
        .filter(|r| r.status() == StatusCode::OK)
        .count();
    let shed: Vec<_> = responses
        .iter()
        .filter(|r| r.status() == StatusCode::SERVICE_UNAVAILABLE)
        .collect();
    assert_eq!(ok, 2);
    assert_eq!(shed.len(), 4);
    assert!(shed.iter().all(|r| retry_after(r) >= 1));
    assert!(app.metrics().await.contains("evalgate_http_shed_total 4"));
}

#[tokio::test]
async fn oversize_bodies_get_413_whether_declared_or_streamed() {
    let app = TestApp::spawn_with(emulator_config(), |c| c.server.max_body_bytes = 64 * 1024).await;
    let big = json!({"run_eval": true, "dataset": dataset(2000)}).to_string();
    assert!(big.len() > 64 * 1024);
    let declared = app
        .post("/v2/failure-analysis/analyze")
        .header("content-type", "application/json")
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(declared.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(detail_and_code(declared).await.1, "payload_too_large");
    // Chunked, with no Content-Length: caught while streaming.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = big
        .as_bytes()
        .chunks(8192)
        .map(|c| Ok(c.to_vec()))
        .collect();
    let streamed = app
        .post("/v2/projects")
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(streamed.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        app.emulator()
            .requests_to(&http::Method::POST, "/v2/failure-analysis/analyze")
            .is_empty()
    );
}

#[tokio::test]
async fn unreachable_upstream_is_503_with_retry_after_because_nothing_was_sent() {
    // Bind and drop an emulator to get a loopback port that refuses connections.
    let dead = Emulator::spawn(emulator_config()).await.unwrap();
    let dead_url = dead.handle().base_url();
    drop(dead);
    let spare = Emulator::spawn(emulator_config()).await.unwrap();
    let app = TestApp::spawn_over(spare, &dead_url, |_| {}).await;
    for request in [
        app.get("/v2/failure-analysis/projects"),
        app.post("/v2/failure-analysis/analyze")
            .json(&json!({"dataset": dataset(1)})),
    ] {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!((1..=30).contains(&retry_after(&response)));
        let (detail, code) = detail_and_code(response).await;
        assert_eq!(code, "upstream_unavailable");
        assert!(detail.contains("upstream"), "{detail}");
    }
}

#[tokio::test]
async fn a_dropped_connection_after_sending_is_502_without_retry_after() {
    let app = TestApp::spawn().await;
    app.emulator().set_faults(Faults {
        drop_rate: 1.0,
        ..Faults::default()
    });
    let response = app
        .post("/v2/failure-analysis/analyze")
        .json(&json!({"dataset": dataset(1)}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert!(
        response.headers().get("retry-after").is_none(),
        "a replay is not known to be safe"
    );
    assert_eq!(detail_and_code(response).await.1, "upstream_failed");
}

#[tokio::test]
async fn a_slow_upstream_times_out_with_504() {
    let app = TestApp::spawn_with(
        EmulatorConfig {
            faults: Faults {
                latency: Duration::from_secs(5),
                ..Faults::default()
            },
            ..emulator_config()
        },
        |c| c.valiqor.timeout = Duration::from_millis(300),
    )
    .await;
    let response = app
        .get("/v2/failure-analysis/projects")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(detail_and_code(response).await.1, "upstream_timeout");
}

#[tokio::test]
async fn upstream_429_passes_through_with_its_retry_after() {
    let app = TestApp::spawn().await;
    app.emulator().fail_next(1, StatusCode::TOO_MANY_REQUESTS);
    let response = app
        .get("/v2/failure-analysis/projects")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(response.headers().contains_key("retry-after"));
}
