//! Small domain newtypes shared across modules.
pub mod secret;

pub use secret::Secret;
