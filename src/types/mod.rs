//! The ground floor: small domain types every layer shares. Imports nothing of the crate.
//!
//! Ids, the job and batch vocabularies, wall-clock timestamps, header names, the redacting
//! `Secret` and the text form of webhook signing secrets. Anything here is plain data with no I/O.
mod ids;
mod secret;
mod states;
mod tenant;
mod time;
mod webhook_secret;

pub use self::{
    ids::{JOB_ID_PREFIX, JobId},
    secret::{REDACTED, Secret},
    states::{BatchState, JobKind, JobState, Origin},
    tenant::{DEFAULT_TENANT, TenantName, TokenDigest},
    time::{Millis, now_millis, rfc3339},
    webhook_secret::{WEBHOOK_SECRET_PREFIX, WebhookSecretError, WebhookSecretKey},
};

/// The request id header: kept from the caller or generated, echoed on the response, sent upstream.
pub const REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");
