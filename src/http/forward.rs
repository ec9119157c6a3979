//! Forwarding to an upstream, shared by the Valiqor and Arize surfaces: a request streamed
//! through with the caller's platform key, the answer streamed back (errors read, bounded, and
//! scrubbed of every configured key), the admission slot held until the body ends.
use std::time::{Duration, Instant};

use axum::{body::Body, response::Response};
use bytes::Bytes;
use futures::StreamExt;
use http::{
    StatusCode,
    header::{CONTENT_LENGTH, TRANSFER_ENCODING},
    request::Parts,
};
use http_body_util::{BodyExt, Limited};

use super::{error::ApiError, headers};
use crate::{
    middleware::metrics::UpstreamElapsed,
    state::{AppState, InFlight},
    upstream::{Platform, RequestBody, UpstreamClient, UpstreamError, UpstreamRequest},
};

pub(super) fn declared_length(parts: &Parts) -> Option<usize> {
    parts
        .headers
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Forwards with the body streamed through unchanged (held to the body limit).
pub(super) async fn forward_streaming(
    state: &AppState,
    client: &UpstreamClient,
    parts: Parts,
    body: Body,
    admitted: InFlight,
) -> Result<Response, ApiError> {
    let limit = state.config.server.max_body_bytes;
    let has_body = !http_body::Body::is_end_stream(&body);
    let body = if has_body {
        RequestBody::Stream(reqwest::Body::wrap_stream(
            Limited::new(body, limit).into_data_stream(),
        ))
    } else {
        RequestBody::Empty
    };
    let request = UpstreamRequest {
        headers: headers::to_upstream(&parts.headers, true),
        method: parts.method,
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        body,
        body_limit: limit,
    };
    send(state, client, request, admitted).await
}

/// Sends upstream and streams the answer back; the admission slot is held until the body ends.
pub(super) async fn send(
    state: &AppState,
    client: &UpstreamClient,
    request: UpstreamRequest,
    admitted: InFlight,
) -> Result<Response, ApiError> {
    let (upstream, elapsed) = send_upstream(state, client, request).await?;
    answer_back(client, upstream, admitted, elapsed).await
}

pub(super) async fn send_upstream(
    state: &AppState,
    client: &UpstreamClient,
    request: UpstreamRequest,
) -> Result<(reqwest::Response, Duration), ApiError> {
    // `rate_limit.upstream_per_second` is Valiqor's budget.
    if client.platform() == Platform::Valiqor {
        state.limiters.check_upstream()?;
    }
    let started = Instant::now();
    let result = client.send(request).await;
    let elapsed = started.elapsed();
    Ok((result?, elapsed))
}

/// Error answers read whole, at most this much (they are small; a larger one is not relayed).
const ERROR_BODY_CAP: usize = 1024 * 1024;

/// The upstream's answer to the caller: a success streams through unchanged; an error answer is
/// read (bounded) and every configured key is scrubbed out of it first, since error answers may
/// echo the request (a validation error quoting the body, BYOK key included).
pub(super) async fn answer_back(
    client: &UpstreamClient,
    upstream: reqwest::Response,
    admitted: InFlight,
    elapsed: Duration,
) -> Result<Response, ApiError> {
    if upstream.status().is_success() {
        return Ok(stream_back(upstream, admitted, elapsed));
    }
    let status = upstream.status();
    let headers = headers::to_caller(upstream.headers());
    let body = Limited::new(http::Response::from(upstream).into_body(), ERROR_BODY_CAP)
        .collect()
        .await
        .map_err(|_| ApiError::Upstream(UpstreamError::Incomplete))?
        .to_bytes();
    Ok(buffered(status, headers, client.scrub(body), elapsed))
}

/// A fully read answer; the length is the new body's (scrubbing may change it).
pub(super) fn buffered(
    status: StatusCode,
    mut headers: http::HeaderMap,
    body: Bytes,
    elapsed: Duration,
) -> Response {
    headers.remove(CONTENT_LENGTH);
    headers.remove(TRANSFER_ENCODING);
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response.extensions_mut().insert(UpstreamElapsed(elapsed));
    response
}

fn stream_back(upstream: reqwest::Response, admitted: InFlight, elapsed: Duration) -> Response {
    let status = upstream.status();
    let headers = headers::to_caller(upstream.headers());
    let stream = upstream.bytes_stream().map(move |chunk| {
        let _slot = &admitted;
        chunk
    });
    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response.extensions_mut().insert(UpstreamElapsed(elapsed));
    response
}
