//! Lifecycle: the readiness latch, the OS signal future, and the supervisor that owns every task.
use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use crate::tasks::{Ended, KeyedTasks};

/// Whether this instance should receive traffic: serving, and not draining.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<ReadinessInner>);

#[derive(Debug, Default)]
struct ReadinessInner {
    serving: AtomicBool,
    draining: AtomicBool,
}

// === impl Readiness ===

impl Readiness {
    pub fn set_serving(&self) {
        self.0.serving.store(true, Ordering::SeqCst);
    }

    /// From now on `/readyz` answers 503; in-flight requests keep being served.
    pub fn start_draining(&self) {
        self.0.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.0.draining.load(Ordering::SeqCst)
    }

    pub fn is_ready(&self) -> bool {
        self.0.serving.load(Ordering::SeqCst) && !self.is_draining()
    }
}

/// Resolves on SIGTERM or SIGINT (SIGTERM matters: as PID 1 in a container nothing else stops us).
pub async fn signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!(signal = "SIGINT", "shutdown requested"),
        () = term => tracing::info!(signal = "SIGTERM", "shutdown requested"),
    }
}

/// A task's result as the supervisor sees it: its name, and why it failed if it did.
pub(crate) type TaskResult = (&'static str, Result<(), String>);

/// Owns every long-lived task. When any task ends before shutdown was requested, cleanly or
/// not, the whole process shuts down: a half-running gateway is worse than a restart. Dropping
/// the supervisor aborts whatever still runs.
#[derive(Debug)]
pub(crate) struct Supervisor {
    tasks: KeyedTasks<&'static str, Result<(), String>>,
}

// === impl Supervisor ===

impl Supervisor {
    pub(crate) fn new() -> Self {
        Self {
            tasks: KeyedTasks::new(),
        }
    }

    pub(crate) fn spawn<F, E>(&mut self, name: &'static str, task: F)
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display,
    {
        self.tasks.spawn(name, async move {
            task.await.map_err(|error| error.to_string())
        });
    }

    /// Waits for the next task to end. `None` when none is left.
    pub(crate) async fn next(&mut self) -> Option<TaskResult> {
        loop {
            let (name, ended) = self.tasks.join_next().await?;
            match ended {
                Ok(result) => return Some((name, result)),
                Err(Ended::Panicked(panic)) => {
                    return Some((name, Err(format!("panicked: {panic}"))));
                }
                Err(Ended::Aborted) => {}
            }
        }
    }

    /// Waits until every task ended, keeping the first failure in `failure`. Cancel-safe: run
    /// it under a timeout and call it again.
    pub(crate) async fn wait_all(&mut self, failure: &mut Option<(&'static str, String)>) {
        while let Some((task, result)) = self.next().await {
            if let Err(reason) = result {
                failure.get_or_insert((task, reason));
            }
        }
    }

    /// Tasks still running.
    pub(crate) fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Aborts whatever is still running and waits until it is gone; returns how many there were.
    pub(crate) async fn abort_all(&mut self) -> usize {
        let left = self.tasks.len();
        self.tasks.shutdown().await;
        left
    }
}

impl Default for Supervisor {
    fn default() -> Self {
        Self::new()
    }
}
