//! A small, fixed pool of read-only `SQLite` connections.
//!
//! At most `size` connections exist; a call waits (bounded) for a free one, then runs on tokio's
//! blocking pool. A connection whose call panicked is dropped (its state is unknown); the next
//! call that finds no idle connection opens a fresh one in its place.
//!
//! Own code rather than `r2d2_sqlite` or `deadpool-sqlite`: both build on an older rusqlite than
//! this crate, and two rusqlite versions cannot link two `SQLite` libraries into one binary.
use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use rusqlite::{Connection, OpenFlags};
use tokio::sync::Semaphore;

use super::StoreError;

/// How long a reader waits for `SQLite` locks (rare in WAL mode: recovery, a checkpoint restart).
pub(super) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub(super) struct ReadPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    /// One permit per connection: a holder may take one idle connection (or open one).
    permits: Arc<Semaphore>,
    /// How long a call waits for a free connection before failing with `PoolTimeout`.
    wait: Duration,
}

impl ReadPool {
    /// Opens `size` read-only connections to `path` now, so that a bad file fails startup.
    pub(super) fn open(path: &Path, size: usize, wait: Duration) -> Result<Self, StoreError> {
        let idle = (0..size)
            .map(|_| open_reader(path))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            path: path.to_owned(),
            idle: Mutex::new(idle),
            permits: Arc::new(Semaphore::new(size)),
            wait,
        })
    }

    /// Runs `f` on a free connection (waiting at most `wait` for one) on the blocking pool.
    pub(super) async fn run<T, F>(self: &Arc<Self>, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let permit = tokio::time::timeout(self.wait, Arc::clone(&self.permits).acquire_owned())
            .await
            .map_err(|_elapsed| StoreError::PoolTimeout(self.wait))?
            .map_err(StoreError::PoolClosed)?;
        let pool = Arc::clone(self);
        // The permit moves into the blocking task: if the caller stops waiting, the connection
        // stays taken until the call has run. A panic in `f` drops the connection with the stack
        // (its state is unknown) and frees the permit; a later call opens a new one.
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let mut conn = pool.take()?;
            let out = f(&mut conn);
            pool.give_back(conn);
            out
        })
        .await?
    }

    /// An idle connection, or a new one in the place of one that was dropped.
    fn take(&self) -> Result<Connection, StoreError> {
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        match idle {
            Some(conn) => Ok(conn),
            None => open_reader(&self.path),
        }
    }

    fn give_back(&self, conn: Connection) {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(conn);
    }

    /// Idle connections (tests).
    #[cfg(test)]
    pub(super) fn idle(&self) -> usize {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// A read-only connection: it cannot write, whatever it is asked.
fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(conn)
}
