//! Webhooks: durable, signed (Standard Webhooks), retried, SSRF-safe delivery of job results.
//!
//! [`outbox`] decides what is delivered when a job ends (written in the job's final
//! transaction); [`dispatcher`] delivers it; [`signing`] signs; [`ssrf`] decides which targets a
//! delivery may connect to.
pub mod dispatcher;
pub mod outbox;
pub mod signing;
pub mod ssrf;
