//! The job and batch vocabularies: what a job evaluates, where it came from, and the states of
//! jobs and batches, with their stored and wire names.
use serde::{Deserialize, Serialize};

/// What a job evaluates; decides the upstream endpoints and the merge rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    FailureAnalysis,
    Evaluation,
    SecurityAudit,
    /// One Arize task run, triggered (or watched) and polled on the caller's behalf.
    ArizeTaskRun,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FailureAnalysis => "failure_analysis",
            Self::Evaluation => "evaluation",
            Self::SecurityAudit => "security_audit",
            Self::ArizeTaskRun => "arize_task_run",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "failure_analysis" => Some(Self::FailureAnalysis),
            "evaluation" => Some(Self::Evaluation),
            "security_audit" => Some(Self::SecurityAudit),
            "arize_task_run" => Some(Self::ArizeTaskRun),
            _ => None,
        }
    }
}

/// A job's aggregate state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Completed,
    /// Some batches failed; the result lists them.
    CompletedWithErrors,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::CompletedWithErrors => "completed_with_errors",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "queued" => Some(Self::Queued),
            "running" => Some(Self::Running),
            "completed" => Some(Self::Completed),
            "completed_with_errors" => Some(Self::CompletedWithErrors),
            "failed" => Some(Self::Failed),
            "cancelled" => Some(Self::Cancelled),
            _ => None,
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::CompletedWithErrors | Self::Failed | Self::Cancelled
        )
    }

    /// The name of the final SSE event for a terminal state: `completed`, `failed` or `cancelled`.
    pub fn sdk_status_event(self) -> &'static str {
        match self {
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            _ => "completed",
        }
    }

    /// The Valiqor SDK's vocabulary (reference §5.3): never `processing`, and a partial
    /// success is `completed` (its failures are listed in the result).
    pub fn sdk_status(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Completed | Self::CompletedWithErrors => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

/// One batch's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BatchState {
    /// Not submitted yet.
    Pending,
    /// A submit is (or was, before a crash) in flight: no upstream id is recorded yet.
    Submitting,
    /// Accepted upstream (202); polled.
    Running,
    Completed,
    Failed,
    Cancelled,
    /// Re-split into smaller batches after `dataset_too_large`; replaced by them.
    Split,
}

impl BatchState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Submitting => "submitting",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Split => "split",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(Self::Pending),
            "submitting" => Some(Self::Submitting),
            "running" => Some(Self::Running),
            "completed" => Some(Self::Completed),
            "failed" => Some(Self::Failed),
            "cancelled" => Some(Self::Cancelled),
            "split" => Some(Self::Split),
            _ => None,
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::Failed | Self::Cancelled | Self::Split
        )
    }
}

/// Which surface created a job (decides the id's follow-up paths and response shapes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// `POST /v1/jobs`.
    Native,
    /// A Valiqor submit endpoint, batched transparently behind the SDK.
    Valiqor,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Valiqor => "valiqor",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sdk_vocabulary_never_says_processing() {
        for state in [
            JobState::Queued,
            JobState::Running,
            JobState::Completed,
            JobState::CompletedWithErrors,
            JobState::Failed,
            JobState::Cancelled,
        ] {
            assert!(
                ["queued", "running", "completed", "failed", "cancelled"]
                    .contains(&state.sdk_status())
            );
            assert_eq!(JobState::parse(state.as_str()), Some(state));
        }
    }
}
