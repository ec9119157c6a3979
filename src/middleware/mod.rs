//! Cross-cutting request handling: caller identity, rate limits, request ids, metrics, the
//! shutdown cut-off, and JSON-only writes.
pub(crate) mod allowed_hosts;
pub(crate) mod auth;
pub(crate) mod hard_stop;
pub(crate) mod json_only;
pub(crate) mod metrics;
pub(crate) mod rate_limit;
pub(crate) mod request_id;
