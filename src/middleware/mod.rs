//! Cross-cutting request handling: rate limits, request ids, metrics, the shutdown cut-off.
pub mod hard_stop;
pub mod metrics;
pub mod rate_limit;
pub mod request_id;
