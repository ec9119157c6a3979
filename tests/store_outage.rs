//! A store that is busy for longer than its wait (another writer holds the database) is a
//! transient failure: a new job is answered 503 `store_unavailable` with `Retry-After`, nothing
//! is created, and the same request succeeds once the store is free again.
#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions fail fast by design"
)]

mod common;

use common::{TestApp, dataset, emulator_config};
use evalgate::config::StorePath;
use http::StatusCode;
use serde_json::{Value, json};

async fn json(response: reqwest::Response) -> Value {
    let status = response.status();
    let text = response.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|_| panic!("{status}: {text}"))
}

#[tokio::test]
async fn a_busy_store_answers_503_with_retry_after_and_recovers_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("evalgate.db");
    let store = path.clone();
    let app = TestApp::spawn_with(emulator_config(), move |c| {
        c.store.path = StorePath::File(store);
        c.batching.evaluation.max_items = 10;
    })
    .await;
    let body = json!({"kind": "evaluation", "dataset": dataset(15)});

    // Another writer takes the database and keeps it.
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        locked_tx.send(()).unwrap();
        release_rx.recv().unwrap();
        conn.execute_batch("ROLLBACK").unwrap();
    });
    locked_rx.recv().unwrap();

    let refused = app.post("/v1/jobs").json(&body).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(refused.headers().contains_key("retry-after"));
    let error = json(refused).await;
    assert_eq!(error["error"]["code"], "store_unavailable", "{error}");
    // Reads go on meanwhile (WAL readers are not blocked by a writer): nothing was created.
    let list = json(app.get("/v1/jobs").send().await.unwrap()).await;
    assert_eq!(list["jobs"], json!([]), "{list}");

    release_tx.send(()).unwrap();
    holder.join().unwrap();
    let accepted = app.post("/v1/jobs").json(&body).send().await.unwrap();
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    let accepted = json(accepted).await;
    assert_eq!(accepted["total_items"], 15);
}
