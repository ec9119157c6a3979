//! What goes into the webhook outbox when a job ends: which targets, which event, which payload.
//! Pure functions; the store writes the rows in the same transaction as the job's end.
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Value, value::RawValue};

use super::{signing, ssrf::TargetPolicy};
use crate::{
    config::{WEBHOOK_EVENTS, WebhooksConfig},
    jobs::JobState,
    store::{JobRecord, NewDelivery},
};

/// A job's own webhook target, as given on submit and stored with the job.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobWebhook {
    pub url: String,
    /// One `whsec_…` secret, or several (rotation: one signature each).
    pub secret: OneOrMany,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn as_slice(&self) -> &[String] {
        match self {
            Self::One(one) => std::slice::from_ref(one),
            Self::Many(many) => many,
        }
    }
}

impl JobWebhook {
    pub fn secrets(&self) -> Result<Vec<signing::SigningSecret>, String> {
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
pub fn validate(raw: &str, policy: &TargetPolicy) -> Result<String, String> {
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
pub fn event_for(state: JobState) -> &'static str {
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

/// The outbox rows for a job ending in `state`: one per subscribed target (the job's own, then
/// every configured endpoint). `status` is the job's final status view; the result travels
/// inline up to `max_inline_result_bytes`, else as a `result_url`.
pub fn deliveries(
    config: &WebhooksConfig,
    record: &JobRecord,
    state: JobState,
    status: &Value,
    result: Option<&Bytes>,
) -> Vec<NewDelivery> {
    let event = event_for(state);
    let job_target = record
        .webhook
        .as_deref()
        .and_then(|raw| serde_json::from_str::<JobWebhook>(raw).ok())
        .filter(|w| w.wants(event))
        .map(|w| (w.url, "job".to_owned()));
    let endpoint_targets = config
        .endpoints
        .iter()
        .filter(|e| e.events.iter().any(|ev| ev == event))
        .map(|e| (e.url.clone(), format!("endpoint:{}", e.url)));
    let targets: Vec<(String, String)> = job_target.into_iter().chain(endpoint_targets).collect();
    if targets.is_empty() {
        return Vec::new();
    }
    let inline = result
        .filter(|r| r.len() <= config.max_inline_result_bytes)
        .and_then(|r| serde_json::from_slice::<&RawValue>(r).ok());
    let result_url = (result.is_some() && inline.is_none())
        .then(|| format!("{}/v1/jobs/{}/result", config.public_base_url, record.id));
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
    let Ok(body) = serde_json::to_vec(&payload) else {
        return Vec::new();
    };
    let body = Bytes::from(body);
    targets
        .into_iter()
        .map(|(url, target)| NewDelivery {
            id: signing::new_message_id(),
            event: event.to_owned(),
            url,
            target,
            payload: body.clone(),
        })
        .collect()
}

/// The job's status view as it stands once it ends in `state` (what a webhook carries).
pub fn final_status(record: &JobRecord, state: JobState, error: Option<&str>) -> Value {
    let mut view = serde_json::to_value(crate::jobs::service::view(record)).unwrap_or(Value::Null);
    if let Some(obj) = view.as_object_mut() {
        obj.insert(
            "status".to_owned(),
            Value::String(state.as_str().to_owned()),
        );
        obj.insert("progress_percent".to_owned(), Value::from(100.0));
        obj.insert(
            "finished_at".to_owned(),
            Value::String(crate::jobs::service::rfc3339(crate::store::now_millis())),
        );
        obj.insert(
            "error".to_owned(),
            error.map_or(Value::Null, |e| Value::String(e.to_owned())),
        );
    }
    view
}
