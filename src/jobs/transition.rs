//! Pure decisions of the job engine, kept apart from its I/O so every case is unit-tested: given
//! a batch as the engine read it and what the upstream answered (a submit, a status poll or a
//! result fetch), which conditional change to commit, which event to publish and what comes next
//! (a poll, a retry, the job's finalization, a re-split); and whether a job has ended and how,
//! given its batches and the failure policy. The engine performs the I/O and executes the step.
use std::time::Duration;

use bytes::Bytes;
use serde_json::json;

use crate::{
    config::FailurePolicy,
    retry::eta_from_progress,
    types::{BatchState, JobState},
    upstream::jobs::{Failure, PollOutcome, SubmitOutcome},
};

/// A batch as the engine read it before calling the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Batch {
    pub item_start: usize,
    pub item_end: usize,
    /// Failed attempts of the current step so far.
    pub attempts: u32,
}

impl Batch {
    fn items(self) -> usize {
        self.item_end - self.item_start
    }
}

/// A conditional change to one batch: applied only while the batch is in `from`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Change {
    pub from: &'static [BatchState],
    pub to: BatchState,
    pub upstream_job_id: Option<String>,
    pub attempts: Option<u32>,
    pub progress: Option<(f64, usize)>,
    pub error: Option<String>,
    pub result: Option<Bytes>,
    /// A `batch` event committed with the change: its fields beside job, index, state and items.
    pub event: Option<serde_json::Value>,
}

impl Change {
    fn new(from: &'static [BatchState], to: BatchState) -> Self {
        Self {
            from,
            to,
            upstream_job_id: None,
            attempts: None,
            progress: None,
            error: None,
            result: None,
            event: None,
        }
    }
}

/// What runs once a change applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Then {
    /// Poll the upstream job; the delay comes from the poll count, `Retry-After` and the ETA.
    Poll {
        polls: u32,
        eta: Option<Duration>,
        retry_after: Option<Duration>,
    },
    /// The same step again after a retry backoff for `attempts`.
    Retry {
        attempts: u32,
        retry_after: Option<Duration>,
    },
    /// The batch ended: see whether its job did.
    Finalize,
}

/// Commit `change`; once it applied, publish `publish` and go on with `then`. When it did not
/// apply the batch has moved on (its job ended): nothing more runs, except that an upstream job
/// started meanwhile (`cancel_if_stale`) is cancelled.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Commit {
    pub change: Change,
    pub publish: Option<&'static str>,
    pub then: Then,
    pub cancel_if_stale: Option<String>,
}

/// The engine's next move after an upstream answer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Step {
    Commit(Box<Commit>),
    /// `dataset_too_large`: record `limit` as the kind's learned limit (limits only tighten),
    /// then re-split the batch to the learned limit.
    Resplit {
        limit: usize,
    },
}

/// Whether a batch read for a submit is to be submitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BeforeSubmit {
    /// Not (or no longer) waiting for a submit: nothing to do.
    Skip,
    /// Larger than a limit learned from an earlier `dataset_too_large`: re-split first.
    Resplit {
        limit: usize,
    },
    Submit,
}

const FROM_SUBMITTING: &[BatchState] = &[BatchState::Submitting];
const FROM_RUNNING: &[BatchState] = &[BatchState::Running];
const FROM_ACTIVE: &[BatchState] = &[BatchState::Submitting, BatchState::Running];
const FROM_UNFINISHED: &[BatchState] = &[
    BatchState::Pending,
    BatchState::Submitting,
    BatchState::Running,
];

/// A batch in `state` with `items` items, given the limit learned for its kind.
pub(crate) fn before_submit(
    state: BatchState,
    items: usize,
    learned: Option<usize>,
) -> BeforeSubmit {
    match (state, learned) {
        (BatchState::Pending | BatchState::Submitting, Some(limit)) if items > limit => {
            BeforeSubmit::Resplit { limit }
        }
        (BatchState::Pending | BatchState::Submitting, _) => BeforeSubmit::Submit,
        _ => BeforeSubmit::Skip,
    }
}

/// What a submit's answer does to the batch (marked `submitting` before the call).
pub(crate) fn after_submit(batch: Batch, outcome: SubmitOutcome, max_attempts: u32) -> Step {
    match outcome {
        SubmitOutcome::Accepted { upstream_job_id } => {
            let mut change = Change::new(FROM_SUBMITTING, BatchState::Running);
            change.event = Some(json!({"upstream_job_id": upstream_job_id}));
            change.upstream_job_id = Some(upstream_job_id.clone());
            change.attempts = Some(0);
            Step::Commit(Box::new(Commit {
                change,
                publish: Some("batch"),
                then: Then::Poll {
                    polls: 0,
                    eta: None,
                    retry_after: None,
                },
                cancel_if_stale: Some(upstream_job_id),
            }))
        }
        SubmitOutcome::Inline(result) => Step::Commit(Box::new(complete(batch, result))),
        SubmitOutcome::TooLarge { max_allowed } => {
            match after_too_large(batch.items(), max_allowed) {
                AfterTooLarge::Fail(reason) => Step::Commit(Box::new(fail(reason))),
                AfterTooLarge::Resplit { limit } => Step::Resplit { limit },
            }
        }
        SubmitOutcome::Failure(failure) => Step::Commit(Box::new(retry_or_fail(
            batch,
            failure,
            max_attempts,
            FROM_SUBMITTING,
            BatchState::Pending,
        ))),
    }
}

/// What a status poll's answer does to a running batch.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum AfterPoll {
    Commit(Box<Commit>),
    /// The upstream job completed: fetch its result, then [`after_fetch`].
    FetchResult,
}

/// What a status poll's answer does to a running batch: `polls` is how many polls preceded this
/// one, `running_for` how long the upstream has had the batch (for an ETA from progress alone).
pub(crate) fn after_poll(
    batch: Batch,
    outcome: PollOutcome,
    polls: u32,
    running_for: Duration,
    max_attempts: u32,
) -> AfterPoll {
    let commit = match outcome {
        PollOutcome::Pending {
            progress_percent,
            current_item,
            eta,
            retry_after,
        } => {
            let mut change = Change::new(FROM_RUNNING, BatchState::Running);
            change.progress = Some((progress_percent, current_item));
            change.attempts = Some(0);
            Commit {
                change,
                publish: Some("progress"),
                then: Then::Poll {
                    polls: polls + 1,
                    eta: eta.or_else(|| eta_from_progress(running_for, progress_percent)),
                    retry_after,
                },
                cancel_if_stale: None,
            }
        }
        PollOutcome::Completed { result: None } => return AfterPoll::FetchResult,
        PollOutcome::Completed {
            result: Some(result),
        } => complete(batch, result),
        PollOutcome::Failed { error, result } => {
            let mut commit = fail(format!("upstream job failed: {error}"));
            commit.change.result = result;
            commit
        }
        PollOutcome::Cancelled { result } => {
            let mut change = Change::new(FROM_RUNNING, BatchState::Cancelled);
            change.error = Some("cancelled upstream".to_owned());
            change.event = Some(json!({}));
            change.result = result;
            ended(change)
        }
        PollOutcome::Failure(failure) => retry_or_fail(
            batch,
            failure,
            max_attempts,
            FROM_RUNNING,
            BatchState::Running,
        ),
    };
    AfterPoll::Commit(Box::new(commit))
}

/// What fetching a completed batch's result does to it; a failed fetch retries the poll.
pub(crate) fn after_fetch(
    batch: Batch,
    fetched: Result<Bytes, Failure>,
    max_attempts: u32,
) -> Commit {
    match fetched {
        Ok(result) => complete(batch, result),
        Err(failure) => retry_or_fail(
            batch,
            failure,
            max_attempts,
            FROM_RUNNING,
            BatchState::Running,
        ),
    }
}

/// The batch completed with `result`.
fn complete(batch: Batch, result: Bytes) -> Commit {
    let mut change = Change::new(FROM_ACTIVE, BatchState::Completed);
    change.progress = Some((100.0, batch.items()));
    change.result = Some(result);
    change.event = Some(json!({}));
    ended(change)
}

/// The batch fails for good with `error`.
pub(crate) fn fail(error: String) -> Commit {
    let mut change = Change::new(FROM_UNFINISHED, BatchState::Failed);
    change.event = Some(json!({"error": error}));
    change.error = Some(error);
    ended(change)
}

/// A terminal change: published as a `batch` event, then the job may end.
fn ended(change: Change) -> Commit {
    Commit {
        change,
        publish: Some("batch"),
        then: Then::Finalize,
        cancel_if_stale: None,
    }
}

/// A failed upstream call: the batch goes from `from` back to `back_to` and the step is retried,
/// or the batch fails (see [`after_failure`]).
fn retry_or_fail(
    batch: Batch,
    failure: Failure,
    max_attempts: u32,
    from: &'static [BatchState],
    back_to: BatchState,
) -> Commit {
    match after_failure(failure, batch.attempts, max_attempts) {
        AfterFailure::Fail(reason) => fail(reason),
        AfterFailure::Retry {
            attempts,
            reason,
            retry_after,
        } => {
            let mut change = Change::new(from, back_to);
            change.attempts = Some(attempts);
            change.error = Some(reason);
            Commit {
                change,
                // Watchers see the attempt and its error (a progress snapshot on the stream).
                publish: Some("progress"),
                then: Then::Retry {
                    attempts,
                    retry_after,
                },
                cancel_if_stale: None,
            }
        }
    }
}

/// What a failed upstream call (submit, poll or result fetch) does to its batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AfterFailure {
    /// The batch fails for good, with this reason.
    Fail(String),
    /// The same step runs again after a backoff; `attempts` counts this failure.
    Retry {
        attempts: u32,
        reason: String,
        retry_after: Option<Duration>,
    },
}

/// A permanent failure fails the batch; a transient one is retried until the batch has used
/// `max_attempts` attempts (`attempts` is how many failed before this one).
pub(crate) fn after_failure(failure: Failure, attempts: u32, max_attempts: u32) -> AfterFailure {
    match failure {
        Failure::Permanent(reason) => AfterFailure::Fail(reason),
        Failure::Transient {
            reason,
            retry_after,
        } => {
            let attempts = attempts + 1;
            if attempts >= max_attempts {
                AfterFailure::Fail(format!("gave up after {attempts} attempts: {reason}"))
            } else {
                AfterFailure::Retry {
                    attempts,
                    reason,
                    retry_after,
                }
            }
        }
    }
}

/// What `dataset_too_large` does to a batch of `items`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AfterTooLarge {
    Fail(String),
    /// Re-split into batches of at most `limit` items (always fewer than `items`).
    Resplit {
        limit: usize,
    },
}

/// The upstream's `max_allowed` when it gave one (else half), always below `items`; a single
/// item that is too large cannot be split and fails.
pub(crate) fn after_too_large(items: usize, max_allowed: Option<usize>) -> AfterTooLarge {
    if items <= 1 {
        return AfterTooLarge::Fail("upstream rejects even a single item as too large".to_owned());
    }
    let limit = max_allowed.unwrap_or(items / 2).clamp(1, items - 1);
    AfterTooLarge::Resplit { limit }
}

/// How a job ends, once it does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct End {
    pub state: JobState,
    pub error: Option<String>,
    /// Fail-fast ended the job while batches still run upstream: they are to be cancelled there.
    pub cancel_running: bool,
}

/// Whether a job whose batches are in `batches` (state, error) has ended, and how.
/// `None` while batches still need work.
pub(crate) fn end_of(batches: &[(BatchState, Option<&str>)], policy: FailurePolicy) -> Option<End> {
    let failed: Vec<Option<&str>> = batches
        .iter()
        .filter(|(state, _)| *state == BatchState::Failed)
        .map(|(_, error)| *error)
        .collect();
    let fail_fast = policy == FailurePolicy::FailFast && !failed.is_empty();
    if !fail_fast && !batches.iter().all(|(state, _)| state.is_terminal()) {
        return None;
    }
    let count = |wanted: BatchState| batches.iter().filter(|(s, _)| *s == wanted).count();
    let completed = count(BatchState::Completed);
    let cancelled = count(BatchState::Cancelled);
    let state = if fail_fast {
        JobState::Failed
    } else if completed == batches.len() {
        JobState::Completed
    } else if completed > 0 {
        JobState::CompletedWithErrors
    } else if cancelled > 0 && failed.is_empty() {
        JobState::Cancelled
    } else {
        JobState::Failed
    };
    let error = failed.first().map(|first| {
        format!(
            "{} of {} batches failed; first error: {}",
            failed.len(),
            batches.len(),
            first.unwrap_or_default()
        )
    });
    Some(End {
        state,
        error,
        cancel_running: fail_fast,
    })
}

/// A job whose merge failed ends `failed`, whatever its batches say: there is no result to give.
pub(crate) fn merge_failed(end: End, reason: &str) -> End {
    let error = match end.error {
        Some(batches) => format!("merging the batch results failed: {reason}; {batches}"),
        None => format!("merging the batch results failed: {reason}"),
    };
    End {
        state: JobState::Failed,
        error: Some(error),
        ..end
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use BatchState::{Cancelled, Completed, Failed, Pending, Running};

    fn transient(reason: &str) -> Failure {
        Failure::Transient {
            reason: reason.to_owned(),
            retry_after: Some(Duration::from_secs(3)),
        }
    }

    #[test]
    fn transient_failures_retry_until_the_last_attempt_then_fail() {
        assert_eq!(
            after_failure(transient("503"), 0, 3),
            AfterFailure::Retry {
                attempts: 1,
                reason: "503".to_owned(),
                retry_after: Some(Duration::from_secs(3))
            }
        );
        assert!(matches!(
            after_failure(transient("503"), 1, 3),
            AfterFailure::Retry { attempts: 2, .. }
        ));
        assert_eq!(
            after_failure(transient("503"), 2, 3),
            AfterFailure::Fail("gave up after 3 attempts: 503".to_owned())
        );
        // One attempt allowed: the first transient failure is the last.
        assert!(matches!(
            after_failure(transient("reset"), 0, 1),
            AfterFailure::Fail(_)
        ));
    }

    #[test]
    fn permanent_failures_fail_at_once_whatever_the_attempts() {
        assert_eq!(
            after_failure(Failure::Permanent("422".to_owned()), 0, 5),
            AfterFailure::Fail("422".to_owned())
        );
    }

    #[test]
    fn too_large_resplits_below_the_batch_size_and_fails_a_single_item() {
        assert_eq!(
            after_too_large(10, Some(4)),
            AfterTooLarge::Resplit { limit: 4 }
        );
        // No hint: halve.
        assert_eq!(
            after_too_large(10, None),
            AfterTooLarge::Resplit { limit: 5 }
        );
        // A hint that would not shrink the batch, or zero, is clamped into [1, items - 1].
        assert_eq!(
            after_too_large(10, Some(50)),
            AfterTooLarge::Resplit { limit: 9 }
        );
        assert_eq!(
            after_too_large(10, Some(0)),
            AfterTooLarge::Resplit { limit: 1 }
        );
        assert_eq!(
            after_too_large(2, None),
            AfterTooLarge::Resplit { limit: 1 }
        );
        assert!(matches!(
            after_too_large(1, Some(1)),
            AfterTooLarge::Fail(_)
        ));
        assert!(matches!(after_too_large(0, None), AfterTooLarge::Fail(_)));
    }

    const BATCH: Batch = Batch {
        item_start: 10,
        item_end: 14,
        attempts: 1,
    };

    fn commit(step: Step) -> Commit {
        match step {
            Step::Commit(commit) => *commit,
            Step::Resplit { limit } => panic!("expected a commit, got a re-split to {limit}"),
        }
    }

    fn polled(outcome: PollOutcome) -> Commit {
        match after_poll(BATCH, outcome, 4, Duration::from_secs(30), 3) {
            AfterPoll::Commit(commit) => *commit,
            AfterPoll::FetchResult => panic!("expected a commit, got a fetch"),
        }
    }

    /// The batch fails for good: any unfinished state, the error in the change and its event.
    fn failed(error: &str) -> Commit {
        Commit {
            change: Change {
                from: &[Pending, BatchState::Submitting, Running],
                to: Failed,
                upstream_job_id: None,
                attempts: None,
                progress: None,
                error: Some(error.to_owned()),
                result: None,
                event: Some(json!({"error": error})),
            },
            publish: Some("batch"),
            then: Then::Finalize,
            cancel_if_stale: None,
        }
    }

    fn completed(result: &'static [u8]) -> Commit {
        Commit {
            change: Change {
                from: &[BatchState::Submitting, Running],
                to: Completed,
                upstream_job_id: None,
                attempts: None,
                progress: Some((100.0, 4)),
                error: None,
                result: Some(Bytes::from_static(result)),
                event: Some(json!({})),
            },
            publish: Some("batch"),
            then: Then::Finalize,
            cancel_if_stale: None,
        }
    }

    /// A transient failure below the limit: back to `back_to` with the attempt counted, no event.
    fn retried(from: &'static [BatchState], back_to: BatchState, reason: &str) -> Commit {
        Commit {
            change: Change {
                from,
                to: back_to,
                upstream_job_id: None,
                attempts: Some(2),
                progress: None,
                error: Some(reason.to_owned()),
                result: None,
                event: None,
            },
            publish: Some("progress"),
            then: Then::Retry {
                attempts: 2,
                retry_after: Some(Duration::from_secs(3)),
            },
            cancel_if_stale: None,
        }
    }

    #[test]
    fn only_pending_or_submitting_batches_are_submitted_and_a_learned_limit_resplits_first() {
        for state in [Pending, BatchState::Submitting] {
            assert_eq!(before_submit(state, 4, None), BeforeSubmit::Submit);
            assert_eq!(before_submit(state, 4, Some(4)), BeforeSubmit::Submit);
            assert_eq!(
                before_submit(state, 4, Some(3)),
                BeforeSubmit::Resplit { limit: 3 }
            );
        }
        for state in [Running, Completed, Failed, Cancelled] {
            assert_eq!(before_submit(state, 4, None), BeforeSubmit::Skip);
            assert_eq!(before_submit(state, 4, Some(1)), BeforeSubmit::Skip);
        }
    }

    #[test]
    fn an_accepted_submit_runs_the_batch_and_schedules_the_first_poll() {
        let step = after_submit(
            BATCH,
            SubmitOutcome::Accepted {
                upstream_job_id: "up-1".to_owned(),
            },
            3,
        );
        assert_eq!(
            commit(step),
            Commit {
                change: Change {
                    from: &[BatchState::Submitting],
                    to: Running,
                    upstream_job_id: Some("up-1".to_owned()),
                    attempts: Some(0),
                    progress: None,
                    error: None,
                    result: None,
                    event: Some(json!({"upstream_job_id": "up-1"})),
                },
                publish: Some("batch"),
                then: Then::Poll {
                    polls: 0,
                    eta: None,
                    retry_after: None
                },
                // Accepted after the job ended: what the upstream started is cancelled.
                cancel_if_stale: Some("up-1".to_owned()),
            }
        );
    }

    #[test]
    fn an_inline_answer_completes_the_batch() {
        let step = after_submit(BATCH, SubmitOutcome::Inline(Bytes::from_static(b"{}")), 3);
        assert_eq!(commit(step), completed(b"{}"));
    }

    #[test]
    fn too_large_resplits_to_the_hint_or_half_and_fails_a_single_item() {
        let too_large = |max_allowed| SubmitOutcome::TooLarge { max_allowed };
        assert_eq!(
            after_submit(BATCH, too_large(Some(3)), 3),
            Step::Resplit { limit: 3 }
        );
        assert_eq!(
            after_submit(BATCH, too_large(None), 3),
            Step::Resplit { limit: 2 }
        );
        let single = Batch {
            item_start: 7,
            item_end: 8,
            attempts: 0,
        };
        assert_eq!(
            commit(after_submit(single, too_large(Some(1)), 3)),
            failed("upstream rejects even a single item as too large")
        );
    }

    #[test]
    fn a_failed_submit_fails_for_good_or_goes_back_to_pending_until_the_last_attempt() {
        let permanent = SubmitOutcome::Failure(Failure::Permanent("422 bad".to_owned()));
        assert_eq!(commit(after_submit(BATCH, permanent, 3)), failed("422 bad"));
        // One failed attempt before this one, three allowed: retried as attempt 2.
        let step = after_submit(BATCH, SubmitOutcome::Failure(transient("503")), 3);
        assert_eq!(
            commit(step),
            retried(&[BatchState::Submitting], Pending, "503")
        );
        // Two allowed: this failure was the last attempt.
        let step = after_submit(BATCH, SubmitOutcome::Failure(transient("503")), 2);
        assert_eq!(commit(step), failed("gave up after 2 attempts: 503"));
    }

    #[test]
    fn a_pending_poll_records_progress_and_polls_again_with_the_upstreams_hints() {
        let pending = PollOutcome::Pending {
            progress_percent: 25.0,
            current_item: 1,
            eta: Some(Duration::from_secs(8)),
            retry_after: Some(Duration::from_secs(5)),
        };
        let expected = |eta| Commit {
            change: Change {
                from: &[Running],
                to: Running,
                upstream_job_id: None,
                attempts: Some(0),
                progress: Some((25.0, 1)),
                error: None,
                result: None,
                event: None,
            },
            publish: Some("progress"),
            then: Then::Poll {
                polls: 5,
                eta,
                retry_after: Some(Duration::from_secs(5)),
            },
            cancel_if_stale: None,
        };
        assert_eq!(polled(pending), expected(Some(Duration::from_secs(8))));
        // Without an ETA from the upstream: the 30 s so far scaled by what remains (75 / 25).
        let pending = PollOutcome::Pending {
            progress_percent: 25.0,
            current_item: 1,
            eta: None,
            retry_after: Some(Duration::from_secs(5)),
        };
        assert_eq!(polled(pending), expected(Some(Duration::from_secs(90))));
    }

    #[test]
    fn a_pending_poll_without_hints_or_progress_leaves_the_delay_to_the_backoff() {
        let pending = PollOutcome::Pending {
            progress_percent: 0.0,
            current_item: 0,
            eta: None,
            retry_after: None,
        };
        let got = polled(pending);
        assert_eq!(
            got.then,
            Then::Poll {
                polls: 5,
                eta: None,
                retry_after: None
            }
        );
        assert_eq!(got.change.progress, Some((0.0, 0)));
        assert_eq!(got.publish, Some("progress"));
    }

    #[test]
    fn a_completed_poll_fetches_the_result_and_the_fetch_completes_or_retries_the_poll() {
        assert_eq!(
            after_poll(
                BATCH,
                PollOutcome::Completed { result: None },
                4,
                Duration::ZERO,
                3
            ),
            AfterPoll::FetchResult
        );
        assert_eq!(
            after_fetch(BATCH, Ok(Bytes::from_static(b"[1]")), 3),
            completed(b"[1]")
        );
        assert_eq!(
            after_fetch(BATCH, Err(transient("reset")), 3),
            retried(&[Running], Running, "reset")
        );
        assert_eq!(
            after_fetch(BATCH, Err(transient("reset")), 2),
            failed("gave up after 2 attempts: reset")
        );
        assert_eq!(
            after_fetch(BATCH, Err(Failure::Permanent("not json".to_owned())), 3),
            failed("not json")
        );
    }

    /// A status answer that is the result itself (an Arize task run) ends the batch with it, in
    /// each terminal state, without a separate fetch.
    #[test]
    fn a_final_status_answer_is_kept_as_the_result_in_every_terminal_state() {
        let run = Bytes::from_static(br#"{"status": "COMPLETED"}"#);
        assert_eq!(
            polled(PollOutcome::Completed {
                result: Some(run.clone())
            }),
            completed(br#"{"status": "COMPLETED"}"#)
        );
        let failed_run = Bytes::from_static(br#"{"status": "FAILED"}"#);
        let AfterPoll::Commit(commit) = after_poll(
            BATCH,
            PollOutcome::Failed {
                error: "judge quota".to_owned(),
                result: Some(failed_run.clone()),
            },
            4,
            Duration::ZERO,
            3,
        ) else {
            panic!("a failed run is committed")
        };
        assert_eq!(commit.change.to, Failed);
        assert_eq!(commit.change.result, Some(failed_run));
        assert_eq!(
            commit.change.error.as_deref(),
            Some("upstream job failed: judge quota")
        );
        let cancelled_run = Bytes::from_static(br#"{"status": "CANCELLED"}"#);
        let AfterPoll::Commit(commit) = after_poll(
            BATCH,
            PollOutcome::Cancelled {
                result: Some(cancelled_run.clone()),
            },
            4,
            Duration::ZERO,
            3,
        ) else {
            panic!("a cancelled run is committed")
        };
        assert_eq!(
            (commit.change.to, commit.change.result),
            (Cancelled, Some(cancelled_run))
        );
    }

    #[test]
    fn a_failed_upstream_job_fails_the_batch_and_a_cancelled_one_cancels_it() {
        assert_eq!(
            polled(PollOutcome::Failed {
                error: "model crashed".to_owned(),
                result: None
            }),
            failed("upstream job failed: model crashed")
        );
        assert_eq!(
            polled(PollOutcome::Cancelled { result: None }),
            Commit {
                change: Change {
                    from: &[Running],
                    to: Cancelled,
                    upstream_job_id: None,
                    attempts: None,
                    progress: None,
                    error: Some("cancelled upstream".to_owned()),
                    result: None,
                    event: Some(json!({})),
                },
                publish: Some("batch"),
                then: Then::Finalize,
                cancel_if_stale: None,
            }
        );
    }

    #[test]
    fn a_failed_poll_retries_the_poll_until_the_last_attempt_or_fails_for_good() {
        assert_eq!(
            polled(PollOutcome::Failure(transient("timeout"))),
            retried(&[Running], Running, "timeout")
        );
        let last = after_poll(
            Batch {
                attempts: 2,
                ..BATCH
            },
            PollOutcome::Failure(transient("timeout")),
            4,
            Duration::ZERO,
            3,
        );
        assert_eq!(
            last,
            AfterPoll::Commit(Box::new(failed("gave up after 3 attempts: timeout")))
        );
        assert_eq!(
            polled(PollOutcome::Failure(Failure::Permanent("404".to_owned()))),
            failed("404")
        );
    }

    #[test]
    fn a_failure_outside_an_upstream_call_fails_the_batch() {
        assert_eq!(
            fail("batch payload unreadable: x".to_owned()),
            failed("batch payload unreadable: x")
        );
    }

    fn end(batches: &[(BatchState, Option<&str>)], policy: FailurePolicy) -> Option<End> {
        end_of(batches, policy)
    }

    #[test]
    fn unfinished_batches_keep_the_job_running_under_continue() {
        for open in [Pending, BatchState::Submitting, Running] {
            assert_eq!(
                end(&[(Completed, None), (open, None)], FailurePolicy::Continue),
                None
            );
            assert_eq!(
                end(
                    &[(Failed, Some("x")), (open, None)],
                    FailurePolicy::Continue
                ),
                None
            );
        }
    }

    #[test]
    fn all_completed_is_completed_without_error() {
        let ended = end(
            &[(Completed, None), (Completed, None)],
            FailurePolicy::Continue,
        );
        assert_eq!(
            ended,
            Some(End {
                state: JobState::Completed,
                error: None,
                cancel_running: false
            })
        );
    }

    #[test]
    fn some_failed_is_completed_with_errors_naming_the_first() {
        let ended = end(
            &[
                (Completed, None),
                (Failed, Some("boom")),
                (Failed, Some("later")),
            ],
            FailurePolicy::Continue,
        );
        let ended = ended.expect("ended");
        assert_eq!(ended.state, JobState::CompletedWithErrors);
        assert_eq!(
            ended.error.as_deref(),
            Some("2 of 3 batches failed; first error: boom")
        );
        assert!(!ended.cancel_running);
    }

    #[test]
    fn nothing_completed_is_failed_or_cancelled() {
        let failed = end(
            &[(Failed, Some("a")), (Cancelled, None)],
            FailurePolicy::Continue,
        );
        assert_eq!(failed.map(|e| e.state), Some(JobState::Failed));
        let cancelled = end(
            &[(Cancelled, None), (Cancelled, None)],
            FailurePolicy::Continue,
        );
        assert_eq!(
            cancelled,
            Some(End {
                state: JobState::Cancelled,
                error: None,
                cancel_running: false
            })
        );
    }

    #[test]
    fn fail_fast_ends_at_the_first_failure_and_cancels_the_rest() {
        let ended = end(
            &[(Failed, Some("boom")), (Running, None), (Pending, None)],
            FailurePolicy::FailFast,
        )
        .expect("ended");
        assert_eq!(ended.state, JobState::Failed);
        assert!(ended.cancel_running);
        assert_eq!(
            ended.error.as_deref(),
            Some("1 of 3 batches failed; first error: boom")
        );
        // Without a failure fail-fast waits like continue.
        assert_eq!(
            end(
                &[(Completed, None), (Running, None)],
                FailurePolicy::FailFast
            ),
            None
        );
    }

    #[test]
    fn a_failed_merge_fails_the_job_and_keeps_the_batch_errors() {
        let completed = end(&[(Completed, None)], FailurePolicy::Continue).expect("ended");
        let failed = merge_failed(completed, "bad json");
        assert_eq!(failed.state, JobState::Failed);
        assert_eq!(
            failed.error.as_deref(),
            Some("merging the batch results failed: bad json")
        );
        let partial = end(
            &[(Completed, None), (Failed, Some("x"))],
            FailurePolicy::Continue,
        )
        .expect("ended");
        let failed = merge_failed(partial, "bad json");
        assert_eq!(
            failed.error.as_deref(),
            Some(
                "merging the batch results failed: bad json; 1 of 2 batches failed; first error: x"
            )
        );
    }
}
