//! Cross-site requests: a browser can POST `text/plain` or a form to any origin without a
//! preflight, carrying whatever ambient access the network gives it. Every API route takes JSON,
//! so a POST, PUT or PATCH whose body is not declared `application/json` (or `+json`) is refused
//! with 415 before it is routed; body-less requests pass.
use axum::{extract::Request, middleware::Next, response::Response};
use http::{HeaderMap, Method, header};

use crate::http::error::ApiError;

pub(crate) async fn layer(request: Request, next: Next) -> Response {
    let writes = matches!(
        *request.method(),
        Method::POST | Method::PUT | Method::PATCH
    );
    if writes && has_body(request.headers()) && !is_json(request.headers()) {
        return ApiError::UnsupportedMediaType.response_for_path(request.uri().path());
    }
    next.run(request).await
}

/// A declared non-empty body, or one of unknown length.
fn has_body(headers: &HeaderMap) -> bool {
    if headers.contains_key(header::TRANSFER_ENCODING) {
        return true;
    }
    headers
        .get(header::CONTENT_LENGTH)
        .is_some_and(|v| v.to_str().map_or(true, |v| v.trim() != "0"))
}

/// `application/json` or any `application/…+json`, parameters (`; charset=utf-8`) ignored.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let media = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    media == "application/json" || (media.starts_with("application/") && media.ends_with("+json"))
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(header::HeaderName, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(name.clone(), HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn json_media_types_are_recognised() {
        for ok in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/problem+json",
        ] {
            assert!(is_json(&headers(&[(header::CONTENT_TYPE, ok)])), "{ok}");
        }
        for refused in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/jsonp",
            "text/json+xml",
        ] {
            assert!(
                !is_json(&headers(&[(header::CONTENT_TYPE, refused)])),
                "{refused}"
            );
        }
        assert!(!is_json(&HeaderMap::new()));
    }

    #[test]
    fn only_a_declared_body_counts() {
        assert!(!has_body(&HeaderMap::new()));
        assert!(!has_body(&headers(&[(header::CONTENT_LENGTH, "0")])));
        assert!(has_body(&headers(&[(header::CONTENT_LENGTH, "2")])));
        assert!(has_body(&headers(&[(
            header::TRANSFER_ENCODING,
            "chunked"
        )])));
    }
}
