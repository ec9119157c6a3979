//! The emulator's job clock: a job's status, progress and timestamps as pure functions of wall time
//! (`queued` for the first 10 % of its duration, then `running`, then `completed` or `failed`), plus cancellation.

use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};

use super::data::{count_f64, round_to};

/// Share of a job's duration spent `queued` before it starts `running`.
const QUEUED_SHARE: f64 = 0.1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl Phase {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub(crate) fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }
}

/// When a job was submitted, how long it takes, and whether it was cancelled or is scripted to fail.
#[derive(Debug, Clone)]
pub(crate) struct JobClock {
    submitted: Instant,
    submitted_wall: SystemTime,
    duration: Duration,
    cancelled: Option<(Instant, SystemTime)>,
    failure: Option<String>,
}

/// What a cancel request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CancelOutcome {
    Cancelled,
    AlreadyFinished(Phase),
}

impl JobClock {
    /// A job that finishes `duration` after now; `failure` makes it end `failed` with that error.
    pub(crate) fn start(duration: Duration, failure: Option<String>) -> Self {
        Self {
            submitted: Instant::now(),
            submitted_wall: SystemTime::now(),
            duration,
            cancelled: None,
            failure,
        }
    }

    /// A job that is already complete (inline results).
    pub(crate) fn finished() -> Self {
        Self::start(Duration::ZERO, None)
    }

    fn elapsed(&self, now: Instant) -> Duration {
        let end = self.cancelled.map_or(now, |(at, _)| at);
        end.saturating_duration_since(self.submitted)
    }

    fn queued_for(&self) -> Duration {
        self.duration.mul_f64(QUEUED_SHARE)
    }

    pub(crate) fn phase(&self, now: Instant) -> Phase {
        if self.cancelled.is_some() {
            return Phase::Cancelled;
        }
        let elapsed = self.elapsed(now);
        if elapsed >= self.duration {
            if self.failure.is_some() {
                Phase::Failed
            } else {
                Phase::Completed
            }
        } else if elapsed < self.queued_for() {
            Phase::Queued
        } else {
            Phase::Running
        }
    }

    pub(crate) fn is_completed(&self, now: Instant) -> bool {
        self.phase(now) == Phase::Completed
    }

    /// Fraction done in 0..=1: 0 while queued, linear in wall time while running, frozen when cancelled.
    pub(crate) fn progress(&self, now: Instant) -> f64 {
        match self.phase(now) {
            Phase::Completed => 1.0,
            Phase::Queued => 0.0,
            Phase::Running | Phase::Failed | Phase::Cancelled => {
                if self.duration.is_zero() {
                    return 1.0;
                }
                let elapsed = self.elapsed(now);
                if elapsed < self.queued_for() {
                    0.0
                } else {
                    (elapsed.as_secs_f64() / self.duration.as_secs_f64()).min(1.0)
                }
            }
        }
    }

    /// Items processed so far out of `total`.
    pub(crate) fn current_item(&self, now: Instant, total: usize) -> usize {
        let done = (self.progress(now) * count_f64(total)).floor();
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "done is in 0..=total"
        )]
        let done = done as usize;
        done.min(total)
    }

    pub(crate) fn cancel(&mut self, now: Instant) -> CancelOutcome {
        let phase = self.phase(now);
        if phase.is_terminal() {
            return CancelOutcome::AlreadyFinished(phase);
        }
        self.cancelled = Some((now, SystemTime::now()));
        CancelOutcome::Cancelled
    }

    pub(crate) fn created_at(&self) -> String {
        rfc3339(self.submitted_wall)
    }

    pub(crate) fn started_at(&self, now: Instant) -> Option<String> {
        match self.phase(now) {
            Phase::Queued => None,
            Phase::Cancelled if self.elapsed(now) < self.queued_for() => None,
            _ => Some(rfc3339(self.submitted_wall + self.queued_for())),
        }
    }

    pub(crate) fn finished_at(&self, now: Instant) -> Option<String> {
        match self.phase(now) {
            Phase::Queued | Phase::Running => None,
            Phase::Cancelled => self.cancelled.map(|(_, wall)| rfc3339(wall)),
            Phase::Completed | Phase::Failed => Some(rfc3339(self.submitted_wall + self.duration)),
        }
    }

    pub(crate) fn error(&self, now: Instant) -> Option<String> {
        match self.phase(now) {
            Phase::Failed => self.failure.clone(),
            _ => None,
        }
    }

    /// Milliseconds the job ran (or will run), for `duration_ms` fields.
    pub(crate) fn duration_ms(&self) -> u64 {
        u64::try_from(self.duration.as_millis()).unwrap_or(u64::MAX)
    }

    /// The §5.3 status object.
    pub(crate) fn status_body(
        &self,
        job_id: &str,
        job_type: &str,
        total_items: usize,
        now: Instant,
    ) -> Value {
        let phase = self.phase(now);
        let remaining = match phase {
            Phase::Queued | Phase::Running => Value::from(round_to(
                self.duration
                    .saturating_sub(self.elapsed(now))
                    .as_secs_f64(),
                1,
            )),
            Phase::Completed => Value::from(0.0),
            Phase::Failed | Phase::Cancelled => Value::Null,
        };
        json!({
            "job_id": job_id,
            "job_type": job_type,
            "status": phase.as_str(),
            "progress_percent": round_to(self.progress(now) * 100.0, 1),
            "current_item": self.current_item(now, total_items),
            "total_items": total_items,
            "started_at": self.started_at(now),
            "finished_at": self.finished_at(now),
            "error": self.error(now),
            "estimated_remaining_seconds": remaining,
        })
    }
}

/// RFC 3339 UTC timestamp with milliseconds, e.g. `2026-03-21T10:00:00.123Z`.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

pub(crate) fn now_rfc3339() -> String {
    rfc3339(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_follow_wall_time() {
        let clock = JobClock::start(Duration::from_secs(10), None);
        let t0 = clock.submitted;
        assert_eq!(clock.phase(t0), Phase::Queued);
        assert_eq!(clock.phase(t0 + Duration::from_millis(500)), Phase::Queued);
        assert_eq!(clock.phase(t0 + Duration::from_secs(5)), Phase::Running);
        assert!((clock.progress(t0 + Duration::from_secs(5)) - 0.5).abs() < 1e-9);
        assert_eq!(clock.current_item(t0 + Duration::from_secs(5), 7), 3);
        assert_eq!(clock.phase(t0 + Duration::from_secs(10)), Phase::Completed);
        assert_eq!(clock.current_item(t0 + Duration::from_secs(11), 7), 7);
    }

    #[test]
    fn failure_and_cancel_are_terminal() {
        let failing = JobClock::start(Duration::from_secs(1), Some("boom".to_owned()));
        let later = failing.submitted + Duration::from_secs(2);
        assert_eq!(failing.phase(later), Phase::Failed);
        assert_eq!(failing.error(later).as_deref(), Some("boom"));

        let mut clock = JobClock::start(Duration::from_secs(10), None);
        let mid = clock.submitted + Duration::from_secs(4);
        assert_eq!(clock.cancel(mid), CancelOutcome::Cancelled);
        let much_later = clock.submitted + Duration::from_mins(1);
        assert_eq!(clock.phase(much_later), Phase::Cancelled);
        assert!((clock.progress(much_later) - 0.4).abs() < 1e-9);
        assert_eq!(
            clock.cancel(much_later),
            CancelOutcome::AlreadyFinished(Phase::Cancelled)
        );
        assert_eq!(
            JobClock::finished().cancel(Instant::now()),
            CancelOutcome::AlreadyFinished(Phase::Completed)
        );
    }
}
