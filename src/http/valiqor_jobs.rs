//! Managed jobs behind the unmodified SDK: an oversize submit on the Valiqor surface becomes an
//! evalgate job (202 with an `egj_` id), and the follow-up paths the SDK builds from that id
//! (reference §5.2) are answered here in the SDK's own vocabulary. Other ids pass through.
use std::sync::Arc;

use axum::{
    Json,
    response::{IntoResponse, Response},
};
use http::{Method, StatusCode, header};
use serde_json::{Value, json};

use super::error::ApiError;
use crate::{
    batching::Submission,
    jobs::{
        error::JobsError,
        service::{JobInput, JobRequest, JobService},
        view,
    },
    store::JobRecord,
    tenants::Tenant,
    types::{JobId, JobKind, Origin, TenantName},
};

/// The submit templates that batch transparently, and their kind.
pub(crate) fn managed_kind(template: &str, method: &Method) -> Option<JobKind> {
    if *method != Method::POST {
        return None;
    }
    match template {
        "/v2/failure-analysis/analyze" => Some(JobKind::FailureAnalysis),
        "/v2/evaluate/" | "/v2/evaluate" => Some(JobKind::Evaluation),
        "/v2/security/audit" => Some(JobKind::SecurityAudit),
        _ => None,
    }
}

/// `job_type` as the SDK's status models name it.
fn sdk_job_type(kind: JobKind) -> &'static str {
    match kind {
        JobKind::FailureAnalysis => "failure_analysis",
        JobKind::Evaluation => "evaluation",
        JobKind::SecurityAudit => "security",
        JobKind::ArizeTaskRun => "arize_task_run",
    }
}

fn status_path(kind: JobKind, id: &str) -> String {
    match kind {
        JobKind::FailureAnalysis => format!("/v2/failure-analysis/runs/{id}/status"),
        JobKind::Evaluation => format!("/v2/evaluate/jobs/{id}/status"),
        JobKind::SecurityAudit => format!("/v2/security/jobs/{id}/status?job_type=security"),
        JobKind::ArizeTaskRun => format!("/v1/jobs/{id}"),
    }
}

/// Creates the managed job and answers the SDK's 202 (reference §5.2: `job_id`, `run_id` equal to
/// it for `evaluate()`, `total_items`).
pub(crate) async fn accept(
    jobs: &JobService,
    tenant: &Arc<Tenant>,
    kind: JobKind,
    submission: Submission,
    upstream_max_items: Option<usize>,
    headers: &http::HeaderMap,
) -> Result<Response, ApiError> {
    let webhook = webhook_from_headers(jobs, headers)?;
    let request = JobRequest {
        tenant: Arc::clone(tenant),
        input: JobInput::Dataset {
            kind,
            submission,
            upstream_max_items,
        },
        webhook,
        idempotency: None,
        origin: Origin::Valiqor,
    };
    let (record, _) = jobs.submit(request).await?;
    let id = record.id.as_str();
    let body = json!({
        "job_id": id,
        "run_id": id,
        "job_type": sdk_job_type(kind),
        "status": "queued",
        "total_items": record.total_items,
        "poll_url": status_path(kind, id),
        "message": format!("evalgate split {} items into {} batches", record.total_items, record.batches.len()),
    });
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// Header names that give an SDK caller's managed job a webhook.
pub(crate) const WEBHOOK_URL: &str = "x-evalgate-webhook-url";
pub(crate) const WEBHOOK_SECRET: &str = "x-evalgate-webhook-secret";

/// The webhook target from `x-evalgate-webhook-url` / `-secret` (both or neither), validated.
fn webhook_from_headers(
    jobs: &JobService,
    headers: &http::HeaderMap,
) -> Result<Option<String>, ApiError> {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    match (get(WEBHOOK_URL), get(WEBHOOK_SECRET)) {
        (None, None) => Ok(None),
        (Some(url), Some(secret)) => {
            let raw = json!({"url": url, "secret": secret}).to_string();
            Ok(Some(jobs.validate_webhook(&raw)?))
        }
        _ => Err(ApiError::BadRequest(format!(
            "{WEBHOOK_URL} and {WEBHOOK_SECRET} go together"
        ))),
    }
}

/// The `egj_…` segment of a path, if any.
pub(crate) fn evalgate_id(path: &str) -> Option<&str> {
    path.split('/')
        .find(|segment| JobId::is_evalgate_id(segment))
}

fn not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!("Run not found: {id}"))
}

/// Serves a follow-up path for an evalgate job id.
pub(crate) async fn serve(
    jobs: &JobService,
    owner: &TenantName,
    template: &'static str,
    id: &str,
    query: Option<&str>,
) -> Result<Response, ApiError> {
    // Only a job that does not exist is "not found": a store that fails is a 503 or a 500.
    // Another tenant's job is not found either.
    let record = jobs.get(id, owner).await.map_err(|error| match error {
        JobsError::NotFound(_) => not_found(id),
        other => ApiError::from(other),
    })?;
    // An Arize task run is not a Valiqor run: its follow-ups are the native API's.
    if record.kind == JobKind::ArizeTaskRun {
        return Err(not_found(id));
    }
    match template {
        "/v2/failure-analysis/runs/{id}/status"
        | "/v2/evaluate/jobs/{id}/status"
        | "/v2/security/jobs/{id}/status" => Ok(Json(status_body(&record)).into_response()),
        "/v2/failure-analysis/runs/{id}/cancel"
        | "/v2/evaluate/jobs/{id}/cancel"
        | "/v2/security/jobs/{id}/cancel" => {
            let record = jobs.cancel(id, owner).await?;
            let status = record.state.sdk_status();
            Ok(Json(
                json!({"status": status, "message": format!("job {id} is {status}"), "job_id": id}),
            )
            .into_response())
        }
        "/v2/failure-analysis/runs/{id}"
        | "/v2/evaluate/runs/{id}"
        | "/v2/security/audit/batches/{id}" => result_or_placeholder(jobs, record).await,
        "/v2/failure-analysis/runs/{id}/inputs" => {
            let result = merged(jobs, record).await?;
            let inputs = result.get("inputs").cloned().unwrap_or_else(|| json!([]));
            Ok(Json(json!({"inputs": inputs})).into_response())
        }
        "/v2/failure-analysis/runs/{id}/tags" => {
            let result = merged(jobs, record).await?;
            let tags = filter_tags(result.get("failure_tags"), query);
            Ok(Json(json!({"tags": tags})).into_response())
        }
        _ => Err(ApiError::NotFound(format!(
            "{template} is not available for evalgate job {id}"
        ))),
    }
}

/// The status object of reference §5.3.
fn status_body(record: &JobRecord) -> Value {
    let (progress, current) = view::progress(record);
    let remaining = record
        .started_at
        .filter(|_| progress > 0.0 && progress < 100.0)
        .map(|started| {
            #[expect(
                clippy::cast_precision_loss,
                reason = "milliseconds since start fit easily"
            )]
            let elapsed = (crate::types::now_millis() - started).max(0) as f64 / 1000.0;
            (elapsed * (100.0 - progress) / progress).round()
        });
    json!({
        "job_id": record.id.as_str(),
        "job_type": sdk_job_type(record.kind),
        "status": record.state.sdk_status(),
        "progress_percent": (progress * 10.0).round() / 10.0,
        "current_item": current,
        "total_items": record.total_items,
        "started_at": record.started_at.map(crate::types::rfc3339),
        "finished_at": record.finished_at.map(crate::types::rfc3339),
        "error": record.error,
        "estimated_remaining_seconds": remaining,
    })
}

async fn merged(jobs: &JobService, record: JobRecord) -> Result<Value, ApiError> {
    if !record.state.is_terminal() {
        return Ok(json!({}));
    }
    let (record, bytes) = jobs.result_of(record).await?;
    serde_json::from_slice(&bytes).map_err(|source| {
        ApiError::from(JobsError::CorruptResult {
            id: record.id,
            source,
        })
    })
}

async fn result_or_placeholder(jobs: &JobService, record: JobRecord) -> Result<Response, ApiError> {
    if record.state.is_terminal() {
        let (_, bytes) = jobs.result_of(record).await?;
        return Ok(([(header::CONTENT_TYPE, "application/json")], bytes).into_response());
    }
    // Still running: the run as it stands, in the shape every result model reads.
    let id = record.id.as_str();
    Ok(Json(json!({
        "run_id": id, "batch_id": id, "id": id,
        "status": record.state.sdk_status(),
        "total_items": record.total_items,
        "summary": {"total_items": record.total_items},
        "failure_tags": [], "inputs": [],
    }))
    .into_response())
}

/// The SDK's `get_tags` filters: `decision`, `bucket_id`, `min_severity`.
fn filter_tags(tags: Option<&Value>, query: Option<&str>) -> Vec<Value> {
    let mut decision = None;
    let mut bucket = None;
    let mut min_severity = None;
    for (key, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match key.as_ref() {
            "decision" => decision = Some(value.into_owned()),
            "bucket_id" => bucket = Some(value.into_owned()),
            "min_severity" => min_severity = value.parse::<f64>().ok(),
            _ => {}
        }
    }
    tags.and_then(Value::as_array)
        .map(|tags| {
            tags.iter()
                .filter(|t| {
                    decision
                        .as_deref()
                        .is_none_or(|d| t.get("decision").and_then(Value::as_str) == Some(d))
                })
                .filter(|t| {
                    bucket
                        .as_deref()
                        .is_none_or(|b| t.get("bucket_id").and_then(Value::as_str) == Some(b))
                })
                .filter(|t| {
                    min_severity.is_none_or(|m| {
                        t.get("severity")
                            .and_then(Value::as_f64)
                            .is_some_and(|s| s >= m)
                    })
                })
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_filters_combine() {
        let tags = json!([
            {"decision": "fail", "bucket_id": "b1", "severity": 4.0},
            {"decision": "pass", "bucket_id": "b1", "severity": 0.0},
            {"decision": "fail", "bucket_id": "b2", "severity": 2.0},
        ]);
        assert_eq!(filter_tags(Some(&tags), Some("decision=fail")).len(), 2);
        assert_eq!(
            filter_tags(Some(&tags), Some("decision=fail&min_severity=3")).len(),
            1
        );
        assert_eq!(filter_tags(Some(&tags), Some("bucket_id=b1")).len(), 2);
        assert_eq!(filter_tags(Some(&tags), None).len(), 3);
    }

    #[test]
    fn only_evalgate_ids_are_recognised() {
        assert_eq!(
            evalgate_id("/v2/failure-analysis/runs/egj_0123/status"),
            Some("egj_0123")
        );
        assert_eq!(evalgate_id("/v2/failure-analysis/runs/run_1/status"), None);
    }
}
