//! Black-box tests of the `evalgate` binary: configuration errors, check-config, healthcheck,
//! `--demo`, SIGTERM, and that no secret ever reaches the logs.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions fail fast by design"
)]

mod common;

use std::{
    process::{Output, Stdio},
    time::Duration,
};

use common::dataset;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    sync::mpsc,
};
use valiqor_emulator::{Emulator, EmulatorConfig, Faults};

const BIN: &str = env!("CARGO_BIN_EXE_evalgate");

fn evalgate() -> Command {
    let mut command = Command::new(BIN);
    // Start from a clean slate: no inherited EVALGATE__* or RUST_LOG.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        if key.starts_with("EVALGATE") || key == "RUST_LOG" || key == "VALIQOR_API_KEY" {
            command.env_remove(key);
        }
    }
    command.kill_on_drop(true);
    command
}

async fn output(command: &mut Command) -> Output {
    tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .expect("finished in time")
        .expect("ran")
}

#[tokio::test]
async fn a_broken_config_exits_78_and_names_every_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "[server]\nlisten = \"not-an-address\"\nlisten_typo = 1\n[valiqor]\nbyok = \"maybe\"\n",
    )
    .unwrap();
    let out = output(
        evalgate()
            .arg("--config")
            .arg(&file)
            .env("EVALGATE__RATE_LIMIT__PLAYGROUND_PER_DAY", "lots"),
    )
    .await;
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for key in [
        "listen_typo",
        "valiqor.byok",
        "VALIQOR_API_KEY",
        "playground_per_day",
    ] {
        assert!(stderr.contains(key), "{key} not named in:\n{stderr}");
    }
    let missing =
        output(evalgate().args(["--config", "/nonexistent/evalgate.toml", "check-config"])).await;
    assert_eq!(missing.status.code(), Some(78));
}

#[tokio::test]
async fn unauthenticated_on_a_non_loopback_address_refuses_to_start() {
    let out = output(
        evalgate()
            .env("EVALGATE__SERVER__LISTEN", "0.0.0.0:0")
            .env("EVALGATE__SERVER__ADMIN_LISTEN", "127.0.0.1:0")
            .env("EVALGATE__STORE__PATH", ":memory:")
            .env("VALIQOR_API_KEY", "vq_live_key"),
    )
    .await;
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("auth.mode") && stderr.contains("allow_unauthenticated"),
        "{stderr}"
    );
    // The same with the explicit opt-in passes validation (check-config only: nothing binds).
    let opted_in = output(
        evalgate()
            .arg("check-config")
            .env("EVALGATE__SERVER__LISTEN", "0.0.0.0:0")
            .env("EVALGATE__AUTH__ALLOW_UNAUTHENTICATED", "true")
            .env("VALIQOR_API_KEY", "vq_live_key"),
    )
    .await;
    assert_eq!(
        opted_in.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&opted_in.stderr)
    );
}

#[tokio::test]
async fn check_config_prints_the_effective_config_with_secrets_redacted() {
    let out = output(
        evalgate()
            .arg("check-config")
            .env("VALIQOR_API_KEY", "vq_canary_checkconfig")
            .env("EVALGATE__VALIQOR__OPENAI_API_KEY", "sk-canary-checkconfig")
            .env("EVALGATE__SERVER__MAX_IN_FLIGHT", "7"),
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let parsed: toml::Value = toml::from_str(&stdout).expect("check-config prints TOML");
    assert_eq!(parsed["server"]["max_in_flight"].as_integer(), Some(7));
    assert_eq!(parsed["valiqor"]["api_key"].as_str(), Some("*****"));
    assert!(!stdout.contains("canary"), "{stdout}");
}

#[tokio::test]
async fn healthcheck_exits_0_only_on_200() {
    let emulator = Emulator::spawn(EmulatorConfig::default()).await.unwrap();
    let base = emulator.handle().base_url();
    // The emulator answers 401 without a key: not healthy.
    let unhealthy = output(evalgate().args(["healthcheck", &format!("{base}/v2/projects")])).await;
    assert_ne!(unhealthy.status.code(), Some(0));
    let dead = output(evalgate().args(["healthcheck", "http://127.0.0.1:1/livez"])).await;
    assert_ne!(dead.status.code(), Some(0));
}

/// A running binary whose log lines are collected as they arrive.
struct Running {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    log: Vec<String>,
    _readers: tokio::task::JoinSet<()>,
}

impl Running {
    fn start(command: &mut Command) -> Self {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .expect("evalgate starts");
        let (tx, lines) = mpsc::unbounded_channel();
        let mut readers = tokio::task::JoinSet::new();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            let mut reader = BufReader::new(stream).lines();
            readers.spawn(async move {
                while let Ok(Some(line)) = reader.next_line().await {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Self {
            child,
            lines,
            log: Vec::new(),
            _readers: readers,
        }
    }

    /// Reads log lines until one is a JSON object with `message == wanted`; returns it.
    async fn wait_for(&mut self, wanted: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.recv())
                .await
                .unwrap_or_else(|_| panic!("no {wanted:?} log line; saw:\n{}", self.log.join("\n")))
                .unwrap_or_else(|| panic!("evalgate exited; log:\n{}", self.log.join("\n")));
            self.log.push(line.clone());
            if let Ok(value) = serde_json::from_str::<Value>(&line)
                && value["message"] == wanted
            {
                return value;
            }
        }
    }

    /// Sends SIGTERM and waits for the exit, which must come within the grace period + 1 s.
    async fn terminate(mut self, grace: Duration) -> (Option<i32>, Vec<String>) {
        let pid = self.child.id().expect("still running").to_string();
        let killed = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(killed.success());
        let sent = std::time::Instant::now();
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("exits after SIGTERM")
            .unwrap();
        let took = sent.elapsed();
        assert!(
            took <= grace + Duration::from_secs(1),
            "exited {took:?} after SIGTERM, grace period {grace:?}"
        );
        while let Ok(Some(line)) =
            tokio::time::timeout(Duration::from_secs(2), self.lines.recv()).await
        {
            self.log.push(line);
        }
        (status.code(), self.log)
    }
}

#[tokio::test]
#[expect(
    clippy::too_many_lines,
    reason = "one scenario: every kind of secret through every path, then the scan"
)]
async fn no_secret_reaches_the_logs_even_at_trace_level() {
    const UPSTREAM: &str = "vq_canary_upstream_Q7x";
    const BYOK: &str = "sk-canary-byok-Z9w";
    const CALLER: &str = "vq_canary_caller_K3p";
    const CALLER_BYOK: &str = "sk-canary-caller-byok-M2v";
    const WEBHOOK_SECRET: &str = "whsec_Y2FuYXJ5LXdlYmhvb2stc2VjcmV0LWJ5dGVzLTAxMjM0NQ==";
    let emulator = Emulator::spawn(EmulatorConfig {
        api_key: Some(UPSTREAM.to_owned()),
        ..EmulatorConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("byok");
    std::fs::write(&key_file, format!("{BYOK}\n")).unwrap();
    let mut running = Running::start(
        evalgate()
            .env("EVALGATE__SERVER__LISTEN", "127.0.0.1:0")
            .env("EVALGATE__SERVER__ADMIN_LISTEN", "127.0.0.1:0")
            .env("EVALGATE__VALIQOR__BASE_URL", emulator.handle().base_url())
            .env("EVALGATE__VALIQOR__API_KEY", "env:CANARY_UPSTREAM")
            .env("CANARY_UPSTREAM", UPSTREAM)
            .env(
                "EVALGATE__VALIQOR__OPENAI_API_KEY",
                format!("file:{}", key_file.display()),
            )
            .env("EVALGATE__STORE__PATH", dir.path().join("store.db"))
            .env("EVALGATE__WEBHOOKS__ALLOWED_CIDRS", "[\"127.0.0.0/8\"]")
            .env("EVALGATE__WEBHOOKS__RETRY_SCHEDULE", "[\"50ms\"]")
            .env("EVALGATE__SERVER__SHUTDOWN_GRACE_PERIOD", "2s")
            .env("RUST_LOG", "trace"),
    );
    let listening = running.wait_for("listening").await;
    let api = format!("http://{}", listening["listen"].as_str().unwrap());
    let client = reqwest::Client::builder().build().unwrap();
    // A forwarded GET, a BYOK insert, a caller BYOK key, a rejected body, an upstream 401.
    let ok = client
        .get(format!("{api}/v2/failure-analysis/taxonomy"))
        .bearer_auth(CALLER)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let submit = client
        .post(format!("{api}/v2/failure-analysis/analyze"))
        .bearer_auth(CALLER)
        .json(&json!({"run_eval": true, "dataset": dataset(2)}))
        .send()
        .await
        .unwrap();
    assert_eq!(submit.status(), 200);
    client
        .post(format!("{api}/v2/evaluate/"))
        .bearer_auth(CALLER)
        .json(&json!({"project_name": "p", "dataset": dataset(1), "metrics": ["coherence"], "openai_api_key": CALLER_BYOK}))
        .send()
        .await
        .unwrap();
    client
        .post(format!("{api}/v2/security/audit"))
        .bearer_auth(CALLER)
        .body(format!("{{\"openai_api_key\": \"{CALLER_BYOK}\", broken"))
        .send()
        .await
        .unwrap();
    // A managed job with a webhook secret: its delivery fails (nothing listens on port 9) and is
    // logged, the secret never.
    let webhook = client
        .post(format!("{api}/v1/jobs"))
        .json(&json!({"kind": "failure_analysis", "dataset": dataset(3), "webhook": {"url": "http://127.0.0.1:9/hook", "secret": WEBHOOK_SECRET}}))
        .send()
        .await
        .unwrap();
    assert_eq!(webhook.status(), 202);
    let job: Value = webhook.json().await.unwrap();
    let deliveries = format!(
        "{api}/v1/webhooks/deliveries?job_id={}",
        job["job_id"].as_str().unwrap()
    );
    common::eventually(Duration::from_secs(20), || async {
        let listed: Value = client
            .get(&deliveries)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        listed["deliveries"][0]["attempts"]
            .as_array()
            .is_some_and(|a| a.len() >= 2)
    })
    .await;
    let seen = emulator.handle().seen_bearer_keys();
    assert_eq!(
        seen,
        vec![UPSTREAM.to_owned()],
        "upstream saw only the configured key"
    );
    let sent: Value = serde_json::from_slice(
        &emulator
            .handle()
            .requests_to(&http::Method::POST, "/v2/failure-analysis/analyze")[0]
            .body,
    )
    .unwrap();
    assert_eq!(
        sent["openai_api_key"], BYOK,
        "the BYOK key was really injected"
    );

    let (code, log) = running.terminate(Duration::from_secs(2)).await;
    let log = log.join("\n");
    assert_eq!(code, Some(0), "clean exit after SIGTERM; log:\n{log}");
    assert!(log.len() > 1000, "trace logging produced output");
    assert!(log.contains("webhook"), "the webhook attempts were logged");
    for secret in [
        UPSTREAM,
        BYOK,
        CALLER,
        CALLER_BYOK,
        WEBHOOK_SECRET,
        "Y2FuYXJ5LXdlYmhvb2st",
    ] {
        assert!(!log.contains(secret), "{secret} leaked into the logs");
    }
}

#[cfg(feature = "demo")]
#[tokio::test]
async fn demo_mode_serves_over_the_built_in_emulator() {
    let mut running = Running::start(
        evalgate()
            .arg("--demo")
            .env("EVALGATE__SERVER__LISTEN", "127.0.0.1:0")
            .env("EVALGATE__SERVER__ADMIN_LISTEN", "127.0.0.1:0")
            .env("EVALGATE__ARIZE__LISTEN", "127.0.0.1:0")
            .env("EVALGATE__SERVER__SHUTDOWN_GRACE_PERIOD", "2s"),
    );
    let listening = running.wait_for("listening").await;
    let api = format!("http://{}", listening["listen"].as_str().unwrap());
    let arize = format!("http://{}", listening["arize_listen"].as_str().unwrap());
    let admin = format!("http://{}", listening["admin_listen"].as_str().unwrap());
    let client = reqwest::Client::builder().build().unwrap();
    common::eventually(Duration::from_secs(10), || async {
        client
            .get(format!("{admin}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    let run: Value = client
        .post(format!("{api}/v2/failure-analysis/analyze"))
        .bearer_auth("vq_anything")
        .json(&json!({"run_eval": true, "dataset": dataset(3)}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(run["status"], "completed", "{run}");
    // Both upstreams: the Arize tasks API answers too, with its seeded space.
    let spaces: Value = client
        .get(format!("{arize}/v2/spaces?name=demo-space&limit=100"))
        .bearer_auth("any-arize-key")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(spaces["spaces"][0]["name"], "demo-space", "{spaces}");
    let (code, log) = running.terminate(Duration::from_secs(2)).await;
    assert_eq!(
        code,
        Some(0),
        "exit after SIGTERM; log:\n{}",
        log.join("\n")
    );
}

/// A service built with `--no-default-features` holds no emulator: `--demo` is a usage error that says why.
#[cfg(not(feature = "demo"))]
#[tokio::test]
async fn demo_without_the_demo_feature_exits_64_and_says_why() {
    let out = output(
        evalgate()
            .arg("--demo")
            .env("EVALGATE__SERVER__LISTEN", "127.0.0.1:0")
            .env("EVALGATE__SERVER__ADMIN_LISTEN", "127.0.0.1:0"),
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("built without the `demo` feature"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "nothing served");
}

#[tokio::test]
async fn sigterm_cuts_a_request_slower_than_the_grace_period_and_exits_0_in_time() {
    const GRACE: Duration = Duration::from_secs(1);
    let emulator = Emulator::spawn(EmulatorConfig {
        api_key: Some("vq_upstream".to_owned()),
        faults: Faults {
            latency: Duration::from_secs(30),
            ..Faults::default()
        },
        ..EmulatorConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut running = Running::start(
        evalgate()
            .env("EVALGATE__SERVER__LISTEN", "127.0.0.1:0")
            .env("EVALGATE__SERVER__ADMIN_LISTEN", "127.0.0.1:0")
            .env("EVALGATE__SERVER__SHUTDOWN_GRACE_PERIOD", "1s")
            .env("EVALGATE__VALIQOR__BASE_URL", emulator.handle().base_url())
            .env("EVALGATE__VALIQOR__API_KEY", "vq_upstream")
            .env("EVALGATE__STORE__PATH", dir.path().join("store.db")),
    );
    let listening = running.wait_for("listening").await;
    let url = format!(
        "http://{}/v2/failure-analysis/projects",
        listening["listen"].as_str().unwrap()
    );
    let mut slow = tokio::task::JoinSet::new();
    slow.spawn(async move {
        let response = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap()
            .get(url)
            .bearer_auth("vq_caller")
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json::<Value>().await.unwrap())
    });
    common::eventually(Duration::from_secs(10), || async {
        !emulator.handle().requests().is_empty()
    })
    .await;
    let (code, log) = running.terminate(GRACE).await;
    assert_eq!(code, Some(0), "clean exit; log:\n{}", log.join("\n"));
    let (status, body) = slow.join_next().await.unwrap().unwrap();
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["code"], "shutting_down", "{body}");
}

/// A loopback listener that counts the connections made to it and drops them.
async fn connection_counter() -> (
    String,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    tokio::task::JoinSet<()>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&count);
    let mut task = tokio::task::JoinSet::new();
    task.spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(stream);
        }
    });
    (url, count, task)
}

#[tokio::test]
async fn webhooks_never_go_through_a_proxy_from_the_environment() {
    let emulator = Emulator::spawn(EmulatorConfig {
        api_key: Some("vq_upstream".to_owned()),
        ..EmulatorConfig::default()
    })
    .await
    .unwrap();
    let (proxy, proxied, _proxy_task) = connection_counter().await;
    // The receiver answers 204 and counts what it got.
    let receiver = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let receiver_port = receiver.local_addr().unwrap().port();
    let deliveries = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&deliveries);
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let counted = std::sync::Arc::clone(&counted);
            async move {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                http::StatusCode::NO_CONTENT
            }
        }),
    );
    let mut receiver_task = tokio::task::JoinSet::new();
    receiver_task.spawn(async move {
        axum::serve(receiver, app).await.unwrap();
    });

    let dir = tempfile::tempdir().unwrap();
    let mut running = Running::start(
        evalgate()
            .env("EVALGATE__SERVER__LISTEN", "127.0.0.1:0")
            .env("EVALGATE__SERVER__ADMIN_LISTEN", "127.0.0.1:0")
            .env("EVALGATE__VALIQOR__BASE_URL", emulator.handle().base_url())
            .env("EVALGATE__VALIQOR__API_KEY", "vq_upstream")
            .env("EVALGATE__STORE__PATH", dir.path().join("store.db"))
            .env("EVALGATE__WEBHOOKS__ALLOWED_HOSTS", "[\"localhost\"]")
            // Every proxy variable points at the counter; only the upstream (by address) is exempt.
            .env("HTTP_PROXY", &proxy)
            .env("http_proxy", &proxy)
            .env("HTTPS_PROXY", &proxy)
            .env("ALL_PROXY", &proxy)
            .env("NO_PROXY", "127.0.0.1")
            .env("no_proxy", "127.0.0.1"),
    );
    let listening = running.wait_for("listening").await;
    let api = format!("http://{}", listening["listen"].as_str().unwrap());
    let secret = evalgate::webhooks::signing::SigningSecret::generate().1;
    let response = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
        .post(format!("{api}/v1/jobs"))
        .json(&json!({
            "kind": "failure_analysis",
            "dataset": dataset(3),
            "webhook": {"url": format!("http://localhost:{receiver_port}/hook"), "secret": secret},
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());
    common::eventually(Duration::from_secs(20), || async {
        deliveries.load(std::sync::atomic::Ordering::SeqCst) >= 1
    })
    .await;
    assert_eq!(
        proxied.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a webhook went through the proxy"
    );
    let (code, log) = running.terminate(Duration::from_secs(5)).await;
    assert_eq!(code, Some(0), "{}", log.join("\n"));
}
