//! The durable store: `JobStore` is every read and write of persistent state; `SqliteStore` is the
//! default implementation. Nothing outside this module knows SQL.
//!
//! Today the store holds only its schema version; managed jobs, batches and the webhook outbox
//! are added here as migrations, behind the same trait, so a `PostgreSQL` store can follow.
pub mod sqlite;

use futures::future::BoxFuture;

pub use self::sqlite::SqliteStore;

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
    #[error("the store is newer (schema {found}) than this evalgate (schema {supported})")]
    TooNew { found: i64, supported: i64 },
}

/// Dyn-compatible, async access to persistent state.
pub trait JobStore: Send + Sync + std::fmt::Debug {
    /// A cheap round trip proving the store answers (readiness).
    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>>;
}
