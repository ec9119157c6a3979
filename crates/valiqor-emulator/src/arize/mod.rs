//! The Arize tasks API emulator: a real HTTP server speaking the Arize REST v2 "tasks" protocol
//! (`arize-tasks-api.md`) well enough for the official Python SDK's `TasksClient` (arize 8.61.0) to work against it
//! unchanged. It is a separate server from the Valiqor emulator (both APIs use `/v2/projects`), with the same
//! connection layer: request recording, scripted and random faults, body cap, graceful drain.
//!
//! # Behaviour
//! - Endpoints: `GET/POST /v2/tasks`, `GET/PATCH/DELETE /v2/tasks/{id}`, `POST /v2/tasks/{id}/trigger`,
//!   `GET /v2/tasks/{id}/runs`, `GET /v2/task-runs/{id}`, `POST /v2/task-runs/{id}/cancel`, and for name resolution
//!   `GET /v2/spaces` (`name`, `org_id`), `GET /v2/projects` and `GET /v2/datasets` (`space_id`, `space_name`,
//!   `name`). Success codes are exact: 201 for create and trigger, 204 (empty) for delete, 200 elsewhere.
//! - Every request needs `Authorization: Bearer <key>` (the configured key, or any non-empty one when none is
//!   configured), before routing: otherwise 401. Every error is RFC 9457 `application/problem+json`
//!   `{type, title, status, detail, instance, error_code}` with the raw request path as `instance`: 401, 404 for an
//!   unknown id or path, 405 for a wrong method, 400 for an invalid body or parameter (JSON type, required field,
//!   limit outside 1..=100, bad enum, unknown field, field that does not fit the task type, `project_id` with
//!   `dataset_id`, mixed filter shapes, data window over 30 days or start not before end, bad cursor), 413 over the
//!   body cap.
//! - Seeded: space `demo-space` (`U3BhY2U6MTplbXVs` = `Space:1:emul`), project `demo-project`
//!   (`TW9kZWw6MTplbXVs`), dataset `demo-dataset` (`RGF0YXNldDoxOmVtdWw=`) and evaluator `demo-evaluator`
//!   (`RXZhbHVhdG9yOjE6ZW11bA==`). Task and run ids are base64 of `OnlineTask:N:emul…` / `TaskRun:N:emul…` with a
//!   suffix that makes every one carry `/` (odd N) or `+` (even N) and `=` padding, so paths arrive as `%2F`, `%2B`,
//!   `%3D`; path segments are split first and then percent-decoded. Requests are recorded with the raw path.
//! - Runs: a trigger answers 201 with the run `PENDING`; it is `RUNNING` after 10 % of the run duration and terminal
//!   at the run duration, computed from wall time when read. `COMPLETED` runs count `num_successes`, `num_errors`
//!   (1 in 10) and `num_skipped` (1 in 20) over 20 items (project tasks, capped by `max_spans`), 10 per experiment
//!   (dataset tasks) or 10 examples (`RUN_EXPERIMENT`, capped by `max_examples` / `example_ids`). `RUN_EXPERIMENT`
//!   runs show an `experiment_id` from `RUNNING` on. Cancel of a `PENDING`/`RUNNING` run answers 200 with the run
//!   `CANCELLED`. Several runs of one task may be in flight at once. Statuses are upper-case.
//! - Lists: tasks, spaces, projects and datasets oldest first; runs newest first (filter `status`). Cursor paging as
//!   §8: `limit` 1..=100 (default 50), an opaque `next_cursor` while `has_more` (omitted when false), keyset-based so
//!   items created between pages are neither skipped nor repeated. `name`/`space_name` filters are case-insensitive
//!   substrings. A `query_filters` with one filter and no `expression` is echoed with the filter's id as expression.
//! - Test hooks: a task whose name contains `EMULATOR_RUN_FAIL` ends its runs `FAILED` with a `failure_reason`; one
//!   containing `EMULATOR_RUN_CANCEL` ends them `CANCELLED` with zero counts and a `failure_reason` saying there was
//!   nothing to evaluate and to re-trigger with `override_evaluations` (a trigger with `override_evaluations: true`
//!   completes normally).
//! - Faults, in order: scripted [`ArizeHandle::fail_next`] (problem+json; 429/503 with `Retry-After`), then random
//!   drop / 429 / 500 from [`Faults`], then latency; [`ArizeHandle::drop_next_after_processing`] lets requests take
//!   effect and then closes the connection without an answer. Every request is recorded first, faulted or not.
//!
//! # EMULATOR CHOICEs (not facts about Arize)
//! - Cancelling a terminal run: 400 `RUN_NOT_CANCELLABLE`.
//! - A `RUN_EXPERIMENT` trigger without `experiment_name`: 422 `EXPERIMENT_NAME_REQUIRED` (the body is a valid
//!   evaluation trigger, but not for this task); an `experiment_name` already used on the dataset: 409
//!   `EXPERIMENT_NAME_TAKEN` (the only 409; concurrent runs are allowed).
//! - A task name already used in the space (create or rename): 400 `DUPLICATE_NAME`.
//! - The first trigger of a project task without `data_start_time` uses a 24 h window before `data_end_time` (the
//!   API requires a start on the first run); later ones start at the previous run's window end (or, when that is
//!   not before the new end, again 24 h before it).
//! - Unknown `space_id`/`project_id`/`dataset_id`/`org_id` filters and unknown project/dataset ids in a create
//!   answer 404; evaluator, experiment and integration ids only have to be well-formed resource ids.
//! - Deleting a task keeps its runs: `GET /v2/task-runs/{id}` and cancel still work, `/v2/tasks/{id}/runs` is 404.
//! - Unknown body fields are rejected (400), like the SDK's request models do client-side; unknown query parameters
//!   are ignored. A date-time without offset is UTC.
//!
//! # Example
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use valiqor_emulator::{ArizeConfig, ArizeEmulator, ArizeTaskType};
//! let emu = ArizeEmulator::spawn(ArizeConfig::default()).await?;
//! let task_id = emu.seed_task("nightly-eval", ArizeTaskType::TemplateEvaluation);
//! // ArizeClient(api_key="ak_test", api_scheme="http", api_host="127.0.0.1", api_port=<port of emu.base_url()>)
//! # let _ = task_id;
//! emu.drop_next_after_processing(1); // the next trigger creates its run, but the caller gets no answer
//! # Ok(()) }
//! ```

mod ids;
mod problem;
mod routes;
mod store;
mod validate;

use std::{
    fmt,
    net::{Ipv4Addr, SocketAddr},
    ops::Deref,
    str::FromStr,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use axum::{Router, extract::DefaultBodyLimit, middleware, response::Response};
use http::StatusCode;
use tokio_util::sync::CancellationToken;

use self::{
    problem::ArizeError,
    store::{ArizeStore, TaskSpec},
};
use super::{
    Faults, RecordedRequest,
    server::{self, Backend, Control, Spawned, fault_detail},
};

/// The router state.
type App = Arc<Arize>;

/// How the emulated Arize API behaves.
#[derive(Debug, Clone)]
pub struct ArizeConfig {
    /// `Some(k)`: only `Authorization: Bearer k` is accepted. `None`: any non-empty bearer token.
    pub api_key: Option<String>,
    /// How long a triggered run takes from `PENDING` to its terminal status (`RUNNING` after 10 %).
    pub run_duration: Duration,
    /// Random faults and latency applied to every request.
    pub faults: Faults,
}

impl Default for ArizeConfig {
    fn default() -> Self {
        Self {
            api_key: None,
            run_duration: Duration::from_secs(3),
            faults: Faults::default(),
        }
    }
}

/// The task types, spelled on the wire as `TEMPLATE_EVALUATION`, `CODE_EVALUATION`, `RUN_EXPERIMENT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ArizeTaskType {
    TemplateEvaluation,
    CodeEvaluation,
    RunExperiment,
}

impl ArizeTaskType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TemplateEvaluation => "TEMPLATE_EVALUATION",
            Self::CodeEvaluation => "CODE_EVALUATION",
            Self::RunExperiment => "RUN_EXPERIMENT",
        }
    }
}

impl fmt::Display for ArizeTaskType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Not one of the three wire spellings.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown task type '{0}'")]
pub struct UnknownTaskType(pub String);

impl FromStr for ArizeTaskType {
    type Err = UnknownTaskType;

    /// The exact wire spelling (upper-case).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "TEMPLATE_EVALUATION" => Ok(Self::TemplateEvaluation),
            "CODE_EVALUATION" => Ok(Self::CodeEvaluation),
            "RUN_EXPERIMENT" => Ok(Self::RunExperiment),
            other => Err(UnknownTaskType(other.to_owned())),
        }
    }
}

/// Everything the router and the connection layer share.
#[derive(Debug)]
pub(crate) struct Arize {
    pub(crate) api_key: Option<String>,
    control: Mutex<Control>,
    store: Mutex<ArizeStore>,
}

impl Arize {
    fn new(config: ArizeConfig) -> Self {
        Self {
            api_key: config.api_key,
            control: Control::new(config.faults),
            store: Mutex::new(ArizeStore::seeded(config.run_duration)),
        }
    }

    pub(crate) fn store(&self) -> MutexGuard<'_, ArizeStore> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Backend for Arize {
    fn control(&self) -> MutexGuard<'_, Control> {
        Control::lock(&self.control)
    }

    fn fault_response(&self, status: StatusCode, path: &str) -> Response {
        ArizeError::fault(status, fault_detail(status)).render(path)
    }

    fn too_large(&self, path: &str) -> Response {
        ArizeError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
            "Request body too large",
        )
        .render(path)
    }
}

/// Cheap-to-clone handle for scripting and inspecting a running Arize emulator.
#[derive(Clone)]
pub struct ArizeHandle {
    addr: SocketAddr,
    app: App,
}

// === impl ArizeHandle ===

impl fmt::Debug for ArizeHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArizeHandle")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl ArizeHandle {
    /// `http://IP:PORT`, without a trailing slash (the SDK's `api_host`/`api_port`).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request received, in arrival order (including faulted ones).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.app.control().requests.iter().cloned().collect()
    }

    /// The requests with this method and exactly this raw path, e.g. `/v2/task-runs/VGFza1J1bjox…%3D`.
    pub fn requests_to(&self, method: &http::Method, raw_path: &str) -> Vec<RecordedRequest> {
        self.app.control().requests_to(method, raw_path)
    }

    /// Distinct bearer tokens seen, in order of first sight.
    pub fn seen_bearer_keys(&self) -> Vec<String> {
        self.app.control().bearer_keys.clone()
    }

    /// Forgets the recorded requests (not the seen keys).
    pub fn clear_requests(&self) {
        self.app.control().clear_requests();
    }

    pub fn set_faults(&self, faults: Faults) {
        self.app.control().faults = faults;
    }

    /// Run polls (`GET /v2/task-runs/{id}`) that arrived while another poll of the same run was
    /// still being answered (their raw paths), since the start.
    pub fn overlapping_polls(&self) -> Vec<String> {
        self.app.control().overlapping_polls.clone()
    }

    /// The next `n` requests answer `status` as a problem (429/503 with `Retry-After`) without taking effect.
    /// Calls queue up.
    pub fn fail_next(&self, n: usize, status: StatusCode) {
        self.app.control().push_fail_next(n, status);
    }

    /// The next `n` requests that reach the API are fully processed (a trigger really creates its run) and then
    /// the connection is closed without any answer: an ambiguous failure. Calls add up.
    pub fn drop_next_after_processing(&self, n: usize) {
        let mut control = self.app.control();
        control.drop_after_next += n;
        control.drop_after_method = None;
    }

    /// [`ArizeHandle::drop_next_after_processing`] for the next `n` POSTs only (a trigger, a create, a cancel):
    /// the reads before them are answered.
    pub fn drop_next_post_after_processing(&self, n: usize) {
        let mut control = self.app.control();
        control.drop_after_next += n;
        control.drop_after_method = Some(http::Method::POST);
    }

    /// Duration of runs triggered from now on.
    pub fn set_run_duration(&self, d: Duration) {
        self.app.store().run_duration = d;
    }

    /// Creates a task directly (no request, no name check) and returns its id: an evaluation task over the
    /// seeded project with the seeded evaluator (span shape), or a `RUN_EXPERIMENT` task over the seeded dataset
    /// with an `LLM_GENERATION` configuration.
    pub fn seed_task(&self, name: &str, task_type: ArizeTaskType) -> String {
        let spec = TaskSpec::seeded(name, task_type);
        self.app
            .store()
            .insert_task(store::space_id(), spec)
            .id
            .clone()
    }

    /// The task as `GET /v2/tasks/{id}` would answer, if it exists.
    pub fn task(&self, task_id: &str) -> Option<serde_json::Value> {
        self.app.store().task(task_id).map(store::Task::to_json)
    }

    /// Every run of a task as `GET /v2/task-runs/{id}` would answer now, newest first (also after the task was
    /// deleted).
    pub fn runs(&self, task_id: &str) -> Vec<serde_json::Value> {
        let now = Instant::now();
        self.app
            .store()
            .runs_of(task_id)
            .map(|r| r.to_json(now))
            .collect()
    }

    /// The seeded space's id (`Space:1:emul`); its name is [`ArizeHandle::space_name`].
    pub fn space_id(&self) -> String {
        store::space_id()
    }

    /// `demo-space`.
    pub fn space_name(&self) -> &'static str {
        store::SPACE_NAME
    }

    /// The seeded project's id (`Model:1:emul`, named `demo-project`).
    pub fn project_id(&self) -> String {
        store::project_id()
    }

    /// The seeded dataset's id (`Dataset:1:emul`, named `demo-dataset`).
    pub fn dataset_id(&self) -> String {
        store::dataset_id()
    }

    /// The seeded evaluator's id (`Evaluator:1:emul`, named `demo-evaluator`).
    pub fn evaluator_id(&self) -> String {
        store::evaluator_id()
    }
}

/// A bound, not yet serving, Arize emulator.
pub struct ArizeEmulator {
    listener: std::net::TcpListener,
    handle: ArizeHandle,
}

// === impl ArizeEmulator ===

impl fmt::Debug for ArizeEmulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArizeEmulator")
            .field("addr", &self.handle.addr)
            .finish_non_exhaustive()
    }
}

impl ArizeEmulator {
    /// Binds `addr` (port 0 picks a free port).
    pub async fn bind(config: ArizeConfig, addr: SocketAddr) -> std::io::Result<ArizeEmulator> {
        let listener = tokio::net::TcpListener::bind(addr).await?.into_std()?;
        Self::from_std(config, listener)
    }

    /// Wraps a listener the caller bound early (it is switched to non-blocking mode).
    pub fn from_std(
        config: ArizeConfig,
        listener: std::net::TcpListener,
    ) -> std::io::Result<ArizeEmulator> {
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        Ok(Self {
            listener,
            handle: ArizeHandle {
                addr,
                app: Arc::new(Arize::new(config)),
            },
        })
    }

    pub fn handle(&self) -> ArizeHandle {
        self.handle.clone()
    }

    /// Serves until `shutdown` is cancelled, then stops accepting and lets open connections finish (bounded, ~5 s).
    pub async fn run(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let listener = tokio::net::TcpListener::from_std(self.listener)?;
        let app = self.handle.app;
        let router = router(app.clone());
        server::serve(listener, app, router, shutdown).await
    }

    /// Test convenience: binds 127.0.0.1:0 and serves on a task owned by the returned guard; dropping the guard
    /// stops it.
    pub async fn spawn(config: ArizeConfig) -> std::io::Result<RunningArizeEmulator> {
        let emulator = Self::bind(config, SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await?;
        let handle = emulator.handle();
        let server = Spawned::spawn(|token| emulator.run(token));
        Ok(RunningArizeEmulator { handle, server })
    }
}

/// A serving Arize emulator; derefs to its [`ArizeHandle`]. Dropping it cancels the server and aborts its task.
#[derive(Debug)]
pub struct RunningArizeEmulator {
    handle: ArizeHandle,
    server: Spawned,
}

// === impl RunningArizeEmulator ===

impl RunningArizeEmulator {
    pub fn handle(&self) -> ArizeHandle {
        self.handle.clone()
    }

    /// Stops accepting, lets open connections finish (bounded, ~5 s) and waits for the server task.
    pub async fn shutdown(self) -> std::io::Result<()> {
        self.server.shutdown().await
    }
}

impl Deref for RunningArizeEmulator {
    type Target = ArizeHandle;

    fn deref(&self) -> &ArizeHandle {
        &self.handle
    }
}

/// The route table behind the bearer check, with problem+json 404/405 and every error rendered as a problem.
fn router(app: App) -> Router {
    routes::routes()
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            app.clone(),
            problem::require_bearer,
        ))
        .layer(middleware::from_fn(problem::render_problems))
        // The connection layer already read (and capped) the body.
        .layer(DefaultBodyLimit::disable())
        .with_state(app)
}

async fn not_found() -> ArizeError {
    ArizeError::not_found("no such endpoint")
}

async fn method_not_allowed() -> ArizeError {
    ArizeError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "METHOD_NOT_ALLOWED",
        "method not allowed on this endpoint",
    )
}
