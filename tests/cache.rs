//! Taxonomy cache: hit/miss/stale, single-flight, TTL, only-200s, purge, key normalisation.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] functions fail fast by design"
)]

mod common;

use std::time::Duration;

use common::{TestApp, emulator_config, eventually};
use http::{Method, StatusCode};

const TAXONOMY: &str = "/v2/failure-analysis/taxonomy";

fn cache_header(response: &reqwest::Response) -> String {
    response.headers()["x-evalgate-cache"]
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn catalogs_are_served_from_cache_after_the_first_call() {
    let app = TestApp::spawn().await;
    for path in [
        TAXONOMY,
        "/v2/failure-analysis/taxonomy/subcategories",
        "/v2/security/vulnerabilities",
        "/v2/security/attack-vectors",
        "/v2/admin/metric-templates",
    ] {
        let first = app.get(path).send().await.unwrap();
        assert_eq!(first.status(), StatusCode::OK, "{path}");
        assert_eq!(cache_header(&first), "miss", "{path}");
        let first_body = first.bytes().await.unwrap();
        let second = app.get(path).send().await.unwrap();
        assert_eq!(cache_header(&second), "hit", "{path}");
        assert_eq!(second.bytes().await.unwrap(), first_body, "{path}");
        assert_eq!(
            app.emulator().requests_to(&Method::GET, path).len(),
            1,
            "{path}"
        );
    }
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("evalgate_taxonomy_cache_total{result=\"hit\"} 5"),
        "{metrics}"
    );
}

#[tokio::test]
async fn fifty_concurrent_misses_make_one_upstream_call() {
    let app = TestApp::spawn_with(
        valiqor_emulator::EmulatorConfig {
            faults: valiqor_emulator::Faults {
                latency: Duration::from_millis(200),
                ..Default::default()
            },
            ..emulator_config()
        },
        |_| {},
    )
    .await;
    let calls = (0..50).map(|_| async { app.get(TAXONOMY).send().await.unwrap() });
    let responses = futures::future::join_all(calls).await;
    assert!(responses.iter().all(|r| r.status() == StatusCode::OK));
    assert_eq!(app.emulator().requests_to(&Method::GET, TAXONOMY).len(), 1);
    let misses = responses
        .iter()
        .filter(|r| cache_header(r) == "miss")
        .count();
    assert_eq!(misses, 1);
}

#[tokio::test]
async fn query_is_normalised_and_distinguishes_entries() {
    let app = TestApp::spawn().await;
    let path = "/v2/failure-analysis/taxonomy/subcategories";
    app.get(&format!("{path}?bucket_id=b1&project_name=p"))
        .send()
        .await
        .unwrap();
    let reordered = app
        .get(&format!("{path}?project_name=p&bucket_id=b1"))
        .send()
        .await
        .unwrap();
    assert_eq!(cache_header(&reordered), "hit");
    let other = app
        .get(&format!("{path}?bucket_id=b2&project_name=p"))
        .send()
        .await
        .unwrap();
    assert_eq!(cache_header(&other), "miss");
    assert_eq!(app.emulator().requests_to(&Method::GET, path).len(), 2);
}

#[tokio::test]
async fn non_200_answers_are_not_cached() {
    let app = TestApp::spawn().await;
    let missing = app
        .get("/v2/failure-analysis/buckets/no-such-bucket")
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let again = app
        .get("/v2/failure-analysis/buckets/no-such-bucket")
        .send()
        .await
        .unwrap();
    assert_eq!(cache_header(&again), "miss");
    assert_eq!(
        app.emulator()
            .requests_to(&Method::GET, "/v2/failure-analysis/buckets/no-such-bucket")
            .len(),
        2
    );
}

#[tokio::test]
async fn entries_expire_after_ttl_and_stale_is_served_when_upstream_fails() {
    let app = TestApp::spawn_with(emulator_config(), |c| {
        c.taxonomy_cache.ttl = Duration::from_millis(300);
        c.taxonomy_cache.stale_if_error = Duration::from_secs(60);
    })
    .await;
    let first = app.get(TAXONOMY).send().await.unwrap();
    let body = first.bytes().await.unwrap();
    app.emulator().set_faults(always_failing());
    // Fresh hits until the TTL passes, then the failing refresh serves the stale entry.
    eventually(Duration::from_secs(5), || async {
        let response = app.get(TAXONOMY).send().await.unwrap();
        let stale = cache_header(&response) == "stale";
        if stale {
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(response.bytes().await.unwrap(), body);
        }
        stale
    })
    .await;
    // With the upstream healthy again, the expired entry is refreshed.
    app.emulator()
        .set_faults(valiqor_emulator::Faults::default());
    let refreshed = app.get(TAXONOMY).send().await.unwrap();
    assert_eq!(cache_header(&refreshed), "miss");
    assert_eq!(refreshed.status(), StatusCode::OK);
    assert!(app.emulator().requests_to(&Method::GET, TAXONOMY).len() >= 3);
}

fn always_failing() -> valiqor_emulator::Faults {
    valiqor_emulator::Faults {
        error_rate: 1.0,
        ..Default::default()
    }
}

#[tokio::test]
async fn stale_is_not_served_when_disabled() {
    let app = TestApp::spawn_with(emulator_config(), |c| {
        c.taxonomy_cache.ttl = Duration::from_millis(200);
        c.taxonomy_cache.stale_if_error = Duration::ZERO;
    })
    .await;
    app.get(TAXONOMY).send().await.unwrap();
    app.emulator().set_faults(always_failing());
    eventually(Duration::from_secs(5), || async {
        let response = app.get(TAXONOMY).send().await.unwrap();
        assert_ne!(cache_header(&response), "stale");
        response.status() == StatusCode::INTERNAL_SERVER_ERROR
    })
    .await;
}

#[tokio::test]
async fn purge_on_the_admin_port_empties_the_cache() {
    let app = TestApp::spawn().await;
    app.get(TAXONOMY).send().await.unwrap();
    assert_eq!(
        cache_header(&app.get(TAXONOMY).send().await.unwrap()),
        "hit"
    );
    let purged: serde_json::Value = app
        .client
        .post(format!("{}/admin/cache/purge", app.admin))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(purged["purged"], 1);
    assert_eq!(
        cache_header(&app.get(TAXONOMY).send().await.unwrap()),
        "miss"
    );
}
