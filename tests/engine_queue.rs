//! No lost work at the engine's door, against the real API handlers, store and emulator: with
//! the command queue shrunk to one, jobs submitted while the engine is not consuming its queue
//! (all but one of their start commands are dropped) still all complete. The engine's own loop
//! tests (src/jobs/engine.rs) cover the scan a dropped command triggers while it runs.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] functions fail fast by design"
)]

mod common;

use std::time::Duration;

use common::{UPSTREAM_KEY, dataset, emulator_config, eventually};
use evalgate::{config::Config, state::AppState};
use http::StatusCode;
use serde_json::{Value, json};
use tokio::{net::TcpListener, task::JoinSet};
use tokio_util::sync::CancellationToken;
use valiqor_emulator::{Emulator, EmulatorConfig};

async fn json(response: reqwest::Response) -> Value {
    response.json().await.unwrap()
}

#[tokio::test]
async fn jobs_whose_start_commands_were_dropped_on_a_full_queue_all_complete() {
    const JOBS: usize = 6;
    let emulator = Emulator::spawn(EmulatorConfig {
        inline_max_items: 4,
        job_duration: Duration::from_millis(200),
        ..emulator_config()
    })
    .await
    .unwrap();
    let config = Config::for_tests(&emulator.handle().base_url(), UPSTREAM_KEY, |c| {
        c.jobs.command_capacity = 1;
        c.batching.failure_analysis.max_items = 10;
        c.jobs.poll_initial_interval = Duration::from_millis(50);
        c.jobs.poll_max_interval = Duration::from_millis(200);
    });
    let (state, workers) = AppState::build(config).await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let mut tasks = JoinSet::new();
    tasks.spawn(evalgate::serve::serve(
        listener,
        evalgate::http::api_router(state.clone()),
        shutdown.clone(),
    ));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();

    // The engine is not running yet: its queue takes one command, the others are dropped.
    let mut ids = Vec::new();
    for _ in 0..JOBS {
        let response = client
            .post(format!("{api}/v1/jobs"))
            .json(&json!({"kind": "failure_analysis", "dataset": dataset(15)}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let accepted = json(response).await;
        assert_eq!(accepted["batches"], 2);
        ids.push(accepted["job_id"].as_str().unwrap().to_owned());
    }
    let mut engine = JoinSet::new();
    engine.spawn(
        workers
            .engine
            .run(shutdown.clone(), CancellationToken::new()),
    );

    for id in &ids {
        eventually(Duration::from_secs(20), || async {
            let status = json(
                client
                    .get(format!("{api}/v1/jobs/{id}"))
                    .send()
                    .await
                    .unwrap(),
            )
            .await;
            status["status"] == "completed"
        })
        .await;
    }
    let submits = emulator
        .handle()
        .requests()
        .into_iter()
        .filter(|r| r.method == http::Method::POST && r.path == "/v2/failure-analysis/analyze")
        .count();
    assert_eq!(submits, 2 * JOBS, "every batch submitted once, none twice");

    shutdown.cancel();
    engine.join_next().await.unwrap().unwrap().unwrap();
    tasks.join_next().await.unwrap().unwrap().unwrap();
}
