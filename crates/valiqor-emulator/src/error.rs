//! The emulator's error enum and its Valiqor-shaped bodies (`valiqor-api.md` §6): `{"detail": …}` for most errors,
//! top-level `error` for `dataset_too_large` and `quota_exceeded`, and the `FastAPI` 422 list for bad query parameters.

use axum::{
    Json,
    response::{IntoResponse, Response},
};
use http::{HeaderValue, StatusCode, header::RETRY_AFTER};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub(crate) enum EmuError {
    #[error("Invalid API key")]
    Unauthorized,
    #[error("{0}")]
    BadRequest(String),
    #[error("Dataset has {size} items; the maximum per request is {max}")]
    DatasetTooLarge { size: usize, max: usize },
    #[error("{0}")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
    #[error("Method Not Allowed")]
    MethodNotAllowed,
    #[error("Request body too large")]
    PayloadTooLarge,
    #[error("Input should be a valid {expected}")]
    InvalidQuery {
        param: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("Playground limit reached: {limit} runs per day")]
    PlaygroundQuota { used: u32, limit: u32 },
}

impl EmuError {
    /// Exhaustive on purpose: a new variant must choose its status.
    fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::BadRequest(_) | Self::DatasetTooLarge { .. } => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::InvalidQuery { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::PlaygroundQuota { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }
}

impl IntoResponse for EmuError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = match &self {
            Self::DatasetTooLarge { size, max } => json!({
                "error": "dataset_too_large",
                "message": self.to_string(),
                "dataset_size": size,
                "max_allowed": max,
            }),
            Self::InvalidQuery {
                param,
                value,
                expected,
            } => json!({
                "detail": [{
                    "type": format!("{expected}_parsing"),
                    "loc": ["query", param],
                    "msg": self.to_string(),
                    "input": value,
                }],
            }),
            Self::PlaygroundQuota { used, limit } => json!({
                "error": "quota_exceeded",
                "message": self.to_string(),
                "current_usage": used,
                "quota_limit": limit,
                "service": "playground",
            }),
            Self::Unauthorized
            | Self::BadRequest(_)
            | Self::NotFound(_)
            | Self::Conflict(_)
            | Self::MethodNotAllowed
            | Self::PayloadTooLarge => json!({ "detail": self.to_string() }),
        };
        let mut res = (status, Json(body)).into_response();
        if matches!(self, Self::PlaygroundQuota { .. }) {
            res.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(60u32));
        }
        res
    }
}

/// `{"detail": message}` with `status`, as the emulator's fault paths answer.
pub(crate) fn detail_response(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "detail": message }))).into_response()
}
