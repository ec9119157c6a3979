//! Webhook delivery building blocks: Standard Webhooks signing ([`signing`]).
pub mod signing;
