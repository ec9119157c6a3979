//! Connection handling for the emulator: the accept loop with per-connection hyper tasks in a `JoinSet`, bounded
//! graceful shutdown, request recording, and fault injection (scripted, drop, 429, 5xx, then latency) in front of
//! the router.

use std::{io, time::Duration};

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

use super::{
    App, RecordedRequest,
    error::{EmuError, detail_response},
    state::Shared,
    wire::bearer,
};

/// Largest request body the emulator reads (bigger ones get a 413).
const MAX_BODY_BYTES: usize = 256 * 1024 * 1024;
/// How long open connections may take to finish after shutdown starts.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);

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
pub(crate) async fn serve(
    listener: TcpListener,
    app: App,
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

async fn serve_connection(
    stream: TcpStream,
    app: App,
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

/// One request: read and record it, apply faults, then route it.
async fn handle(app: App, router: Router, req: Request<Incoming>) -> Result<Response, Dropped> {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            record(&app, &parts, Bytes::new());
            return Ok(EmuError::PayloadTooLarge.into_response());
        }
        // The client went away mid-body: nothing to answer.
        Err(_) => return Err(Dropped),
    };
    record(&app, &parts, body.clone());
    if take_echo(&app) {
        return Ok(echo_response(&body));
    }
    let (fault, latency) = decide(&app);
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    match fault {
        Fault::Drop => Err(Dropped),
        Fault::Status(status) => Ok(fault_response(
            status,
            app.control().faults.retry_after_secs,
        )),
        Fault::None => {
            let Ok(res) = router
                .oneshot(Request::from_parts(parts, Body::from(body)))
                .await;
            Ok(garble(&app, res))
        }
    }
}

/// Whether this request is one `echo_next` asked to answer with a validation error.
fn take_echo(app: &Shared) -> bool {
    let mut c = app.control();
    if c.echo_next == 0 {
        return false;
    }
    c.echo_next -= 1;
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
fn garble(app: &Shared, res: Response) -> Response {
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

fn record(app: &Shared, parts: &Parts, body: Bytes) {
    let req = RecordedRequest {
        method: parts.method.clone(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts.headers.clone(),
        body,
    };
    app.record(req, bearer(&parts.headers));
}

/// Scripted failures first, then the random ones (drop, 429, 5xx); the latency applies to every request.
fn decide(app: &Shared) -> (Fault, Duration) {
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

/// `{"detail": …}` for an injected status; 429 and 503 carry `Retry-After` (at least 1 s).
fn fault_response(status: StatusCode, retry_after_secs: u64) -> Response {
    let detail = match status {
        StatusCode::TOO_MANY_REQUESTS => "emulated rate limit".to_owned(),
        StatusCode::INTERNAL_SERVER_ERROR => "emulated server error".to_owned(),
        other => format!(
            "emulated {}",
            other.canonical_reason().unwrap_or("error").to_lowercase()
        ),
    };
    let mut res = detail_response(status, &detail);
    if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
        res.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(retry_after_secs.max(1)));
    }
    res
}
