//! `valiqor-emulator`: the Valiqor backend emulator as a standalone server (demos, SDK runs, benchmarks), and with
//! `--arize-listen` the Arize tasks API emulator beside it on its own listener.
//! Prints `listening on http://IP:PORT` on stdout once bound (then `arize listening on http://IP:PORT` when the
//! Arize emulator is enabled) and serves until SIGINT/SIGTERM.

use std::{net::SocketAddr, process::ExitCode, time::Duration};

use clap::Parser;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;
use valiqor_emulator::{ArizeConfig, ArizeEmulator, Emulator, EmulatorConfig, Faults};

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
    /// Also serve the Arize tasks API emulator on this address (port 0 picks a free port). The fault and latency
    /// options apply to it too.
    #[arg(long)]
    arize_listen: Option<SocketAddr>,
    /// Arize emulator: accept only this bearer key (default: any non-empty key).
    #[arg(long)]
    arize_api_key: Option<String>,
    /// Arize emulator: how long a triggered task run takes to finish, e.g. `3s`, `500ms`.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    arize_run_duration: Duration,
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
            faults: self.faults(),
        }
    }

    fn arize_config(&self) -> ArizeConfig {
        ArizeConfig {
            api_key: self.arize_api_key.clone(),
            run_duration: self.arize_run_duration,
            faults: self.faults(),
        }
    }

    fn faults(&self) -> Faults {
        Faults {
            error_rate: self.error_rate,
            rate_limit_rate: self.rate_limit_rate,
            retry_after_secs: self.retry_after,
            latency: self.latency,
            drop_rate: self.drop_rate,
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
    let arize = match args.arize_listen {
        None => None,
        Some(addr) => match ArizeEmulator::bind(args.arize_config(), addr).await {
            Ok(arize) => Some(arize),
            Err(error) => {
                tracing::error!(%error, listen = %addr, "cannot bind the Arize emulator");
                return ExitCode::FAILURE;
            }
        },
    };
    announce("listening on", &emulator.handle().base_url());
    if let Some(arize) = &arize {
        announce("arize listening on", &arize.handle().base_url());
    }
    let shutdown = CancellationToken::new();
    let mut servers = JoinSet::new();
    servers.spawn(emulator.run(shutdown.clone()));
    if let Some(arize) = arize {
        servers.spawn(arize.run(shutdown.clone()));
    }
    if serve_until_signal(servers, &shutdown).await {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Waits for SIGINT/SIGTERM (or a server ending on its own), stops every server and waits for them; whether all
/// of them ended cleanly.
async fn serve_until_signal(
    mut servers: JoinSet<std::io::Result<()>>,
    shutdown: &CancellationToken,
) -> bool {
    let signal = shutdown_signal();
    tokio::pin!(signal);
    let mut clean = true;
    loop {
        tokio::select! {
            () = &mut signal, if !shutdown.is_cancelled() => {
                tracing::info!("shutting down");
                shutdown.cancel();
            }
            joined = servers.join_next() => match joined {
                None => return clean,
                Some(Ok(Ok(()))) => shutdown.cancel(),
                Some(Ok(Err(error))) => {
                    tracing::error!(%error, "emulator failed");
                    clean = false;
                    shutdown.cancel();
                }
                Some(Err(error)) => {
                    tracing::error!(%error, "emulator task failed");
                    clean = false;
                    shutdown.cancel();
                }
            },
        }
    }
}

#[expect(
    clippy::print_stdout,
    reason = "the bound address on stdout is the binary's interface for scripts"
)]
fn announce(what: &str, base_url: &str) {
    println!("{what} {base_url}");
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
