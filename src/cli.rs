//! Command line: `evalgate [--config FILE] [--demo]`, `check-config`, `healthcheck URL`,
//! `submit FILE --kind KIND [--wait]`.
use std::{path::PathBuf, process::ExitCode};

use clap::{Args as ClapArgs, Parser, Subcommand, ValueEnum};

use crate::types::JobKind;

/// sysexits `EX_USAGE`: the command line (or the input it names) is wrong.
pub const EX_USAGE: u8 = 64;

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
    // A build without the `demo` feature hides the flag; main refuses it with exit code 64.
    #[arg(long)]
    #[cfg_attr(not(feature = "demo"), arg(hide = true))]
    pub demo: bool,

    /// Log format, overriding `telemetry.format`.
    #[arg(long, value_enum, global = true)]
    pub log_format: Option<LogFormatArg>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

impl Args {
    /// Parses the command line. A usage error is printed and becomes exit code 64 (`EX_USAGE`)
    /// rather than clap's 2, which `submit` uses for `completed_with_errors`; `--help` and
    /// `--version` print and become exit code 0.
    pub fn parse_or_exit() -> Result<Self, ExitCode> {
        Self::try_parse().map_err(|error| {
            // Nothing better to do if the terminal is gone.
            let _ = error.print();
            if error.use_stderr() {
                ExitCode::from(EX_USAGE)
            } else {
                ExitCode::SUCCESS
            }
        })
    }
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
    /// Submit a dataset (JSON array or JSONL) as a managed job, or an Arize task run
    /// (`--kind arize_task_run --task ID`); `--wait` follows it to the end.
    ///
    /// Exit codes: 0 accepted (or `completed` with `--wait`), 2 `completed_with_errors`,
    /// 1 `failed`, `cancelled` or an error, 64 bad input (nothing is sent).
    Submit(SubmitArgs),
}

/// `evalgate submit`.
#[derive(Debug, Clone, ClapArgs)]
pub struct SubmitArgs {
    /// The dataset: a JSON array, or JSONL (one item per non-empty line); `-` reads stdin.
    /// Not for `--kind arize_task_run`, which takes `--task` or `--run-id` instead.
    pub file: Option<PathBuf>,

    /// What the job evaluates.
    #[arg(long, value_enum)]
    pub kind: KindArg,

    /// Follow the job (progress on stderr) and write its merged result.
    #[arg(long)]
    pub wait: bool,

    /// The evalgate API.
    #[arg(long, env = "EVALGATE_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,

    /// With `--wait`: write the result to this file instead of stdout.
    #[arg(long, short = 'o', requires = "wait")]
    pub output: Option<PathBuf>,

    /// Upstream options of that kind, a JSON object, e.g. `{"run_eval": true}`.
    #[arg(long, conflicts_with = "options_file")]
    pub options: Option<String>,

    /// The same, read from a file.
    #[arg(long)]
    pub options_file: Option<PathBuf>,

    /// Same key and same request within the server's window: the same job, not a new one.
    #[arg(long)]
    pub idempotency_key: Option<String>,

    /// `--kind arize_task_run`: the Arize task to trigger one run of (`--options` are the
    /// trigger request's fields).
    #[arg(long, conflicts_with = "run_id")]
    pub task: Option<String>,

    /// `--kind arize_task_run`: watch a run you triggered yourself instead.
    #[arg(long)]
    pub run_id: Option<String>,
}

/// `--kind`: the job kinds, spelled as on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum KindArg {
    FailureAnalysis,
    Evaluation,
    SecurityAudit,
    ArizeTaskRun,
}

impl From<KindArg> for JobKind {
    fn from(kind: KindArg) -> Self {
        match kind {
            KindArg::FailureAnalysis => Self::FailureAnalysis,
            KindArg::Evaluation => Self::Evaluation,
            KindArg::SecurityAudit => Self::SecurityAudit,
            KindArg::ArizeTaskRun => Self::ArizeTaskRun,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormatArg {
    Json,
    Pretty,
}
