//! The HTTP client both emulator test binaries speak through: real requests to a base URL with an optional
//! bearer key, answers read as (status, headers, JSON).
#![expect(
    unreachable_pub,
    reason = "test helper shared by several test binaries through `mod common;`"
)]

use std::{
    ops::{Deref, DerefMut},
    time::{Duration, Instant},
};

use http::{HeaderMap, Method, StatusCode};
use serde_json::Value;

pub type TestResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// How long to wait between two polls of a status URL.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// A running emulator `E` plus a client that speaks to it like the SDK does; derefs to the client.
#[derive(Debug)]
pub struct Api<E> {
    pub emu: E,
    pub client: Client,
}

impl<E> Api<E> {
    /// Wraps `emu`, served at `base_url`, with a client sending `key`.
    pub fn new(emu: E, base_url: impl Into<String>, key: &str) -> TestResult<Self> {
        Ok(Self {
            emu,
            client: Client::new(base_url, Some(key))?,
        })
    }
}

impl<E> Deref for Api<E> {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl<E> DerefMut for Api<E> {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.client
    }
}

#[derive(Debug)]
pub struct Client {
    /// The underlying client, for requests `send` cannot make (raw bodies).
    pub http: reqwest::Client,
    /// `http://127.0.0.1:PORT` the paths are appended to.
    pub base_url: String,
    /// Sent as `Authorization: Bearer …` when set.
    pub key: Option<String>,
}

impl Client {
    pub fn new(base_url: impl Into<String>, key: Option<&str>) -> TestResult<Self> {
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
            base_url: base_url.into(),
            key: key.map(str::to_owned),
        })
    }

    /// Sends one request; a body that is not JSON reads as `Value::Null`.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, HeaderMap, Value), reqwest::Error> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base_url));
        if let Some(key) = &self.key {
            req = req.bearer_auth(key);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let res = req.send().await?;
        let (status, headers) = (res.status(), res.headers().clone());
        let bytes = res.bytes().await?;
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok((status, headers, json))
    }

    pub async fn get(&self, path: &str) -> TestResult<(StatusCode, Value)> {
        let (status, _, body) = self.send(Method::GET, path, None).await?;
        Ok((status, body))
    }

    pub async fn post(&self, path: &str, body: &Value) -> TestResult<(StatusCode, Value)> {
        let (status, _, body) = self.send(Method::POST, path, Some(body)).await?;
        Ok((status, body))
    }

    /// Polls `path` until its `status` is one of `terminal`, bounded by `deadline`; returns every body seen
    /// (never empty). Any answer but 200 is an error.
    pub async fn poll_until(
        &self,
        path: &str,
        terminal: &[&str],
        deadline: Duration,
    ) -> TestResult<Vec<Value>> {
        let started = Instant::now();
        let mut seen = Vec::new();
        loop {
            let (code, body) = self.get(path).await?;
            if code != StatusCode::OK {
                return Err(format!("poll of {path} answered {code}: {body}").into());
            }
            let done = terminal.contains(&body["status"].as_str().unwrap_or_default());
            seen.push(body);
            if done {
                return Ok(seen);
            }
            if started.elapsed() > deadline {
                return Err(format!("{path} not terminal after {deadline:?}: {seen:?}").into());
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}
