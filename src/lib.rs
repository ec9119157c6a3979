//! evalgate: an HTTP gateway sidecar in front of AI evaluation platforms.
pub mod emulator;
