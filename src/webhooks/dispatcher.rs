//! `WebhookDispatcher`: delivers the outbox. One worker; due rows are claimed from the store,
//! attempted with bounded concurrency, and every attempt is recorded with the row's new state in
//! one transaction. A crash between sending and recording re-sends: at-least-once, receivers
//! deduplicate on `webhook-id`. The SSRF check runs on every attempt and the connection is pinned
//! to the checked addresses (no second resolution); redirects are not followed.
use std::{
    collections::HashMap,
    future::Future,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use http::{HeaderMap, HeaderValue, StatusCode};
use tokio::sync::Notify;
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
    store::{Attempt, DeliveryState, DeliveryWork, JobStore, StoreError},
    tasks::{Ended, KeyedTasks},
    telemetry,
    types::{Millis, now_millis},
};

/// Wakes the dispatcher after outbox rows commit.
#[derive(Debug, Clone, Default)]
pub(crate) struct WebhookWaker(Arc<Notify>);

impl WebhookWaker {
    pub(crate) fn wake(&self) {
        self.0.notify_one();
    }
}

#[derive(Debug)]
pub(crate) struct WebhookDispatcher {
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
    pub(crate) fn new(
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

    /// Delivers until `shutdown`, then claims nothing new: attempts in flight may finish until
    /// `hard_stop` (the end of the shutdown grace period); the rest stay pending in the outbox
    /// and are retried on the next start.
    pub(crate) async fn run(
        self,
        shutdown: CancellationToken,
        hard_stop: CancellationToken,
    ) -> Result<(), StoreError> {
        let waker = self.waker.clone();
        let concurrency = self.config.webhooks.concurrency;
        drive(
            Arc::new(self),
            &waker,
            concurrency,
            AFTER_PANIC,
            &shutdown,
            &hard_stop,
        )
        .await;
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

    #[tracing::instrument(skip_all, fields(webhook_id = %work.id, job_id = %work.job_id, event = %work.event, attempt = work.attempts + 1))]
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
            .and_then(|v| retry::parse_retry_after(v, SystemTime::now()));
        Ok((status, retry_after))
    }
}

/// How long a delivery whose task panicked is left alone before it is claimed again (it stays
/// pending in the store meanwhile; a panic is a bug, and retrying it at once would repeat it).
const AFTER_PANIC: Duration = Duration::from_secs(30);

/// What the delivery loop drives: the outbox and one attempt. `WebhookDispatcher` is the real
/// one; the loop's tests script one.
trait Outbox: Send + Sync + 'static {
    /// Up to `limit` pending deliveries that are due, none of `exclude`.
    fn due(
        &self,
        limit: usize,
        exclude: Vec<String>,
    ) -> impl Future<Output = Result<Vec<DeliveryWork>, StoreError>> + Send;
    /// When the earliest pending delivery is due (it may be one being attempted).
    fn next_due_at(&self) -> impl Future<Output = Result<Option<Millis>, StoreError>> + Send;
    /// Publishes the outbox depth gauges.
    fn report_depths(&self) -> impl Future<Output = ()> + Send;
    /// One attempt at one delivery, recorded in the store.
    fn deliver(&self, work: DeliveryWork) -> impl Future<Output = ()> + Send;
}

impl Outbox for WebhookDispatcher {
    async fn due(
        &self,
        limit: usize,
        exclude: Vec<String>,
    ) -> Result<Vec<DeliveryWork>, StoreError> {
        self.store
            .due_deliveries(now_millis(), limit, exclude)
            .await
    }

    async fn next_due_at(&self) -> Result<Option<Millis>, StoreError> {
        self.store.next_delivery_at().await
    }

    async fn report_depths(&self) {
        self.record_depths().await;
    }

    async fn deliver(&self, work: DeliveryWork) {
        self.attempt(work).await;
    }
}

/// The delivery loop: claim what is due (bounded by `concurrency`), attempt it in tasks keyed by
/// delivery id, until `shutdown`; then the drain up to `hard_stop`. A delivery is claimed once
/// at a time; a task that panicked frees its delivery, which is claimed again after `after_panic`.
async fn drive<O: Outbox>(
    outbox: Arc<O>,
    waker: &WebhookWaker,
    concurrency: usize,
    after_panic: Duration,
    shutdown: &CancellationToken,
    hard_stop: &CancellationToken,
) {
    let mut tasks: KeyedTasks<String, ()> = KeyedTasks::new();
    // Deliveries whose task panicked, left alone until then.
    let mut cooling: HashMap<String, tokio::time::Instant> = HashMap::new();
    loop {
        let now = tokio::time::Instant::now();
        cooling.retain(|_, until| *until > now);
        let free = concurrency.saturating_sub(tasks.len());
        if free > 0 {
            let exclude = tasks.busy().chain(cooling.keys()).cloned().collect();
            match outbox.due(free, exclude).await {
                Ok(due) => {
                    for work in due {
                        let outbox = Arc::clone(&outbox);
                        tasks.spawn(work.id.clone(), async move { outbox.deliver(work).await });
                    }
                }
                Err(error) => {
                    tracing::warn!(error = %ErrorChain(&error), "cannot read the outbox; retrying");
                }
            }
        }
        outbox.report_depths().await;
        // The earliest due time may belong to a delivery being attempted or cooling down: only a
        // time still ahead is worth waking for; finished tasks and new rows wake the loop anyway.
        let mut wait = match outbox.next_due_at().await {
            Ok(Some(at)) if at > now_millis() => {
                Duration::from_millis(u64::try_from(at - now_millis()).unwrap_or(0)).min(IDLE_CHECK)
            }
            _ => IDLE_CHECK,
        };
        if let Some(until) = cooling.values().min() {
            wait = wait.min(until.saturating_duration_since(now));
        }
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            Some((id, ended)) = tasks.join_next() => {
                if let Err(Ended::Panicked(panic)) = ended {
                    tracing::error!(
                        webhook_id = %id,
                        panic,
                        retry_in = ?after_panic,
                        "a webhook delivery task panicked; the delivery stays pending and is retried"
                    );
                    cooling.insert(id, tokio::time::Instant::now() + after_panic);
                }
            }
            () = waker.0.notified() => {}
            () = tokio::time::sleep(wait), if tasks.len() < concurrency => {}
        }
    }
    tokio::select! {
        () = async {
            while let Some((id, ended)) = tasks.join_next().await {
                if let Err(Ended::Panicked(panic)) = ended {
                    tracing::error!(webhook_id = %id, panic, "a webhook delivery task panicked; the delivery stays pending");
                }
            }
        } => {}
        () = hard_stop.cancelled() => {
            tracing::warn!(
                left = tasks.len(),
                "webhook attempts still running at the end of the grace period; they are retried on the next start"
            );
            tasks.shutdown().await;
        }
    }
}

enum Failure {
    Permanent(String),
    Attempt(String),
}

#[cfg(test)]
mod tests {
    //! The delivery loop against a scripted outbox: a delivery stays pending until an attempt
    //! at it returns; attempts panic on request.
    use std::{collections::HashSet, sync::Mutex};

    use bytes::Bytes;
    use tokio::{sync::watch, task::JoinSet};

    use super::*;
    use crate::types::JobId;

    #[derive(Debug, Default)]
    struct Model {
        pending: Vec<String>,
        /// Every attempt as it started.
        attempts: Vec<(String, tokio::time::Instant)>,
        /// Attempts that panic, once each.
        panic_next: HashSet<String>,
        /// Claims of a delivery while an attempt at it was running.
        double_claims: usize,
        running: HashSet<String>,
    }

    #[derive(Debug)]
    struct Script {
        model: Mutex<Model>,
        changed: watch::Sender<()>,
    }

    impl Script {
        fn edit<R>(&self, edit: impl FnOnce(&mut Model) -> R) -> R {
            let result = edit(&mut self.model.lock().unwrap());
            self.changed.send_replace(());
            result
        }

        fn attempts_at(&self, id: &str) -> Vec<tokio::time::Instant> {
            let model = self.model.lock().unwrap();
            model
                .attempts
                .iter()
                .filter(|(i, _)| i == id)
                .map(|(_, at)| *at)
                .collect()
        }
    }

    impl Outbox for Script {
        async fn due(
            &self,
            limit: usize,
            exclude: Vec<String>,
        ) -> Result<Vec<DeliveryWork>, StoreError> {
            Ok(self.edit(|m| {
                let due: Vec<String> = m
                    .pending
                    .iter()
                    .filter(|id| !exclude.contains(id))
                    .take(limit)
                    .cloned()
                    .collect();
                m.double_claims += due.iter().filter(|id| m.running.contains(*id)).count();
                due.into_iter()
                    .map(|id| DeliveryWork {
                        id,
                        job_id: JobId::generate(),
                        event: "job.completed".to_owned(),
                        url: "http://127.0.0.1:9/hook".to_owned(),
                        target: "job".to_owned(),
                        payload: Bytes::new(),
                        attempts: 0,
                        created_at: 0,
                    })
                    .collect()
            }))
        }

        async fn next_due_at(&self) -> Result<Option<Millis>, StoreError> {
            // Everything pending is long due, including what is being attempted.
            Ok(self.edit(|m| (!m.pending.is_empty()).then_some(0)))
        }

        async fn report_depths(&self) {}

        async fn deliver(&self, work: DeliveryWork) {
            let panics = self.edit(|m| {
                m.running.insert(work.id.clone());
                m.attempts
                    .push((work.id.clone(), tokio::time::Instant::now()));
                m.panic_next.remove(&work.id)
            });
            if panics {
                self.edit(|m| m.running.remove(&work.id));
            }
            assert!(!panics, "scripted panic in delivery {}", work.id);
            self.edit(|m| {
                m.running.remove(&work.id);
                m.pending.retain(|id| *id != work.id);
            });
        }
    }

    #[tokio::test]
    async fn a_panicked_delivery_stays_pending_and_is_attempted_again_after_a_backoff() {
        const AFTER: Duration = Duration::from_millis(200);
        let script = Arc::new(Script {
            model: Mutex::new(Model {
                pending: vec!["msg_broken".to_owned(), "msg_fine".to_owned()],
                panic_next: HashSet::from(["msg_broken".to_owned()]),
                ..Model::default()
            }),
            changed: watch::channel(()).0,
        });
        let shutdown = CancellationToken::new();
        let mut task = JoinSet::new();
        let (outbox, stop) = (Arc::clone(&script), shutdown.clone());
        task.spawn(async move {
            let waker = WebhookWaker::default();
            drive(outbox, &waker, 4, AFTER, &stop, &CancellationToken::new()).await;
        });
        let mut changes = script.changed.subscribe();
        let delivered = tokio::time::timeout(
            Duration::from_secs(10),
            changes.wait_for(|()| script.model.lock().unwrap().pending.is_empty()),
        )
        .await;
        assert!(delivered.is_ok(), "{:?}", script.model.lock().unwrap());

        let broken = script.attempts_at("msg_broken");
        assert_eq!(broken.len(), 2, "attempted, panicked, attempted again");
        assert!(
            broken[1] - broken[0] >= AFTER,
            "the retry waited for the backoff"
        );
        assert_eq!(script.attempts_at("msg_fine").len(), 1);
        assert_eq!(
            script.model.lock().unwrap().double_claims,
            0,
            "never claimed while attempted"
        );
        shutdown.cancel();
        task.join_next().await.unwrap().unwrap();
    }
}
