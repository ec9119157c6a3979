//! Ending a job: the one place where a job becomes terminal. The final state, the merged result,
//! the final event and the job's webhook deliveries are committed in one store transaction, then
//! watchers and the webhook dispatcher are told. The engine (a finished job) and the service (a
//! cancel) both end jobs through here.
use std::sync::Arc;

use bytes::Bytes;
use serde_json::json;

use super::{
    hub::{JobEvent, JobHub},
    view,
};
use crate::{
    config::WebhooksConfig,
    error::ErrorChain,
    store::{JobRecord, JobStore, StoreError},
    telemetry,
    tenants::Tenants,
    types::{BatchState, JobState},
    webhooks::{
        dispatcher::WebhookWaker,
        outbox::{self, JobWebhook},
    },
};

/// Why a job could not be ended; it stays unfinished and is ended again later.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FinishError {
    #[error("the job's end could not be committed")]
    Store(#[from] StoreError),
    /// Serialising the webhook payload failed (a bug: it is built from plain JSON values).
    #[error("the webhook payload could not be written")]
    Payload(#[source] serde_json::Error),
}

/// What a job ends with.
#[derive(Debug)]
pub(crate) struct Ending {
    pub state: JobState,
    pub error: Option<String>,
    pub result: Option<Bytes>,
}

#[derive(Debug, Clone)]
pub(crate) struct Finisher {
    pub store: Arc<dyn JobStore>,
    pub hub: JobHub,
    pub webhooks: Arc<WebhooksConfig>,
    pub waker: WebhookWaker,
}

impl Finisher {
    /// Ends `record`'s job (if nobody ended it first). `Ok(false)`: it was already terminal.
    pub(crate) async fn finish(
        &self,
        record: &JobRecord,
        ending: Ending,
    ) -> Result<bool, FinishError> {
        let Ending {
            state,
            error,
            result,
        } = ending;
        let status = view::final_status(record, state, error.as_deref());
        let job_target = record.webhook.as_deref().and_then(|raw| {
            JobWebhook::from_stored(raw)
                .inspect_err(|e| {
                    // Validated before it was stored: only a damaged store gets here.
                    tracing::error!(job_id = %record.id, error = %ErrorChain(e), "the job's stored webhook target is unreadable; nothing is delivered to it");
                    metrics::counter!(telemetry::WEBHOOK_DELIVERIES, "outcome" => "unreadable_target").increment(1);
                })
                .ok()
        });
        let deliveries = outbox::deliveries(
            &self.webhooks,
            &record.id,
            job_target.as_ref(),
            state,
            &status,
            result.as_ref(),
        )
        .map_err(FinishError::Payload)?;
        let delivering = !deliveries.is_empty();
        let event = json!({"job_id": record.id.as_str(), "status": state.as_str(), "error": error})
            .to_string();
        let ended = self
            .store
            .finish_job(&record.id, state, error, result, event.clone(), deliveries)
            .await?;
        if ended {
            if delivering {
                self.waker.wake();
            }
            self.hub.publish(JobEvent {
                job_id: record.id.clone(),
                name: state.sdk_status_event(),
            });
        }
        Ok(ended)
    }
}

/// Cancels upstream every batch of `record` that was running there when its job ended (a cancel,
/// or fail-fast). A cancel that fails is logged: the upstream job runs on, its result unused.
pub(crate) async fn cancel_running_upstream(tenants: &Tenants, record: &JobRecord) {
    let Some(tenant) = tenants.by_name(&record.tenant) else {
        tracing::warn!(
            job_id = %record.id,
            tenant = %record.tenant,
            "the job's tenant is no longer configured: its batches running upstream are not cancelled there"
        );
        return;
    };
    let upstream = match tenant.job_upstream(record.kind) {
        Ok(upstream) => upstream,
        Err(failure) => {
            tracing::warn!(job_id = %record.id, ?failure, "the job's batches running upstream cannot be cancelled there");
            return;
        }
    };
    for batch in record
        .batches
        .iter()
        .filter(|b| b.state == BatchState::Running)
    {
        if let Some(upstream_id) = &batch.upstream_job_id
            && let Err(failure) = upstream
                .cancel(record.kind, upstream_id, record.id.as_str())
                .await
        {
            tracing::warn!(
                job_id = %record.id,
                ?failure,
                upstream_job_id = upstream_id,
                "could not cancel a batch upstream"
            );
        }
    }
}
