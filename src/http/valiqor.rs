//! The Valiqor-compatible surface: every path of the route table forwarded with the platform key.
//!
//! Per request: resolve the route → admit (max in flight) → local rate limits → body limit →
//! BYOK on submit bodies → cache on catalog GETs → forward, streaming both ways. Method, path,
//! raw query, body and status are preserved; the caller's credentials never leave evalgate.
use std::{sync::Arc, time::Instant};

use axum::{
    body::Body,
    extract::{Request, State},
    response::Response,
};
use http::{
    HeaderValue, Method, StatusCode,
    header::{AGE, CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING},
    request::Parts,
};
use http_body_util::{BodyExt, Limited};

use super::{
    error::ApiError,
    forward::{answer_back, buffered, declared_length, forward_streaming, send_upstream},
    headers::{self, CACHE_STATUS},
    read_body,
    routes::Handling,
    valiqor_jobs,
};
use crate::{
    batching::Submission,
    cache::{CacheKey, StoredResponse},
    middleware::metrics::UpstreamElapsed,
    state::{AppState, InFlight},
    telemetry,
    tenants::Tenant,
    upstream::{RequestBody, UpstreamError, UpstreamRequest},
};

/// Entry point for every API-port request.
#[tracing::instrument(name = "request", level = "debug", skip_all, fields(method = %request.method(), route, status))]
pub(crate) async fn handle(State(state): State<AppState>, request: Request) -> Response {
    super::dispatch(
        &state,
        &state.routes,
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
    let tenant = &super::caller(&request)?;
    let admitted = state.admit()?;
    // evalgate's own job ids are answered here; every other id passes through.
    if let Some(id) = valiqor_jobs::evalgate_id(request.uri().path()) {
        let id = id.to_owned();
        return valiqor_jobs::serve(
            &state.jobs,
            &tenant.name,
            template,
            &id,
            request.uri().query(),
        )
        .await;
    }
    let (parts, body) = request.into_parts();
    let limit = state.config.server.max_body_bytes;
    if declared_length(&parts).is_some_and(|n| n > limit) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    match handling {
        Handling::Forward | Handling::RunStatus => {
            forward_streaming(state, &tenant.upstream, parts, body, admitted).await
        }
        Handling::Playground => {
            state.limiters.check_playground()?;
            forward_streaming(state, &tenant.upstream, parts, body, admitted).await
        }
        Handling::Submit => forward_submit(state, tenant, template, parts, body, admitted).await,
        Handling::Cached => serve_cached(state, tenant, parts, admitted).await,
    }
}

/// Reads a submit body, applies the BYOK key, and forwards it.
async fn forward_submit(
    state: &AppState,
    tenant: &Arc<Tenant>,
    template: &'static str,
    parts: Parts,
    body: Body,
    admitted: InFlight,
) -> Result<Response, ApiError> {
    let limit = state.config.server.max_body_bytes;
    let original = read_body(body, limit).await?;
    // Datasets over the batch limits become managed jobs (the engine applies BYOK to each batch);
    // others go straight through. A body the splitter cannot read (a trace-only run, say) is the
    // upstream's to judge. Deciding first keeps a managed dataset to one validating pass.
    let managed = valiqor_jobs::managed_kind(template, &parts.method)
        .and_then(|kind| Submission::parse(original.clone()).ok().map(|s| (kind, s)));
    let managed = match managed {
        Some((kind, submission)) if state.jobs.exceeds_limits(kind, &submission) => {
            return valiqor_jobs::accept(
                &state.jobs,
                tenant,
                kind,
                submission,
                None,
                &parts.headers,
            )
            .await;
        }
        other => other,
    };
    let parts_headers = parts.headers.clone();
    let mut headers = headers::to_upstream(&parts.headers, false);
    // Declared JSON (anything else was refused with 415); the client validates it as an object.
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let request = UpstreamRequest {
        headers,
        method: parts.method,
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        // The client applies the BYOK judge key (and refuses a body that is not a JSON object).
        body: RequestBody::Submit(original),
        body_limit: limit,
    };
    let (upstream, elapsed) = send_upstream(state, &tenant.upstream, request).await?;
    let Some((kind, submission)) = managed.filter(|_| upstream.status() == StatusCode::BAD_REQUEST)
    else {
        return answer_back(&tenant.upstream, upstream, admitted, elapsed).await;
    };
    // A 400 may be `dataset_too_large`: then the dataset becomes a managed job split to fit.
    let status = upstream.status();
    let headers = headers::to_caller(upstream.headers());
    let answer = Limited::new(http::Response::from(upstream).into_body(), TOO_LARGE_PEEK)
        .collect()
        .await
        .map_err(|_| ApiError::Upstream(UpstreamError::Incomplete))?
        .to_bytes();
    if let Some(max_allowed) = dataset_too_large(&answer) {
        tracing::info!(
            max_allowed,
            "upstream refused the dataset as too large; batching it"
        );
        return valiqor_jobs::accept(
            &state.jobs,
            tenant,
            kind,
            submission,
            Some(max_allowed),
            &parts_headers,
        )
        .await;
    }
    Ok(buffered(
        status,
        headers,
        tenant.upstream.scrub(answer),
        elapsed,
    ))
}

/// How much of a 400 answer is read to look for `dataset_too_large`.
const TOO_LARGE_PEEK: usize = 64 * 1024;

/// `max_allowed` of a `400 {"error": "dataset_too_large", ...}` answer.
fn dataset_too_large(body: &[u8]) -> Option<usize> {
    #[derive(serde::Deserialize)]
    struct TooLarge {
        error: Option<String>,
        max_allowed: Option<u64>,
    }
    let parsed: TooLarge = serde_json::from_slice(body).ok()?;
    (parsed.error.as_deref() == Some("dataset_too_large")).then(|| {
        parsed
            .max_allowed
            .and_then(|m| usize::try_from(m).ok())
            .unwrap_or(1)
            .max(1)
    })
}

/// Catalog GETs: answered from the taxonomy cache, fetched (once per key) on a miss.
async fn serve_cached(
    state: &AppState,
    tenant: &Arc<Tenant>,
    parts: Parts,
    _admitted: InFlight,
) -> Result<Response, ApiError> {
    let path = parts.uri.path();
    let query = parts.uri.query();
    let key = CacheKey::new(tenant.upstream.credential(), path, query);
    let served = state
        .cache
        .get_or_fetch(key, || fetch_for_cache(state, tenant, &parts))
        .await;
    metrics::counter!(telemetry::CACHE_LOOKUPS, "result" => served.status.as_str()).increment(1);
    let stored = served.outcome?;
    let mut headers = stored.headers.clone();
    headers.remove(CONTENT_LENGTH);
    headers.remove(TRANSFER_ENCODING);
    headers.insert(
        CACHE_STATUS,
        HeaderValue::from_static(served.status.as_str()),
    );
    if served.status != crate::cache::CacheStatus::Miss {
        headers.insert(
            AGE,
            HeaderValue::from(stored.fetched_at.elapsed().as_secs()),
        );
    }
    let mut response = Response::new(Body::from(stored.body.clone()));
    *response.status_mut() = stored.status;
    *response.headers_mut() = headers;
    if served.status == crate::cache::CacheStatus::Miss {
        response
            .extensions_mut()
            .insert(UpstreamElapsed(stored.upstream_elapsed));
    }
    Ok(response)
}

async fn fetch_for_cache(
    state: &AppState,
    tenant: &Arc<Tenant>,
    parts: &Parts,
) -> Result<StoredResponse, ApiError> {
    state.limiters.check_upstream()?;
    let request = UpstreamRequest {
        method: Method::GET,
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: headers::to_upstream_for_cache(&parts.headers),
        body: RequestBody::Empty,
        body_limit: 0,
    };
    let started = Instant::now();
    let upstream = tenant.upstream.send(request).await?;
    let upstream_elapsed = started.elapsed();
    let status = upstream.status();
    let headers = headers::to_caller(upstream.headers());
    let cap = state.config.server.max_body_bytes;
    let body = Limited::new(http::Response::from(upstream).into_body(), cap)
        .collect()
        .await
        .map_err(|error| {
            tracing::warn!(error = %error, "catalog answer could not be read");
            ApiError::Upstream(UpstreamError::Incomplete)
        })?
        .to_bytes();
    // Only 200s are cached; anything else is relayed once, scrubbed like every error answer.
    let body = if status == StatusCode::OK {
        body
    } else {
        tenant.upstream.scrub(body)
    };
    Ok(StoredResponse {
        status,
        headers,
        body,
        fetched_at: Instant::now(),
        upstream_elapsed,
    })
}
