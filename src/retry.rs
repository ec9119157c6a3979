//! The one delay policy: when to poll an upstream job next, and when to retry after a transient
//! failure. Nothing else in evalgate computes a delay.
//!
//! - **Polls**: the interval grows from `initial` by doubling to `max`. When the upstream gives an
//!   ETA (or progress lets us estimate one) that is further away, the next poll jumps toward it
//!   (never beyond `max`), so a long job costs few polls; an ETA closer than the current interval
//!   does not shrink it, so a wrong ETA cannot make us poll hot. Jitter takes the delay down by up
//!   to 25 %: enough to spread polls of batches submitted together, while keeping the average near
//!   the cap (full 0–100 % jitter would nearly double the polls of a long job).
//! - **Retries** after 5xx/429/timeouts: full jitter over the same doubling schedule.
//! - **`Retry-After`** wins in both cases, clamped to [`MIN_DELAY`, `RETRY_AFTER_CAP`]. Every
//!   `Retry-After` evalgate receives (upstream, webhook receivers, evalgate itself for the CLI) is
//!   read by [`parse_retry_after`].
use std::time::{Duration, SystemTime};

use http::HeaderValue;
use rand::Rng;

/// Never schedule anything sooner than this.
pub(crate) const MIN_DELAY: Duration = Duration::from_millis(50);
/// An upstream `Retry-After` is honoured up to this long.
pub(crate) const RETRY_AFTER_CAP: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Backoff {
    /// `initial × 2^n`, capped at `max`.
    fn ceiling(&self, n: u32) -> Duration {
        let factor = 2u32.saturating_pow(n.min(20));
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// Delay before the next status poll, after `polls` polls of this job so far.
    pub(crate) fn next_poll(
        &self,
        polls: u32,
        retry_after: Option<Duration>,
        eta: Option<Duration>,
        rng: &mut impl Rng,
    ) -> Duration {
        if let Some(wait) = retry_after {
            return wait.clamp(MIN_DELAY, RETRY_AFTER_CAP);
        }
        let grown = self.ceiling(polls);
        let target = match eta {
            Some(eta) if eta > grown => eta.min(self.max),
            _ => grown,
        };
        let factor = rng.random_range(0.75..=1.0);
        target.mul_f64(factor).max(MIN_DELAY)
    }

    /// Delay before retry number `attempt` (1-based) after a transient failure.
    pub(crate) fn retry(
        &self,
        attempt: u32,
        retry_after: Option<Duration>,
        rng: &mut impl Rng,
    ) -> Duration {
        if let Some(wait) = retry_after {
            return wait.clamp(MIN_DELAY, RETRY_AFTER_CAP);
        }
        let ceiling = self.ceiling(attempt.saturating_sub(1));
        ceiling.mul_f64(rng.random_range(0.0..=1.0)).max(MIN_DELAY)
    }
}

/// A fixed schedule step (webhook retries) with ±`fraction` jitter.
pub(crate) fn jittered(base: Duration, fraction: f64, rng: &mut impl Rng) -> Duration {
    let factor = rng.random_range((1.0 - fraction)..=(1.0 + fraction));
    base.mul_f64(factor).max(MIN_DELAY)
}

/// A receiver's `Retry-After`, honoured up to `cap`.
pub(crate) fn honour_retry_after(wait: Duration, cap: Duration) -> Duration {
    wait.clamp(MIN_DELAY, cap)
}

/// What a delta-seconds value too large to represent counts as (RFC 9111 §1.2.2: 2^31 seconds).
const DELTA_SECONDS_OVERFLOW: Duration = Duration::from_secs(1 << 31);

/// A `Retry-After` header value (RFC 9110 §10.2.3): delta-seconds (`120`) or an HTTP date in any
/// of the three formats RFC 9110 §5.6.7 makes recipients accept (IMF-fixdate
/// `Sun, 06 Nov 1994 08:49:37 GMT`, RFC 850, asctime). A date is measured from `now`; a date in
/// the past means at once (zero). A number too large to represent counts as 2^31 seconds.
/// Anything else (a sign, a fraction, an unknown date format) is `None`: the caller falls back to
/// its own delay. Callers clamp the result to their own bounds.
pub(crate) fn parse_retry_after(value: &HeaderValue, now: SystemTime) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return Some(
            text.parse::<u64>()
                .map_or(DELTA_SECONDS_OVERFLOW, Duration::from_secs),
        );
    }
    let date = httpdate::parse_http_date(text).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

/// An ETA from progress alone: the time spent so far scaled by what remains.
pub(crate) fn eta_from_progress(elapsed: Duration, progress_percent: f64) -> Option<Duration> {
    (progress_percent > 0.0 && progress_percent < 100.0)
        .then(|| elapsed.mul_f64((100.0 - progress_percent) / progress_percent))
}

#[cfg(test)]
mod tests {
    use rand::{SeedableRng, rngs::StdRng};

    use super::*;

    const POLICY: Backoff = Backoff {
        initial: Duration::from_secs(2),
        max: Duration::from_secs(30),
    };

    #[test]
    fn polls_grow_from_initial_to_the_cap_with_bounded_jitter() {
        let mut rng = StdRng::seed_from_u64(7);
        for (polls, ceiling) in [(0, 2), (1, 4), (2, 8), (3, 16), (4, 30), (40, 30)] {
            for _ in 0..100 {
                let d = POLICY.next_poll(polls, None, None, &mut rng);
                let ceiling = Duration::from_secs(ceiling);
                assert!(d <= ceiling && d >= ceiling.mul_f64(0.75), "{polls}: {d:?}");
            }
        }
    }

    #[test]
    fn a_far_eta_jumps_ahead_but_a_near_one_never_speeds_polls_up() {
        let mut rng = StdRng::seed_from_u64(1);
        let far = POLICY.next_poll(0, None, Some(Duration::from_secs(600)), &mut rng);
        assert!(
            far >= Duration::from_secs(22) && far <= Duration::from_secs(30),
            "{far:?}"
        );
        let near = POLICY.next_poll(3, None, Some(Duration::from_millis(1)), &mut rng);
        assert!(near >= Duration::from_secs(12), "{near:?}");
    }

    #[test]
    fn retry_after_wins_and_is_clamped() {
        let mut rng = StdRng::seed_from_u64(2);
        assert_eq!(
            POLICY.next_poll(0, Some(Duration::from_secs(7)), None, &mut rng),
            Duration::from_secs(7)
        );
        assert_eq!(
            POLICY.retry(1, Some(Duration::from_secs(3600)), &mut rng),
            RETRY_AFTER_CAP
        );
        assert_eq!(POLICY.retry(1, Some(Duration::ZERO), &mut rng), MIN_DELAY);
    }

    #[test]
    fn retries_use_full_jitter_under_a_doubling_ceiling() {
        let mut rng = StdRng::seed_from_u64(3);
        let delays: Vec<Duration> = (0..200).map(|_| POLICY.retry(3, None, &mut rng)).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(8)));
        assert!(
            delays.iter().any(|d| *d < Duration::from_secs(2)),
            "full jitter reaches low"
        );
    }

    /// The poll budget the managed-jobs issue sets: a 10-minute upstream job costs at most 25
    /// polls (the SDK makes 300), when the upstream reports its ETA.
    #[test]
    fn a_ten_minute_job_costs_at_most_25_polls() {
        let mut rng = StdRng::seed_from_u64(4);
        let total = Duration::from_secs(600);
        let mut now = POLICY.initial;
        let mut polls = 1;
        while now < total {
            let eta = total.saturating_sub(now);
            now += POLICY.next_poll(polls, None, Some(eta), &mut rng);
            polls += 1;
        }
        assert!(polls <= 25, "{polls} polls");
    }

    #[test]
    fn webhook_schedule_steps_get_twenty_percent_jitter() {
        let mut rng = StdRng::seed_from_u64(5);
        for _ in 0..200 {
            let d = jittered(Duration::from_secs(300), 0.2, &mut rng);
            assert!(
                d >= Duration::from_secs(240) && d <= Duration::from_secs(360),
                "{d:?}"
            );
        }
        assert_eq!(
            honour_retry_after(Duration::from_secs(7200), Duration::from_secs(3600)),
            Duration::from_secs(3600)
        );
    }

    fn parse(value: &str, now: SystemTime) -> Option<Duration> {
        parse_retry_after(&HeaderValue::from_str(value).unwrap(), now)
    }

    /// 1994-11-06T08:49:37Z, the date of RFC 9110's examples.
    fn example_now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777)
    }

    #[test]
    fn retry_after_in_seconds() {
        let now = example_now();
        for (value, secs) in [
            ("0", 0),
            ("7", 7),
            (" 120 ", 120),
            ("007", 7),
            ("3600", 3600),
        ] {
            assert_eq!(
                parse(value, now),
                Some(Duration::from_secs(secs)),
                "{value:?}"
            );
        }
        // Too large for any integer: the RFC 9111 ceiling, which callers then clamp.
        assert_eq!(
            parse("99999999999999999999999999", now),
            Some(Duration::from_secs(2_147_483_648))
        );
        assert_eq!(
            parse(&u64::MAX.to_string(), now),
            Some(Duration::from_secs(u64::MAX))
        );
    }

    #[test]
    fn retry_after_as_an_http_date_in_every_accepted_format() {
        let now = example_now();
        for value in [
            "Sun, 06 Nov 1994 08:51:37 GMT",
            "Sunday, 06-Nov-94 08:51:37 GMT",
            "Sun Nov  6 08:51:37 1994",
        ] {
            assert_eq!(
                parse(value, now),
                Some(Duration::from_secs(120)),
                "{value:?}"
            );
        }
        // Measured from `now`, not from the clock.
        assert_eq!(
            parse(
                "Sun, 06 Nov 1994 08:51:37 GMT",
                now + Duration::from_secs(20)
            ),
            Some(Duration::from_secs(100))
        );
    }

    #[test]
    fn retry_after_dates_now_or_in_the_past_mean_at_once() {
        let now = example_now();
        for value in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 08:49:36 GMT",
            "Thu, 01 Jan 1970 00:00:00 GMT",
        ] {
            assert_eq!(parse(value, now), Some(Duration::ZERO), "{value:?}");
        }
    }

    #[test]
    fn retry_after_garbage_is_none() {
        let now = example_now();
        for value in [
            "",
            "   ",
            "-1",
            "-120",
            "+5",
            "1.5",
            "1e3",
            "0x10",
            "5 s",
            "soon",
            "Sun, 06 Nov 1994 08:49:37",
            "2024-01-01T00:00:00Z",
            "Sun, 32 Nov 1994 08:49:37 GMT",
        ] {
            assert_eq!(parse(value, now), None, "{value:?}");
        }
        // Not visible ASCII: not text at all.
        let bytes = HeaderValue::from_bytes(b"12\xff").unwrap();
        assert_eq!(parse_retry_after(&bytes, now), None);
    }

    #[test]
    fn eta_from_progress_scales_elapsed_time() {
        assert_eq!(
            eta_from_progress(Duration::from_secs(10), 25.0),
            Some(Duration::from_secs(30))
        );
        assert_eq!(eta_from_progress(Duration::from_secs(10), 0.0), None);
        assert_eq!(eta_from_progress(Duration::from_secs(10), 100.0), None);
    }
}
