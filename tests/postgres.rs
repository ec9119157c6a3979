//! evalgate on the `PostgreSQL` store (`store.url`), end to end: a managed job runs through it,
//! is in the database, and is still there for the next evalgate on the same database. Needs
//! `EVALGATE_TEST_POSTGRES_URL` (`.ci/postgres.sh start DIR`); without it the test is skipped,
//! except under `CI`, where it fails.
#![expect(
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::disallowed_methods,
    reason = "integration tests fail fast; the test server comes from the environment"
)]

mod common;

use std::time::Duration;

use common::{TestApp, dataset, emulator_config};
use evalgate::{config::PostgresConfig, types::Secret};
use http::StatusCode;
use serde_json::{Value, json};
use tokio_postgres::NoTls;
use valiqor_emulator::EmulatorConfig;

/// A fresh database on the test server; `None` (skipped) without one, outside CI.
async fn fresh_database() -> Option<(String, tokio_postgres::Client)> {
    let Some(server) = std::env::var("EVALGATE_TEST_POSTGRES_URL")
        .ok()
        .filter(|v| !v.is_empty())
    else {
        assert!(
            std::env::var("CI").is_err(),
            "EVALGATE_TEST_POSTGRES_URL is not set: CI must run the PostgreSQL tests"
        );
        println!("skipped: EVALGATE_TEST_POSTGRES_URL is not set");
        return None;
    };
    let name = format!("evalgate_e2e_{}", uuid::Uuid::now_v7().simple());
    let (admin, connection) = tokio_postgres::connect(&server, NoTls).await.unwrap();
    let admin_task = tokio::spawn(connection);
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    drop(admin);
    admin_task.await.unwrap().unwrap();
    let mut url = url::Url::parse(&server).unwrap();
    url.set_path(&format!("/{name}"));
    let (client, connection) = tokio_postgres::connect(url.as_str(), NoTls).await.unwrap();
    tokio::spawn(connection);
    Some((url.to_string(), client))
}

fn on_postgres(url: &str) -> impl FnOnce(&mut evalgate::config::Config) + '_ {
    move |c| {
        c.store.in_force = "postgres";
        c.store.postgres = Some(PostgresConfig {
            url: url.to_owned(),
            url_secret: Secret::new(url.to_owned()),
            pool_size: 4,
            statement_timeout: Duration::from_secs(30),
        });
        c.batching.failure_analysis.max_items = 10;
        c.jobs.poll_initial_interval = Duration::from_millis(30);
        c.jobs.poll_max_interval = Duration::from_millis(150);
    }
}

fn emulator() -> EmulatorConfig {
    EmulatorConfig {
        inline_max_items: 4,
        job_duration: Duration::from_millis(200),
        ..emulator_config()
    }
}

async fn json_of(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn a_managed_job_runs_on_the_postgres_store_and_outlives_the_process() {
    let Some((url, db)) = fresh_database().await else {
        return;
    };
    let app = TestApp::spawn_with(emulator(), on_postgres(&url)).await;
    let (status, accepted) = json_of(
        app.post("/v1/jobs")
            .json(&json!({"kind": "failure_analysis", "dataset": dataset(25)}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    let job = accepted["job_id"].as_str().unwrap().to_owned();
    let (_, view) = json_of(
        app.get(&format!("/v1/jobs/{job}?wait=20s"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(view["status"], "completed", "{view}");
    assert_eq!(view["batches"].as_array().unwrap().len(), 3);
    // It is the database's: the job, its three batches and its final event are rows there.
    let row = db
        .query_one(
            "SELECT state, (SELECT count(*) FROM batches WHERE job_id = $1) FROM jobs WHERE id = $1",
            &[&job],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "completed");
    assert_eq!(row.get::<_, i64>(1), 3);
    // A second evalgate on the same database while this one runs refuses to start (until
    // leases, two would both drive every batch).
    let config =
        evalgate::config::Config::for_tests(&app.emulator().base_url(), "vq_x", on_postgres(&url));
    let listeners = evalgate::Listeners::bind(&config).await.unwrap();
    let refused = tokio::time::timeout(
        Duration::from_secs(30),
        evalgate::run(
            config,
            listeners,
            tokio_util::sync::CancellationToken::new(),
        ),
    )
    .await
    .expect("refused within the claim's wait")
    .expect_err("a second evalgate on one database does not start");
    let chain = evalgate::error::ErrorChain(&refused).to_string();
    assert!(
        chain.contains("another evalgate works on this PostgreSQL database"),
        "{chain}"
    );
    app.stop().await.unwrap();

    // Another evalgate on the same database, once the first stopped, answers for the job,
    // result included.
    let again = TestApp::spawn_with(emulator(), on_postgres(&url)).await;
    let (status, result) = json_of(
        again
            .get(&format!("/v1/jobs/{job}/result"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{result}");
    assert_eq!(result["summary"]["total_items"], 25, "{result}");
    again.stop().await.unwrap();
}
