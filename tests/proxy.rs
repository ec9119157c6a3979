//! The Valiqor-compatible surface end to end: every path family, key injection, BYOK, headers.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers outside #[test] functions fail fast by design"
)]

mod common;

use common::{CALLER_KEY, TestApp, UPSTREAM_KEY, dataset, emulator_config};
use evalgate::config::ByokMode;
use http::{Method, StatusCode};
use serde_json::{Value, json};

/// One request per path family of the reference, through evalgate; the emulator must have
/// received exactly that method, path and raw query, with the configured key only.
#[tokio::test]
async fn every_path_family_is_forwarded_with_method_path_and_query_intact() {
    let app = TestApp::spawn().await;
    // Create something to read back.
    let run: Value = app
        .post("/v2/failure-analysis/analyze")
        .json(&json!({"run_eval": true, "run_security": true, "run_scan": true, "dataset": dataset(2)}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let run_id = run["run_id"]
        .as_str()
        .expect("inline run has a run_id")
        .to_owned();

    let cases = path_families(&run_id);
    for (method, path_and_query, body) in &cases {
        app.emulator().clear_requests();
        let mut request = app
            .client
            .request(method.clone(), format!("{}{path_and_query}", app.api))
            .bearer_auth(CALLER_KEY);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        assert!(
            !status.is_server_error() && !text.contains("unknown_route"),
            "{method} {path_and_query}: {status} {text}"
        );
        let seen = app.emulator().requests();
        assert_eq!(
            seen.len(),
            1,
            "{method} {path_and_query} reached upstream once"
        );
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path_and_query.as_str(), None),
        };
        assert_eq!(seen[0].method, *method);
        assert_eq!(seen[0].path, path);
        assert_eq!(seen[0].query.as_deref(), query, "raw query byte for byte");
        assert_eq!(
            seen[0].headers["authorization"],
            format!("Bearer {UPSTREAM_KEY}"),
            "{path_and_query}"
        );
    }
    assert_eq!(
        app.emulator().seen_bearer_keys(),
        vec![UPSTREAM_KEY.to_owned()]
    );
}

/// One request per path family of the reference (§4), with queries as the SDK builds them.
fn path_families(run_id: &str) -> Vec<(Method, String, Option<Value>)> {
    vec![
        (Method::GET, "/v2/projects".into(), None),
        (
            Method::POST,
            "/v2/projects".into(),
            Some(json!({"name": "p1"})),
        ),
        (Method::GET, "/v2/auth/usage".into(), None),
        (Method::POST, "/v2/auth/validate".into(), None),
        (
            Method::GET,
            format!("/v2/failure-analysis/runs/{run_id}"),
            None,
        ),
        (
            Method::GET,
            format!("/v2/failure-analysis/runs/{run_id}/status"),
            None,
        ),
        (
            Method::GET,
            format!("/v2/failure-analysis/runs/{run_id}/inputs"),
            None,
        ),
        (
            Method::GET,
            format!("/v2/failure-analysis/runs/{run_id}/tags?decision=fail&min_severity=1.5"),
            None,
        ),
        (
            Method::GET,
            "/v2/failure-analysis/runs?page=1&page_size=20&status=completed".into(),
            None,
        ),
        (
            Method::GET,
            "/v2/failure-analysis/runs/count?project_name=demo".into(),
            None,
        ),
        (
            Method::GET,
            "/v2/failure-analysis/insights?days=30".into(),
            None,
        ),
        (
            Method::GET,
            "/v2/failure-analysis/insights/trends?days=7".into(),
            None,
        ),
        (
            Method::GET,
            "/v2/failure-analysis/insights/security?days=30".into(),
            None,
        ),
        (Method::GET, "/v2/failure-analysis/projects".into(), None),
        (
            Method::GET,
            "/v2/evaluate/compare?run_ids=a&run_ids=b".into(),
            None,
        ),
        (
            Method::GET,
            "/v2/evaluate/trends?project_id=p&period=last_7_days&metrics=hallucination%2Ccoherence"
                .into(),
            None,
        ),
        (Method::GET, "/v2/admin/projects".into(), None),
        (
            Method::GET,
            "/v2/security/audit/batches?project_id=p".into(),
            None,
        ),
        (Method::GET, "/v2/security/redteam/runs".into(), None),
        (
            Method::GET,
            "/v2/security/redteam/compare?run_ids=a%2Cb".into(),
            None,
        ),
        (
            Method::GET,
            "/api/v1/traces?project_id=p&page=1&page_size=10".into(),
            None,
        ),
        (Method::GET, "/api/v1/traces/t1/spans".into(), None),
    ]
}

#[tokio::test]
async fn caller_credentials_never_reach_the_upstream() {
    let app = TestApp::spawn().await;
    let response = app
        .get("/v2/failure-analysis/projects")
        .header("x-api-key", "vq_caller_x_api_key")
        .header("cookie", "session=caller-cookie")
        .header("x-custom-auth-token", "caller-token")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let seen = &app.emulator().requests()[0];
    let all = seen
        .headers
        .iter()
        .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or("")))
        .collect::<Vec<_>>()
        .join("\n");
    for secret in [
        CALLER_KEY,
        "vq_caller_x_api_key",
        "caller-cookie",
        "caller-token",
    ] {
        assert!(!all.contains(secret), "{secret} leaked upstream:\n{all}");
    }
    assert_eq!(
        seen.headers["authorization"],
        format!("Bearer {UPSTREAM_KEY}")
    );
}

#[tokio::test]
async fn the_upstream_status_and_body_pass_through_unchanged() {
    let app = TestApp::spawn().await;
    let direct = app
        .client
        .get(format!(
            "{}/v2/failure-analysis/runs/does-not-exist",
            app.emulator().base_url()
        ))
        .bearer_auth(UPSTREAM_KEY)
        .send()
        .await
        .unwrap();
    let direct_status = direct.status();
    let direct_body = direct.bytes().await.unwrap();
    let through = app
        .get("/v2/failure-analysis/runs/does-not-exist")
        .send()
        .await
        .unwrap();
    assert_eq!(through.status(), direct_status);
    assert_eq!(through.status(), StatusCode::NOT_FOUND);
    assert_eq!(through.bytes().await.unwrap(), direct_body);

    app.emulator()
        .fail_next(1, StatusCode::INTERNAL_SERVER_ERROR);
    let failed = app
        .get("/v2/failure-analysis/projects")
        .send()
        .await
        .unwrap();
    assert_eq!(
        failed.status(),
        StatusCode::INTERNAL_SERVER_ERROR,
        "upstream 5xx is not rewritten"
    );
    let body: Value = failed.json().await.unwrap();
    assert!(
        body.get("code").is_none(),
        "the body is the upstream's, not evalgate's: {body}"
    );
}

#[tokio::test]
async fn request_id_is_generated_or_propagated_and_forwarded() {
    let app = TestApp::spawn().await;
    let response = app
        .get("/v2/failure-analysis/projects")
        .send()
        .await
        .unwrap();
    let generated = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(!generated.is_empty());
    assert_eq!(
        app.emulator().requests()[0].headers["x-request-id"],
        generated.as_str()
    );

    app.emulator().clear_requests();
    let response = app
        .get("/v2/failure-analysis/projects")
        .header("x-request-id", "caller-req-42")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "caller-req-42");
    assert_eq!(
        app.emulator().requests()[0].headers["x-request-id"],
        "caller-req-42"
    );
}

#[tokio::test]
async fn unknown_paths_and_methods_are_refused_without_touching_the_upstream() {
    let app = TestApp::spawn().await;
    let response = app.get("/v2/auth/cli/keys").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "unknown_route");
    assert!(body["detail"].is_string());
    let response = app
        .client
        .delete(format!("{}/v2/projects/p1", app.api))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert!(app.emulator().requests().is_empty());
}

fn sent_key(app: &TestApp) -> Option<String> {
    let seen = app.emulator().requests();
    let body: Value =
        serde_json::from_slice(&seen.last().expect("a request reached upstream").body).unwrap();
    body.get("openai_api_key")
        .and_then(Value::as_str)
        .map(str::to_owned)
}

#[tokio::test]
async fn byok_key_is_inserted_on_every_submit_endpoint_when_the_caller_has_none() {
    let app = TestApp::spawn_with(emulator_config(), |c| {
        c.valiqor.openai_api_key = Some(evalgate::types::Secret::new("sk-configured".to_owned()));
    })
    .await;
    let submits = [
        (
            "/v2/failure-analysis/analyze",
            json!({"run_eval": true, "dataset": dataset(1)}),
        ),
        (
            "/v2/evaluate/",
            json!({"project_name": "p", "dataset": dataset(1), "metrics": ["coherence"], "run_name": null, "metadata": {}}),
        ),
        (
            "/v2/evaluate/trace",
            json!({"project_name": "p", "trace": {"id": "t"}, "metrics": ["coherence"]}),
        ),
        (
            "/v2/security/audit",
            json!({"project_name": "p", "dataset": [{"user_input": "hi", "assistant_response": "hello"}], "config": {}}),
        ),
        (
            "/v2/security/audit-trace",
            json!({"project_name": "p", "trace": {"id": "t"}, "config": {}}),
        ),
        (
            "/v2/security/redteam",
            json!({"project_name": "p", "run_name": "r", "attacks_per_vector": 1, "attack_vector_keys": ["prompt_injection"]}),
        ),
    ];
    for (path, body) in submits {
        let response = app.post(path).json(&body).send().await.unwrap();
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        let seen = app.emulator().requests();
        let last = seen.last().unwrap();
        assert_eq!(last.path, path, "trailing slash kept");
        assert_eq!(sent_key(&app).as_deref(), Some("sk-configured"), "{path}");
        // Everything else arrives unchanged.
        let mut sent: Value = serde_json::from_slice(&last.body).unwrap();
        sent.as_object_mut().unwrap().remove("openai_api_key");
        assert_eq!(sent, body, "{path}");
    }
}

#[tokio::test]
async fn byok_precedence_caller_first_force_and_off() {
    let body = json!({"run_eval": true, "dataset": dataset(1), "openai_api_key": "sk-caller"});
    for (mode, expected) in [
        (ByokMode::CallerFirst, Some("sk-caller")),
        (ByokMode::Force, Some("sk-configured")),
        (ByokMode::Off, Some("sk-caller")),
    ] {
        let app = TestApp::spawn_with(emulator_config(), |c| {
            c.valiqor.openai_api_key =
                Some(evalgate::types::Secret::new("sk-configured".to_owned()));
            c.valiqor.byok = mode;
        })
        .await;
        app.post("/v2/failure-analysis/analyze")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(sent_key(&app).as_deref(), expected, "{mode:?}");
        let bare = json!({"run_eval": true, "dataset": dataset(1)});
        app.post("/v2/failure-analysis/analyze")
            .json(&bare)
            .send()
            .await
            .unwrap();
        let expected_bare = (mode != ByokMode::Off).then_some("sk-configured");
        assert_eq!(
            sent_key(&app).as_deref(),
            expected_bare,
            "{mode:?} without a caller key"
        );
    }
}

#[tokio::test]
async fn playground_never_gets_the_byok_key() {
    let app = TestApp::spawn_with(emulator_config(), |c| {
        c.valiqor.openai_api_key = Some(evalgate::types::Secret::new("sk-configured".to_owned()));
        c.valiqor.byok = ByokMode::Force;
    })
    .await;
    let response = app
        .post("/v2/failure-analysis/playground")
        .json(&json!({"input": "q", "output": "a"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(sent_key(&app), None);
}

#[tokio::test]
async fn non_json_submit_bodies_get_a_valiqor_shaped_400() {
    let app = TestApp::spawn().await;
    for body in ["not json", "[1, 2, 3]", "{\"dataset\": ["] {
        let response = app
            .post("/v2/failure-analysis/analyze")
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
        let json: Value = response.json().await.unwrap();
        assert!(
            json["detail"].as_str().unwrap().contains("JSON object"),
            "{json}"
        );
        assert_eq!(json["code"], "bad_request");
    }
    assert!(app.emulator().requests().is_empty());
}

#[tokio::test]
async fn large_bodies_stream_through_byte_for_byte() {
    let app = TestApp::spawn().await;
    // 8 MiB on a streamed (non-submit) route and on a submit route.
    let name = "x".repeat(8 * 1024 * 1024);
    let body = json!({"name": name}).to_string();
    let response = app
        .post("/v2/projects")
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    let status = response.status();
    assert!(
        status.is_success(),
        "{status} {}",
        response.text().await.unwrap()
    );
    assert_eq!(
        app.emulator().requests().last().unwrap().body,
        body.as_bytes()
    );

    let mut items = dataset(5).as_array().unwrap().clone();
    items[0]["input"] = Value::String("é ✓ \u{1F600}".repeat(100_000));
    let submit = serde_json::to_vec(&json!({"run_eval": true, "dataset": items})).unwrap();
    let response = app
        .post("/v2/failure-analysis/analyze")
        .header("content-type", "application/json")
        .body(submit.clone())
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    assert_eq!(
        app.emulator().requests().last().unwrap().body,
        submit.as_slice()
    );
}

/// Sends `request_line` as written (no client-side URL normalisation) and returns the status and body.
async fn raw_request(api: &str, method: &str, target: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = api.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {CALLER_KEY}\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn encoded_dot_segments_never_reach_the_upstream() {
    let app = TestApp::spawn().await;
    for target in [
        "/v2/admin/projects/%2e%2e/metrics",
        "/v2/admin/projects/.%2E/metrics",
        "/v2/failure-analysis/runs/%2E%2E/cancel",
        "/v2/failure-analysis/runs/run%00x/cancel",
    ] {
        let (status, body) = raw_request(&app.api, "POST", target).await;
        assert_eq!(status, 400, "{target}: {body}");
        assert!(body.contains("bad_path"), "{target}: {body}");
    }
    assert!(
        app.emulator().requests().is_empty(),
        "{:?}",
        app.emulator()
            .requests()
            .iter()
            .map(|r| r.path.clone())
            .collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn writes_that_are_not_json_are_415_and_never_forwarded() {
    let app = TestApp::spawn().await;
    for (path, content_type, code_at) in [
        ("/v2/failure-analysis/analyze", "text/plain", "/code"),
        (
            "/v2/admin/projects",
            "application/x-www-form-urlencoded",
            "/code",
        ),
        ("/v1/jobs", "text/plain", "/error/code"),
    ] {
        let response = app
            .post(path)
            .header("content-type", content_type)
            .body(r#"{"dataset": []}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{path}"
        );
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            body.pointer(code_at),
            Some(&Value::from("unsupported_media_type")),
            "{path}: {body}"
        );
    }
    // A body-less POST needs no content type.
    let response = app
        .post("/v1/jobs/egj_00000000000000000000000000000000/cancel")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert!(app.emulator().requests().is_empty());
}
