//! The Valiqor backend emulator: a real HTTP server speaking the Valiqor v2 API (`valiqor-api.md`) that the tests,
//! `evalgate --demo` and the benchmarks run against, with request recording and scriptable faults.
//!
//! # Behaviour
//! - Every route checks `Authorization: Bearer …` (the configured key, or any `vq_` key when none is configured);
//!   otherwise 401 `{"detail":"Invalid API key"}`. Unknown paths answer 404 `{"detail":"Not Found"}`, a wrong
//!   method 405 `{"detail":"Method Not Allowed"}`, malformed JSON 400 `{"detail":…}`.
//! - Submissions (FA analyze, eval evaluate, security audit) with at most `inline_max_items` items answer 200 with
//!   the result inline; bigger ones answer 202 with `job_id` (= `run_id`/`batch_id`) and become jobs: `queued` for
//!   the first 10 % of `job_duration`, then `running` with progress linear in wall time, then `completed`. More than
//!   `max_dataset_items` items → 400 `dataset_too_large`. Red-team runs are always jobs.
//! - Results are deterministic from each item's content (never its position): an output that is empty or contains
//!   "fail" gets a failing tag and low metric scores, "unsure" an `unsure` tag, and "unsafe" a safety finding whose
//!   category S1-S23 comes from a hash of the exchange. `item_index` is the index within the submitted dataset.
//! - Test hook: an async job whose items contain `EMULATOR_JOB_FAIL` (or a red-team `run_name` containing it) ends
//!   `failed` with `error: "emulated job failure"` instead of `completed`.
//! - Faults, in order: scripted [`EmulatorHandle::fail_next`], then random drop / 429 / 500 from [`Faults`], then
//!   `latency`. Every request is recorded first, faulted or not (the most recent 100 000, and at most 512 MiB of
//!   bodies, are kept).
//! - Status polls (a GET of `…/{id}/status`, or of an Arize `/v2/task-runs/{id}`) that arrive while another poll of
//!   the same job is still being answered are recorded ([`EmulatorHandle::overlapping_polls`]): two pollers at once.
//!
//! The crate also holds a second, separate server: the Arize tasks API emulator ([`ArizeEmulator`], see its
//! module docs), sharing the connection layer (recording, faults, body cap, drain).
//!
//! # Example
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use valiqor_emulator::{Emulator, EmulatorConfig};
//! let emu = Emulator::spawn(EmulatorConfig::default()).await?;
//! let base = emu.base_url(); // point the client here
//! # let _ = base;
//! emu.fail_next(1, http::StatusCode::SERVICE_UNAVAILABLE);
//! # Ok(()) }
//! ```

mod arize;
mod data;
mod error;
mod eval;
mod fa;
mod jobs;
mod platform;
mod security;
mod server;
mod state;
mod wire;

use std::{
    fmt,
    net::{Ipv4Addr, SocketAddr},
    ops::Deref,
    sync::Arc,
    time::Duration,
};

use axum::{Router, extract::DefaultBodyLimit, middleware};
use tokio_util::sync::CancellationToken;

use self::{error::EmuError, server::Spawned, state::Shared};

pub use self::arize::{
    ArizeConfig, ArizeEmulator, ArizeHandle, ArizeTaskType, RunningArizeEmulator, UnknownTaskType,
};

/// The router state: everything behind one `Arc`.
type App = Arc<Shared>;

/// How the emulated backend behaves.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// `Some(k)`: only `Authorization: Bearer k` is accepted. `None`: any key starting with `vq_`.
    pub api_key: Option<String>,
    /// Submissions with at most this many dataset items answer 200 inline; more → 202 and a job.
    pub inline_max_items: usize,
    /// Submissions with more items → 400 `dataset_too_large`.
    pub max_dataset_items: usize,
    /// How long an async job takes from submission to `completed`.
    pub job_duration: Duration,
    /// Random faults and latency applied to every request.
    pub faults: Faults,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        Self {
            api_key: None,
            inline_max_items: 10,
            max_dataset_items: 1000,
            job_duration: Duration::from_secs(3),
            faults: Faults::default(),
        }
    }
}

/// Random faults; each rate is a probability in 0..=1 drawn independently per request.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Fraction of requests answered 500 `{"detail":"emulated server error"}`.
    pub error_rate: f64,
    /// Fraction answered 429 `{"detail":"emulated rate limit"}` with `Retry-After: retry_after_secs`.
    pub rate_limit_rate: f64,
    /// `Retry-After` seconds on emulated 429/503 answers (0 is sent as 1).
    pub retry_after_secs: u64,
    /// Delay added before every response.
    pub latency: Duration,
    /// Fraction of requests whose connection is closed without any response.
    pub drop_rate: f64,
}

/// One request as the emulator received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: http::Method,
    pub path: String,
    /// The raw query string, byte for byte (no leading `?`).
    pub query: Option<String>,
    pub headers: http::HeaderMap,
    pub body: bytes::Bytes,
}

impl RecordedRequest {
    /// The body parsed as JSON, if it is JSON.
    pub fn body_json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The bearer token of the request, if any.
    pub fn bearer(&self) -> Option<&str> {
        wire::bearer(&self.headers)
    }
}

/// Cheap-to-clone handle for scripting and inspecting a running emulator.
#[derive(Clone)]
pub struct EmulatorHandle {
    addr: SocketAddr,
    shared: App,
}

// === impl EmulatorHandle ===

impl fmt::Debug for EmulatorHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmulatorHandle")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl EmulatorHandle {
    /// `http://IP:PORT`, without a trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received, in arrival order (including faulted ones).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.control().requests.iter().cloned().collect()
    }

    /// The requests with this method and exactly this path.
    pub fn requests_to(&self, method: &http::Method, path: &str) -> Vec<RecordedRequest> {
        self.shared.control().requests_to(method, path)
    }

    /// Distinct bearer tokens seen, in order of first sight.
    pub fn seen_bearer_keys(&self) -> Vec<String> {
        self.shared.control().bearer_keys.clone()
    }

    /// Distinct `openai_api_key` values seen in submit bodies, in order of first sight.
    pub fn seen_openai_keys(&self) -> Vec<String> {
        self.shared.knobs().openai_keys.clone()
    }

    /// Status polls that arrived while another poll of the same job was still being answered
    /// (their paths), since the start: two pollers working on one job at once.
    pub fn overlapping_polls(&self) -> Vec<String> {
        self.shared.control().overlapping_polls.clone()
    }

    /// Forgets the recorded requests (not the seen keys).
    pub fn clear_requests(&self) {
        self.shared.control().clear_requests();
    }

    pub fn set_faults(&self, faults: Faults) {
        self.shared.control().faults = faults;
    }

    /// The next `n` requests answer `status` with `{"detail": …}` (429/503 with `Retry-After`). Calls queue up.
    pub fn fail_next(&self, n: usize, status: http::StatusCode) {
        self.shared.control().push_fail_next(n, status);
    }

    /// The next `n` successful answers keep their status but carry a body cut short mid-JSON,
    /// as a broken upstream or proxy might send. Calls add up.
    pub fn garble_next(&self, n: usize) {
        self.shared.control().garble_next += n;
    }

    /// The next `n` requests are answered 422 the way `FastAPI`/`Pydantic` reports a validation
    /// error: `{"detail": [{"type", "loc", "msg", "input": <the request body>}]}`, echoing whatever
    /// the body carried. Calls add up.
    pub fn echo_next(&self, n: usize) {
        self.shared.control().echo_next += n;
    }

    /// Duration of jobs submitted from now on.
    pub fn set_job_duration(&self, d: Duration) {
        self.shared.knobs().job_duration = d;
    }
}

/// A bound, not yet serving, emulator.
pub struct Emulator {
    listener: std::net::TcpListener,
    handle: EmulatorHandle,
}

// === impl Emulator ===

impl fmt::Debug for Emulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Emulator")
            .field("addr", &self.handle.addr)
            .finish_non_exhaustive()
    }
}

impl Emulator {
    /// Binds `addr` (port 0 picks a free port).
    pub async fn bind(config: EmulatorConfig, addr: SocketAddr) -> std::io::Result<Emulator> {
        let listener = tokio::net::TcpListener::bind(addr).await?.into_std()?;
        Self::from_std(config, listener)
    }

    /// Wraps a listener the caller bound early (it is switched to non-blocking mode).
    pub fn from_std(
        config: EmulatorConfig,
        listener: std::net::TcpListener,
    ) -> std::io::Result<Emulator> {
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        Ok(Self {
            listener,
            handle: EmulatorHandle {
                addr,
                shared: Arc::new(Shared::new(config)),
            },
        })
    }

    pub fn handle(&self) -> EmulatorHandle {
        self.handle.clone()
    }

    /// Serves until `shutdown` is cancelled, then stops accepting and lets open connections finish (bounded, ~5 s).
    pub async fn run(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let listener = tokio::net::TcpListener::from_std(self.listener)?;
        let app = self.handle.shared;
        let router = router(app.clone());
        server::serve(listener, app, router, shutdown).await
    }

    /// Test/bench convenience: binds 127.0.0.1:0 and serves on a task owned by the returned guard; dropping the
    /// guard stops it.
    pub async fn spawn(config: EmulatorConfig) -> std::io::Result<RunningEmulator> {
        let emulator = Self::bind(config, SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await?;
        let handle = emulator.handle();
        let server = Spawned::spawn(|token| emulator.run(token));
        Ok(RunningEmulator { handle, server })
    }
}

/// A serving emulator; derefs to its [`EmulatorHandle`]. Dropping it cancels the server and aborts its task.
#[derive(Debug)]
pub struct RunningEmulator {
    handle: EmulatorHandle,
    server: Spawned,
}

// === impl RunningEmulator ===

impl RunningEmulator {
    pub fn handle(&self) -> EmulatorHandle {
        self.handle.clone()
    }

    /// Stops accepting, lets open connections finish (bounded, ~5 s) and waits for the server task.
    pub async fn shutdown(self) -> std::io::Result<()> {
        self.server.shutdown().await
    }
}

impl Deref for RunningEmulator {
    type Target = EmulatorHandle;

    fn deref(&self) -> &EmulatorHandle {
        &self.handle
    }
}

/// The emulator's route table: every module's routes behind the bearer check, with Valiqor-shaped 404/405.
fn router(app: App) -> Router {
    Router::new()
        .merge(fa::routes())
        .merge(eval::routes())
        .merge(security::routes())
        .merge(platform::routes())
        .route_layer(middleware::from_fn_with_state(
            app.clone(),
            wire::require_bearer,
        ))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // The connection layer already read (and capped) the body; axum's 2 MB default must not apply again.
        .layer(DefaultBodyLimit::disable())
        .with_state(app)
}

async fn not_found() -> EmuError {
    EmuError::NotFound("Not Found")
}

async fn method_not_allowed() -> EmuError {
    EmuError::MethodNotAllowed
}
