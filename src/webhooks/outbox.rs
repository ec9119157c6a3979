//! What goes into the webhook outbox when a job ends: which targets, which event, which payload.
//! Pure functions; the store writes the rows in the same transaction as the job's end.
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Value, value::RawValue};

use super::{signing, ssrf::TargetPolicy};
use crate::{
    config::{WEBHOOK_EVENTS, WebhooksConfig},
    store::NewDelivery,
    types::{JobId, JobState},
};

/// A job's own webhook target, as given on submit and stored with the job.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct JobWebhook {
    pub url: String,
    /// One `whsec_…` secret, or several (rotation: one signature each).
    pub secret: OneOrMany,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub(crate) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub(crate) fn as_slice(&self) -> &[String] {
        match self {
            Self::One(one) => std::slice::from_ref(one),
            Self::Many(many) => many,
        }
    }
}

impl JobWebhook {
    /// Reads a target as `validate` stored it.
    pub(crate) fn from_stored(raw: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(raw)
    }

    pub(crate) fn secrets(&self) -> Result<Vec<signing::SigningSecret>, String> {
        self.secret
            .as_slice()
            .iter()
            .map(|s| signing::SigningSecret::parse(s).map_err(|e| e.to_string()))
            .collect()
    }

    fn wants(&self, event: &str) -> bool {
        self.events
            .as_ref()
            .is_none_or(|events| events.iter().any(|e| e == event))
    }
}

/// Validates a submitted webhook target: the URL passes the submit-time SSRF check (a literal
/// refused address is rejected now), every secret parses, every event is known. Returns the
/// JSON to store.
pub(crate) fn validate(raw: &str, policy: &TargetPolicy) -> Result<String, String> {
    let webhook: JobWebhook = serde_json::from_str(raw).map_err(|e| format!("webhook: {e}"))?;
    policy
        .check_url(&webhook.url)
        .map_err(|refusal| format!("webhook.url is refused: {refusal}"))?;
    if webhook.secret.as_slice().is_empty() {
        return Err("webhook.secret: at least one whsec_ secret is required".to_owned());
    }
    webhook
        .secrets()
        .map_err(|e| format!("webhook.secret: {e}"))?;
    for event in webhook.events.iter().flatten() {
        if !WEBHOOK_EVENTS.contains(&event.as_str()) {
            return Err(format!(
                "webhook.events: {event:?} is not one of {WEBHOOK_EVENTS:?}"
            ));
        }
    }
    serde_json::to_string(&webhook).map_err(|e| e.to_string())
}

/// The event a terminal state produces.
pub(crate) fn event_for(state: JobState) -> &'static str {
    match state {
        JobState::Failed => "job.failed",
        JobState::Cancelled => "job.cancelled",
        _ => "job.completed",
    }
}

#[derive(Serialize)]
struct Payload<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    timestamp: &'a str,
    data: Data<'a>,
}

#[derive(Serialize)]
struct Data<'a> {
    #[serde(flatten)]
    status: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    result_url: Option<String>,
}

/// The outbox rows for job `job` ending in `state`: one per subscribed target (the job's own
/// target, then every configured endpoint). `status` is the job's final status view; the result
/// travels inline up to `max_inline_result_bytes`, else as a `result_url`.
pub(crate) fn deliveries(
    config: &WebhooksConfig,
    job: &JobId,
    job_target: Option<&JobWebhook>,
    state: JobState,
    status: &Value,
    result: Option<&Bytes>,
) -> Result<Vec<NewDelivery>, serde_json::Error> {
    let event = event_for(state);
    let job_target = job_target
        .filter(|w| w.wants(event))
        .map(|w| (w.url.clone(), "job".to_owned()));
    let endpoint_targets = config
        .endpoints
        .iter()
        .filter(|e| e.events.iter().any(|ev| ev == event))
        .map(|e| (e.url.clone(), format!("endpoint:{}", e.url)));
    let targets: Vec<(String, String)> = job_target.into_iter().chain(endpoint_targets).collect();
    if targets.is_empty() {
        return Ok(Vec::new());
    }
    let inline = result
        .filter(|r| r.len() <= config.max_inline_result_bytes)
        .and_then(|r| serde_json::from_slice::<&RawValue>(r).ok());
    let result_url = (result.is_some() && inline.is_none())
        .then(|| format!("{}/v1/jobs/{job}/result", config.public_base_url));
    let timestamp = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    let payload = Payload {
        kind: event,
        timestamp: &timestamp,
        data: Data {
            status,
            result: inline,
            result_url,
        },
    };
    let body = Bytes::from(serde_json::to_vec(&payload)?);
    Ok(targets
        .into_iter()
        .map(|(url, target)| NewDelivery {
            id: signing::new_message_id(),
            event: event.to_owned(),
            url,
            target,
            payload: body.clone(),
        })
        .collect())
}
