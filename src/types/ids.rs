//! Identifiers.
use std::fmt;

use serde::{Deserialize, Serialize};

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
}
