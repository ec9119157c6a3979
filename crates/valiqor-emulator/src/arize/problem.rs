//! Arize errors as RFC 9457 problems (`application/problem+json` with `type`, `title`, `status`, `detail`,
//! `instance` and `error_code`), the layer that renders them with the request path as `instance`, and the bearer
//! check.

use std::sync::Arc;

use axum::{
    extract::{Request, State},
    middleware::Next,
    response::{IntoResponse, Response},
};
use http::{HeaderValue, StatusCode, header::CONTENT_TYPE};
use serde_json::json;

use super::Arize;
use crate::wire::bearer;

pub(crate) const PROBLEM_JSON: &str = "application/problem+json";

/// An error answer. Handlers return it; [`render_problems`] turns it into the problem body.
#[derive(Debug, Clone)]
pub(crate) struct ArizeError {
    status: StatusCode,
    code: String,
    detail: String,
}

impl ArizeError {
    pub(crate) fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code: code.to_owned(),
            detail: detail.into(),
        }
    }

    /// 400 `VALIDATION_ERROR`.
    pub(crate) fn bad_request(detail: impl Into<String>) -> Self {
        Self::bad_request_code("VALIDATION_ERROR", detail)
    }

    /// 400 with a specific `error_code`.
    pub(crate) fn bad_request_code(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }

    /// 404 `NOT_FOUND`.
    pub(crate) fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NOT_FOUND", detail)
    }

    pub(crate) fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "Send a valid API key in the Authorization: Bearer <credential> header",
        )
    }

    /// The problem for an injected status: `error_code` is the upper-case reason, e.g. `TOO_MANY_REQUESTS`.
    pub(crate) fn fault(status: StatusCode, detail: String) -> Self {
        let code = status
            .canonical_reason()
            .unwrap_or("error")
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == ' ')
            .map(|c| {
                if c == ' ' {
                    '_'
                } else {
                    c.to_ascii_uppercase()
                }
            })
            .collect();
        Self {
            status,
            code,
            detail,
        }
    }

    /// The problem+json answer for a request to `path`.
    pub(crate) fn render(&self, path: &str) -> Response {
        let slug = self.code.to_lowercase().replace('_', "-");
        let body = json!({
            "type": format!("https://api.arize.com/problems/{slug}"),
            "title": self.status.canonical_reason().unwrap_or("Error"),
            "status": self.status.as_u16(),
            "detail": self.detail,
            "instance": path,
            "error_code": self.code,
        });
        let mut res = (self.status, body.to_string()).into_response();
        res.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        res
    }
}

impl IntoResponse for ArizeError {
    /// A bodiless answer carrying the error; [`render_problems`] writes the body.
    fn into_response(self) -> Response {
        let mut res = self.status.into_response();
        res.extensions_mut().insert(self);
        res
    }
}

/// Outermost layer: renders an [`ArizeError`] left in a response with the raw request path as `instance`.
pub(crate) async fn render_problems(req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    let mut res = next.run(req).await;
    match res.extensions_mut().remove::<ArizeError>() {
        Some(err) => err.render(&path),
        None => res,
    }
}

/// Every request needs `Authorization: Bearer <key>`: the configured key, or any non-empty one without it.
pub(crate) async fn require_bearer(
    State(app): State<Arc<Arize>>,
    req: Request,
    next: Next,
) -> Result<Response, ArizeError> {
    let key = bearer(req.headers()).ok_or_else(ArizeError::unauthorized)?;
    if app
        .api_key
        .as_deref()
        .is_some_and(|expected| key != expected)
    {
        return Err(ArizeError::unauthorized());
    }
    Ok(next.run(req).await)
}
