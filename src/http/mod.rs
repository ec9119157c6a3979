//! HTTP surfaces: the API port (Valiqor-compatible routes, the native `/v1` API) and the admin port.
//! Handlers extract, call one service function and map the result; `error` is the one mapping
//! from errors to statuses and bodies.
pub(crate) mod admin;
pub(crate) mod arize;
pub(crate) mod error;
mod forward;
pub(crate) mod headers;
mod jobs;
pub(crate) mod openapi;
pub(crate) mod routes;
pub(crate) mod valiqor;
pub(crate) mod valiqor_jobs;
mod webhooks;

use axum::{
    Router,
    body::Body,
    extract::{MatchedPath, Request, State},
    middleware::{self, Next},
    response::Response,
    routing::get,
};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tower_http::{
    catch_panic::CatchPanicLayer, sensitive_headers::SetSensitiveRequestHeadersLayer,
};

use std::future::Future;

use axum::response::IntoResponse;

use self::{
    error::ApiError,
    routes::{Handling, Resolved, RouteTable},
};
use crate::{
    middleware::{self as mw, auth::Caller, metrics::RouteLabel},
    state::AppState,
    tenants::{AuthError, Tenant},
    upstream::Platform,
};

/// The API-port router. Middleware, outermost first:
/// 1. `CatchPanicLayer`: a bug answers 500 instead of dropping the connection;
/// 2. `SetSensitiveRequestHeadersLayer`: caller credentials are marked sensitive for any logging;
/// 3. request id: keep or generate `x-request-id`, echo it on the response;
/// 4. metrics: count by route template and status, duration and evalgate overhead;
/// 5. hard stop: at the end of the shutdown grace period a request still running is answered
///    502 `shutting_down`;
/// 6. allowed hosts: with `server.allowed_hosts` set, any other `Host` is 400 `host_not_allowed`;
/// 7. caller: the request's tenant (`auth.mode = "tokens"`: from its bearer token, else 401
///    `unauthenticated`), and the tenant's own request rate (429);
/// 8. JSON only: a POST, PUT or PATCH body not declared `application/json` is 415 (a cross-site
///    form or `text/plain` post never reaches a handler);
/// 9. the native routes (labelled by their matched template), else the Valiqor handler, which
///    applies, in order: route table, admission (max in flight), rate limits, body limit, BYOK,
///    cache, forward (all under `server.request_timeout`).
pub fn api_router(state: AppState) -> Router {
    let routes = Router::new()
        .merge(jobs::router())
        .merge(webhooks::router())
        .route("/openapi.json", get(openapi::serve))
        .route_layer(middleware::from_fn_with_state(state.clone(), admit))
        .route_layer(middleware::from_fn(label_route))
        .fallback(valiqor::handle)
        .with_state(state.clone());
    outer_layers(caller_layers(routes, state), Platform::Valiqor)
}

/// Layers 5-8 of every API listener (see `api_router`): hard stop, allowed hosts, caller, JSON
/// only, outermost first.
pub(crate) fn caller_layers(router: Router, state: AppState) -> Router {
    router
        .layer(middleware::from_fn(mw::json_only::layer))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            mw::auth::layer,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            mw::allowed_hosts::layer,
        ))
        .layer(middleware::from_fn_with_state(state, mw::hard_stop::layer))
}

/// Layers 1-4 of every API listener (see `api_router`), `platform` labelling its metrics.
pub(crate) fn outer_layers(router: Router, platform: Platform) -> Router {
    router
        .layer(middleware::from_fn_with_state(platform, mw::metrics::layer))
        .layer(middleware::from_fn(mw::request_id::layer))
        .layer(SetSensitiveRequestHeadersLayer::new([
            http::header::AUTHORIZATION,
            http::header::PROXY_AUTHORIZATION,
            http::header::COOKIE,
        ]))
        .layer(CatchPanicLayer::new())
}

/// Labels a native route's response with its matched template, for the metrics layer.
async fn label_route(request: Request, next: Next) -> Response {
    let label = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| RouteLabel(path.as_str().to_owned().into()));
    let mut response = next.run(request).await;
    if let Some(label) = label {
        response.extensions_mut().insert(label);
    }
    response
}

/// Native routes count toward `server.max_in_flight` like the Valiqor ones: the slot is held until
/// the response body ends (an event stream holds it while it is open).
async fn admit(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let admitted = match state.admit() {
        Ok(admitted) => admitted,
        Err(error) => return error.response_for_path(request.uri().path()),
    };
    let response = next.run(request).await;
    let (parts, body) = response.into_parts();
    let body = body.map_frame(move |frame| {
        let _held = &admitted;
        frame
    });
    Response::from_parts(parts, Body::new(body))
}

/// Resolves a platform request against `table` and serves it with `serve` under
/// `server.request_timeout`; an unknown path, a bad path or a wrong method is answered here. The
/// response carries its route template as the metric label. (The end of the shutdown grace
/// period is handled around every route: `middleware::hard_stop`.)
pub(crate) async fn dispatch<F, Fut>(
    state: &AppState,
    table: &RouteTable,
    request: Request,
    serve: F,
) -> Response
where
    F: FnOnce(&'static str, Handling, Request) -> Fut,
    Fut: Future<Output = Result<Response, ApiError>>,
{
    let (template, response) = match table.resolve(request.method(), request.uri().path()) {
        Resolved::NotFound => ("unmatched", ApiError::UnknownRoute.into_response()),
        Resolved::BadPath => ("unmatched", ApiError::BadPath.into_response()),
        Resolved::MethodNotAllowed(template) => {
            (template, ApiError::MethodNotAllowed.into_response())
        }
        Resolved::Found(template, handling) => {
            tracing::Span::current().record("route", template);
            let deadline = state.config.server.request_timeout;
            let response =
                match tokio::time::timeout(deadline, serve(template, handling, request)).await {
                    Ok(Ok(response)) => response,
                    Ok(Err(error)) => error.into_response(),
                    Err(_) => ApiError::RequestTimeout.into_response(),
                };
            (template, response)
        }
    };
    tracing::Span::current().record("status", response.status().as_u16());
    tracing::debug!("request served");
    let mut response = response;
    response
        .extensions_mut()
        .insert(RouteLabel(metrics::SharedString::const_str(template)));
    response
}

/// The request's tenant. The auth layer runs before every route and always sets it; without one,
/// nothing is forwarded (fail closed).
pub(crate) fn caller(request: &Request) -> Result<std::sync::Arc<Tenant>, ApiError> {
    request
        .extensions()
        .get::<Caller>()
        .map(|caller| std::sync::Arc::clone(&caller.0))
        .ok_or(ApiError::Unauthenticated(AuthError::Missing))
}

/// Reads a whole request body, held to `limit` bytes as it streams in (413 beyond it).
pub(crate) async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<LengthLimitError>() => Err(ApiError::PayloadTooLarge { limit }),
        Err(_) => Err(ApiError::BadRequest(
            "the request body could not be read".to_owned(),
        )),
    }
}
