//! `WebhookDispatcher`: delivers the outbox. One worker; due rows are claimed from the store,
//! attempted with bounded concurrency, and every attempt is recorded with the row's new state in
//! one transaction. A crash between sending and recording re-sends: at-least-once, receivers
//! deduplicate on `webhook-id`. The SSRF check runs on every attempt and the connection is pinned
//! to the checked addresses (no second resolution); redirects are not followed.
use std::{
    collections::HashSet,
    sync::Arc,
    time::{Duration, Instant},
};

use http::{HeaderMap, HeaderValue, StatusCode};
use tokio::{sync::Notify, task::JoinSet};
use tokio_util::sync::CancellationToken;

use super::{
    client::WebhookClient,
    outbox::JobWebhook,
    signing::{self, SigningSecret},
    ssrf::TargetPolicy,
};
use crate::{
    config::Config,
    error::ErrorChain,
    retry,
    store::{Attempt, DeliveryState, DeliveryWork, JobStore, StoreError, now_millis},
    telemetry,
};

/// Wakes the dispatcher after outbox rows commit.
#[derive(Debug, Clone, Default)]
pub struct WebhookWaker(Arc<Notify>);

impl WebhookWaker {
    pub fn wake(&self) {
        self.0.notify_one();
    }
}

#[derive(Debug)]
pub struct WebhookDispatcher {
    store: Arc<dyn JobStore>,
    config: Arc<Config>,
    policy: Arc<TargetPolicy>,
    client: WebhookClient,
    waker: WebhookWaker,
}

/// Longest sleep between two looks at the outbox (new rows also wake it at once).
const IDLE_CHECK: Duration = Duration::from_secs(5);

impl WebhookDispatcher {
    /// Fails only when the HTTP client cannot be built (no TLS roots, say).
    pub fn new(
        store: Arc<dyn JobStore>,
        config: Arc<Config>,
        policy: Arc<TargetPolicy>,
        waker: WebhookWaker,
    ) -> Result<Self, reqwest::Error> {
        let client = WebhookClient::new(Arc::clone(&policy), config.webhooks.timeout)?;
        Ok(Self {
            store,
            config,
            policy,
            client,
            waker,
        })
    }

    pub async fn run(self, shutdown: CancellationToken) -> Result<(), StoreError> {
        let this = Arc::new(self);
        let mut tasks: JoinSet<String> = JoinSet::new();
        let mut busy: HashSet<String> = HashSet::new();
        let concurrency = this.config.webhooks.concurrency;
        loop {
            let free = concurrency.saturating_sub(tasks.len());
            if free > 0 {
                match this
                    .store
                    .due_deliveries(now_millis(), free, busy.iter().cloned().collect())
                    .await
                {
                    Ok(due) => {
                        for work in due {
                            busy.insert(work.id.clone());
                            let this = Arc::clone(&this);
                            tasks.spawn(async move {
                                let id = work.id.clone();
                                this.attempt(work).await;
                                id
                            });
                        }
                    }
                    Err(error) => {
                        tracing::warn!(error = %ErrorChain(&error), "cannot read the outbox; retrying");
                    }
                }
            }
            this.record_depths().await;
            let wait = match this.store.next_delivery_at().await {
                Ok(Some(at)) => {
                    Duration::from_millis(u64::try_from(at - now_millis()).unwrap_or(0))
                        .min(IDLE_CHECK)
                }
                _ => IDLE_CHECK,
            };
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                Some(done) = tasks.join_next() => {
                    if let Ok(id) = done {
                        busy.remove(&id);
                    }
                }
                () = this.waker.0.notified() => {}
                () = tokio::time::sleep(wait), if tasks.len() < concurrency => {}
            }
        }
        // In-flight attempts get the grace period; what is left stays pending for the next start.
        let grace = this.config.server.shutdown_grace_period;
        if tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} })
            .await
            .is_err()
        {
            tracing::warn!(
                left = tasks.len(),
                "webhook attempts still running at shutdown; they are retried on restart"
            );
            tasks.abort_all();
        }
        Ok(())
    }

    async fn record_depths(&self) {
        if let Ok(counts) = self.store.delivery_counts().await {
            for state in [DeliveryState::Pending, DeliveryState::Dead] {
                let n = counts
                    .iter()
                    .find(|(s, _)| *s == state)
                    .map_or(0, |(_, n)| *n);
                #[expect(clippy::cast_precision_loss, reason = "a gauge of a row count")]
                metrics::gauge!(telemetry::WEBHOOK_DEPTH, "state" => state.as_str()).set(n as f64);
            }
        }
    }

    /// The signing secrets of a delivery's target. A store that fails for a moment makes this
    /// attempt fail (retried on the schedule); a target that is gone or unreadable ends the delivery.
    async fn secrets(&self, work: &DeliveryWork) -> Result<Vec<SigningSecret>, Failure> {
        if work.target == "job" {
            let record = self.store.job(&work.job_id).await.map_err(|error| {
                let reason = format!(
                    "the job's webhook could not be read: {}",
                    ErrorChain(&error)
                );
                if error.is_transient() {
                    Failure::Attempt(reason)
                } else {
                    Failure::Permanent(reason)
                }
            })?;
            let webhook = record
                .and_then(|r| r.webhook)
                .ok_or_else(|| Failure::Permanent("the job's webhook is gone".to_owned()))?;
            let webhook = JobWebhook::from_stored(&webhook).map_err(|e| {
                Failure::Permanent(format!("the job's stored webhook is unreadable: {e}"))
            })?;
            return webhook.secrets().map_err(Failure::Permanent);
        }
        let url = work.target.strip_prefix("endpoint:").unwrap_or(&work.url);
        let endpoint = self
            .config
            .webhooks
            .endpoints
            .iter()
            .find(|e| e.url == url)
            .ok_or_else(|| Failure::Permanent("the endpoint is no longer configured".to_owned()))?;
        endpoint
            .secrets
            .iter()
            .map(|s| {
                SigningSecret::parse(s.expose()).map_err(|e| Failure::Permanent(e.to_string()))
            })
            .collect()
    }

    #[tracing::instrument(skip_all, fields(webhook_id = %work.id, job_id = %work.job_id, attempt = work.attempts + 1))]
    async fn attempt(&self, work: DeliveryWork) {
        let started_ms = now_millis();
        if work.attempts == 0 {
            #[expect(clippy::cast_precision_loss, reason = "milliseconds to seconds")]
            let since_completion = (started_ms - work.created_at).max(0) as f64 / 1000.0;
            metrics::histogram!(telemetry::WEBHOOK_FIRST_ATTEMPT).record(since_completion);
        }
        let started = Instant::now();
        let (status, error, retry_after) = match self.send(&work).await {
            Ok((status, retry_after)) => (Some(status), None, retry_after),
            Err(Failure::Permanent(error)) => {
                self.finish(&work, started, None, Some(error), DeliveryState::Dead, 0)
                    .await;
                return;
            }
            Err(Failure::Attempt(error)) => (None, Some(error), None),
        };
        let state = match status {
            Some(s) if s.is_success() => DeliveryState::Delivered,
            Some(StatusCode::GONE) => {
                if let Err(e) = self.store.disable_target(&work.url).await {
                    tracing::warn!(error = %ErrorChain(&e), "could not record the disabled target");
                }
                DeliveryState::Disabled
            }
            _ => DeliveryState::Pending,
        };
        let error = error.or_else(|| {
            status
                .filter(|s| !s.is_success())
                .map(|s| format!("receiver answered {s}"))
        });
        let attempt_number = usize::try_from(work.attempts).unwrap_or(usize::MAX) + 1;
        let schedule = &self.config.webhooks.retry_schedule;
        let (state, next_at) = if state == DeliveryState::Pending {
            match schedule.get(attempt_number - 1) {
                None => (DeliveryState::Dead, 0),
                Some(step) => {
                    let delay = retry_after.map_or_else(
                        || retry::jittered(*step, 0.2, &mut rand::rng()),
                        |wait| {
                            retry::honour_retry_after(wait, self.config.webhooks.max_retry_after)
                        },
                    );
                    (
                        DeliveryState::Pending,
                        now_millis() + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX),
                    )
                }
            }
        } else {
            (state, 0)
        };
        self.finish(&work, started, status, error, state, next_at)
            .await;
    }

    async fn finish(
        &self,
        work: &DeliveryWork,
        started: Instant,
        status: Option<StatusCode>,
        error: Option<String>,
        state: DeliveryState,
        next_at: i64,
    ) {
        let latency = started.elapsed();
        let outcome = match state {
            DeliveryState::Delivered => "delivered",
            DeliveryState::Pending => "retry",
            DeliveryState::Dead => "dead_lettered",
            DeliveryState::Disabled => "disabled",
        };
        metrics::counter!(telemetry::WEBHOOK_DELIVERIES, "outcome" => outcome).increment(1);
        metrics::histogram!(telemetry::WEBHOOK_LATENCY).record(latency.as_secs_f64());
        match state {
            DeliveryState::Delivered => {
                tracing::info!(status = status.map(|s| s.as_u16()), "webhook delivered");
            }
            DeliveryState::Dead => tracing::error!(
                error = error.as_deref().unwrap_or(""),
                "webhook dead-lettered after its last attempt"
            ),
            _ => tracing::warn!(
                status = status.map(|s| s.as_u16()),
                error = error.as_deref().unwrap_or(""),
                outcome,
                "webhook attempt failed"
            ),
        }
        let attempt = Attempt {
            delivery_id: work.id.clone(),
            at: now_millis(),
            status: status.map(|s| s.as_u16()),
            latency_ms: u64::try_from(latency.as_millis()).unwrap_or(u64::MAX),
            error,
            new_state: state,
            next_at,
        };
        if let Err(e) = self.store.record_attempt(attempt).await {
            tracing::warn!(error = %ErrorChain(&e), "could not record a webhook attempt; it will be retried");
        }
    }

    /// One HTTP attempt. `Err(Permanent)` ends the delivery; `Err(Attempt)` is one failed try.
    async fn send(&self, work: &DeliveryWork) -> Result<(StatusCode, Option<Duration>), Failure> {
        let disabled = self
            .store
            .is_target_disabled(&work.url)
            .await
            .map_err(|error| {
                Failure::Attempt(format!(
                    "could not read whether the target is disabled: {}",
                    ErrorChain(&error)
                ))
            })?;
        if disabled {
            return Err(Failure::Permanent(
                "the target answered 410 Gone earlier and is disabled".to_owned(),
            ));
        }
        let secrets = self.secrets(work).await?;
        if secrets.is_empty() {
            return Err(Failure::Permanent("no signing secret".to_owned()));
        }
        let checked = self
            .policy
            .check_url(&work.url)
            .map_err(|refusal| Failure::Permanent(format!("target refused: {refusal}")))?;
        let timestamp = now_millis() / 1000;
        let signature = signing::sign(&secrets, &work.id, timestamp, &work.payload);
        let mut headers = HeaderMap::new();
        let header = |v: &str| {
            HeaderValue::try_from(v)
                .map_err(|_| Failure::Permanent("unusable header value".to_owned()))
        };
        headers.insert("webhook-id", header(&work.id)?);
        headers.insert("webhook-timestamp", HeaderValue::from(timestamp));
        headers.insert("webhook-signature", header(&signature)?);
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        // The client's resolver checks every address the name resolves to and connects only
        // to those (see `client`); a literal address was checked by `check_url`.
        let response = self
            .client
            .post(&checked, headers, work.payload.clone())
            .await
            .map_err(|e| Failure::Attempt(e.to_string()))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        Ok((status, retry_after))
    }
}

enum Failure {
    Permanent(String),
    Attempt(String),
}
