//! A webhook receiver for tests: an axum server on 127.0.0.1:0 that records every delivery and
//! answers with a scripted sequence of statuses (then the default).
#![expect(
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test helper: failing fast is the point"
)]
use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode, Uri},
    response::IntoResponse,
    routing::post,
};
use tokio::{sync::mpsc, task::JoinSet};

#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Bytes,
}

#[derive(Clone)]
struct Sink {
    tx: mpsc::UnboundedSender<Received>,
    script: Arc<Mutex<VecDeque<StatusCode>>>,
    default: Arc<Mutex<StatusCode>>,
}

pub struct WebhookSink {
    pub url: String,
    rx: mpsc::UnboundedReceiver<Received>,
    script: Arc<Mutex<VecDeque<StatusCode>>>,
    default: Arc<Mutex<StatusCode>>,
    _task: JoinSet<()>,
}

async fn receive(
    State(sink): State<Sink>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let next = sink.script.lock().unwrap().pop_front();
    let status = next.unwrap_or_else(|| *sink.default.lock().unwrap());
    let _ = sink.tx.send(Received { headers, body });
    // A 429 asks the sender to wait a second before the next attempt; on a URL with the query
    // `retry_after=date`, to wait until an HTTP date three seconds ahead (two to three seconds,
    // as the date has whole seconds).
    let mut headers = HeaderMap::new();
    if status == StatusCode::TOO_MANY_REQUESTS {
        let value = if uri.query() == Some("retry_after=date") {
            let date = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(3));
            axum::http::HeaderValue::from_str(&date).unwrap()
        } else {
            axum::http::HeaderValue::from_static("1")
        };
        headers.insert("retry-after", value);
    }
    (status, headers)
}

impl WebhookSink {
    pub async fn start() -> Self {
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let script = Arc::new(Mutex::new(VecDeque::new()));
        let default = Arc::new(Mutex::new(StatusCode::OK));
        let state = Sink {
            tx,
            script: Arc::clone(&script),
            default: Arc::clone(&default),
        };
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut task = JoinSet::new();
        task.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            url: format!("http://{addr}/hook"),
            rx,
            script,
            default,
            _task: task,
        }
    }

    /// The next answers, in order; afterwards `default`.
    pub fn answer_next(&self, statuses: &[StatusCode]) {
        self.script.lock().unwrap().extend(statuses.iter().copied());
    }

    pub fn answer_always(&self, status: StatusCode) {
        *self.default.lock().unwrap() = status;
    }

    /// The next delivery, waiting at most `secs` seconds.
    pub async fn next(&mut self, secs: u64) -> Received {
        tokio::time::timeout(std::time::Duration::from_secs(secs), self.rx.recv())
            .await
            .expect("a webhook arrived in time")
            .expect("sink open")
    }

    /// Whether anything else arrives within `millis` (for "nothing more was sent").
    pub async fn quiet_for(&mut self, millis: u64) -> bool {
        tokio::time::timeout(std::time::Duration::from_millis(millis), self.rx.recv())
            .await
            .is_err()
    }
}
