//! Cross-cutting request handling: rate limits, request ids, metrics, the shutdown cut-off.
pub(crate) mod hard_stop;
pub(crate) mod metrics;
pub(crate) mod rate_limit;
pub(crate) mod request_id;
