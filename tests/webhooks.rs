//! Webhooks end to end: signed delivery of a finished job, retries with a stable id, 410,
//! dead-lettering and replay, rotation, the SSRF guard at submit and per attempt, SDK headers.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] functions fail fast by design"
)]

mod common;
#[path = "common/webhook_sink.rs"]
mod webhook_sink;

use std::time::Duration;

use common::{TestApp, dataset, emulator_config, eventually};
use evalgate::{
    config::{Config, StorePath},
    webhooks::signing::{SigningSecret, verify},
};
use http::StatusCode;
use serde_json::{Value, json};
use valiqor_emulator::EmulatorConfig;
use webhook_sink::{Received, WebhookSink};

fn fast(c: &mut Config) {
    c.batching.failure_analysis.max_items = 10;
    c.jobs.poll_initial_interval = Duration::from_millis(30);
    c.jobs.poll_max_interval = Duration::from_millis(150);
    c.webhooks.allowed_cidrs = vec!["127.0.0.0/8".parse().unwrap()];
    c.webhooks.retry_schedule = vec![Duration::from_millis(100), Duration::from_millis(100)];
}

fn emulator() -> EmulatorConfig {
    EmulatorConfig {
        inline_max_items: 4,
        job_duration: Duration::from_millis(200),
        ..emulator_config()
    }
}

async fn json_of(response: reqwest::Response) -> Value {
    let text = response.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or(Value::String(text))
}

async fn submit(app: &TestApp, webhook: Value) -> (StatusCode, Value) {
    let response = app
        .post("/v1/jobs")
        .json(&json!({"kind": "failure_analysis", "dataset": dataset(15), "webhook": webhook}))
        .send()
        .await
        .unwrap();
    (response.status(), json_of(response).await)
}

fn header<'a>(received: &'a Received, name: &str) -> &'a str {
    received.headers[name].to_str().unwrap()
}

fn verifies(received: &Received, secret: &SigningSecret) -> bool {
    let timestamp: i64 = header(received, "webhook-timestamp").parse().unwrap();
    verify(
        secret,
        header(received, "webhook-id"),
        timestamp,
        &received.body,
        header(received, "webhook-signature"),
    )
}

async fn deliveries(app: &TestApp, job: &str) -> Vec<Value> {
    let listed = json_of(
        app.get(&format!("/v1/webhooks/deliveries?job_id={job}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    listed["deliveries"].as_array().unwrap().clone()
}

#[tokio::test]
async fn a_finished_job_is_pushed_signed_with_its_result_inline() {
    let mut sink = WebhookSink::start().await;
    let app = TestApp::spawn_with(emulator(), fast).await;
    let (secret, secret_text) = SigningSecret::generate();
    let (status, accepted) = submit(&app, json!({"url": sink.url, "secret": secret_text})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    let received = sink.next(20).await;
    assert!(verifies(&received, &secret), "signature verifies");
    assert!(header(&received, "webhook-id").starts_with("msg_"));
    let body: Value = serde_json::from_slice(&received.body).unwrap();
    assert_eq!(body["type"], "job.completed");
    assert_eq!(body["data"]["job_id"], accepted["job_id"]);
    assert_eq!(body["data"]["status"], "completed");
    assert_eq!(body["data"]["result"]["summary"]["total_items"], 15);
    let job = accepted["job_id"].as_str().unwrap();
    eventually(Duration::from_secs(5), || async {
        deliveries(&app, job)
            .await
            .first()
            .is_some_and(|d| d["status"] == "delivered")
    })
    .await;
    let listed = deliveries(&app, job).await;
    assert_eq!(listed[0]["attempts"][0]["status"], 200);
    assert!(
        !listed[0].to_string().contains(&secret_text),
        "no secret in the listing"
    );
}

#[tokio::test]
async fn a_failing_receiver_gets_retries_with_the_same_webhook_id() {
    let mut sink = WebhookSink::start().await;
    sink.answer_next(&[
        StatusCode::INTERNAL_SERVER_ERROR,
        StatusCode::SERVICE_UNAVAILABLE,
    ]);
    let app = TestApp::spawn_with(emulator(), fast).await;
    let (secret, secret_text) = SigningSecret::generate();
    let (_, accepted) = submit(&app, json!({"url": sink.url, "secret": secret_text})).await;
    let first = sink.next(20).await;
    let second = sink.next(10).await;
    let third = sink.next(10).await;
    let id = header(&first, "webhook-id");
    assert_eq!(header(&second, "webhook-id"), id);
    assert_eq!(header(&third, "webhook-id"), id);
    assert_eq!(first.body, third.body, "the same message each time");
    assert!(verifies(&third, &secret));
    let job = accepted["job_id"].as_str().unwrap();
    eventually(Duration::from_secs(5), || async {
        deliveries(&app, job)
            .await
            .first()
            .is_some_and(|d| d["status"] == "delivered")
    })
    .await;
    let codes: Vec<Value> = deliveries(&app, job).await[0]["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status"].clone())
        .collect();
    assert_eq!(codes, [json!(500), json!(503), json!(200)]);
}

#[tokio::test]
async fn gone_disables_the_target_and_exhausted_retries_dead_letter_until_replayed() {
    let mut sink = WebhookSink::start().await;
    sink.answer_always(StatusCode::GONE);
    let app = TestApp::spawn_with(emulator(), fast).await;
    let (_, secret_text) = SigningSecret::generate();
    let (_, accepted) = submit(&app, json!({"url": sink.url, "secret": secret_text})).await;
    sink.next(20).await;
    let job = accepted["job_id"].as_str().unwrap();
    eventually(Duration::from_secs(5), || async {
        deliveries(&app, job)
            .await
            .first()
            .is_some_and(|d| d["status"] == "disabled")
    })
    .await;
    assert!(sink.quiet_for(400).await, "no retry after 410");

    // A second receiver that always fails: the schedule (2 retries) runs out.
    let mut failing = WebhookSink::start().await;
    failing.answer_always(StatusCode::INTERNAL_SERVER_ERROR);
    let (_, accepted) = submit(&app, json!({"url": failing.url, "secret": secret_text})).await;
    for _ in 0..3 {
        failing.next(20).await;
    }
    let job = accepted["job_id"].as_str().unwrap();
    eventually(Duration::from_secs(5), || async {
        deliveries(&app, job)
            .await
            .first()
            .is_some_and(|d| d["status"] == "dead")
    })
    .await;
    assert!(
        failing.quiet_for(400).await,
        "nothing after the last attempt"
    );
    failing.answer_always(StatusCode::OK);
    let replayed = json_of(
        app.post(&format!("/v1/jobs/{job}/webhooks/replay"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(replayed["replayed"], 1);
    failing.next(10).await;
    eventually(Duration::from_secs(5), || async {
        deliveries(&app, job)
            .await
            .first()
            .is_some_and(|d| d["status"] == "delivered")
    })
    .await;
}

#[tokio::test]
async fn rotated_secrets_each_sign_the_message() {
    let mut sink = WebhookSink::start().await;
    let app = TestApp::spawn_with(emulator(), fast).await;
    let (old, old_text) = SigningSecret::generate();
    let (new, new_text) = SigningSecret::generate();
    submit(
        &app,
        json!({"url": sink.url, "secret": [new_text, old_text]}),
    )
    .await;
    let received = sink.next(20).await;
    assert_eq!(header(&received, "webhook-signature").split(' ').count(), 2);
    assert!(verifies(&received, &old) && verifies(&received, &new));
}

#[tokio::test]
async fn refused_targets_are_rejected_at_submit_and_per_attempt() {
    let app = TestApp::spawn_with(emulator(), |c| {
        fast(c);
        c.webhooks.allowed_cidrs = Vec::new();
    })
    .await;
    let (_, secret) = SigningSecret::generate();
    for url in [
        "http://169.254.169.254/latest/meta-data",
        "http://127.0.0.1:9/hook",
        "http://10.1.2.3/hook",
        "http://[::1]/hook",
        "http://2130706433/hook",
        "file:///etc/passwd",
    ] {
        let (status, body) = submit(&app, json!({"url": url, "secret": secret})).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{url}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("webhook"),
            "{body}"
        );
    }
    // Hostnames are resolved and checked on every attempt; that path (and DNS rebinding) is
    // covered with a stub resolver in `webhooks::ssrf`'s table tests. `localhost` is loopback by
    // definition (RFC 6761), so it is refused at submit time already.
    let (status, _) = submit(
        &app,
        json!({"url": "http://localhost:9/hook", "secret": secret}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        app.emulator().requests().is_empty(),
        "refused jobs never start"
    );
}

#[tokio::test]
async fn sdk_callers_get_webhooks_through_headers() {
    let mut sink = WebhookSink::start().await;
    let app = TestApp::spawn_with(emulator(), fast).await;
    let (secret, secret_text) = SigningSecret::generate();
    let response = app
        .post("/v2/failure-analysis/analyze")
        .header("x-evalgate-webhook-url", &sink.url)
        .header("x-evalgate-webhook-secret", &secret_text)
        .json(&json!({"run_eval": true, "dataset": dataset(12)}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let received = sink.next(20).await;
    assert!(verifies(&received, &secret));
    // The control headers never reach the upstream.
    assert!(
        app.emulator()
            .requests()
            .iter()
            .all(|r| !r.headers.contains_key("x-evalgate-webhook-secret"))
    );
}

#[tokio::test]
async fn configured_endpoints_get_every_job_and_large_results_come_as_a_link() {
    let mut sink = WebhookSink::start().await;
    let (secret, secret_text) = SigningSecret::generate();
    let url = sink.url.clone();
    let app = TestApp::spawn_with(emulator(), move |c| {
        fast(c);
        c.webhooks.max_inline_result_bytes = 64;
        c.webhooks.public_base_url = "http://evalgate.example:8080".to_owned();
        c.webhooks.endpoints = vec![evalgate::config::WebhookEndpoint {
            url,
            secrets: vec![evalgate::types::Secret::new(secret_text)],
            events: vec!["job.completed".to_owned()],
        }];
    })
    .await;
    // No webhook on the job itself: the configured endpoint still hears about it.
    let response = app
        .post("/v1/jobs")
        .json(&json!({"kind": "failure_analysis", "dataset": dataset(6)}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let job = json_of(response).await["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let received = sink.next(20).await;
    assert!(verifies(&received, &secret));
    let body: Value = serde_json::from_slice(&received.body).unwrap();
    assert!(
        body["data"].get("result").is_none(),
        "over the inline limit"
    );
    assert_eq!(
        body["data"]["result_url"],
        format!("http://evalgate.example:8080/v1/jobs/{job}/result")
    );
}

#[tokio::test]
async fn a_receivers_retry_after_is_honoured() {
    let mut sink = WebhookSink::start().await;
    // 429 with Retry-After: 1 (the sink sends it for 429s), then success.
    sink.answer_next(&[StatusCode::TOO_MANY_REQUESTS]);
    let app = TestApp::spawn_with(emulator(), fast).await;
    let (_, secret_text) = SigningSecret::generate();
    submit(&app, json!({"url": sink.url, "secret": secret_text})).await;
    sink.next(20).await;
    let first = std::time::Instant::now();
    sink.next(20).await;
    // The schedule alone would retry after ~100 ms; Retry-After asked for a second.
    assert!(
        first.elapsed() >= Duration::from_millis(900),
        "{:?}",
        first.elapsed()
    );
}

#[tokio::test]
async fn a_receivers_retry_after_as_an_http_date_is_honoured() {
    let mut sink = WebhookSink::start().await;
    // 429 with Retry-After: an HTTP date 2-3 s ahead (the sink's `retry_after=date`), then
    // success.
    sink.answer_next(&[StatusCode::TOO_MANY_REQUESTS]);
    let app = TestApp::spawn_with(emulator(), fast).await;
    let (_, secret_text) = SigningSecret::generate();
    let url = format!("{}?retry_after=date", sink.url);
    let (status, accepted) = submit(&app, json!({"url": url, "secret": secret_text})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    sink.next(20).await;
    let first = std::time::Instant::now();
    sink.next(20).await;
    // The schedule alone would retry after ~100 ms; the date is at least two seconds ahead.
    assert!(
        first.elapsed() >= Duration::from_millis(1800),
        "{:?}",
        first.elapsed()
    );
}

/// `POST` to `path`: (status, JSON body).
async fn post(app: &TestApp, path: &str) -> (StatusCode, Value) {
    let response = app.post(path).send().await.unwrap();
    (response.status(), json_of(response).await)
}

fn sorted_keys(value: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = value
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    keys
}

fn is_rfc3339(value: &Value) -> bool {
    value
        .as_str()
        .is_some_and(|s| humantime::parse_rfc3339(s).is_ok())
}

#[tokio::test]
async fn replaying_a_delivery_answers_404_409_or_202_and_listings_keep_their_shape() {
    let mut ok = WebhookSink::start().await;
    let mut failing = WebhookSink::start().await;
    failing.answer_always(StatusCode::INTERNAL_SERVER_ERROR);
    // A file store: listings and readiness go through its read connections.
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("evalgate.db");
    let app = TestApp::spawn_with(emulator(), move |c| {
        fast(c);
        c.store.path = StorePath::File(store);
        c.store.read_connections = 2;
        // One retry, far away: a failed first attempt leaves its delivery pending.
        c.webhooks.retry_schedule = vec![Duration::from_secs(600)];
    })
    .await;
    let (_, secret_text) = SigningSecret::generate();

    // No such delivery, no such job: 404 in the /v1 error shape.
    let (status, body) = post(&app, "/v1/webhooks/deliveries/msg_unknown/replay").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["code"], "not_found");
    let unknown_job = format!("/v1/jobs/egj_{}/webhooks/replay", "0".repeat(32));
    for path in [unknown_job.as_str(), "/v1/jobs/not-a-job/webhooks/replay"] {
        let (status, body) = post(&app, path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
    }

    // Pending (its retry is ten minutes away): 409, and nothing is sent.
    let (_, accepted) = submit(&app, json!({"url": failing.url, "secret": secret_text})).await;
    failing.next(20).await;
    let pending_job = accepted["job_id"].as_str().unwrap();
    eventually(Duration::from_secs(5), || async {
        deliveries(&app, pending_job)
            .await
            .first()
            .is_some_and(|d| d["attempts"].as_array().is_some_and(|a| a.len() == 1))
    })
    .await;
    let pending = deliveries(&app, pending_job).await;
    assert_eq!(pending[0]["status"], "pending");
    assert!(is_rfc3339(&pending[0]["next_attempt_at"]), "{pending:?}");
    let id = pending[0]["id"].as_str().unwrap();
    let (status, body) = post(&app, &format!("/v1/webhooks/deliveries/{id}/replay")).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "conflict");
    let (status, body) = post(&app, &format!("/v1/jobs/{pending_job}/webhooks/replay")).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(body["replayed"], 0, "nothing dead-lettered");
    assert!(failing.quiet_for(300).await, "no replay was sent");

    // Delivered: 202, sent again under the same webhook-id.
    let url = format!("{}?token=t0k3n", ok.url);
    let (_, accepted) = submit(&app, json!({"url": url, "secret": secret_text})).await;
    let first = ok.next(20).await;
    let job = accepted["job_id"].as_str().unwrap();
    eventually(Duration::from_secs(5), || async {
        deliveries(&app, job)
            .await
            .first()
            .is_some_and(|d| d["status"] == "delivered")
    })
    .await;
    let listed = deliveries(&app, job).await;
    let delivery = &listed[0];
    assert_eq!(
        sorted_keys(delivery),
        [
            "attempts",
            "created_at",
            "delivered_at",
            "event",
            "id",
            "job_id",
            "next_attempt_at",
            "status",
            "url"
        ]
    );
    assert_eq!(delivery["job_id"], job);
    assert_eq!(delivery["event"], "job.completed");
    assert_eq!(delivery["id"], header(&first, "webhook-id"));
    let origin = ok.url.rsplit_once('/').map(|(origin, _)| origin).unwrap();
    assert_eq!(
        delivery["url"],
        format!("{origin}/…?…"),
        "path and query masked"
    );
    assert!(!delivery.to_string().contains("t0k3n"));
    assert_eq!(delivery["next_attempt_at"], Value::Null, "not pending");
    assert!(is_rfc3339(&delivery["created_at"]));
    assert!(is_rfc3339(&delivery["delivered_at"]));
    let attempt = &delivery["attempts"][0];
    assert_eq!(
        sorted_keys(attempt),
        ["at", "error", "latency_ms", "n", "status"]
    );
    assert_eq!(attempt["n"], 1);
    assert_eq!(attempt["status"], 200);
    assert_eq!(attempt["error"], Value::Null);
    assert!(attempt["latency_ms"].is_u64());
    assert!(is_rfc3339(&attempt["at"]));

    let id = delivery["id"].as_str().unwrap();
    let (status, body) = post(&app, &format!("/v1/webhooks/deliveries/{id}/replay")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body, json!({"id": id, "status": "pending"}));
    let again = ok.next(10).await;
    assert_eq!(header(&again, "webhook-id"), id, "the same message id");
    assert_eq!(again.body, first.body, "the same message");
}

#[tokio::test]
async fn the_openapi_document_describes_the_deliveries_listing() {
    let app = TestApp::spawn_with(emulator(), fast).await;
    let doc = json_of(app.get("/openapi.json").send().await.unwrap()).await;
    let schemas = &doc["components"]["schemas"];
    for name in ["DeliveryList", "DeliveryView", "AttemptView"] {
        assert!(schemas.get(name).is_some(), "{name} missing");
    }
    let properties = sorted_keys(&schemas["DeliveryView"]["properties"]);
    assert_eq!(properties.len(), 9, "{properties:?}");
}
