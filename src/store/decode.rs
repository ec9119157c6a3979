//! Reading stored values back, shared by both stores: integer conversions and the parsers of
//! stored names, where a value this evalgate cannot read is `StoreError::Corrupt`.
use super::{DeliveryState, StoreError};
use crate::types::{BatchState, JobId, JobKind, JobState, TenantName};

/// The job columns every job read selects, in this order.
pub(super) const JOB_COLUMNS: &str =
    "id, kind, state, total_items, error, webhook, created_at, started_at, finished_at, tenant";

pub(super) fn to_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

pub(super) fn to_usize(n: i64) -> usize {
    usize::try_from(n).unwrap_or(0)
}

pub(super) fn to_u32(n: i64) -> u32 {
    u32::try_from(n).unwrap_or(0)
}

pub(super) fn corrupt(what: &str, value: &str) -> StoreError {
    StoreError::Corrupt(format!("{what} {value:?}"))
}

pub(super) fn parse_job_id(s: &str) -> Result<JobId, StoreError> {
    JobId::parse(s).ok_or_else(|| corrupt("job id", s))
}

pub(super) fn parse_job_state(s: &str) -> Result<JobState, StoreError> {
    JobState::parse(s).ok_or_else(|| corrupt("job state", s))
}

pub(super) fn parse_tenant(s: &str) -> Result<TenantName, StoreError> {
    TenantName::parse(s).ok_or_else(|| corrupt("tenant", s))
}

pub(super) fn parse_kind(s: &str) -> Result<JobKind, StoreError> {
    JobKind::parse(s).ok_or_else(|| corrupt("job kind", s))
}

pub(super) fn parse_batch_state(s: &str) -> Result<BatchState, StoreError> {
    BatchState::parse(s).ok_or_else(|| corrupt("batch state", s))
}

pub(super) fn parse_delivery_state(s: &str) -> Result<DeliveryState, StoreError> {
    DeliveryState::parse(s).ok_or_else(|| corrupt("delivery state", s))
}
