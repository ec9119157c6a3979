//! The `OpenAPI` document of the native API (`/v1/jobs`, `/v1/webhooks`), served at `/openapi.json`.
use axum::{Json, response::IntoResponse};
use utoipa::OpenApi;

use super::{jobs, webhooks};
use crate::{
    jobs::view::{Accepted, BatchView, JobView, Links},
    types::{BatchState, JobKind, JobState},
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "evalgate native jobs API",
        description = "Managed jobs: split, submit, poll, merge."
    ),
    paths(
        jobs::submit,
        jobs::status,
        jobs::result,
        jobs::cancel,
        jobs::list,
        jobs::events,
        webhooks::list,
        webhooks::replay,
        webhooks::replay_job
    ),
    components(schemas(
        jobs::SubmitJob,
        Accepted,
        JobView,
        jobs::JobList,
        JobKind,
        JobState,
        BatchState,
        BatchView,
        Links,
        jobs::ErrorEnvelope,
        jobs::ErrorDetail
    ))
)]
#[derive(Debug)]
pub(crate) struct ApiDoc;

pub(super) async fn serve() -> impl IntoResponse {
    Json(ApiDoc::openapi())
}
