//! `PostgresStore`: the `JobStore` on `PostgreSQL` (tokio-postgres behind a deadpool pool), so
//! that several replicas can share one store. Same tables, same semantics as `SqliteStore`.
//!
//! Connections are plain TCP (`NoTls`): TLS to the database is a later step (a rustls connector
//! in place of `NoTls`, and `sslmode` honoured from the URL). Every connection of the pool runs
//! with the configured `statement_timeout`, set as a startup option.
//!
//! Concurrency: where `SqliteStore` relies on its single writer, this store locks rows. A change
//! to a job's batches locks the job row first (`FOR NO KEY UPDATE`) and then the batch row, in
//! that order everywhere, so writers of one job queue behind each other and never deadlock;
//! event sequence numbers are allocated under that lock, so they commit in order. Idempotent
//! creates are settled by the unique index on (tenant, idempotency key).
pub(crate) mod exclusive;

use std::{collections::HashMap, fmt, time::Duration};

use bytes::Bytes;
use deadpool_postgres::{GenericClient, Manager, Pool, Runtime};
use futures::{FutureExt, future::BoxFuture};
use tokio_postgres::{IsolationLevel, NoTls, Row, error::SqlState, types::ToSql};

use super::{
    Attempt, AttemptRecord, BatchRecord, BatchUpdate, BatchWork, CompletedBatch, Created,
    DeliveryRecord, DeliveryState, DeliveryWork, JobRecord, JobStore, ListQuery, NewBatch,
    NewDelivery, NewJob, ReplayOutcome, StoreError, StoredEvent, UnfinishedBatch,
    decode::{
        JOB_COLUMNS, corrupt, parse_batch_state, parse_delivery_state, parse_job_id,
        parse_job_state, parse_kind, parse_tenant, to_i64, to_u32, to_usize,
    },
};
use crate::{
    config::PostgresConfig,
    types::{BatchState, JobId, JobState, Millis, TenantName, now_millis},
};

/// Schema migrations, applied in order, numbered as `SqliteStore`'s (schema N is the same
/// tables on both). `evalgate_meta` holds how many ran under the key [`SCHEMA_VERSION_KEY`].
///
/// Later migrations add columns with `ALTER TABLE … ADD COLUMN` (nullable or with a constant
/// default: no table rewrite), e.g. lease columns (owner, deadline, fencing epoch) on `batches`
/// and `webhook_deliveries`; every statement here names its columns, so added ones break none.
const MIGRATIONS: &[&str] = &[
    // 1: bookkeeping (also where the schema version lives).
    "CREATE TABLE IF NOT EXISTS evalgate_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);",
    // 2: managed jobs, their batches and their durable events. Ids compare byte for byte
    // (`COLLATE "C"`), as in SQLite: job ids are the cursor of `list_jobs`.
    r#"
    CREATE TABLE jobs (
        id TEXT COLLATE "C" PRIMARY KEY,
        kind TEXT NOT NULL,
        origin TEXT NOT NULL,
        state TEXT NOT NULL,
        total_items BIGINT NOT NULL,
        members BYTEA NOT NULL,
        webhook TEXT,
        idempotency_key TEXT,
        request_hash TEXT,
        error TEXT,
        result BYTEA,
        seq BIGINT NOT NULL DEFAULT 0,
        created_at BIGINT NOT NULL,
        started_at BIGINT,
        finished_at BIGINT,
        updated_at BIGINT NOT NULL
    );
    CREATE INDEX jobs_by_state ON jobs (state, id);
    CREATE UNIQUE INDEX jobs_by_idempotency ON jobs (idempotency_key) WHERE idempotency_key IS NOT NULL;
    CREATE INDEX jobs_by_finish ON jobs (finished_at) WHERE finished_at IS NOT NULL;
    CREATE TABLE batches (
        job_id TEXT COLLATE "C" NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
        idx BIGINT NOT NULL,
        item_start BIGINT NOT NULL,
        item_end BIGINT NOT NULL,
        payload BYTEA NOT NULL,
        state TEXT NOT NULL,
        upstream_job_id TEXT,
        attempts BIGINT NOT NULL DEFAULT 0,
        submits BIGINT NOT NULL DEFAULT 0,
        progress DOUBLE PRECISION NOT NULL DEFAULT 0,
        current_item BIGINT NOT NULL DEFAULT 0,
        error TEXT,
        result BYTEA,
        updated_at BIGINT NOT NULL,
        PRIMARY KEY (job_id, idx)
    );
    CREATE INDEX batches_unfinished ON batches (state) WHERE state IN ('pending', 'submitting', 'running');
    CREATE TABLE job_events (
        job_id TEXT COLLATE "C" NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
        seq BIGINT NOT NULL,
        name TEXT NOT NULL,
        data TEXT NOT NULL,
        PRIMARY KEY (job_id, seq)
    );
    "#,
    // 3: the webhook outbox, written with a job's end; every attempt is kept.
    r#"
    CREATE TABLE webhook_deliveries (
        id TEXT COLLATE "C" PRIMARY KEY,
        job_id TEXT COLLATE "C" NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
        event TEXT NOT NULL,
        url TEXT NOT NULL,
        target TEXT NOT NULL,
        payload BYTEA NOT NULL,
        state TEXT NOT NULL,
        attempts BIGINT NOT NULL DEFAULT 0,
        next_at BIGINT NOT NULL,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL,
        delivered_at BIGINT
    );
    CREATE INDEX deliveries_due ON webhook_deliveries (state, next_at);
    CREATE INDEX deliveries_by_job ON webhook_deliveries (job_id);
    CREATE TABLE webhook_attempts (
        delivery_id TEXT COLLATE "C" NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
        n BIGINT NOT NULL,
        at BIGINT NOT NULL,
        status INTEGER,
        latency_ms BIGINT NOT NULL,
        error TEXT,
        PRIMARY KEY (delivery_id, n)
    );
    "#,
    // 4: tenants. Jobs made before belong to the tenant "default"; idempotency keys are
    // per tenant.
    r"
    ALTER TABLE jobs ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
    CREATE INDEX jobs_by_tenant ON jobs (tenant, id);
    DROP INDEX jobs_by_idempotency;
    CREATE UNIQUE INDEX jobs_by_idempotency ON jobs (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL;
    ",
];

/// The `evalgate_meta` key holding how many migrations ran.
const SCHEMA_VERSION_KEY: &str = "schema_version";

/// The advisory lock every replica takes (for the migration transaction) before it migrates:
/// "evalgate" in ASCII.
const MIGRATION_LOCK: i64 = 0x6576_616c_6761_7465;

/// The unique index that settles concurrent creates with one idempotency key.
const IDEMPOTENCY_INDEX: &str = "jobs_by_idempotency";

/// How often `create_job` starts over after losing a race for its idempotency key.
const CREATE_ATTEMPTS: usize = 3;

/// How long a call waits for a free connection before failing (transient).
const POOL_WAIT: Duration = Duration::from_secs(5);
/// How long opening (or checking) one connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub(crate) struct PostgresStore {
    pool: Pool,
    /// The URL with its password masked (for `Debug`).
    url: String,
}

// === impl PostgresStore ===

impl PostgresStore {
    /// Builds the pool (`pool_size` connections, each with `statement_timeout`), connects, and
    /// migrates the schema. Fails startup on any problem; no error carries the URL.
    pub(crate) async fn connect(config: &PostgresConfig) -> Result<Self, StoreError> {
        Self::connect_with(config, POOL_WAIT).await
    }

    async fn connect_with(config: &PostgresConfig, wait: Duration) -> Result<Self, StoreError> {
        let mut pg: tokio_postgres::Config = config
            .url_secret
            .expose()
            .parse()
            .map_err(StoreError::PostgresUrl)?;
        // Rounded up: a sub-millisecond timeout must not become 0 (no timeout at all).
        let timeout_ms = config.statement_timeout.as_millis().max(1);
        let option = format!("-c statement_timeout={timeout_ms}");
        // After any options of the URL, so that the configured timeout wins.
        let options = match pg.get_options() {
            Some(given) if !given.is_empty() => format!("{given} {option}"),
            _ => option,
        };
        pg.options(options);
        if pg.get_application_name().is_none() {
            pg.application_name("evalgate");
        }
        let pool = Pool::builder(Manager::new(pg, NoTls))
            .max_size(config.pool_size)
            .wait_timeout(Some(wait))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(StoreError::PostgresBuild)?;
        let store = Self {
            pool,
            url: config.url.clone(),
        };
        store.migrate().await?;
        Ok(store)
    }

    async fn client(&self) -> Result<deadpool_postgres::Client, StoreError> {
        Ok(self.pool.get().await?)
    }

    /// Applies the missing migrations in one transaction under [`MIGRATION_LOCK`]: replicas
    /// starting together migrate one after the other, and each later one finds nothing to do.
    async fn migrate(&self) -> Result<(), StoreError> {
        let supported = to_i64(MIGRATIONS.len());
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        let found = schema_version(&tx).await?;
        if found > supported {
            return Err(StoreError::TooNew { found, supported });
        }
        for (index, sql) in MIGRATIONS
            .iter()
            .enumerate()
            .skip(usize::try_from(found).unwrap_or(0))
        {
            tx.batch_execute(sql).await?;
            let version = to_i64(index + 1).to_string();
            tx.execute(
                "INSERT INTO evalgate_meta (key, value) VALUES ($1, $2)
                 ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                &[&SCHEMA_VERSION_KEY, &version],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// A value of the `evalgate_meta` table.
    async fn meta_get(&self, key: String) -> Result<Option<String>, StoreError> {
        let client = self.client().await?;
        let row = query_opt(
            &client,
            "SELECT value FROM evalgate_meta WHERE key = $1",
            &[&key],
        )
        .await?;
        Ok(row.map(|row| row.try_get(0)).transpose()?)
    }

    async fn meta_set(&self, key: String, value: String) -> Result<(), StoreError> {
        let client = self.client().await?;
        execute(
            &client,
            "INSERT INTO evalgate_meta (key, value) VALUES ($1, $2)
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            &[&key, &value],
        )
        .await?;
        Ok(())
    }

    /// A `SELECT COUNT(*) ...` as a number.
    async fn count(&self, sql: &'static str) -> Result<usize, StoreError> {
        let client = self.client().await?;
        let row = query_one(&client, sql, &[]).await?;
        Ok(to_usize(row.try_get(0)?))
    }

    /// One attempt of `create_job`. A concurrent create that took the idempotency key between
    /// the lookup and the insert makes the insert fail on [`IDEMPOTENCY_INDEX`] (after waiting
    /// for that create to commit); the caller then starts over and finds its job.
    async fn try_create_job(
        &self,
        job: &NewJob,
        idempotency_since: Millis,
    ) -> Result<Created, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let tenant = job.tenant.as_str();
        if let Some((key, hash)) = &job.idempotency {
            let existing = query_opt(
                &tx,
                "SELECT id, request_hash FROM jobs
                 WHERE tenant = $1 AND idempotency_key = $2 AND created_at >= $3",
                &[&tenant, key, &idempotency_since],
            )
            .await?;
            if let Some(row) = existing {
                let id = parse_job_id(&row.try_get::<_, String>(0)?)?;
                let existing_hash: String = row.try_get(1)?;
                return Ok(if existing_hash == *hash {
                    Created::Existing(id)
                } else {
                    Created::Conflict(id)
                });
            }
            // An older job keeps its key only until a new job takes it: lookups only ever see
            // the newest job of a key within the window, as with SQLite.
            execute(
                &tx,
                "UPDATE jobs SET idempotency_key = NULL
                 WHERE tenant = $1 AND idempotency_key = $2 AND created_at < $3",
                &[&tenant, key, &idempotency_since],
            )
            .await?;
        }
        let (key, hash) = job.idempotency.clone().unzip();
        execute(
            &tx,
            "INSERT INTO jobs (id, kind, origin, state, total_items, members, webhook, idempotency_key,
                request_hash, created_at, updated_at, tenant)
             VALUES ($1, $2, $3, 'queued', $4, $5, $6, $7, $8, $9, $9, $10)",
            &[
                &job.id.as_str(),
                &job.kind.as_str(),
                &job.origin.as_str(),
                &to_i64(job.total_items),
                &&job.members[..],
                &job.webhook,
                &key,
                &hash,
                &job.created_at,
                &tenant,
            ],
        )
        .await?;
        insert_batches(&tx, job.id.as_str(), &job.batches, job.created_at).await?;
        tx.commit().await?;
        Ok(Created::New)
    }
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("url", &self.url)
            .field("pool", &self.pool.status())
            .finish()
    }
}

/// Whether `error` is the unique violation of [`IDEMPOTENCY_INDEX`]: another create with the
/// same key committed first.
fn is_idempotency_race(error: &tokio_postgres::Error) -> bool {
    error.as_db_error().is_some_and(|db| {
        *db.code() == SqlState::UNIQUE_VIOLATION && db.constraint() == Some(IDEMPOTENCY_INDEX)
    })
}

/// How many migrations ran (0 for an empty database). Call under [`MIGRATION_LOCK`].
async fn schema_version(tx: &deadpool_postgres::Transaction<'_>) -> Result<i64, StoreError> {
    let has_meta: bool = tx
        .query_one("SELECT to_regclass('evalgate_meta') IS NOT NULL", &[])
        .await?
        .try_get(0)?;
    if !has_meta {
        return Ok(0);
    }
    let Some(row) = tx
        .query_opt(
            "SELECT value FROM evalgate_meta WHERE key = $1",
            &[&SCHEMA_VERSION_KEY],
        )
        .await?
    else {
        return Ok(0);
    };
    let value: String = row.try_get(0)?;
    value.parse().map_err(|_| corrupt("schema version", &value))
}

/// Whether a `PostgreSQL` error can pass by itself: the connection lost or refused, a
/// serialization failure or deadlock, the server short of resources, shutting down or starting,
/// a statement cancelled by `statement_timeout`. Constraint violations, syntax errors, undefined
/// tables, data errors and authentication failures do not.
pub(super) fn is_transient(error: &tokio_postgres::Error) -> bool {
    if let Some(code) = error.code() {
        return is_transient_sqlstate(code.code());
    }
    if error.is_closed() {
        return true;
    }
    // Broken or refused connections carry the I/O error; malformed messages carry one of kind
    // InvalidInput or InvalidData (a bug, not a condition that passes).
    if let Some(io) =
        std::error::Error::source(error).and_then(|s| s.downcast_ref::<std::io::Error>())
    {
        return !matches!(
            io.kind(),
            std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData
        );
    }
    // A `connect_timeout` of the URL that elapsed: tokio-postgres exposes no other mark of it.
    error.to_string() == "timeout waiting for server"
}

/// The SQLSTATE codes (or classes) of conditions that pass by themselves.
pub(super) fn is_transient_sqlstate(code: &str) -> bool {
    // 08: connection exception; 53: insufficient resources (disk full, out of memory, too many
    // connections).
    code.starts_with("08")
        || code.starts_with("53")
        || matches!(
            code,
            // serialization failure, deadlock detected
            "40001" | "40P01"
            // admin shutdown, crash shutdown, cannot connect now
            | "57P01" | "57P02" | "57P03"
            // query canceled (statement_timeout)
            | "57014"
        )
}

type Params<'a> = [&'a (dyn ToSql + Sync)];

async fn query<C: GenericClient>(
    client: &C,
    sql: &str,
    params: &Params<'_>,
) -> Result<Vec<Row>, StoreError> {
    let statement = client.prepare_cached(sql).await?;
    Ok(client.query(&statement, params).await?)
}

async fn query_opt<C: GenericClient>(
    client: &C,
    sql: &str,
    params: &Params<'_>,
) -> Result<Option<Row>, StoreError> {
    let statement = client.prepare_cached(sql).await?;
    Ok(client.query_opt(&statement, params).await?)
}

async fn query_one<C: GenericClient>(
    client: &C,
    sql: &str,
    params: &Params<'_>,
) -> Result<Row, StoreError> {
    let statement = client.prepare_cached(sql).await?;
    Ok(client.query_one(&statement, params).await?)
}

async fn execute<C: GenericClient>(
    client: &C,
    sql: &str,
    params: &Params<'_>,
) -> Result<u64, StoreError> {
    let statement = client.prepare_cached(sql).await?;
    Ok(client.execute(&statement, params).await?)
}

/// A read-only transaction on one snapshot, for reads of several statements.
async fn snapshot(
    client: &mut deadpool_postgres::Client,
) -> Result<deadpool_postgres::Transaction<'_>, StoreError> {
    Ok(client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?)
}

/// A job row of [`JOB_COLUMNS`], without its batches.
fn job_record(row: &Row) -> Result<JobRecord, StoreError> {
    Ok(JobRecord {
        id: parse_job_id(row.try_get(0)?)?,
        kind: parse_kind(row.try_get(1)?)?,
        state: parse_job_state(row.try_get(2)?)?,
        total_items: to_usize(row.try_get(3)?),
        error: row.try_get(4)?,
        webhook: row.try_get(5)?,
        created_at: row.try_get(6)?,
        started_at: row.try_get(7)?,
        finished_at: row.try_get(8)?,
        tenant: parse_tenant(row.try_get(9)?)?,
        batches: Vec::new(),
    })
}

/// The batches of `jobs` (superseded `split` batches excluded), each job's in dataset order.
async fn load_batches<C: GenericClient>(
    client: &C,
    jobs: &[String],
) -> Result<HashMap<String, Vec<BatchRecord>>, StoreError> {
    let rows = query(
        client,
        "SELECT job_id, idx, item_start, item_end, state, upstream_job_id, attempts, submits,
                progress, current_item, error
         FROM batches WHERE job_id = ANY($1) AND state <> 'split' ORDER BY job_id, item_start",
        &[&jobs],
    )
    .await?;
    let mut out: HashMap<String, Vec<BatchRecord>> = HashMap::new();
    for row in rows {
        let batch = BatchRecord {
            idx: to_u32(row.try_get(1)?),
            item_start: to_usize(row.try_get(2)?),
            item_end: to_usize(row.try_get(3)?),
            state: parse_batch_state(row.try_get(4)?)?,
            upstream_job_id: row.try_get(5)?,
            attempts: to_u32(row.try_get(6)?),
            submits: to_u32(row.try_get(7)?),
            progress: row.try_get(8)?,
            current_item: to_usize(row.try_get(9)?),
            error: row.try_get(10)?,
        };
        out.entry(row.try_get(0)?).or_default().push(batch);
    }
    Ok(out)
}

/// Job rows of [`JOB_COLUMNS`] with their batches, read in the caller's snapshot.
async fn job_records<C: GenericClient>(
    client: &C,
    rows: &[Row],
) -> Result<Vec<JobRecord>, StoreError> {
    let mut records = rows.iter().map(job_record).collect::<Result<Vec<_>, _>>()?;
    if records.is_empty() {
        return Ok(records);
    }
    let ids: Vec<String> = records.iter().map(|r| r.id.as_str().to_owned()).collect();
    let mut batches = load_batches(client, &ids).await?;
    for record in &mut records {
        record.batches = batches.remove(record.id.as_str()).unwrap_or_default();
    }
    Ok(records)
}

/// Appends an event to a job inside the caller's transaction; returns its sequence number.
/// Bumping the job's counter locks the job row until commit, so one job's events commit in
/// sequence order (a reader resuming after `seq` never skips one committed later).
async fn append_event<C: GenericClient>(
    tx: &C,
    job: &str,
    name: &str,
    data: &str,
) -> Result<i64, StoreError> {
    let row = query_one(
        tx,
        "WITH next AS (UPDATE jobs SET seq = seq + 1 WHERE id = $1 RETURNING id, seq)
         INSERT INTO job_events (job_id, seq, name, data) SELECT id, seq, $2, $3 FROM next
         RETURNING seq",
        &[&job, &name, &data],
    )
    .await?;
    Ok(row.try_get(0)?)
}

async fn insert_batches<C: GenericClient>(
    tx: &C,
    job: &str,
    batches: &[NewBatch],
    now: Millis,
) -> Result<(), StoreError> {
    if batches.is_empty() {
        return Ok(());
    }
    let idx: Vec<i64> = batches.iter().map(|b| i64::from(b.idx)).collect();
    let start: Vec<i64> = batches.iter().map(|b| to_i64(b.item_start)).collect();
    let end: Vec<i64> = batches.iter().map(|b| to_i64(b.item_end)).collect();
    let payload: Vec<&[u8]> = batches.iter().map(|b| &b.payload[..]).collect();
    let state: Vec<&str> = batches
        .iter()
        .map(|b| {
            if b.upstream_job_id.is_some() {
                BatchState::Running.as_str()
            } else {
                BatchState::Pending.as_str()
            }
        })
        .collect();
    let upstream: Vec<Option<&str>> = batches
        .iter()
        .map(|b| b.upstream_job_id.as_deref())
        .collect();
    execute(
        tx,
        "INSERT INTO batches (job_id, idx, item_start, item_end, payload, state, upstream_job_id, updated_at)
         SELECT $1, b.idx, b.item_start, b.item_end, b.payload, b.state, b.upstream_job_id, $8
         FROM UNNEST($2::BIGINT[], $3::BIGINT[], $4::BIGINT[], $5::BYTEA[], $6::TEXT[], $7::TEXT[])
           AS b (idx, item_start, item_end, payload, state, upstream_job_id)",
        &[&job, &idx, &start, &end, &payload, &state, &upstream, &now],
    )
    .await?;
    Ok(())
}

async fn insert_deliveries<C: GenericClient>(
    tx: &C,
    job: &str,
    deliveries: &[NewDelivery],
    now: Millis,
) -> Result<(), StoreError> {
    if deliveries.is_empty() {
        return Ok(());
    }
    let id: Vec<&str> = deliveries.iter().map(|d| d.id.as_str()).collect();
    let event: Vec<&str> = deliveries.iter().map(|d| d.event.as_str()).collect();
    let url: Vec<&str> = deliveries.iter().map(|d| d.url.as_str()).collect();
    let target: Vec<&str> = deliveries.iter().map(|d| d.target.as_str()).collect();
    let payload: Vec<&[u8]> = deliveries.iter().map(|d| &d.payload[..]).collect();
    execute(
        tx,
        "INSERT INTO webhook_deliveries (id, job_id, event, url, target, payload, state, next_at, created_at, updated_at)
         SELECT d.id, $1, d.event, d.url, d.target, d.payload, 'pending', $7, $7, $7
         FROM UNNEST($2::TEXT[], $3::TEXT[], $4::TEXT[], $5::TEXT[], $6::BYTEA[])
           AS d (id, event, url, target, payload)",
        &[&job, &id, &event, &url, &target, &payload, &now],
    )
    .await?;
    Ok(())
}

/// The filter of `list_deliveries` (job, state, tenant, limit as `$1`..`$4`), shared by its two
/// queries so that attempts are read for exactly the listed page.
const DELIVERY_PAGE: &str = "SELECT id FROM webhook_deliveries
    WHERE ($1::TEXT IS NULL OR job_id = $1) AND ($2::TEXT IS NULL OR state = $2)
      AND job_id IN (SELECT id FROM jobs WHERE tenant = $3)
    ORDER BY created_at, id LIMIT $4";

async fn delivery_attempts<C: GenericClient>(
    client: &C,
    params: &Params<'_>,
) -> Result<HashMap<String, Vec<AttemptRecord>>, StoreError> {
    let rows = query(
        client,
        &format!(
            "SELECT delivery_id, n, at, status, latency_ms, error FROM webhook_attempts
             WHERE delivery_id IN ({DELIVERY_PAGE}) ORDER BY delivery_id, n"
        ),
        params,
    )
    .await?;
    let mut attempts: HashMap<String, Vec<AttemptRecord>> = HashMap::new();
    for row in rows {
        let attempt = AttemptRecord {
            n: to_u32(row.try_get(1)?),
            at: row.try_get(2)?,
            status: row
                .try_get::<_, Option<i32>>(3)?
                .and_then(|s| u16::try_from(s).ok()),
            latency_ms: u64::try_from(row.try_get::<_, i64>(4)?).unwrap_or(0),
            error: row.try_get(5)?,
        };
        attempts.entry(row.try_get(0)?).or_default().push(attempt);
    }
    Ok(attempts)
}

impl JobStore for PostgresStore {
    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        async move {
            // Reads a table of the schema, so the database itself must answer.
            let client = self.client().await?;
            query(&client, "SELECT 1 FROM evalgate_meta LIMIT 1", &[]).await?;
            Ok(())
        }
        .boxed()
    }

    fn create_job(
        &self,
        job: NewJob,
        idempotency_since: Millis,
    ) -> BoxFuture<'_, Result<Created, StoreError>> {
        async move {
            let mut attempt = 1;
            loop {
                match self.try_create_job(&job, idempotency_since).await {
                    Err(StoreError::Postgres(error))
                        if attempt < CREATE_ATTEMPTS && is_idempotency_race(&error) =>
                    {
                        attempt += 1;
                    }
                    // Won, found, or a race lost too often: that unique violation itself.
                    outcome => return outcome,
                }
            }
        }
        .boxed()
    }

    fn job(&self, id: &JobId) -> BoxFuture<'_, Result<Option<JobRecord>, StoreError>> {
        let id = id.as_str().to_owned();
        async move {
            let mut client = self.client().await?;
            let tx = snapshot(&mut client).await?;
            let rows = query(
                &tx,
                &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"),
                &[&id],
            )
            .await?;
            let record = job_records(&tx, &rows).await?.pop();
            tx.commit().await?;
            Ok(record)
        }
        .boxed()
    }

    fn list_jobs(&self, query: ListQuery<'_>) -> BoxFuture<'_, Result<Vec<JobRecord>, StoreError>> {
        let state = query.state.map(JobState::as_str);
        let after = query.after.unwrap_or("").to_owned();
        let limit = to_i64(query.limit);
        let tenant = query.tenant.as_str().to_owned();
        async move {
            let mut client = self.client().await?;
            let tx = snapshot(&mut client).await?;
            let rows = self::query(
                &tx,
                &format!(
                    "SELECT {JOB_COLUMNS} FROM jobs
                     WHERE tenant = $1 AND ($2::TEXT IS NULL OR state = $2) AND id > $3
                     ORDER BY id LIMIT $4"
                ),
                &[&tenant, &state, &after, &limit],
            )
            .await?;
            let records = job_records(&tx, &rows).await?;
            tx.commit().await?;
            Ok(records)
        }
        .boxed()
    }

    fn unfinished_batches(&self) -> BoxFuture<'_, Result<Vec<UnfinishedBatch>, StoreError>> {
        async move {
            let client = self.client().await?;
            let rows = query(
                &client,
                "SELECT b.job_id, b.idx, b.state FROM batches b JOIN jobs j ON j.id = b.job_id
                 WHERE b.state IN ('pending', 'submitting', 'running') AND j.state IN ('queued', 'running')
                 ORDER BY b.job_id, b.item_start",
                &[],
            )
            .await?;
            rows.iter()
                .map(|row| {
                    Ok((
                        parse_job_id(row.try_get(0)?)?,
                        to_u32(row.try_get(1)?),
                        parse_batch_state(row.try_get(2)?)?,
                    ))
                })
                .collect()
        }
        .boxed()
    }

    fn jobs_to_finalize(&self) -> BoxFuture<'_, Result<Vec<JobId>, StoreError>> {
        async move {
            let client = self.client().await?;
            let rows = query(
                &client,
                "SELECT j.id FROM jobs j WHERE j.state IN ('queued', 'running')
                 AND NOT EXISTS (SELECT 1 FROM batches b
                    WHERE b.job_id = j.id AND b.state IN ('pending', 'submitting', 'running'))
                 ORDER BY j.id",
                &[],
            )
            .await?;
            rows.iter()
                .map(|row| parse_job_id(row.try_get(0)?))
                .collect()
        }
        .boxed()
    }

    fn batch_work(
        &self,
        job: &JobId,
        idx: u32,
    ) -> BoxFuture<'_, Result<Option<BatchWork>, StoreError>> {
        let job = job.as_str().to_owned();
        async move {
            let client = self.client().await?;
            let row = query_opt(
                &client,
                "SELECT j.kind, b.item_start, b.item_end, b.state, b.upstream_job_id, b.attempts,
                        j.members, b.payload, j.tenant, b.submits, j.created_at
                 FROM batches b JOIN jobs j ON j.id = b.job_id WHERE b.job_id = $1 AND b.idx = $2",
                &[&job, &i64::from(idx)],
            )
            .await?;
            let Some(row) = row else {
                return Ok(None);
            };
            Ok(Some(BatchWork {
                kind: parse_kind(row.try_get(0)?)?,
                item_start: to_usize(row.try_get(1)?),
                item_end: to_usize(row.try_get(2)?),
                state: parse_batch_state(row.try_get(3)?)?,
                upstream_job_id: row.try_get(4)?,
                attempts: to_u32(row.try_get(5)?),
                members: Bytes::from(row.try_get::<_, Vec<u8>>(6)?),
                payload: Bytes::from(row.try_get::<_, Vec<u8>>(7)?),
                tenant: parse_tenant(row.try_get(8)?)?,
                submits: to_u32(row.try_get(9)?),
                created_at: row.try_get(10)?,
            }))
        }
        .boxed()
    }

    fn update_batch(&self, update: BatchUpdate) -> BoxFuture<'_, Result<bool, StoreError>> {
        async move {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            let now = now_millis();
            let job = update.job_id.as_str();
            let idx = i64::from(update.idx);
            // The job row first (see the module doc): a concurrent `finish_job` either has
            // committed (seen here) or waits until this commits.
            let job_state = query_opt(
                &tx,
                "SELECT state FROM jobs WHERE id = $1 FOR NO KEY UPDATE",
                &[&job],
            )
            .await?;
            let Some(job_state) = job_state else {
                return Ok(false);
            };
            if !matches!(job_state.try_get::<_, &str>(0)?, "queued" | "running") {
                return Ok(false);
            }
            let current = query_opt(
                &tx,
                "SELECT state FROM batches WHERE job_id = $1 AND idx = $2 FOR UPDATE",
                &[&job, &idx],
            )
            .await?;
            let Some(current) = current else {
                return Ok(false);
            };
            if !update
                .from
                .contains(&parse_batch_state(current.try_get(0)?)?)
            {
                return Ok(false);
            }
            let (progress, current_item) = update.progress.unzip();
            execute(
                &tx,
                "UPDATE batches SET state = $3,
                    upstream_job_id = COALESCE($4, upstream_job_id),
                    attempts = COALESCE($5, attempts),
                    submits = submits + $6,
                    progress = COALESCE($7, progress),
                    current_item = COALESCE($8, current_item),
                    error = $9,
                    result = COALESCE($10, result),
                    updated_at = $11
                 WHERE job_id = $1 AND idx = $2",
                &[
                    &job,
                    &idx,
                    &update.to.as_str(),
                    &update.upstream_job_id,
                    &update.attempts.map(i64::from),
                    &i64::from(update.count_submit),
                    &progress,
                    &current_item.map(to_i64),
                    &update.error,
                    &update.result.as_deref(),
                    &now,
                ],
            )
            .await?;
            execute(
                &tx,
                "UPDATE jobs SET state = 'running', started_at = COALESCE(started_at, $2), updated_at = $2
                 WHERE id = $1 AND state = 'queued'",
                &[&job, &now],
            )
            .await?;
            if let Some(event) = &update.event {
                append_event(&tx, job, "batch", event).await?;
            }
            tx.commit().await?;
            Ok(true)
        }
        .boxed()
    }

    fn split_batch(
        &self,
        job: &JobId,
        idx: u32,
        parts: Vec<NewBatch>,
    ) -> BoxFuture<'_, Result<Vec<u32>, StoreError>> {
        let job = job.as_str().to_owned();
        async move {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            let now = now_millis();
            // The job row first: it also serialises the allocation of new indexes.
            query_opt(
                &tx,
                "SELECT 1 FROM jobs WHERE id = $1 FOR NO KEY UPDATE",
                &[&job],
            )
            .await?;
            let changed = execute(
                &tx,
                "UPDATE batches SET state = 'split', updated_at = $3
                 WHERE job_id = $1 AND idx = $2 AND state IN ('pending', 'submitting')",
                &[&job, &i64::from(idx), &now],
            )
            .await?;
            if changed == 0 {
                return Ok(Vec::new());
            }
            let next: i64 = query_one(
                &tx,
                "SELECT COALESCE(MAX(idx), -1) + 1 FROM batches WHERE job_id = $1",
                &[&job],
            )
            .await?
            .try_get(0)?;
            let parts: Vec<NewBatch> = parts
                .into_iter()
                .enumerate()
                .map(|(i, part)| NewBatch {
                    idx: to_u32(next + to_i64(i)),
                    ..part
                })
                .collect();
            insert_batches(&tx, &job, &parts, now).await?;
            tx.commit().await?;
            Ok(parts.iter().map(|p| p.idx).collect())
        }
        .boxed()
    }

    fn count_active(
        &self,
        tenant: Option<&TenantName>,
    ) -> BoxFuture<'_, Result<usize, StoreError>> {
        let tenant = tenant.map(|t| t.as_str().to_owned());
        async move {
            let client = self.client().await?;
            let row = query_one(
                &client,
                "SELECT COUNT(*) FROM jobs
                 WHERE state IN ('queued', 'running') AND ($1::TEXT IS NULL OR tenant = $1)",
                &[&tenant],
            )
            .await?;
            Ok(to_usize(row.try_get(0)?))
        }
        .boxed()
    }

    fn batch_results(&self, job: &JobId) -> BoxFuture<'_, Result<Vec<CompletedBatch>, StoreError>> {
        let job = job.as_str().to_owned();
        async move {
            let client = self.client().await?;
            let rows = query(
                &client,
                "SELECT item_start, item_end, result FROM batches
                 WHERE job_id = $1 AND result IS NOT NULL ORDER BY item_start",
                &[&job],
            )
            .await?;
            rows.iter()
                .map(|row| {
                    let start: i64 = row.try_get(0)?;
                    let end: i64 = row.try_get(1)?;
                    let result: Vec<u8> = row.try_get(2)?;
                    Ok((to_usize(start), to_usize(end - start), Bytes::from(result)))
                })
                .collect()
        }
        .boxed()
    }

    fn finish_job(
        &self,
        job: &JobId,
        state: JobState,
        error: Option<String>,
        result: Option<Bytes>,
        event: String,
        deliveries: Vec<NewDelivery>,
    ) -> BoxFuture<'_, Result<bool, StoreError>> {
        let job = job.as_str().to_owned();
        async move {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            let now = now_millis();
            let changed = execute(
                &tx,
                "UPDATE jobs SET state = $2, error = $3, result = $4, finished_at = $5, updated_at = $5,
                    started_at = COALESCE(started_at, $5)
                 WHERE id = $1 AND state IN ('queued', 'running')",
                &[&job, &state.as_str(), &error, &result.as_deref(), &now],
            )
            .await?;
            if changed == 0 {
                return Ok(false);
            }
            // Whatever had not finished is cancelled with its job (cancel, fail-fast).
            execute(
                &tx,
                "UPDATE batches SET state = 'cancelled', updated_at = $2
                 WHERE job_id = $1 AND state IN ('pending', 'submitting', 'running')",
                &[&job, &now],
            )
            .await?;
            append_event(&tx, &job, state.sdk_status_event(), &event).await?;
            // The outbox rows commit with the terminal state: no finished job without its
            // pending webhook, no webhook for a job that did not finish.
            insert_deliveries(&tx, &job, &deliveries, now).await?;
            tx.commit().await?;
            Ok(true)
        }
        .boxed()
    }

    fn due_deliveries(
        &self,
        now: Millis,
        limit: usize,
        busy: Vec<String>,
    ) -> BoxFuture<'_, Result<Vec<DeliveryWork>, StoreError>> {
        async move {
            let client = self.client().await?;
            let rows = query(
                &client,
                "SELECT id, job_id, event, url, target, payload, attempts, created_at
                 FROM webhook_deliveries
                 WHERE state = 'pending' AND next_at <= $1 AND id <> ALL($2::TEXT[])
                 ORDER BY next_at, created_at, id LIMIT $3",
                &[&now, &busy, &to_i64(limit)],
            )
            .await?;
            rows.iter()
                .map(|row| {
                    Ok(DeliveryWork {
                        id: row.try_get(0)?,
                        job_id: parse_job_id(row.try_get(1)?)?,
                        event: row.try_get(2)?,
                        url: row.try_get(3)?,
                        target: row.try_get(4)?,
                        payload: Bytes::from(row.try_get::<_, Vec<u8>>(5)?),
                        attempts: to_u32(row.try_get(6)?),
                        created_at: row.try_get(7)?,
                    })
                })
                .collect()
        }
        .boxed()
    }

    fn next_delivery_at(&self) -> BoxFuture<'_, Result<Option<Millis>, StoreError>> {
        async move {
            let client = self.client().await?;
            let row = query_one(
                &client,
                "SELECT MIN(next_at) FROM webhook_deliveries WHERE state = 'pending'",
                &[],
            )
            .await?;
            Ok(row.try_get(0)?)
        }
        .boxed()
    }

    fn record_attempt(&self, attempt: Attempt) -> BoxFuture<'_, Result<bool, StoreError>> {
        async move {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            let n = query_opt(
                &tx,
                "UPDATE webhook_deliveries SET attempts = attempts + 1, state = $2::TEXT,
                    next_at = $3, updated_at = $4,
                    delivered_at = CASE WHEN $2::TEXT = 'delivered' THEN $4 ELSE delivered_at END
                 WHERE id = $1 AND state = 'pending' RETURNING attempts",
                &[
                    &attempt.delivery_id,
                    &attempt.new_state.as_str(),
                    &attempt.next_at,
                    &attempt.at,
                ],
            )
            .await?;
            let Some(n) = n else {
                return Ok(false);
            };
            let n: i64 = n.try_get(0)?;
            // After a replay the count restarts at 1: its attempts take the places of the old.
            execute(
                &tx,
                "INSERT INTO webhook_attempts (delivery_id, n, at, status, latency_ms, error)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (delivery_id, n) DO UPDATE SET at = EXCLUDED.at, status = EXCLUDED.status,
                    latency_ms = EXCLUDED.latency_ms, error = EXCLUDED.error",
                &[
                    &attempt.delivery_id,
                    &n,
                    &attempt.at,
                    &attempt.status.map(i32::from),
                    &i64::try_from(attempt.latency_ms).unwrap_or(i64::MAX),
                    &attempt.error,
                ],
            )
            .await?;
            tx.commit().await?;
            Ok(true)
        }
        .boxed()
    }

    fn list_deliveries(
        &self,
        tenant: &TenantName,
        job: Option<JobId>,
        state: Option<DeliveryState>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<DeliveryRecord>, StoreError>> {
        let tenant = tenant.as_str().to_owned();
        async move {
            let job = job.as_ref().map(JobId::as_str);
            let state = state.map(DeliveryState::as_str);
            let limit = to_i64(limit);
            let params: &Params<'_> = &[&job, &state, &tenant, &limit];
            let mut client = self.client().await?;
            let tx = snapshot(&mut client).await?;
            let rows = query(
                &tx,
                &format!(
                    "SELECT id, job_id, event, url, state, next_at, created_at, delivered_at
                     FROM webhook_deliveries WHERE id IN ({DELIVERY_PAGE}) ORDER BY created_at, id"
                ),
                params,
            )
            .await?;
            let mut attempts = delivery_attempts(&tx, params).await?;
            tx.commit().await?;
            rows.iter()
                .map(|row| {
                    let id: String = row.try_get(0)?;
                    let state = parse_delivery_state(row.try_get(4)?)?;
                    Ok(DeliveryRecord {
                        job_id: parse_job_id(row.try_get(1)?)?,
                        attempts: attempts.remove(&id).unwrap_or_default(),
                        event: row.try_get(2)?,
                        url: row.try_get(3)?,
                        next_attempt_at: (state == DeliveryState::Pending)
                            .then(|| row.try_get(5))
                            .transpose()?,
                        state,
                        created_at: row.try_get(6)?,
                        delivered_at: row.try_get(7)?,
                        id,
                    })
                })
                .collect()
        }
        .boxed()
    }

    fn replay_delivery(
        &self,
        tenant: &TenantName,
        id: &str,
    ) -> BoxFuture<'_, Result<ReplayOutcome, StoreError>> {
        let id = id.to_owned();
        let tenant = tenant.as_str().to_owned();
        async move {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            let replayed = execute(
                &tx,
                "UPDATE webhook_deliveries SET state = 'pending', attempts = 0, next_at = $2, updated_at = $2
                 WHERE id = $1 AND state <> 'pending' AND job_id IN (SELECT id FROM jobs WHERE tenant = $3)",
                &[&id, &now_millis(), &tenant],
            )
            .await?;
            // Nothing changed: either it is pending already or the tenant has no such delivery.
            let outcome = if replayed > 0 {
                ReplayOutcome::Replayed
            } else if query_opt(
                &tx,
                "SELECT 1 FROM webhook_deliveries
                 WHERE id = $1 AND job_id IN (SELECT id FROM jobs WHERE tenant = $2)",
                &[&id, &tenant],
            )
            .await?
            .is_some()
            {
                ReplayOutcome::AlreadyPending
            } else {
                ReplayOutcome::NotFound
            };
            tx.commit().await?;
            Ok(outcome)
        }
        .boxed()
    }

    fn replay_dead(
        &self,
        tenant: &TenantName,
        job: &JobId,
    ) -> BoxFuture<'_, Result<Option<usize>, StoreError>> {
        let job = job.as_str().to_owned();
        let tenant = tenant.as_str().to_owned();
        async move {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            let known = query_opt(
                &tx,
                "SELECT 1 FROM jobs WHERE id = $1 AND tenant = $2",
                &[&job, &tenant],
            )
            .await?
            .is_some();
            if !known {
                return Ok(None);
            }
            let replayed = execute(
                &tx,
                "UPDATE webhook_deliveries SET state = 'pending', attempts = 0, next_at = $2, updated_at = $2
                 WHERE job_id = $1 AND state = 'dead'",
                &[&job, &now_millis()],
            )
            .await?;
            tx.commit().await?;
            Ok(Some(usize::try_from(replayed).unwrap_or(usize::MAX)))
        }
        .boxed()
    }

    fn count_pending_deliveries(&self) -> BoxFuture<'_, Result<usize, StoreError>> {
        self.count("SELECT COUNT(*) FROM webhook_deliveries WHERE state = 'pending'")
            .boxed()
    }

    fn delivery_counts(&self) -> BoxFuture<'_, Result<Vec<(DeliveryState, usize)>, StoreError>> {
        async move {
            let client = self.client().await?;
            let rows = query(
                &client,
                r#"SELECT state, COUNT(*) FROM webhook_deliveries GROUP BY state ORDER BY state COLLATE "C""#,
                &[],
            )
            .await?;
            rows.iter()
                .map(|row| {
                    Ok((
                        parse_delivery_state(row.try_get(0)?)?,
                        to_usize(row.try_get(1)?),
                    ))
                })
                .collect()
        }
        .boxed()
    }

    fn disable_target(&self, url: &str) -> BoxFuture<'_, Result<(), StoreError>> {
        self.meta_set(format!("webhook_disabled:{url}"), now_millis().to_string())
            .boxed()
    }

    fn is_target_disabled(&self, url: &str) -> BoxFuture<'_, Result<bool, StoreError>> {
        let value = self.meta_get(format!("webhook_disabled:{url}"));
        async move { Ok(value.await?.is_some()) }.boxed()
    }

    fn job_result(&self, job: &JobId) -> BoxFuture<'_, Result<Option<Bytes>, StoreError>> {
        let job = job.as_str().to_owned();
        async move {
            let client = self.client().await?;
            let row = query_opt(&client, "SELECT result FROM jobs WHERE id = $1", &[&job]).await?;
            let result: Option<Vec<u8>> = row.map(|row| row.try_get(0)).transpose()?.flatten();
            Ok(result.map(Bytes::from))
        }
        .boxed()
    }

    fn events_after(
        &self,
        job: &JobId,
        after: i64,
    ) -> BoxFuture<'_, Result<Vec<StoredEvent>, StoreError>> {
        let job = job.as_str().to_owned();
        async move {
            let client = self.client().await?;
            let rows = query(
                &client,
                "SELECT seq, name, data FROM job_events WHERE job_id = $1 AND seq > $2 ORDER BY seq",
                &[&job, &after],
            )
            .await?;
            rows.iter()
                .map(|row| {
                    Ok(StoredEvent {
                        seq: row.try_get(0)?,
                        name: row.try_get(1)?,
                        data: row.try_get(2)?,
                    })
                })
                .collect()
        }
        .boxed()
    }

    fn reap(&self, before: Millis) -> BoxFuture<'_, Result<usize, StoreError>> {
        async move {
            let client = self.client().await?;
            let deleted = execute(
                &client,
                "DELETE FROM jobs WHERE finished_at IS NOT NULL AND finished_at < $1",
                &[&before],
            )
            .await?;
            Ok(usize::try_from(deleted).unwrap_or(usize::MAX))
        }
        .boxed()
    }

    fn learned_limit(&self, key: &str) -> BoxFuture<'_, Result<Option<usize>, StoreError>> {
        let value = self.meta_get(format!("learned_limit:{key}"));
        async move { Ok(value.await?.and_then(|v| v.parse().ok())) }.boxed()
    }

    fn set_learned_limit(&self, key: &str, value: usize) -> BoxFuture<'_, Result<(), StoreError>> {
        self.meta_set(format!("learned_limit:{key}"), value.to_string())
            .boxed()
    }
}

#[cfg(test)]
pub(super) mod testdb;
#[cfg(test)]
mod tests;
