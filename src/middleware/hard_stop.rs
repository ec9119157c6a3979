//! The end of the shutdown grace period, for requests. Once `AppState::hard_stop` fires, a
//! request still running is answered 502 `shutting_down` at once and its handler is dropped
//! (what it already sent upstream may still happen there). `/v1` paths answer in the `/v1` error
//! shape, every other path in the Valiqor shape the SDK maps.
use axum::{
    extract::{Request, State},
    middleware::Next,
    response::Response,
};

use crate::{
    http::{error::ApiError, routes::Resolved},
    middleware::metrics::RouteLabel,
    state::AppState,
};

pub(crate) async fn layer(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let uri = request.uri().clone();
    tokio::select! {
        biased;
        () = state.hard_stop.cancelled() => cut(&state, &method, uri.path()),
        response = next.run(request) => response,
    }
}

fn cut(state: &AppState, method: &http::Method, path: &str) -> Response {
    let mut response = ApiError::ShuttingDown.response_for_path(path);
    if let Resolved::Found(template, _) = state.routes.resolve(method, path) {
        response
            .extensions_mut()
            .insert(RouteLabel(metrics::SharedString::const_str(template)));
    }
    response
}
