//! The Arize listener: the Arize tasks API forwarded with the caller's Arize key, drop-in for the
//! official SDK's `TasksClient` (`ArizeClient(api_scheme="http", api_host=…, api_port=…)`).
//!
//! Per request: resolve the route (only the paths of `routes::ARIZE`; anything else is 404 and
//! never reaches Arize) → admit (max in flight) → body limit → forward, streaming both ways, ids
//! exactly as encoded. `GET /v2/task-runs/{id}` is answered single-flight from the shared
//! run-status cache (`x-evalgate-cache: miss|hit`, `Age`). Every error evalgate itself answers
//! on this listener is an RFC 9457 problem document (`problems` below), so the SDK raises its
//! usual `ApiException` subclasses; Arize's own answers pass through unchanged.
use std::time::Duration;

use axum::{
    Router,
    body::Body,
    extract::{Request, State},
    middleware::{self, Next},
    response::Response,
};
use http::{
    HeaderValue,
    header::{AGE, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER, TRANSFER_ENCODING},
    request::Parts,
};
use percent_encoding::percent_decode_str;

use super::{
    error::{ApiError, ErrorCode, PublicMessage},
    forward::{declared_length, forward_streaming},
    headers::{self, CACHE_STATUS, REQUEST_ID},
    routes::Handling,
};
use crate::{
    middleware::metrics::UpstreamElapsed,
    state::AppState,
    upstream::{Platform, arize::ArizeClient},
};

/// The Arize listener's router: the API listener's middleware (see `http::api_router`), with
/// evalgate's own errors rendered as problem documents between the caller layers and metrics.
pub(crate) fn router(state: AppState) -> Router {
    let routes = Router::new().fallback(handle).with_state(state.clone());
    let inner = super::caller_layers(routes, state).layer(middleware::from_fn(problems));
    super::outer_layers(inner, Platform::Arize)
}

/// Every request of the Arize listener.
#[tracing::instrument(name = "request", level = "debug", skip_all, fields(method = %request.method(), route, status, upstream = "arize"))]
async fn handle(State(state): State<AppState>, request: Request) -> Response {
    super::dispatch(
        &state,
        &state.arize_routes,
        request,
        |template, handling, request| serve(&state, template, handling, request),
    )
    .await
}

async fn serve(
    state: &AppState,
    template: &'static str,
    handling: Handling,
    request: Request,
) -> Result<Response, ApiError> {
    // The listener runs only while Arize is on, and then every tenant has an Arize client.
    let arize = super::caller(&request)?
        .arize
        .clone()
        .ok_or_else(|| ApiError::NotFound("Arize is off here".to_owned()))?;
    let admitted = state.admit()?;
    let (parts, body) = request.into_parts();
    let limit = state.config.server.max_body_bytes;
    if declared_length(&parts).is_some_and(|n| n > limit) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    match handling {
        Handling::RunStatus => run_status(&arize, &parts).await,
        Handling::Forward | Handling::Submit | Handling::Playground | Handling::Cached => {
            let cancelled_run = (template == "/v2/task-runs/{id}/cancel")
                .then(|| run_id(&parts))
                .flatten();
            let response =
                forward_streaming(state, arize.transport(), parts, body, admitted).await?;
            // What watchers were told of the run is stale once a cancel went through.
            if let Some(run_id) = cancelled_run
                && response.status().is_success()
            {
                arize.forget_run(&run_id).await;
            }
            Ok(response)
        }
    }
}

/// The run id of `/v2/task-runs/{id}[/cancel]`, percent-decoded.
fn run_id(parts: &Parts) -> Option<String> {
    let segment = parts.uri.path().split('/').nth(3)?;
    percent_decode_str(segment)
        .decode_utf8()
        .ok()
        .map(std::borrow::Cow::into_owned)
}

/// `GET /v2/task-runs/{id}`: one upstream poll for every watcher of the run within
/// `arize.run_status_max_age`; a held 429/503 answers with what is left of its `Retry-After`.
async fn run_status(arize: &ArizeClient, parts: &Parts) -> Result<Response, ApiError> {
    let run_id = run_id(parts).ok_or_else(|| {
        ApiError::BadRequest("the run id is not valid percent-encoded UTF-8".to_owned())
    })?;
    let request_id = parts
        .headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let served = arize
        .run_status(&run_id, parts.uri.path().to_owned(), request_id)
        .await
        .map_err(|shared| ApiError::Upstream(crate::upstream::UpstreamError::Shared(shared)))?;
    let answer = &served.answer;
    let mut headers = headers::to_caller(&answer.headers);
    headers.remove(CONTENT_LENGTH);
    headers.remove(TRANSFER_ENCODING);
    let status = if served.fetched { "miss" } else { "hit" };
    headers.insert(CACHE_STATUS, HeaderValue::from_static(status));
    if !served.fetched {
        headers.insert(
            AGE,
            HeaderValue::from(answer.fetched_at.elapsed().as_secs()),
        );
        if let Some(left) = answer.retry_after_left() {
            headers.insert(RETRY_AFTER, HeaderValue::from(whole_seconds(left)));
        }
    }
    let mut response = Response::new(Body::from(answer.body.clone()));
    *response.status_mut() = answer.status;
    *response.headers_mut() = headers;
    if served.fetched {
        response
            .extensions_mut()
            .insert(UpstreamElapsed(answer.upstream_elapsed));
    }
    Ok(response)
}

/// Seconds, rounded up, at least 1.
fn whole_seconds(d: Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

/// evalgate's own error answers on this listener as RFC 9457 problem documents
/// (`{type, title, status, detail, instance, error_code}`), the shape the SDK parses into
/// `ApiException.data`. Answers that came from Arize carry no `ErrorCode` and pass unchanged.
async fn problems(request: Request, next: Next) -> Response {
    let instance = request.uri().path().to_owned();
    let response = next.run(request).await;
    let (Some(ErrorCode(code)), Some(PublicMessage(detail))) = (
        response.extensions().get::<ErrorCode>().copied(),
        response.extensions().get::<PublicMessage>().cloned(),
    ) else {
        return response;
    };
    let (mut parts, _) = response.into_parts();
    let status = parts.status;
    let body = serde_json::json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail,
        "instance": instance,
        "error_code": code,
    });
    parts.headers.remove(CONTENT_LENGTH);
    parts.headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    Response::from_parts(parts, Body::from(body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(whole_seconds(Duration::from_millis(1)), 1);
        assert_eq!(whole_seconds(Duration::from_millis(2100)), 3);
        assert_eq!(whole_seconds(Duration::ZERO), 1);
    }

    #[test]
    fn run_ids_are_decoded_inside_their_segment() {
        let request = http::Request::get("/v2/task-runs/VGFza1J1bjoxOvv%2Fvg%3D%3D/cancel")
            .body(())
            .unwrap();
        let (parts, ()) = request.into_parts();
        assert_eq!(run_id(&parts).as_deref(), Some("VGFza1J1bjoxOvv/vg=="));
    }
}
