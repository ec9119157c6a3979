//! The Valiqor backend emulator (placeholder until it lands).
