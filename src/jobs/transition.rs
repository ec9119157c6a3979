//! Pure decisions of the job engine, kept apart from its I/O so every case is unit-tested: what
//! a failed upstream call or a `dataset_too_large` answer does to a batch, and whether a job has
//! ended and how, given its batches and the failure policy.
use std::time::Duration;

use crate::{
    config::FailurePolicy,
    types::{BatchState, JobState},
    upstream::jobs::Failure,
};

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
