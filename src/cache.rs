//! `TaxonomyCache`: the catalog GETs (taxonomy, buckets, vulnerabilities, ...) cached with moka.
//!
//! - Keyed by upstream credential identity + path + normalised query.
//! - Only 200s are stored; other answers pass through uncached.
//! - Single-flight: computations for one key are serialised by moka's `and_compute_with`, so
//!   N concurrent misses make one upstream call and the others find the fresh entry.
//! - Stale-if-error: entries live `ttl + stale_if_error`; after `ttl` they are refreshed, and
//!   when the refresh fails (transport error or 5xx) the stale answer is served instead.
use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use moka::ops::compute::Op;

use crate::{config::TaxonomyCacheConfig, upstream::CredentialId};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct CacheKey {
    credential: CredentialId,
    path: String,
    query: String,
}

impl CacheKey {
    pub(crate) fn new(credential: CredentialId, path: &str, query: Option<&str>) -> Self {
        Self {
            credential,
            path: path.to_owned(),
            query: normalise_query(query.unwrap_or("")),
        }
    }
}

/// Query parameters in a canonical order, so `a=1&b=2` and `b=2&a=1` share an entry.
/// Repeated keys keep their relative order (the sort is stable).
pub(crate) fn normalise_query(query: &str) -> String {
    let mut pairs: Vec<&str> = query.split('&').filter(|p| !p.is_empty()).collect();
    pairs.sort_by(|a, b| {
        let key = |p: &str| p.split('=').next().unwrap_or_default().to_owned();
        key(a).cmp(&key(b))
    });
    pairs.join("&")
}

/// A fully read upstream answer.
#[derive(Debug, Clone)]
pub(crate) struct StoredResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub fetched_at: Instant,
    /// How long the upstream took to answer (for the overhead metric on a miss).
    pub upstream_elapsed: Duration,
}

/// How a cached route was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CacheStatus {
    Hit,
    Miss,
    Stale,
}

impl CacheStatus {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Miss => "miss",
            Self::Stale => "stale",
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct TaxonomyCache {
    entries: Option<moka::future::Cache<CacheKey, Arc<StoredResponse>>>,
    ttl: Duration,
    stale_if_error: Duration,
    max_body_bytes: usize,
}

/// The answer to serve, and how it was obtained.
#[derive(Debug)]
pub(crate) struct Served<E> {
    pub status: CacheStatus,
    pub outcome: Result<Arc<StoredResponse>, E>,
}

// === impl TaxonomyCache ===

impl TaxonomyCache {
    pub(crate) fn new(config: &TaxonomyCacheConfig) -> Self {
        let entries = config.enabled.then(|| {
            moka::future::Cache::builder()
                .max_capacity(config.max_entries)
                .time_to_live(config.ttl + config.stale_if_error)
                .build()
        });
        Self {
            entries,
            ttl: config.ttl,
            stale_if_error: config.stale_if_error,
            max_body_bytes: config.max_body_bytes,
        }
    }

    /// Serves `key` from the cache or through `fetch`, which performs the upstream request and
    /// returns the fully read answer (any status) or a transport error.
    pub(crate) async fn get_or_fetch<E, F, Fut>(&self, key: CacheKey, fetch: F) -> Served<E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<StoredResponse, E>>,
    {
        let Some(entries) = &self.entries else {
            return Served {
                status: CacheStatus::Miss,
                outcome: fetch().await.map(Arc::new),
            };
        };
        let mut served = None;
        let ttl = self.ttl;
        let stale_if_error = self.stale_if_error;
        let max_body = self.max_body_bytes;
        entries
            .entry(key)
            .and_compute_with(|current| {
                let served = &mut served;
                async move {
                    let current = current.map(moka::Entry::into_value);
                    if let Some(entry) = current.as_ref().filter(|e| e.fetched_at.elapsed() < ttl) {
                        *served = Some(Served {
                            status: CacheStatus::Hit,
                            outcome: Ok(Arc::clone(entry)),
                        });
                        return Op::Nop;
                    }
                    let stale = current.filter(|e| e.fetched_at.elapsed() < ttl + stale_if_error);
                    match fetch().await {
                        Ok(fresh)
                            if fresh.status == StatusCode::OK && fresh.body.len() <= max_body =>
                        {
                            let fresh = Arc::new(fresh);
                            *served = Some(Served {
                                status: CacheStatus::Miss,
                                outcome: Ok(Arc::clone(&fresh)),
                            });
                            Op::Put(fresh)
                        }
                        Ok(failed) if failed.status.is_server_error() && stale.is_some() => {
                            *served = stale.map(|entry| Served {
                                status: CacheStatus::Stale,
                                outcome: Ok(entry),
                            });
                            Op::Nop
                        }
                        Ok(other) => {
                            *served = Some(Served {
                                status: CacheStatus::Miss,
                                outcome: Ok(Arc::new(other)),
                            });
                            Op::Nop
                        }
                        Err(error) => {
                            *served = Some(match stale {
                                Some(entry) => Served {
                                    status: CacheStatus::Stale,
                                    outcome: Ok(entry),
                                },
                                None => Served {
                                    status: CacheStatus::Miss,
                                    outcome: Err(error),
                                },
                            });
                            Op::Nop
                        }
                    }
                }
            })
            .await;
        served.unwrap_or_else(|| {
            // and_compute_with always runs the closure; this is unreachable in practice.
            Served {
                status: CacheStatus::Miss,
                outcome: Ok(Arc::new(StoredResponse {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    headers: HeaderMap::new(),
                    body: Bytes::new(),
                    fetched_at: Instant::now(),
                    upstream_elapsed: Duration::ZERO,
                })),
            }
        })
    }

    /// Drops every entry; returns how many there were.
    pub(crate) async fn purge(&self) -> u64 {
        let Some(entries) = &self.entries else {
            return 0;
        };
        entries.run_pending_tasks().await;
        let count = entries.entry_count();
        entries.invalidate_all();
        entries.run_pending_tasks().await;
        count
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn cache(ttl: Duration, stale: Duration) -> TaxonomyCache {
        TaxonomyCache::new(&TaxonomyCacheConfig {
            enabled: true,
            max_entries: 100,
            ttl,
            stale_if_error: stale,
            max_body_bytes: 1024,
        })
    }

    fn answer(status: StatusCode, body: &'static str) -> StoredResponse {
        StoredResponse {
            status,
            headers: HeaderMap::new(),
            body: Bytes::from_static(body.as_bytes()),
            fetched_at: Instant::now(),
            upstream_elapsed: Duration::ZERO,
        }
    }

    fn key(path: &str) -> CacheKey {
        CacheKey::new(CredentialId::for_tests(1), path, Some("b=2&a=1"))
    }

    #[test]
    fn query_order_does_not_split_entries() {
        assert_eq!(normalise_query("b=2&a=1&a=0"), "a=1&a=0&b=2");
        assert_eq!(normalise_query(""), "");
    }

    #[tokio::test]
    async fn concurrent_misses_make_one_fetch() {
        let cache = cache(Duration::from_mins(1), Duration::ZERO);
        let calls = Arc::new(AtomicUsize::new(0));
        let tasks = (0..50).map(|_| {
            let cache = cache.clone();
            let calls = Arc::clone(&calls);
            async move {
                cache
                    .get_or_fetch::<(), _, _>(key("/t"), || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::task::yield_now().await;
                        Ok(answer(StatusCode::OK, "[]"))
                    })
                    .await
            }
        });
        let served = futures::future::join_all(tasks).await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(
            served
                .iter()
                .filter(|s| s.status == CacheStatus::Miss)
                .count(),
            1
        );
        assert!(
            served
                .iter()
                .all(|s| s.outcome.as_ref().is_ok_and(|r| r.body == "[]"))
        );
    }

    #[tokio::test]
    async fn only_200_is_stored_and_stale_serves_on_error() {
        let cache = cache(Duration::ZERO, Duration::from_mins(1));
        let first = cache
            .get_or_fetch::<(), _, _>(key("/t"), || async { Ok(answer(StatusCode::OK, "v1")) })
            .await;
        assert_eq!(first.status, CacheStatus::Miss);
        // ttl is zero: the entry is stale at once; a failing refresh serves it.
        let stale = cache
            .get_or_fetch::<(), _, _>(key("/t"), || async {
                Ok(answer(StatusCode::BAD_GATEWAY, "down"))
            })
            .await;
        assert_eq!(stale.status, CacheStatus::Stale);
        assert_eq!(stale.outcome.unwrap().body, "v1");
        let transport = cache
            .get_or_fetch(key("/t"), || async { Err("reset") })
            .await;
        assert_eq!(transport.status, CacheStatus::Stale);
        // A 404 is passed through, not stored and not replaced by the stale entry.
        let missing = cache
            .get_or_fetch::<(), _, _>(key("/other"), || async {
                Ok(answer(StatusCode::NOT_FOUND, "nope"))
            })
            .await;
        assert_eq!(missing.outcome.unwrap().status, StatusCode::NOT_FOUND);
        let again = cache
            .get_or_fetch::<(), _, _>(key("/other"), || async { Ok(answer(StatusCode::OK, "ok")) })
            .await;
        assert_eq!(again.status, CacheStatus::Miss);
        assert_eq!(cache.purge().await, 2);
    }
}
