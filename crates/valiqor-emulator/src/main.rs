//! `valiqor-emulator`: the Valiqor backend emulator as a standalone server (demos, SDK runs, benchmarks).
//! Prints `listening on http://IP:PORT` on stdout once bound and serves until SIGINT/SIGTERM.

use std::{net::SocketAddr, process::ExitCode, time::Duration};

use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;
use valiqor_emulator::{Emulator, EmulatorConfig, Faults};

/// Serve an emulated Valiqor v2 backend (failure analysis, eval, security, traces) with scriptable faults.
#[derive(Debug, Parser)]
#[command(name = "valiqor-emulator", version)]
struct Args {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Accept only this bearer key (default: any key starting with `vq_`).
    #[arg(long)]
    api_key: Option<String>,
    /// Submissions with at most this many items are answered inline (200); bigger ones become 202 jobs.
    #[arg(long, default_value_t = 10)]
    inline_max_items: usize,
    /// Submissions with more items are rejected with 400 `dataset_too_large`.
    #[arg(long, default_value_t = 1000)]
    max_dataset_items: usize,
    /// How long an async job takes to complete, e.g. `5s`, `500ms`.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    job_duration: Duration,
    /// Fraction of requests answered 500.
    #[arg(long, default_value_t = 0.0, value_parser = rate)]
    error_rate: f64,
    /// Fraction of requests answered 429 with `Retry-After`.
    #[arg(long, default_value_t = 0.0, value_parser = rate)]
    rate_limit_rate: f64,
    /// `Retry-After` seconds on emulated 429/503 answers.
    #[arg(long, default_value_t = 1)]
    retry_after: u64,
    /// Delay added before every response, e.g. `50ms`.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    latency: Duration,
    /// Fraction of requests whose connection is closed without a response.
    #[arg(long, default_value_t = 0.0, value_parser = rate)]
    drop_rate: f64,
}

fn rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("'{s}' is not a rate between 0 and 1")),
    }
}

impl Args {
    fn config(&self) -> EmulatorConfig {
        EmulatorConfig {
            api_key: self.api_key.clone(),
            inline_max_items: self.inline_max_items,
            max_dataset_items: self.max_dataset_items,
            job_duration: self.job_duration,
            faults: Faults {
                error_rate: self.error_rate,
                rate_limit_rate: self.rate_limit_rate,
                retry_after_secs: self.retry_after,
                latency: self.latency,
                drop_rate: self.drop_rate,
            },
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let emulator = match Emulator::bind(args.config(), args.listen).await {
        Ok(emulator) => emulator,
        Err(error) => {
            tracing::error!(%error, listen = %args.listen, "cannot bind");
            return ExitCode::FAILURE;
        }
    };
    announce(&emulator.handle().base_url());
    let shutdown = CancellationToken::new();
    let run = emulator.run(shutdown.clone());
    tokio::pin!(run);
    let result = tokio::select! {
        result = &mut run => result,
        () = shutdown_signal() => {
            tracing::info!("shutting down");
            shutdown.cancel();
            run.await
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "emulator failed");
            ExitCode::FAILURE
        }
    }
}

#[expect(
    clippy::print_stdout,
    reason = "the bound address on stdout is the binary's interface for scripts"
)]
fn announce(base_url: &str) {
    println!("listening on {base_url}");
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::warn!(%error, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}
