//! Webhook delivery building blocks: Standard Webhooks signing ([`signing`]) and the SSRF guard
//! that decides which targets a delivery may connect to ([`ssrf`]).
pub mod signing;
pub mod ssrf;
