//! Managed jobs: a dataset split into batches, submitted and polled upstream on the caller's
//! behalf, and merged back into one result in the original order.
//!
//! `service` is what the HTTP layer calls; `engine` drives batches, deciding with the pure
//! functions of `transition`; `finish` is the one place a job ends; `merge` combines results;
//! `view` is how a job looks from outside. The vocabulary (ids, kinds, states) is `crate::types`.
pub mod engine;
pub(crate) mod error;
pub(crate) mod finish;
pub(crate) mod hub;
pub(crate) mod limits;
pub mod merge;
mod scheduler;
pub(crate) mod service;
mod transition;
pub(crate) mod view;
