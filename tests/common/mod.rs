//! Test harness: a real `evalgate::run` on loopback port 0 in front of a real emulator on port 0.
#![expect(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test harness: each test binary uses a different part of it; failing fast is the point"
)]

use std::{future::Future, time::Duration};

use evalgate::{Listeners, RunError, config::Config};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use valiqor_emulator::{Emulator, EmulatorConfig, EmulatorHandle, RunningEmulator};

/// The key evalgate is configured with and the emulator accepts.
pub const UPSTREAM_KEY: &str = "vq_upstream_test_key";
/// What a caller sends: the SDK insists on the `vq_` prefix, evalgate throws it away.
pub const CALLER_KEY: &str = "vq_caller_placeholder";

pub struct TestApp {
    /// `http://127.0.0.1:PORT` of the API port.
    pub api: String,
    /// `http://127.0.0.1:PORT` of the admin port.
    pub admin: String,
    /// `http://127.0.0.1:PORT` of the Arize listener, while Arize is on.
    pub arize: Option<String>,
    pub upstream: RunningEmulator,
    pub client: reqwest::Client,
    shutdown: CancellationToken,
    tasks: JoinSet<Result<(), RunError>>,
}

pub fn emulator_config() -> EmulatorConfig {
    EmulatorConfig {
        api_key: Some(UPSTREAM_KEY.to_owned()),
        ..EmulatorConfig::default()
    }
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(emulator_config(), |_| {}).await
    }

    pub async fn spawn_with(emulator: EmulatorConfig, edit: impl FnOnce(&mut Config)) -> Self {
        let upstream = Emulator::spawn(emulator).await.expect("emulator starts");
        let base_url = upstream.handle().base_url();
        Self::spawn_over(upstream, &base_url, edit).await
    }

    /// evalgate pointed at `base_url` (which may be a dead address), with `upstream` alongside.
    pub async fn spawn_over(
        upstream: RunningEmulator,
        base_url: &str,
        edit: impl FnOnce(&mut Config),
    ) -> Self {
        let config = Config::for_tests(base_url, UPSTREAM_KEY, edit);
        Self::spawn_config(upstream, config).await
    }

    /// With more configuration as TOML (e.g. `[auth]` and `[[tenants]]`).
    pub async fn spawn_toml(
        emulator: EmulatorConfig,
        toml: &str,
        edit: impl FnOnce(&mut Config),
    ) -> Self {
        let upstream = Emulator::spawn(emulator).await.expect("emulator starts");
        let base_url = upstream.handle().base_url();
        let config = Config::for_tests_with(&base_url, UPSTREAM_KEY, toml, edit);
        Self::spawn_config(upstream, config).await
    }

    async fn spawn_config(upstream: RunningEmulator, config: Config) -> Self {
        let listeners = Listeners::bind(&config).await.expect("listeners bind");
        let api = format!("http://{}", listeners.api_addr().unwrap());
        let admin = format!("http://{}", listeners.admin_addr().unwrap());
        let arize = listeners
            .arize_addr()
            .map(|addr| format!("http://{}", addr.unwrap()));
        let shutdown = CancellationToken::new();
        let mut tasks = JoinSet::new();
        tasks.spawn(evalgate::run(config, listeners, shutdown.clone()));
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let app = Self {
            api,
            admin,
            arize,
            upstream,
            client,
            shutdown,
            tasks,
        };
        app.wait_ready().await;
        app
    }

    pub fn emulator(&self) -> EmulatorHandle {
        self.upstream.handle()
    }

    /// Polls `/readyz` until 200 (bounded), so tests start against a serving instance.
    async fn wait_ready(&self) {
        eventually(Duration::from_secs(10), || async {
            self.client
                .get(format!("{}/readyz", self.admin))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        })
        .await;
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.client
            .get(format!("{}{path}", self.api))
            .bearer_auth(CALLER_KEY)
    }

    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.client
            .post(format!("{}{path}", self.api))
            .bearer_auth(CALLER_KEY)
    }

    pub async fn metrics(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Requests shutdown without waiting for it.
    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Requests shutdown and returns what `run` returned.
    pub async fn stop(mut self) -> Result<(), RunError> {
        self.shutdown.cancel();
        self.finished().await
    }

    /// Waits for `run` to return (after `begin_shutdown`); the emulator keeps serving.
    pub async fn finished(&mut self) -> Result<(), RunError> {
        tokio::time::timeout(Duration::from_secs(30), self.tasks.join_next())
            .await
            .expect("run returns within 30 s")
            .expect("run task exists")
            .expect("run task did not panic")
    }
}

/// Waits until `check` holds, polling every 20 ms, failing the test after `limit`.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A dataset of `n` items in the shape the SDK sends.
pub fn dataset(n: usize) -> serde_json::Value {
    serde_json::Value::Array(
        (0..n)
            .map(|i| {
                serde_json::json!({
                    "input": format!("question {i}"),
                    "output": if i % 3 == 0 { format!("fail answer {i}") } else { format!("answer {i}") },
                    "context": [format!("context {i}")],
                })
            })
            .collect(),
    )
}
