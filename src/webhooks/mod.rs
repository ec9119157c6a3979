//! Webhooks: durable, signed (Standard Webhooks), retried, SSRF-safe delivery of job results.
//!
//! [`outbox`] decides what is delivered when a job ends (written in the job's final
//! transaction); [`dispatcher`] delivers it through the one [`client`], whose resolver applies
//! the [`ssrf`] target policy to every address it connects to; [`signing`] signs.
mod client;
pub(crate) mod dispatcher;
pub(crate) mod outbox;
pub mod signing;
pub(crate) mod ssrf;
