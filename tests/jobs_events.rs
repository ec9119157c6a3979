//! Watching managed jobs: the SSE stream (`progress`, `batch`, one final event, `Last-Event-ID`
//! replay), the `?wait=` long poll, and the paginated job list.
#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions fail fast by design"
)]

mod common;

use std::{
    collections::BTreeSet,
    time::{Duration, Instant, SystemTime},
};

use common::{TestApp, dataset, emulator_config};
use evalgate::config::Config;
use http::StatusCode;
use serde_json::{Value, json};
use valiqor_emulator::EmulatorConfig;

/// Every bounded wait in this file.
const LIMIT: Duration = Duration::from_secs(20);

fn fast(c: &mut Config) {
    c.batching.failure_analysis.max_items = 10;
    c.jobs.poll_initial_interval = Duration::from_millis(30);
    c.jobs.poll_max_interval = Duration::from_millis(150);
}

fn emulator(job_duration: Duration) -> EmulatorConfig {
    EmulatorConfig {
        inline_max_items: 4,
        job_duration,
        ..emulator_config()
    }
}

async fn json(response: reqwest::Response) -> Value {
    let status = response.status();
    let text = response.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|_| panic!("{status}: {text}"))
}

async fn submit(app: &TestApp, n: usize) -> String {
    let response = app
        .post("/v1/jobs")
        .json(&json!({"kind": "failure_analysis", "dataset": dataset(n)}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    json(response).await["job_id"].as_str().unwrap().to_owned()
}

/// One server-sent event, with the `id` it carried itself (not the inherited last id).
#[derive(Debug, Clone)]
struct Sse {
    id: Option<i64>,
    name: String,
    data: String,
}

impl Sse {
    /// Batch and final events are stored and replayable; progress snapshots are not.
    fn is_durable(&self) -> bool {
        self.name != "progress"
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|_| panic!("{self:?}"))
    }
}

/// Parses the complete events off the front of `buffer` (`text/event-stream`, LF line ends).
fn parse_events(buffer: &mut Vec<u8>, out: &mut Vec<Sse>) {
    while let Some(end) = buffer.windows(2).position(|w| w == b"\n\n") {
        let block: Vec<u8> = buffer.drain(..end + 2).collect();
        let block = String::from_utf8(block).unwrap();
        let mut event = Sse {
            id: None,
            name: "message".to_owned(),
            data: String::new(),
        };
        let mut has_data = false;
        for line in block.lines() {
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                // A comment (keep-alive).
                "" => {}
                "id" => {
                    let id = value
                        .parse()
                        .unwrap_or_else(|_| panic!("non-numeric id in {block:?}"));
                    event.id = Some(id);
                }
                "event" => value.clone_into(&mut event.name),
                "data" => {
                    if has_data {
                        event.data.push('\n');
                    }
                    event.data.push_str(value);
                    has_data = true;
                }
                other => panic!("unexpected field {other:?} in {block:?}"),
            }
        }
        if has_data {
            out.push(event);
        }
    }
}

/// Reads an event stream to its end (bounded by `LIMIT`).
async fn read_events(app: &TestApp, id: &str, last_event_id: Option<i64>) -> Vec<Sse> {
    let mut request = app.get(&format!("/v1/jobs/{id}/events"));
    if let Some(last) = last_event_id {
        request = request.header("last-event-id", last.to_string());
    }
    let mut response = request.send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()[http::header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );
    let mut buffer = Vec::new();
    let mut events = Vec::new();
    let read = tokio::time::timeout(LIMIT, async {
        while let Some(chunk) = response.chunk().await.unwrap() {
            buffer.extend_from_slice(&chunk);
            parse_events(&mut buffer, &mut events);
        }
    })
    .await;
    assert!(read.is_ok(), "the stream did not end; got {events:#?}");
    assert!(
        buffer.iter().all(u8::is_ascii_whitespace),
        "a partial event at the end: {:?}",
        String::from_utf8_lossy(&buffer)
    );
    events
}

/// The ids the events carried, in order.
fn ids<'a>(events: impl IntoIterator<Item = &'a Sse>) -> Vec<i64> {
    events.into_iter().filter_map(|e| e.id).collect()
}

fn names(events: &[Sse]) -> Vec<&str> {
    events.iter().map(|e| e.name.as_str()).collect()
}

#[tokio::test]
async fn the_event_stream_reports_progress_batches_and_one_final_event_then_ends() {
    let app = TestApp::spawn_with(emulator(Duration::from_millis(800)), fast).await;
    let id = submit(&app, 25).await;
    let events = read_events(&app, &id, None).await;

    let names = names(&events);
    assert!(names.contains(&"progress"), "{names:?}");
    assert_eq!(
        names.iter().filter(|n| **n == "completed").count(),
        1,
        "{names:?}"
    );
    assert_eq!(
        names.last(),
        Some(&"completed"),
        "the final event ends the stream"
    );
    assert!(
        names
            .iter()
            .all(|n| ["progress", "batch", "completed"].contains(n)),
        "{names:?}"
    );
    // The upstream jobs take 800 ms, so all three batch completions happen while we watch.
    let completed_batches: BTreeSet<u64> = events
        .iter()
        .filter(|e| e.name == "batch")
        .map(Sse::json)
        .filter(|d| d["status"] == "completed")
        .map(|d| {
            assert_eq!(d["job_id"], id.as_str());
            d["index"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(completed_batches, BTreeSet::from([0, 1, 2]), "{events:#?}");
    let progress = events.iter().find(|e| e.name == "progress").unwrap().json();
    assert_eq!(progress["job_id"], id.as_str(), "{progress}");
    let last = events.last().unwrap().json();
    assert_eq!(last["status"], "completed");
    assert_eq!(last["job_id"], id.as_str());
    // Every durable event (batch, final) has an id, a new one each time; ids never go back.
    let durable: Vec<&Sse> = events.iter().filter(|e| e.is_durable()).collect();
    assert!(durable.iter().all(|e| e.id.is_some()), "{events:#?}");
    let durable = ids(durable);
    assert!(durable.windows(2).all(|w| w[0] < w[1]), "{durable:?}");
    let all = ids(&events);
    assert!(all.windows(2).all(|w| w[0] <= w[1]), "{events:#?}");
}

#[tokio::test]
async fn last_event_id_replays_the_rest_of_a_finished_job_in_order() {
    let app = TestApp::spawn_with(emulator(Duration::from_millis(500)), fast).await;
    let id = submit(&app, 25).await;
    let live = read_events(&app, &id, None).await;
    let durable: Vec<&Sse> = live.iter().filter(|e| e.is_durable()).collect();
    assert!(durable.len() >= 4, "{live:#?}");
    // Reconnect after the end, as a client that saw the stream up to a mid-way event.
    let mid = durable[durable.len() / 2 - 1].id.unwrap();
    let replay = read_events(&app, &id, Some(mid)).await;

    let replayed: Vec<(Option<i64>, &str, &str)> = replay
        .iter()
        .filter(|e| e.is_durable())
        .map(|e| (e.id, e.name.as_str(), e.data.as_str()))
        .collect();
    let missed: Vec<(Option<i64>, &str, &str)> = durable
        .iter()
        .filter(|e| e.id > Some(mid))
        .map(|e| (e.id, e.name.as_str(), e.data.as_str()))
        .collect();
    assert_eq!(replayed, missed, "exactly the events after {mid}, in order");
    let ids = ids(&replay);
    assert!(
        ids.iter().all(|&i| i > mid),
        "nothing at or before {mid} again: {replay:#?}"
    );
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids strictly increase: {replay:#?}"
    );
    assert_eq!(
        replay.last().map(|e| e.name.as_str()),
        Some("completed"),
        "the replay ends with the final event: {replay:#?}"
    );
}

#[tokio::test]
async fn a_finished_job_streams_its_history_and_ends_with_the_final_event() {
    let app = TestApp::spawn_with(emulator(Duration::from_millis(200)), fast).await;
    let id = submit(&app, 15).await;
    let status = json(
        app.get(&format!("/v1/jobs/{id}?wait=20s"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status["status"], "completed", "{status}");
    let events = read_events(&app, &id, None).await;
    assert_eq!(names(&events).last(), Some(&"completed"), "{events:#?}");
    assert_eq!(events.iter().filter(|e| e.name == "completed").count(), 1);
}

#[tokio::test]
async fn events_of_an_unknown_job_are_a_404_json_error() {
    let app = TestApp::spawn().await;
    for unknown in ["egj_00000000000000000000000000000000", "not-a-job"] {
        let response = app
            .get(&format!("/v1/jobs/{unknown}/events"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{unknown}");
        assert!(
            response.headers()[http::header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("application/json")
        );
        let body = json(response).await;
        assert_eq!(body["error"]["code"], "not_found", "{body}");
        assert!(body["error"]["message"].is_string());
    }
}

#[tokio::test]
async fn wait_returns_when_the_job_completes() {
    let app = TestApp::spawn_with(emulator(Duration::from_millis(500)), fast).await;
    let id = submit(&app, 25).await;
    let asked = Instant::now();
    let status = json(
        app.get(&format!("/v1/jobs/{id}?wait=20s"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let answered = SystemTime::now();
    assert_eq!(status["status"], "completed", "{status}");
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "{:?}",
        asked.elapsed()
    );
    // The answer came right after the job finished, not at the end of the wait.
    let finished = humantime::parse_rfc3339(status["finished_at"].as_str().unwrap()).unwrap();
    let late = answered.duration_since(finished).unwrap_or_default();
    assert!(
        late < Duration::from_secs(2),
        "answered {late:?} after the job finished"
    );
}

#[tokio::test]
async fn a_short_wait_on_a_long_job_returns_the_running_status_in_time() {
    let app = TestApp::spawn_with(emulator(Duration::from_mins(1)), fast).await;
    let id = submit(&app, 25).await;
    common::eventually(LIMIT, || async {
        json(app.get(&format!("/v1/jobs/{id}")).send().await.unwrap()).await["status"] == "running"
    })
    .await;
    let asked = Instant::now();
    let status = json(
        app.get(&format!("/v1/jobs/{id}?wait=200ms"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let took = asked.elapsed();
    assert_eq!(status["status"], "running", "{status}");
    assert!(
        took >= Duration::from_millis(200),
        "returned after {took:?}"
    );
    assert!(took < Duration::from_secs(5), "returned after {took:?}");

    for bogus in ["bogus", "-1s", "12parsecs"] {
        let response = app
            .get(&format!("/v1/jobs/{id}?wait={bogus}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bogus}");
        assert_eq!(json(response).await["error"]["code"], "bad_request");
    }
}

/// Every page of `GET /v1/jobs?limit=2{query}`, following `next_cursor` (bounded).
async fn all_pages(app: &TestApp, query: &str) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(cursor) => format!("/v1/jobs?limit=2{query}&cursor={cursor}"),
            None => format!("/v1/jobs?limit=2{query}"),
        };
        let response = app.get(&path).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let page = json(response).await;
        let ids: Vec<String> = page["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["job_id"].as_str().unwrap().to_owned())
            .collect();
        assert!(ids.len() <= 2, "{page}");
        pages.push(ids);
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return pages,
        }
        assert!(pages.len() < 50, "pagination does not end");
    }
}

#[tokio::test]
async fn the_job_list_pages_through_every_job_once_and_filters_by_status() {
    let app = TestApp::spawn_with(emulator(Duration::from_millis(200)), fast).await;
    // Four jobs that finish quickly, one that runs for a minute.
    let mut quick = Vec::new();
    for _ in 0..4 {
        quick.push(submit(&app, 12).await);
    }
    for id in &quick {
        let status = json(
            app.get(&format!("/v1/jobs/{id}?wait=20s"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status["status"], "completed", "{status}");
    }
    // Only now: the emulator reads the duration when a batch reaches it.
    app.emulator().set_job_duration(Duration::from_mins(1));
    let slow = submit(&app, 12).await;
    common::eventually(LIMIT, || async {
        json(app.get(&format!("/v1/jobs/{slow}")).send().await.unwrap()).await["status"]
            == "running"
    })
    .await;

    let pages = all_pages(&app, "").await;
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        [2, 2, 1],
        "{pages:?}"
    );
    let listed: Vec<String> = pages.into_iter().flatten().collect();
    let mut every: Vec<String> = quick.iter().chain([&slow]).cloned().collect();
    every.sort();
    assert_eq!(
        listed, every,
        "each job exactly once, oldest (lowest id) first"
    );

    let completed: Vec<String> = all_pages(&app, "&status=completed")
        .await
        .into_iter()
        .flatten()
        .collect();
    let mut quick_sorted = quick.clone();
    quick_sorted.sort();
    assert_eq!(completed, quick_sorted);
    let running: Vec<String> = all_pages(&app, "&status=running")
        .await
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(running, [slow]);
    let response = app.get("/v1/jobs?status=failed").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let page = json(response).await;
    assert_eq!(page["jobs"], json!([]), "{page}");
    assert!(page["next_cursor"].is_null(), "{page}");

    for bad in ["limit=0", "limit=101", "status=bogus"] {
        let response = app.get(&format!("/v1/jobs?{bad}")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(
            json(response).await["error"]["code"],
            "bad_request",
            "{bad}"
        );
    }
}

/// The `/v1` API answers every error as `{"error": {"code", "message"}}`, including query
/// strings that do not even parse.
#[tokio::test]
async fn a_malformed_list_query_gets_the_v1_error_shape() {
    let app = TestApp::spawn().await;
    for bad in ["limit=-1", "limit=two"] {
        let response = app.get(&format!("/v1/jobs?{bad}")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
        let text = response.text().await.unwrap();
        let body: Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("?{bad}: the 400 is not JSON: {text:?}"));
        assert_eq!(body["error"]["code"], "bad_request", "{bad}: {body}");
    }
}
