//! The store contract: what every `JobStore` promises, as one set of test bodies run against
//! every backend — `SqliteStore` in memory and on file, and `PostgresStore` (one fresh database
//! per test on the server named by `EVALGATE_TEST_POSTGRES_URL`; see `postgres/testdb.rs`).
//!
//! A body takes the store as `Arc<dyn JobStore>` (or, for what needs a restart, the `Fixture`),
//! so it can only use the trait. Backend-specific behaviour (WAL, reader pool, pool timeouts,
//! error classification) is tested beside each backend.
use std::sync::Arc;

use bytes::Bytes;
use tokio::{sync::Barrier, task::JoinSet};

use super::{
    Attempt, AttemptRecord, BatchUpdate, Created, DeliveryRecord, DeliveryState, JobRecord,
    JobStore, ListQuery, NewBatch, NewDelivery, NewJob, PostgresStore, ReplayOutcome, SqliteStore,
    StoreError, postgres::testdb::TestDatabase,
};
use crate::{
    config::{StoreConfig, StorePath},
    types::{BatchState, JobId, JobKind, JobState, Millis, Origin, TenantName, now_millis},
};

// === the backends ===

/// A store under test and what is needed to open it again.
pub(super) struct Fixture {
    store: Arc<dyn JobStore>,
    // Dropped after the store (fields drop in order): the database outlives its pool.
    backend: Backend,
}

enum Backend {
    SqliteMemory,
    SqliteFile(tempfile::TempDir),
    Postgres(TestDatabase),
}

fn sqlite_config(path: StorePath) -> StoreConfig {
    StoreConfig {
        in_force: "sqlite",
        path,
        read_connections: 2,
        postgres: None,
    }
}

impl Fixture {
    async fn sqlite_memory() -> Option<Self> {
        let store = SqliteStore::open(&sqlite_config(StorePath::Memory))
            .await
            .unwrap();
        Some(Self {
            store: Arc::new(store),
            backend: Backend::SqliteMemory,
        })
    }

    async fn sqlite_file() -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let backend = Backend::SqliteFile(dir);
        let store = open(&backend).await.unwrap();
        Some(Self { store, backend })
    }

    /// `None` (skipped) without a test server, outside CI.
    async fn postgres() -> Option<Self> {
        let backend = Backend::Postgres(TestDatabase::create().await?);
        let store = open(&backend).await.unwrap();
        Some(Self { store, backend })
    }

    /// The same store opened again, as after a restart.
    async fn reopen(&self) -> Result<Arc<dyn JobStore>, StoreError> {
        open(&self.backend).await
    }

    /// Marks the store as migrated by a newer evalgate, to schema `version`.
    async fn set_schema_version(&self, version: i64) {
        match &self.backend {
            Backend::SqliteMemory => panic!("a :memory: store cannot be reopened"),
            Backend::SqliteFile(dir) => {
                rusqlite::Connection::open(db_file(dir))
                    .unwrap()
                    .pragma_update(None, "user_version", version)
                    .unwrap();
            }
            Backend::Postgres(db) => {
                db.execute(&format!(
                    "UPDATE evalgate_meta SET value = '{version}' WHERE key = 'schema_version'"
                ))
                .await;
            }
        }
    }
}

fn db_file(dir: &tempfile::TempDir) -> std::path::PathBuf {
    dir.path().join("evalgate.db")
}

async fn open(backend: &Backend) -> Result<Arc<dyn JobStore>, StoreError> {
    Ok(match backend {
        Backend::SqliteMemory => panic!("a :memory: store cannot be reopened"),
        Backend::SqliteFile(dir) => {
            Arc::new(SqliteStore::open(&sqlite_config(StorePath::File(db_file(dir)))).await?)
        }
        // Enough connections for the concurrency tests to race for real.
        Backend::Postgres(db) => Arc::new(PostgresStore::connect(&db.config(8)).await?),
    })
}

/// Instantiates the contract for each backend: `common` bodies take `Arc<dyn JobStore>`,
/// `durable` ones (a restart) take the `Fixture` and skip the `:memory:` store.
macro_rules! contract {
    (common: [$($common:ident),* $(,)?], durable: [$($durable:ident),* $(,)?] $(,)?) => {
        contract!(@backend sqlite_memory, Fixture::sqlite_memory, [$($common),*], []);
        contract!(@backend sqlite_file, Fixture::sqlite_file, [$($common),*], [$($durable),*]);
        contract!(@backend postgres, Fixture::postgres, [$($common),*], [$($durable),*]);
    };
    (@backend $backend:ident, $fixture:path, [$($common:ident),*], [$($durable:ident),*]) => {
        mod $backend {
            use super::Fixture;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $common() {
                    let Some(fixture) = $fixture().await else {
                        return;
                    };
                    super::$common(std::sync::Arc::clone(&fixture.store)).await;
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $durable() {
                    let Some(fixture) = $fixture().await else {
                        return;
                    };
                    super::$durable(&fixture).await;
                }
            )*
        }
    };
}

contract! {
    common: [
        ping_answers_and_unknown_ids_are_absent,
        a_created_job_reads_back_with_its_batches_in_dataset_order,
        idempotency_returns_the_existing_job_or_a_conflict_within_the_window,
        idempotency_keys_are_per_tenant,
        concurrent_creates_with_one_key_make_one_job,
        list_jobs_pages_by_id_within_a_tenant_and_filters_by_state,
        count_active_counts_unfinished_jobs_of_all_or_one_tenant,
        batch_updates_are_conditional_on_the_current_state,
        a_batch_update_after_the_job_ended_is_refused,
        split_batch_replaces_a_pending_batch_by_new_indexes,
        batch_results_hold_every_batch_with_a_result_in_dataset_order,
        finish_job_ends_a_job_once_with_its_event_and_deliveries,
        a_failed_job_ends_with_a_failed_event,
        recovery_finds_unfinished_batches_and_jobs_to_finalize,
        events_are_numbered_in_order_and_read_after_a_sequence_number,
        due_deliveries_come_oldest_first_skip_busy_ones_and_respect_the_limit,
        attempts_are_recorded_only_while_pending,
        list_deliveries_filters_by_job_and_state_oldest_first,
        replay_outcomes_decide_not_found_conflict_and_replayed,
        deliveries_and_their_replays_stay_with_their_tenant,
        finished_jobs_are_reaped_after_retention_and_unfinished_ones_never,
        learned_limits_and_disabled_targets_are_remembered,
    ],
    durable: [
        committed_state_survives_a_reopen,
        a_newer_schema_is_refused,
    ],
}

// === helpers ===

fn tenant(name: &str) -> TenantName {
    TenantName::parse(name).unwrap()
}

pub(super) fn default_tenant() -> TenantName {
    TenantName::default_tenant()
}

/// A job of `batches` one-item batches for the default tenant (also used by the SQLite-only
/// tests).
pub(super) fn new_job(batches: usize) -> NewJob {
    NewJob {
        tenant: default_tenant(),
        id: JobId::generate(),
        kind: JobKind::FailureAnalysis,
        origin: Origin::Native,
        total_items: batches,
        members: Bytes::from_static(b"\"run_eval\": true"),
        webhook: None,
        idempotency: None,
        batches: (0..batches)
            .map(|i| NewBatch {
                idx: u32::try_from(i).unwrap(),
                item_start: i,
                item_end: i + 1,
                payload: Bytes::from_static(b"{\"input\": \"q\"}"),
                upstream_job_id: None,
            })
            .collect(),
        created_at: now_millis(),
    }
}

/// A job of `batches` one-item batches for `tenant`.
fn job_of(tenant: &TenantName, batches: usize) -> NewJob {
    NewJob {
        tenant: tenant.clone(),
        ..new_job(batches)
    }
}

fn keyed_job(tenant: &TenantName, key: &str, hash: &str, created_at: Millis) -> NewJob {
    NewJob {
        tenant: tenant.clone(),
        idempotency: Some((key.to_owned(), hash.to_owned())),
        created_at,
        ..new_job(1)
    }
}

async fn create(store: &dyn JobStore, job: NewJob) -> JobId {
    let id = job.id.clone();
    assert_eq!(store.create_job(job, 0).await.unwrap(), Created::New);
    id
}

/// A change of batch `idx` from `from` to `to`, with an event and nothing else.
fn update(job: &JobId, idx: u32, from: &[BatchState], to: BatchState) -> BatchUpdate {
    BatchUpdate {
        event: Some(format!("{{\"batch\": {idx}}}")),
        ..BatchUpdate::new(job, idx, from, to)
    }
}

/// `change`, writing `result` too.
fn with_result(change: BatchUpdate, result: &'static [u8]) -> BatchUpdate {
    BatchUpdate {
        result: Some(Bytes::from_static(result)),
        ..change
    }
}

fn delivery(id: &str, url: &str, target: &str) -> NewDelivery {
    NewDelivery {
        id: id.to_owned(),
        event: "job.completed".to_owned(),
        url: url.to_owned(),
        target: target.to_owned(),
        payload: Bytes::from(format!("{{\"delivery\": \"{id}\"}}")),
    }
}

async fn finish(store: &dyn JobStore, job: &JobId, deliveries: Vec<NewDelivery>) -> bool {
    store
        .finish_job(
            job,
            JobState::Completed,
            None,
            Some(Bytes::from_static(b"{\"merged\": true}")),
            "{\"status\": \"completed\"}".to_owned(),
            deliveries,
        )
        .await
        .unwrap()
}

/// A finished job of `tenant` with deliveries of the given ids, all pending.
async fn job_with_deliveries(store: &dyn JobStore, tenant: &TenantName, ids: &[&str]) -> JobId {
    let id = create(store, job_of(tenant, 1)).await;
    let deliveries = ids
        .iter()
        .map(|d| delivery(d, &format!("https://hooks.example/{d}"), "job"))
        .collect();
    assert!(finish(store, &id, deliveries).await);
    id
}

fn attempt(delivery: &str, at: Millis, status: u16, new_state: DeliveryState) -> Attempt {
    Attempt {
        delivery_id: delivery.to_owned(),
        at,
        status: Some(status),
        latency_ms: 7,
        error: (status >= 400).then(|| format!("HTTP {status}")),
        new_state,
        next_at: at + 1_000,
    }
}

/// A pending attempt (HTTP 503) that schedules the next one at `next_at`.
fn retry_at(delivery: &str, at: Millis, next_at: Millis) -> Attempt {
    Attempt {
        next_at,
        ..attempt(delivery, at, 503, DeliveryState::Pending)
    }
}

/// Records `attempt(delivery, at, status, new_state)`; whether it was recorded.
async fn tried(
    store: &dyn JobStore,
    delivery: &str,
    at: Millis,
    status: u16,
    new_state: DeliveryState,
) -> bool {
    record(store, attempt(delivery, at, status, new_state)).await
}

/// Records `attempt`; whether it was recorded (its delivery pending).
async fn record(store: &dyn JobStore, attempt: Attempt) -> bool {
    store.record_attempt(attempt).await.unwrap()
}

/// Applies `change`; whether it applied (the batch and its job in an expected state).
async fn apply(store: &dyn JobStore, change: BatchUpdate) -> bool {
    store.update_batch(change).await.unwrap()
}

/// Moves batch `idx` of `job` from pending to `to`, with an event; whether it moved.
async fn from_pending(store: &dyn JobStore, job: &JobId, idx: u32, to: BatchState) -> bool {
    apply(store, update(job, idx, &[BatchState::Pending], to)).await
}

/// Ends `job` as `state` without a result, with the event data `{}`; whether it ended it.
async fn end(
    store: &dyn JobStore,
    job: &JobId,
    state: JobState,
    error: Option<&str>,
    deliveries: Vec<NewDelivery>,
) -> bool {
    store
        .finish_job(
            job,
            state,
            error.map(str::to_owned),
            None,
            "{}".to_owned(),
            deliveries,
        )
        .await
        .unwrap()
}

/// The stored job `id`, which must exist.
async fn job_record(store: &dyn JobStore, id: &JobId) -> JobRecord {
    store.job(id).await.unwrap().unwrap()
}

/// Every delivery of `tenant` (up to 10).
async fn all_deliveries(store: &dyn JobStore, tenant: &TenantName) -> Vec<DeliveryRecord> {
    store.list_deliveries(tenant, None, None, 10).await.unwrap()
}

/// Every delivery of `job` (up to 10), as `tenant` lists them.
async fn deliveries_of(
    store: &dyn JobStore,
    tenant: &TenantName,
    job: &JobId,
) -> Vec<DeliveryRecord> {
    store
        .list_deliveries(tenant, Some(job.clone()), None, 10)
        .await
        .unwrap()
}

fn ids_of(listed: Vec<DeliveryRecord>) -> Vec<String> {
    listed.into_iter().map(|d| d.id).collect()
}

/// The ids of the deliveries due at `at`, at most `limit`, none of `busy`.
async fn due_ids(store: &dyn JobStore, at: Millis, limit: usize, busy: &[&str]) -> Vec<String> {
    let busy = busy.iter().map(|&s| s.to_owned()).collect();
    let due = store.due_deliveries(at, limit, busy).await.unwrap();
    due.into_iter().map(|d| d.id).collect()
}

/// `msg_a` to `a_url` for the job, `msg_b` to an endpoint.
fn deliveries_a_and_b(a_url: &str) -> Vec<NewDelivery> {
    vec![
        delivery("msg_a", a_url, "job"),
        delivery(
            "msg_b",
            "https://hooks.example/b",
            "endpoint:https://hooks.example/b",
        ),
    ]
}

// === jobs ===

async fn ping_answers_and_unknown_ids_are_absent(store: Arc<dyn JobStore>) {
    store.ping().await.unwrap();
    let unknown = JobId::generate();
    assert!(store.job(&unknown).await.unwrap().is_none());
    assert!(store.batch_work(&unknown, 0).await.unwrap().is_none());
    assert!(store.job_result(&unknown).await.unwrap().is_none());
    assert!(store.events_after(&unknown, 0).await.unwrap().is_empty());
    assert!(store.batch_results(&unknown).await.unwrap().is_empty());
    assert!(!from_pending(&*store, &unknown, 0, BatchState::Running).await);
    assert!(
        store
            .split_batch(&unknown, 0, new_job(2).batches)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        !finish(
            &*store,
            &unknown,
            vec![delivery("msg_x", "https://h/x", "job")]
        )
        .await
    );
    assert_eq!(store.count_active(None).await.unwrap(), 0);
    assert_eq!(store.count_pending_deliveries().await.unwrap(), 0);
    assert!(store.delivery_counts().await.unwrap().is_empty());
    assert_eq!(store.next_delivery_at().await.unwrap(), None);
    assert!(store.unfinished_batches().await.unwrap().is_empty());
    assert!(store.jobs_to_finalize().await.unwrap().is_empty());
    assert_eq!(store.reap(now_millis() + 1_000).await.unwrap(), 0);
}

async fn a_created_job_reads_back_with_its_batches_in_dataset_order(store: Arc<dyn JobStore>) {
    let acme = tenant("acme");
    // Bytes that are not UTF-8 come back unchanged.
    let payload = Bytes::from_static(b"\x00\xff{\"input\": \"\xc3\x28\"}");
    let job = NewJob {
        tenant: acme.clone(),
        kind: JobKind::Evaluation,
        total_items: 6,
        members: Bytes::from_static(b"\"a\": 1, \"b\": [2]"),
        webhook: Some("{\"url\": \"https://hooks.example/j\"}".to_owned()),
        created_at: 1_700_000_000_000,
        batches: vec![
            NewBatch {
                idx: 0,
                item_start: 0,
                item_end: 2,
                payload: payload.clone(),
                upstream_job_id: None,
            },
            NewBatch {
                idx: 1,
                item_start: 2,
                item_end: 5,
                payload: Bytes::from_static(b"{}"),
                // Already running upstream: starts `running`, never submitted.
                upstream_job_id: Some("up_running".to_owned()),
            },
            NewBatch {
                idx: 2,
                item_start: 5,
                item_end: 6,
                payload: Bytes::from_static(b"{}"),
                upstream_job_id: None,
            },
        ],
        ..new_job(0)
    };
    let id = create(&*store, job).await;

    let record = job_record(&*store, &id).await;
    assert_eq!(record.id, id);
    assert_eq!(record.tenant, acme);
    assert_eq!(record.kind, JobKind::Evaluation);
    assert_eq!(record.state, JobState::Queued);
    assert_eq!(record.total_items, 6);
    assert_eq!(record.error, None);
    assert_eq!(
        record.webhook.as_deref(),
        Some("{\"url\": \"https://hooks.example/j\"}")
    );
    assert_eq!(record.created_at, 1_700_000_000_000);
    assert_eq!((record.started_at, record.finished_at), (None, None));
    let batches: Vec<_> = record
        .batches
        .iter()
        .map(|b| {
            (
                b.idx,
                b.item_start,
                b.item_end,
                b.state,
                b.upstream_job_id.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        batches,
        [
            (0, 0, 2, BatchState::Pending, None),
            (1, 2, 5, BatchState::Running, Some("up_running")),
            (2, 5, 6, BatchState::Pending, None),
        ]
    );
    assert!(
        record
            .batches
            .iter()
            .all(|b| b.attempts == 0 && b.submits == 0 && b.error.is_none())
    );

    let work = store.batch_work(&id, 0).await.unwrap().unwrap();
    assert_eq!(work.tenant, acme);
    assert_eq!(work.kind, JobKind::Evaluation);
    assert_eq!((work.item_start, work.item_end), (0, 2));
    assert_eq!(work.state, BatchState::Pending);
    assert_eq!(work.members, Bytes::from_static(b"\"a\": 1, \"b\": [2]"));
    assert_eq!(work.payload, payload);
    assert_eq!((work.attempts, work.submits), (0, 0));
    assert_eq!(work.created_at, 1_700_000_000_000);
    assert!(store.batch_work(&id, 3).await.unwrap().is_none());
    assert!(
        store.job_result(&id).await.unwrap().is_none(),
        "no result yet"
    );
}

async fn idempotency_returns_the_existing_job_or_a_conflict_within_the_window(
    store: Arc<dyn JobStore>,
) {
    let t = default_tenant();
    let created_at = now_millis();
    let window = created_at - 60_000;
    let first = keyed_job(&t, "key-1", "hash-a", created_at);
    let first_id = first.id.clone();
    assert_eq!(store.create_job(first, window).await.unwrap(), Created::New);

    let same = keyed_job(&t, "key-1", "hash-a", created_at + 1);
    let same_id = same.id.clone();
    assert_eq!(
        store.create_job(same, window).await.unwrap(),
        Created::Existing(first_id.clone())
    );
    let other_body = keyed_job(&t, "key-1", "hash-b", created_at + 1);
    let other_id = other_body.id.clone();
    assert_eq!(
        store.create_job(other_body, window).await.unwrap(),
        Created::Conflict(first_id.clone())
    );
    assert!(store.job(&same_id).await.unwrap().is_none(), "not stored");
    assert!(store.job(&other_id).await.unwrap().is_none(), "not stored");
    assert_eq!(store.count_active(None).await.unwrap(), 1);

    // Past the window, the key is free again, even for another body.
    let later = keyed_job(&t, "key-1", "hash-b", created_at + 10);
    let later_id = later.id.clone();
    assert_eq!(
        store.create_job(later, created_at + 1).await.unwrap(),
        Created::New
    );
    // Within a window holding both, the newest job of the key answers.
    let again = keyed_job(&t, "key-1", "hash-b", created_at + 20);
    assert_eq!(
        store.create_job(again, window).await.unwrap(),
        Created::Existing(later_id.clone())
    );
    assert!(store.job(&first_id).await.unwrap().is_some(), "kept");
    assert!(store.job(&later_id).await.unwrap().is_some());

    // Without a key, nothing is deduplicated.
    create(&*store, new_job(1)).await;
    create(&*store, new_job(1)).await;
    assert_eq!(store.count_active(None).await.unwrap(), 4);
}

async fn idempotency_keys_are_per_tenant(store: Arc<dyn JobStore>) {
    let (a, b) = (tenant("tenant-a"), tenant("tenant-b"));
    let now = now_millis();
    let shared = |t: &TenantName, hash: &str| keyed_job(t, "shared", hash, now);
    let a_id = create(&*store, shared(&a, "hash-a")).await;
    let b_id = create(&*store, shared(&b, "hash-b")).await;
    assert_ne!(a_id, b_id);
    assert_eq!(
        store.create_job(shared(&a, "hash-a"), 0).await.unwrap(),
        Created::Existing(a_id.clone())
    );
    assert_eq!(
        store.create_job(shared(&b, "hash-a"), 0).await.unwrap(),
        Created::Conflict(b_id.clone())
    );
    assert_eq!(store.count_active(Some(&a)).await.unwrap(), 1);
    assert_eq!(store.count_active(Some(&b)).await.unwrap(), 1);
    let listed = store
        .list_jobs(ListQuery {
            tenant: &b,
            state: None,
            limit: 10,
            after: None,
        })
        .await
        .unwrap();
    assert_eq!(
        listed.iter().map(|j| &j.id).collect::<Vec<_>>(),
        [&b_id],
        "a tenant lists its own jobs only"
    );
}

async fn concurrent_creates_with_one_key_make_one_job(store: Arc<dyn JobStore>) {
    const CREATES: usize = 8;
    let t = default_tenant();
    let now = now_millis();
    let race = |hash: &'static str| {
        let barrier = Arc::new(Barrier::new(CREATES));
        let mut tasks = JoinSet::new();
        for _ in 0..CREATES {
            let (store, barrier) = (Arc::clone(&store), Arc::clone(&barrier));
            let job = keyed_job(&t, "raced", hash, now);
            tasks.spawn(async move {
                let id = job.id.clone();
                // All start at once.
                barrier.wait().await;
                (id, store.create_job(job, now - 60_000).await.unwrap())
            });
        }
        tasks
    };

    // Warm up: with a pool, every racer then finds a connection ready and the creates overlap.
    let mut pings = JoinSet::new();
    for _ in 0..CREATES {
        let store = Arc::clone(&store);
        pings.spawn(async move { store.ping().await.unwrap() });
    }
    pings.join_all().await;

    let outcomes = race("same-body").join_all().await;
    let winners: Vec<&JobId> = outcomes
        .iter()
        .filter(|(_, created)| *created == Created::New)
        .map(|(id, _)| id)
        .collect();
    assert_eq!(winners.len(), 1, "{outcomes:?}");
    let winner = winners[0].clone();
    for (id, created) in &outcomes {
        if *id != winner {
            assert_eq!(*created, Created::Existing(winner.clone()), "{outcomes:?}");
            assert!(store.job(id).await.unwrap().is_none());
        }
    }
    assert_eq!(store.count_active(None).await.unwrap(), 1);

    // Racing with another body: every one of them is a conflict with the one job.
    for (_, created) in race("other-body").join_all().await {
        assert_eq!(created, Created::Conflict(winner.clone()));
    }
    assert_eq!(store.count_active(None).await.unwrap(), 1);
}

async fn list_jobs_pages_by_id_within_a_tenant_and_filters_by_state(store: Arc<dyn JobStore>) {
    let t = tenant("lister");
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(create(&*store, job_of(&t, 2)).await);
    }
    create(&*store, new_job(1)).await; // Another tenant's.
    ids.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    let page = |after: Option<String>, state: Option<JobState>, limit: usize| {
        let (store, t) = (Arc::clone(&store), t.clone());
        async move {
            store
                .list_jobs(ListQuery {
                    tenant: &t,
                    state,
                    limit,
                    after: after.as_deref(),
                })
                .await
                .unwrap()
        }
    };
    let first = page(None, None, 2).await;
    assert_eq!(
        first.iter().map(|j| j.id.clone()).collect::<Vec<_>>(),
        ids[..2]
    );
    assert!(first.iter().all(|j| j.batches.len() == 2), "with batches");
    let rest = page(Some(ids[1].as_str().to_owned()), None, 2).await;
    assert_eq!(
        rest.iter().map(|j| j.id.clone()).collect::<Vec<_>>(),
        ids[2..]
    );
    assert!(
        page(Some(ids[2].as_str().to_owned()), None, 2)
            .await
            .is_empty()
    );

    assert!(finish(&*store, &ids[1], Vec::new()).await);
    let done = page(None, Some(JobState::Completed), 10).await;
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].id, ids[1]);
    assert_eq!(page(None, Some(JobState::Queued), 10).await.len(), 2);
}

async fn count_active_counts_unfinished_jobs_of_all_or_one_tenant(store: Arc<dyn JobStore>) {
    let (a, b) = (tenant("count-a"), tenant("count-b"));
    let a1 = create(&*store, job_of(&a, 1)).await;
    create(&*store, job_of(&a, 1)).await;
    create(&*store, job_of(&b, 1)).await;
    assert_eq!(store.count_active(None).await.unwrap(), 3);
    assert_eq!(store.count_active(Some(&a)).await.unwrap(), 2);
    assert_eq!(store.count_active(Some(&b)).await.unwrap(), 1);
    // Running still counts; finished does not.
    assert!(from_pending(&*store, &a1, 0, BatchState::Running).await);
    assert_eq!(store.count_active(Some(&a)).await.unwrap(), 2);
    assert!(finish(&*store, &a1, Vec::new()).await);
    assert_eq!(store.count_active(Some(&a)).await.unwrap(), 1);
    assert_eq!(store.count_active(None).await.unwrap(), 2);
    assert_eq!(
        store.count_active(Some(&tenant("nobody"))).await.unwrap(),
        0
    );
}

// === batches ===

async fn batch_updates_are_conditional_on_the_current_state(store: Arc<dyn JobStore>) {
    let id = create(&*store, new_job(2)).await;
    let submitted = BatchUpdate {
        upstream_job_id: Some("up_1".to_owned()),
        attempts: Some(1),
        count_submit: true,
        ..update(&id, 0, &[BatchState::Pending], BatchState::Running)
    };
    assert!(apply(&*store, submitted.clone()).await);
    // A late writer that expected `pending` no longer applies.
    let stale = BatchUpdate {
        upstream_job_id: Some("up_stale".to_owned()),
        error: Some("stale".to_owned()),
        ..update(&id, 0, &[BatchState::Pending], BatchState::Failed)
    };
    assert!(!apply(&*store, stale).await);
    // Nor a batch the job does not have.
    assert!(!from_pending(&*store, &id, 9, BatchState::Running).await);
    let record = job_record(&*store, &id).await;
    assert_eq!(
        record.state,
        JobState::Running,
        "first batch activity starts the job"
    );
    let started_at = record.started_at.expect("started");
    let batch = &record.batches[0];
    assert_eq!(batch.state, BatchState::Running);
    assert_eq!(batch.upstream_job_id.as_deref(), Some("up_1"));
    assert_eq!((batch.attempts, batch.submits), (1, 1));
    assert_eq!(batch.error, None);
    assert_eq!(store.events_after(&id, 0).await.unwrap().len(), 1);
    assert_eq!(store.unfinished_batches().await.unwrap().len(), 2);

    // Progress, then completion with a result; unset fields keep their values.
    let progressed = BatchUpdate {
        progress: Some((0.5, 1)),
        event: None,
        ..update(&id, 0, &[BatchState::Running], BatchState::Running)
    };
    assert!(apply(&*store, progressed).await);
    let from = [BatchState::Submitting, BatchState::Running];
    let completed = with_result(update(&id, 0, &from, BatchState::Completed), b"[1]");
    assert!(apply(&*store, completed).await);
    let record = job_record(&*store, &id).await;
    let batch = &record.batches[0];
    assert_eq!(batch.state, BatchState::Completed);
    assert_eq!(batch.upstream_job_id.as_deref(), Some("up_1"), "kept");
    assert_eq!((batch.attempts, batch.submits), (1, 1), "kept");
    assert!((batch.progress - 0.5).abs() < f64::EPSILON);
    assert_eq!(batch.current_item, 1);
    assert_eq!(record.started_at, Some(started_at), "started once");
    assert_eq!(record.state, JobState::Running);
    assert_eq!(
        store.events_after(&id, 0).await.unwrap().len(),
        2,
        "an event only when given"
    );
    let unfinished = store.unfinished_batches().await.unwrap();
    assert_eq!(unfinished, [(id.clone(), 1, BatchState::Pending)]);

    // A failure records its error.
    let failed = BatchUpdate {
        error: Some("upstream said no".to_owned()),
        ..update(&id, 1, &[BatchState::Pending], BatchState::Failed)
    };
    assert!(apply(&*store, failed).await);
    let record = job_record(&*store, &id).await;
    assert_eq!(record.batches[1].error.as_deref(), Some("upstream said no"));
}

async fn a_batch_update_after_the_job_ended_is_refused(store: Arc<dyn JobStore>) {
    let id = create(&*store, new_job(1)).await;
    assert!(from_pending(&*store, &id, 0, BatchState::Running).await);
    assert!(end(&*store, &id, JobState::Cancelled, None, Vec::new()).await);
    // A poll that finishes after the cancel: its batch state matches, its job's does not.
    let from = [BatchState::Running, BatchState::Cancelled];
    let late = with_result(update(&id, 0, &from, BatchState::Completed), b"[1]");
    assert!(!apply(&*store, late).await);
    let record = job_record(&*store, &id).await;
    assert_eq!(record.state, JobState::Cancelled);
    assert_eq!(record.batches[0].state, BatchState::Cancelled);
    assert!(store.batch_results(&id).await.unwrap().is_empty());
    let names: Vec<_> = store
        .events_after(&id, 0)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(
        names,
        ["batch", "cancelled"],
        "no event from the late writer"
    );
}

async fn split_batch_replaces_a_pending_batch_by_new_indexes(store: Arc<dyn JobStore>) {
    let job = NewJob {
        total_items: 8,
        batches: vec![
            NewBatch {
                idx: 0,
                item_start: 0,
                item_end: 4,
                payload: Bytes::from_static(b"0123"),
                upstream_job_id: None,
            },
            NewBatch {
                idx: 1,
                item_start: 4,
                item_end: 8,
                payload: Bytes::from_static(b"4567"),
                upstream_job_id: None,
            },
        ],
        ..new_job(0)
    };
    let id = create(&*store, job).await;
    let half = |idx: u32, start: usize, payload: &'static [u8]| NewBatch {
        idx,
        item_start: start,
        item_end: start + 2,
        payload: Bytes::from_static(payload),
        upstream_job_id: None,
    };
    // The indexes given are replaced by new ones, after the job's last.
    let parts = vec![half(0, 0, b"01"), half(0, 2, b"23")];
    assert_eq!(
        store.split_batch(&id, 0, parts.clone()).await.unwrap(),
        [2, 3]
    );

    let record = job_record(&*store, &id).await;
    let batches: Vec<_> = record
        .batches
        .iter()
        .map(|b| (b.idx, b.item_start, b.item_end, b.state))
        .collect();
    assert_eq!(
        batches,
        [
            (2, 0, 2, BatchState::Pending),
            (3, 2, 4, BatchState::Pending),
            (1, 4, 8, BatchState::Pending),
        ],
        "the split batch is gone, the parts in dataset order"
    );
    let part = store.batch_work(&id, 3).await.unwrap().unwrap();
    assert_eq!(part.payload, Bytes::from_static(b"23"));
    assert_eq!(
        store.batch_work(&id, 0).await.unwrap().unwrap().state,
        BatchState::Split
    );
    let unfinished = store.unfinished_batches().await.unwrap();
    assert_eq!(
        unfinished
            .iter()
            .map(|(_, idx, _)| *idx)
            .collect::<Vec<_>>(),
        [2, 3, 1]
    );

    // Split already: nothing to do; moved on (running): nothing either.
    assert!(
        store
            .split_batch(&id, 0, parts.clone())
            .await
            .unwrap()
            .is_empty()
    );
    assert!(from_pending(&*store, &id, 1, BatchState::Running).await);
    assert!(store.split_batch(&id, 1, parts).await.unwrap().is_empty());
    // A submitting batch may still be split.
    assert!(from_pending(&*store, &id, 2, BatchState::Submitting).await);
    let quarters = vec![half(0, 0, b"0"), half(0, 1, b"1")];
    assert_eq!(store.split_batch(&id, 2, quarters).await.unwrap(), [4, 5]);
}

async fn batch_results_hold_every_batch_with_a_result_in_dataset_order(store: Arc<dyn JobStore>) {
    let ranges = [(0, 2), (2, 5), (5, 6)];
    let job = NewJob {
        kind: JobKind::ArizeTaskRun,
        total_items: 6,
        batches: ranges
            .iter()
            .enumerate()
            .map(|(i, &(start, end))| NewBatch {
                idx: u32::try_from(i).unwrap(),
                item_start: start,
                item_end: end,
                payload: Bytes::from_static(b"{}"),
                upstream_job_id: None,
            })
            .collect(),
        ..new_job(0)
    };
    let id = create(&*store, job).await;
    let ended = |idx, to, result| with_result(update(&id, idx, &[BatchState::Pending], to), result);
    // Written out of order; a failed run that kept its final answer counts too.
    assert!(apply(&*store, ended(2, BatchState::Completed, b"[\"c\"]")).await);
    let failed = ended(0, BatchState::Failed, b"{\"status\": \"FAILED\"}");
    assert!(apply(&*store, failed).await);
    assert!(from_pending(&*store, &id, 1, BatchState::Failed).await);
    assert_eq!(
        store.batch_results(&id).await.unwrap(),
        [
            (0, 2, Bytes::from_static(b"{\"status\": \"FAILED\"}")),
            (5, 1, Bytes::from_static(b"[\"c\"]")),
        ]
    );
}

// === finishing, recovery, events ===

async fn finish_job_ends_a_job_once_with_its_event_and_deliveries(store: Arc<dyn JobStore>) {
    let id = create(&*store, new_job(2)).await;
    let done = with_result(
        update(&id, 0, &[BatchState::Pending], BatchState::Completed),
        b"[0]",
    );
    assert!(apply(&*store, done).await);
    let before = now_millis();
    assert!(
        store
            .finish_job(
                &id,
                JobState::CompletedWithErrors,
                Some("1 batch failed".to_owned()),
                Some(Bytes::from_static(b"{\"merged\": [0]}")),
                "{\"status\": \"completed\"}".to_owned(),
                deliveries_a_and_b("https://hooks.example/a"),
            )
            .await
            .unwrap()
    );
    let record = job_record(&*store, &id).await;
    assert_eq!(record.state, JobState::CompletedWithErrors);
    assert_eq!(record.error.as_deref(), Some("1 batch failed"));
    let finished_at = record.finished_at.expect("finished");
    assert!(finished_at >= before);
    assert!(
        record.started_at.is_some(),
        "started when finished at the latest"
    );
    let states: Vec<_> = record.batches.iter().map(|b| b.state).collect();
    assert_eq!(
        states,
        [BatchState::Completed, BatchState::Cancelled],
        "what had not finished is cancelled with its job"
    );
    assert_eq!(
        store.job_result(&id).await.unwrap(),
        Some(Bytes::from_static(b"{\"merged\": [0]}"))
    );
    let events = store.events_after(&id, 0).await.unwrap();
    let last = events.last().unwrap();
    assert_eq!(last.name, "completed");
    assert_eq!(last.data, "{\"status\": \"completed\"}");
    assert_eq!(store.count_pending_deliveries().await.unwrap(), 2);
    let due = store
        .due_deliveries(now_millis(), 10, Vec::new())
        .await
        .unwrap();
    assert_eq!(due.len(), 2, "due at once");
    let a = due.iter().find(|d| d.id == "msg_a").unwrap();
    assert_eq!(a.job_id, id);
    assert_eq!(a.event, "job.completed");
    assert_eq!(a.url, "https://hooks.example/a");
    assert_eq!(a.target, "job");
    assert_eq!(a.payload, Bytes::from_static(b"{\"delivery\": \"msg_a\"}"));
    assert_eq!(a.attempts, 0);
    assert!(a.created_at >= before);

    // Once only: no second end, no second event, no second set of deliveries.
    let late = vec![delivery("msg_c", "https://hooks.example/c", "job")];
    assert!(!end(&*store, &id, JobState::Failed, Some("late"), late).await);
    let record = job_record(&*store, &id).await;
    assert_eq!(record.state, JobState::CompletedWithErrors);
    assert_eq!(record.error.as_deref(), Some("1 batch failed"));
    assert_eq!(record.finished_at, Some(finished_at));
    assert_eq!(
        store.events_after(&id, 0).await.unwrap().len(),
        events.len()
    );
    assert_eq!(store.count_pending_deliveries().await.unwrap(), 2);
    assert_eq!(
        store.job_result(&id).await.unwrap(),
        Some(Bytes::from_static(b"{\"merged\": [0]}"))
    );
}

async fn a_failed_job_ends_with_a_failed_event(store: Arc<dyn JobStore>) {
    let failing = create(&*store, new_job(1)).await;
    let boom = Some("boom");
    assert!(end(&*store, &failing, JobState::Failed, boom, Vec::new()).await);
    let record = job_record(&*store, &failing).await;
    assert_eq!(record.state, JobState::Failed);
    assert_eq!(record.error.as_deref(), Some("boom"));
    assert_eq!(record.batches[0].state, BatchState::Cancelled);
    let events = store.events_after(&failing, 0).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].name, "failed");
    assert_eq!(store.job_result(&failing).await.unwrap(), None);
    assert_eq!(store.count_pending_deliveries().await.unwrap(), 0);
}

async fn recovery_finds_unfinished_batches_and_jobs_to_finalize(store: Arc<dyn JobStore>) {
    // In flight: one batch running, one completed.
    let busy = create(&*store, new_job(2)).await;
    assert!(from_pending(&*store, &busy, 0, BatchState::Completed).await);
    assert!(from_pending(&*store, &busy, 1, BatchState::Submitting).await);
    // Every batch ended, the job not (a crash between the two commits).
    let ended = create(&*store, new_job(2)).await;
    for idx in 0..2 {
        assert!(from_pending(&*store, &ended, idx, BatchState::Failed).await);
    }
    // Finished: neither.
    let finished = create(&*store, new_job(1)).await;
    assert!(finish(&*store, &finished, Vec::new()).await);

    assert_eq!(
        store.unfinished_batches().await.unwrap(),
        [(busy.clone(), 1, BatchState::Submitting)]
    );
    assert_eq!(
        store.jobs_to_finalize().await.unwrap(),
        std::slice::from_ref(&ended)
    );
    assert!(finish(&*store, &ended, Vec::new()).await);
    assert!(store.jobs_to_finalize().await.unwrap().is_empty());
}

async fn events_are_numbered_in_order_and_read_after_a_sequence_number(store: Arc<dyn JobStore>) {
    let a = create(&*store, new_job(3)).await;
    let b = create(&*store, new_job(1)).await;
    for idx in 0..3 {
        assert!(from_pending(&*store, &a, idx, BatchState::Running).await);
        if idx == 0 {
            assert!(from_pending(&*store, &b, 0, BatchState::Running).await);
        }
    }
    assert!(finish(&*store, &a, Vec::new()).await);

    let events = store.events_after(&a, 0).await.unwrap();
    let names: Vec<_> = events.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["batch", "batch", "batch", "completed"]);
    let data: Vec<_> = events.iter().map(|e| e.data.as_str()).collect();
    assert_eq!(
        data[..3],
        ["{\"batch\": 0}", "{\"batch\": 1}", "{\"batch\": 2}"],
        "in the order they were written"
    );
    assert!(events[0].seq > 0);
    assert!(events.windows(2).all(|w| w[0].seq < w[1].seq), "{events:?}");

    let after = store.events_after(&a, events[1].seq).await.unwrap();
    assert_eq!(
        after.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [events[2].seq, events[3].seq]
    );
    assert!(
        store
            .events_after(&a, events[3].seq)
            .await
            .unwrap()
            .is_empty()
    );
    let of_b = store.events_after(&b, 0).await.unwrap();
    assert_eq!(of_b.len(), 1, "each job has its own events");
    assert_eq!(of_b[0].data, "{\"batch\": 0}");
}

// === the outbox ===

async fn due_deliveries_come_oldest_first_skip_busy_ones_and_respect_the_limit(
    store: Arc<dyn JobStore>,
) {
    let id = job_with_deliveries(&*store, &default_tenant(), &["msg_1", "msg_2", "msg_3"]).await;
    let base = now_millis() + 60_000;
    // Reschedule each (an attempt that failed): msg_2 first, then msg_3, then msg_1.
    for (delivery, next_at) in [
        ("msg_1", base + 300),
        ("msg_2", base + 100),
        ("msg_3", base + 200),
    ] {
        assert!(record(&*store, retry_at(delivery, now_millis(), next_at)).await);
    }

    assert!(
        due_ids(&*store, base, 10, &[]).await.is_empty(),
        "none due yet"
    );
    assert_eq!(store.next_delivery_at().await.unwrap(), Some(base + 100));
    assert_eq!(due_ids(&*store, base + 150, 10, &[]).await, ["msg_2"]);
    assert_eq!(
        due_ids(&*store, base + 1_000, 10, &[]).await,
        ["msg_2", "msg_3", "msg_1"]
    );
    assert_eq!(
        due_ids(&*store, base + 1_000, 2, &[]).await,
        ["msg_2", "msg_3"]
    );
    assert_eq!(
        due_ids(&*store, base + 1_000, 2, &["msg_2"]).await,
        ["msg_3", "msg_1"],
        "busy ones are skipped, not counted"
    );
    assert!(
        due_ids(
            &*store,
            base + 1_000,
            2,
            &["msg_1", "msg_2", "msg_3", "msg_other"]
        )
        .await
        .is_empty()
    );
    let due = store
        .due_deliveries(base + 1_000, 1, Vec::new())
        .await
        .unwrap();
    assert_eq!((due[0].attempts, &due[0].job_id), (1, &id));

    // Delivered ones are never due again.
    assert!(tried(&*store, "msg_2", base + 100, 200, DeliveryState::Delivered).await);
    assert_eq!(store.next_delivery_at().await.unwrap(), Some(base + 200));
    assert_eq!(
        due_ids(&*store, base + 1_000, 10, &[]).await,
        ["msg_3", "msg_1"]
    );
    for delivery in ["msg_1", "msg_3"] {
        let dead = attempt(delivery, base + 300, 500, DeliveryState::Dead);
        assert!(record(&*store, dead).await);
    }
    assert_eq!(store.next_delivery_at().await.unwrap(), None);
    assert_eq!(store.count_pending_deliveries().await.unwrap(), 0);
}

async fn attempts_are_recorded_only_while_pending(store: Arc<dyn JobStore>) {
    let t = default_tenant();
    let id = job_with_deliveries(&*store, &t, &["msg_ok", "msg_gone"]).await;
    let at = now_millis();
    assert!(!tried(&*store, "msg_unknown", at, 200, DeliveryState::Delivered).await);
    assert!(record(&*store, retry_at("msg_ok", at, at + 5_000)).await);
    let delivered = Attempt {
        status: None,
        error: Some("connection reset".to_owned()),
        ..attempt("msg_ok", at + 5_000, 200, DeliveryState::Pending)
    };
    assert!(record(&*store, delivered).await);
    assert!(tried(&*store, "msg_ok", at + 7_000, 204, DeliveryState::Delivered).await);
    // Delivered: later attempts (a second dispatcher, a late result) are refused.
    assert!(!tried(&*store, "msg_ok", at + 8_000, 500, DeliveryState::Dead).await);
    assert!(tried(&*store, "msg_gone", at, 410, DeliveryState::Disabled).await);
    assert!(!tried(&*store, "msg_gone", at + 1, 200, DeliveryState::Delivered).await);

    let listed = deliveries_of(&*store, &t, &id).await;
    let ok = listed.iter().find(|d| d.id == "msg_ok").unwrap();
    assert_eq!(ok.state, DeliveryState::Delivered);
    assert_eq!(ok.delivered_at, Some(at + 7_000));
    assert_eq!(ok.next_attempt_at, None);
    assert_eq!(
        ok.attempts,
        [
            AttemptRecord {
                n: 1,
                at,
                status: Some(503),
                latency_ms: 7,
                error: Some("HTTP 503".to_owned()),
            },
            AttemptRecord {
                n: 2,
                at: at + 5_000,
                status: None,
                latency_ms: 7,
                error: Some("connection reset".to_owned()),
            },
            AttemptRecord {
                n: 3,
                at: at + 7_000,
                status: Some(204),
                latency_ms: 7,
                error: None,
            },
        ]
    );
    let gone = listed.iter().find(|d| d.id == "msg_gone").unwrap();
    assert_eq!(gone.state, DeliveryState::Disabled);
    assert_eq!(gone.delivered_at, None);
    assert_eq!(gone.attempts.len(), 1);
    assert_eq!(
        store.delivery_counts().await.unwrap(),
        [(DeliveryState::Delivered, 1), (DeliveryState::Disabled, 1)]
    );
}

async fn list_deliveries_filters_by_job_and_state_oldest_first(store: Arc<dyn JobStore>) {
    let t = default_tenant();
    let first = job_with_deliveries(&*store, &t, &["msg_b", "msg_a"]).await;
    let second = job_with_deliveries(&*store, &t, &["msg_c"]).await;
    let at = now_millis();
    assert!(tried(&*store, "msg_b", at, 500, DeliveryState::Dead).await);
    let all = all_deliveries(&*store, &t).await;
    let created: Vec<_> = all.iter().map(|d| d.created_at).collect();
    assert!(created.windows(2).all(|w| w[0] <= w[1]), "oldest first");
    let mut sorted = ids_of(all.clone());
    sorted.sort();
    assert_eq!(sorted, ["msg_a", "msg_b", "msg_c"]);
    assert_eq!(all.last().unwrap().id, "msg_c", "the later job's last");
    assert_eq!(
        store
            .list_deliveries(&t, None, None, 2)
            .await
            .unwrap()
            .len(),
        2
    );
    let of_first = ids_of(deliveries_of(&*store, &t, &first).await);
    assert_eq!(of_first.len(), 2);
    assert!(!of_first.contains(&"msg_c".to_owned()));
    assert_eq!(ids_of(deliveries_of(&*store, &t, &second).await), ["msg_c"]);
    assert_eq!(
        ids_of(
            store
                .list_deliveries(&t, None, Some(DeliveryState::Dead), 10)
                .await
                .unwrap()
        ),
        ["msg_b"]
    );
    assert_eq!(
        ids_of(
            store
                .list_deliveries(&t, Some(first), Some(DeliveryState::Pending), 10)
                .await
                .unwrap()
        ),
        ["msg_a"]
    );
    // The attempts listed with a page are those of its deliveries.
    let page = store
        .list_deliveries(&t, None, Some(DeliveryState::Dead), 1)
        .await
        .unwrap();
    assert_eq!(page[0].attempts.len(), 1);
}

/// The listing of `replay_outcomes…`'s job once `msg_a` went dead at `at`.
async fn assert_listing_after_a_dead_attempt(store: &dyn JobStore, job: &JobId, at: Millis) {
    let t = default_tenant();
    let listed = deliveries_of(store, &t, job).await;
    assert_eq!(listed.len(), 2);
    let dead = listed.iter().find(|d| d.id == "msg_a").unwrap();
    assert_eq!(&dead.job_id, job);
    assert_eq!(dead.event, "job.completed");
    assert_eq!(dead.state, DeliveryState::Dead);
    assert_eq!(dead.url, "https://hooks.example/a?token=t0k", "as stored");
    assert_eq!(dead.next_attempt_at, None, "not pending: no next attempt");
    assert_eq!(dead.delivered_at, None);
    assert_eq!(
        dead.attempts,
        [AttemptRecord {
            n: 1,
            at,
            status: Some(500),
            latency_ms: 7,
            error: Some("HTTP 500".to_owned()),
        }]
    );
    let pending = listed.iter().find(|d| d.id == "msg_b").unwrap();
    assert!(pending.attempts.is_empty(), "attempts stay with theirs");
    assert!(pending.next_attempt_at.is_some(), "pending: next attempt");
}

async fn replay_outcomes_decide_not_found_conflict_and_replayed(store: Arc<dyn JobStore>) {
    let t = default_tenant();
    let job = create(&*store, new_job(1)).await;
    let deliveries = deliveries_a_and_b("https://hooks.example/a?token=t0k");
    assert!(finish(&*store, &job, deliveries).await);

    assert_eq!(
        store.replay_delivery(&t, "msg_a").await.unwrap(),
        ReplayOutcome::AlreadyPending,
        "a new delivery is pending"
    );
    assert_eq!(
        store.replay_delivery(&t, "msg_unknown").await.unwrap(),
        ReplayOutcome::NotFound
    );
    assert_eq!(store.replay_dead(&t, &job).await.unwrap(), Some(0));
    assert_eq!(
        store.replay_dead(&t, &JobId::generate()).await.unwrap(),
        None
    );

    let at = now_millis();
    assert!(tried(&*store, "msg_a", at, 500, DeliveryState::Dead).await);
    assert_listing_after_a_dead_attempt(&*store, &job, at).await;

    let before_replay = now_millis();
    assert_eq!(store.replay_dead(&t, &job).await.unwrap(), Some(1));
    assert_eq!(
        store.replay_delivery(&t, "msg_a").await.unwrap(),
        ReplayOutcome::AlreadyPending
    );
    // Pending again, due now, its count reset.
    let due = store
        .due_deliveries(now_millis(), 10, Vec::new())
        .await
        .unwrap();
    let replayed = due.iter().find(|d| d.id == "msg_a").expect("due now");
    assert_eq!(replayed.attempts, 0);
    let next = store.next_delivery_at().await.unwrap().unwrap();
    assert!(next <= now_millis());
    let listed = deliveries_of(&*store, &t, &job).await;
    let again = listed.iter().find(|d| d.id == "msg_a").unwrap();
    assert!(again.next_attempt_at.unwrap() >= before_replay);

    let delivered_at = now_millis();
    for id in ["msg_a", "msg_b"] {
        let delivered = attempt(id, delivered_at, 200, DeliveryState::Delivered);
        assert!(record(&*store, delivered).await);
    }
    let listed = deliveries_of(&*store, &t, &job).await;
    let a = listed.iter().find(|d| d.id == "msg_a").unwrap();
    assert_eq!(a.state, DeliveryState::Delivered);
    assert_eq!(a.delivered_at, Some(delivered_at));
    assert_eq!(a.attempts.len(), 1, "the replay restarted the count");
    assert_eq!(a.attempts[0].status, Some(200));
    assert_eq!(
        store.replay_delivery(&t, "msg_a").await.unwrap(),
        ReplayOutcome::Replayed,
        "a delivered one may be sent again"
    );
    assert_eq!(
        store.delivery_counts().await.unwrap(),
        [(DeliveryState::Delivered, 1), (DeliveryState::Pending, 1)]
    );
}

async fn deliveries_and_their_replays_stay_with_their_tenant(store: Arc<dyn JobStore>) {
    let (a, b) = (tenant("owner"), tenant("intruder"));
    let a_job = job_with_deliveries(&*store, &a, &["msg_of_a"]).await;
    let b_job = job_with_deliveries(&*store, &b, &["msg_of_b"]).await;
    assert!(tried(&*store, "msg_of_a", now_millis(), 500, DeliveryState::Dead).await);
    assert_eq!(ids_of(all_deliveries(&*store, &a).await), ["msg_of_a"]);
    assert_eq!(ids_of(all_deliveries(&*store, &b).await), ["msg_of_b"]);
    assert!(deliveries_of(&*store, &b, &a_job).await.is_empty());
    assert_eq!(
        store.replay_delivery(&b, "msg_of_a").await.unwrap(),
        ReplayOutcome::NotFound
    );
    assert_eq!(store.replay_dead(&b, &a_job).await.unwrap(), None);
    assert_eq!(
        all_deliveries(&*store, &a).await[0].state,
        DeliveryState::Dead,
        "untouched by the other tenant"
    );
    assert_eq!(store.replay_dead(&a, &b_job).await.unwrap(), None);
    assert_eq!(store.replay_dead(&a, &a_job).await.unwrap(), Some(1));
    assert_eq!(
        store.replay_delivery(&a, "msg_of_a").await.unwrap(),
        ReplayOutcome::AlreadyPending
    );
}

// === housekeeping ===

async fn finished_jobs_are_reaped_after_retention_and_unfinished_ones_never(
    store: Arc<dyn JobStore>,
) {
    let done = create(&*store, new_job(2)).await;
    let running = create(&*store, new_job(1)).await;
    assert!(from_pending(&*store, &done, 0, BatchState::Running).await);
    let reaped = vec![delivery("msg_reaped", "https://hooks.example/r", "job")];
    assert!(end(&*store, &done, JobState::Cancelled, None, reaped).await);
    let record = job_record(&*store, &done).await;
    assert!(
        record
            .batches
            .iter()
            .all(|b| b.state == BatchState::Cancelled)
    );
    // Not yet past retention: kept.
    assert_eq!(store.reap(record.finished_at.unwrap()).await.unwrap(), 0);
    assert_eq!(store.reap(now_millis() + 1_000).await.unwrap(), 1);
    assert!(store.job(&done).await.unwrap().is_none());
    assert!(
        store.batch_work(&done, 0).await.unwrap().is_none(),
        "batches too"
    );
    assert!(
        store.events_after(&done, 0).await.unwrap().is_empty(),
        "events too"
    );
    assert_eq!(
        store.count_pending_deliveries().await.unwrap(),
        0,
        "deliveries too"
    );
    assert!(store.job(&running).await.unwrap().is_some());
    assert_eq!(store.count_active(None).await.unwrap(), 1);
    assert_eq!(store.reap(now_millis() + 1_000).await.unwrap(), 0);
}

async fn learned_limits_and_disabled_targets_are_remembered(store: Arc<dyn JobStore>) {
    let key = "max_items:evaluation";
    assert_eq!(store.learned_limit(key).await.unwrap(), None);
    // Learned, then replaced by what is learned later.
    for limit in [100, 40] {
        store.set_learned_limit(key, limit).await.unwrap();
        assert_eq!(store.learned_limit(key).await.unwrap(), Some(limit));
    }
    assert_eq!(
        store
            .learned_limit("max_items:security_audit")
            .await
            .unwrap(),
        None
    );

    let url = "https://hooks.example/gone?token=abc";
    assert!(!store.is_target_disabled(url).await.unwrap());
    store.disable_target(url).await.unwrap();
    store.disable_target(url).await.unwrap();
    assert!(store.is_target_disabled(url).await.unwrap());
    assert!(
        !store
            .is_target_disabled("https://hooks.example/gone")
            .await
            .unwrap()
    );
}

// === restarts ===

async fn committed_state_survives_a_reopen(fixture: &Fixture) {
    let store = fixture.store.as_ref();
    let t = default_tenant();
    let job = job_with_deliveries(store, &t, &["msg_kept"]).await;
    let keyed = keyed_job(&t, "key-kept", "hash", now_millis());
    let keyed_id = create(store, keyed).await;
    store
        .set_learned_limit("max_items:evaluation", 7)
        .await
        .unwrap();
    store
        .disable_target("https://hooks.example/gone")
        .await
        .unwrap();

    let again = fixture.reopen().await.unwrap();
    let record = job_record(&*again, &job).await;
    assert_eq!(record.state, JobState::Completed);
    assert_eq!(
        again.job_result(&job).await.unwrap(),
        Some(Bytes::from_static(b"{\"merged\": true}"))
    );
    assert_eq!(again.events_after(&job, 0).await.unwrap().len(), 1);
    let listed = deliveries_of(&*again, &t, &job).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].state, DeliveryState::Pending);
    assert_eq!(
        again.learned_limit("max_items:evaluation").await.unwrap(),
        Some(7)
    );
    assert!(
        again
            .is_target_disabled("https://hooks.example/gone")
            .await
            .unwrap()
    );
    assert_eq!(
        again
            .create_job(keyed_job(&t, "key-kept", "hash", now_millis()), 0)
            .await
            .unwrap(),
        Created::Existing(keyed_id),
        "idempotency keys survive too"
    );
}

async fn a_newer_schema_is_refused(fixture: &Fixture) {
    fixture.store.ping().await.unwrap();
    fixture.set_schema_version(99).await;
    let error = fixture.reopen().await.unwrap_err();
    let StoreError::TooNew { found, supported } = error else {
        panic!("expected TooNew, got {error:?}");
    };
    assert_eq!(found, 99);
    assert!((1..99).contains(&supported), "{supported}");
    assert!(!error.is_transient());
}
