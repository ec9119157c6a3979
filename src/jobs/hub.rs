//! `JobHub`: in-process fan-out of job events to whoever watches (SSE streams, long polls).
//! Watching never causes an upstream call: the engine polls each upstream job once, whatever the
//! number of watchers.
use tokio::sync::broadcast;

use crate::types::JobId;

/// One event about one job, as it happened. Watchers read durable events (with their sequence
/// numbers, the SSE ids) from the store; this only tells them when to look.
#[derive(Debug, Clone)]
pub(crate) struct JobEvent {
    pub job_id: JobId,
    /// `progress`, `batch`, `completed`, `failed` or `cancelled`.
    pub name: &'static str,
}

impl JobEvent {
    pub(crate) fn is_terminal(&self) -> bool {
        matches!(self.name, "completed" | "failed" | "cancelled")
    }
}

#[derive(Debug, Clone)]
pub(crate) struct JobHub {
    tx: broadcast::Sender<JobEvent>,
}

/// Events buffered per subscriber; a slow subscriber that falls behind re-reads the job.
const CAPACITY: usize = 1024;

impl JobHub {
    pub(crate) fn new() -> Self {
        let (tx, _) = broadcast::channel(CAPACITY);
        Self { tx }
    }

    pub(crate) fn publish(&self, event: JobEvent) {
        // No subscriber is fine: nobody is watching.
        let _ = self.tx.send(event);
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<JobEvent> {
        self.tx.subscribe()
    }
}

impl Default for JobHub {
    fn default() -> Self {
        Self::new()
    }
}
