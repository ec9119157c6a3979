//! The durable store: `JobStore` is every read and write of persistent state; `SqliteStore` is the
//! default implementation, `PostgresStore` the one several replicas can share. Nothing outside
//! this module knows SQL.
//!
//! Every state change is committed before it is acknowledged (to a caller or to the engine's next
//! step). Both stores pass the same contract suite (`contract.rs`).
#[cfg(test)]
mod contract;
mod decode;
mod pool;
mod postgres;
pub(crate) mod sqlite;

use bytes::Bytes;
use futures::future::BoxFuture;

pub(crate) use self::postgres::{PostgresStore, exclusive::Exclusive};
pub(crate) use self::sqlite::SqliteStore;
use crate::types::{BatchState, JobId, JobKind, JobState};
use crate::types::{Millis, Origin, TenantName};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("could not create the store directory {path}")]
    CreateDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("database error")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the store's worker thread failed")]
    Join(#[from] tokio::task::JoinError),
    #[error("no read connection became free within {0:?}")]
    PoolTimeout(std::time::Duration),
    #[error("the store's read pool is closed")]
    PoolClosed(#[source] tokio::sync::AcquireError),
    #[error("the store is newer (schema {found}) than this evalgate (schema {supported})")]
    TooNew { found: i64, supported: i64 },
    #[error("the store holds a value this evalgate cannot read: {0}")]
    Corrupt(String),
    #[error("database error (PostgreSQL)")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("no PostgreSQL connection")]
    PostgresPool(#[from] deadpool_postgres::PoolError),
    #[error("could not build the PostgreSQL connection pool")]
    PostgresBuild(#[source] deadpool_postgres::BuildError),
    /// The URL itself is never part of the message: it holds the password.
    #[error("the store URL is not a valid PostgreSQL connection string")]
    PostgresUrl(#[source] tokio_postgres::Error),
    /// Another evalgate works on this `PostgreSQL` database (one per database until leases).
    #[error(
        "another evalgate works on this PostgreSQL database: run one evalgate per database (several replicas need leases, a later release)"
    )]
    InUse,
    /// The connection holding this evalgate's claim on the database ended.
    #[error("the connection holding this evalgate's claim on the PostgreSQL database ended")]
    ExclusiveLost,
}

impl StoreError {
    /// Whether the condition can pass by itself, so that the same call may succeed later (a
    /// caller answers 503 with `Retry-After`, or retries): the database busy or locked by another
    /// connection, the disk full, an I/O error, a file that cannot be opened right now, no read
    /// connection free in time, a call cancelled before it ran; for `PostgreSQL`, a connection
    /// lost or refused, no pooled connection in time, and the SQLSTATEs of serialization
    /// failures, deadlocks, insufficient resources, shutdowns and cancelled statements (see
    /// `postgres::is_transient`). Corruption, a schema too new, constraint violations, SQL
    /// errors and values that cannot be read do not pass by themselves.
    pub fn is_transient(&self) -> bool {
        use deadpool_postgres::{HookError, PoolError};
        match self {
            Self::Sqlite(rusqlite::Error::SqliteFailure(error, _)) => matches!(
                error.code,
                rusqlite::ErrorCode::DatabaseBusy
                    | rusqlite::ErrorCode::DatabaseLocked
                    | rusqlite::ErrorCode::DiskFull
                    | rusqlite::ErrorCode::SystemIoFailure
                    | rusqlite::ErrorCode::CannotOpen
            ),
            Self::Join(error) => error.is_cancelled(),
            Self::PoolTimeout(_) => true,
            Self::Postgres(error) => postgres::is_transient(error),
            Self::PostgresPool(error) => match error {
                PoolError::Timeout(_) => true,
                PoolError::Backend(error)
                | PoolError::PostCreateHook(HookError::Backend(error)) => {
                    postgres::is_transient(error)
                }
                PoolError::Closed
                | PoolError::NoRuntimeSpecified
                | PoolError::PostCreateHook(HookError::Message(_)) => false,
            },
            Self::Sqlite(_)
            | Self::CreateDir { .. }
            | Self::PoolClosed(_)
            | Self::TooNew { .. }
            | Self::Corrupt(_)
            | Self::PostgresBuild(_)
            | Self::PostgresUrl(_)
            | Self::InUse
            | Self::ExclusiveLost => false,
        }
    }
}

/// (job, batch index, state) of a batch that still needs work.
pub(crate) type UnfinishedBatch = (JobId, u32, BatchState);
/// (`item_start`, `item_count`, result JSON) of a completed batch.
pub(crate) type CompletedBatch = (usize, usize, Bytes);

#[derive(Debug, Clone)]
pub(crate) struct NewBatch {
    pub idx: u32,
    pub item_start: usize,
    pub item_end: usize,
    /// The batch's items, byte for byte, separators as sent (no brackets); for an Arize task
    /// run, its run spec.
    pub payload: Bytes,
    /// Already running upstream under this id (an Arize run the caller triggered itself): the
    /// batch starts `running` and is polled, never submitted.
    pub upstream_job_id: Option<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct NewJob {
    pub id: JobId,
    /// The tenant that created it: the only one that sees it.
    pub tenant: TenantName,
    pub kind: JobKind,
    pub origin: Origin,
    pub total_items: usize,
    /// Top-level members repeated in every batch body (raw JSON members, no braces).
    pub members: Bytes,
    /// The webhook target as JSON, stored now and delivered by the webhook dispatcher.
    pub webhook: Option<String>,
    /// (Idempotency-Key, hash of the request body).
    pub idempotency: Option<(String, String)>,
    pub batches: Vec<NewBatch>,
    pub created_at: Millis,
}

#[derive(Debug, Clone)]
pub(crate) struct BatchRecord {
    pub idx: u32,
    pub item_start: usize,
    pub item_end: usize,
    pub state: BatchState,
    pub upstream_job_id: Option<String>,
    pub attempts: u32,
    pub submits: u32,
    pub progress: f64,
    pub current_item: usize,
    pub error: Option<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct JobRecord {
    pub id: JobId,
    pub tenant: TenantName,
    pub kind: JobKind,
    pub state: JobState,
    pub total_items: usize,
    pub error: Option<String>,
    pub webhook: Option<String>,
    pub created_at: Millis,
    pub started_at: Option<Millis>,
    pub finished_at: Option<Millis>,
    /// Batches in dataset order (superseded `split` batches excluded).
    pub batches: Vec<BatchRecord>,
}

/// What the engine needs to submit or poll one batch.
#[derive(Debug, Clone)]
pub(crate) struct BatchWork {
    /// The job's tenant: whose keys the upstream calls use.
    pub tenant: TenantName,
    pub kind: JobKind,
    pub item_start: usize,
    pub item_end: usize,
    pub state: BatchState,
    pub upstream_job_id: Option<String>,
    pub attempts: u32,
    /// Submits made so far (an earlier one may have reached the upstream).
    pub submits: u32,
    /// When the job was created (before any submit of it).
    pub created_at: Millis,
    pub members: Bytes,
    pub payload: Bytes,
}

/// A conditional change to one batch: applied only while the batch is in `from`, so a late
/// writer (a poll finishing after a cancel) cannot overwrite a newer state.
#[derive(Debug, Clone)]
pub(crate) struct BatchUpdate {
    pub job_id: JobId,
    pub idx: u32,
    pub from: Vec<BatchState>,
    pub to: BatchState,
    pub upstream_job_id: Option<String>,
    pub attempts: Option<u32>,
    /// Counts one more submit toward the upstream (crash tests check no batch is submitted twice).
    pub count_submit: bool,
    pub progress: Option<(f64, usize)>,
    pub error: Option<String>,
    pub result: Option<Bytes>,
    /// An event to append for SSE (`batch`), in the same transaction.
    pub event: Option<String>,
}

impl BatchUpdate {
    /// Moves batch `idx` from one of `from` to `to`, changing nothing else.
    pub(crate) fn new(job: &JobId, idx: u32, from: &[BatchState], to: BatchState) -> Self {
        Self {
            job_id: job.clone(),
            idx,
            from: from.to_vec(),
            to,
            upstream_job_id: None,
            attempts: None,
            count_submit: false,
            progress: None,
            error: None,
            result: None,
            event: None,
        }
    }
}

/// A job-level event, durable, for SSE replay after `Last-Event-ID`.
#[derive(Debug, Clone)]
pub(crate) struct StoredEvent {
    pub seq: i64,
    pub name: String,
    pub data: String,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct ListQuery<'a> {
    /// Only this tenant's jobs.
    pub tenant: &'a TenantName,
    pub state: Option<JobState>,
    pub limit: usize,
    /// Job ids sort by creation (`UUIDv7`); the cursor is the last id of the previous page.
    pub after: Option<&'a str>,
}

/// A webhook delivery to write to the outbox with a job's end.
#[derive(Debug, Clone)]
pub(crate) struct NewDelivery {
    /// `msg_…`: the `webhook-id`, stable across retries.
    pub id: String,
    pub event: String,
    pub url: String,
    /// Where the signing secrets come from: `job` (the job's webhook) or `endpoint:<url>`.
    pub target: String,
    pub payload: Bytes,
}

/// A due delivery, as the dispatcher works on it.
#[derive(Debug, Clone)]
pub(crate) struct DeliveryWork {
    pub id: String,
    pub job_id: JobId,
    pub event: String,
    pub url: String,
    pub target: String,
    pub payload: Bytes,
    pub attempts: u32,
    pub created_at: Millis,
}

/// What one attempt ended in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeliveryState {
    Pending,
    Delivered,
    /// Every attempt of the schedule failed; kept for inspection and replay.
    Dead,
    /// The receiver answered 410 Gone: the target is disabled.
    Disabled,
}

impl DeliveryState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Dead => "dead",
            Self::Disabled => "disabled",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(Self::Pending),
            "delivered" => Some(Self::Delivered),
            "dead" => Some(Self::Dead),
            "disabled" => Some(Self::Disabled),
            _ => None,
        }
    }
}

/// One attempt, recorded with the delivery's new state in one transaction.
#[derive(Debug, Clone)]
pub(crate) struct Attempt {
    pub delivery_id: String,
    pub at: Millis,
    pub status: Option<u16>,
    pub latency_ms: u64,
    pub error: Option<String>,
    pub new_state: DeliveryState,
    /// When `new_state` is `Pending`: the next attempt.
    pub next_at: Millis,
}

/// One recorded attempt of a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AttemptRecord {
    /// 1 for the first attempt (restarts at 1 after a replay).
    pub n: u32,
    pub at: Millis,
    /// The receiver's status code; `None` when no response came.
    pub status: Option<u16>,
    pub latency_ms: u64,
    pub error: Option<String>,
}

/// A delivery of the outbox with every attempt, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeliveryRecord {
    pub id: String,
    pub job_id: JobId,
    pub event: String,
    /// The target URL as stored (it may carry a token in its query string).
    pub url: String,
    pub state: DeliveryState,
    pub attempts: Vec<AttemptRecord>,
    /// When the next attempt is due; only while `Pending`.
    pub next_attempt_at: Option<Millis>,
    pub created_at: Millis,
    pub delivered_at: Option<Millis>,
}

/// What `replay_delivery` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReplayOutcome {
    /// Pending again, due now.
    Replayed,
    /// Unchanged: it is pending already.
    AlreadyPending,
    /// No delivery has that id.
    NotFound,
}

/// Outcome of `create_job` with an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Created {
    New,
    /// Same key and same body within the window: the existing job.
    Existing(JobId),
    /// Same key, different body.
    Conflict(JobId),
}

/// Dyn-compatible, async access to persistent state.
pub(crate) trait JobStore: Send + Sync + std::fmt::Debug {
    /// A cheap round trip proving the store answers (readiness).
    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Creates a job and its batches in one transaction. With an idempotency key seen within
    /// `idempotency_since`, returns the existing job (same body hash) or a conflict instead.
    fn create_job(
        &self,
        job: NewJob,
        idempotency_since: Millis,
    ) -> BoxFuture<'_, Result<Created, StoreError>>;

    fn job(&self, id: &JobId) -> BoxFuture<'_, Result<Option<JobRecord>, StoreError>>;

    fn list_jobs(&self, query: ListQuery<'_>) -> BoxFuture<'_, Result<Vec<JobRecord>, StoreError>>;

    /// Every batch of every unfinished job that still needs work (for recovery at startup).
    fn unfinished_batches(&self) -> BoxFuture<'_, Result<Vec<UnfinishedBatch>, StoreError>>;

    /// Unfinished jobs whose batches are all terminal (a crash between the two commits).
    fn jobs_to_finalize(&self) -> BoxFuture<'_, Result<Vec<JobId>, StoreError>>;

    fn batch_work(
        &self,
        job: &JobId,
        idx: u32,
    ) -> BoxFuture<'_, Result<Option<BatchWork>, StoreError>>;

    /// Applies a conditional batch change; `false` when the batch was no longer in `from`.
    /// Moves the job to `running` on its first batch activity.
    fn update_batch(&self, update: BatchUpdate) -> BoxFuture<'_, Result<bool, StoreError>>;

    /// Replaces batch `idx` (pending or submitting) by smaller batches appended with new
    /// indexes, which are returned (empty when the batch had moved on).
    fn split_batch(
        &self,
        job: &JobId,
        idx: u32,
        parts: Vec<NewBatch>,
    ) -> BoxFuture<'_, Result<Vec<u32>, StoreError>>;

    /// Jobs accepted and not finished: all of them, or one tenant's.
    fn count_active(&self, tenant: Option<&TenantName>)
    -> BoxFuture<'_, Result<usize, StoreError>>;

    /// Every batch result: (`item_start`, `item_count`, result JSON), in dataset order. Only
    /// completed batches hold one, except for kinds whose final status answer is the result (an
    /// Arize task run keeps its `FAILED` or `CANCELLED` run too).
    fn batch_results(&self, job: &JobId) -> BoxFuture<'_, Result<Vec<CompletedBatch>, StoreError>>;

    /// Ends a job (only if not already terminal) with its merged result; appends the final event
    /// and writes its webhook deliveries to the outbox, all in one transaction.
    fn finish_job(
        &self,
        job: &JobId,
        state: JobState,
        error: Option<String>,
        result: Option<Bytes>,
        event: String,
        deliveries: Vec<NewDelivery>,
    ) -> BoxFuture<'_, Result<bool, StoreError>>;

    /// Pending deliveries due at `now`, oldest first, skipping `busy` ones.
    fn due_deliveries(
        &self,
        now: Millis,
        limit: usize,
        busy: Vec<String>,
    ) -> BoxFuture<'_, Result<Vec<DeliveryWork>, StoreError>>;

    /// When the next pending delivery is due, if any.
    fn next_delivery_at(&self) -> BoxFuture<'_, Result<Option<Millis>, StoreError>>;

    /// Records an attempt and the delivery's new state (only while it is pending).
    fn record_attempt(&self, attempt: Attempt) -> BoxFuture<'_, Result<bool, StoreError>>;

    /// A tenant's deliveries (of one job, in one state) with their attempts, oldest first.
    fn list_deliveries(
        &self,
        tenant: &TenantName,
        job: Option<JobId>,
        state: Option<DeliveryState>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<DeliveryRecord>, StoreError>>;

    /// Makes a tenant's delivery that is not pending pending again, due now, with its attempt
    /// count reset. Another tenant's delivery is `NotFound`.
    fn replay_delivery(
        &self,
        tenant: &TenantName,
        id: &str,
    ) -> BoxFuture<'_, Result<ReplayOutcome, StoreError>>;

    /// Replays every dead-lettered delivery of a tenant's job; returns how many, or `None` when
    /// the tenant has no job with that id.
    fn replay_dead(
        &self,
        tenant: &TenantName,
        job: &JobId,
    ) -> BoxFuture<'_, Result<Option<usize>, StoreError>>;

    fn count_pending_deliveries(&self) -> BoxFuture<'_, Result<usize, StoreError>>;

    /// Counts by state (for metrics); states without deliveries are absent.
    fn delivery_counts(&self) -> BoxFuture<'_, Result<Vec<(DeliveryState, usize)>, StoreError>>;

    /// A target that answered 410 Gone.
    fn disable_target(&self, url: &str) -> BoxFuture<'_, Result<(), StoreError>>;

    fn is_target_disabled(&self, url: &str) -> BoxFuture<'_, Result<bool, StoreError>>;

    fn job_result(&self, job: &JobId) -> BoxFuture<'_, Result<Option<Bytes>, StoreError>>;

    /// Durable events with `seq > after`.
    fn events_after(
        &self,
        job: &JobId,
        after: i64,
    ) -> BoxFuture<'_, Result<Vec<StoredEvent>, StoreError>>;

    /// Deletes finished jobs (and their batches, events) that finished before `before`.
    fn reap(&self, before: Millis) -> BoxFuture<'_, Result<usize, StoreError>>;

    /// A learned upstream limit (e.g. `max_items` for a kind), if any.
    fn learned_limit(&self, key: &str) -> BoxFuture<'_, Result<Option<usize>, StoreError>>;

    fn set_learned_limit(&self, key: &str, value: usize) -> BoxFuture<'_, Result<(), StoreError>>;
}
