//! Connection handling shared by the emulators (Valiqor and Arize): the accept loop with per-connection hyper tasks
//! in a `JoinSet`, bounded graceful shutdown, request recording, and fault injection (scripted, drop, 429, 5xx, then
//! latency) in front of the router, plus drop-after-processing. Each emulator is a [`Backend`]: it owns a
//! [`Control`] (knobs and request log) and says what its error bodies look like.

use std::{
    collections::{HashMap, VecDeque},
    io,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use axum::{
    Router,
    body::Body,
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode, header::RETRY_AFTER, request::Parts};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::{
    net::{TcpListener, TcpStream},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::{Faults, RecordedRequest, wire::bearer};

/// Recorded requests kept at most (oldest dropped first), so long benchmark runs stay bounded.
const MAX_RECORDED: usize = 100_000;
/// Recorded body bytes kept at most (oldest requests dropped first; the newest is always kept).
const MAX_RECORDED_BODY_BYTES: usize = 512 * 1024 * 1024;
/// Largest request body the emulator reads (bigger ones get a 413).
const MAX_BODY_BYTES: usize = 256 * 1024 * 1024;
/// How long open connections may take to finish after shutdown starts.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);

/// What the connection layer needs from an emulator.
pub(crate) trait Backend: Send + Sync + 'static {
    /// The knobs and the request log.
    fn control(&self) -> MutexGuard<'_, Control>;

    /// The answer to an injected status (scripted or random) for a request to `path`; the connection layer adds
    /// `Retry-After` to 429 and 503.
    fn fault_response(&self, status: StatusCode, path: &str) -> Response;

    /// The answer to a request to `path` whose body exceeds the cap.
    fn too_large(&self, path: &str) -> Response;
}

/// Scriptable knobs and the request log, shared by the handle and the connection layer.
#[derive(Debug)]
pub(crate) struct Control {
    pub(crate) faults: Faults,
    /// Scripted failures, served front to back: (remaining count, status).
    pub(crate) fail_next: VecDeque<(usize, StatusCode)>,
    /// Successful answers still to be cut short (see `EmulatorHandle::garble_next`).
    pub(crate) garble_next: usize,
    /// Requests still to be answered with a validation error echoing their body.
    pub(crate) echo_next: usize,
    /// Routed requests whose answer is still to be replaced by a closed connection.
    pub(crate) drop_after_next: usize,
    /// Only requests with this method count toward `drop_after_next` (`None`: any).
    pub(crate) drop_after_method: Option<http::Method>,
    /// Status polls being answered now, by path (see [`poll_key`]).
    pub(crate) polls_in_flight: HashMap<String, usize>,
    /// Polls that arrived while another poll of the same job was being answered, by path.
    pub(crate) overlapping_polls: Vec<String>,
    pub(crate) requests: VecDeque<RecordedRequest>,
    /// Sum of the recorded bodies' lengths.
    pub(crate) recorded_bytes: usize,
    pub(crate) bearer_keys: Vec<String>,
}

// === impl Control ===

impl Control {
    pub(crate) fn new(faults: Faults) -> Mutex<Self> {
        Mutex::new(Self {
            faults,
            fail_next: VecDeque::new(),
            garble_next: 0,
            echo_next: 0,
            drop_after_next: 0,
            drop_after_method: None,
            polls_in_flight: HashMap::new(),
            overlapping_polls: Vec::new(),
            requests: VecDeque::new(),
            recorded_bytes: 0,
            bearer_keys: Vec::new(),
        })
    }

    /// Locks `cell`, ignoring poisoning (the data stays consistent: every update is a single step).
    pub(crate) fn lock(cell: &Mutex<Self>) -> MutexGuard<'_, Self> {
        cell.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends to the request log and remembers a new bearer key.
    pub(crate) fn record(&mut self, req: RecordedRequest, bearer: Option<&str>) {
        if let Some(key) = bearer
            && !self.bearer_keys.iter().any(|k| k == key)
        {
            self.bearer_keys.push(key.to_owned());
        }
        self.recorded_bytes += req.body.len();
        self.requests.push_back(req);
        while self.requests.len() > 1
            && (self.requests.len() > MAX_RECORDED || self.recorded_bytes > MAX_RECORDED_BODY_BYTES)
        {
            if let Some(old) = self.requests.pop_front() {
                self.recorded_bytes -= old.body.len();
            }
        }
    }

    pub(crate) fn requests_to(&self, method: &http::Method, path: &str) -> Vec<RecordedRequest> {
        self.requests
            .iter()
            .filter(|r| r.method == *method && r.path == path)
            .cloned()
            .collect()
    }

    /// Forgets the recorded requests (not the seen keys).
    pub(crate) fn clear_requests(&mut self) {
        self.requests.clear();
        self.recorded_bytes = 0;
    }

    pub(crate) fn push_fail_next(&mut self, n: usize, status: StatusCode) {
        if n > 0 {
            self.fail_next.push_back((n, status));
        }
    }
}

/// A server running on a task, cancelled and aborted on drop.
#[derive(Debug)]
pub(crate) struct Spawned {
    token: CancellationToken,
    task: JoinSet<io::Result<()>>,
}

// === impl Spawned ===

impl Spawned {
    /// Spawns `run(token)` with a fresh cancellation token.
    pub(crate) fn spawn<F>(run: impl FnOnce(CancellationToken) -> F) -> Self
    where
        F: Future<Output = io::Result<()>> + Send + 'static,
    {
        let token = CancellationToken::new();
        let mut task = JoinSet::new();
        task.spawn(run(token.clone()));
        Self { token, task }
    }

    /// Cancels the server and waits for its task.
    pub(crate) async fn shutdown(mut self) -> io::Result<()> {
        self.token.cancel();
        let mut result = Ok(());
        while let Some(joined) = self.task.join_next().await {
            result = joined.map_err(io::Error::other).and_then(|r| r);
        }
        result
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        self.token.cancel();
        self.task.abort_all();
    }
}

/// Returned by the service to make hyper close the connection without answering.
#[derive(Debug, thiserror::Error)]
#[error("emulated connection drop")]
struct Dropped;

/// What the fault layer decided for one request.
#[derive(Debug)]
enum Fault {
    None,
    Drop,
    Status(StatusCode),
}

/// Accepts connections until `shutdown` is cancelled, then lets open ones finish (bounded by `DRAIN_TIMEOUT`).
pub(crate) async fn serve<B: Backend>(
    listener: TcpListener,
    app: Arc<B>,
    router: Router,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::debug!(error = %e, "emulator: set_nodelay failed");
                    }
                    conns.spawn(serve_connection(stream, app.clone(), router.clone(), shutdown.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "emulator: accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
    drop(listener);
    let drain = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(DRAIN_TIMEOUT, drain).await.is_err() {
        tracing::warn!(
            open = conns.len(),
            "emulator: connections still open after the drain timeout; aborting them"
        );
        conns.shutdown().await;
    }
    Ok(())
}

async fn serve_connection<B: Backend>(
    stream: TcpStream,
    app: Arc<B>,
    router: Router,
    shutdown: CancellationToken,
) {
    let service = hyper::service::service_fn(move |req| handle(app.clone(), router.clone(), req));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new());
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        res = conn.as_mut() => res,
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "emulator: connection closed with an error");
    }
}

/// One request: read and record it, apply faults, then route it (and maybe drop the answer).
async fn handle<B: Backend>(
    app: Arc<B>,
    router: Router,
    req: Request<Incoming>,
) -> Result<Response, Dropped> {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            record(&*app, &parts, Bytes::new());
            return Ok(app.too_large(parts.uri.path()));
        }
        // The client went away mid-body: nothing to answer.
        Err(_) => return Err(Dropped),
    };
    record(&*app, &parts, body.clone());
    // Held until this request is answered (or dropped), so that an overlapping poll is seen.
    let _poll = PollInFlight::start(&app, &parts);
    if take(&mut app.control().echo_next) {
        return Ok(echo_response(&body));
    }
    let (fault, latency) = decide(&*app);
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    match fault {
        Fault::Drop => Err(Dropped),
        Fault::Status(status) => {
            let retry_after = app.control().faults.retry_after_secs;
            Ok(with_retry_after(
                app.fault_response(status, parts.uri.path()),
                retry_after,
            ))
        }
        Fault::None => {
            let method = parts.method.clone();
            let Ok(res) = router
                .oneshot(Request::from_parts(parts, Body::from(body)))
                .await;
            let dropped = {
                let mut control = app.control();
                let counts = control
                    .drop_after_method
                    .as_ref()
                    .is_none_or(|only| *only == method);
                counts && take(&mut control.drop_after_next)
            };
            if dropped {
                return Err(Dropped);
            }
            Ok(garble(&*app, res))
        }
    }
}

/// A job's status poll, by its path: a GET of a Valiqor `…/{id}/status` or of an Arize
/// `/v2/task-runs/{id}`. Two polls of one job answered at the same time mean that two pollers
/// (two evalgate replicas, say) work on it at once.
fn poll_key(parts: &http::request::Parts) -> Option<String> {
    let path = parts.uri.path();
    let arize_run = path.starts_with("/v2/task-runs/") && path.matches('/').count() == 3;
    (parts.method == http::Method::GET && (path.ends_with("/status") || arize_run))
        .then(|| path.to_owned())
}

/// A poll being answered; dropping it ends it.
struct PollInFlight<B: Backend> {
    app: Arc<B>,
    key: String,
}

impl<B: Backend> PollInFlight<B> {
    fn start(app: &Arc<B>, parts: &http::request::Parts) -> Option<Self> {
        let key = poll_key(parts)?;
        let mut control = app.control();
        let running = control.polls_in_flight.entry(key.clone()).or_insert(0);
        *running += 1;
        if *running > 1 {
            control.overlapping_polls.push(key.clone());
        }
        drop(control);
        Some(Self {
            app: Arc::clone(app),
            key,
        })
    }
}

impl<B: Backend> Drop for PollInFlight<B> {
    fn drop(&mut self) {
        let mut control = self.app.control();
        if let Some(running) = control.polls_in_flight.get_mut(&self.key) {
            *running -= 1;
            if *running == 0 {
                control.polls_in_flight.remove(&self.key);
            }
        }
    }
}

/// Takes one from a scripted counter; whether there was one.
fn take(counter: &mut usize) -> bool {
    if *counter == 0 {
        return false;
    }
    *counter -= 1;
    true
}

/// 422 in `FastAPI`'s shape, echoing the request body as `input`.
fn echo_response(body: &[u8]) -> Response {
    let input = serde_json::from_slice::<serde_json::Value>(body)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(body).into_owned()));
    let detail = serde_json::json!({"detail": [{
        "type": "value_error",
        "loc": ["body"],
        "msg": "Value error, emulated validation failure",
        "input": input,
    }]});
    (StatusCode::UNPROCESSABLE_ENTITY, axum::Json(detail)).into_response()
}

/// A successful answer cut short mid-JSON, while `garble_next` asks for it.
fn garble<B: Backend>(app: &B, res: Response) -> Response {
    if !res.status().is_success() {
        return res;
    }
    {
        let mut c = app.control();
        if c.garble_next == 0 {
            return res;
        }
        c.garble_next -= 1;
    }
    let (mut parts, _) = res.into_parts();
    parts.headers.remove(http::header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(r#"{"garbled": "#))
}

/// Records the request with its raw (still percent-encoded) path and query.
fn record<B: Backend>(app: &B, parts: &Parts, body: Bytes) {
    let req = RecordedRequest {
        method: parts.method.clone(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts.headers.clone(),
        body,
    };
    app.control().record(req, bearer(&parts.headers));
}

/// Scripted failures first, then the random ones (drop, 429, 5xx); the latency applies to every request.
fn decide<B: Backend>(app: &B) -> (Fault, Duration) {
    let mut c = app.control();
    let latency = c.faults.latency;
    if let Some(front) = c.fail_next.front_mut() {
        let status = front.1;
        front.0 = front.0.saturating_sub(1);
        if front.0 == 0 {
            c.fail_next.pop_front();
        }
        return (Fault::Status(status), latency);
    }
    let f = &c.faults;
    let fault = if chance(f.drop_rate) {
        Fault::Drop
    } else if chance(f.rate_limit_rate) {
        Fault::Status(StatusCode::TOO_MANY_REQUESTS)
    } else if chance(f.error_rate) {
        Fault::Status(StatusCode::INTERNAL_SERVER_ERROR)
    } else {
        Fault::None
    };
    (fault, latency)
}

fn chance(p: f64) -> bool {
    p > 0.0 && rand::random::<f64>() < p
}

/// The detail text of an injected status: "emulated rate limit", "emulated server error", "emulated bad gateway", …
pub(crate) fn fault_detail(status: StatusCode) -> String {
    match status {
        StatusCode::TOO_MANY_REQUESTS => "emulated rate limit".to_owned(),
        StatusCode::INTERNAL_SERVER_ERROR => "emulated server error".to_owned(),
        other => format!(
            "emulated {}",
            other.canonical_reason().unwrap_or("error").to_lowercase()
        ),
    }
}

/// 429 and 503 answers carry `Retry-After` (at least 1 s).
fn with_retry_after(mut res: Response, retry_after_secs: u64) -> Response {
    let status = res.status();
    if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
        res.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(retry_after_secs.max(1)));
    }
    res
}
