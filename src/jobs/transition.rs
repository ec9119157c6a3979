//! Pure decisions of the job engine, kept apart from its I/O so every case is unit-tested:
//! whether a job has ended and how, given its batches and the failure policy.
use crate::{
    config::FailurePolicy,
    types::{BatchState, JobState},
};

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
