//! HTTP surfaces: the API port (Valiqor-compatible routes) and the admin port.
pub mod admin;
pub mod byok;
pub mod headers;
pub mod jobs;
pub mod routes;
pub mod valiqor;
pub mod valiqor_jobs;
pub mod webhooks;

use axum::{Router, middleware};
use tower_http::{
    catch_panic::CatchPanicLayer, sensitive_headers::SetSensitiveRequestHeadersLayer,
};

use crate::{middleware as mw, state::AppState};

/// The API-port router. Middleware, outermost first:
/// 1. `CatchPanicLayer`: a bug answers 500 instead of dropping the connection;
/// 2. `SetSensitiveRequestHeadersLayer`: caller credentials are marked sensitive for any logging;
/// 3. request id: keep or generate `x-request-id`, echo it on the response;
/// 4. metrics: count by route template and status, duration and evalgate overhead;
/// 5. hard stop: at the end of the shutdown grace period a request still running is answered
///    502 `shutting_down`;
/// 6. the Valiqor handler, which applies, in order: route table, admission (max in flight),
///    rate limits, body limit, BYOK, cache, forward (all under `server.request_timeout`).
pub fn api_router(state: AppState) -> Router {
    Router::new()
        .merge(jobs::router())
        .merge(webhooks::router())
        .fallback(valiqor::handle)
        .with_state(state.clone())
        .layer(middleware::from_fn_with_state(state, mw::hard_stop::layer))
        .layer(middleware::from_fn(mw::metrics::layer))
        .layer(middleware::from_fn(mw::request_id::layer))
        .layer(SetSensitiveRequestHeadersLayer::new([
            http::header::AUTHORIZATION,
            http::header::PROXY_AUTHORIZATION,
            http::header::COOKIE,
        ]))
        .layer(CatchPanicLayer::new())
}
