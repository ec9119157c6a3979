//! `server.allowed_hosts`: the API port answers only to the host names it is meant to be reached
//! by. A page that rebinds its own name to evalgate's address (DNS rebinding) sends its own name
//! as `Host` and is refused, whatever the network lets through.
use axum::{
    extract::{Request, State},
    middleware::Next,
    response::Response,
};
use http::header;

use crate::{http::error::ApiError, state::AppState};

pub(crate) async fn layer(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let allowed = &state.config.server.allowed_hosts;
    if allowed.is_empty() || host_of(&request).is_some_and(|host| allowed.contains(&host)) {
        return next.run(request).await;
    }
    ApiError::HostNotAllowed.response_for_path(request.uri().path())
}

/// The request's host, lower case, without its port: the URI's authority (HTTP/2) or `Host`.
fn host_of(request: &Request) -> Option<String> {
    let authority = match request.uri().authority() {
        Some(authority) => authority.as_str(),
        None => request.headers().get(header::HOST)?.to_str().ok()?,
    };
    Some(strip_port(authority).to_ascii_lowercase())
}

/// `name:8080` → `name`, `[::1]:8080` → `[::1]`, `name` → `name`.
fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority
            .find(']')
            .map_or(authority, |end| &authority[..=end]);
    }
    authority
        .rsplit_once(':')
        .map_or(authority, |(host, _)| host)
}

#[cfg(test)]
mod tests {
    use super::strip_port;

    #[test]
    fn ports_are_stripped_from_names_and_bracketed_addresses() {
        assert_eq!(strip_port("evalgate.internal:8080"), "evalgate.internal");
        assert_eq!(strip_port("evalgate.internal"), "evalgate.internal");
        assert_eq!(strip_port("[::1]:8080"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
        assert_eq!(strip_port("127.0.0.1:9"), "127.0.0.1");
    }
}
