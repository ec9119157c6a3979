//! End-to-end job benchmarks against the emulator, in-process on loopback:
//!
//! 1. **Throughput**: 100 batches whose upstream jobs take 1 s each, at `jobs.concurrency = 8`
//!    (target: wall time ≤ 15 s).
//! 2. **Poll economy**: upstream status polls for one long job (target ≤ 25 for a 10-minute job;
//!    the SDK makes 300). Run time-compressed by `SCALE` (job, initial and max interval all divided
//!    by it), which leaves the poll count unchanged.
//!
//! 3. **Webhook latency**: from a job's end (`finished_at`) to its webhook's arrival at a healthy
//!    local receiver, over many jobs (target p99 ≤ 100 ms).
//!
//! `cargo bench --bench jobs_e2e` prints one line per measurement.
#![expect(
    clippy::print_stdout,
    clippy::unwrap_used,
    reason = "a benchmark program"
)]

use std::time::{Duration, Instant};

use evalgate::{Listeners, config::Config};
use http::Method;
use serde_json::{Value, json};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use valiqor_emulator::{Emulator, EmulatorConfig};

const KEY: &str = "vq_bench_upstream";
/// Time compression of the poll-economy run.
const SCALE: u32 = 20;

fn dataset(n: usize) -> Value {
    Value::Array(
        (0..n)
            .map(|i| json!({"input": format!("question {i}"), "output": format!("answer {i}"), "context": [format!("ctx {i}")]}))
            .collect(),
    )
}

async fn run_job(
    items: usize,
    job_duration: Duration,
    edit: impl FnOnce(&mut Config),
) -> (Duration, usize, usize) {
    let emulator = Emulator::spawn(EmulatorConfig {
        api_key: Some(KEY.to_owned()),
        inline_max_items: 0,
        max_dataset_items: 100_000,
        job_duration,
        ..EmulatorConfig::default()
    })
    .await
    .unwrap();
    let config = Config::for_tests(&emulator.handle().base_url(), KEY, edit);
    let listeners = Listeners::bind(&config).await.unwrap();
    let api = format!("http://{}", listeners.api_addr().unwrap());
    let shutdown = CancellationToken::new();
    let mut tasks = JoinSet::new();
    tasks.spawn(evalgate::run(config, listeners, shutdown.clone()));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(900))
        .build()
        .unwrap();
    // Wait until serving.
    while client.get(format!("{api}/v1/jobs")).send().await.is_err() {
        tokio::task::yield_now().await;
    }
    let started = Instant::now();
    let accepted: Value = client
        .post(format!("{api}/v1/jobs"))
        .json(&json!({"kind": "failure_analysis", "dataset": dataset(items)}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = accepted["job_id"].as_str().unwrap().to_owned();
    let batches = usize::try_from(accepted["batches"].as_u64().unwrap()).unwrap();
    loop {
        let status: Value = client
            .get(format!("{api}/v1/jobs/{id}?wait=60s"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if status["status"] != "running" && status["status"] != "queued" {
            assert_eq!(status["status"], "completed", "{status}");
            break;
        }
    }
    let wall = started.elapsed();
    let polls = emulator
        .handle()
        .requests()
        .iter()
        .filter(|r| r.method == Method::GET && r.path.ends_with("/status"))
        .count();
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
    (wall, batches, polls)
}

/// Webhook bodies with their arrival time.
type Arrivals = std::sync::Arc<std::sync::Mutex<Vec<(std::time::SystemTime, axum::body::Bytes)>>>;

/// Runs `jobs` small jobs, each with a webhook to an in-process receiver; returns the delays
/// from each job's `finished_at` to the arrival of its webhook, sorted.
async fn webhook_latencies(jobs: usize) -> Vec<Duration> {
    use std::sync::Arc;

    use axum::{Router, body::Bytes, extract::State, routing::post};

    let emulator = Emulator::spawn(EmulatorConfig {
        api_key: Some(KEY.to_owned()),
        ..EmulatorConfig::default()
    })
    .await
    .unwrap();
    let arrivals: Arrivals = Arc::default();
    let sink = Router::new()
        .route(
            "/hook",
            post(|State(log): State<Arrivals>, body: Bytes| async move {
                log.lock()
                    .unwrap()
                    .push((std::time::SystemTime::now(), body));
            }),
        )
        .with_state(Arc::clone(&arrivals));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    let mut tasks = JoinSet::new();
    tasks.spawn(async move {
        let _ = axum::serve(listener, sink).await;
        Ok(())
    });
    let config = Config::for_tests(&emulator.handle().base_url(), KEY, |c| {
        c.webhooks.allowed_cidrs = vec!["127.0.0.0/8".parse().unwrap()];
    });
    let listeners = Listeners::bind(&config).await.unwrap();
    let api = format!("http://{}", listeners.api_addr().unwrap());
    let shutdown = CancellationToken::new();
    tasks.spawn(evalgate::run(config, listeners, shutdown.clone()));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    while client.get(format!("{api}/v1/jobs")).send().await.is_err() {
        tokio::task::yield_now().await;
    }
    let secret = evalgate::webhooks::signing::SigningSecret::generate().1;
    for _ in 0..jobs {
        client
            .post(format!("{api}/v1/jobs"))
            .json(&json!({"kind": "failure_analysis", "dataset": dataset(3), "webhook": {"url": hook, "secret": secret}}))
            .send()
            .await
            .unwrap();
    }
    while arrivals.lock().unwrap().len() < jobs {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    let mut delays: Vec<Duration> = arrivals
        .lock()
        .unwrap()
        .iter()
        .map(|(at, body)| {
            let body: Value = serde_json::from_slice(body).unwrap();
            let finished =
                humantime::parse_rfc3339(body["data"]["finished_at"].as_str().unwrap()).unwrap();
            at.duration_since(finished).unwrap_or_default()
        })
        .collect();
    delays.sort_unstable();
    tasks.abort_all();
    delays
}

#[tokio::main]
async fn main() {
    // 3. Webhook latency after a job ends.
    let delays = webhook_latencies(200).await;
    let pick = |q: f64| {
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "an index into a short list"
        )]
        let i = ((delays.len() as f64 * q).ceil() as usize).saturating_sub(1);
        delays[i].as_secs_f64() * 1000.0
    };
    println!(
        "webhook latency: job end -> arrival at a healthy local receiver, {} jobs: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (target p99 <= 100 ms)",
        delays.len(),
        pick(0.5),
        pick(0.99),
        pick(1.0)
    );

    // 1. 100 batches × 1 s upstream jobs at concurrency 8.
    let (wall, batches, polls) = run_job(1000, Duration::from_secs(1), |c| {
        c.batching.failure_analysis.max_items = 10;
        c.jobs.concurrency = 8;
    })
    .await;
    println!(
        "throughput: {batches} batches x 1 s upstream jobs, concurrency 8: wall {:.2} s (target <= 15 s), {polls} status polls",
        wall.as_secs_f64()
    );

    // 2. One 10-minute job, compressed SCALE times.
    let (wall, _, polls) = run_job(10, Duration::from_secs(600) / SCALE, |c| {
        c.jobs.poll_initial_interval = Duration::from_secs(2) / SCALE;
        c.jobs.poll_max_interval = Duration::from_secs(30) / SCALE;
    })
    .await;
    println!(
        "poll economy: one 10-minute upstream job (run {SCALE}x compressed in {:.1} s): {polls} status polls (target <= 25; the SDK polls every 2 s: 300)",
        wall.as_secs_f64()
    );
}
