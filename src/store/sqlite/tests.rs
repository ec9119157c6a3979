//! `SqliteStore` specifics: WAL, the read-only reader pool, a busy writer, error classification,
//! corruption. What every store promises is tested in `store/contract.rs`, against every backend.
use std::sync::mpsc;

use rusqlite::ErrorCode;

use super::*;
use crate::store::contract::{default_tenant, new_job};

fn file_store_path(dir: &tempfile::TempDir) -> StorePath {
    StorePath::File(dir.path().join("evalgate.db"))
}

async fn open(path: &StorePath) -> SqliteStore {
    SqliteStore::open(&StoreConfig {
        in_force: "sqlite",
        path: path.clone(),
        read_connections: 2,
        postgres: None,
    })
    .await
    .unwrap()
}

async fn memory() -> SqliteStore {
    open(&StorePath::Memory).await
}

#[tokio::test]
async fn opens_migrates_and_reopens_a_file_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = StorePath::File(dir.path().join("nested/evalgate.db"));
    let store = open(&path).await;
    store.ping().await.unwrap();
    drop(store);
    let again = open(&path).await;
    let (mode, version) = again
        .write(|c| {
            let mode: String = c.pragma_query_value(None, "journal_mode", |r| r.get(0))?;
            let version: i64 = c.pragma_query_value(None, "user_version", |r| r.get(0))?;
            Ok((mode, version))
        })
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    assert_eq!(version, i64::try_from(MIGRATIONS.len()).unwrap());
}

/// Waits on the blocking side until the test releases it (or drops the sender).
fn park(release: &mpsc::Receiver<()>) {
    // An Err means the test ended (or failed) first: either way, stop holding.
    release.recv().ok();
}

/// The deadline after which a read counts as blocked.
const READ_LIMIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn reads_run_on_read_only_connections_and_see_committed_writes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&file_store_path(&dir)).await;
    assert!(store.readers.is_some(), "a file store has readers");
    let job = new_job(2);
    let id = job.id.clone();
    store.create_job(job, 0).await.unwrap();
    let record = store.job(&id).await.unwrap().unwrap();
    assert_eq!(record.batches.len(), 2);
    let tenant = default_tenant();
    let query = ListQuery {
        tenant: &tenant,
        state: None,
        limit: 10,
        after: None,
    };
    assert_eq!(store.list_jobs(query).await.unwrap().len(), 1);
    assert_eq!(store.count_active(None).await.unwrap(), 1);
    let refused = store
        .read(|conn| Ok(conn.execute("DELETE FROM jobs", [])?))
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) if e.code == ErrorCode::ReadOnly),
        "{refused:?}"
    );
    assert!(store.job(&id).await.unwrap().is_some(), "nothing deleted");
}

#[tokio::test]
async fn a_long_write_transaction_blocks_neither_reads_nor_ping() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&file_store_path(&dir)).await;
    let job = new_job(1);
    let id = job.id.clone();
    store.create_job(job, 0).await.unwrap();

    // The writer opens a transaction, changes the job, and waits before committing.
    let (held_tx, held_rx) = tokio::sync::oneshot::channel();
    let (release_tx, release_rx) = mpsc::channel();
    let writer = store.clone();
    let held_id = id.as_str().to_owned();
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(async move {
        writer
            .write(move |conn| {
                let tx = conn.transaction()?;
                tx.execute("UPDATE jobs SET error = 'held' WHERE id = ?1", [&held_id])?;
                held_tx.send(()).ok();
                park(&release_rx);
                tx.commit()?;
                Ok(())
            })
            .await
    });
    held_rx.await.unwrap();
    assert!(store.writer.try_lock().is_err(), "the writer is busy");

    let seen = tokio::time::timeout(READ_LIMIT, store.job(&id))
        .await
        .expect("a read completes while the writer holds its transaction")
        .unwrap()
        .unwrap();
    assert_eq!(seen.error, None, "uncommitted data is not visible");
    tokio::time::timeout(READ_LIMIT, store.ping())
        .await
        .expect("ping answers while the writer is busy")
        .unwrap();

    release_tx.send(()).unwrap();
    tasks.join_next().await.unwrap().unwrap().unwrap();
    let committed = store.job(&id).await.unwrap().unwrap();
    assert_eq!(committed.error.as_deref(), Some("held"), "committed: seen");
}

#[tokio::test]
async fn a_memory_store_reads_on_its_writer() {
    let store = memory().await;
    assert!(
        store.readers.is_none(),
        "no second connection sees :memory:"
    );
    let job = new_job(1);
    let id = job.id.clone();
    store.create_job(job, 0).await.unwrap();
    assert_eq!(store.job(&id).await.unwrap().unwrap().id, id);
    assert_eq!(store.count_active(None).await.unwrap(), 1);
    store.ping().await.unwrap();
}

#[tokio::test]
async fn a_read_times_out_transiently_while_every_reader_is_busy() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open_with(&file_store_path(&dir), 1, Duration::from_millis(100))
        .await
        .unwrap();
    let (held_tx, held_rx) = tokio::sync::oneshot::channel();
    let (release_tx, release_rx) = mpsc::channel();
    let holder = store.clone();
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(async move {
        holder
            .read(move |_| {
                held_tx.send(()).ok();
                park(&release_rx);
                Ok(())
            })
            .await
    });
    held_rx.await.unwrap();
    let error = store.ping().await.unwrap_err();
    assert!(matches!(error, StoreError::PoolTimeout(_)), "{error:?}");
    assert!(error.is_transient());
    release_tx.send(()).unwrap();
    tasks.join_next().await.unwrap().unwrap().unwrap();
    store.ping().await.unwrap();
}

#[tokio::test]
async fn a_reader_whose_call_panicked_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open_with(&file_store_path(&dir), 1, READ_LIMIT)
        .await
        .unwrap();
    let pool = Arc::clone(store.readers.as_ref().unwrap());
    let error = store
        .read(|_| -> Result<(), StoreError> { panic!("a bug mid-read") })
        .await
        .unwrap_err();
    assert!(
        matches!(&error, StoreError::Join(e) if e.is_panic()),
        "{error:?}"
    );
    assert!(!error.is_transient(), "a panic does not pass by itself");
    assert_eq!(pool.idle(), 0, "the connection went with the panic");
    store.ping().await.unwrap();
    assert_eq!(pool.idle(), 1, "a new connection took its place");
}

fn sqlite_code(error: &StoreError) -> Option<ErrorCode> {
    match error {
        StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => Some(e.code),
        _ => None,
    }
}

#[test]
fn conditions_that_pass_by_themselves_are_transient() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");

    // Busy: another connection holds the write lock and this one does not wait.
    let holder = Connection::open(&path).unwrap();
    holder
        .execute_batch(
            "PRAGMA journal_mode = WAL; CREATE TABLE t (x INTEGER PRIMARY KEY, b BLOB);
             BEGIN IMMEDIATE; INSERT INTO t (x) VALUES (1);",
        )
        .unwrap();
    let other = Connection::open(&path).unwrap();
    other.busy_timeout(Duration::ZERO).unwrap();
    let busy = StoreError::from(
        other
            .execute("INSERT INTO t (x) VALUES (2)", [])
            .unwrap_err(),
    );
    assert_eq!(sqlite_code(&busy), Some(ErrorCode::DatabaseBusy));
    assert!(busy.is_transient());
    assert!(
        std::error::Error::source(&busy).is_some(),
        "keeps its source"
    );
    holder.execute_batch("COMMIT").unwrap();

    // Locked: a table dropped while a statement of the same connection still reads it.
    let conn = Connection::open_in_memory().unwrap();
    conn.execute_batch("CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (1), (2);")
        .unwrap();
    let mut reading = conn.prepare("SELECT x FROM t").unwrap();
    let mut rows = reading.query([]).unwrap();
    assert!(rows.next().unwrap().is_some());
    let locked = StoreError::from(conn.execute("DROP TABLE t", []).unwrap_err());
    assert_eq!(sqlite_code(&locked), Some(ErrorCode::DatabaseLocked));
    assert!(locked.is_transient());
    drop(rows);

    // Full: the database may not grow past its current size.
    let pages: i64 = other
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .unwrap();
    other.pragma_update(None, "max_page_count", pages).unwrap();
    let full = StoreError::from(
        other
            .execute("INSERT INTO t (x, b) VALUES (3, zeroblob(1000000))", [])
            .unwrap_err(),
    );
    assert_eq!(sqlite_code(&full), Some(ErrorCode::DiskFull));
    assert!(full.is_transient());

    // Cannot open: the directory is missing (until someone creates it).
    let missing = StoreError::from(Connection::open(dir.path().join("missing/t.db")).unwrap_err());
    assert_eq!(sqlite_code(&missing), Some(ErrorCode::CannotOpen));
    assert!(missing.is_transient());

    // An I/O error (not producible on demand here): the code SQLite reports for one.
    let io = StoreError::from(rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR_WRITE),
        None,
    ));
    assert_eq!(sqlite_code(&io), Some(ErrorCode::SystemIoFailure));
    assert!(io.is_transient());
}

#[tokio::test]
async fn a_cancelled_call_is_transient() {
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(std::future::pending::<()>());
    tasks.abort_all();
    let cancelled = StoreError::from(tasks.join_next().await.unwrap().unwrap_err());
    assert!(cancelled.is_transient());
}

#[tokio::test]
async fn corruption_a_newer_schema_constraints_and_unreadable_values_are_permanent() {
    let dir = tempfile::tempdir().unwrap();

    // A stored value this evalgate cannot read.
    let store = open(&file_store_path(&dir)).await;
    let job = new_job(1);
    let id = job.id.clone();
    store.create_job(job, 0).await.unwrap();
    let raw_id = id.as_str().to_owned();
    store
        .write(move |conn| {
            conn.execute("UPDATE jobs SET state = 'bogus' WHERE id = ?1", [&raw_id])?;
            Ok(())
        })
        .await
        .unwrap();
    let corrupt = store.job(&id).await.unwrap_err();
    assert!(matches!(corrupt, StoreError::Corrupt(_)), "{corrupt:?}");
    assert!(!corrupt.is_transient());

    // A constraint violation: the same job twice.
    let duplicate = store
        .write(move |conn| {
            conn.execute(
                "INSERT INTO jobs (id, kind, origin, state, total_items, members, created_at, updated_at)
                 SELECT id, kind, origin, state, total_items, members, created_at, updated_at FROM jobs",
                [],
            )?;
            Ok(())
        })
        .await
        .unwrap_err();
    assert_eq!(
        sqlite_code(&duplicate),
        Some(ErrorCode::ConstraintViolation)
    );
    assert!(!duplicate.is_transient());
    drop(store);

    // A schema newer than this build.
    let newer = dir.path().join("newer.db");
    Connection::open(&newer)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    let too_new = SqliteStore::open_with(&StorePath::File(newer), 1, READ_LIMIT)
        .await
        .unwrap_err();
    assert!(
        matches!(too_new, StoreError::TooNew { found: 99, .. }),
        "{too_new:?}"
    );
    assert!(!too_new.is_transient());

    // A file that is not a database.
    let garbage = dir.path().join("garbage.db");
    std::fs::write(&garbage, vec![0x5a_u8; 8192]).unwrap();
    let not_a_db = SqliteStore::open_with(&StorePath::File(garbage), 1, READ_LIMIT)
        .await
        .unwrap_err();
    assert_eq!(sqlite_code(&not_a_db), Some(ErrorCode::NotADatabase));
    assert!(!not_a_db.is_transient());
}
