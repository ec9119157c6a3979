//! `JobsError`: what the jobs service can answer instead of a result. The HTTP layer maps it to a
//! status in one place (`http::error`); every variant that wraps a failure keeps it as its source.
use std::time::Duration;

use super::finish::FinishError;
use crate::{store::StoreError, types::JobId};

#[derive(Debug, thiserror::Error)]
pub(crate) enum JobsError {
    /// The request cannot become a job as sent (dataset, options or webhook are invalid).
    #[error("{0}")]
    Invalid(String),
    #[error("job {0} not found")]
    NotFound(String),
    #[error("job {id} is {state}; the result is not ready")]
    NotReady { id: JobId, state: &'static str },
    #[error("Idempotency-Key was already used for job {0} with a different body")]
    IdempotencyConflict(JobId),
    /// A bound was reached (`jobs.max_active_jobs`, `webhooks.max_pending`): try again later.
    #[error("{0} reached; retry shortly")]
    AtCapacity(&'static str, Duration),
    /// The caller's tenant has `max_active_jobs` unfinished jobs: its own limit, not the service's.
    #[error("the tenant's max_active_jobs is reached; retry once one of its jobs ends")]
    TenantAtCapacity(Duration),
    /// The store failed in a way that can pass by itself (busy, disk full, I/O): try again later.
    #[error("the job store is unavailable")]
    StoreUnavailable(#[source] StoreError, Duration),
    /// The store failed for good (corrupt data, a bug).
    #[error("the job store failed")]
    Store(#[source] StoreError),
    /// Ending the job failed for a reason that is not the store's.
    #[error("the job could not be ended")]
    Finish(#[source] FinishError),
    /// A stored result is not the JSON it was when it was stored.
    #[error("the stored result of job {id} is unreadable")]
    CorruptResult {
        id: JobId,
        #[source]
        source: serde_json::Error,
    },
}

impl JobsError {
    /// Classifies a store error: transient ones ask the caller to come back after `retry_after`.
    pub(crate) fn store(error: StoreError, retry_after: Duration) -> Self {
        if error.is_transient() {
            Self::StoreUnavailable(error, retry_after)
        } else {
            Self::Store(error)
        }
    }
}
