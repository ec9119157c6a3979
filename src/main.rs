//! The `evalgate` binary: parse the command line, load config, start telemetry, run. No logic.
use std::{process::ExitCode, time::Duration};

use evalgate::{
    Listeners, RunError,
    cli::{Args, Command, LogFormatArg},
    config::{Config, LogFormat, Sources},
    telemetry,
};
use tokio_util::sync::CancellationToken;

use crate::demo::Demo;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// sysexits `EX_CONFIG`: the configuration is wrong.
const EX_CONFIG: u8 = 78;

/// Configuration overrides, `(dotted key, value)`, layered over the file and the environment.
type Overrides = Vec<(String, String)>;

#[tokio::main]
async fn main() -> ExitCode {
    let args = match Args::parse_or_exit() {
        Ok(args) => args,
        Err(code) => return code,
    };
    match &args.command {
        Some(Command::Healthcheck { url }) => healthcheck(url).await,
        Some(Command::CheckConfig) => check_config(&args),
        Some(Command::Submit(submit)) => evalgate::submit::run(submit).await,
        None => serve(&args).await,
    }
}

fn sources(args: &Args, overrides: Overrides) -> Sources {
    Sources {
        file: args.config.clone(),
        env: true,
        overrides,
        toml: None,
    }
}

#[expect(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "check-config prints its verdict"
)]
fn check_config(args: &Args) -> ExitCode {
    match Config::load(&sources(args, Vec::new())) {
        Ok(config) => {
            println!("{}", config.to_toml());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("{error}");
            ExitCode::from(EX_CONFIG)
        }
    }
}

async fn healthcheck(url: &str) -> ExitCode {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build();
    let Ok(client) = client else {
        return ExitCode::FAILURE;
    };
    match client.get(url).send().await {
        Ok(response) if response.status() == reqwest::StatusCode::OK => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    }
}

#[expect(
    clippy::print_stderr,
    reason = "configuration errors are reported before logging exists"
)]
async fn serve(args: &Args) -> ExitCode {
    let shutdown = CancellationToken::new();
    // --demo: bind the emulator first so its address can be layered into the configuration.
    let (demo, overrides) = if args.demo {
        match Demo::bind().await {
            Ok((demo, overrides)) => (Some(demo), overrides),
            Err(code) => return code,
        }
    } else {
        (None, Vec::new())
    };

    let mut loaded = Config::load(&sources(args, overrides.clone()));
    // --demo serves the Arize emulator too: on the documented port unless arize.listen is set.
    if demo.is_some() && loaded.as_ref().is_ok_and(|c| !c.arize.is_enabled()) {
        let mut overrides = overrides;
        overrides.push(("arize.listen".to_owned(), DEMO_ARIZE_LISTEN.to_owned()));
        loaded = Config::load(&sources(args, overrides));
    }
    let config = match loaded {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    let format = args.log_format.map(|f| match f {
        LogFormatArg::Json => LogFormat::Json,
        LogFormatArg::Pretty => LogFormat::Pretty,
    });
    telemetry::init_logging(&config.telemetry, format, rust_log().as_deref());

    let listeners = match Listeners::bind(&config).await {
        Ok(listeners) => listeners,
        Err(error) => {
            tracing::error!(error = %evalgate::error::ErrorChain(&error), "startup failed");
            return ExitCode::FAILURE;
        }
    };
    if let Some(demo) = &demo {
        tracing::info!(
            api = %format!("http://{}", display_addr(listeners.api_addr())),
            emulator = %demo.base_url(),
            "demo mode: forwarding to the built-in Valiqor emulator; any vq_ key works"
        );
        if let Some(arize) = listeners.arize_addr() {
            tracing::info!(
                arize = %format!("http://{}", display_addr(arize)),
                emulator = %demo.arize_base_url(),
                "demo mode: the Arize tasks API, forwarding to the built-in Arize emulator; any key works"
            );
        }
    }
    tracing::info!(
        listen = %display_addr(listeners.api_addr()),
        admin_listen = %display_addr(listeners.admin_addr()),
        arize_listen = listeners.arize_addr().map(display_addr),
        "listening"
    );

    let signal_token = shutdown.clone();
    let signals = async move {
        tokio::select! {
            () = evalgate::shutdown::signal() => signal_token.cancel(),
            () = signal_token.cancelled() => {}
        }
    };
    let emulator_token = shutdown.child_token();
    let emulator_task = async move {
        match demo {
            Some(demo) => demo.run(emulator_token).await,
            None => Ok(()),
        }
    };
    let (result, (), emulator_result) = tokio::join!(
        evalgate::run(config, listeners, shutdown.clone()),
        signals,
        emulator_task
    );
    if let Err(error) = emulator_result {
        tracing::error!(%error, "demo emulator failed");
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error @ RunError::Startup(_)) => {
            tracing::error!(error = %evalgate::error::ErrorChain(&error), "startup failed");
            ExitCode::FAILURE
        }
        Err(error) => {
            tracing::error!(error = %evalgate::error::ErrorChain(&error), "evalgate failed");
            ExitCode::FAILURE
        }
    }
}

fn display_addr(addr: std::io::Result<std::net::SocketAddr>) -> String {
    addr.map_or_else(|e| format!("unknown ({e})"), |a| a.to_string())
}

/// `RUST_LOG` overrides `telemetry.filter` (read here, in the binary, next to the CLI).
#[expect(
    clippy::disallowed_methods,
    reason = "the binary reads RUST_LOG once at startup"
)]
fn rust_log() -> Option<String> {
    std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty())
}

/// Where `--demo` serves the Arize tasks API when `arize.listen` is not set.
const DEMO_ARIZE_LISTEN: &str = "127.0.0.1:8081";

/// `--demo`: the Valiqor and Arize emulators as the upstreams, on loopback ports.
#[cfg(feature = "demo")]
mod demo {
    use std::{io, net::Ipv4Addr, process::ExitCode};

    use tokio_util::sync::CancellationToken;
    use valiqor_emulator::{ArizeConfig, ArizeEmulator, Emulator, EmulatorConfig};

    use crate::Overrides;

    /// The key the demo emulator accepts and evalgate injects.
    const DEMO_UPSTREAM_KEY: &str = "vq_demo_upstream_key";
    /// The key the demo Arize emulator accepts and evalgate injects.
    const DEMO_ARIZE_KEY: &str = "ak_demo_upstream_key";

    /// The demo upstreams: bound, not yet serving.
    #[derive(Debug)]
    pub(crate) struct Demo {
        valiqor: Emulator,
        arize: ArizeEmulator,
    }

    impl Demo {
        /// Binds the emulator and returns it with the configuration overrides that point evalgate at it.
        #[expect(
            clippy::print_stderr,
            reason = "startup errors are reported before logging exists"
        )]
        pub(crate) async fn bind() -> Result<(Self, Overrides), ExitCode> {
            let config = EmulatorConfig {
                api_key: Some(DEMO_UPSTREAM_KEY.to_owned()),
                ..EmulatorConfig::default()
            };
            let loopback = (Ipv4Addr::LOCALHOST, 0).into();
            let arize_config = ArizeConfig {
                api_key: Some(DEMO_ARIZE_KEY.to_owned()),
                ..ArizeConfig::default()
            };
            let bound = match Emulator::bind(config, loopback).await {
                Ok(valiqor) => ArizeEmulator::bind(arize_config, loopback)
                    .await
                    .map(|arize| (valiqor, arize)),
                Err(error) => Err(error),
            };
            let (valiqor, arize) = match bound {
                Ok(bound) => bound,
                Err(error) => {
                    eprintln!("cannot start the demo emulators: {error}");
                    return Err(ExitCode::FAILURE);
                }
            };
            let overrides = vec![
                ("valiqor.base_url".to_owned(), valiqor.handle().base_url()),
                ("valiqor.api_key".to_owned(), DEMO_UPSTREAM_KEY.to_owned()),
                ("arize.base_url".to_owned(), arize.handle().base_url()),
                ("arize.api_key".to_owned(), DEMO_ARIZE_KEY.to_owned()),
                ("store.path".to_owned(), ":memory:".to_owned()),
            ];
            Ok((Self { valiqor, arize }, overrides))
        }

        pub(crate) fn base_url(&self) -> String {
            self.valiqor.handle().base_url()
        }

        pub(crate) fn arize_base_url(&self) -> String {
            self.arize.handle().base_url()
        }

        /// Serves both until `shutdown` is cancelled.
        pub(crate) async fn run(self, shutdown: CancellationToken) -> io::Result<()> {
            let (valiqor, arize) =
                tokio::join!(self.valiqor.run(shutdown.clone()), self.arize.run(shutdown));
            valiqor.and(arize)
        }
    }
}

/// A build without the `demo` feature holds no emulator: `--demo` is a usage error (exit code 64).
#[cfg(not(feature = "demo"))]
mod demo {
    use std::{future::Ready, io, process::ExitCode};

    use evalgate::cli::EX_USAGE;
    use tokio_util::sync::CancellationToken;

    use crate::Overrides;

    /// Never constructed: there is no demo upstream in this build.
    #[derive(Debug)]
    pub(crate) enum Demo {}

    impl Demo {
        #[expect(
            clippy::print_stderr,
            reason = "a usage error is reported before logging exists"
        )]
        pub(crate) fn bind() -> Ready<Result<(Self, Overrides), ExitCode>> {
            eprintln!(
                "error: --demo is not available: this evalgate was built without the `demo` feature \
                 (rebuild with default features, or point valiqor.base_url at a Valiqor backend)"
            );
            std::future::ready(Err(ExitCode::from(EX_USAGE)))
        }

        pub(crate) fn base_url(&self) -> String {
            match *self {}
        }

        pub(crate) fn arize_base_url(&self) -> String {
            match *self {}
        }

        pub(crate) fn run(self, _shutdown: CancellationToken) -> Ready<io::Result<()>> {
            match self {}
        }
    }
}
