//! `x-request-id`: kept when the caller sends a sane one, generated (`UUIDv7`) otherwise, echoed back.
use axum::{extract::Request, middleware::Next, response::Response};
use http::HeaderValue;

use crate::http::headers::REQUEST_ID;

/// Longest caller-supplied id kept; anything longer or with odd bytes is replaced.
const MAX_LEN: usize = 128;

fn acceptable(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_LEN
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=".contains(b))
}

pub(crate) async fn layer(mut request: Request, next: Next) -> Response {
    let id = match request.headers().get(REQUEST_ID) {
        Some(value) if acceptable(value) => value.clone(),
        _ => {
            let generated = HeaderValue::try_from(uuid::Uuid::now_v7().to_string());
            let Ok(generated) = generated else {
                return next.run(request).await;
            };
            request.headers_mut().insert(REQUEST_ID, generated.clone());
            generated
        }
    };
    let mut response = next.run(request).await;
    response.headers_mut().insert(REQUEST_ID, id);
    response
}
