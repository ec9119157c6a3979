//! Managed jobs: a dataset split into batches, submitted and polled upstream on the caller's
//! behalf, and merged back into one result in the original order.
//!
//! The domain types here are what the store persists; `engine` drives them, `merge` combines
//! results, `crate::batching` splits datasets.
pub mod engine;
pub mod hub;
pub mod limits;
pub mod merge;
mod scheduler;
pub mod service;

use std::fmt;

use serde::{Deserialize, Serialize};

/// What a job evaluates; decides the upstream endpoints and the merge rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    FailureAnalysis,
    Evaluation,
    SecurityAudit,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FailureAnalysis => "failure_analysis",
            Self::Evaluation => "evaluation",
            Self::SecurityAudit => "security_audit",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "failure_analysis" => Some(Self::FailureAnalysis),
            "evaluation" => Some(Self::Evaluation),
            "security_audit" => Some(Self::SecurityAudit),
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

/// An evalgate job id: `egj_` + a `UUIDv7` (time-ordered), so ids sort by creation and are
/// recognisable on the Valiqor-compatible paths, where every other id passes through.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct JobId(String);

pub const JOB_ID_PREFIX: &str = "egj_";

impl JobId {
    pub fn generate() -> Self {
        Self(format!("{JOB_ID_PREFIX}{}", uuid::Uuid::now_v7().simple()))
    }

    /// Accepts only well-formed evalgate ids.
    pub fn parse(s: &str) -> Option<Self> {
        let rest = s.strip_prefix(JOB_ID_PREFIX)?;
        (rest.len() == 32 && rest.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| Self(s.to_owned()))
    }

    pub fn is_evalgate_id(s: &str) -> bool {
        s.starts_with(JOB_ID_PREFIX)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_are_prefixed_unique_and_parse_back() {
        let a = JobId::generate();
        let b = JobId::generate();
        assert_ne!(a, b);
        assert!(a.as_str().starts_with("egj_"));
        assert_eq!(JobId::parse(a.as_str()), Some(a.clone()));
        assert!(JobId::parse("egj_nothex").is_none());
        assert!(JobId::parse("run_123").is_none());
    }

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
