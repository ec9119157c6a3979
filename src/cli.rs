//! Command line: `evalgate [--config FILE] [--demo]`, `check-config`, `healthcheck URL`.
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "evalgate",
    version,
    about = "HTTP gateway sidecar for AI evaluation platforms"
)]
pub struct Args {
    /// Configuration file (TOML) layered over the built-in defaults.
    #[arg(long, short = 'c', env = "EVALGATE_CONFIG", global = true)]
    pub config: Option<PathBuf>,

    /// Serve over the built-in Valiqor emulator on a loopback port, with a demo key: no account needed.
    #[arg(long)]
    pub demo: bool,

    /// Log format, overriding `telemetry.format`.
    #[arg(long, value_enum, global = true)]
    pub log_format: Option<LogFormatArg>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate the configuration, print it (secrets as *****), exit 0 or 78.
    CheckConfig,
    /// Exit 0 when URL answers 200 within 5 s (for container health checks).
    Healthcheck {
        /// e.g. <http://127.0.0.1:9090/livez>
        url: String,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormatArg {
    Json,
    Pretty,
}
