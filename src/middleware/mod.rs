//! Cross-cutting request handling: rate limits, request ids, metrics.
pub mod metrics;
pub mod rate_limit;
pub mod request_id;
