//! `SqliteStore`: embedded `SQLite` (bundled), WAL mode, schema migrated at open.
//!
//! rusqlite is blocking, so every call runs on tokio's blocking pool. One writer connection behind
//! a mutex takes every write (`SQLite` serialises writers anyway); pure reads run on a small pool
//! of read-only connections, which in WAL mode never wait for the writer.
use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use bytes::Bytes;
use futures::{FutureExt, future::BoxFuture};
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::{
    Attempt, AttemptRecord, BatchRecord, BatchUpdate, BatchWork, CompletedBatch, Created,
    DeliveryRecord, DeliveryState, DeliveryWork, JobRecord, JobStore, ListQuery, NewBatch,
    NewDelivery, NewJob, ReplayOutcome, StoreError, StoredEvent, UnfinishedBatch,
    decode::{
        JOB_COLUMNS, parse_batch_state, parse_delivery_state, parse_job_id, parse_job_state,
        parse_kind, parse_tenant, to_i64, to_u32, to_usize,
    },
    pool::{self, ReadPool},
};
use crate::{
    config::{StoreConfig, StorePath},
    types::{BatchState, JobId, JobState, Millis, TenantName, now_millis},
};

/// Schema migrations, applied in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    // 1: bookkeeping.
    "CREATE TABLE IF NOT EXISTS evalgate_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT;",
    // 2: managed jobs, their batches and their durable events.
    r"
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        origin TEXT NOT NULL,
        state TEXT NOT NULL,
        total_items INTEGER NOT NULL,
        members BLOB NOT NULL,
        webhook TEXT,
        idempotency_key TEXT,
        request_hash TEXT,
        error TEXT,
        result BLOB,
        seq INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL,
        started_at INTEGER,
        finished_at INTEGER,
        updated_at INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX jobs_by_state ON jobs(state, id);
    CREATE INDEX jobs_by_idempotency ON jobs(idempotency_key, created_at) WHERE idempotency_key IS NOT NULL;
    CREATE INDEX jobs_by_finish ON jobs(finished_at) WHERE finished_at IS NOT NULL;
    CREATE TABLE batches (
        job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        idx INTEGER NOT NULL,
        item_start INTEGER NOT NULL,
        item_end INTEGER NOT NULL,
        payload BLOB NOT NULL,
        state TEXT NOT NULL,
        upstream_job_id TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        submits INTEGER NOT NULL DEFAULT 0,
        progress REAL NOT NULL DEFAULT 0,
        current_item INTEGER NOT NULL DEFAULT 0,
        error TEXT,
        result BLOB,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (job_id, idx)
    ) STRICT;
    CREATE INDEX batches_unfinished ON batches(state) WHERE state IN ('pending', 'submitting', 'running');
    CREATE TABLE job_events (
        job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        name TEXT NOT NULL,
        data TEXT NOT NULL,
        PRIMARY KEY (job_id, seq)
    ) STRICT;
    ",
    // 3: the webhook outbox, written with a job's end; every attempt is kept.
    r"
    CREATE TABLE webhook_deliveries (
        id TEXT PRIMARY KEY,
        job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        event TEXT NOT NULL,
        url TEXT NOT NULL,
        target TEXT NOT NULL,
        payload BLOB NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_at INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        delivered_at INTEGER
    ) STRICT;
    CREATE INDEX deliveries_due ON webhook_deliveries(state, next_at);
    CREATE INDEX deliveries_by_job ON webhook_deliveries(job_id);
    CREATE TABLE webhook_attempts (
        delivery_id TEXT NOT NULL REFERENCES webhook_deliveries(id) ON DELETE CASCADE,
        n INTEGER NOT NULL,
        at INTEGER NOT NULL,
        status INTEGER,
        latency_ms INTEGER NOT NULL,
        error TEXT,
        PRIMARY KEY (delivery_id, n)
    ) STRICT;
    ",
    // 4: tenants. Jobs made before belong to the tenant "default"; idempotency keys are
    // per tenant.
    r"
    ALTER TABLE jobs ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
    CREATE INDEX jobs_by_tenant ON jobs(tenant, id);
    DROP INDEX jobs_by_idempotency;
    CREATE INDEX jobs_by_idempotency ON jobs(tenant, idempotency_key, created_at) WHERE idempotency_key IS NOT NULL;
    ",
];

/// How long a read waits for a free read connection before failing (transient).
const READ_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub(crate) struct SqliteStore {
    /// Every write, and every read that must see the same state as a write of the same call.
    writer: Arc<Mutex<Connection>>,
    /// Pure reads; `None` for a `:memory:` store, whose data no second connection can see
    /// (reads then run on the writer).
    readers: Option<Arc<ReadPool>>,
}

// === impl SqliteStore ===

impl SqliteStore {
    /// Opens (creating if needed) and migrates the store, then opens its read connections. Fails
    /// startup on any problem.
    pub(crate) async fn open(config: &StoreConfig) -> Result<Self, StoreError> {
        Self::open_with(&config.path, config.read_connections, READ_WAIT).await
    }

    async fn open_with(
        path: &StorePath,
        read_connections: usize,
        read_wait: Duration,
    ) -> Result<Self, StoreError> {
        let path = path.clone();
        tokio::task::spawn_blocking(move || {
            let writer = open_blocking(&path)?;
            // Readers open after the writer has created, migrated and switched the file to WAL.
            let readers = match &path {
                StorePath::Memory => None,
                StorePath::File(file) => {
                    Some(Arc::new(ReadPool::open(file, read_connections, read_wait)?))
                }
            };
            Ok(Self {
                writer: Arc::new(Mutex::new(writer)),
                readers,
            })
        })
        .await?
    }

    /// A `SELECT COUNT(*) ...` as a number.
    fn count(&self, sql: &'static str) -> BoxFuture<'_, Result<usize, StoreError>> {
        self.read(move |conn| {
            let n: i64 = conn.query_row(sql, [], |row| row.get(0))?;
            Ok(to_usize(n))
        })
        .boxed()
    }

    /// A value of the `evalgate_meta` table.
    fn meta_get(&self, key: String) -> BoxFuture<'_, Result<Option<String>, StoreError>> {
        self.read(move |conn| {
            Ok(conn
                .query_row(
                    "SELECT value FROM evalgate_meta WHERE key = ?1",
                    [&key],
                    |row| row.get(0),
                )
                .optional()?)
        })
        .boxed()
    }

    fn meta_set(&self, key: String, value: String) -> BoxFuture<'_, Result<(), StoreError>> {
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO evalgate_meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )?;
            Ok(())
        })
        .boxed()
    }

    /// Runs `f` on the writer connection, on the blocking pool.
    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = Arc::clone(&self.writer);
        tokio::task::spawn_blocking(move || {
            // A poisoned lock means a panic mid-call; the connection itself is still usable.
            let mut guard = conn.lock().unwrap_or_else(PoisonError::into_inner);
            f(&mut guard)
        })
        .await?
    }

    /// Runs `f` inside one read transaction (every statement of `f` sees the same snapshot) on
    /// a read connection, or on the writer for a `:memory:` store.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let snapshot = move |conn: &mut Connection| {
            let tx = conn.transaction()?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        };
        match &self.readers {
            Some(pool) => pool.run(snapshot).await,
            None => self.write(snapshot).await,
        }
    }
}

fn open_blocking(path: &StorePath) -> Result<Connection, StoreError> {
    let mut conn = match path {
        StorePath::Memory => Connection::open_in_memory()?,
        StorePath::File(file) => {
            if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
                create_dir(dir)?;
            }
            Connection::open(file)?
        }
    };
    // WAL: readers never block the writer. FULL: a commit survives power loss, not only a crash.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(pool::BUSY_TIMEOUT)?;
    migrate(&mut conn)?;
    Ok(conn)
}

fn create_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
        path: dir.display().to_string(),
        source,
    })
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let supported = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
    let found: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if found > supported {
        return Err(StoreError::TooNew { found, supported });
    }
    let tx = conn.transaction()?;
    for (index, sql) in MIGRATIONS
        .iter()
        .enumerate()
        .skip(usize::try_from(found).unwrap_or(0))
    {
        tx.execute_batch(sql)?;
        tx.pragma_update(
            None,
            "user_version",
            i64::try_from(index + 1).unwrap_or(i64::MAX),
        )?;
    }
    tx.commit()?;
    Ok(())
}

/// The raw job row; states are parsed after the query (rusqlite rows cannot carry our errors).
struct JobRow {
    id: String,
    kind: String,
    state: String,
    total_items: i64,
    error: Option<String>,
    webhook: Option<String>,
    created_at: i64,
    started_at: Option<i64>,
    finished_at: Option<i64>,
    tenant: String,
}

fn job_row(row: &Row<'_>) -> rusqlite::Result<JobRow> {
    Ok(JobRow {
        id: row.get(0)?,
        kind: row.get(1)?,
        state: row.get(2)?,
        total_items: row.get(3)?,
        error: row.get(4)?,
        webhook: row.get(5)?,
        created_at: row.get(6)?,
        started_at: row.get(7)?,
        finished_at: row.get(8)?,
        tenant: row.get(9)?,
    })
}

fn load_batches(conn: &Connection, job: &str) -> Result<Vec<BatchRecord>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT idx, item_start, item_end, state, upstream_job_id, attempts, submits, progress, current_item, error
         FROM batches WHERE job_id = ?1 AND state != 'split' ORDER BY item_start",
    )?;
    let rows = stmt.query_map([job], |row| {
        Ok((
            row.get::<_, i64>(0)?,
            row.get::<_, i64>(1)?,
            row.get::<_, i64>(2)?,
            row.get::<_, String>(3)?,
            row.get::<_, Option<String>>(4)?,
            row.get::<_, i64>(5)?,
            row.get::<_, i64>(6)?,
            row.get::<_, f64>(7)?,
            row.get::<_, i64>(8)?,
            row.get::<_, Option<String>>(9)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (idx, start, end, state, upstream, attempts, submits, progress, current, error) = row?;
        out.push(BatchRecord {
            idx: to_u32(idx),
            item_start: to_usize(start),
            item_end: to_usize(end),
            state: parse_batch_state(&state)?,
            upstream_job_id: upstream,
            attempts: to_u32(attempts),
            submits: to_u32(submits),
            progress,
            current_item: to_usize(current),
            error,
        });
    }
    Ok(out)
}

fn to_record(conn: &Connection, row: JobRow, with_batches: bool) -> Result<JobRecord, StoreError> {
    let batches = if with_batches {
        load_batches(conn, &row.id)?
    } else {
        Vec::new()
    };
    Ok(JobRecord {
        id: parse_job_id(&row.id)?,
        tenant: parse_tenant(&row.tenant)?,
        kind: parse_kind(&row.kind)?,
        state: parse_job_state(&row.state)?,
        total_items: to_usize(row.total_items),
        error: row.error,
        webhook: row.webhook,
        created_at: row.created_at,
        started_at: row.started_at,
        finished_at: row.finished_at,
        batches,
    })
}

/// Appends an event to a job inside the caller's transaction; returns its sequence number.
fn append_event(
    tx: &rusqlite::Transaction<'_>,
    job: &str,
    name: &str,
    data: &str,
) -> Result<i64, StoreError> {
    let seq: i64 = tx.query_row(
        "UPDATE jobs SET seq = seq + 1 WHERE id = ?1 RETURNING seq",
        [job],
        |row| row.get(0),
    )?;
    tx.execute(
        "INSERT INTO job_events (job_id, seq, name, data) VALUES (?1, ?2, ?3, ?4)",
        params![job, seq, name, data],
    )?;
    Ok(seq)
}

fn insert_batches(
    tx: &rusqlite::Transaction<'_>,
    job: &str,
    batches: &[NewBatch],
    now: Millis,
) -> Result<(), StoreError> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO batches (job_id, idx, item_start, item_end, payload, state, upstream_job_id, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    for batch in batches {
        let state = if batch.upstream_job_id.is_some() {
            BatchState::Running
        } else {
            BatchState::Pending
        };
        stmt.execute(params![
            job,
            batch.idx,
            to_i64(batch.item_start),
            to_i64(batch.item_end),
            &batch.payload[..],
            state.as_str(),
            batch.upstream_job_id,
            now
        ])?;
    }
    Ok(())
}

impl JobStore for SqliteStore {
    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        // Reads the schema, so the file itself must answer, not only the connection.
        self.read(|conn| {
            conn.query_row("SELECT COUNT(*) FROM sqlite_schema", [], |_| Ok(()))?;
            Ok(())
        })
        .boxed()
    }

    fn create_job(
        &self,
        job: NewJob,
        idempotency_since: Millis,
    ) -> BoxFuture<'_, Result<Created, StoreError>> {
        self.write(move |conn| {
            let tx = conn.transaction()?;
            if let Some((key, hash)) = &job.idempotency {
                let existing: Option<(String, String)> = tx
                    .query_row(
                        "SELECT id, request_hash FROM jobs WHERE tenant = ?3 AND idempotency_key = ?1 AND created_at >= ?2
                         ORDER BY created_at DESC LIMIT 1",
                        params![key, idempotency_since, job.tenant.as_str()],
                        |row| Ok((row.get(0)?, row.get(1)?)),
                    )
                    .optional()?;
                if let Some((id, existing_hash)) = existing {
                    let id = parse_job_id(&id)?;
                    return Ok(if existing_hash == *hash {
                        Created::Existing(id)
                    } else {
                        Created::Conflict(id)
                    });
                }
            }
            let (key, hash) = job.idempotency.clone().unzip();
            tx.execute(
                "INSERT INTO jobs (id, kind, origin, state, total_items, members, webhook, idempotency_key, request_hash, created_at, updated_at, tenant)
                 VALUES (?1, ?2, ?3, 'queued', ?4, ?5, ?6, ?7, ?8, ?9, ?9, ?10)",
                params![
                    job.id.as_str(),
                    job.kind.as_str(),
                    job.origin.as_str(),
                    to_i64(job.total_items),
                    &job.members[..],
                    job.webhook,
                    key,
                    hash,
                    job.created_at,
                    job.tenant.as_str()
                ],
            )?;
            insert_batches(&tx, job.id.as_str(), &job.batches, job.created_at)?;
            tx.commit()?;
            Ok(Created::New)
        })
        .boxed()
    }

    fn job(&self, id: &JobId) -> BoxFuture<'_, Result<Option<JobRecord>, StoreError>> {
        let id = id.as_str().to_owned();
        self.read(move |conn| {
            let row = conn
                .query_row(
                    &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"),
                    [&id],
                    job_row,
                )
                .optional()?;
            row.map(|row| to_record(conn, row, true)).transpose()
        })
        .boxed()
    }

    fn list_jobs(&self, query: ListQuery<'_>) -> BoxFuture<'_, Result<Vec<JobRecord>, StoreError>> {
        let state = query.state.map(JobState::as_str);
        let after = query.after.unwrap_or("").to_owned();
        let limit = to_i64(query.limit);
        let tenant = query.tenant.clone();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE tenant = ?4 AND (?1 IS NULL OR state = ?1) AND id > ?2 ORDER BY id LIMIT ?3"
            ))?;
            let rows = stmt
                .query_map(params![state, after, limit, tenant.as_str()], job_row)?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter().map(|row| to_record(conn, row, true)).collect()
        })
        .boxed()
    }

    fn unfinished_batches(&self) -> BoxFuture<'_, Result<Vec<UnfinishedBatch>, StoreError>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT b.job_id, b.idx, b.state FROM batches b JOIN jobs j ON j.id = b.job_id
                 WHERE b.state IN ('pending', 'submitting', 'running') AND j.state IN ('queued', 'running')
                 ORDER BY b.job_id, b.item_start",
            )?;
            let rows = stmt
                .query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?, row.get::<_, String>(2)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter()
                .map(|(job, idx, state)| {
                    Ok((
                        parse_job_id(&job)?,
                        to_u32(idx),
                        parse_batch_state(&state)?,
                    ))
                })
                .collect()
        })
        .boxed()
    }

    fn jobs_to_finalize(&self) -> BoxFuture<'_, Result<Vec<JobId>, StoreError>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT j.id FROM jobs j WHERE j.state IN ('queued', 'running')
                 AND NOT EXISTS (SELECT 1 FROM batches b WHERE b.job_id = j.id AND b.state IN ('pending', 'submitting', 'running'))",
            )?;
            let ids = stmt
                .query_map([], |row| row.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            ids.iter()
                .map(|id| parse_job_id(id))
                .collect()
        })
        .boxed()
    }

    fn batch_work(
        &self,
        job: &JobId,
        idx: u32,
    ) -> BoxFuture<'_, Result<Option<BatchWork>, StoreError>> {
        let job = job.clone();
        self.read(move |conn| {
            let row = conn
                .query_row(
                    "SELECT j.kind, b.item_start, b.item_end, b.state, b.upstream_job_id, b.attempts, j.members, b.payload, j.tenant,
                            b.submits, j.created_at
                     FROM batches b JOIN jobs j ON j.id = b.job_id WHERE b.job_id = ?1 AND b.idx = ?2",
                    params![job.as_str(), idx],
                    |row| {
                        Ok((
                            row.get::<_, String>(0)?,
                            row.get::<_, i64>(1)?,
                            row.get::<_, i64>(2)?,
                            row.get::<_, String>(3)?,
                            row.get::<_, Option<String>>(4)?,
                            row.get::<_, i64>(5)?,
                            row.get::<_, Vec<u8>>(6)?,
                            row.get::<_, Vec<u8>>(7)?,
                            row.get::<_, String>(8)?,
                            row.get::<_, i64>(9)?,
                            row.get::<_, i64>(10)?,
                        ))
                    },
                )
                .optional()?;
            let Some((kind, start, end, state, upstream, attempts, members, payload, tenant, submits, created_at)) =
                row
            else {
                return Ok(None);
            };
            Ok(Some(BatchWork {
                tenant: parse_tenant(&tenant)?,
                kind: parse_kind(&kind)?,
                item_start: to_usize(start),
                item_end: to_usize(end),
                state: parse_batch_state(&state)?,
                upstream_job_id: upstream,
                attempts: to_u32(attempts),
                submits: to_u32(submits),
                created_at,
                members: Bytes::from(members),
                payload: Bytes::from(payload),
            }))
        })
        .boxed()
    }

    fn update_batch(&self, update: BatchUpdate) -> BoxFuture<'_, Result<bool, StoreError>> {
        self.write(move |conn| {
            let tx = conn.transaction()?;
            let now = now_millis();
            let current: Option<String> = tx
                .query_row(
                    "SELECT b.state FROM batches b JOIN jobs j ON j.id = b.job_id
                     WHERE b.job_id = ?1 AND b.idx = ?2 AND j.state IN ('queued', 'running')",
                    params![update.job_id.as_str(), update.idx],
                    |row| row.get(0),
                )
                .optional()?;
            let Some(current) = current else {
                return Ok(false);
            };
            if !update.from.contains(&parse_batch_state(&current)?) {
                return Ok(false);
            }
            let (progress, current_item) = update.progress.unzip();
            tx.execute(
                "UPDATE batches SET state = ?3,
                    upstream_job_id = COALESCE(?4, upstream_job_id),
                    attempts = COALESCE(?5, attempts),
                    submits = submits + ?6,
                    progress = COALESCE(?7, progress),
                    current_item = COALESCE(?8, current_item),
                    error = ?9,
                    result = COALESCE(?10, result),
                    updated_at = ?11
                 WHERE job_id = ?1 AND idx = ?2",
                params![
                    update.job_id.as_str(),
                    update.idx,
                    update.to.as_str(),
                    update.upstream_job_id,
                    update.attempts,
                    i64::from(update.count_submit),
                    progress,
                    current_item.map(to_i64),
                    update.error,
                    update.result.as_deref(),
                    now
                ],
            )?;
            tx.execute(
                "UPDATE jobs SET state = 'running', started_at = COALESCE(started_at, ?2), updated_at = ?2
                 WHERE id = ?1 AND state = 'queued'",
                params![update.job_id.as_str(), now],
            )?;
            if let Some(event) = &update.event {
                append_event(&tx, update.job_id.as_str(), "batch", event)?;
            }
            tx.commit()?;
            Ok(true)
        })
        .boxed()
    }

    fn count_active(
        &self,
        tenant: Option<&TenantName>,
    ) -> BoxFuture<'_, Result<usize, StoreError>> {
        let tenant = tenant.map(|t| t.as_str().to_owned());
        self.read(move |conn| {
            let n: i64 = conn.query_row(
                "SELECT COUNT(*) FROM jobs WHERE state IN ('queued', 'running') AND (?1 IS NULL OR tenant = ?1)",
                [tenant],
                |row| row.get(0),
            )?;
            Ok(to_usize(n))
        })
        .boxed()
    }

    fn split_batch(
        &self,
        job: &JobId,
        idx: u32,
        parts: Vec<NewBatch>,
    ) -> BoxFuture<'_, Result<Vec<u32>, StoreError>> {
        let job = job.clone();
        self.write(move |conn| {
            let tx = conn.transaction()?;
            let now = now_millis();
            let changed = tx.execute(
                "UPDATE batches SET state = 'split', updated_at = ?3
                 WHERE job_id = ?1 AND idx = ?2 AND state IN ('pending', 'submitting')",
                params![job.as_str(), idx, now],
            )?;
            if changed == 0 {
                return Ok(Vec::new());
            }
            let next: i64 = tx.query_row(
                "SELECT COALESCE(MAX(idx), -1) + 1 FROM batches WHERE job_id = ?1",
                [job.as_str()],
                |row| row.get(0),
            )?;
            let parts: Vec<NewBatch> = parts
                .into_iter()
                .enumerate()
                .map(|(i, part)| NewBatch {
                    idx: to_u32(next + to_i64(i)),
                    ..part
                })
                .collect();
            insert_batches(&tx, job.as_str(), &parts, now)?;
            tx.commit()?;
            Ok(parts.iter().map(|p| p.idx).collect())
        })
        .boxed()
    }

    fn batch_results(&self, job: &JobId) -> BoxFuture<'_, Result<Vec<CompletedBatch>, StoreError>> {
        let job = job.as_str().to_owned();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT item_start, item_end, result FROM batches
                 WHERE job_id = ?1 AND result IS NOT NULL ORDER BY item_start",
            )?;
            let rows = stmt
                .query_map([&job], |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        row.get::<_, i64>(1)?,
                        row.get::<_, Vec<u8>>(2)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows
                .into_iter()
                .map(|(start, end, result)| {
                    (to_usize(start), to_usize(end - start), Bytes::from(result))
                })
                .collect())
        })
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
        self.write(move |conn| {
            let tx = conn.transaction()?;
            let now = now_millis();
            let changed = tx.execute(
                "UPDATE jobs SET state = ?2, error = ?3, result = ?4, finished_at = ?5, updated_at = ?5,
                    started_at = COALESCE(started_at, ?5)
                 WHERE id = ?1 AND state IN ('queued', 'running')",
                params![job, state.as_str(), error, result.as_deref(), now],
            )?;
            if changed == 0 {
                return Ok(false);
            }
            // Whatever had not finished is cancelled with its job (cancel, fail-fast).
            tx.execute(
                "UPDATE batches SET state = 'cancelled', updated_at = ?2
                 WHERE job_id = ?1 AND state IN ('pending', 'submitting', 'running')",
                params![job, now],
            )?;
            append_event(&tx, &job, state.sdk_status_event(), &event)?;
            // The outbox rows commit with the terminal state: no finished job without its
            // pending webhook, no webhook for a job that did not finish.
            let mut insert = tx.prepare_cached(
                "INSERT INTO webhook_deliveries (id, job_id, event, url, target, payload, state, next_at, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', ?7, ?7, ?7)",
            )?;
            for delivery in &deliveries {
                insert.execute(params![
                    delivery.id,
                    job,
                    delivery.event,
                    delivery.url,
                    delivery.target,
                    &delivery.payload[..],
                    now
                ])?;
            }
            drop(insert);
            tx.commit()?;
            Ok(true)
        })
        .boxed()
    }

    fn job_result(&self, job: &JobId) -> BoxFuture<'_, Result<Option<Bytes>, StoreError>> {
        let job = job.as_str().to_owned();
        self.read(move |conn| {
            let result: Option<Option<Vec<u8>>> = conn
                .query_row("SELECT result FROM jobs WHERE id = ?1", [&job], |row| {
                    row.get(0)
                })
                .optional()?;
            Ok(result.flatten().map(Bytes::from))
        })
        .boxed()
    }

    fn events_after(
        &self,
        job: &JobId,
        after: i64,
    ) -> BoxFuture<'_, Result<Vec<StoredEvent>, StoreError>> {
        let job = job.as_str().to_owned();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT seq, name, data FROM job_events WHERE job_id = ?1 AND seq > ?2 ORDER BY seq",
            )?;
            let rows = stmt
                .query_map(params![job, after], |row| {
                    Ok(StoredEvent {
                        seq: row.get(0)?,
                        name: row.get(1)?,
                        data: row.get(2)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .boxed()
    }

    fn reap(&self, before: Millis) -> BoxFuture<'_, Result<usize, StoreError>> {
        self.write(move |conn| {
            let deleted = conn.execute(
                "DELETE FROM jobs WHERE finished_at IS NOT NULL AND finished_at < ?1",
                [before],
            )?;
            Ok(deleted)
        })
        .boxed()
    }

    fn learned_limit(&self, key: &str) -> BoxFuture<'_, Result<Option<usize>, StoreError>> {
        let value = self.meta_get(format!("learned_limit:{key}"));
        async move { Ok(value.await?.and_then(|v| v.parse().ok())) }.boxed()
    }

    fn set_learned_limit(&self, key: &str, value: usize) -> BoxFuture<'_, Result<(), StoreError>> {
        self.meta_set(format!("learned_limit:{key}"), value.to_string())
    }

    fn due_deliveries(
        &self,
        now: Millis,
        limit: usize,
        busy: Vec<String>,
    ) -> BoxFuture<'_, Result<Vec<DeliveryWork>, StoreError>> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, job_id, event, url, target, payload, attempts, created_at FROM webhook_deliveries
                 WHERE state = 'pending' AND next_at <= ?1 ORDER BY next_at LIMIT ?2",
            )?;
            let rows = stmt
                .query_map(params![now, to_i64(limit + busy.len())], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, String>(3)?,
                        row.get::<_, String>(4)?,
                        row.get::<_, Vec<u8>>(5)?,
                        row.get::<_, i64>(6)?,
                        row.get::<_, i64>(7)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            let mut out = Vec::new();
            for (id, job, event, url, target, payload, attempts, created_at) in rows {
                if busy.contains(&id) || out.len() >= limit {
                    continue;
                }
                out.push(DeliveryWork {
                    job_id: parse_job_id(&job)?,
                    id,
                    event,
                    url,
                    target,
                    payload: Bytes::from(payload),
                    attempts: to_u32(attempts),
                    created_at,
                });
            }
            Ok(out)
        })
        .boxed()
    }

    fn next_delivery_at(&self) -> BoxFuture<'_, Result<Option<Millis>, StoreError>> {
        self.read(|conn| {
            let next: Option<i64> = conn.query_row(
                "SELECT MIN(next_at) FROM webhook_deliveries WHERE state = 'pending'",
                [],
                |row| row.get(0),
            )?;
            Ok(next)
        })
        .boxed()
    }

    fn record_attempt(&self, attempt: Attempt) -> BoxFuture<'_, Result<bool, StoreError>> {
        self.write(move |conn| {
            let tx = conn.transaction()?;
            let n: Option<i64> = tx
                .query_row(
                    "UPDATE webhook_deliveries SET attempts = attempts + 1, state = ?2, next_at = ?3, updated_at = ?4,
                        delivered_at = CASE WHEN ?2 = 'delivered' THEN ?4 ELSE delivered_at END
                     WHERE id = ?1 AND state = 'pending' RETURNING attempts",
                    params![attempt.delivery_id, attempt.new_state.as_str(), attempt.next_at, attempt.at],
                    |row| row.get(0),
                )
                .optional()?;
            let Some(n) = n else {
                return Ok(false);
            };
            tx.execute(
                "INSERT OR REPLACE INTO webhook_attempts (delivery_id, n, at, status, latency_ms, error) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    attempt.delivery_id,
                    n,
                    attempt.at,
                    attempt.status,
                    i64::try_from(attempt.latency_ms).unwrap_or(i64::MAX),
                    attempt.error
                ],
            )?;
            tx.commit()?;
            Ok(true)
        })
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
        self.read(move |conn| {
            let job = job.as_ref().map(JobId::as_str);
            let state = state.map(DeliveryState::as_str);
            let limit = to_i64(limit);
            let mut stmt = conn.prepare_cached(
                "SELECT id, job_id, event, url, state, next_at, created_at, delivered_at FROM webhook_deliveries
                 WHERE (?1 IS NULL OR job_id = ?1) AND (?2 IS NULL OR state = ?2)
                   AND job_id IN (SELECT id FROM jobs WHERE tenant = ?4)
                 ORDER BY created_at, id LIMIT ?3",
            )?;
            let rows = stmt
                .query_map(params![job, state, limit, tenant], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, String>(3)?,
                        row.get::<_, String>(4)?,
                        row.get::<_, i64>(5)?,
                        row.get::<_, i64>(6)?,
                        row.get::<_, Option<i64>>(7)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            // Every attempt of the same page in one query (same snapshot, same filter).
            let mut attempts_stmt = conn.prepare_cached(
                "SELECT delivery_id, n, at, status, latency_ms, error FROM webhook_attempts
                 WHERE delivery_id IN (SELECT id FROM webhook_deliveries
                    WHERE (?1 IS NULL OR job_id = ?1) AND (?2 IS NULL OR state = ?2)
                      AND job_id IN (SELECT id FROM jobs WHERE tenant = ?4)
                    ORDER BY created_at, id LIMIT ?3)
                 ORDER BY delivery_id, n",
            )?;
            let mut attempts: HashMap<String, Vec<AttemptRecord>> = HashMap::new();
            let attempt_rows = attempts_stmt.query_map(params![job, state, limit, tenant], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    AttemptRecord {
                        n: to_u32(row.get(1)?),
                        at: row.get(2)?,
                        status: row.get::<_, Option<i64>>(3)?.and_then(|s| u16::try_from(s).ok()),
                        latency_ms: u64::try_from(row.get::<_, i64>(4)?).unwrap_or(0),
                        error: row.get(5)?,
                    },
                ))
            })?;
            for row in attempt_rows {
                let (delivery, attempt) = row?;
                attempts.entry(delivery).or_default().push(attempt);
            }
            rows.into_iter()
                .map(|(id, job_id, event, url, state, next_at, created_at, delivered_at)| {
                    let state = parse_delivery_state(&state)?;
                    Ok(DeliveryRecord {
                        job_id: parse_job_id(&job_id)?,
                        attempts: attempts.remove(&id).unwrap_or_default(),
                        id,
                        event,
                        url,
                        next_attempt_at: (state == DeliveryState::Pending).then_some(next_at),
                        state,
                        created_at,
                        delivered_at,
                    })
                })
                .collect()
        })
        .boxed()
    }

    fn replay_delivery(
        &self,
        tenant: &TenantName,
        id: &str,
    ) -> BoxFuture<'_, Result<ReplayOutcome, StoreError>> {
        let id = id.to_owned();
        let tenant = tenant.as_str().to_owned();
        self.write(move |conn| {
            let tx = conn.transaction()?;
            let replayed = tx.execute(
                "UPDATE webhook_deliveries SET state = 'pending', attempts = 0, next_at = ?2, updated_at = ?2
                 WHERE id = ?1 AND state != 'pending' AND job_id IN (SELECT id FROM jobs WHERE tenant = ?3)",
                params![id, now_millis(), tenant],
            )?;
            // Nothing changed: either it is pending already or the tenant has no such delivery.
            let outcome = if replayed > 0 {
                ReplayOutcome::Replayed
            } else if tx
                .query_row(
                    "SELECT 1 FROM webhook_deliveries WHERE id = ?1 AND job_id IN (SELECT id FROM jobs WHERE tenant = ?2)",
                    params![id, tenant],
                    |_| Ok(()),
                )
                .optional()?
                .is_some()
            {
                ReplayOutcome::AlreadyPending
            } else {
                ReplayOutcome::NotFound
            };
            tx.commit()?;
            Ok(outcome)
        })
        .boxed()
    }

    fn replay_dead(
        &self,
        tenant: &TenantName,
        job: &JobId,
    ) -> BoxFuture<'_, Result<Option<usize>, StoreError>> {
        let job = job.as_str().to_owned();
        let tenant = tenant.as_str().to_owned();
        self.write(move |conn| {
            let tx = conn.transaction()?;
            let known = tx
                .query_row(
                    "SELECT 1 FROM jobs WHERE id = ?1 AND tenant = ?2",
                    params![job, tenant],
                    |_| Ok(()),
                )
                .optional()?
                .is_some();
            if !known {
                return Ok(None);
            }
            let replayed = tx.execute(
                "UPDATE webhook_deliveries SET state = 'pending', attempts = 0, next_at = ?2, updated_at = ?2
                 WHERE job_id = ?1 AND state = 'dead'",
                params![job, now_millis()],
            )?;
            tx.commit()?;
            Ok(known.then_some(replayed))
        })
        .boxed()
    }

    fn count_pending_deliveries(&self) -> BoxFuture<'_, Result<usize, StoreError>> {
        self.count("SELECT COUNT(*) FROM webhook_deliveries WHERE state = 'pending'")
    }

    fn delivery_counts(&self) -> BoxFuture<'_, Result<Vec<(DeliveryState, usize)>, StoreError>> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached("SELECT state, COUNT(*) FROM webhook_deliveries GROUP BY state")?;
            let rows = stmt
                .query_map([], |row| {
                    Ok((row.get::<_, String>(0)?, to_usize(row.get::<_, i64>(1)?)))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter()
                .map(|(state, n)| {
                    let state = parse_delivery_state(&state)?;
                    Ok((state, n))
                })
                .collect()
        })
        .boxed()
    }

    fn disable_target(&self, url: &str) -> BoxFuture<'_, Result<(), StoreError>> {
        self.meta_set(format!("webhook_disabled:{url}"), now_millis().to_string())
    }

    fn is_target_disabled(&self, url: &str) -> BoxFuture<'_, Result<bool, StoreError>> {
        let value = self.meta_get(format!("webhook_disabled:{url}"));
        async move { Ok(value.await?.is_some()) }.boxed()
    }
}

#[cfg(test)]
mod tests;
