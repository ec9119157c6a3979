//! The job engine's scheduler loop: commands from the API, due work, finished work, store scans
//! and reaping, in one `select!`, and the drain at shutdown.
//!
//! The loop is generic over a `Worker` (the engine's `Ctx` in production, a scripted one in the
//! tests below), so what it guarantees is tested on its own: a batch has one place at most, a
//! panicked task frees its key and its work is picked up from the store after a backoff, and a
//! command dropped on a full queue triggers a store scan.
use std::{
    collections::{HashMap, HashSet},
    future::Future,
    time::Duration,
};

use tokio::{
    sync::{Notify, mpsc},
    time::{Instant, MissedTickBehavior},
};
use tokio_util::{
    sync::CancellationToken,
    time::{DelayQueue, delay_queue},
};

use super::engine::{Action, Command, FINALIZE, Key, Next, Work};
use crate::{
    error::ErrorChain,
    store::{StoreError, UnfinishedBatch},
    tasks::{Ended, KeyedTasks},
    types::{BatchState, JobId, now_millis},
};

/// How the scheduler loop is paced.
#[derive(Debug, Clone, Copy)]
pub(super) struct Tuning {
    /// Tasks running at once.
    pub(super) concurrency: usize,
    /// Store scans for runnable work, besides the one at start and those after a missed command.
    pub(super) rescan_every: Duration,
    /// After a task panicked, the store is scanned again this much later.
    pub(super) after_panic: Duration,
    pub(super) reap_every: Duration,
}

/// What a store scan found: every unfinished batch, and the jobs whose batches all ended.
#[derive(Debug, Default)]
pub(super) struct Runnable {
    pub(super) batches: Vec<UnfinishedBatch>,
    pub(super) finalize: Vec<JobId>,
}

/// The work the scheduler loop runs. `Ctx` does the real work; the loop's tests script one.
pub(super) trait Worker: Clone + Send + Sync + 'static {
    /// One step of one batch (submit or poll); says what comes next.
    fn process_work(&self, work: Work) -> impl Future<Output = Next> + Send;
    /// Ends a job whose batches all ended.
    fn finalize_job(&self, job: JobId) -> impl Future<Output = ()> + Send;
    /// The runnable work according to the store, the source of truth.
    fn scan(&self) -> impl Future<Output = Result<Runnable, StoreError>> + Send;
    /// The batches of a job just created that need work: pending ones, and running ones (a run
    /// the caller started upstream itself); none when the job is gone.
    fn new_batches(
        &self,
        job: &JobId,
    ) -> impl Future<Output = Result<Vec<(u32, BatchState)>, StoreError>> + Send;
    /// Deletes finished jobs past their retention.
    fn reap(&self) -> impl Future<Output = ()> + Send;
}

/// The scheduler loop: commands, due work, finished work, store scans and reaping, until
/// `shutdown`; then the drain up to `hard_stop`. Fails only when the first store scan fails.
pub(super) async fn drive<W: Worker>(
    worker: W,
    tuning: Tuning,
    commands: &mut mpsc::Receiver<Command>,
    missed: &Notify,
    shutdown: &CancellationToken,
    hard_stop: &CancellationToken,
) -> Result<(), StoreError> {
    let mut slots = Slots::new(worker);
    // Recovery: everything unfinished in the store; batches with an upstream id are polled.
    let runnable = slots.worker.scan().await?;
    slots.adopt(runnable);
    let mut rescan = tokio::time::interval_at(after(tuning.rescan_every), tuning.rescan_every);
    rescan.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut reap = tokio::time::interval(tuning.reap_every);
    reap.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // When a task panicked: the store scan that picks its work up again.
    let mut scan_after_panic: Option<Instant> = None;

    loop {
        let panic_scan_at = scan_after_panic.unwrap_or_else(Instant::now);
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            Some(command) = commands.recv() => slots.command(command).await,
            Some(expired) = std::future::poll_fn(|cx| slots.queue.poll_expired(cx)), if slots.tasks.len() < tuning.concurrency => {
                slots.start(expired.into_inner());
            }
            Some((key, ended)) = slots.tasks.join_next() => {
                if slots.finished(key, ended) {
                    let at = after(tuning.after_panic);
                    scan_after_panic = Some(scan_after_panic.map_or(at, |t| t.min(at)));
                }
            }
            () = missed.notified() => slots.rescan("a command was dropped while the engine was busy").await,
            () = tokio::time::sleep_until(panic_scan_at), if scan_after_panic.is_some() => {
                scan_after_panic = None;
                slots.rescan("a task panicked").await;
            }
            _ = rescan.tick() => slots.rescan("periodic").await,
            _ = reap.tick() => slots.worker.reap().await,
        }
    }
    slots.stop(hard_stop).await;
    Ok(())
}

/// `now + delay`, saturating (a configured interval of years must not overflow the clock).
fn after(delay: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(delay)
        .or_else(|| now.checked_add(Duration::from_secs(86_400 * 365)))
        .unwrap_or(now)
}

/// The loop's bookkeeping. A batch has one place at most: queued (waiting for its time) or busy
/// (its task runs), so there is one upstream call in flight per batch however often the work is
/// asked for (a command, a finished step, a store scan).
struct Slots<W> {
    worker: W,
    queue: DelayQueue<Work>,
    queued: HashMap<Key, delay_queue::Key>,
    tasks: KeyedTasks<Key, Next>,
    /// Jobs whose finalization was asked for while one ran: it runs once more afterwards.
    refinalize: HashSet<JobId>,
}

// === impl Slots ===

impl<W: Worker> Slots<W> {
    fn new(worker: W) -> Self {
        Self {
            worker,
            queue: DelayQueue::new(),
            queued: HashMap::new(),
            tasks: KeyedTasks::new(),
            refinalize: HashSet::new(),
        }
    }

    /// Queues `work` after `delay`, unless its batch is queued or busy already.
    fn schedule(&mut self, work: Work, delay: Duration) {
        let key = (work.job.clone(), work.idx);
        if self.queued.contains_key(&key) || self.tasks.is_busy(&key) {
            return;
        }
        let entry = self.queue.insert(work, delay);
        self.queued.insert(key, entry);
    }

    /// Takes on what a store scan found; what is queued or busy already keeps its place.
    fn adopt(&mut self, runnable: Runnable) {
        for (job, idx, state) in runnable.batches {
            // A batch whose submit was cut off is submitted again (the upstream has no
            // idempotency key, so that one batch may run twice); a running one is polled.
            let action = if state == BatchState::Running {
                Action::Poll {
                    polls: 0,
                    since: now_millis(),
                }
            } else {
                Action::Submit
            };
            self.schedule(Work { job, idx, action }, Duration::ZERO);
        }
        for job in runnable.finalize {
            self.finalize(job);
        }
    }

    async fn rescan(&mut self, reason: &'static str) {
        match self.worker.scan().await {
            Ok(runnable) => self.adopt(runnable),
            Err(error) => tracing::warn!(
                error = %ErrorChain(&error),
                reason,
                "cannot scan the store for runnable work; the next scan tries again"
            ),
        }
    }

    async fn command(&mut self, command: Command) {
        match command {
            Command::Start(job) => match self.worker.new_batches(&job).await {
                Ok(batches) => self.adopt(Runnable {
                    batches: batches
                        .into_iter()
                        .map(|(idx, state)| (job.clone(), idx, state))
                        .collect(),
                    finalize: Vec::new(),
                }),
                Err(error) => tracing::warn!(
                    error = %ErrorChain(&error),
                    job_id = %job,
                    "cannot read a new job; it starts at the next store scan"
                ),
            },
            Command::Forget(job) => {
                let queue = &mut self.queue;
                self.queued.retain(|(j, _), entry| {
                    if *j == job {
                        queue.remove(entry);
                        false
                    } else {
                        true
                    }
                });
            }
        }
    }

    /// Runs due work.
    fn start(&mut self, work: Work) {
        let key = (work.job.clone(), work.idx);
        self.queued.remove(&key);
        let worker = self.worker.clone();
        self.tasks
            .spawn(key, async move { worker.process_work(work).await });
    }

    /// Finalizes `job`, or once more after the finalization running now.
    fn finalize(&mut self, job: JobId) {
        let key = (job, FINALIZE);
        if self.tasks.is_busy(&key) {
            self.refinalize.insert(key.0);
            return;
        }
        let worker = self.worker.clone();
        let job = key.0.clone();
        self.tasks.spawn(key, async move {
            worker.finalize_job(job).await;
            Next::default()
        });
    }

    /// Books a task that ended (its key is free again). `true` when it panicked: the store,
    /// where its work is still unfinished, is then scanned again after a backoff.
    fn finished(&mut self, (job, idx): Key, ended: Result<Next, Ended>) -> bool {
        match ended {
            Ok(next) => {
                for (work, delay) in next.schedule {
                    self.schedule(work, delay);
                }
                if let Some(job) = next.finalize {
                    self.finalize(job);
                }
                if idx == FINALIZE && self.refinalize.remove(&job) {
                    self.finalize(job);
                }
                false
            }
            Err(Ended::Panicked(panic)) => {
                if idx == FINALIZE {
                    self.refinalize.remove(&job);
                }
                log_panic(
                    &job,
                    idx,
                    &panic,
                    "its work is retried from the store after a backoff",
                );
                true
            }
            Err(Ended::Aborted) => false,
        }
    }

    /// After shutdown: no new work; what runs may finish until `hard_stop`, the rest is aborted
    /// and resumes from the store on the next start.
    async fn stop(&mut self, hard_stop: &CancellationToken) {
        tokio::select! {
            () = async {
                while let Some(((job, idx), ended)) = self.tasks.join_next().await {
                    if let Err(Ended::Panicked(panic)) = ended {
                        log_panic(&job, idx, &panic, "its work resumes from the store on the next start");
                    }
                }
            } => {}
            () = hard_stop.cancelled() => {
                tracing::warn!(
                    left = self.tasks.len(),
                    "job work still running at the end of the grace period; it resumes from the store on the next start"
                );
                self.tasks.shutdown().await;
            }
        }
    }
}

fn log_panic(job: &JobId, idx: u32, panic: &str, then: &'static str) {
    if idx == FINALIZE {
        tracing::error!(job_id = %job, panic, then, "finalizing a job panicked");
    } else {
        tracing::error!(job_id = %job, batch = idx, panic, then, "a batch task panicked");
    }
}

#[cfg(test)]
mod tests {
    //! The scheduler loop against a scripted worker: a store model where a batch stays
    //! unfinished until a run of it returns, and runs that panic on request. The periodic scan
    //! is an hour away, so only the mechanism under test can make the work complete in time.
    use std::sync::{Arc, Mutex};

    use tokio::{
        sync::{Semaphore, watch},
        task::JoinSet,
    };

    use super::*;
    use crate::jobs::engine::EngineHandle;

    #[derive(Debug, Default)]
    struct Model {
        /// The store's unfinished batches.
        unfinished: Vec<UnfinishedBatch>,
        /// Every job created; it can be finalized once none of its batches is unfinished.
        jobs: Vec<JobId>,
        finalized: Vec<JobId>,
        /// Every run (batch step or finalization) as it started, with the time.
        runs: Vec<(Key, Instant)>,
        /// Runs that panic, once each.
        panic_next: HashSet<Key>,
        scans: usize,
        /// `new_batches` calls that reached the gate.
        at_gate: usize,
    }

    #[derive(Debug, Clone)]
    struct Script {
        model: Arc<Mutex<Model>>,
        changed: Arc<watch::Sender<()>>,
        /// `new_batches` passes only with a permit: a store read the test can stall.
        gate: Arc<Semaphore>,
    }

    impl Script {
        fn new(gate_permits: usize) -> Self {
            Self {
                model: Arc::default(),
                changed: Arc::new(watch::channel(()).0),
                gate: Arc::new(Semaphore::new(gate_permits)),
            }
        }

        fn edit<R>(&self, edit: impl FnOnce(&mut Model) -> R) -> R {
            let result = edit(&mut self.model.lock().unwrap());
            self.changed.send_replace(());
            result
        }

        /// A new job in the store with `batches` pending batches.
        fn create_job(&self, batches: u32) -> JobId {
            let job = JobId::generate();
            self.edit(|m| {
                m.jobs.push(job.clone());
                for idx in 0..batches {
                    m.unfinished.push((job.clone(), idx, BatchState::Pending));
                }
            });
            job
        }

        /// Waits (bounded) until `check` holds on the model.
        async fn until(&self, check: impl Fn(&Model) -> bool) {
            let mut changes = self.changed.subscribe();
            let waited = tokio::time::timeout(
                Duration::from_secs(10),
                changes.wait_for(|()| check(&self.model.lock().unwrap())),
            )
            .await;
            assert!(
                waited.is_ok(),
                "condition not met: {:?}",
                self.model.lock().unwrap()
            );
        }

        fn runs_of(&self, key: &Key) -> Vec<Instant> {
            let model = self.model.lock().unwrap();
            model
                .runs
                .iter()
                .filter(|(k, _)| k == key)
                .map(|(_, at)| *at)
                .collect()
        }
    }

    impl Worker for Script {
        async fn process_work(&self, work: Work) -> Next {
            let key = (work.job.clone(), work.idx);
            let panics = self.edit(|m| {
                m.runs.push((key.clone(), Instant::now()));
                m.panic_next.remove(&key)
            });
            assert!(!panics, "scripted panic in batch {}", work.idx);
            self.edit(|m| m.unfinished.retain(|(j, i, _)| (j, *i) != (&key.0, key.1)));
            Next {
                schedule: Vec::new(),
                finalize: Some(work.job),
            }
        }

        async fn finalize_job(&self, job: JobId) {
            let key = (job.clone(), FINALIZE);
            let panics = self.edit(|m| {
                m.runs.push((key.clone(), Instant::now()));
                m.panic_next.remove(&key)
            });
            assert!(!panics, "scripted panic while finalizing");
            self.edit(|m| {
                if !m.unfinished.iter().any(|(j, _, _)| *j == job) && !m.finalized.contains(&job) {
                    m.finalized.push(job);
                }
            });
        }

        async fn scan(&self) -> Result<Runnable, StoreError> {
            Ok(self.edit(|m| {
                m.scans += 1;
                Runnable {
                    batches: m.unfinished.clone(),
                    finalize: m
                        .jobs
                        .iter()
                        .filter(|job| {
                            !m.finalized.contains(job)
                                && !m.unfinished.iter().any(|(j, _, _)| j == *job)
                        })
                        .cloned()
                        .collect(),
                }
            }))
        }

        async fn new_batches(&self, job: &JobId) -> Result<Vec<(u32, BatchState)>, StoreError> {
            self.edit(|m| m.at_gate += 1);
            let _permit = self.gate.acquire().await.unwrap();
            Ok(self.edit(|m| {
                m.unfinished
                    .iter()
                    .filter(|(j, _, state)| j == job && *state == BatchState::Pending)
                    .map(|(_, idx, state)| (*idx, *state))
                    .collect()
            }))
        }

        async fn reap(&self) {}
    }

    const TUNING: Tuning = Tuning {
        concurrency: 4,
        rescan_every: Duration::from_secs(3600),
        after_panic: Duration::from_millis(100),
        reap_every: Duration::from_secs(3600),
    };

    /// The loop on its own task, with the handle the API would hold.
    struct Running {
        handle: EngineHandle,
        shutdown: CancellationToken,
        task: JoinSet<Result<(), StoreError>>,
    }

    fn start(script: &Script, capacity: usize) -> Running {
        let (tx, mut commands) = mpsc::channel(capacity);
        let missed = Arc::new(Notify::new());
        let handle = EngineHandle {
            tx,
            missed: Arc::clone(&missed),
        };
        let shutdown = CancellationToken::new();
        let hard_stop = CancellationToken::new();
        let worker = script.clone();
        let stop = shutdown.clone();
        let mut task = JoinSet::new();
        task.spawn(async move {
            drive(worker, TUNING, &mut commands, &missed, &stop, &hard_stop).await
        });
        Running {
            handle,
            shutdown,
            task,
        }
    }

    impl Running {
        async fn stop(mut self) {
            self.shutdown.cancel();
            let ended = self.task.join_next().await.unwrap().unwrap();
            assert!(ended.is_ok(), "the loop ends cleanly: {ended:?}");
        }
    }

    #[tokio::test]
    async fn a_panicked_batch_frees_its_key_and_runs_again_after_a_backoff() {
        let script = Script::new(100);
        let job = script.create_job(2);
        script.edit(|m| m.panic_next.insert((job.clone(), 0)));
        let started = Instant::now();
        let engine = start(&script, 8);
        script.until(|m| m.finalized.contains(&job)).await;

        let panicked = script.runs_of(&(job.clone(), 0));
        assert_eq!(panicked.len(), 2, "run, panic, run again: no more, no less");
        assert!(
            panicked[1] - panicked[0] >= TUNING.after_panic,
            "the retry waited for the backoff"
        );
        assert!(
            Instant::now() - started < TUNING.rescan_every,
            "picked up by the scan after the panic, not the periodic one"
        );
        assert_eq!(
            script.runs_of(&(job.clone(), 1)).len(),
            1,
            "the sibling ran once"
        );
        engine.stop().await;
    }

    #[tokio::test]
    async fn a_panicked_finalization_is_retried_from_the_store() {
        let script = Script::new(100);
        let job = script.create_job(1);
        script.edit(|m| m.panic_next.insert((job.clone(), FINALIZE)));
        let engine = start(&script, 8);
        script.until(|m| m.finalized.contains(&job)).await;

        let finalizations = script.runs_of(&(job.clone(), FINALIZE));
        assert_eq!(finalizations.len(), 2, "panicked once, then finalized");
        assert!(finalizations[1] - finalizations[0] >= TUNING.after_panic);
        engine.stop().await;
    }

    #[tokio::test]
    async fn commands_dropped_on_a_full_queue_are_recovered_by_a_store_scan() {
        // The engine's read of a new job is stalled; meanwhile more jobs arrive than the queue holds.
        let script = Script::new(0);
        let started = Instant::now();
        let engine = start(&script, 1);
        script.until(|m| m.scans == 1).await;
        let first = script.create_job(1);
        assert!(engine.handle.send(Command::Start(first.clone())));
        script.until(|m| m.at_gate == 1).await;
        let more: Vec<JobId> = (0..4).map(|_| script.create_job(2)).collect();
        let queued: Vec<bool> = more
            .iter()
            .map(|job| engine.handle.send(Command::Start(job.clone())))
            .collect();
        assert_eq!(
            queued,
            [true, false, false, false],
            "one fits, three are dropped"
        );

        script.gate.add_permits(100);
        script.until(|m| m.finalized.len() == 5).await;
        assert!(
            Instant::now() - started < TUNING.rescan_every,
            "recovered by the scan a dropped command triggers, not the periodic one"
        );
        assert_eq!(
            script.model.lock().unwrap().scans,
            2,
            "start, then one after the drops"
        );
        for job in &more {
            for idx in 0..2 {
                assert_eq!(
                    script.runs_of(&(job.clone(), idx)).len(),
                    1,
                    "one place per batch: commanded and scanned, run once"
                );
            }
        }
        engine.stop().await;
    }
}
