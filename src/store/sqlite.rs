//! `SqliteStore`: embedded `SQLite` (bundled), WAL mode, schema migrated at open.
//!
//! rusqlite is blocking, so every call runs on tokio's blocking pool; one connection behind a
//! mutex serialises writers, which is what `SQLite` does anyway.
use std::{
    path::Path,
    sync::{Arc, Mutex},
};

use futures::{FutureExt, future::BoxFuture};
use rusqlite::Connection;

use super::{JobStore, StoreError};
use crate::config::StorePath;

/// Schema migrations, applied in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    // 1: bookkeeping only; the managed-jobs tables arrive as migration 2.
    "CREATE TABLE IF NOT EXISTS evalgate_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT;",
];

#[derive(Debug, Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
}

// === impl SqliteStore ===

impl SqliteStore {
    /// Opens (creating if needed) and migrates the store. Fails startup on any problem.
    pub async fn open(path: &StorePath) -> Result<Self, StoreError> {
        let path = path.clone();
        let conn = tokio::task::spawn_blocking(move || open_blocking(&path)).await??;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    async fn with_conn<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            // A poisoned lock means a panic mid-call; the connection itself is still usable.
            let mut guard = conn
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            f(&mut guard)
        })
        .await?
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
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
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

impl JobStore for SqliteStore {
    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        self.with_conn(|conn| {
            conn.query_row("SELECT 1", [], |_| Ok(()))?;
            Ok(())
        })
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn opens_migrates_and_reopens_a_file_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = StorePath::File(dir.path().join("nested/evalgate.db"));
        let store = SqliteStore::open(&path).await.unwrap();
        store.ping().await.unwrap();
        drop(store);
        let again = SqliteStore::open(&path).await.unwrap();
        let (mode, version) = again
            .with_conn(|c| {
                let mode: String = c.pragma_query_value(None, "journal_mode", |r| r.get(0))?;
                let version: i64 = c.pragma_query_value(None, "user_version", |r| r.get(0))?;
                Ok((mode, version))
            })
            .await
            .unwrap();
        assert_eq!(mode, "wal");
        assert_eq!(version, i64::try_from(MIGRATIONS.len()).unwrap());
    }
}
